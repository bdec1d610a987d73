//! Throw-away keys at rest: one 0600 file per key, outside the store.
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

/// A directory of secret key files.
pub struct KeyVault {
    dir: PathBuf,
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
            dir: dir.to_owned(),
        })
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        if !valid_name(name) {
            bail!("invalid key name {name:?}");
        }
        Ok(self.dir.join(format!("{name}.key")))
    }

    /// Stores a key durably (written, synced, renamed into place).
    pub fn put(&self, name: &str, key: &SecretKey) -> Result<()> {
        crate::files::write_secret_file(&self.path(name)?, key.expose())
    }

    /// Reads a key; `None` if there is no such file.
    pub fn get(&self, name: &str) -> Result<Option<SecretKey>> {
        let path = self.path(name)?;
        let bytes = match fs::read(&path) {
            Ok(b) => Zeroizing::new(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let arr: [u8; 32] = bytes.as_slice().try_into().with_context(|| {
            format!(
                "{} is damaged ({} bytes, expected 32)",
                path.display(),
                bytes.len()
            )
        })?;
        Ok(Some(SecretKey::from_bytes(arr)))
    }

    /// Erases a key: overwrite with zeros, sync, unlink, sync the directory.
    /// Erasing a key that is not there is not an error.
    pub fn erase(&self, name: &str) -> Result<()> {
        let path = self.path(name)?;
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
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", self.dir.display()))?;
        Ok(())
    }

    /// Names of every stored key.
    pub fn names(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir)
            .with_context(|| format!("cannot list {}", self.dir.display()))?
        {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".key") {
                out.push(stem.to_owned());
            } else if name.ends_with(".tmp") {
                // A write cut short by a crash: never acknowledged, so never used.
                let _ = self.erase_tmp(&name);
            }
        }
        out.sort();
        Ok(out)
    }

    fn erase_tmp(&self, file: &str) -> Result<()> {
        let path = self.dir.join(file);
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
