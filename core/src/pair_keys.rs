//! A holder's side of the epochs of a key scope other than its link (a
//! pair's in direct mode, a keyed group's): the rules for a delivered
//! epoch, the switch the hub announces, and erasure, as the spoke's session
//! and data plane use them. What is stored and when is the caller's: a new
//! epoch is stored (flushed) before its receipt is reported, a switch
//! before it is reported.

use std::collections::BTreeMap;

use crate::erasure::Erasure;
use crate::group::{open_group, GroupDelivery};
use crate::keys::KeyEpoch;
use crate::pair::{open_pair, PairId};
use crate::pair_schedule::PairDelivery;
use crate::seal::SealError;

/// What to do with a delivered epoch.
#[derive(Debug)]
pub enum PairReceived {
    /// Held already (or older than the one in use): report its receipt again.
    Again,
    /// New: store it, then report its receipt.
    New(KeyEpoch),
}

/// What to do with an announced switch.
#[derive(Debug, PartialEq, Eq)]
pub enum PairSwitch {
    /// Switched now: store the new current epoch, then report.
    Switched,
    /// On it already: report again (the hub lost the report).
    Again,
    /// The epoch is not held yet (its delivery comes again): say nothing.
    NotHeld,
}

#[derive(Debug, Default)]
struct Held {
    epochs: BTreeMap<u64, KeyEpoch>,
    current: u64,
    erasure: Erasure,
}

/// Every epoch a spoke holds of scopes named by `S` (pairs, groups).
#[derive(Debug)]
pub struct ScopeKeys<S> {
    scopes: BTreeMap<S, Held>,
}

impl<S> Default for ScopeKeys<S> {
    fn default() -> Self {
        Self {
            scopes: BTreeMap::new(),
        }
    }
}

/// A spoke's pair epochs.
pub type PairKeys = ScopeKeys<PairId>;
/// A spoke's keyed groups' epochs, by group name.
pub type GroupKeys = ScopeKeys<String>;

impl PairKeys {
    /// Opens a delivery with the link epoch it is sealed under, out of
    /// `links` (the link epochs the spoke holds). A box under a link epoch
    /// no longer held is an error: the hub seals it again under the
    /// current one.
    pub fn receive(
        &self,
        delivery: &PairDelivery,
        links: &[KeyEpoch],
    ) -> Result<PairReceived, SealError> {
        self.receive_with(
            &delivery.pair,
            delivery.epoch,
            delivery.under,
            links,
            |link| open_pair(link, delivery.pair, delivery.epoch, &delivery.sealed),
        )
    }
}

impl GroupKeys {
    /// Opens a group epoch's delivery (see [`PairKeys::receive`]).
    pub fn receive(
        &self,
        delivery: &GroupDelivery,
        links: &[KeyEpoch],
    ) -> Result<PairReceived, SealError> {
        self.receive_with(
            &delivery.group,
            delivery.epoch,
            delivery.under,
            links,
            |link| open_group(link, delivery),
        )
    }
}

impl<S: Ord + Clone> ScopeKeys<S> {
    /// Epoch `epoch` of `scope`, sealed under link epoch `under`: opened
    /// with `open` and that link epoch out of `links`, unless held.
    fn receive_with(
        &self,
        scope: &S,
        epoch: u64,
        under: u64,
        links: &[KeyEpoch],
        open: impl FnOnce(&KeyEpoch) -> Result<KeyEpoch, SealError>,
    ) -> Result<PairReceived, SealError> {
        if let Some(p) = self.scopes.get(scope) {
            // Held, or older than the one in use (erased, or never needed):
            // its receipt again. One in use but not held is taken (its key
            // file was lost): the scope could not work without it.
            if p.epochs.contains_key(&epoch) || p.current > epoch {
                return Ok(PairReceived::Again);
            }
        }
        let link = links
            .iter()
            .find(|l| l.number == under)
            .ok_or(SealError::NotPredecessor {
                sealed: epoch,
                under,
            })?;
        open(link).map(PairReceived::New)
    }

    /// Holds an epoch (once stored).
    pub fn hold(&mut self, scope: S, epoch: KeyEpoch) {
        self.scopes
            .entry(scope)
            .or_default()
            .epochs
            .insert(epoch.number, epoch);
    }

    /// Restores a scope's epoch in use (from the store).
    pub fn restore_current(&mut self, scope: S, current: u64) {
        self.scopes.entry(scope).or_default().current = current;
    }

    /// The hub announced a switch to epoch `k`, and that every holder is
    /// on `settled` already: epochs older than that (and than the one in
    /// use) are erasable `grace` seconds after `now`. A switch alone
    /// erases nothing: another holder may not have switched yet.
    pub fn switch(&mut self, scope: &S, k: u64, settled: u64, now: u64, grace: u64) -> PairSwitch {
        let Some(p) = self.scopes.get_mut(scope) else {
            return PairSwitch::NotHeld;
        };
        let outcome = if k <= p.current {
            PairSwitch::Again
        } else if p.epochs.contains_key(&k) {
            p.current = k;
            PairSwitch::Switched
        } else {
            PairSwitch::NotHeld
        };
        let below = settled.min(p.current);
        if below > 0 {
            p.erasure.schedule(below, now.saturating_add(grace));
        }
        outcome
    }

    /// The epoch in use: the one switched to.
    pub fn current(&self, scope: &S) -> Option<&KeyEpoch> {
        let p = self.scopes.get(scope)?;
        p.epochs.get(&p.current)
    }

