//! `tasuki-spoke run`: the daemon. Starts the control loop and the local
//! socket at once, the data plane as soon as the hub's configuration is
//! known. Its parts are shared with a child hub's uplink
//! ([`crate::uplink`]), which runs them with no local socket, signals or
//! systemd.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use tasuki_core::admin_api::SpokeRequest;
use tasuki_core::control::SpokeConfig;
use tasuki_core::hierarchy::ServedNets;
use tasuki_core::keys::StaticKey;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::control::{Control, ControlState, SessionInfo};
use crate::dataplane::{DataPlane, DpCommand, Network, SpokeEvent};
use crate::local::LocalApi;
use crate::routes::{Routed, SharedRoutes};
use crate::state::{Enrolment, SpokeStore};

/// `tasuki-spoke run`: until SIGTERM.
pub(crate) async fn run(
    dir: &Path,
    interface: &str,
    socket: &Path,
    group: Option<&str>,
    keepalive: Option<u16>,
    config: Option<&Path>,
) -> Result<()> {
    // Installed now, so that a SIGHUP while the spoke waits for its
    // configuration (an approval can take long) does not end the process.
    let _hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let access = match group {
        Some(g) => tasuki_shell::local::Access::group(g)?,
        None => tasuki_shell::local::Access::default(),
    };
    let store = Arc::new(SpokeStore::open(dir)?);
    let key = Arc::new(store.key()?);
    let enrolment = enrolment_of(&store, dir)?;
    // `_dataplane` is held until the daemon returns: the data plane stops
    // once no sender of its commands is left.
    let Parts {
        control,
        api,
        plane,
        commands: _dataplane,
        underlay,
        ..
    } = connect(&store, &key, &enrolment, interface, None)?;
    let listener = tasuki_shell::local::bind(socket, access)?;
    let _guard = tasuki_shell::local::SocketGuard(socket.to_owned());
    let [control_task, underlay_task] = spawn_loops(control, underlay, tracing::Span::none());
    let status_task = tokio::spawn(tasuki_shell::local::serve(
        listener,
        access,
        move |req: SpokeRequest| api.clone().handle(req),
    ));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let start = plane.start(keepalive);
    // Ready once the control loop and the local socket run: a pending spoke
    // may wait for its approval for a long time.
    let watchdog = tasuki_shell::service::spawn_watchdog();
    tasuki_shell::service::ready(&format!("spoke of {}", enrolment.hub_endpoint));
    let mut dp_done = tokio::select! {
        done = start => done?,
        _ = term.recv() => return Ok(()),
        _ = tokio::signal::ctrl_c() => return Ok(()),
    };
    serve_until_stopped(
        &mut dp_done,
        config,
        watchdog,
        [control_task, status_task, underlay_task],
    )
    .await
}

/// Once the data plane runs: serves until SIGTERM or until the data plane
/// stops (re-reading the config on SIGHUP), then stops the other tasks.
async fn serve_until_stopped(
    dp_done: &mut tokio::sync::oneshot::Receiver<()>,
    config: Option<&Path>,
    watchdog: Option<JoinHandle<()>>,
    tasks: [JoinHandle<()>; 3],
) -> Result<()> {
    tasuki_shell::service::until_stopped(dp_done, || reload(config)).await?;
    tasuki_shell::service::stopping();
    if let Some(w) = watchdog {
        w.abort();
    }
    for task in tasks {
        task.abort();
    }
    tracing::info!("stopped; the TUN interface and its routes go with the process");
    Ok(())
}

/// The enrolment the store in `dir` holds; without one the spoke cannot run.
fn enrolment_of(store: &SpokeStore, dir: &Path) -> Result<Enrolment> {
    store.enrolment()?.with_context(|| {
        format!(
            "{} holds no enrolment; run `tasuki-spoke enrol INVITATION --state-dir {}` first",
            dir.display(),
            dir.display()
        )
    })
}

/// A spoke's parts, connected to each other but not started yet (shared
/// by the daemon and a child hub's uplink).
pub(crate) struct Parts {
    /// The control loop.
    pub(crate) control: Control,
    /// What answers on the local socket (and the uplink's status).
    pub(crate) api: LocalApi,
    /// The hub's configuration, once the control loop knows it.
    pub(crate) config: watch::Receiver<Option<SpokeConfig>>,
    /// The data plane, to start once the configuration is known.
    pub(crate) plane: PlaneStart,
    /// A sender of the data plane's commands besides the control loop's
    /// and the local socket's.
    pub(crate) commands: mpsc::Sender<DpCommand>,
    /// Where the local addresses go when they change.
    pub(crate) underlay: watch::Sender<BTreeSet<IpAddr>>,
}

