//! One run per directory: `freqsweep run` and `serve` hold an OS lock on `DIR/freqsweep.lock`
//! (`flock`) for as long as they use the run directory. The OS releases it when the process exits
//! or crashes, so a `kill -9` never leaves a stale lock; the file names its holder (pid, host,
//! start time) for the one-line refusal a second run gets.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::Path;

/// Held while a run uses its directory.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "{dir} is in use by another freqsweep ({holder}); one run per directory: wait for it, stop it, or use another --out"
    )]
    Held { dir: String, holder: String },
    #[error("cannot lock {path}: {detail}")]
    Io { path: String, detail: String },
}

/// Take the lock of run directory `dir` (created if missing), or say who holds it.
pub fn lock_dir(dir: &Path) -> Result<DirLock, LockError> {
    let path = dir.join("freqsweep.lock");
    let io = |e: std::io::Error| LockError::Io { path: path.display().to_string(), detail: e.to_string() };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = holder_text(&path);
            let holder = holder.trim();
            let holder = if holder.is_empty() { "a process that is starting" } else { holder };
            return Err(LockError::Held { dir: dir.display().to_string(), holder: holder.to_string() });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let holder =
        format!("pid {} on {}, since {}", std::process::id(), host.trim(), crate::report::format_time(since * 1000));
    file.set_len(0).and_then(|()| file.write_all(holder.as_bytes())).and_then(|()| file.sync_all()).map_err(io)?;
    Ok(DirLock { _file: file })
}

/// Who holds run directory `dir` now (`pid … on …, since …`), or `None` when no `run` or
/// `serve` uses it: a reader such as `freqsweep report` asks, and takes nothing (the lock is
/// probed and released at once; a missing lock file means nobody ever held it).
pub fn holder(dir: &Path) -> Option<String> {
    let path = dir.join("freqsweep.lock");
    let file = File::open(&path).ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(TryLockError::WouldBlock) => {
            let holder = holder_text(&path);
            let holder = holder.trim();
            Some(if holder.is_empty() { "a process that is starting".to_string() } else { holder.to_string() })
        }
        Err(TryLockError::Error(_)) => None,
    }
}

/// What the lock file says of its holder (one short line; a few hundred bytes at most are read).
fn holder_text(path: &Path) -> String {
    let bytes = freqsweep_common::files::read_bounded(path, 4096).unwrap_or_default();
    freqsweep_common::text::one_line(&String::from_utf8_lossy(&bytes), 300)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock_dir(dir.path()).unwrap();
        let err = lock_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("is in use by another freqsweep (pid "), "{err}");
        assert!(holder(dir.path()).is_some_and(|h| h.starts_with(&format!("pid {} on", std::process::id()))));
        assert!(err.contains(&format!("pid {} on", std::process::id())), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
        drop(first);
        assert_eq!(holder(dir.path()), None, "nobody holds it now");
        lock_dir(dir.path()).expect("released when the holder is gone");
    }

    #[test]
    fn the_holder_says_since_when_in_utc() {
        assert_eq!(crate::report::format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(crate::report::format_time(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(crate::report::format_time(1_796_119_932_000), "2026-12-01 10:12:12 UTC");
    }
}
