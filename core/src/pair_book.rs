//! The hub's pairs (direct mode): made on demand when a spoke asks for a
//! peer, only for pairs the access policy allows, within limits per spoke
//! and in all, and ended when idle, when either spoke goes (revoked, logged
//! out) or when the policy no longer allows them. A hub with 10,000 spokes
//! holds keys for the pairs that talk, never N².

use std::collections::{BTreeMap, HashMap};

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::keys::KeyEpoch;
use crate::pair::PairId;
use crate::pair_schedule::PairSchedule;
use crate::routing::SpokeId;

/// How many pairs may exist, and how long an unused one lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairLimits {
    /// Pairs one spoke may be in.
    pub per_spoke: usize,
    /// Pairs in all.
    pub total: usize,
    /// Seconds without use after which a pair ends.
    pub idle_secs: u64,
}

impl Default for PairLimits {
    fn default() -> Self {
        Self {
            per_spoke: 64,
            total: 20_000,
            idle_secs: 600,
        }
    }
}

/// Why a spoke gets no pair.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PairRefusal {
    /// A spoke asked for a pair with itself.
    #[error("a spoke cannot pair with itself")]
    SameSpoke,
    /// The access policy lets no flow between the two (or direct mode is
    /// off for one of them): their traffic, if any, stays on the relay.
    #[error("direct traffic between spokes {0} and {1} is not allowed; it goes through the hub")]
    NotAllowed(SpokeId, SpokeId),
    /// One spoke is in as many pairs as it may be.
    #[error("spoke {0} is in {1} pairs already (the limit); more peers go through the hub")]
    SpokeFull(SpokeId, usize),
    /// The hub holds as many pairs as it may.
    #[error("the hub holds {0} pairs already (the limit); more peers go through the hub")]
    HubFull(usize),
}

/// What an accepted ask gave.
#[derive(Debug)]
pub enum Asked {
    /// The pair exists: it was marked used.
    Existing,
    /// A new pair with its first epoch, to store (flushed) before anything
    /// about it is sent.
    New(KeyEpoch),
    /// A new pair keyed by a group's epochs: its meta to store (flushed)
    /// before its holders are told.
    NewVia,
}

/// Every pair the hub keys.
#[derive(Debug, Default)]
pub struct PairBook {
    pairs: BTreeMap<PairId, PairSchedule>,
    per_spoke: HashMap<SpokeId, usize>,
    limits: PairLimits,
}

