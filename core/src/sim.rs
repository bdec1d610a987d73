//! A simulated hub and spoke running the rotation protocol over a lossy,
//! duplicating, reordering control channel, with crashes and failing spoke
//! stores, on a virtual clock. The rules of `rotation`, `spoke_keys` and
//! the two control-session machines (`hub_session`, `spoke_session`) run
//! together as the daemons run them, for hours of virtual time, and the two
//! sides must always be able to agree again (patent 0017: the key commands
//! survive loss and restarts).

use std::collections::VecDeque;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::control::{HubMessage, Lifetime, SpokeConfig, SpokeMessage};
use crate::hub_session::{Exchange, HubAction, HubSession};
use crate::keys::KeyEpoch;
use crate::rotation::{LinkSchedule, RotationPolicy, ScheduleMeta, Usage};
use crate::spoke_keys::{HeldEpoch, SpokeKeys};
use crate::spoke_session::{
    Holding, PlaneCommand, PlaneReport, SessionAction, SessionEnd, SpokeSession,
};

const LINK: u32 = 9;

fn config() -> SpokeConfig {
    crate::test_packets::spoke_config(LINK)
}

type ToSpoke = HubMessage;
type ToHub = SpokeMessage;

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
    hub_session: HubSession,
    spoke_session: SpokeSession,
    /// How often a spoke's store write fails (a full disk).
    store_failures: f64,
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
            hub_session: HubSession::new(&Exchange::Attach),
            spoke_session: SpokeSession::new(0, Some(config())),
            store_failures: 0.0,
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
        w.attach();
        w
    }

    /// A new control connection: both sessions start again, and the hub
    /// sends what the spoke has not answered (as `ensure_schedule`).
    fn attach(&mut self) {
        self.to_spoke.clear();
        self.to_hub.clear();
        self.spoke_session = SpokeSession::new(self.now, Some(config()));
        self.hub_session = HubSession::new(&Exchange::Attach);
        self.spoke_carries_out();
        let q = std::mem::take(&mut self.to_hub);
        for m in q {
            self.hub_handles(m);
        }
    }

    /// The hub's answer to an attach.
    fn hub_attached(&mut self) {
        let mut pending: Vec<HubMessage> = self
            .hub
            .deliveries(&self.policy)
            .unwrap()
            .into_iter()
            .map(HubMessage::KeyDistribution)
            .collect();
        if let Some(k) = self.hub.notification(&self.policy) {
            pending.push(HubMessage::UpdateNotification { epoch: k });
        }
        self.hub_session.attached(Some((config(), pending)));
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
        let epochs: Vec<KeyEpoch> = self.disk.held.iter().map(|h| h.epoch.clone()).collect();
        let holding = Holding {
            epochs: &epochs,
            current: self.disk.current,
        };
        match self.spoke_session.handle_message(self.now, msg, holding) {
            Ok(()) => self.spoke_carries_out(),
            // A box sealed under an epoch the spoke no longer holds: the
            // session ends, and the spoke attaches again.
            Err(SessionEnd::Delivery { .. }) => self.attach(),
            Err(e) => panic!("the spoke session ended: {e}"),
        }
    }

    /// The spoke daemon's part: what its session asks, against its disk
    /// (which fails now and then) and its key state.
    fn spoke_carries_out(&mut self) {
        while let Some(action) = self.spoke_session.poll_action() {
            match action {
                SessionAction::Send(m) => self.to_hub.push_back(m),
                SessionAction::StoreEpoch(held) => {
                    let stored = !self.rng.gen_bool(self.store_failures);
                    if stored {
                        self.disk.held.push(held.clone());
                    }
                    self.spoke_session
                        .epoch_stored(self.now, held.epoch.number, stored);
                }
                SessionAction::Plane(PlaneCommand::Hold(held)) => self.spoke.hold(held),
                SessionAction::Plane(PlaneCommand::SwitchTo(k)) => {
                    self.spoke.request_switch(k);
                }
                SessionAction::SaveConfig { .. } => self.spoke_session.config_saved(true),
                _ => {}
            }
        }
    }

    fn hub_handles(&mut self, msg: ToHub) {
        if self.hub_session.handle(msg).is_err() {
            // A message of another connection (a duplicated attach on a
            // lossy channel): the connection drops and the spoke attaches again.
            self.attach();
            return;
        }
        self.hub_carries_out();
    }

    /// The hub daemon's part: what its session asks, against the schedule.
    fn hub_carries_out(&mut self) {
        while let Some(action) = self.hub_session.poll_action() {
            match action {
                HubAction::Send(m) => self.to_spoke.push_back(m),
                HubAction::Attach => self.hub_attached(),
                HubAction::Receipt(k) => {
                    self.hub.on_receipt(k);
                    if let Some(n) = self.hub.notification(&self.policy) {
                        self.hub_session
                            .send(HubMessage::UpdateNotification { epoch: n });
                    }
                }
                _ => {}
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
            self.spoke_session
                .handle_report(self.now, PlaneReport::Confirmed(k));
            self.spoke_carries_out();
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
        if self.hub_session.is_attached() {
            for d in plan.deliveries {
                self.hub_session.send(HubMessage::KeyDistribution(d));
            }
            if let Some(k) = plan.notify {
                self.hub_session
                    .send(HubMessage::UpdateNotification { epoch: k });
            }
            self.hub_carries_out();
        }
        // Keepalives and update reports sent again.
        if self.spoke_session.poll_timeout() <= self.now {
            if self.spoke_session.handle_timeout(self.now).is_err() {
                self.attach();
            }
            self.spoke_carries_out();
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
            self.attach();
        }
        if self.loss > 0.0 && self.rng.gen_bool(0.03) {
            // Spoke kill -9.
            self.spoke = SpokeKeys::new(self.disk.held.clone(), self.disk.current, self.now);
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
    w.store_failures = 0.1;
    w.run(10_000);
    // Then a clean network and disk: both sides must come to agree.
    w.loss = 0.0;
    w.store_failures = 0.0;
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
