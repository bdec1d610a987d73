//! One peer spoke in direct mode: its link keyed by the pair's epochs,
//! its path, its access gate, and what it does with what arrives from it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use boringtun::noise::TunnResult;

use crate::access::{AccessGate, Origin, PairRules};
use crate::admin_api::PeerView;
use crate::batch::Outbox;
use crate::control::{PairPeer, PairUsage};
use crate::datagram::TunSink;
use crate::link::Link;
use crate::pair::PairId;
use crate::path::{Path, PathChange, PathConfig, PeerPath};
use crate::routing::{DropReason, SpokeId};

use super::direct::FromPeer;

#[derive(Clone, Copy, Debug, Default)]
pub(super) struct PeerStats {
    pub(super) tx_packets: u64,
    pub(super) rx_packets: u64,
    pub(super) tx_bytes: u64,
    pub(super) rx_bytes: u64,
    /// Handshakes this side began that the peer answered (each handshake
    /// counted once, by its initiator).
    pub(super) handshakes: u64,
}

/// One peer spoke.
pub(super) struct DirectPeer {
    pub(super) pair: PairId,
    pub(super) name: String,
    pub(super) tunnel_addr: Ipv4Addr,
    pub(super) link: Link,
    /// The epoch new handshakes use (0: none switched to yet).
    pub(super) current: u64,
    pub(super) path: PeerPath,
    /// Since when the peer's data waits for something from us.
    pub(super) owe_answer: Option<u64>,
    /// Direct traffic since the last report to the hub.
    pub(super) used: bool,
    pub(super) stats: PeerStats,
    /// This spoke's id (the pair's other holder), the origin of what we send.
    pub(super) me: SpokeId,
    /// The pair's access rules, on everything between us and the peer
    /// (relayed packets too, so a flow that began on the relay keeps its
    /// replies when it moves); nothing direct passes before they come.
    pub(super) gate: AccessGate,
}

impl DirectPeer {
    /// A peer of `pair` with no epochs yet, on the relay, letting nothing
    /// direct through until the pair's rules come.
    pub(super) fn new(pair: PairId, peer: &PairPeer, keepalive: u16, config: PathConfig) -> Self {
        Self {
            pair,
            name: peer.name.clone(),
            tunnel_addr: peer.tunnel_addr,
            link: Link::new(peer.spoke_id, peer.public_key, keepalive),
            current: 0,
            path: PeerPath::new(config),
            owe_answer: None,
            used: false,
            stats: PeerStats::default(),
            me: pair.peer_of(peer.spoke_id).unwrap_or_default(),
            gate: AccessGate::new(Arc::new(PairRules::deny_all().compile())),
        }
    }

