//! Rotation policy and the hub's per-link key schedule (patent 0017–0019).
//!
//! The hub is the only source of epochs. For each link it keeps every epoch
//! a peer may still use and walks each new one through the key commands:
//! issue → distribution (hub → spoke, sealed under k−1 or the channel) →
//! receipt report (spoke → hub; now k takes new handshakes) → update
//! notification (hub → spoke: switch now) → confirmation (a data packet
//! decrypted under k) → after a grace period, the older epochs are erased.
//! Everything is a plain function of its inputs; time is Unix seconds.

pub use crate::erasure::MAX_ENDED_HELD;

/// Seconds between re-sends of key distributions and update notifications
/// the spoke has not answered yet (a control queue that was full, a
/// message lost with a connection that is not yet seen as dead).
pub const RESEND_SECS: u64 = 5;
use std::collections::BTreeMap;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::control::{DeliveryBody, KeyDelivery, Lifetime};
use crate::erasure::Erasure;
use crate::keys::KeyEpoch;
use crate::seal::{self, SealError};

/// How a new key travels (patent figs. 7 and 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    /// Key k sealed under key k−1 inside the control channel.
    Crossed,
    /// Key k protected by the control channel alone.
    Parallel,
}

/// When epochs end and how new ones travel. Hub-wide default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationPolicy {
    /// End an epoch after this many seconds.
    pub interval_secs: Option<u64>,
    /// End an epoch after this many packets on the link (both directions).
    pub max_packets: Option<u64>,
    /// End an epoch after this many bytes on the link (both directions).
    pub max_bytes: Option<u64>,
    /// End an epoch after this many WireGuard handshakes on the link.
    pub max_handshakes: Option<u64>,
    /// How new keys travel.
    pub delivery: Delivery,
    /// Seconds an old epoch stays after its successor is confirmed, for
    /// packets still in flight.
    pub grace_secs: u64,
    /// Epochs handed out ahead of need (patent fig. 3); with a batch the
    /// spoke switches by itself when an epoch ends, even with the hub away.
    pub batch: u32,
    /// Stop a spoke's traffic when its epoch is over and it holds no next one.
    pub hard_limit: bool,
}

impl Default for RotationPolicy {
    fn default() -> Self {
        Self {
            interval_secs: Some(15 * 60),
            max_packets: None,
            max_bytes: None,
            max_handshakes: None,
            delivery: Delivery::Crossed,
            grace_secs: 10,
            batch: 0,
            hard_limit: false,
        }
    }
}

impl RotationPolicy {
    /// The lifetime every new epoch is delivered with.
    pub fn lifetime(&self) -> Lifetime {
        Lifetime {
            secs: self.interval_secs,
            packets: self.max_packets,
            bytes: self.max_bytes,
            self_switch: self.batch > 0,
            hard: self.hard_limit,
            slack_secs: self.grace_secs.max(5),
        }
    }
}

/// Why an epoch ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Trigger {
    /// The interval passed.
    Interval,
    /// The packet budget is used up.
    Packets,
    /// The byte budget is used up.
    Bytes,
    /// The handshake budget is used up.
    Handshakes,
    /// An admin asked.
    Admin,
    /// A named event (stored by older versions; new ones use the variants
    /// below).
    Event(String),
    /// A user logged out of the spoke.
    Logout,
    /// The spoke's data-plane address changed (it roamed).
    AddressChanged,
    /// The spoke, or a user logged in on it, left this group.
    LeftGroup(String),
    /// The spoke asked for a new key (its update request, with its reason).
    SpokeRequest(String),
}

impl Trigger {
    /// Short name for logs and status.
    pub fn name(&self) -> String {
        match self {
            Trigger::Interval => "interval".into(),
            Trigger::Packets => "packets".into(),
            Trigger::Bytes => "bytes".into(),
            Trigger::Handshakes => "handshakes".into(),
            Trigger::Admin => "admin".into(),
            Trigger::Event(e) => format!("event:{e}"),
            Trigger::Logout => "logout".into(),
            Trigger::AddressChanged => "address-changed".into(),
            Trigger::LeftGroup(g) => format!("left-group:{g}"),
            Trigger::SpokeRequest(r) => format!("spoke-request:{r}"),
        }
    }
}

/// A link's traffic counters (cumulative, or since an epoch started).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Packets, both directions.
    pub packets: u64,
    /// Bytes, both directions.
    pub bytes: u64,
    /// WireGuard handshakes.
    pub handshakes: u64,
}

