//! The scope schedule's rules for holders that come and go (a keyed
//! group's members); the two-holder walk is shown by the pair schedule's
//! tests, which run on it.

use rand::{rngs::StdRng, SeedableRng};

use super::*;
use crate::rotation::RESEND_SECS;

const GRACE: u64 = 10;

fn policy() -> RotationPolicy {
    RotationPolicy {
        interval_secs: None,
        ..RotationPolicy::default()
    }
}

struct Fixture {
    rng: StdRng,
    sched: ScopeSchedule,
    now: u64,
    /// Epochs each holder was ever given.
    given: BTreeMap<SpokeId, Vec<u64>>,
}

impl Fixture {
    /// Holders 1, 2 and 3 on epoch 1, all switched.
    fn new() -> Self {
        let mut rng = StdRng::seed_from_u64(5);
        let first = KeyEpoch::issue(1, 100, &mut rng);
        let mut sched = ScopeSchedule::restore(vec![first], ScopeMeta::default());
        for h in [1, 2, 3] {
            assert!(sched.join(h));
        }
        let mut f = Self {
            rng,
            sched,
            now: 100,
            given: BTreeMap::new(),
        };
        f.settle(|_| true);
        assert_eq!(f.sched.current(), 1);
        f
    }

    /// Ticks once; holders that `answers` store and switch to what they get.
    fn round(&mut self, answers: impl Fn(SpokeId) -> bool) -> ScopePlan {
        self.now += 1;
        let plan = self.sched.tick(
            &policy(),
            self.now,
            Usage::default(),
            |_| true,
            &mut self.rng,
        );
        for (h, k) in &plan.deliver {
            self.given.entry(*h).or_default().push(*k);
            if answers(*h) {
                self.sched.on_receipt(*h, *k);
            }
        }
        for (h, k) in &plan.notify {
            if answers(*h) {
                self.sched.on_switched(*h, *k, self.now, GRACE);
            }
        }
        plan
    }

    /// Rounds (each past the resend time) until nothing is in flight.
    fn settle(&mut self, answers: impl Fn(SpokeId) -> bool + Copy) {
        for _ in 0..10 {
            self.round(answers);
            self.now += RESEND_SECS;
            if !self.sched.in_flight() {
                return;
            }
        }
        panic!("never settled: {:?}", self.sched.meta());
    }
}

#[test]
fn a_holder_that_leaves_for_good_never_gets_the_next_epoch_and_it_comes_at_once() {
    let mut f = Fixture::new();
    assert!(f.sched.leave(2, true, Trigger::LeftGroup("staff".into())));
    let plan = f.round(|_| true);
    assert_eq!(plan.issued.as_ref().map(|e| e.number), Some(2));
    assert_eq!(plan.trigger, Some(Trigger::LeftGroup("staff".into())));
    f.settle(|_| true);
    assert_eq!(f.sched.current(), 2);
    assert!(
        !f.given[&2].contains(&2),
        "the leaver got {:?}",
        f.given[&2]
    );
    // Its old epoch goes a grace after the others switched.
    f.now += GRACE;
    assert_eq!(f.sched.take_erasable(f.now), vec![1]);
}

#[test]
fn a_leave_during_a_rotation_skips_the_epoch_the_leaver_may_hold() {
    let mut f = Fixture::new();
    // Epoch 2 is delivered to everyone; holder 3 has not answered yet.
    f.sched.request(Trigger::Admin);
    f.round(|h| h != 3);
    assert!(f.given[&2].contains(&2));
    // Holder 2 leaves with epoch 2 in hand: 3 is issued at once, though 2
    // is still in flight, and 2 is never switched to.
    f.sched.leave(2, true, Trigger::LeftGroup("staff".into()));
    let plan = f.round(|_| true);
    assert_eq!(plan.issued.as_ref().map(|e| e.number), Some(3));
    assert!(plan.notify.iter().all(|(_, k)| *k != 2), "{plan:?}");
    f.settle(|_| true);
    assert_eq!(f.sched.current(), 3);
    assert!(!f.given[&2].contains(&3));
}

