//! The key station on etcd (issue 18) with the real binaries and a real
//! etcd: two hub members share one identity and one state; the active one
//! is killed with SIGKILL under a 100 packets/s stream and the standby takes
//! over (no re-enrolment, no key lost, both sides on the same epoch, keys
//! rotate on); the old active comes back as a standby; no key's bytes are
//! in etcd's files. With etcd gone the active hub keeps relaying and
//! refuses changes with a clear error, and takes them again once etcd is
//! back. Skipped unless root.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tasuki_netns_tests::{loss, skip_unless_root, Etcd, Proc, Stream, Topology, TreeHub, B_TUNNEL};

/// etcd, two members (the first active), spokes a and b enrolled through
/// the active one and carrying traffic.
struct Cluster {
    net: Topology,
    etcd: Vec<Etcd>,
    first: TreeHub,
    second: TreeHub,
    first_proc: Proc,
    second_proc: Proc,
}

fn cluster() -> Cluster {
    let mut net = Topology::new();
    let etcd = vec![net.start_etcd(40)];
    cluster_on(net, etcd)
}

fn cluster_on(mut net: Topology, etcd: Vec<Etcd>) -> Cluster {
    let first = net.first_member(&etcd);
    let second = net.join_member(&etcd, &first, 2);
    let first_proc = net.start_member(&first);
    net.wait_for(
        "the first member to be active",
        Duration::from_secs(30),
        || {
            net.must_be_alive(&first_proc);
            net.member_active(&first)
        },
    );
    let second_proc = net.start_member(&second);
    net.wait_for(
        "the second member to stand by",
        Duration::from_secs(30),
        || {
            net.must_be_alive(&second_proc);
            net.member_stands_by(&second)
        },
    );
    assert!(!net.member_active(&second), "two active members");
    for (name, ns) in [("a", net.ns_a.clone()), ("b", net.ns_b.clone())] {
        let invitation = net.invite_with(name, &["--pre-approved", "--service"]);
        let dir = net.spoke_dir(name);
        net.enrol_ok(&ns, &invitation, &dir);
        net.start_spoke(&ns, &dir, &net.spoke_socket(name));
    }
    net.wait_for("spoke a to reach spoke b", Duration::from_secs(30), || {
        net.ping(&net.ns_a, B_TUNNEL, 1)
    });
    Cluster {
        net,
        etcd,
        first,
        second,
        first_proc,
        second_proc,
    }
}

/// `tasuki-hub status --json` at `hub`.
fn member_status(net: &Topology, hub: &TreeHub) -> Value {
    serde_json::from_slice(&net.tree_cli(hub, &["status", "--json"]).stdout).unwrap_or(Value::Null)
}

/// Waits until changes are refused at `hub` with an error naming etcd.
fn changes_refused(net: &Topology, hub: &TreeHub, name: &str) {
    net.wait_for("changes to be refused", Duration::from_secs(30), || {
        let out = net.tree_cli(hub, &["spoke", "invite", name]);
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("etcd")
    });
}

/// The data plane carries traffic for a few seconds on end.
fn relays_on(net: &Topology) {
    for _ in 0..5 {
        assert!(
            net.ping(&net.ns_a, B_TUNNEL, 2),
            "the data plane stopped with etcd"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until the active member (whichever) takes a change again, then
/// until traffic flows.
fn changes_go_ahead(c: &Cluster, name: &str) {
    let net = &c.net;
    net.wait_for("changes to go ahead again", Duration::from_secs(40), || {
        [&c.first, &c.second]
            .into_iter()
            .find(|h| net.member_active(h))
            .is_some_and(|h| net.tree_cli(h, &["spoke", "invite", name]).status.success())
    });
    net.wait_for("traffic once etcd is back", Duration::from_secs(30), || {
        net.ping(&net.ns_a, B_TUNNEL, 1)
    });
}

/// The epoch of spoke `name`'s link at `hub`.
fn hub_epoch(net: &Topology, hub: &TreeHub, name: &str) -> u64 {
    let out = net.tree_cli(hub, &["key", "status", "--json"]);
    let links: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    links
        .as_array()
        .and_then(|l| l.iter().find(|x| x["spoke"] == name))
        .and_then(|x| x["epoch"].as_u64())
        .unwrap_or(0)
}

fn spoke_epoch(net: &Topology, name: &str) -> u64 {
    net.spoke_status_json(&net.spoke_socket(name))["epoch"]
        .as_u64()
        .unwrap_or(0)
}

/// Every key file under `dir`.
fn key_files(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().extension().is_some_and(|x| x == "key") {
            out.extend(std::fs::read(e.path()));
        }
    }
    out
}

fn all_bytes(dir: &Path, out: &mut Vec<u8>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            all_bytes(&p, out);
        } else {
            out.extend(std::fs::read(&p).unwrap_or_default());
        }
    }
}

