//! The hub state's keyed groups, driven through its own calls on a store in
//! a temporary directory: the first epoch reaches every member spoke, a
//! member that leaves is told to erase and never gets the next epoch, a
//! joiner gets only the epoch in use, a restart keeps the epochs, and
//! turning the key off erases them.

use tasuki_core::access::Member;
use tasuki_core::control::{HubGroup, HubMessage, SpokeGroup};
use tasuki_core::keys::KeyEpoch;
use tokio::sync::mpsc;

use super::test_hub::{load, new_hub, spoke, TempDir};
use super::*;

/// The group messages a spoke got.
pub(super) fn drain(rx: &mut mpsc::Receiver<HubMessage>) -> Vec<HubGroup> {
    let mut out = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        if let HubMessage::Group(g) = msg {
            out.push(g);
        }
    }
    out
}

/// A group "staff" with spokes `names` in it.
pub(super) fn group_of(st: &mut HubState, names: &[&str]) {
    st.edit_access(1, |p| {
        p.add_group("staff")?;
        for n in names {
            p.add_member("staff", Member::Spoke((*n).into()))?;
        }
        Ok("staff".into())
    })
    .unwrap();
}

/// A member that answers like a spoke: stores every offer (reporting its
/// receipt) and every switch (reporting it); returns the epochs offered.
pub(super) fn answer(st: &mut HubState, id: SpokeId, got: Vec<HubGroup>, now: u64) -> Vec<u64> {
    let mut offered = Vec::new();
    for m in got {
        let report = match m {
            HubGroup::Offer(d) => {
                offered.push(d.epoch);
                SpokeGroup::Receipt {
                    group: d.group,
                    epoch: d.epoch,
                }
            }
            HubGroup::Switch { group, epoch, .. } => SpokeGroup::Switched { group, epoch },
            HubGroup::Ended { .. } | HubGroup::Only { .. } | HubGroup::Multicast(_) => continue,
        };
        st.on_group_message(id, report, now).unwrap();
    }
    offered
}

/// Ticks and lets every member in `members` answer, until nothing is left
/// to send; returns the epochs each was offered.
pub(super) fn settle(
    st: &mut HubState,
    members: &mut [(SpokeId, mpsc::Receiver<HubMessage>)],
    now: &mut u64,
) -> Vec<Vec<u64>> {
    let mut offered = vec![Vec::new(); members.len()];
    for _ in 0..6 {
        *now += 1;
        st.group_tick(*now);
        for (i, (id, rx)) in members.iter_mut().enumerate() {
            let got = drain(rx);
            offered[i].extend(answer(st, *id, got, *now));
        }
    }
    offered
}

/// A hub whose group "staff" of spoke a is keyed and on epoch 1: the
/// hub, its key, the member and the clock.
pub(super) type Member1 = (SpokeId, mpsc::Receiver<HubMessage>);
fn keyed_with_a(
    dir: &TempDir,
) -> (
    HubState,
    std::sync::Arc<tasuki_core::keys::StaticKey>,
    Vec<Member1>,
    u64,
) {
    let (mut st, key) = new_hub(dir);
    let a = spoke(&mut st, "a", 1);
    group_of(&mut st, &["a"]);
    st.set_group_key("staff", true, None, 2).unwrap();
    let mut members = vec![a];
    let mut now = 10;
    settle(&mut st, &mut members, &mut now);
    (st, key, members, now)
}

/// Spokes a and b in keyed group "staff", both on its epoch, direct mode
/// on, and a asking for its pair with b: the members and the clock.
fn keyed_pair_asked(st: &mut HubState) -> (Vec<Member1>, u64) {
    use tasuki_core::control::SpokePair;
    use tasuki_core::pair_rules::DirectMode;
    let a = spoke(st, "a", 1);
    let b = spoke(st, "b", 1);
    group_of(st, &["a", "b"]);
    st.set_group_key("staff", true, None, 2).unwrap();
    let mut members = vec![a, b];
    let mut now = 10;
    settle(st, &mut members, &mut now);
    st.set_direct(None, Some(DirectMode::Auto), now).unwrap();
    let peer = st.registry.spoke(members[1].0).unwrap().tunnel_addr;
    st.on_pair_message(members[0].0, SpokePair::Request { peer }, now)
        .unwrap();
    (members, now)
}

pub(super) fn current(st: &HubState) -> u64 {
    st.keyed.groups["staff"].scope().current()
}

