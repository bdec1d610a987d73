//! The hub's data plane: one UDP socket, one TUN, one WireGuard tunnel per
//! spoke link and key epoch. This task owns all of it; the control side
//! talks to it through [`DpCommand`]s. Every decision on an inner packet
//! comes from `tasuki_core::routing`.
//!
//! It works in passes: one read of the socket (many datagrams, by GRO) or of
//! the TUN (a super-packet split into packets), every packet decrypted,
//! routed and encrypted into reused buffers, then everything written at
//! once: datagrams in GSO batches, TUN packets coalesced. Spoke-to-spoke
//! traffic is relayed here in user space and never touches the TUN.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, TunnResult};
use tasuki_core::access::{AccessGate, CompiledAccess, Origin};
use tasuki_core::admin_api::Counters;
use tasuki_core::batch::Outbox;
use tasuki_core::flood::HandshakeGate;
use tasuki_core::keys::{KeyEpoch, PublicKey, StaticKey};
use tasuki_core::link::{slot_of_receiver, Link};
use tasuki_core::rotation::Usage;
use tasuki_core::routing::{DropReason, RouteTable, SpokeId, Verdict};
use tasuki_core::DATAGRAM_BUFFER;
use tasuki_shell::netdev::{Tun, TunWriter};
use tasuki_shell::passes::{open_datagram, Devices, Opened, PassHandler};
use tasuki_shell::udp::BatchUdp;
use tokio::sync::{mpsc, oneshot};

/// Handshakes per second the hub answers before it demands cookies.
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// Timer ticks (250 ms) a link stays quiet, with no WireGuard session left,
/// before its tunnels are dropped: three minutes, longer than a handshake
/// keeps retrying (90 s).
const IDLE_TICKS: u32 = 4 * 180;

/// What the data plane should carry for one spoke.
#[derive(Clone, Debug)]
pub(crate) struct LinkSpec {
    pub(crate) id: SpokeId,
    pub(crate) public_key: PublicKey,
    pub(crate) tunnel_addr: Ipv4Addr,
    /// Epochs whose tunnels should exist.
    pub(crate) epochs: Vec<KeyEpoch>,
    /// The epochs a handshake initiation may be under (answered under each).
    pub(crate) handshake_epochs: Vec<u64>,
    /// Whether the spoke's traffic is carried: a user allowed on it is logged
    /// in, or it is a service spoke (patent claims 2 and 14).
    pub(crate) carry: bool,
    /// The epoch known to carry the link's traffic (0: none yet).
    pub(crate) confirmed: u64,
}

/// Facts the data plane reports to the control side.
#[derive(Debug)]
pub(crate) enum DpEvent {
    /// A data packet decrypted under this epoch for the first time.
    Confirmed {
        spoke: SpokeId,
        epoch: u64,
        usage: Usage,
    },
    /// An authenticated packet came from a new address (the spoke roamed).
    EndpointChanged {
        spoke: SpokeId,
        from: SocketAddr,
        to: SocketAddr,
    },
}

/// Commands from the control side.
pub(crate) enum DpCommand {
    /// Add a link or update its epochs and address.
    Upsert(LinkSpec),
    /// Forget a link at once (revoked or denied spoke).
    Remove(SpokeId),
    /// Enforce this access policy from now on.
    Access(Arc<CompiledAccess>),
    /// Report status.
    Status(oneshot::Sender<DpStatus>),
    /// Answered once every command sent before it is in effect.
    Sync(oneshot::Sender<()>),
}

/// Per-link facts for status output.
#[derive(Clone, Debug, Default)]
pub(crate) struct LinkStatus {
    pub(crate) endpoint: Option<SocketAddr>,
    pub(crate) last_handshake_secs: Option<u64>,
    pub(crate) rx_bytes: u64,
    pub(crate) tx_bytes: u64,
    pub(crate) packets: u64,
    pub(crate) handshakes: u64,
}

/// The data plane's status.
#[derive(Clone, Debug, Default)]
pub(crate) struct DpStatus {
    pub(crate) counters: Counters,
    pub(crate) links: HashMap<SpokeId, LinkStatus>,
}