/// Connects the control loop, the local socket and the data plane of an
/// enrolled spoke to each other; a child hub's uplink gives what its
/// branch `serves`, for the parent.
pub(crate) fn connect(
    store: &Arc<SpokeStore>,
    key: &Arc<StaticKey>,
    enrolment: &Enrolment,
    interface: &str,
    serves: Option<watch::Receiver<ServedNets>>,
) -> Result<Parts> {
    let (dp_tx, dp_rx) = mpsc::channel::<DpCommand>(64);
    let (config_tx, config_rx) = watch::channel(store.config()?);
    let (state_tx, state_rx) = watch::channel(ControlState::default());
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (underlay_tx, underlay_rx) = watch::channel(BTreeSet::new());
    let (calls_tx, calls_rx) = mpsc::channel(16);
    let (session_tx, session_rx) = watch::channel(SessionInfo::default());
    let routes = SharedRoutes::default();
    let me = store.config()?.map(|c| c.spoke_id).unwrap_or(0);
    let pairs = tasuki_core::spoke_pairs::SpokePairs::restore(
        me,
        tasuki_core::spoke_pairs::PAIR_GRACE_SECS,
        store.pairs()?,
    );
    let control = Control {
        store: store.clone(),
        key: key.clone(),
        enrolment: enrolment.clone(),
        dataplane: dp_tx.clone(),
        config: config_tx,
        state: state_tx,
        events: tokio::sync::Mutex::new(events_rx),
        calls: tokio::sync::Mutex::new(calls_rx),
        session_info: session_tx,
        pairs: std::sync::Mutex::new(pairs),
        groups: std::sync::Mutex::new(tasuki_core::spoke_groups::SpokeGroups::restore(
            tasuki_core::spoke_groups::GROUP_GRACE_SECS,
            store.groups()?,
        )),
        dp_port: std::sync::Mutex::new(None),
        underlay: tokio::sync::Mutex::new(underlay_rx),
        interface: interface.to_owned(),
        multicast_routes: std::sync::Mutex::default(),
        routes: routes.clone(),
        serves: serves.map(tokio::sync::Mutex::new),
        last_member: std::sync::Mutex::new(None),
    };
    let api = LocalApi {
        interface: interface.to_owned(),
        enrolment: enrolment.clone(),
        dataplane: dp_tx.clone(),
        config: config_rx.clone(),
        control: state_rx,
        session: session_rx,
        calls: calls_tx,
    };
    let plane = PlaneStart {
        config: config_rx.clone(),
        enrolment: enrolment.clone(),
        interface: interface.to_owned(),
        store: store.clone(),
        key: key.clone(),
        routes,
        events: events_tx,
        commands: dp_rx,
    };
    Ok(Parts {
        control,
        api,
        config: config_rx,
        plane,
        commands: dp_tx,
        underlay: underlay_tx,
    })
}

/// Starts the control loop and the underlay follower in this runtime,
/// logging in `span`; returns their tasks, the control loop's first.
pub(crate) fn spawn_loops(
    control: Control,
    underlay: watch::Sender<BTreeSet<IpAddr>>,
    span: tracing::Span,
) -> [JoinHandle<()>; 2] {
    let follow = crate::underlay::follow(control.dataplane.clone(), underlay);
    let follower = tokio::spawn(follow.instrument(span.clone()));
    [tokio::spawn(control.run().instrument(span)), follower]
}

/// SIGHUP: re-read the config file and apply the log level (the rest needs a restart).
fn reload(config: Option<&Path>) {
    tasuki_shell::service::reload_log_level(|| Ok(crate::config::load(config)?.log));
}

/// What the data plane starts with, once the hub's configuration is known.
pub(crate) struct PlaneStart {
    config: watch::Receiver<Option<SpokeConfig>>,
    enrolment: Enrolment,
    interface: String,
    store: Arc<SpokeStore>,
    key: Arc<StaticKey>,
    routes: SharedRoutes,
    events: mpsc::UnboundedSender<SpokeEvent>,
    commands: mpsc::Receiver<DpCommand>,
}

