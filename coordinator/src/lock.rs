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
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            let holder = if holder.is_empty() { "a process that is starting" } else { holder };
            return Err(LockError::Held { dir: dir.display().to_string(), holder: holder.to_string() });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let holder = format!("pid {} on {}, since {}", std::process::id(), host.trim(), utc(since));
    file.set_len(0).and_then(|()| file.write_all(holder.as_bytes())).and_then(|()| file.sync_all()).map_err(io)?;
    Ok(DirLock { _file: file })
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC` (the civil-from-days algorithm of H. Hinnant).
fn utc(seconds: u64) -> String {
    let (days, rest) = ((seconds / 86_400) as i64, seconds % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rest / 3600, rest / 60 % 60, rest % 60)
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
        assert!(err.contains(&format!("pid {} on", std::process::id())), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
        drop(first);
        lock_dir(dir.path()).expect("released when the holder is gone");
    }

    #[test]
    fn utc_dates_are_civil_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_796_119_932), "2026-12-01 10:12:12 UTC");
    }
}
