//! Running as a service: unit files, config files, the metrics endpoint,
//! status JSON, systemd notifications and a clean stop.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tasuki_netns_tests::{
    binaries, metric_sample, skip_unless_root, Topology, TwoSpokes, B_TUNNEL,
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIPPED: systemd-analyze is not installed");
        return;
    }
    let dir = std::env::temp_dir().join(format!("tasuki-units-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for unit in [
        "tasuki-hub.service",
        "tasuki-spoke.service",
        "tasuki-spoke@.service",
    ] {
        let text = std::fs::read_to_string(repo().join("systemd").join(unit)).unwrap();
        // Point ExecStart at the binaries just built (verify checks they exist).
        let text = text
            .replace(
                "/usr/local/bin/tasuki-hub",
                binaries().hub.to_str().unwrap(),
            )
            .replace(
                "/usr/local/bin/tasuki-spoke",
                binaries().spoke.to_str().unwrap(),
            );
        assert!(text.contains("Type=notify"), "{unit}");
        assert!(text.contains("NoNewPrivileges=yes"), "{unit}");
        std::fs::write(dir.join(unit), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("tasuki-hub.service"))
        .arg(dir.join("tasuki-spoke.service"))
        .arg(dir.join("tasuki-spoke@x.service"))
        .current_dir(&dir)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !err.contains("tasuki"),
        "systemd-analyze verify:\n{err}"
    );
}

