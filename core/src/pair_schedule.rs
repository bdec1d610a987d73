//! The hub's schedule of one pair's key epochs (direct mode, claim 10):
//! the same walk as a link's (issue → distribution → receipt → update
//! notification → confirmation → erasure after a grace), with two holders.
//!
//! - A new epoch goes to each holder sealed under that holder's current
//!   link epoch ([`crate::pair::seal_pair`]). Only once *both* hold it are
//!   both told to switch (the same moment for both: it is also when they
//!   probe each other), so neither initiates under a key the other lacks.
//! - Only the spokes see direct traffic: each reports when it switched
//!   (stored first), and older epochs go a grace after both did. Use comes
//!   in their reports too; a pair nobody used for the idle time ends, so a
//!   hub with many spokes holds keys only for the pairs that talk.
//! - Pairs are hub-driven (a policy's batch does not apply): they are made
//!   on demand and the relay carries their traffic whenever they are not.

use std::collections::BTreeMap;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::control::Lifetime;
use crate::erasure::Erasure;
use crate::keys::KeyEpoch;
use crate::pair::{seal_pair, PairId};
use crate::rotation::{trigger_due, RotationPolicy, Trigger, Usage, RESEND_SECS};
use crate::routing::SpokeId;
use crate::seal::SealError;

/// A pair epoch on its way to one holder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairDelivery {
    /// The pair.
    pub pair: PairId,
    /// The pair epoch's number.
    pub epoch: u64,
    /// The holder's link epoch it is sealed under.
    pub under: u64,
    /// The sealed epoch ([`crate::pair::seal_pair`]).
    pub sealed: Vec<u8>,
    /// When the epoch ends, as the holders count it.
    pub lifetime: Lifetime,
}

/// The durable part of a pair's schedule (its epochs are stored apart).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairMeta {
    /// Highest epoch each holder reported stored, in [`PairId::holders`] order.
    pub acked: [u64; 2],
    /// The epoch each holder reported it switched to, in the same order.
    pub current: [u64; 2],
    /// When the epoch both switched to was issued or (for the newest) both
    /// were told to switch (Unix seconds): the interval counts from here.
    pub current_since: u64,
    /// Rotations done on this pair.
    pub rotations: u64,
    /// The epoch both were last told to switch to (0: none).
    pub notified: u64,
    /// When a holder last reported use, or the pair was asked for.
    pub last_used: u64,
}

/// What one tick asks of the hub for a pair, in order: store `issued` and
/// the meta (flushed), then send `deliveries`, then the notifications. An
/// `ended` pair is erased and both holders are told.
#[derive(Debug, Default)]
pub struct PairPlan {
    /// A new epoch, to store before anything is sent.
    pub issued: Option<KeyEpoch>,
    /// Why the current epoch ends.
    pub trigger: Option<Trigger>,
    /// Distributions to send, each to its holder.
    pub deliveries: Vec<(SpokeId, PairDelivery)>,
    /// Update notifications: tell this holder to switch to this epoch.
    pub notify: Vec<(SpokeId, u64)>,
    /// Goes with every notification: the epoch both holders reported they
    /// switched to. A holder erases older epochs only a grace after hearing
    /// it, never on its own switch, so it can still read a peer that has
    /// not switched yet.
    pub settled: u64,
    /// Nobody used the pair for the idle time: it ends.
    pub ended: bool,
    /// This tick decided a switch (both hold a newer epoch): the meta
    /// says so, and is stored before the notifications go out.
    pub switched: bool,
}

impl PairPlan {
    /// Whether the schedule changed in a way the store must keep first.
    pub fn stores(&self) -> bool {
        self.issued.is_some() || self.switched
    }
}

/// One pair's epochs and where they stand.
#[derive(Clone, Debug)]
pub struct PairSchedule {
    pair: PairId,
    epochs: BTreeMap<u64, KeyEpoch>,
    meta: PairMeta,
    base: Usage,
    pending: Option<Trigger>,
    erasure: Erasure,
    last_sent: Option<u64>,
}

