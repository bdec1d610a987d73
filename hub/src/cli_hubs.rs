//! `tasuki-hub hub …` and `tasuki-hub join`: the hub tree (claim 6) through
//! the admin socket: child hubs invited, approved, revoked and listed, and
//! this hub joining a parent.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;
use tasuki_core::admin_api::InvitationView;
use tasuki_core::admin_calls as calls;
use tasuki_core::admin_calls::{ChildHubView, HubTreeView, ParentView};

#[derive(Subcommand)]
pub(crate) enum HubCommand {
    /// Print a one-time invitation for a child hub named NAME (a regional
    /// or branch hub). On the child: `tasuki-hub join INVITATION`; then
    /// here `tasuki-hub hub approve NAME` routes what it announced.
    Invite {
        /// Name of the child hub (letters, digits, '.', '-', '_').
        name: String,
        /// How long the invitation stays valid (e.g. 30m, 24h, 7d).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        expires: Duration,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve child hub NAME and route what its branch announced to it;
    /// refused, naming both, when a subnet overlaps one the tree serves.
    /// Run it again after the child announces more (a grandchild joined).
    Approve {
        /// The child hub.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke child hub NAME: its keys are erased here and its branch's
    /// routes withdrawn everywhere at once (the branch still works on its own).
    Revoke {
        /// The child hub.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// This hub's place in the tree: its parent and its child hubs.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `hub` subcommand against the running hub.
pub(crate) async fn hub_command(command: HubCommand, socket: &Path) -> Result<()> {
    match command {
        HubCommand::Invite {
            name,
            expires,
            json,
        } => {
            let call = calls::HubInvite {
                name,
                valid_secs: expires.as_secs(),
            };
            let view: InvitationView = tasuki_shell::local::call(socket, call).await?;
            crate::cli::print_json_or(&view, json, |view| {
                println!("{}", view.invitation);
                eprintln!(
                    "invitation {} for child hub {:?}, expires at {} (parent {})",
                    view.id,
                    view.name,
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs(view.expires_at)
                    ),
                    view.hub_fingerprint
                );
                eprintln!("on the child hub (running): tasuki-hub join <invitation>");
            })
        }
        HubCommand::Approve { name, json } => {
            let view: ChildHubView =
                tasuki_shell::local::call(socket, calls::HubApprove { name }).await?;
            crate::cli::print_json_or(&view, json, |v| {
                println!(
                    "child hub {:?} approved: routes {}",
                    v.name,
                    list(&v.routed)
                );
            })
        }
        HubCommand::Revoke { name, json } => {
            let view: ChildHubView =
                tasuki_shell::local::call(socket, calls::HubRevoke { name }).await?;
            crate::cli::print_json_or(&view, json, |v| {
                println!(
                    "child hub {:?} revoked: its keys are erased and its routes withdrawn",
                    v.name
                );
            })
        }
        HubCommand::List { json } => {
            let view: HubTreeView = tasuki_shell::local::call(socket, calls::HubList {}).await?;
            crate::cli::print_json_or(&view, json, print_tree)
        }
    }
}

/// `tasuki-hub join`: the running hub enrols into the parent and runs its uplink.
pub(crate) async fn join(invitation: String, json: bool, socket: &Path) -> Result<()> {
    let view: ParentView = tasuki_shell::local::call(socket, calls::HubJoin { invitation }).await?;
    crate::cli::print_json_or(&view, json, |p| {
        println!(
            "joined the parent hub at {} as {:?} ({}); announcing {}",
            p.endpoint,
            p.name,
            p.state,
            list(&p.announced)
        );
        if p.state == "pending" {
            println!(
                "the parent's admin approves it with: tasuki-hub hub approve {}",
                p.name
            );
        }
    })
}

fn list(nets: &[String]) -> String {
    if nets.is_empty() {
        "(none)".into()
    } else {
        nets.join(", ")
    }
}

fn print_tree(view: &HubTreeView) {
    match &view.parent {
        Some(p) => {
            println!(
                "parent: {} ({}), here {:?} {} on {}, epoch {}, control {}",
                p.endpoint,
                p.state,
                p.name,
                p.tunnel_addr,
                p.interface,
                p.epoch.map_or_else(|| "-".into(), |e| e.to_string()),
                if p.control_connected { "up" } else { "down" }
            );
            println!("  announced: {}", list(&p.announced));
            println!("  rest of the tree: {}", list(&p.upstream));
        }
        None => println!("parent: none (this hub is a root)"),
    }
    if view.children.is_empty() {
        println!("child hubs: none");
        return;
    }
    println!("CHILD HUB            STATE     ADDRESS          EPOCH  ROUTED");
    for c in &view.children {
        let link = c.link.as_ref();
        println!(
            "{:<20} {:<9} {:<16} {:<6} {}",
            c.name,
            c.state,
            link.map_or("-", |l| l.tunnel_addr.as_str()),
            link.and_then(|l| l.epoch)
                .map_or_else(|| "-".into(), |e| e.to_string()),
            list(&c.routed)
        );
        if !c.unapproved.is_empty() {
            println!("{:<20} not approved: {}", "", list(&c.unapproved));
        }
    }
}
