//! Direct mode in the spoke's data plane (claim 10): one WireGuard link
//! per peer spoke the hub paired us with, keyed by the pair's epochs, and
//! the path its traffic takes ([`PeerPath`]). The relay through the hub
//! stays the default; a packet goes direct only while the direct path is
//! proven to work.
//!
//! A peer's link uses the peer's spoke id as its slot, so receiver indices
//! name the peer (the hub's link is slot 0). A datagram from any address
//! but the hub's is a peer's: an initiation is matched by the static key
//! it proves, everything else by its receiver index. Decrypted packets
//! must come from the peer's tunnel address and be for ours.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, Tunn, TunnResult};
use ipnet::Ipv4Net;

use crate::access::{Origin, PairRules};
use crate::admin_api::PeerView;
use crate::batch::Outbox;
use crate::control::{PairPeer, PairUsage};
use crate::datagram::{open_datagram, Opened, TunSink};
use crate::flood::HandshakeGate;
use crate::keys::{KeyEpoch, PublicKey, StaticKey};
use crate::link::{slot_of_receiver, Link, Sealed, Tick, MAX_SLOT};
use crate::multicast::multicast_destination;
use crate::pair::PairId;
use crate::path::{Path, PathChange, PathConfig};
use crate::routing::{DropReason, SpokeId};

use super::peer::DirectPeer;

/// A peer that sent us data is answered within about this long (a
/// keepalive when we have sent it nothing since), so its path's trust
/// window ([`PathConfig::trust_ms`]) holds while only it sends.
const ANSWER_WITHIN_MS: u64 = 500;
/// The data plane asks for a pair with one destination at most this often.
const ASK_EVERY_MS: u64 = 2_000;

/// Where a packet from the TUN goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// Straight to this peer.
    Direct(SpokeId),
    /// Through the hub; `Some`: ask the hub for a pair with this spoke.
    Relay(Option<Ipv4Addr>),
}

/// What opening a peer's datagram gave.
pub(crate) enum FromPeer {
    /// A packet of this many bytes waits at the end of the TUN batch.
    Inner(usize),
    /// Nothing for the TUN (a handshake, a keepalive).
    Nothing,
    /// Dropped, for this reason.
    Drop(DropReason),
}

/// The spoke's peers in direct mode.
pub(crate) struct DirectPeers {
    public: boringtun::x25519::PublicKey,
    keepalive_secs: u16,
    config: PathConfig,
    /// Our tunnel address and network, once the hub's configuration says.
    network: Option<(Ipv4Addr, Ipv4Net, Ipv4Addr)>,
    /// Our IPv6 tunnel address, where IPv6 is carried (a peer's is the
    /// same host number as its IPv4 one).
    own6: Option<Ipv6Addr>,
    peers: HashMap<SpokeId, DirectPeer>,
    by_addr: HashMap<Ipv4Addr, SpokeId>,
    by_key: HashMap<PublicKey, SpokeId>,
    asked: HashMap<Ipv4Addr, u64>,
    /// Initiations per source address, checked before any cryptography
    /// (anyone can send to the data-plane socket).
    flood: HandshakeGate,
}

impl DirectPeers {
    /// No peers yet, for the spoke with `key`.
    pub(crate) fn new(key: &StaticKey, keepalive_secs: u16) -> Self {
        Self {
            public: boringtun::x25519::PublicKey::from(&key.to_x25519()),
            keepalive_secs,
            config: PathConfig::default(),
            network: None,
            own6: None,
            peers: HashMap::new(),
            by_addr: HashMap::new(),
            by_key: HashMap::new(),
            asked: HashMap::new(),
            flood: HandshakeGate::default(),
        }
    }

    /// Our tunnel address, the tunnel network and the hub's address in
    /// it: destinations there (but the hub and us) are peer spokes.
    pub(crate) fn set_network(&mut self, own: Ipv4Addr, net: Ipv4Net, hub: Ipv4Addr) {
        self.network = Some((own, net, hub));
    }

    /// Our IPv6 tunnel address, or none.
    pub(crate) fn set_ipv6(&mut self, own6: Option<Ipv6Addr>) {
        self.own6 = own6;
    }

    /// How peers' IPv6 addresses follow from their IPv4 ones.
    fn addrs6(&self) -> Option<crate::address_plan::PeerAddrs> {
        let (_, v4, _) = self.network?;
        Some(crate::address_plan::PeerAddrs {
            v4,
            own6: self.own6?,
        })
    }

