//! `tasuki-spoke`: the daemon on each device. Enrols with the hub once, then
//! keeps a control channel and a WireGuard tunnel to it, with the keys the
//! hub issues and rotates.

mod cli;
mod cli_requests;
mod cli_users;
mod config;
mod control;
mod daemon;
mod dataplane;
mod enrol;
mod groups;
mod ipv6;
mod local;
mod pairs;
mod state;
mod underlay;
mod writer;

fn main() -> std::process::ExitCode {
    match cli::main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tasuki-spoke: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
