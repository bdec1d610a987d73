//! I/O shared by the hub and spoke daemons: secret files, the sled store,
//! TUN devices and routes, the local admin socket and control-channel frames.
//!
//! Nothing here decides anything; the decisions live in `tasuki-core`.

pub mod config;
pub mod connect;
pub mod dual_stack;
pub mod files;
pub mod frames;
pub mod local;
pub mod logging;
pub mod netdev;
pub mod passes;
pub mod service;
pub mod store;
pub mod thread;
pub mod udp;
pub mod underlay;
pub mod vault;

/// Seconds since the machine booted, time asleep included: a clock that a
/// wall-clock change (NTP, an admin's `date`) never moves, yet that keeps
/// counting while a laptop is suspended. For ages and lifetimes.
pub fn boot_secs() -> u64 {
    boot_millis() / 1000
}

/// [`boot_secs`] in milliseconds, for the data plane's path timers.
pub fn boot_millis() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(t) => u64::try_from(t.tv_sec())
            .unwrap_or(0)
            .saturating_mul(1000)
            .saturating_add(u64::try_from(t.tv_nsec() / 1_000_000).unwrap_or(0)),
        // Not Linux: the monotonic clock, from the first call.
        Err(_) => {
            static FIRST: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
            let ms = FIRST
                .get_or_init(std::time::Instant::now)
                .elapsed()
                .as_millis();
            u64::try_from(ms).unwrap_or(u64::MAX)
        }
    }
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Current time as Unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
