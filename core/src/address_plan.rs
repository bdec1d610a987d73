//! The hub's IPv6 address plan beside its IPv4 one: a tunnel prefix (a
//! ULA /64 drawn at random per RFC 4193 unless the admin names one), the
//! hub's own address in it, and IPv6 subnets routed behind the hub. A
//! spoke's IPv6 tunnel address follows from its IPv4 one: the same host
//! number in the IPv6 prefix (10.77.0.4 ↔ fd77:1::4), so it needs no
//! allocation of its own, stays the same across restarts, and a hub that
//! adds IPv6 later gives every spoke its address with no re-enrolment.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{Ipv4Net, Ipv6Net};
use rand_core::RngCore;

pub use crate::routing::Ipv6Plan;

/// Most IPv6 subnets routed behind the hub.
pub const MAX_ROUTES6: usize = 64;

/// A spoke's part of the IPv6 plan, in its configuration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpokeIpv6 {
    /// The spoke's IPv6 tunnel address, with the prefix's length.
    pub tunnel_addr: Ipv6Net,
    /// The hub's IPv6 tunnel address.
    pub hub_tunnel_addr: Ipv6Addr,
    /// IPv6 subnets routed behind the hub.
    pub routes: Vec<Ipv6Net>,
}

/// A spoke's configuration as versions before IPv6 stored it: read from
/// an older spoke store and taken as one with no IPv6.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct LegacySpokeConfig {
    spoke_id: u32,
    name: String,
    tunnel_addr: Ipv4Net,
    hub_tunnel_addr: Ipv4Addr,
    routes: Vec<Ipv4Net>,
    mtu: u16,
    keepalive_secs: u16,
}

impl From<LegacySpokeConfig> for crate::control::SpokeConfig {
    fn from(c: LegacySpokeConfig) -> Self {
        Self {
            spoke_id: c.spoke_id,
            name: c.name,
            tunnel_addr: c.tunnel_addr,
            hub_tunnel_addr: c.hub_tunnel_addr,
            routes: c.routes,
            mtu: c.mtu,
            keepalive_secs: c.keepalive_secs,
            ipv6: None,
            hub_endpoints: Vec::new(),
        }
    }
}

/// A spoke's configuration as versions before hub clusters stored it: read
/// from an older spoke store and taken as one of a hub of one machine.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct SpokeConfigBeforeClusters {
    spoke_id: u32,
    name: String,
    tunnel_addr: Ipv4Net,
    hub_tunnel_addr: Ipv4Addr,
    routes: Vec<Ipv4Net>,
    mtu: u16,
    keepalive_secs: u16,
    ipv6: Option<SpokeIpv6>,
}

impl From<SpokeConfigBeforeClusters> for crate::control::SpokeConfig {
    fn from(c: SpokeConfigBeforeClusters) -> Self {
        Self {
            spoke_id: c.spoke_id,
            name: c.name,
            tunnel_addr: c.tunnel_addr,
            hub_tunnel_addr: c.hub_tunnel_addr,
            routes: c.routes,
            mtu: c.mtu,
            keepalive_secs: c.keepalive_secs,
            ipv6: c.ipv6,
            hub_endpoints: Vec::new(),
        }
    }
}

/// Why an IPv6 plan cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The prefix is not one a tunnel can use.
    #[error("{0}")]
    Invalid(String),
}

impl Ipv6Plan {
    /// A plan for the tunnel prefix `tunnel_net` beside the IPv4 tunnel
    /// network `v4`, with `routes` behind the hub; checked.
    pub fn new(tunnel_net: Ipv6Net, v4: Ipv4Net, routes: Vec<Ipv6Net>) -> Result<Self, PlanError> {
        check_unicast(&tunnel_net, "the IPv6 tunnel prefix")?;
        if tunnel_net.trunc() != tunnel_net {
            return Err(PlanError::Invalid(format!(
                "the IPv6 tunnel prefix {tunnel_net} has host bits set; did you mean {}?",
                tunnel_net.trunc()
            )));
        }
        let host_bits = 32 - u32::from(v4.prefix_len());
        if 128 - u32::from(tunnel_net.prefix_len()) < host_bits.max(2) {
            return Err(PlanError::Invalid(format!(
                "the IPv6 tunnel prefix {tunnel_net} is too small for the {v4} tunnel network: \
                 use a /{} or larger (a /64 is usual)",
                128 - host_bits.max(2)
            )));
        }
        if routes.len() > MAX_ROUTES6 {
            return Err(PlanError::Invalid(format!(
                "at most {MAX_ROUTES6} IPv6 routes"
            )));
        }
        for r in &routes {
            check_unicast(r, "an IPv6 route")?;
            if r.contains(&tunnel_net.network()) || tunnel_net.contains(&r.network()) {
                return Err(PlanError::Invalid(format!(
                    "the IPv6 route {r} overlaps the tunnel prefix {tunnel_net}"
                )));
            }
        }
        Ok(Self {
            tunnel_net,
            hub_addr: nth_host(tunnel_net, 1),
            routes,
        })
    }

