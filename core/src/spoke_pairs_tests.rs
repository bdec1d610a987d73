use super::*;
use crate::control::{Lifetime, PairOffer};
use crate::keys::PublicKey;
use crate::pair::seal_pair;
use crate::pair_schedule::PairDelivery;
use rand::{rngs::StdRng, SeedableRng};

const ME: SpokeId = 3;
const PEER: SpokeId = 7;
const PEER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 7);

fn pair() -> PairId {
    PairId::new(ME, PEER).unwrap()
}

fn peer() -> PairPeer {
    PairPeer {
        spoke_id: PEER,
        name: "b".into(),
        public_key: PublicKey([7; 32]),
        tunnel_addr: PEER_ADDR,
        candidates: vec!["192.0.2.7:4000".parse().unwrap()],
    }
}

struct World {
    rng: StdRng,
    link: KeyEpoch,
    pairs: SpokePairs,
}

impl World {
    fn new() -> Self {
        let mut rng = StdRng::seed_from_u64(5);
        let link = KeyEpoch::issue(4, 0, &mut rng);
        Self {
            rng,
            link,
            pairs: SpokePairs::restore(ME, 30, Vec::new()),
        }
    }

    fn offer(&mut self, number: u64) -> (KeyEpoch, HubPair) {
        let epoch = KeyEpoch::issue(number, 0, &mut self.rng);
        let sealed = seal_pair(&self.link, pair(), &epoch, &mut self.rng).unwrap();
        let delivery = PairDelivery {
            pair: pair(),
            epoch: number,
            under: self.link.number,
            sealed,
            lifetime: Lifetime::default(),
        };
        let msg = HubPair::Offer(PairOffer {
            peer: peer(),
            delivery,
        });
        (epoch, msg)
    }

    fn handle(&mut self, now: u64, msg: HubPair) {
        let links = [self.link.clone()];
        self.pairs.handle(now, msg, &links);
    }

    fn actions(&mut self) -> Vec<PairAction> {
        std::iter::from_fn(|| self.pairs.poll_action()).collect()
    }

    /// Offers epoch `number` and stores it.
    fn hold(&mut self, number: u64) -> KeyEpoch {
        let (epoch, msg) = self.offer(number);
        self.handle(0, msg);
        self.actions();
        self.pairs.stored(pair(), peer(), epoch.clone(), true);
        self.actions();
        epoch
    }

    fn switch(&mut self, now: u64, epoch: u64, settled: u64) -> Vec<PairAction> {
        self.handle(
            now,
            HubPair::Switch {
                pair: pair(),
                epoch,
                settled,
                candidates: peer().candidates,
            },
        );
        self.actions()
    }
}

