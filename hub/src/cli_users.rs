//! `tasuki-hub user …`: user accounts, through the admin socket.

use std::path::Path;

use anyhow::Result;
use clap::Subcommand;
use tasuki_core::admin_api::{UserPassword, UserView};
use tasuki_core::admin_calls as calls;

/// User subcommands.
#[derive(Subcommand)]
pub(crate) enum UserCommand {
    /// Register a user; prints an initial password to be changed at first login.
    Add {
        /// Login id (letters, digits, '.', '-', '_', '@').
        id: String,
        /// Full name, as verified by the admin.
        #[arg(long, default_value = "")]
        name: String,
        /// E-mail address.
        #[arg(long, default_value = "")]
        email: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List users, the spokes they may use and where they are logged in,
    /// and the registrations that wait for approval.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a user; they are logged out everywhere at once.
    Remove {
        /// Login id.
        id: String,
    },
    /// Give a user a new initial password (to be changed at next login).
    ResetPassword {
        /// Login id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Approve a registration that someone asked for from a spoke (see
    /// `tasuki-spoke register`): the account exists from then on, with the
    /// password its owner chose, and may log in on that spoke. Check the
    /// name and e-mail address in `user list` first.
    Approve {
        /// Login id.
        id: String,
    },
    /// Deny a registration: it is forgotten and the id is free again.
    Deny {
        /// Login id.
        id: String,
    },
    /// Let a user log in on a spoke.
    Allow {
        /// Login id.
        id: String,
        /// Spoke name.
        #[arg(long)]
        spoke: String,
    },
}

fn print_password(p: &UserPassword, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(p)?);
    } else {
        println!("{}", p.initial_password);
        eprintln!(
            "initial password for {:?}; it must be changed at first login (tasuki-spoke login {})",
            p.id, p.id
        );
    }
    Ok(())
}

/// Runs a user subcommand against the hub at `socket`.
pub(crate) async fn run(command: UserCommand, socket: &Path) -> Result<()> {
    use tasuki_shell::local::call;
    match command {
        UserCommand::Add {
            id,
            name,
            email,
            json,
        } => {
            let p: UserPassword = call(socket, calls::UserAdd { id, name, email }).await?;
            print_password(&p, json)?;
        }
        UserCommand::ResetPassword { id, json } => {
            let p: UserPassword = call(socket, calls::UserResetPassword { id }).await?;
            print_password(&p, json)?;
        }
        UserCommand::Remove { id } => {
            let v: calls::UserRemoved = call(socket, calls::UserRemove { id }).await?;
            println!("removed user {:?} (logged out everywhere)", v.removed);
        }
        UserCommand::Approve { id } => {
            let v: UserView = call(socket, calls::UserApprove { id }).await?;
            println!(
                "user {} approved; may log in on: {}",
                v.id,
                v.spokes.join(", ")
            );
        }
        UserCommand::Deny { id } => {
            let v: calls::RegistrationDenied = call(socket, calls::UserDeny { id }).await?;
            println!("registration {:?} denied", v.denied);
        }
        UserCommand::Allow { id, spoke } => {
            let v: UserView = call(socket, calls::UserAllow { id, spoke }).await?;
            println!("{} may use: {}", v.id, v.spokes.join(", "));
        }
        UserCommand::List { json } => {
            let users: Vec<UserView> = call(socket, calls::UserList {}).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&users)?);
            } else {
                println!(
                    "ID                   NAME                 SPOKES               LOGGED IN ON"
                );
                for u in users {
                    println!(
                        "{:<20} {:<20} {:<20} {}{}",
                        u.id,
                        u.name,
                        u.spokes.join(","),
                        u.logged_in_on.join(","),
                        if u.pending {
                            "  (registration: waits for approval)"
                        } else if u.must_change_password {
                            "  (initial password)"
                        } else {
                            ""
                        }
                    );
                }
            }
        }
    }
    Ok(())
}
