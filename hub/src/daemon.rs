//! `tasuki-hub run`: binds the sockets, creates the TUN, loads the state and
//! starts the control, admin and data-plane tasks; stops cleanly on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use ipnet::Ipv4Net;
use tasuki_core::admin_api::HubRequest;
use tasuki_core::routing::RouteTable;
use tasuki_shell::local::SocketGuard;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::dataplane::{DataPlane, DpCommand, DpEvent, DpHandle, HubEvent};
use crate::state::{self, HubState, SharedState};

/// Options of `tasuki-hub run`.
pub(crate) struct RunOptions {
    pub(crate) state_dir: PathBuf,
    pub(crate) interface: String,
    pub(crate) listen: Option<SocketAddr>,
    pub(crate) admin_socket: PathBuf,
    pub(crate) admin_group: Option<String>,
    pub(crate) metrics: Option<SocketAddr>,
    /// The config file given with --config, re-read on SIGHUP.
    pub(crate) config: Option<PathBuf>,
}

/// SIGHUP: re-read the config file and apply the log level.
fn reload(config: Option<&std::path::Path>) {
    tasuki_shell::service::reload_log_level(|| Ok(crate::config::load(config)?.log));
}

/// What the data plane's thread needs to set itself up.
struct DataPlaneSetup {
    key: Arc<tasuki_core::keys::StaticKey>,
    listen: SocketAddr,
    interface: String,
    hub_net: Ipv4Net,
    hub_net6: Option<ipnet::Ipv6Net>,
    routes: RouteTable,
    access: Arc<tasuki_core::access::CompiledAccess>,
    events: mpsc::UnboundedSender<DpEvent>,
    commands: mpsc::UnboundedReceiver<DpCommand>,
}

/// Starts the data plane on a thread of its own, where it binds the UDP
/// socket and creates the TUN (see `tasuki_shell::thread`). Returns the
/// TUN's name once both are up, and a receiver that resolves when the data
/// plane has stopped.
async fn spawn_dataplane(
    setup: DataPlaneSetup,
) -> Result<(String, tokio::sync::oneshot::Receiver<()>)> {
    tasuki_shell::thread::spawn_on_own_thread("tasuki-dataplane", move || async move {
        // Spokes may reach the hub at any of its addresses: each is
        // answered from the one it used.
        let udp = tasuki_shell::udp::BatchUdp::bind(setup.listen)
            .with_context(|| format!("cannot bind UDP {}", setup.listen))?
            .answer_from_reached_address();
        let tun = tasuki_shell::netdev::create_tun(
            &setup.interface,
            setup.hub_net,
            setup.hub_net6,
            tasuki_core::TUNNEL_MTU,
        )?;
        let dataplane = DataPlane::new(
            setup.key,
            udp,
            tun.device,
            setup.routes,
            setup.access,
            setup.events,
        );
        Ok((tun.name, dataplane.run(setup.commands)))
    })
    .await
}

/// Where the hub listens: `--listen`, or every address on the stored
/// endpoint's port.
fn listen_addr(given: Option<SocketAddr>, endpoint: &str) -> Result<SocketAddr> {
    if let Some(a) = given {
        return Ok(a);
    }
    let port = endpoint
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .context("stored endpoint has no port")?;
    // Both families on one port (IPv4 only where the machine has no IPv6).
    Ok(tasuki_shell::dual_stack::any(port))
}

/// Hands the data plane's events to the control state.
async fn forward_events(state: SharedState, mut events: mpsc::UnboundedReceiver<DpEvent>) {
    while let Some(event) = events.recv().await {
        let now = tasuki_shell::unix_now();
        state.with(|st| match event {
            DpEvent::Plane(HubEvent::Confirmed {
                spoke,
                epoch,
                usage,
            }) => {
                if let Err(e) = st.on_confirmed(spoke, epoch, now, usage) {
                    tracing::error!(error = %format!("{e:#}"), "cannot record a confirmed epoch");
                }
            }
            DpEvent::Plane(HubEvent::EndpointChanged { spoke, from, to }) => {
                tracing::info!(spoke, %from, %to, "spoke address changed: rotating its key");
                st.request_rotation_of(spoke, tasuki_core::rotation::Trigger::AddressChanged);
            }
            DpEvent::Synced(n) => st.synced(n),
        });
    }
}

