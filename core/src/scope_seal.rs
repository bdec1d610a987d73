//! Sealing an epoch of a key scope other than a link (a pair's, a group's)
//! for one holder: XChaCha20-Poly1305 under the holder's current link
//! epoch, with a random nonce (the box is sealed anew for every holder and
//! every re-send) and, as associated data, the scope's name and both epoch
//! numbers: the box opens only with that link key, for that scope and that
//! epoch number. It travels inside the holder's Noise channel as well.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::keys::KeyEpoch;
use crate::seal::SealError;

/// Length of the random nonce at the front of every sealed box.
pub(crate) const NONCE_LEN: usize = 24;

fn aad(scope: &[u8], under: u64, sealed: u64) -> Vec<u8> {
    let mut a = scope.to_vec();
    a.extend_from_slice(&under.to_be_bytes());
    a.extend_from_slice(&sealed.to_be_bytes());
    a
}

/// Seals `epoch` of the scope named `scope` under `link`.
pub fn seal_for_holder<R: RngCore + CryptoRng>(
    link: &KeyEpoch,
    scope: &[u8],
    epoch: &KeyEpoch,
    rng: &mut R,
) -> Result<Vec<u8>, SealError> {
    let cipher = XChaCha20Poly1305::new(Key::from_slice(link.key.expose()));
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill_bytes(&mut nonce);
    let plain =
        Zeroizing::new(crate::codec::to_bytes(epoch).map_err(|_| SealError::Open(epoch.number))?);
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: &aad(scope, link.number, epoch.number),
            },
        )
        .map_err(|_| SealError::Open(epoch.number))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// Opens epoch `number` of the scope named `scope`, sealed under `link`.
pub fn open_as_holder(
    link: &KeyEpoch,
    scope: &[u8],
    number: u64,
    sealed: &[u8],
) -> Result<KeyEpoch, SealError> {
    if sealed.len() < NONCE_LEN {
        return Err(SealError::Open(number));
    }
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let cipher = XChaCha20Poly1305::new(Key::from_slice(link.key.expose()));
    let aad = aad(scope, link.number, number);
    crate::seal::open_epoch(&cipher, XNonce::from_slice(nonce), body, &aad, number)
}
