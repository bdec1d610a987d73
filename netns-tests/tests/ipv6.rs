//! IPv6 inside the tunnels (issue 19) with the real binaries over an IPv4
//! underlay: every spoke has its IPv6 tunnel address from the hub's plan
//! (the same host number as its IPv4 one), pings and a TCP transfer cross
//! the relay, a full-size packet with "don't fragment" fits, the hub
//! answers at its own IPv6 address, and a forged IPv6 source is dropped
//! and counted. Skipped unless root.

use std::time::Duration;

use serde_json::Value;
use tasuki_netns_tests::{
    skip_unless_root, Topology, TwoSpokes, A_TUNNEL6, B_TUNNEL, B_TUNNEL6, HUB_ENDPOINT,
    HUB_TUNNEL6, LAN_NET, TUNNEL_NET,
};

#[test]
fn ipv6_crosses_the_relay_and_forged_sources_are_counted() {
    if skip_unless_root("ipv6::ipv6_crosses_the_relay") {
        return;
    }
    let net = TwoSpokes::up();
    net.wait_tunnel_up(std::time::Duration::from_secs(30));
    let status = net.spoke_status_json(&net.a_socket);
    assert_eq!(
        status["tunnel_addr6"],
        format!("{A_TUNNEL6}/64"),
        "{status}"
    );
    let list: Value =
        serde_json::from_str(&net.hub_ok(&["spoke", "list", "--json"])).expect("json");
    let b_row = list
        .as_array()
        .and_then(|l| l.iter().find(|s| s["name"] == "b").cloned())
        .unwrap_or_default();
    assert_eq!(b_row["tunnel_addr6"], B_TUNNEL6, "{list}");
    assert!(
        net.ping(&net.ns_a, HUB_TUNNEL6, 2),
        "a cannot ping the hub over IPv6"
    );
    assert!(
        net.ping(&net.ns_a, B_TUNNEL6, 3),
        "a cannot ping b over IPv6"
    );
    assert!(
        net.ping(&net.ns_b, A_TUNNEL6, 3),
        "b cannot ping a over IPv6"
    );
    // A full-size packet with "don't fragment": 1420 − 40 − 8 bytes of ICMPv6 payload.
    let full = net.exec(
        &net.ns_a,
        &[
            "ping", "-q", "-n", "-c", "2", "-W", "2", "-M", "do", "-s", "1372", B_TUNNEL6,
        ],
    );
    assert!(
        full.status.success(),
        "a full-size IPv6 ping did not cross the relay"
    );
    // TCP over IPv6, checksummed end to end.
    let dst = format!("[{B_TUNNEL6}]:9106");
    net.tcp_transfer_intact(&net.ns_a, &net.ns_b, &dst, 50 * 1024 * 1024);
    // A forged source: an address of the prefix that is not a's.
    net.exec_ok(
        &net.ns_a,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "fd77:1::99/128",
            "dev",
            "tasuki0",
            "nodad",
        ],
    );
    let before = net.hub_dropped("forged_source");
    let forged = net.exec(
        &net.ns_a,
        &[
            "ping",
            "-q",
            "-n",
            "-c",
            "2",
            "-W",
            "1",
            "-I",
            "fd77:1::99",
            B_TUNNEL6,
        ],
    );
    assert!(!forged.status.success(), "a forged IPv6 source reached b");
    let after = net.hub_dropped("forged_source");
    assert!(after >= before + 2, "forged_source {before} -> {after}");
    // The forged address goes (as a /128 it would be every ping's source).
    net.exec_ok(
        &net.ns_a,
        &[
            "ip",
            "-6",
            "addr",
            "del",
            "fd77:1::99/128",
            "dev",
            "tasuki0",
        ],
    );
    // Direct mode: IPv6 between the spokes takes their pair's direct path.
    net.direct_on();
    net.both_direct();
    let relayed = net.relayed();
    let direct = net.exec(
        &net.ns_a,
        &[
            "ping", "-q", "-n", "-c", "20", "-i", "0.05", "-W", "1", B_TUNNEL6,
        ],
    );
    assert!(
        direct.status.success(),
        "IPv6 does not cross the direct path: a {} b {} hub {}",
        net.spoke_status_json(&net.a_socket)["counters"],
        net.spoke_status_json(&net.b_socket)["counters"],
        net.hub_status_json()["counters"]
    );
    assert!(
        net.relayed() < relayed + 10,
        "IPv6 went through the hub: {} relayed before, {} after",
        relayed,
        net.relayed()
    );
    // The kernels' neighbour discovery and MLD stay where they were sent.
    let dropped = net.hub_status_json();
    assert_eq!(
        dropped["counters"]["dropped"]["no_route"]
            .as_u64()
            .unwrap_or(0),
        0,
        "{dropped}"
    );
}

/// A hub made with IPv4 only is given an IPv6 prefix while its spokes run:
/// they take their addresses with no restart and no new enrolment, and
/// keep them across restarts of the hub and of a spoke.
#[test]
fn ipv6_enable_gives_running_spokes_their_addresses() {
    if skip_unless_root("ipv6::ipv6_enable_gives_running_spokes") {
        return;
    }
    let t = Topology::new();
    t.hub_init_with(
        HUB_ENDPOINT,
        &["--tunnel-net", TUNNEL_NET, "--route", LAN_NET, "--no-ipv6"],
    );
    let mut hub = t.start_hub();
    let mut spokes = t.enrol_and_start(
        &[("a", &t.ns_a), ("b", &t.ns_b)],
        &["--pre-approved", "--service"],
    );
    t.wait_for("a to ping b", Duration::from_secs(30), || {
        t.must_be_alive(&hub);
        t.ping(&t.ns_a, B_TUNNEL, 1)
    });
    assert!(t.hub_status_json()["tunnel_net6"].is_null());
    let enabled = t.hub_ok(&["ipv6", "enable", "--tunnel-net", "fd77:1::/64", "--json"]);
    let status: Value = serde_json::from_str(&enabled).expect("json");
    assert_eq!(status["tunnel_net6"], "fd77:1::/64", "{status}");
    let again = t.hub_cli(&["ipv6", "enable"]);
    assert!(
        !again.status.success() && tasuki_netns_tests::output_text(&again).contains("already"),
        "a second prefix was taken: {}",
        tasuki_netns_tests::output_text(&again)
    );
    let both_ways = || {
        t.ping(&t.ns_a, B_TUNNEL6, 1)
            && t.ping(&t.ns_b, A_TUNNEL6, 1)
            && t.ping(&t.ns_a, HUB_TUNNEL6, 1)
    };
    t.wait_for(
        "the running spokes to carry IPv6",
        Duration::from_secs(20),
        both_ways,
    );
    let a = t.spoke_status_json(&t.spoke_socket("a"));
    assert_eq!(a["tunnel_addr6"], format!("{A_TUNNEL6}/64"), "{a}");
    // Stored on both sides: restarts keep it.
    t.kill9(&hub);
    hub = t.start_hub();
    t.kill9(&spokes[0]);
    spokes[0] = t.start_spoke(&t.ns_a, &t.spoke_dir("a"), &t.spoke_socket("a"));
    t.wait_for(
        "IPv6 again after the restarts",
        Duration::from_secs(30),
        both_ways,
    );
    t.must_be_alive(&hub);
    for s in &spokes {
        t.must_be_alive(s);
    }
}
