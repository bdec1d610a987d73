//! `tasuki-hub access …` and `tasuki-hub group …`: who may reach what,
//! through the admin socket.

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use tasuki_core::access::{Member, Mode, Rule, Selector, Service};
use tasuki_core::admin_api::{AccessCheckView, AccessView};
use tasuki_core::admin_calls as calls;

/// Access subcommands.
#[derive(Subcommand)]
pub(crate) enum AccessCommand {
    /// Show the mode, the numbered rules and the groups.
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Let the rules decide (`enforce`) or let every routable packet pass
    /// (`open`, the default of a new hub; rules are kept but wait).
    Mode {
        /// `open` or `enforce`.
        mode: Mode,
    },
    /// Add an allow rule. In enforce mode a packet passes when some rule
    /// allows it or it answers a flow that a rule allowed.
    ///
    /// A packet from a spoke is from the spoke, from every user logged in on
    /// it and from their groups; a user or group as --to means the spokes
    /// those users are logged in on (and a group's member spokes).
    ///
    /// Example: tasuki-hub access allow --from group:eng --to 192.168.10.0/24 --service tcp/22 --service icmp
    Allow {
        /// The sender: *, hub, spoke:NAME, user:ID, group:NAME, hub:NAME (a
        /// child hub's branch), or an address/CIDR.
        #[arg(long, value_parser = parse_selector)]
        from: Selector,
        /// The receiver: *, hub, spoke:NAME, user:ID, group:NAME, hub:NAME (a
        /// child hub's branch), or an address/CIDR.
        #[arg(long, value_parser = parse_selector)]
        to: Selector,
        /// What may be sent: any, icmp, tcp, udp, tcp/22, udp/53, tcp/8000-8100;
        /// repeat or separate with commas [default: any].
        #[arg(long = "service", value_delimiter = ',', value_parser = parse_service)]
        services: Vec<Service>,
        /// Print the policy after the change as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Would a flow pass? Names the rules that allow it, or says why not.
    ///
    /// Example: tasuki-hub access check --from spoke:laptop-alice --to 192.168.10.5 --service tcp/22
    Check {
        /// The sender: spoke:NAME, or an address (a spoke's tunnel address,
        /// the hub's, a LAN host's).
        #[arg(long)]
        from: String,
        /// The receiver's address.
        #[arg(long)]
        to: std::net::IpAddr,
        /// The protocol and destination port: tcp/22, udp/53, icmp.
        #[arg(long, value_parser = parse_service)]
        service: Service,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a rule by the number `access show` prints; later rules move up.
    Remove {
        /// Rule number.
        number: usize,
    },
}

/// Group subcommands.
#[derive(Subcommand)]
pub(crate) enum GroupCommand {
    /// List the groups and their members.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Create an empty group.
    Add {
        /// Group name (letters, digits, '.', '-', '_', '@').
        name: String,
    },
    /// Remove a group; refused while a rule names it.
    Remove {
        /// Group name.
        name: String,
    },
    /// Put users and spokes into a group (its rules apply to them at once).
    AddMember {
        /// Group name.
        name: String,
        /// Members: user:ID or spoke:NAME.
        #[arg(required = true, value_parser = parse_member)]
        members: Vec<Member>,
    },
    /// Take users and spokes out of a group: its rules stop applying to
    /// them at once, and their flows that only it allowed are cut.
    RemoveMember {
        /// Group name.
        name: String,
        /// Members: user:ID or spoke:NAME.
        #[arg(required = true, value_parser = parse_member)]
        members: Vec<Member>,
    },
    /// Give a group its own key epochs, or end them (claim 11). The hub
    /// issues each epoch to every member spoke (a spoke in the group, or
    /// one where a member user is logged in) sealed under its link key,
    /// rotates it with the rotation policy and at once when a member
    /// leaves (the leaver never gets the new one), and a joiner gets only
    /// the epoch in use. `off` erases them everywhere.
    ///
    /// Example: tasuki-hub group key staff on
    Key {
        /// Group name.
        name: String,
        /// on or off.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// The group's own rotation interval (e.g. 1h, 30m, or off for
        /// none by time), or `hub` for the hub-wide policy's again.
        #[arg(long)]
        interval: Option<String>,
    },
    /// Give a keyed group multicast ranges (the members' bulletin board:
    /// mDNS, SSDP, service discovery). A packet a member sends to an
    /// address in one reaches every other member online, sealed under the
    /// group's epoch end to end, and no one else; a member that leaves
    /// stops getting it at once. Through the hub, and straight to members
    /// on a direct path. With no ranges and no options: shows them.
    ///
    /// Example: tasuki-hub group multicast staff 239.77.1.0/24 224.0.0.251/32
    Multicast {
        /// Group name (a keyed group).
        name: String,
        /// Ranges to add: multicast CIDRs (224.0.0.0/4) no other group owns.
        ranges: Vec<ipnet::Ipv4Net>,
        /// Ranges to take away.
        #[arg(long, value_name = "CIDR")]
        remove: Vec<ipnet::Ipv4Net>,
        /// Packets per second one member may send into the group (each is
        /// copied to every other member; more are dropped and counted).
        #[arg(long, value_name = "PPS")]
        rate: Option<u32>,
        /// Print the group as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `--interval` of `group key`: `hub`, `off` or a duration of 1 s or more.
fn parse_group_interval(i: &str) -> Result<calls::GroupInterval> {
    match i {
        "hub" => Ok(calls::GroupInterval::HubWide),
        "off" => Ok(calls::GroupInterval::Off),
        _ => {
            let d = humantime::parse_duration(i)
                .with_context(|| format!("--interval {i:?}: use e.g. 30s, 10m, 1h, off or hub"))?;
            if d.as_secs() == 0 {
                bail!("--interval must be at least 1s (or off, or hub)");
            }
            Ok(calls::GroupInterval::Every(d.as_secs()))
        }
    }
}

fn parse_selector(s: &str) -> Result<Selector, String> {
    s.parse()
        .map_err(|e: tasuki_core::access::AccessError| e.to_string())
}

fn parse_service(s: &str) -> Result<Service, String> {
    s.parse()
        .map_err(|e: tasuki_core::access::AccessError| e.to_string())
}

fn parse_member(s: &str) -> Result<Member, String> {
    s.parse()
        .map_err(|e: tasuki_core::access::AccessError| e.to_string())
}

async fn ask<C: calls::AdminCall<Reply = AccessView>>(socket: &Path, req: C) -> Result<AccessView> {
    tasuki_shell::local::call(socket, req).await
}

/// Runs an access subcommand against the daemon at `socket`.
pub(crate) async fn run_access(command: AccessCommand, socket: &Path) -> Result<()> {
    match command {
        AccessCommand::Show { json } => print(&ask(socket, calls::AccessShow {}).await?, json),
        AccessCommand::Mode { mode } => {
            let view = ask(socket, calls::AccessMode { mode }).await?;
            println!("access mode is now {}", view.mode.name());
            if view.mode == Mode::Enforce && view.rules.is_empty() {
                eprintln!("warning: no rule allows anything: all tunnel traffic is dropped");
            }
            Ok(())
        }
        AccessCommand::Allow {
            from,
            to,
            mut services,
            json,
        } => {
            if services.is_empty() {
                services.push(Service::ANY);
            }
            let rule = Rule { from, to, services };
            let view = ask(socket, calls::AccessAllow { rule: rule.clone() }).await?;
            if json {
                return print(&view, true);
            }
            println!("rule {} added: allow {rule}", view.rules.len());
            if view.mode == Mode::Open {
                eprintln!("note: the access mode is open; rules decide once it is `enforce`");
            }
            Ok(())
        }
        AccessCommand::Check {
            from,
            to,
            service,
            json,
        } => {
            let req = calls::AccessCheck {
                from: from.clone(),
                to,
                service,
            };
            let v: AccessCheckView = tasuki_shell::local::call(socket, req).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let verdict = if v.allowed { "allowed" } else { "denied" };
                let why = match v.rules.as_slice() {
                    [] if v.allowed => String::new(),
                    [] => ": no rule allows it".to_owned(),
                    rules => format!(
                        " by rule(s) {}",
                        rules
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                };
                println!("{from} -> {to} {service}: {verdict}{why}");
                for note in &v.notes {
                    println!("note: {note}");
                }
            }
            Ok(())
        }
        AccessCommand::Remove { number } => {
            ask(socket, calls::AccessRemove { number }).await?;
            println!("rule {number} removed");
            Ok(())
        }
    }
}

/// Runs a group subcommand against the daemon at `socket`.
pub(crate) async fn run_group(command: GroupCommand, socket: &Path) -> Result<()> {
    match command {
        GroupCommand::List { json } => {
            let view = ask(socket, calls::AccessShow {}).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&view.groups)?);
            } else {
                print_groups(&view);
            }
        }
        GroupCommand::Add { name } => {
            ask(socket, calls::GroupAdd { name: name.clone() }).await?;
            println!("group {name} added");
        }
        GroupCommand::Remove { name } => {
            ask(socket, calls::GroupRemove { name: name.clone() }).await?;
            println!("group {name} removed");
        }
        GroupCommand::AddMember { name, members } => {
            let n = members.len();
            let req = calls::GroupMembers {
                name: name.clone(),
                members,
                remove: false,
            };
            ask(socket, req).await?;
            println!("group {name}: {n} member(s) added");
        }
        GroupCommand::Key {
            name,
            state,
            interval,
        } => {
            let on = state == "on";
            if interval.is_some() && !on {
                bail!("--interval goes with `on`: an unkeyed group does not rotate");
            }
            let interval = interval.as_deref().map(parse_group_interval).transpose()?;
            let req = calls::GroupKey {
                name: name.clone(),
                on,
                interval,
            };
            ask(socket, req).await?;
            println!("group {name}: key epochs {state}");
        }
        GroupCommand::Multicast {
            name,
            ranges,
            remove,
            rate,
            json,
        } => group_multicast(socket, name, (ranges, remove, rate), json).await?,
        GroupCommand::RemoveMember { name, members } => {
            let n = members.len();
            let req = calls::GroupMembers {
                name: name.clone(),
                members,
                remove: true,
            };
            ask(socket, req).await?;
            println!("group {name}: {n} member(s) taken out");
        }
    }
    Ok(())
}

/// `group multicast`: changes a keyed group's ranges or rate, then shows them.
async fn group_multicast(
    socket: &Path,
    name: String,
    (add, remove, rate_pps): (Vec<ipnet::Ipv4Net>, Vec<ipnet::Ipv4Net>, Option<u32>),
    json: bool,
) -> Result<()> {
    let req = calls::GroupMulticastSet {
        name: name.clone(),
        add,
        remove,
        rate_pps,
    };
    let view = ask(socket, req).await?;
    let group = view.groups.iter().find(|g| g.name == name);
    if json {
        println!("{}", serde_json::to_string_pretty(&group)?);
        return Ok(());
    }
    match group.and_then(|g| g.key.as_ref()) {
        Some(k) if !k.multicast.is_empty() => println!(
            "group {name}: multicast {} at {} packets/s per member",
            k.multicast.join(" "),
            k.multicast_rate_pps
        ),
        _ => println!("group {name}: no multicast"),
    }
    Ok(())
}

fn print(view: &AccessView, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(view)?);
        return Ok(());
    }
    println!("mode: {}", view.mode.name());
    if view.rules.is_empty() {
        println!("rules: none");
    } else {
        println!("rules:");
        for r in &view.rules {
            let services: Vec<String> = r.services.iter().map(ToString::to_string).collect();
            println!(
                "  {:>3}  allow {} -> {}  {}",
                r.number,
                r.from,
                r.to,
                services.join(",")
            );
        }
    }
    print_groups(view);
    Ok(())
}

fn print_groups(view: &AccessView) {
    if view.groups.is_empty() {
        println!("groups: none");
        return;
    }
    println!("groups:");
    for g in &view.groups {
        let members: Vec<String> = g.members.iter().map(ToString::to_string).collect();
        let members = if members.is_empty() {
            "(empty)".to_owned()
        } else {
            members.join(" ")
        };
        println!("  {}: {members}", g.name);
        if let Some(k) = &g.key {
            let every = match (k.interval_secs, k.own_interval) {
                (Some(s), true) => format!("every {s}s (its own)"),
                (Some(s), false) => format!("every {s}s (hub-wide)"),
                (None, _) => "not by time".to_owned(),
            };
            println!(
                "    keyed: epoch {} (newest {}, held {:?}), {} member spoke(s) online, {} rotation(s), rotates {every}",
                k.epoch, k.latest, k.held, k.members_online, k.rotations
            );
            if !k.multicast.is_empty() {
                println!(
                    "    multicast: {} at {} packets/s per member",
                    k.multicast.join(" "),
                    k.multicast_rate_pps
                );
            }
        }
    }
}
