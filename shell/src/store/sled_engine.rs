//! The embedded store engine, sled.
//!
//! Every record lives in sled's one default
//! tree under `TREE \0 KEY`, so a [`super::Store::commit`] is a single atomic batch
//! however many "trees" it touches, and it is flushed before it returns.
//! Only the daemon opens its store.
//!
//! sled 0.34 recovers from a damaged log by cutting it at the first bad
//! entry, which can silently roll the store back. So each commit also bumps
//! a generation number, inside the batch and, after the flush, in a small
//! `generation` file beside the store (kept open and rewritten in place, a
//! fixed-width number in one sector, so a commit creates no file): a store that
//! opens with an older generation than the file lost acknowledged writes and
//! is refused with an error naming it.
//!
//! A full disk: a commit is refused before anything is written when the
//! file system holding the store has less than [`MIN_FREE_BYTES`] free. If
//! sled's own write or flush fails anyway, sled keeps the batch in memory but
//! refuses every later write, even once space is back; so the store drops
//! that handle and reopens from disk (what is on disk is exactly what was
//! acknowledged), and later commits work again once space is freed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{Write, MIN_FREE_BYTES};

/// How long a reopen waits for sled's background thread to let go of the
/// old handle's file lock.
const REOPEN_LOCK_WAIT: Duration = Duration::from_secs(3);

/// Write failures of one episode are logged at most this often.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// The embedded engine: sled in the state directory.
pub(super) struct SledStore {
    /// `None` after a failed write whose reopen failed too; the next commit
    /// tries to reopen again.
    db: RwLock<Option<sled::Db>>,
    path: PathBuf,
    generation: AtomicU64,
    /// One commit at a time, so batches and the generation file agree.
    commit_lock: Mutex<GenerationFile>,
    /// Free space a commit needs (tests lower it to reach sled's own errors).
    min_free: AtomicU64,
    /// When a write failure was last logged; `None` while writes work.
    failing_since_log: Mutex<Option<Instant>>,
}

const GENERATION_KEY: &[u8] = b"\0generation";

fn prefixed(tree: &str, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(tree.len() + 1 + key.len());
    k.extend_from_slice(tree.as_bytes());
    k.push(0);
    k.extend_from_slice(key);
    k
}

/// The generation file beside a store, open for rewriting in place.
struct GenerationFile {
    path: PathBuf,
    /// `None` until the first commit, and after a failed write.
    file: Option<std::fs::File>,
}

impl GenerationFile {
    /// Records `generation` durably. The number is written at offset 0 with
    /// a fixed width (21 bytes, inside one disk sector, so a crash leaves
    /// the old number or the new one), then synced: no new file per commit,
    /// which on ext4 costs an inode allocation and a directory sync.
    fn record(&mut self, generation: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let text = format!("{generation:020}\n");
        let file = match self.file.take() {
            Some(f) => f,
            None if !self.path.exists() => {
                // The first time: created whole and atomically, 0600.
                return crate::files::write_secret_file(&self.path, text.as_bytes());
            }
            None => std::fs::OpenOptions::new()
                .write(true)
                .open(&self.path)
                .with_context(|| format!("cannot open {}", self.path.display()))?,
        };
        file.write_all_at(text.as_bytes(), 0)
            .and_then(|()| file.sync_data())
            .with_context(|| format!("cannot write {}", self.path.display()))?;
        // Kept only after a write that worked: a failed one is retried on a
        // fresh handle.
        self.file = Some(file);
        Ok(())
    }
}

fn generation_file(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".generation");
    path.with_file_name(name)
}

/// sled 0.34 writes a snapshot to `snap.N.generating` and renames it once
/// complete, but when it opens it reads the newest `snap.*` file, unfinished
/// ones included: one left behind by a crash or a full disk in the middle
/// of a snapshot makes the store refuse to open ("Read corrupted data").
/// An unfinished snapshot holds nothing the log does not (the previous
/// snapshot stays until the new one is renamed into place), so it is removed
/// before sled opens the store; only while no process holds the store, which
/// sled marks with an exclusive `flock` on its `db` file.
fn remove_unfinished_snapshots(path: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let db_file = path.join("db");
    let lock = match std::fs::File::open(&db_file) {
        Ok(f) => f,
        // A new store, or one sled will report on by itself.
        Err(_) => return Ok(()),
    };
    // SAFETY: flock on a descriptor we own; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        // In use: sled refuses to open it and says so.
        return Ok(());
    }
    let entries = std::fs::read_dir(path)
        .with_context(|| format!("cannot list the store at {}", path.display()))?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path()).with_context(|| {
                format!(
                    "cannot remove the unfinished snapshot {}",
                    entry.path().display()
                )
            })?;
            tracing::warn!(
                file = %entry.path().display(),
                "removed an unfinished snapshot of the store (left by a crash or a full disk)"
            );
        }
    }
    drop(lock);
    Ok(())
}