#[test]
fn a_keyed_group_reaches_its_members_only_and_a_leaver_never_gets_the_next_epoch() {
    let dir = TempDir::new("groups");
    let (mut st, _) = new_hub(&dir);
    let a = spoke(&mut st, "a", 1);
    let b = spoke(&mut st, "b", 1);
    let c = spoke(&mut st, "c", 1);
    let (outsider, mut rx_out) = spoke(&mut st, "outsider", 1);
    group_of(&mut st, &["a", "b", "c"]);
    assert!(st.set_group_key("staff", true, None, 2).unwrap());
    assert!(
        !st.set_group_key("staff", true, None, 2).unwrap(),
        "once is enough"
    );
    let mut members = vec![a, b, c];
    let mut now = 10;
    let offered = settle(&mut st, &mut members, &mut now);
    assert!(offered.iter().all(|o| o == &vec![1]), "{offered:?}");
    assert_eq!(current(&st), 1);
    // The outsider gets no epoch: only, once after it attached, the list
    // of keyed groups it is in (none: it erases any it holds).
    let to_outsider = drain(&mut rx_out);
    assert!(
        matches!(&to_outsider[..], [HubGroup::Only { groups }] if groups.is_empty()),
        "{to_outsider:?}"
    );
    // A report from the outsider moves nothing and is counted.
    let forged = SpokeGroup::Receipt {
        group: "staff".into(),
        epoch: 1,
    };
    st.on_group_message(outsider, forged, now).unwrap();
    assert_eq!(st.keyed.counters.unknown, 1);

    // c leaves: it is told to erase, and epoch 2 comes at once without it.
    st.edit_access(now, |p| {
        p.remove_member("staff", &Member::Spoke("c".into()))?;
        Ok("c out".into())
    })
    .unwrap();
    now += 1;
    st.group_tick(now);
    let to_c = drain(&mut members[2].1);
    assert!(
        to_c.iter()
            .any(|m| matches!(m, HubGroup::Ended { group } if group == "staff")),
        "{to_c:?}"
    );
    let (mut stay, mut gone) = (members, Vec::new());
    gone.push(stay.pop().unwrap());
    let offered = settle(&mut st, &mut stay, &mut now);
    assert!(offered.iter().all(|o| o.contains(&2)), "{offered:?}");
    assert_eq!(current(&st), 2);
    assert!(drain(&mut gone[0].1).is_empty(), "c never hears of epoch 2");
    let view = st.access_view();
    let key = view.groups[0].key.as_ref().expect("a keyed group's view");
    assert_eq!((key.epoch, key.members_online), (2, 2));
}

#[test]
fn a_joiner_gets_the_epoch_in_use_only_and_a_restart_keeps_the_epochs() {
    let dir = TempDir::new("groups-join");
    let (mut st, key, mut members, mut now) = keyed_with_a(&dir);
    for _ in 0..2 {
        st.keyed
            .groups
            .get_mut("staff")
            .unwrap()
            .request(tasuki_core::rotation::Trigger::Admin);
        settle(&mut st, &mut members, &mut now);
    }
    assert_eq!(current(&st), 3);
    let d = spoke(&mut st, "d", now);
    st.edit_access(now, |p| {
        p.add_member("staff", Member::Spoke("d".into()))?;
        Ok("d in".into())
    })
    .unwrap();
    members.push(d);
    let offered = settle(&mut st, &mut members, &mut now);
    assert_eq!(offered[1], vec![3], "only the epoch in use");
    // A restart: the epochs and where the members stand come back.
    let latest: Vec<KeyEpoch> = st.keyed.groups["staff"].scope().epochs();
    drop(st);
    let st = load(&dir, &key);
    let back = &st.keyed.groups["staff"];
    assert_eq!(back.scope().epochs(), latest);
    assert_eq!(back.scope().current(), 3);
}

#[test]
fn turning_the_key_off_erases_the_epochs_and_tells_the_members() {
    let dir = TempDir::new("groups-off");
    let (mut st, key, mut members, now) = keyed_with_a(&dir);
    assert!(st.set_group_key("staff", false, None, now).unwrap());
    let got = drain(&mut members[0].1);
    assert!(matches!(&got[..], [HubGroup::Ended { .. }]), "{got:?}");
    let keys_dir = dir.0.join("keys");
    let left: Vec<_> = std::fs::read_dir(&keys_dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("group-"))
        .collect();
    assert!(left.is_empty(), "group key files left: {left:?}");
    drop(st);
    let mut st = load(&dir, &key);
    assert!(st.keyed.groups.is_empty());
    assert!(
        st.set_group_key("nope", true, None, now).is_err(),
        "no such group"
    );
}

