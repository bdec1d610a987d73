//! Hub hierarchy (issue 16, claim 6) with the real binaries: a root hub
//! with a LAN host, two child hubs each with a spoke (one with a LAN
//! host), joined with `hub invite` / `join` / `hub approve`. Spokes of
//! different branches reach each other and every LAN through child →
//! root → child, re-encrypted on every hop; an overlapping branch is
//! refused naming both subnets; a root that joins its own child is
//! refused (a loop); with the root killed each branch works on its own
//! and the cross-branch path comes back after its restart; revoking a
//! child cuts its branch from the rest at once while it still works
//! inside. Skipped unless root.

use std::time::{Duration, Instant};

use tasuki_netns_tests::{skip_unless_root, Stream, Topology, TreeHub, TreeSpoke};

/// The tree: root (10.77.0.0/24, LAN 192.168.77.0/24), child a
/// (10.81.0.0/24, LAN 192.168.81.0/24) with spoke a1, child b
/// (10.82.0.0/24) with spoke b1.
struct Tree {
    net: Topology,
    root: TreeHub,
    root_proc: tasuki_netns_tests::Proc,
    a_proc: tasuki_netns_tests::Proc,
    b_proc: tasuki_netns_tests::Proc,
    a: TreeHub,
    b: TreeHub,
    a1: TreeSpoke,
    b1: TreeSpoke,
}

fn tree() -> Tree {
    let mut net = Topology::new();
    net.hub_init();
    let root = net.root_tree_hub();
    let a = net.add_tree_hub("hub-a", 2, 81, true);
    let b = net.add_tree_hub("hub-b", 3, 82, false);
    let root_proc = net.start_hub();
    let a_proc = net.start_tree_hub(&a);
    let b_proc = net.start_tree_hub(&b);
    let (ns_a, ns_b) = (net.ns_a.clone(), net.ns_b.clone());
    let a1 = net.tree_spoke(&a, "a1", &ns_a);
    let b1 = net.tree_spoke(&b, "b1", &ns_b);
    net.join_tree(&root, &a);
    net.join_tree(&root, &b);
    assert!(
        answers_within(&net, &a1.ns, &b1.tunnel_addr, Duration::from_secs(20)),
        "a1 cannot reach b1 across the branches"
    );
    Tree {
        net,
        root,
        root_proc,
        a_proc,
        b_proc,
        a,
        b,
        a1,
        b1,
    }
}

/// Pings until one answers or `within` passes.
fn answers_within(net: &Topology, ns: &str, addr: &str, within: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < within {
        if net.ping(ns, addr, 1) {
            return true;
        }
    }
    false
}

#[test]
fn branches_reach_each_other_and_every_lan_through_the_root() {
    if skip_unless_root("hierarchy::branches_reach_each_other") {
        return;
    }
    let Tree {
        net,
        root,
        a,
        b,
        a1,
        b1,
        ..
    } = tree();
    let list = net.tree_list(&root);
    let children = list["children"].as_array().cloned().unwrap_or_default();
    assert_eq!(children.len(), 2, "{list}");
    let row_a = children
        .iter()
        .find(|c| c["name"] == "hub-a")
        .cloned()
        .unwrap_or_default();
    assert_eq!(row_a["state"], "active", "{list}");
    assert_eq!(
        row_a["routed"],
        serde_json::json!(["10.81.0.0/24", "192.168.81.0/24", "fd81:1::/64"]),
        "{list}"
    );
    let (lan_a_ns, lan_a) = a.lan_host.clone().expect("a has a LAN");
    let (root_lan_ns, root_lan) = root.lan_host.clone().expect("the root has a LAN");
    assert!(net.ping(&b1.ns, &a1.tunnel_addr, 3), "b1 cannot reach a1");
    assert!(
        net.ping(&a1.ns, &root_lan, 3),
        "a1 cannot reach the root's LAN"
    );
    assert!(net.ping(&b1.ns, &lan_a, 3), "b1 cannot reach a's LAN");
    assert!(
        net.ping(&root_lan_ns, &b1.tunnel_addr, 3),
        "the root's LAN cannot reach b1"
    );
    assert!(
        net.ping(&lan_a_ns, &b1.tunnel_addr, 3),
        "a's LAN cannot reach b1"
    );
    assert!(
        net.ping(&a1.ns, &root.tunnel_addr, 3),
        "a1 cannot reach the root hub"
    );
    // IPv6 takes the same path.
    assert!(
        net.ping(&a1.ns, &b1.tunnel_addr6, 3),
        "a1 cannot reach b1 over IPv6"
    );
    assert!(
        net.ping(&b1.ns, &root.tunnel_addr6, 3),
        "b1 cannot reach the root over IPv6"
    );
    assert!(
        net.ping(&b1.ns, &a.tunnel_addr6, 3),
        "b1 cannot reach hub a over IPv6"
    );
    net.tcp_transfer_intact(
        &a1.ns,
        &b1.ns,
        &format!("{}:9161", b1.tunnel_addr),
        50 << 20,
    );
    // The root counts what crossed it between branches; each hub says
    // where it stands in the tree.
    let status = |hub: &TreeHub| -> serde_json::Value {
        serde_json::from_str(&net.tree_ok(hub, &["status", "--json"])).unwrap_or_default()
    };
    let at_root = status(&root);
    assert!(
        at_root["counters"]["to_branches"].as_u64() > Some(10_000),
        "{at_root}"
    );
    assert!(
        at_root["counters"]["from_branches"].as_u64() > Some(10_000),
        "{at_root}"
    );
    assert_eq!(at_root["child_hubs"], 2, "{at_root}");
    assert_eq!(at_root["parent"], serde_json::Value::Null, "{at_root}");
    let at_b = status(&b);
    assert_eq!(at_b["parent"], root.endpoint(), "{at_b}");
    let text = net.tree_ok(&root, &["status"]);
    assert!(text.contains("hub tree:     root; 2 child hubs"), "{text}");
    // The spokes hear the other branches as routes through their own hub.
    let routes = net.exec_ok(&a1.ns, &["ip", "route", "show", "dev", "tasuki0"]);
    assert!(routes.contains("10.82.0.0/24"), "a1's routes: {routes}");
    assert!(routes.contains("192.168.77.0/24"), "a1's routes: {routes}");
    let audit = net.tree_ok(&root, &["audit", "--json"]);
    assert!(
        audit.contains("hub_tree") && audit.contains("approved by admin"),
        "{audit}"
    );
}

