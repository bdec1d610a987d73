//! The address plan's words on the command line: `init`'s tunnel networks
//! and routes of both families, and `ipv6 enable` for a hub made without.

use std::path::Path;

use anyhow::{bail, Result};
use clap::Subcommand;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use tasuki_core::address_plan::{random_ula, Ipv6Plan};
use tasuki_core::admin_api::HubStatus;

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

#[derive(Subcommand)]
pub(crate) enum Ipv6Command {
    /// Give this hub an IPv6 prefix: stored, carried at once, and told to
    /// every attached spoke, which takes its address (the same host number
    /// as its IPv4 one) without enrolling again. Refused when the hub has
    /// one already.
    ///
    /// Example: tasuki-hub ipv6 enable --tunnel-net fd77:1::/64 --route fd50:10::/64
    Enable {
        /// The IPv6 tunnel prefix (a random unique-local /64 when not given).
        #[arg(long)]
        tunnel_net: Option<Ipv6Net>,
        /// An IPv6 subnet routed behind the hub (repeat for more).
        #[arg(long = "route")]
        routes: Vec<Ipv6Net>,
        /// Print JSON (the hub's status).
        #[arg(long)]
        json: bool,
    },
}

/// Runs an `ipv6` subcommand against the running hub.
pub(crate) async fn ipv6_command(command: Ipv6Command, socket: &Path) -> Result<()> {
    match command {
        Ipv6Command::Enable {
            tunnel_net,
            routes,
            json,
        } => {
            let call = tasuki_core::admin_calls::Ipv6Enable { tunnel_net, routes };
            let status: HubStatus = tasuki_shell::local::call(socket, call).await?;
            crate::cli::print_json_or(&status, json, |s| {
                println!(
                    "IPv6 enabled: {}; attached spokes take their addresses now, the others when they attach",
                    s.tunnel_net6.as_deref().unwrap_or("?")
                );
                crate::cli::print_status(s);
            })
        }
    }
}