impl Usage {
    /// A usage of `packets` and `bytes` and no handshakes.
    pub fn traffic(packets: u64, bytes: u64) -> Self {
        Self {
            packets,
            bytes,
            handshakes: 0,
        }
    }

    /// The use since `base` (an earlier reading of the same counters).
    pub fn since(self, base: Usage) -> Usage {
        Usage {
            packets: self.packets.saturating_sub(base.packets),
            bytes: self.bytes.saturating_sub(base.bytes),
            handshakes: self.handshakes.saturating_sub(base.handshakes),
        }
    }
}

/// The durable part of a link's schedule (the epochs are stored apart).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleMeta {
    /// Highest epoch the spoke reported stored.
    pub acked: u64,
    /// Highest epoch confirmed by a decrypted data packet.
    pub confirmed: u64,
    /// When the confirmed epoch became current (Unix seconds).
    pub current_since: u64,
    /// Rotations done on this link.
    pub rotations: u64,
    /// The epoch the hub last told the spoke to switch to (0: none).
    pub notified: u64,
}

/// One link's epochs and where they stand.
#[derive(Clone, Debug)]
pub struct LinkSchedule {
    link: u32,
    epochs: BTreeMap<u64, KeyEpoch>,
    meta: ScheduleMeta,
    base: Usage,
    pending: Option<Trigger>,
    /// When ended epochs go.
    erasure: Erasure,
    /// When distributions or a notification were last handed out by
    /// [`tick`](Self::tick) (memory only: an attach sends them anyway).
    last_sent: Option<u64>,
}

/// What one rotation tick asks of the hub for a link whose control channel
/// is up, in the order it must be done: store `issued` and the meta
/// (flushed) when [`stores`](Self::stores) says so, then send
/// `deliveries`, then `notify`.
#[derive(Debug, Default)]
pub struct TickPlan {
    /// New epochs, to store before anything is sent.
    pub issued: Vec<KeyEpoch>,
    /// Why the current epoch ends (hub-driven mode; `None` for a batch refill).
    pub trigger: Option<Trigger>,
    /// Key distributions to send: the new epochs', or again those the
    /// spoke has not acknowledged.
    pub deliveries: Vec<KeyDelivery>,
    /// An update notification to send: switch to this epoch.
    pub notify: Option<u64>,
    /// Why the spoke is told to switch now (an admin or an event in batch
    /// mode), when this tick decided it.
    pub switch: Option<Trigger>,
}

impl TickPlan {
    /// Whether the schedule changed in a way the store must keep first.
    pub fn stores(&self) -> bool {
        !self.issued.is_empty() || self.switch.is_some()
    }
}

impl LinkSchedule {
    /// A schedule restored from stored epochs and meta (or a new link's first epoch).
    pub fn restore(link: u32, epochs: Vec<KeyEpoch>, meta: ScheduleMeta) -> Self {
        Self {
            link,
            epochs: epochs.into_iter().map(|e| (e.number, e)).collect(),
            base: Usage::default(),
            pending: None,
            // Epochs older than the confirmed one (left by a restart) go at the next tick.
            erasure: Erasure::after_restart(meta.confirmed, 0),
            meta,
            last_sent: None,
        }
    }

    /// One rotation tick of a link whose control channel is up (erasure,
    /// [`take_erasable`](Self::take_erasable), comes first and on its own):
    /// refill the batch or issue the epoch that is due, decide a switch
    /// asked for in batch mode, and hand out distributions and the
    /// notification: new ones, or again every [`RESEND_SECS`] while the
    /// spoke has not answered. `total` is the link's cumulative use.
    pub fn tick<R: RngCore + CryptoRng>(
        &mut self,
        policy: &RotationPolicy,
        now: u64,
        total: Usage,
        rng: &mut R,
    ) -> Result<TickPlan, SealError> {
        let mut plan = TickPlan::default();
        if policy.batch > 0 {
            plan.issued = self.fill_batch(policy, now, rng);
            if let Some((k, trigger)) = self.take_switch() {
                plan.notify = Some(k);
                plan.switch = Some(trigger);
            }
        } else if let Some(trigger) = self.due(policy, now, total) {
            plan.issued.push(self.issue(now, rng));
            plan.trigger = Some(trigger);
        }
        let unanswered = self.latest() > self.meta.acked || self.notification(policy).is_some();
        let resend = unanswered && self.last_sent.is_none_or(|t| now >= t + RESEND_SECS);
        if !plan.issued.is_empty() || resend {
            plan.deliveries = self.deliveries(policy)?;
        }
        if resend && plan.notify.is_none() {
            plan.notify = self.notification(policy);
        }
        if !plan.deliveries.is_empty() || plan.notify.is_some() {
            self.last_sent = Some(now);
        }
        Ok(plan)
    }

