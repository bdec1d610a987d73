//! The hub's data plane as a state machine with no I/O: one WireGuard
//! tunnel per spoke link and key epoch, cryptokey routing, the access
//! gate, the relay. The shell feeds it datagrams and TUN packets and the
//! time, writes out what it leaves in its outbox and TUN sink, and hands
//! its events to the control side. Every decision on an inner packet comes
//! from [`crate::routing`].
//!
//! Spoke-to-spoke traffic is relayed here and never touches the TUN.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, TunnResult};

mod api;
mod multicast;
mod peer;
pub use api::{HubEvent, LinkSpec, LinkStatus, PlaneStatus};
use peer::{seal_to, Delivery, Peer};

use crate::access::{AccessGate, CompiledAccess, Origin};
use crate::admin_api::Counters;
use crate::datagram::{open_datagram, DataPlane, Opened, PassIo, TunSink};
use crate::flood::HandshakeGate;
use crate::keys::{PublicKey, StaticKey};
use crate::link::{slot_of_receiver, Link, Tick};
use crate::multicast::{multicast_destination, Fanout};
use crate::routing::{DropReason, RouteTable, SpokeId, Verdict};
use crate::DATAGRAM_BUFFER;

/// Handshakes per second the hub answers before it demands cookies.
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// Timer ticks (250 ms) a link stays quiet, with no WireGuard session left,
/// before its tunnels are dropped: three minutes, longer than a handshake
/// keeps retrying (90 s).
const IDLE_TICKS: u32 = 4 * 180;

/// The hub's data plane: everything a pass reads and writes besides the
/// devices. `T` is where opened packets wait for the TUN.
pub struct HubPlane<T: TunSink> {
    key: Arc<StaticKey>,
    public: boringtun::x25519::PublicKey,
    limiter: Arc<RateLimiter>,
    /// Per-address budget for initiations, checked before any cryptography.
    gate: HandshakeGate,
    /// The time (milliseconds on the driver's monotonic clock), set by the
    /// driver before each pass.
    now_ms: u64,
    routes: RouteTable,
    /// Who may reach what, and the flows it allowed (for their replies).
    access: AccessGate,
    peers: HashMap<SpokeId, Peer>,
    by_key: HashMap<PublicKey, SpokeId>,
    counters: Counters,
    drops: BTreeMap<DropReason, u64>,
    /// Datagrams, TUN packets and events the pass leaves for the driver.
    io: PassIo<T, HubEvent>,
    scratch: Vec<u8>,
    /// Keyed groups' multicast ranges and members online.
    multicast: Fanout,
    /// The members a multicast packet is copied to (reused).
    fan_to: Vec<SpokeId>,
}

impl<T: TunSink + Default> HubPlane<T> {
    /// A data plane with no links yet, enforcing `access` from the first
    /// packet (a hub in enforce mode never passes a packet unchecked while
    /// it starts).
    pub fn new(key: Arc<StaticKey>, routes: RouteTable, access: Arc<CompiledAccess>) -> Self {
        let public = key.public().to_x25519();
        Self {
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            gate: HandshakeGate::default(),
            now_ms: 0,
            public,
            key,
            routes,
            access: AccessGate::new(access),
            peers: HashMap::new(),
            by_key: HashMap::new(),
            counters: Counters::default(),
            drops: BTreeMap::new(),
            io: PassIo::default(),
            scratch: vec![0; DATAGRAM_BUFFER],
            multicast: Fanout::default(),
            fan_to: Vec::new(),
        }
    }
}

impl<T: TunSink> HubPlane<T> {
    /// Sets the time the next calls see (milliseconds on a monotonic clock).
    pub fn set_now(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
    }

    /// Once a second: a fresh handshake budget, and expired entries of the
    /// flood gate and the access flow table dropped.
    pub fn handle_second(&mut self) {
        self.limiter.reset_count();
        self.gate.prune(self.now_ms);
        self.access.prune(self.now_ms);
    }
}

impl<T: TunSink> DataPlane for HubPlane<T> {
    type Sink = T;
    type Event = HubEvent;