/// Answers the admin socket for as long as the hub runs.
async fn serve_admin(
    state: SharedState,
    admin: tokio::net::UnixListener,
    access: tasuki_shell::local::Access,
) {
    tasuki_shell::local::serve(admin, access, move |req: HubRequest| {
        let state = state.clone();
        async move { crate::admin::handle(&state, req).await }
    })
    .await
}

/// The rotation tick, twice a second, for as long as the hub runs.
async fn rotate(state: SharedState) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tick.tick().await;
        let dp = state.with(|st| st.dataplane()).status().await;
        let usage = state::usage(dp.as_ref());
        let seen = state::endpoints(dp.as_ref());
        state.with(|st| {
            let now = tasuki_shell::unix_now();
            st.rotation_tick(now, &usage);
            st.pair_tick(now, seen);
            st.group_tick(now);
            st.requests_tick(now);
            st.tree_tick(now);
        });
    }
}

/// `tasuki-hub run`: until SIGTERM (or the data plane stops).
pub(crate) async fn run(opts: RunOptions) -> Result<()> {
    let key = Arc::new(state::load_key(&opts.state_dir)?);
    // From the start: a standby waits for its turn under the watchdog too.
    let watchdog = tasuki_shell::service::spawn_watchdog();
    let cluster = state::engine::ClusterFile::read(&opts.state_dir)?;
    let opened = state::engine::open(&opts.state_dir)?;
    let store = opened.store.clone();
    // On etcd: nothing is loaded or served before this hub is the active one.
    let mut keeper = match &cluster {
        Some(file) => {
            let (election, members) = crate::cluster::campaign(file, &store).await?;
            Some(crate::cluster::Keeper::start(
                election,
                members,
                file.etcd(),
                store.clone(),
            )?)
        }
        None => None,
    };
    let (dp_tx, dp_rx) = DpHandle::channel();
    let (ev_tx, ev_rx) = mpsc::unbounded_channel::<DpEvent>();
    let hub = HubState::load(
        &opts.state_dir,
        key.clone(),
        opts.interface.clone(),
        dp_tx.clone(),
        opened,
    )?;
    let settings = hub.registry.settings().clone();
    let ipv6 = hub.registry.ipv6().cloned();
    // A cluster member listens on its own endpoint's port.
    let endpoint = cluster.as_ref().map_or(&settings.endpoint, |c| &c.endpoint);
    let listen = listen_addr(opts.listen, endpoint)?;
    let tcp = tasuki_shell::dual_stack::tcp_listener(listen)
        .and_then(TcpListener::from_std)
        .with_context(|| format!("cannot bind TCP {listen}"))?;
    let access = match &opts.admin_group {
        Some(g) => tasuki_shell::local::Access::group(g)?,
        None => tasuki_shell::local::Access::default(),
    };
    let admin = tasuki_shell::local::bind(&opts.admin_socket, access)?;
    let _socket_guard = SocketGuard(opts.admin_socket.clone());
    let (interface, dp_done) = spawn_dataplane(DataPlaneSetup {
        key: key.clone(),
        listen,
        interface: opts.interface.clone(),
        hub_net: Ipv4Net::new(settings.hub_addr(), settings.tunnel_net.prefix_len())?,
        hub_net6: ipv6
            .as_ref()
            .map(|p| ipnet::Ipv6Net::new(p.hub_addr, p.tunnel_net.prefix_len()))
            .transpose()?,
        routes: RouteTable::new(
            settings.tunnel_net,
            settings.hub_addr(),
            settings.routes.clone(),
        )
        .with_ipv6(ipv6.clone()),
        access: hub.compiled_access(),
        events: ev_tx,
        commands: dp_rx,
    })
    .await?;
    for spec in hub.link_specs() {
        dp_tx.send(DpCommand::Upsert(spec));
    }
    let tun_routes = hub.tree.tun_routes.subscribe();
    let state = SharedState::new(hub);
    // The data plane, the hub's TUN and the spokes take the tree's routes;
    // then the uplink starts, when this hub joined a parent.
    state.with(|st| st.tree_changed());
    let routes_task = tokio::spawn(crate::uplink::follow_tun_routes(
        interface.clone(),
        tun_routes,
    ));
    // A branch works on its own: an uplink that cannot start is an error
    // in the log and in `status`, not a hub that does not run.
    if let Err(e) = crate::uplink::start(&state).await {
        let e = format!(
            "the uplink to the parent hub did not start: {e:#}; restart the hub to try again"
        );
        tracing::error!(error = %e, "no uplink");
        state.with(|st| st.tree.uplink_error = Some(e));
    }
    tracing::info!(
        %listen, %interface, fingerprint = %key.public().fingerprint(),
        tunnel = %settings.tunnel_net, "hub running"
    );
    let mut tasks = vec![
        tokio::spawn(crate::control::serve(tcp, state.clone(), key.clone())),
        tokio::spawn(forward_events(state.clone(), ev_rx)),
        tokio::spawn(rotate(state.clone())),
        tokio::spawn(serve_admin(state.clone(), admin, access)),
        routes_task,
    ];
    if cluster.is_some() {
        tasks.push(tokio::spawn(crate::cluster::follow_members(
            store.clone(),
            state.clone(),
        )));
    }
    if let Some(addr) = opts.metrics {
        let listener = crate::metrics::bind(addr).await?;
        tracing::info!(%addr, "metrics endpoint");
        tasks.push(tokio::spawn(crate::metrics::serve(listener, state.clone())));
    }
    tasks.extend(watchdog);
    tasuki_shell::service::ready(&format!("serving on {listen}"));

    let stepped_down = Arc::new(std::sync::OnceLock::new());
    if let Some(k) = keeper.as_mut() {
        tasks.push(tokio::spawn(follow_health(k.health.clone(), state.clone())));
    }
    let mut done = until_done(dp_done, keeper.as_mut(), stepped_down.clone());
    tasuki_shell::service::until_stopped(&mut done, || reload(opts.config.as_deref())).await?;
    tasuki_shell::service::stopping();
    for task in tasks {
        task.abort();
    }
    // Everything acknowledged is on disk already; flush what is not.
    state.with(|st| st.flush())?;
    if let Some(k) = keeper.filter(|_| stepped_down.get().is_none()) {
        k.resign().await;
    }
    tracing::info!("stopped; the TUN interface and its routes go with the process");
    match stepped_down.get() {
        Some(why) => Err(anyhow::anyhow!(
            "this hub stepped down ({why:?}): another hub is active or the lease lapsed; start \
             it again to stand by"
        )),
        None => Ok(()),
    }
}

