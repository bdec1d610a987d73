//! I/O shared by the hub and spoke daemons: secret files, the sled store,
//! TUN devices and routes, the local admin socket and control-channel frames.
//!
//! Nothing here decides anything; the decisions live in `tasuki-core`.

pub mod config;
pub mod files;
pub mod frames;
pub mod local;
pub mod logging;
pub mod netdev;
pub mod passes;
pub mod service;
pub mod store;
pub mod udp;
pub mod vault;

/// Current time as Unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
