//! `tasuki-hub pair …`: the pairs the hub keys for direct mode, through
//! the admin socket (never key bytes).

use std::path::Path;

use anyhow::Result;
use clap::Subcommand;
use tasuki_core::admin_api::PairView;
use tasuki_core::admin_calls as calls;

#[derive(Subcommand)]
pub(crate) enum PairCommand {
    /// Every pair: its holders, epochs, rotations, idle time, candidates.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `pair` subcommand against the daemon at `socket`.
pub(crate) async fn pair_command(command: PairCommand, socket: &Path) -> Result<()> {
    match command {
        PairCommand::List { json } => {
            let pairs: Vec<PairView> =
                tasuki_shell::local::call(socket, calls::PairList {}).await?;
            crate::cli::print_json_or(pairs.as_slice(), json, print_pairs)?;
        }
    }
    Ok(())
}

/// The pairs as a table, each holder's candidates below its pair.
fn print_pairs(pairs: &[PairView]) {
    if pairs.is_empty() {
        println!("no pairs (direct mode makes them when spokes talk to each other)");
        return;
    }
    println!(
        "{:<12} {:<20} {:<20} {:>6} {:>10} {:>9} {:>6}",
        "PAIR", "LOW", "HIGH", "EPOCH", "HELD", "ROTATIONS", "IDLE"
    );
    for p in pairs {
        let name = |i: usize| p.holders.get(i).map_or("-", |h| h.spoke.as_str());
        let held: Vec<String> = p.held.iter().map(ToString::to_string).collect();
        println!(
            "{:<12} {:<20} {:<20} {:>6} {:>10} {:>9} {:>5}s",
            p.pair,
            name(0),
            name(1),
            p.epoch,
            held.join(","),
            p.rotations,
            p.idle_secs
        );
        for h in &p.holders {
            println!(
                "  {}: {}{}, stored {}, current {}, {} B out / {} B in direct, candidates {}",
                h.spoke,
                h.path,
                h.endpoint
                    .as_ref()
                    .map(|e| format!(" via {e}"))
                    .unwrap_or_default(),
                h.stored,
                h.current,
                h.tx_bytes,
                h.rx_bytes,
                if h.candidates.is_empty() {
                    "none".into()
                } else {
                    h.candidates.join(" ")
                }
            );
        }
    }
}
