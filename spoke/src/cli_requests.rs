//! `tasuki-spoke request | requests | approve-request | deny-request`:
//! access requests that wait for every approver (claim 13), asked and
//! decided by users logged in on this spoke, relayed to the hub.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use tasuki_core::control::{UserReply, UserRequest};
use tasuki_core::requests::Request;

use crate::cli::DEFAULT_SOCKET;
use crate::cli_users::{call, only_user};

/// The access-request commands, flattened into `tasuki-spoke`'s own.
#[derive(Subcommand)]
pub(crate) enum RequestCommand {
    /// Ask for temporary access under a request policy; it is granted once
    /// every approval it needs has arrived.
    ///
    /// Example: tasuki-spoke request prod-db --for 2h --reason "fix the migration"
    Request {
        /// The request policy (ask the admin which there are).
        policy: String,
        /// How long the access is to last once granted (e.g. 30m, 2h).
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why: the approvers read it.
        #[arg(long)]
        reason: String,
        /// User id; default: the only user logged in.
        #[arg(long)]
        user: Option<String>,
        /// Control socket of the running spoke.
        #[arg(long, env = "TASUKI_SPOKE_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// What a user logged in here asked for, and what waits for their yes.
    Requests {
        /// User id; default: the only user logged in.
        #[arg(long)]
        user: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Control socket of the running spoke.
        #[arg(long, env = "TASUKI_SPOKE_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Approve another user's access request (one approver counts once).
    ApproveRequest {
        /// The request's number (`tasuki-spoke requests` lists them).
        id: u64,
        /// User id; default: the only user logged in.
        #[arg(long)]
        user: Option<String>,
        /// Control socket of the running spoke.
        #[arg(long, env = "TASUKI_SPOKE_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Deny another user's access request: it ends.
    DenyRequest {
        /// The request's number.
        id: u64,
        /// User id; default: the only user logged in.
        #[arg(long)]
        user: Option<String>,
        /// Control socket of the running spoke.
        #[arg(long, env = "TASUKI_SPOKE_SOCKET", default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

/// Runs one access-request command.
pub(crate) async fn run(command: RequestCommand) -> Result<()> {
    match command {
        RequestCommand::Request {
            policy,
            duration,
            reason,
            user,
            socket,
        } => {
            let d = humantime::parse_duration(&duration)
                .with_context(|| format!("--for {duration:?}: use e.g. 30m, 2h"))?;
            let user = only_user(&socket, user).await?;
            let ask = UserRequest::AskAccess {
                user,
                policy,
                duration_secs: d.as_secs(),
                reason,
            };
            if let UserReply::AccessRequest(r) = call(&socket, ask).await? {
                println!(
                    "request {} asked: it waits for {} approval(s) until {}",
                    r.id,
                    r.required,
                    time(r.decide_by)
                );
            }
        }
        RequestCommand::Requests { user, json, socket } => {
            let user = only_user(&socket, user).await?;
            let reply = call(&socket, UserRequest::ListAccess { user }).await?;
            if let UserReply::AccessRequests { mine, to_decide } = reply {
                if json {
                    let v = serde_json::json!({"mine": mine, "to_decide": to_decide});
                    println!("{}", serde_json::to_string_pretty(&v)?);
                } else {
                    print_list("asked by you", &mine);
                    print_list("waiting for your approval", &to_decide);
                }
            }
        }
        RequestCommand::ApproveRequest { id, user, socket } => {
            decide(&socket, user, id, true).await?
        }
        RequestCommand::DenyRequest { id, user, socket } => {
            decide(&socket, user, id, false).await?
        }
    }
    Ok(())
}

async fn decide(socket: &Path, user: Option<String>, id: u64, approve: bool) -> Result<()> {
    let user = only_user(socket, user).await?;
    if let UserReply::AccessRequest(r) =
        call(socket, UserRequest::DecideAccess { user, id, approve }).await?
    {
        println!(
            "request {}: {} ({}/{} approvals)",
            r.id,
            r.state.name(),
            r.approvals.len(),
            r.required
        );
    }
    Ok(())
}

fn time(secs: u64) -> String {
    match std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs)) {
        Some(t) if secs < 253_402_300_800 => humantime::format_rfc3339_seconds(t).to_string(),
        _ => format!("{secs} s after 1970"),
    }
}

fn print_list(title: &str, list: &[Request]) {
    println!("{title}:");
    if list.is_empty() {
        println!("  none");
    }
    for r in list {
        println!("  {}", r.summary());
    }
}
