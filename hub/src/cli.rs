//! Command-line interface. Every subcommand but `init` and `run` is a client
//! of the running daemon's admin socket: nothing else opens the store.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use ipnet::Ipv4Net;
use tasuki_core::admin_api::{HubRequest, HubStatus, InvitationView, SpokeView};
use tasuki_core::keys::StaticKey;
use tasuki_core::registry::HubSettings;

use crate::daemon::{self, RunOptions};
use crate::state;

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
        /// State directory (created 0700; holds hub.key and the store).
        #[arg(long, default_value = "/var/lib/tasuki-hub")]
        state_dir: PathBuf,
        /// Public HOST:PORT that spokes reach (TCP control and UDP data on the same port).
        #[arg(long)]
        endpoint: String,
        /// Tunnel network; the hub takes its first address, spokes get the others.
        #[arg(long)]
        tunnel_net: Ipv4Net,
        /// A subnet routed behind the hub (company LAN); repeat for several.
        #[arg(long = "route")]
        routes: Vec<Ipv4Net>,
        /// WireGuard persistent keepalive for spokes, seconds (0 = off).
        #[arg(long, default_value_t = 25)]
        keepalive: u16,
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
        command: SpokeCommand,
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
        command: KeyCommand,
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

#[derive(Subcommand)]
enum KeyCommand {
    /// End the current epoch now and hand out a new one.
    Rotate {
        /// The spoke whose link to rotate.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        spoke: Option<String>,
        /// Rotate every link.
        #[arg(long)]
        all: bool,
    },
    /// Show or change the rotation policy.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Per-link epochs: number, age, packets, bytes, next trigger (never key bytes).
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Print the policy (hub-wide, or the one in force for a spoke).
    Show {
        /// The spoke whose policy to show.
        #[arg(long)]
        spoke: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drop a spoke's override: the hub-wide policy applies to it again.
    Reset {
        /// The spoke.
        #[arg(long)]
        spoke: String,
    },
    /// Change the policy; options not given keep their value. With --spoke,
    /// sets that spoke's override (starting from the policy in force for it).
    Set {
        /// The spoke to override for; without it the hub-wide policy changes.
        #[arg(long)]
        spoke: Option<String>,
        /// End epochs after this long (e.g. 10m, 1h); "off" disables.
        #[arg(long)]
        interval: Option<String>,
        /// End epochs after this many packets; 0 disables.
        #[arg(long)]
        max_packets: Option<u64>,
        /// End epochs after this many bytes; 0 disables.
        #[arg(long)]
        max_bytes: Option<u64>,
        /// End epochs after this many WireGuard handshakes; 0 disables.
        #[arg(long)]
        max_handshakes: Option<u64>,
        /// How new keys travel: crossed (sealed under the previous key) or parallel.
        #[arg(long, value_parser = ["crossed", "parallel"])]
        delivery: Option<String>,
        /// How long an ended epoch stays for packets in flight (e.g. 10s).
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<Duration>,
        /// Epochs handed out ahead; the spoke then switches by itself when an
        /// epoch ends, even while the hub is unreachable (0: the hub drives).
        #[arg(long)]
        batch: Option<u32>,
        /// Stop a spoke's traffic once its epoch is over and it holds no next one.
        #[arg(long, value_parser = ["on", "off"])]
        hard_limit: Option<String>,
    },
}

#[derive(Subcommand)]
enum SpokeCommand {
    /// Print a one-time invitation for a new spoke named NAME.
    Invite {
        /// Name of the new spoke (letters, digits, '.', '-', '_').
        name: String,
        /// Let the spoke carry traffic without an admin's approval.
        #[arg(long)]
        pre_approved: bool,
        /// An unattended server spoke: it carries traffic with no user logged in.
        #[arg(long)]
        service: bool,
        /// How long the invitation stays valid (e.g. 30m, 24h, 7d).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        expires: Duration,
        /// Also draw the invitation as a QR code (on standard error, so that
        /// standard output stays the one-line invitation), for a phone or a
        /// camera at the spoke.
        #[arg(long)]
        qr: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List enrolled spokes.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending spoke: it gets its keys with no action on the spoke.
    Approve {
        /// Spoke name.
        name: String,
    },
    /// Deny a pending spoke: it never gets keys.
    Deny {
        /// Spoke name.
        name: String,
    },
    /// Revoke a spoke (lost or broken device): its keys are erased at once and
    /// its traffic stops; coming back needs a fresh enrolment.
    Revoke {
        /// Spoke name.
        name: String,
    },
}

pub(crate) fn main() -> Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. }) {
        tasuki_shell::logging::init(None);
    }
    match cli.command {
        Command::Init {
            state_dir,
            endpoint,
            tunnel_net,
            routes,
            keepalive,
        } => init(&state_dir, endpoint, tunnel_net, routes, keepalive),
        Command::Run { flags } => {
            let (opts, log) = flags.resolve()?;
            tasuki_shell::logging::init(log.as_deref());
            runtime()?.block_on(daemon::run(opts))
        }
        Command::CheckConfig { config } => {
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
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "tasuki-hub", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpage => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
            Ok(())
        }
        Command::Spoke {
            command,
            admin_socket,
        } => runtime()?.block_on(spoke_command(command, &admin_socket)),
        Command::Key {
            command,
            admin_socket,
        } => runtime()?.block_on(key_command(command, &admin_socket)),
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
        Command::Status { json, admin_socket } => runtime()?.block_on(async {
            let status: HubStatus =
                tasuki_shell::local::request(&admin_socket, HubRequest::Status).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(())
        }),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init(
    dir: &Path,
    endpoint: String,
    tunnel_net: Ipv4Net,
    routes: Vec<Ipv4Net>,
    keepalive: u16,
) -> Result<()> {
    let port_ok = endpoint
        .rsplit_once(':')
        .and_then(|(host, port)| {
            (!host.is_empty())
                .then(|| port.parse::<u16>().ok())
                .flatten()
        })
        .is_some_and(|p| p != 0);
    if !port_ok {
        bail!("--endpoint must be HOST:PORT with a non-zero port, got {endpoint:?}");
    }
    if tunnel_net.prefix_len() > 30 {
        bail!("--tunnel-net {tunnel_net} is too small: use a /30 or larger");
    }
    if tunnel_net.trunc() != tunnel_net {
        bail!(
            "--tunnel-net {tunnel_net} has host bits set; did you mean {}?",
            tunnel_net.trunc()
        );
    }
    let key_path = dir.join(state::KEY_FILE);
    if key_path.exists() {
        bail!(
            "{} already holds a hub (found {}); refusing to overwrite its identity",
            dir.display(),
            key_path.display()
        );
    }
    tasuki_shell::files::ensure_private_dir(dir)?;
    let key = StaticKey::generate(&mut rand_core::OsRng);
    tasuki_shell::files::write_secret_file(&key_path, key.to_base64().as_bytes())?;
    let settings = HubSettings {
        endpoint,
        tunnel_net,
        routes,
        keepalive_secs: keepalive,
    };
    state::write_settings(dir, &settings)?;
    println!("initialised hub in {}", dir.display());
    println!("  public key:  {}", key.public());
    println!("  fingerprint: {}", key.public().fingerprint());
    println!("  endpoint:    {}", settings.endpoint);
    println!(
        "  tunnel net:  {} (hub {})",
        settings.tunnel_net,
        settings.hub_addr()
    );
    Ok(())
}

async fn spoke_command(command: SpokeCommand, socket: &Path) -> Result<()> {
    match command {
        SpokeCommand::Approve { name } => simple(socket, HubRequest::Approve { name }).await?,
        SpokeCommand::Deny { name } => simple(socket, HubRequest::Deny { name }).await?,
        SpokeCommand::Revoke { name } => simple(socket, HubRequest::Revoke { name }).await?,
        SpokeCommand::Invite {
            name,
            pre_approved,
            service,
            expires,
            qr,
            json,
        } => {
            let view: InvitationView = tasuki_shell::local::request(
                socket,
                HubRequest::Invite {
                    name,
                    pre_approved,
                    service,
                    valid_secs: expires.as_secs(),
                },
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                println!("{}", view.invitation);
                eprintln!(
                    "invitation {} for spoke {:?}, {}, expires at {} (hub {})",
                    view.id,
                    view.name,
                    if view.pre_approved {
                        "pre-approved"
                    } else {
                        "needs approval"
                    },
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs(view.expires_at)
                    ),
                    view.hub_fingerprint
                );
                eprintln!("on the spoke: tasuki-spoke enrol <invitation>");
            }
            // After the text: the invitation exists, and is shown, even when
            // it cannot be drawn.
            if qr {
                eprintln!("{}", qr_code(&view.invitation)?);
            }
        }
        SpokeCommand::List { json } => {
            let spokes: Vec<SpokeView> =
                tasuki_shell::local::request(socket, HubRequest::ListSpokes).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&spokes)?);
            } else {
                println!(
                    "ID    NAME                 STATE     ADDRESS          EPOCH  ENDPOINT               HANDSHAKE"
                );
                for s in spokes {
                    println!(
                        "{:<5} {:<20} {:<9} {:<16} {:<6} {:<22} {}",
                        s.id,
                        s.name,
                        s.state,
                        s.tunnel_addr,
                        s.epoch.map_or("-".into(), |e| e.to_string()),
                        s.endpoint.unwrap_or_else(|| "-".into()),
                        s.last_handshake_secs
                            .map_or("never".into(), |t| format!("{t}s ago"))
                    );
                }
            }
        }
    }
    Ok(())
}

