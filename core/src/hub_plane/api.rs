//! What the hub's data plane takes and tells: the links it carries, the
//! events it reports and its status.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};

use crate::admin_api::Counters;
use crate::keys::{KeyEpoch, PublicKey};
use crate::rotation::Usage;
use crate::routing::SpokeId;

/// What the data plane should carry for one spoke.
#[derive(Clone, Debug)]
pub struct LinkSpec {
    /// The spoke's id (its link slot).
    pub id: SpokeId,
    /// Its static public key.
    pub public_key: PublicKey,
    /// Its tunnel address (cryptokey routing).
    pub tunnel_addr: Ipv4Addr,
    /// Its IPv6 tunnel address, where the hub has an IPv6 plan.
    pub tunnel_addr6: Option<std::net::Ipv6Addr>,
    /// Epochs whose tunnels should exist.
    pub epochs: Vec<KeyEpoch>,
    /// The epochs a handshake initiation may be under (answered under each).
    pub handshake_epochs: Vec<u64>,
    /// Whether the spoke's traffic is carried: a user allowed on it is logged
    /// in, or it is a service spoke (patent claims 2 and 14).
    pub carry: bool,
    /// The epoch known to carry the link's traffic (0: none yet).
    pub confirmed: u64,
}

/// Facts the data plane reports to the control side.
#[derive(Debug, PartialEq, Eq)]
pub enum HubEvent {
    /// A data packet decrypted under this epoch for the first time.
    Confirmed {
        /// The spoke.
        spoke: SpokeId,
        /// The epoch now carrying its traffic.
        epoch: u64,
        /// The link's cumulative use at that moment.
        usage: Usage,
    },
    /// An authenticated packet came from a new address (the spoke roamed).
    EndpointChanged {
        /// The spoke.
        spoke: SpokeId,
        /// Where it was.
        from: SocketAddr,
        /// Where it is now.
        to: SocketAddr,
    },
}

/// Per-link facts for status output.
#[derive(Clone, Debug, Default)]
pub struct LinkStatus {
    /// Where the spoke was last seen.
    pub endpoint: Option<SocketAddr>,
    /// Seconds since its last WireGuard handshake.
    pub last_handshake_secs: Option<u64>,
    /// Bytes received from it (authenticated datagrams).
    pub rx_bytes: u64,
    /// Bytes sent to it (data messages).
    pub tx_bytes: u64,
    /// Packets both ways: its usage for the rotation policy.
    pub packets: u64,
    /// Handshakes answered.
    pub handshakes: u64,
}

/// The data plane's status.
#[derive(Clone, Debug, Default)]
pub struct PlaneStatus {
    /// Its counters.
    pub counters: Counters,
    /// Every link's facts.
    pub links: HashMap<SpokeId, LinkStatus>,
}
