//! Stock WireGuard apps as spokes: the configuration an admin hands such a
//! peer (wg-quick / WireGuard-app format) and what the admin sees of it.
//!
//! A WireGuard peer has no control channel, so it cannot take part in the
//! key commands: its key epoch is the `PresharedKey` of the configuration
//! printed here, and it changes only when an admin prints the next one.

use base64::Engine as _;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::keys::{KeyEpoch, PublicKey, StaticKey};

/// How long a WireGuard peer's epoch lasts when its spoke has no policy
/// override: the peer follows a rotation only when a person gives it the
/// new configuration, so its keys end by a long interval (or an admin).
pub const DEFAULT_INTERVAL_SECS: u64 = 30 * 86_400;

/// How long before its end `status` starts warning about a peer's epoch
/// (at most; a quarter of a shorter interval).
pub const WARN_BEFORE_SECS: u64 = 7 * 86_400;

/// An epoch with no end is warned about once it is this old.
pub const MAX_UNENDING_AGE_SECS: u64 = 90 * 86_400;

/// Everything a WireGuard peer's configuration says.
pub struct PeerConfig<'a> {
    /// The peer's name at the hub (a comment in the file).
    pub name: &'a str,
    /// Its tunnel address with the tunnel network's prefix.
    pub address: Ipv4Net,
    /// The peer's private key, when the hub drew it (`--generate-key`);
    /// `None` when the device's app made its own, which never leaves it.
    pub private_key: Option<&'a StaticKey>,
    /// The hub's static public key.
    pub hub_key: PublicKey,
    /// The epoch whose key is the preshared key.
    pub epoch: &'a KeyEpoch,
    /// The hub's `HOST:PORT`.
    pub endpoint: &'a str,
    /// What the peer routes into the tunnel: the tunnel network and the
    /// networks behind the hub.
    pub allowed_ips: Vec<Ipv4Net>,
    /// Persistent keepalive, seconds (0: off).
    pub keepalive_secs: u16,
    /// The tunnel MTU.
    pub mtu: u16,
}

impl PeerConfig<'_> {
    /// The configuration file's text (it holds the preshared key, and the
    /// private key if the hub drew it: zeroized when dropped).
    pub fn render(&self) -> Zeroizing<String> {
        let mut out = Zeroizing::new(String::with_capacity(512));
        let b64 = base64::engine::general_purpose::STANDARD;
        let psk = Zeroizing::new(b64.encode(self.epoch.key.expose()));
        let allowed: Vec<String> = self.allowed_ips.iter().map(ToString::to_string).collect();
        let line = |out: &mut Zeroizing<String>, text: &str| {
            out.push_str(text);
            out.push('\n');
        };
        line(
            &mut out,
            &format!(
                "# tasuki: WireGuard peer {:?}, key epoch {}",
                self.name, self.epoch.number
            ),
        );
        line(&mut out, "[Interface]");
        match self.private_key {
            Some(key) => line(&mut out, &format!("PrivateKey = {}", key.to_base64().as_str())),
            None => line(
                &mut out,
                "# PrivateKey: the one this device's WireGuard app generated (it never leaves the device)",
            ),
        }
        line(&mut out, &format!("Address = {}", self.address));
        line(&mut out, &format!("MTU = {}", self.mtu));
        line(&mut out, "");
        line(&mut out, "[Peer]");
        line(
            &mut out,
            &format!("# the tasuki hub, key {}", self.hub_key.fingerprint()),
        );
        line(
            &mut out,
            &format!("PublicKey = {}", self.hub_key.to_base64()),
        );
        line(&mut out, &format!("PresharedKey = {}", psk.as_str()));
        line(&mut out, &format!("Endpoint = {}", self.endpoint));
        line(&mut out, &format!("AllowedIPs = {}", allowed.join(", ")));
        if self.keepalive_secs > 0 {
            line(
                &mut out,
                &format!("PersistentKeepalive = {}", self.keepalive_secs),
            );
        }
        out
    }
}

