//! Invitations: the one-line "card" an admin hands to a new spoke.
//!
//! An invitation carries everything a spoke needs to enrol safely: where the
//! hub is, the hub's public key (pinned: a hub that cannot prove it holds this
//! key is refused), a one-time secret that keys the enrolment handshake, and
//! an expiry. Its text form is `tasuki1-` followed by base64url of the fields
//! and a 4-byte checksum, so a truncated copy-paste is caught with a clear
//! error instead of a confusing handshake failure.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::{PublicKey, SecretKey};

/// Text prefix of every invitation of this format version.
pub const PREFIX: &str = "tasuki1-";

/// Upper bound on an invitation's text, to refuse absurd input early.
const MAX_TEXT: usize = 4096;

/// Identifies an invitation at the hub (not secret).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InvitationId(pub [u8; 16]);

impl InvitationId {
    /// The id a spoke without an invitation (a WireGuard peer an admin
    /// added) is recorded with; no invitation has it.
    pub const NONE: InvitationId = InvitationId([0; 16]);

    /// Draws a fresh random id.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        Self(id)
    }

    /// Short hex form for logs and listings.
    pub fn short(&self) -> String {
        self.0[..6].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl std::fmt::Debug for InvitationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "InvitationId({})", self.short())
    }
}

impl std::fmt::Display for InvitationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.short())
    }
}

/// Why an invitation's text could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvitationError {
    /// The text does not start with [`PREFIX`].
    #[error("not a tasuki invitation: it should start with \"{PREFIX}\"")]
    MissingPrefix,
    /// The text is longer than any invitation.
    #[error("invitation text is too long ({0} characters)")]
    TooLong(usize),
    /// The text after the prefix is not base64url.
    #[error("invitation is damaged: not valid base64url (was it copied whole?)")]
    Encoding,
    /// The checksum does not match: a character was changed or lost.
    #[error("invitation is damaged: checksum mismatch (was it copied whole?)")]
    Checksum,
    /// The fields did not decode (damaged, or made by another version).
    #[error("invitation is damaged: its fields do not decode (or another tasuki version made it); ask the admin for a new one")]
    Fields,
}

/// Everything a spoke needs to enrol with a hub.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invitation {
    /// Name the admin gave the spoke.
    pub name: String,
    /// Where the hub's control (TCP) and data (UDP) ports listen, `HOST:PORT`.
    pub hub_endpoint: String,
    /// The hub's static public key, pinned by the spoke.
    pub hub_key: PublicKey,
    /// Which invitation this is.
    pub id: InvitationId,
    /// One-time secret keying the enrolment handshake.
    pub secret: SecretKey,
    /// Seconds since the Unix epoch after which the hub refuses it.
    pub expires_at: u64,
}

impl Invitation {
    /// The one-line text form.
    pub fn encode(&self) -> String {
        // Serializing plain fields into a Vec cannot fail.
        let mut body = postcard::to_allocvec(self).unwrap_or_default();
        let sum = Sha256::digest(&body);
        body.extend_from_slice(&sum[..4]);
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(body))
    }

    /// Reads the text form, checking its checksum.
    pub fn decode(text: &str) -> Result<Self, InvitationError> {
        let text = text.trim();
        if text.len() > MAX_TEXT {
            return Err(InvitationError::TooLong(text.len()));
        }
        let rest = text
            .strip_prefix(PREFIX)
            .ok_or(InvitationError::MissingPrefix)?;
        let raw = zeroize::Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(rest)
                .map_err(|_| InvitationError::Encoding)?,
        );
        if raw.len() < 4 {
            return Err(InvitationError::Checksum);
        }
        let (body, sum) = raw.split_at(raw.len() - 4);
        if Sha256::digest(body)[..4] != *sum {
            return Err(InvitationError::Checksum);
        }
        crate::codec::from_bytes("invitation", body).map_err(|_| InvitationError::Fields)
    }

    /// True once `now_unix` is past the expiry.
    pub fn is_expired(&self, now_unix: u64) -> bool {
        now_unix >= self.expires_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn sample() -> Invitation {
        let mut rng = StdRng::seed_from_u64(7);
        Invitation {
            name: "laptop-1".into(),
            hub_endpoint: "192.0.2.1:51820".into(),
            hub_key: PublicKey([9; 32]),
            id: InvitationId::generate(&mut rng),
            secret: SecretKey::generate(&mut rng),
            expires_at: 1_000,
        }
    }

    #[test]
    fn round_trip() {
        let inv = sample();
        let text = inv.encode();
        assert!(text.starts_with(PREFIX));
        assert!(!text.contains(char::is_whitespace));
        assert_eq!(Invitation::decode(&format!("  {text}\n")).unwrap(), inv);
    }

    #[test]
    fn damage_is_caught() {
        let text = sample().encode();
        assert_eq!(
            Invitation::decode(&text[PREFIX.len()..]),
            Err(InvitationError::MissingPrefix)
        );
        assert_eq!(
            Invitation::decode(&text[..text.len() - 4]),
            Err(InvitationError::Checksum)
        );
        let mut chars: Vec<char> = text.chars().collect();
        let i = PREFIX.len() + 10;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        let flipped: String = chars.into_iter().collect();
        assert_eq!(Invitation::decode(&flipped), Err(InvitationError::Checksum));
        assert_eq!(
            Invitation::decode("tasuki1-***"),
            Err(InvitationError::Encoding)
        );
        assert_eq!(
            Invitation::decode("tasuki1-"),
            Err(InvitationError::Checksum)
        );
        let long = format!("{PREFIX}{}", "A".repeat(MAX_TEXT));
        assert!(matches!(
            Invitation::decode(&long),
            Err(InvitationError::TooLong(_))
        ));
    }

    #[test]
    fn valid_checksum_over_garbage_fields_is_an_error() {
        let body = vec![0xffu8; 20];
        let mut raw = body.clone();
        raw.extend_from_slice(&Sha256::digest(&body)[..4]);
        let text = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(raw));
        assert!(matches!(
            Invitation::decode(&text),
            Err(InvitationError::Fields)
        ));
    }

    #[test]
    fn expiry() {
        let inv = sample();
        assert!(!inv.is_expired(999));
        assert!(inv.is_expired(1_000));
    }
}
