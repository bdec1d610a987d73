//! The hub's data plane: one UDP socket, one TUN, one WireGuard tunnel per
//! spoke link and key epoch. This task owns all of it; the control side
//! talks to it through [`DpCommand`]s. Every decision on an inner packet
//! comes from `tasuki_core::routing`.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, TunnResult};
use tasuki_core::admin_api::Counters;
use tasuki_core::keys::{KeyEpoch, PublicKey, StaticKey};
use tasuki_core::link::{slot_of_receiver, Link};
use tasuki_core::rotation::Usage;
use tasuki_core::routing::{DropReason, RouteTable, SpokeId, Verdict};
use tasuki_core::DATAGRAM_BUFFER;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// Handshakes per second the hub answers before it demands cookies.
const HANDSHAKE_RATE_LIMIT: u64 = 100;

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
    /// Report status.
    Status(oneshot::Sender<DpStatus>),
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
    link: Link,
    endpoint: Option<SocketAddr>,
    handshake_epochs: Vec<u64>,
    carry: bool,
    rx_bytes: u64,
    tx_bytes: u64,
    packets: u64,
    handshakes: u64,
}

impl Peer {
    fn usage(&self) -> Usage {
        Usage {
            packets: self.packets,
            bytes: self.rx_bytes + self.tx_bytes,
            handshakes: self.handshakes,
        }
    }
}

/// The data plane task's state.
pub(crate) struct DataPlane {
    key: Arc<StaticKey>,
    public: boringtun::x25519::PublicKey,
    limiter: Arc<RateLimiter>,
    udp: UdpSocket,
    tun: tun::AsyncDevice,
    routes: RouteTable,
    peers: HashMap<SpokeId, Peer>,
    by_key: HashMap<PublicKey, SpokeId>,
    counters: Counters,
    drops: BTreeMap<DropReason, u64>,
    events: mpsc::UnboundedSender<DpEvent>,
}