/// A data plane started: what resolves when it stops, and a sentence for
/// each route of the configuration it could not add.
pub(crate) struct PlaneRunning {
    /// Resolves once the data plane has stopped (its TUN and socket gone).
    pub(crate) done: tokio::sync::oneshot::Receiver<()>,
    /// The routes that could not be added, each with its reason.
    pub(crate) route_errors: Vec<String>,
}

impl PlaneStart {
    /// The daemon's data plane: once the hub's configuration is known,
    /// resolves the hub and [`Self::launch`]es; a route that cannot be
    /// added stops the daemon. Returns what resolves when it stops.
    async fn start(mut self, keepalive: Option<u16>) -> Result<tokio::sync::oneshot::Receiver<()>> {
        let config = self.configured().await?;
        let hub = self.resolve_hub().await?;
        let running = self.launch(config, hub, keepalive).await?;
        if !running.route_errors.is_empty() {
            anyhow::bail!("{}", running.route_errors.join("; "));
        }
        Ok(running.done)
    }

    /// The hub's configuration, once the control loop knows it.
    pub(crate) async fn configured(&mut self) -> Result<SpokeConfig> {
        self.config
            .wait_for(Option::is_some)
            .await
            .context("control loop stopped")?
            .clone()
            .context("no configuration")
    }

    /// The hub's address, as its name resolves now.
    /// The first member of a cluster that resolves (the control channel
    /// points the data plane at the one that answers).
    pub(crate) async fn resolve_hub(&self) -> Result<SocketAddr> {
        let members = crate::control::hub_members(self.config.borrow().as_ref(), &self.enrolment);
        let mut failures = Vec::new();
        for endpoint in &members {
            match tokio::net::lookup_host(endpoint).await {
                Ok(mut found) => match found.next() {
                    Some(addr) => return Ok(addr),
                    None => failures.push(format!("{endpoint} resolves to no address")),
                },
                Err(e) => failures.push(format!("cannot resolve {endpoint}: {e}")),
            }
        }
        anyhow::bail!("the hub's address is unknown: {}", failures.join("; "))
    }

    /// Starts the data plane on a thread of its own (see
    /// `tasuki_shell::thread`), where it makes its TUN and socket, with
    /// `config` and the hub at `hub`, then adds the routes of the
    /// configuration in effect by then.
    pub(crate) async fn launch(
        self,
        config: SpokeConfig,
        hub: SocketAddr,
        keepalive: Option<u16>,
    ) -> Result<PlaneRunning> {
        let (name, addr, mtu) = (self.interface.clone(), config.tunnel_addr, config.mtu);
        let addr6 = config.ipv6.as_ref().map(|v6| v6.tunnel_addr);
        let hub_tunnel = config.hub_tunnel_addr;
        let (store_dp, key_dp, hub_key) = (self.store.clone(), self.key, self.enrolment.hub_key);
        let keepalive = keepalive.unwrap_or(config.keepalive_secs);
        let (events_tx, dp_rx) = (self.events, self.commands);
        // The data plane's thread logs in the caller's span.
        let span = tracing::Span::current();
        let ((tun_name, has6), done) =
            tasuki_shell::thread::spawn_on_own_thread("tasuki-dataplane", move || {
                let run_span = span.clone();
                async move {
                    let tun = tasuki_shell::netdev::create_tun(&name, addr, addr6, mtu)?;
                    let network = Network {
                        own: addr.addr(),
                        net: addr.trunc(),
                        hub: hub_tunnel,
                        own6: tun.addr6.map(|a| a.addr()),
                    };
                    let dp = DataPlane::new(
                        store_dp,
                        key_dp,
                        (hub_key, hub),
                        keepalive,
                        (tun.device, network),
                        events_tx,
                    )
                    .await?;
                    Ok((
                        (tun.name, tun.addr6.is_some()),
                        dp.run(dp_rx).instrument(run_span),
                    ))
                }
                .instrument(span)
            })
            .await?;
        // The configuration in effect now: one the hub changed meanwhile
        // is routed here, and any later change by the control loop.
        let mut routed = self.routes.lock().await;
        let current = self
            .config
            .borrow()
            .clone()
            .unwrap_or_else(|| config.clone());
        let (routes, route_errors) = Routed::install(&tun_name, &current, has6).await;
        *routed = Some(routes);
        drop(routed);
        tracing::info!(
            name = %config.name, addr = %config.tunnel_addr, interface = %tun_name, %hub,
            epoch = self.store.current()?, "spoke running"
        );
        Ok(PlaneRunning { done, route_errors })
    }
}
