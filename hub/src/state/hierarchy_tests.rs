//! The hub tree's state at one hub: a child hub invited, enrolled with
//! its announcement, approved, flooding route updates, revoked; and what
//! survives a restart.

use tasuki_core::hierarchy::ServedNets;
use tasuki_core::invitation::Invitation;

use super::test_hub::{load, new_hub, TempDir};
use super::*;

fn nets(v4: &[&str]) -> ServedNets {
    ServedNets {
        v4: v4.iter().map(|n| n.parse().unwrap()).collect(),
        v6: vec![],
    }
}

/// Enrols a new key with the invitation `text`, announcing `serves`.
fn enrol_with(
    st: &mut HubState,
    text: &str,
    serves: Option<&ServedNets>,
    now: u64,
) -> std::result::Result<(tasuki_core::registry::Enrolled, Option<KeyEpoch>), Refusal> {
    let invitation = Invitation::decode(text).unwrap();
    let key = StaticKey::generate(&mut rand_core::OsRng).public();
    let ask = EnrolAsk {
        hostname: "h",
        as_user: None,
        serves,
    };
    st.enrol(&invitation.id, key, "198.51.100.1:1", ask, now)
        .unwrap()
}

/// Invites child hub `name` and enrols it announcing `serves`; its id.
fn child(st: &mut HubState, name: &str, serves: &ServedNets, now: u64) -> SpokeId {
    let view = st.invite_child(name, 3600, now).unwrap();
    let (enrolled, first) = enrol_with(st, &view.invitation, Some(serves), now).unwrap();
    assert!(first.is_none(), "a child hub waits for its approval");
    enrolled.spoke.id
}

#[test]
fn a_child_is_routed_what_was_approved_and_kept_across_a_restart() {
    let dir = TempDir::new("tree-approve");
    let (mut st, key) = new_hub(&dir);
    let a = child(&mut st, "a", &nets(&["10.81.0.0/24"]), 100);
    assert!(
        st.tree.map.child_routes().is_empty(),
        "routed before approval"
    );
    let view = st.approve_child("a", "admin", 101).unwrap();
    assert_eq!(view.routed, vec!["10.81.0.0/24".to_string()]);
    assert_eq!(view.state, "active");
    assert_eq!(
        st.tree.map.child_routes(),
        vec![(a, nets(&["10.81.0.0/24"]))]
    );
    assert_eq!(*st.tree.tun_routes.borrow(), nets(&["10.81.0.0/24"]));
    drop(st);
    let mut st = load(&dir, &key);
    assert_eq!(
        st.tree.map.child_routes(),
        vec![(a, nets(&["10.81.0.0/24"]))]
    );
    // A spoke's configuration routes the branch through this hub.
    let (b, _rx) = super::test_hub::spoke(&mut st, "b", 102);
    let record = st.registry.spoke(b).unwrap().clone();
    assert!(st
        .spoke_config(&record)
        .routes
        .contains(&"10.81.0.0/24".parse().unwrap()));
    // Revocation withdraws it.
    st.revoke_child("a", 103).unwrap();
    assert!(st.tree.map.child_routes().is_empty());
    assert!(st.tree.tun_routes.borrow().is_empty());
    drop(st);
    let st = load(&dir, &key);
    assert!(st.tree.map.child("a").is_none(), "revoked for good");
}

#[test]
fn the_wrong_kind_of_invitation_is_refused() {
    let dir = TempDir::new("tree-kind");
    let (mut st, _key) = new_hub(&dir);
    let view = st.invite("plain", false, false, None, 3600, 1).unwrap();
    let serves = nets(&["10.81.0.0/24"]);
    let refused = enrol_with(&mut st, &view.invitation, Some(&serves), 2).unwrap_err();
    assert!(refused.detail.contains("hub invite"), "{refused}");
    let view = st.invite_child("hub-x", 3600, 3).unwrap();
    let refused = enrol_with(&mut st, &view.invitation, None, 4).unwrap_err();
    assert!(refused.detail.contains("tasuki-hub join"), "{refused}");
}

#[test]
fn a_child_that_floods_route_updates_is_heard_once_a_second() {
    let dir = TempDir::new("tree-flood");
    let (mut st, _key) = new_hub(&dir);
    let a = child(&mut st, "a", &nets(&["10.81.0.0/24"]), 100);
    st.approve_child("a", "admin", 100).unwrap();
    for i in 0..200u32 {
        let grown = nets(&["10.81.0.0/24", &format!("10.90.{}.0/24", i % 250)]);
        st.on_serves(a, grown, 100).unwrap();
    }
    assert_eq!(
        st.tree.coalesced, 199,
        "all but the newest wait and are replaced"
    );
    assert_eq!(
        st.tree.map.child("a").unwrap().announced,
        nets(&["10.81.0.0/24"]),
        "nothing taken within the second"
    );
    st.tree_tick(101);
    assert_eq!(
        st.tree.map.child("a").unwrap().announced,
        nets(&["10.81.0.0/24", "10.90.199.0/24"]),
        "the newest is taken at the next second"
    );
    // Not approved: announced but not routed.
    assert_eq!(
        st.tree.map.child_routes(),
        vec![(a, nets(&["10.81.0.0/24"]))]
    );
}
