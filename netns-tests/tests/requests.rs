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
    let shown: Value =
        serde_json::from_str(&t.hub_ok(&["request-policy", "show", "prod-db", "--json"]))
            .expect("json");
    assert_eq!(shown, list[0], "show and list agree");
    let missing = t.hub_cli(&["request-policy", "show", "nope"]);
    assert!(
        !missing.status.success() && output_text(&missing).contains("no request policy named"),
        "{}",
        output_text(&missing)
    );
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

/// Logs `user` in on the spoke at `socket` for the first time (the initial
/// password `initial` replaced).
fn first_login(socket: &std::path::Path, user: &str, initial: &str) {
    let login = tasuki_netns_tests::spoke_stdin(
        socket,
        &["login", user, "--password-stdin"],
        &format!("{initial}\ncorrect horse battery staple {user}\n"),
    );
    assert!(login.status.success(), "{}", output_text(&login));
}

fn add_user(t: &Topology, user: &str, spoke: &str) -> String {
    let v: Value = serde_json::from_str(&t.hub_ok(&["user", "add", user, "--json"])).expect("json");
    t.hub_ok(&["user", "allow", user, "--spoke", spoke]);
    v["initial_password"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A request that needs 2 of 3 approvers: nothing reaches the LAN host
/// before the second yes; one yes from a spoke, a hub restart, the second
/// from another spoke, and traffic flows; at its end it stops; the
/// requester's own yes and a second yes do not count; a no ends one.
#[test]
fn access_is_granted_with_the_last_approval_and_ends_with_its_time() {
    use std::time::Duration;
    use tasuki_netns_tests::LAN_HOST;
    if skip_unless_root("requests::access_is_granted_with_the_last_approval") {
        return;
    }
    let t = Topology::new();
    t.hub_init();
    let mut hub = t.start_hub();
    let mut spokes = Vec::new();
    for (name, ns) in [("laptop", &t.ns_a), ("desk", &t.ns_b)] {
        let inv = t.invite_with(name, &["--pre-approved"]);
        t.enrol_ok(ns, &inv, &t.spoke_dir(name));
        spokes.push(t.start_spoke(ns, &t.spoke_dir(name), &t.spoke_socket(name)));
    }
    let (laptop, desk) = (t.spoke_socket("laptop"), t.spoke_socket("desk"));
    for (user, spoke, socket) in [
        ("alice", "laptop", &laptop),
        ("carol", "laptop", &laptop),
        ("bob", "desk", &desk),
    ] {
        let initial = add_user(&t, user, spoke);
        first_login(socket, user, &initial);
    }
    t.hub_ok(&["access", "mode", "enforce"]);
    t.hub_ok(&[
        "request-policy",
        "add",
        "lan",
        "--allow-to",
        "192.168.77.0/24",
        "--service",
        "icmp",
        "--approvers",
        "user:bob,user:carol,user:dave",
        "--required",
        "2",
        "--max-duration",
        "1h",
    ]);
    assert!(
        !t.ping(&t.ns_a, LAN_HOST, 1),
        "the LAN reached with no grant"
    );
    let asked = t.spoke_cli(
        &laptop,
        &[
            "request",
            "lan",
            "--for",
            "20s",
            "--reason",
            "reboot the switch",
            "--user",
            "alice",
        ],
    );
    assert!(
        output_text(&asked).contains("request 1 asked"),
        "{}",
        output_text(&asked)
    );
    let own = t.spoke_cli(&laptop, &["approve-request", "1", "--user", "alice"]);
    assert!(
        !own.status.success(),
        "the requester approved: {}",
        output_text(&own)
    );
    let bob = t.spoke_cli(&desk, &["approve-request", "1", "--user", "bob"]);
    assert!(output_text(&bob).contains("1/2"), "{}", output_text(&bob));
    let twice = t.spoke_cli(&desk, &["approve-request", "1", "--user", "bob"]);
    assert!(
        output_text(&twice).contains("counts once"),
        "{}",
        output_text(&twice)
    );
    assert!(
        !t.ping(&t.ns_a, LAN_HOST, 1),
        "one approval of two granted access"
    );
    // A hub restart between the two approvals.
    t.sigterm(&hub);
    hub = t.start_hub();
    let mut v = Value::Null;
    t.wait_for(
        "the laptop back at the hub",
        Duration::from_secs(30),
        || {
            let out = t.spoke_cli(&laptop, &["requests", "--user", "carol", "--json"]);
            v = serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap_or(Value::Null);
            out.status.success()
        },
    );
    assert_eq!(v["to_decide"][0]["id"], 1, "{v}");
    let carol = t.spoke_cli(&laptop, &["approve-request", "1", "--user", "carol"]);
    assert!(
        output_text(&carol).contains("granted"),
        "{}",
        output_text(&carol)
    );
    t.wait_for(
        "the grant to carry alice's pings",
        Duration::from_secs(15),
        || t.ping(&t.ns_a, LAN_HOST, 1),
    );
    // 20 s after the grant it is over.
    t.wait_for("the grant to end", Duration::from_secs(40), || {
        !t.ping(&t.ns_a, LAN_HOST, 1)
    });
    let list = t.hub_ok(&["request", "list"]);
    assert!(list.contains("over"), "{list}");
    // A no ends a request.
    t.spoke_cli(
        &laptop,
        &[
            "request", "lan", "--for", "1m", "--reason", "again", "--user", "alice",
        ],
    );
    let no = t.spoke_cli(&desk, &["deny-request", "2", "--user", "bob"]);
    assert!(output_text(&no).contains("denied"), "{}", output_text(&no));
    let late = t.spoke_cli(&laptop, &["approve-request", "2", "--user", "carol"]);
    assert!(!late.status.success(), "a denied request approved");
    assert!(!t.ping(&t.ns_a, LAN_HOST, 1));
    let audit = t.hub_ok(&["audit"]);
    let order: Vec<usize> = [
        "request 1 (",
        "waiting by bob",
        "granted by carol",
        "over by time",
        "denied by bob",
    ]
    .iter()
    .map(|w| {
        audit
            .find(w)
            .unwrap_or_else(|| panic!("{w:?} not in the audit log:\n{audit}"))
    })
    .collect();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "out of order: {order:?}\n{audit}"
    );
    t.must_be_alive(&hub);
    for s in &spokes {
        t.must_be_alive(s);
    }
}

/// The epoch of keyed group "staff" the spoke at `socket` uses, if any.
fn staff_epoch(t: &Topology, socket: &std::path::Path) -> Option<u64> {
    t.spoke_status_json(socket)["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|g| g["group"] == "staff")
        .and_then(|g| g["epoch"].as_u64())
}

/// A request for membership in a keyed group: the approver hears of it on
/// their spoke at once (`status`), the requester's spoke gets the group's
/// epoch with the approval, and when the grant is over it erases it and
/// the members move to an epoch it never gets.
#[test]
fn a_group_grant_brings_the_group_key_and_its_end_rotates_it() {
    use std::time::Duration;
    if skip_unless_root("requests::a_group_grant_brings_the_group_key") {
        return;
    }
    let t = Topology::new();
    t.hub_init();
    let hub = t.start_hub();
    let mut spokes = Vec::new();
    for (name, ns) in [("laptop", &t.ns_a), ("desk", &t.ns_b)] {
        let inv = t.invite_with(name, &["--pre-approved"]);
        t.enrol_ok(ns, &inv, &t.spoke_dir(name));
        spokes.push(t.start_spoke(ns, &t.spoke_dir(name), &t.spoke_socket(name)));
    }
    let (laptop, desk) = (t.spoke_socket("laptop"), t.spoke_socket("desk"));
    for (user, spoke, socket) in [("alice", "laptop", &laptop), ("bob", "desk", &desk)] {
        let initial = add_user(&t, user, spoke);
        first_login(socket, user, &initial);
    }
    t.hub_ok(&["group", "add", "staff"]);
    t.hub_ok(&["group", "add-member", "staff", "spoke:desk"]);
    t.hub_ok(&["group", "key", "staff", "on"]);
    t.hub_ok(&[
        "request-policy",
        "add",
        "join-staff",
        "--grant-group",
        "staff",
        // alice may approve too, but never her own request.
        "--approvers",
        "user:bob,user:alice",
        "--required",
        "1",
    ]);
    t.wait_for("the desk on a staff epoch", Duration::from_secs(30), || {
        staff_epoch(&t, &desk).is_some()
    });
    assert_eq!(staff_epoch(&t, &laptop), None, "the laptop holds staff");
    let asked = t.spoke_cli(
        &laptop,
        &[
            "request",
            "join-staff",
            "--for",
            "15s",
            "--reason",
            "pairing",
            "--user",
            "alice",
        ],
    );
    assert!(
        output_text(&asked).contains("request 1 asked"),
        "{}",
        output_text(&asked)
    );
    // bob hears of it on his spoke, with no listing asked for.
    t.wait_for("bob to hear of request 1", Duration::from_secs(10), || {
        let s = t.spoke_status_json(&desk);
        s["approvals_waiting"][0]["request"]["id"] == 1
            && s["approvals_waiting"][0]["approver"] == "bob"
    });
    let status = t.spoke_cli(&desk, &["status"]);
    assert!(
        output_text(&status).contains("tasuki-spoke approve-request 1"),
        "{}",
        output_text(&status)
    );
    assert!(
        t.spoke_status_json(&laptop)["approvals_waiting"]
            .as_array()
            .is_none_or(|a| a.is_empty()),
        "the requester is told to approve their own request"
    );
    let yes = t.spoke_cli(&desk, &["approve-request", "1", "--user", "bob"]);
    assert!(
        output_text(&yes).contains("granted"),
        "{}",
        output_text(&yes)
    );
    t.wait_for(
        "the laptop to get the staff epoch",
        Duration::from_secs(30),
        || staff_epoch(&t, &laptop).is_some(),
    );
    let granted_epoch = staff_epoch(&t, &laptop).unwrap_or_default();
    t.wait_for("bob's notice to clear", Duration::from_secs(10), || {
        t.spoke_status_json(&desk)["approvals_waiting"]
            .as_array()
            .is_some_and(|a| a.is_empty())
    });
    // Over: the laptop erases the group, the desk moves on past it.
    t.wait_for(
        "the grant to end and staff to rotate",
        Duration::from_secs(45),
        || {
            staff_epoch(&t, &laptop).is_none()
                && staff_epoch(&t, &desk).is_some_and(|e| e > granted_epoch)
        },
    );
    assert!(t.hub_ok(&["request", "list"]).contains("over"));
    t.must_be_alive(&hub);
    for s in &spokes {
        t.must_be_alive(s);
    }
}
