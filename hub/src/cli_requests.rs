//! `tasuki-hub request-policy …` and `tasuki-hub request …`: access
//! requests that wait for every approver (claim 13), through the admin
//! socket.

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use tasuki_core::access::{Selector, Service};
use tasuki_core::admin_calls as calls;
use tasuki_core::requests::{ApproverSel, Grant, GrantRule, Request, RequestPolicy, RequestState};

#[derive(Subcommand)]
pub(crate) enum RequestPolicyCommand {
    /// Add (or replace) a request policy: what users may ask for for a
    /// while, and whose yes it needs. A request under it is granted only
    /// when --required distinct approvers said yes (admins count as one).
    ///
    /// Example: tasuki-hub request-policy add prod-db --allow-to 192.168.50.10
    /// --service tcp/5432 --approvers user:bob,user:carol,group:leads --required 2
    /// --max-duration 8h --requesters group:devs
    Add {
        /// Its name.
        name: String,
        /// Grant membership of this group (with its keys, where it is keyed).
        #[arg(long, value_name = "GROUP", conflicts_with = "allow_to")]
        grant_group: Option<String>,
        /// Grant allow rules from the requester to these (a spoke:NAME,
        /// group:NAME, hub, or an address/CIDR); repeat for more.
        #[arg(long, value_name = "SEL")]
        allow_to: Vec<Selector>,
        /// The services the rules allow (default any); repeat for more.
        #[arg(long, value_name = "S")]
        service: Vec<Service>,
        /// Who may approve: user:ID and group:NAME, comma-separated.
        #[arg(long, value_name = "LIST", required = true)]
        approvers: String,
        /// Distinct approvals needed.
        #[arg(long, default_value_t = 1)]
        required: u32,
        /// Longest a grant lasts.
        #[arg(long, default_value = "8h")]
        max_duration: String,
        /// How long a request waits for its approvals.
        #[arg(long, default_value = "1h")]
        decide_within: String,
        /// Who may ask: user:ID and group:NAME, comma-separated (default: any user).
        #[arg(long, value_name = "LIST")]
        requesters: Option<String>,
        /// Print the policy as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Every request policy.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// One request policy.
    Show {
        /// Its name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a request policy (refused while requests under it are open).
    Remove {
        /// Its name.
        name: String,
    },
}

#[derive(Subcommand)]
pub(crate) enum RequestCommand {
    /// Every request: who asked for what, its approvals and state.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve as an admin (admins count as one approver).
    Approve {
        /// The request's number.
        id: u64,
    },
    /// Deny: the request ends.
    Deny {
        /// The request's number.
        id: u64,
    },
    /// End a request, granted or waiting: its access ends at once.
    Revoke {
        /// The request's number.
        id: u64,
    },
}

/// `user:ID,group:NAME,…` as approvers.
fn approvers(list: &str) -> Result<Vec<ApproverSel>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once(':') {
            Some(("user", id)) if !id.is_empty() => Ok(ApproverSel::User(id.to_owned())),
            Some(("group", g)) if !g.is_empty() => Ok(ApproverSel::Group(g.to_owned())),
            _ => bail!("{s:?}: expected user:ID or group:NAME"),
        })
        .collect()
}

fn seconds(text: &str, what: &str) -> Result<u64> {
    let d = humantime::parse_duration(text)
        .with_context(|| format!("{what} {text:?}: use e.g. 30m, 8h"))?;
    Ok(d.as_secs())
}

