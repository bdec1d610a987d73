//! The spoke's data plane: one UDP socket to the hub, one TUN, one
//! WireGuard tunnel per key epoch of the spoke–hub link. Which epoch to run,
//! when to move on and when to stop is decided by
//! `tasuki_core::spoke_keys::SpokeKeys`; this task counts, moves bytes and acts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::{Packet, Tunn, TunnResult};
use tasuki_core::admin_api::Counters;
use tasuki_core::keys::{PublicKey, StaticKey};
use tasuki_core::link::Link;
use tasuki_core::routing::DropReason;
use tasuki_core::spoke_keys::{HeldEpoch, SpokeKeys};
use tasuki_core::DATAGRAM_BUFFER;
use tasuki_shell::unix_now;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};

use crate::state::SpokeStore;

/// Commands from the control side.
pub(crate) enum DpCommand {
    /// A delivered epoch, stored and acknowledged.
    Hold(HeldEpoch),
    /// Update notification: switch to this epoch now.
    SwitchTo(u64),
    /// Start a fresh handshake now (the hub may have restarted).
    Rehandshake,
    /// The hub revoked this spoke: drop every tunnel and key.
    Revoked,
    /// Whether the hub carries our traffic (a user is logged in).
    Carrying(bool),
    /// Report status.
    Status(oneshot::Sender<DpStatus>),
}

/// What the data plane tells the control loop (for the hub).
#[derive(Clone, Copy, Debug)]
pub(crate) enum SpokeEvent {
    /// This epoch now carries traffic (update report).
    Confirmed(u64),
    /// The current epoch is over and we may not move on alone (update request).
    RequestUpdate,
    /// A hard limit stopped traffic (distribution request).
    NeedKeys,
}

/// The data plane's status.
#[derive(Clone, Debug, Default)]
pub(crate) struct DpStatus {
    pub(crate) counters: Counters,
    pub(crate) epoch: Option<u64>,
    pub(crate) held: Vec<u64>,
    pub(crate) blocked: bool,
    pub(crate) last_handshake_secs: Option<u64>,
}

pub(crate) struct DataPlane {
    store: Arc<SpokeStore>,
    key: Arc<StaticKey>,
    keys: SpokeKeys,
    link: Link,
    udp: UdpSocket,
    tun: tun::AsyncDevice,
    counters: Counters,
    /// Datagrams in and out, for the epoch's packet budget.
    packets: u64,
    /// Datagram bytes in and out, for the epoch's byte budget.
    bytes: u64,
    /// The epoch whose handshake was last started by a switch.
    switching: Option<u64>,
    blocked: bool,
    /// The hub carries our traffic only while a user is logged in (or for a
    /// service spoke); until then packets are dropped here, where the user
    /// can see why.
    carrying: bool,
    erase: Option<(u64, tokio::time::Instant)>,
    events: mpsc::UnboundedSender<SpokeEvent>,
}

