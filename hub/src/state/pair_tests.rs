//! The hub state's direct mode, driven through its own calls on a store in
//! a temporary directory: refusals, an offer stored before it goes, the
//! switch with the peer's candidates, a restart, and pairs ending.

use std::collections::HashMap;
use std::net::SocketAddr;

use tasuki_core::control::{DirectFacts, HubMessage, HubPair, SpokePair};
use tasuki_core::pair::PairId;
use tasuki_core::pair_rules::DirectMode;
use tokio::sync::mpsc;

use super::*;

use super::test_hub::{load, new_hub, spoke, TempDir};

/// The pair messages a spoke got, but the notices to ask again
/// ([`reconsider_count`] counts those).
fn drain(rx: &mut mpsc::Receiver<HubMessage>) -> Vec<HubPair> {
    let mut out = Vec::new();
    while let Ok(msg) = rx.try_recv() {
        match msg {
            HubMessage::Pair(HubPair::Reconsider) => {}
            HubMessage::Pair(p) => out.push(p),
            _ => {}
        }
    }
    out
}

/// How many notices to ask again a spoke got (the rest is dropped).
fn reconsider_count(rx: &mut mpsc::Receiver<HubMessage>) -> usize {
    let mut n = 0;
    while let Ok(msg) = rx.try_recv() {
        n += usize::from(matches!(msg, HubMessage::Pair(HubPair::Reconsider)));
    }
    n
}

fn addr_of(st: &HubState, id: SpokeId) -> std::net::Ipv4Addr {
    st.registry.spoke(id).unwrap().tunnel_addr
}

fn request(st: &mut HubState, from: SpokeId, to: SpokeId, now: u64) {
    let peer = addr_of(st, to);
    st.on_pair_message(from, SpokePair::Request { peer }, now)
        .unwrap();
}

#[test]
fn direct_mode_off_refuses_with_a_reason_and_keeps_nothing() {
    let dir = TempDir::new("off");
    let (mut st, _) = new_hub(&dir);
    let (a, mut ra) = spoke(&mut st, "a", 100);
    let (b, _rb) = spoke(&mut st, "b", 100);
    request(&mut st, a, b, 100);
    let got = drain(&mut ra);
    assert!(
        matches!(&got[..], [HubPair::Refused { reason, .. }] if reason.contains("direct mode is off")),
        "{got:?}"
    );
    assert_eq!(st.pair_count(), 0);
    // An address nobody has.
    let nobody = "100.64.0.200".parse().unwrap();
    st.on_pair_message(a, SpokePair::Request { peer: nobody }, 100)
        .unwrap();
    assert!(matches!(&drain(&mut ra)[..], [HubPair::Refused { .. }]));
    assert_eq!(st.pair_counters().refused, 2);
}

