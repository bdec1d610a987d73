//! `/etc/tasuki/hub.toml`: every setting of `tasuki-hub run`, each also a
//! command-line flag (flags win).

use std::path::Path;

use anyhow::Result;

/// The default config file; read by `run` when it exists.
pub(crate) const DEFAULT_CONFIG: &str = "/etc/tasuki/hub.toml";

/// The file's settings (shared with the fuzz targets, so it lives in the shell crate).
pub(crate) type HubConfig = tasuki_shell::config::HubFile;

/// Loads the config: `path` if given (must exist), else the default file if it exists.
pub(crate) fn load(path: Option<&Path>) -> Result<HubConfig> {
    let (path, optional) = match path {
        Some(p) => (p, false),
        None => (Path::new(DEFAULT_CONFIG), true),
    };
    Ok(tasuki_shell::config::load(path, optional)?.unwrap_or_default())
}
