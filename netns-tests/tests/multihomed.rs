//! A hub with several addresses on its network (issue 19: an IPv6 host has
//! many; a floating address, a second uplink): spokes that reach it at an
//! address its kernel would not pick as the source of a reply still get
//! their answers from that address, so their tunnels come up and carry
//! traffic, over IPv4 and IPv6. Without it the spoke's data plane (and any
//! NAT on the way) drops every reply: the control channel (TCP) works and
//! the tunnel never does. Skipped unless root.

use std::time::Duration;

use tasuki_netns_tests::{
    skip_unless_root, Topology, B_TUNNEL, B_TUNNEL6, HUB_TUNNEL, LAN_NET, TUNNEL_NET, TUNNEL_NET6,
};

/// The hub's second IPv4 address: secondary on its subnet, so the kernel
/// answers from 172.30.0.1 unless told otherwise.
const SECOND_V4: &str = "172.30.0.100";

#[test]
fn spokes_that_reach_a_second_address_get_their_answers_from_it() {
    if skip_unless_root("multihomed::spokes_that_reach_a_second_address") {
        return;
    }
    let t = Topology::new();
    t.exec_ok(
        &t.ns_hub,
        &[
            "ip",
            "addr",
            "add",
            &format!("{SECOND_V4}/24"),
            "dev",
            "eth0",
        ],
    );
    t.hub_init_with(
        &format!("{SECOND_V4}:51820"),
        &[
            "--tunnel-net",
            TUNNEL_NET,
            "--tunnel-net",
            TUNNEL_NET6,
            "--route",
            LAN_NET,
        ],
    );
    t.start_hub();
    let _spokes = t.enrol_and_start(
        &[("a", &t.ns_a), ("b", &t.ns_b)],
        &["--pre-approved", "--service"],
    );
    t.wait_for(
        "a's tunnel to the hub's second address",
        Duration::from_secs(30),
        || t.ping(&t.ns_a, HUB_TUNNEL, 1),
    );
    assert!(
        t.ping(&t.ns_a, B_TUNNEL, 3),
        "a cannot reach b through the relay"
    );
    assert!(
        t.ping(&t.ns_a, B_TUNNEL6, 3),
        "a cannot reach b over IPv6 inside"
    );
}

#[test]
fn an_ipv6_spoke_that_reaches_a_second_address_gets_its_answers_from_it() {
    if skip_unless_root("multihomed::an_ipv6_spoke") {
        return;
    }
    let t = Topology::new();
    // The spokes reach the hub over IPv6 at fd30::100, its second address
    // on the WAN (added first: the kernel prefers the newest as a source).
    for (ns, addr) in [
        (&t.ns_hub, "fd30::100/64"),
        (&t.ns_hub, "fd30::1/64"),
        (&t.ns_a, "fd30::11/64"),
        (&t.ns_b, "fd30::12/64"),
    ] {
        t.exec_ok(
            ns,
            &["ip", "-6", "addr", "add", addr, "dev", "eth0", "nodad"],
        );
    }
    t.hub_init_with(
        "[fd30::100]:51820",
        &["--tunnel-net", TUNNEL_NET, "--tunnel-net", TUNNEL_NET6],
    );
    t.start_hub();
    let _spokes = t.enrol_and_start(
        &[("a", &t.ns_a), ("b", &t.ns_b)],
        &["--pre-approved", "--service"],
    );
    t.wait_for(
        "a's tunnel to the hub's second IPv6 address",
        Duration::from_secs(30),
        || t.ping(&t.ns_a, HUB_TUNNEL, 1),
    );
    assert!(
        t.ping(&t.ns_a, B_TUNNEL, 3),
        "a cannot reach b through the relay"
    );
}
