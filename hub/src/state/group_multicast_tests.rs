//! Keyed groups' multicast at the hub: ranges checked, stored and told
//! to the members online; a thousand members joining at once; a member
//! that attaches anew told again.

use tokio::sync::mpsc;

use super::group_tests::{answer, current, drain, group_of, settle, Member1};
use super::test_hub::{load, new_hub, spoke, TempDir};
use super::*;
use tasuki_core::access::Member;
use tasuki_core::control::HubGroup;

fn multicast_of(got: &[HubGroup]) -> Option<tasuki_core::control::GroupMulticast> {
    got.iter().rev().find_map(|m| match m {
        HubGroup::Multicast(m) => Some(m.clone()),
        _ => None,
    })
}

fn set_multicast(
    st: &mut HubState,
    add: &[&str],
    remove: &[&str],
    rate: Option<u32>,
) -> Result<()> {
    let r = tasuki_core::admin_calls::GroupMulticastSet {
        name: "staff".into(),
        add: add.iter().map(|n| n.parse().unwrap()).collect(),
        remove: remove.iter().map(|n| n.parse().unwrap()).collect(),
        rate_pps: rate,
    };
    st.set_group_multicast(&r, 5)
}

#[test]
fn group_multicast_ranges_are_checked_stored_and_told_to_the_members_online() {
    let dir = TempDir::new("group-multicast");
    let (mut st, key) = new_hub(&dir);
    let a = spoke(&mut st, "a", 1);
    let b = spoke(&mut st, "b", 1);
    let (_outsider, mut rx_out) = spoke(&mut st, "outsider", 1);
    group_of(&mut st, &["a", "b"]);
    let refused = set_multicast(&mut st, &["239.77.1.0/24"], &[], None);
    assert!(
        matches!(refused, Err(StateError::WrongState(_))),
        "not keyed yet: {refused:?}"
    );
    st.set_group_key("staff", true, None, 2).unwrap();
    for bad in ["10.0.0.0/8", "239.77.1.1/24", "0.0.0.0/0"] {
        let e = set_multicast(&mut st, &[bad], &[], None).unwrap_err();
        assert!(matches!(e, StateError::Invalid(_)), "{bad}: {e}");
    }
    assert!(set_multicast(&mut st, &[], &[], Some(0)).is_err());
    assert!(matches!(
        set_multicast(&mut st, &[], &["239.1.0.0/16"], None),
        Err(StateError::NotFound(_))
    ));
    set_multicast(
        &mut st,
        &["239.77.1.0/24", "224.0.0.251/32"],
        &[],
        Some(500),
    )
    .unwrap();
    // Another group may not take a range that overlaps.
    st.edit_access(3, |p| p.add_group("other").map(|_| "other".into()))
        .unwrap();
    st.set_group_key("other", true, None, 3).unwrap();
    let overlap = tasuki_core::admin_calls::GroupMulticastSet {
        name: "other".into(),
        add: vec!["239.77.0.0/16".parse().unwrap()],
        remove: vec![],
        rate_pps: None,
    };
    assert!(matches!(
        st.set_group_multicast(&overlap, 5),
        Err(StateError::Invalid(_))
    ));

    let mut members = vec![a, b];
    let mut now = 10;
    st.group_tick(now);
    let addr = |st: &HubState, id| st.registry.spoke(id).unwrap().tunnel_addr;
    let mut want = vec![addr(&st, members[0].0), addr(&st, members[1].0)];
    want.sort();
    for (id, rx) in &mut members {
        let got = drain(rx);
        let m = multicast_of(&got).unwrap_or_else(|| panic!("spoke {id} told nothing: {got:?}"));
        assert_eq!(m.members, want);
        assert_eq!(m.ranges.len(), 2);
        assert_eq!(m.rate_pps, 500);
        answer(&mut st, *id, got, now);
    }
    assert!(
        multicast_of(&drain(&mut rx_out)).is_none(),
        "the outsider is told nothing"
    );
    settle(&mut st, &mut members, &mut now);
    for (_, rx) in &mut members {
        assert!(
            multicast_of(&drain(rx)).is_none(),
            "told once, not at every tick"
        );
    }
    let view = &st.group_key_views()["staff"];
    assert_eq!(view.multicast, vec!["239.77.1.0/24", "224.0.0.251/32"]);

    // b leaves: a is told the members without b at the next tick.
    st.edit_access(20, |p| {
        p.remove_member("staff", &Member::Spoke("b".into()))?;
        Ok("b out".into())
    })
    .unwrap();
    now += 1;
    st.group_tick(now);
    let m = multicast_of(&drain(&mut members[0].1)).expect("a told again");
    assert_eq!(m.members, vec![addr(&st, members[0].0)]);
    let got_b = drain(&mut members[1].1);
    assert!(got_b.iter().any(|m| matches!(m, HubGroup::Ended { .. })));
    assert!(
        multicast_of(&got_b).is_none(),
        "the leaver hears no new members"
    );

    // Stored: a restarted hub has the ranges, and taking both away ends them.
    drop(st);
    let mut st = load(&dir, &key);
    assert_eq!(st.group_key_views()["staff"].multicast.len(), 2);
    set_multicast(&mut st, &[], &["239.77.1.0/24", "224.0.0.251/32"], None).unwrap();
    assert!(st.group_key_views()["staff"].multicast.is_empty());
}

