//! Changes of this machine's own addresses (netlink), for a spoke that must
//! tell its hub and its direct peers where it is now: a laptop that moves
//! to another network, an interface that is renumbered.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use rtnetlink::constants::{RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK};
use rtnetlink::packet_core::NetlinkMessage;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::sys::{AsyncSocket, SocketAddr};

/// An address change comes as a burst of messages (an interface going
/// down and up, an address removed and another added): the change is
/// reported once no message came for this long.
const QUIET: Duration = Duration::from_millis(100);

type Messages =
    futures::channel::mpsc::UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// A subscription to the kernel's address and link messages.
pub struct AddressChanges {
    messages: Messages,
    connection: tokio::task::JoinHandle<()>,
}

impl AddressChanges {
    /// Subscribes to address and link changes (IPv4 and IPv6).
    pub fn subscribe() -> Result<Self> {
        let (mut conn, _handle, messages) =
            rtnetlink::new_connection().context("cannot open netlink")?;
        let groups = RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR;
        conn.socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, groups))
            .context("cannot subscribe to address changes")?;
        Ok(Self {
            messages,
            connection: tokio::spawn(conn),
        })
    }

    /// Waits for the next burst of changes to end; `None` once the
    /// subscription has ended (the netlink socket closed).
    pub async fn next(&mut self) -> Option<()> {
        self.messages.next().await?;
        loop {
            match tokio::time::timeout(QUIET, self.messages.next()).await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(_) => return Some(()),
            }
        }
    }
}

impl Drop for AddressChanges {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// This machine's addresses now (IPv4 and IPv6, loopback excluded).
pub fn local_addresses() -> Result<BTreeSet<IpAddr>> {
    let addrs = nix::ifaddrs::getifaddrs().context("cannot list local addresses")?;
    Ok(addrs
        .filter_map(|ifa| {
            let a = ifa.address?;
            let ip = match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
                (Some(v4), _) => IpAddr::V4(v4.ip()),
                (_, Some(v6)) => IpAddr::V6(v6.ip()),
                _ => return None,
            };
            (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loopback interface is up in any namespace this runs in, and is
    /// never reported; the list itself is readable.
    #[test]
    fn local_addresses_leave_out_loopback() {
        let addrs = local_addresses().expect("getifaddrs works here");
        assert!(addrs.iter().all(|ip| !ip.is_loopback()), "{addrs:?}");
    }
}
