//! Logging set-up: the level from `RUST_LOG`, else the config's, else
//! `info`. Human-readable on a terminal; under systemd (JOURNAL_STREAM set)
//! plain lines without colours or timestamps, which journald adds itself.
//! The level can change at run time (SIGHUP re-reads the config).

use std::io::IsTerminal;
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

static HANDLE: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

fn filter(level: Option<&str>) -> EnvFilter {
    EnvFilter::try_from_default_env()
        .ok()
        .or_else(|| level.and_then(|l| EnvFilter::try_new(l).ok()))
        .unwrap_or_else(|| EnvFilter::new("info"))
}

/// Installs the global tracing subscriber; later calls do nothing.
pub fn init(level: Option<&str>) {
    let (filter, handle) = reload::Layer::new(filter(level));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi =
        !journald && std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi);
    let result = if journald {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt.without_time())
            .try_init()
    } else {
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .try_init()
    };
    if result.is_ok() {
        let _ = HANDLE.set(handle);
    }
}

/// Changes the level (RUST_LOG still wins); a bad filter is reported, not applied.
pub fn set_level(level: Option<&str>) -> Result<(), String> {
    if let Some(l) = level {
        EnvFilter::try_new(l).map_err(|e| format!("bad log filter {l:?}: {e}"))?;
    }
    match HANDLE.get() {
        Some(h) => h.reload(filter(level)).map_err(|e| e.to_string()),
        None => Ok(()),
    }
}
