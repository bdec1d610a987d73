//! The hub's data plane task: one UDP socket and one TUN driven in passes
//! around the core machine ([`HubPlane`]), which holds every rule. A pass
//! reads a batch (many datagrams, by GRO, or a TUN super-packet split into
//! packets), lets the machine handle each packet, then writes everything at
//! once: datagrams in GSO batches, TUN packets coalesced. The control side
//! talks to it through [`DpCommand`]s and hears its events.

use std::sync::Arc;
use std::time::Duration;

mod api;
pub(crate) use api::{DpCommand, DpEvent, DpHandle, DpStatus, HubEvent, LinkSpec};
use tasuki_core::access::CompiledAccess;
use tasuki_core::hub_plane::HubPlane;
use tasuki_core::keys::StaticKey;
use tasuki_core::routing::RouteTable;
use tasuki_shell::netdev::{Tun, TunWriter};
use tasuki_shell::passes::{DataPlane as _, Devices};
use tasuki_shell::udp::BatchUdp;
use tokio::sync::mpsc;

/// The data plane task: the devices and the machine a pass works on.
pub(crate) struct DataPlane {
    io: Devices,
    plane: Plane,
}

/// The machine, its clock, and where its events go.
struct Plane {
    machine: HubPlane<TunWriter>,
    started: tokio::time::Instant,
    events: mpsc::UnboundedSender<DpEvent>,
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
        Self {
            io: Devices::new(udp, tun),
            plane: Plane {
                machine: HubPlane::new(key, routes, access),
                started: tokio::time::Instant::now(),
                events,
            },
        }
    }

    /// Runs until the command channel closes.
    pub(crate) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<DpCommand>) {
        let mut timers = tokio::time::interval(Duration::from_millis(250));
        let mut limiter_reset = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                ready = self.io.ready() => {
                    self.plane.tick_clock();
                    self.io.pass(ready, &mut self.plane.machine).await;
                }
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.plane.on_command(cmd),
                    None => return,
                },
                _ = timers.tick() => {
                    self.plane.tick_clock();
                    self.plane.machine.handle_timeout();
                    self.io.flush(&mut self.plane.machine).await;
                }
                _ = limiter_reset.tick() => {
                    self.plane.tick_clock();
                    self.plane.machine.handle_second();
                }
            }
            self.plane.forward_events();
        }
    }
}

impl Plane {
    /// Tells the machine the time: once per wake-up, not per packet (the
    /// flood gate and the access flow table count in milliseconds).
    fn tick_clock(&mut self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.machine.set_now(ms);
    }

    /// Hands the machine's events to the control side.
    fn forward_events(&mut self) {
        while let Some(event) = self.machine.poll_event() {
            self.tell(DpEvent::Plane(event));
        }
    }

    fn tell(&self, event: DpEvent) {
        if self.events.send(event).is_err() {
            // The control side is gone: the daemon is stopping.
            tracing::debug!("data-plane event dropped: the hub is stopping");
        }
    }

    fn on_command(&mut self, cmd: DpCommand) {
        match cmd {
            DpCommand::Upsert(spec) => self.machine.upsert(spec),
            DpCommand::Remove(id) => self.machine.remove(id),
            DpCommand::Access(policy) => self.machine.set_access(policy),
            DpCommand::Ipv6(plan) => self.machine.set_ipv6(Some(plan)),
            DpCommand::Tree { children, upstream } => self.machine.set_tree(children, upstream),
            DpCommand::Multicast(group) => self.machine.set_multicast(group),
            DpCommand::MulticastEnd(tag) => self.machine.remove_multicast(&tag),
            DpCommand::Sync(n) => self.tell(DpEvent::Synced(n)),
            DpCommand::Status(reply) => {
                if reply.send(self.machine.status()).is_err() {
                    tracing::debug!("a data-plane status was no longer awaited");
                }
            }
        }
    }
}
