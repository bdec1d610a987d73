//! Keyed groups (issue 15) with the real binaries: a group's own key
//! epochs reach every member spoke and no other, a member that leaves is
//! told to erase them and the others move to a new epoch it never gets,
//! and an ended epoch's key bytes are then found in no state directory.
//! Skipped unless root.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use tasuki_netns_tests::{
    metric_sample, skip_unless_root, Mapping, Topology, TwoSpokes, A_TUNNEL, B_TUNNEL,
};

/// Where the hub serves its metrics in these tests.
const METRICS: &str = "127.0.0.1:9586";

/// The keyed groups spoke `socket` holds: (name, epoch in use).
fn groups_of(t: &Topology, socket: &Path) -> Vec<(String, u64)> {
    t.spoke_status_json(socket)["groups"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|g| {
            let name = g["group"].as_str().unwrap_or_default().to_owned();
            (name, g["epoch"].as_u64().unwrap_or(0))
        })
        .collect()
}

/// The epoch of group "staff" spoke `socket` uses, if it holds the group.
fn staff_epoch(t: &Topology, socket: &Path) -> Option<u64> {
    groups_of(t, socket)
        .into_iter()
        .find_map(|(g, e)| (g == "staff").then_some(e))
}

/// The key file of epoch `epoch` of group "staff" in state directory `dir`.
fn staff_key_file(dir: &Path, epoch: u64) -> std::path::PathBuf {
    let tag = tasuki_core::group::file_tag("staff");
    dir.join("keys").join(format!("group-{tag}-{epoch}.key"))
}

/// Whether any regular file under `dir` holds `needle`.
fn found_under(dir: &Path, needle: &[u8]) -> Option<std::path::PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if let Some(hit) = found_under(&path, needle) {
                return Some(hit);
            }
        } else if kind.is_file() {
            let bytes = std::fs::read(&path).unwrap_or_default();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                return Some(path);
            }
        }
    }
    None
}

/// The hub's view of group "staff" (`group list --json`).
fn staff_view(t: &Topology) -> Value {
    let list: Value =
        serde_json::from_str(&t.hub_ok(&["group", "list", "--json"])).expect("group list --json");
    list.as_array()
        .and_then(|l| l.iter().find(|g| g["name"] == "staff").cloned())
        .unwrap_or_else(|| t.fail(&format!("no group staff in {list}")))
}

#[test]
fn a_keyed_group_reaches_its_members_rotates_when_one_leaves_and_its_old_key_goes() {
    if skip_unless_root("groups::a_keyed_group_reaches_its_members") {
        return;
    }
    let (mut net, ()) = TwoSpokes::up_with_hub_args(|_| (), &["--metrics", METRICS]);
    let c = net.topo.spoke_behind("c", 0, Mapping::EndpointIndependent);
    let outsider = net
        .topo
        .spoke_behind("outsider", 1, Mapping::EndpointIndependent);
    let t = &net.topo;
    t.hub_ok(&["group", "add", "staff"]);
    t.hub_ok(&[
        "group",
        "add-member",
        "staff",
        "spoke:a",
        "spoke:b",
        "spoke:c",
    ]);
    t.hub_ok(&["group", "key", "staff", "on"]);
    let sockets = [&net.a_socket, &net.b_socket, &c.socket];
    let dirs = [&net.a_dir, &net.b_dir, &c.dir];
    t.wait_for("every member on epoch 1", Duration::from_secs(30), || {
        sockets.iter().all(|s| staff_epoch(t, s) == Some(1))
    });
    assert!(
        groups_of(t, &outsider.socket).is_empty(),
        "the outsider holds no group"
    );
    let view = staff_view(t);
    assert_eq!(view["key"]["epoch"], 1, "{view}");
    assert_eq!(view["key"]["members_online"], 3, "{view}");
    let keys = t.hub_ok(&["key", "status"]);
    let row = keys
        .lines()
        .find(|l| l.starts_with("staff "))
        .unwrap_or_else(|| t.fail(&format!("no group row in key status: {keys}")));
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(cols[1..4], ["1", "1", "3"], "{row}");
    // Every member holds the hub's epoch 1, byte for byte.
    let first = std::fs::read(staff_key_file(&t.hub_dir(), 1)).expect("the hub's key file");
    assert_eq!(first.len(), 32);
    for dir in dirs {
        let held = std::fs::read(staff_key_file(dir, 1)).expect("a member's key file");
        assert_eq!(held, first, "{} holds another key", dir.display());
    }
    assert!(
        found_under(&outsider.dir, &first).is_none(),
        "the outsider has the group key"
    );

    // c leaves: it erases the group at once; a and b go to epoch 2.
    t.hub_ok(&["group", "remove-member", "staff", "spoke:c"]);
    t.wait_for("a and b on epoch 2, c out", Duration::from_secs(30), || {
        [&net.a_socket, &net.b_socket]
            .iter()
            .all(|s| staff_epoch(t, s) == Some(2))
            && groups_of(t, &c.socket).is_empty()
    });
    let second = std::fs::read(staff_key_file(&t.hub_dir(), 2)).expect("epoch 2 at the hub");
    assert!(
        found_under(&c.dir, &second).is_none(),
        "the leaver got the new epoch"
    );
    assert!(
        found_under(&c.dir, &first).is_none(),
        "the leaver kept the old epoch"
    );
    // A grace after every member left epoch 1, its bytes are nowhere.
    t.wait_for(
        "epoch 1's key erased everywhere",
        Duration::from_secs(90),
        || found_under(t.dir(), &first).is_none(),
    );
    let view = staff_view(t);
    assert_eq!(view["key"]["epoch"], 2, "{view}");
    assert_eq!(view["key"]["held"], serde_json::json!([2]), "{view}");
    // An admin's rotation: both members move to epoch 3.
    let said = t.hub_ok(&["key", "rotate", "--group", "staff"]);
    assert!(said.contains("1 keyed group"), "{said}");
    t.wait_for("a and b on epoch 3", Duration::from_secs(30), || {
        [&net.a_socket, &net.b_socket]
            .iter()
            .all(|s| staff_epoch(t, s) == Some(3))
    });
    let m = t.hub_metrics(METRICS);
    assert_eq!(metric_sample(&m, "tasuki_keyed_groups"), 1, "{m}");
    assert!(
        metric_sample(&m, "tasuki_group_rotations_total") >= 2,
        "{m}"
    );
    let audit = t.hub_ok(&["audit"]);
    assert!(audit.contains("group staff epoch 2"), "{audit}");
}