#[test]
fn overlaps_and_loops_are_refused_naming_both() {
    if skip_unless_root("hierarchy::overlaps_and_loops_are_refused") {
        return;
    }
    let Tree {
        mut net, root, a, ..
    } = tree();
    // A third child whose tunnel network lies inside a's branch.
    let mut c = net.add_tree_hub("hub-c", 4, 81, false);
    // Its tunnel network is 10.81.0.0/24 too: re-initialised in a half of it.
    std::fs::remove_dir_all(&c.dir).expect("remove c's state");
    c.tunnel_net = "10.81.0.128/25".into();
    net.init_tree_hub(&c, &["--no-ipv6"]);
    net.start_tree_hub(&c);
    let inv = net.tree_ok(&root, &["hub", "invite", "hub-c"]);
    net.tree_ok(&c, &["join", inv.trim()]);
    let mut refused = String::new();
    net.wait_for("c's enrolment at the root", Duration::from_secs(20), || {
        let out = net.tree_cli(&root, &["hub", "approve", "hub-c"]);
        refused = tasuki_netns_tests::output_text(&out);
        !out.status.success() && refused.contains("overlaps")
    });
    assert!(
        refused.contains("10.81.0.128/25 overlaps 10.81.0.0/24, which child hub \"hub-a\" serves"),
        "{refused}"
    );
    let list = net.tree_list(&root);
    let row_c = list["children"]
        .as_array()
        .and_then(|l| l.iter().find(|x| x["name"] == "hub-c").cloned())
        .unwrap_or_default();
    assert_eq!(
        row_c["routed"],
        serde_json::json!([]),
        "nothing routed to c: {list}"
    );
    // A loop: the root joins its own child a.
    let inv = net.tree_ok(&a, &["hub", "invite", "root"]);
    net.tree_ok(&root, &["join", inv.trim()]);
    net.wait_for("the root's enrolment at a", Duration::from_secs(20), || {
        let out = net.tree_cli(&a, &["hub", "approve", "root"]);
        refused = tasuki_netns_tests::output_text(&out);
        !out.status.success() && refused.contains("overlaps")
    });
    // The root announces a's own branch (and its own networks, which a
    // hears from it as the rest of the tree): refused either way.
    assert!(
        refused.contains("10.81.0.0/24 overlaps 10.81.0.0/24, which this hub serves"),
        "{refused}"
    );
    // A second parent is refused at the child.
    let inv = net.tree_ok(&root, &["hub", "invite", "again"]);
    let out = net.tree_cli(&a, &["join", inv.trim()]);
    assert!(!out.status.success(), "a joined a second parent");
    assert!(
        tasuki_netns_tests::output_text(&out).contains("one parent"),
        "{}",
        tasuki_netns_tests::output_text(&out)
    );
}

