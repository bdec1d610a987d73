//! The hub's schedule of one key scope with a set of holders (DESIGN.md,
//! "Key scopes"): a pair's two spokes (claim 10) or a keyed group's member
//! spokes (claim 11). Every epoch walks the same way: issue → delivery to
//! each holder (sealed by the caller under that holder's link epoch) →
//! receipt → one switch for all once every holder has it → their switch
//! reports → older epochs erased a grace after all switched.
//!
//! Holders may come and go (a group's members): a holder that joins gets
//! the epoch in use and newer ones only; one that leaves for good makes
//! the next epoch due at once, and no epoch it could have received is ever
//! switched to again ([`ScopeSchedule::leave`]).

use std::collections::{BTreeMap, BTreeSet};

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::erasure::Erasure;
use crate::keys::KeyEpoch;
use crate::rotation::{trigger_due, RotationPolicy, Trigger, Usage, RESEND_SECS};
use crate::routing::SpokeId;
use crate::seal::SealError;

/// Where one holder stands: the newest epoch it reported stored, and the
/// one it reported it switched to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderMark {
    /// Highest epoch reported stored.
    pub acked: u64,
    /// The epoch reported switched to.
    pub current: u64,
}

/// The durable part of a scope's schedule (its epochs are stored apart).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScopeMeta {
    /// Every holder and where it stands.
    pub holders: BTreeMap<SpokeId, HolderMark>,
    /// When the epoch in use was issued or all were told to switch to it
    /// (Unix seconds): the interval counts from here.
    pub current_since: u64,
    /// Rotations done.
    pub rotations: u64,
    /// The epoch all holders were last told to switch to (0: none).
    pub notified: u64,
    /// No epoch below this one is switched to: a holder that left may
    /// have received them.
    pub floor: u64,
    /// Holders that went offline holding epochs: not waited for, but a
    /// leave of theirs still rotates.
    #[serde(default)]
    pub away: BTreeSet<SpokeId>,
}

/// What one tick asks of the hub, in order: store `issued` and the meta
/// (flushed), then send each delivery (sealed under its holder's link
/// epoch), then the notifications.
#[derive(Debug, Default)]
pub struct ScopePlan {
    /// A new epoch, to store before anything is sent.
    pub issued: Option<KeyEpoch>,
    /// Why the epoch in use ends.
    pub trigger: Option<Trigger>,
    /// Epochs to deliver: (holder, epoch number).
    pub deliver: Vec<(SpokeId, u64)>,
    /// Update notifications: tell this holder to switch to this epoch.
    pub notify: Vec<(SpokeId, u64)>,
    /// Goes with every notification: the epoch every holder switched to.
    /// A holder erases older epochs only a grace after hearing it.
    pub settled: u64,
    /// This tick decided a switch: the meta says so, and is stored before
    /// the notifications go out.
    pub switched: bool,
    /// The epoch every holder uses moved on without a report (a lagging
    /// holder went offline or left): tell them all `settled`.
    pub settled_rose: bool,
}

impl ScopePlan {
    /// Whether the schedule changed in a way the store must keep first.
    pub fn stores(&self) -> bool {
        self.issued.is_some() || self.switched
    }

    /// Seals each delivery with `seal(link, epoch)` under its holder's link
    /// epoch from `links`, in order (a holder with none gets nothing now).
    pub fn seal_each<'a, D>(
        &self,
        sched: &ScopeSchedule,
        links: impl Fn(SpokeId) -> Option<&'a KeyEpoch>,
        mut seal: impl FnMut(&KeyEpoch, &KeyEpoch) -> Result<D, SealError>,
    ) -> Result<Vec<(SpokeId, D)>, SealError> {
        let mut out = Vec::with_capacity(self.deliver.len());
        for (holder, number) in &self.deliver {
            if let (Some(link), Some(epoch)) = (links(*holder), sched.epoch(*number)) {
                out.push((*holder, seal(link, epoch)?));
            }
        }
        Ok(out)
    }
}

/// One scope's epochs and where each holder stands.
#[derive(Clone, Debug)]
pub struct ScopeSchedule {
    epochs: BTreeMap<u64, KeyEpoch>,
    meta: ScopeMeta,
    base: Usage,
    pending: Option<Trigger>,
    /// A holder left: the next epoch is issued at once, in flight or not.
    urgent: bool,
    erasure: Erasure,
    last_sent: Option<u64>,
    /// The epoch every holder used when last looked at (memory only).
    settled_seen: u64,
    /// Since when each holder owes a receipt or a switch report (memory).
    owing_since: BTreeMap<SpokeId, u64>,
}

impl ScopeSchedule {
    /// A schedule restored from stored epochs and meta.
    pub fn restore(epochs: Vec<KeyEpoch>, meta: ScopeMeta) -> Self {
        let mut s = Self {
            epochs: epochs.into_iter().map(|e| (e.number, e)).collect(),
            base: Usage::default(),
            pending: None,
            urgent: false,
            erasure: Erasure::default(),
            meta,
            last_sent: None,
            settled_seen: 0,
            owing_since: BTreeMap::new(),
        };
        s.erasure = Erasure::after_restart(s.current(), 0);
        s.settled_seen = s.current();
        // A leave whose epoch was not issued before the restart.
        s.urgent = s.meta.floor > s.latest();
        s
    }