impl PairSchedule {
    /// A pair asked for now, with its first epoch (to store, then deliver
    /// at the next tick).
    pub fn start<R: RngCore + CryptoRng>(pair: PairId, now: u64, rng: &mut R) -> (Self, KeyEpoch) {
        let first = KeyEpoch::issue(1, now, rng);
        let meta = PairMeta {
            last_used: now,
            ..PairMeta::default()
        };
        (Self::restore(pair, vec![first.clone()], meta), first)
    }

    /// A schedule restored from stored epochs and meta.
    pub fn restore(pair: PairId, epochs: Vec<KeyEpoch>, meta: PairMeta) -> Self {
        Self {
            pair,
            epochs: epochs.into_iter().map(|e| (e.number, e)).collect(),
            base: Usage::default(),
            pending: None,
            erasure: Erasure::after_restart(meta.current[0].min(meta.current[1]), 0),
            meta,
            last_sent: None,
        }
    }

    /// The pair.
    pub fn pair(&self) -> PairId {
        self.pair
    }

    /// The durable meta to store after a change.
    pub fn meta(&self) -> &PairMeta {
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

    /// The newest epoch both holders hold.
    pub fn held_by_both(&self) -> u64 {
        self.meta.acked[0]
            .min(self.meta.acked[1])
            .min(self.latest())
    }

    /// The epoch both holders switched to: older ones are no longer used.
    pub fn current(&self) -> u64 {
        self.meta.current[0].min(self.meta.current[1])
    }

    /// True while an issued epoch has not completed its walk (a holder
    /// lacks it, or has not switched to it).
    pub fn in_flight(&self) -> bool {
        self.latest() > self.held_by_both() || self.meta.notified > self.current()
    }

    /// Asks for a rotation at the next tick (one already asked for keeps
    /// its trigger).
    pub fn request(&mut self, trigger: Trigger) {
        if self.pending.is_none() {
            self.pending = Some(trigger);
        }
    }

    /// One tick: end an idle pair, issue the epoch that is due, and hand out
    /// distributions and the notification (new ones, or again every
    /// [`RESEND_SECS`] while a holder has not answered). `links` holds
    /// each holder's current link epoch, in [`PairId::holders`] order (`None`:
    /// that holder gets nothing now, it has no session); `total` is the
    /// pair's use as its holders reported it.
    pub fn tick<R: RngCore + CryptoRng>(
        &mut self,
        policy: &RotationPolicy,
        idle_secs: u64,
        now: u64,
        total: Usage,
        links: [Option<&KeyEpoch>; 2],
        rng: &mut R,
    ) -> Result<PairPlan, SealError> {
        let mut plan = PairPlan::default();
        if now.saturating_sub(self.meta.last_used) >= idle_secs {
            plan.ended = true;
            return Ok(plan);
        }
        // Both hold a newer epoch: both switch to it, at once.
        let both = self.held_by_both();
        if both > self.meta.notified {
            self.meta.notified = both;
            self.meta.current_since = now;
            self.base = total;
            self.last_sent = None;
            plan.switched = true;
        }
        if !self.in_flight() && !self.epochs.is_empty() {
            let used = total.since(self.base);
            let due = trigger_due(
                policy,
                self.pending.as_ref(),
                self.meta.current_since,
                used,
                now,
            );
            if let Some(trigger) = due {
                let epoch = KeyEpoch::issue(self.latest() + 1, now, rng);
                self.epochs.insert(epoch.number, epoch.clone());
                self.pending = None;
                plan.issued = Some(epoch);
                plan.trigger = Some(trigger);
            }
        }
        let unanswered = self.unanswered();
        let resend = unanswered && self.last_sent.is_none_or(|t| now >= t + RESEND_SECS);
        if plan.issued.is_some() || resend {
            plan.deliveries = self.deliveries(policy, links, rng)?;
        }
        if resend {
            plan.notify = self.notifications();
            plan.settled = self.current();
        }
        if !plan.deliveries.is_empty() || !plan.notify.is_empty() {
            self.last_sent = Some(now);
        }
        Ok(plan)
    }

    /// Whether a holder still has to report a receipt or a switch.
    fn unanswered(&self) -> bool {
        let latest = self.latest();
        self.meta.acked.iter().any(|a| *a < latest)
            || self.meta.current.iter().any(|c| *c < self.meta.notified)
    }

    /// The distributions of every epoch each holder has not reported yet,
    /// sealed under its link epoch.
    fn deliveries<R: RngCore + CryptoRng>(
        &self,
        policy: &RotationPolicy,
        links: [Option<&KeyEpoch>; 2],
        rng: &mut R,
    ) -> Result<Vec<(SpokeId, PairDelivery)>, SealError> {
        let mut out = Vec::new();
        for (i, holder) in self.pair.holders().into_iter().enumerate() {
            let Some(link) = links[i] else { continue };
            for (number, epoch) in self.epochs.range(self.meta.acked[i] + 1..) {
                let delivery = PairDelivery {
                    pair: self.pair,
                    epoch: *number,
                    under: link.number,
                    sealed: seal_pair(link, self.pair, epoch, rng)?,
                    lifetime: policy.lifetime(),
                };
                out.push((holder, delivery));
            }
        }
        Ok(out)
    }

    /// The switch each holder has not reported yet.
    fn notifications(&self) -> Vec<(SpokeId, u64)> {
        let k = self.meta.notified;
        self.pair
            .holders()
            .into_iter()
            .zip(self.meta.current)
            .filter(|(_, current)| *current < k)
            .map(|(holder, _)| (holder, k))
            .collect()
    }

    fn index_of(&self, holder: SpokeId) -> Option<usize> {
        self.pair.holders().iter().position(|h| *h == holder)
    }

    /// Holder `holder` reported epoch `k` stored; true if it moved the
    /// schedule.
    pub fn on_receipt(&mut self, holder: SpokeId, k: u64) -> bool {
        let Some(i) = self.index_of(holder) else {
            return false;
        };
        if k > self.meta.acked[i] && self.epochs.contains_key(&k) {
            self.meta.acked[i] = k;
            true
        } else {
            false
        }
    }

    /// Holder `holder` reported it switched to epoch `k` (after storing
    /// that): once both did, older epochs become erasable `grace` seconds
    /// later. A report of an epoch it was not told to switch to is ignored.
    /// True if it moved the schedule.
    pub fn on_switched(&mut self, holder: SpokeId, k: u64, now: u64, grace: u64) -> bool {
        let Some(i) = self.index_of(holder) else {
            return false;
        };
        if k <= self.meta.current[i] || k > self.meta.notified {
            return false;
        }
        let before = self.current();
        self.meta.current[i] = k;
        self.meta.last_used = self.meta.last_used.max(now);
        let after = self.current();
        if after > before {
            if before != 0 {
                self.meta.rotations += 1;
            }
            self.erasure.schedule(after, now.saturating_add(grace));
        }
        true
    }

    /// A holder reported use of the pair (or asked for it again): it is not
    /// idle.
    pub fn on_used(&mut self, now: u64) {
        self.meta.last_used = self.meta.last_used.max(now);
    }

    /// Removes and returns the epochs whose grace has passed.
    pub fn take_erasable(&mut self, now: u64) -> Vec<u64> {
        let below = self.erasure.due(now, self.current());
        let gone: Vec<u64> = self.epochs.range(..below).map(|(k, _)| *k).collect();
        for k in &gone {
            self.epochs.remove(k);
        }
        gone
    }
}

#[cfg(test)]
#[path = "pair_schedule_tests.rs"]
mod tests;
