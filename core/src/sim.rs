//! A simulated hub and spoke running the rotation protocol over a lossy,
//! duplicating, reordering control channel, with crashes, on a virtual clock.
//! Every rule of `rotation` and `spoke_keys` is exercised together, for hours
//! of virtual time in milliseconds, and the two sides must always be able to
//! agree again (patent 0017: the key commands survive loss and restarts).

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::control::{KeyDelivery, Lifetime};
use crate::keys::KeyEpoch;
use crate::rotation::{
    receive_delivery, LinkSchedule, Received, RotationPolicy, ScheduleMeta, Usage,
};
use crate::spoke_keys::{HeldEpoch, SpokeKeys};

const LINK: u32 = 9;

#[derive(Clone, Debug)]
enum ToSpoke {
    Delivery(KeyDelivery),
    Notify(u64),
}

#[derive(Clone, Debug)]
enum ToHub {
    Receipt(u64),
}

/// The spoke's durable state (what a kill -9 leaves).
#[derive(Default)]
struct SpokeDisk {
    held: Vec<HeldEpoch>,
    current: u64,
}

struct World {
    rng: StdRng,
    now: u64,
    policy: RotationPolicy,
    hub: LinkSchedule,
    spoke: SpokeKeys,
    disk: SpokeDisk,
    to_spoke: VecDeque<ToSpoke>,
    to_hub: VecDeque<ToHub>,
    loss: f64,
    switches: u64,
    /// Packets the link carried so far (for packet budgets).
    packets: u64,
}

impl World {
    fn new(seed: u64, policy: RotationPolicy) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut hub = LinkSchedule::restore(LINK, vec![], ScheduleMeta::default());
        let first = hub.issue(0, &mut rng);
        let mut w = Self {
            rng,
            now: 0,
            policy,
            hub,
            spoke: SpokeKeys::default(),
            disk: SpokeDisk::default(),
            to_spoke: VecDeque::new(),
            to_hub: VecDeque::new(),
            loss: 0.0,
            switches: 0,
            packets: 0,
        };
        // Enrolment: the first epoch over the channel, stored, acknowledged.
        let held = HeldEpoch {
            epoch: first,
            lifetime: w.policy.lifetime(),
        };
        w.disk.held.push(held.clone());
        w.spoke.hold(held);
        w.hub.on_receipt(1);
        w
    }

    /// What the hub sends when the spoke attaches (as `ensure_schedule`).
    fn attach(&mut self) {
        for d in self.hub.deliveries(&self.policy).unwrap() {
            self.to_spoke.push_back(ToSpoke::Delivery(d));
        }
        if let Some(k) = self.hub.notification(&self.policy) {
            self.to_spoke.push_back(ToSpoke::Notify(k));
        }
    }

    fn lossy<T: Clone>(&mut self, q: &mut VecDeque<T>) -> Vec<T> {
        let mut out = Vec::new();
        while let Some(m) = q.pop_front() {
            if self.rng.gen_bool(self.loss) {
                continue;
            }
            if self.rng.gen_bool(self.loss / 3.0) {
                out.push(m.clone());
            }
            out.push(m);
        }
        if self.loss > 0.0 && out.len() > 1 && self.rng.gen_bool(0.3) {
            let i = self.rng.gen_range(0..out.len());
            let j = self.rng.gen_range(0..out.len());
            out.swap(i, j);
        }
        out
    }

    fn spoke_handles(&mut self, msg: ToSpoke) {
        match msg {
            ToSpoke::Delivery(d) => {
                let epochs: Vec<KeyEpoch> =
                    self.disk.held.iter().map(|h| h.epoch.clone()).collect();
                // The spoke's own rule. A box sealed under an epoch it no
                // longer holds cannot be opened: it says nothing, and the
                // hub sends it again.
                match receive_delivery(LINK, &d, &epochs, self.disk.current) {
                    Ok(Received::Again) => self.to_hub.push_back(ToHub::Receipt(d.epoch)),
                    Ok(Received::New(epoch)) => {
                        let held = HeldEpoch {
                            epoch,
                            lifetime: d.lifetime.clone(),
                        };
                        self.disk.held.push(held.clone());
                        self.spoke.hold(held);
                        self.to_hub.push_back(ToHub::Receipt(d.epoch));
                    }
                    Err(_) => {}
                }
            }
            ToSpoke::Notify(k) => {
                self.spoke.request_switch(k);
            }
        }
    }

    fn hub_handles(&mut self, msg: ToHub) {
        match msg {
            ToHub::Receipt(k) => {
                self.hub.on_receipt(k);
                if let Some(n) = self.hub.notification(&self.policy) {
                    self.to_spoke.push_back(ToSpoke::Notify(n));
                }
            }
        }
    }

    /// The data plane: a handshake under `k` works iff the hub answers under it.
    fn data_plane(&mut self) {
        let poll = self.spoke.poll(self.now, 0, 0);
        let Some(k) = poll.switch_to else { return };
        if self.hub.handshake_epochs().contains(&k) {
            assert!(self.spoke.on_confirmed(k, self.now, 0, 0) || self.spoke.current() == k);
            self.disk.current = self.spoke.current();
            let total = Usage::traffic(self.packets, self.packets * 100);
            self.hub
                .on_confirmed(k, self.now, total, self.policy.grace_secs);
            self.switches += 1;
        }
    }

    fn step(&mut self) {
        self.now += 1;
        self.packets += self.rng.gen_range(0..20);
        let total = Usage::traffic(self.packets, self.packets * 100);
        // Hub tick, the hub's own rule: erase after grace, then issue what
        // is due and send (or send again) what the spoke has not answered.
        self.hub.take_erasable(self.now);
        let plan = self
            .hub
            .tick(&self.policy.clone(), self.now, total, &mut self.rng)
            .unwrap();
        for d in plan.deliveries {
            self.to_spoke.push_back(ToSpoke::Delivery(d));
        }
        if let Some(k) = plan.notify {
            self.to_spoke.push_back(ToSpoke::Notify(k));
        }
        // The channel.
        let mut q = std::mem::take(&mut self.to_spoke);
        for m in self.lossy(&mut q) {
            self.spoke_handles(m);
        }
        let mut q = std::mem::take(&mut self.to_hub);
        for m in self.lossy(&mut q) {
            self.hub_handles(m);
        }
        self.data_plane();
        // The spoke erases what is older than its current epoch after grace.
        if let Some(below) = self.spoke.take_erasable(self.now) {
            self.disk.held.retain(|h| h.epoch.number >= below);
        }
        // Crashes and reconnects.
        if self.loss > 0.0 && self.rng.gen_bool(0.03) {
            // Hub kill -9: everything it acknowledged was stored.
            self.hub = LinkSchedule::restore(LINK, self.hub.epochs(), self.hub.meta().clone());
            self.to_spoke.clear();
            self.to_hub.clear();
            self.attach();
        }
        if self.loss > 0.0 && self.rng.gen_bool(0.03) {
            // Spoke kill -9.
            self.spoke = SpokeKeys::new(self.disk.held.clone(), self.disk.current, self.now);
            self.to_spoke.clear();
            self.to_hub.clear();
            self.attach();
        }
        if self.rng.gen_bool(0.05) {
            // A reconnect after a dropped control connection.
            self.attach();
        }
        // Never locked out: the epoch carrying traffic is one both sides hold.
        let cur = self.spoke.current();
        assert!(
            cur == 0 || self.hub.epochs().iter().any(|e| e.number == cur),
            "spoke runs epoch {cur}, which the hub no longer holds (hub {:?})",
            self.hub.meta()
        );
    }

    fn run(&mut self, steps: u64) {
        for _ in 0..steps {
            self.step();
        }
    }
}

