//! Users with the real daemons: the login gate (claim 2), service spokes
//! (claim 14), logout, lock-outs, a second device confirmed from the first
//! (fig. 6), and user removal.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use tasuki_netns_tests::{
    binaries, output_text, skip_unless_root, spoke_stdin, Proc, Topology, HUB_TUNNEL,
};

/// A hub with spoke `a` (a user's laptop: needs a login) in ns a, and a
/// service spoke `srv` in ns b; user alice exists and may use `a`.
struct Office {
    t: Topology,
    _hub: Proc,
    _a: Proc,
    _srv: Proc,
    a_socket: std::path::PathBuf,
    alice_initial: String,
}

impl Office {
    fn up() -> Self {
        let t = Topology::new();
        t.hub_init();
        let hub = t.start_hub();
        let inv = t.invite_with("a", &["--pre-approved"]);
        t.enrol_ok(&t.ns_a, &inv, &t.spoke_dir("a"));
        let inv = t.invite_with("srv", &["--pre-approved", "--service"]);
        t.enrol_ok(&t.ns_b, &inv, &t.spoke_dir("srv"));
        let a_socket = t.spoke_socket("a");
        let a = t.start_spoke(&t.ns_a, &t.spoke_dir("a"), &a_socket);
        let srv = t.start_spoke(&t.ns_b, &t.spoke_dir("srv"), &t.spoke_socket("srv"));
        let out = t.hub_cli(&["user", "add", "alice", "--name", "Alice A", "--json"]);
        assert!(out.status.success(), "{}", output_text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let alice_initial = v["initial_password"].as_str().unwrap().to_owned();
        assert!(t
            .hub_cli(&["user", "allow", "alice", "--spoke", "a"])
            .status
            .success());
        t.wait_for(
            "the service spoke to reach the hub",
            Duration::from_secs(30),
            || t.ping(&t.ns_b, HUB_TUNNEL, 1),
        );
        Office {
            t,
            _hub: hub,
            _a: a,
            _srv: srv,
            a_socket,
            alice_initial,
        }
    }

    fn login(&self, user: &str, input: &str) -> Output {
        spoke_stdin(&self.a_socket, &["login", user, "--password-stdin"], input)
    }

    fn a_reaches_hub(&self) -> bool {
        self.t.ping(&self.t.ns_a, HUB_TUNNEL, 1)
    }
}

const NEW_PASSWORD: &str = "correct horse battery staple";

#[test]
fn traffic_flows_only_while_an_allowed_user_is_logged_in() {
    if skip_unless_root("traffic_flows_only_while_an_allowed_user_is_logged_in") {
        return;
    }
    let o = Office::up();
    let t = &o.t;
    // A service spoke carries traffic with no login; spoke a does not.
    assert!(t.ping(&t.ns_b, HUB_TUNNEL, 2));
    std::thread::sleep(Duration::from_secs(1));
    assert!(!o.a_reaches_hub(), "no user logged in, yet traffic flowed");
    let s = t.spoke_status_json(&o.a_socket);
    assert_eq!(s["state"], "needs-login", "{s}");
    assert!(
        s["counters"]["dropped"]["not_logged_in"]
            .as_u64()
            .unwrap_or(0)
            > 0,
        "{s}"
    );
    // Refusals: wrong password, unknown user, a user not allowed on this spoke.
    let wrong = o.login("alice", "not-the-password\n");
    assert!(!wrong.status.success());
    assert!(
        output_text(&wrong).contains("wrong password"),
        "{}",
        output_text(&wrong)
    );
    let unknown = o.login("mallory", "whatever\n");
    assert!(!unknown.status.success());
    assert!(output_text(&unknown).contains("wrong password"));
    let bob = t.hub_cli(&["user", "add", "bob", "--json"]);
    let bob_pw: Value = serde_json::from_slice(&bob.stdout).unwrap();
    let bob_pw = bob_pw["initial_password"].as_str().unwrap();
    let not_allowed = o.login("bob", &format!("{bob_pw}\n"));
    assert!(!not_allowed.status.success());
    assert!(
        output_text(&not_allowed).contains("not allowed"),
        "{}",
        output_text(&not_allowed)
    );
    assert!(!o.a_reaches_hub());
    // The initial password alone is not enough: it must be changed.
    let no_change = o.login("alice", &format!("{}\n", o.alice_initial));
    assert!(!no_change.status.success());
    assert!(
        output_text(&no_change).contains("initial password"),
        "{}",
        output_text(&no_change)
    );
    let weak = o.login("alice", &format!("{}\nshort\n", o.alice_initial));
    assert!(!weak.status.success());
    // Login with the initial password and a new one.
    let ok = o.login("alice", &format!("{}\n{NEW_PASSWORD}\n", o.alice_initial));
    assert!(ok.status.success(), "{}", output_text(&ok));
    t.wait_for("traffic after login", Duration::from_secs(20), || {
        o.a_reaches_hub()
    });
    let s = t.spoke_status_json(&o.a_socket);
    assert_eq!(s["users"], serde_json::json!(["alice"]));
    assert_eq!(s["carrying"], true);
    // Logout ends the traffic and rotates the key.
    let epoch_before = key_epoch(t, "a");
    let out = t.spoke_cli(&o.a_socket, &["logout"]);
    assert!(out.status.success(), "{}", output_text(&out));
    t.wait_for(
        "traffic to stop after logout",
        Duration::from_secs(10),
        || !o.a_reaches_hub(),
    );
    t.wait_for(
        "the key to rotate after logout",
        Duration::from_secs(20),
        || key_epoch(t, "a") > epoch_before,
    );
    // The changed password works; the initial one does not.
    assert!(!o
        .login("alice", &format!("{}\n", o.alice_initial))
        .status
        .success());
    assert!(o
        .login("alice", &format!("{NEW_PASSWORD}\n"))
        .status
        .success());
    t.wait_for(
        "traffic after the second login",
        Duration::from_secs(20),
        || o.a_reaches_hub(),
    );
    // The audit log has it all, in order.
    let audit: Value = serde_json::from_slice(&t.hub_cli(&["audit", "--json"]).stdout).unwrap();
    let kinds: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["user"] == "alice" || r["user"] == "bob" || r["user"] == "mallory")
        .filter_map(|r| r["kind"].as_str())
        .collect();
    let first = |k: &str| kinds.iter().position(|x| *x == k).unwrap_or(usize::MAX);
    assert!(first("login_failed") < first("login"), "{kinds:?}");
    assert!(first("login") < first("logout"), "{kinds:?}");
}