#[test]
fn a_pair_is_offered_to_both_switched_restored_and_ended() {
    let dir = TempDir::new("pair");
    let (mut st, key) = new_hub(&dir);
    let (a, mut ra) = spoke(&mut st, "a", 100);
    let (b, mut rb) = spoke(&mut st, "b", 100);
    st.set_direct(None, Some(DirectMode::Auto), 100).unwrap();
    let seen: SocketAddr = "203.0.113.5:40000".parse().unwrap();
    let local: SocketAddr = "192.168.1.9:51820".parse().unwrap();
    st.direct.seen.insert(b, seen);
    st.on_pair_message(
        b,
        SpokePair::Facts(DirectFacts {
            local: vec![local, seen],
            pairs: vec![],
        }),
        100,
    )
    .unwrap();
    request(&mut st, a, b, 100);
    let pair = PairId::new(a, b).unwrap();
    // Both holders got the first epoch, each with the other as its peer.
    let offer_a = drain(&mut ra);
    let offer_b = drain(&mut rb);
    let HubPair::Offer(o) = &offer_a[0] else {
        panic!("{offer_a:?}")
    };
    assert_eq!((o.peer.spoke_id, o.delivery.epoch), (b, 1));
    assert_eq!(o.peer.candidates, vec![seen, local]);
    assert!(matches!(&offer_b[0], HubPair::Offer(o) if o.peer.spoke_id == a));
    // Receipts from both: both are told to switch, with the peer's candidates.
    for h in [a, b] {
        let msg = SpokePair::Receipt { pair, epoch: 1 };
        st.on_pair_message(h, msg, 101).unwrap();
    }
    let switch = drain(&mut ra);
    assert!(
        matches!(&switch[..], [HubPair::Switch { epoch: 1, candidates, .. }] if candidates == &vec![seen, local]),
        "{switch:?}"
    );
    assert!(matches!(
        &drain(&mut rb)[..],
        [HubPair::Switch { epoch: 1, .. }]
    ));
    for h in [a, b] {
        let msg = SpokePair::Switched { pair, epoch: 1 };
        st.on_pair_message(h, msg, 102).unwrap();
    }
    let views = st.pair_views(102);
    assert_eq!(views.len(), 1);
    assert_eq!((views[0].epoch, views[0].held.clone()), (1, vec![1]));
    // A restart keeps the pair, its meta and its key.
    drop(st);
    let mut st = load(&dir, &key);
    assert_eq!(st.pair_count(), 1);
    assert_eq!(st.pair_views(103)[0].epoch, 1);
    // A report on a pair the spoke does not hold is answered with its end.
    let (c, mut rc) = spoke(&mut st, "c", 103);
    st.on_pair_message(c, SpokePair::Switched { pair, epoch: 1 }, 103)
        .unwrap();
    assert_eq!(drain(&mut rc), vec![HubPair::Ended { pair }]);
    assert_eq!(st.pair_counters().unknown, 1);
    // Revoking a holder ends the pair at once, on disk too.
    let (tx, mut ra) = mpsc::channel(64);
    st.attach_session(a, tx);
    st.revoke("b", 104).unwrap();
    assert_eq!(drain(&mut ra), vec![HubPair::Ended { pair }]);
    assert_eq!(st.pair_count(), 0);
    drop(st);
    let st = load(&dir, &key);
    assert_eq!(st.pair_count(), 0);
}

#[test]
fn turning_direct_mode_off_for_a_holder_ends_its_pairs() {
    let dir = TempDir::new("offagain");
    let (mut st, _) = new_hub(&dir);
    let (a, mut ra) = spoke(&mut st, "a", 100);
    let (b, mut rb) = spoke(&mut st, "b", 100);
    let (c, _rc) = spoke(&mut st, "c", 100);
    st.set_direct(None, Some(DirectMode::Auto), 100).unwrap();
    request(&mut st, a, b, 100);
    request(&mut st, a, c, 100);
    assert_eq!(st.pair_count(), 2);
    drain(&mut ra);
    drain(&mut rb);
    let view = st
        .set_direct(Some("b"), Some(DirectMode::Off), 101)
        .unwrap();
    assert_eq!(
        (view.direct, view.overridden, view.pairs_ended),
        (DirectMode::Off, true, 1)
    );
    let pair = PairId::new(a, b).unwrap();
    assert_eq!(drain(&mut rb), vec![HubPair::Ended { pair }]);
    assert_eq!(drain(&mut ra), vec![HubPair::Ended { pair }]);
    assert_eq!(st.pair_count(), 1);
    // Asking again is refused, naming the spoke.
    request(&mut st, a, b, 102);
    assert!(
        matches!(&drain(&mut ra)[..], [HubPair::Refused { reason, .. }] if reason.contains("spoke b"))
    );
    // Enforce mode ends the rest.
    st.edit_access(103, |p| {
        p.mode = tasuki_core::access::Mode::Enforce;
        Ok("mode enforce".into())
    })
    .unwrap();
    assert_eq!(st.pair_count(), 0);
}

/// Both holders report `epoch` stored, then switched to, as spokes do.
fn walk(st: &mut HubState, pair: PairId, epoch: u64, now: u64) {
    for h in pair.holders() {
        let msg = SpokePair::Receipt { pair, epoch };
        st.on_pair_message(h, msg, now).unwrap();
    }
    for h in pair.holders() {
        let msg = SpokePair::Switched { pair, epoch };
        st.on_pair_message(h, msg, now).unwrap();
    }
}

