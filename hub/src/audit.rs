//! The hub's append-only audit log: one JSON line per event in
//! `audit.log` (0600), written and synced before the event is acknowledged.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tasuki_core::audit::AuditRecord;

/// The audit log file.
pub(crate) struct AuditLog {
    path: PathBuf,
    file: File,
}

impl AuditLog {
    /// Opens (creating, 0600) `audit.log` in `dir` for appending.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("audit.log");
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open the audit log {}", path.display()))?;
        Ok(Self { path, file })
    }

    /// Appends one record and syncs it to disk.
    pub(crate) fn append(&mut self, record: &AuditRecord) {
        let result = serde_json::to_string(record)
            .map_err(anyhow::Error::from)
            .and_then(|mut line| {
                line.push('\n');
                self.file.write_all(line.as_bytes())?;
                self.file.sync_data()?;
                Ok(())
            });
        match result {
            Ok(()) => tracing::debug!(kind = ?record.kind, "audit"),
            // The event already happened; losing its record is logged loudly.
            Err(e) => {
                tracing::error!(error = %e, path = %self.path.display(), "cannot write the audit log")
            }
        }
    }

    /// Every record at or after `since` (Unix seconds). A damaged line is
    /// skipped with a warning, never fatal.
    pub(crate) fn read(&self, since: u64) -> Result<Vec<AuditRecord>> {
        let file = File::open(&self.path)
            .with_context(|| format!("cannot read {}", self.path.display()))?;
        let mut out = Vec::new();
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("cannot read {}", self.path.display()))?;
            match serde_json::from_str::<AuditRecord>(&line) {
                Ok(r) if r.time >= since => out.push(r),
                Ok(_) => {}
                Err(e) => tracing::warn!(line = n + 1, error = %e, "damaged audit line skipped"),
            }
        }
        Ok(out)
    }
}
