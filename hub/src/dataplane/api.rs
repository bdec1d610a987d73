//! What the hub's data plane and its control side say to each other: the
//! commands it takes, the events it reports and its status.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use tasuki_core::access::CompiledAccess;
use tasuki_core::admin_api::Counters;
use tasuki_core::keys::{KeyEpoch, PublicKey};
use tasuki_core::rotation::Usage;
use tasuki_core::routing::SpokeId;
use tokio::sync::oneshot;

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
