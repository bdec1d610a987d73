//! IPv6 the hub gave this spoke while it runs (`tasuki-hub ipv6 enable`):
//! the TUN takes the address and the routes, then the data plane carries
//! it, with no restart and no new enrolment.

use std::time::Duration;

use tasuki_core::address_plan::SpokeIpv6;
use tokio::sync::mpsc;

use crate::dataplane::DpCommand;

/// How often, and how far apart, the TUN is tried (it may not exist yet
/// when the first attach brings the address).
const TRIES: u32 = 20;
const PAUSE: Duration = Duration::from_millis(500);

/// Gives interface `interface` the address and routes of `v6`, then tells
/// the data plane; what cannot be done is logged, and the next start
/// takes it from the stored configuration.
pub(crate) async fn take(interface: String, v6: SpokeIpv6, dataplane: mpsc::Sender<DpCommand>) {
    let mut last = None;
    for _ in 0..TRIES {
        match tasuki_shell::netdev::add_address6(&interface, v6.tunnel_addr).await {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(PAUSE).await;
    }
    if let Some(e) = last {
        tracing::warn!(error = %format!("{e:#}"), addr = %v6.tunnel_addr, "cannot take the IPv6 address the hub gave (is IPv6 turned off here?): carrying IPv4 only until a restart");
        return;
    }
    if let Err(e) = tasuki_shell::netdev::add_routes6(&interface, &v6.routes).await {
        tracing::warn!(error = %format!("{e:#}"), "cannot add the IPv6 routes the hub gave; a restart adds them");
    }
    let own6 = Some(v6.tunnel_addr.addr());
    if dataplane.send(DpCommand::Ipv6(own6)).await.is_err() {
        tracing::warn!("the data plane stopped before it could carry IPv6");
        return;
    }
    tracing::info!(addr = %v6.tunnel_addr, interface = %interface, "IPv6 taken");
}