    /// The durable meta to store after a change.
    pub fn meta(&self) -> &ScheduleMeta {
        &self.meta
    }

    /// Every epoch still held, oldest first.
    pub fn epochs(&self) -> Vec<KeyEpoch> {
        self.epochs.values().cloned().collect()
    }

    /// The newest epoch issued.
    pub fn latest(&self) -> u64 {
        self.epochs.keys().next_back().copied().unwrap_or(0)
    }

    /// The newest epoch the spoke holds: it takes new handshakes.
    pub fn handshake_epoch(&self) -> u64 {
        self.meta.acked.min(self.latest())
    }

    /// The epochs a handshake initiation may be under: from the one carrying
    /// traffic to the newest the spoke holds. WireGuard's responder cannot
    /// tell the preshared key from an initiation, so the hub answers under
    /// each of them and the spoke keeps the answer that opens.
    pub fn handshake_epochs(&self) -> Vec<u64> {
        let low = self.meta.confirmed.min(self.handshake_epoch());
        self.epochs
            .range(low..=self.handshake_epoch())
            .map(|(k, _)| *k)
            .collect()
    }

    /// True while an issued epoch has not completed its walk.
    pub fn in_flight(&self) -> bool {
        self.latest() > self.meta.acked || self.meta.acked > self.meta.confirmed
    }

    /// Issues epochs until `policy.batch` are held beyond the current one.
    /// The caller stores them (flushed) before sending them.
    pub fn fill_batch<R: RngCore + CryptoRng>(
        &mut self,
        policy: &RotationPolicy,
        now: u64,
        rng: &mut R,
    ) -> Vec<KeyEpoch> {
        let mut out = Vec::new();
        if self.epochs.is_empty() {
            return out;
        }
        let target = self.meta.confirmed.max(1) + u64::from(policy.batch);
        while self.latest() < target {
            let epoch = KeyEpoch::issue(self.latest() + 1, now, rng);
            self.epochs.insert(epoch.number, epoch.clone());
            out.push(epoch);
        }
        out
    }

    /// A pending admin or event trigger in batch mode: the next held epoch
    /// the spoke should switch to now, if it holds one.
    pub fn take_switch(&mut self) -> Option<(u64, Trigger)> {
        let next = self.meta.confirmed + 1;
        if self.meta.acked < next || self.meta.notified >= next {
            return None;
        }
        let trigger = self.pending.take()?;
        self.meta.notified = next;
        Some((next, trigger))
    }

    /// The rotation asked for and not begun yet, if any.
    pub fn requested(&self) -> Option<&Trigger> {
        self.pending.as_ref()
    }

    /// Asks for a rotation at the next opportunity (a request already
    /// waiting keeps its trigger).
    pub fn request(&mut self, trigger: Trigger) {
        if self.pending.is_none() {
            self.pending = Some(trigger);
        }
    }

    /// Why the current epoch should end now, if it should. `packets` and
    /// `bytes` are the link's cumulative counters.
    pub fn due(&self, policy: &RotationPolicy, now: u64, total: Usage) -> Option<Trigger> {
        if policy.batch > 0 || self.in_flight() || self.epochs.is_empty() {
            return None;
        }
        trigger_due(
            policy,
            self.pending.as_ref(),
            self.meta.current_since,
            total.since(self.base),
            now,
        )
    }

    /// Why a stock WireGuard peer's epoch should end now: an admin asked,
    /// or it is older than `interval_secs`. Such a peer cannot follow a
    /// rotation by itself, so budgets and named events never end its epoch.
    pub fn due_static(&self, interval_secs: Option<u64>, now: u64) -> Option<Trigger> {
        if self.epochs.is_empty() {
            return None;
        }
        if self.pending == Some(Trigger::Admin) {
            return Some(Trigger::Admin);
        }
        interval_secs
            .is_some_and(|i| now.saturating_sub(self.meta.current_since) >= i)
            .then_some(Trigger::Interval)
    }

    /// Issues a stock WireGuard peer's next epoch (its first too): the peer
    /// cannot take part in the key commands, so the epoch counts as
    /// received and carrying traffic at once, and every older one is
    /// erased at the next [`take_erasable`](Self::take_erasable): the old
    /// configuration stops working, the new one works from now on.
    pub fn replace<R: RngCore + CryptoRng>(
        &mut self,
        now: u64,
        total: Usage,
        rng: &mut R,
    ) -> KeyEpoch {
        let epoch = self.issue(now, rng);
        self.on_receipt(epoch.number);
        self.on_confirmed(epoch.number, now, total, 0);
        epoch
    }

