//! Config files (TOML). An error names the file, the line and column, and
//! the key, so an admin finds the mistake at once.

use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;

/// `/etc/tasuki/hub.toml`: the settings of `tasuki-hub run`, all optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubFile {
    /// State directory made by `init`.
    pub state_dir: Option<std::path::PathBuf>,
    /// TUN interface name.
    pub interface: Option<String>,
    /// Listen address (TCP and UDP).
    pub listen: Option<std::net::SocketAddr>,
    /// Admin socket path.
    pub admin_socket: Option<std::path::PathBuf>,
    /// Group allowed on the admin socket.
    pub admin_group: Option<String>,
    /// Prometheus endpoint address (off when absent).
    pub metrics: Option<std::net::SocketAddr>,
    /// Log level or filter (`info`, `debug`, `tasuki_hub=debug`); RUST_LOG wins.
    pub log: Option<String>,
}

/// `/etc/tasuki/spoke.toml`: the settings of `tasuki-spoke run`, all optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpokeFile {
    /// State directory of the enrolled spoke.
    pub state_dir: Option<std::path::PathBuf>,
    /// TUN interface name.
    pub interface: Option<String>,
    /// Control socket path.
    pub socket: Option<std::path::PathBuf>,
    /// Group allowed on the control socket (users who log in).
    pub group: Option<String>,
    /// WireGuard persistent keepalive toward the hub, seconds (0 = off);
    /// absent: the hub's setting. Set it below the UDP timeout of a NAT in
    /// front of this spoke so the hub can always reach it.
    pub keepalive: Option<u16>,
    /// Log level or filter; RUST_LOG wins.
    pub log: Option<String>,
}

/// A config error located in its file.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}:{column}: {message}")]
pub struct ConfigError {
    /// The file.
    pub path: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong (names the key for unknown or mistyped keys).
    pub message: String,
}

/// Parses `text` (the contents of `path`) as `T`.
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start).min(text.len());
        let before = &text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        let key = text
            .lines()
            .nth(line - 1)
            .and_then(|l| l.split_once('='))
            .map(|(k, _)| k.trim().to_owned())
            .filter(|k| !k.is_empty() && !e.message().contains(&format!("`{k}`")));
        let message = match key {
            Some(k) => format!("key `{k}`: {}", e.message().trim()),
            None => e.message().trim().to_owned(),
        };
        ConfigError {
            path: path.display().to_string(),
            line,
            column,
            message,
        }
    })
}

/// Loads `path`; a missing file is `Ok(None)` only when `optional`.
pub fn load<T: DeserializeOwned>(path: &Path, optional: bool) -> Result<Option<T>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(parse(path, &text)?)),
        Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read the config file {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: Option<String>,
        port: Option<u16>,
    }

    #[test]
    fn errors_name_file_line_and_key() {
        let p = Path::new("/etc/tasuki/hub.toml");
        let ok: Sample = parse(p, "name = \"x\"\nport = 5\n").unwrap();
        assert_eq!(ok.port, Some(5));
        let e = parse::<Sample>(p, "name = \"x\"\nport = \"five\"\n").unwrap_err();
        assert_eq!((e.line, e.path.as_str()), (2, "/etc/tasuki/hub.toml"));
        assert!(e.to_string().contains("port"), "{e}");
        let e = parse::<Sample>(p, "# c\n\nportt = 5\n").unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.to_string().contains("portt"), "{e}");
        let e = parse::<Sample>(p, "name = \n").unwrap_err();
        assert_eq!(e.line, 1);
    }
}
