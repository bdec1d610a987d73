//! Secret files and state directories: 0700 directories, 0600 files,
//! written atomically (write, fsync, rename, fsync the directory).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Makes everything this process creates from now on private to its user
/// (umask 077): sled's store files, the audit log, anything a library
/// writes. Called first thing by both daemons' command lines.
pub fn private_umask() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
}

/// Makes every file under `dir` 0600 and every directory 0700 (a state
/// directory written by an older version, or copied with `cp -r`); returns
/// the paths it had to change. Symbolic links are left alone.
pub fn tighten_tree(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut fixed = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(path) = todo.pop() {
        let meta = fs::symlink_metadata(&path)
            .with_context(|| format!("cannot stat {}", path.display()))?;
        let wanted = if meta.is_dir() {
            for entry in
                fs::read_dir(&path).with_context(|| format!("cannot list {}", path.display()))?
            {
                todo.push(
                    entry
                        .with_context(|| format!("cannot list {}", path.display()))?
                        .path(),
                );
            }
            0o700
        } else if meta.is_file() {
            0o600
        } else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            fs::set_permissions(&path, fs::Permissions::from_mode(wanted))
                .with_context(|| format!("cannot make {} private", path.display()))?;
            fixed.push(path);
        }
    }
    Ok(fixed)
}

/// [`tighten_tree`] for a daemon's state directory at start, with a warning
/// naming each path that others could read.
pub fn tighten_state_dir(dir: &Path) -> Result<()> {
    for path in tighten_tree(dir)? {
        tracing::warn!(path = %path.display(), "was readable by other users; made private (0600 files, 0700 directories)");
    }
    Ok(())
}

/// Creates `dir` (and parents) with mode 0700, or tightens an existing one.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create directory {}", dir.display()))?;
    let meta = fs::metadata(dir).with_context(|| format!("cannot stat {}", dir.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot make {} private (0700)", dir.display()))?;
    }
    Ok(())
}

/// Writes `contents` to `path` atomically with mode 0600.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let tmp = path.with_extension("tmp");
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(contents).and_then(|_| f.sync_all()))
        .with_context(|| format!("cannot write {}", tmp.display()))
        .and_then(|()| {
            fs::rename(&tmp, path)
                .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
        });
    if let Err(e) = written {
        // A half-written file (a full disk, say) is never used: do not leave
        // it behind. Nothing was written if the write failed at once.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("cannot sync directory {}", dir.display()))?;
    Ok(())
}

/// Reads a secret file, refusing one that others can read or write.
pub fn read_secret_file(path: &Path) -> Result<zeroize::Zeroizing<String>> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{} is readable by other users (mode {:o}); run `chmod 600 {}` and check who copied it",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        );
    }
    let text =
        fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(zeroize::Zeroizing::new(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_tree_is_made_private() {
        let dir = std::env::temp_dir().join(format!("tasuki-tighten-{}", std::process::id()));
        let sub = dir.join("store");
        fs::create_dir_all(&sub).unwrap();
        fs::write(sub.join("db"), b"x").unwrap();
        fs::write(dir.join("ok"), b"x").unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o755)).unwrap();
        fs::set_permissions(sub.join("db"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(dir.join("ok"), fs::Permissions::from_mode(0o600)).unwrap();
        let mut fixed = tighten_tree(&dir).unwrap();
        fixed.sort();
        assert_eq!(fixed, vec![dir.clone(), sub.clone(), sub.join("db")]);
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&sub.join("db")), 0o600);
        assert!(
            tighten_tree(&dir).unwrap().is_empty(),
            "nothing left to fix"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secret_files_are_private_and_atomic() {
        let dir = std::env::temp_dir().join(format!("tasuki-files-{}", std::process::id()));
        ensure_private_dir(&dir).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let f = dir.join("k");
        write_secret_file(&f, b"one").unwrap();
        write_secret_file(&f, b"two").unwrap();
        assert_eq!(
            fs::metadata(&f).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read_secret_file(&f).unwrap().as_str(), "two");
        assert!(!f.with_extension("tmp").exists());
        fs::set_permissions(&f, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret_file(&f).unwrap_err().to_string();
        assert!(err.contains("readable by other users"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }
}
