//! `tasuki-spoke run`: the daemon. Starts the control loop and the local
//! socket at once, the data plane as soon as the hub's configuration is known.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use tasuki_core::admin_api::SpokeRequest;
use tokio::sync::{mpsc, watch};

use crate::control::{Control, ControlState, SessionInfo};
use crate::dataplane::{DataPlane, DpCommand};
use crate::local::LocalApi;
use crate::state::SpokeStore;

/// `tasuki-spoke run`: until SIGTERM.
pub(crate) async fn run(
    dir: &Path,
    interface: &str,
    socket: &Path,
    group: Option<&str>,
    keepalive: Option<u16>,
    config: Option<&Path>,
) -> Result<()> {
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let access = match group {
        Some(g) => tasuki_shell::local::Access::group(g)?,
        None => tasuki_shell::local::Access::default(),
    };
    let store = Arc::new(SpokeStore::open(dir)?);
    let key = Arc::new(store.key()?);
    let enrolment = store.enrolment()?.with_context(|| {
        format!(
            "{} holds no enrolment; run `tasuki-spoke enrol INVITATION --state-dir {}` first",
            dir.display(),
            dir.display()
        )
    })?;
    let (dp_tx, dp_rx) = mpsc::channel::<DpCommand>(64);
    let (config_tx, mut config_rx) = watch::channel(store.config()?);
    let (state_tx, state_rx) = watch::channel(ControlState::default());
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (calls_tx, calls_rx) = mpsc::channel(16);
    let (session_tx, session_rx) = watch::channel(SessionInfo::default());
    let listener = tasuki_shell::local::bind(socket, access)?;
    let _guard = tasuki_shell::local::SocketGuard(socket.to_owned());

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
    };
    let control_task = tokio::spawn(control.run());

    let api = LocalApi {
        interface: interface.to_owned(),
        enrolment: enrolment.clone(),
        dataplane: dp_tx.clone(),
        config: config_rx.clone(),
        control: state_rx,
        session: session_rx,
        calls: calls_tx,
    };
    let status_task = tokio::spawn(tasuki_shell::local::serve(
        listener,
        access,
        move |req: SpokeRequest| api.clone().handle(req),
    ));

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let start = async {
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
        let (store_dp, key_dp, hub_key) = (store.clone(), key.clone(), enrolment.hub_key);
        let keepalive = keepalive.unwrap_or(config.keepalive_secs);
        let (tun_name, done) =
            tasuki_shell::thread::spawn_on_own_thread("tasuki-dataplane", move || async move {
                let tun = tasuki_shell::netdev::create_tun(&name, addr, mtu)?;
                let dp = DataPlane::new(
                    store_dp,
                    key_dp,
                    (hub_key, hub),
                    keepalive,
                    tun.device,
                    events_tx,
                )
                .await?;
                Ok((tun.name, dp.run(dp_rx)))
            })
            .await?;
        tasuki_shell::netdev::add_routes(&tun_name, &config.routes).await?;
        tracing::info!(
            name = %config.name, addr = %config.tunnel_addr, interface = %tun_name, %hub,
            epoch = store.current()?, "spoke running"
        );
        anyhow::Ok(done)
    };
    // Ready once the control loop and the local socket run: a pending spoke
    // may wait for its approval for a long time.
    let watchdog = tasuki_shell::service::spawn_watchdog();
    tasuki_shell::service::ready(&format!("spoke of {}", enrolment.hub_endpoint));
    let mut dp_done = tokio::select! {
        done = start => done?,
        _ = term.recv() => return Ok(()),
        _ = tokio::signal::ctrl_c() => return Ok(()),
    };
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); break; }
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupt: stopping"); break; }
            _ = &mut dp_done => { tracing::error!("data plane stopped"); break; }
            _ = hup.recv() => reload(config),
        }
    }
    tasuki_shell::service::stopping();
    if let Some(w) = watchdog {
        w.abort();
    }
    control_task.abort();
    status_task.abort();
    tracing::info!("stopped; the TUN interface and its routes go with the process");
    Ok(())
}

/// SIGHUP: re-read the config file and apply the log level (the rest needs a restart).
fn reload(config: Option<&Path>) {
    tasuki_shell::service::reloading();
    match crate::config::load(config) {
        Ok(file) => match tasuki_shell::logging::set_level(file.log.as_deref()) {
            Ok(()) => tracing::info!(
                "SIGHUP: config re-read; log level applied (other settings need a restart)"
            ),
            Err(e) => tracing::error!(error = %e, "SIGHUP: log level not changed"),
        },
        Err(e) => tracing::error!(error = %format!("{e:#}"), "SIGHUP: config not re-read"),
    }
    tasuki_shell::service::ready("reloaded");
}
