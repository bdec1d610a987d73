//! Logging set-up: the level from `RUST_LOG`, else the config's, else
//! `info`. Human-readable on a terminal; under systemd (JOURNAL_STREAM set)
//! plain lines without colours or timestamps, which journald adds itself.

use std::io::IsTerminal;

/// Installs the global tracing subscriber; later calls do nothing.
pub fn init(level: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .ok()
        .or_else(|| level.and_then(|l| tracing_subscriber::EnvFilter::try_new(l).ok()))
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new("info"));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(
            !journald && std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
        );
    let _ = if journald {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
}
