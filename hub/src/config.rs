//! `/etc/tasuki/hub.toml`: every setting of `tasuki-hub run`, each also a
//! command-line flag (flags win).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Deserialize;

/// The default config file; read by `run` when it exists.
pub(crate) const DEFAULT_CONFIG: &str = "/etc/tasuki/hub.toml";

/// The file's settings, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HubConfig {
    /// State directory made by `init`.
    pub(crate) state_dir: Option<PathBuf>,
    /// TUN interface name.
    pub(crate) interface: Option<String>,
    /// Listen address (TCP and UDP).
    pub(crate) listen: Option<SocketAddr>,
    /// Admin socket path.
    pub(crate) admin_socket: Option<PathBuf>,
    /// Group allowed on the admin socket.
    pub(crate) admin_group: Option<String>,
    /// Prometheus endpoint address (off when absent).
    pub(crate) metrics: Option<SocketAddr>,
    /// Log level or filter (`info`, `debug`, `tasuki_hub=debug`); RUST_LOG wins.
    pub(crate) log: Option<String>,
}

/// Loads the config: `path` if given (must exist), else the default file if it exists.
pub(crate) fn load(path: Option<&Path>) -> Result<HubConfig> {
    let (path, optional) = match path {
        Some(p) => (p, false),
        None => (Path::new(DEFAULT_CONFIG), true),
    };
    Ok(tasuki_shell::config::load(path, optional)?.unwrap_or_default())
}
