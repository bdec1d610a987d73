//! Helpers shared by the fault tests (`crashes`, `full_disk`, `clock_skew`):
//! spokes started under a prefix (`faketime`), epoch agreement, recovery.
#![allow(dead_code, unused_imports)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use tasuki_netns_tests::{
    binaries, skip_unless_root, FaultRng, Proc, Topology, TwoSpokes, A_TUNNEL, B_TUNNEL,
    HUB_TUNNEL, LAN_HOST,
};

/// Both streams of a command, for messages and searches.
pub(crate) fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Starts `PREFIX… tasuki-spoke run --state-dir DIR --socket SOCK EXTRA…` in
/// `ns` (the prefix runs it under `faketime`, say) and waits until its
/// control socket answers.
pub(crate) fn start_spoke_with(
    t: &Topology,
    ns: &str,
    dir: &Path,
    socket: &Path,
    prefix: &[&str],
    extra: &[&str],
) -> Proc {
    let mut args: Vec<&OsStr> = prefix.iter().map(OsStr::new).collect();
    args.extend([
        binaries().spoke.as_os_str(),
        OsStr::new("run"),
        OsStr::new("--state-dir"),
        dir.as_os_str(),
        OsStr::new("--socket"),
        socket.as_os_str(),
    ]);
    args.extend(extra.iter().map(OsStr::new));
    let p = t.spawn(ns, &args, &dir.with_extension("log"));
    t.wait_for(
        &format!("spoke {}'s control socket to answer", p.name),
        Duration::from_secs(20),
        || {
            t.must_be_alive(&p);
            t.spoke_cli(socket, &["status", "--json"]).status.success()
        },
    );
    p
}

/// `PREFIX… tasuki-spoke enrol INVITATION --state-dir DIR` in `ns`.
pub(crate) fn enrol_with(
    t: &Topology,
    ns: &str,
    prefix: &[&str],
    invitation: &str,
    dir: &Path,
) -> Output {
    let mut args: Vec<&OsStr> = prefix.iter().map(OsStr::new).collect();
    args.extend([
        binaries().spoke.as_os_str(),
        OsStr::new("enrol"),
        OsStr::new(invitation),
        OsStr::new("--state-dir"),
        dir.as_os_str(),
    ]);
    t.exec(ns, &args)
}

/// Pings `addr` once from `ns` through interface `iface` (`ping -I`).
pub(crate) fn ping_via(t: &Topology, ns: &str, iface: &str, addr: &str) -> bool {
    t.exec(
        ns,
        &["ping", "-q", "-n", "-c", "1", "-W", "1", "-I", iface, addr],
    )
    .status
    .success()
}

/// Waits until hub and spoke `name` agree on the epoch carrying traffic
/// (pinging the hub from `ns` meanwhile, so that a new epoch is confirmed by
/// a packet) and returns it.
pub(crate) fn wait_agreed(
    t: &Topology,
    name: &str,
    socket: &Path,
    ns: &str,
    timeout: Duration,
) -> u64 {
    wait_agreed_via(t, name, socket, ns, None, timeout)
}

/// Like [`wait_agreed`], pinging through interface `iface` (`ping -I`)
/// when given: for a second spoke in the same namespace.
pub(crate) fn wait_agreed_via(
    t: &Topology,
    name: &str,
    socket: &Path,
    ns: &str,
    iface: Option<&str>,
    timeout: Duration,
) -> u64 {
    let mut agreed = 0;
    t.wait_for(
        &format!("hub and spoke {name} to agree on the key epoch"),
        timeout,
        || {
            let _ = match iface {
                Some(i) => ping_via(t, ns, i, HUB_TUNNEL),
                None => t.ping(ns, HUB_TUNNEL, 1),
            };
            match t.agreed_epoch(name, socket) {
                Some(k) => {
                    agreed = k;
                    true
                }
                None => false,
            }
        },
    );
    agreed
}

/// Waits until both spokes of `net` reach each other and the hub, and agree
/// with the hub on their epochs; returns (epoch of a, epoch of b).
pub(crate) fn recovered(net: &TwoSpokes, what: &str) -> (u64, u64) {
    let t = &net.topo;
    let began = Instant::now();
    t.wait_for(
        &format!("traffic a→b after {what}"),
        Duration::from_secs(30),
        || {
            t.must_be_alive(&net.hub);
            t.ping(&t.ns_a, B_TUNNEL, 1)
        },
    );
    t.wait_for(
        &format!("traffic b→a after {what}"),
        Duration::from_secs(15),
        || t.ping(&t.ns_b, A_TUNNEL, 1),
    );
    let ka = wait_agreed(t, "a", &net.a_socket, &t.ns_a, Duration::from_secs(30));
    let kb = wait_agreed(t, "b", &net.b_socket, &t.ns_b, Duration::from_secs(30));
    eprintln!(
        "{what}: traffic and epochs back after {:?} (a at {ka}, b at {kb})",
        began.elapsed()
    );
    (ka, kb)
}

pub(crate) fn kill_and_restart_hub(net: &mut TwoSpokes) {
    let hub = net.hub.clone();
    net.topo.kill9(&hub);
    net.restart_hub();
}

pub(crate) fn set_policy(t: &Topology, args: &[&str]) {
    let mut full = vec!["key", "policy", "set"];
    full.extend_from_slice(args);
    let out = t.hub_cli(&full);
    assert!(out.status.success(), "{}", text(&out));
}

/// The real time, seconds since the Unix epoch.
pub(crate) fn tasuki_shell_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
