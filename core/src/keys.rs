//! Key types: identity keys, throw-away epoch keys and their metadata.
//!
//! Secret bytes live in [`zeroize::Zeroizing`] buffers, print as `[redacted]`
//! and compare in constant time. Nothing in this module logs.

use base64::{engine::general_purpose::STANDARD, Engine};
use boringtun::x25519;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Errors reading a key from text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// Not valid base64.
    #[error("key is not valid base64")]
    Base64,
    /// Decoded to the wrong number of bytes.
    #[error("key has {0} bytes, expected 32")]
    Length(usize),
}

fn decode32(text: &str) -> Result<Zeroizing<[u8; 32]>, KeyError> {
    let bytes = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| KeyError::Base64)?);
    if bytes.len() != 32 {
        return Err(KeyError::Length(bytes.len()));
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&bytes);
    Ok(out)
}

/// A long-lived X25519 identity key (the hub's or a spoke's).
///
/// The same key authenticates the Noise control channel and the WireGuard
/// data plane. Its private half never leaves the machine that made it.
pub struct StaticKey(x25519::StaticSecret);

impl StaticKey {
    /// Generates a fresh key from `rng`.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(bytes.as_mut());
        Self(x25519::StaticSecret::from(*bytes))
    }

    /// Reads a key written by [`StaticKey::to_base64`].
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        Ok(Self(x25519::StaticSecret::from(*decode32(text)?)))
    }

    /// The base64 text form, for the key file only.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(self.0.as_bytes()))
    }

    /// The private bytes, for handing to snow.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// A copy of the secret in boringtun's type, for a new `Tunn`.
    pub fn to_x25519(&self) -> x25519::StaticSecret {
        self.0.clone()
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        PublicKey(x25519::PublicKey::from(&self.0).to_bytes())
    }
}

impl std::fmt::Debug for StaticKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticKey(public {})", self.public())
    }
}

/// An X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Reads the base64 form.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        Ok(Self(*decode32(text)?))
    }

    /// The base64 form (as WireGuard prints keys).
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// A short, stable fingerprint for humans: `SHA256:` and 16 hex digits.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0);
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("SHA256:{hex}")
    }

    /// boringtun's type, for `Tunn::new`.
    pub fn to_x25519(&self) -> x25519::PublicKey {
        x25519::PublicKey::from(self.0)
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// 32 secret bytes: a throw-away tunnel key or a one-time invitation secret.
///
/// Zeroized on drop, redacted in `Debug`, compared in constant time.
#[derive(Clone, Serialize, Deserialize)]
pub struct SecretKey(Zeroizing<[u8; 32]>);

impl SecretKey {
    /// Draws fresh random bytes.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(key.as_mut());
        Self(key)
    }

    /// Wraps existing bytes (the caller's copy should be zeroized by the caller).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The secret bytes.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    /// Reads the base64 form of a key file (a cluster's storage key).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        Ok(Self(decode32(text)?))
    }

    /// The base64 form, for a key file only.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(STANDARD.encode(*self.0))
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&*other.0).into()
    }
}
impl Eq for SecretKey {}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

/// The cipher system an epoch's key is for (patent: "cipher system", 11).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CipherSuite {
    /// WireGuard (Noise_IKpsk2, ChaCha20-Poly1305); the key is its preshared key.
    WireGuardPsk,
}

/// One key epoch of a link: a fresh random key issued by the hub, used as the
/// WireGuard preshared key of that link while the epoch lasts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyEpoch {
    /// Sequence number, starting at 1 for a new link.
    pub number: u64,
    /// The throw-away key.
    pub key: SecretKey,
    /// Which cipher system the key is for.
    pub suite: CipherSuite,
    /// When the hub issued it (seconds since the Unix epoch).
    pub issued_at: u64,
}

/// An epoch without its key: what the stores keep (the key lives in a file
/// of its own that can really be erased).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Sequence number.
    pub number: u64,
    /// Cipher system.
    pub suite: CipherSuite,
    /// Issue time (Unix seconds).
    pub issued_at: u64,
}

impl KeyEpoch {
    /// The record to store, without the key.
    pub fn record(&self) -> EpochRecord {
        EpochRecord {
            number: self.number,
            suite: self.suite,
            issued_at: self.issued_at,
        }
    }

    /// Joins a stored record with its key.
    pub fn from_record(record: EpochRecord, key: SecretKey) -> Self {
        Self {
            number: record.number,
            key,
            suite: record.suite,
            issued_at: record.issued_at,
        }
    }

    /// Issues a fresh epoch.
    pub fn issue<R: RngCore + CryptoRng>(number: u64, now_unix: u64, rng: &mut R) -> Self {
        Self {
            number,
            key: SecretKey::generate(rng),
            suite: CipherSuite::WireGuardPsk,
            issued_at: now_unix,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn static_key_text_round_trip() {
        let mut rng = StdRng::seed_from_u64(1);
        let key = StaticKey::generate(&mut rng);
        let back = StaticKey::from_base64(&key.to_base64()).unwrap();
        assert_eq!(key.public(), back.public());
        assert_eq!(
            StaticKey::from_base64("nope!").unwrap_err(),
            KeyError::Base64
        );
        assert_eq!(
            StaticKey::from_base64("AAAA").unwrap_err(),
            KeyError::Length(3)
        );
    }

    #[test]
    fn secrets_never_print() {
        let mut rng = StdRng::seed_from_u64(2);
        let epoch = KeyEpoch::issue(1, 0, &mut rng);
        let shown = format!("{epoch:?}");
        assert!(shown.contains("redacted"));
        let hex: String = epoch
            .key
            .expose()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!shown.contains(&hex));
    }

    #[test]
    fn secret_equality() {
        let a = SecretKey::from_bytes([1; 32]);
        assert_eq!(a, SecretKey::from_bytes([1; 32]));
        assert_ne!(a, SecretKey::from_bytes([2; 32]));
    }

    #[test]
    fn fingerprint_is_stable() {
        let k = PublicKey([0; 32]);
        assert_eq!(k.fingerprint(), k.fingerprint());
        assert!(k.fingerprint().starts_with("SHA256:"));
        assert_ne!(k.fingerprint(), PublicKey([1; 32]).fingerprint());
    }
}
