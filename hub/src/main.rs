//! `tasuki-hub`: the key station. Enrols spokes, issues their throw-away
//! tunnel keys, relays their traffic and routes it to the company LAN.

mod admin;
mod audit;
mod cli;
mod cli_access;
mod cli_cluster;
mod cli_hubs;
mod cli_init;
mod cli_ipv6;
mod cli_keys;
mod cli_pairs;
mod cli_requests;
mod cli_spokes;
mod cli_users;
mod cluster;
mod config;
mod control;
mod daemon;
mod dataplane;
mod metrics;
mod state;
mod uplink;

fn main() -> std::process::ExitCode {
    match cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tasuki-hub: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