#[test]
fn branches_work_alone_without_the_root_and_a_revoked_branch_is_cut_off() {
    if skip_unless_root("hierarchy::branches_work_alone") {
        return;
    }
    let Tree {
        net,
        root,
        root_proc,
        b_proc,
        a,
        b,
        a1,
        b1,
        ..
    } = tree();
    let (lan_a_ns, lan_a) = a.lan_host.clone().expect("a has a LAN");
    // The root dies: inside a branch nothing changes.
    net.kill9(&root_proc);
    assert!(net.ping(&a1.ns, &a.tunnel_addr, 5), "a1 lost its own hub");
    assert!(net.ping(&a1.ns, &lan_a, 5), "a1 lost a's LAN");
    assert!(net.ping(&lan_a_ns, &a1.tunnel_addr, 3), "a's LAN lost a1");
    assert!(net.ping(&b1.ns, &b.tunnel_addr, 5), "b1 lost its own hub");
    assert!(
        !net.ping(&a1.ns, &b1.tunnel_addr, 3),
        "cross-branch traffic without the root"
    );
    // Back by itself once the root is back.
    net.start_hub();
    assert!(
        answers_within(&net, &a1.ns, &b1.tunnel_addr, Duration::from_secs(40)),
        "cross-branch traffic did not come back after the root's restart"
    );
    // A child hub down takes only its own branch along.
    let (_, root_lan) = root.lan_host.clone().expect("the root has a LAN");
    net.kill9(&b_proc);
    assert!(
        !net.ping(&a1.ns, &b1.tunnel_addr, 2),
        "b1 reached with its hub down"
    );
    assert!(
        net.ping(&a1.ns, &root_lan, 3),
        "a1 lost the root's LAN when b went down"
    );
    net.start_tree_hub(&b);
    assert!(
        answers_within(&net, &a1.ns, &b1.tunnel_addr, Duration::from_secs(40)),
        "cross-branch traffic did not come back after b's restart"
    );
    // Revoking b at the root cuts its branch off at once.
    net.tree_ok(&root, &["hub", "revoke", "hub-b"]);
    assert!(
        !net.ping(&a1.ns, &b1.tunnel_addr, 3),
        "a1 still reaches b1 after b's revocation"
    );
    assert!(
        net.ping(&b1.ns, &b.tunnel_addr, 3),
        "b's branch stopped working inside"
    );
    let list = net.tree_list(&root);
    assert!(
        list["children"]
            .as_array()
            .is_some_and(|c| c.iter().all(|x| x["name"] != "hub-b")),
        "{list}"
    );
    net.wait_for(
        "b's routes withdrawn at a1",
        Duration::from_secs(10),
        || {
            !net.exec_ok(&a1.ns, &["ip", "route", "show", "dev", "tasuki0"])
                .contains("10.82.0.0/24")
        },
    );
}

#[test]
fn a_stream_across_branches_loses_nothing_across_20_rotations() {
    if skip_unless_root("hierarchy::a_stream_across_branches") {
        return;
    }
    let Tree {
        net,
        root,
        a,
        b,
        a1,
        b1,
        ..
    } = tree();
    // 100 s at most; stopped after the rotations.
    let stream = Stream::start(&net, &a1.ns, &b1.tunnel_addr, 10_000);
    std::thread::sleep(Duration::from_millis(500));
    let mut rotated = Vec::new();
    for i in 0..20 {
        let child = if i % 2 == 0 { &a } else { &b };
        let before = net.tree_epoch(&root, child).unwrap_or(0);
        net.tree_ok(&root, &["key", "rotate", "--spoke", &child.name]);
        net.wait_for(
            &format!(
                "rotation {i} of {}'s link (past epoch {before})",
                child.name
            ),
            Duration::from_secs(15),
            || net.tree_epoch(&root, child).is_some_and(|e| e > before),
        );
        rotated.push(net.tree_epoch(&root, child));
    }
    std::thread::sleep(Duration::from_secs(1));
    let s = stream.stop();
    eprintln!(
        "epochs after each rotation: {rotated:?}; {} sent, lost {:?}",
        s.sent, s.lost
    );
    assert!(s.sent >= 500, "the stream ran: {s:?}");
    assert!(
        s.lost.is_empty(),
        "lost across 20 rotations of the child hubs' links: {:?}",
        s.lost
    );
}