    /// Issues the next epoch. The caller stores it (flushed) before sending it.
    pub fn issue<R: RngCore + CryptoRng>(&mut self, now: u64, rng: &mut R) -> KeyEpoch {
        let epoch = KeyEpoch::issue(self.latest() + 1, now, rng);
        self.epochs.insert(epoch.number, epoch.clone());
        self.pending = None;
        epoch
    }

    /// The distribution messages for every epoch the spoke has not reported
    /// yet, oldest first (sent on issue and re-sent on every attach). Each is
    /// sealed under its predecessor in crossed mode.
    pub fn deliveries(&self, policy: &RotationPolicy) -> Result<Vec<KeyDelivery>, SealError> {
        let mut out = Vec::new();
        for (number, epoch) in self.epochs.range(self.meta.acked + 1..) {
            let previous = number.checked_sub(1).and_then(|p| self.epochs.get(&p));
            let body = match (policy.delivery, previous) {
                (Delivery::Crossed, Some(prev)) => DeliveryBody::Crossed {
                    under: prev.number,
                    sealed: seal::seal(self.link, prev, epoch)?,
                },
                _ => DeliveryBody::Channel(epoch.clone()),
            };
            out.push(KeyDelivery {
                epoch: *number,
                body,
                lifetime: policy.lifetime(),
            });
        }
        Ok(out)
    }

    /// The update notification to (re-)send: in hub-driven mode the newest
    /// epoch the spoke holds once it is ahead of the one carrying traffic.
    pub fn notification(&mut self, policy: &RotationPolicy) -> Option<u64> {
        if policy.batch == 0 && self.meta.acked > self.meta.confirmed {
            self.meta.notified = self.meta.acked;
        }
        (self.meta.notified > self.meta.confirmed).then_some(self.meta.notified)
    }

    /// Receipt report for epoch `k`; true if it moved the schedule.
    pub fn on_receipt(&mut self, k: u64) -> bool {
        if k > self.meta.acked && self.epochs.contains_key(&k) {
            self.meta.acked = k;
            true
        } else {
            false
        }
    }

    /// A data packet decrypted under epoch `k`; true if it moved the schedule.
    /// Older epochs become erasable `grace` seconds later.
    pub fn on_confirmed(&mut self, k: u64, now: u64, total: Usage, grace: u64) -> bool {
        if k <= self.meta.confirmed || !self.epochs.contains_key(&k) {
            return false;
        }
        let rotated = self.meta.confirmed != 0;
        self.meta.confirmed = k;
        self.meta.acked = self.meta.acked.max(k);
        self.meta.current_since = now;
        if rotated {
            self.meta.rotations += 1;
        }
        self.base = total;
        self.erasure.schedule(k, now.saturating_add(grace));
        true
    }

    /// Removes and returns the epochs whose grace period has passed.
    pub fn take_erasable(&mut self, now: u64) -> Vec<u64> {
        let below = self.erasure.due(now, self.meta.confirmed);
        if self.epochs.range(..below).next().is_none() {
            return Vec::new();
        }
        let gone: Vec<u64> = self.epochs.range(..below).map(|(k, _)| *k).collect();
        for k in &gone {
            self.epochs.remove(k);
        }
        gone
    }

    /// Seconds until the interval trigger fires, for status.
    pub fn next_interval_in(&self, policy: &RotationPolicy, now: u64) -> Option<u64> {
        policy
            .interval_secs
            .map(|i| (self.meta.current_since + i).saturating_sub(now))
    }

    /// Use of the link since the current epoch started.
    pub fn usage(&self, total: Usage) -> Usage {
        total.since(self.base)
    }
}

/// Why an epoch that has carried traffic since `since` (Unix seconds)
/// should end at `now`, by `policy`'s interval and budgets, `used` being
/// its use since then; a rotation asked for (`pending`) comes first. The
/// rule of every key scope (links and pairs).
pub fn trigger_due(
    policy: &RotationPolicy,
    pending: Option<&Trigger>,
    since: u64,
    used: Usage,
    now: u64,
) -> Option<Trigger> {
    if let Some(t) = pending {
        return Some(t.clone());
    }
    if policy
        .interval_secs
        .is_some_and(|i| now.saturating_sub(since) >= i)
    {
        return Some(Trigger::Interval);
    }
    if policy.max_packets.is_some_and(|m| used.packets >= m) {
        return Some(Trigger::Packets);
    }
    if policy.max_bytes.is_some_and(|m| used.bytes >= m) {
        return Some(Trigger::Bytes);
    }
    if policy.max_handshakes.is_some_and(|m| used.handshakes >= m) {
        return Some(Trigger::Handshakes);
    }
    None
}

