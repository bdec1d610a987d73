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

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::control::Lifetime;
use crate::keys::KeyEpoch;
use crate::pair::{seal_pair, PairId};
use crate::rotation::{RotationPolicy, Trigger, Usage};
use crate::routing::SpokeId;
use crate::scope_schedule::{HolderMark, ScopeMeta, ScopeSchedule};
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
    /// Keyed by this keyed group's epochs (both holders are members): the
    /// holders derive the pair's keys, and the hub issues none.
    #[serde(default)]
    pub via: Option<String>,
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

/// One pair's epochs and where they stand: a [`ScopeSchedule`] whose two
/// holders never change, ended when idle.
#[derive(Clone, Debug)]
pub struct PairSchedule {
    pair: PairId,
    scope: ScopeSchedule,
    /// When a holder last reported use, or the pair was asked for.
    last_used: u64,
    /// The keyed group whose epochs key the pair, if one does.
    via: Option<String>,
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

    /// A pair asked for now whose holders share keyed group `group`: its
    /// keys come from the group's epochs, so the hub issues none.
    pub fn keyed_by(pair: PairId, group: &str, now: u64) -> Self {
        let meta = PairMeta {
            last_used: now,
            via: Some(group.to_owned()),
            ..PairMeta::default()
        };
        Self::restore(pair, Vec::new(), meta)
    }

    /// The keyed group whose epochs key the pair, if one does.
    pub fn via(&self) -> Option<&str> {
        self.via.as_deref()
    }

    /// A schedule restored from stored epochs and meta.
    pub fn restore(pair: PairId, epochs: Vec<KeyEpoch>, meta: PairMeta) -> Self {
        let holders = pair
            .holders()
            .into_iter()
            .zip(meta.acked.into_iter().zip(meta.current))
            .map(|(h, (acked, current))| (h, HolderMark { acked, current }))
            .collect();
        let scope = ScopeMeta {
            holders,
            current_since: meta.current_since,
            rotations: meta.rotations,
            notified: meta.notified,
            floor: 0,
            away: Default::default(),
        };
        Self {
            pair,
            scope: ScopeSchedule::restore(epochs, scope),
            last_used: meta.last_used,
            via: meta.via,
        }
    }

    /// The pair.
    pub fn pair(&self) -> PairId {
        self.pair
    }

    /// The durable meta to store after a change.
    pub fn meta(&self) -> PairMeta {
        let m = self.scope.meta();
        let mark = |h: SpokeId| m.holders.get(&h).copied().unwrap_or_default();
        let [a, b] = self.pair.holders().map(mark);
        PairMeta {
            acked: [a.acked, b.acked],
            current: [a.current, b.current],
            current_since: m.current_since,
            rotations: m.rotations,
            notified: m.notified,
            last_used: self.last_used,
            via: self.via.clone(),
        }
    }

    /// Every epoch still held, oldest first.
    pub fn epochs(&self) -> Vec<KeyEpoch> {
        self.scope.epochs()
    }

    /// The newest epoch issued.
    pub fn latest(&self) -> u64 {
        self.scope.latest()
    }

    /// The newest epoch both holders hold.
    pub fn held_by_both(&self) -> u64 {
        self.scope.held_by_all()
    }

    /// The epoch both holders switched to: older ones are no longer used.
    pub fn current(&self) -> u64 {
        self.scope.current()
    }

    /// True while an issued epoch has not completed its walk (a holder
    /// lacks it, or has not switched to it).
    pub fn in_flight(&self) -> bool {
        self.scope.in_flight()
    }

    /// Asks for a rotation at the next tick (one already asked for keeps
    /// its trigger).
    pub fn request(&mut self, trigger: Trigger) {
        self.scope.request(trigger);
    }

    /// One tick: end an idle pair, issue the epoch that is due, and hand out
    /// distributions and the notification (new ones, or again every
    /// [`crate::rotation::RESEND_SECS`] while a holder has not answered).
    /// `links` holds each holder's current link epoch, in
    /// [`PairId::holders`] order (`None`: that holder gets nothing now, it
    /// has no session); `total` is the pair's use as its holders reported it.
    pub fn tick<R: RngCore + CryptoRng>(
        &mut self,
        policy: &RotationPolicy,
        idle_secs: u64,
        now: u64,
        total: Usage,
        links: [Option<&KeyEpoch>; 2],
        rng: &mut R,
    ) -> Result<PairPlan, SealError> {
        if now.saturating_sub(self.last_used) >= idle_secs {
            return Ok(PairPlan {
                ended: true,
                ..PairPlan::default()
            });
        }
        if self.via.is_some() {
            // Keyed by a group: its epochs are the group's.
            return Ok(PairPlan::default());
        }
        let holders = self.pair.holders();
        let link_of = |h: SpokeId| holders.iter().position(|x| *x == h).and_then(|i| links[i]);
        let plan = self
            .scope
            .tick(policy, now, total, |h| link_of(h).is_some(), rng);
        let pair = self.pair;
        let deliveries = plan.seal_each(&self.scope, link_of, |link, epoch| {
            Ok(PairDelivery {
                pair,
                epoch: epoch.number,
                under: link.number,
                sealed: seal_pair(link, pair, epoch, rng)?,
                lifetime: policy.lifetime(),
            })
        })?;
        Ok(PairPlan {
            issued: plan.issued,
            trigger: plan.trigger,
            deliveries,
            notify: plan.notify,
            settled: plan.settled,
            ended: false,
            switched: plan.switched,
        })
    }

    /// Holder `holder` reported epoch `k` stored; true if it moved the
    /// schedule.
    pub fn on_receipt(&mut self, holder: SpokeId, k: u64) -> bool {
        self.scope.on_receipt(holder, k)
    }

    /// Holder `holder` reported it switched to epoch `k` (after storing
    /// that): once both did, older epochs become erasable `grace` seconds
    /// later. A report of an epoch it was not told to switch to is ignored.
    /// True if it moved the schedule.
    pub fn on_switched(&mut self, holder: SpokeId, k: u64, now: u64, grace: u64) -> bool {
        let moved = self.scope.on_switched(holder, k, now, grace);
        if moved {
            self.last_used = self.last_used.max(now);
        }
        moved
    }

    /// A holder reported use of the pair (or asked for it again): it is not
    /// idle.
    pub fn on_used(&mut self, now: u64) {
        self.last_used = self.last_used.max(now);
    }

    /// Removes and returns the epochs whose grace has passed.
    pub fn take_erasable(&mut self, now: u64) -> Vec<u64> {
        self.scope.take_erasable(now)
    }
}

#[cfg(test)]
#[path = "pair_schedule_tests.rs"]
mod tests;