#[test]
fn config_errors_name_the_file_line_and_key() {
    let dir = std::env::temp_dir().join(format!("tasuki-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, "interface = \"tsk9\"\nlisten = \"127.0.0.1:5555\"\n").unwrap();
    let out = Command::new(&binaries().hub)
        .args(["check-config", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("tsk9"));
    for (name, text, key) in [
        (
            "typo.toml",
            "interface = \"x\"\n\nlisten_addr = \"1.2.3.4:5\"\n",
            "listen_addr",
        ),
        (
            "type.toml",
            "interface = \"x\"\nlisten = \"not an address\"\n",
            "listen",
        ),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        for args in [vec!["check-config", "--config"], vec!["run", "--config"]] {
            let out = Command::new(&binaries().hub)
                .args(&args)
                .arg(&path)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{name} accepted");
            let line = if name == "typo.toml" { 3 } else { 2 };
            assert!(
                err.contains(&format!("{}:{line}:", path.display())),
                "{err}"
            );
            assert!(err.contains(key), "{err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    let spoke_bad = dir.join("spoke.toml");
    std::fs::write(&spoke_bad, "sockett = \"/x\"\n").unwrap();
    let out = Command::new(&binaries().spoke)
        .args(["check-config", "--config"])
        .arg(&spoke_bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(":1:") && err.contains("sockett"),
        "{err}"
    );
    let missing = Command::new(&binaries().hub)
        .args(["check-config", "--config", "/nonexistent/hub.toml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/hub.toml"));
    let _ = std::fs::remove_dir_all(&dir);
}

fn metrics(t: &Topology) -> String {
    t.hub_metrics("127.0.0.1:9586")
}

#[test]
fn metrics_and_status_move_with_traffic() {
    if skip_unless_root("metrics_and_status_move_with_traffic") {
        return;
    }
    let mut net = TwoSpokes::up();
    // Restart the hub with the metrics endpoint on (it is off by default).
    net.topo.sigterm(&net.hub);
    net.hub = net.topo.start_hub_with(&["--metrics", "127.0.0.1:9586"]);
    let t = &net.topo;
    t.wait_for("traffic after the restart", Duration::from_secs(30), || {
        t.ping(&t.ns_a, B_TUNNEL, 1)
    });
    let before = metrics(t);
    // Valid Prometheus text: HELP/TYPE comments, then `name{labels} value`.
    for line in before.lines() {
        if line.starts_with('#') {
            assert!(
                line.starts_with("# HELP ") || line.starts_with("# TYPE "),
                "{line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect(line);
        assert!(value.parse::<f64>().is_ok(), "{line}");
        let name = series.split('{').next().unwrap();
        assert!(
            name.starts_with("tasuki_")
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(
                labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
                "{line}"
            );
        }
    }
    assert!(
        before.contains("tasuki_spokes{state=\"active\"} 2"),
        "{before}"
    );
    let status_before: Value = t.hub_status_json();
    let spoke_before = t.spoke_status_json(&net.a_socket);
    assert!(t.ping(&t.ns_a, B_TUNNEL, 5));
    let after = metrics(t);
    let rx = "tasuki_datagrams_total{direction=\"rx\"}";
    assert!(
        metric_sample(&after, rx) > metric_sample(&before, rx),
        "rx did not move"
    );
    let relayed = "tasuki_packets_total{path=\"relayed\"}";
    assert!(metric_sample(&after, relayed) >= metric_sample(&before, relayed) + 10);
    let a_rx = "tasuki_link_bytes_total{spoke=\"a\",direction=\"rx\"}";
    assert!(metric_sample(&after, a_rx) > metric_sample(&before, a_rx));
    let status_after: Value = t.hub_status_json();
    assert!(
        status_after["counters"]["relayed"].as_u64()
            > status_before["counters"]["relayed"].as_u64()
    );
    let spoke_after = t.spoke_status_json(&net.a_socket);
    assert!(
        spoke_after["counters"]["tx_datagrams"].as_u64()
            > spoke_before["counters"]["tx_datagrams"].as_u64()
    );
    assert_eq!(spoke_after["state"], "running");
    // Anything but /metrics is a 404.
    let out = t.exec(
        &t.ns_hub,
        &[
            binaries().nettool.to_str().unwrap(),
            "http-get",
            "127.0.0.1:9586",
            "/admin",
        ],
    );
    assert!(!out.status.success());
}

#[test]
fn sigterm_leaves_no_tun_or_route_behind() {
    if skip_unless_root("sigterm_leaves_no_tun_or_route_behind") {
        return;
    }
    let net = TwoSpokes::up();
    let t = &net.topo;
    let has_tun = |ns: &str| {
        t.exec(ns, &["ip", "link", "show", "tasuki0"])
            .status
            .success()
    };
    assert!(has_tun(&t.ns_hub) && has_tun(&t.ns_a));
    let routes = String::from_utf8_lossy(&t.exec(&t.ns_a, &["ip", "route"]).stdout).into_owned();
    assert!(routes.contains("192.168.77.0/24 dev tasuki0"), "{routes}");
    assert!(t.sigterm(&net.a).success());
    assert!(t.sigterm(&net.hub).success());
    assert!(!has_tun(&t.ns_a), "spoke TUN left behind");
    assert!(!has_tun(&t.ns_hub), "hub TUN left behind");
    let routes = String::from_utf8_lossy(&t.exec(&t.ns_a, &["ip", "route"]).stdout).into_owned();
    assert!(!routes.contains("tasuki0"), "routes left behind: {routes}");
    assert!(!t.hub_socket().exists(), "admin socket left behind");
}

#[test]
fn the_hub_tells_systemd_it_is_ready() {
    if skip_unless_root("the_hub_tells_systemd_it_is_ready") {
        return;
    }
    let t = Topology::new();
    t.hub_init();
    let notify = t.dir().join("notify.sock");
    let listener = UnixDatagram::bind(&notify).unwrap();
    listener
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = t
        .command(
            &t.ns_hub,
            &[
                binaries().hub.to_str().unwrap(),
                "run",
                "--state-dir",
                t.hub_dir().to_str().unwrap(),
                "--admin-socket",
                t.hub_socket().to_str().unwrap(),
            ],
        )
        .env("NOTIFY_SOCKET", &notify)
        .env("WATCHDOG_USEC", "2000000")
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !(seen.contains("READY=1") && seen.contains("WATCHDOG=1"))
        && std::time::Instant::now() < deadline
    {
        if let Ok(n) = listener.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
    }
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    if let Ok(n) = listener.recv(&mut buf) {
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let _ = child.wait();
    assert!(seen.contains("READY=1"), "{seen}");
    assert!(seen.contains("WATCHDOG=1"), "{seen}");
    assert!(!seen.contains("ERRNO"), "{seen}");
}

#[test]
fn install_and_uninstall_put_everything_in_place_and_keep_the_state() {
    let dest = std::env::temp_dir().join(format!("tasuki-install-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dest);
    let from = binaries().hub.parent().unwrap().to_path_buf();
    let out = Command::new("bash")
        .arg(repo().join("scripts/install"))
        .arg("--destdir")
        .arg(&dest)
        .arg("--from")
        .arg(&from)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "usr/local/bin/tasuki-hub",
        "usr/local/bin/tasuki-spoke",
        "usr/local/share/man/man1/tasuki-hub.1",
        "usr/share/bash-completion/completions/tasuki-spoke",
        "etc/systemd/system/tasuki-hub.service",
        "etc/systemd/system/tasuki-spoke@.service",
        "etc/tasuki/hub.toml",
        "etc/tasuki/spoke.toml",
    ] {
        assert!(dest.join(f).exists(), "{f} not installed");
    }
    let man = std::fs::read_to_string(dest.join("usr/local/share/man/man1/tasuki-hub.1")).unwrap();
    assert!(man.contains(".TH") && man.contains("tasuki"));
    // The shipped configs are valid.
    for (bin, cfg) in [
        (&binaries().hub, "hub.toml"),
        (&binaries().spoke, "spoke.toml"),
    ] {
        let out = Command::new(bin)
            .args(["check-config", "--config"])
            .arg(dest.join("etc/tasuki").join(cfg))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cfg}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Uninstall keeps state and configs unless asked.
    let state = dest.join("var/lib/tasuki-hub");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("hub.key"), "x").unwrap();
    let out = Command::new("bash")
        .arg(repo().join("scripts/uninstall"))
        .arg("--destdir")
        .arg(&dest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dest.join("usr/local/bin/tasuki-hub").exists());
    assert!(!dest.join("etc/systemd/system/tasuki-hub.service").exists());
    assert!(
        state.join("hub.key").exists(),
        "state removed without --purge"
    );
    assert!(dest.join("etc/tasuki/hub.toml").exists());
    let out = Command::new("bash")
        .arg(repo().join("scripts/uninstall"))
        .args(["--purge", "--destdir"])
        .arg(&dest)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!state.exists() && !dest.join("etc/tasuki").exists());
    let _ = std::fs::remove_dir_all(&dest);
}

#[test]
fn sighup_rereads_the_config() {
    if skip_unless_root("sighup_rereads_the_config") {
        return;
    }
    let t = Topology::new();
    t.hub_init();
    let config = t.dir().join("hub.toml");
    std::fs::write(&config, "log = \"info\"\n").unwrap();
    let hub = t.start_hub_with(&["--config", config.to_str().unwrap()]);
    std::fs::write(&config, "log = \"debug\"\n").unwrap();
    // SAFETY: plain kill(2) on the hub's pid.
    unsafe {
        libc::kill(hub.pid as i32, libc::SIGHUP);
    }
    t.wait_for(
        "the hub to re-read its config",
        Duration::from_secs(10),
        || std::fs::read_to_string(t.hub_log()).is_ok_and(|l| l.contains("SIGHUP: config re-read")),
    );
    // A broken config is reported and the hub keeps running.
    std::fs::write(&config, "log = [\n").unwrap();
    unsafe {
        libc::kill(hub.pid as i32, libc::SIGHUP);
    }
    t.wait_for(
        "the hub to report the bad config",
        Duration::from_secs(10),
        || std::fs::read_to_string(t.hub_log()).is_ok_and(|l| l.contains("config not re-read")),
    );
    assert!(t.hub_cli(&["status", "--json"]).status.success());
}

/// The units keep only CAP_NET_ADMIN (and the right to bind) with
/// NoNewPrivileges: the hub and a spoke must work like that.
#[test]
fn daemons_work_with_only_cap_net_admin() {
    if skip_unless_root("daemons_work_with_only_cap_net_admin") {
        return;
    }
    let t = Topology::new();
    t.hub_init();
    let caps = [
        "setpriv",
        "--no-new-privs",
        "--bounding-set=-all,+net_admin,+net_bind_service",
        "--inh-caps=-all",
    ];
    let mut hub: Vec<&str> = caps.to_vec();
    let (hub_dir, hub_socket) = (t.hub_dir(), t.hub_socket());
    hub.extend([
        binaries().hub.to_str().unwrap(),
        "run",
        "--state-dir",
        hub_dir.to_str().unwrap(),
        "--admin-socket",
        hub_socket.to_str().unwrap(),
    ]);
    let _hub = t.spawn(&t.ns_hub, &hub, &t.hub_log());
    t.wait_for(
        "the restricted hub to answer",
        Duration::from_secs(20),
        || t.hub_cli(&["status", "--json"]).status.success(),
    );
    let caps_line = std::fs::read_to_string(format!("/proc/{}/status", _hub.pid))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("CapEff:"))
        .unwrap_or("")
        .to_owned();
    // CAP_NET_BIND_SERVICE is bit 10, CAP_NET_ADMIN bit 12: 0x1400.
    assert!(caps_line.ends_with("0000000000001400"), "{caps_line}");
    let inv = t.invite_with("a", &["--pre-approved", "--service"]);
    let a_dir = t.spoke_dir("a");
    t.enrol_ok(&t.ns_a, &inv, &a_dir);
    let a_socket = t.spoke_socket("a");
    let mut spoke: Vec<&str> = caps.to_vec();
    spoke.extend([
        binaries().spoke.to_str().unwrap(),
        "run",
        "--state-dir",
        a_dir.to_str().unwrap(),
        "--socket",
        a_socket.to_str().unwrap(),
    ]);
    let _a = t.spawn(&t.ns_a, &spoke, &t.dir().join("a-restricted.log"));
    t.wait_for(
        "the restricted spoke to reach the hub",
        Duration::from_secs(30),
        || t.ping(&t.ns_a, tasuki_netns_tests::HUB_TUNNEL, 1),
    );
}