/// Runs a `request-policy` subcommand against the daemon at `socket`.
pub(crate) async fn policy_command(command: RequestPolicyCommand, socket: &Path) -> Result<()> {
    match command {
        RequestPolicyCommand::Add {
            name,
            grant_group,
            allow_to,
            service,
            approvers: list,
            required,
            max_duration,
            decide_within,
            requesters,
            json,
        } => {
            let grant = match grant_group {
                Some(g) => Grant::Group(g),
                None if allow_to.is_empty() => {
                    bail!("a policy grants something: --grant-group GROUP or --allow-to SEL")
                }
                None => {
                    let services = if service.is_empty() {
                        vec!["any".parse::<Service>().context("the service any")?]
                    } else {
                        service
                    };
                    Grant::Rules(
                        allow_to
                            .into_iter()
                            .map(|to| GrantRule {
                                to,
                                services: services.clone(),
                            })
                            .collect(),
                    )
                }
            };
            let policy = RequestPolicy {
                name,
                grant,
                approvers: approvers(&list)?,
                required,
                max_duration_secs: seconds(&max_duration, "--max-duration")?,
                decide_within_secs: seconds(&decide_within, "--decide-within")?,
                requesters: requesters.as_deref().map(approvers).transpose()?,
            };
            let p: RequestPolicy =
                tasuki_shell::local::call(socket, calls::RequestPolicySet { policy }).await?;
            crate::cli::print_json_or(&p, json, |p| println!("request policy {} set", p.name))?;
        }
        RequestPolicyCommand::List { json } => {
            let list: Vec<RequestPolicy> =
                tasuki_shell::local::call(socket, calls::RequestPolicyList {}).await?;
            crate::cli::print_json_or(list.as_slice(), json, print_policies)?;
        }
        RequestPolicyCommand::Show { name, json } => {
            let list: Vec<RequestPolicy> =
                tasuki_shell::local::call(socket, calls::RequestPolicyList {}).await?;
            let Some(p) = list.into_iter().find(|p| p.name == name) else {
                bail!(
                    "no request policy named {name:?}; `tasuki-hub request-policy list` shows them"
                );
            };
            crate::cli::print_json_or(&p, json, |p| print_policies(std::slice::from_ref(p)))?;
        }
        RequestPolicyCommand::Remove { name } => {
            let left: Vec<RequestPolicy> = tasuki_shell::local::call(
                socket,
                calls::RequestPolicyRemove { name: name.clone() },
            )
            .await?;
            println!("request policy {name} removed ({} left)", left.len());
        }
    }
    Ok(())
}

fn print_policies(list: &[RequestPolicy]) {
    if list.is_empty() {
        println!("no request policies");
        return;
    }
    for p in list {
        let grant = match &p.grant {
            Grant::Group(g) => format!("group {g}"),
            Grant::Rules(rules) => rules
                .iter()
                .map(|r| {
                    let s: Vec<String> = r.services.iter().map(ToString::to_string).collect();
                    format!("{} {}", r.to, s.join(","))
                })
                .collect::<Vec<_>>()
                .join("; "),
        };
        let names = |l: &[ApproverSel]| {
            l.iter()
                .map(|a| match a {
                    ApproverSel::User(u) => format!("user:{u}"),
                    ApproverSel::Group(g) => format!("group:{g}"),
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        println!(
            "{}: grants {grant} for up to {} s; {} of {} (and admins); decide within {} s; asked by {}",
            p.name,
            p.max_duration_secs,
            p.required,
            names(&p.approvers),
            p.decide_within_secs,
            p.requesters.as_deref().map_or("any user".into(), names)
        );
    }
}

/// Runs a `request` subcommand against the daemon at `socket`.
pub(crate) async fn request_command(command: RequestCommand, socket: &Path) -> Result<()> {
    let r: Request = match command {
        RequestCommand::List { json } => {
            let list: Vec<Request> =
                tasuki_shell::local::call(socket, calls::RequestList {}).await?;
            return crate::cli::print_json_or(list.as_slice(), json, print_requests);
        }
        RequestCommand::Approve { id } => {
            tasuki_shell::local::call(socket, calls::RequestDecide { id, approve: true }).await?
        }
        RequestCommand::Deny { id } => {
            tasuki_shell::local::call(socket, calls::RequestDecide { id, approve: false }).await?
        }
        RequestCommand::Revoke { id } => {
            tasuki_shell::local::call(socket, calls::RequestRevoke { id }).await?
        }
    };
    println!(
        "request {}: {} ({}/{} approvals)",
        r.id,
        r.state.name(),
        r.approvals.len(),
        r.required
    );
    Ok(())
}

fn print_requests(list: &[Request]) {
    if list.is_empty() {
        println!("no access requests");
        return;
    }
    for r in list {
        let until = match r.state {
            RequestState::Granted { until } => format!(
                ", until {}",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(until)
                )
            ),
            _ => String::new(),
        };
        println!("{}{until}", r.summary());
    }
}
