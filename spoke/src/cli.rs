//! Command-line interface of the spoke. `enrol` and `run` act on the state
//! directory; every other subcommand is a client of the running daemon's
//! control socket.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tasuki_core::admin_api::{SpokeRequest, SpokeStatus};

use crate::config::RunSettings;
use crate::enrol::Outcome;

pub(crate) const DEFAULT_SOCKET: &str = "/run/tasuki/spoke.sock";
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
        /// Enrol as another device of this user: the user confirms it from a
        /// device where they are logged in (`tasuki-spoke approve-device`).
        #[arg(long)]
        as_user: Option<String>,
    },
    /// Run the spoke daemon.
    Run {
        #[command(flatten)]
        flags: RunFlags,
    },
    /// Check a config file and print the settings `run` would use.
    CheckConfig {
        /// The config file (default /etc/tasuki/spoke.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print shell completions to standard output.
    #[command(hide = true)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to standard output.
    #[command(hide = true)]
    Manpage,
    /// Log a user in through this spoke: traffic flows only while an allowed user is logged in.
    Login {
        /// User id.
        user: String,
        /// Read the password from standard input (first line), and a new
        /// password from the second line when the initial one must change.
        #[arg(long)]
        password_stdin: bool,
        /// Control socket of the running spoke.
        #[arg(long, env = "TASUKI_SPOKE_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Ask the hub for an account, with a password of your own; an admin
    /// approves it (tasuki-hub user approve), then `login` works here.
    Register {
        /// The login id to ask for (letters, digits, '.', '-', '_', '@').
        user: String,
        /// Your full name, for the admin to check.
        #[arg(long, default_value = "")]
        name: String,
        /// Your e-mail address.
        #[arg(long, default_value = "")]
        email: String,
        /// Read the password from standard input (first line).
        #[arg(long)]
        password_stdin: bool,
        /// Control socket of the running spoke.
        #[arg(long, env = "TASUKI_SPOKE_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Log a user out (ends this spoke's traffic if nobody else is logged in, and rotates its key).
    Logout {
        /// User id; default: the only user logged in.
        user: Option<String>,
        /// Control socket of the running spoke.
        #[arg(long, env = "TASUKI_SPOKE_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Change a user's password.
    Passwd {
        /// User id.
        user: String,
        /// Read the old and the new password from standard input, one per line.
        #[arg(long)]
        password_stdin: bool,
        /// Control socket of the running spoke.
        #[arg(long, env = "TASUKI_SPOKE_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    #[command(flatten)]
    Requests(crate::cli_requests::RequestCommand),
    /// Make an invitation for another device of a user logged in here.
    InviteDevice {
        /// Name for the new device.
        name: String,
        /// User id; default: the only user logged in.
        #[arg(long)]
        user: Option<String>,
        /// Control socket of the running spoke.
        #[arg(long, env = "TASUKI_SPOKE_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Confirm a new device of a user logged in here; it then gets its keys.
    ApproveDevice {
        /// The device; default: the only one waiting.
        name: Option<String>,
        /// User id; default: the only user logged in.
        #[arg(long)]
        user: Option<String>,
        /// Control socket of the running spoke.
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

/// Settings of `tasuki-spoke run`; each overrides the config file.
#[derive(clap::Args)]
struct RunFlags {
    /// Config file (default /etc/tasuki/spoke.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// State directory of an enrolled spoke [default: /var/lib/tasuki-spoke].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// TUN interface name [default: tasuki0].
    #[arg(long)]
    interface: Option<String>,
    /// Control socket path [default: /run/tasuki/spoke.sock].
    #[arg(long, env = "TASUKI_SPOKE_SOCKET")]
    socket: Option<PathBuf>,
    /// Members of this group may use the control socket (to log in, …).
    #[arg(long)]
    group: Option<String>,
    /// WireGuard persistent keepalive toward the hub, seconds (0 = off)
    /// [default: the hub's setting, 25 unless changed]. Behind a NAT
    /// that forgets UDP mappings sooner, set it below that timeout.
    #[arg(long, value_name = "SECS")]
    keepalive: Option<u16>,
    /// Log level or filter (RUST_LOG wins) [default: info].
    #[arg(long)]
    log: Option<String>,
}

/// The command line of `tasuki-spoke`: carries out the subcommand it
/// names (the binary's `main` is this and its exit code).
pub fn main() -> Result<()> {
    // Nothing the daemon or a command writes is readable by other users.
    tasuki_shell::files::private_umask();
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        tasuki_shell::logging::init(None);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    match cli.command {
        Command::Login {
            user,
            password_stdin,
            socket,
        } => rt.block_on(crate::cli_users::login(&socket, user, password_stdin)),
        Command::Logout { user, socket } => rt.block_on(crate::cli_users::logout(&socket, user)),
        Command::Register {
            user,
            name,
            email,
            password_stdin,
            socket,
        } => rt.block_on(crate::cli_users::register(
            &socket,
            crate::cli_users::Profile { user, name, email },
            password_stdin,
        )),
        Command::Passwd {
            user,
            password_stdin,
            socket,
        } => rt.block_on(crate::cli_users::passwd(&socket, user, password_stdin)),
        Command::Requests(command) => rt.block_on(crate::cli_requests::run(command)),
        Command::InviteDevice { name, user, socket } => {
            rt.block_on(crate::cli_users::invite_device(&socket, user, name))
        }
        Command::ApproveDevice { name, user, socket } => {
            rt.block_on(crate::cli_users::approve_device(&socket, user, name))
        }
        Command::Enrol {
            invitation,
            state_dir,
            as_user,
        } => rt.block_on(enrol(&invitation, &state_dir, as_user)),
        Command::Run { flags } => run(flags, &rt),
        Command::CheckConfig { config } => check_config(config.as_deref()),
        Command::Completions { shell } => {
            print_completions(shell);
            Ok(())
        }
        Command::Manpage => print_manpage(),
        Command::Status { json, socket } => rt.block_on(status(&socket, json)),
    }
}

/// `tasuki-spoke enrol`: enrols and tells how it ended and how to go on.
async fn enrol(invitation: &str, state_dir: &Path, as_user: Option<String>) -> Result<()> {
    let pending_note = if as_user.is_some() {
        "waiting for the user's confirmation from a device where they are logged in (tasuki-spoke approve-device)"
    } else {
        "waiting for the admin's approval"
    };
    let what = crate::enrol::EnrolAs::Device { as_user };
    match crate::enrol::enrol(invitation, state_dir, what).await? {
        Outcome::Active {
            name,
            address,
            epoch,
        } => println!("enrolled as {name:?}, tunnel address {address}, key epoch {epoch}"),
        Outcome::Pending { name } => println!("enrolled as {name:?}; {pending_note}"),
    }
    println!(
        "start the daemon: tasuki-spoke run --state-dir {}",
        state_dir.display()
    );
    Ok(())
}

/// `tasuki-spoke run`: the daemon, with flags over the config file over the
/// defaults.
fn run(flags: RunFlags, rt: &tokio::runtime::Runtime) -> Result<()> {
    let file = crate::config::load(flags.config.as_deref())?;
    let run = RunSettings {
        state_dir: flags
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(|| DEFAULT_STATE.into()),
        interface: flags
            .interface
            .or(file.interface)
            .unwrap_or_else(|| "tasuki0".into()),
        socket: flags
            .socket
            .or(file.socket)
            .unwrap_or_else(|| DEFAULT_SOCKET.into()),
        group: flags.group.or(file.group),
        keepalive: flags.keepalive.or(file.keepalive),
        log: flags.log.or(file.log),
    };
    tasuki_shell::logging::init(run.log.as_deref());
    rt.block_on(crate::daemon::run(
        &run.state_dir,
        &run.interface,
        &run.socket,
        run.group.as_deref(),
        run.keepalive,
        flags.config.as_deref(),
    ))
}

/// `tasuki-spoke check-config`: checks the config file and prints the
/// settings `run` would take from it.
fn check_config(config: Option<&Path>) -> Result<()> {
    let file = crate::config::load(config)?;
    println!("config OK");
    let show = |p: Option<PathBuf>, d: &str| p.map_or(d.to_string(), |p| p.display().to_string());
    println!("  state_dir = {}", show(file.state_dir, DEFAULT_STATE));
    println!(
        "  interface = {}",
        file.interface.as_deref().unwrap_or("tasuki0")
    );
    println!("  socket    = {}", show(file.socket, DEFAULT_SOCKET));
    println!(
        "  group     = {}",
        file.group.as_deref().unwrap_or("(none)")
    );
    println!(
        "  keepalive = {}",
        file.keepalive
            .map_or("(the hub's setting)".to_string(), |k| format!("{k} s"))
    );
    println!("  log       = {}", file.log.as_deref().unwrap_or("info"));
    Ok(())
}

/// `tasuki-spoke completions`: the shell's completions for this command.
fn print_completions(shell: clap_complete::Shell) {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    clap_complete::generate(shell, &mut cmd, "tasuki-spoke", &mut std::io::stdout());
}

/// `tasuki-spoke manpage`: the man page of this command.
fn print_manpage() -> Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
    Ok(())
}

/// `tasuki-spoke status`: asks the daemon for its status and prints it.
async fn status(socket: &Path, json: bool) -> Result<()> {
    let s: SpokeStatus = tasuki_shell::local::request(socket, SpokeRequest::Status).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else {
        print_status(s);
    }
    Ok(())
}

/// The daemon's status, for a person.
fn print_status(s: SpokeStatus) {
    println!("tasuki-spoke {:?}: {}", s.name, s.state);
    match &s.tunnel_addr6 {
        Some(addr6) => println!(
            "  address:    {} and {addr6} on {}",
            s.tunnel_addr, s.interface
        ),
        None => println!("  address:    {} on {}", s.tunnel_addr, s.interface),
    }
    println!("  hub:        {} ({})", s.hub_endpoint, s.hub_fingerprint);
    println!(
        "  control:    {}",
        if s.control_connected {
            "connected"
        } else {
            "disconnected"
        }
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
        s.last_handshake_secs
            .map_or("never".into(), |t| format!("{t}s ago"))
    );
    let c = &s.counters;
    println!(
        "  datagrams:  {} in, {} out",
        c.rx_datagrams, c.tx_datagrams
    );
    println!(
        "  users:      {}{}",
        if s.users.is_empty() {
            "nobody logged in".to_string()
        } else {
            s.users.join(", ")
        },
        if s.carrying {
            ""
        } else {
            " (traffic stopped: log in with `tasuki-spoke login ID`)"
        }
    );
    for d in &s.devices_waiting {
        println!("  waiting:    device {d:?} (tasuki-spoke approve-device {d})");
    }
    for a in &s.approvals_waiting {
        let r = &a.request;
        println!(
            "  waiting:    request {} by {} under {} for {} s: {} (for {}: tasuki-spoke approve-request {} or deny-request {})",
            r.id, r.requester, r.policy, r.duration_secs, r.reason, a.approver, r.id, r.id
        );
    }
    for p in &s.peers {
        println!(
            "  peer:       {} {} {}{} (pair epoch {}, {} packets out, {} in direct)",
            p.name,
            p.tunnel_addr,
            p.path,
            p.endpoint
                .as_ref()
                .map(|e| format!(" via {e}"))
                .unwrap_or_default(),
            p.epoch,
            p.tx_packets,
            p.rx_packets
        );
    }
    for g in &s.groups {
        println!(
            "  group:      {} keyed, epoch {} (held {:?})",
            g.group, g.epoch, g.held
        );
        if !g.multicast.is_empty() {
            println!(
                "              multicast {}, {} member(s) online",
                g.multicast.join(" "),
                g.members_online
            );
        }
    }
    if let Some(e) = s.last_error {
        println!("  last error: {e}");
    }
}
