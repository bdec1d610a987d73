//! The address plan's words on the command line: `init`'s tunnel networks
//! and routes of both families.

use anyhow::{bail, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tasuki_core::address_plan::{random_ula, Ipv6Plan};

/// The IPv4 tunnel network (needed) and the IPv6 prefix (if given) of
/// `--tunnel-net`, once per family.
pub(crate) fn split_tunnel_nets(nets: &[IpNet]) -> Result<(Ipv4Net, Option<Ipv6Net>)> {
    let (mut v4, mut v6) = (None, None);
    for net in nets {
        match net {
            IpNet::V4(n) if v4.replace(*n).is_some() => {
                bail!("--tunnel-net: one IPv4 network only")
            }
            IpNet::V6(n) if v6.replace(*n).is_some() => {
                bail!("--tunnel-net: one IPv6 prefix only")
            }
            _ => {}
        }
    }
    match v4 {
        Some(v4) => Ok((v4, v6)),
        None => bail!(
            "--tunnel-net: an IPv4 tunnel network is needed beside the IPv6 prefix \
             (IPv6-only tunnels are not supported yet)"
        ),
    }
}

/// `--route`s by family.
pub(crate) fn split_routes(routes: Vec<IpNet>) -> (Vec<Ipv4Net>, Vec<Ipv6Net>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for r in routes {
        match r {
            IpNet::V4(n) => v4.push(n),
            IpNet::V6(n) => v6.push(n),
        }
    }
    (v4, v6)
}

/// The IPv6 plan `init` stores: the prefix given, a random ULA /64, or
/// none with `--no-ipv6`.
pub(crate) fn init_plan(
    v4: Ipv4Net,
    v6: Option<Ipv6Net>,
    routes6: Vec<Ipv6Net>,
    no_ipv6: bool,
) -> Result<Option<Ipv6Plan>> {
    if no_ipv6 {
        if v6.is_some() || !routes6.is_empty() {
            bail!("--no-ipv6 with an IPv6 --tunnel-net or --route: choose one");
        }
        return Ok(None);
    }
    let net = v6.unwrap_or_else(|| random_ula(&mut rand_core::OsRng));
    Ok(Some(Ipv6Plan::new(net, v4, routes6)?))
}
