//! `tasuki-hub key …`: rotate, policy, status, through the admin socket.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use tasuki_core::admin_api::{DirectView, LinkKeyView};
use tasuki_core::admin_calls as calls;
use tasuki_core::pair_rules::DirectMode;
use tasuki_core::rotation::{Delivery, RotationPolicy};

#[derive(Subcommand)]
pub(crate) enum KeyCommand {
    /// End the current epoch now and hand out a new one.
    Rotate {
        /// The spoke whose link to rotate.
        #[arg(long, conflicts_with_all = ["all", "group"], required_unless_present_any = ["all", "group"])]
        spoke: Option<String>,
        /// Rotate every link.
        #[arg(long, conflicts_with = "group")]
        all: bool,
        /// Rotate a keyed group's epoch instead (every member gets the new
        /// one, then all switch).
        #[arg(long)]
        group: Option<String>,
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
pub(crate) enum PolicyCommand {
    /// Print the policy (hub-wide, or the one in force for a spoke).
    Show {
        /// The spoke whose policy to show.
        #[arg(long)]
        spoke: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drop a spoke's overrides (rotation and direct mode): the hub-wide
    /// policy applies to it again.
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
        /// Direct mode: auto lets spokes that talk to each other get a pair
        /// key and go direct; off keeps all their traffic on the hub (and
        /// ends the pairs it affects at once).
        #[arg(long, value_parser = clap::value_parser!(DirectMode))]
        direct: Option<DirectMode>,
        #[command(flatten)]
        changes: PolicyChanges,
    },
}

/// The options of `key policy set` that change the policy.
#[derive(clap::Args)]
pub(crate) struct PolicyChanges {
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
}

impl PolicyChanges {
    /// Whether no rotation option was given (only `--direct`, say): the
    /// rotation policy, or a spoke's lack of an override, stays as it is.
    fn is_empty(&self) -> bool {
        self.interval.is_none()
            && self.max_packets.is_none()
            && self.max_bytes.is_none()
            && self.max_handshakes.is_none()
            && self.delivery.is_none()
            && self.grace.is_none()
            && self.batch.is_none()
            && self.hard_limit.is_none()
    }

    /// Applies the options given to `p`, checking their values.
    fn apply(self, p: &mut RotationPolicy) -> Result<()> {
        if let Some(i) = self.interval {
            p.interval_secs = parse_interval(&i)?;
        }
        if let Some(n) = self.max_packets {
            p.max_packets = (n > 0).then_some(n);
        }
        if let Some(n) = self.max_bytes {
            p.max_bytes = (n > 0).then_some(n);
        }
        if let Some(n) = self.max_handshakes {
            p.max_handshakes = (n > 0).then_some(n);
        }
        if let Some(d) = self.delivery {
            p.delivery = if d == "parallel" {
                Delivery::Parallel
            } else {
                Delivery::Crossed
            };
        }
        if let Some(g) = self.grace {
            p.grace_secs = g.as_secs();
        }
        if let Some(b) = self.batch {
            if b > 12 {
                bail!("--batch {b} is too large: at most 12 epochs ahead");
            }
            p.batch = b;
        }
        if let Some(h) = self.hard_limit {
            p.hard_limit = h == "on";
        }
        Ok(())
    }
}

/// The value of `--interval`: seconds, or `None` for "off".
fn parse_interval(i: &str) -> Result<Option<u64>> {
    if i == "off" {
        return Ok(None);
    }
    let d = humantime::parse_duration(i)
        .with_context(|| format!("--interval {i:?}: use e.g. 30s, 10m, 1h or off"))?;
    if d.as_secs() == 0 {
        bail!("--interval must be at least 1s (or off)");
    }
    Ok(Some(d.as_secs()))
}

/// Runs a `key` subcommand against the daemon at `socket`.
pub(crate) async fn key_command(command: KeyCommand, socket: &Path) -> Result<()> {
    match command {
        KeyCommand::Rotate {
            spoke,
            all: _,
            group,
        } => {
            let v = tasuki_shell::local::call(socket, calls::KeyRotate { spoke, group }).await?;
            if v.groups > 0 {
                println!("rotation requested on {} keyed group(s)", v.groups);
            } else {
                println!("rotation requested on {} link(s)", v.links);
            }
        }
        KeyCommand::Policy { command } => policy_command(command, socket).await?,
        KeyCommand::Status { json } => {
            let links: Vec<LinkKeyView> =
                tasuki_shell::local::call(socket, calls::KeyStatus {}).await?;
            crate::cli::print_json_or(links.as_slice(), json, print_key_status)?;
            if !json {
                // Keyed groups' epochs (their JSON is `group list --json`).
                let view = tasuki_shell::local::call(socket, calls::AccessShow {}).await?;
                print_group_keys(&view);
            }
        }
    }
    Ok(())
}

/// Runs a `key policy` subcommand: shows, resets or changes a policy.
async fn policy_command(command: PolicyCommand, socket: &Path) -> Result<()> {
    match command {
        PolicyCommand::Show { spoke, json } => {
            let p: RotationPolicy = tasuki_shell::local::call(
                socket,
                calls::KeyPolicyShow {
                    spoke: spoke.clone(),
                },
            )
            .await?;
            let d = tasuki_shell::local::call(socket, calls::DirectShow { spoke }).await?;
            print_policy(&p, &d, json)
        }
        PolicyCommand::Reset { spoke } => {
            let p = store_policy(socket, Some(spoke.clone()), None).await?;
            let d = store_direct(socket, Some(spoke), None).await?;
            print_policy(&p, &d, false)
        }
        PolicyCommand::Set {
            spoke,
            direct,
            changes,
        } => {
            let show = calls::KeyPolicyShow {
                spoke: spoke.clone(),
            };
            let mut p: RotationPolicy = tasuki_shell::local::call(socket, show).await?;
            if !changes.is_empty() {
                changes.apply(&mut p)?;
                p = store_policy(socket, spoke.clone(), Some(p)).await?;
            }
            let d = match direct {
                Some(mode) => store_direct(socket, spoke, Some(mode)).await?,
                None => tasuki_shell::local::call(socket, calls::DirectShow { spoke }).await?,
            };
            if d.pairs_ended > 0 {
                println!(
                    "{} pair(s) ended: direct mode is off for them",
                    d.pairs_ended
                );
            }
            print_policy(&p, &d, false)
        }
    }
}

/// Sets (or, with `None`, drops a spoke's override of) the direct mode,
/// and returns the setting in force afterwards.
async fn store_direct(
    socket: &Path,
    spoke: Option<String>,
    direct: Option<DirectMode>,
) -> Result<DirectView> {
    tasuki_shell::local::call(socket, calls::DirectSet { spoke, direct }).await
}

/// Sets (or, with `None`, drops) the policy of `spoke` or the hub-wide one,
/// and returns the policy in force afterwards.
async fn store_policy(
    socket: &Path,
    spoke: Option<String>,
    policy: Option<RotationPolicy>,
) -> Result<RotationPolicy> {
    tasuki_shell::local::call(socket, calls::KeyPolicySet { spoke, policy }).await
}

/// The per-link key status as a table.
fn print_key_status(links: &[LinkKeyView]) {
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

/// Each keyed group's epochs, after the links' (nothing when none is keyed).
fn print_group_keys(view: &tasuki_core::admin_api::AccessView) {
    let keyed: Vec<_> = view
        .groups
        .iter()
        .filter_map(|g| g.key.as_ref().map(|k| (g, k)))
        .collect();
    if keyed.is_empty() {
        return;
    }
    println!(
        "\n{:<20} {:>6} {:>7} {:>14} {:>9}",
        "GROUP", "EPOCH", "LATEST", "MEMBERS ONLINE", "ROTATIONS"
    );
    for (g, k) in keyed {
        println!(
            "{:<20} {:>6} {:>7} {:>14} {:>9}",
            g.name, k.epoch, k.latest, k.members_online, k.rotations
        );
    }
}

/// A rotation policy with the direct mode in force, as text or JSON (the
/// policy's fields, and `direct` with the direct-mode view).
fn print_policy(p: &RotationPolicy, d: &DirectView, json: bool) -> Result<()> {
    if json {
        let mut v = serde_json::to_value(p)?;
        if let Some(map) = v.as_object_mut() {
            map.insert("direct".into(), serde_json::to_value(d)?);
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
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
    let whose = match (&d.spoke, d.overridden) {
        (Some(_), true) => "this spoke's override",
        (Some(_), false) => "hub-wide",
        (None, _) => "hub-wide",
    };
    println!("direct:      {} ({whose})", d.direct);
    Ok(())
}
