//! Command-line interface of the spoke. `enrol` and `run` act on the state
//! directory; every other subcommand is a client of the running daemon's
//! control socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tasuki_core::admin_api::{Reply, SpokeRequest, SpokeStatus};
use tokio::sync::{mpsc, watch};

use crate::control::{Control, ControlState};
use crate::dataplane::{DataPlane, DpCommand};
use crate::enrol::Outcome;
use crate::state::SpokeStore;

const DEFAULT_SOCKET: &str = "/run/tasuki/spoke.sock";
const DEFAULT_STATE: &str = "/var/lib/tasuki-spoke";

#[derive(Parser)]
#[command(
    name = "tasuki-spoke",
    version,
    about = "tasuki spoke: enrols with a tasuki hub and carries this device's traffic through it",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enrol this device with a hub, using an invitation from the hub's admin.
    Enrol {
        /// The invitation text (starts with "tasuki1-").
        invitation: String,
        /// State directory (created 0700; holds spoke.key, hub.pub and the store).
        #[arg(long, default_value = DEFAULT_STATE)]
        state_dir: PathBuf,
    },
    /// Run the spoke daemon.
    Run {
        /// State directory of an enrolled spoke.
        #[arg(long, default_value = DEFAULT_STATE)]
        state_dir: PathBuf,
        /// TUN interface name.
        #[arg(long, default_value = "tasuki0")]
        interface: String,
        /// Control socket path.
        #[arg(long, env = "TASUKI_SPOKE_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Show the daemon's state, epoch and counters.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Control socket of the running spoke.
        #[arg(long, env = "TASUKI_SPOKE_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

pub(crate) fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Enrol {
            invitation,
            state_dir,
        } => rt.block_on(async {
            match crate::enrol::enrol(&invitation, &state_dir).await? {
                Outcome::Active {
                    name,
                    address,
                    epoch,
                } => println!("enrolled as {name:?}, tunnel address {address}, key epoch {epoch}"),
                Outcome::Pending { name } => println!(
                    "enrolled as {name:?}; waiting for the admin's approval (`tasuki-hub spoke approve {name}`)"
                ),
            }
            println!("start the daemon: tasuki-spoke run --state-dir {}", state_dir.display());
            Ok(())
        }),
        Command::Run {
            state_dir,
            interface,
            socket,
        } => rt.block_on(run(&state_dir, &interface, &socket)),
        Command::Status { json, socket } => rt.block_on(async {
            let s: SpokeStatus = tasuki_shell::local::request(&socket, SpokeRequest::Status).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("tasuki-spoke {:?}: {}", s.name, s.state);
                println!("  address:    {} on {}", s.tunnel_addr, s.interface);
                println!("  hub:        {} ({})", s.hub_endpoint, s.hub_fingerprint);
                println!(
                    "  control:    {}",
                    if s.control_connected { "connected" } else { "disconnected" }
                );
                println!(
                    "  epoch:      {} (held: {:?})",
                    s.epoch.map_or("none".into(), |e| e.to_string()),
                    s.held_epochs
                );
                if s.blocked {
                    println!("  BLOCKED:    key epoch over its hard limit; waiting for the hub");
                }
                println!(
                    "  handshake:  {}",
                    s.last_handshake_secs.map_or("never".into(), |t| format!("{t}s ago"))
                );
                let c = &s.counters;
                println!("  datagrams:  {} in, {} out", c.rx_datagrams, c.tx_datagrams);
                if let Some(e) = s.last_error {
                    println!("  last error: {e}");
                }
            }
            Ok(())
        }),
    }
}

async fn run(dir: &Path, interface: &str, socket: &Path) -> Result<()> {
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
    let listener = tasuki_shell::local::bind(socket)?;
    let _guard = tasuki_shell::local::SocketGuard(socket.to_owned());

    let control = Control {
        store: store.clone(),
        key: key.clone(),
        enrolment: enrolment.clone(),
        dataplane: dp_tx.clone(),
        config: config_tx,
        state: state_tx,
        events: tokio::sync::Mutex::new(events_rx),
    };
    let control_task = tokio::spawn(control.run());

    let iface = interface.to_owned();
    let status_enrolment = enrolment.clone();
    let status_dp = dp_tx.clone();
    let status_config = config_rx.clone();
    let status_task = tokio::spawn(tasuki_shell::local::serve(
        listener,
        move |req: SpokeRequest| {
            let dp = status_dp.clone();
            let config = status_config.borrow().clone();
            let control = state_rx.borrow().clone();
            let enrolment = status_enrolment.clone();
            let iface = iface.clone();
            async move {
                match req {
                    SpokeRequest::Status => {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        let dp_status = if dp.send(DpCommand::Status(tx)).await.is_ok() {
                            tokio::time::timeout(std::time::Duration::from_secs(2), rx)
                                .await
                                .ok()
                                .and_then(Result::ok)
                        } else {
                            None
                        };
                        let running = dp_status
                            .as_ref()
                            .is_some_and(|d| d.last_handshake_secs.is_some());
                        let blocked = dp_status.as_ref().is_some_and(|d| d.blocked);
                        let state = if config.is_none() {
                            "waiting-for-hub"
                        } else if blocked {
                            "blocked-key-expired"
                        } else if running {
                            "running"
                        } else {
                            "connecting"
                        };
                        let d = dp_status.unwrap_or_default();
                        let status = SpokeStatus {
                            state: state.into(),
                            name: enrolment.name.clone(),
                            tunnel_addr: config
                                .map(|c| c.tunnel_addr.to_string())
                                .unwrap_or_default(),
                            hub_endpoint: enrolment.hub_endpoint.clone(),
                            hub_fingerprint: enrolment.hub_key.fingerprint(),
                            interface: iface,
                            control_connected: control.connected,
                            epoch: d.epoch,
                            held_epochs: d.held,
                            blocked,
                            last_handshake_secs: d.last_handshake_secs,
                            last_error: control.last_error,
                            counters: d.counters,
                        };
                        match serde_json::to_value(status) {
                            Ok(v) => Reply::Ok(v),
                            Err(e) => Reply::Error(e.to_string()),
                        }
                    }
                }
            }
        },
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
        let tun = tasuki_shell::netdev::create_tun(interface, config.tunnel_addr, config.mtu)?;
        tasuki_shell::netdev::add_routes(&tun.name, &config.routes).await?;
        let dp = DataPlane::new(
            store.clone(),
            key.clone(),
            enrolment.hub_key,
            hub,
            config.keepalive_secs,
            tun.device,
            events_tx,
        )
        .await?;
        tracing::info!(
            name = %config.name, addr = %config.tunnel_addr, interface = %tun.name, %hub,
            epoch = store.current()?, "spoke running"
        );
        anyhow::Ok(dp)
    };
    let dp = tokio::select! {
        dp = start => dp?,
        _ = term.recv() => return Ok(()),
        _ = tokio::signal::ctrl_c() => return Ok(()),
    };
    let dp_task = tokio::spawn(dp.run(dp_rx));
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupt: stopping"),
        r = dp_task => tracing::error!(result = ?r, "data plane stopped"),
    }
    control_task.abort();
    status_task.abort();
    Ok(())
}