    fn handle_datagram(&mut self, from: SocketAddr, datagram: &[u8]) {
        self.on_datagram(from, datagram);
    }

    fn handle_tun(&mut self, packet: &[u8]) {
        self.on_tun(packet);
    }

    fn io(&mut self) -> &mut PassIo<T, HubEvent> {
        &mut self.io
    }

    fn counters(&mut self) -> &mut Counters {
        &mut self.counters
    }

    fn lost(&mut self, reason: DropReason, count: u64) {
        self.drop_packets(reason, count);
    }
}

impl<T: TunSink> HubPlane<T> {
    fn drop_packet(&mut self, reason: DropReason) {
        self.drop_packets(reason, 1);
    }

    fn drop_packets(&mut self, reason: DropReason, count: u64) {
        if count > 0 {
            *self.drops.entry(reason).or_default() += count;
        }
    }

    /// Counts what became of a packet sealed to a spoke: sent (on the
    /// path's counter), held for a handshake, or dropped.
    /// Counts a packet for a child hub's branch.
    fn count_to_branch(&mut self, to: SpokeId) {
        if self.routes.is_child(to) {
            self.counters.to_branches += 1;
        }
    }

    fn count_sealed(
        &mut self,
        sealed: Result<Delivery, DropReason>,
        path: fn(&mut Counters) -> &mut u64,
    ) {
        match sealed {
            Ok(Delivery::Sent) => *path(&mut self.counters) += 1,
            Ok(Delivery::Held) => self.counters.queued += 1,
            Err(reason) => self.drop_packet(reason),
        }
    }

    /// Carries a link, or updates its epochs, address and login state.
    pub fn upsert(&mut self, spec: LinkSpec) {
        let peer = self
            .peers
            .entry(spec.id)
            .or_insert_with(|| Peer::new(spec.id, spec.public_key));
        peer.handshake_epochs = spec.handshake_epochs.clone();
        peer.carry = spec.carry;
        if peer.link.peer() != spec.public_key {
            peer.link = Link::new(spec.id, spec.public_key, 0);
            peer.resume = 0;
        }
        peer.resume = peer.resume.max(spec.confirmed);
        // A link in use gets the new epochs' tunnels now; an idle
        // one when the spoke next handshakes.
        if !peer.link.is_empty() {
            for epoch in &spec.epochs {
                peer.link
                    .install(&self.key, epoch, Some(self.limiter.clone()));
            }
        }
        let keep: Vec<u64> = spec.epochs.iter().map(|e| e.number).collect();
        let lost = peer.link.retain(|e| keep.contains(&e));
        peer.keys = spec.epochs;
        self.by_key.insert(spec.public_key, spec.id);
        self.routes.set_spoke(spec.id, spec.tunnel_addr);
        self.routes.set_spoke6(spec.id, spec.tunnel_addr6);
        self.drop_packets(DropReason::HandshakeTimeout, lost.into());
        tracing::debug!(spoke = spec.id, epochs = ?keep, "link updated");
    }

    /// Forgets a link at once (a revoked or denied spoke).
    pub fn remove(&mut self, id: SpokeId) {
        if let Some(peer) = self.peers.remove(&id) {
            self.by_key.remove(&peer.link.peer());
        }
        self.routes.remove_spoke(id);
        tracing::info!(spoke = id, "link removed");
    }

    /// Carries IPv6 under `plan` from now on (spokes' IPv6 addresses come
    /// with their links), or none.
    pub fn set_ipv6(&mut self, plan: Option<crate::routing::Ipv6Plan>) {
        tracing::info!(plan = ?plan, "IPv6 plan in effect");
        self.routes.set_ipv6(plan);
    }

    /// Routes these subnets to these child hubs, and what the rest of the
    /// tree serves to the TUN (toward the uplink), from now on (claim 6).
    pub fn set_tree(
        &mut self,
        children: Vec<(SpokeId, crate::hierarchy::ServedNets)>,
        upstream: crate::hierarchy::ServedNets,
    ) {
        tracing::info!(children = children.len(), upstream = ?upstream.strings(), "hub tree routes in effect");
        self.routes.set_children(children);
        self.routes.set_upstream(upstream);
    }

