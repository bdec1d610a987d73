//! `tasuki-spoke run`: the daemon. Starts the control loop and the local
//! socket at once, the data plane as soon as the hub's configuration is known.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use tasuki_core::admin_api::SpokeRequest;
use tasuki_core::control::SpokeConfig;
use tasuki_core::keys::StaticKey;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::control::{Control, ControlState, SessionInfo};
use crate::dataplane::{DataPlane, DpCommand, Network, SpokeEvent};
use crate::local::LocalApi;
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
        config: config_rx,
        events,
        commands: (_dataplane, commands),
        underlay,
    } = connect(&store, &key, &enrolment, interface)?;
    let listener = tasuki_shell::local::bind(socket, access)?;
    let _guard = tasuki_shell::local::SocketGuard(socket.to_owned());
    let underlay_task = tokio::spawn(crate::underlay::follow(control.dataplane.clone(), underlay));
    let control_task = tokio::spawn(control.run());
    let status_task = tokio::spawn(tasuki_shell::local::serve(
        listener,
        access,
        move |req: SpokeRequest| api.clone().handle(req),
    ));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let start = start_dataplane(
        config_rx.clone(),
        &enrolment,
        interface,
        (store.clone(), key.clone()),
        keepalive,
        (events, commands),
    );
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

/// The daemon's parts, connected to each other but not started yet.
struct Parts {
    /// The control loop.
    control: Control,
    /// What answers on the local socket.
    api: LocalApi,
    /// The hub's configuration, once the control loop knows it.
    config: watch::Receiver<Option<SpokeConfig>>,
    /// Where the data plane reports to the control loop.
    events: mpsc::UnboundedSender<SpokeEvent>,
    /// The data plane's commands: a sender besides the control loop's and
    /// the local socket's, and the receiver the data plane takes.
    commands: (mpsc::Sender<DpCommand>, mpsc::Receiver<DpCommand>),
    /// Where the local addresses go when they change.
    underlay: watch::Sender<BTreeSet<IpAddr>>,
}

/// Connects the control loop, the local socket and the data plane of an
/// enrolled spoke to each other.
fn connect(
    store: &Arc<SpokeStore>,
    key: &Arc<StaticKey>,
    enrolment: &Enrolment,
    interface: &str,
) -> Result<Parts> {
    let (dp_tx, dp_rx) = mpsc::channel::<DpCommand>(64);
    let (config_tx, config_rx) = watch::channel(store.config()?);
    let (state_tx, state_rx) = watch::channel(ControlState::default());
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (underlay_tx, underlay_rx) = watch::channel(BTreeSet::new());
    let (calls_tx, calls_rx) = mpsc::channel(16);
    let (session_tx, session_rx) = watch::channel(SessionInfo::default());
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
    Ok(Parts {
        control,
        api,
        config: config_rx,
        events: events_tx,
        commands: (dp_tx, dp_rx),
        underlay: underlay_tx,
    })
}

/// SIGHUP: re-read the config file and apply the log level (the rest needs a restart).
fn reload(config: Option<&Path>) {
    tasuki_shell::service::reload_log_level(|| Ok(crate::config::load(config)?.log));
}

/// Once the hub's configuration is known: resolves the hub, starts the
/// data plane on a thread of its own (see `tasuki_shell::thread`), where
/// it makes its TUN and socket, and adds the routes. Returns what resolves
/// when the data plane stops.
async fn start_dataplane(
    mut config_rx: watch::Receiver<Option<SpokeConfig>>,
    enrolment: &Enrolment,
    interface: &str,
    (store, key): (Arc<SpokeStore>, Arc<StaticKey>),
    keepalive: Option<u16>,
    (events_tx, dp_rx): (mpsc::UnboundedSender<SpokeEvent>, mpsc::Receiver<DpCommand>),
) -> Result<tokio::sync::oneshot::Receiver<()>> {
    let config = config_rx
        .wait_for(Option::is_some)
        .await
        .context("control loop stopped")?
        .clone()
        .context("no configuration")?;
    let hub = tokio::net::lookup_host(&enrolment.hub_endpoint)
        .await
        .with_context(|| format!("cannot resolve {}", enrolment.hub_endpoint))?
        .next()
        .with_context(|| format!("{} resolves to no address", enrolment.hub_endpoint))?;
    // The data plane runs on a thread of its own (see
    // `tasuki_shell::thread`), where it makes its TUN and socket.
    let (name, addr, mtu) = (interface.to_owned(), config.tunnel_addr, config.mtu);
    let addr6 = config.ipv6.as_ref().map(|v6| v6.tunnel_addr);
    let hub_tunnel = config.hub_tunnel_addr;
    let (store_dp, key_dp, hub_key) = (store.clone(), key.clone(), enrolment.hub_key);
    let keepalive = keepalive.unwrap_or(config.keepalive_secs);
    let ((tun_name, has6), done) =
        tasuki_shell::thread::spawn_on_own_thread("tasuki-dataplane", move || async move {
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
            Ok(((tun.name, tun.addr6.is_some()), dp.run(dp_rx)))
        })
        .await?;
    tasuki_shell::netdev::add_routes(&tun_name, &config.routes).await?;
    if let (Some(v6), true) = (&config.ipv6, has6) {
        tasuki_shell::netdev::add_routes6(&tun_name, &v6.routes).await?;
    }
    tracing::info!(
        name = %config.name, addr = %config.tunnel_addr, interface = %tun_name, %hub,
        epoch = store.current()?, "spoke running"
    );
    Ok(done)
}