    /// The IPv4 tunnel address of the peer an IPv6 packet to `dst6` is
    /// for, when it is a spoke's of our prefix: IPv6 takes its path.
    pub(crate) fn peer_v4_of(&self, dst6: Ipv6Addr) -> Option<Ipv4Addr> {
        self.addrs6()?.v4_of(dst6)
    }

    /// A held epoch of a pair: the peer's link gets its tunnel.
    pub(crate) fn hold(
        &mut self,
        key: &StaticKey,
        pair: PairId,
        peer: &PairPeer,
        epoch: &KeyEpoch,
    ) {
        let id = peer.spoke_id;
        if id == 0 || id > MAX_SLOT || !pair.has(id) {
            tracing::warn!(%pair, peer = id, "pair epoch for a peer id that cannot be used");
            return;
        }
        let keepalive = self.keepalive_secs;
        let config = self.config;
        let p = self
            .peers
            .entry(id)
            .or_insert_with(|| DirectPeer::new(pair, peer, keepalive, config));
        if p.link.peer() != peer.public_key {
            // The peer's key changed (it enrolled again): a new link.
            p.link = Link::new(id, peer.public_key, keepalive);
            p.current = 0;
        }
        self.by_addr.retain(|_, v| *v != id);
        p.tunnel_addr = peer.tunnel_addr;
        p.name = peer.name.clone();
        p.link.install(key, epoch, None);
        self.by_addr.insert(peer.tunnel_addr, id);
        self.by_key.insert(peer.public_key, id);
    }

    /// The pair's new handshakes use `epoch`, and the hub told both sides
    /// to probe `candidates` now.
    pub(crate) fn use_epoch(
        &mut self,
        pair: PairId,
        epoch: u64,
        candidates: Vec<SocketAddr>,
        now_ms: u64,
        out: &mut Outbox<SocketAddr>,
    ) {
        let Some(p) = self.by_pair(pair) else {
            return;
        };
        let moved = p.current != epoch;
        p.current = epoch;
        p.path.probe_now(now_ms, candidates);
        if let (true, Path::Direct(at)) = (moved, p.path.path()) {
            // Direct already: a handshake under the new epoch at once.
            if let Some(t) = p.link.by_epoch(epoch) {
                if let TunnResult::WriteToNetwork(d) =
                    t.tunn.format_handshake_initiation(out.spare(), true)
                {
                    let len = d.len();
                    out.commit(at, len);
                }
            }
        }
    }

    /// Whether any peer is paired (else nothing here needs a look at a packet).
    pub(crate) fn has_peers(&self) -> bool {
        !self.peers.is_empty()
    }

    /// The pair's access rules, from now on.
    pub(crate) fn set_rules(&mut self, pair: PairId, rules: &PairRules) {
        if let Some(p) = self.by_pair(pair) {
            p.gate.replace(Arc::new(rules.compile()));
        }
    }

    /// A packet between us and a peer that went through the relay (the
    /// hub decided it): the pair's gate tracks its flow all the same.
    pub(crate) fn observe_relayed(&mut self, packet: &[u8], now_ms: u64) {
        // Direct paths carry IPv4: what IPv6 the relay carries says
        // nothing of them (and its bytes 12..20 are no IPv4 addresses).
        if packet.first().map(|b| b >> 4) != Some(4) {
            return;
        }
        let Some(h) = packet.get(12..20) else {
            return;
        };
        let src = Ipv4Addr::new(h[0], h[1], h[2], h[3]);
        let dst = Ipv4Addr::new(h[4], h[5], h[6], h[7]);
        let (peer, from_peer) = match (self.by_addr.get(&dst), self.by_addr.get(&src)) {
            (Some(id), _) => (*id, false),
            (None, Some(id)) => (*id, true),
            (None, None) => return,
        };
        if let Some(p) = self.peers.get_mut(&peer) {
            let origin = Origin::Spoke(if from_peer { peer } else { p.me });
            // The verdict was the hub's; only the flow is noted here.
            let _tracked = p.gate.check(origin, packet, now_ms);
            if from_peer && p.path.on_peer_relayed(now_ms).is_some() {
                tracing::info!(peer = %p.name, "the peer sends through the hub: back on the relay");
            }
        }
    }

    /// An ended epoch's tunnel goes; returns the packets lost with it.
    pub(crate) fn erase(&mut self, pair: PairId, epoch: u64) -> u32 {
        self.by_pair(pair)
            .map(|p| p.link.retain(|e| e != epoch))
            .unwrap_or(0)
    }

