//! Cryptokey routing at the hub: what to do with a decrypted inner packet.
//!
//! A packet that arrives through spoke S's tunnel may only carry S's tunnel
//! address as its source (anything else is forged and dropped). Its
//! destination decides: another spoke's address → relay to that spoke
//! (patent claim 9); the hub's own address or a subnet routed behind the hub
//! → the hub's TUN (claim 12); anything else → drop.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{Ipv4HeaderSlice, Ipv6HeaderSlice};
use ipnet::{Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::hierarchy::ServedNets;

/// The hub's numeric handle for an enrolled spoke.
pub type SpokeId = u32;

/// Why the data plane dropped a packet; each has a counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[non_exhaustive]
pub enum DropReason {
    /// The inner packet is not a well-formed IPv4 packet.
    Malformed,
    /// IPv6 or another protocol the tunnel does not carry.
    Unsupported,
    /// The inner source address does not belong to the sending spoke.
    ForgedSource,
    /// No spoke and no hub route covers the destination.
    NoRoute,
    /// The destination spoke has no usable session yet.
    NoSession,
    /// A datagram the WireGuard layer rejected (bad MAC, replay, garbage).
    BadDatagram,
    /// A handshake from a key that is not an enrolled, active spoke.
    UnknownPeer,
    /// The key epoch is over its hard limit and no next one is held.
    KeyExpired,
    /// No user allowed on the spoke is logged in (and it is no service spoke).
    NotLoggedIn,
    /// A handshake initiation over its source address's rate (a flood).
    RateLimited,
    /// The access policy allows no such packet (and it answers no allowed flow).
    Denied,
    /// A packet waited for a WireGuard session that never came up (the
    /// peer did not answer the handshake), or more waited than a tunnel
    /// holds.
    HandshakeTimeout,
    /// A datagram the kernel refused to send (no route, no buffer, …).
    SendFailed,
    /// A packet the TUN device refused.
    TunWriteFailed,
    /// A multicast packet to an address no keyed group of ours owns (or,
    /// at the hub, that no group owns).
    MulticastNoGroup,
    /// Group multicast from a spoke that is no member online.
    MulticastNotMember,
    /// A group datagram that is malformed, not sealed under the group's
    /// key, or whose sealed addresses are not its own.
    MulticastForged,
    /// A group datagram sealed under an epoch not held (ended already, or
    /// not here yet).
    MulticastEpoch,
    /// A group datagram seen before (a replay, or a copy that came both
    /// through the hub and straight).
    MulticastReplayed,
    /// Group multicast over the sender's rate (fan-out is bounded).
    MulticastOverRate,
    /// A multicast packet too big to seal within the tunnel's MTU.
    MulticastTooBig,
    /// An IGMP membership report: it stays on the machine that sent it.
    Igmp,
    /// IPv6 link-local traffic (neighbour discovery, MLD reports, router
    /// solicitations): it stays on the machine that sent it.
    Ipv6LinkLocal,
}

impl DropReason {
    /// Every reason, for counters and metrics.
    pub const ALL: [DropReason; 23] = [
        DropReason::Malformed,
        DropReason::Unsupported,
        DropReason::ForgedSource,
        DropReason::NoRoute,
        DropReason::NoSession,
        DropReason::BadDatagram,
        DropReason::UnknownPeer,
        DropReason::KeyExpired,
        DropReason::NotLoggedIn,
        DropReason::RateLimited,
        DropReason::Denied,
        DropReason::HandshakeTimeout,
        DropReason::SendFailed,
        DropReason::TunWriteFailed,
        DropReason::MulticastNoGroup,
        DropReason::MulticastNotMember,
        DropReason::MulticastForged,
        DropReason::MulticastEpoch,
        DropReason::MulticastReplayed,
        DropReason::MulticastOverRate,
        DropReason::MulticastTooBig,
        DropReason::Igmp,
        DropReason::Ipv6LinkLocal,
    ];

    /// Stable snake_case name used in status output and metrics.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Unsupported => "unsupported",
            DropReason::ForgedSource => "forged_source",
            DropReason::NoRoute => "no_route",
            DropReason::NoSession => "no_session",
            DropReason::BadDatagram => "bad_datagram",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::KeyExpired => "key_expired",
            DropReason::NotLoggedIn => "not_logged_in",
            DropReason::RateLimited => "rate_limited",
            DropReason::Denied => "denied",
            DropReason::HandshakeTimeout => "handshake_timeout",
            DropReason::SendFailed => "send_failed",
            DropReason::TunWriteFailed => "tun_write_failed",
            DropReason::MulticastNoGroup => "multicast_no_group",
            DropReason::MulticastNotMember => "multicast_not_member",
            DropReason::MulticastForged => "multicast_forged",
            DropReason::MulticastEpoch => "multicast_epoch",
            DropReason::MulticastReplayed => "multicast_replayed",
            DropReason::MulticastOverRate => "multicast_over_rate",
            DropReason::MulticastTooBig => "multicast_too_big",
            DropReason::Igmp => "igmp",
            DropReason::Ipv6LinkLocal => "ipv6_link_local",
        }
    }
}

