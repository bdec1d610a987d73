//! End-to-end behaviour of the real daemons in network namespaces: one test
//! per behaviour, each on its own [`Topology`]. Skipped (with a message)
//! unless run as root; needs `cargo build --workspace` first.

use std::time::Duration;

use serde_json::Value;
use tasuki_core::invitation::Invitation;
use tasuki_core::keys::StaticKey;
use tasuki_netns_tests::{
    skip_unless_root, Topology, TwoSpokes, A_TUNNEL, B_TUNNEL, HUB_ENDPOINT, HUB_TUNNEL, LAN_HOST,
};

/// Returns from the test (after saying why) unless running as root.
macro_rules! require_root {
    ($name:literal) => {
        if skip_unless_root($name) {
            return;
        }
    };
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn ping_spoke_to_spoke_lan_and_hub() {
    require_root!("ping_spoke_to_spoke_lan_and_hub");
    let net = TwoSpokes::up();
    let (a, b) = (&net.ns_a, &net.ns_b);
    assert!(net.ping(a, B_TUNNEL, 3), "spoke a cannot ping spoke b");
    assert!(net.ping(b, A_TUNNEL, 3), "spoke b cannot ping spoke a");
    assert!(net.ping(a, LAN_HOST, 3), "spoke a cannot ping the LAN host");
    assert!(net.ping(b, LAN_HOST, 3), "spoke b cannot ping the LAN host");
    assert!(net.ping(a, HUB_TUNNEL, 3), "spoke a cannot ping the hub");
    assert!(net.ping(b, HUB_TUNNEL, 3), "spoke b cannot ping the hub");
    // The LAN host reaches the spokes through the hub too.
    assert!(
        net.ping(&net.ns_lan, A_TUNNEL, 3),
        "the LAN host cannot ping spoke a"
    );
    let status = net.hub_status_json();
    assert!(
        status["counters"]["relayed"].as_u64().unwrap_or(0) > 0,
        "spoke-to-spoke pings were not counted as relayed: {status}"
    );
}

#[test]
fn tcp_50mb_spoke_to_spoke_arrives_intact() {
    require_root!("tcp_50mb_spoke_to_spoke_arrives_intact");
    const BYTES: u64 = 50 * 1024 * 1024;
    let net = TwoSpokes::up();
    assert!(
        net.ping(&net.ns_a, B_TUNNEL, 1),
        "spoke a cannot ping spoke b"
    );
    let dst = format!("{B_TUNNEL}:9100");
    net.tcp_transfer_intact(&net.ns_a, &net.ns_b, &dst, BYTES);
}

#[test]
fn forged_inner_source_is_dropped_by_the_hub() {
    require_root!("forged_inner_source_is_dropped_by_the_hub");
    let net = TwoSpokes::up();
    let b = &net.ns_b;
    // Let spoke b accept anything the tunnel delivers, so only the hub's
    // check can stop the forged datagram.
    for key in ["all", "default", "tasuki0"] {
        net.exec_ok(
            b,
            &["sysctl", "-qw", &format!("net.ipv4.conf.{key}.rp_filter=0")],
        );
    }
    let before = net.hub_dropped("forged_source");
    let got = net.with_sink(b, &["udp-sink", "9000", "3"], || {
        net.nettool(&net.ns_a, &["udp-send", B_TUNNEL, "9000", "5"]);
        net.nettool(&net.ns_a, &["forge", "10.77.0.99", B_TUNNEL, "9000"]);
        // Positive control: the same raw-socket path with a's own source
        // address must get through, so the forged one was stopped for its
        // source and not for how it was sent.
        net.nettool(&net.ns_a, &["forge", A_TUNNEL, B_TUNNEL, "9000"]);
    });
    assert_eq!(
        got["received"].as_u64(),
        Some(6),
        "expected the 5 genuine datagrams and the raw one with a's own source: {got}"
    );
    let sources: Vec<&str> = got["sources"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        sources.contains(&A_TUNNEL),
        "the genuine datagrams from {A_TUNNEL} did not arrive: {got}"
    );
    assert!(
        !sources.contains(&"10.77.0.99"),
        "a datagram with a forged source reached spoke b: {got}"
    );
    let after = net.hub_dropped("forged_source");
    assert!(
        after > before,
        "the hub did not count the forged packet (forged_source {before} -> {after}): {}",
        net.hub_status_json()
    );
}

#[test]
fn invitation_cannot_be_used_twice() {
    require_root!("invitation_cannot_be_used_twice");
    let t = Topology::new();
    t.hub_init();
    let _hub = t.start_hub();
    let inv = t.invite("a", true);
    t.enrol_ok(&t.ns_a, &inv, &t.spoke_dir("a"));
    let again = t.enrol(&t.ns_b, &inv, &t.spoke_dir("a2"));
    assert!(
        !again.status.success(),
        "a second enrolment with the same invitation succeeded: {}",
        String::from_utf8_lossy(&again.stdout)
    );
    let err = stderr(&again);
    assert!(
        err.contains("already used"),
        "unexpected refusal message: {err}"
    );
    // One sentence, said once, without the internal code.
    assert_eq!(
        err.matches("already used").count(),
        1,
        "the refusal is repeated: {err}"
    );
    assert!(
        !err.contains("InvitationUsed"),
        "the refusal shows its code: {err}"
    );
    assert!(
        err.contains(&format!(
            "the hub at {} refused:",
            tasuki_netns_tests::HUB_ENDPOINT
        )),
        "the refusal does not name the hub: {err}"
    );
    assert!(!err.contains("panicked"), "the spoke panicked: {err}");
}

#[test]
fn wrong_pinned_hub_key_is_refused() {
    require_root!("wrong_pinned_hub_key_is_refused");
    let t = Topology::new();
    t.hub_init();
    let _hub = t.start_hub();
    let text = t.invite("a", true);
    let mut inv = Invitation::decode(&text).expect("the hub's invitation does not decode");
    inv.hub_key = StaticKey::generate(&mut rand_core::OsRng).public();
    let wrong = inv.encode();
    let out = t.enrol(&t.ns_a, &wrong, &t.spoke_dir("wrong"));
    assert!(
        !out.status.success(),
        "enrolment against an unpinned hub key succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = stderr(&out);
    assert!(err.contains("pinned key"), "unexpected message: {err}");
    assert!(!err.contains("panicked"), "the spoke panicked: {err}");
    // The refused attempt must not have consumed the invitation.
    t.enrol_ok(&t.ns_a, &text, &t.spoke_dir("a"));
}

#[test]
fn malformed_invitation_is_refused_cleanly() {
    require_root!("malformed_invitation_is_refused_cleanly");
    let t = Topology::new();
    t.hub_init();
    let _hub = t.start_hub();
    let good = t.invite("a", true);
    let mut flipped = good.clone().into_bytes();
    let mid = flipped.len() / 2;
    flipped[mid] = if flipped[mid] == b'A' { b'B' } else { b'A' };
    let flipped = String::from_utf8(flipped).expect("ASCII");
    let cases = [
        ("truncated", good[..good.len() - 12].to_string()),
        ("half", good[..good.len() / 2].to_string()),
        ("one character changed", flipped),
        ("garbage", "hello, this is not an invitation".to_string()),
        ("prefix only", "tasuki1-".to_string()),
        ("bad base64", "tasuki1-!!!!not*base64!!!!".to_string()),
        ("empty", String::new()),
        ("huge", format!("tasuki1-{}", "A".repeat(10_000))),
    ];
    for (i, (what, text)) in cases.iter().enumerate() {
        let dir = t.spoke_dir(&format!("bad{i}"));
        let out = t.enrol(&t.ns_a, text, &dir);
        let err = stderr(&out);
        assert!(
            !out.status.success(),
            "a {what} invitation was accepted: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            !err.contains("panicked"),
            "the spoke panicked on a {what} invitation: {err}"
        );
        assert!(
            err.to_lowercase().contains("invitation"),
            "unclear message for a {what} invitation: {err:?}"
        );
    }
    // None of that disturbed the hub: the real invitation still works.
    t.enrol_ok(&t.ns_a, &good, &t.spoke_dir("a"));
}

#[test]
fn garbage_does_not_hurt_the_hub() {
    require_root!("garbage_does_not_hurt_the_hub");
    let net = TwoSpokes::up();
    let a = &net.ns_a;
    let before = net.hub_dropped("bad_datagram");
    net.nettool(a, &["udp-garbage", HUB_ENDPOINT, "1000"]);
    net.nettool(a, &["tcp-garbage", HUB_ENDPOINT]);
    net.must_be_alive(&net.hub);
    net.wait_for(
        "spoke a to ping spoke b after the garbage",
        Duration::from_secs(20),
        || net.ping(a, B_TUNNEL, 1),
    );
    assert!(net.ping(a, B_TUNNEL, 3), "spoke a cannot ping spoke b");
    net.must_be_alive(&net.hub);
    let after = net.hub_dropped("bad_datagram");
    assert!(
        after > before,
        "the hub did not count the garbage datagrams (bad_datagram {before} -> {after}): {}",
        net.hub_status_json()
    );
    // The control plane still serves: a new spoke can enrol.
    let inv = net.invite("c", true);
    net.enrol_ok(a, &inv, &net.spoke_dir("c"));
}

/// Waits (up to 60 s) until spoke a pings spoke b again after `event`.
fn wait_a_to_b(net: &TwoSpokes, event: &str) {
    net.wait_for(
        &format!("spoke a to ping spoke b after {event}"),
        Duration::from_secs(60),
        || net.ping(&net.ns_a, B_TUNNEL, 1),
    );
}

#[test]
fn daemons_recover_from_restarts() {
    require_root!("daemons_recover_from_restarts");
    let mut net = TwoSpokes::up();
    assert!(
        net.ping(&net.ns_a, B_TUNNEL, 3),
        "spoke a cannot ping spoke b"
    );
    net.kill9(&net.hub);
    net.restart_hub();
    wait_a_to_b(&net, "the hub was killed with SIGKILL and restarted");
    assert!(
        net.ping(&net.ns_b, A_TUNNEL, 3),
        "spoke b cannot ping spoke a"
    );

    let status = net.sigterm(&net.a);
    assert!(status.success(), "spoke a exited with {status} on SIGTERM");
    net.restart_a();
    wait_a_to_b(&net, "spoke a was stopped with SIGTERM and restarted");

    net.kill9(&net.b);
    net.restart_b();
    wait_a_to_b(&net, "spoke b was killed with SIGKILL and restarted");
    assert!(
        net.ping(&net.ns_b, LAN_HOST, 3),
        "spoke b cannot reach the LAN"
    );

    // Same identities and addresses, no re-enrolment: still two active spokes.
    let status = net.hub_status();
    assert_eq!(status.spokes_active, 2, "{status:?}");
    assert_eq!(
        net.spoke_status_json(&net.a_socket)["tunnel_addr"],
        "10.77.0.2/24"
    );
}
