//! The spoke's data plane task: one UDP socket to the hub and one TUN
//! driven in passes around the core machine ([`SpokePlane`]), which holds
//! every rule. Like the hub's, a pass reads a batch (many datagrams, by
//! GRO, or a TUN super-packet split into packets), lets the machine handle
//! each packet, then makes one GSO send and one coalescing TUN write. What
//! the machine asks to store goes to the writer thread.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tasuki_core::control::PairUsage;
use tasuki_core::keys::{PublicKey, StaticKey};
use tasuki_core::spoke_keys::HeldEpoch;
use tasuki_core::spoke_pairs::PairCommand;
pub(crate) use tasuki_core::spoke_plane::SpokeStatus as DpStatus;
use tasuki_core::spoke_plane::{SpokeEvent as PlaneEvent, SpokePlane};
use tasuki_core::spoke_session::PlaneReport;
use tasuki_shell::netdev::{Tun, TunWriter};
use tasuki_shell::passes::{DataPlane as _, Devices};
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
    /// Direct mode: a pair's epoch, switch, erasure or end.
    Pair(PairCommand),
    /// This machine's addresses changed: tell the hub and direct peers.
    UnderlayChanged,
    /// A keyed group's multicast: ranges, members online, keys.
    Multicast(Box<tasuki_core::multicast::MemberGroup>),
    /// The group has no multicast here any more.
    MulticastEnd(String),
    /// Carry IPv6 from and to this tunnel address from now on.
    Ipv6(Option<std::net::Ipv6Addr>),
}

/// What the data plane tells the control loop (for the hub).
#[derive(Clone, Debug)]
pub(crate) enum SpokeEvent {
    /// For the session: an update report or request, a distribution request.
    Report(PlaneReport),
    /// Traffic to the spoke at this tunnel address goes through the relay:
    /// ask the hub for the pair.
    AskPair(Ipv4Addr),
    /// Every pair's path and counters, and which carried direct traffic lately.
    PairsUsage(Vec<PairUsage>),
    /// The data-plane socket listens on this UDP port (for the hub's
    /// candidates).
    Listening(u16),
}

/// Timer ticks (250 ms) between two reports of the pairs' use (10 s).
const USED_EVERY_TICKS: u32 = 40;

/// Where the spoke is in the tunnel network.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Network {
    /// Its own tunnel address.
    pub(crate) own: Ipv4Addr,
    /// The tunnel network.
    pub(crate) net: ipnet::Ipv4Net,
    /// The hub's tunnel address.
    pub(crate) hub: Ipv4Addr,
    /// Its own IPv6 tunnel address, where IPv6 is carried.
    pub(crate) own6: Option<std::net::Ipv6Addr>,
}

/// The data plane task: the devices and the machine a pass works on.
pub(crate) struct DataPlane {
    io: Devices,
    plane: Plane,
}

/// The machine and where what it asks for goes.
struct Plane {
    machine: SpokePlane<TunWriter>,
    /// Store writes, done off the data plane's thread.
    writer: StoreWriter,
    events: mpsc::UnboundedSender<SpokeEvent>,
}