#[test]
fn a_member_users_logout_takes_its_spoke_out_of_the_group_and_rotates() {
    use tasuki_core::control::UserRequest;
    use zeroize::Zeroizing;
    let dir = TempDir::new("groups-user");
    let (mut st, _) = new_hub(&dir);
    let a = spoke(&mut st, "a", 1);
    let b = spoke(&mut st, "b", 1);
    let initial = st
        .add_user("alice", "Alice", "alice@example.com", 1)
        .unwrap();
    st.allow_user("alice", "b", 1).unwrap();
    let login = UserRequest::Login {
        user: "alice".into(),
        password: Zeroizing::new(initial.initial_password),
        new_password: Some(Zeroizing::new("a long and new passphrase".into())),
    };
    st.user_request(b.0, login, 2).unwrap();
    st.edit_access(3, |p| {
        p.add_group("staff")?;
        p.add_member("staff", Member::Spoke("a".into()))?;
        p.add_member("staff", Member::User("alice".into()))?;
        Ok("staff".into())
    })
    .unwrap();
    st.set_group_key("staff", true, None, 3).unwrap();
    let mut members = vec![a, b];
    let mut now = 10;
    let offered = settle(&mut st, &mut members, &mut now);
    assert_eq!(offered, vec![vec![1], vec![1]], "b is a member by its user");
    // Alice logs out of b: b is no member now, and the group rotates.
    let logout = UserRequest::Logout {
        user: "alice".into(),
    };
    st.user_request(members[1].0, logout, now).unwrap();
    now += 1;
    st.group_tick(now);
    let to_b = drain(&mut members[1].1);
    assert!(
        to_b.iter().any(|m| matches!(m, HubGroup::Ended { .. })),
        "{to_b:?}"
    );
    let gone = members.pop().unwrap();
    let offered = settle(&mut st, &mut members, &mut now);
    assert!(offered[0].contains(&2), "{offered:?}");
    assert_eq!(current(&st), 2);
    let mut gone = gone;
    assert!(drain(&mut gone.1).is_empty(), "b hears nothing of epoch 2");
}

#[test]
fn a_groups_own_interval_rotates_it_and_outlives_a_restart() {
    use tasuki_core::admin_calls::GroupInterval;
    let dir = TempDir::new("groups-interval");
    let (mut st, key, mut members, mut now) = keyed_with_a(&dir);
    st.policy.interval_secs = None;
    settle(&mut st, &mut members, &mut now);
    assert_eq!(current(&st), 1, "no rotation by time hub-wide");
    // Its own interval: 30 s.
    st.set_group_key("staff", true, Some(GroupInterval::Every(30)), now)
        .unwrap();
    now += 40;
    settle(&mut st, &mut members, &mut now);
    assert_eq!(current(&st), 2, "rotated by the group's own interval");
    let view = st.access_view();
    let k = view.groups[0].key.as_ref().unwrap();
    assert_eq!((k.interval_secs, k.own_interval), (Some(30), true));
    drop(st);
    let mut st = load(&dir, &key);
    st.policy.interval_secs = None;
    let view = st.access_view();
    let k = view.groups[0].key.as_ref().unwrap();
    assert_eq!(k.interval_secs, Some(30), "the interval is stored");
    // Back to the hub-wide policy (none by time here).
    st.set_group_key("staff", true, Some(GroupInterval::HubWide), now)
        .unwrap();
    let view = st.access_view();
    let k = view.groups[0].key.as_ref().unwrap();
    assert_eq!((k.interval_secs, k.own_interval), (None, false));
}

#[test]
fn members_of_a_keyed_group_get_a_pair_keyed_by_it_and_no_pair_epoch() {
    use tasuki_core::control::HubPair;
    let dir = TempDir::new("groups-via");
    let (mut st, key) = new_hub(&dir);
    let (mut members, now) = keyed_pair_asked(&mut st);
    let (a_id, b_id) = (members[0].0, members[1].0);
    for (id, rx) in &mut members {
        let mut keyed = false;
        while let Ok(msg) = rx.try_recv() {
            match msg {
                HubMessage::Pair(HubPair::Keyed { group, peer, .. }) => {
                    assert_eq!(group, "staff");
                    assert_ne!(peer.spoke_id, *id);
                    keyed = true;
                }
                HubMessage::Pair(HubPair::Offer(_)) => panic!("a pair epoch was issued"),
                _ => {}
            }
        }
        assert!(keyed, "spoke {id} was told the pair is keyed by the group");
    }
    let views = st.pair_views(now);
    assert_eq!(views.len(), 1);
    assert_eq!(views[0].via.as_deref(), Some("staff"));
    assert!(views[0].held.is_empty(), "the hub holds no pair key");
    // It outlives a restart, keyed by the group still.
    drop(st);
    let mut st = load(&dir, &key);
    assert_eq!(st.pair_views(now)[0].via.as_deref(), Some("staff"));
    // b leaves the group: the pair it keyed ends.
    st.edit_access(now, |p| {
        p.remove_member("staff", &Member::Spoke("b".into()))?;
        Ok("b out".into())
    })
    .unwrap();
    st.attach_session(a_id, mpsc::channel(64).0);
    st.attach_session(b_id, mpsc::channel(64).0);
    st.group_tick(now + 1);
    assert!(
        st.pair_views(now + 1).is_empty(),
        "the pair ended with b's membership"
    );
}

