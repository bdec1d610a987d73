//! Pair key epochs (direct mode, patent claim 10): the key station hands
//! two spokes the key of their direct session. This module holds what both
//! sides need to agree on: the pair's name and how a pair epoch travels to
//! each holder — sealed under that holder's current link epoch, inside its
//! Noise channel (crossed delivery, claim 7).
//!
//! One link epoch seals the epochs of many pairs (and a pair whose epochs
//! ended may later start again at number 1), so the box cannot take its
//! nonce from the epoch number as [`crate::seal`] does: each box carries a
//! random 192-bit XChaCha20 nonce of its own.

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::keys::KeyEpoch;
use crate::routing::SpokeId;
use crate::seal::SealError;

/// Two spokes that may talk directly: the lower id first, so both sides
/// and the hub name a pair the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawPairId")]
pub struct PairId {
    low: SpokeId,
    high: SpokeId,
}

/// A pair's name as it comes off the wire, checked before it is a [`PairId`].
#[derive(Deserialize)]
struct RawPairId {
    low: SpokeId,
    high: SpokeId,
}

impl TryFrom<RawPairId> for PairId {
    type Error = &'static str;

    fn try_from(raw: RawPairId) -> Result<Self, Self::Error> {
        match PairId::new(raw.low, raw.high) {
            Some(p) if p.low == raw.low => Ok(p),
            _ => Err("a pair names two different spokes, the lower id first"),
        }
    }
}

impl PairId {
    /// The pair of `x` and `y`; `None` when they are the same spoke.
    pub fn new(x: SpokeId, y: SpokeId) -> Option<Self> {
        match x.cmp(&y) {
            std::cmp::Ordering::Less => Some(Self { low: x, high: y }),
            std::cmp::Ordering::Greater => Some(Self { low: y, high: x }),
            std::cmp::Ordering::Equal => None,
        }
    }

    /// Both spokes, lower id first.
    pub fn holders(self) -> [SpokeId; 2] {
        [self.low, self.high]
    }

    /// Whether `spoke` is one of the two.
    pub fn has(self, spoke: SpokeId) -> bool {
        self.low == spoke || self.high == spoke
    }

    /// The other spoke of the pair, seen from `me`; `None` when `me` is
    /// not in it.
    pub fn peer_of(self, me: SpokeId) -> Option<SpokeId> {
        if me == self.low {
            Some(self.high)
        } else if me == self.high {
            Some(self.low)
        } else {
            None
        }
    }
}

impl std::fmt::Display for PairId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

/// The pair's name in its sealed boxes' associated data.
fn scope(pair: PairId) -> Vec<u8> {
    let mut a = b"tasuki pair v1".to_vec();
    a.extend_from_slice(&pair.low.to_be_bytes());
    a.extend_from_slice(&pair.high.to_be_bytes());
    a
}

/// Seals pair epoch `epoch` of `pair` for one holder, under `link`, the
/// holder's current link epoch: the box opens only with that link key,
/// for that pair and that epoch number.
pub fn seal_pair<R: RngCore + CryptoRng>(
    link: &KeyEpoch,
    pair: PairId,
    epoch: &KeyEpoch,
    rng: &mut R,
) -> Result<Vec<u8>, SealError> {
    crate::scope_seal::seal_for_holder(link, &scope(pair), epoch, rng)
}

/// Opens a sealed pair epoch `number` of `pair` with `link`, the holder's
/// link epoch it names.
pub fn open_pair(
    link: &KeyEpoch,
    pair: PairId,
    number: u64,
    sealed: &[u8],
) -> Result<KeyEpoch, SealError> {
    crate::scope_seal::open_as_holder(link, &scope(pair), number, sealed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scope_seal::NONCE_LEN;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn a_pair_has_one_name_from_either_side() {
        let p = PairId::new(9, 4).unwrap();
        assert_eq!(Some(p), PairId::new(4, 9));
        assert_eq!(p.holders(), [4, 9]);
        assert_eq!(p.peer_of(4), Some(9));
        assert_eq!(p.peer_of(9), Some(4));
        assert_eq!(p.peer_of(5), None);
        assert!(p.has(4) && p.has(9) && !p.has(5));
        assert_eq!(PairId::new(3, 3), None, "a spoke is no pair with itself");
        let wire = crate::codec::to_bytes(&p).unwrap();
        assert_eq!(
            crate::codec::from_bytes::<PairId>("pair", &wire).unwrap(),
            p
        );
        let bad = crate::codec::to_bytes(&(9u32, 4u32)).unwrap();
        assert!(
            crate::codec::from_bytes::<PairId>("pair", &bad).is_err(),
            "out of order"
        );
        let same = crate::codec::to_bytes(&(3u32, 3u32)).unwrap();
        assert!(
            crate::codec::from_bytes::<PairId>("pair", &same).is_err(),
            "one spoke twice"
        );
        assert_eq!(p.to_string(), "4-9");
    }

    #[test]
    fn a_pair_epoch_opens_only_for_its_holder_pair_and_number() {
        let mut rng = StdRng::seed_from_u64(5);
        let link_a = KeyEpoch::issue(7, 0, &mut rng);
        let link_b = KeyEpoch::issue(7, 0, &mut rng);
        let pair = PairId::new(1, 2).unwrap();
        let other = PairId::new(1, 3).unwrap();
        let epoch = KeyEpoch::issue(1, 0, &mut rng);
        let sealed = seal_pair(&link_a, pair, &epoch, &mut rng).unwrap();
        assert_eq!(open_pair(&link_a, pair, 1, &sealed).unwrap(), epoch);
        // The key bytes are not visible in the box.
        assert!(!sealed.windows(32).any(|w| w == epoch.key.expose()));
        // Another holder's link key, another pair, another number, another
        // link epoch number, tampering, a short box: all refused.
        assert_eq!(
            open_pair(&link_b, pair, 1, &sealed),
            Err(SealError::Open(1))
        );
        assert_eq!(
            open_pair(&link_a, other, 1, &sealed),
            Err(SealError::Open(1))
        );
        assert_eq!(
            open_pair(&link_a, pair, 2, &sealed),
            Err(SealError::Open(2))
        );
        let mut renumbered = link_a.clone();
        renumbered.number = 8;
        assert_eq!(
            open_pair(&renumbered, pair, 1, &sealed),
            Err(SealError::Open(1))
        );
        for i in [0, NONCE_LEN, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(open_pair(&link_a, pair, 1, &bad), Err(SealError::Open(1)));
        }
        assert_eq!(
            open_pair(&link_a, pair, 1, &sealed[..10]),
            Err(SealError::Open(1))
        );
    }

    #[test]
    fn one_link_key_seals_many_pair_epochs_with_fresh_nonces() {
        let mut rng = StdRng::seed_from_u64(6);
        let link = KeyEpoch::issue(3, 0, &mut rng);
        let pair = PairId::new(1, 2).unwrap();
        // The same pair's epoch 1, issued twice (the pair ended and began
        // again): two different keys under one link key, two nonces.
        let first = KeyEpoch::issue(1, 0, &mut rng);
        let again = KeyEpoch::issue(1, 0, &mut rng);
        let a = seal_pair(&link, pair, &first, &mut rng).unwrap();
        let b = seal_pair(&link, pair, &again, &mut rng).unwrap();
        assert_ne!(a[..NONCE_LEN], b[..NONCE_LEN]);
        assert_eq!(open_pair(&link, pair, 1, &a).unwrap(), first);
        assert_eq!(open_pair(&link, pair, 1, &b).unwrap(), again);
    }
}