#[test]
fn kill_9_of_the_active_hub_fails_over_to_the_standby() {
    if skip_unless_root("kill_9_of_the_active_hub_fails_over_to_the_standby") {
        return;
    }
    let c = cluster();
    let net = &c.net;
    // The spokes know both members (from the invitation and the hub).
    let hub = net.spoke_status_json(&net.spoke_socket("a"))["hub_endpoint"].clone();
    assert!(
        hub.as_str()
            .is_some_and(|h| h.contains(&c.second.endpoint())),
        "spoke a does not know the second member: {hub}"
    );
    let before = hub_epoch(net, &c.first, "a");
    assert!(before > 0);

    let stream = Stream::start(net, &net.ns_a, B_TUNNEL, 9000);
    std::thread::sleep(Duration::from_secs(2));
    let status = net.cluster_status(&c.second);
    assert_eq!(status["active"], c.first.endpoint().as_str(), "{status}");
    net.kill9(&c.first_proc);
    net.wait_for("the standby to take over", Duration::from_secs(30), || {
        net.member_active(&c.second)
    });
    let status = net.cluster_status(&c.first);
    assert_eq!(status["active"], c.second.endpoint().as_str(), "{status}");
    let st = member_status(net, &c.second);
    assert_eq!(st["cluster"]["health"], "active", "{st}");
    assert_eq!(
        st["cluster"]["members"].as_array().map(Vec::len),
        Some(2),
        "{st}"
    );
    assert_eq!(status["etcd"][0]["healthy"], true, "{status}");
    net.wait_for(
        "traffic from a to b through the new active hub",
        Duration::from_secs(30),
        || net.ping(&net.ns_a, B_TUNNEL, 1),
    );
    std::thread::sleep(Duration::from_secs(1));
    let streamed = stream.stop();
    eprintln!(
        "fail-over gap: {} packets at 100/s ({})",
        streamed.lost.len(),
        loss(&streamed)
    );
    assert!(
        streamed.answered > 0 && streamed.lost.len() < streamed.sent as usize,
        "{}",
        loss(&streamed)
    );

    // No re-enrolment, no key lost: the same epochs on both sides.
    for name in ["a", "b"] {
        net.wait_for(
            &format!("the new active hub and spoke {name} to agree on the epoch"),
            Duration::from_secs(20),
            || {
                let at_hub = hub_epoch(net, &c.second, name);
                at_hub > 0 && at_hub == spoke_epoch(net, name)
            },
        );
    }
    // Keys rotate on at the new active hub.
    let now = hub_epoch(net, &c.second, "a");
    net.tree_ok(&c.second, &["key", "rotate", "--spoke", "a"]);
    net.wait_for(
        "a rotation at the new active hub",
        Duration::from_secs(30),
        || {
            let at_hub = hub_epoch(net, &c.second, "a");
            at_hub > now && at_hub == spoke_epoch(net, "a")
        },
    );
    assert!(
        net.ping(&net.ns_a, B_TUNNEL, 3),
        "no traffic after the rotation"
    );

    // The old active comes back as a standby, never a second active.
    let again = net.start_member(&c.first);
    net.wait_for(
        "the old active to stand by",
        Duration::from_secs(30),
        || {
            net.must_be_alive(&again);
            net.member_stands_by(&c.first)
        },
    );
    assert!(!net.member_active(&c.first), "two active members");
    assert!(net.ping(&net.ns_a, B_TUNNEL, 3));
    let status = net.cluster_status(&c.first);
    let roles: Vec<(String, String)> = status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            (
                m["endpoint"].as_str().unwrap_or("").into(),
                m["role"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    assert_eq!(
        roles,
        vec![
            (c.first.endpoint(), "standby".to_owned()),
            (c.second.endpoint(), "active".to_owned())
        ],
        "{status}"
    );

    // The spokes' keys are nowhere in etcd's files (sealed there).
    let mut etcd_bytes = Vec::new();
    all_bytes(&c.etcd[0].data, &mut etcd_bytes);
    let keys = key_files(&net.spoke_dir("a").join("keys"));
    assert!(!keys.is_empty(), "spoke a holds no key files");
    for key in keys {
        assert!(
            !etcd_bytes.windows(key.len()).any(|w| w == key.as_slice()),
            "an epoch key's bytes are in etcd's data directory"
        );
    }
}

#[test]
fn with_etcd_down_the_active_hub_relays_on_and_refuses_changes() {
    if skip_unless_root("with_etcd_down_the_active_hub_relays_on_and_refuses_changes") {
        return;
    }
    let mut c = cluster();
    c.net.kill_etcd(&mut c.etcd[0]);
    changes_refused(&c.net, &c.first, "later");
    relays_on(&c.net);
    let st = member_status(&c.net, &c.first);
    assert!(
        st["warnings"].to_string().contains("etcd does not answer")
            || st["cluster"]["health"] == "orphaned",
        "status says nothing of etcd: {st}"
    );
    c.net.must_be_alive(&c.first_proc);
    c.net.restart_etcd(&mut c.etcd[0]);
    changes_go_ahead(&c, "later");
}

/// The active hub cut off from etcd (but not from its spokes): it refuses
/// every change, never issues a key, and once its lease has lapsed turns
/// its spokes away, which move to the member that took over; healed, it
/// steps down.
#[test]
fn a_partitioned_active_hub_never_issues_a_key_and_lets_its_spokes_go() {
    if skip_unless_root("a_partitioned_active_hub_never_issues_a_key_and_lets_its_spokes_go") {
        return;
    }
    let c = cluster();
    let net = &c.net;
    let etcd_host = c.etcd[0]
        .url
        .trim_start_matches("http://")
        .trim_end_matches(":2379");
    net.partition(&c.first.ns, &[etcd_host]);
    net.wait_for(
        "the second member to take over",
        Duration::from_secs(30),
        || net.member_stands_by(&c.second) && net.member_active(&c.second),
    );
    // The old active still runs, and issues nothing.
    net.must_be_alive(&c.first_proc);
    let out = net.tree_cli(&c.first, &["key", "rotate", "--spoke", "a"]);
    assert!(
        !out.status.success(),
        "a partitioned hub rotated a key: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    net.wait_for(
        "the spokes to move to the new active member",
        Duration::from_secs(30),
        || {
            net.ping(&net.ns_a, B_TUNNEL, 1)
                && hub_epoch(net, &c.second, "a") == spoke_epoch(net, "a")
        },
    );
    let now = hub_epoch(net, &c.second, "a");
    net.tree_ok(&c.second, &["key", "rotate", "--spoke", "a"]);
    net.wait_for(
        "a rotation at the new active member",
        Duration::from_secs(30),
        || {
            hub_epoch(net, &c.second, "a") > now
                && hub_epoch(net, &c.second, "a") == spoke_epoch(net, "a")
        },
    );
    net.heal(&c.first.ns);
    net.wait_for(
        "the old active to step down",
        Duration::from_secs(30),
        || !net.is_alive(&c.first_proc),
    );
    assert!(
        net.exit_status(&c.first_proc).is_some_and(|s| !s.success()),
        "a hub that lost its lease exited as if all were well"
    );
    assert!(net.ping(&net.ns_a, B_TUNNEL, 3));
}

/// Three etcd members: one killed changes nothing; two killed and the
/// active hub relays on and refuses changes; back, and changes go ahead.
#[test]
fn three_etcd_members_survive_one_loss_and_recover_from_two() {
    if skip_unless_root("three_etcd_members_survive_one_loss_and_recover_from_two") {
        return;
    }
    let mut net = Topology::new();
    let etcd = net.start_etcd_cluster([40, 41, 42]);
    let mut c = cluster_on(net, etcd);
    c.net.kill_etcd(&mut c.etcd[0]);
    let net = &c.net;
    let out = net.tree_cli(&c.first, &["spoke", "invite", "one-lost"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(net.member_active(&c.first) && !net.member_active(&c.second));
    assert!(net.ping(&net.ns_a, B_TUNNEL, 3));
    c.net.kill_etcd(&mut c.etcd[1]);
    changes_refused(&c.net, &c.first, "two-lost");
    relays_on(&c.net);
    for i in [0, 1] {
        let mut e = c.etcd[i].clone();
        c.net.restart_etcd(&mut e);
        c.etcd[i] = e;
    }
    changes_go_ahead(&c, "back");
}

/// Fail-overs in a row (TASUKI_FAILOVERS, 3 by default; `scripts/soak-ha`
/// runs 20), alternating kill -9 and a planned stop (SIGTERM gives the
/// lease back), each followed by a rotation: traffic comes back every time
/// and the active hub and the spokes agree on every epoch.
#[test]
fn fail_overs_in_a_row_keep_both_sides_on_one_epoch() {
    if skip_unless_root("fail_overs_in_a_row_keep_both_sides_on_one_epoch") {
        return;
    }
    let rounds: u32 = std::env::var("TASUKI_FAILOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let c = cluster();
    let net = &c.net;
    let hubs = [&c.first, &c.second];
    let mut procs = [Some(c.first_proc.clone()), Some(c.second_proc.clone())];
    let mut gaps = Vec::new();
    for round in 0..rounds {
        let (from, to) = ((round % 2) as usize, ((round + 1) % 2) as usize);
        if procs[to].is_none() {
            // The member that stepped out last round stands by again.
            let p = net.start_member(hubs[to]);
            net.wait_for("a member to stand by", Duration::from_secs(30), || {
                net.must_be_alive(&p);
                net.member_stands_by(hubs[to])
            });
            procs[to] = Some(p);
        }
        let stream = Stream::start(net, &net.ns_a, B_TUNNEL, 6000);
        std::thread::sleep(Duration::from_millis(500));
        let old = procs[from].take().expect("the active member runs");
        if round % 2 == 0 {
            net.kill9(&old);
        } else {
            assert!(net.sigterm(&old).success() || !net.is_alive(&old));
        }
        net.wait_for(
            &format!("fail-over {round}"),
            Duration::from_secs(30),
            || net.member_active(hubs[to]),
        );
        net.wait_for(
            &format!("traffic after fail-over {round}"),
            Duration::from_secs(30),
            || net.ping(&net.ns_a, B_TUNNEL, 1),
        );
        gaps.push(stream.stop().lost.len());
        let before = hub_epoch(net, hubs[to], "a");
        net.tree_ok(hubs[to], &["key", "rotate", "--spoke", "a"]);
        net.wait_for(
            &format!("a rotation after fail-over {round}"),
            Duration::from_secs(30),
            || {
                let at_hub = hub_epoch(net, hubs[to], "a");
                at_hub > before && at_hub == spoke_epoch(net, "a")
            },
        );
        for name in ["a", "b"] {
            net.wait_for(
                &format!("spoke {name} on the hub's epoch"),
                Duration::from_secs(20),
                || {
                    let at_hub = hub_epoch(net, hubs[to], name);
                    at_hub > 0 && at_hub == spoke_epoch(net, name)
                },
            );
        }
    }
    eprintln!("fail-over gaps (packets lost at 100/s, kill -9 and SIGTERM alternating): {gaps:?}");
}

/// Two members started at the same moment: exactly one becomes active.
#[test]
fn two_members_started_at_once_make_one_active() {
    if skip_unless_root("two_members_started_at_once_make_one_active") {
        return;
    }
    let mut net = Topology::new();
    let etcd = vec![net.start_etcd(40)];
    let first = net.first_member(&etcd);
    let second = net.join_member(&etcd, &first, 2);
    let (p1, p2) = (net.start_member(&first), net.start_member(&second));
    net.wait_for("one member to be active", Duration::from_secs(30), || {
        net.must_be_alive(&p1);
        net.must_be_alive(&p2);
        net.member_active(&first) || net.member_active(&second)
    });
    std::thread::sleep(Duration::from_secs(2));
    let active = [&first, &second]
        .into_iter()
        .filter(|h| net.member_active(h))
        .count();
    assert_eq!(active, 1, "{active} active members");
    let status = net.cluster_status(&first);
    let roles: Vec<&str> = status["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["role"].as_str())
        .collect();
    let mut sorted = roles.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, ["active", "standby"], "{status}");
    // The active member cannot be removed; a standby can, and is gone.
    let (active, standby) = if net.member_active(&first) {
        (&first, &second)
    } else {
        (&second, &first)
    };
    let bin = tasuki_netns_tests::binaries().hub.display().to_string();
    let dir = active.dir.display().to_string();
    let remove = |who: &TreeHub| {
        net.exec(
            &active.ns,
            &[
                bin.as_str(),
                "cluster",
                "remove",
                &who.endpoint(),
                "--state-dir",
                &dir,
            ],
        )
    };
    let out = remove(active);
    assert!(!out.status.success(), "the active member was removed");
    assert!(String::from_utf8_lossy(&out.stderr).contains("active member"));
    // A running standby could become active: stopped first, then removed.
    let out = remove(standby);
    assert!(!out.status.success(), "a running standby was removed");
    let standby_proc = if std::ptr::eq(standby, &first) {
        &p1
    } else {
        &p2
    };
    net.kill9(standby_proc);
    net.wait_for(
        "the stopped standby to show as down",
        Duration::from_secs(20),
        || remove(standby).status.success(),
    );
    let status = net.cluster_status(&first);
    assert_eq!(
        status["members"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
}