fn sends(actions: &[PairAction]) -> Vec<SpokePair> {
    actions
        .iter()
        .filter_map(|a| match a {
            PairAction::Send(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn an_offer_is_stored_before_the_plane_has_it_or_the_hub_hears_of_it() {
    let mut w = World::new();
    let (epoch, msg) = w.offer(1);
    w.handle(0, msg);
    let actions = w.actions();
    assert_eq!(
        actions,
        vec![PairAction::Store {
            pair: pair(),
            peer: peer(),
            epoch: epoch.clone()
        }],
        "only the store, nothing sent or used yet"
    );
    w.pairs.stored(pair(), peer(), epoch.clone(), true);
    let actions = w.actions();
    assert!(matches!(
        &actions[0],
        PairAction::Plane(PairCommand::Hold { epoch: e, .. }) if *e == epoch
    ));
    assert_eq!(
        sends(&actions),
        vec![SpokePair::Receipt {
            pair: pair(),
            epoch: 1
        }]
    );
}

#[test]
fn a_failed_store_is_not_acknowledged_and_a_resent_offer_is_stored_again() {
    let mut w = World::new();
    let (epoch, msg) = w.offer(1);
    w.handle(0, msg.clone());
    w.actions();
    w.pairs.stored(pair(), peer(), epoch.clone(), false);
    assert!(w.actions().is_empty(), "nothing used, nothing reported");
    w.handle(1, msg.clone());
    assert!(matches!(w.actions()[..], [PairAction::Store { .. }]));
    w.pairs.stored(pair(), peer(), epoch, true);
    w.actions();
    // Held now: the same offer again is only acknowledged again.
    w.handle(2, msg);
    assert_eq!(
        sends(&w.actions()),
        vec![SpokePair::Receipt {
            pair: pair(),
            epoch: 1
        }]
    );
}

#[test]
fn an_offer_for_another_spokes_pair_or_under_an_unknown_link_epoch_is_dropped() {
    let mut w = World::new();
    let (_, msg) = w.offer(1);
    let HubPair::Offer(mut offer) = msg.clone() else {
        unreachable!()
    };
    offer.peer.spoke_id = 9;
    w.handle(0, HubPair::Offer(offer));
    assert!(w.actions().is_empty());
    let HubPair::Offer(mut offer) = msg else {
        unreachable!()
    };
    offer.delivery.under = 99;
    w.handle(0, HubPair::Offer(offer));
    assert!(w.actions().is_empty());
    assert_eq!(w.pairs.rejected(), 2);
}

#[test]
fn a_switch_is_stored_before_it_is_used_and_reported() {
    let mut w = World::new();
    w.hold(1);
    let actions = w.switch(5, 1, 0);
    assert_eq!(
        actions,
        vec![PairAction::StoreCurrent {
            pair: pair(),
            epoch: 1
        }]
    );
    w.pairs.switch_stored(5, pair(), 1, true);
    let actions = w.actions();
    assert_eq!(
        actions,
        vec![
            PairAction::Plane(PairCommand::Use {
                pair: pair(),
                epoch: 1,
                candidates: peer().candidates
            }),
            PairAction::Send(SpokePair::Switched {
                pair: pair(),
                epoch: 1
            }),
        ]
    );
    assert_eq!(
        w.pairs.held(),
        vec![PairHeld {
            pair: pair(),
            current: 1,
            stored: 1
        }]
    );
}

#[test]
fn a_switch_to_an_epoch_not_held_waits_and_a_repeated_one_is_reported_again() {
    let mut w = World::new();
    assert!(w.switch(1, 1, 0).is_empty(), "not held: nothing");
    w.hold(1);
    w.switch(2, 1, 0);
    w.pairs.switch_stored(2, pair(), 1, false);
    assert!(
        w.actions().is_empty(),
        "a failed store: not used, not reported"
    );
    w.switch(3, 1, 0);
    w.pairs.switch_stored(3, pair(), 1, true);
    w.actions();
    let again = w.switch(4, 1, 0);
    assert!(sends(&again).contains(&SpokePair::Switched {
        pair: pair(),
        epoch: 1
    }));
}

#[test]
fn old_epochs_go_only_a_grace_after_the_hub_says_both_left_them() {
    let mut w = World::new();
    w.hold(1);
    w.switch(0, 1, 0);
    w.pairs.switch_stored(0, pair(), 1, true);
    w.hold(2);
    w.switch(10, 2, 1);
    w.pairs.switch_stored(10, pair(), 2, true);
    w.actions();
    w.pairs.handle_timeout(100);
    assert!(w.actions().is_empty(), "settled 1: epoch 1 is kept");
    // The hub says both run 2 now.
    w.switch(110, 2, 2);
    w.pairs.handle_timeout(139);
    assert!(w.actions().is_empty(), "within the grace");
    w.pairs.handle_timeout(140);
    let actions = w.actions();
    assert!(actions.contains(&PairAction::Erase {
        pair: pair(),
        epochs: vec![1]
    }));
    assert!(actions.contains(&PairAction::Plane(PairCommand::Erase {
        pair: pair(),
        epoch: 1
    })));
}

#[test]
fn an_ended_pair_is_forgotten_and_not_asked_for_at_once() {
    let mut w = World::new();
    w.hold(1);
    w.handle(20, HubPair::Ended { pair: pair() });
    let actions = w.actions();
    assert!(actions.contains(&PairAction::Plane(PairCommand::End(pair()))));
    assert!(actions.contains(&PairAction::Forget(pair())));
    assert!(w.pairs.held().is_empty());
    w.pairs.ask(21, PEER_ADDR);
    assert!(w.actions().is_empty());
    w.pairs.ask(20 + ASK_EVERY_SECS, PEER_ADDR);
    assert_eq!(
        sends(&w.actions()),
        vec![SpokePair::Request { peer: PEER_ADDR }]
    );
}

#[test]
fn requests_are_spaced_and_a_refusal_quiets_them() {
    let mut w = World::new();
    w.pairs.ask(0, PEER_ADDR);
    w.pairs.ask(1, PEER_ADDR);
    assert_eq!(sends(&w.actions()).len(), 1, "once per {ASK_EVERY_SECS} s");
    w.handle(
        2,
        HubPair::Refused {
            peer: PEER_ADDR,
            reason: "off".into(),
        },
    );
    w.pairs.ask(2 + ASK_EVERY_SECS, PEER_ADDR);
    assert!(w.actions().is_empty(), "refused: quiet for longer");
    w.pairs.ask(2 + REFUSED_SECS, PEER_ADDR);
    assert_eq!(sends(&w.actions()).len(), 1);
    // The hub says what refused it changed: asked again at once.
    w.handle(
        3 + REFUSED_SECS,
        HubPair::Refused {
            peer: PEER_ADDR,
            reason: "off".into(),
        },
    );
    w.pairs.ask(4 + REFUSED_SECS, PEER_ADDR);
    assert!(w.actions().is_empty());
    w.handle(5 + REFUSED_SECS, HubPair::Reconsider);
    w.pairs.ask(5 + REFUSED_SECS, PEER_ADDR);
    assert_eq!(sends(&w.actions()).len(), 1);
    // A pair held: never asked.
    w.hold(1);
    w.pairs.ask(1000, PEER_ADDR);
    assert!(w.actions().is_empty());
}

#[test]
fn a_restored_pair_is_handed_to_the_plane_with_its_current_epoch() {
    let mut rng = StdRng::seed_from_u64(1);
    let e1 = KeyEpoch::issue(1, 0, &mut rng);
    let e2 = KeyEpoch::issue(2, 0, &mut rng);
    let mut pairs = SpokePairs::restore(
        ME,
        30,
        vec![StoredPair {
            pair: pair(),
            peer: peer(),
            epochs: vec![e1, e2],
            current: 2,
            rules: None,
            via: None,
        }],
    );
    let actions: Vec<_> = std::iter::from_fn(|| pairs.poll_action()).collect();
    let holds = actions
        .iter()
        .filter(|a| matches!(a, PairAction::Plane(PairCommand::Hold { .. })))
        .count();
    assert_eq!(holds, 2);
    assert!(actions.contains(&PairAction::Plane(PairCommand::Use {
        pair: pair(),
        epoch: 2,
        candidates: peer().candidates
    })));
    assert_eq!(pairs.held()[0].current, 2);
}

/// A pair keyed by a group: stored first, then its keys are the ones
/// derived from the group's epochs (the same on both sides), it uses the
/// group's epoch in use, follows the group's rotation, and ends with the
/// group.
#[test]
fn a_pair_keyed_by_a_group_derives_its_epochs_and_follows_the_group() {
    let mut rng = StdRng::seed_from_u64(9);
    let me = PublicKey([3; 32]);
    let (e1, e2) = (
        KeyEpoch::issue(1, 0, &mut rng),
        KeyEpoch::issue(2, 0, &mut rng),
    );
    let mut pairs = SpokePairs::restore(ME, 30, Vec::new());
    let keyed = HubPair::Keyed {
        pair: pair(),
        peer: peer(),
        group: "staff".into(),
    };
    pairs.handle(1, keyed, &[]);
    let actions: Vec<_> = std::iter::from_fn(|| pairs.poll_action()).collect();
    assert!(
        matches!(&actions[..], [PairAction::StoreVia { group, .. }] if group == "staff"),
        "stored before anything: {actions:?}"
    );
    // Fed before it is stored: nothing is derived yet.
    pairs.group_epochs("staff", &me, std::slice::from_ref(&e1), 1);
    assert!(pairs.poll_action().is_none());
    pairs.via_stored(pair(), peer(), "staff".into(), true);
    pairs.group_epochs("staff", &me, &[e1.clone(), e2.clone()], 1);
    let actions: Vec<_> = std::iter::from_fn(|| pairs.poll_action()).collect();
    let held: Vec<&KeyEpoch> = actions
        .iter()
        .filter_map(|a| match a {
            PairAction::Plane(PairCommand::Hold { epoch, .. }) => Some(epoch),
            _ => None,
        })
        .collect();
    let expect = crate::group_keys::pair_key("staff", &e1, &me, &peer().public_key);
    assert_eq!(held.len(), 2);
    assert_eq!(held[0].key, expect.key, "the derived key, not the group's");
    assert_ne!(held[0].key, e1.key);
    // The peer derives the same key with the keys the other way round.
    let theirs = crate::group_keys::pair_key("staff", &e1, &peer().public_key, &me);
    assert_eq!(theirs.key, expect.key);
    assert!(actions.iter().any(
        |a| matches!(a, PairAction::Plane(PairCommand::Use { epoch: 1, candidates, .. }) if !candidates.is_empty())
    ));
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, PairAction::Send(_) | PairAction::Store { .. })),
        "nothing stored or reported for derived epochs: {actions:?}"
    );
    // The group moves to 2 and erases 1: so does the pair.
    pairs.group_epochs("staff", &me, std::slice::from_ref(&e2), 2);
    let actions: Vec<_> = std::iter::from_fn(|| pairs.poll_action()).collect();
    assert!(actions
        .iter()
        .any(|a| matches!(a, PairAction::Plane(PairCommand::Erase { epoch: 1, .. }))));
    assert!(actions
        .iter()
        .any(|a| matches!(a, PairAction::Plane(PairCommand::Use { epoch: 2, .. }))));
    // A spoke that leaves the group: its pairs keyed by it end.
    pairs.group_ended(5, "staff");
    let actions: Vec<_> = std::iter::from_fn(|| pairs.poll_action()).collect();
    assert!(actions
        .iter()
        .any(|a| matches!(a, PairAction::Plane(PairCommand::End(p)) if *p == pair())));
    assert!(pairs.via_groups().is_empty());
}
