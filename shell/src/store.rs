//! A narrow typed interface over sled, so the engine can be swapped.
//!
//! Values are postcard-encoded. Writers call [`Store::flush`] before any key
//! they wrote is acknowledged, sent or used. Only the daemon opens its store.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{de::DeserializeOwned, Serialize};

/// A daemon's durable store.
pub struct Store {
    db: sled::Db,
    path: PathBuf,
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
        Ok(Self {
            db,
            path: path.to_owned(),
        })
    }

    /// Reads one value.
    pub fn get<T: DeserializeOwned>(&self, tree: &str, key: &[u8]) -> Result<Option<T>> {
        let t = self.tree(tree)?;
        match t.get(key).with_context(|| self.ctx(tree))? {
            Some(bytes) => Ok(Some(self.decode(tree, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Reads every value of a tree, in key order.
    pub fn all<T: DeserializeOwned>(&self, tree: &str) -> Result<Vec<T>> {
        let t = self.tree(tree)?;
        let mut out = Vec::new();
        for item in t.iter() {
            let (_, v) = item.with_context(|| self.ctx(tree))?;
            out.push(self.decode(tree, &v)?);
        }
        Ok(out)
    }

    /// Writes several values (and removals) in one atomic batch per tree, then flushes.
    pub fn commit(&self, writes: &[Write<'_>]) -> Result<()> {
        use std::collections::BTreeMap;
        let mut batches: BTreeMap<&str, sled::Batch> = BTreeMap::new();
        for w in writes {
            match w {
                Write::Put { tree, key, value } => batches
                    .entry(tree)
                    .or_default()
                    .insert(key.clone(), value.clone()),
                Write::Remove { tree, key } => batches.entry(tree).or_default().remove(key.clone()),
            }
        }
        for (tree, batch) in batches {
            self.tree(tree)?
                .apply_batch(batch)
                .with_context(|| self.ctx(tree))?;
        }
        self.flush()
    }

    /// Forces everything written so far to disk.
    pub fn flush(&self) -> Result<()> {
        self.db
            .flush()
            .with_context(|| format!("cannot flush the store at {}", self.path.display()))?;
        Ok(())
    }

    fn tree(&self, name: &str) -> Result<sled::Tree> {
        self.db.open_tree(name).with_context(|| self.ctx(name))
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
                        && format!("{e:#}").contains("lock") =>
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