#[test]
fn an_admins_rotation_walks_a_pair_to_a_new_epoch_and_erases_the_old() {
    let dir = TempDir::new("rotate");
    let (mut st, _) = new_hub(&dir);
    let (a, mut ra) = spoke(&mut st, "a", 100);
    let (b, mut rb) = spoke(&mut st, "b", 100);
    st.set_direct(None, Some(DirectMode::Auto), 100).unwrap();
    request(&mut st, a, b, 100);
    let pair = PairId::new(a, b).unwrap();
    walk(&mut st, pair, 1, 101);
    drain(&mut ra);
    drain(&mut rb);
    st.request_rotation(Some("a"), tasuki_core::rotation::Trigger::Admin)
        .unwrap();
    st.pair_tick(102, HashMap::new());
    let got = drain(&mut rb);
    assert!(
        matches!(&got[..], [HubPair::Offer(o), HubPair::Rules { .. }] if o.delivery.epoch == 2),
        "{got:?}"
    );
    assert!(matches!(
        &drain(&mut ra)[..],
        [HubPair::Offer(_), HubPair::Rules { .. }]
    ));
    walk(&mut st, pair, 2, 103);
    let got = drain(&mut ra);
    assert!(
        matches!(
            &got[..],
            [HubPair::Switch {
                epoch: 2,
                settled: 1,
                ..
            }]
        ),
        "{got:?}"
    );
    let v = &st.pair_views(103)[0];
    assert_eq!((v.epoch, v.rotations, v.held.clone()), (2, 1, vec![1, 2]));
    // The old epoch goes once the grace has passed, key file and all.
    let grace = st.policy.grace_secs;
    st.pair_tick(103 + grace, HashMap::new());
    assert_eq!(st.pair_views(103 + grace)[0].held, vec![2]);
    let names = st.vault.names().unwrap();
    let [low, high] = pair.holders();
    assert!(!names.contains(&format!("pair-{low}-{high}-1")));
    assert!(names.contains(&format!("pair-{low}-{high}-2")));
}

#[test]
fn an_unused_pair_ends_after_the_idle_time() {
    let dir = TempDir::new("idle");
    let (mut st, _) = new_hub(&dir);
    let (a, mut ra) = spoke(&mut st, "a", 100);
    let (b, _rb) = spoke(&mut st, "b", 100);
    st.set_direct(None, Some(DirectMode::Auto), 100).unwrap();
    request(&mut st, a, b, 100);
    let pair = PairId::new(a, b).unwrap();
    walk(&mut st, pair, 1, 101);
    let idle = st.direct.book.limits().idle_secs;
    st.on_pair_message(a, SpokePair::Used(vec![pair]), 200)
        .unwrap();
    st.pair_tick(200 + idle - 1, HashMap::new());
    assert_eq!(st.pair_count(), 1, "used at 200: not idle yet");
    drain(&mut ra);
    st.pair_tick(200 + idle, HashMap::new());
    assert_eq!(st.pair_count(), 0);
    assert_eq!(drain(&mut ra), vec![HubPair::Ended { pair }]);
}

