//! Spoke lifecycle with the real daemons: admin approval, denial,
//! revocation, the audit trail, and who may use the admin socket.

use std::time::Duration;

use serde_json::Value;
use tasuki_netns_tests::{skip_unless_root, Proc, Topology, TwoSpokes, B_TUNNEL, HUB_TUNNEL};

fn hub_json(t: &Topology, args: &[&str]) -> Value {
    let out = t.hub_cli(args);
    assert!(
        out.status.success(),
        "tasuki-hub {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn spoke_state(t: &Topology, name: &str) -> String {
    let list = hub_json(t, &["spoke", "list", "--json"]);
    list.as_array()
        .and_then(|l| l.iter().rev().find(|s| s["name"] == name))
        .and_then(|s| s["state"].as_str())
        .unwrap_or("")
        .to_owned()
}

/// A hub and one spoke `a` enrolled with an invitation that needs approval,
/// its daemon running.
fn pending_spoke(t: &Topology) -> (Proc, Proc) {
    t.hub_init();
    let hub = t.start_hub();
    let inv = t.invite_with("a", &["--service"]);
    let dir = t.spoke_dir("a");
    let out = t.enrol(&t.ns_a, &inv, &dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("waiting for the admin"));
    (hub, t.start_spoke(&t.ns_a, &dir, &t.spoke_socket("a")))
}

#[test]
fn a_pending_spoke_carries_nothing_until_approved() {
    if skip_unless_root("a_pending_spoke_carries_nothing_until_approved") {
        return;
    }
    let t = Topology::new();
    let (_hub, _a) = pending_spoke(&t);
    let list = hub_json(&t, &["spoke", "list", "--json"]);
    let a = &list[0];
    assert_eq!(a["state"], "pending");
    assert!(a["enrolled_from"]
        .as_str()
        .unwrap_or("")
        .starts_with("172.30.0.11:"));
    assert!(!a["invitation"].as_str().unwrap_or("").is_empty());
    assert!(a["epoch"].is_null(), "a pending spoke holds no key epoch");
    // Nothing crosses while pending (the spoke has no keys, not even a TUN).
    std::thread::sleep(Duration::from_secs(2));
    assert!(!t.ping(&t.ns_a, HUB_TUNNEL, 2));
    assert_eq!(
        std::fs::read_dir(t.spoke_dir("a").join("keys"))
            .map(|d| d.count())
            .unwrap_or(0),
        0
    );
    // Approval: keys arrive with no action on the spoke.
    let v = hub_json(&t, &["spoke", "approve", "a"]);
    assert!(v.is_null(), "approve prints text, not JSON");
    t.wait_for(
        "the approved spoke to reach the hub",
        Duration::from_secs(30),
        || t.ping(&t.ns_a, HUB_TUNNEL, 1),
    );
    assert_eq!(spoke_state(&t, "a"), "active");
}

#[test]
fn a_denied_spoke_never_carries_traffic() {
    if skip_unless_root("a_denied_spoke_never_carries_traffic") {
        return;
    }
    let t = Topology::new();
    let (_hub, _a) = pending_spoke(&t);
    let out = t.hub_cli(&["spoke", "deny", "a"]);
    assert!(out.status.success());
    assert_eq!(spoke_state(&t, "a"), "denied");
    // Approving afterwards is refused, and the spoke never gets through.
    let again = t.hub_cli(&["spoke", "approve", "a"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("denied"));
    t.wait_for(
        "the spoke to learn it was denied",
        Duration::from_secs(20),
        || {
            let s = t.spoke_status_json(&t.spoke_socket("a"));
            s["last_error"].as_str().unwrap_or("").contains("denied")
        },
    );
    assert!(!t.ping(&t.ns_a, HUB_TUNNEL, 2));
}

#[test]
fn a_revoked_spoke_stops_within_a_second_and_cannot_come_back() {
    if skip_unless_root("a_revoked_spoke_stops_within_a_second_and_cannot_come_back") {
        return;
    }
    let mut net = TwoSpokes::up();
    let t = &net.topo;
    assert!(t.ping(&t.ns_a, B_TUNNEL, 2));
    let hub_keys = t.hub_dir().join("keys");
    let a_keys_before = std::fs::read_dir(&hub_keys)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("1-"))
        })
        .count();
    assert!(a_keys_before > 0);
    let out = t.hub_cli(&["spoke", "revoke", "a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Within a second nothing from spoke a crosses the hub: 20 pings over
    // the next second, none answered.
    let log = t.dir().join("ping-after-revoke.log");
    let ping = t.spawn(
        &t.ns_a,
        &["ping", "-c", "20", "-i", "0.05", "-W", "1", B_TUNNEL],
        &log,
    );
    t.wait_for("the ping to finish", Duration::from_secs(10), || {
        !t.is_alive(&ping)
    });
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains(" 0 received"),
        "revoked spoke still carried traffic:\n{text}"
    );
    // Its keys are gone at the hub at once, and at the spoke once it hears.
    let left = std::fs::read_dir(&hub_keys)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().starts_with("1-"))
        })
        .count();
    assert_eq!(left, 0, "the hub still holds spoke a's keys");
    t.wait_for("spoke a to erase its keys", Duration::from_secs(20), || {
        std::fs::read_dir(net.a_dir.join("keys"))
            .map(|d| d.count())
            .unwrap_or(0)
            == 0
    });
    assert!(t.ping(&t.ns_b, HUB_TUNNEL, 1), "spoke b is unaffected");
    // A restart does not bring it back.
    net.topo.kill9(&net.a);
    net.restart_a();
    let t = &net.topo;
    std::thread::sleep(Duration::from_secs(2));
    assert!(!t.ping(&t.ns_a, B_TUNNEL, 2));
    let s = t.spoke_status_json(&net.a_socket);
    assert!(
        s["last_error"].as_str().unwrap_or("").contains("revoked"),
        "{s}"
    );
}

