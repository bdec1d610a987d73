//! Hostile input and faults with the real daemons: secrets never leak into
//! logs or output, damaged stores are refused by name, slow and idle
//! control connections are cut off while everyone else is served.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use serde_json::Value;
use tasuki_netns_tests::{binaries, skip_unless_root, Topology, TwoSpokes, B_TUNNEL, HUB_TUNNEL};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Key bytes (raw, hex, base64) and passwords appear in no log, no status
/// output and no error message.
#[test]
fn no_secret_reaches_logs_or_output() {
    if skip_unless_root("no_secret_reaches_logs_or_output") {
        return;
    }
    let net = TwoSpokes::up();
    let t = &net.topo;
    assert!(t.hub_cli(&["key", "rotate", "--all"]).status.success());
    let added = t.hub_cli(&["user", "add", "carol", "--json"]);
    let pw: Value = serde_json::from_slice(&added.stdout).unwrap();
    let pw = pw["initial_password"].as_str().unwrap().to_owned();
    assert!(t
        .hub_cli(&["user", "allow", "carol", "--spoke", "a"])
        .status
        .success());
    // A failed and a successful login, with the password on standard input.
    for input in [
        "wrong password here\n".to_string(),
        format!("{pw}\nbrand new secret pass\n"),
    ] {
        let mut child = std::process::Command::new(&binaries().spoke)
            .args(["login", "carol", "--password-stdin", "--socket"])
            .arg(&net.a_socket)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !text.contains("wrong password here") && !text.contains(&pw),
            "{text}"
        );
    }
    std::thread::sleep(Duration::from_secs(2));
    // Collect every secret: epoch keys from both key directories, identity keys.
    let mut secrets: Vec<Vec<u8>> = Vec::new();
    for dir in [
        t.hub_dir().join("keys"),
        net.a_dir.join("keys"),
        net.b_dir.join("keys"),
    ] {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            secrets.push(std::fs::read(e.path()).unwrap());
        }
    }
    assert!(secrets.len() >= 4, "expected several epoch keys");
    let mut texts: Vec<String> = secrets.iter().map(|k| hex(k)).collect();
    use std::fmt::Write as _;
    for k in &secrets {
        let mut b64 = String::new();
        // base64 of the key, as WireGuard tools would print it.
        let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for chunk in k.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
                << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                let _ = write!(
                    b64,
                    "{}",
                    table[((n >> (18 - 6 * i)) & 63) as usize] as char
                );
            }
        }
        texts.push(b64);
    }
    for id in [t.hub_dir().join("hub.key"), net.a_dir.join("spoke.key")] {
        texts.push(std::fs::read_to_string(id).unwrap().trim().to_owned());
    }
    texts.push(pw.clone());
    texts.push("brand new secret pass".into());
    texts.push("wrong password here".into());
    // Everything a person or a log collector sees.
    let mut seen = String::new();
    for log in [
        t.hub_log(),
        net.a_dir.with_extension("log"),
        net.b_dir.with_extension("log"),
    ] {
        seen.push_str(&std::fs::read_to_string(log).unwrap_or_default());
    }
    for args in [
        vec!["status", "--json"],
        vec!["spoke", "list", "--json"],
        vec!["key", "status", "--json"],
        vec!["user", "list", "--json"],
        vec!["audit", "--json"],
    ] {
        let out = t.hub_cli(&args);
        seen.push_str(&String::from_utf8_lossy(&out.stdout));
        seen.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    seen.push_str(&t.spoke_status_json(&net.a_socket).to_string());
    let raw = seen.as_bytes();
    for (secret, text) in secrets.iter().zip(texts.iter()) {
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_slice()),
            "raw key bytes leaked"
        );
        assert!(!seen.contains(text.as_str()), "a key leaked");
    }
    for text in &texts[secrets.len()..] {
        assert!(
            !seen.contains(text.as_str()),
            "a secret leaked: {}…",
            &text[..4.min(text.len())]
        );
    }
}

