//! What the hub's data plane and its control side say to each other: the
//! commands it takes; the events and status are the core machine's.

use std::sync::Arc;

use tasuki_core::access::CompiledAccess;
pub(crate) use tasuki_core::hub_plane::{HubEvent as DpEvent, LinkSpec, PlaneStatus as DpStatus};
use tasuki_core::routing::SpokeId;
use tokio::sync::oneshot;

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
