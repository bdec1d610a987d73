//! A child hub's uplink (claim 6): its enrolment at the parent (`tasuki-hub
//! join`) and the spoke that carries it, run inside the hub
//! ([`tasuki_spoke::uplink`]); what the parent says the rest of the tree
//! serves goes into the hub state, and the subnets routed to child hubs
//! onto the hub's TUN.

use std::sync::Arc;

use anyhow::Result;
use tasuki_core::admin_calls::ParentView;
use tasuki_core::api_error::{ApiError, ErrorCode};
use tasuki_core::audit::{AuditKind, AuditRecord};
use tasuki_core::control::SpokeConfig;
use tasuki_core::hierarchy::ServedNets;
use tokio::sync::watch;

use crate::state::SharedState;

/// `tasuki-hub join`: enrols this hub at the parent the invitation names
/// (announcing what it serves), then runs its uplink.
pub(crate) async fn join(state: &SharedState, invitation: &str) -> Result<ParentView, ApiError> {
    let (dir, serves, running) = state.with(|st| {
        (
            st.tree.uplink_dir.clone(),
            st.tree.announce.borrow().clone(),
            st.tree.uplink.is_some(),
        )
    });
    let refuse = |e: anyhow::Error| ApiError::new(ErrorCode::InvalidInput, format!("{e:#}"));
    let enrolled = tasuki_spoke::uplink::is_enrolled(&dir).map_err(refuse)?;
    if running || enrolled {
        return Err(ApiError::new(
            ErrorCode::WrongState,
            format!(
                "this hub has joined a parent already (its enrolment is in {}); a hub has one parent",
                dir.display()
            ),
        ));
    }
    let outcome = tasuki_spoke::uplink::enrol_hub(invitation, &dir, serves.clone())
        .await
        .map_err(refuse)?;
    tracing::info!(%outcome, announced = ?serves.strings(), "joined a parent hub");
    state.with(|st| {
        st.audit(
            AuditRecord::new(tasuki_shell::unix_now(), AuditKind::HubTree).detail(format!(
                "joined a parent: {outcome}; announced {:?}",
                serves.strings()
            )),
        )
    });
    start(state).await.map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("joined, but the uplink did not start: {e:#}; restart the hub to start it"),
        )
    })?;
    parent_view(state).await.ok_or_else(|| {
        ApiError::new(
            ErrorCode::Internal,
            "joined, but the uplink stopped at once; see the hub's log",
        )
    })
}

/// Starts the uplink when this hub has joined a parent (at `run`, and
/// after `join`); nothing to do for a root hub.
pub(crate) async fn start(state: &SharedState) -> Result<()> {
    let (dir, interface, announce) = state.with(|st| {
        (
            st.tree.uplink_dir.clone(),
            st.tree.uplink_interface.clone(),
            st.tree.announce.subscribe(),
        )
    });
    if !tasuki_spoke::uplink::is_enrolled(&dir)? {
        return Ok(());
    }
    let uplink = tasuki_spoke::uplink::start(&dir, &interface, announce).await?;
    let config = uplink.config();
    let endpoint = uplink.status().await.map(|s| s.hub_endpoint);
    state.with(|st| {
        st.tree.uplink = Some(Arc::new(uplink));
        st.tree.parent_endpoint = endpoint;
    });
    tokio::spawn(follow_parent(state.clone(), config));
    tracing::info!(%interface, "uplink to the parent hub running");
    Ok(())
}

/// Follows the parent's configuration: its routes are what the rest of
/// the tree serves.
async fn follow_parent(state: SharedState, mut config: watch::Receiver<Option<SpokeConfig>>) {
    loop {
        let upstream = config.borrow_and_update().as_ref().map(upstream_of);
        if let Some(upstream) = upstream {
            state.with(|st| st.set_upstream(&upstream));
        }
        if config.changed().await.is_err() {
            // The uplink stopped: nothing goes up any more (the hub's TUN
            // must not hand such packets to a kernel with no route for
            // them through the uplink).
            tracing::warn!("the uplink to the parent stopped: the rest of the tree is unreachable");
            state.with(|st| st.set_upstream(&ServedNets::default()));
            return;
        }
    }
}

/// What the rest of the tree serves, from the parent's configuration of
/// our uplink: its tunnel networks and every route it gives.
fn upstream_of(config: &SpokeConfig) -> ServedNets {
    let mut nets = ServedNets {
        v4: vec![config.tunnel_addr.trunc()],
        v6: vec![],
    };
    nets.v4.extend(config.routes.iter().copied());
    if let Some(v6) = &config.ipv6 {
        nets.v6.push(v6.tunnel_addr.trunc());
        nets.v6.extend(v6.routes.iter().copied());
    }
    nets
}

/// The parent as the uplink sees it; `None` for a root hub.
pub(crate) async fn parent_view(state: &SharedState) -> Option<ParentView> {
    let (uplink, announced, upstream) = state.with(|st| {
        (
            st.tree.uplink.clone(),
            st.tree.announce.borrow().strings(),
            st.tree.map.upstream().strings(),
        )
    });
    let status = uplink?.status().await?;
    Some(ParentView {
        state: status.state,
        endpoint: status.hub_endpoint,
        fingerprint: status.hub_fingerprint,
        name: status.name,
        tunnel_addr: status.tunnel_addr,
        interface: status.interface,
        epoch: status.epoch,
        control_connected: status.control_connected,
        announced,
        upstream,
    })
}

/// Keeps the subnets routed to child hubs on the hub's TUN `interface`;
/// what the kernel refused is tried again every few seconds.
pub(crate) async fn follow_tun_routes(interface: String, mut routes: watch::Receiver<ServedNets>) {
    const RETRY: std::time::Duration = std::time::Duration::from_secs(5);
    let mut installed = tasuki_shell::netdev::KeptRoutes::default();
    loop {
        let want = routes.borrow_and_update().clone();
        let have = routed(&installed);
        let (add, remove) = (want.minus(&have), have.minus(&want));
        if !add.is_empty() || !remove.is_empty() {
            let kept = |n: ServedNets| tasuki_shell::netdev::KeptRoutes { v4: n.v4, v6: n.v6 };
            installed
                .change(&interface, &kept(add), &kept(remove))
                .await;
            tracing::info!(%interface, routed4 = ?installed.v4, routed6 = ?installed.v6, "child hubs' routes on the hub's interface");
        }
        let have = routed(&installed);
        let settled = want.minus(&have).is_empty() && have.minus(&want).is_empty();
        tokio::select! {
            changed = routes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(RETRY), if !settled => {}
        }
    }
}

/// What is routed on the interface, as subnets.
fn routed(kept: &tasuki_shell::netdev::KeptRoutes) -> ServedNets {
    ServedNets {
        v4: kept.v4.clone(),
        v6: kept.v6.clone(),
    }
}
