//! TUN interfaces and routes (rtnetlink). A TUN device goes away with its
//! file descriptor, and the kernel removes its address and routes with it.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use tun::AbstractDevice;

/// An up TUN interface with an address.
pub struct TunDevice {
    /// The async device.
    pub device: tun::AsyncDevice,
    /// Its name.
    pub name: String,
}

/// Creates (or takes over) TUN interface `name` with address `addr`, MTU `mtu`, and brings it up.
pub fn create_tun(name: &str, addr: Ipv4Net, mtu: u16) -> Result<TunDevice> {
    let mut config = tun::Configuration::default();
    config
        .tun_name(name)
        .address(addr.addr())
        .netmask(addr.netmask())
        .mtu(mtu)
        .up();
    let device = tun::create_as_async(&config).with_context(|| {
        format!(
            "cannot create TUN interface {name:?} (needs root or CAP_NET_ADMIN and /dev/net/tun)"
        )
    })?;
    let name = device.tun_name().unwrap_or_else(|_| name.to_owned());
    Ok(TunDevice { device, name })
}

/// Adds routes to `nets` through interface `ifname` (existing routes are kept).
pub async fn add_routes(ifname: &str, nets: &[Ipv4Net]) -> Result<()> {
    if nets.is_empty() {
        return Ok(());
    }
    let index = nix::net::if_::if_nametoindex(ifname)
        .with_context(|| format!("interface {ifname} not found"))?;
    let (conn, handle, _) = rtnetlink::new_connection().context("cannot open netlink")?;
    let task = tokio::spawn(conn);
    for net in nets {
        let msg = rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(net.network(), net.prefix_len())
            .output_interface(index)
            .build();
        match handle.route().add(msg).execute().await {
            Ok(()) => tracing::info!(route = %net, dev = ifname, "route added"),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {
                tracing::info!(route = %net, "route already present")
            }
            Err(e) => {
                task.abort();
                return Err(e).with_context(|| format!("cannot add route {net} dev {ifname}"));
            }
        }
    }
    task.abort();
    Ok(())
}