    /// The IPv6 tunnel address of the spoke at IPv4 address `v4_addr` in
    /// `v4` (the same host number), with the prefix length of the plan.
    pub fn spoke_addr(&self, v4: Ipv4Net, v4_addr: Ipv4Addr) -> Option<Ipv6Addr> {
        if !v4.contains(&v4_addr) {
            return None;
        }
        let host = u32::from(v4_addr) - u32::from(v4.network());
        Some(nth_host(self.tunnel_net, host))
    }
}

impl Ipv6Plan {
    /// The part of the plan spoke `v4_addr` (in `v4`) is configured with.
    pub fn for_spoke(&self, v4: Ipv4Net, v4_addr: Ipv4Addr) -> Option<SpokeIpv6> {
        let addr = self.spoke_addr(v4, v4_addr)?;
        Some(SpokeIpv6 {
            tunnel_addr: Ipv6Net::new(addr, self.tunnel_net.prefix_len()).ok()?,
            hub_tunnel_addr: self.hub_addr,
            routes: self.routes.clone(),
        })
    }
}

/// A random unique local /64 (RFC 4193: `fd` and a 40-bit global ID,
/// subnet 0).
pub fn random_ula(rng: &mut impl RngCore) -> Ipv6Net {
    let mut id = [0u8; 5];
    rng.fill_bytes(&mut id);
    let mut octets = [0u8; 16];
    octets[0] = 0xfd;
    octets[1..6].copy_from_slice(&id);
    // A /64 is a valid prefix length: this cannot fail.
    Ipv6Net::new(Ipv6Addr::from(octets), 64).unwrap_or_default()
}

/// Where a spoke at tunnel addresses `own` (in `v4`) and `own6` finds a
/// peer's IPv6 address from its IPv4 one, and back: the same host number
/// in the same prefix (whose length a spoke need not know: the plan keeps
/// at least the IPv4 network's host bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddrs {
    /// The IPv4 tunnel network.
    pub v4: Ipv4Net,
    /// This spoke's IPv6 tunnel address.
    pub own6: Ipv6Addr,
}

impl PeerAddrs {
    fn host_mask(&self) -> u128 {
        (1u128 << (32 - u32::from(self.v4.prefix_len()))) - 1
    }

    /// The IPv6 address of the spoke at `v4_addr`.
    pub fn v6_of(&self, v4_addr: Ipv4Addr) -> Option<Ipv6Addr> {
        if !self.v4.contains(&v4_addr) {
            return None;
        }
        let host = u128::from(u32::from(v4_addr) - u32::from(self.v4.network()));
        Some(Ipv6Addr::from(
            (u128::from(self.own6) & !self.host_mask()) | host,
        ))
    }

    /// The IPv4 address of the spoke at `v6_addr`, when it is in our prefix.
    pub fn v4_of(&self, v6_addr: Ipv6Addr) -> Option<Ipv4Addr> {
        let mask = self.host_mask();
        let (addr, own) = (u128::from(v6_addr), u128::from(self.own6));
        if addr & !mask != own & !mask {
            return None;
        }
        let host = u32::try_from(addr & mask).ok()?;
        let v4 = Ipv4Addr::from(u32::from(self.v4.network()).checked_add(host)?);
        self.v4.contains(&v4).then_some(v4)
    }
}

/// The `n`-th address of `net`.
fn nth_host(net: Ipv6Net, n: u32) -> Ipv6Addr {
    Ipv6Addr::from(u128::from(net.network()).saturating_add(u128::from(n)))
}

