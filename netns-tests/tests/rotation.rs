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

/// After a rotation and the grace period the hub holds only the new epoch,
/// and traffic still flows.
#[test]
fn ended_epochs_are_dropped_after_the_grace_period() {
    if skip_unless_root("ended_epochs_are_dropped_after_the_grace_period") {
        return;
    }
    let net = TwoSpokes::up();
    let t = &net.topo;
    assert!(t
        .hub_cli(&["key", "policy", "set", "--interval", "off", "--grace", "1s"])
        .status
        .success());
    let status_before: Value =
        serde_json::from_slice(&t.hub_cli(&["key", "status", "--json"]).stdout)
            .unwrap_or(Value::Null);
    assert!(status_before.is_array(), "key status --json is a list");
    let before = epoch_of(&net, "a");
    assert!(t
        .hub_cli(&["key", "rotate", "--spoke", "a"])
        .status
        .success());
    t.wait_for(
        "spoke a to move to a new epoch",
        Duration::from_secs(20),
        || epoch_of(&net, "a") > before,
    );
    // The old epoch stays for the grace period, then both sides erase it.
    t.wait_for(
        "the hub to hold only the new epoch",
        Duration::from_secs(20),
        || {
            let out = t.hub_cli(&["key", "status", "--json"]);
            let links: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            links
                .as_array()
                .and_then(|l| l.iter().find(|x| x["spoke"] == "a"))
                .is_some_and(|x| x["held"].as_array().is_some_and(|h| h.len() == 1))
        },
    );
    assert!(t.ping(&t.ns_a, B_TUNNEL, 3), "traffic after erasure");
}