    /// Every epoch held for a scope, oldest first (an answer to a
    /// handshake may be under any of them).
    pub fn held(&self, scope: &S) -> Vec<u64> {
        self.scopes
            .get(scope)
            .map(|p| p.epochs.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Every epoch held of a scope, oldest first.
    pub fn epochs(&self, scope: &S) -> Vec<KeyEpoch> {
        self.scopes
            .get(scope)
            .map(|p| p.epochs.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Every scope held, with the epoch in use and the epochs held.
    pub fn all(&self) -> Vec<(S, u64, Vec<u64>)> {
        self.scopes
            .iter()
            .map(|(s, p)| (s.clone(), p.current, p.epochs.keys().copied().collect()))
            .collect()
    }

    /// Drops one epoch of a scope (it is no longer derivable); true if held.
    pub fn drop_epoch(&mut self, scope: &S, k: u64) -> bool {
        self.scopes
            .get_mut(scope)
            .is_some_and(|p| p.epochs.remove(&k).is_some())
    }

    /// Forgets a scope (it ended); returns the epochs to erase from the store.
    pub fn end(&mut self, scope: &S) -> Vec<u64> {
        self.scopes
            .remove(scope)
            .map(|p| p.epochs.into_keys().collect())
            .unwrap_or_default()
    }

    /// Removes the epochs whose grace has passed, per scope.
    pub fn take_erasable(&mut self, now: u64) -> Vec<(S, u64)> {
        let mut out = Vec::new();
        for (scope, p) in &mut self.scopes {
            // Only what the hub said all left goes (never by count alone:
            // a lagging holder may still send under an old epoch).
            let below = p.erasure.due(now, 0);
            let gone: Vec<u64> = p.epochs.range(..below).map(|(k, _)| *k).collect();
            for k in gone {
                p.epochs.remove(&k);
                out.push((scope.clone(), k));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::Lifetime;
    use crate::pair::seal_pair;
    use rand::{rngs::StdRng, SeedableRng};

    fn delivery(link: &KeyEpoch, pair: PairId, epoch: &KeyEpoch, rng: &mut StdRng) -> PairDelivery {
        PairDelivery {
            pair,
            epoch: epoch.number,
            under: link.number,
            sealed: seal_pair(link, pair, epoch, rng).unwrap(),
            lifetime: Lifetime::default(),
        }
    }

    #[test]
    fn a_delivery_opens_with_the_link_epoch_it_names() {
        let mut rng = StdRng::seed_from_u64(1);
        let links = [
            KeyEpoch::issue(5, 0, &mut rng),
            KeyEpoch::issue(6, 0, &mut rng),
        ];
        let pair = PairId::new(1, 2).unwrap();
        let e1 = KeyEpoch::issue(1, 0, &mut rng);
        let mut keys = PairKeys::default();
        let d = delivery(&links[0], pair, &e1, &mut rng);
        let PairReceived::New(got) = keys.receive(&d, &links).unwrap() else {
            panic!("a new epoch")
        };
        assert_eq!(got, e1);
        keys.hold(pair, got);
        assert!(matches!(keys.receive(&d, &links), Ok(PairReceived::Again)));
        // Sealed under a link epoch the spoke no longer holds.
        let e2 = KeyEpoch::issue(2, 0, &mut rng);
        let gone = KeyEpoch::issue(4, 0, &mut rng);
        let d = delivery(&gone, pair, &e2, &mut rng);
        assert!(keys.receive(&d, &links).is_err());
    }

    #[test]
    fn a_switch_needs_the_epoch_and_is_reported_again_once_done() {
        let mut rng = StdRng::seed_from_u64(2);
        let pair = PairId::new(1, 2).unwrap();
        let mut keys = PairKeys::default();
        assert_eq!(keys.switch(&pair, 1, 0, 0, 10), PairSwitch::NotHeld);
        keys.hold(pair, KeyEpoch::issue(1, 0, &mut rng));
        assert_eq!(keys.switch(&pair, 2, 0, 0, 10), PairSwitch::NotHeld);
        assert_eq!(keys.switch(&pair, 1, 0, 0, 10), PairSwitch::Switched);
        assert_eq!(keys.switch(&pair, 1, 0, 1, 10), PairSwitch::Again);
        assert_eq!(keys.current(&pair).map(|e| e.number), Some(1));
    }

    #[test]
    fn older_epochs_go_only_a_grace_after_both_left_them() {
        let mut rng = StdRng::seed_from_u64(3);
        let pair = PairId::new(1, 2).unwrap();
        let mut keys = PairKeys::default();
        for k in 1..=2 {
            keys.hold(pair, KeyEpoch::issue(k, 0, &mut rng));
        }
        keys.switch(&pair, 1, 0, 0, 10);
        // On epoch 2 now, but the peer may still send under 1.
        keys.switch(&pair, 2, 1, 100, 10);
        assert!(keys.take_erasable(1_000).is_empty());
        // The hub says both are on 2 (with a later notice, or again).
        keys.switch(&pair, 2, 2, 200, 10);
        assert!(keys.take_erasable(209).is_empty());
        assert_eq!(keys.take_erasable(210), vec![(pair, 1)]);
        assert_eq!(keys.held(&pair), vec![2]);
        assert_eq!(keys.end(&pair), vec![2]);
        assert!(keys.current(&pair).is_none());
        assert!(keys.end(&pair).is_empty());
    }
}