/// A WireGuard peer's configuration as the admin socket returns it
/// (`tasuki-hub spoke invite --wireguard` and `spoke config`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WireGuardConfigView {
    /// The peer's name.
    pub name: String,
    /// Its tunnel address.
    pub tunnel_addr: String,
    /// The epoch whose key the configuration holds.
    pub epoch: u64,
    /// When that epoch was issued (Unix seconds).
    pub issued_at: u64,
    /// When the hub ends it by itself (Unix seconds), if it ever does.
    pub ends_at: Option<u64>,
    /// The configuration file (secret: it holds the preshared key).
    pub config: Zeroizing<String>,
    /// Whether `config` holds the peer's private key (drawn by the hub
    /// for this one reply and never stored).
    pub includes_private_key: bool,
}

/// When a WireGuard peer's epoch issued at `issued_at` ends under
/// `interval_secs`, and whether status should warn about it at `now`
/// (with the words to say).
pub fn epoch_warning(issued_at: u64, interval_secs: Option<u64>, now: u64) -> Option<String> {
    let age = now.saturating_sub(issued_at);
    match interval_secs {
        Some(interval) => {
            let window = WARN_BEFORE_SECS.min(interval / 4);
            let left = interval.saturating_sub(age);
            (left <= window).then(|| format!("its key epoch ends in {}", days_or_hours(left)))
        }
        None => (age >= MAX_UNENDING_AGE_SECS).then(|| {
            format!(
                "its key epoch is {} old and never ends by itself",
                days_or_hours(age)
            )
        }),
    }
}

/// `secs` in whole days, or hours under two days.
fn days_or_hours(secs: u64) -> String {
    if secs >= 2 * 86_400 {
        format!("{} days", secs / 86_400)
    } else {
        format!("{} hours", secs / 3_600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn config_text(private_key: Option<&StaticKey>) -> String {
        let mut rng = StdRng::seed_from_u64(41);
        let hub = StaticKey::generate(&mut rng).public();
        let epoch = KeyEpoch::issue(3, 0, &mut rng);
        let text = PeerConfig {
            name: "phone",
            address: "10.77.0.5/24".parse().unwrap(),
            private_key,
            hub_key: hub,
            epoch: &epoch,
            endpoint: "vpn.example.com:51820",
            allowed_ips: vec![
                "10.77.0.0/24".parse().unwrap(),
                "192.168.10.0/24".parse().unwrap(),
            ],
            keepalive_secs: 25,
            mtu: 1420,
        }
        .render();
        let psk = base64::engine::general_purpose::STANDARD.encode(epoch.key.expose());
        assert!(
            text.contains(&format!("\nPresharedKey = {psk}\n")),
            "{}",
            *text
        );
        assert!(text.contains(&format!("\nPublicKey = {}\n", hub.to_base64())));
        text.to_string()
    }

    #[test]
    fn a_configuration_names_everything_wg_quick_needs() {
        let text = config_text(None);
        for line in [
            "[Interface]",
            "Address = 10.77.0.5/24",
            "MTU = 1420",
            "[Peer]",
            "Endpoint = vpn.example.com:51820",
            "AllowedIPs = 10.77.0.0/24, 192.168.10.0/24",
            "PersistentKeepalive = 25",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
        }
        assert!(
            !text.lines().any(|l| l.starts_with("PrivateKey")),
            "the device's key is not the hub's to print"
        );
        let key = StaticKey::generate(&mut StdRng::seed_from_u64(42));
        let with_key = config_text(Some(&key));
        assert!(with_key
            .lines()
            .any(|l| l == format!("PrivateKey = {}", key.to_base64().as_str())));
    }

    #[test]
    fn warnings_come_near_the_end_or_for_keys_that_never_end() {
        let day = 86_400;
        assert_eq!(epoch_warning(0, Some(30 * day), 20 * day), None);
        assert_eq!(
            epoch_warning(0, Some(30 * day), 25 * day).as_deref(),
            Some("its key epoch ends in 5 days")
        );
        assert_eq!(
            epoch_warning(0, Some(30 * day), 40 * day).as_deref(),
            Some("its key epoch ends in 0 hours")
        );
        // A one-hour interval warns in its last quarter only.
        assert_eq!(epoch_warning(0, Some(3_600), 2_000), None);
        assert!(epoch_warning(0, Some(3_600), 2_800).is_some());
        assert_eq!(epoch_warning(0, None, 89 * day), None);
        assert!(epoch_warning(0, None, 90 * day)
            .unwrap()
            .contains("90 days old"));
    }
}
