//! The pair schedule's rules, one test each.

use rand::{rngs::StdRng, SeedableRng};

use super::*;
use crate::pair::open_pair;
use crate::rotation::RESEND_SECS;

const IDLE: u64 = 600;
const GRACE: u64 = 10;

fn policy(interval: Option<u64>) -> RotationPolicy {
    RotationPolicy {
        interval_secs: interval,
        ..RotationPolicy::default()
    }
}

/// A pair of spokes 3 and 8 with their link epochs.
struct Fixture {
    rng: StdRng,
    sched: PairSchedule,
    links: [KeyEpoch; 2],
}

impl Fixture {
    fn new() -> Self {
        let mut rng = StdRng::seed_from_u64(11);
        let links = [
            KeyEpoch::issue(4, 0, &mut rng),
            KeyEpoch::issue(9, 0, &mut rng),
        ];
        let pair = PairId::new(8, 3).unwrap();
        let (sched, first) = PairSchedule::start(pair, 100, &mut rng);
        assert_eq!(first.number, 1);
        Self { rng, sched, links }
    }

    fn tick(&mut self, policy: &RotationPolicy, now: u64) -> PairPlan {
        let links = [Some(&self.links[0]), Some(&self.links[1])];
        self.sched
            .tick(policy, IDLE, now, Usage::default(), links, &mut self.rng)
            .unwrap()
    }

    /// Both holders store and switch to what the plan hands out.
    fn answer(&mut self, plan: &PairPlan, now: u64) {
        for (holder, d) in &plan.deliveries {
            self.sched.on_receipt(*holder, d.epoch);
        }
        for (holder, k) in &plan.notify {
            self.sched.on_switched(*holder, *k, now, GRACE);
        }
    }
}

#[test]
fn each_holder_gets_the_epoch_sealed_under_its_own_link_epoch() {
    let mut f = Fixture::new();
    let plan = f.tick(&policy(None), 100);
    assert!(plan.issued.is_none(), "the first epoch came with the start");
    let holders: Vec<SpokeId> = plan.deliveries.iter().map(|(h, _)| *h).collect();
    assert_eq!(holders, vec![3, 8]);
    for ((_, d), link) in plan.deliveries.iter().zip(&f.links) {
        assert_eq!(d.under, link.number);
        let opened = open_pair(link, f.sched.pair(), d.epoch, &d.sealed).unwrap();
        assert_eq!(opened, f.sched.epochs()[0]);
    }
    // Spoke 8 cannot open what was sealed for spoke 3.
    let (_, for_3) = &plan.deliveries[0];
    assert!(open_pair(&f.links[1], f.sched.pair(), 1, &for_3.sealed).is_err());
    assert!(plan.notify.is_empty(), "nobody holds it yet");
}

#[test]
fn both_switch_only_once_both_hold_the_epoch() {
    let mut f = Fixture::new();
    let p = policy(None);
    f.tick(&p, 100);
    assert!(f.sched.on_receipt(3, 1));
    assert!(
        !f.sched.on_receipt(3, 1),
        "a repeated receipt moves nothing"
    );
    let plan = f.tick(&p, 101);
    assert!(plan.notify.is_empty(), "spoke 8 lacks the key");
    assert!(f.sched.on_receipt(8, 1));
    let plan = f.tick(&p, 102);
    assert_eq!(
        plan.notify,
        vec![(3, 1), (8, 1)],
        "both, at the same moment"
    );
    assert!(plan.stores(), "the switch is stored before it is sent");
    assert_eq!(f.sched.meta().notified, 1);
    assert!(f.sched.on_switched(8, 1, 102, GRACE));
    // Spoke 3 has not reported its switch: it alone hears it again.
    let plan = f.tick(&p, 102 + RESEND_SECS);
    assert_eq!(plan.notify, vec![(3, 1)]);
    assert!(!plan.stores(), "a re-send changes nothing to store");
    assert!(f.sched.on_switched(3, 1, 108, GRACE));
    assert_eq!(f.sched.current(), 1);
    assert!(!f.sched.in_flight());
    let plan = f.tick(&p, 200);
    assert!(plan.deliveries.is_empty() && plan.notify.is_empty());
}

