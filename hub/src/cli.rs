//! Command-line interface. Every subcommand but `init` and `run` is a client
//! of the running daemon's admin socket: nothing else opens the store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tasuki_core::admin_api::HubStatus;
use tasuki_core::admin_calls as calls;

use crate::daemon::{self, RunOptions};

/// Default admin socket.
pub(crate) const DEFAULT_SOCKET: &str = "/run/tasuki/hub.sock";

#[derive(Parser)]
#[command(
    name = "tasuki-hub",
    version,
    about = "tasuki key station: enrols spokes, issues and rotates their tunnel keys, relays their traffic",
    long_about = None
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the hub's identity key and store in a new state directory.
    Init {
        #[command(flatten)]
        args: crate::cli_init::InitArgs,
    },
    /// Run the hub daemon.
    Run {
        #[command(flatten)]
        flags: RunFlags,
    },
    /// Check a config file and print the settings `run` would use.
    CheckConfig {
        /// The config file (default /etc/tasuki/hub.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print shell completions (bash, zsh, fish, …) to standard output.
    #[command(hide = true)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to standard output.
    #[command(hide = true)]
    Manpage,
    /// Manage spokes.
    Spoke {
        #[command(subcommand)]
        command: crate::cli_spokes::SpokeCommand,
        /// Admin socket of the running hub.
        #[arg(long, global = true, env = "TASUKI_HUB_SOCKET", default_value = DEFAULT_SOCKET)]
        admin_socket: PathBuf,
    },
    /// Manage users: add, list, remove, reset-password, allow.
    User {
        #[command(subcommand)]
        command: crate::cli_users::UserCommand,
        /// Admin socket of the running hub.
        #[arg(long, global = true, env = "TASUKI_HUB_SOCKET", default_value = DEFAULT_SOCKET)]
        admin_socket: PathBuf,
    },
    /// Key epochs: rotate, policy, status.
    Key {
        #[command(subcommand)]
        command: crate::cli_keys::KeyCommand,
        /// Admin socket of the running hub.
        #[arg(long, global = true, env = "TASUKI_HUB_SOCKET", default_value = DEFAULT_SOCKET)]
        admin_socket: PathBuf,
    },
    /// Who may reach what: the access mode and allow rules.
    Access {
        #[command(subcommand)]
        command: crate::cli_access::AccessCommand,
        /// Admin socket of the running hub.
        #[arg(long, global = true, env = "TASUKI_HUB_SOCKET", default_value = DEFAULT_SOCKET)]
        admin_socket: PathBuf,
    },
    /// Groups of users and spokes, for access rules.
    Group {
        #[command(subcommand)]
        command: crate::cli_access::GroupCommand,
        /// Admin socket of the running hub.
        #[arg(long, global = true, env = "TASUKI_HUB_SOCKET", default_value = DEFAULT_SOCKET)]
        admin_socket: PathBuf,
    },
    /// Direct mode's pairs: list.
    Pair {
        #[command(subcommand)]
        command: crate::cli_pairs::PairCommand,
        /// Admin socket of the running hub.
        #[arg(long, global = true, env = "TASUKI_HUB_SOCKET", default_value = DEFAULT_SOCKET)]
        admin_socket: PathBuf,
    },
    /// Request policies: what users may ask for for a while, and whose
    /// approvals it needs (claim 13).
    RequestPolicy {
        #[command(subcommand)]
        command: crate::cli_requests::RequestPolicyCommand,
        /// Admin socket of the running hub.
        #[arg(long, global = true, env = "TASUKI_HUB_SOCKET", default_value = DEFAULT_SOCKET)]
        admin_socket: PathBuf,
    },
    /// IPv6 inside the tunnels: give a hub that carries IPv4 only an IPv6
    /// prefix (its spokes take their addresses without enrolling again).
    Ipv6 {
        #[command(subcommand)]
        command: crate::cli_ipv6::Ipv6Command,
        /// Admin socket of the running hub.
        #[arg(long, global = true, env = "TASUKI_HUB_SOCKET", default_value = DEFAULT_SOCKET)]
        admin_socket: PathBuf,
    },
    /// Access requests: list, approve, deny, revoke.
    Request {
        #[command(subcommand)]
        command: crate::cli_requests::RequestCommand,
        /// Admin socket of the running hub.
        #[arg(long, global = true, env = "TASUKI_HUB_SOCKET", default_value = DEFAULT_SOCKET)]
        admin_socket: PathBuf,
    },
    /// A hub cluster on etcd: its members, which one is active, etcd's
    /// health (read from etcd; works with no hub running).
    Cluster {
        #[command(subcommand)]
        command: crate::cli_cluster::ClusterCommand,
    },
    /// The hub tree: child hubs (regional or branch hubs) invited,
    /// approved, revoked and listed, and this hub's parent.
    Hub {
        #[command(subcommand)]
        command: crate::cli_hubs::HubCommand,
        /// Admin socket of the running hub.
        #[arg(long, global = true, env = "TASUKI_HUB_SOCKET", default_value = DEFAULT_SOCKET)]
        admin_socket: PathBuf,
    },
    /// Join a parent hub as its child hub, with the invitation its admin
    /// printed (`tasuki-hub hub invite NAME` there). This hub keeps its own
    /// spokes, keys and tunnel network; it announces them to the parent and
    /// carries traffic to the rest of the tree once the parent approves.
    Join {
        /// The invitation.
        invitation: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Admin socket of the running hub.
        #[arg(long, env = "TASUKI_HUB_SOCKET", default_value = DEFAULT_SOCKET)]
        admin_socket: PathBuf,
    },
    /// Show the audit log: enrolments, approvals, logins, keys, revocations.
    Audit {
        /// Only records since this time: RFC 3339 (2026-11-25T06:00:00Z) or a
        /// duration ago (90m, 2d).
        #[arg(long)]
        since: Option<String>,
        /// Print JSON (one array).
        #[arg(long)]
        json: bool,
        /// Admin socket of the running hub.
        #[arg(long, env = "TASUKI_HUB_SOCKET", default_value = DEFAULT_SOCKET)]
        admin_socket: PathBuf,
    },
    /// Show the daemon's status and counters.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Admin socket of the running hub.
        #[arg(long, env = "TASUKI_HUB_SOCKET", default_value = DEFAULT_SOCKET)]
        admin_socket: PathBuf,
    },
}

