//! Files the programs read whole (specs, TLS certificates and keys, cursors, model metadata),
//! each with a bound: `/dev/zero` or a multi-gigabyte file given by mistake must be refused
//! with one line, not read until memory runs out.

use std::io::Read;
use std::path::Path;

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
