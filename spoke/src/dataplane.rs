//! The spoke's data plane: one UDP socket to the hub, one TUN, one
//! WireGuard tunnel per key epoch of the spoke–hub link. Which epoch to run,
//! when to move on and when to stop is decided by
//! `tasuki_core::spoke_keys::SpokeKeys`; this task counts, moves bytes and acts.
//!
//! Like the hub's, it works in passes: one read of the socket (many
//! datagrams, by GRO) or of the TUN (a super-packet split into packets),
//! every packet opened or sealed into reused buffers, then one GSO send and
//! one coalescing TUN write.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use boringtun::noise::{Packet, Tunn, TunnResult};
use tasuki_core::admin_api::Counters;
use tasuki_core::batch::Outbox;
use tasuki_core::keys::{PublicKey, StaticKey};
use tasuki_core::link::{Link, Sealed, Tick};
use tasuki_core::routing::DropReason;
use tasuki_core::spoke_keys::{HeldEpoch, SpokeKeys};
use tasuki_shell::netdev::{Tun, TunWriter};
use tasuki_shell::passes::{open_datagram, Devices, Opened, PassHandler, TunSink};
use tasuki_shell::udp::BatchUdp;
// Epoch ages count on the boot clock: a wall-clock jump (NTP) neither ends
// an epoch early nor stretches it, and time asleep counts.
use tasuki_shell::boot_secs;
use tokio::sync::{mpsc, oneshot};

use crate::state::SpokeStore;
use crate::writer::{StoreJob, StoreWriter};

/// Commands from the control side.
pub(crate) enum DpCommand {
    /// A delivered epoch, stored and acknowledged.
    Hold(HeldEpoch),
    /// Update notification: switch to this epoch now.
    SwitchTo(u64),
    /// Start a fresh handshake now (the hub may have restarted).
    Rehandshake,
    /// The hub's endpoint now resolves to this address (it moved): send there.
    HubAt(SocketAddr),
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

/// The data plane task: the devices and the state a pass works on.
pub(crate) struct DataPlane {
    io: Devices,
    core: Core,
}

/// Everything a pass reads and writes besides the devices.
struct Core {
    /// Store writes, done off the data plane's thread.
    writer: StoreWriter,
    key: Arc<StaticKey>,
    hub: SocketAddr,
    keys: SpokeKeys,
    link: Link,
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
    events: mpsc::UnboundedSender<SpokeEvent>,
    /// Datagrams to send at the end of the pass.
    out: Outbox<SocketAddr>,
    /// Packets to write to the TUN at the end of the pass.
    to_tun: TunWriter,
}

impl DataPlane {
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn new(
        store: Arc<SpokeStore>,
        key: Arc<StaticKey>,
        hub_key: PublicKey,
        hub: SocketAddr,
        keepalive_secs: u16,
        tun: Tun,
        events: mpsc::UnboundedSender<SpokeEvent>,
    ) -> anyhow::Result<Self> {
        let bind: SocketAddr = if hub.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let udp = BatchUdp::bind(bind)?;
        udp.connect(hub).await?;
        let held = store.epochs()?;
        let current = store.current()?;
        let mut link = Link::new(0, hub_key, keepalive_secs);
        for h in &held {
            link.install(&key, &h.epoch, None);
        }
        Ok(Self {
            io: Devices::new(udp, tun),
            core: Core {
                keys: SpokeKeys::new(held, current, boot_secs()),
                writer: StoreWriter::spawn(store, events.clone())?,
                key,
                hub,
                link,
                counters: Counters::default(),
                packets: 0,
                bytes: 0,
                switching: None,
                blocked: false,
                carrying: true,
                events,
                out: Outbox::new(),
                to_tun: TunWriter::default(),
            },
        })
    }

    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<DpCommand>) {
        let mut timers = tokio::time::interval(Duration::from_millis(250));
        // Start a session right away so the hub learns where we are.
        let first = self.core.keys.current();
        let first = if first > 0 {
            first
        } else {
            self.core.link.epochs().last().copied().unwrap_or(0)
        };
        self.core.handshake(first);
        self.io.flush(&mut self.core).await;
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
                    Some(DpCommand::HubAt(addr)) => self.move_to(addr).await,
                    Some(cmd) => {
                        self.core.on_command(cmd);
                        self.io.flush(&mut self.core).await;
                    }
                    None => return,
                },
                _ = timers.tick() => {
                    self.core.on_timers();
                    self.io.flush(&mut self.core).await;
                }
            }
        }
    }

    /// Sends to the hub's new address from now on.
    async fn move_to(&mut self, addr: SocketAddr) {
        if addr == self.core.hub {
            return;
        }
        match self.io.udp().connect(addr).await {
            Ok(()) => {
                tracing::info!(from = %self.core.hub, to = %addr, "the hub moved: data plane follows");
                self.core.hub = addr;
            }
            Err(e) => tracing::warn!(error = %e, %addr, "cannot send to the hub's new address"),
        }
    }
}

