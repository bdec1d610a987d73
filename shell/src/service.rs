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
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
        }
    }))
}
