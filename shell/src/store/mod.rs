//! A narrow typed interface over the durable store, with two engines behind
//! it: sled, embedded in the state directory (the default), and etcd, a
//! replicated store several hub machines share (see [`etcd`]).
//!
//! Values are postcard-encoded records in named trees. A [`Store::commit`]
//! is one atomic change however many trees it touches, and it is durable
//! (flushed to disk, or committed by an etcd quorum) before it returns; on an
//! error nothing of it is in the store, now or after a restart. Only the
//! daemon opens its store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde::{de::DeserializeOwned, Serialize};
use zeroize::Zeroizing;

pub mod etcd;
pub mod etcd_members;
mod etcd_settings;
mod sled_engine;
#[cfg(test)]
mod tests;

pub use etcd::EtcdSettings;

/// A commit is refused while the store's file system has less than this
/// free: sled, the key files and the audit log need room to write safely.
pub const MIN_FREE_BYTES: u64 = 1 << 20;

/// A daemon's durable store (cheap to clone: clones share one engine).
#[derive(Clone)]
pub struct Store(Arc<Shared>);

struct Shared {
    engine: Engine,
    stats: Stats,
}

/// Commits counted for the metrics.
#[derive(Default)]
struct Stats {
    commits: AtomicU64,
    failed: AtomicU64,
    micros: AtomicU64,
}

/// What the store's commits cost so far (for the metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitCounts {
    /// Commits that were durable when they returned.
    pub commits: u64,
    /// Commits that failed (nothing of them kept, or refused).
    pub failed: u64,
    /// Time spent in commits, both kinds, in microseconds.
    pub micros: u64,
}

enum Engine {
    Sled(sled_engine::SledStore),
    Etcd(Box<etcd::EtcdStore>),
}

impl Store {
    /// Opens the embedded store at `path`; a store that will not open gets
    /// an error naming the path and what to do, never a silent reset.
    pub fn open(path: &std::path::Path) -> Result<Self> {
        Ok(Self::with(Engine::Sled(sled_engine::SledStore::open(
            path,
        )?)))
    }

    /// Connects to the etcd cluster `settings` name; every value is sealed
    /// under `storage_key` on its way in and opened on its way out.
    pub fn open_etcd(
        settings: &EtcdSettings,
        storage_key: tasuki_core::keys::SecretKey,
    ) -> Result<Self> {
        Ok(Self::with(Engine::Etcd(Box::new(etcd::EtcdStore::open(
            settings,
            storage_key,
        )?))))
    }

    fn with(engine: Engine) -> Self {
        Self(Arc::new(Shared {
            engine,
            stats: Stats::default(),
        }))
    }

    /// What the commits cost so far.
    pub fn commit_counts(&self) -> CommitCounts {
        let s = &self.0.stats;
        CommitCounts {
            commits: s.commits.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            micros: s.micros.load(Ordering::Relaxed),
        }
    }

    /// The etcd engine, when this store is one.
    pub fn etcd(&self) -> Option<&etcd::EtcdStore> {
        match &self.0.engine {
            Engine::Etcd(e) => Some(e),
            Engine::Sled(_) => None,
        }
    }

    /// The bytes of one record (wiped from memory when dropped).
    pub fn get_raw(&self, tree: &str, key: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>> {
        match &self.0.engine {
            Engine::Sled(s) => Ok(s.get_raw(tree, key)?.map(Zeroizing::new)),
            Engine::Etcd(e) => e.get_raw(tree, key),
        }
    }

    /// Every record of `tree`: its key (without the tree) and its bytes, in
    /// key order.
    pub fn scan_raw(&self, tree: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        match &self.0.engine {
            Engine::Sled(s) => s.scan_raw(tree),
            Engine::Etcd(e) => e.scan_raw(tree),
        }
    }

    /// Where the store is, for messages.
    pub fn describe(&self) -> String {
        match &self.0.engine {
            Engine::Sled(s) => s.describe(),
            Engine::Etcd(e) => e.describe(),
        }
    }

    /// Reads one value.
    pub fn get<T: DeserializeOwned>(&self, tree: &str, key: &[u8]) -> Result<Option<T>> {
        match self.get_raw(tree, key)? {
            Some(bytes) => Ok(Some(self.decode(tree, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Reads one value, written as `T` or, by an older version, as `Old`.
    pub fn get_upgrading<T: DeserializeOwned, Old: DeserializeOwned + Into<T>>(
        &self,
        tree: &str,
        key: &[u8],
    ) -> Result<Option<T>> {
        match self.get_raw(tree, key)? {
            Some(bytes) => Ok(Some(self.decode_upgrading::<T, Old>(tree, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Reads every value of a tree, in key order.
    pub fn all<T: DeserializeOwned>(&self, tree: &str) -> Result<Vec<T>> {
        self.scan_raw(tree)?
            .into_iter()
            .map(|(_, v)| self.decode(tree, &v))
            .collect()
    }

    /// Reads every value of a tree, each written as `T` or, by an older
    /// version, as `Old` (a record that has since gained a field).
    pub fn all_upgrading<T: DeserializeOwned, Old: DeserializeOwned + Into<T>>(
        &self,
        tree: &str,
    ) -> Result<Vec<T>> {
        self.scan_raw(tree)?
            .into_iter()
            .map(|(_, v)| self.decode_upgrading::<T, Old>(tree, &v))
            .collect()
    }

    /// Writes several values (and removals) as one atomic, durable change.
    /// On an error nothing of it is in the store, now or after a restart;
    /// the error is also logged. Of several writes to one record, the last
    /// counts.
    pub fn commit(&self, writes: &[Write<'_>]) -> Result<()> {
        let started = Instant::now();
        let result = match &self.0.engine {
            Engine::Sled(s) => s.commit(writes),
            Engine::Etcd(e) => e.commit(writes),
        };
        let stats = &self.0.stats;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        stats.micros.fetch_add(micros, Ordering::Relaxed);
        match &result {
            Ok(()) => stats.commits.fetch_add(1, Ordering::Relaxed),
            Err(_) => stats.failed.fetch_add(1, Ordering::Relaxed),
        };
        result
    }

    /// Sets the free space a commit needs (tests: 0 lets sled itself hit
    /// the full disk). The etcd engine keeps no local data.
    pub fn set_min_free(&self, bytes: u64) {
        if let Engine::Sled(s) = &self.0.engine {
            s.set_min_free(bytes);
        }
    }

    /// Forces everything written so far to disk (etcd: every commit is
    /// durable already).
    pub fn flush(&self) -> Result<()> {
        match &self.0.engine {
            Engine::Sled(s) => s.flush(),
            Engine::Etcd(_) => Ok(()),
        }
    }

    fn decode<T: DeserializeOwned>(&self, tree: &str, bytes: &[u8]) -> Result<T> {
        tasuki_core::codec::from_bytes(std::any::type_name::<T>(), bytes).with_context(|| {
            format!(
                "a record in tree {tree:?} of {} is damaged",
                self.describe()
            )
        })
    }

    fn decode_upgrading<T: DeserializeOwned, Old: DeserializeOwned + Into<T>>(
        &self,
        tree: &str,
        bytes: &[u8],
    ) -> Result<T> {
        match tasuki_core::codec::from_bytes::<T>(std::any::type_name::<T>(), bytes) {
            Ok(value) => Ok(value),
            Err(_) => Ok(self.decode::<Old>(tree, bytes)?.into()),
        }
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