/// `text` as a QR code drawn with Unicode half blocks (two rows of modules
/// per line) and its quiet zone, for a terminal with light text on a dark
/// background: the code's light parts are the blocks.
fn qr_code(text: &str) -> Result<String> {
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M)
        .context("the invitation is too long for a QR code")?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// Sends a request whose answer is `{spoke, state}` and prints it.
async fn simple(socket: &Path, req: HubRequest) -> Result<()> {
    let v: serde_json::Value = tasuki_shell::local::request(socket, req).await?;
    println!(
        "spoke {} is now {}",
        v["spoke"].as_str().unwrap_or("?"),
        v["state"].as_str().unwrap_or("?")
    );
    Ok(())
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
        tasuki_shell::local::request(socket, HubRequest::Audit { since }).await?;
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

async fn key_command(command: KeyCommand, socket: &Path) -> Result<()> {
    use tasuki_core::admin_api::LinkKeyView;
    use tasuki_core::rotation::{Delivery, RotationPolicy};
    match command {
        KeyCommand::Rotate { spoke, all: _ } => {
            let v: serde_json::Value =
                tasuki_shell::local::request(socket, HubRequest::KeyRotate { spoke }).await?;
            println!("rotation requested on {} link(s)", v["links"]);
        }
        KeyCommand::Policy {
            command: PolicyCommand::Show { spoke, json },
        } => {
            let p: RotationPolicy =
                tasuki_shell::local::request(socket, HubRequest::KeyPolicyShow { spoke }).await?;
            print_policy(&p, json)?;
        }
        KeyCommand::Policy {
            command: PolicyCommand::Reset { spoke },
        } => {
            let p: RotationPolicy = tasuki_shell::local::request(
                socket,
                HubRequest::KeyPolicySet {
                    spoke: Some(spoke),
                    policy: None,
                },
            )
            .await?;
            print_policy(&p, false)?;
        }
        KeyCommand::Policy {
            command:
                PolicyCommand::Set {
                    spoke,
                    interval,
                    max_packets,
                    max_bytes,
                    max_handshakes,
                    delivery,
                    grace,
                    batch,
                    hard_limit,
                },
        } => {
            let mut p: RotationPolicy = tasuki_shell::local::request(
                socket,
                HubRequest::KeyPolicyShow {
                    spoke: spoke.clone(),
                },
            )
            .await?;
            if let Some(i) = interval {
                p.interval_secs = if i == "off" {
                    None
                } else {
                    let d = humantime::parse_duration(&i).with_context(|| {
                        format!("--interval {i:?}: use e.g. 30s, 10m, 1h or off")
                    })?;
                    if d.as_secs() == 0 {
                        bail!("--interval must be at least 1s (or off)");
                    }
                    Some(d.as_secs())
                };
            }
            if let Some(n) = max_packets {
                p.max_packets = (n > 0).then_some(n);
            }
            if let Some(n) = max_bytes {
                p.max_bytes = (n > 0).then_some(n);
            }
            if let Some(n) = max_handshakes {
                p.max_handshakes = (n > 0).then_some(n);
            }
            if let Some(d) = delivery {
                p.delivery = if d == "parallel" {
                    Delivery::Parallel
                } else {
                    Delivery::Crossed
                };
            }
            if let Some(g) = grace {
                p.grace_secs = g.as_secs();
            }
            if let Some(b) = batch {
                if b > 12 {
                    bail!("--batch {b} is too large: at most 12 epochs ahead");
                }
                p.batch = b;
            }
            if let Some(h) = hard_limit {
                p.hard_limit = h == "on";
            }
            let p: RotationPolicy = tasuki_shell::local::request(
                socket,
                HubRequest::KeyPolicySet {
                    spoke,
                    policy: Some(p),
                },
            )
            .await?;
            print_policy(&p, false)?;
        }
        KeyCommand::Status { json } => {
            let links: Vec<LinkKeyView> =
                tasuki_shell::local::request(socket, HubRequest::KeyStatus).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&links)?);
            } else {
                println!(
                    "{:<20} {:>6} {:>7} {:>8} {:>10} {:>12} {:>9} {:>10}",
                    "SPOKE", "EPOCH", "LATEST", "AGE", "PACKETS", "BYTES", "ROTATIONS", "NEXT"
                );
                for l in links {
                    println!(
                        "{:<20} {:>6} {:>7} {:>7}s {:>10} {:>12} {:>9} {:>10}",
                        l.spoke,
                        l.epoch,
                        l.latest,
                        l.age_secs,
                        l.packets,
                        l.bytes,
                        l.rotations,
                        l.next_interval_in.map_or("-".into(), |s| format!("{s}s"))
                    );
                }
            }
        }
    }
    Ok(())
}