/// Opens sled at `path` and checks its generation against the file; returns
/// the handle and the stored generation.
fn open_db(path: &Path) -> Result<(sled::Db, u64)> {
    remove_unfinished_snapshots(path)?;
    let db = sled::Config::new()
        .path(path)
        .flush_every_ms(Some(500))
        .open()
        .map_err(|e| {
            let full = matches!(&e, sled::Error::Io(io) if io.raw_os_error() == Some(libc::ENOSPC));
            let advice = if full {
                format!(
                    "the file system holding it is full: free some space and start again (the \
                     store itself is intact; leave {} as it is)",
                    path.display()
                )
            } else {
                format!(
                    "if another tasuki daemon uses this state directory stop it first; if the \
                     store is damaged, restore {} from a backup (moving it aside loses every \
                     enrolled spoke and key)",
                    path.display()
                )
            };
            anyhow::Error::new(e).context(format!(
                "cannot open the store at {}: {advice}",
                path.display()
            ))
        })?;
    let stored = match db.get(GENERATION_KEY) {
        Ok(Some(v)) => v.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(0),
        Ok(None) => 0,
        Err(e) => {
            return Err(e).with_context(|| format!("cannot read the store at {}", path.display()))
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
            "the store at {} lost acknowledged writes (it is at generation {stored}, {} says \
             {expected}): the disk or the store is damaged; restore {} from a backup — \
             starting anyway could lock spokes out",
            path.display(),
            file.display(),
            path.display()
        );
    }
    Ok((db, stored))
}

/// Bytes free for unprivileged writers on the file system holding `path`
/// (or its nearest existing ancestor); `None` if that cannot be told.
fn free_bytes(path: &Path) -> Option<u64> {
    let mut p = path;
    loop {
        if p.exists() {
            let st = nix::sys::statvfs::statvfs(p).ok()?;
            #[allow(clippy::useless_conversion)] // the field types differ by platform
            let free =
                u64::from(st.blocks_available()).saturating_mul(u64::from(st.fragment_size()));
            return Some(free);
        }
        p = p.parent()?;
    }
}

impl SledStore {
    /// Opens the store at `path`; a store that will not open gets an error
    /// naming the path and what to do, never a silent reset.
    pub(super) fn open(path: &Path) -> Result<Self> {
        let (db, stored) = open_db(path)?;
        Ok(Self {
            db: RwLock::new(Some(db)),
            path: path.to_owned(),
            generation: AtomicU64::new(stored),
            commit_lock: Mutex::new(GenerationFile {
                path: generation_file(path),
                file: None,
            }),
            min_free: AtomicU64::new(MIN_FREE_BYTES),
            failing_since_log: Mutex::new(None),
        })
    }

