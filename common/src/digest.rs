//! Content digests of artifacts (checkpoints, datasets): `sha256:<hex>`. Artifacts move between
//! coordinator and workers in chunks; both sides name and verify them by digest, and a worker's
//! cache is keyed by it.

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

pub const PREFIX: &str = "sha256:";

/// Digest of a byte slice.
pub fn of_bytes(bytes: &[u8]) -> String {
    format!("{PREFIX}{}", hex(&Sha256::digest(bytes)))
}

/// Digest and size of a file, streamed.
pub fn of_file(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((format!("{PREFIX}{}", hex(&hasher.finalize())), size))
}

/// An incremental digest for data arriving in chunks.
#[derive(Default)]
pub struct Hasher(Sha256);

impl Hasher {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(self) -> String {
        format!("{PREFIX}{}", hex(&self.0.finalize()))
    }
}

/// A file-name-safe form of a digest (`sha256-<hex>`).
pub fn file_name(digest: &str) -> String {
    digest.replace(':', "-").chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer_and_chunked_equals_whole() {
        assert_eq!(of_bytes(b"abc"), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let mut h = Hasher::default();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), of_bytes(b"abc"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"abc").unwrap();
        assert_eq!(of_file(&path).unwrap(), (of_bytes(b"abc"), 3));
        assert_eq!(file_name(&of_bytes(b"abc"))[..7], *"sha256-");
    }
}
