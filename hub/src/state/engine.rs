//! Which store a hub's state lives in: sled in its state directory (the
//! default), or a shared etcd cluster, named by the state directory's
//! `cluster.toml` and opened with its `cluster.key`.
//!
//! `cluster.toml` also holds this machine's own endpoint: every member of a
//! cluster has one, while the stored hub settings name the cluster's.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tasuki_core::keys::SecretKey;
use tasuki_shell::store::{EtcdSettings, Store};
use tasuki_shell::vault::KeyVault;

use super::{KEYS_DIR, STORE_DIR};

/// The file that puts a hub on etcd.
pub(crate) const CLUSTER_FILE: &str = "cluster.toml";
/// The cluster's storage key (0600): every value in etcd is sealed under it.
pub(crate) const CLUSTER_KEY_FILE: &str = "cluster.key";

/// Which engine holds the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum EngineName {
    /// Embedded, in the state directory.
    Sled,
    /// Replicated, shared by the cluster's hubs.
    Etcd,
}

/// The contents of `cluster.toml`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterFile {
    /// `etcd`.
    pub(crate) store: EngineName,
    /// This member's own public HOST:PORT (spokes reach it there).
    pub(crate) endpoint: String,
    /// The etcd client URLs.
    pub(crate) etcd_endpoints: Vec<String>,
    /// The key prefix of the cluster's records.
    #[serde(default = "default_prefix")]
    pub(crate) etcd_prefix: String,
    /// TLS: the CA of etcd's server certificates.
    #[serde(default)]
    pub(crate) etcd_ca: Option<PathBuf>,
    /// TLS: the client certificate.
    #[serde(default)]
    pub(crate) etcd_cert: Option<PathBuf>,
    /// TLS: the client certificate's key.
    #[serde(default)]
    pub(crate) etcd_key: Option<PathBuf>,
}

fn default_prefix() -> String {
    "/tasuki/".into()
}

impl ClusterFile {
    /// The settings of the etcd client.
    pub(crate) fn etcd(&self) -> EtcdSettings {
        EtcdSettings {
            etcd_endpoints: self.etcd_endpoints.clone(),
            etcd_prefix: self.etcd_prefix.clone(),
            etcd_ca: self.etcd_ca.clone(),
            etcd_cert: self.etcd_cert.clone(),
            etcd_key: self.etcd_key.clone(),
        }
    }

    /// Reads the state directory's `cluster.toml`; `None` for a hub on sled.
    pub(crate) fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(CLUSTER_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let file: Self =
            toml::from_str(&text).with_context(|| format!("{} is not valid", path.display()))?;
        if file.store != EngineName::Etcd {
            bail!(
                "{}: store = \"sled\" needs no cluster file; remove it",
                path.display()
            );
        }
        file.etcd()
            .check()
            .with_context(|| format!("{} is not valid", path.display()))?;
        Ok(Some(file))
    }

    /// Writes it (0600: it names the key files).
    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        let text = toml::to_string(self).context("cannot encode the cluster file")?;
        tasuki_shell::files::write_secret_file(&dir.join(CLUSTER_FILE), text.as_bytes())
    }
}

/// Reads a cluster key file.
pub(crate) fn read_cluster_key(path: &Path) -> Result<SecretKey> {
    let text = tasuki_shell::files::read_secret_file(path).with_context(|| {
        format!(
            "cannot read the cluster key {}: copy it from the cluster's first hub",
            path.display()
        )
    })?;
    SecretKey::from_base64(&text)
        .with_context(|| format!("{} is not a cluster key", path.display()))
}

/// Writes a cluster key file (0600).
pub(crate) fn write_cluster_key(path: &Path, key: &SecretKey) -> Result<()> {
    let text = key.to_base64();
    tasuki_shell::files::write_secret_file(path, text.as_bytes())
}

/// The hub's opened store and the vault of its throw-away keys.
pub(crate) struct Opened {
    /// The records.
    pub(crate) store: Store,
    /// The keys: files beside sled, or records of etcd.
    pub(crate) vault: KeyVault,
}

/// Opens the store the state directory names.
pub(crate) fn open(dir: &Path) -> Result<Opened> {
    match ClusterFile::read(dir)? {
        None => Ok(Opened {
            store: Store::open(&dir.join(STORE_DIR))?,
            vault: KeyVault::open(&dir.join(KEYS_DIR))?,
        }),
        Some(file) => open_etcd(&file, read_cluster_key(&dir.join(CLUSTER_KEY_FILE))?),
    }
}

/// Opens the etcd store of `file` with `key`.
pub(crate) fn open_etcd(file: &ClusterFile, key: SecretKey) -> Result<Opened> {
    let store = Store::open_etcd(&file.etcd(), key)?;
    Ok(Opened {
        vault: KeyVault::in_store(store.clone()),
        store,
    })
}