impl DataPlane {
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn new(
        store: Arc<SpokeStore>,
        key: Arc<StaticKey>,
        hub_key: PublicKey,
        hub: SocketAddr,
        keepalive_secs: u16,
        tun: tun::AsyncDevice,
        events: mpsc::UnboundedSender<SpokeEvent>,
    ) -> anyhow::Result<Self> {
        let bind: SocketAddr = if hub.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let udp = UdpSocket::bind(bind).await?;
        udp.connect(hub).await?;
        let held = store.epochs()?;
        let current = store.current()?;
        let mut link = Link::new(0, hub_key, keepalive_secs);
        for h in &held {
            link.install(&key, &h.epoch, None);
        }
        Ok(Self {
            keys: SpokeKeys::new(held, current, unix_now()),
            store,
            key,
            link,
            udp,
            tun,
            counters: Counters::default(),
            packets: 0,
            bytes: 0,
            switching: None,
            blocked: false,
            carrying: true,
            // Epochs older than the current one (left by a restart) end after the grace period.
            erase: (current > 0).then(|| {
                (
                    current,
                    tokio::time::Instant::now() + Duration::from_secs(10),
                )
            }),
            events,
        })
    }

    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<DpCommand>) {
        let mut udp_buf = vec![0u8; DATAGRAM_BUFFER];
        let mut tun_buf = vec![0u8; DATAGRAM_BUFFER];
        let mut out = vec![0u8; DATAGRAM_BUFFER];
        let mut timers = tokio::time::interval(Duration::from_millis(250));
        // Start a session right away so the hub learns where we are.
        let first = self.keys.current();
        let first = if first > 0 {
            first
        } else {
            self.link.epochs().last().copied().unwrap_or(0)
        };
        self.handshake(first, &mut out).await;
        loop {
            tokio::select! {
                r = self.udp.recv(&mut udp_buf) => match r {
                    Ok(n) => self.on_datagram(&udp_buf[..n], &mut out).await,
                    // ICMP unreachable while the hub is down shows up here.
                    Err(e) => tracing::trace!(error = %e, "UDP receive failed"),
                },
                r = self.tun.recv(&mut tun_buf) => match r {
                    Ok(n) => self.on_tun_packet(&tun_buf[..n], &mut out).await,
                    Err(e) => {
                        tracing::error!(error = %e, "TUN read failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                cmd = commands.recv() => match cmd {
                    Some(DpCommand::Hold(h)) => {
                        self.link.install(&self.key, &h.epoch, None);
                        self.keys.hold(h);
                        self.poll_keys(&mut out).await;
                    }
                    Some(DpCommand::SwitchTo(k)) => {
                        self.keys.request_switch(k);
                        self.poll_keys(&mut out).await;
                    }
                    Some(DpCommand::Rehandshake) => {
                        let k = self.switching.unwrap_or(self.keys.current());
                        self.handshake(k, &mut out).await;
                    }
                    Some(DpCommand::Carrying(c)) => self.carrying = c,
                    Some(DpCommand::Revoked) => {
                        self.link.retain(|_| false);
                        self.keys = SpokeKeys::default();
                        self.switching = None;
                    }
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
        let current = self.keys.current();
        DpStatus {
            counters: self.counters.clone(),
            epoch: (current > 0).then_some(current),
            held: self.keys.held(),
            blocked: self.blocked,
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
        self.packets += 1;
        self.bytes += datagram.len() as u64;
        match self.udp.send(datagram).await {
            Ok(_) => self.counters.tx_datagrams += 1,
            Err(e) => tracing::trace!(error = %e, "UDP send failed"),
        }
    }

    /// Starts a handshake under epoch `k` (if its tunnel exists).
    async fn handshake(&mut self, k: u64, out: &mut [u8]) {
        let Some(tunnel) = self.link.by_epoch(k) else {
            return;
        };
        if let TunnResult::WriteToNetwork(p) = tunnel.tunn.format_handshake_initiation(out, true) {
            let p = p.to_vec();
            self.send(&p).await;
        }
    }

    /// Asks the key state what to do, and does it.
    async fn poll_keys(&mut self, out: &mut [u8]) {
        let poll = self.keys.poll(unix_now(), self.packets, self.bytes);
        if poll.blocked != self.blocked {
            self.blocked = poll.blocked;
            if poll.blocked {
                let _ = self.events.send(SpokeEvent::NeedKeys);
                tracing::warn!(
                    epoch = self.keys.current(),
                    "key epoch over its hard limit and no next epoch held: traffic stopped until the hub sends a new key"
                );
            } else {
                tracing::info!("traffic resumed");
            }
        }
        if poll.request_update {
            tracing::info!(
                epoch = self.keys.current(),
                "key epoch over: asking the hub for an update"
            );
            let _ = self.events.send(SpokeEvent::RequestUpdate);
        }
        if let Some(k) = poll.switch_to {
            if self.switching != Some(k) && k != self.keys.current() {
                self.switching = Some(k);
                tracing::info!(from = self.keys.current(), to = k, "switching key epoch");
                self.handshake(k, out).await;
            }
        }
    }

    async fn on_datagram(&mut self, datagram: &[u8], out: &mut [u8]) {
        self.counters.rx_datagrams += 1;
        self.packets += 1;
        self.bytes += datagram.len() as u64;
        let tunnel = match Tunn::parse_incoming_packet(datagram) {
            Ok(Packet::HandshakeInit(_)) => {
                let k = self.keys.current();
                if k > 0 {
                    self.link.by_epoch(k)
                } else {
                    self.link.newest()
                }
            }
            Ok(Packet::HandshakeResponse(p)) => self.link.by_receiver(p.receiver_idx),
            Ok(Packet::PacketCookieReply(p)) => self.link.by_receiver(p.receiver_idx),
            Ok(Packet::PacketData(p)) => self.link.by_receiver(p.receiver_idx),
            Err(_) => None,
        };
        let Some(tunnel) = tunnel else {
            self.count_drop(DropReason::BadDatagram);
            return;
        };
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
            TunnResult::WriteToTunnelV6(..) | TunnResult::Done => {}
            TunnResult::Err(e) => {
                // Expected during a switch: the hub answers an initiation under
                // every epoch we may be on, and only one answer opens.
                tracing::debug!(error = ?e, epoch, kind, "datagram rejected");
                self.count_drop(DropReason::BadDatagram);
                return;
            }
        }
        // An answered handshake or a decrypted data packet: the hub runs this epoch.
        if matches!(kind, Some(2) | Some(4)) && self.link.confirm(epoch) {
            if kind == Some(2) {
                self.counters.handshakes += 1;
            }
            self.on_confirmed(epoch);
        }
        for p in to_network {
            self.send(&p).await;
        }
        if let Some(len) = delivered {
            if self.blocked {
                self.count_drop(DropReason::KeyExpired);
                return;
            }
            match self.tun.send(&out[..len]).await {
                Ok(_) => self.counters.to_tun += 1,
                Err(e) => tracing::debug!(error = %e, "TUN write failed"),
            }
        }
    }

    fn on_confirmed(&mut self, epoch: u64) {
        if !self
            .keys
            .on_confirmed(epoch, unix_now(), self.packets, self.bytes)
        {
            return;
        }
        if self.switching.is_some_and(|s| s <= epoch) {
            self.switching = None;
        }
        self.blocked = false;
        tracing::info!(epoch, "key epoch carries traffic");
        if let Err(e) = self.store.save_current(epoch) {
            tracing::error!(error = %format!("{e:#}"), "cannot record the current epoch");
        }
        let _ = self.events.send(SpokeEvent::Confirmed(epoch));
        if self.link.epochs().iter().any(|e| *e < epoch) {
            let grace = self
                .keys
                .get(epoch)
                .map_or(10, |h| h.lifetime.slack_secs.max(1));
            self.erase = Some((
                epoch,
                tokio::time::Instant::now() + Duration::from_secs(grace),
            ));
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
        self.keys.erase_below(below);
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
        if self.blocked {
            self.count_drop(DropReason::KeyExpired);
            return;
        }
        if !self.carrying {
            self.count_drop(DropReason::NotLoggedIn);
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
        self.poll_keys(out).await;
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
