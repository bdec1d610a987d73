//! Follows this machine's underlay addresses: when they change, the data
//! plane says so to the hub and to its direct peers at once, and the
//! control loop sends the hub its new local candidates (or reconnects,
//! when its connection's own address went away).

use std::collections::BTreeSet;
use std::net::IpAddr;

use tasuki_shell::underlay::{local_addresses, AddressChanges};
use tokio::sync::{mpsc, watch};

use crate::dataplane::DpCommand;

/// Runs until the data plane stops: each change of the addresses goes to
/// the data plane and, as the new set, to `changed` for the control loop.
pub(crate) async fn follow(
    dataplane: mpsc::Sender<DpCommand>,
    changed: watch::Sender<BTreeSet<IpAddr>>,
) {
    let mut changes = match AddressChanges::subscribe() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "address changes are not followed: after a move, the hub and peers learn the new address from the next packet");
            return;
        }
    };
    let mut known = local_addresses().unwrap_or_default();
    changed.send_replace(known.clone());
    while changes.next().await.is_some() {
        let now = match local_addresses() {
            Ok(now) => now,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read the local addresses after a change");
                continue;
            }
        };
        if now == known {
            continue;
        }
        tracing::info!(addresses = ?now, "local addresses changed: telling the hub and peers");
        known = now.clone();
        changed.send_replace(now);
        if dataplane.send(DpCommand::UnderlayChanged).await.is_err() {
            return;
        }
    }
    tracing::warn!("the address-change subscription ended");
}
