//! Spokes whose clocks are hours off (issue 7): the hub's clock decides, and
//! enrolment, login, traffic and rotation all work.

mod common;

#[allow(unused_imports)]
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tasuki_netns_tests::{binaries, skip_unless_root, Topology, A_TUNNEL, B_TUNNEL, LAN_HOST};

// ----- a spoke clock hours off -----

/// The `faketime` prefix that sets a process's wall clock `offset` off (the
/// monotonic clock stays true, as on a real machine with a wrong clock).
fn faketime(offset: &str) -> Vec<&str> {
    vec![
        "env",
        "FAKETIME_DONT_FAKE_MONOTONIC=1",
        "faketime",
        "-f",
        offset,
    ]
}

/// Spoke a's clock is 5 hours ahead and spoke b's 5 hours behind; the hub's
/// clock is the truth. Enrolment (with an invitation that a clock 5 hours
/// ahead would think expired), a user's login, relayed traffic and
/// rotations (on demand, by interval, and batches the spokes move through
/// on their own under a hard limit) all work.
#[test]
fn spokes_with_clocks_hours_off_work() {
    if skip_unless_root("spokes_with_clocks_hours_off_work") {
        return;
    }
    if Command::new("faketime").arg("--version").output().is_err() {
        let _ = std::io::Write::write_all(
            &mut std::io::stderr(),
            b"SKIPPED spokes_with_clocks_hours_off_work: faketime is not installed (apt-get install faketime)\n",
        );
        return;
    }
    let t = Topology::new();
    t.hub_init();
    let _hub = t.start_hub();
    // The spoke's own clock really is off.
    let ahead = t.exec_ok(&t.ns_a, &[faketime("+5h"), vec!["date", "+%s"]].concat());
    let now = tasuki_shell_now();
    let ahead: u64 = ahead.trim().parse().unwrap_or(0);
    assert!(ahead > now + 4 * 3600, "faketime does not move the clock");

    let (a_dir, a_socket) = (t.spoke_dir("a"), t.spoke_socket("a"));
    let (b_dir, b_socket) = (t.spoke_dir("b"), t.spoke_socket("b"));
    let inv_a = t.invite_with("a", &["--pre-approved", "--expires", "1h"]);
    let out = enrol_with(&t, &t.ns_a, &faketime("+5h"), &inv_a, &a_dir);
    assert!(
        out.status.success(),
        "enrol with the clock 5 h ahead: {}",
        text(&out)
    );
    let inv_b = t.invite_with("b", &["--pre-approved", "--service", "--expires", "1h"]);
    let out = enrol_with(&t, &t.ns_b, &faketime("-5h"), &inv_b, &b_dir);
    assert!(
        out.status.success(),
        "enrol with the clock 5 h behind: {}",
        text(&out)
    );
    // An invitation that really expired is still refused, by the hub.
    let inv_x = t.invite_with("x", &["--pre-approved", "--expires", "1s"]);
    std::thread::sleep(Duration::from_millis(2100));
    let out = enrol_with(&t, &t.ns_b, &faketime("-5h"), &inv_x, &t.spoke_dir("x"));
    assert!(
        !out.status.success() && text(&out).contains("expired"),
        "an expired invitation: {}",
        text(&out)
    );

    let _a = start_spoke_with(&t, &t.ns_a, &a_dir, &a_socket, &faketime("+5h"), &[]);
    let _b = start_spoke_with(&t, &t.ns_b, &b_dir, &b_socket, &faketime("-5h"), &[]);
    let out = t.hub_cli(&["user", "add", "alice", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let pw: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    let pw = pw["initial_password"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let out = t.hub_cli(&["user", "allow", "alice", "--spoke", "a"]);
    assert!(out.status.success(), "{}", text(&out));
    t.wait_for("spoke a's control channel", Duration::from_secs(30), || {
        t.spoke_status_json(&a_socket)["control_connected"] == true
    });
    let spoke = binaries().spoke.to_str().unwrap_or_default();
    let out = t.exec_stdin(
        &t.ns_a,
        &[
            spoke,
            "login",
            "alice",
            "--password-stdin",
            "--socket",
            a_socket.to_str().unwrap_or_default(),
        ],
        &format!("{pw}\nthe clock is wrong here\n"),
        Duration::from_secs(40),
    );
    assert!(
        out.status.success(),
        "login on a spoke 5 h ahead: {}",
        text(&out)
    );
    t.wait_for("traffic a → b", Duration::from_secs(30), || {
        t.ping(&t.ns_a, B_TUNNEL, 1)
    });
    assert!(t.ping(&t.ns_b, A_TUNNEL, 2), "b → a");
    assert!(t.ping(&t.ns_b, LAN_HOST, 1), "b → LAN");
    let ka = wait_agreed(&t, "a", &a_socket, &t.ns_a, Duration::from_secs(20));
    let kb = wait_agreed(&t, "b", &b_socket, &t.ns_b, Duration::from_secs(20));
    // Rotations: on demand, then by a 2 s interval policy.
    let out = t.hub_cli(&["key", "rotate", "--all"]);
    assert!(out.status.success(), "{}", text(&out));
    t.wait_for("the asked-for rotations", Duration::from_secs(30), || {
        let _ = t.ping(&t.ns_a, B_TUNNEL, 1);
        t.agreed_epoch("a", &a_socket).is_some_and(|k| k > ka)
            && t.agreed_epoch("b", &b_socket).is_some_and(|k| k > kb)
    });
    set_policy(&t, &["--interval", "2s", "--grace", "1s"]);
    let (ka, kb) = (
        t.hub_link("a")
            .and_then(|l| l["epoch"].as_u64())
            .unwrap_or(0),
        t.hub_link("b")
            .and_then(|l| l["epoch"].as_u64())
            .unwrap_or(0),
    );
    let ping = t.spawn(
        &t.ns_a,
        &["ping", "-c", "80", "-i", "0.1", "-W", "2", B_TUNNEL],
        &t.dir().join("clock-ping.log"),
    );
    t.wait_for(
        "rotations by the interval policy",
        Duration::from_secs(30),
        || {
            t.hub_link("a")
                .and_then(|l| l["epoch"].as_u64())
                .unwrap_or(0)
                >= ka + 2
                && t.hub_link("b")
                    .and_then(|l| l["epoch"].as_u64())
                    .unwrap_or(0)
                    >= kb + 2
        },
    );
    t.wait_for("the ping to end", Duration::from_secs(30), || {
        !t.is_alive(&ping)
    });
    let log = std::fs::read_to_string(t.dir().join("clock-ping.log")).unwrap_or_default();
    assert!(
        log.contains("80 packets transmitted, 80 received"),
        "packets lost across rotations with wrong clocks:\n{log}"
    );
    // Batches with a hard limit: the spokes count each epoch's lifetime
    // themselves and move on by themselves; a wrong wall clock must neither
    // end an epoch early (blocking traffic) nor keep it forever.
    set_policy(
        &t,
        &["--interval", "3s", "--batch", "2", "--hard-limit", "on"],
    );
    let held_ahead = |socket: &Path| {
        let s = t.spoke_status_json(socket);
        let cur = s["epoch"].as_u64().unwrap_or(0);
        let ahead = s["held_epochs"]
            .as_array()
            .map_or(0, |h| h.iter().filter(|k| k.as_u64() > Some(cur)).count());
        (cur, ahead, s["blocked"] == true)
    };
    t.wait_for(
        "both spokes to hold a batch ahead",
        Duration::from_secs(30),
        || held_ahead(&a_socket).1 >= 1 && held_ahead(&b_socket).1 >= 1,
    );
    let (start_a, _, _) = held_ahead(&a_socket);
    let (start_b, _, _) = held_ahead(&b_socket);
    t.wait_for(
        "the spokes to move through their batches",
        Duration::from_secs(30),
        || {
            assert!(
                t.ping(&t.ns_a, B_TUNNEL, 1),
                "a → b with batches and wrong clocks"
            );
            let (a, _, a_blocked) = held_ahead(&a_socket);
            let (b, _, b_blocked) = held_ahead(&b_socket);
            assert!(
                !a_blocked && !b_blocked,
                "a hard limit bit a spoke with a wrong clock"
            );
            a >= start_a + 2 && b >= start_b + 2
        },
    );
    set_policy(
        &t,
        &["--interval", "off", "--batch", "0", "--hard-limit", "off"],
    );
    wait_agreed(&t, "a", &a_socket, &t.ns_a, Duration::from_secs(20));
    wait_agreed(&t, "b", &b_socket, &t.ns_b, Duration::from_secs(20));
}
