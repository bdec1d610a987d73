//! `tasuki-hub spoke …`: invitations (text and QR), listing, approval,
//! denial and revocation, through the admin socket.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use tasuki_core::admin_api::{HubRequest, InvitationView, SpokeView};

#[derive(Subcommand)]
pub(crate) enum SpokeCommand {
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

pub(crate) async fn spoke_command(command: SpokeCommand, socket: &Path) -> Result<()> {
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