/// Source and destination of an inner IPv4 or IPv6 packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InnerHeader {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
}

/// Reads the inner header with etherparse; never panics on any input. A
/// packet shorter than its header says is malformed.
pub fn inner_header(packet: &[u8]) -> Result<InnerHeader, DropReason> {
    match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let header = Ipv4HeaderSlice::from_slice(packet).map_err(|_| DropReason::Malformed)?;
            if usize::from(header.total_len()) > packet.len() {
                return Err(DropReason::Malformed);
            }
            Ok(InnerHeader {
                src: header.source_addr().into(),
                dst: header.destination_addr().into(),
            })
        }
        Some(6) => {
            let header = Ipv6HeaderSlice::from_slice(packet).map_err(|_| DropReason::Malformed)?;
            // A jumbogram (payload length 0 with a hop-by-hop option) is
            // longer than any tunnel's MTU: it is taken as 40 bytes long.
            if 40 + usize::from(header.payload_length()) > packet.len() {
                return Err(DropReason::Malformed);
            }
            Ok(InnerHeader {
                src: header.source_addr().into(),
                dst: header.destination_addr().into(),
            })
        }
        _ => Err(DropReason::Malformed),
    }
}

/// Whether an IPv6 packet from `src` to `dst` belongs to the link it was
/// sent on (a link-local source, or a node- or link-scoped multicast
/// destination): no tunnel carries it.
pub fn is_link_scoped(src: Ipv6Addr, dst: Ipv6Addr) -> bool {
    let link_local = |a: Ipv6Addr| (a.segments()[0] & 0xffc0) == 0xfe80;
    let scoped_multicast = dst.is_multicast() && (dst.segments()[0] & 0x000f) <= 2;
    link_local(src) || link_local(dst) || scoped_multicast
}

/// The hub's IPv6 plan: its tunnel prefix, its own address in it, and the
/// IPv6 subnets routed behind it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipv6Plan {
    /// The IPv6 tunnel prefix.
    pub tunnel_net: Ipv6Net,
    /// The hub's own address in it.
    pub hub_addr: Ipv6Addr,
    /// IPv6 subnets routed behind the hub.
    pub routes: Vec<Ipv6Net>,
}

/// What the hub does with a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Encrypt toward this spoke.
    Relay(SpokeId),
    /// Write to the hub's TUN (hub address or routed LAN).
    Local,
    /// Drop it and count the reason.
    Drop(DropReason),
}

/// The hub's routing table: tunnel addresses of spokes and the routed subnets.
#[derive(Clone, Debug)]
pub struct RouteTable {
    tunnel_net: Ipv4Net,
    hub_addr: Ipv4Addr,
    lan: Vec<Ipv4Net>,
    spokes: HashMap<Ipv4Addr, SpokeId>,
    addrs: HashMap<SpokeId, Ipv4Addr>,
    ipv6: Option<Ipv6Plan>,
    spokes6: HashMap<Ipv6Addr, SpokeId>,
    addrs6: HashMap<SpokeId, Ipv6Addr>,
    /// Child hubs and the subnets routed to each (claim 6).
    children: Vec<(SpokeId, ServedNets)>,
    /// What the parent says the rest of the tree serves: the hub's TUN,
    /// where its uplink takes it on.
    upstream: ServedNets,
}