    /// Enforces `policy` from the next packet on.
    pub fn set_access(&mut self, policy: Arc<CompiledAccess>) {
        self.access.replace(policy);
        tracing::debug!(
            enforcing = self.access.enforcing(),
            flows = self.access.tracked(),
            "access policy in effect"
        );
    }

    /// Counters and every link's facts, for status and metrics.
    pub fn status(&mut self) -> PlaneStatus {
        let mut counters = self.counters.clone();
        counters.access_flows = self.access.tracked() as u64;
        counters.dropped = self
            .drops
            .iter()
            .map(|(r, n)| (r.name().to_owned(), *n))
            .collect();
        let links = self
            .peers
            .iter_mut()
            .map(|(id, p)| {
                let last = p
                    .link
                    .for_sending()
                    .and_then(|t| t.tunn.time_since_last_handshake())
                    .map(|d| d.as_secs());
                (
                    *id,
                    LinkStatus {
                        endpoint: p.endpoint,
                        last_handshake_secs: last,
                        rx_bytes: p.rx_bytes,
                        tx_bytes: p.tx_bytes,
                        packets: p.packets,
                        handshakes: p.handshakes,
                    },
                )
            })
            .collect();
        PlaneStatus { counters, links }
    }

    /// Which spoke a verified datagram belongs to, and the receiver index it
    /// names (`None` for a handshake initiation, which goes to the newest epoch).
    fn route_datagram(&self, packet: &Packet<'_>) -> Option<(SpokeId, Option<u32>)> {
        let receiver = match packet {
            Packet::HandshakeInit(init) => {
                let half = parse_handshake_anon(&self.key.to_x25519(), &self.public, init).ok()?;
                let id = self
                    .by_key
                    .get(&PublicKey(half.peer_static_public))
                    .copied()?;
                return Some((id, None));
            }
            Packet::HandshakeResponse(p) => p.receiver_idx,
            Packet::PacketCookieReply(p) => p.receiver_idx,
            Packet::PacketData(p) => p.receiver_idx,
        };
        Some((slot_of_receiver(receiver), Some(receiver)))
    }

    /// One datagram from `src`: a handshake, a cookie reply or data (decrypted, routed, relayed or queued for the TUN).
    fn on_datagram(&mut self, src: SocketAddr, datagram: &[u8]) {
        self.counters.rx_datagrams += 1;
        // A flood of initiations from one address is dropped here, before
        // the MAC check and the cookie reply it would cost.
        if datagram.first() == Some(&1) && !self.gate.allow(src.ip(), self.now_ms) {
            self.drop_packet(DropReason::RateLimited);
            return;
        }
        let verified = self
            .limiter
            .verify_packet(Some(src.ip()), datagram, &mut self.scratch);
        let (id, receiver) = match verified {
            Ok(packet) => {
                let is_init = matches!(packet, Packet::HandshakeInit(_));
                match self.route_datagram(&packet) {
                    Some(route) => route,
                    None => {
                        self.drop_packet(if is_init {
                            DropReason::UnknownPeer
                        } else {
                            DropReason::BadDatagram
                        });
                        return;
                    }
                }
            }
            Err(TunnResult::WriteToNetwork(cookie)) => {
                // Under load: a cookie reply instead of a handshake (no DH done).
                self.io.out.push(src, cookie);
                self.counters.cookies += 1;
                return;
            }
            Err(_) => {
                self.drop_packet(DropReason::BadDatagram);
                return;
            }
        };
        match receiver {
            None => self.on_initiation(id, src, datagram),
            Some(receiver) => self.on_session_datagram(id, receiver, src, datagram),
        }
    }