/// Under an enforced policy a pair is issued only when some rule lets
/// traffic between its holders, its holders get the rules that decide
/// it, a change of the rules reaches them, and a policy that no longer
/// allows it ends it on both sides.
#[test]
fn an_enforced_policy_decides_which_pairs_exist_and_what_they_carry() {
    use tasuki_core::access::{Mode, Rule};
    let dir = TempDir::new("enforce");
    let (mut st, _) = new_hub(&dir);
    let (a, mut ra) = spoke(&mut st, "a", 100);
    let (b, mut rb) = spoke(&mut st, "b", 100);
    st.set_direct(None, Some(DirectMode::Auto), 100).unwrap();
    st.edit_access(100, |p| {
        p.mode = Mode::Enforce;
        Ok("enforce".into())
    })
    .unwrap();
    request(&mut st, a, b, 100);
    let got = drain(&mut ra);
    assert!(
        matches!(&got[..], [HubPair::Refused { reason, .. }] if reason.contains("allows no traffic")),
        "{got:?}"
    );
    let rule: Rule = Rule {
        from: "spoke:a".parse().unwrap(),
        to: "spoke:b".parse().unwrap(),
        services: vec!["tcp/22".parse().unwrap()],
    };
    st.edit_access(101, |p| p.allow(rule).map(|n| format!("rule {n}")))
        .unwrap();
    request(&mut st, a, b, 102);
    let pair = PairId::new(a, b).unwrap();
    for rx in [&mut ra, &mut rb] {
        let got = drain(rx);
        let rules = got.iter().find_map(|m| match m {
            HubPair::Rules { rules, .. } => Some(rules.clone()),
            _ => None,
        });
        let rules = rules.unwrap_or_else(|| panic!("no rules in {got:?}"));
        assert!(rules.enforce);
        assert_eq!(rules.rules.len(), 1);
        assert_eq!(rules.rules[0].from, a);
        assert_eq!(rules.rules[0].to, addr_of(&st, b));
    }
    // Another rule between them: both holders hear the new rules.
    let back: Rule = Rule {
        from: "spoke:b".parse().unwrap(),
        to: "spoke:a".parse().unwrap(),
        services: vec!["udp/53".parse().unwrap()],
    };
    st.edit_access(103, |p| p.allow(back).map(|n| format!("rule {n}")))
        .unwrap();
    for rx in [&mut ra, &mut rb] {
        let got = drain(rx);
        assert!(
            matches!(&got[..], [HubPair::Rules { rules, .. }] if rules.rules.len() == 2),
            "{got:?}"
        );
    }
    // Both rules gone: the pair ends at once, on both sides.
    st.edit_access(104, |p| {
        p.remove_rule(2)?;
        p.remove_rule(1).map(|_| "removed".into())
    })
    .unwrap();
    assert_eq!(st.pair_count(), 0);
    for rx in [&mut ra, &mut rb] {
        let got = drain(rx);
        assert!(
            got.iter()
                .any(|m| matches!(m, HubPair::Ended { pair: p } if *p == pair)),
            "{got:?}"
        );
    }
}

/// A spoke that floods the hub with pair requests is answered for its
/// budget's worth; the rest is dropped unanswered and counted.
#[test]
fn a_flood_of_pair_requests_is_dropped_past_the_budget() {
    let dir = TempDir::new("flood");
    let (mut st, _) = new_hub(&dir);
    let (a, mut ra) = spoke(&mut st, "a", 100);
    let nobody: std::net::Ipv4Addr = "100.64.0.200".parse().unwrap();
    let mut answers = 0;
    for _ in 0..100 {
        st.on_pair_message(a, SpokePair::Request { peer: nobody }, 100)
            .unwrap();
        answers += drain(&mut ra).len();
    }
    let budget = super::direct::REQUESTS_PER_WINDOW as usize;
    assert_eq!(answers, budget);
    assert_eq!(st.pair_counters().flooded, (100 - budget) as u64);
    // The next window answers again.
    st.on_pair_message(a, SpokePair::Request { peer: nobody }, 111)
        .unwrap();
    assert_eq!(drain(&mut ra).len(), 1);
}

/// Spokes a and b with direct mode on and their pair on its first epoch
/// (what the walk sent them drained).
fn walked_pair(st: &mut HubState) -> (PairId, [SpokeId; 2], [mpsc::Receiver<HubMessage>; 2]) {
    let (a, mut ra) = spoke(st, "a", 100);
    let (b, mut rb) = spoke(st, "b", 100);
    st.set_direct(None, Some(DirectMode::Auto), 100).unwrap();
    request(st, a, b, 100);
    let pair = PairId::new(a, b).unwrap();
    walk(st, pair, 1, 101);
    drain(&mut ra);
    drain(&mut rb);
    (pair, [a, b], [ra, rb])
}

