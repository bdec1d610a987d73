//! Direct mode (issue 14) when a spoke's underlay address changes while
//! its path to a peer is direct (a laptop that moves to another network,
//! a router that renumbers): the peer follows it to the new address, like
//! WireGuard's roaming, and traffic stays direct. Skipped unless root.

use std::time::Duration;

use tasuki_netns_tests::{
    loss, skip_unless_root, Stream, Topology, TwoSpokes, A_TUNNEL, A_WAN, B_TUNNEL,
};

/// Gives spoke a's underlay interface `to` instead of `from` (both /24 on
/// the WAN bridge); sockets bound to the wildcard address send from the
/// new one at once.
fn renumber_a(t: &Topology, from: &str, to: &str) {
    let (old, new) = (format!("{from}/24"), format!("{to}/24"));
    t.exec_ok(&t.ns_a, &["ip", "addr", "del", &old, "dev", "eth0"]);
    t.exec_ok(&t.ns_a, &["ip", "addr", "add", &new, "dev", "eth0"]);
}

/// Where spoke b sends a's direct traffic, if its path to a is direct.
fn b_sends_a_to(net: &TwoSpokes) -> Option<String> {
    let t = &net.topo;
    let peer = t.peer_of(&net.b_socket, A_TUNNEL)?;
    (peer["path"] == "direct")
        .then(|| peer["endpoint"].as_str().map(str::to_owned))
        .flatten()
}

/// Waits until b sends a's direct traffic to underlay address `ip`, and a
/// is direct to b as well.
fn wait_b_follows(net: &TwoSpokes, ip: &str, within: Duration) {
    let t = &net.topo;
    t.wait_for(&format!("b to send direct to a at {ip}"), within, || {
        b_sends_a_to(net).is_some_and(|at| at.starts_with(&format!("{ip}:")))
            && t.path_to(&net.a_socket, B_TUNNEL).as_deref() == Some("direct")
    });
}

#[test]
fn a_spoke_that_changes_its_address_while_direct_is_followed_by_its_peer() {
    if skip_unless_root("direct_roaming::a_spoke_that_changes_its_address") {
        return;
    }
    let net = TwoSpokes::up();
    let t = &net.topo;
    t.direct_on();
    net.both_direct();
    assert!(
        b_sends_a_to(&net).is_some_and(|at| at.starts_with(&format!("{A_WAN}:"))),
        "b sends to a's first address: {:?}",
        b_sends_a_to(&net)
    );

    // a moves while it sends: its next datagram comes from the new address,
    // b authenticates it and answers there. Only what was in the air at the
    // moment of the move may be lost.
    let stream = Stream::start(t, &t.ns_a, B_TUNNEL, 1_500);
    std::thread::sleep(Duration::from_secs(2));
    renumber_a(t, A_WAN, "172.30.0.21");
    wait_b_follows(&net, "172.30.0.21", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let s = stream.stop();
    eprintln!("a moves while it sends: {}", loss(&s));
    assert!(s.lost.len() <= 20, "a moves while it sends: {}", loss(&s));
    let before = t.relayed();
    assert_eq!(
        t.pings(&t.ns_b, A_TUNNEL, 20),
        20,
        "b reaches a's new address"
    );
    assert_eq!(t.relayed(), before, "direct, not relayed");

    // a moves while only b sends: a notices its new address (netlink) and
    // sends a keepalive to b and the hub from it, so b's path follows at
    // once instead of waiting for its trust window (5 s) to run out.
    let stream = Stream::start(t, &t.ns_b, A_TUNNEL, 3_000);
    std::thread::sleep(Duration::from_secs(2));
    renumber_a(t, "172.30.0.21", "172.30.0.31");
    wait_b_follows(&net, "172.30.0.31", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(2));
    let s = stream.stop();
    eprintln!("a moves while b sends: {}", loss(&s));
    assert!(s.lost.len() <= 50, "a moves while b sends: {}", loss(&s));
    assert!(s.answered >= 200, "the stream went on: {}", loss(&s));
    let before = t.relayed();
    assert_eq!(t.pings(&t.ns_a, B_TUNNEL, 20), 20);
    assert_eq!(t.pings(&t.ns_b, A_TUNNEL, 20), 20);
    assert_eq!(t.relayed(), before, "direct both ways at the new address");
    let hub_sees = t.hub_ok(&["spoke", "list"]);
    assert!(
        hub_sees.contains("172.30.0.31:"),
        "the hub has a's new endpoint: {hub_sees}"
    );
}