#[test]
fn a_member_removed_while_offline_still_rotates_and_a_rekeyed_group_numbers_on() {
    let dir = TempDir::new("groups-away");
    let (mut st, _) = new_hub(&dir);
    let a = spoke(&mut st, "a", 1);
    let b = spoke(&mut st, "b", 1);
    group_of(&mut st, &["a", "b"]);
    st.set_group_key("staff", true, None, 2).unwrap();
    let mut members = vec![a, b];
    let mut now = 10;
    settle(&mut st, &mut members, &mut now);
    assert_eq!(current(&st), 1);
    // b goes offline, then is taken out of the group while away.
    let b = members.pop().unwrap();
    let (tx, _rx) = mpsc::channel(64);
    st.attach_session(b.0, tx.clone());
    st.detach_session(b.0, &tx.downgrade());
    now += 1;
    st.group_tick(now);
    st.edit_access(now, |p| {
        p.remove_member("staff", &Member::Spoke("b".into()))?;
        Ok("b out".into())
    })
    .unwrap();
    let offered = settle(&mut st, &mut members, &mut now);
    assert_eq!(
        offered[0],
        vec![2],
        "epoch 1, which b holds, is left at once"
    );
    assert_eq!(current(&st), 2);
    // Unkeyed and keyed again: the numbers go on, so a member that missed
    // both never takes a new epoch for one it holds.
    st.set_group_key("staff", false, None, now).unwrap();
    st.set_group_key("staff", true, None, now).unwrap();
    drain(&mut members[0].1);
    let offered = settle(&mut st, &mut members, &mut now);
    assert_eq!(offered[0], vec![3], "{offered:?}");
}

#[test]
fn a_member_that_never_answers_stops_holding_up_the_others() {
    let dir = TempDir::new("groups-stalled");
    let (mut st, _) = new_hub(&dir);
    let a = spoke(&mut st, "a", 1);
    let (_b, mut rx_b) = spoke(&mut st, "b", 1);
    group_of(&mut st, &["a", "b"]);
    st.set_group_key("staff", true, None, 2).unwrap();
    let mut members = vec![a];
    let mut now = 10;
    // b takes the deliveries and never reports: a waits for it...
    settle(&mut st, &mut members, &mut now);
    assert_eq!(current(&st), 0, "nobody switched while b owes its receipt");
    assert!(!drain(&mut rx_b).is_empty(), "b was sent the epoch");
    // ...until b has owed it long enough: then a switches alone.
    now += 40;
    settle(&mut st, &mut members, &mut now);
    assert_eq!(current(&st), 1);
    let view = st.access_view();
    assert_eq!(view.groups[0].key.as_ref().unwrap().members_online, 1);
}

#[test]
fn direct_traffic_of_pairs_keyed_by_a_group_counts_against_its_budget() {
    use tasuki_core::control::{PairUsage, SpokePair};
    use tasuki_core::pair::PairId;
    let dir = TempDir::new("groups-budget");
    let (mut st, _) = new_hub(&dir);
    let (mut members, mut now) = keyed_pair_asked(&mut st);
    let (a_id, b_id) = (members[0].0, members[1].0);
    st.policy.max_packets = Some(1000);
    let pair = PairId::new(a_id, b_id).unwrap();
    let report = PairUsage {
        pair,
        direct: Some("192.0.2.1:1".parse().unwrap()),
        active: true,
        last_handshake_secs: Some(1),
        tx_packets: 800,
        rx_packets: 800,
        tx_bytes: 80_000,
        rx_bytes: 80_000,
        handshakes: 1,
        upgrades: 1,
        fallbacks: 0,
        punch_failures: 0,
    };
    for id in [a_id, b_id] {
        st.on_pair_message(id, SpokePair::Usage(vec![report.clone()]), now)
            .unwrap();
    }
    settle(&mut st, &mut members, &mut now);
    assert_eq!(
        current(&st),
        2,
        "1600 packets direct: over the group's 1000"
    );
}

#[test]
fn a_keyed_group_removed_half_way_has_its_keys_erased_at_the_next_start() {
    let dir = TempDir::new("groups-orphan");
    let (mut st, key, _members, now) = keyed_with_a(&dir);
    // The group goes from the policy, and the hub stops before its keys do.
    st.edit_access(now, |p| {
        p.remove_group("staff")?;
        Ok("staff removed".into())
    })
    .unwrap();
    drop(st);
    let st = load(&dir, &key);
    assert!(st.keyed.groups.is_empty());
    let left: Vec<_> = std::fs::read_dir(dir.0.join("keys"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("group-"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
