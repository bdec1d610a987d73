//! The hub's rules for direct mode (claim 10) that need no state of their
//! own: the direct-mode setting, whether two spokes may get a pair (and a
//! clear sentence when not), and which candidate endpoints a spoke's peer
//! is told to probe.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::pair_book::PairRefusal;

/// Most candidate endpoints the hub hands a peer for one spoke.
pub const MAX_CANDIDATES: usize = 8;

/// Whether spokes may be given pair epochs to talk directly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DirectMode {
    /// Every spoke-to-spoke packet goes through the hub (the default while
    /// the receiving spoke's policy gate does not exist yet).
    #[default]
    Off,
    /// A spoke that sends to a peer spoke asks for their pair and goes
    /// direct when the network allows it.
    Auto,
}

impl DirectMode {
    /// Its name, as the CLI takes and prints it.
    pub fn name(self) -> &'static str {
        match self {
            DirectMode::Off => "off",
            DirectMode::Auto => "auto",
        }
    }
}

impl std::fmt::Display for DirectMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for DirectMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(DirectMode::Off),
            "auto" => Ok(DirectMode::Auto),
            other => Err(format!("direct mode {other:?}: use auto or off")),
        }
    }
}

/// What the hub knows of one side of an asked-for pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PairSide {
    /// Its name, for the refusal.
    pub name: String,
    /// Enrolled and approved, not revoked.
    pub active: bool,
    /// A stock WireGuard app (it cannot hold pair epochs).
    pub wireguard: bool,
    /// The direct mode in force for it.
    pub direct: DirectMode,
    /// The hub carries its traffic (a service spoke, or a user logged in).
    pub carrying: bool,
}

/// Why a spoke gets no pair; the text goes to the spoke's log as it is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DirectRefusal {
    /// No spoke has the address asked for.
    #[error("no spoke has the tunnel address {0}")]
    NoSuchPeer(Ipv4Addr),
    /// The peer is pending, denied or revoked.
    #[error("spoke {0} is not active")]
    NotActive(String),
    /// A spoke asked for itself.
    #[error("a spoke cannot pair with itself")]
    SameSpoke,
    /// One side is a stock WireGuard app.
    #[error("spoke {0} is a WireGuard peer: it talks only through the hub")]
    WireGuard(String),
    /// Direct mode is off for one side.
    #[error("direct mode is off for spoke {0}")]
    DirectOff(String),
    /// The access policy is enforced and allows no traffic at all between
    /// the two: a pair would carry nothing.
    #[error("the access policy allows no traffic between these spokes")]
    Enforced,
    /// One side carries no traffic (no user logged in on it).
    #[error("spoke {0} carries no traffic now (nobody is logged in on it)")]
    NotCarrying(String),
    /// A limit of the pair book.
    #[error(transparent)]
    Limit(#[from] PairRefusal),
}

/// Checks whether `asker` may get a pair with `peer` (`None`: no spoke at
/// the address asked for); `denied` says the enforced access policy
/// allows nothing between them.
/// The first reason that applies is given, the asker's side before the
/// peer's.
pub fn check_pair(
    asker: &PairSide,
    peer: Option<&PairSide>,
    same: bool,
    asked: Ipv4Addr,
    denied: bool,
) -> Result<(), DirectRefusal> {
    let peer = peer.ok_or(DirectRefusal::NoSuchPeer(asked))?;
    if same {
        return Err(DirectRefusal::SameSpoke);
    }
    for side in [asker, peer] {
        if !side.active {
            return Err(DirectRefusal::NotActive(side.name.clone()));
        }
    }
    for side in [asker, peer] {
        if side.wireguard {
            return Err(DirectRefusal::WireGuard(side.name.clone()));
        }
    }
    for side in [asker, peer] {
        if side.direct == DirectMode::Off {
            return Err(DirectRefusal::DirectOff(side.name.clone()));
        }
    }
    if denied {
        return Err(DirectRefusal::Enforced);
    }
    for side in [asker, peer] {
        if !side.carrying {
            return Err(DirectRefusal::NotCarrying(side.name.clone()));
        }
    }
    Ok(())
}

/// Whether a peer could ever reach a spoke at `addr`: not unspecified,
/// loopback, multicast, broadcast, nor port 0.
fn reachable(addr: &SocketAddr) -> bool {
    if addr.port() == 0 {
        return false;
    }
    let ip = addr.ip();
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return false;
    }
    !matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
}

/// Whether a spoke may name `addr` as one of its own addresses: only
/// private ones (RFC 1918, shared 100.64/10, IPv6 unique-local and
/// link-local). A public address is the one the hub sees already; one a
/// spoke merely claims would make its peers probe somebody else.
fn may_claim(addr: &SocketAddr) -> bool {
    match addr.ip() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private() || v4.is_link_local() || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            (first & 0xfe00) == 0xfc00 || (first & 0xffc0) == 0xfe80
        }
    }
}

