//! A simulated hub and the two holders of one pair running the pair-epoch
//! commands over lossy, duplicating, reordering control channels, with hub
//! restarts and holders whose link epochs rotate under them, on a virtual
//! clock, for hours: the rules of `pair_schedule` and `pair` must keep the
//! two holders able to talk (neither ever switches to an epoch the other
//! lacks, no epoch a holder uses is erased) and keep rotating.

use std::collections::{BTreeSet, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::keys::KeyEpoch;
use crate::pair::PairId;
use crate::pair_keys::{PairKeys, PairReceived, PairSwitch};
use crate::pair_schedule::{PairDelivery, PairSchedule};
use crate::rotation::{RotationPolicy, Usage};

const GRACE: u64 = 10;
const IDLE: u64 = u64::MAX;

/// What the hub sends a holder.
#[derive(Clone, Debug)]
enum Down {
    Key(PairDelivery),
    Switch { epoch: u64, settled: u64 },
}

/// What a holder sends the hub.
#[derive(Clone, Copy, Debug)]
enum Up {
    Receipt(u64),
    Switched(u64),
}

/// One holder: its link epochs (the newest first) and its pair epochs.
struct Holder {
    links: Vec<KeyEpoch>,
    keys: PairKeys,
    inbox: VecDeque<Down>,
}

struct World {
    rng: StdRng,
    now: u64,
    pair: PairId,
    hub: PairSchedule,
    holders: [Holder; 2],
    outbox: VecDeque<(usize, Up)>,
    loss: f64,
    /// Every epoch the hub erased.
    erased: BTreeSet<u64>,
    /// Seconds in which a holder could not read what its peer sent.
    unreadable: u64,
}

impl World {
    fn new(seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let pair = PairId::new(1, 2).expect("two spokes");
        let (hub, _) = PairSchedule::start(pair, 0, &mut rng);
        let holder = |n: u64, rng: &mut StdRng| Holder {
            links: vec![KeyEpoch::issue(n, 0, rng)],
            keys: PairKeys::default(),
            inbox: VecDeque::new(),
        };
        let holders = [holder(3, &mut rng), holder(7, &mut rng)];
        Self {
            rng,
            now: 0,
            pair,
            hub,
            holders,
            outbox: VecDeque::new(),
            loss: 0.2,
            erased: BTreeSet::new(),
            unreadable: 0,
        }
    }

    /// A message onto a lossy, sometimes duplicating, sometimes reordering
    /// channel.
    fn post<T: Clone>(rng: &mut StdRng, loss: f64, queue: &mut VecDeque<T>, msg: T) {
        if rng.gen_bool(loss) {
            return;
        }
        let copies = if rng.gen_bool(0.05) { 2 } else { 1 };
        for _ in 0..copies {
            if rng.gen_bool(0.2) && !queue.is_empty() {
                let at = rng.gen_range(0..queue.len());
                queue.insert(at, msg.clone());
            } else {
                queue.push_back(msg.clone());
            }
        }
    }

    fn hub_tick(&mut self, policy: &RotationPolicy) {
        let links = [self.holders[0].links.first(), self.holders[1].links.first()];
        let plan = self
            .hub
            .tick(
                policy,
                IDLE,
                self.now,
                Usage::default(),
                links,
                &mut self.rng,
            )
            .expect("sealing never fails here");
        for (holder, d) in plan.deliveries {
            let i = usize::from(holder == self.pair.holders()[1]);
            Self::post(
                &mut self.rng,
                self.loss,
                &mut self.holders[i].inbox,
                Down::Key(d),
            );
        }
        for (holder, epoch) in plan.notify {
            let i = usize::from(holder == self.pair.holders()[1]);
            let msg = Down::Switch {
                epoch,
                settled: plan.settled,
            };
            Self::post(&mut self.rng, self.loss, &mut self.holders[i].inbox, msg);
        }
        let kept: BTreeSet<u64> = self.hub.epochs().iter().map(|e| e.number).collect();
        for k in self.hub.take_erasable(self.now) {
            self.erased.insert(k);
        }
        for i in 0..2 {
            let current = self.current(i);
            assert!(
                current == 0 || (kept.contains(&current) && !self.erased.contains(&current)),
                "holder {i} uses epoch {current} that the hub erased"
            );
        }
    }

    fn deliver_up(&mut self) {
        while let Some((i, msg)) = self.outbox.pop_front() {
            let holder = self.pair.holders()[i];
            match msg {
                Up::Receipt(k) => {
                    self.hub.on_receipt(holder, k);
                }
                Up::Switched(k) => {
                    self.hub.on_switched(holder, k, self.now, GRACE);
                }
            }
        }
    }

    /// Holder `i` reads what reached it, as a spoke does: a key is stored
    /// then acknowledged; a switch to a held key is done then reported.
    fn holder_step(&mut self, i: usize) {
        while let Some(msg) = self.holders[i].inbox.pop_front() {
            let reply = match msg {
                Down::Key(d) => {
                    let h = &mut self.holders[i];
                    // A box under a link epoch it no longer holds comes again.
                    match h.keys.receive(&d, &h.links) {
                        Ok(PairReceived::New(epoch)) => h.keys.hold(self.pair, epoch),
                        Ok(PairReceived::Again) => {}
                        Err(_) => continue,
                    }
                    Up::Receipt(d.epoch)
                }
                Down::Switch { epoch: k, settled } => match self.holders[i]
                    .keys
                    .switch(&self.pair, k, settled, self.now, GRACE)
                {
                    PairSwitch::NotHeld => continue,
                    PairSwitch::Again => Up::Switched(k),
                    PairSwitch::Switched => {
                        let other = self.holders[1 - i].keys.held(&self.pair);
                        assert!(
                            other.contains(&k),
                            "holder {i} switches to epoch {k} that its peer lacks"
                        );
                        Up::Switched(k)
                    }
                },
            };
            Self::post(&mut self.rng, self.loss, &mut self.outbox, (i, reply));
        }
    }

    /// The epoch holder `i` sends under (0: none yet).
    fn current(&self, i: usize) -> u64 {
        self.holders[i]
            .keys
            .current(&self.pair)
            .map_or(0, |e| e.number)
    }

    /// Both holders erase what their grace let go; each must still hold
    /// the epoch its peer sends under, or that traffic could not be read.
    fn holders_erase(&mut self) {
        for h in &mut self.holders {
            h.keys.take_erasable(self.now);
        }
        for i in 0..2 {
            let peer = self.current(1 - i);
            if peer != 0 && !self.holders[i].keys.held(&self.pair).contains(&peer) {
                self.unreadable += 1;
            }
        }
    }

    /// A holder's link rotates: the new link epoch seals from now on, the
    /// old one is kept a while (as a spoke keeps it through the grace).
    fn rotate_link(&mut self, i: usize) {
        let next = self.holders[i].links[0].number + 1;
        let epoch = KeyEpoch::issue(next, self.now, &mut self.rng);
        let links = &mut self.holders[i].links;
        links.insert(0, epoch);
        links.truncate(2);
    }

    /// The hub restarts: only the stored epochs and meta survive.
    fn restart_hub(&mut self) {
        let meta = self.hub.meta().clone();
        self.hub = PairSchedule::restore(self.pair, self.hub.epochs(), meta);
    }
}

#[test]
fn two_holders_always_agree_through_loss_restarts_and_link_rotations() {
    let policy = RotationPolicy {
        interval_secs: Some(30),
        ..RotationPolicy::default()
    };
    for seed in 0..8 {
        let mut w = World::new(seed);
        for _ in 0..4 * 3600 {
            w.now += 1;
            w.hub_tick(&policy);
            let first = w.rng.gen_range(0..2);
            w.holder_step(first);
            w.holder_step(1 - first);
            w.deliver_up();
            w.holders_erase();
            if w.rng.gen_bool(0.002) {
                w.restart_hub();
            }
            if w.rng.gen_bool(0.003) {
                let i = w.rng.gen_range(0..2);
                w.rotate_link(i);
            }
        }
        // A quiet minute with no loss: both end on the newest epoch.
        w.loss = 0.0;
        for _ in 0..60 {
            w.now += 1;
            w.hub_tick(&policy);
            w.holder_step(0);
            w.holder_step(1);
            w.deliver_up();
            w.holders_erase();
        }
        let rotations = w.hub.meta().rotations;
        assert!(
            rotations > 100,
            "seed {seed}: only {rotations} rotations in 4 h"
        );
        let latest = w.hub.latest();
        for i in 0..2 {
            let current = w.current(i);
            assert!(
                current + 1 >= latest,
                "seed {seed}: holder {i} is at {current} of {latest}"
            );
        }
        assert_eq!(
            w.unreadable, 0,
            "seed {seed}: a holder erased what its peer sends under"
        );
        for (i, h) in w.holders.iter().enumerate() {
            let held = h.keys.held(&w.pair).len();
            // The newest, the one in use, the one a lagging peer may use.
            assert!(held <= 3, "seed {seed}: holder {i} keeps {held} epochs");
        }
        assert!(
            w.hub.epochs().len() <= 3,
            "seed {seed}: ended epochs pile up"
        );
    }
}
