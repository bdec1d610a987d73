//! What the hub's data plane and its control side say to each other: the
//! commands it takes and the events it tells; the link specs and the status
//! are the core machine's.

use std::sync::Arc;

use tasuki_core::access::CompiledAccess;
pub(crate) use tasuki_core::hub_plane::{HubEvent, LinkSpec, PlaneStatus as DpStatus};
use tasuki_core::multicast::{FanoutGroup, GroupTag};
use tasuki_core::routing::SpokeId;
use tokio::sync::{mpsc, oneshot};

/// Commands from the control side.
pub(crate) enum DpCommand {
    /// Add a link or update its epochs and address.
    Upsert(LinkSpec),
    /// Forget a link at once (revoked or denied spoke).
    Remove(SpokeId),
    /// Enforce this access policy from now on.
    Access(Arc<CompiledAccess>),
    /// Carry IPv6 under this plan from now on.
    Ipv6(tasuki_core::routing::Ipv6Plan),
    /// Route these subnets to these child hubs, and what the rest of the
    /// tree serves to the TUN.
    Tree {
        /// Each child hub's link and its routed subnets.
        children: Vec<(SpokeId, tasuki_core::hierarchy::ServedNets)>,
        /// What the parent says the rest of the tree serves.
        upstream: tasuki_core::hierarchy::ServedNets,
    },
    /// Carry a keyed group's multicast to these members online.
    Multicast(FanoutGroup),
    /// Stop carrying the multicast of the group with this tag.
    MulticastEnd(GroupTag),
    /// Report status.
    Status(oneshot::Sender<DpStatus>),
    /// Answered with [`DpEvent::Synced`] once every command sent before it
    /// is in effect.
    Sync(u64),
}

/// Events for the control side.
#[derive(Debug)]
pub(crate) enum DpEvent {
    /// What the machine saw (a confirmed epoch, a roaming spoke).
    Plane(HubEvent),
    /// Every command sent before [`DpCommand::Sync`] with this number is in
    /// effect.
    Synced(u64),
}

/// The control side's end of the command channel. Sending never waits, so
/// the hub state can command the data plane while it is locked.
#[derive(Clone, Debug)]
pub(crate) struct DpHandle(mpsc::UnboundedSender<DpCommand>);

impl DpHandle {
    /// A handle and the data plane's end of its channel.
    pub(crate) fn channel() -> (Self, mpsc::UnboundedReceiver<DpCommand>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self(tx), rx)
    }

    /// Hands the data plane a command; `false` when the data plane has
    /// stopped (the daemon is stopping, or its thread failed), logged here.
    pub(crate) fn send(&self, cmd: DpCommand) -> bool {
        let sent = self.0.send(cmd).is_ok();
        if !sent {
            tracing::error!("the data plane has stopped; a command to it is lost");
        }
        sent
    }

    /// The data plane's status and counters; `None` when it has stopped.
    /// Awaited with no lock held.
    pub(crate) async fn status(&self) -> Option<DpStatus> {
        let (tx, rx) = oneshot::channel();
        if !self.send(DpCommand::Status(tx)) {
            return None;
        }
        rx.await.ok()
    }
}