impl RouteTable {
    /// A table for a hub at `hub_addr` in `tunnel_net`, routing `lan` behind it.
    pub fn new(tunnel_net: Ipv4Net, hub_addr: Ipv4Addr, lan: Vec<Ipv4Net>) -> Self {
        Self {
            tunnel_net,
            hub_addr,
            lan,
            spokes: HashMap::new(),
            addrs: HashMap::new(),
            ipv6: None,
            spokes6: HashMap::new(),
            addrs6: HashMap::new(),
            children: Vec::new(),
            upstream: ServedNets::default(),
        }
    }

    /// Routes these subnets to these child hubs from now on.
    pub fn set_children(&mut self, children: Vec<(SpokeId, ServedNets)>) {
        self.children = children;
    }

    /// Sends what the rest of the tree serves to the hub's TUN from now on.
    pub fn set_upstream(&mut self, upstream: ServedNets) {
        self.upstream = upstream;
    }

    /// Whether spoke `id` is a child hub with a routed branch.
    pub fn is_child(&self, id: SpokeId) -> bool {
        self.children.iter().any(|(c, _)| *c == id)
    }

    /// The child hub whose branch holds `addr`.
    fn child_holding(&self, addr: IpAddr) -> Option<SpokeId> {
        self.children
            .iter()
            .find(|(_, nets)| nets.contains(addr))
            .map(|(id, _)| *id)
    }

    /// Whether `addr` may be the source of a packet from `from`: its own
    /// tunnel address, or for a child hub an address of its branch.
    fn sends_as(&self, from: SpokeId, addr: IpAddr) -> bool {
        let own = match addr {
            IpAddr::V4(a) => self.addrs.get(&from) == Some(&a),
            IpAddr::V6(a) => self.addrs6.get(&from) == Some(&a),
        };
        own || self
            .children
            .iter()
            .any(|(id, nets)| *id == from && nets.contains(addr))
    }

    /// The same table carrying IPv6 too, under `plan`.
    pub fn with_ipv6(mut self, plan: Option<Ipv6Plan>) -> Self {
        self.ipv6 = plan;
        self
    }

    /// Carries IPv6 under `plan` from now on (an admin gave the hub an
    /// IPv6 prefix), or none.
    pub fn set_ipv6(&mut self, plan: Option<Ipv6Plan>) {
        self.ipv6 = plan;
    }

    /// Adds, moves or (with `None`) removes a spoke's IPv6 tunnel address.
    pub fn set_spoke6(&mut self, id: SpokeId, addr: Option<Ipv6Addr>) {
        if let Some(old) = self.addrs6.remove(&id) {
            self.spokes6.remove(&old);
        }
        if let Some(addr) = addr {
            self.addrs6.insert(id, addr);
            self.spokes6.insert(addr, id);
        }
    }

    /// Adds or moves a spoke's tunnel address.
    pub fn set_spoke(&mut self, id: SpokeId, addr: Ipv4Addr) {
        if let Some(old) = self.addrs.insert(id, addr) {
            self.spokes.remove(&old);
        }
        self.spokes.insert(addr, id);
    }

    /// Removes a spoke (revoked or deleted).
    pub fn remove_spoke(&mut self, id: SpokeId) {
        if let Some(addr) = self.addrs.remove(&id) {
            self.spokes.remove(&addr);
        }
        self.set_spoke6(id, None);
    }

    /// The tunnel address of a spoke.
    pub fn spoke_addr(&self, id: SpokeId) -> Option<Ipv4Addr> {
        self.addrs.get(&id).copied()
    }

    /// Decides the fate of a packet decrypted from spoke `from`.
    pub fn inbound(&self, from: SpokeId, packet: &[u8]) -> Verdict {
        let header = match inner_header(packet) {
            Ok(h) => h,
            Err(reason) => return Verdict::Drop(reason),
        };
        if let (IpAddr::V6(src), IpAddr::V6(dst)) = (header.src, header.dst) {
            if is_link_scoped(src, dst) {
                return Verdict::Drop(DropReason::Ipv6LinkLocal);
            }
        }
        if !self.sends_as(from, header.src) {
            return Verdict::Drop(DropReason::ForgedSource);
        }
        match header.dst {
            IpAddr::V4(dst) => self.by_destination(dst),
            IpAddr::V6(dst) => self.by_destination6(dst),
        }
    }