#[test]
fn a_joiner_gets_the_epoch_in_use_and_newer_ones_only() {
    let mut f = Fixture::new();
    for _ in 0..3 {
        f.sched.request(Trigger::Admin);
        f.settle(|_| true);
    }
    assert_eq!(f.sched.current(), 4);
    assert!(f.sched.join(7));
    assert!(!f.sched.join(7), "joining twice is one join");
    f.settle(|_| true);
    assert_eq!(f.given[&7], vec![4], "only the epoch in use");
    f.sched.request(Trigger::Admin);
    f.settle(|_| true);
    assert_eq!(f.given[&7], vec![4, 5]);
    assert_eq!(f.sched.current(), 5);
}

#[test]
fn a_holder_that_goes_offline_stops_holding_the_others_up_and_catches_up_later() {
    let mut f = Fixture::new();
    f.sched.request(Trigger::Admin);
    // Holder 3 is away: epoch 2 waits for it...
    f.round(|h| h != 3);
    assert!(f.sched.in_flight());
    // ...until it is taken out (no rotation: it did not leave the group).
    assert!(f.sched.leave(3, false, Trigger::Admin));
    let plan = f.round(|_| true);
    assert!(plan.issued.is_none(), "going offline rotates nothing");
    f.settle(|_| true);
    assert_eq!(f.sched.current(), 2);
    // Back: it gets the epoch in use.
    f.sched.join(3);
    f.settle(|_| true);
    assert!(f.given[&3].contains(&2));
    assert_eq!(f.sched.meta().holders[&3].current, 2);
}

#[test]
fn a_restart_after_a_leave_still_issues_the_epoch_the_leaver_lacks() {
    let mut f = Fixture::new();
    f.sched.leave(1, true, Trigger::LeftGroup("staff".into()));
    // The meta is stored with the leave, then the hub restarts before its
    // tick issued anything.
    let meta = f.sched.meta().clone();
    let mut again = ScopeSchedule::restore(f.sched.epochs(), meta);
    let plan = again.tick(&policy(), f.now + 1, Usage::default(), |_| true, &mut f.rng);
    assert_eq!(plan.issued.as_ref().map(|e| e.number), Some(2));
    assert!(plan.deliver.iter().all(|(h, _)| *h != 1));
}

#[test]
fn a_holder_that_leaves_while_offline_still_rotates_the_scope() {
    let mut f = Fixture::new();
    assert!(f.sched.leave(3, false, Trigger::Admin));
    f.settle(|_| true);
    assert!(f.sched.away().any(|h| h == 3));
    // Removed while away: the epoch it holds is barred, a new one comes.
    assert!(f.sched.leave(3, true, Trigger::LeftGroup("staff".into())));
    let plan = f.round(|_| true);
    assert_eq!(plan.issued.as_ref().map(|e| e.number), Some(2));
    f.settle(|_| true);
    assert_eq!(f.sched.current(), 2);
    assert!(f.sched.away().next().is_none());
    // A second leave of nobody moves nothing.
    assert!(!f.sched.leave(3, true, Trigger::Admin));
}

#[test]
fn lost_keys_are_replaced_by_an_epoch_numbered_past_every_one_told() {
    let mut f = Fixture::new();
    f.sched.request(Trigger::Admin);
    f.settle(|_| true);
    assert_eq!(f.sched.current(), 2);
    // The hub's key files are gone: the meta says 2 was in use.
    let meta = f.sched.meta().clone();
    let mut again = ScopeSchedule::restore(Vec::new(), meta);
    let plan = again.tick(&policy(), f.now + 1, Usage::default(), |_| true, &mut f.rng);
    assert_eq!(plan.issued.as_ref().map(|e| e.number), Some(3));
    assert_eq!(plan.deliver.len(), 3, "every holder gets it");
}

#[test]
fn a_lagging_holder_going_offline_settles_the_others_and_says_so() {
    let mut f = Fixture::new();
    f.sched.request(Trigger::Admin);
    // All hold 2 and are told to switch; 3 never reports it.
    f.round(|_| true);
    f.round(|h| h != 3);
    assert_eq!(f.sched.current(), 1);
    f.sched.leave(3, false, Trigger::Admin);
    let plan = f.round(|_| true);
    assert!(plan.settled_rose, "{plan:?}");
    assert_eq!(plan.settled, 2);
    f.now += GRACE;
    assert_eq!(f.sched.take_erasable(f.now), vec![1]);
}