    /// The pair is over: its peer goes, traffic to it takes the relay.
    pub(crate) fn end(&mut self, pair: PairId) -> u32 {
        let Some(id) = self
            .peers
            .iter()
            .find(|(_, p)| p.pair == pair)
            .map(|(i, _)| *i)
        else {
            return 0;
        };
        let Some(mut p) = self.peers.remove(&id) else {
            return 0;
        };
        self.by_addr.retain(|_, v| *v != id);
        self.by_key.retain(|_, v| *v != id);
        p.link.retain(|_| false)
    }

    /// Every peer goes (the spoke was revoked).
    pub(crate) fn clear(&mut self) {
        self.peers.clear();
        self.by_addr.clear();
        self.by_key.clear();
    }

    fn by_pair(&mut self, pair: PairId) -> Option<&mut DirectPeer> {
        self.peers.values_mut().find(|p| p.pair == pair)
    }

    /// Where a packet for `dst` goes now.
    pub(crate) fn route(&mut self, dst: Ipv4Addr, now_ms: u64) -> Route {
        if let Some(id) = self.by_addr.get(&dst) {
            if let Some(p) = self.peers.get(id) {
                if matches!(p.path.path(), Path::Direct(_)) {
                    return Route::Direct(*id);
                }
                return Route::Relay(None);
            }
        }
        let Some((own, net, hub)) = self.network else {
            return Route::Relay(None);
        };
        if dst == own || dst == hub || !net.contains(&dst) || dst == net.broadcast() {
            return Route::Relay(None);
        }
        let due = self
            .asked
            .get(&dst)
            .is_none_or(|at| now_ms >= at.saturating_add(ASK_EVERY_MS));
        if !due {
            return Route::Relay(None);
        }
        if self.asked.len() > 4096 {
            self.asked.clear();
        }
        self.asked.insert(dst, now_ms);
        Route::Relay(Some(dst))
    }

    /// The peer at tunnel address `addr`, when it is on a direct path
    /// with a session to seal under.
    pub(crate) fn direct_to(&mut self, addr: Ipv4Addr) -> Option<SpokeId> {
        let id = self.by_addr.get(&addr)?;
        let p = self.peers.get_mut(id)?;
        let ready = matches!(p.path.path(), Path::Direct(_)) && p.link.for_sending().is_some();
        ready.then_some(*id)
    }

    /// Seals `packet` for peer `id` on its direct path.
    pub(crate) fn seal(
        &mut self,
        id: SpokeId,
        packet: &[u8],
        out: &mut Outbox<SocketAddr>,
        now_ms: u64,
    ) -> Result<Sealed, DropReason> {
        let p = self.peers.get_mut(&id).ok_or(DropReason::NoSession)?;
        let Path::Direct(at) = p.path.path() else {
            return Err(DropReason::NoSession);
        };
        // Group multicast is the group's to allow, not the pair's rules.
        let multicast = multicast_destination(packet).is_some();
        if !multicast && !p.gate.check(Origin::Spoke(p.me), packet, now_ms) {
            return Err(DropReason::Denied);
        }
        let tunnel = p.link.for_sending().ok_or(DropReason::NoSession)?;
        let sealed = tunnel.seal(packet, out, at)?;
        p.owe_answer = None;
        p.used = true;
        p.path.on_sent(now_ms);
        if let Sealed::Sent(len) = sealed {
            p.stats.tx_packets += 1;
            p.stats.tx_bytes += len as u64;
        }
        Ok(sealed)
    }

    /// One datagram from `from`, which is not the hub: a peer's.
    pub(crate) fn open(
        &mut self,
        key: &StaticKey,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut Outbox<SocketAddr>,
        to_tun: &mut impl TunSink,
        now_ms: u64,
    ) -> FromPeer {
        if datagram.first() == Some(&1) && !self.flood.allow(from.ip(), now_ms) {
            return FromPeer::Drop(DropReason::RateLimited);
        }
        let receiver = match Tunn::parse_incoming_packet(datagram) {
            Ok(Packet::HandshakeInit(init)) => {
                let Ok(half) = parse_handshake_anon(&key.to_x25519(), &self.public, &init) else {
                    return FromPeer::Drop(DropReason::BadDatagram);
                };
                let Some(id) = self.by_key.get(&PublicKey(half.peer_static_public)) else {
                    return FromPeer::Drop(DropReason::UnknownPeer);
                };
                return self.answer_initiation(*id, from, datagram, out);
            }
            Ok(Packet::HandshakeResponse(p)) => p.receiver_idx,
            Ok(Packet::PacketCookieReply(p)) => p.receiver_idx,
            Ok(Packet::PacketData(p)) => p.receiver_idx,
            Err(_) => return FromPeer::Drop(DropReason::BadDatagram),
        };
        let own = (self.network.map(|(own, _, _)| own), self.own6);
        let addrs6 = self.addrs6();
        let Some(p) = self.peers.get_mut(&slot_of_receiver(receiver)) else {
            return FromPeer::Drop(DropReason::UnknownPeer);
        };
        let Some(tunnel) = p.link.by_receiver(receiver) else {
            return FromPeer::Drop(DropReason::BadDatagram);
        };
        let epoch = tunnel.epoch;
        let kind = datagram.first().copied();
        let opened = open_datagram(tunnel, Some(from.ip()), from, datagram, out, to_tun);
        let inner = match opened {
            Opened::Inner(len) => Some(len),
            Opened::Nothing => None,
            Opened::Rejected(e) => {
                tracing::debug!(peer = %p.name, error = ?e, epoch, kind, "direct datagram rejected");
                return FromPeer::Drop(DropReason::BadDatagram);
            }
        };
        if kind == Some(4) {
            p.stats.rx_bytes += datagram.len() as u64;
        }
        let peer6 = addrs6.and_then(|a| a.v6_of(p.tunnel_addr));
        p.accept(kind, epoch, from, inner, (own, peer6), to_tun, now_ms)
    }