struct Peer {
    /// The WireGuard tunnels, one per epoch; empty while the spoke is away
    /// (built from `keys` when it next handshakes), which keeps a hub with
    /// thousands of enrolled but absent spokes small.
    link: Link,
    /// The keys of the epochs the spoke may use now.
    keys: Vec<KeyEpoch>,
    /// Timer ticks since the link last did anything; its tunnels are
    /// dropped once they hold no session and this reaches [`IDLE_TICKS`].
    quiet_ticks: u32,
    /// The epoch that carried traffic last: tunnels built again take it as
    /// confirmed, so a handshake the hub starts is under the epoch the
    /// spoke answers on, not a newer one it has not switched to.
    resume: u64,
    endpoint: Option<SocketAddr>,
    handshake_epochs: Vec<u64>,
    carry: bool,
    rx_bytes: u64,
    tx_bytes: u64,
    packets: u64,
    handshakes: u64,
}

impl Peer {
    /// Builds the tunnels of an idle link again from its keys.
    fn wake(&mut self, own: &StaticKey, limiter: &Arc<RateLimiter>) {
        if self.link.is_empty() {
            for epoch in &self.keys {
                self.link.install(own, epoch, Some(limiter.clone()));
            }
            if self.resume > 0 {
                self.link.confirm(self.resume);
            }
        }
    }

    /// Drops an idle link's tunnels, remembering the epoch that carried its
    /// traffic for [`Peer::wake`].
    fn rest(&mut self) {
        self.resume = self.resume.max(self.link.confirmed_epoch().unwrap_or(0));
        self.link.retain(|_| false);
    }

    fn usage(&self) -> Usage {
        Usage {
            packets: self.packets,
            bytes: self.rx_bytes + self.tx_bytes,
            handshakes: self.handshakes,
        }
    }
}

/// The data plane task: the devices and the state a pass works on.
pub(crate) struct DataPlane {
    io: Devices,
    core: Core,
}

/// Everything a pass reads and writes besides the devices.
struct Core {
    key: Arc<StaticKey>,
    public: boringtun::x25519::PublicKey,
    limiter: Arc<RateLimiter>,
    /// Per-address budget for initiations, checked before any cryptography.
    gate: HandshakeGate,
    /// The gate's clock.
    started: tokio::time::Instant,
    routes: RouteTable,
    /// Who may reach what, and the flows it allowed (for their replies).
    access: AccessGate,
    peers: HashMap<SpokeId, Peer>,
    by_key: HashMap<PublicKey, SpokeId>,
    counters: Counters,
    drops: BTreeMap<DropReason, u64>,
    events: mpsc::UnboundedSender<DpEvent>,
    /// Datagrams to send at the end of the pass.
    out: Outbox<SocketAddr>,
    /// Packets to write to the TUN at the end of the pass.
    to_tun: TunWriter,
    scratch: Vec<u8>,
}

impl DataPlane {
    pub(crate) fn new(
        key: Arc<StaticKey>,
        udp: BatchUdp,
        tun: Tun,
        routes: RouteTable,
        access: Arc<CompiledAccess>,
        events: mpsc::UnboundedSender<DpEvent>,
    ) -> Self {
        let public = key.public().to_x25519();
        Self {
            io: Devices::new(udp, tun),
            core: Core {
                limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
                gate: HandshakeGate::default(),
                started: tokio::time::Instant::now(),
                public,
                key,
                routes,
                // In force from the first packet: a hub in enforce mode
                // never passes a packet unchecked while it starts.
                access: AccessGate::new(access),
                peers: HashMap::new(),
                by_key: HashMap::new(),
                counters: Counters::default(),
                drops: BTreeMap::new(),
                events,
                out: Outbox::new(),
                to_tun: TunWriter::default(),
                scratch: vec![0; DATAGRAM_BUFFER],
            },
        }
    }

    /// Runs until the command channel closes.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<DpCommand>) {
        let mut timers = tokio::time::interval(Duration::from_millis(250));
        let mut limiter_reset = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                r = self.io.udp().readable() => match r {
                    Ok(()) => self.io.drain_udp(&mut self.core).await,
                    Err(e) => tracing::warn!(error = %e, "UDP socket failed"),
                },
                r = self.io.tun().readable() => match r {
                    Ok(()) => self.io.drain_tun(&mut self.core).await,
                    Err(e) => {
                        tracing::error!(error = %e, "TUN read failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.core.on_command(cmd),
                    None => return,
                },
                _ = timers.tick() => {
                    self.core.on_timers();
                    self.io.flush(&mut self.core).await;
                }
                _ = limiter_reset.tick() => {
                    self.core.limiter.reset_count();
                    let now = self.core.now_ms();
                    self.core.gate.prune(now);
                    self.core.access.prune(now);
                }
            }
        }
    }
}