/// A spoke's candidate endpoints for its peer, best first: the address the
/// hub sees its datagrams come from (`seen`), then the local addresses it
/// reported (private ones only, see [`may_claim`]); addresses nobody can
/// reach are dropped, duplicates too, and at most [`MAX_CANDIDATES`] are kept.
pub fn candidates(seen: Option<SocketAddr>, local: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::with_capacity(MAX_CANDIDATES);
    let claimed = local.iter().filter(|a| may_claim(a));
    for addr in seen.iter().chain(claimed) {
        if out.len() == MAX_CANDIDATES {
            break;
        }
        if reachable(addr) && !out.contains(addr) {
            out.push(*addr);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(name: &str) -> PairSide {
        PairSide {
            name: name.into(),
            active: true,
            wireguard: false,
            direct: DirectMode::Auto,
            carrying: true,
        }
    }

    const ASKED: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 3);

    #[test]
    fn two_active_carrying_spokes_with_direct_on_may_pair() {
        assert_eq!(
            check_pair(&side("a"), Some(&side("b")), false, ASKED, false),
            Ok(())
        );
    }

    #[test]
    fn each_refusal_names_its_reason() {
        let a = side("a");
        let refused = |peer: Option<&PairSide>, same: bool, enforced: bool| {
            check_pair(&a, peer, same, ASKED, enforced).unwrap_err()
        };
        assert_eq!(
            refused(None, false, false),
            DirectRefusal::NoSuchPeer(ASKED)
        );
        assert_eq!(refused(Some(&a), true, false), DirectRefusal::SameSpoke);
        let mut b = side("b");
        b.active = false;
        assert_eq!(
            refused(Some(&b), false, false),
            DirectRefusal::NotActive("b".into())
        );
        let mut b = side("b");
        b.wireguard = true;
        assert_eq!(
            refused(Some(&b), false, false),
            DirectRefusal::WireGuard("b".into())
        );
        let mut b = side("b");
        b.direct = DirectMode::Off;
        assert_eq!(
            refused(Some(&b), false, false),
            DirectRefusal::DirectOff("b".into())
        );
        assert_eq!(
            refused(Some(&side("b")), false, true),
            DirectRefusal::Enforced
        );
        let mut b = side("b");
        b.carrying = false;
        assert_eq!(
            refused(Some(&b), false, false),
            DirectRefusal::NotCarrying("b".into())
        );
        for r in [
            DirectRefusal::Enforced,
            DirectRefusal::Limit(PairRefusal::HubFull(3)),
        ] {
            assert!(!r.to_string().is_empty());
        }
    }

    #[test]
    fn the_askers_own_side_is_named_first() {
        let mut a = side("a");
        a.direct = DirectMode::Off;
        let mut b = side("b");
        b.direct = DirectMode::Off;
        assert_eq!(
            check_pair(&a, Some(&b), false, ASKED, false),
            Err(DirectRefusal::DirectOff("a".into()))
        );
    }

    #[test]
    fn direct_mode_reads_and_prints_its_names() {
        for m in [DirectMode::Off, DirectMode::Auto] {
            assert_eq!(m.name().parse::<DirectMode>(), Ok(m));
        }
        assert!("on".parse::<DirectMode>().is_err());
        assert_eq!(DirectMode::default(), DirectMode::Off);
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn candidates_put_the_seen_address_first_and_drop_duplicates() {
        let seen = addr("203.0.113.7:41000");
        let local = [
            addr("192.168.1.20:51820"),
            seen,
            addr("192.168.1.20:51820"),
            addr("[fd00::20]:51820"),
        ];
        assert_eq!(
            candidates(Some(seen), &local),
            vec![seen, addr("192.168.1.20:51820"), addr("[fd00::20]:51820")]
        );
        assert_eq!(candidates(None, &local[..1]), vec![local[0]]);
        assert!(candidates(None, &[]).is_empty());
    }

    #[test]
    fn candidates_nobody_can_reach_are_dropped() {
        let local = [
            addr("0.0.0.0:51820"),
            addr("127.0.0.1:51820"),
            addr("[::1]:51820"),
            addr("224.0.0.251:5353"),
            addr("255.255.255.255:51820"),
            addr("10.0.0.5:0"),
            addr("10.0.0.5:51820"),
        ];
        assert_eq!(candidates(None, &local), vec![addr("10.0.0.5:51820")]);
    }

    #[test]
    fn a_spoke_cannot_claim_a_public_address_as_its_own() {
        let local = [
            addr("198.51.100.7:51820"),
            addr("[2001:db8::7]:51820"),
            addr("192.168.1.20:51820"),
            addr("172.16.0.9:51820"),
            addr("100.64.3.1:51820"),
            addr("[fd00::20]:51820"),
        ];
        let seen = addr("203.0.113.5:4000");
        assert_eq!(
            candidates(Some(seen), &local),
            vec![seen, local[2], local[3], local[4], local[5]],
            "the seen address stays first; claimed public ones go"
        );
    }

    #[test]
    fn at_most_eight_candidates_are_given() {
        let local: Vec<SocketAddr> = (1..=20)
            .map(|i| addr(&format!("10.0.0.{i}:51820")))
            .collect();
        let seen = addr("198.51.100.1:9");
        let got = candidates(Some(seen), &local);
        assert_eq!(got.len(), MAX_CANDIDATES);
        assert_eq!(got[0], seen);
    }
}