#[test]
fn the_audit_log_records_the_lifecycle_in_order() {
    if skip_unless_root("the_audit_log_records_the_lifecycle_in_order") {
        return;
    }
    let t = Topology::new();
    let (hub, _a) = pending_spoke(&t);
    assert!(t.hub_cli(&["spoke", "approve", "a"]).status.success());
    t.wait_for("spoke a to get its keys", Duration::from_secs(30), || {
        t.ping(&t.ns_a, HUB_TUNNEL, 1)
    });
    assert!(t.hub_cli(&["spoke", "revoke", "a"]).status.success());
    let records = hub_json(&t, &["audit", "--json"]);
    let kinds: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["kind"].as_str())
        .collect();
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("no {k} in {kinds:?}"))
    };
    assert!(pos("invitation") < pos("enrolment"));
    assert!(pos("enrolment") < pos("approval"));
    assert!(pos("approval") < pos("key_issue"));
    assert!(pos("key_issue") < pos("revocation"));
    let enrolment = &records[pos("enrolment")];
    assert!(enrolment["source"]
        .as_str()
        .unwrap_or("")
        .starts_with("172.30.0.11:"));
    assert!(enrolment["time"].as_u64().unwrap_or(0) > 1_700_000_000);
    // It survives a restart, and --since filters.
    let all = kinds.len();
    t.sigterm(&hub);
    let _hub = t.start_hub();
    let again = hub_json(&t, &["audit", "--json"]);
    assert_eq!(
        again.as_array().map(Vec::len),
        Some(all),
        "records lost in a restart"
    );
    let later = hub_json(&t, &["audit", "--json", "--since", "2099-01-01T00:00:00Z"]);
    assert_eq!(later.as_array().map(Vec::len), Some(0));
    let recent = hub_json(&t, &["audit", "--json", "--since", "1h"]);
    assert_eq!(recent.as_array().map(Vec::len), Some(all));
}

#[test]
fn a_non_root_user_is_refused_by_the_admin_socket() {
    if skip_unless_root("a_non_root_user_is_refused_by_the_admin_socket") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let t = Topology::new();
    t.hub_init();
    let hub = t.start_hub();
    // Open the file modes wide so only the peer-credential check can refuse.
    std::fs::set_permissions(t.dir(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(t.hub_socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let hub_bin = tasuki_netns_tests::binaries().hub.clone();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&hub_bin)
        .args(["spoke", "invite", "x", "--admin-socket"])
        .arg(t.hub_socket())
        .output()
        .expect("setpriv");
    assert!(!out.status.success(), "nobody made an invitation");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("permission denied"), "{err}");
    // Root still can.
    assert!(t.hub_cli(&["status", "--json"]).status.success());
    // A configured admin group opens it to that group's members only.
    t.sigterm(&hub);
    let _hub = t.start_hub_with(&["--admin-group", "4242"]);
    std::fs::set_permissions(t.hub_socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let as_user = |gid: &str| {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", &format!("--regid={gid}"), "--clear-groups"])
            .arg(&hub_bin)
            .args(["status", "--json", "--admin-socket"])
            .arg(t.hub_socket())
            .output()
            .expect("setpriv")
    };
    let member = as_user("4242");
    assert!(
        member.status.success(),
        "{}",
        String::from_utf8_lossy(&member.stderr)
    );
    let outsider = as_user("65534");
    assert!(!outsider.status.success());
    assert!(String::from_utf8_lossy(&outsider.stderr).contains("permission denied"));
}