impl Core {
    fn drop_packet(&mut self, reason: DropReason) {
        *self.drops.entry(reason).or_default() += 1;
    }

    fn on_command(&mut self, cmd: DpCommand) {
        match cmd {
            DpCommand::Upsert(spec) => {
                let peer = self.peers.entry(spec.id).or_insert_with(|| Peer {
                    link: Link::new(spec.id, spec.public_key, 0),
                    keys: Vec::new(),
                    quiet_ticks: 0,
                    resume: 0,
                    endpoint: None,
                    handshake_epochs: Vec::new(),
                    carry: false,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    packets: 0,
                    handshakes: 0,
                });
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
                peer.link.retain(|e| keep.contains(&e));
                peer.keys = spec.epochs;
                self.by_key.insert(spec.public_key, spec.id);
                self.routes.set_spoke(spec.id, spec.tunnel_addr);
                tracing::debug!(spoke = spec.id, epochs = ?keep, "link updated");
            }
            DpCommand::Remove(id) => {
                if let Some(peer) = self.peers.remove(&id) {
                    self.by_key.remove(&peer.link.peer());
                }
                self.routes.remove_spoke(id);
                tracing::info!(spoke = id, "link removed");
            }
            DpCommand::Access(policy) => {
                self.access.replace(policy);
                tracing::debug!(
                    enforcing = self.access.enforcing(),
                    flows = self.access.tracked(),
                    "access policy in effect"
                );
            }
            DpCommand::Sync(done) => {
                let _ = done.send(());
            }
            DpCommand::Status(reply) => {
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
                let _ = reply.send(DpStatus { counters, links });
            }
        }
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

    fn now_ms(&self) -> u64 {
        now_ms(self.started)
    }

    fn on_datagram(&mut self, src: SocketAddr, datagram: &[u8]) {
        self.counters.rx_datagrams += 1;
        // A flood of initiations from one address is dropped here, before
        // the MAC check and the cookie reply it would cost.
        if datagram.first() == Some(&1) && !self.gate.allow(src.ip(), self.now_ms()) {
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
                self.out.push(src, cookie);
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
                .decapsulate(Some(src.ip()), datagram, self.out.spare())
            {
                TunnResult::WriteToNetwork(p) => {
                    let len = p.len();
                    if self.out.commit(src, len) {
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
            let _ = self.events.send(DpEvent::EndpointChanged {
                spoke: id,
                from,
                to: src,
            });
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
            &mut tunnel.tunn,
            Some(src.ip()),
            src,
            datagram,
            &mut self.out,
            &mut self.to_tun,
        ) {
            Opened::Inner(len) => Some(len),
            Opened::Nothing => None,
            Opened::Ipv6 => {
                *self.drops.entry(DropReason::Unsupported).or_default() += 1;
                None
            }
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
        // A data packet decrypted (keepalives too): the spoke runs this epoch.
        if is_data && peer.link.confirm(epoch) {
            let _ = self.events.send(DpEvent::Confirmed {
                spoke: id,
                epoch,
                usage: peer.usage(),
            });
        }
        // The datagram authenticated: this is where the spoke is now, and
        // the link is in use.
        peer.quiet_ticks = 0;
        if let Some(from) = peer.endpoint.replace(src).filter(|f| *f != src) {
            let _ = self.events.send(DpEvent::EndpointChanged {
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
        let packet = self.to_tun.pending(len);
        let verdict = match self.routes.inbound(from, packet) {
            Verdict::Relay(_) | Verdict::Local
                if self.access.enforcing()
                    && !self
                        .access
                        .check(Origin::Spoke(from), packet, now_ms(self.started)) =>
            {
                Verdict::Drop(DropReason::Denied)
            }
            v => v,
        };
        match verdict {
            Verdict::Relay(to) => match seal_to(
                self.peers.get_mut(&to),
                packet,
                &mut self.out,
                (&self.key, &self.limiter),
            ) {
                Ok(()) => self.counters.relayed += 1,
                Err(reason) => *self.drops.entry(reason).or_default() += 1,
            },
            Verdict::Local => {
                self.to_tun.commit(len);
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

    fn on_tun_packet(&mut self, packet: &[u8]) {
        let verdict = match self.routes.outbound(packet) {
            Verdict::Relay(_)
                if self.access.enforcing()
                    && !self
                        .access
                        .check(Origin::Local, packet, now_ms(self.started)) =>
            {
                Verdict::Drop(DropReason::Denied)
            }
            v => v,
        };
        match verdict {
            Verdict::Relay(to) => match seal_to(
                self.peers.get_mut(&to),
                packet,
                &mut self.out,
                (&self.key, &self.limiter),
            ) {
                Ok(()) => self.counters.from_tun += 1,
                Err(reason) => self.drop_packet(reason),
            },
            Verdict::Local => {}
            Verdict::Drop(reason) => self.drop_packet(reason),
        }
    }

    fn on_timers(&mut self) {
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
                peer.rest();
                continue;
            }
            let Some(endpoint) = peer.endpoint else {
                continue;
            };
            for tunnel in peer.link.tunnels_mut() {
                match tunnel.tunn.update_timers(self.out.spare()) {
                    TunnResult::WriteToNetwork(p) => {
                        let len = p.len();
                        self.out.commit(endpoint, len);
                    }
                    TunnResult::Err(e) => tracing::trace!(error = ?e, "timer"),
                    _ => {}
                }
            }
        }
    }
}

/// Milliseconds since `started` on the monotonic clock.
fn now_ms(started: tokio::time::Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

/// Encrypts an inner packet to a spoke into the outbox, or says why not.
fn seal_to(
    peer: Option<&mut Peer>,
    packet: &[u8],
    out: &mut Outbox<SocketAddr>,
    (own, limiter): (&StaticKey, &Arc<RateLimiter>),
) -> Result<(), DropReason> {
    let peer = peer.ok_or(DropReason::NoRoute)?;
    if !peer.carry {
        return Err(DropReason::NotLoggedIn);
    }
    let endpoint = peer.endpoint.ok_or(DropReason::NoSession)?;
    peer.wake(own, limiter);
    peer.quiet_ticks = 0;
    let tunnel = peer.link.for_sending().ok_or(DropReason::NoSession)?;
    let spare = out.spare();
    if packet.len() + 32 > spare.len() {
        return Err(DropReason::Unsupported);
    }
    match tunnel.tunn.encapsulate(packet, spare) {
        TunnResult::WriteToNetwork(p) => {
            let len = p.len();
            if !out.commit(endpoint, len) {
                return Err(DropReason::Unsupported);
            }
            peer.tx_bytes += len as u64;
            peer.packets += 1;
            Ok(())
        }
        // Queued inside the tunnel until its handshake completes.
        _ => Ok(()),
    }
}

impl PassHandler for Core {
    fn on_datagram(&mut self, from: SocketAddr, datagram: &[u8]) {
        Core::on_datagram(self, from, datagram);
    }

    fn on_tun_packet(&mut self, packet: &[u8]) {
        Core::on_tun_packet(self, packet);
    }

    fn outbox(&mut self) -> &mut Outbox<SocketAddr> {
        &mut self.out
    }

    fn to_tun(&mut self) -> &mut TunWriter {
        &mut self.to_tun
    }

    fn sent(&mut self, count: u64, _bytes: u64) {
        self.counters.tx_datagrams += count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    /// An idle link's tunnels are dropped and built again: the epoch that
    /// carried traffic is still the one the hub sends under, not a newer
    /// one the spoke holds but has not switched to.
    #[test]
    fn a_rebuilt_link_sends_under_the_epoch_that_carried_traffic() {
        let hub = StaticKey::generate(&mut OsRng);
        let spoke = StaticKey::generate(&mut OsRng);
        let limiter = Arc::new(RateLimiter::new(&hub.public().to_x25519(), 10));
        let keys: Vec<KeyEpoch> = (1..=3).map(|k| KeyEpoch::issue(k, 0, &mut OsRng)).collect();
        let mut peer = Peer {
            link: Link::new(1, spoke.public(), 0),
            keys,
            quiet_ticks: 0,
            resume: 2,
            endpoint: None,
            handshake_epochs: vec![2, 3],
            carry: true,
            rx_bytes: 0,
            tx_bytes: 0,
            packets: 0,
            handshakes: 0,
        };
        peer.wake(&hub, &limiter);
        assert_eq!(peer.link.epochs(), vec![1, 2, 3]);
        assert_eq!(peer.link.for_sending().map(|t| t.epoch), Some(2));
        // Traffic moved to epoch 3, then the link went quiet and was dropped.
        peer.link.confirm(3);
        peer.rest();
        assert!(peer.link.is_empty());
        peer.wake(&hub, &limiter);
        assert_eq!(peer.link.for_sending().map(|t| t.epoch), Some(3));
    }
}