impl DataPlane {
    pub(crate) async fn new(
        store: Arc<SpokeStore>,
        key: Arc<StaticKey>,
        (hub_key, hub): (PublicKey, SocketAddr),
        keepalive_secs: u16,
        (tun, network): (Tun, Network),
        events: mpsc::UnboundedSender<SpokeEvent>,
    ) -> anyhow::Result<Self> {
        // Not connected: in direct mode peers send to this socket too, and
        // the mapping a NAT gives it is the one the hub sees. Both
        // families: the hub's name may resolve to either next time.
        let udp = BatchUdp::bind(tasuki_shell::dual_stack::any(0))?;
        let port = udp.local_addr()?.port();
        let stored = (store.epochs()?, store.current()?);
        let mut machine = SpokePlane::new(key, hub_key, hub, keepalive_secs, stored, boot_secs());
        machine.set_network(network.own, network.net, network.hub);
        machine.set_ipv6(network.own6);
        // This run's own multicast nonces: a random part, and a counter
        // from the wall clock (a restart is not taken for a replay).
        let mut boot = [0u8; 12];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut boot);
        machine.seed_multicast(boot, tasuki_shell::unix_micros());
        if events.send(SpokeEvent::Listening(port)).is_err() {
            anyhow::bail!("the control loop stopped");
        }
        Ok(Self {
            io: Devices::new(udp, tun),
            plane: Plane {
                machine,
                writer: StoreWriter::spawn(store, events.clone())?,
                events,
            },
        })
    }

    pub(crate) async fn run(mut self, mut commands: mpsc::Receiver<DpCommand>) {
        let mut timers = tokio::time::interval(Duration::from_millis(250));
        let mut ticks = 0u32;
        // Start a session right away so the hub learns where we are.
        self.plane.machine.start();
        self.io.flush(&mut self.plane.machine).await;
        loop {
            tokio::select! {
                ready = self.io.ready() => {
                    self.plane.tick_clock();
                    self.io.pass(ready, &mut self.plane.machine).await;
                }
                cmd = commands.recv() => match cmd {
                    Some(DpCommand::HubAt(addr)) => self.move_to(addr).await,
                    Some(cmd) => {
                        self.plane.tick_clock();
                        self.plane.on_command(cmd);
                        self.io.flush(&mut self.plane.machine).await;
                    }
                    None => return,
                },
                _ = timers.tick() => {
                    self.plane.tick_clock();
                    self.plane.machine.handle_timeout();
                    self.io.flush(&mut self.plane.machine).await;
                    ticks = ticks.wrapping_add(1);
                    if ticks.is_multiple_of(USED_EVERY_TICKS) {
                        self.plane.report_used();
                    }
                }
            }
            self.plane.forward_events();
        }
    }

    /// Sends to the hub's new address from now on.
    async fn move_to(&mut self, addr: SocketAddr) {
        let from = self.plane.machine.hub();
        if addr == from {
            return;
        }
        tracing::info!(%from, to = %addr, "the hub moved: data plane follows");
        self.plane.machine.move_hub(addr);
    }
}

impl Plane {
    /// Tells the machine the time, once per wake-up.
    fn tick_clock(&mut self) {
        self.machine.set_now_ms(tasuki_shell::boot_millis());
    }

    /// Tells the control loop which pairs carried direct traffic lately.
    fn report_used(&mut self) {
        let usage = self.machine.take_pair_usage();
        if !usage.is_empty() {
            self.to_control(SpokeEvent::PairsUsage(usage));
        }
    }

    fn to_control(&self, event: SpokeEvent) {
        if let Err(e) = self.events.send(event) {
            tracing::debug!(event = ?e.0, "data-plane event dropped: the spoke is stopping");
        }
    }

    /// Does what the machine asks: store writes go to the writer thread
    /// (which reports a stored epoch to the hub), requests to the control
    /// loop.
    fn forward_events(&mut self) {
        while let Some(event) = self.machine.poll_event() {
            let to_control = match event {
                PlaneEvent::StoreCurrent(k) => {
                    self.writer.send(StoreJob::Current(k));
                    continue;
                }
                PlaneEvent::EraseBelow(k) => {
                    self.writer.send(StoreJob::EraseBelow(k));
                    continue;
                }
                PlaneEvent::RequestUpdate => SpokeEvent::Report(PlaneReport::RequestUpdate),
                PlaneEvent::NeedKeys => SpokeEvent::Report(PlaneReport::NeedKeys),
                PlaneEvent::AskPair(peer) => SpokeEvent::AskPair(peer),
            };
            self.to_control(to_control);
        }
    }

    fn on_command(&mut self, cmd: DpCommand) {
        let m = &mut self.machine;
        match cmd {
            DpCommand::Hold(h) => m.hold(h),
            DpCommand::SwitchTo(k) => m.switch_to(k),
            DpCommand::Rehandshake => m.rehandshake(),
            DpCommand::Carrying(c) => m.set_carrying(c),
            DpCommand::HubAt(_) => {}
            DpCommand::Revoked => m.revoke(),
            DpCommand::Pair(cmd) => m.pair_command(cmd),
            DpCommand::UnderlayChanged => m.underlay_changed(),
            DpCommand::Multicast(group) => m.set_multicast(*group),
            DpCommand::MulticastEnd(group) => m.remove_multicast(&group),
            DpCommand::Ipv6(own6) => m.set_ipv6(own6),
            DpCommand::Status(reply) => {
                if reply.send(m.status()).is_err() {
                    tracing::debug!("a data-plane status was no longer awaited");
                }
            }
        }
    }
}
