//! A spoke's side of its pairs' epochs (direct mode): the rules for a
//! delivered pair epoch, the switch the hub announces, and erasure, as the
//! spoke's session and data plane use them. What is stored and when is the
//! caller's: a new epoch is stored (flushed) before its receipt is
//! reported, a switch before it is reported.

use std::collections::BTreeMap;

use crate::erasure::Erasure;
use crate::keys::KeyEpoch;
use crate::pair::{open_pair, PairId};
use crate::pair_schedule::PairDelivery;
use crate::seal::SealError;

/// What to do with a delivered pair epoch.
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
struct HeldPair {
    epochs: BTreeMap<u64, KeyEpoch>,
    current: u64,
    erasure: Erasure,
}

/// Every pair epoch a spoke holds.
#[derive(Debug, Default)]
pub struct PairKeys {
    pairs: BTreeMap<PairId, HeldPair>,
}

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
        if let Some(p) = self.pairs.get(&delivery.pair) {
            if p.epochs.contains_key(&delivery.epoch) || p.current >= delivery.epoch {
                return Ok(PairReceived::Again);
            }
        }
        let link =
            links
                .iter()
                .find(|l| l.number == delivery.under)
                .ok_or(SealError::NotPredecessor {
                    sealed: delivery.epoch,
                    under: delivery.under,
                })?;
        open_pair(link, delivery.pair, delivery.epoch, &delivery.sealed).map(PairReceived::New)
    }

    /// Holds an epoch (once stored).
    pub fn hold(&mut self, pair: PairId, epoch: KeyEpoch) {
        self.pairs
            .entry(pair)
            .or_default()
            .epochs
            .insert(epoch.number, epoch);
    }

    /// The hub announced a switch to epoch `k`, and that both holders are
    /// on `settled` already: epochs older than that (and than the one in
    /// use) are erasable `grace` seconds after `now`. A switch alone
    /// erases nothing: the peer may not have switched yet.
    pub fn switch(
        &mut self,
        pair: PairId,
        k: u64,
        settled: u64,
        now: u64,
        grace: u64,
    ) -> PairSwitch {
        let Some(p) = self.pairs.get_mut(&pair) else {
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

    /// The epoch a pair's new handshakes use: the one switched to.
    pub fn current(&self, pair: PairId) -> Option<&KeyEpoch> {
        let p = self.pairs.get(&pair)?;
        p.epochs.get(&p.current)
    }

    /// Every epoch held for a pair, oldest first (an answer to a handshake
    /// may be under any of them).
    pub fn held(&self, pair: PairId) -> Vec<u64> {
        self.pairs
            .get(&pair)
            .map(|p| p.epochs.keys().copied().collect())
            .unwrap_or_default()
    }

    /// Forgets a pair (it ended); returns the epochs to erase from the store.
    pub fn end(&mut self, pair: PairId) -> Vec<u64> {
        self.pairs
            .remove(&pair)
            .map(|p| p.epochs.into_keys().collect())
            .unwrap_or_default()
    }

    /// Removes the epochs whose grace has passed, per pair.
    pub fn take_erasable(&mut self, now: u64) -> Vec<(PairId, u64)> {
        let mut out = Vec::new();
        for (pair, p) in &mut self.pairs {
            // Only what the hub said both left goes (never by count alone:
            // a lagging peer may still send under an old epoch).
            let below = p.erasure.due(now, 0);
            let gone: Vec<u64> = p.epochs.range(..below).map(|(k, _)| *k).collect();
            for k in gone {
                p.epochs.remove(&k);
                out.push((*pair, k));
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
        assert_eq!(keys.switch(pair, 1, 0, 0, 10), PairSwitch::NotHeld);
        keys.hold(pair, KeyEpoch::issue(1, 0, &mut rng));
        assert_eq!(keys.switch(pair, 2, 0, 0, 10), PairSwitch::NotHeld);
        assert_eq!(keys.switch(pair, 1, 0, 0, 10), PairSwitch::Switched);
        assert_eq!(keys.switch(pair, 1, 0, 1, 10), PairSwitch::Again);
        assert_eq!(keys.current(pair).map(|e| e.number), Some(1));
    }

    #[test]
    fn older_epochs_go_only_a_grace_after_both_left_them() {
        let mut rng = StdRng::seed_from_u64(3);
        let pair = PairId::new(1, 2).unwrap();
        let mut keys = PairKeys::default();
        for k in 1..=2 {
            keys.hold(pair, KeyEpoch::issue(k, 0, &mut rng));
        }
        keys.switch(pair, 1, 0, 0, 10);
        // On epoch 2 now, but the peer may still send under 1.
        keys.switch(pair, 2, 1, 100, 10);
        assert!(keys.take_erasable(1_000).is_empty());
        // The hub says both are on 2 (with a later notice, or again).
        keys.switch(pair, 2, 2, 200, 10);
        assert!(keys.take_erasable(209).is_empty());
        assert_eq!(keys.take_erasable(210), vec![(pair, 1)]);
        assert_eq!(keys.held(pair), vec![2]);
        assert_eq!(keys.end(pair), vec![2]);
        assert!(keys.current(pair).is_none());
        assert!(keys.end(pair).is_empty());
    }
}