#[test]
fn unanswered_deliveries_go_again_only_after_the_resend_interval() {
    let mut f = Fixture::new();
    let p = policy(None);
    assert_eq!(f.tick(&p, 100).deliveries.len(), 2);
    assert!(f.tick(&p, 101).deliveries.is_empty());
    f.sched.on_receipt(3, 1);
    let again = f.tick(&p, 100 + RESEND_SECS);
    let holders: Vec<SpokeId> = again.deliveries.iter().map(|(h, _)| *h).collect();
    assert_eq!(holders, vec![8], "only the holder that has not answered");
    // A holder without a session gets nothing, and is not forgotten.
    let no_session = [Some(&f.links[0]), None];
    let plan = f
        .sched
        .tick(&p, IDLE, 200, Usage::default(), no_session, &mut f.rng)
        .unwrap();
    assert!(plan.deliveries.is_empty());
    assert_eq!(f.tick(&p, 200 + RESEND_SECS).deliveries.len(), 1);
}

#[test]
fn a_rotation_walks_the_same_commands_and_erases_after_both_switched() {
    let mut f = Fixture::new();
    let p = policy(Some(60));
    for now in 100..103 {
        let plan = f.tick(&p, now);
        f.answer(&plan, now);
    }
    assert_eq!(f.sched.current(), 1);
    assert!(
        f.tick(&p, 150).issued.is_none(),
        "the interval has not passed"
    );
    let plan = f.tick(&p, 162);
    assert_eq!(plan.issued.as_ref().map(|e| e.number), Some(2));
    assert_eq!(plan.trigger, Some(Trigger::Interval));
    assert_eq!(plan.deliveries.len(), 2);
    f.answer(&plan, 162);
    let plan = f.tick(&p, 163);
    assert_eq!(plan.notify, vec![(3, 2), (8, 2)]);
    assert!(f.sched.on_switched(3, 2, 163, GRACE));
    assert!(
        f.sched.take_erasable(300).is_empty(),
        "spoke 8 may still use epoch 1"
    );
    assert!(f.sched.on_switched(8, 2, 164, GRACE));
    assert_eq!(f.sched.meta().rotations, 1);
    assert!(f.sched.take_erasable(164 + GRACE - 1).is_empty());
    assert_eq!(f.sched.take_erasable(164 + GRACE), vec![1]);
    assert_eq!(f.sched.latest(), 2);
}

#[test]
fn no_second_epoch_while_the_first_is_on_its_way() {
    let mut f = Fixture::new();
    let p = policy(Some(1));
    f.sched.request(Trigger::Admin);
    let plan = f.tick(&p, 500);
    assert!(
        plan.issued.is_none(),
        "spoke 3 and 8 do not hold epoch 1 yet"
    );
    f.answer(&plan, 500);
    let plan = f.tick(&p, 501);
    f.answer(&plan, 501);
    let plan = f.tick(&p, 502);
    assert_eq!(plan.trigger, Some(Trigger::Admin), "the request waited");
}

#[test]
fn an_idle_pair_ends_and_use_keeps_it() {
    let mut f = Fixture::new();
    let p = policy(None);
    assert!(!f.tick(&p, 100 + IDLE - 1).ended);
    f.sched.on_used(100 + IDLE - 1);
    assert!(!f.tick(&p, 100 + IDLE).ended, "used a second ago");
    let plan = f.tick(&p, 100 + 2 * IDLE);
    assert!(plan.ended);
    assert!(plan.deliveries.is_empty() && plan.issued.is_none());
}

#[test]
fn reports_from_strangers_or_for_unknown_epochs_move_nothing() {
    let mut f = Fixture::new();
    let p = policy(None);
    f.tick(&p, 100);
    assert!(!f.sched.on_receipt(5, 1), "spoke 5 is not in the pair");
    assert!(!f.sched.on_receipt(3, 7), "no epoch 7");
    assert!(
        !f.sched.on_switched(3, 1, 100, GRACE),
        "not told to switch yet"
    );
    assert!(!f.sched.on_switched(5, 1, 100, GRACE));
    assert_eq!(f.sched.meta().acked, [0, 0]);
}

#[test]
fn a_restored_schedule_goes_on_where_it_stood() {
    let mut f = Fixture::new();
    let p = policy(Some(60));
    for now in 100..103 {
        let plan = f.tick(&p, now);
        f.answer(&plan, now);
    }
    let meta = f.sched.meta().clone();
    let mut back = PairSchedule::restore(f.sched.pair(), f.sched.epochs(), meta.clone());
    assert_eq!(back.meta(), meta);
    assert_eq!(back.current(), 1);
    let links = [Some(&f.links[0]), Some(&f.links[1])];
    let plan = back
        .tick(&p, IDLE, 170, Usage::default(), links, &mut f.rng)
        .unwrap();
    assert_eq!(plan.issued.map(|e| e.number), Some(2));
}