impl DataPlane {
    pub(crate) fn new(
        key: Arc<StaticKey>,
        udp: UdpSocket,
        tun: tun::AsyncDevice,
        routes: RouteTable,
        events: mpsc::UnboundedSender<DpEvent>,
    ) -> Self {
        let public = key.public().to_x25519();
        Self {
            limiter: Arc::new(RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT)),
            public,
            key,
            udp,
            tun,
            routes,
            peers: HashMap::new(),
            by_key: HashMap::new(),
            counters: Counters::default(),
            drops: BTreeMap::new(),
            events,
        }
    }

    /// Runs until the command channel closes.
    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<DpCommand>) {
        let mut udp_buf = vec![0u8; DATAGRAM_BUFFER];
        let mut tun_buf = vec![0u8; DATAGRAM_BUFFER];
        let mut out = vec![0u8; DATAGRAM_BUFFER];
        let mut out2 = vec![0u8; DATAGRAM_BUFFER];
        let mut timers = tokio::time::interval(Duration::from_millis(250));
        let mut limiter_reset = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                r = self.udp.recv_from(&mut udp_buf) => match r {
                    Ok((n, src)) => self.on_datagram(src, &udp_buf[..n], &mut out, &mut out2).await,
                    Err(e) => tracing::warn!(error = %e, "UDP receive failed"),
                },
                r = self.tun.recv(&mut tun_buf) => match r {
                    Ok(n) => self.on_tun_packet(&tun_buf[..n], &mut out).await,
                    Err(e) => {
                        tracing::error!(error = %e, "TUN read failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.on_command(cmd),
                    None => return,
                },
                _ = timers.tick() => self.on_timers(&mut out).await,
                _ = limiter_reset.tick() => self.limiter.reset_count(),
            }
        }
    }

    fn drop_packet(&mut self, reason: DropReason) {
        *self.drops.entry(reason).or_default() += 1;
    }

    fn on_command(&mut self, cmd: DpCommand) {
        match cmd {
            DpCommand::Upsert(spec) => {
                let peer = self.peers.entry(spec.id).or_insert_with(|| Peer {
                    link: Link::new(spec.id, spec.public_key, 0),
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
                }
                for epoch in &spec.epochs {
                    peer.link
                        .install(&self.key, epoch, Some(self.limiter.clone()));
                }
                let keep: Vec<u64> = spec.epochs.iter().map(|e| e.number).collect();
                peer.link.retain(|e| keep.contains(&e));
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
            DpCommand::Status(reply) => {
                let mut counters = self.counters.clone();
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

    async fn send(&mut self, to: SocketAddr, datagram: &[u8]) {
        match self.udp.send_to(datagram, to).await {
            Ok(_) => self.counters.tx_datagrams += 1,
            Err(e) => tracing::debug!(error = %e, %to, "UDP send failed"),
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

    async fn on_datagram(
        &mut self,
        src: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
        out2: &mut [u8],
    ) {
        self.counters.rx_datagrams += 1;
        let verified = self.limiter.verify_packet(Some(src.ip()), datagram, out);
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
                let cookie = cookie.to_vec();
                self.send(src, &cookie).await;
                return;
            }
            Err(_) => {
                self.drop_packet(DropReason::BadDatagram);
                return;
            }
        };
        let mut to_network: Vec<Vec<u8>> = Vec::new();
        let mut delivered: Option<usize> = None;
        {
            let Some(peer) = self.peers.get_mut(&id) else {
                self.drop_packet(DropReason::UnknownPeer);
                return;
            };
            let Some(receiver) = receiver else {
                // A handshake initiation: WireGuard's responder cannot see
                // which preshared key the spoke used, so answer under every
                // epoch the spoke may be on; it keeps the answer that opens.
                let mut candidates = peer.handshake_epochs.clone();
                if candidates.is_empty() {
                    candidates.extend(peer.link.epochs().last());
                }
                for e in candidates.iter().rev() {
                    let Some(t) = peer.link.by_epoch(*e) else {
                        continue;
                    };
                    match t.tunn.decapsulate(Some(src.ip()), datagram, out) {
                        TunnResult::WriteToNetwork(p) => to_network.push(p.to_vec()),
                        TunnResult::Err(err) => {
                            tracing::trace!(spoke = id, error = ?err, "initiation rejected")
                        }
                        _ => {}
                    }
                }
                tracing::debug!(
                    spoke = id,
                    ?candidates,
                    answers = to_network.len(),
                    "handshake initiation"
                );
                if to_network.is_empty() {
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
                self.counters.handshakes += 1;
                peer.handshakes += 1;
                for p in to_network {
                    self.send(src, &p).await;
                }
                return;
            };
            let tunnel = peer.link.by_receiver(receiver);
            let Some(tunnel) = tunnel else {
                self.drop_packet(DropReason::BadDatagram);
                return;
            };
            let had_session = tunnel.has_session();
            let epoch = tunnel.epoch;
            let is_data = datagram.first() == Some(&4);
            match tunnel.tunn.decapsulate(Some(src.ip()), datagram, out) {
                TunnResult::WriteToNetwork(p) => {
                    to_network.push(p.to_vec());
                    while let TunnResult::WriteToNetwork(p) =
                        tunnel.tunn.decapsulate(None, &[], out2)
                    {
                        to_network.push(p.to_vec());
                    }
                }
                TunnResult::WriteToTunnelV4(p, _) => delivered = Some(p.len()),
                TunnResult::WriteToTunnelV6(..) => {
                    *self.drops.entry(DropReason::Unsupported).or_default() += 1;
                }
                TunnResult::Done => {}
                TunnResult::Err(e) => {
                    tracing::trace!(spoke = id, error = ?e, "datagram rejected");
                    *self.drops.entry(DropReason::BadDatagram).or_default() += 1;
                    return;
                }
            }
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
            // The datagram authenticated: this is where the spoke is now.
            if let Some(from) = peer.endpoint.replace(src).filter(|f| *f != src) {
                let _ = self.events.send(DpEvent::EndpointChanged {
                    spoke: id,
                    from,
                    to: src,
                });
            }
            peer.rx_bytes += datagram.len() as u64;
        }
        for p in to_network {
            self.send(src, &p).await;
        }
        if let Some(len) = delivered {
            let inner = out[..len].to_vec();
            self.forward_inner(id, &inner, out2).await;
        }
    }

    async fn forward_inner(&mut self, from: SpokeId, packet: &[u8], out: &mut [u8]) {
        if !self.peers.get(&from).is_some_and(|p| p.carry) {
            self.drop_packet(DropReason::NotLoggedIn);
            return;
        }
        match self.routes.inbound(from, packet) {
            Verdict::Relay(to) => {
                if self.encrypt_to(to, packet, out).await {
                    self.counters.relayed += 1;
                }
            }
            Verdict::Local => match self.tun.send(packet).await {
                Ok(_) => self.counters.to_tun += 1,
                Err(e) => tracing::debug!(error = %e, "TUN write failed"),
            },
            Verdict::Drop(reason) => {
                if reason == DropReason::ForgedSource {
                    tracing::debug!(spoke = from, "dropped a packet with a forged inner source");
                }
                self.drop_packet(reason);
            }
        }
    }

    /// Encrypts an inner packet to spoke `to` and sends it; false if it could not.
    async fn encrypt_to(&mut self, to: SpokeId, packet: &[u8], out: &mut [u8]) -> bool {
        let Some(peer) = self.peers.get_mut(&to) else {
            self.drop_packet(DropReason::NoRoute);
            return false;
        };
        if !peer.carry {
            self.drop_packet(DropReason::NotLoggedIn);
            return false;
        }
        let Some(endpoint) = peer.endpoint else {
            self.drop_packet(DropReason::NoSession);
            return false;
        };
        let Some(tunnel) = peer.link.for_sending() else {
            self.drop_packet(DropReason::NoSession);
            return false;
        };
        match tunnel.tunn.encapsulate(packet, out) {
            TunnResult::WriteToNetwork(p) => {
                let len = p.len();
                peer.tx_bytes += len as u64;
                peer.packets += 1;
                let datagram = out[..len].to_vec();
                self.send(endpoint, &datagram).await;
                true
            }
            _ => false,
        }
    }

    async fn on_tun_packet(&mut self, packet: &[u8], out: &mut [u8]) {
        match self.routes.outbound(packet) {
            Verdict::Relay(to) => {
                if self.encrypt_to(to, packet, out).await {
                    self.counters.from_tun += 1;
                }
            }
            Verdict::Local => {}
            Verdict::Drop(reason) => self.drop_packet(reason),
        }
    }

    async fn on_timers(&mut self, out: &mut [u8]) {
        let mut sends = Vec::new();
        for peer in self.peers.values_mut() {
            let Some(endpoint) = peer.endpoint else {
                continue;
            };
            for tunnel in peer.link.tunnels_mut() {
                match tunnel.tunn.update_timers(out) {
                    TunnResult::WriteToNetwork(p) => sends.push((endpoint, p.to_vec())),
                    TunnResult::Err(e) => tracing::trace!(error = ?e, "timer"),
                    _ => {}
                }
            }
        }
        for (to, p) in sends {
            self.send(to, &p).await;
        }
    }
}
