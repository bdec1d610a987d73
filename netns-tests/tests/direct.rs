//! Direct mode (issue 14): spokes that may talk get a pair epoch from the
//! hub and carry their traffic straight to each other, through NAT routers
//! with endpoint-independent mappings; behind two symmetric NATs the relay
//! carries on. The hub's relay counter shows which path traffic took.
//! Skipped unless root.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tasuki_netns_tests::{
    skip_unless_root, Behind, Mapping, Topology, TwoSpokes, A_TUNNEL, B_TUNNEL, B_WAN,
    UPGRADE_WITHIN,
};

fn nft(t: &Topology, ns: &str, script: &str) {
    let path = t.dir().join(format!("{ns}-block.nft"));
    std::fs::write(&path, script).expect("write the ruleset");
    t.exec_ok(ns, &["nft", "-f", path.to_str().expect("a UTF-8 path")]);
}

/// Drops every datagram between spoke a and spoke b's underlay addresses
/// (in a's namespace), or lets them through again.
fn block_direct(t: &Topology, blocked: bool) {
    let script = if blocked {
        format!(
            "table ip block {{\n chain out {{ type filter hook output priority 0; ip daddr {B_WAN} drop; }}\n chain in {{ type filter hook input priority 0; ip saddr {B_WAN} drop; }}\n}}\n"
        )
    } else {
        "delete table ip block\n".to_owned()
    };
    nft(t, &t.ns_a, &script);
}

#[test]
fn spokes_on_one_network_go_direct_fall_back_when_blocked_and_come_back() {
    if skip_unless_root("direct::spokes_on_one_network_go_direct") {
        return;
    }
    let net = TwoSpokes::up();
    let t = &net.topo;
    t.direct_on();
    t.wait_direct(&t.ns_a, &net.a_socket, B_TUNNEL);
    t.wait_for("b's direct path to a", UPGRADE_WITHIN, || {
        t.ping(&t.ns_b, A_TUNNEL, 1);
        t.path_to(&net.b_socket, A_TUNNEL).as_deref() == Some("direct")
    });
    let before = t.relayed();
    assert_eq!(t.pings(&t.ns_a, B_TUNNEL, 50), 50, "nothing lost direct");
    let after = t.relayed();
    assert_eq!(after, before, "the hub relayed none of the direct pings");
    // The holders' reports reach the hub within their 10 s period.
    t.wait_for(
        "the hub to hear both paths",
        Duration::from_secs(25),
        || {
            let pairs = t.hub_ok(&["pair", "list", "--json"]);
            let pairs: Value = serde_json::from_str(&pairs).expect("pair list --json");
            let list = pairs.as_array().cloned().unwrap_or_default();
            list.len() == 1
                && list[0]["holders"].as_array().is_some_and(|h| {
                    h.iter()
                        .all(|h| h["path"] == "direct" && h["tx_packets"].as_u64().unwrap_or(0) > 0)
                })
        },
    );
    assert!(
        !t.hub_ok(&["pair", "list"]).contains("key"),
        "no key material in the listing"
    );

    // Blocked: back on the relay within a few seconds, and pings pass.
    block_direct(t, true);
    t.wait_for(
        "a to fall back to the relay",
        Duration::from_secs(20),
        || {
            t.ping(&t.ns_a, B_TUNNEL, 1);
            t.path_to(&net.a_socket, B_TUNNEL).as_deref() == Some("relay")
        },
    );
    let before = t.relayed();
    assert_eq!(t.pings(&t.ns_a, B_TUNNEL, 20), 20, "the relay carries them");
    assert!(t.relayed() >= before + 20, "through the hub");

    // Open again: direct again after the back-off.
    block_direct(t, false);
    t.wait_direct(&t.ns_a, &net.a_socket, B_TUNNEL);
    let before = t.relayed();
    assert_eq!(t.pings(&t.ns_a, B_TUNNEL, 20), 20);
    assert_eq!(t.relayed(), before);
    let status = t.spoke_status_json(&net.a_socket);
    let peer = &status["peers"][0];
    assert!(peer["fallbacks"].as_u64() >= Some(1), "{peer}");
    assert!(peer["upgrades"].as_u64() >= Some(2), "{peer}");
}

#[test]
fn direct_mode_off_keeps_everything_on_the_relay() {
    if skip_unless_root("direct::direct_mode_off_keeps_everything_on_the_relay") {
        return;
    }
    let net = TwoSpokes::up();
    let t = &net.topo;
    let before = t.relayed();
    assert_eq!(t.pings(&t.ns_a, B_TUNNEL, 20), 20);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(t.pings(&t.ns_a, B_TUNNEL, 20), 20);
    assert!(
        t.relayed() >= before + 80,
        "requests and replies, both ways"
    );
    assert_eq!(t.path_to(&net.a_socket, B_TUNNEL), None, "no pair at all");
}