    /// A handshake initiation: WireGuard's responder cannot see which
    /// preshared key the spoke used, so it is answered under every epoch the
    /// spoke may be on; the spoke keeps the answer that opens.
    fn on_initiation(&mut self, id: SpokeId, src: SocketAddr, datagram: &[u8]) {
        let Some(peer) = self.peers.get_mut(&id) else {
            self.drop_packet(DropReason::UnknownPeer);
            return;
        };
        peer.wake(&self.key, &self.limiter);
        let mut candidates = peer.handshake_epochs.clone();
        if candidates.is_empty() {
            candidates.extend(peer.link.epochs().last());
        }
        let mut answers = 0;
        for e in candidates.iter().rev() {
            let Some(t) = peer.link.by_epoch(*e) else {
                continue;
            };
            match t
                .tunn
                .decapsulate(Some(src.ip()), datagram, self.io.out.spare())
            {
                TunnResult::WriteToNetwork(p) => {
                    let len = p.len();
                    if self.io.out.commit(src, len) {
                        answers += 1;
                    }
                }
                TunnResult::Err(err) => {
                    tracing::trace!(spoke = id, error = ?err, "initiation rejected")
                }
                _ => {}
            }
        }
        tracing::debug!(spoke = id, ?candidates, answers, "handshake initiation");
        if answers == 0 {
            self.drop_packet(DropReason::BadDatagram);
            return;
        }
        if let Some(from) = peer.endpoint.replace(src).filter(|f| *f != src) {
            self.io.events.push_back(HubEvent::EndpointChanged {
                spoke: id,
                from,
                to: src,
            });
        }
        if std::mem::replace(&mut peer.answer_unconfirmed, true) {
            // The last answer was never followed by data: the peer could
            // not open it (a wrong or ended preshared key, or it was lost).
            self.counters.handshake_failures += 1;
            tracing::debug!(
                spoke = id,
                "handshake failed: the peer initiated again instead of sending data"
            );
        }
        // Only an initiation that was answered counts as the link's activity.
        peer.quiet_ticks = 0;
        self.counters.handshakes += 1;
        peer.handshakes += 1;
    }

    fn on_session_datagram(
        &mut self,
        id: SpokeId,
        receiver: u32,
        src: SocketAddr,
        datagram: &[u8],
    ) {
        let Some(peer) = self.peers.get_mut(&id) else {
            self.drop_packet(DropReason::UnknownPeer);
            return;
        };
        let Some(tunnel) = peer.link.by_receiver(receiver) else {
            self.drop_packet(DropReason::BadDatagram);
            return;
        };
        let had_session = tunnel.has_session();
        let epoch = tunnel.epoch;
        let is_data = datagram.first() == Some(&4);
        let inner = match open_datagram(
            tunnel,
            Some(src.ip()),
            src,
            datagram,
            &mut self.io.out,
            &mut self.io.to_tun,
        ) {
            Opened::Inner(len) => Some(len),
            Opened::Nothing => None,
            Opened::Rejected(e) => {
                tracing::trace!(spoke = id, error = ?e, "datagram rejected");
                *self.drops.entry(DropReason::BadDatagram).or_default() += 1;
                return;
            }
        };
        if !had_session && tunnel.has_session() {
            tracing::info!(spoke = id, epoch = tunnel.epoch, %src, "WireGuard session up");
        }
        peer.packets += 1;
        if is_data {
            peer.answer_unconfirmed = false;
        }
        // A data packet decrypted (keepalives too): the spoke runs this epoch.
        if is_data && peer.link.confirm(epoch) {
            self.io.events.push_back(HubEvent::Confirmed {
                spoke: id,
                epoch,
                usage: peer.usage(),
            });
        }
        // The datagram authenticated: this is where the spoke is now, and
        // the link is in use.
        peer.quiet_ticks = 0;
        if let Some(from) = peer.endpoint.replace(src).filter(|f| *f != src) {
            self.io.events.push_back(HubEvent::EndpointChanged {
                spoke: id,
                from,
                to: src,
            });
        }
        peer.rx_bytes += datagram.len() as u64;
        if let Some(len) = inner {
            self.forward_inner(id, len);
        }
    }

