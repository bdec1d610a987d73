//! The spoke's data plane: one UDP socket to the hub, one TUN, one
//! WireGuard tunnel per key epoch of the spoke–hub link.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::{Packet, Tunn, TunnResult};
use tasuki_core::admin_api::Counters;
use tasuki_core::keys::{KeyEpoch, PublicKey, StaticKey};
use tasuki_core::link::Link;
use tasuki_core::routing::DropReason;
use tasuki_core::DATAGRAM_BUFFER;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

/// Commands from the control side.
pub(crate) enum DpCommand {
    /// Install the tunnel for a newly received epoch.
    Install(KeyEpoch),
    /// Start a fresh handshake now (the hub may have restarted).
    Rehandshake,
    /// Report status.
    Status(oneshot::Sender<DpStatus>),
}

/// The data plane's status.
#[derive(Clone, Debug, Default)]
pub(crate) struct DpStatus {
    pub(crate) counters: Counters,
    pub(crate) epoch: Option<u64>,
    pub(crate) last_handshake_secs: Option<u64>,
}

/// Seconds an old epoch stays after its successor is confirmed.
const GRACE: Duration = Duration::from_secs(10);

pub(crate) struct DataPlane {
    store: Arc<crate::state::SpokeStore>,
    erase: Option<(u64, tokio::time::Instant)>,
    key: Arc<StaticKey>,
    link: Link,
    udp: UdpSocket,
    tun: tun::AsyncDevice,
    counters: Counters,
}