    /// The durable meta to store after a change.
    pub fn meta(&self) -> &ScopeMeta {
        &self.meta
    }

    /// Every epoch still held, oldest first.
    pub fn epochs(&self) -> Vec<KeyEpoch> {
        self.epochs.values().cloned().collect()
    }

    /// The epoch numbered `k`, if still held.
    pub fn epoch(&self, k: u64) -> Option<&KeyEpoch> {
        self.epochs.get(&k)
    }

    /// The newest epoch issued.
    pub fn latest(&self) -> u64 {
        self.epochs.keys().next_back().copied().unwrap_or(0)
    }

    /// The number the next epoch gets: past every epoch issued, told or
    /// barred, even when their keys are gone.
    fn next_number(&self) -> u64 {
        self.latest()
            .max(self.meta.notified)
            .max(self.meta.floor.saturating_sub(1))
            + 1
    }

    /// The holders, in id order.
    pub fn holders(&self) -> impl Iterator<Item = SpokeId> + '_ {
        self.meta.holders.keys().copied()
    }

    /// Former holders that went offline with epochs of the scope.
    pub fn away(&self) -> impl Iterator<Item = SpokeId> + '_ {
        self.meta.away.iter().copied()
    }

    /// The newest epoch every holder holds.
    pub fn held_by_all(&self) -> u64 {
        self.meta
            .holders
            .values()
            .map(|m| m.acked)
            .min()
            .unwrap_or(0)
            .min(self.latest())
    }

    /// The epoch every holder switched to: older ones are no longer used.
    pub fn current(&self) -> u64 {
        self.meta
            .holders
            .values()
            .map(|m| m.current)
            .min()
            .unwrap_or(self.meta.notified)
    }

    /// True while an issued epoch has not completed its walk (a holder
    /// lacks it, nobody was told to switch to it yet, or a holder has not
    /// switched).
    pub fn in_flight(&self) -> bool {
        let latest = self.latest();
        latest > self.held_by_all()
            || latest > self.meta.notified
            || self.meta.notified > self.current()
    }

    /// Asks for a rotation at the next tick (one already asked for keeps
    /// its trigger).
    pub fn request(&mut self, trigger: Trigger) {
        if self.pending.is_none() {
            self.pending = Some(trigger);
        }
    }

    /// A holder joins (or comes back): it is given the epoch in use and
    /// newer ones, never older ones. True if it was not a holder.
    pub fn join(&mut self, holder: SpokeId) -> bool {
        if self.meta.holders.contains_key(&holder) {
            return false;
        }
        self.meta.away.remove(&holder);
        let below = self.meta.notified.max(self.meta.floor).saturating_sub(1);
        let mark = HolderMark {
            acked: below,
            current: below,
        };
        self.meta.holders.insert(holder, mark);
        self.last_sent = None;
        true
    }

    /// A holder goes. `for_good` (it left, it was revoked): it may hold
    /// every epoch issued so far, so the next epoch is issued at once, in
    /// flight or not, and none of those is switched to again. Otherwise
    /// (it went offline) it only stops holding up the others. True if it
    /// was a holder.
    pub fn leave(&mut self, holder: SpokeId, for_good: bool, trigger: Trigger) -> bool {
        let was_holder = self.meta.holders.remove(&holder).is_some();
        if !for_good {
            if was_holder {
                self.meta.away.insert(holder);
            }
            return was_holder;
        }
        let was_away = self.meta.away.remove(&holder);
        if !was_holder && !was_away {
            return false;
        }
        self.meta.floor = self.next_number();
        self.urgent = true;
        self.pending = Some(trigger);
        true
    }

    /// One tick: issue the epoch that is due, and hand out deliveries and
    /// notifications (new ones, or again every [`RESEND_SECS`] while a
    /// holder has not answered). `reachable` says which holders have a
    /// session to be sent to now; `total` is the scope's use.
    pub fn tick<R: RngCore + CryptoRng>(
        &mut self,
        policy: &RotationPolicy,
        now: u64,
        total: Usage,
        reachable: impl Fn(SpokeId) -> bool,
        rng: &mut R,
    ) -> ScopePlan {
        let mut plan = ScopePlan::default();
        if self.meta.holders.is_empty() {
            return plan;
        }
        // A lagging holder left or went offline: the others are all on a
        // newer epoch now, and the older ones go a grace later.
        let settled = self.current();
        if settled > self.settled_seen {
            self.settled_seen = settled;
            self.erasure
                .schedule(settled, now.saturating_add(policy.grace_secs));
            plan.settled_rose = true;
            plan.settled = settled;
        }
        // Every holder holds a newer epoch: all switch to it, at once.
        let all = self.held_by_all();
        if all > self.meta.notified && all >= self.meta.floor {
            self.meta.notified = all;
            self.meta.current_since = now;
            self.base = total;
            self.last_sent = None;
            plan.switched = true;
        }
        let due = if self.urgent {
            // After a restart the leave's trigger is gone: the leave was.
            Some(
                self.pending
                    .take()
                    .unwrap_or_else(|| Trigger::Event("holder-left".into())),
            )
        } else if self.epochs.is_empty() {
            // Its keys are gone (lost files): a new epoch for everyone.
            Some(
                self.pending
                    .take()
                    .unwrap_or_else(|| Trigger::Event("no-epoch".into())),
            )
        } else if self.in_flight() {
            None
        } else {
            let used = total.since(self.base);
            trigger_due(
                policy,
                self.pending.as_ref(),
                self.meta.current_since,
                used,
                now,
            )
        };
        if let Some(trigger) = due {
            let epoch = KeyEpoch::issue(self.next_number(), now, rng);
            self.epochs.insert(epoch.number, epoch.clone());
            self.pending = None;
            self.urgent = false;
            plan.issued = Some(epoch);
            plan.trigger = Some(trigger);
        }
        let resend = self.unanswered() && self.last_sent.is_none_or(|t| now >= t + RESEND_SECS);
        if plan.issued.is_some() || resend {
            plan.deliver = self.deliveries(&reachable);
        }
        if resend {
            plan.notify = self.notifications(&reachable);
            plan.settled = self.current();
        }
        if !plan.deliver.is_empty() || !plan.notify.is_empty() {
            self.last_sent = Some(now);
        }
        self.note_owing(now);
        plan
    }

    /// Holders that have owed a receipt or a switch report for `secs` or
    /// more at `now`, though it was sent to them again and again: a spoke
    /// that takes no group messages (an old build, a broken store) must
    /// not hold up the others, a leaver's rotation least of all.
    pub fn stalled(&self, now: u64, secs: u64) -> Vec<SpokeId> {
        self.owing_since
            .iter()
            .filter(|(_, since)| now.saturating_sub(**since) >= secs)
            .map(|(h, _)| *h)
            .collect()
    }

    /// Notes which holders owe a report now, and since when.
    fn note_owing(&mut self, now: u64) {
        let latest = self.latest();
        let notified = self.meta.notified;
        let owing: Vec<SpokeId> = self
            .meta
            .holders
            .iter()
            .filter(|(_, m)| m.acked < latest || m.current < notified)
            .map(|(h, _)| *h)
            .collect();
        self.owing_since.retain(|h, _| owing.contains(h));
        for h in owing {
            self.owing_since.entry(h).or_insert(now);
        }
    }

    /// Whether a holder still has to report a receipt or a switch.
    fn unanswered(&self) -> bool {
        let latest = self.latest();
        self.meta
            .holders
            .values()
            .any(|m| m.acked < latest || m.current < self.meta.notified)
    }

    /// Every epoch each reachable holder has not reported, from the epoch
    /// in use on (a joiner never gets older ones).
    fn deliveries(&self, reachable: &impl Fn(SpokeId) -> bool) -> Vec<(SpokeId, u64)> {
        let mut out = Vec::new();
        for (holder, mark) in &self.meta.holders {
            if !reachable(*holder) {
                continue;
            }
            for number in self.epochs.range(mark.acked + 1..).map(|(k, _)| *k) {
                out.push((*holder, number));
            }
        }
        out
    }

    /// The switch each reachable holder has not reported yet.
    fn notifications(&self, reachable: &impl Fn(SpokeId) -> bool) -> Vec<(SpokeId, u64)> {
        let k = self.meta.notified;
        self.meta
            .holders
            .iter()
            .filter(|(h, m)| m.current < k && reachable(**h))
            .map(|(h, _)| (*h, k))
            .collect()
    }

    /// `holder` reported epoch `k` stored; true if it moved the schedule.
    pub fn on_receipt(&mut self, holder: SpokeId, k: u64) -> bool {
        let held = self.epochs.contains_key(&k);
        match self.meta.holders.get_mut(&holder) {
            Some(m) if k > m.acked && held => {
                m.acked = k;
                true
            }
            _ => false,
        }
    }

    /// `holder` reported it switched to epoch `k` (after storing that):
    /// once all did, older epochs become erasable `grace` seconds later. A
    /// report of an epoch it was not told to switch to is ignored. True if
    /// it moved the schedule.
    pub fn on_switched(&mut self, holder: SpokeId, k: u64, now: u64, grace: u64) -> bool {
        let notified = self.meta.notified;
        let before = self.current();
        match self.meta.holders.get_mut(&holder) {
            Some(m) if k > m.current && k <= notified => m.current = k,
            _ => return false,
        }
        let after = self.current();
        if after > before {
            if before != 0 {
                self.meta.rotations += 1;
            }
            self.erasure.schedule(after, now.saturating_add(grace));
            self.settled_seen = self.settled_seen.max(after);
        }
        true
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
#[path = "scope_schedule_tests.rs"]
mod tests;
