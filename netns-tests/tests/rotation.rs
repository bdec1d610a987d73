//! Key rotation with the real daemons: epochs change under live traffic and
//! no packet is lost at the switch.

use std::time::Duration;

use serde_json::Value;
use tasuki_netns_tests::{skip_unless_root, TwoSpokes, B_TUNNEL};

fn epoch_of(net: &TwoSpokes, spoke: &str) -> u64 {
    let out = net.topo.hub_cli(&["key", "status", "--json"]);
    let links: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    links
        .as_array()
        .and_then(|l| l.iter().find(|x| x["spoke"] == spoke))
        .and_then(|x| x["epoch"].as_u64())
        .unwrap_or(0)
}

/// 100 pings a second from spoke a to spoke b while the hub forces 20
/// rotations (alternating the two links): every echo and every reply arrives.
#[test]
fn twenty_rotations_under_100_pps_lose_nothing() {
    if skip_unless_root("twenty_rotations_under_100_pps_lose_nothing") {
        return;
    }
    let net = TwoSpokes::up();
    let t = &net.topo;
    let set = t.hub_cli(&["key", "policy", "set", "--interval", "off", "--grace", "2s"]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let log = t.dir().join("ping-rotation.log");
    let count = "2500";
    let ping = t.spawn(
        &t.ns_a,
        &["ping", "-c", count, "-i", "0.01", "-W", "2", B_TUNNEL],
        &log,
    );
    for i in 0..20 {
        let spoke = if i % 2 == 0 { "a" } else { "b" };
        let before = epoch_of(&net, spoke);
        let out = t.hub_cli(&["key", "rotate", "--spoke", spoke]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        t.wait_for(
            &format!("rotation {i} of spoke {spoke} past epoch {before}"),
            Duration::from_secs(20),
            || epoch_of(&net, spoke) > before,
        );
    }
    let final_a = epoch_of(&net, "a");
    let final_b = epoch_of(&net, "b");
    assert!(
        final_a >= 11 && final_b >= 11,
        "epochs a={final_a} b={final_b}"
    );
    t.wait_for("the ping to finish", Duration::from_secs(90), || {
        !t.is_alive(&ping)
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let want = format!("{count} packets transmitted, {count} received");
    assert!(
        text.contains(&want),
        "packets lost across rotations:\n{}",
        text.lines().rev().take(4).collect::<Vec<_>>().join("\n")
    );
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// After a rotation and the grace period, the ended key's bytes are found
/// nowhere in the hub's or the spoke's state directory, and key files and
/// directories are private.
#[test]
fn ended_keys_are_erased_from_both_state_directories() {
    if skip_unless_root("ended_keys_are_erased_from_both_state_directories") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let net = TwoSpokes::up();
    let t = &net.topo;
    assert!(t
        .hub_cli(&["key", "policy", "set", "--interval", "off", "--grace", "1s"])
        .status
        .success());
    let old = epoch_of(&net, "a");
    assert!(old > 0);
    // Spoke a has id 1; both sides hold the same key for the epoch.
    let hub_key_file = t.hub_dir().join("keys").join(format!("1-{old}.key"));
    let spoke_key_file = net.a_dir.join("keys").join(format!("{old}.key"));
    let old_key = std::fs::read(&hub_key_file).expect("hub key file");
    assert_eq!(old_key.len(), 32);
    assert_eq!(
        std::fs::read(&spoke_key_file).expect("spoke key file"),
        old_key
    );
    for f in [&hub_key_file, &spoke_key_file] {
        let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    for d in [t.hub_dir(), net.a_dir.clone(), net.a_dir.join("keys")] {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
    }
    assert!(t
        .hub_cli(&["key", "rotate", "--spoke", "a"])
        .status
        .success());
    t.wait_for(
        "spoke a to move to a new epoch",
        Duration::from_secs(20),
        || epoch_of(&net, "a") > old && spoke_epoch(&net).0 > old,
    );
    t.wait_for(
        "both sides to erase the ended epoch",
        Duration::from_secs(30),
        || {
            let (_, held, _) = spoke_epoch(&net);
            !hub_key_file.exists() && !spoke_key_file.exists() && !held.contains(&old)
        },
    );
    let mut dirs = vec![t.hub_dir(), net.a_dir.clone()];
    dirs.sort();
    for dir in dirs {
        for f in files_under(&dir) {
            let bytes = std::fs::read(&f).unwrap_or_default();
            assert!(
                !bytes.windows(32).any(|w| w == old_key.as_slice()),
                "the ended key's bytes are still in {}",
                f.display()
            );
        }
    }
    assert!(t.ping(&t.ns_a, B_TUNNEL, 3), "traffic after erasure");
}

/// Drops TCP to and from the hub's control port in `ns` (both directions)
/// with policy-routing rules, leaving the UDP data plane alone. The local
/// table is moved behind the rules so that incoming segments are refused too.
fn block_control(net: &TwoSpokes, ns: &str) {
    let t = &net.topo;
    for args in [
        vec![
            "ip", "rule", "add", "pref", "10", "ipproto", "tcp", "dport", "51820", "prohibit",
        ],
        vec![
            "ip", "rule", "add", "pref", "11", "ipproto", "tcp", "sport", "51820", "prohibit",
        ],
        vec!["ip", "rule", "add", "pref", "100", "lookup", "local"],
        vec!["ip", "rule", "del", "pref", "0"],
    ] {
        t.exec_ok(ns, &args);
    }
}

fn unblock_control(net: &TwoSpokes, ns: &str) {
    let t = &net.topo;
    t.exec_ok(ns, &["ip", "rule", "del", "pref", "10"]);
    t.exec_ok(ns, &["ip", "rule", "del", "pref", "11"]);
}

fn spoke_epoch(net: &TwoSpokes) -> (u64, Vec<u64>, bool) {
    let s = net.topo.spoke_status_json(&net.a_socket);
    let held = s["held_epochs"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    (
        s["epoch"].as_u64().unwrap_or(0),
        held,
        s["blocked"].as_bool().unwrap_or(false),
    )
}

/// With a batch, a spoke cut off from the hub's control port keeps rotating
/// on its own; with a hard limit its traffic stops when the batch is used up
/// and resumes once the control port opens again.
#[test]
fn batch_rotates_without_the_hub_and_hard_limit_stops_then_resumes() {
    if skip_unless_root("batch_rotates_without_the_hub_and_hard_limit_stops_then_resumes") {
        return;
    }
    let net = TwoSpokes::up();
    let t = &net.topo;
    let set = t.hub_cli(&[
        "key",
        "policy",
        "set",
        "--interval",
        "3s",
        "--grace",
        "1s",
        "--batch",
        "2",
        "--hard-limit",
        "on",
    ]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    // The policy reaches the spoke with the next epochs: wait for a full batch.
    t.wait_for(
        "spoke a to hold a batch of 2 ahead",
        Duration::from_secs(30),
        || {
            let (cur, held, _) = spoke_epoch(&net);
            held.iter().filter(|k| **k > cur).count() >= 2
        },
    );
    block_control(&net, &t.ns_a);
    let (start, _, _) = spoke_epoch(&net);
    // Rotation goes on from the batch, with the hub unreachable.
    t.wait_for(
        "spoke a to switch epochs twice on its own",
        Duration::from_secs(30),
        || spoke_epoch(&net).0 >= start + 2,
    );
    assert!(t.ping(&t.ns_a, B_TUNNEL, 2), "traffic on a batch epoch");
    // The batch is used up: past lifetime and slack, the hard limit bites.
    t.wait_for(
        "the hard limit to stop spoke a",
        Duration::from_secs(30),
        || spoke_epoch(&net).2,
    );
    assert!(
        !t.ping(&t.ns_a, B_TUNNEL, 2),
        "a blocked spoke carries no traffic"
    );
    unblock_control(&net, &t.ns_a);
    t.wait_for(
        "spoke a to get new keys and resume",
        Duration::from_secs(90),
        || {
            let (_, _, blocked) = spoke_epoch(&net);
            !blocked && t.ping(&t.ns_a, B_TUNNEL, 1)
        },
    );
}

/// A small deterministic generator for the kill moments (seed printed).
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// 20 kill -9 of the hub and of spoke a at random moments while keys rotate
/// every second; after each restart traffic recovers and both sides agree on
/// the epoch carrying traffic.
#[test]
fn kill_9_during_rotations_never_locks_a_spoke_out() {
    if skip_unless_root("kill_9_during_rotations_never_locks_a_spoke_out") {
        return;
    }
    let mut net = TwoSpokes::up();
    let set = net
        .topo
        .hub_cli(&["key", "policy", "set", "--interval", "1s", "--grace", "1s"]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    eprintln!("kill moments seed: {seed}");
    for i in 0..20 {
        let pause = Duration::from_millis(200 + next_rand(&mut seed) % 1500);
        std::thread::sleep(pause);
        if i % 2 == 0 {
            net.topo.kill9(&net.hub);
            net.restart_hub();
        } else {
            net.topo.kill9(&net.a);
            net.restart_a();
        }
        let t = &net.topo;
        let began = std::time::Instant::now();
        t.wait_for(
            &format!("traffic a→b after kill {i}"),
            Duration::from_secs(60),
            || t.ping(&t.ns_a, B_TUNNEL, 1),
        );
        eprintln!("kill {i}: traffic back after {:?}", began.elapsed());
    }
    // Stop rotating and check both sides settle on the same epoch.
    let t = &net.topo;
    assert!(t
        .hub_cli(&["key", "policy", "set", "--interval", "off"])
        .status
        .success());
    t.wait_for(
        "hub and spoke a to agree on the epoch",
        Duration::from_secs(30),
        || {
            let hub = epoch_of(&net, "a");
            let (spoke, _, _) = spoke_epoch(&net);
            hub > 0 && hub == spoke
        },
    );
    assert!(t.ping(&t.ns_a, B_TUNNEL, 3));
    assert!(t.ping(&t.ns_b, "10.77.0.2", 3));
}

/// A TCP transfer that spans several rotations (one every 2 s) completes
/// with the content intact.
#[test]
fn tcp_transfer_across_rotations_every_2s_arrives_intact() {
    if skip_unless_root("tcp_transfer_across_rotations_every_2s_arrives_intact") {
        return;
    }
    const BYTES: u64 = 120 * 1024 * 1024;
    let net = TwoSpokes::up();
    let t = &net.topo;
    assert!(t
        .hub_cli(&["key", "policy", "set", "--interval", "2s", "--grace", "1s"])
        .status
        .success());
    let before = epoch_of(&net, "a") + epoch_of(&net, "b");
    let bytes = BYTES.to_string();
    let dst = format!("{B_TUNNEL}:9200");
    let mut sent = Value::Null;
    let received = t.with_sink(&t.ns_b, &["tcp-sink", "9200"], || {
        sent = t.nettool(&t.ns_a, &["tcp-source", &dst, &bytes]);
    });
    let after = epoch_of(&net, "a") + epoch_of(&net, "b");
    assert_eq!(sent["bytes"].as_u64(), Some(BYTES), "source: {sent}");
    assert_eq!(received["bytes"].as_u64(), Some(BYTES), "sink: {received}");
    assert_eq!(
        received["sha256"], sent["sha256"],
        "data altered in transit"
    );
    assert!(
        after >= before + 2,
        "the transfer should span rotations (epochs {before} → {after})"
    );
}

/// A per-spoke policy overrides the hub-wide one for that spoke only, and
/// `reset` brings the hub-wide policy back.
#[test]
fn per_spoke_policy_overrides_the_hub_wide_one() {
    if skip_unless_root("per_spoke_policy_overrides_the_hub_wide_one") {
        return;
    }
    let net = TwoSpokes::up();
    let t = &net.topo;
    assert!(t
        .hub_cli(&["key", "policy", "set", "--interval", "off", "--grace", "1s"])
        .status
        .success());
    let set = t.hub_cli(&["key", "policy", "set", "--spoke", "a", "--interval", "1s"]);
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let (a0, b0) = (epoch_of(&net, "a"), epoch_of(&net, "b"));
    t.wait_for(
        "spoke a to rotate twice on its own policy",
        Duration::from_secs(20),
        || epoch_of(&net, "a") >= a0 + 2,
    );
    assert_eq!(
        epoch_of(&net, "b"),
        b0,
        "spoke b follows the hub-wide policy (off)"
    );
    let status: Value =
        serde_json::from_slice(&t.hub_cli(&["key", "status", "--json"]).stdout).unwrap();
    let flag = |name: &str| {
        status
            .as_array()
            .and_then(|l| l.iter().find(|x| x["spoke"] == name))
            .map(|x| x["policy_override"].clone())
    };
    assert_eq!(flag("a"), Some(Value::Bool(true)));
    assert_eq!(flag("b"), Some(Value::Bool(false)));
    let shown = t.hub_cli(&["key", "policy", "show", "--spoke", "a", "--json"]);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["interval_secs"], 1);
    assert!(t
        .hub_cli(&["key", "policy", "reset", "--spoke", "a"])
        .status
        .success());
    let shown = t.hub_cli(&["key", "policy", "show", "--spoke", "a", "--json"]);
    let shown: Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["interval_secs"], Value::Null);
    let bad = t.hub_cli(&[
        "key",
        "policy",
        "set",
        "--spoke",
        "nobody",
        "--interval",
        "1s",
    ]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no spoke named"));
    // Scripts branch on a reply's code, not on its words.
    let v = tasuki_core::PROTOCOL_VERSION;
    for (version, request, code) in [
        (
            v,
            serde_json::json!({"op": "key_rotate", "spoke": "nobody"}),
            "not_found",
        ),
        (
            v,
            serde_json::json!({"op": "group_add", "name": "admins"}),
            "",
        ),
        (
            v,
            serde_json::json!({"op": "group_add", "name": "admins"}),
            "already_exists",
        ),
        (
            v,
            serde_json::json!({"op": "no_such_request"}),
            "bad_request",
        ),
        (
            v + 1,
            serde_json::json!({"op": "status"}),
            "version_mismatch",
        ),
    ] {
        let reply = admin_raw(&t.hub_socket(), version, &request);
        if code.is_empty() {
            assert!(reply.get("ok").is_some(), "{request}: {reply}");
        } else {
            assert_eq!(reply["error"]["code"], code, "{request}: {reply}");
            assert!(reply["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
        }
    }
}

/// One request line on an admin socket, as a script would send it; the
/// reply line as JSON.
fn admin_raw(socket: &std::path::Path, version: u16, request: &Value) -> Value {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(socket).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let line = serde_json::json!({"version": version, "request": request});
    writeln!(stream, "{line}").unwrap();
    let mut reply = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut reply)
        .unwrap();
    serde_json::from_str(&reply).unwrap()
}

/// A named event: when a spoke shows up from a new address, its key rotates.
#[test]
fn a_new_spoke_address_rotates_its_key() {
    if skip_unless_root("a_new_spoke_address_rotates_its_key") {
        return;
    }
    let mut net = TwoSpokes::up();
    assert!(net
        .topo
        .hub_cli(&["key", "policy", "set", "--interval", "off"])
        .status
        .success());
    let before = epoch_of(&net, "a");
    let b_before = epoch_of(&net, "b");
    // A restarted spoke sends from a new UDP port: a new address for the hub.
    let status = net.topo.sigterm(&net.a);
    assert!(status.success(), "spoke a should stop cleanly: {status:?}");
    net.restart_a();
    let t = &net.topo;
    t.wait_for(
        "the hub to rotate spoke a's key",
        Duration::from_secs(30),
        || epoch_of(&net, "a") > before,
    );
    assert!(t.ping(&t.ns_a, B_TUNNEL, 2));
    assert_eq!(epoch_of(&net, "b"), b_before, "spoke b did not move");
}