/// A holder's report of `tx` packets sent direct and `handshakes` begun.
fn usage_report(pair: PairId, tx: u64, handshakes: u64) -> tasuki_core::control::PairUsage {
    tasuki_core::control::PairUsage {
        pair,
        direct: Some("192.0.2.1:1".parse().unwrap()),
        active: true,
        last_handshake_secs: Some(1),
        tx_packets: tx,
        rx_packets: tx,
        tx_bytes: tx * 100,
        rx_bytes: tx * 100,
        handshakes,
        upgrades: 1,
        fallbacks: 0,
        punch_failures: 0,
    }
}

/// The holders' reports of their direct traffic feed the pair's packet
/// budget: past it, the pair rotates (the hub never sees that traffic).
#[test]
fn reported_direct_traffic_rotates_a_pair_past_its_packet_budget() {
    let dir = TempDir::new("budget");
    let (mut st, _) = new_hub(&dir);
    st.policy.max_packets = Some(1000);
    let (pair, [a, b], [mut ra, _rb]) = walked_pair(&mut st);
    let report = |tx: u64| usage_report(pair, tx, 1);
    // 400 each way: under the budget.
    for h in [a, b] {
        st.on_pair_message(h, SpokePair::Usage(vec![report(400)]), 102)
            .unwrap();
    }
    st.pair_tick(103, HashMap::new());
    assert!(drain(&mut ra).is_empty(), "no rotation under the budget");
    // 700 each way in all: over it.
    for h in [a, b] {
        st.on_pair_message(h, SpokePair::Usage(vec![report(700)]), 104)
            .unwrap();
    }
    st.pair_tick(105, HashMap::new());
    let got = drain(&mut ra);
    assert!(
        got.iter()
            .any(|m| matches!(m, HubPair::Offer(o) if o.delivery.epoch == 2)),
        "{got:?}"
    );
    let (totals, direct) = st.direct_totals();
    assert_eq!(totals.tx_packets, 1400);
    assert_eq!(direct, 2);
}

/// The holders' completed handshakes (each counted by its initiator)
/// feed the pair's handshake budget: past it, the pair rotates.
#[test]
fn reported_direct_handshakes_rotate_a_pair_past_its_handshake_budget() {
    let dir = TempDir::new("handshakes");
    let (mut st, _) = new_hub(&dir);
    st.policy.max_handshakes = Some(4);
    let (pair, [a, b], [mut ra, _rb]) = walked_pair(&mut st);
    let report = |handshakes: u64| usage_report(pair, 1, handshakes);
    // One holder began 3: under the budget, and a repeated report of the
    // same counters adds nothing.
    for _ in 0..3 {
        st.on_pair_message(a, SpokePair::Usage(vec![report(3)]), 102)
            .unwrap();
    }
    st.pair_tick(103, HashMap::new());
    assert!(drain(&mut ra).is_empty(), "no rotation under the budget");
    // The other began 1: 4 in all, the budget.
    st.on_pair_message(b, SpokePair::Usage(vec![report(1)]), 104)
        .unwrap();
    st.pair_tick(105, HashMap::new());
    let got = drain(&mut ra);
    assert!(
        got.iter()
            .any(|m| matches!(m, HubPair::Offer(o) if o.delivery.epoch == 2)),
        "{got:?}"
    );
}

/// Turning direct mode on, or editing the access policy, tells every
/// attached spoke to ask for its pairs again (a refusal no longer holds).
#[test]
fn turning_direct_on_or_editing_the_policy_lets_refused_spokes_ask_again() {
    let dir = TempDir::new("reconsider");
    let (mut st, _) = new_hub(&dir);
    let (_, mut ra) = spoke(&mut st, "a", 100);
    let (_, mut rb) = spoke(&mut st, "b", 100);
    st.set_direct(None, Some(DirectMode::Auto), 100).unwrap();
    assert_eq!(reconsider_count(&mut ra), 1);
    assert_eq!(reconsider_count(&mut rb), 1);
    st.set_direct(None, Some(DirectMode::Off), 101).unwrap();
    assert_eq!(reconsider_count(&mut ra), 0, "off: nothing to ask for");
    st.edit_access(102, |p| {
        p.mode = tasuki_core::access::Mode::Enforce;
        Ok("enforce".into())
    })
    .unwrap();
    assert_eq!(reconsider_count(&mut ra), 1);
}