/// Settings of `tasuki-hub run`; each overrides the config file.
#[derive(clap::Args)]
struct RunFlags {
    /// Config file (default /etc/tasuki/hub.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// State directory made by `init` [default: /var/lib/tasuki-hub].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// TUN interface name [default: tasuki0].
    #[arg(long)]
    interface: Option<String>,
    /// Address to listen on (TCP and UDP) [default: all addresses, the endpoint's port].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Admin socket path [default: /run/tasuki/hub.sock].
    #[arg(long, env = "TASUKI_HUB_SOCKET")]
    admin_socket: Option<PathBuf>,
    /// Members of this group may use the admin socket too (besides root).
    #[arg(long)]
    admin_group: Option<String>,
    /// Serve Prometheus metrics on this address (off by default; keep it local).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Log level or filter (RUST_LOG wins) [default: info].
    #[arg(long)]
    log: Option<String>,
}

impl RunFlags {
    /// Flags over the config file over the defaults.
    fn resolve(self) -> Result<(RunOptions, Option<String>)> {
        let file = crate::config::load(self.config.as_deref())?;
        let config = self.config.clone();
        Ok((
            RunOptions {
                state_dir: self
                    .state_dir
                    .or(file.state_dir)
                    .unwrap_or_else(|| "/var/lib/tasuki-hub".into()),
                interface: self
                    .interface
                    .or(file.interface)
                    .unwrap_or_else(|| "tasuki0".into()),
                listen: self.listen.or(file.listen),
                admin_socket: self
                    .admin_socket
                    .or(file.admin_socket)
                    .unwrap_or_else(|| DEFAULT_SOCKET.into()),
                admin_group: self.admin_group.or(file.admin_group),
                metrics: self.metrics.or(file.metrics),
                config,
            },
            self.log.or(file.log),
        ))
    }
}