    /// A peer's initiation: answered under every epoch held (only the one
    /// the peer used opens), to the address it came from.
    fn answer_initiation(
        &mut self,
        id: SpokeId,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut Outbox<SocketAddr>,
    ) -> FromPeer {
        let Some(p) = self.peers.get_mut(&id) else {
            return FromPeer::Drop(DropReason::UnknownPeer);
        };
        let mut answers = 0;
        let epochs = p.link.epochs();
        for e in epochs.iter().rev() {
            let Some(t) = p.link.by_epoch(*e) else {
                continue;
            };
            if let TunnResult::WriteToNetwork(d) =
                t.tunn.decapsulate(Some(from.ip()), datagram, out.spare())
            {
                let len = d.len();
                if out.commit(from, len) {
                    answers += 1;
                }
            }
        }
        if answers == 0 {
            return FromPeer::Drop(DropReason::BadDatagram);
        }
        FromPeer::Nothing
    }

    /// Timers: path changes, probes, WireGuard's timers; returns packets
    /// lost in tunnels whose handshake gave up.
    pub(crate) fn tick(&mut self, now_ms: u64, out: &mut Outbox<SocketAddr>) -> u32 {
        let mut lost = 0;
        self.flood.prune(now_ms);
        for p in self.peers.values_mut() {
            p.gate.prune(now_ms);
            match p.path.tick(now_ms) {
                Some(PathChange::FellBack) => {
                    tracing::info!(peer = %p.name, "direct path stopped answering: back on the relay")
                }
                Some(PathChange::PunchFailed) => {
                    tracing::debug!(peer = %p.name, "no candidate answered: the relay carries on")
                }
                _ => {}
            }
            if p.owe_answer
                .is_some_and(|since| now_ms.saturating_sub(since) >= ANSWER_WITHIN_MS)
            {
                p.answer(out);
            }
            let probes = p.path.poll_probe(now_ms);
            if !probes.is_empty() {
                p.probe(&probes, out);
            }
            let direct = match p.path.path() {
                Path::Direct(at) => Some(at),
                Path::Relay => None,
            };
            for t in p.link.tunnels_mut() {
                match t.tick(out.spare()) {
                    // Keepalives and re-handshakes only where the peer is.
                    Tick::Send(len) => {
                        if let Some(at) = direct {
                            out.commit(at, len);
                            p.owe_answer = None;
                        }
                    }
                    Tick::Lost(n) => lost += n,
                    Tick::Idle => {}
                }
            }
        }
        lost
    }

    /// This machine's underlay address changed: a keepalive to every peer
    /// on a direct path, so it hears us from the new address at once (as
    /// WireGuard's roaming, without waiting for our next packet).
    pub(crate) fn nudge(&mut self, out: &mut Outbox<SocketAddr>) {
        for p in self.peers.values_mut() {
            p.answer(out);
        }
    }

    /// Every pair's path and counters, and whether it carried direct
    /// traffic since the last call.
    pub(crate) fn take_usage(&mut self) -> Vec<PairUsage> {
        self.peers
            .values_mut()
            .map(DirectPeer::take_usage)
            .collect()
    }

    /// Every peer, for status.
    pub(crate) fn views(&mut self) -> Vec<PeerView> {
        let mut views: Vec<PeerView> = self.peers.values_mut().map(DirectPeer::view).collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }
}
