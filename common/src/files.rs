//! Files the programs read whole (specs, TLS certificates and keys, cursors, model metadata),
//! each with a bound: `/dev/zero` or a multi-gigabyte file given by mistake must be refused
//! with one line, not read until memory runs out.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The most bytes a sweep spec may hold (a spec is a page of TOML; the largest example is 3 KB).
pub const MAX_SPEC_BYTES: u64 = 16 << 20;

/// The most bytes of a PEM file (a certificate chain or a key is a few KB).
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// Read at most `limit` bytes of `path`; a longer file (or an endless one such as `/dev/zero`)
/// is an error that names the limit. Works on pipes and `/dev/stdin` (read once, in one pass).
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    // A regular file's size is known before reading: refuse at once instead of reading `limit`.
    if let Ok(meta) = file.metadata() {
        if meta.is_file() && meta.len() > limit {
            return Err(too_large(limit));
        }
        if meta.is_dir() {
            return Err(std::io::Error::other("is a directory"));
        }
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(limit));
    }
    Ok(bytes)
}

/// [`read_bounded`] as UTF-8 text.
pub fn read_text_bounded(path: &Path, limit: u64) -> std::io::Result<String> {
    String::from_utf8(read_bounded(path, limit)?)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8 text ({e})")))
}

fn too_large(limit: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::FileTooLarge,
        format!("larger than {} (the most this file may hold)", bytes_text(limit)),
    )
}

/// `16 MiB`, `1 MiB`, `512 KiB`, `100 bytes`.
pub fn bytes_text(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// Read a spec file once, bounded ([`MAX_SPEC_BYTES`]): a spec given as a pipe or `/dev/stdin`
/// can be read only once, so whoever stores the spec must keep these bytes.
pub fn read_spec(path: &Path) -> Result<String, crate::spec::SpecError> {
    read_text_bounded(path, MAX_SPEC_BYTES).map_err(|e| crate::spec::SpecError {
        file: path.display().to_string(),
        line: 0,
        message: format!("cannot read: {e}"),
    })
}

/// Read and parse a spec file, probing the file system for what it names.
pub fn load_spec(path: &Path) -> Result<crate::spec::Sweep, crate::spec::SpecError> {
    crate::spec::parse(&read_spec(path)?, &path.display().to_string())
}

/// The file system as parsing asks it (`spec::Probe`): what a run opening probes and records.
pub struct FileSystem;

impl crate::spec::Probe for FileSystem {
    fn npy_image_size(&self, path: &Path) -> Result<[usize; 2], String> {
        let (h, w) = crate::dataset::npy_image_size(path).map_err(|e| e.to_string())?;
        Ok([h, w])
    }

    fn idx_image_size(&self, path: &Path) -> Result<[usize; 2], String> {
        let (h, w) = crate::dataset::idx_image_size(path).map_err(|e| e.to_string())?;
        Ok([h, w])
    }

    fn folder_classes(&self, dir: &Path) -> Result<Vec<String>, String> {
        crate::dataset::folder_classes(dir).map_err(|e| e.to_string())
    }

    fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, String> {
        expand_glob(pattern)
    }
}

/// The files a glob such as `models/*.pt` names, sorted: `*` and `?` in the last component
/// only (a directory of models, the common case).
pub fn expand_glob(pattern: &str) -> Result<Vec<PathBuf>, String> {
    let path = Path::new(pattern);
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if dir.to_string_lossy().contains(['*', '?']) {
        return Err(format!("glob {pattern:?}: wildcards are allowed in the file name only"));
    }
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("glob {pattern:?}: {}: {e}", dir.display()))?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
        .filter(|e| wildcard_match(file.as_bytes(), e.file_name().to_string_lossy().as_bytes()))
        .map(|e| dir.join(e.file_name()))
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(format!("glob {pattern:?} matches no file"));
    }
    Ok(out)
}

/// `*` (any run) and `?` (one character) against a whole name, in O(pattern × name) time: the
/// recursive match took over 30 s for a pattern of 16 `*` (each star retried every split).
/// Greedy with one backtrack point (the last star), which suffices because a later star can
/// absorb whatever an earlier one would have.
pub fn wildcard_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // The position after the last star seen, and the name position it currently absorbs to.
    let mut backtrack: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                backtrack = Some((p, n));
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match backtrack {
                Some((after_star, absorbed)) => {
                    p = after_star;
                    n = absorbed + 1;
                    backtrack = Some((after_star, absorbed + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endless_file_is_refused_at_the_limit() {
        let e = read_bounded(Path::new("/dev/zero"), 1000).unwrap_err();
        assert!(e.to_string().contains("larger than 1000 bytes"), "{e}");
    }

    #[test]
    fn a_large_regular_file_is_refused_without_reading_it_and_a_small_one_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        std::fs::File::create(&big).unwrap().set_len(3 << 20).unwrap();
        let e = read_bounded(&big, 1 << 20).unwrap_err();
        assert!(e.to_string().contains("larger than 1 MiB"), "{e}");
        let small = dir.path().join("small");
        std::fs::write(&small, "abc").unwrap();
        assert_eq!(read_text_bounded(&small, 3).unwrap(), "abc");
        assert!(read_bounded(dir.path(), 10).unwrap_err().to_string().contains("directory"));
    }
}