/// What a spoke does with a key distribution.
#[derive(Debug)]
pub enum Received {
    /// It holds that epoch already, or runs a newer one: the hub lost its
    /// receipt report, so it reports again.
    Again,
    /// A new epoch: store it (flushed) and hand it to the data plane,
    /// then report its receipt, never before.
    New(KeyEpoch),
}

/// The spoke's rule for a key distribution on link `link`, given the
/// epochs it holds and the one carrying its traffic. A box it cannot open
/// (sealed under an epoch it no longer holds) is an error: the hub sends
/// it again.
pub fn receive_delivery(
    link: u32,
    delivery: &KeyDelivery,
    held: &[KeyEpoch],
    current: u64,
) -> Result<Received, SealError> {
    if held.iter().any(|e| e.number == delivery.epoch) || current >= delivery.epoch {
        return Ok(Received::Again);
    }
    open_delivery(link, delivery, held).map(Received::New)
}

/// The spoke's side: opens a delivery with the epochs it holds.
pub fn open_delivery(
    link: u32,
    delivery: &KeyDelivery,
    held: &[KeyEpoch],
) -> Result<KeyEpoch, SealError> {
    match &delivery.body {
        DeliveryBody::Channel(e) if e.number == delivery.epoch => Ok(e.clone()),
        DeliveryBody::Channel(_) => Err(SealError::Mismatch(delivery.epoch)),
        DeliveryBody::Crossed { under, sealed } => {
            let prev =
                held.iter()
                    .find(|e| e.number == *under)
                    .ok_or(SealError::NotPredecessor {
                        sealed: delivery.epoch,
                        under: *under,
                    })?;
            seal::open(link, prev, delivery.epoch, sealed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn fresh(rng: &mut StdRng) -> LinkSchedule {
        let mut s = LinkSchedule::restore(3, vec![], ScheduleMeta::default());
        s.issue(100, rng);
        assert!(s.on_receipt(1));
        assert!(s.on_confirmed(1, 100, Usage::default(), 10));
        s
    }

    #[test]
    fn full_walk_of_one_rotation() {
        let mut rng = StdRng::seed_from_u64(31);
        let policy = RotationPolicy {
            interval_secs: Some(60),
            ..RotationPolicy::default()
        };
        let mut s = fresh(&mut rng);
        assert_eq!(s.due(&policy, 159, Usage::default()), None);
        assert_eq!(
            s.due(&policy, 160, Usage::default()),
            Some(Trigger::Interval)
        );
        let e2 = s.issue(160, &mut rng);
        assert_eq!(e2.number, 2);
        assert!(s.in_flight());
        assert_eq!(
            s.due(&policy, 500, Usage::default()),
            None,
            "no new epoch while one is in flight"
        );
        assert_eq!(s.handshake_epoch(), 1, "spoke does not hold 2 yet");
        // Crossed delivery opens only with epoch 1.
        let d = s.deliveries(&policy).unwrap().pop().unwrap();
        let held = s.epochs()[..1].to_vec();
        assert_eq!(open_delivery(3, &d, &held).unwrap(), e2);
        assert!(open_delivery(3, &d, &[]).is_err());
        assert!(open_delivery(4, &d, &held).is_err());
        // Receipt: 2 takes handshakes; duplicates change nothing.
        assert!(s.on_receipt(2));
        assert!(!s.on_receipt(2));
        assert!(!s.on_receipt(1));
        assert_eq!(s.handshake_epoch(), 2);
        assert!(s.deliveries(&policy).unwrap().is_empty());
        // Confirmation, then erasure after the grace period.
        assert!(s.on_confirmed(2, 170, Usage::default(), 10));
        assert!(!s.on_confirmed(2, 171, Usage::default(), 10));
        assert_eq!(s.take_erasable(179), Vec::<u64>::new());
        assert_eq!(s.take_erasable(180), vec![1]);
        assert_eq!(s.epochs().len(), 1);
        assert_eq!(s.meta().rotations, 1);
        assert!(!s.in_flight());
    }

    #[test]
    fn rotations_faster_than_the_grace_still_erase() {
        let mut rng = StdRng::seed_from_u64(33);
        let mut s = fresh(&mut rng);
        // A rotation every second with a 10 s grace period, for 30 s.
        for k in 2..=31u64 {
            let now = 100 + k;
            s.request(Trigger::Admin);
            let e = s.issue(now, &mut rng);
            assert_eq!(e.number, k);
            assert!(s.on_receipt(k));
            assert!(s.on_confirmed(k, now, Usage::default(), 10));
            s.take_erasable(now);
        }
        // Epochs end within the grace, and no more than MAX_ENDED_HELD ended
        // ones are held: never two that share a WireGuard index.
        let held = s.epochs();
        assert_eq!(held.len() as u64, MAX_ENDED_HELD + 1, "held {held:?}");
        assert_eq!(held.last().map(|e| e.number), Some(31));
        // The last erasure comes too, once its grace has passed.
        s.take_erasable(200);
        assert_eq!(s.epochs().len(), 1);
    }

    #[test]
    fn lost_receipt_means_redelivery() {
        let mut rng = StdRng::seed_from_u64(32);
        let policy = RotationPolicy::default();
        let mut s = fresh(&mut rng);
        s.request(Trigger::Admin);
        assert_eq!(s.due(&policy, 101, Usage::default()), Some(Trigger::Admin));
        s.issue(101, &mut rng);
        let first = s.deliveries(&policy).unwrap().pop().unwrap();
        // The receipt never came: the same box again, byte for byte.
        let again = s.deliveries(&policy).unwrap().pop().unwrap();
        assert_eq!(first, again);
        // A restart: rebuild from stored epochs and meta, still the same.
        let mut restored = LinkSchedule::restore(3, s.epochs(), s.meta().clone());
        assert!(
            restored.take_erasable(0).is_empty(),
            "nothing older than the confirmed epoch"
        );
        assert_eq!(restored.deliveries(&policy).unwrap().pop().unwrap(), first);
        assert_eq!(restored.handshake_epoch(), 1);
    }

    #[test]
    fn packet_and_byte_budgets() {
        let mut rng = StdRng::seed_from_u64(33);
        let policy = RotationPolicy {
            interval_secs: None,
            max_packets: Some(100),
            max_bytes: Some(10_000),
            ..RotationPolicy::default()
        };
        let mut s = fresh(&mut rng);
        assert_eq!(s.due(&policy, 1000, Usage::traffic(99, 9_999)), None);
        assert_eq!(
            s.due(&policy, 1000, Usage::traffic(100, 0)),
            Some(Trigger::Packets)
        );
        assert_eq!(
            s.due(&policy, 1000, Usage::traffic(0, 10_000)),
            Some(Trigger::Bytes)
        );
        s.issue(1000, &mut rng);
        s.on_receipt(2);
        // Budgets count from the confirmation of the new epoch.
        s.on_confirmed(2, 1001, Usage::traffic(150, 20_000), 10);
        assert_eq!(s.due(&policy, 1002, Usage::traffic(200, 20_000)), None);
        assert_eq!(
            s.usage(Usage::traffic(200, 25_000)),
            Usage::traffic(50, 5_000)
        );
        assert_eq!(
            s.due(&policy, 1002, Usage::traffic(250, 20_000)),
            Some(Trigger::Packets)
        );
    }

    #[test]
    fn handshake_budget() {
        let mut rng = StdRng::seed_from_u64(39);
        let policy = RotationPolicy {
            interval_secs: None,
            max_handshakes: Some(3),
            ..RotationPolicy::default()
        };
        let s = fresh(&mut rng);
        let hs = |n| Usage {
            handshakes: n,
            ..Usage::default()
        };
        assert_eq!(s.due(&policy, 5, hs(2)), None);
        assert_eq!(s.due(&policy, 5, hs(3)), Some(Trigger::Handshakes));
    }

    #[test]
    fn parallel_delivery_uses_the_channel() {
        let mut rng = StdRng::seed_from_u64(34);
        let policy = RotationPolicy {
            delivery: Delivery::Parallel,
            ..RotationPolicy::default()
        };
        let mut s = fresh(&mut rng);
        let e2 = s.issue(1, &mut rng);
        let d = s.deliveries(&policy).unwrap().pop().unwrap();
        assert_eq!(d.body, DeliveryBody::Channel(e2.clone()));
        assert_eq!(open_delivery(3, &d, &[]).unwrap(), e2);
    }

    #[test]
    fn batches_are_issued_ahead_and_chained() {
        let mut rng = StdRng::seed_from_u64(36);
        let policy = RotationPolicy {
            batch: 3,
            interval_secs: Some(5),
            ..RotationPolicy::default()
        };
        let mut s = fresh(&mut rng);
        assert_eq!(
            s.due(&policy, 10_000, Usage::default()),
            None,
            "the spoke triggers in batch mode"
        );
        let issued = s.fill_batch(&policy, 101, &mut rng);
        assert_eq!(
            issued.iter().map(|e| e.number).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert!(s.fill_batch(&policy, 101, &mut rng).is_empty());
        // Each delivery opens with the one before: the spoke can walk the chain.
        let ds = s.deliveries(&policy).unwrap();
        assert_eq!(ds.len(), 3);
        assert!(ds.iter().all(|d| d.lifetime.self_switch));
        let mut held = s.epochs()[..1].to_vec();
        for d in &ds {
            held.push(open_delivery(3, d, &held).unwrap());
        }
        assert_eq!(held, s.epochs());
        for k in 2..=4 {
            assert!(s.on_receipt(k));
        }
        assert_eq!(s.handshake_epochs(), vec![1, 2, 3, 4]);
        // The spoke switched to 2 by itself: the batch is refilled to 5.
        assert!(s.on_confirmed(2, 110, Usage::default(), 1));
        assert_eq!(s.handshake_epochs(), vec![2, 3, 4]);
        let more = s.fill_batch(&policy, 110, &mut rng);
        assert_eq!(more.iter().map(|e| e.number).collect::<Vec<_>>(), vec![5]);
        // An admin's rotation in batch mode is a notification to switch to 3.
        s.request(Trigger::Admin);
        assert_eq!(s.take_switch(), Some((3, Trigger::Admin)));
        assert_eq!(s.take_switch(), None);
        assert_eq!(s.notification(&policy), Some(3));
    }

    #[test]
    fn hub_driven_notification_is_resent_until_confirmed() {
        let mut rng = StdRng::seed_from_u64(37);
        let policy = RotationPolicy::default();
        let mut s = fresh(&mut rng);
        assert_eq!(s.notification(&policy), None);
        s.issue(101, &mut rng);
        assert_eq!(s.notification(&policy), None, "not before the receipt");
        s.on_receipt(2);
        assert_eq!(s.handshake_epochs(), vec![1, 2]);
        assert_eq!(s.notification(&policy), Some(2));
        assert_eq!(s.notification(&policy), Some(2));
        s.on_confirmed(2, 102, Usage::default(), 1);
        assert_eq!(s.notification(&policy), None);
        assert_eq!(s.handshake_epochs(), vec![2]);
    }

    #[test]
    fn a_restart_erases_what_is_older_than_the_confirmed_epoch() {
        let mut rng = StdRng::seed_from_u64(38);
        let mut s = fresh(&mut rng);
        s.issue(101, &mut rng);
        s.on_receipt(2);
        s.on_confirmed(2, 102, Usage::default(), 60);
        // Killed before the grace period ended: epoch 1 is still stored.
        let mut restored = LinkSchedule::restore(3, s.epochs(), s.meta().clone());
        assert_eq!(restored.take_erasable(0), vec![1]);
        assert_eq!(restored.handshake_epochs(), vec![2]);
    }

    #[test]
    fn a_wireguard_peer_epoch_is_replaced_whole() {
        let mut rng = StdRng::seed_from_u64(40);
        let mut s = LinkSchedule::restore(7, vec![], ScheduleMeta::default());
        assert_eq!(s.due_static(Some(100), 1_000), None, "no epoch yet");
        let e1 = s.replace(1_000, Usage::default(), &mut rng);
        assert_eq!((e1.number, s.handshake_epochs()), (1, vec![1]));
        assert!(!s.in_flight());
        assert_eq!(s.meta().rotations, 0);
        // Budgets and events do not end it; the interval and an admin do.
        s.request(Trigger::Event("group".into()));
        assert_eq!(s.due_static(Some(100), 1_099), None);
        assert_eq!(s.due_static(None, u64::MAX), None);
        assert_eq!(s.due_static(Some(100), 1_100), Some(Trigger::Interval));
        let mut asked = LinkSchedule::restore(7, s.epochs(), s.meta().clone());
        asked.request(Trigger::Admin);
        assert_eq!(asked.due_static(None, 1_001), Some(Trigger::Admin));
        // The next one takes over at once and the old one goes at once.
        let e2 = asked.replace(1_001, Usage::default(), &mut rng);
        assert_eq!(e2.number, 2);
        assert_eq!(asked.requested(), None);
        assert_eq!(asked.handshake_epochs(), vec![2]);
        assert_eq!(asked.take_erasable(1_001), vec![1]);
        assert_eq!(asked.meta().rotations, 1);
        assert_eq!(asked.due_static(Some(100), 1_050), None, "a fresh interval");
    }

    /// The tick decides in one place: issue what is due, hand out its
    /// distribution, and hand it out again every RESEND_SECS until the
    /// spoke reports it; then the notification the same way until the
    /// spoke's traffic confirms it.
    #[test]
    fn a_tick_issues_then_resends_until_answered() {
        let mut rng = StdRng::seed_from_u64(41);
        let policy = RotationPolicy {
            interval_secs: Some(60),
            ..RotationPolicy::default()
        };
        let mut s = fresh(&mut rng);
        let quiet = s.tick(&policy, 120, Usage::default(), &mut rng).unwrap();
        assert!(quiet.issued.is_empty() && quiet.deliveries.is_empty() && !quiet.stores());
        let plan = s.tick(&policy, 160, Usage::default(), &mut rng).unwrap();
        assert_eq!(plan.issued.len(), 1);
        assert_eq!(plan.trigger, Some(Trigger::Interval));
        assert_eq!(plan.deliveries.len(), 1);
        assert!(plan.stores());
        assert_eq!(plan.notify, None, "not before the receipt");
        // Unanswered: nothing new for RESEND_SECS, then the same box again.
        let soon = s.tick(&policy, 161, Usage::default(), &mut rng).unwrap();
        assert!(soon.deliveries.is_empty() && soon.issued.is_empty());
        let again = s
            .tick(&policy, 160 + RESEND_SECS, Usage::default(), &mut rng)
            .unwrap();
        assert_eq!(again.deliveries, plan.deliveries);
        assert!(!again.stores(), "a re-send changes nothing to store");
        // Reported: the notification is re-sent until traffic confirms it.
        s.on_receipt(2);
        let later = 160 + 2 * RESEND_SECS;
        let notify = s.tick(&policy, later, Usage::default(), &mut rng).unwrap();
        assert!(notify.deliveries.is_empty());
        assert_eq!(notify.notify, Some(2));
        s.on_confirmed(2, later + 1, Usage::default(), 10);
        let done = s
            .tick(&policy, later + 2 * RESEND_SECS, Usage::default(), &mut rng)
            .unwrap();
        assert!(done.deliveries.is_empty() && done.notify.is_none());
    }

    /// In batch mode a tick refills the batch and turns an admin's request
    /// into a switch (to store, then notify).
    #[test]
    fn a_batch_tick_refills_and_switches() {
        let mut rng = StdRng::seed_from_u64(42);
        let policy = RotationPolicy {
            batch: 2,
            ..RotationPolicy::default()
        };
        let mut s = fresh(&mut rng);
        let plan = s.tick(&policy, 101, Usage::default(), &mut rng).unwrap();
        assert_eq!(
            plan.issued.iter().map(|e| e.number).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert_eq!(plan.deliveries.len(), 2);
        s.on_receipt(3);
        s.request(Trigger::Admin);
        let plan = s.tick(&policy, 102, Usage::default(), &mut rng).unwrap();
        assert_eq!(
            (plan.notify, plan.switch.clone()),
            (Some(2), Some(Trigger::Admin))
        );
        assert!(plan.stores() && plan.issued.is_empty());
    }

    /// The spoke's rule: a delivery of an epoch it holds or has passed is
    /// reported again; a new one is opened; one it cannot open is an error.
    #[test]
    fn a_spoke_receives_reports_again_or_fails() {
        let mut rng = StdRng::seed_from_u64(43);
        let policy = RotationPolicy::default();
        let mut s = fresh(&mut rng);
        let e2 = s.issue(101, &mut rng);
        let d = s.deliveries(&policy).unwrap().pop().unwrap();
        let held = s.epochs()[..1].to_vec();
        assert!(matches!(receive_delivery(3, &d, &held, 1), Ok(Received::New(e)) if e == e2));
        assert!(matches!(
            receive_delivery(3, &d, &s.epochs(), 1),
            Ok(Received::Again)
        ));
        assert!(matches!(
            receive_delivery(3, &d, &[], 2),
            Ok(Received::Again)
        ));
        assert!(receive_delivery(3, &d, &[], 1).is_err());
    }

    #[test]
    fn stale_or_unknown_reports_are_ignored() {
        let mut rng = StdRng::seed_from_u64(35);
        let mut s = fresh(&mut rng);
        assert!(!s.on_receipt(9));
        assert!(!s.on_confirmed(9, 1, Usage::default(), 1));
        assert_eq!(s.take_erasable(u64::MAX), Vec::<u64>::new());
    }
}
