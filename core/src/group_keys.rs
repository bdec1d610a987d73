//! Keys a keyed group's members compute from the group's epoch (claim 11,
//! DESIGN.md "Key scopes"): the preshared key of two members' direct
//! session, and the key that seals the group's multicast. Only a holder of
//! the group epoch can compute them, every pair's key differs, and each
//! changes with the epoch: one group rotation (N deliveries) re-keys all
//! N(N−1)/2 member pairs.
//!
//! HKDF-SHA256 (RFC 5869) over the group key, with the group's name, the
//! epoch's number and, for a pair, both members' static public keys (in
//! byte order, so both ends compute the same key) as its info.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::keys::{KeyEpoch, PublicKey, SecretKey};

/// Separates tasuki's group keys from any other use of HKDF on the key.
const SALT: &[u8] = b"tasuki group keys v1";

/// The key two members `a` and `b` of `group` use as the preshared key of
/// their direct session under the group's epoch `epoch` (numbered as the
/// group epoch). The order of `a` and `b` does not matter.
pub fn pair_key(group: &str, epoch: &KeyEpoch, a: &PublicKey, b: &PublicKey) -> KeyEpoch {
    let (low, high) = if a.0 <= b.0 { (a, b) } else { (b, a) };
    derive(group, epoch, b"pair", &[&low.0, &high.0])
}

/// The key that seals `group`'s multicast under its epoch `epoch`.
pub fn multicast_key(group: &str, epoch: &KeyEpoch) -> KeyEpoch {
    derive(group, epoch, b"multicast", &[])
}

/// Which keyed group two members use when they share several (both ends
/// compute it from the same names): the one whose name sorts first, byte
/// by byte. `None` when they share none: a pair epoch keys them instead.
pub fn choose_group<'a>(shared: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    shared.into_iter().min()
}

fn derive(group: &str, epoch: &KeyEpoch, purpose: &[u8], keys: &[&[u8; 32]]) -> KeyEpoch {
    let hk = Hkdf::<Sha256>::new(Some(SALT), epoch.key.expose());
    let mut info = Vec::with_capacity(32 + group.len() + 64);
    info.extend_from_slice(purpose);
    info.push(0);
    // The name's length first: "ab" + "c…" never reads as "a" + "bc…".
    info.extend_from_slice(&(group.len() as u64).to_be_bytes());
    info.extend_from_slice(group.as_bytes());
    info.extend_from_slice(&epoch.number.to_be_bytes());
    for k in keys {
        info.extend_from_slice(&k[..]);
    }
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's limit (255 × 32): cannot fail.
    if hk.expand(&info, &mut okm[..]).is_err() {
        unreachable!("HKDF-SHA256 gives 32 bytes");
    }
    KeyEpoch {
        number: epoch.number,
        key: SecretKey::from_bytes(*okm),
        suite: epoch.suite,
        issued_at: epoch.issued_at,
    }
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, SeedableRng};

    use super::*;
    use crate::keys::StaticKey;

    fn keys(n: usize) -> Vec<PublicKey> {
        let mut rng = StdRng::seed_from_u64(3);
        (0..n)
            .map(|_| StaticKey::generate(&mut rng).public())
            .collect()
    }

    #[test]
    fn both_members_compute_the_same_key_and_every_pair_differs() {
        let mut rng = StdRng::seed_from_u64(1);
        let epoch = KeyEpoch::issue(4, 0, &mut rng);
        let k = keys(4);
        assert_eq!(
            pair_key("staff", &epoch, &k[0], &k[1]).key,
            pair_key("staff", &epoch, &k[1], &k[0]).key
        );
        let mut seen = Vec::new();
        for i in 0..4 {
            for j in i + 1..4 {
                let key = pair_key("staff", &epoch, &k[i], &k[j]);
                assert_eq!(key.number, 4);
                assert!(!seen.contains(&key.key), "pair {i}-{j} repeats a key");
                assert_ne!(&key.key, &epoch.key, "never the group key itself");
                seen.push(key.key);
            }
        }
        assert!(!seen.contains(&multicast_key("staff", &epoch).key));
    }

    #[test]
    fn the_key_changes_with_the_epoch_and_the_group() {
        let mut rng = StdRng::seed_from_u64(2);
        let k = keys(2);
        let e1 = KeyEpoch::issue(1, 0, &mut rng);
        let e2 = KeyEpoch::issue(2, 0, &mut rng);
        let same_key_next_number = KeyEpoch {
            number: 2,
            key: e1.key.clone(),
            ..e1.clone()
        };
        let base = pair_key("staff", &e1, &k[0], &k[1]).key;
        assert_ne!(base, pair_key("staff", &e2, &k[0], &k[1]).key);
        assert_ne!(
            base,
            pair_key("staff", &same_key_next_number, &k[0], &k[1]).key
        );
        assert_ne!(base, pair_key("staffs", &e1, &k[0], &k[1]).key);
        assert_ne!(
            multicast_key("staff", &e1).key,
            multicast_key("staff", &e2).key
        );
    }

    #[test]
    fn members_of_several_keyed_groups_pick_the_first_name_on_both_sides() {
        assert_eq!(choose_group(["ops", "dev", "staff"]), Some("dev"));
        assert_eq!(choose_group(["staff", "ops", "dev"]), Some("dev"));
        assert_eq!(choose_group(Vec::<&str>::new()), None);
    }
}