impl Core {
    fn on_command(&mut self, cmd: DpCommand) {
        match cmd {
            DpCommand::Hold(h) => {
                self.link.install(&self.key, &h.epoch, None);
                self.keys.hold(h);
                self.poll_keys();
            }
            DpCommand::SwitchTo(k) => {
                self.keys.request_switch(k);
                self.poll_keys();
            }
            DpCommand::Rehandshake => {
                let k = self.switching.unwrap_or(self.keys.current());
                self.handshake(k);
            }
            DpCommand::Carrying(c) => self.carrying = c,
            DpCommand::HubAt(_) => {}
            DpCommand::Revoked => {
                self.link.retain(|_| false);
                self.keys = SpokeKeys::default();
                self.switching = None;
            }
            DpCommand::Status(reply) => {
                let _ = reply.send(self.status());
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
        self.count_lost(reason, 1);
    }

    fn count_lost(&mut self, reason: DropReason, count: u64) {
        if count > 0 {
            *self
                .counters
                .dropped
                .entry(reason.name().to_owned())
                .or_default() += count;
        }
    }

    /// Starts a handshake under epoch `k` (if its tunnel exists).
    fn handshake(&mut self, k: u64) {
        let Some(tunnel) = self.link.by_epoch(k) else {
            return;
        };
        if let TunnResult::WriteToNetwork(p) = tunnel
            .tunn
            .format_handshake_initiation(self.out.spare(), true)
        {
            let len = p.len();
            self.out.commit(self.hub, len);
        }
    }

    /// Asks the key state what to do, and does it.
    fn poll_keys(&mut self) {
        let poll = self.keys.poll(boot_secs(), self.packets, self.bytes);
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
                self.handshake(k);
            }
        }
    }

    fn on_datagram(&mut self, datagram: &[u8]) {
        self.counters.rx_datagrams += 1;
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
        let inner = match open_datagram(
            tunnel,
            None,
            self.hub,
            datagram,
            &mut self.out,
            &mut self.to_tun,
        ) {
            Opened::Inner(len) => Some(len),
            Opened::Nothing => None,
            Opened::Ipv6 => {
                self.count_drop(DropReason::Unsupported);
                None
            }
            Opened::Rejected(e) => {
                // Expected during a switch: the hub answers an initiation under
                // every epoch we may be on, and only one answer opens.
                tracing::debug!(error = ?e, epoch, kind, "datagram rejected");
                self.count_drop(DropReason::BadDatagram);
                return;
            }
        };
        // Usage, as the hub counts it: authenticated datagrams received
        // and data messages sealed.
        self.packets += 1;
        self.bytes += datagram.len() as u64;
        // An answered handshake or a decrypted data packet: the hub runs this epoch.
        if matches!(kind, Some(2) | Some(4)) && self.link.confirm(epoch) {
            if kind == Some(2) {
                self.counters.handshakes += 1;
            }
            self.on_confirmed(epoch);
        }
        if let Some(len) = inner {
            if self.blocked {
                self.count_drop(DropReason::KeyExpired);
                return;
            }
            self.to_tun.commit(len);
            self.counters.to_tun += 1;
        }
    }

    fn on_confirmed(&mut self, epoch: u64) {
        if !self
            .keys
            .on_confirmed(epoch, boot_secs(), self.packets, self.bytes)
        {
            return;
        }
        if self.switching.is_some_and(|s| s <= epoch) {
            self.switching = None;
        }
        self.blocked = false;
        tracing::info!(epoch, "key epoch carries traffic");
        // Stored first, then reported to the hub (by the writer).
        self.writer.send(StoreJob::Current(epoch));
    }

    /// Erases the ended epochs whose grace has passed (tunnels, keys, then
    /// the store, off this thread).
    fn erase_due(&mut self) {
        let Some(below) = self.keys.take_erasable(boot_secs()) else {
            return;
        };
        let lost = self.link.retain(|e| e >= below);
        self.count_lost(DropReason::HandshakeTimeout, lost.into());
        self.writer.send(StoreJob::EraseBelow(below));
    }

    fn on_tun_packet(&mut self, packet: &[u8]) {
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
        match tunnel.seal(packet, &mut self.out, self.hub) {
            Ok(Sealed::Sent(len)) => {
                self.counters.from_tun += 1;
                self.packets += 1;
                self.bytes += len as u64;
            }
            Ok(Sealed::Waiting(_)) => self.counters.queued += 1,
            Err(reason) => self.count_drop(reason),
        }
    }

    fn on_timers(&mut self) {
        self.erase_due();
        self.poll_keys();
        let mut lost = 0;
        for tunnel in self.link.tunnels_mut() {
            match tunnel.tick(self.out.spare()) {
                Tick::Send(len) => {
                    self.out.commit(self.hub, len);
                }
                Tick::Lost(n) => lost += n,
                Tick::Idle => {}
            }
        }
        self.count_lost(DropReason::HandshakeTimeout, lost.into());
    }
}

impl PassHandler for Core {
    fn on_datagram(&mut self, _from: SocketAddr, datagram: &[u8]) {
        Core::on_datagram(self, datagram);
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

    fn lost(&mut self, reason: DropReason, count: u64) {
        self.count_lost(reason, count);
    }

    fn receive_failed(&mut self) {
        self.counters.receive_errors += 1;
    }
}
