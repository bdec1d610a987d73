//! Self-registration with the real daemons: a person asks for an account
//! from a spoke with a password of their own, an admin approves or denies
//! it, and only an approved account logs in; waiting registrations survive
//! a hub restart.

use std::time::Duration;

use serde_json::Value;
use tasuki_netns_tests::{output_text, skip_unless_root, spoke_stdin, Topology, HUB_TUNNEL};

const PASSWORD: &str = "carol's own long password";

/// The entry of `id` in `tasuki-hub user list --json`, or null.
fn listed(t: &Topology, id: &str) -> Value {
    let out = t.hub_cli(&["user", "list", "--json"]);
    assert!(out.status.success(), "{}", output_text(&out));
    let all: Value = serde_json::from_slice(&out.stdout).unwrap();
    all.as_array()
        .and_then(|a| a.iter().find(|u| u["id"] == id).cloned())
        .unwrap_or(Value::Null)
}

#[test]
fn a_registration_logs_in_only_after_an_admin_approves_it() {
    if skip_unless_root("a_registration_logs_in_only_after_an_admin_approves_it") {
        return;
    }
    let t = Topology::new();
    t.hub_init();
    let hub = t.start_hub();
    let inv = t.invite_with("kiosk", &["--pre-approved"]);
    t.enrol_ok(&t.ns_a, &inv, &t.spoke_dir("kiosk"));
    let socket = t.spoke_socket("kiosk");
    let _kiosk = t.start_spoke(&t.ns_a, &t.spoke_dir("kiosk"), &socket);
    let register = |id: &str, password: &str| {
        spoke_stdin(
            &socket,
            &[
                "register",
                id,
                "--name",
                "Carol C",
                "--email",
                "carol@example.com",
                "--password-stdin",
            ],
            &format!("{password}\n"),
        )
    };
    let login = |id: &str, password: &str| {
        spoke_stdin(
            &socket,
            &["login", id, "--password-stdin"],
            &format!("{password}\n"),
        )
    };

    // The request is stored and shown to the admin, with where it came from.
    t.wait_for(
        "the kiosk's control channel",
        Duration::from_secs(20),
        || t.spoke_status_json(&socket)["control_connected"] == true,
    );
    let out = register("carol", PASSWORD);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("waits for an admin"),
        "{}",
        output_text(&out)
    );
    let v = listed(&t, "carol");
    assert_eq!(v["pending"], true, "{v}");
    assert_eq!(v["spokes"], serde_json::json!(["kiosk"]), "{v}");
    assert_eq!(v["name"], "Carol C", "{v}");
    // Refusals: the same id again, a weak password, a bad id.
    let again = register("carol", PASSWORD);
    assert!(!again.status.success());
    assert!(
        output_text(&again).contains("already exists"),
        "{}",
        output_text(&again)
    );
    let weak = register("dave", "short");
    assert!(!weak.status.success());
    assert!(
        output_text(&weak).contains("at least"),
        "{}",
        output_text(&weak)
    );
    let bad = register("no spaces", PASSWORD);
    assert!(!bad.status.success());
    assert!(
        output_text(&bad).contains("invalid user id"),
        "{}",
        output_text(&bad)
    );

    // Waiting: the owner hears so, and no traffic flows.
    let early = login("carol", PASSWORD);
    assert!(!early.status.success());
    assert!(
        output_text(&early).contains("approval"),
        "{}",
        output_text(&early)
    );
    assert!(
        !t.ping(&t.ns_a, HUB_TUNNEL, 2),
        "traffic flowed for a waiting registration"
    );

    // A restarted hub still holds it.
    t.sigterm(&hub);
    let _hub = t.start_hub();
    assert_eq!(listed(&t, "carol")["pending"], true);

    // Approved: carol logs in with the password she chose (no change asked).
    let out = t.hub_cli(&["user", "approve", "carol"]);
    assert!(out.status.success(), "{}", output_text(&out));
    t.wait_for(
        "carol's login after approval",
        Duration::from_secs(20),
        || login("carol", PASSWORD).status.success(),
    );
    assert_eq!(listed(&t, "carol")["pending"], false);
    t.wait_for("carol's traffic", Duration::from_secs(20), || {
        t.ping(&t.ns_a, HUB_TUNNEL, 1)
    });

    // Denied: dave cannot log in, and the id is free again.
    let out = register("dave", "dave's own long password");
    assert!(out.status.success(), "{}", output_text(&out));
    let out = t.hub_cli(&["user", "deny", "dave"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(listed(&t, "dave"), Value::Null);
    let denied = login("dave", "dave's own long password");
    assert!(!denied.status.success());
    assert!(
        output_text(&denied).contains("wrong password"),
        "{}",
        output_text(&denied)
    );
    let out = t.hub_cli(&["user", "deny", "dave"]);
    assert!(
        !out.status.success(),
        "a second denial should fail: {}",
        output_text(&out)
    );
    assert!(register("dave", "dave's own long password")
        .status
        .success());

    // The audit log has each request and each decision.
    let audit: Value = serde_json::from_slice(&t.hub_cli(&["audit", "--json"]).stdout).unwrap();
    let records = |user: &str, kind: &str, refused: bool| {
        audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["user"] == user && r["kind"] == kind)
            .filter(|r| {
                r["detail"]
                    .as_str()
                    .is_some_and(|d| d.starts_with("refused"))
                    == refused
            })
            .count()
    };
    let of = |user: &str, kind: &str| records(user, kind, false);
    assert_eq!(of("carol", "registration"), 1, "{audit}");
    assert_eq!(of("dave", "registration"), 2, "{audit}");
    // Refusals are audited too: carol's second request, dave's weak password.
    assert_eq!(records("carol", "registration", true), 1, "{audit}");
    assert_eq!(records("dave", "registration", true), 1, "{audit}");
    assert!(of("carol", "user_change") >= 1, "{audit}");
    assert!(of("dave", "user_change") >= 1, "{audit}");
}