    /// Decides where a packet read from the hub's TUN goes.
    pub fn outbound(&self, packet: &[u8]) -> Verdict {
        let header = match inner_header(packet) {
            Ok(h) => h,
            Err(reason) => return Verdict::Drop(reason),
        };
        let to = match (header.src, header.dst) {
            (IpAddr::V6(src), IpAddr::V6(dst)) if is_link_scoped(src, dst) => {
                return Verdict::Drop(DropReason::Ipv6LinkLocal)
            }
            (_, IpAddr::V4(dst)) => self.spokes.get(&dst),
            (_, IpAddr::V6(dst)) => self.spokes6.get(&dst),
        };
        match to.copied().or_else(|| self.child_holding(header.dst)) {
            Some(id) => Verdict::Relay(id),
            None => Verdict::Drop(DropReason::NoRoute),
        }
    }

    /// Where an IPv6 packet to `dst` goes: a spoke, the hub, or nowhere
    /// (a hub with no IPv6 plan carries none).
    fn by_destination6(&self, dst: Ipv6Addr) -> Verdict {
        let Some(plan) = &self.ipv6 else {
            return Verdict::Drop(DropReason::Unsupported);
        };
        if let Some(&id) = self.spokes6.get(&dst) {
            return Verdict::Relay(id);
        }
        if dst == plan.hub_addr || plan.routes.iter().any(|net| net.contains(&dst)) {
            return Verdict::Local;
        }
        self.in_tree(IpAddr::V6(dst))
    }

    fn by_destination(&self, dst: Ipv4Addr) -> Verdict {
        if let Some(&id) = self.spokes.get(&dst) {
            return Verdict::Relay(id);
        }
        if dst == self.hub_addr || self.lan.iter().any(|net| net.contains(&dst)) {
            return Verdict::Local;
        }
        if self.tunnel_net.contains(&dst) {
            // An unassigned tunnel address: nobody to deliver to.
            return Verdict::Drop(DropReason::NoRoute);
        }
        self.in_tree(IpAddr::V4(dst))
    }

    /// Where a packet to `dst` goes that is for no spoke and no subnet of
    /// this hub: a child's branch, the rest of the tree (up through the
    /// hub's TUN), or nowhere.
    fn in_tree(&self, dst: IpAddr) -> Verdict {
        if let Some(child) = self.child_holding(dst) {
            return Verdict::Relay(child);
        }
        if self.upstream.contains(dst) {
            return Verdict::Local;
        }
        Verdict::Drop(DropReason::NoRoute)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let builder = etherparse::PacketBuilder::ipv4(src, dst, 64).udp(1000, 2000);
        let payload = [1u8, 2, 3];
        let mut out = Vec::new();
        builder.write(&mut out, &payload).unwrap();
        out
    }

    fn table() -> RouteTable {
        let mut t = RouteTable::new(
            "10.77.0.0/24".parse().unwrap(),
            "10.77.0.1".parse().unwrap(),
            vec!["192.168.50.0/24".parse().unwrap()],
        );
        t.set_spoke(1, "10.77.0.2".parse().unwrap());
        t.set_spoke(2, "10.77.0.3".parse().unwrap());
        t
    }

    #[test]
    fn relays_between_spokes() {
        let t = table();
        assert_eq!(
            t.inbound(1, &packet([10, 77, 0, 2], [10, 77, 0, 3])),
            Verdict::Relay(2)
        );
        assert_eq!(
            t.inbound(2, &packet([10, 77, 0, 3], [10, 77, 0, 2])),
            Verdict::Relay(1)
        );
    }

    #[test]
    fn hub_and_lan_are_local() {
        let t = table();
        assert_eq!(
            t.inbound(1, &packet([10, 77, 0, 2], [10, 77, 0, 1])),
            Verdict::Local
        );
        assert_eq!(
            t.inbound(1, &packet([10, 77, 0, 2], [192, 168, 50, 9])),
            Verdict::Local
        );
    }

    #[test]
    fn forged_sources_are_dropped() {
        let t = table();
        assert_eq!(
            t.inbound(1, &packet([10, 77, 0, 3], [10, 77, 0, 1])),
            Verdict::Drop(DropReason::ForgedSource)
        );
        assert_eq!(
            t.inbound(1, &packet([10, 77, 0, 99], [10, 77, 0, 3])),
            Verdict::Drop(DropReason::ForgedSource)
        );
        assert_eq!(
            t.inbound(7, &packet([10, 77, 0, 2], [10, 77, 0, 3])),
            Verdict::Drop(DropReason::ForgedSource)
        );
    }