/// A thousand member spokes join a keyed group with multicast at once:
/// each is offered the epoch once and told the members once, nobody else
/// is; one leaving rotates the group for the 999 others.
#[test]
fn a_thousand_members_joining_at_once_each_get_one_offer() {
    let dir = TempDir::new("group-thousand");
    let (mut st, _) = super::test_hub::new_hub_in(&dir, "100.64.0.0/20");
    let names: Vec<String> = (0..1000).map(|i| format!("m{i}")).collect();
    let mut members: Vec<Member1> = names.iter().map(|n| spoke(&mut st, n, 1)).collect();
    let (_outsider, mut rx_out) = spoke(&mut st, "outsider", 1);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    group_of(&mut st, &refs);
    st.set_group_key("staff", true, None, 2).unwrap();
    set_multicast(&mut st, &["239.77.1.0/24"], &[], None).unwrap();
    st.group_tick(10);
    for (id, rx) in &mut members {
        let got = drain(rx);
        let offers = got
            .iter()
            .filter(|m| matches!(m, HubGroup::Offer(_)))
            .count();
        assert_eq!(offers, 1, "spoke {id}: {offers} offers");
        let told = multicast_of(&got).expect("told the members");
        assert_eq!(told.members.len(), 1000);
        answer(&mut st, *id, got, 10);
    }
    assert!(drain(&mut rx_out)
        .iter()
        .all(|m| matches!(m, HubGroup::Only { .. })));
    let mut now = 10;
    settle(&mut st, &mut members, &mut now);
    assert_eq!(current(&st), 1);
    st.edit_access(now, |p| {
        p.remove_member("staff", &Member::Spoke("m0".into()))?;
        Ok("m0 out".into())
    })
    .unwrap();
    let offered = settle(&mut st, &mut members, &mut now);
    assert!(
        offered[0].is_empty(),
        "the leaver was offered {:?}",
        offered[0]
    );
    assert!(
        offered[1..].iter().all(|o| o == &vec![2]),
        "the others get epoch 2 once each"
    );
    assert_eq!(current(&st), 2);
    assert_eq!(st.group_key_views()["staff"].members_online, 999);
}

/// A member that attaches anew is told the group's multicast again, and
/// one of a group with none is told it has none (it may hold some from
/// before it went away).
#[test]
fn an_attaching_member_is_told_its_groups_multicast_anew() {
    let dir = TempDir::new("group-multicast-attach");
    let (mut st, _) = new_hub(&dir);
    let a = spoke(&mut st, "a", 1);
    group_of(&mut st, &["a"]);
    st.set_group_key("staff", true, None, 2).unwrap();
    let mut members = vec![a];
    let mut now = 10;
    settle(&mut st, &mut members, &mut now);
    // No ranges: the greeting says so.
    let (tx, mut rx) = mpsc::channel(64);
    st.attach_session(members[0].0, tx);
    now += 1;
    st.group_tick(now);
    let none = multicast_of(&drain(&mut rx)).expect("told the group has no multicast");
    assert!(none.ranges.is_empty());
    // With ranges: told once, and again on a new session.
    set_multicast(&mut st, &["239.77.1.0/24"], &[], None).unwrap();
    now += 1;
    st.group_tick(now);
    assert_eq!(multicast_of(&drain(&mut rx)).expect("told").ranges.len(), 1);
    now += 1;
    st.group_tick(now);
    assert!(multicast_of(&drain(&mut rx)).is_none());
    let (tx, mut rx) = mpsc::channel(64);
    st.attach_session(members[0].0, tx);
    now += 1;
    st.group_tick(now);
    assert_eq!(
        multicast_of(&drain(&mut rx))
            .expect("told again")
            .ranges
            .len(),
        1
    );
    // A rate without ranges is kept.
    set_multicast(&mut st, &[], &["239.77.1.0/24"], Some(300)).unwrap();
    set_multicast(&mut st, &["239.77.2.0/24"], &[], None).unwrap();
    assert_eq!(st.group_key_views()["staff"].multicast_rate_pps, 300);
}
