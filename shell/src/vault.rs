//! Throw-away keys at rest: one 0600 file per key, outside the store; or,
//! for a hub on etcd, records of the replicated store (sealed there under
//! the cluster's storage key like every other value).
//!
//! sled is log-structured: a removed value stays in its files until the
//! engine compacts (measured: the bytes of a removed record are still in
//! `db`). An ended key must be found nowhere in the state directory, so key
//! bytes never enter the store: each lives in its own small file, written
//! atomically, and erasing it overwrites it with zeros, syncs and unlinks it.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tasuki_core::keys::SecretKey;
use zeroize::Zeroizing;

/// Where secret keys are kept.
pub struct KeyVault {
    place: Place,
}

enum Place {
    /// A directory of 0600 files.
    Dir(PathBuf),
    /// Records of the `vault` tree of a replicated store, and while a
    /// daemon loads its state, all of them read at once (see
    /// [`KeyVault::preload`]).
    Store(crate::store::Store, std::sync::Mutex<Option<Preloaded>>),
}

/// Every key of a replicated vault, read in one scan.
type Preloaded = std::collections::HashMap<String, Zeroizing<Vec<u8>>>;

/// The store tree of a [`KeyVault::in_store`].
const VAULT_TREE: &str = "vault";

fn lock(
    cache: &std::sync::Mutex<Option<Preloaded>>,
) -> std::sync::MutexGuard<'_, Option<Preloaded>> {
    cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl KeyVault {
    /// Opens (creating, 0700) the vault directory.
    pub fn open(dir: &Path) -> Result<Self> {
        crate::files::ensure_private_dir(dir)?;
        Ok(Self {
            place: Place::Dir(dir.to_owned()),
        })
    }

    /// A vault in the replicated `store` (which seals what it holds).
    pub fn in_store(store: crate::store::Store) -> Self {
        Self {
            place: Place::Store(store, std::sync::Mutex::new(None)),
        }
    }

    /// Reads every key of a replicated vault at once (a daemon loading its
    /// state asks for each of them: one round trip instead of thousands),
    /// until [`KeyVault::end_preload`]; a directory needs none.
    pub fn preload(&self) -> Result<()> {
        if let Place::Store(store, cache) = &self.place {
            let all: Preloaded = store
                .scan_raw(VAULT_TREE)?
                .into_iter()
                .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), Zeroizing::new(v)))
                .collect();
            *lock(cache) = Some(all);
        }
        Ok(())
    }

    /// Drops what [`KeyVault::preload`] read (wiped).
    pub fn end_preload(&self) {
        if let Place::Store(_, cache) = &self.place {
            lock(cache).take();
        }
    }

    fn checked(name: &str) -> Result<&str> {
        if !valid_name(name) {
            bail!("invalid key name {name:?}");
        }
        Ok(name)
    }

    fn path(&self, dir: &Path, name: &str) -> Result<PathBuf> {
        Ok(dir.join(format!("{}.key", Self::checked(name)?)))
    }

    /// Stores a key durably (written, synced, renamed into place; or
    /// committed to the replicated store).
    pub fn put(&self, name: &str, key: &SecretKey) -> Result<()> {
        match &self.place {
            Place::Dir(dir) => {
                crate::files::write_secret_file(&self.path(dir, name)?, key.expose())
            }
            Place::Store(store, cache) => {
                store.commit(&[crate::store::Write::Put {
                    tree: VAULT_TREE,
                    key: Self::checked(name)?.as_bytes().to_vec(),
                    value: key.expose().to_vec(),
                }])?;
                if let Some(all) = lock(cache).as_mut() {
                    all.insert(name.to_owned(), Zeroizing::new(key.expose().to_vec()));
                }
                Ok(())
            }
        }
    }

    /// Reads a key; `None` if there is no such key.
    pub fn get(&self, name: &str) -> Result<Option<SecretKey>> {
        let (bytes, place) = match &self.place {
            Place::Dir(dir) => {
                let path = self.path(dir, name)?;
                match fs::read(&path) {
                    Ok(b) => (Zeroizing::new(b), path.display().to_string()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => {
                        return Err(e).with_context(|| format!("cannot read {}", path.display()))
                    }
                }
            }
            Place::Store(store, cache) => {
                let name = Self::checked(name)?;
                // Preloaded: exact (puts and erasures since are in it).
                let preloaded = lock(cache).as_ref().map(|all| all.get(name).cloned());
                let bytes = match preloaded {
                    Some(found) => found,
                    None => store.get_raw(VAULT_TREE, name.as_bytes())?,
                };
                match bytes {
                    Some(b) => (b, format!("key {name} in {}", store.describe())),
                    None => return Ok(None),
                }
            }
        };
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .with_context(|| format!("{place} is damaged ({} bytes, expected 32)", bytes.len()))?;
        Ok(Some(SecretKey::from_bytes(arr)))
    }

    /// Erases a key: overwrite with zeros, sync, unlink, sync the directory
    /// (a replicated store only ever held it sealed: removed).
    /// Erasing a key that is not there is not an error.
    pub fn erase(&self, name: &str) -> Result<()> {
        let dir = match &self.place {
            Place::Dir(dir) => dir,
            Place::Store(store, cache) => {
                store.commit(&[crate::store::Write::remove(
                    VAULT_TREE,
                    Self::checked(name)?.as_bytes(),
                )])?;
                if let Some(all) = lock(cache).as_mut() {
                    all.remove(name);
                }
                return Ok(());
            }
        };
        let path = self.path(dir, name)?;
        match OpenOptions::new().write(true).open(&path) {
            Ok(mut f) => {
                let len = f.metadata().map(|m| m.len()).unwrap_or(32) as usize;
                f.write_all(&vec![0u8; len.max(32)])
                    .and_then(|_| f.sync_all())
                    .with_context(|| format!("cannot overwrite {}", path.display()))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
        }
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", dir.display()))?;
        Ok(())
    }

    /// Names of every stored key.
    pub fn names(&self) -> Result<Vec<String>> {
        let dir = match &self.place {
            Place::Dir(dir) => dir,
            Place::Store(store, cache) => {
                if let Some(all) = lock(cache).as_ref() {
                    let mut names: Vec<String> = all.keys().cloned().collect();
                    names.sort();
                    return Ok(names);
                }
                return Ok(store
                    .scan_raw(VAULT_TREE)?
                    .into_iter()
                    .map(|(k, v)| {
                        drop(Zeroizing::new(v));
                        String::from_utf8_lossy(&k).into_owned()
                    })
                    .collect());
            }
        };
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".key") {
                out.push(stem.to_owned());
            } else if name.ends_with(".tmp") {
                // A write cut short by a crash: never acknowledged, so never used.
                let _ = Self::erase_tmp(dir, &name);
            }
        }
        out.sort();
        Ok(out)
    }

    fn erase_tmp(dir: &Path, file: &str) -> Result<()> {
        let path = dir.join(file);
        if let Ok(mut f) = OpenOptions::new().write(true).open(&path) {
            let len = f.metadata().map(|m| m.len()).unwrap_or(0) as usize;
            let _ = f.write_all(&vec![0u8; len]).and_then(|_| f.sync_all());
        }
        fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_erase_leaves_no_bytes() {
        let dir = std::env::temp_dir().join(format!("tasuki-vault-{}", std::process::id()));
        let v = KeyVault::open(&dir).unwrap();
        let key = SecretKey::from_bytes([0xA7; 32]);
        v.put("1-2", &key).unwrap();
        assert_eq!(v.get("1-2").unwrap(), Some(key.clone()));
        assert_eq!(v.names().unwrap(), vec!["1-2".to_string()]);
        v.erase("1-2").unwrap();
        v.erase("1-2").unwrap();
        assert_eq!(v.get("1-2").unwrap(), None);
        for entry in fs::read_dir(&dir).unwrap() {
            let bytes = fs::read(entry.unwrap().path()).unwrap();
            assert!(!bytes.windows(32).any(|w| w == key.expose()));
        }
        assert!(v.put("../x", &key).is_err());
        fs::write(dir.join("bad.key"), b"short").unwrap();
        assert!(format!("{:#}", v.get("bad").unwrap_err()).contains("damaged"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
