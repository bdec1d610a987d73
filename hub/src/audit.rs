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
    /// The file may end inside a line (a write cut short by a full disk or
    /// a crash): the next record starts on a line of its own, so only the
    /// cut line is lost, never the record after it.
    cut_line: bool,
}

impl AuditLog {
    /// Opens (creating, 0600) `audit.log` in `dir` for appending.
    pub(crate) fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("audit.log");
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open the audit log {}", path.display()))?;
        let cut_line = ends_inside_a_line(&file)
            .with_context(|| format!("cannot read the audit log {}", path.display()))?;
        Ok(Self {
            path,
            file,
            cut_line,
        })
    }

    /// Appends one record and syncs it to disk.
    pub(crate) fn append(&mut self, record: &AuditRecord) {
        let result = serde_json::to_string(record)
            .map_err(anyhow::Error::from)
            .and_then(|mut line| {
                line.push('\n');
                if self.cut_line {
                    line.insert(0, '\n');
                }
                // Until this write is known whole, the file may end mid-line.
                self.cut_line = true;
                self.file.write_all(line.as_bytes())?;
                self.cut_line = false;
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
        // Bytes, not text: a line cut inside a character is one damaged
        // line, not an unreadable log.
        for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
            let line = line.with_context(|| format!("cannot read {}", self.path.display()))?;
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<AuditRecord>(&line) {
                Ok(r) if r.time >= since => out.push(r),
                Ok(_) => {}
                Err(e) => tracing::warn!(line = n + 1, error = %e, "damaged audit line skipped"),
            }
        }
        Ok(out)
    }
}

/// Whether the file's last byte is not a newline (a line was cut short).
fn ends_inside_a_line(file: &File) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    Ok(last[0] != b'\n')
}

#[cfg(test)]
mod tests {
    use super::*;
    use tasuki_core::audit::AuditKind;

    #[test]
    fn a_line_cut_short_costs_only_itself() {
        let dir = std::env::temp_dir().join(format!("tasuki-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut log = AuditLog::open(&dir).unwrap();
        log.append(&AuditRecord::new(10, AuditKind::Approval).spoke("before"));
        drop(log);
        // A crash (or a full disk) in the middle of the next record.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.join("audit.log"))
            .unwrap();
        // Cut inside a multi-byte character.
        f.write_all(b"{\"time\":11,\"spoke\":\"caf\xc3").unwrap();
        let mut log = AuditLog::open(&dir).unwrap();
        log.append(&AuditRecord::new(12, AuditKind::Approval).spoke("after"));
        // An empty line: what a write that failed before its first byte
        // leaves once the next record starts on a line of its own.
        f.write_all(b"\n").unwrap();
        drop(f);
        log.append(&AuditRecord::new(13, AuditKind::Approval).spoke("last"));
        let got: Vec<_> = log
            .read(0)
            .unwrap()
            .into_iter()
            .map(|r| (r.time, r.spoke))
            .collect();
        assert_eq!(
            got,
            vec![
                (10, Some("before".into())),
                (12, Some("after".into())),
                (13, Some("last".into()))
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
