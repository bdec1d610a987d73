//! What a spoke is told to run with: its address, the hub's routes, the
//! tunnel's MTU and keepalive, IPv6, and where every member of the hub is.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// What a spoke needs to run its data plane.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpokeConfig {
    /// Spoke id assigned by the hub.
    pub spoke_id: u32,
    /// The spoke's name at the hub.
    pub name: String,
    /// The spoke's tunnel address and the tunnel network's prefix length.
    pub tunnel_addr: Ipv4Net,
    /// The hub's own address inside the tunnel network.
    pub hub_tunnel_addr: Ipv4Addr,
    /// Subnets routed behind the hub (company LAN), besides the tunnel network.
    pub routes: Vec<Ipv4Net>,
    /// MTU to set on the spoke's TUN interface.
    pub mtu: u16,
    /// WireGuard persistent keepalive, seconds (0 = off).
    pub keepalive_secs: u16,
    /// IPv6 in the tunnel, where the hub has an IPv6 plan.
    pub ipv6: Option<crate::address_plan::SpokeIpv6>,
    /// Every member of the hub's cluster (`HOST:PORT`), tried in turn when
    /// one stops answering; empty for a hub of one machine.
    pub hub_endpoints: Vec<String>,
}
