//! `/etc/tasuki/spoke.toml`: every setting of `tasuki-spoke run`, each also
//! a command-line flag (flags win).

use std::path::{Path, PathBuf};

use anyhow::Result;

/// The default config file; read by `run` when it exists.
pub(crate) const DEFAULT_CONFIG: &str = "/etc/tasuki/spoke.toml";

/// The file's settings (shared with the fuzz targets, so it lives in the shell crate).
pub(crate) type SpokeConfigFile = tasuki_shell::config::SpokeFile;

/// Loads the config: `path` if given (must exist), else the default file if it exists.
pub(crate) fn load(path: Option<&Path>) -> Result<SpokeConfigFile> {
    let (path, optional) = match path {
        Some(p) => (p, false),
        None => (Path::new(DEFAULT_CONFIG), true),
    };
    Ok(tasuki_shell::config::load(path, optional)?.unwrap_or_default())
}

/// The settings `run` uses.
pub(crate) struct RunSettings {
    pub(crate) state_dir: PathBuf,
    pub(crate) interface: String,
    pub(crate) socket: PathBuf,
    pub(crate) group: Option<String>,
    /// Persistent keepalive in seconds, overriding the hub's.
    pub(crate) keepalive: Option<u16>,
    pub(crate) log: Option<String>,
}