/// The tunnel address of the spoke at `socket`, once it has one.
fn tunnel_addr(t: &Topology, socket: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = t.spoke_status_json(socket);
        let addr = status["tunnel_addr"].as_str().unwrap_or_default();
        if let Some((ip, _)) = addr.split_once('/') {
            return ip.to_owned();
        }
        if Instant::now() > deadline {
            t.fail(&format!("no tunnel address: {status}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn through_nat_routers_cone_pairs_go_direct_and_symmetric_pairs_stay_relayed() {
    if skip_unless_root("direct::through_nat_routers") {
        return;
    }
    let mut t = Topology::new();
    t.hub_init();
    let _hub = t.start_hub();
    t.direct_on();
    let inv = t.invite_with("a", &["--pre-approved", "--service"]);
    t.enrol_ok(&t.ns_a, &inv, &t.spoke_dir("a"));
    let a_socket = t.spoke_socket("a");
    let _a = t.start_spoke(&t.ns_a, &t.spoke_dir("a"), &a_socket);
    let cone1 = t.spoke_behind("cone1", 0, Mapping::EndpointIndependent);
    let cone2 = t.spoke_behind("cone2", 1, Mapping::EndpointIndependent);
    let sym1 = t.spoke_behind("sym1", 2, Mapping::Symmetric);
    let sym2 = t.spoke_behind("sym2", 3, Mapping::Symmetric);
    let addr = |s: &Behind| tunnel_addr(&t, &s.socket);
    let (c1, c2, s2) = (addr(&cone1), addr(&cone2), addr(&sym2));
    addr(&sym1);
    let ns_a = t.ns_a.clone();
    // Open WAN ↔ cone NAT, cone ↔ cone: direct.
    t.wait_direct(&ns_a, &a_socket, &c1);
    t.wait_direct(&cone1.ns, &cone1.socket, &c2);
    let before = t.relayed();
    assert_eq!(t.pings(&ns_a, &c1, 20), 20);
    assert_eq!(t.pings(&cone1.ns, &c2, 20), 20);
    assert_eq!(t.relayed(), before, "cone pairs go direct");
    // Symmetric ↔ symmetric: the punch fails, the relay carries on.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        assert!(t.ping(&sym1.ns, &s2, 1), "the relay carries sym1 → sym2");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_ne!(t.path_to(&sym1.socket, &s2).as_deref(), Some("direct"));
    let before = t.relayed();
    assert_eq!(t.pings(&sym1.ns, &s2, 20), 20);
    assert!(t.relayed() >= before + 40, "through the hub");
}

#[test]
fn under_an_enforced_policy_direct_traffic_follows_the_rules() {
    if skip_unless_root("direct::under_an_enforced_policy") {
        return;
    }
    let net = TwoSpokes::up();
    let t = &net.topo;
    t.direct_on();
    t.hub_ok(&[
        "access",
        "allow",
        "--from",
        "spoke:a",
        "--to",
        "spoke:b",
        "--service",
        "icmp",
    ]);
    t.hub_ok(&["access", "mode", "enforce"]);
    t.wait_direct(&t.ns_a, &net.a_socket, B_TUNNEL);
    let before = t.relayed();
    assert_eq!(t.pings(&t.ns_a, B_TUNNEL, 20), 20, "a may ping b, direct");
    assert_eq!(t.relayed(), before, "none of it through the hub");
    // b may answer a's pings but not ping a: stopped where it starts.
    assert_eq!(t.pings(&t.ns_b, A_TUNNEL, 5), 0, "no rule lets b ping a");
    let dropped = t.spoke_status_json(&net.b_socket)["counters"]["dropped"]["denied"]
        .as_u64()
        .unwrap_or(0);
    assert!(dropped >= 5, "b's gate denied its pings ({dropped})");
    // The rule goes: the pair ends on both sides, and the hub's gate
    // stops the pings on the relay.
    t.hub_ok(&["access", "remove", "1"]);
    t.wait_for("the pair to end", Duration::from_secs(5), || {
        t.path_to(&net.a_socket, B_TUNNEL).is_none() && t.path_to(&net.b_socket, A_TUNNEL).is_none()
    });
    assert_eq!(t.pings(&t.ns_a, B_TUNNEL, 5), 0);
    let pairs = t.hub_ok(&["pair", "list", "--json"]);
    assert_eq!(pairs.trim(), "[]");
}