/// A damaged store stops the daemon with an error that names the file and
/// says what to do; it is never reset silently.
#[test]
fn a_damaged_store_is_refused_by_name() {
    if skip_unless_root("a_damaged_store_is_refused_by_name") {
        return;
    }
    let t = Topology::new();
    t.hub_init();
    let hub = t.start_hub();
    let inv = t.invite("a", true);
    t.enrol_ok(&t.ns_a, &inv, &t.spoke_dir("a"));
    assert!(t.sigterm(&hub).success());
    let store = t.hub_dir().join("store");
    let db = store.join("db");
    // The worst damage: the log emptied and the snapshots gone. sled opens
    // that as an empty database; tasuki must refuse it rather than start over.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&db)
        .unwrap()
        .set_len(0)
        .unwrap();
    for e in std::fs::read_dir(&store).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("snap.") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    let out = t.exec(
        &t.ns_hub,
        &[
            binaries().hub.to_str().unwrap(),
            "run",
            "--state-dir",
            t.hub_dir().to_str().unwrap(),
            "--admin-socket",
            t.hub_socket().to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a truncated store was accepted");
    assert!(
        err.contains(t.hub_dir().join("store").to_str().unwrap()),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("lost acknowledged writes") || err.contains("cannot open"),
        "{err}"
    );
    // Nothing was reset: no new spoke key, no new records written.
    assert!(t.hub_dir().join("hub.key").exists());
    // A damaged identity key is named too.
    std::fs::write(t.hub_dir().join("hub.key"), "not a key").unwrap();
    let out = t.exec(
        &t.ns_hub,
        &[
            binaries().hub.to_str().unwrap(),
            "run",
            "--state-dir",
            t.hub_dir().to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("hub.key"), "{err}");
}

/// Slow-drip and idle control connections are cut off; many of them do not
/// stop the hub from serving its spokes or enrolling new ones.
#[test]
fn slow_and_idle_control_connections_are_cut_off() {
    if skip_unless_root("slow_and_idle_control_connections_are_cut_off") {
        return;
    }
    let net = TwoSpokes::up();
    let t = &net.topo;
    // 300 idle connections plus one that drips a frame a byte at a time, from
    // a helper in spoke b's namespace.
    let script = format!(
        "import socket,time\n\
         conns=[]\n\
         for i in range(300):\n\
         \x20   s=socket.create_connection(('{hub}',51820)); conns.append(s)\n\
         d=socket.create_connection(('{hub}',51820))\n\
         start=time.time(); closed=None\n\
         d.send(b'\\x00')\n\
         while time.time()-start<25:\n\
         \x20   time.sleep(1)\n\
         \x20   try:\n\
         \x20       d.send(b'\\x10')\n\
         \x20       d.settimeout(0.01)\n\
         \x20       if d.recv(1)==b'': closed=time.time()-start; break\n\
         \x20   except socket.timeout: pass\n\
         \x20   except OSError: closed=time.time()-start; break\n\
         idle_closed=0\n\
         for s in conns:\n\
         \x20   s.settimeout(0.01)\n\
         \x20   try:\n\
         \x20       if s.recv(1)==b'': idle_closed+=1\n\
         \x20   except socket.timeout: pass\n\
         \x20   except OSError: idle_closed+=1\n\
         print(closed, idle_closed)\n",
        hub = "172.30.0.1"
    );
    let started = Instant::now();
    let child = std::thread::spawn({
        let ns = t.ns_b.clone();
        move || {
            std::process::Command::new("ip")
                .args(["netns", "exec", &ns, "python3", "-c", &script])
                .output()
                .unwrap()
        }
    });
    // While they hang on, the hub serves its spokes and enrols a new one.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        t.ping(&t.ns_a, B_TUNNEL, 2),
        "relay stalled under idle connections"
    );
    let status: Value = t.hub_status_json();
    assert!(
        status["control_connections"].as_u64().unwrap_or(0) >= 300,
        "{status}"
    );
    let inv = t.invite("late", true);
    let out = t.enrol(&t.ns_a, &inv, &t.spoke_dir("late"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = child.join().unwrap();
    let report = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (drip, idle) = report.split_once(' ').unwrap_or(("None", "0"));
    let drip: f64 = drip.parse().unwrap_or(f64::MAX);
    assert!(
        drip < 20.0,
        "a slow-drip frame kept its connection {drip}s ({report}, {:?})",
        started.elapsed()
    );
    assert!(
        idle.parse::<u32>().unwrap_or(0) >= 300,
        "idle connections not cut: {report}"
    );
    assert!(t.ping(&t.ns_a, HUB_TUNNEL, 1));
    let _ = std::io::stdout().flush();
    let _ = std::io::empty().read(&mut [0u8; 1]);
}