/// An orphaned cluster member turns its spokes away (they look for the
/// active member); its data plane carries on.
async fn follow_health(
    mut health: tokio::sync::watch::Receiver<tasuki_core::leadership::Health>,
    state: SharedState,
) {
    loop {
        let now = *health.borrow_and_update();
        state.with(|st| st.set_cluster_health(now));
        if health.changed().await.is_err() {
            // The keeper is gone: nothing says the lease holds.
            state.with(|st| st.open_control(false));
            return;
        }
    }
}

/// Resolves when the hub's work has ended: its data plane stopped, or, on
/// a cluster, it stepped down (then `stepped_down` says why).
fn until_done(
    dp_done: tokio::sync::oneshot::Receiver<()>,
    keeper: Option<&mut crate::cluster::Keeper>,
    stepped_down: Arc<std::sync::OnceLock<tasuki_core::leadership::StepDown>>,
) -> impl std::future::Future<Output = ()> + Unpin {
    let keeping = keeper.and_then(|k| k.stepped_down.take());
    Box::pin(async move {
        // No keeper, or one closed without a word (the daemon is stopping):
        // only the data plane's end counts.
        let step = async {
            match keeping {
                Some(keeping) => keeping.await.ok(),
                None => None,
            }
        };
        tokio::select! {
            _ = dp_done => {}
            Some(why) = step => {
                tracing::error!(?why, "stepped down: this hub stops serving");
                stepped_down.get_or_init(|| why);
            }
        }
    })
}