/// Refuses what no tunnel routes: the unspecified, loopback, link-local,
/// multicast and IPv4-mapped ranges.
fn check_unicast(net: &Ipv6Net, what: &str) -> Result<(), PlanError> {
    const SPECIAL: [(Ipv6Addr, u8); 5] = [
        (Ipv6Addr::UNSPECIFIED, 128),
        (Ipv6Addr::LOCALHOST, 128),
        (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
        (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
        (Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96),
    ];
    // In a special range, or holding one (fe00::/7 holds multicast).
    let bad = SPECIAL.iter().any(|&(addr, len)| {
        Ipv6Net::new(addr, len)
            .is_ok_and(|s| s.contains(&net.network()) || net.contains(&s.network()))
    });
    if bad || net.prefix_len() < 8 {
        return Err(PlanError::Invalid(format!(
            "{what} {net} is not a unicast prefix a tunnel can use (link-local, multicast, \
             loopback, IPv4-mapped and prefixes shorter than /8 are refused)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_ipv6_address_is_its_ipv4_host_number_in_our_prefix() {
        let m = PeerAddrs {
            v4: "10.77.0.0/24".parse().unwrap(),
            own6: "fd77:1::2".parse().unwrap(),
        };
        let b6: Ipv6Addr = "fd77:1::3".parse().unwrap();
        assert_eq!(m.v6_of("10.77.0.3".parse().unwrap()), Some(b6));
        assert_eq!(m.v4_of(b6), Some("10.77.0.3".parse().unwrap()));
        assert_eq!(m.v6_of("10.78.0.3".parse().unwrap()), None);
        assert_eq!(
            m.v4_of("fd77:2::3".parse().unwrap()),
            None,
            "another prefix"
        );
        assert_eq!(
            m.v4_of("fd77:1::1:3".parse().unwrap()),
            None,
            "past the host bits"
        );
    }

    fn v4() -> Ipv4Net {
        "10.77.0.0/24".parse().unwrap()
    }

    #[test]
    fn a_spoke_gets_the_same_host_number_in_the_ipv6_prefix() {
        let plan = Ipv6Plan::new("fd77:1::/64".parse().unwrap(), v4(), vec![]).unwrap();
        assert_eq!(plan.hub_addr, "fd77:1::1".parse::<Ipv6Addr>().unwrap());
        let a = |s: &str| plan.spoke_addr(v4(), s.parse().unwrap());
        assert_eq!(a("10.77.0.4"), Some("fd77:1::4".parse().unwrap()));
        assert_eq!(a("10.77.0.254"), Some("fd77:1::fe".parse().unwrap()));
        assert_eq!(a("10.78.0.4"), None, "outside the IPv4 network");
    }

    #[test]
    fn prefixes_a_tunnel_cannot_use_are_refused() {
        let plan = |net: &str, routes: &[&str]| {
            Ipv6Plan::new(
                net.parse().unwrap(),
                v4(),
                routes.iter().map(|r| r.parse().unwrap()).collect(),
            )
        };
        for bad in [
            "fe80::/64",
            "ff02::/64",
            "::/64",
            "::1/128",
            "::ffff:0:0/96",
            "fd77:1::5/64",
        ] {
            assert!(plan(bad, &[]).is_err(), "{bad}");
        }
        assert!(
            plan("fd77:1::/125", &[]).is_err(),
            "8 host bits do not fit in 3"
        );
        assert!(plan("fd77:1::/120", &[]).is_ok());
        assert!(plan("fd77:1::/64", &["fd77:1::/80"]).is_err(), "overlaps");
        assert!(plan("fd77:1::/64", &["fd77::/16"]).is_err(), "contains it");
        assert!(plan("fd77:1::/64", &["2001:db8:50::/64"]).is_ok());
        // Routes that hold a special range are refused too.
        for holds in ["fe00::/7", "fe00::/8", "::8000:0:0/81"] {
            assert!(plan("fd77:1::/64", &[holds]).is_err(), "{holds}");
        }
    }

    #[test]
    fn a_random_ula_is_a_fd_slash_64() {
        let mut rng = rand::rngs::mock::StepRng::new(7, 0x0101_0101_0101);
        let a = random_ula(&mut rng);
        assert_eq!(a.prefix_len(), 64);
        assert_eq!(a.network().octets()[0], 0xfd);
        assert_eq!(a.network().octets()[6..], [0; 10]);
        assert!(Ipv6Plan::new(a, v4(), vec![]).is_ok());
        assert_ne!(a, random_ula(&mut rng));
    }
}
