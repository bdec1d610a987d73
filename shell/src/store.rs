//! A narrow typed interface over sled, so the engine can be swapped.
//!
//! Values are postcard-encoded. Every record lives in sled's one default
//! tree under `TREE \0 KEY`, so a [`Store::commit`] is a single atomic batch
//! however many "trees" it touches, and it is flushed before it returns.
//! Only the daemon opens its store.
//!
//! sled 0.34 recovers from a damaged log by cutting it at the first bad
//! entry, which can silently roll the store back. So each commit also bumps
//! a generation number, inside the batch and, after the flush, in a small
//! `generation` file beside the store (written atomically): a store that
//! opens with an older generation than the file lost acknowledged writes and
//! is refused with an error naming it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{de::DeserializeOwned, Serialize};

/// A daemon's durable store.
pub struct Store {
    db: sled::Db,
    path: PathBuf,
    generation: std::sync::atomic::AtomicU64,
    /// One commit at a time, so batches and the generation file agree.
    commit_lock: std::sync::Mutex<()>,
}

const GENERATION_KEY: &[u8] = b"\0generation";

fn prefixed(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(tree.len() + 1 + key.len());
    k.extend_from_slice(tree.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

fn generation_file(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".generation");
    path.with_file_name(name)
}

impl Store {
    /// Opens the store at `path`; a store that will not open gets an error
    /// naming the path and what to do, never a silent reset.
    pub fn open(path: &Path) -> Result<Self> {
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(500))
            .open()
            .with_context(|| {
                format!(
                    "cannot open the store at {}: if another tasuki daemon uses this state \
                     directory stop it first; if the store is damaged, restore {} from a backup \
                     (moving it aside loses every enrolled spoke and key)",
                    path.display(),
                    path.display()
                )
            })?;
        let stored = match db.get(GENERATION_KEY) {
            Ok(Some(v)) => v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0),
            Ok(None) => 0,
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot read the store at {}", path.display()))
            }
        };
        let file = generation_file(path);
        let expected = match std::fs::read_to_string(&file) {
            Ok(t) => t
                .trim()
                .parse::<u64>()
                .with_context(|| format!("{} is damaged", file.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
        };
        if stored < expected {
            anyhow::bail!(
                "the store at {} lost acknowledged writes (it is at generation {stored}, {} says                  {expected}): the disk or the store is damaged; restore {} from a backup —                  starting anyway could lock spokes out",
                path.display(),
                file.display(),
                path.display()
            );
        }
        Ok(Self {
            db,
            path: path.to_owned(),
            generation: std::sync::atomic::AtomicU64::new(stored),
            commit_lock: std::sync::Mutex::new(()),
        })
    }

    /// Reads one value.
    pub fn get<T: DeserializeOwned>(&self, tree: &str, key: &[u8]) -> Result<Option<T>> {
        match self
            .db
            .get(prefixed(tree, key))
            .with_context(|| self.ctx(tree))?
        {
            Some(bytes) => Ok(Some(self.decode(tree, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Reads every value of a tree, in key order.
    pub fn all<T: DeserializeOwned>(&self, tree: &str) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(prefixed(tree, b"")) {
            let (_, v) = item.with_context(|| self.ctx(tree))?;
            out.push(self.decode(tree, &v)?);
        }
        Ok(out)
    }

    /// Writes several values (and removals) in one atomic batch, flushes it,
    /// and records the new generation.
    pub fn commit(&self, writes: &[Write<'_>]) -> Result<()> {
        use std::sync::atomic::Ordering;
        let _one_at_a_time = self
            .commit_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut batch = sled::Batch::default();
        for w in writes {
            match w {
                Write::Put { tree, key, value } => batch.insert(prefixed(tree, key), value.clone()),
                Write::Remove { tree, key } => batch.remove(prefixed(tree, key)),
            }
        }
        let next = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
        batch.insert(GENERATION_KEY, &next.to_be_bytes());
        self.db
            .apply_batch(batch)
            .with_context(|| format!("cannot write the store at {}", self.path.display()))?;
        self.flush()?;
        crate::files::write_secret_file(&generation_file(&self.path), next.to_string().as_bytes())
    }

    /// Forces everything written so far to disk.
    pub fn flush(&self) -> Result<()> {
        self.db
            .flush()
            .with_context(|| format!("cannot flush the store at {}", self.path.display()))?;
        Ok(())
    }

    fn decode<T: DeserializeOwned>(&self, tree: &str, bytes: &[u8]) -> Result<T> {
        tasuki_core::codec::from_bytes(std::any::type_name::<T>(), bytes).with_context(|| {
            format!(
                "a record in tree {tree:?} of the store at {} is damaged",
                self.path.display()
            )
        })
    }

    fn ctx(&self, tree: &str) -> String {
        format!("store {} (tree {tree:?})", self.path.display())
    }
}

/// One change in a [`Store::commit`].
pub enum Write<'a> {
    /// Insert or replace.
    Put {
        /// Tree name.
        tree: &'a str,
        /// Key bytes.
        key: Vec<u8>,
        /// Encoded value.
        value: Vec<u8>,
    },
    /// Delete.
    Remove {
        /// Tree name.
        tree: &'a str,
        /// Key bytes.
        key: Vec<u8>,
    },
}

impl<'a> Write<'a> {
    /// A put of a serializable value.
    pub fn put<T: Serialize>(tree: &'a str, key: impl Into<Vec<u8>>, value: &T) -> Result<Self> {
        Ok(Write::Put {
            tree,
            key: key.into(),
            value: tasuki_core::codec::to_bytes(value)?,
        })
    }

    /// A removal.
    pub fn remove(tree: &'a str, key: impl Into<Vec<u8>>) -> Self {
        Write::Remove {
            tree,
            key: key.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rolled_back_store_is_refused() {
        let dir = std::env::temp_dir().join(format!("tasuki-gen-{}", std::process::id()));
        let path = dir.join("store");
        {
            let s = Store::open(&path).unwrap();
            s.commit(&[Write::put("a", *b"k", &1u32).unwrap()]).unwrap();
            s.commit(&[Write::put("a", *b"k", &2u32).unwrap()]).unwrap();
        }
        assert_eq!(
            std::fs::read_to_string(generation_file(&path)).unwrap(),
            "2"
        );
        // Pretend an acknowledged third commit was lost by the engine.
        std::fs::write(generation_file(&path), "3").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let err = loop {
            match Store::open(&path) {
                Err(e) if format!("{e:#}").contains("acquire lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                Err(e) => break format!("{e:#}"),
                Ok(_) => panic!("a rolled-back store was accepted"),
            }
        };
        assert!(
            err.contains("lost acknowledged writes") && err.contains("store"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn commit_and_read_back_across_reopen() {
        let dir = std::env::temp_dir().join(format!("tasuki-store-{}", std::process::id()));
        {
            let s = Store::open(&dir).unwrap();
            s.commit(&[
                Write::put("a", *b"k1", &1u32).unwrap(),
                Write::put("a", *b"k2", &2u32).unwrap(),
                Write::put("b", *b"x", &"hi".to_string()).unwrap(),
            ])
            .unwrap();
            s.commit(&[Write::remove("a", *b"k1")]).unwrap();
        }
        // sled's background flusher may hold the file lock for a moment
        // after the handle is dropped (a new process never sees that).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let s = loop {
            match Store::open(&dir) {
                Ok(s) => break s,
                Err(e)
                    if std::time::Instant::now() < deadline
                        && format!("{e:#}").contains("acquire lock") =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("{e:#}"),
            }
        };
        assert_eq!(s.all::<u32>("a").unwrap(), vec![2]);
        assert_eq!(s.get::<String>("b", b"x").unwrap().as_deref(), Some("hi"));
        assert!(s.get::<u32>("b", b"y").unwrap().is_none());
        // A record of the wrong shape is an error that names the tree.
        let err = s.get::<u64>("b", b"x").map(|_| ()).unwrap_err();
        assert!(format!("{err:#}").contains("damaged"), "{err:#}");
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