    /// Routes the packet of `len` bytes just opened into the TUN batch.
    fn forward_inner(&mut self, from: SpokeId, len: usize) {
        if !self.peers.get(&from).is_some_and(|p| p.carry) {
            self.drop_packet(DropReason::NotLoggedIn);
            return;
        }
        let packet = self.io.to_tun.pending(len);
        if let Some(dst) = multicast_destination(packet) {
            self.fan_out(from, len, dst);
            return;
        }
        let route = self.routes.inbound(from, packet);
        let verdict = admit(
            &mut self.access,
            route,
            Origin::Spoke(from),
            packet,
            self.now_ms,
        );
        if matches!(verdict, Verdict::Relay(_) | Verdict::Local) && self.routes.is_child(from) {
            self.counters.from_branches += 1;
        }
        match verdict {
            Verdict::Relay(to) => {
                if self.routes.is_child(to) {
                    self.counters.to_branches += 1;
                }
                let keys = (&*self.key, &self.limiter);
                let sealed = seal_to(self.peers.get_mut(&to), packet, &mut self.io.out, keys);
                self.count_sealed(sealed, |c| &mut c.relayed);
            }
            Verdict::Local => {
                self.io.to_tun.commit(len);
                self.counters.to_tun += 1;
            }
            Verdict::Drop(reason) => {
                if reason == DropReason::ForgedSource {
                    tracing::debug!(spoke = from, "dropped a packet with a forged inner source");
                }
                self.drop_packet(reason);
            }
        }
    }

    /// One packet read from the TUN: sealed to the spoke it is routed to.
    fn on_tun(&mut self, packet: &[u8]) {
        let verdict = match self.routes.outbound(packet) {
            // Nothing to send: the packet is the hub's own.
            Verdict::Local => return,
            route => admit(&mut self.access, route, Origin::Local, packet, self.now_ms),
        };
        match verdict {
            Verdict::Relay(to) => {
                self.count_to_branch(to);
                let keys = (&*self.key, &self.limiter);
                let sealed = seal_to(self.peers.get_mut(&to), packet, &mut self.io.out, keys);
                self.count_sealed(sealed, |c| &mut c.from_tun);
            }
            Verdict::Local => {}
            Verdict::Drop(reason) => self.drop_packet(reason),
        }
    }

    /// WireGuard's timers and idle links (call every 250 ms).
    pub fn handle_timeout(&mut self) {
        let mut lost = 0u32;
        for peer in self.peers.values_mut() {
            if peer.link.is_empty() {
                continue;
            }
            peer.quiet_ticks = peer.quiet_ticks.saturating_add(1);
            if peer.quiet_ticks >= IDLE_TICKS && peer.link.is_idle() {
                tracing::debug!(
                    spoke = peer.link.slot(),
                    "idle link: tunnels dropped until the next handshake"
                );
                lost += peer.rest();
                continue;
            }
            let Some(endpoint) = peer.endpoint else {
                continue;
            };
            let slot = peer.link.slot();
            for tunnel in peer.link.tunnels_mut() {
                match tunnel.tick(self.io.out.spare()) {
                    Tick::Send(len) => {
                        self.io.out.commit(endpoint, len);
                    }
                    Tick::Lost(n) => {
                        tracing::debug!(
                            spoke = slot,
                            packets = n,
                            "handshake gave up: waiting packets lost"
                        );
                        lost += n;
                    }
                    Tick::Idle => {}
                }
            }
        }
        self.drop_packets(DropReason::HandshakeTimeout, lost.into());
    }
}

/// The route's verdict for a packet the hub would forward, unless the
/// access policy (when it is enforced) denies its flow.
fn admit(
    access: &mut AccessGate,
    route: Verdict,
    origin: Origin,
    packet: &[u8],
    now_ms: u64,
) -> Verdict {
    match route {
        Verdict::Relay(_) | Verdict::Local
            if access.enforcing() && !access.check(origin, packet, now_ms) =>
        {
            Verdict::Drop(DropReason::Denied)
        }
        v => v,
    }
}

#[cfg(test)]
mod tests;