#[test]
fn three_levels_a_grandchild_reaches_every_branch() {
    if skip_unless_root("hierarchy::three_levels") {
        return;
    }
    let Tree {
        mut net,
        root,
        a,
        b1,
        ..
    } = tree();
    let g = net.add_tree_hub("hub-g", 5, 83, false);
    net.start_tree_hub(&g);
    let (ns_g1, _) = net.add_wan_host("g1", 31);
    let g1 = net.tree_spoke(&g, "g1", &ns_g1);
    net.join_tree(&a, &g);
    // a announces its grown branch; the root routes it once approved again.
    net.wait_for("a to announce g's network", Duration::from_secs(20), || {
        let list = net.tree_list(&root);
        list["children"].as_array().is_some_and(|c| {
            c.iter().any(|x| {
                x["name"] == "hub-a"
                    && x["unapproved"] == serde_json::json!(["10.83.0.0/24", "fd83:1::/64"])
            })
        })
    });
    assert!(
        !net.ping(&b1.ns, &g1.tunnel_addr, 2),
        "b1 reached g1 before the root approved the grown branch"
    );
    net.tree_ok(&root, &["hub", "approve", "hub-a"]);
    let (root_lan_ns, root_lan) = root.lan_host.clone().expect("the root has a LAN");
    assert!(
        answers_within(&net, &g1.ns, &b1.tunnel_addr, Duration::from_secs(20)),
        "g1 cannot reach b1 (grandchild → a → root → b)"
    );
    assert!(net.ping(&b1.ns, &g1.tunnel_addr, 3), "b1 cannot reach g1");
    assert!(
        net.ping(&g1.ns, &root_lan, 3),
        "g1 cannot reach the root's LAN"
    );
    assert!(
        net.ping(&root_lan_ns, &g1.tunnel_addr, 3),
        "the root's LAN cannot reach g1"
    );
    let (_, lan_a) = a.lan_host.clone().expect("a has a LAN");
    assert!(net.ping(&g1.ns, &lan_a, 3), "g1 cannot reach a's LAN");
    net.tcp_transfer_intact(
        &b1.ns,
        &g1.ns,
        &format!("{}:9162", g1.tunnel_addr),
        10 << 20,
    );
}

#[test]
fn every_hub_on_the_path_decides_by_its_own_rules() {
    if skip_unless_root("hierarchy::every_hub_decides") {
        return;
    }
    let Tree {
        net,
        root,
        b,
        a1,
        b1,
        ..
    } = tree();
    net.tree_ok(&root, &["access", "mode", "enforce"]);
    assert!(
        !net.ping(&a1.ns, &b1.tunnel_addr, 3),
        "the root let a branch through with no rule"
    );
    net.tree_ok(
        &root,
        &[
            "access",
            "allow",
            "--from",
            "hub:hub-a",
            "--to",
            "hub:hub-b",
            "--service",
            "icmp",
        ],
    );
    assert!(
        answers_within(&net, &a1.ns, &b1.tunnel_addr, Duration::from_secs(5)),
        "hub:hub-a -> hub:hub-b does not let a1 reach b1"
    );
    assert!(
        !net.ping(&b1.ns, &a1.tunnel_addr, 3),
        "b's branch reached a's with a rule one way only"
    );
    let check = net.tree_ok(
        &root,
        &[
            "access",
            "check",
            "--from",
            "spoke:hub-a",
            "--to",
            &b1.tunnel_addr,
            "--service",
            "icmp",
        ],
    );
    assert!(check.contains("allow"), "{check}");
    // An address of a's branch is checked as coming through a's link.
    let check = net.tree_ok(
        &root,
        &[
            "access",
            "check",
            "--from",
            &a1.tunnel_addr,
            "--to",
            &b1.tunnel_addr,
            "--service",
            "icmp",
            "--json",
        ],
    );
    let check: serde_json::Value = serde_json::from_str(&check).unwrap_or_default();
    assert_eq!(check["allowed"], true, "{check}");
    assert!(
        check["notes"]
            .to_string()
            .contains("child hub hub-a's branch"),
        "{check}"
    );
    // b's own rules decide too: what comes from the rest of the tree
    // arrives from its parent, by address.
    net.tree_ok(&b, &["access", "mode", "enforce"]);
    assert!(
        !net.ping(&a1.ns, &b1.tunnel_addr, 3),
        "b let the tree in with no rule"
    );
    net.tree_ok(
        &b,
        &[
            "access",
            "allow",
            "--from",
            "10.81.0.0/24",
            "--to",
            "spoke:b1",
            "--service",
            "icmp",
        ],
    );
    assert!(
        answers_within(&net, &a1.ns, &b1.tunnel_addr, Duration::from_secs(5)),
        "b's rule for a's branch does not let a1 in"
    );
}

#[test]
fn a_hub_whose_uplink_cannot_start_still_serves_its_branch() {
    if skip_unless_root("hierarchy::a_hub_whose_uplink_cannot_start") {
        return;
    }
    let Tree {
        net, a, a_proc, a1, ..
    } = tree();
    net.kill9(&a_proc);
    // Something else holds the uplink's interface name.
    net.exec_ok(
        &a.ns,
        &["ip", "link", "add", "tasuki0-up", "type", "bridge"],
    );
    net.start_tree_hub(&a);
    assert!(
        answers_within(&net, &a1.ns, &a.tunnel_addr, Duration::from_secs(20)),
        "a's own spoke lost its hub"
    );
    let status = net.tree_ok(&a, &["status"]);
    assert!(
        status.contains("warning:") && status.contains("uplink to the parent hub did not start"),
        "{status}"
    );
}