impl PairBook {
    /// An empty book with these limits.
    pub fn new(limits: PairLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// A book of restored schedules (limits apply to what is asked for
    /// from now on).
    pub fn restore(limits: PairLimits, schedules: Vec<PairSchedule>) -> Self {
        let mut book = Self::new(limits);
        for s in schedules {
            book.insert(s);
        }
        book
    }

    /// The limits.
    pub fn limits(&self) -> PairLimits {
        self.limits
    }

    /// Spoke `from` asks for a pair with `peer`; `allowed` is the access
    /// policy's verdict for the two (the caller asks it both ways).
    pub fn ask<R: RngCore + CryptoRng>(
        &mut self,
        from: SpokeId,
        peer: SpokeId,
        allowed: bool,
        now: u64,
        rng: &mut R,
    ) -> Result<Asked, PairRefusal> {
        self.ask_via(from, peer, allowed, None, now, rng)
    }

    /// As [`PairBook::ask`]; a new pair is keyed by group `via`'s epochs
    /// when one is given (both are members of that keyed group).
    pub fn ask_via<R: RngCore + CryptoRng>(
        &mut self,
        from: SpokeId,
        peer: SpokeId,
        allowed: bool,
        via: Option<&str>,
        now: u64,
        rng: &mut R,
    ) -> Result<Asked, PairRefusal> {
        let pair = PairId::new(from, peer).ok_or(PairRefusal::SameSpoke)?;
        if !allowed {
            return Err(PairRefusal::NotAllowed(from, peer));
        }
        if let Some(s) = self.pairs.get_mut(&pair) {
            s.on_used(now);
            return Ok(Asked::Existing);
        }
        if self.pairs.len() >= self.limits.total {
            return Err(PairRefusal::HubFull(self.pairs.len()));
        }
        for spoke in pair.holders() {
            let n = self.count_of(spoke);
            if n >= self.limits.per_spoke {
                return Err(PairRefusal::SpokeFull(spoke, n));
            }
        }
        if let Some(group) = via {
            self.insert(PairSchedule::keyed_by(pair, group, now));
            return Ok(Asked::NewVia);
        }
        let (schedule, first) = PairSchedule::start(pair, now, rng);
        self.insert(schedule);
        Ok(Asked::New(first))
    }

    fn insert(&mut self, s: PairSchedule) {
        let pair = s.pair();
        if self.pairs.insert(pair, s).is_none() {
            for spoke in pair.holders() {
                *self.per_spoke.entry(spoke).or_default() += 1;
            }
        }
    }

    /// How many pairs `spoke` is in.
    pub fn count_of(&self, spoke: SpokeId) -> usize {
        self.per_spoke.get(&spoke).copied().unwrap_or(0)
    }

    /// A pair's schedule.
    pub fn get(&self, pair: PairId) -> Option<&PairSchedule> {
        self.pairs.get(&pair)
    }

    /// A pair's schedule, to tick or to report to.
    pub fn get_mut(&mut self, pair: PairId) -> Option<&mut PairSchedule> {
        self.pairs.get_mut(&pair)
    }

    /// Every pair, in order.
    pub fn pairs(&self) -> impl Iterator<Item = &PairSchedule> {
        self.pairs.values()
    }

    /// The pairs `spoke` is in.
    pub fn pairs_of(&self, spoke: SpokeId) -> Vec<PairId> {
        self.pairs
            .keys()
            .filter(|p| p.has(spoke))
            .copied()
            .collect()
    }

    /// How many pairs there are.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// Ends a pair; the caller erases its keys and tells both holders.
    pub fn end(&mut self, pair: PairId) -> Option<PairSchedule> {
        let s = self.pairs.remove(&pair)?;
        for spoke in pair.holders() {
            if let Some(n) = self.per_spoke.get_mut(&spoke) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_spoke.remove(&spoke);
                }
            }
        }
        Some(s)
    }

    /// Ends every pair `spoke` is in (it was revoked, or its traffic ended).
    pub fn end_spoke(&mut self, spoke: SpokeId) -> Vec<PairSchedule> {
        self.pairs_of(spoke)
            .into_iter()
            .filter_map(|p| self.end(p))
            .collect()
    }

    /// Ends every pair the policy no longer allows (`allowed` answers for
    /// the two spokes of a pair).
    pub fn end_disallowed(&mut self, allowed: impl Fn(PairId) -> bool) -> Vec<PairSchedule> {
        let gone: Vec<PairId> = self
            .pairs
            .keys()
            .filter(|p| !allowed(**p))
            .copied()
            .collect();
        gone.into_iter().filter_map(|p| self.end(p)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn book(per_spoke: usize, total: usize) -> (PairBook, StdRng) {
        let limits = PairLimits {
            per_spoke,
            total,
            idle_secs: 600,
        };
        (PairBook::new(limits), StdRng::seed_from_u64(3))
    }

    #[test]
    fn a_pair_is_made_once_and_asked_for_again_from_either_side() {
        let (mut b, mut rng) = book(4, 10);
        assert!(matches!(b.ask(1, 2, true, 10, &mut rng), Ok(Asked::New(e)) if e.number == 1));
        assert!(matches!(
            b.ask(2, 1, true, 20, &mut rng),
            Ok(Asked::Existing)
        ));
        assert_eq!(b.len(), 1);
        let pair = PairId::new(1, 2).unwrap();
        assert_eq!(b.get(pair).unwrap().meta().last_used, 20);
        assert_eq!((b.count_of(1), b.count_of(2)), (1, 1));
    }

    #[test]
    fn pairs_the_policy_does_not_allow_get_nothing() {
        let (mut b, mut rng) = book(4, 10);
        assert_eq!(
            b.ask(1, 2, false, 10, &mut rng).unwrap_err(),
            PairRefusal::NotAllowed(1, 2)
        );
        assert_eq!(
            b.ask(3, 3, true, 10, &mut rng).unwrap_err(),
            PairRefusal::SameSpoke
        );
        assert!(b.is_empty());
    }

    #[test]
    fn limits_per_spoke_and_in_all_refuse_clearly() {
        let (mut b, mut rng) = book(2, 3);
        b.ask(1, 2, true, 0, &mut rng).unwrap();
        b.ask(1, 3, true, 0, &mut rng).unwrap();
        assert_eq!(
            b.ask(1, 4, true, 0, &mut rng).unwrap_err(),
            PairRefusal::SpokeFull(1, 2)
        );
        assert_eq!(
            b.ask(5, 1, true, 0, &mut rng).unwrap_err(),
            PairRefusal::SpokeFull(1, 2),
            "the full spoke is named, whichever side asks"
        );
        b.ask(4, 5, true, 0, &mut rng).unwrap();
        assert_eq!(
            b.ask(6, 7, true, 0, &mut rng).unwrap_err(),
            PairRefusal::HubFull(3)
        );
        // An existing pair is still served at the limit.
        assert!(matches!(
            b.ask(2, 1, true, 5, &mut rng),
            Ok(Asked::Existing)
        ));
        assert!(!b
            .ask(6, 7, true, 0, &mut rng)
            .unwrap_err()
            .to_string()
            .is_empty());
    }

    #[test]
    fn a_spoke_that_goes_takes_its_pairs_and_frees_the_limits() {
        let (mut b, mut rng) = book(2, 10);
        b.ask(1, 2, true, 0, &mut rng).unwrap();
        b.ask(1, 3, true, 0, &mut rng).unwrap();
        b.ask(2, 3, true, 0, &mut rng).unwrap();
        let gone: Vec<PairId> = b.end_spoke(1).iter().map(|s| s.pair()).collect();
        assert_eq!(
            gone,
            vec![PairId::new(1, 2).unwrap(), PairId::new(1, 3).unwrap()]
        );
        assert_eq!(b.pairs_of(2), vec![PairId::new(2, 3).unwrap()]);
        assert_eq!((b.count_of(1), b.count_of(2), b.count_of(3)), (0, 1, 1));
        assert!(b.ask(1, 4, true, 0, &mut rng).is_ok());
        assert!(b.end(PairId::new(7, 8).unwrap()).is_none());
    }

    #[test]
    fn a_policy_change_ends_the_pairs_it_no_longer_allows() {
        let (mut b, mut rng) = book(8, 10);
        for (x, y) in [(1, 2), (1, 3), (2, 3)] {
            b.ask(x, y, true, 0, &mut rng).unwrap();
        }
        let gone = b.end_disallowed(|p| !p.has(3));
        assert_eq!(gone.len(), 2);
        assert_eq!(b.pairs_of(1), vec![PairId::new(1, 2).unwrap()]);
        assert_eq!(b.count_of(3), 0);
    }

    #[test]
    fn restored_pairs_count_against_the_limits() {
        let mut rng = StdRng::seed_from_u64(4);
        let pair = PairId::new(1, 2).unwrap();
        let (s, _) = PairSchedule::start(pair, 0, &mut rng);
        let limits = PairLimits {
            per_spoke: 1,
            total: 5,
            idle_secs: 60,
        };
        let mut b = PairBook::restore(limits, vec![s]);
        assert_eq!(b.count_of(1), 1);
        assert_eq!(
            b.ask(1, 3, true, 0, &mut rng).unwrap_err(),
            PairRefusal::SpokeFull(1, 1)
        );
    }
}