fn print_policy(p: &tasuki_core::rotation::RotationPolicy, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(p)?);
        return Ok(());
    }
    let opt = |v: Option<u64>, unit: &str| v.map_or("off".to_string(), |n| format!("{n}{unit}"));
    println!("interval:    {}", opt(p.interval_secs, "s"));
    println!("max packets: {}", opt(p.max_packets, ""));
    println!("max bytes:   {}", opt(p.max_bytes, ""));
    println!("max hshakes: {}", opt(p.max_handshakes, ""));
    println!("delivery:    {:?}", p.delivery);
    println!("grace:       {}s", p.grace_secs);
    println!("batch:       {}", p.batch);
    println!("hard limit:  {}", if p.hard_limit { "on" } else { "off" });
    Ok(())
}

fn print_status(s: &HubStatus) {
    println!("tasuki-hub {}", s.version);
    println!("  fingerprint:  {}", s.fingerprint);
    println!("  endpoint:     {}", s.endpoint);
    println!("  interface:    {} ({})", s.interface, s.tunnel_net);
    println!("  routes:       {}", s.routes.join(", "));
    println!(
        "  spokes:       {} active, {} pending; {} control connections",
        s.spokes_active, s.spokes_pending, s.control_connections
    );
    println!(
        "  access:       {} ({} rules; {} flows tracked)",
        s.access_mode.name(),
        s.access_rules,
        s.counters.access_flows
    );
    let c = &s.counters;
    println!(
        "  datagrams:    {} in, {} out; relayed {}, to TUN {}, from TUN {}, handshakes {}",
        c.rx_datagrams, c.tx_datagrams, c.relayed, c.to_tun, c.from_tun, c.handshakes
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invitation_draws_as_a_square_qr_code() {
        let text = format!("tasuki1-{}", "A".repeat(200));
        let drawn = qr_code(&text).unwrap();
        let lines: Vec<&str> = drawn.lines().collect();
        let width = lines[0].chars().count();
        assert!(lines.len() > 10, "{drawn}");
        assert!(lines.iter().all(|l| l.chars().count() == width), "{drawn}");
        // Two module rows per line: about half as many lines as columns.
        assert!(
            lines.len() * 2 >= width && lines.len() * 2 <= width + 2,
            "{drawn}"
        );
        assert!(drawn.contains('█') || drawn.contains('▀') || drawn.contains('▄'));
        assert!(qr_code(&"x".repeat(5000)).is_err());
    }
}
