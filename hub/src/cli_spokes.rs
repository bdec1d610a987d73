//! `tasuki-hub spoke …`: invitations (text and QR), listing, approval,
//! denial and revocation, through the admin socket.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Subcommand;
use tasuki_core::admin_api::{InvitationView, SpokeView};
use tasuki_core::admin_calls as calls;
use tasuki_core::wireguard::WireGuardConfigView;

#[derive(Subcommand)]
pub(crate) enum SpokeCommand {
    /// Print a one-time invitation for a new spoke named NAME; with
    /// --wireguard, add a stock WireGuard app (phone, Windows, macOS) and
    /// print its configuration.
    ///
    /// A WireGuard peer has no control channel: its key epoch is the
    /// configuration's preshared key, which ends only after a long interval
    /// (30 days, or `key policy set --spoke NAME --interval`) or by `key
    /// rotate --spoke NAME`; then `spoke config NAME` prints the new one.
    Invite {
        /// Name of the new spoke (letters, digits, '.', '-', '_').
        name: String,
        /// Let the spoke carry traffic without an admin's approval.
        #[arg(long, conflicts_with = "wireguard")]
        pre_approved: bool,
        /// An unattended server spoke: it carries traffic with no user logged in.
        #[arg(long, conflicts_with = "wireguard")]
        service: bool,
        /// How long the invitation stays valid (e.g. 30m, 24h, 7d).
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration, conflicts_with = "wireguard")]
        expires: Duration,
        /// A stock WireGuard app instead of tasuki-spoke: active at once,
        /// carries traffic with no login (its key is its proof).
        #[arg(long)]
        wireguard: bool,
        /// The public key the device's WireGuard app generated (its private
        /// key never leaves the device).
        #[arg(long, requires = "wireguard", conflicts_with = "generate_key")]
        public_key: Option<String>,
        /// Let the hub draw the device's key pair and print the private key
        /// in this configuration only (never stored): for a phone that
        /// imports a whole configuration from a QR code.
        #[arg(long, requires = "wireguard")]
        generate_key: bool,
        /// The user the WireGuard peer belongs to: access rules that name
        /// the user apply to it.
        #[arg(long, requires = "wireguard")]
        user: Option<String>,
        /// Also draw the invitation (or configuration) as a QR code (on
        /// standard error, so that standard output stays the invitation or
        /// the configuration file), for a phone or a camera at the spoke.
        #[arg(long)]
        qr: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a WireGuard peer's configuration with its current key epoch
    /// (after a rotation, give it to the device again).
    Config {
        /// The WireGuard peer's name.
        name: String,
        /// Also draw it as a QR code (on standard error).
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

/// Runs a `spoke` subcommand against the daemon at `socket`.
pub(crate) async fn spoke_command(command: SpokeCommand, socket: &Path) -> Result<()> {
    match command {
        SpokeCommand::Approve { name } => simple(socket, calls::Approve { name }).await?,
        SpokeCommand::Deny { name } => simple(socket, calls::Deny { name }).await?,
        SpokeCommand::Revoke { name } => simple(socket, calls::Revoke { name }).await?,
        SpokeCommand::Invite {
            name,
            wireguard: true,
            public_key,
            generate_key,
            user,
            qr,
            json,
            ..
        } => {
            let req = calls::WireGuardAdd {
                name,
                public_key,
                user,
            };
            add_wireguard(socket, req, generate_key, qr, json).await?;
        }
        SpokeCommand::Config { name, qr, json } => {
            let view: WireGuardConfigView =
                tasuki_shell::local::call(socket, calls::WireGuardConfig { name }).await?;
            print_wireguard(&view, qr, json)?;
        }
        SpokeCommand::Invite {
            name,
            pre_approved,
            service,
            expires,
            qr,
            json,
            ..
        } => {
            let req = calls::Invite {
                name,
                pre_approved,
                service,
                valid_secs: expires.as_secs(),
            };
            let view: InvitationView = tasuki_shell::local::call(socket, req).await?;
            print_invitation(&view, qr, json)?;
        }
        SpokeCommand::List { json } => {
            let spokes: Vec<SpokeView> =
                tasuki_shell::local::call(socket, calls::ListSpokes {}).await?;
            crate::cli::print_json_or(spokes.as_slice(), json, print_spokes)?;
        }
    }
    Ok(())
}

/// Adds a stock WireGuard app as a spoke and prints its configuration.
async fn add_wireguard(
    socket: &Path,
    req: calls::WireGuardAdd,
    generate_key: bool,
    qr: bool,
    json: bool,
) -> Result<()> {
    if req.public_key.is_none() && !generate_key {
        anyhow::bail!(
            "a WireGuard peer needs --public-key KEY (the key its app generated) or --generate-key"
        );
    }
    let view: WireGuardConfigView = tasuki_shell::local::call(socket, req).await?;
    print_wireguard(&view, qr, json)
}

/// A new invitation: the invitation on standard output (or JSON), what it
/// is and what to do with it on standard error.
fn print_invitation(view: &InvitationView, qr: bool, json: bool) -> Result<()> {
    crate::cli::print_json_or(view, json, |view| {
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
    })?;
    // After the text: the invitation exists, and is shown, even when
    // it cannot be drawn.
    if qr {
        eprintln!("{}", qr_code(&view.invitation)?);
    }
    Ok(())
}

/// The enrolled spokes as a table.
fn print_spokes(spokes: &[SpokeView]) {
    println!(
        "ID    NAME                 STATE     KIND      ADDRESS          EPOCH  AGE     ENDS    ENDPOINT               HANDSHAKE"
    );
    for s in spokes {
        println!(
            "{:<5} {:<20} {:<9} {:<9} {:<16} {:<6} {:<7} {:<7} {:<22} {}",
            s.id,
            s.name,
            s.state,
            s.kind,
            s.tunnel_addr,
            s.epoch.map_or("-".into(), |e| e.to_string()),
            s.epoch_age_secs.map_or("-".into(), short_duration),
            s.epoch_ends_in_secs.map_or("-".into(), short_duration),
            s.endpoint.as_deref().unwrap_or("-"),
            s.last_handshake_secs
                .map_or("never".into(), |t| format!("{t}s ago"))
        );
    }
}

/// A WireGuard peer's configuration: the file on standard output (or
/// JSON), what it is and what to do with it on standard error.
fn print_wireguard(view: &WireGuardConfigView, qr: bool, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(view)?);
    } else {
        print!("{}", view.config.as_str());
        eprintln!(
            "WireGuard peer {:?} at {}, key epoch {}{}",
            view.name,
            view.tunnel_addr,
            view.epoch,
            view.ends_at
                .map_or(" (never ends by itself)".into(), |t| format!(
                    ", ends at {}",
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs(t)
                    )
                ))
        );
        eprintln!(
            "this configuration holds a secret key: give it to that device only{}",
            if view.includes_private_key {
                " (its private key is in it and nowhere else)"
            } else {
                "; in its WireGuard app, keep the private key the app generated"
            }
        );
    }
    if qr {
        eprintln!("{}", qr_code(view.config.as_str())?);
        if !view.includes_private_key {
            eprintln!(
                "note: the WireGuard apps import a configuration from a QR code only with its \
                 private key in it; for that, add the device with --generate-key (or type the \
                 [Peer] part into the tunnel the app made)"
            );
        }
    }
    Ok(())
}

/// Seconds as a short listing field: `45s`, `12m`, `5h`, `29d`.
fn short_duration(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7_200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

/// `text` as a QR code drawn with Unicode half blocks (two rows of modules
/// per line) and its quiet zone, for a terminal with light text on a dark
/// background: the code's light parts are the blocks.
fn qr_code(text: &str) -> Result<String> {
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M)
        .context("too long for a QR code")?;
    Ok(code
        .render::<qrcode::render::unicode::Dense1x2>()
        .dark_color(qrcode::render::unicode::Dense1x2::Light)
        .light_color(qrcode::render::unicode::Dense1x2::Dark)
        .quiet_zone(true)
        .build())
}

/// Sends a request whose answer is `{spoke, state}` and prints it.
async fn simple<C: calls::AdminCall<Reply = calls::SpokeStateView>>(
    socket: &Path,
    req: C,
) -> Result<()> {
    let v = tasuki_shell::local::call(socket, req).await?;
    println!("spoke {} is now {}", v.spoke, v.state);
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
