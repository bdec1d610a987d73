//! The spoke's data plane task: one UDP socket to the hub and one TUN
//! driven in passes around the core machine ([`SpokePlane`]), which holds
//! every rule. Like the hub's, a pass reads a batch (many datagrams, by
//! GRO, or a TUN super-packet split into packets), lets the machine handle
//! each packet, then makes one GSO send and one coalescing TUN write. What
//! the machine asks to store goes to the writer thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tasuki_core::keys::{PublicKey, StaticKey};
use tasuki_core::spoke_keys::HeldEpoch;
pub(crate) use tasuki_core::spoke_plane::SpokeStatus as DpStatus;
use tasuki_core::spoke_plane::{SpokeEvent as PlaneEvent, SpokePlane};
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
}

/// What the data plane tells the control loop (for the hub).
pub(crate) use tasuki_core::spoke_session::PlaneReport as SpokeEvent;

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
        let stored = (store.epochs()?, store.current()?);
        let machine = SpokePlane::new(key, hub_key, hub, keepalive_secs, stored, boot_secs());
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
        match self.io.udp().connect(addr).await {
            Ok(()) => {
                tracing::info!(%from, to = %addr, "the hub moved: data plane follows");
                self.plane.machine.move_hub(addr);
            }
            Err(e) => tracing::warn!(error = %e, %addr, "cannot send to the hub's new address"),
        }
    }
}

impl Plane {
    /// Tells the machine the time, once per wake-up.
    fn tick_clock(&mut self) {
        self.machine.set_now(boot_secs());
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
                PlaneEvent::RequestUpdate => SpokeEvent::RequestUpdate,
                PlaneEvent::NeedKeys => SpokeEvent::NeedKeys,
            };
            if self.events.send(to_control).is_err() {
                tracing::debug!(
                    ?to_control,
                    "data-plane event dropped: the spoke is stopping"
                );
            }
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
            DpCommand::Status(reply) => {
                if reply.send(m.status()).is_err() {
                    tracing::debug!("a data-plane status was no longer awaited");
                }
            }
        }
    }
}
