//! Values at rest in a shared store (etcd) sealed under the cluster's
//! storage key: whoever reads etcd's data directories, its backups or its
//! wire sees no epoch key, no identity and no record in plaintext.
//!
//! A sealed value is `version ‖ nonce ‖ XChaCha20-Poly1305(value)` with the
//! record's full store key as associated data, so a value moved to another
//! key (or another cluster's prefix) fails to open instead of being read as
//! the wrong record. The nonce is drawn at random for each write (24 bytes:
//! no two writes under one key ever share one); the caller passes it in.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::keys::SecretKey;

/// The layout version written in front of every sealed value.
const VERSION: u8 = 1;
/// Bytes of the random nonce.
pub const NONCE_LEN: usize = 24;
/// Bytes a sealed value adds to its plaintext.
pub const OVERHEAD: usize = 1 + NONCE_LEN + 16;

/// Why a stored value could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreSealError {
    /// Too short, or a layout this version does not know.
    #[error("the stored value is not a sealed record (layout {0:?}, {1} bytes)")]
    Layout(Option<u8>, usize),
    /// Authentication failed: another cluster's key, a value moved from
    /// another record, or damage.
    #[error(
        "the stored value does not open under this cluster's storage key (another cluster's key, a \
         value moved from another record, or damage)"
    )]
    Open,
}

/// Seals `value` for the record at `store_key`.
pub fn seal(
    storage_key: &SecretKey,
    store_key: &[u8],
    value: &[u8],
    nonce: [u8; NONCE_LEN],
) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(storage_key.expose().into());
    let mut out = Vec::with_capacity(OVERHEAD + value.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    // Encryption with a valid key and nonce cannot fail for a value this
    // size; an empty box would fail to open, never be read as a record.
    let body = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: value,
                aad: store_key,
            },
        )
        .unwrap_or_default();
    out.extend_from_slice(&body);
    out
}

/// Opens a value sealed for the record at `store_key`.
pub fn open(
    storage_key: &SecretKey,
    store_key: &[u8],
    sealed: &[u8],
) -> Result<zeroize::Zeroizing<Vec<u8>>, StoreSealError> {
    if sealed.len() < OVERHEAD || sealed[0] != VERSION {
        return Err(StoreSealError::Layout(
            sealed.first().copied(),
            sealed.len(),
        ));
    }
    let (nonce, body) = sealed[1..].split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(storage_key.expose().into());
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: body,
                aad: store_key,
            },
        )
        .map(zeroize::Zeroizing::new)
        .map_err(|_| StoreSealError::Open)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn sealed_values_open_only_where_they_were_written() {
        let mut rng = StdRng::seed_from_u64(5);
        let key = SecretKey::generate(&mut rng);
        let secret = [0x5au8; 32];
        let sealed = seal(&key, b"/tasuki/vault/3-7", &secret, [1; NONCE_LEN]);
        assert_eq!(sealed.len(), OVERHEAD + secret.len());
        assert!(
            !sealed.windows(8).any(|w| w == &secret[..8]),
            "plaintext visible"
        );
        assert_eq!(
            open(&key, b"/tasuki/vault/3-7", &sealed)
                .unwrap()
                .as_slice(),
            &secret
        );
        // Moved to another record, another cluster's key, damage, garbage.
        assert_eq!(
            open(&key, b"/tasuki/vault/3-8", &sealed),
            Err(StoreSealError::Open)
        );
        let other = SecretKey::generate(&mut rng);
        assert_eq!(
            open(&other, b"/tasuki/vault/3-7", &sealed),
            Err(StoreSealError::Open)
        );
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(
            open(&key, b"/tasuki/vault/3-7", &bad),
            Err(StoreSealError::Open)
        );
        assert_eq!(
            open(&key, b"k", b"plain json"),
            Err(StoreSealError::Layout(Some(b'p'), 10))
        );
        assert_eq!(open(&key, b"k", b""), Err(StoreSealError::Layout(None, 0)));
        // Fresh nonces: the same value sealed twice never looks the same.
        assert_ne!(
            seal(&key, b"k", &secret, [1; NONCE_LEN]),
            seal(&key, b"k", &secret, [2; NONCE_LEN])
        );
    }
}