fn key_epoch(t: &Topology, spoke: &str) -> u64 {
    let v: Value = serde_json::from_slice(&t.hub_cli(&["key", "status", "--json"]).stdout)
        .unwrap_or(Value::Null);
    v.as_array()
        .and_then(|l| l.iter().find(|x| x["spoke"] == spoke))
        .and_then(|x| x["epoch"].as_u64())
        .unwrap_or(0)
}

#[test]
fn failed_logins_are_rate_limited() {
    if skip_unless_root("failed_logins_are_rate_limited") {
        return;
    }
    let o = Office::up();
    for _ in 0..5 {
        assert!(!o.login("alice", "nope\n").status.success());
    }
    let locked = o.login("alice", &format!("{}\n{NEW_PASSWORD}\n", o.alice_initial));
    assert!(!locked.status.success(), "a locked-out login went through");
    assert!(
        output_text(&locked).contains("too many failed logins"),
        "{}",
        output_text(&locked)
    );
}

#[test]
fn a_second_device_is_confirmed_from_the_first() {
    if skip_unless_root("a_second_device_is_confirmed_from_the_first") {
        return;
    }
    let o = Office::up();
    let t = &o.t;
    assert!(o
        .login("alice", &format!("{}\n{NEW_PASSWORD}\n", o.alice_initial))
        .status
        .success());
    // On A: an invitation for the new device.
    let inv = t.spoke_cli(&o.a_socket, &["invite-device", "alice-phone"]);
    assert!(inv.status.success(), "{}", output_text(&inv));
    let invitation = String::from_utf8_lossy(&inv.stdout).trim().to_owned();
    // B (here in spoke b's namespace, beside the service spoke) enrols as
    // alice's device and waits.
    let b_dir = t.spoke_dir("phone");
    let out = t.exec(
        &t.ns_b,
        &[
            binaries().spoke.to_str().unwrap(),
            "enrol",
            &invitation,
            "--state-dir",
            b_dir.to_str().unwrap(),
            "--as-user",
            "alice",
        ],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("confirmation"),
        "{}",
        output_text(&out)
    );
    let list: Value =
        serde_json::from_slice(&t.hub_cli(&["spoke", "list", "--json"]).stdout).unwrap();
    let phone = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "alice-phone")
        .unwrap()
        .clone();
    assert_eq!(phone["state"], "pending");
    assert_eq!(phone["owner"], "alice");
    assert!(
        phone["epoch"].is_null(),
        "nothing works on B before A confirms"
    );
    // A hears about it and confirms; no admin involved.
    t.wait_for(
        "A to hear about the new device",
        Duration::from_secs(10),
        || {
            let s = t.spoke_status_json(&o.a_socket);
            s["devices_waiting"]
                .as_array()
                .is_some_and(|d| d.iter().any(|x| x == "alice-phone"))
        },
    );
    let ok = t.spoke_cli(&o.a_socket, &["approve-device"]);
    assert!(ok.status.success(), "{}", output_text(&ok));
    let users: Value =
        serde_json::from_slice(&t.hub_cli(&["user", "list", "--json"]).stdout).unwrap();
    let alice = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == "alice")
        .unwrap();
    assert!(alice["spokes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s == "alice-phone"));
    let audit: Value = serde_json::from_slice(&t.hub_cli(&["audit", "--json"]).stdout).unwrap();
    assert!(audit
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["kind"] == "approval"
            && r["spoke"] == "alice-phone"
            && r["detail"].as_str().unwrap_or("").contains("user alice")));
    // B, started now, gets its keys with no further action, and alice can
    // log in on it.
    let b_socket = t.spoke_socket("phone");
    let _b = t.spawn(
        &t.ns_b,
        &[
            binaries().spoke.to_str().unwrap(),
            "run",
            "--state-dir",
            b_dir.to_str().unwrap(),
            "--socket",
            b_socket.to_str().unwrap(),
            "--interface",
            "tsk-phone",
        ],
        &t.dir().join("phone.log"),
    );
    t.wait_for(
        "the new device to get its keys",
        Duration::from_secs(30),
        || {
            let out = t.spoke_cli(&b_socket, &["status", "--json"]);
            serde_json::from_slice::<Value>(&out.stdout)
                .is_ok_and(|s| s["epoch"].as_u64().is_some_and(|e| e > 0))
        },
    );
    let login_b = spoke_stdin(
        &b_socket,
        &["login", "alice", "--password-stdin"],
        &format!("{NEW_PASSWORD}\n"),
    );
    assert!(login_b.status.success(), "{}", output_text(&login_b));
    // A user who is not logged in on A cannot confirm anything.
    let nobody = t.spoke_cli(&o.a_socket, &["approve-device", "x", "--user", "mallory"]);
    assert!(!nobody.status.success());
}

#[test]
fn removing_a_user_logs_them_out_everywhere() {
    if skip_unless_root("removing_a_user_logs_them_out_everywhere") {
        return;
    }
    let o = Office::up();
    let t = &o.t;
    assert!(o
        .login("alice", &format!("{}\n{NEW_PASSWORD}\n", o.alice_initial))
        .status
        .success());
    t.wait_for("traffic after login", Duration::from_secs(20), || {
        o.a_reaches_hub()
    });
    assert!(t.hub_cli(&["user", "remove", "alice"]).status.success());
    t.wait_for("traffic to stop", Duration::from_secs(10), || {
        !o.a_reaches_hub()
    });
    t.wait_for(
        "the spoke to see nobody logged in",
        Duration::from_secs(10),
        || {
            let s = t.spoke_status_json(&o.a_socket);
            s["users"].as_array().is_some_and(|u| u.is_empty()) && s["carrying"] == false
        },
    );
    assert!(!o
        .login("alice", &format!("{NEW_PASSWORD}\n"))
        .status
        .success());
}
