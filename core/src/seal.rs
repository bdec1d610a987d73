//! Crossed delivery (patent fig. 7): key k travels sealed under key k−1.
//!
//! The sealed box is ChaCha20-Poly1305 with key k−1, a nonce made of the
//! epoch number k (each key k−1 seals exactly one plaintext, so a re-sent box
//! is byte-identical and the nonce is never reused for another plaintext),
//! and the link id and both epoch numbers as associated data. Whoever holds
//! only the control channel cannot open it; whoever holds only key k−1 never
//! sees it (it also travels inside the Noise channel).

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, Nonce as AeadNonce, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use zeroize::Zeroizing;

use crate::keys::KeyEpoch;

/// Why a sealed key could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealError {
    /// The sealing key is not epoch k−1 of the box's epoch.
    #[error("key {sealed} cannot be sealed under epoch {under}: crossed delivery needs epoch k−1")]
    NotPredecessor {
        /// Epoch being delivered.
        sealed: u64,
        /// Epoch it was sealed under.
        under: u64,
    },
    /// Authentication failed: wrong key, wrong link, or tampering.
    #[error("sealed key for epoch {0} failed to open (wrong previous key or tampered)")]
    Open(u64),
    /// The box opened but did not hold the announced epoch.
    #[error("sealed key does not hold epoch {0}")]
    Mismatch(u64),
}

fn nonce(epoch: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&epoch.to_be_bytes());
    Nonce::from(n)
}

fn aad(link: u32, under: u64, sealed: u64) -> Vec<u8> {
    let mut a = b"tasuki crossed v1".to_vec();
    a.extend_from_slice(&link.to_be_bytes());
    a.extend_from_slice(&under.to_be_bytes());
    a.extend_from_slice(&sealed.to_be_bytes());
    a
}

/// Seals `epoch` under `previous` (which must be epoch − 1) for link `link`.
pub fn seal(link: u32, previous: &KeyEpoch, epoch: &KeyEpoch) -> Result<Vec<u8>, SealError> {
    if previous.number.checked_add(1) != Some(epoch.number) {
        return Err(SealError::NotPredecessor {
            sealed: epoch.number,
            under: previous.number,
        });
    }
    let cipher = ChaCha20Poly1305::new(Key::from_slice(previous.key.expose()));
    let plain =
        Zeroizing::new(crate::codec::to_bytes(epoch).map_err(|_| SealError::Open(epoch.number))?);
    cipher
        .encrypt(
            &nonce(epoch.number),
            Payload {
                msg: &plain,
                aad: &aad(link, previous.number, epoch.number),
            },
        )
        .map_err(|_| SealError::Open(epoch.number))
}

/// Opens an AEAD box that holds epoch `number`, and checks that it does:
/// the crossed box here and a pair's box ([`crate::pair::open_pair`]).
pub(crate) fn open_epoch<C: Aead + AeadCore>(
    cipher: &C,
    nonce: &AeadNonce<C>,
    body: &[u8],
    aad: &[u8],
    number: u64,
) -> Result<KeyEpoch, SealError> {
    let plain = Zeroizing::new(
        cipher
            .decrypt(nonce, Payload { msg: body, aad })
            .map_err(|_| SealError::Open(number))?,
    );
    let epoch: KeyEpoch = crate::codec::from_bytes("sealed epoch", &plain)
        .map_err(|_| SealError::Mismatch(number))?;
    if epoch.number != number {
        return Err(SealError::Mismatch(number));
    }
    Ok(epoch)
}

/// Opens a box for epoch `number` with `previous` (epoch `number` − 1).
pub fn open(
    link: u32,
    previous: &KeyEpoch,
    number: u64,
    sealed: &[u8],
) -> Result<KeyEpoch, SealError> {
    if previous.number.checked_add(1) != Some(number) {
        return Err(SealError::NotPredecessor {
            sealed: number,
            under: previous.number,
        });
    }
    let cipher = ChaCha20Poly1305::new(Key::from_slice(previous.key.expose()));
    let aad = aad(link, previous.number, number);
    open_epoch(&cipher, &nonce(number), sealed, &aad, number)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn crossed_round_trip_and_refusals() {
        let mut rng = StdRng::seed_from_u64(21);
        let e1 = KeyEpoch::issue(1, 0, &mut rng);
        let e2 = KeyEpoch::issue(2, 0, &mut rng);
        let e3 = KeyEpoch::issue(3, 0, &mut rng);
        let sealed = seal(7, &e1, &e2).unwrap();
        assert_eq!(open(7, &e1, 2, &sealed).unwrap(), e2);
        // Deterministic: a re-sent box is identical (no nonce reuse on new plaintext).
        assert_eq!(seal(7, &e1, &e2).unwrap(), sealed);
        // The key bytes are not visible in the box.
        assert!(!sealed.windows(32).any(|w| w == e2.key.expose()));
        // Wrong link, wrong key, wrong number, tampering.
        assert_eq!(open(8, &e1, 2, &sealed), Err(SealError::Open(2)));
        let wrong = KeyEpoch::issue(1, 0, &mut rng);
        assert_eq!(open(7, &wrong, 2, &sealed), Err(SealError::Open(2)));
        assert!(matches!(
            open(7, &e2, 2, &sealed),
            Err(SealError::NotPredecessor { .. })
        ));
        let mut bad = sealed.clone();
        bad[0] ^= 1;
        assert_eq!(open(7, &e1, 2, &bad), Err(SealError::Open(2)));
        assert!(matches!(
            seal(7, &e1, &e3),
            Err(SealError::NotPredecessor { .. })
        ));
        assert_eq!(open(7, &e1, 2, &[]), Err(SealError::Open(2)));
    }
}