#[test]
fn members_go_direct_under_keys_derived_from_the_group_epoch_and_follow_its_rotation() {
    if skip_unless_root("groups::members_go_direct_under_keys_derived") {
        return;
    }
    let mut net = TwoSpokes::up();
    let t = &net.topo;
    t.hub_ok(&["group", "add", "staff"]);
    t.hub_ok(&["group", "add-member", "staff", "spoke:a", "spoke:b"]);
    t.hub_ok(&["group", "key", "staff", "on"]);
    t.wait_for("both members on epoch 1", Duration::from_secs(30), || {
        [&net.a_socket, &net.b_socket]
            .iter()
            .all(|s| staff_epoch(t, s) == Some(1))
    });
    t.direct_on();
    net.both_direct();
    // The hub keys the pair by the group: no pair epoch of its own.
    let pairs = t.pair_list();
    let [pair] = pairs.as_slice() else {
        t.fail(&format!("one pair expected: {pairs:?}"))
    };
    assert_eq!(pair["via"], "staff", "{pair}");
    assert_eq!(pair["held"], serde_json::json!([]), "{pair}");
    let before = t.relayed();
    assert_eq!(
        t.pings(&t.ns_a, B_TUNNEL, 20),
        20,
        "direct under the derived key"
    );
    assert_eq!(t.relayed(), before, "nothing relayed");
    let peer_epoch = |s: &Path, addr: &str| {
        t.peer_of(s, addr)
            .and_then(|p| p["epoch"].as_u64())
            .unwrap_or(0)
    };
    assert_eq!(peer_epoch(&net.a_socket, B_TUNNEL), 1);
    // The group rotates: the pair moves with it, still direct.
    t.hub_ok(&["key", "rotate", "--group", "staff"]);
    t.wait_for(
        "the pair on the group's epoch 2",
        Duration::from_secs(30),
        || {
            t.ping(&t.ns_a, B_TUNNEL, 1);
            peer_epoch(&net.a_socket, B_TUNNEL) == 2 && peer_epoch(&net.b_socket, A_TUNNEL) == 2
        },
    );
    t.wait_direct(&t.ns_a, &net.a_socket, B_TUNNEL);
    let before = t.relayed();
    assert_eq!(t.pings(&t.ns_a, B_TUNNEL, 20), 20);
    assert_eq!(t.pings(&t.ns_b, A_TUNNEL, 20), 20);
    assert_eq!(t.relayed(), before, "direct after the rotation");
    assert!(t.pair_list()[0]["held"] == serde_json::json!([]));
    // A restart of spoke a keeps its group key (its file is the store's)
    // and derives the pair's key again: direct once more.
    let key_file = staff_key_file(&net.a_dir, 2);
    net.restart_a();
    let t = &net.topo;
    t.wait_for(
        "a back on the group's epoch 2",
        Duration::from_secs(30),
        || staff_epoch(t, &net.a_socket) == Some(2),
    );
    assert!(key_file.exists(), "the group key survived the restart");
    t.wait_direct(&t.ns_a, &net.a_socket, B_TUNNEL);
    let before = t.relayed();
    assert_eq!(t.pings(&t.ns_a, B_TUNNEL, 20), 20);
    assert_eq!(t.relayed(), before, "direct after a's restart");
}