impl DataPlane {
    pub(crate) async fn new(
        store: Arc<crate::state::SpokeStore>,
        key: Arc<StaticKey>,
        hub_key: PublicKey,
        hub: SocketAddr,
        keepalive_secs: u16,
        tun: tun::AsyncDevice,
        epochs: &[KeyEpoch],
    ) -> anyhow::Result<Self> {
        let bind: SocketAddr = if hub.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let udp = UdpSocket::bind(bind).await?;
        udp.connect(hub).await?;
        let mut link = Link::new(0, hub_key, keepalive_secs);
        for e in epochs {
            link.install(&key, e, None);
        }
        Ok(Self {
            store,
            erase: None,
            key,
            link,
            udp,
            tun,
            counters: Counters::default(),
        })
    }

    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<DpCommand>) {
        let mut udp_buf = vec![0u8; DATAGRAM_BUFFER];
        let mut tun_buf = vec![0u8; DATAGRAM_BUFFER];
        let mut out = vec![0u8; DATAGRAM_BUFFER];
        let mut timers = tokio::time::interval(Duration::from_millis(250));
        // Start a session right away so the hub learns where we are.
        self.rehandshake(&mut out).await;
        loop {
            tokio::select! {
                r = self.udp.recv(&mut udp_buf) => match r {
                    Ok(n) => self.on_datagram(&udp_buf[..n], &mut out).await,
                    Err(e) => {
                        // ICMP unreachable while the hub is down shows up here.
                        tracing::trace!(error = %e, "UDP receive failed");
                    }
                },
                r = self.tun.recv(&mut tun_buf) => match r {
                    Ok(n) => self.on_tun_packet(&tun_buf[..n], &mut out).await,
                    Err(e) => {
                        tracing::error!(error = %e, "TUN read failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                cmd = commands.recv() => match cmd {
                    Some(DpCommand::Install(epoch)) => {
                        if !self.link.epochs().contains(&epoch.number) {
                            self.link.install(&self.key, &epoch, None);
                            tracing::info!(epoch = epoch.number, "key epoch installed; handshaking under it");
                            self.rehandshake(&mut out).await;
                        }
                    }
                    Some(DpCommand::Rehandshake) => self.rehandshake(&mut out).await,
                    Some(DpCommand::Status(reply)) => {
                        let _ = reply.send(self.status());
                    }
                    None => return,
                },
                _ = timers.tick() => self.on_timers(&mut out).await,
            }
        }
    }

    fn status(&mut self) -> DpStatus {
        let last = self
            .link
            .for_sending()
            .and_then(|t| t.tunn.time_since_last_handshake())
            .map(|d| d.as_secs());
        DpStatus {
            counters: self.counters.clone(),
            epoch: self
                .link
                .confirmed_epoch()
                .or(self.link.epochs().last().copied()),
            last_handshake_secs: last,
        }
    }

    fn count_drop(&mut self, reason: DropReason) {
        *self
            .counters
            .dropped
            .entry(reason.name().to_owned())
            .or_default() += 1;
    }

    async fn send(&mut self, datagram: &[u8]) {
        match self.udp.send(datagram).await {
            Ok(_) => self.counters.tx_datagrams += 1,
            Err(e) => tracing::trace!(error = %e, "UDP send failed"),
        }
    }

    async fn rehandshake(&mut self, out: &mut [u8]) {
        let Some(tunnel) = self.link.newest() else {
            return;
        };
        if let TunnResult::WriteToNetwork(p) = tunnel.tunn.format_handshake_initiation(out, true) {
            let p = p.to_vec();
            self.send(&p).await;
        }
    }

    async fn on_datagram(&mut self, datagram: &[u8], out: &mut [u8]) {
        self.counters.rx_datagrams += 1;
        let tunnel = match Tunn::parse_incoming_packet(datagram) {
            Ok(Packet::HandshakeInit(_)) => self.link.newest(),
            Ok(Packet::HandshakeResponse(p)) => self.link.by_receiver(p.receiver_idx),
            Ok(Packet::PacketCookieReply(p)) => self.link.by_receiver(p.receiver_idx),
            Ok(Packet::PacketData(p)) => self.link.by_receiver(p.receiver_idx),
            Err(_) => None,
        };
        let Some(tunnel) = tunnel else {
            self.count_drop(DropReason::BadDatagram);
            return;
        };
        let had_session = tunnel.has_session();
        let epoch = tunnel.epoch;
        let kind = datagram.first().copied();
        let mut to_network = Vec::new();
        let mut delivered = None;
        match tunnel.tunn.decapsulate(None, datagram, out) {
            TunnResult::WriteToNetwork(p) => {
                to_network.push(p.to_vec());
                let mut more = vec![0u8; DATAGRAM_BUFFER];
                while let TunnResult::WriteToNetwork(p) =
                    tunnel.tunn.decapsulate(None, &[], &mut more)
                {
                    to_network.push(p.to_vec());
                }
            }
            TunnResult::WriteToTunnelV4(p, _) => delivered = Some(p.len()),
            TunnResult::WriteToTunnelV6(..) => {}
            TunnResult::Done => {}
            TunnResult::Err(e) => {
                tracing::trace!(error = ?e, "datagram rejected");
                self.count_drop(DropReason::BadDatagram);
                return;
            }
        }
        if !had_session && tunnel.has_session() {
            self.counters.handshakes += 1;
            tracing::info!(epoch = tunnel.epoch, "WireGuard session up");
        }
        // An answered handshake or a decrypted data packet: the hub runs this epoch.
        if matches!(kind, Some(2) | Some(4)) && self.link.confirm(epoch) {
            self.on_confirmed(epoch);
        }
        for p in to_network {
            self.send(&p).await;
        }
        if let Some(len) = delivered {
            match self.tun.send(&out[..len]).await {
                Ok(_) => self.counters.to_tun += 1,
                Err(e) => tracing::debug!(error = %e, "TUN write failed"),
            }
        }
    }

    fn on_confirmed(&mut self, epoch: u64) {
        if self.link.epochs().iter().any(|e| *e < epoch) {
            tracing::info!(
                epoch,
                "epoch confirmed; older epochs end after the grace period"
            );
            self.erase = Some((epoch, tokio::time::Instant::now() + GRACE));
        }
    }

    fn erase_due(&mut self) {
        let Some((below, at)) = self.erase else {
            return;
        };
        if tokio::time::Instant::now() < at {
            return;
        }
        self.erase = None;
        self.link.retain(|e| e >= below);
        match self.store.erase_epochs_below(below) {
            Ok(gone) if !gone.is_empty() => tracing::info!(epochs = ?gone, "ended epochs erased"),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %format!("{e:#}"), "cannot erase ended epochs"),
        }
    }

    async fn on_tun_packet(&mut self, packet: &[u8], out: &mut [u8]) {
        if packet.first().map(|b| b >> 4) != Some(4) {
            self.count_drop(DropReason::Unsupported);
            return;
        }
        let Some(tunnel) = self.link.for_sending() else {
            self.count_drop(DropReason::NoSession);
            return;
        };
        if let TunnResult::WriteToNetwork(p) = tunnel.tunn.encapsulate(packet, out) {
            let p = p.to_vec();
            self.counters.from_tun += 1;
            self.send(&p).await;
        }
    }

    async fn on_timers(&mut self, out: &mut [u8]) {
        self.erase_due();
        let mut sends = Vec::new();
        for tunnel in self.link.tunnels_mut() {
            match tunnel.tunn.update_timers(out) {
                TunnResult::WriteToNetwork(p) => sends.push(p.to_vec()),
                TunnResult::Err(e) => tracing::trace!(error = ?e, "timer"),
                _ => {}
            }
        }
        for p in sends {
            self.send(&p).await;
        }
    }
}