    /// The handle; after a failed write whose reopen failed too (a disk
    /// still full), tries to reopen first.
    fn db(&self) -> Result<sled::Db> {
        if let Some(db) = self
            .db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Ok(db);
        }
        self.reopen(false).with_context(|| {
            format!(
                "the store at {} is closed after a failed write and cannot be reopened yet",
                self.path.display()
            )
        })?;
        self.db
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .with_context(|| format!("the store at {} is closed", self.path.display()))
    }

    /// The bytes of one record.
    pub(super) fn get_raw(&self, tree: &str, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .db()?
            .get(prefixed(tree, key))
            .with_context(|| self.ctx(tree))?
            .map(|v| v.to_vec()))
    }

    /// Every record of a tree (its key without the tree's prefix, and its
    /// bytes), in key order.
    pub(super) fn scan_raw(&self, tree: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let prefix = prefixed(tree, b"");
        let mut out = Vec::new();
        for item in self.db()?.scan_prefix(&prefix) {
            let (k, v) = item.with_context(|| self.ctx(tree))?;
            out.push((k[prefix.len()..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Where the store is, for messages.
    pub(super) fn describe(&self) -> String {
        format!("the store at {}", self.path.display())
    }

    /// Writes several values (and removals) in one atomic batch, flushes it,
    /// and records the new generation. On an error nothing of the batch is
    /// in the store, now or after a restart; the error is also logged.
    pub(super) fn commit(&self, writes: &[Write<'_>]) -> Result<()> {
        let mut generation_file = self
            .commit_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let result = self.commit_locked(writes, &mut generation_file);
        let mut logged = self
            .failing_since_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match &result {
            Ok(()) => {
                if logged.take().is_some() {
                    tracing::info!(store = %self.path.display(), "store writes work again");
                }
            }
            Err(e) => {
                if logged.is_none_or(|t| t.elapsed() >= ERROR_LOG_INTERVAL) {
                    tracing::error!(
                        store = %self.path.display(),
                        error = %format!("{e:#}"),
                        "store write failed; nothing of it was kept"
                    );
                    *logged = Some(Instant::now());
                }
            }
        }
        result
    }

    fn commit_locked(
        &self,
        writes: &[Write<'_>],
        generation_file: &mut GenerationFile,
    ) -> Result<()> {
        let min_free = self.min_free.load(Ordering::Relaxed);
        if let Some(free) = free_bytes(&self.path).filter(|f| *f < min_free) {
            anyhow::bail!(
                "cannot write the store at {}: No space left on device (the file system is full: \
                 {} KiB free, {} KiB needed to write safely); free some space and try again — \
                 nothing was written",
                self.path.display(),
                free / 1024,
                min_free / 1024
            );
        }
        let db = self.db()?;
        let mut batch = sled::Batch::default();
        for w in writes {
            match w {
                Write::Put { tree, key, value } => batch.insert(prefixed(tree, key), value.clone()),
                Write::Remove { tree, key } => batch.remove(prefixed(tree, key)),
            }
        }
        let next = self.generation.load(Ordering::SeqCst) + 1;
        batch.insert(GENERATION_KEY, &next.to_be_bytes());
        let written = db
            .apply_batch(batch)
            .and_then(|()| db.flush().map(|_| ()))
            .with_context(|| format!("cannot write the store at {}", self.path.display()));
        drop(db);
        if let Err(e) = written {
            // sled holds the batch in memory but will refuse every later
            // write: start over from what is on disk.
            if let Err(again) = self.reopen(true) {
                tracing::warn!(error = %format!("{again:#}"), "store not reopened yet");
            }
            return Err(e);
        }
        self.generation.store(next, Ordering::SeqCst);
        // The batch is durable. The generation file only guards against a
        // rollback later: if it cannot be written now (a full disk), it stays
        // behind the store, which is safe, and the commit stands.
        if let Err(e) = generation_file.record(next) {
            tracing::warn!(
                error = %format!("{e:#}"),
                "the store's generation file is behind (the commit itself is durable)"
            );
        }
        Ok(())
    }

    /// Drops the sled handle and opens the store again from disk (unless
    /// `force` is false and another thread reopened it already).
    fn reopen(&self, force: bool) -> Result<()> {
        let mut slot = self.db.write().unwrap_or_else(PoisonError::into_inner);
        if !force && slot.is_some() {
            return Ok(());
        }
        // sled's background thread lets go of the file lock shortly after the
        // last handle is gone.
        drop(slot.take());
        let deadline = Instant::now() + REOPEN_LOCK_WAIT;
        let (db, stored) = loop {
            match open_db(&self.path) {
                Ok(x) => break x,
                Err(e)
                    if Instant::now() < deadline && format!("{e:#}").contains("acquire lock") =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        };
        self.generation.store(stored, Ordering::SeqCst);
        *slot = Some(db);
        tracing::info!(store = %self.path.display(), generation = stored, "store reopened from disk");
        Ok(())
    }

    /// Sets the free space a commit needs (tests: 0 lets sled itself hit
    /// the full disk).
    pub(super) fn set_min_free(&self, bytes: u64) {
        self.min_free.store(bytes, Ordering::Relaxed);
    }

    /// Forces everything written so far to disk.
    pub(super) fn flush(&self) -> Result<()> {
        self.db()?
            .flush()
            .with_context(|| format!("cannot flush the store at {}", self.path.display()))?;
        Ok(())
    }

    fn ctx(&self, tree: &str) -> String {
        format!("store {} (tree {tree:?})", self.path.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn a_rolled_back_store_is_refused() {
        let dir = std::env::temp_dir().join(format!("tasuki-gen-{}", std::process::id()));
        let path = dir.join("store");
        {
            let s = Store::open(&path).unwrap();
            s.commit(&[Write::put("a", *b"k", &1u32).unwrap()]).unwrap();
            s.commit(&[Write::put("a", *b"k", &2u32).unwrap()]).unwrap();
        }
        let recorded = std::fs::read_to_string(generation_file(&path)).unwrap();
        assert_eq!(recorded.trim().parse::<u64>().unwrap(), 2, "{recorded:?}");
        assert_eq!(recorded.len(), 21, "rewritten in place at a fixed width");
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

    /// A tmpfs for a test, unmounted (lazily) on drop, even after a panic.
    struct Tmpfs(std::path::PathBuf);

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn fill(path: &Path) {
        use std::io::Write as _;
        let mut f = std::fs::File::create(path).unwrap();
        for size in [1 << 16, 512, 1] {
            let chunk = vec![0u8; size];
            while f.write_all(&chunk).is_ok() {}
        }
    }

    /// A full disk: commits fail with a clear error (before writing, or when
    /// sled itself fails), nothing of a failed commit is ever read back, and
    /// commits work again once space is freed, without a restart.
    #[test]
    fn a_full_disk_fails_commits_cleanly_until_space_is_back() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: mounting a tmpfs needs root");
            return;
        }
        let dir = std::env::temp_dir().join(format!("tasuki-full-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(mounted.success());
        let _guard = Tmpfs(dir.clone());
        let path = dir.join("store");
        let s = Store::open(&path).unwrap();
        s.commit(&[Write::put("a", *b"first", &1u32).unwrap()])
            .unwrap();
        let filler = dir.join("filler");
        fill(&filler);
        // Refused before anything is written.
        let err = format!(
            "{:#}",
            s.commit(&[Write::put("a", *b"x", &2u32).unwrap()])
                .unwrap_err()
        );
        assert!(
            err.contains("No space left on device") && err.contains("nothing was written"),
            "{err}"
        );
        // Past the reserve, sled's own write fails; earlier commits stand.
        s.set_min_free(0);
        let _ = std::fs::remove_file(&filler);
        fill(&filler);
        let mut failed = None;
        for i in 0u32..5000 {
            let w = Write::put("b", i.to_be_bytes(), &vec![7u8; 700]).unwrap();
            if let Err(e) = s.commit(&[w]) {
                let e = format!("{e:#}");
                assert!(e.contains("No space left on device"), "{e}");
                failed = Some(i);
                break;
            }
        }
        let failed = failed.expect("sled never hit the full disk");
        // sled may not even open on a full disk: reads then fail clearly,
        // and never see the failed batch.
        match s.get::<Vec<u8>>("b", &failed.to_be_bytes()) {
            Ok(v) => assert_eq!(v, None),
            Err(e) => assert!(format!("{e:#}").contains("cannot be reopened yet"), "{e:#}"),
        }
        assert!(s.commit(&[Write::put("a", *b"y", &3u32).unwrap()]).is_err());
        // Space again: reads and commits work without a restart.
        std::fs::remove_file(&filler).unwrap();
        assert_eq!(s.get::<u32>("a", b"first").unwrap(), Some(1));
        s.commit(&[Write::put("a", *b"after", &4u32).unwrap()])
            .unwrap();
        assert_eq!(s.get::<u32>("a", b"first").unwrap(), Some(1));
        assert_eq!(s.get::<u32>("a", b"after").unwrap(), Some(4));
        assert_eq!(s.get::<u32>("a", b"y").unwrap(), None);
        assert_eq!(s.get::<Vec<u8>>("b", &failed.to_be_bytes()).unwrap(), None);
        if failed > 0 {
            assert!(s
                .get::<Vec<u8>>("b", &(failed - 1).to_be_bytes())
                .unwrap()
                .is_some());
        }
        drop(s);
    }

    /// A snapshot left unfinished (a crash or a full disk while sled wrote
    /// it) does not stop the store from opening, and nothing is lost.
    #[test]
    fn an_unfinished_snapshot_is_removed_before_opening() {
        let dir = std::env::temp_dir().join(format!("tasuki-snap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        {
            let s = Store::open(&dir).unwrap();
            s.commit(&[Write::put("a", *b"k", &5u32).unwrap()]).unwrap();
        }
        std::fs::write(
            dir.join("snap.FFFFFFFFFFFFFFFF.generating"),
            b"\x01half a snap",
        )
        .unwrap();
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
        assert_eq!(s.get::<u32>("a", b"k").unwrap(), Some(5));
        assert!(!dir.join("snap.FFFFFFFFFFFFFFFF.generating").exists());
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