    #[test]
    fn unknown_destinations_are_dropped() {
        let t = table();
        assert_eq!(
            t.inbound(1, &packet([10, 77, 0, 2], [10, 77, 0, 50])),
            Verdict::Drop(DropReason::NoRoute)
        );
        assert_eq!(
            t.inbound(1, &packet([10, 77, 0, 2], [8, 8, 8, 8])),
            Verdict::Drop(DropReason::NoRoute)
        );
        assert_eq!(
            t.outbound(&packet([192, 168, 50, 9], [10, 77, 0, 9])),
            Verdict::Drop(DropReason::NoRoute)
        );
        assert_eq!(
            t.outbound(&packet([192, 168, 50, 9], [10, 77, 0, 3])),
            Verdict::Relay(2)
        );
    }

    #[test]
    fn bad_packets_never_panic() {
        let t = table();
        assert_eq!(t.inbound(1, &[]), Verdict::Drop(DropReason::Malformed));
        assert_eq!(t.inbound(1, &[0x45]), Verdict::Drop(DropReason::Malformed));
        assert_eq!(
            t.inbound(1, &[0x60; 40]),
            Verdict::Drop(DropReason::Malformed),
            "an IPv6 header whose payload is missing"
        );
        let mut p = packet([10, 77, 0, 2], [10, 77, 0, 3]);
        p.truncate(p.len() - 1);
        assert_eq!(t.inbound(1, &p), Verdict::Drop(DropReason::Malformed));
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 0x45) as u8).collect();
            let _ = t.inbound(1, &junk);
            let _ = t.outbound(&junk);
        }
    }

    fn packet6(src: &str, dst: &str) -> Vec<u8> {
        let (src, dst): (Ipv6Addr, Ipv6Addr) = (src.parse().unwrap(), dst.parse().unwrap());
        let builder =
            etherparse::PacketBuilder::ipv6(src.octets(), dst.octets(), 64).udp(1000, 2000);
        let mut out = Vec::new();
        builder.write(&mut out, &[1u8, 2, 3]).unwrap();
        out
    }

    fn table6() -> RouteTable {
        let mut t = table().with_ipv6(Some(Ipv6Plan {
            tunnel_net: "fd77:1::/64".parse().unwrap(),
            hub_addr: "fd77:1::1".parse().unwrap(),
            routes: vec!["fd50::/64".parse().unwrap()],
        }));
        t.set_spoke6(1, Some("fd77:1::2".parse().unwrap()));
        t.set_spoke6(2, Some("fd77:1::3".parse().unwrap()));
        t
    }

    #[test]
    fn ipv6_is_routed_by_the_same_rules() {
        let t = table6();
        assert_eq!(
            t.inbound(1, &packet6("fd77:1::2", "fd77:1::3")),
            Verdict::Relay(2)
        );
        assert_eq!(
            t.inbound(1, &packet6("fd77:1::2", "fd77:1::1")),
            Verdict::Local
        );
        assert_eq!(
            t.inbound(1, &packet6("fd77:1::2", "fd50::9")),
            Verdict::Local
        );
        assert_eq!(
            t.inbound(1, &packet6("fd77:1::2", "fd77:1::99")),
            Verdict::Drop(DropReason::NoRoute)
        );
        assert_eq!(
            t.outbound(&packet6("fd50::9", "fd77:1::3")),
            Verdict::Relay(2)
        );
        // Link-scoped traffic stays where it was sent.
        for (src, dst) in [
            ("fe80::1", "fd77:1::1"),
            ("fd77:1::2", "ff02::2"),
            ("fe80::1", "ff02::16"),
        ] {
            assert_eq!(
                t.inbound(1, &packet6(src, dst)),
                Verdict::Drop(DropReason::Ipv6LinkLocal),
                "{src} → {dst}"
            );
            assert_eq!(
                t.outbound(&packet6(src, dst)),
                Verdict::Drop(DropReason::Ipv6LinkLocal)
            );
        }
        // Forged: another spoke's, an unassigned one.
        for src in ["fd77:1::3", "fd77:1::99"] {
            assert_eq!(
                t.inbound(1, &packet6(src, "fd77:1::1")),
                Verdict::Drop(DropReason::ForgedSource),
                "{src}"
            );
        }
        // A spoke with no IPv6 address sends none; a hub with no plan carries none.
        let mut t = t;
        t.set_spoke6(2, None);
        assert_eq!(
            t.inbound(1, &packet6("fd77:1::2", "fd77:1::3")),
            Verdict::Drop(DropReason::NoRoute)
        );
        let plain = table();
        assert_eq!(
            plain.inbound(1, &packet6("fd77:1::2", "fd77:1::1")),
            Verdict::Drop(DropReason::ForgedSource)
        );
    }

    #[test]
    fn short_ipv6_packets_are_malformed() {
        let t = table6();
        let mut p = packet6("fd77:1::2", "fd77:1::3");
        p.truncate(p.len() - 1);
        assert_eq!(t.inbound(1, &p), Verdict::Drop(DropReason::Malformed));
        for len in 0..48 {
            assert_eq!(
                t.inbound(1, &p[..len.min(p.len())]),
                Verdict::Drop(DropReason::Malformed)
            );
        }
    }

    #[test]
    fn moving_a_spoke_forgets_the_old_address() {
        let mut t = table();
        t.set_spoke(1, "10.77.0.9".parse().unwrap());
        assert_eq!(
            t.inbound(2, &packet([10, 77, 0, 3], [10, 77, 0, 2])),
            Verdict::Drop(DropReason::NoRoute)
        );
        t.remove_spoke(1);
        assert_eq!(t.spoke_addr(1), None);
    }

    /// A hub with child hub 5 serving 10.1.0.0/24 and fd01::/64, and the
    /// rest of the tree (from its parent) at 10.100.0.0/16.
    fn tree_table() -> RouteTable {
        let mut t = table().with_ipv6(Some(Ipv6Plan {
            tunnel_net: "fd77::/64".parse().unwrap(),
            hub_addr: "fd77::1".parse().unwrap(),
            routes: vec![],
        }));
        t.set_spoke(5, "10.77.0.5".parse().unwrap());
        t.set_children(vec![(
            5,
            ServedNets {
                v4: vec!["10.1.0.0/24".parse().unwrap()],
                v6: vec!["fd01::/64".parse().unwrap()],
            },
        )]);
        t.set_upstream(ServedNets {
            v4: vec!["10.100.0.0/16".parse().unwrap()],
            v6: vec![],
        });
        t
    }

    #[test]
    fn a_child_hubs_branch_is_routed_to_it() {
        let t = tree_table();
        // A spoke of ours to the branch, and the branch back.
        assert_eq!(
            t.inbound(1, &packet([10, 77, 0, 2], [10, 1, 0, 9])),
            Verdict::Relay(5)
        );
        assert_eq!(
            t.inbound(5, &packet([10, 1, 0, 9], [10, 77, 0, 2])),
            Verdict::Relay(1)
        );
        assert_eq!(
            t.outbound(&packet([192, 168, 50, 4], [10, 1, 0, 9])),
            Verdict::Relay(5),
            "the LAN reaches the branch"
        );
        assert_eq!(
            t.outbound(&packet6("fd77::1", "fd01::9")),
            Verdict::Relay(5)
        );
        // The rest of the tree goes up through the TUN.
        assert_eq!(
            t.inbound(5, &packet([10, 1, 0, 9], [10, 100, 3, 4])),
            Verdict::Local
        );
        assert_eq!(
            t.inbound(1, &packet([10, 77, 0, 2], [10, 101, 0, 1])),
            Verdict::Drop(DropReason::NoRoute)
        );
    }

    #[test]
    fn a_child_hub_sends_only_as_its_branch() {
        let t = tree_table();
        assert_eq!(
            t.inbound(5, &packet([10, 2, 0, 9], [10, 77, 0, 2])),
            Verdict::Drop(DropReason::ForgedSource),
            "another branch's address"
        );
        assert_eq!(
            t.inbound(1, &packet([10, 1, 0, 9], [10, 77, 0, 3])),
            Verdict::Drop(DropReason::ForgedSource),
            "a plain spoke sends as the branch"
        );
        assert_eq!(t.inbound(5, &packet6("fd01::9", "fd77::1")), Verdict::Local);
    }
}