fn hub_driven() -> RotationPolicy {
    RotationPolicy {
        interval_secs: Some(20),
        grace_secs: 3,
        ..RotationPolicy::default()
    }
}

fn batched() -> RotationPolicy {
    RotationPolicy {
        interval_secs: Some(20),
        grace_secs: 3,
        batch: 3,
        hard_limit: true,
        ..RotationPolicy::default()
    }
}

fn packet_budget() -> RotationPolicy {
    RotationPolicy {
        interval_secs: None,
        max_packets: Some(150),
        grace_secs: 3,
        ..RotationPolicy::default()
    }
}

fn converges(seed: u64, policy: RotationPolicy) {
    let mut w = World::new(seed, policy);
    w.loss = 0.3;
    w.run(10_000);
    // Then a clean network: both sides must come to agree.
    w.loss = 0.0;
    w.attach();
    w.run(400);
    assert_eq!(
        w.hub.meta().confirmed,
        w.spoke.current(),
        "seed {seed}: hub {:?}, spoke current {}",
        w.hub.meta(),
        w.spoke.current()
    );
    assert!(
        w.switches > 100,
        "seed {seed}: only {} switches",
        w.switches
    );
    let poll = w.spoke.poll(w.now, 0, 0);
    assert!(!poll.blocked, "seed {seed}: blocked on a clean network");
}

#[test]
fn hub_driven_rotation_survives_loss_duplicates_reordering_and_crashes() {
    for seed in 0..20 {
        converges(seed, hub_driven());
    }
}

#[test]
fn batched_rotation_survives_loss_duplicates_reordering_and_crashes() {
    for seed in 100..120 {
        converges(seed, batched());
    }
}

#[test]
fn packet_budgets_survive_loss_duplicates_reordering_and_crashes() {
    for seed in 200..210 {
        converges(seed, packet_budget());
    }
}

#[test]
fn lifetime_defaults_are_sane() {
    let l: Lifetime = batched().lifetime();
    assert!(l.self_switch && l.hard && l.slack_secs >= 5);
    assert!(!hub_driven().lifetime().self_switch);
}
