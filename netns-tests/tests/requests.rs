//! Access requests (issue 17) with the real hub: request policies are
//! checked, stored across a restart and listed; what cannot work is
//! refused with a clear message. Skipped unless root.

use serde_json::Value;
use tasuki_netns_tests::{output_text, skip_unless_root, Topology};

#[test]
fn request_policies_are_checked_stored_and_listed() {
    if skip_unless_root("requests::request_policies_are_checked") {
        return;
    }
    let t = Topology::new();
    t.hub_init();
    let mut hub = t.start_hub();
    let add = [
        "request-policy",
        "add",
        "prod-db",
        "--allow-to",
        "192.168.50.10",
        "--service",
        "tcp/5432",
        "--approvers",
        "user:bob,user:carol,group:leads",
        "--required",
        "2",
        "--max-duration",
        "2h",
    ];
    let refused = t.hub_cli(&add);
    assert!(!refused.status.success());
    assert!(
        output_text(&refused).contains("no group named \"leads\""),
        "{}",
        output_text(&refused)
    );
    t.hub_ok(&["group", "add", "leads"]);
    assert!(t.hub_ok(&add).contains("prod-db set"));
    let too_many = t.hub_cli(&[
        "request-policy",
        "add",
        "x",
        "--grant-group",
        "leads",
        "--approvers",
        "user:bob",
        "--required",
        "3",
    ]);
    assert!(
        !too_many.status.success(),
        "3 approvals from one user and the admins"
    );
    let bad = t.hub_cli(&[
        "request-policy",
        "add",
        "y",
        "--grant-group",
        "leads",
        "--approvers",
        "bob",
    ]);
    assert!(
        output_text(&bad).contains("expected user:ID or group:NAME"),
        "{}",
        output_text(&bad)
    );
    // Stored: a restarted hub lists it.
    t.sigterm(&hub);
    hub = t.start_hub();
    let list: Value =
        serde_json::from_str(&t.hub_ok(&["request-policy", "list", "--json"])).expect("json");
    assert_eq!(list[0]["name"], "prod-db", "{list}");
    assert_eq!(list[0]["required"], 2, "{list}");
    assert_eq!(list[0]["max_duration_secs"], 7200, "{list}");
    assert!(t
        .hub_ok(&["request", "list"])
        .contains("no access requests"));
    let unknown = t.hub_cli(&["request", "approve", "9"]);
    assert!(
        output_text(&unknown).contains("no request 9"),
        "{}",
        output_text(&unknown)
    );
    assert!(t
        .hub_ok(&["request-policy", "remove", "prod-db"])
        .contains("removed"));
    assert!(t.hub_ok(&["audit"]).contains("request policy prod-db set"));
    t.must_be_alive(&hub);
}