    /// What a datagram of this peer's session that opened gave (`inner`:
    /// a packet of that length waits in the TUN batch): the session is
    /// confirmed, the path learns it works, the packet must come from
    /// the peer's address, be for `own` and pass the pair's rules.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn accept(
        &mut self,
        kind: Option<u8>,
        epoch: u64,
        from: SocketAddr,
        inner: Option<usize>,
        ((own, own6), peer6): ((Option<Ipv4Addr>, Option<Ipv6Addr>), Option<Ipv6Addr>),
        to_tun: &mut impl TunSink,
        now_ms: u64,
    ) -> FromPeer {
        if matches!(kind, Some(2) | Some(4)) {
            self.link.confirm(epoch);
        }
        if kind == Some(2) {
            // Our initiation was answered: the keepalive boringtun sends
            // back went to `from`.
            self.owe_answer = None;
            self.stats.handshakes += 1;
            return FromPeer::Nothing;
        }
        // A data message (or keepalive) of the pair's session: the path
        // from `from` works.
        match self.path.on_authenticated(from, now_ms) {
            Some(PathChange::Upgraded(at)) => {
                tracing::info!(peer = %self.name, %at, "direct path up")
            }
            Some(PathChange::Roamed(at)) => tracing::info!(peer = %self.name, %at, "peer roamed"),
            _ => {}
        }
        self.owe_answer.get_or_insert(now_ms);
        let Some(len) = inner else {
            return FromPeer::Nothing;
        };
        let packet = to_tun.pending(len);
        let header = match crate::routing::inner_header(packet) {
            Ok(h) => h,
            Err(reason) => return FromPeer::Drop(reason),
        };
        // Cryptokey routing: the peer's own address, of either family.
        let from_peer = match header.src {
            IpAddr::V4(src) => src == self.tunnel_addr,
            IpAddr::V6(src) => Some(src) == peer6,
        };
        if !from_peer {
            return FromPeer::Drop(DropReason::ForgedSource);
        }
        match header.dst {
            IpAddr::V4(dst) if dst.is_multicast() => {
                // Group multicast: opened and checked against the group's
                // members by the plane, not the pair's rules.
                self.used = true;
                self.stats.rx_packets += 1;
                return FromPeer::Inner(len);
            }
            IpAddr::V4(dst) if Some(dst) == own => {}
            IpAddr::V6(dst) if Some(dst) == own6 => {}
            _ => return FromPeer::Drop(DropReason::NoRoute),
        }
        let peer = self.pair.peer_of(self.me).unwrap_or_default();
        if !self.gate.check(Origin::Spoke(peer), packet, now_ms) {
            return FromPeer::Drop(DropReason::Denied);
        }
        self.used = true;
        self.stats.rx_packets += 1;
        FromPeer::Inner(len)
    }

    /// A keepalive on the direct path: the peer's data was heard.
    pub(super) fn answer(&mut self, out: &mut Outbox<SocketAddr>) {
        self.owe_answer = None;
        let Path::Direct(at) = self.path.path() else {
            return;
        };
        let Some(t) = self.link.for_sending() else {
            return;
        };
        if let TunnResult::WriteToNetwork(d) = t.tunn.encapsulate(&[], out.spare()) {
            let len = d.len();
            out.commit(at, len);
        }
    }

    /// One round of probes: the same initiation under the pair's current
    /// epoch to every candidate, the first answer wins.
    pub(super) fn probe(&mut self, candidates: &[SocketAddr], out: &mut Outbox<SocketAddr>) {
        let epoch = if self.current > 0 {
            self.current
        } else {
            return;
        };
        let Some(t) = self.link.by_epoch(epoch) else {
            return;
        };
        let TunnResult::WriteToNetwork(d) = t.tunn.format_handshake_initiation(out.spare(), true)
        else {
            return;
        };
        let initiation = d.to_vec();
        for c in candidates {
            out.push(*c, &initiation);
        }
    }

    /// The pair's path and counters; whether it carried direct traffic
    /// since the last call.
    pub(super) fn take_usage(&mut self) -> PairUsage {
        let mut usage = self.usage();
        usage.active = std::mem::take(&mut self.used);
        usage
    }

    fn usage(&mut self) -> PairUsage {
        let counters = self.path.counters();
        PairUsage {
            pair: self.pair,
            direct: match self.path.path() {
                Path::Direct(at) => Some(at),
                Path::Relay => None,
            },
            active: self.used,
            last_handshake_secs: self.last_handshake_secs(),
            tx_packets: self.stats.tx_packets,
            rx_packets: self.stats.rx_packets,
            tx_bytes: self.stats.tx_bytes,
            rx_bytes: self.stats.rx_bytes,
            handshakes: self.stats.handshakes,
            upgrades: counters.upgrades,
            fallbacks: counters.fallbacks,
            punch_failures: counters.punch_failures,
        }
    }

    /// The peer as `tasuki-spoke status` shows it.
    pub(super) fn view(&mut self) -> PeerView {
        let u = self.usage();
        PeerView {
            name: self.name.clone(),
            pair: self.pair.to_string(),
            tunnel_addr: self.tunnel_addr.to_string(),
            path: if u.direct.is_some() {
                "direct"
            } else {
                "relay"
            }
            .into(),
            endpoint: u.direct.map(|at| at.to_string()),
            epoch: self.current,
            held_epochs: self.link.epochs(),
            last_handshake_secs: u.last_handshake_secs,
            tx_packets: u.tx_packets,
            rx_packets: u.rx_packets,
            tx_bytes: u.tx_bytes,
            rx_bytes: u.rx_bytes,
            upgrades: u.upgrades,
            fallbacks: u.fallbacks,
            punch_failures: u.punch_failures,
        }
    }

    fn last_handshake_secs(&mut self) -> Option<u64> {
        self.link
            .for_sending()
            .and_then(|t| t.tunn.time_since_last_handshake())
            .map(|d| d.as_secs())
    }
}