/// Runs the subcommand given on the command line.
pub(crate) fn main() -> Result<()> {
    // Nothing the daemon or a command writes is readable by other users.
    tasuki_shell::files::private_umask();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        tasuki_shell::logging::init(None);
    }
    match cli.command {
        Command::Init { args } => crate::cli_init::init(args),
        Command::Run { flags } => run(flags),
        Command::CheckConfig { config } => check_config(config),
        Command::Completions { shell } => {
            completions(shell);
            Ok(())
        }
        Command::Manpage => manpage(),
        Command::Cluster { command } => {
            runtime()?.block_on(crate::cli_cluster::cluster_command(command))
        }
        Command::Hub {
            command,
            admin_socket,
        } => runtime()?.block_on(crate::cli_hubs::hub_command(command, &admin_socket)),
        Command::Join {
            invitation,
            json,
            admin_socket,
        } => runtime()?.block_on(crate::cli_hubs::join(invitation, json, &admin_socket)),
        Command::Spoke {
            command,
            admin_socket,
        } => runtime()?.block_on(crate::cli_spokes::spoke_command(command, &admin_socket)),
        Command::Key {
            command,
            admin_socket,
        } => runtime()?.block_on(crate::cli_keys::key_command(command, &admin_socket)),
        Command::Pair {
            command,
            admin_socket,
        } => runtime()?.block_on(crate::cli_pairs::pair_command(command, &admin_socket)),
        Command::RequestPolicy {
            command,
            admin_socket,
        } => runtime()?.block_on(crate::cli_requests::policy_command(command, &admin_socket)),
        Command::Request {
            command,
            admin_socket,
        } => runtime()?.block_on(crate::cli_requests::request_command(command, &admin_socket)),
        Command::Ipv6 {
            command,
            admin_socket,
        } => runtime()?.block_on(crate::cli_ipv6::ipv6_command(command, &admin_socket)),
        Command::User {
            command,
            admin_socket,
        } => runtime()?.block_on(crate::cli_users::run(command, &admin_socket)),
        Command::Access {
            command,
            admin_socket,
        } => runtime()?.block_on(crate::cli_access::run_access(command, &admin_socket)),
        Command::Group {
            command,
            admin_socket,
        } => runtime()?.block_on(crate::cli_access::run_group(command, &admin_socket)),
        Command::Audit {
            since,
            json,
            admin_socket,
        } => runtime()?.block_on(audit(since, json, &admin_socket)),
        Command::Status { json, admin_socket } => runtime()?.block_on(status(json, &admin_socket)),
    }
}

/// `run`: the hub daemon, with its settings and logging as configured.
fn run(flags: RunFlags) -> Result<()> {
    let (opts, log) = flags.resolve()?;
    tasuki_shell::logging::init(log.as_deref());
    runtime()?.block_on(daemon::run(opts))
}

/// `check-config`: loads a config file and prints the settings `run` would
/// use with no flags.
fn check_config(config: Option<PathBuf>) -> Result<()> {
    let (opts, log) = RunFlags {
        config,
        state_dir: None,
        interface: None,
        listen: None,
        admin_socket: None,
        admin_group: None,
        metrics: None,
        log: None,
    }
    .resolve()?;
    println!("config OK");
    println!("  state_dir    = {}", opts.state_dir.display());
    println!("  interface    = {}", opts.interface);
    println!(
        "  listen       = {}",
        opts.listen
            .map_or("(the endpoint's port on all addresses)".into(), |a| a
                .to_string())
    );
    println!("  admin_socket = {}", opts.admin_socket.display());
    println!(
        "  admin_group  = {}",
        opts.admin_group.as_deref().unwrap_or("(none)")
    );
    println!(
        "  metrics      = {}",
        opts.metrics.map_or("off".into(), |a| a.to_string())
    );
    println!("  log          = {}", log.as_deref().unwrap_or("info"));
    Ok(())
}

