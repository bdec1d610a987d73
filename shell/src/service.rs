//! Running under systemd: readiness, watchdog and stop notifications
//! (sd-notify). Outside systemd every call does nothing.

use std::time::Duration;

use sd_notify::NotifyState;

/// Tells systemd the daemon is ready (Type=notify), with a status line.
pub fn ready(status: &str) {
    let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the daemon is stopping.
pub fn stopping() {
    let _ = sd_notify::notify(&[NotifyState::Stopping]);
}

/// Tells systemd the daemon is reloading its configuration.
pub fn reloading() {
    let _ = sd_notify::notify(&[NotifyState::Reloading]);
}

/// Starts pinging systemd's watchdog at half its interval, if it is enabled.
/// The pings come from the async runtime, so a wedged runtime stops them and
/// systemd restarts the daemon.
pub fn spawn_watchdog() -> Option<tokio::task::JoinHandle<()>> {
    let interval = sd_notify::watchdog_enabled()?;
    let period = (interval / 2).max(Duration::from_millis(100));
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        loop {
            tick.tick().await;
            if let Err(e) = sd_notify::notify(&[NotifyState::Watchdog]) {
                // systemd restarts the service if pings stop; say why.
                tracing::warn!(error = %e, "the watchdog ping to systemd failed");
            }
        }
    }))
}

/// SIGHUP: re-reads the config file with `load` (which returns its log
/// level) and applies what can change while running, the log level; the
/// rest needs a restart, and the log says so.
pub fn reload_log_level(load: impl FnOnce() -> anyhow::Result<Option<String>>) {
    reloading();
    match load() {
        Ok(level) => match crate::logging::set_level(level.as_deref()) {
            Ok(()) => tracing::info!(
                log = level.as_deref().unwrap_or("info"),
                "SIGHUP: config re-read; log level applied (other settings need a restart)"
            ),
            Err(e) => tracing::error!(error = %e, "SIGHUP: log level not changed"),
        },
        Err(e) => tracing::error!(error = %format!("{e:#}"), "SIGHUP: config not re-read"),
    }
    ready("reloaded");
}

/// Waits until the daemon should stop: SIGTERM, an interrupt, or `done`
/// (its data plane ended, or the hub lost its role: the caller says which);
/// calls `on_hangup` at each SIGHUP meanwhile.
pub async fn until_stopped<F: std::future::Future + Unpin>(
    done: &mut F,
    mut on_hangup: impl FnMut(),
) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: stopping"); return Ok(()); }
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupt: stopping"); return Ok(()); }
            _ = &mut *done => { tracing::error!("stopping: the data plane ended (or, on a hub, it stepped down)"); return Ok(()); }
            _ = hup.recv() => on_hangup(),
        }
    }
}