/// `completions`: the shell completions for `shell`, on standard output.
fn completions(shell: clap_complete::Shell) {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut cmd, "tasuki-hub", &mut std::io::stdout());
}

/// `manpage`: the man page (roff), on standard output.
fn manpage() -> Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
    Ok(())
}

/// `status`: the daemon's status and counters, as text or JSON.
async fn status(json: bool, socket: &Path) -> Result<()> {
    let status: HubStatus = tasuki_shell::local::call(socket, calls::Status {}).await?;
    print_json_or(&status, json, print_status)
}

/// Prints `value` as JSON with `--json`, else as `text` prints it.
pub(crate) fn print_json_or<T: serde::Serialize + ?Sized>(
    value: &T,
    json: bool,
    text: impl FnOnce(&T),
) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        text(value);
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn parse_since(text: &str) -> Result<u64> {
    if let Ok(t) = humantime::parse_rfc3339_weak(text) {
        return Ok(t
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0));
    }
    let ago = humantime::parse_duration(text).with_context(|| {
        format!("--since {text:?}: use RFC 3339 (2026-11-25T06:00:00Z) or a duration ago (90m)")
    })?;
    Ok(tasuki_shell::unix_now().saturating_sub(ago.as_secs()))
}

async fn audit(since: Option<String>, json: bool, socket: &Path) -> Result<()> {
    let since = since.as_deref().map(parse_since).transpose()?.unwrap_or(0);
    let records: Vec<tasuki_core::audit::AuditRecord> =
        tasuki_shell::local::call(socket, calls::Audit { since }).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    for r in records {
        let when =
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(r.time));
        let kind = serde_json::to_value(r.kind)?;
        println!(
            "{when} {:<18} spoke={} user={} src={} {}",
            kind.as_str().unwrap_or("?"),
            r.spoke.as_deref().unwrap_or("-"),
            r.user.as_deref().unwrap_or("-"),
            r.source.as_deref().unwrap_or("-"),
            r.detail
        );
    }
    Ok(())
}

pub(crate) fn print_status(s: &HubStatus) {
    println!("tasuki-hub {}", s.version);
    for w in &s.warnings {
        println!("  warning:      {w}");
    }
    println!("  fingerprint:  {}", s.fingerprint);
    println!("  endpoint:     {}", s.endpoint);
    match &s.tunnel_net6 {
        Some(net6) => println!("  interface:    {} ({}, {net6})", s.interface, s.tunnel_net),
        None => println!("  interface:    {} ({})", s.interface, s.tunnel_net),
    }
    println!("  routes:       {}", s.routes.join(", "));
    println!(
        "  spokes:       {} active, {} pending; {} control connections",
        s.spokes_active, s.spokes_pending, s.control_connections
    );
    println!("  pairs:        {} (direct mode)", s.pairs);
    match &s.parent {
        Some(p) => println!("  hub tree:     child of {p}; {} child hubs", s.child_hubs),
        None => println!("  hub tree:     root; {} child hubs", s.child_hubs),
    }
    if let Some(c) = &s.cluster {
        println!(
            "  cluster:      {} member of {} ({})",
            c.health,
            c.members.len(),
            c.members.join(", ")
        );
    }
    println!(
        "  access:       {} ({} rules; {} flows tracked)",
        s.access_mode.name(),
        s.access_rules,
        s.counters.access_flows
    );
    let c = &s.counters;
    println!(
        "  datagrams:    {} in, {} out; relayed {}, to TUN {}, from TUN {}, handshakes {} ({} failed)",
        c.rx_datagrams,
        c.tx_datagrams,
        c.relayed,
        c.to_tun,
        c.from_tun,
        c.handshakes,
        c.handshake_failures
    );
    println!(
        "  held:         {} packets waited for a handshake; {} failed reads",
        c.queued, c.receive_errors
    );
    let drops: Vec<String> = c.dropped.iter().map(|(k, v)| format!("{k}={v}")).collect();
    println!(
        "  dropped:      {}",
        if drops.is_empty() {
            "none".into()
        } else {
            drops.join(" ")
        }
    );
}
