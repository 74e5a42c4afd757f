//! Artifacts on the coordinator's disk: checkpoints and datasets that workers upload and download
//! in chunks (no shared filesystem is assumed). Files live in `<run>/artifacts/<sha256-hex>`,
//! content-addressed, so the same bytes are stored once and a digest names them everywhere.
//!
//! An upload is written to a `.partial` file while its digest is computed; only when the digest
//! and size match what the worker announced is it renamed into place (a torn or corrupt upload
//! never becomes visible). Downloads stream fixed-size chunks from an offset (resumable).

use freqsweep_common::digest;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// A reference to an artifact: the name it goes by in a task (`checkpoint`, `model`), its content
/// digest (`sha256:<hex>`) and size. The domain twin of the wire's `ArtifactRef`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArtifactRef {
    pub name: String,
    pub digest: String,
    pub size: u64,
}

/// Bytes per chunk sent to workers.
pub const CHUNK: usize = 1 << 20;
/// Chunks a download reads ahead of what the network has taken.
pub const READ_AHEAD: usize = 4;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArtifactError {
    #[error("artifact upload carries no reference in its first chunk")]
    NoReference,
    #[error("artifact {name}: chunk at offset {got} but {expected} bytes received so far")]
    Offset { name: String, got: u64, expected: u64 },
    #[error(
        "artifact {name}: received {size} bytes with digest {digest}, announced {announced_size} bytes {announced}"
    )]
    Mismatch { name: String, digest: String, size: u64, announced: String, announced_size: u64 },
    #[error("unknown artifact {0}")]
    Unknown(String),
    #[error("{0}")]
    Io(String),
}

/// The artifact directory of a run.
#[derive(Clone, Debug)]
pub struct ArtifactDir {
    root: PathBuf,
}

/// An upload in progress.
pub struct Upload {
    name: String,
    announced: String,
    announced_size: u64,
    partial: PathBuf,
    file: tokio::fs::File,
    hasher: digest::Hasher,
    received: u64,
}

impl ArtifactDir {
    pub fn new(root: PathBuf) -> Self {
        ArtifactDir { root }
    }

    /// Where the artifact with `digest` lives (whether or not it exists yet).
    pub fn path(&self, digest: &str) -> PathBuf {
        self.root.join(digest::file_name(digest))
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.path(digest).is_file()
    }

    /// Start receiving an artifact announced as `name`, `digest`, `size`.
    pub async fn begin(&self, name: &str, announced: &str, size: u64) -> Result<Upload, ArtifactError> {
        let io = |e: std::io::Error| ArtifactError::Io(format!("{}: {e}", self.root.display()));
        tokio::fs::create_dir_all(&self.root).await.map_err(io)?;
        // Several workers may upload the same bytes at once: each writes its own partial file.
        let partial = self.root.join(format!(
            "{}.{}.partial",
            digest::file_name(announced),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        ));
        let file = tokio::fs::File::create(&partial).await.map_err(io)?;
        Ok(Upload {
            name: name.to_string(),
            announced: announced.to_string(),
            announced_size: size,
            partial,
            file,
            hasher: digest::Hasher::default(),
            received: 0,
        })
    }

    /// Stream `digest` from `offset` in chunks of [`CHUNK`] bytes, read as they are sent: a reader
    /// task fills a queue of [`READ_AHEAD`] chunks, so a download holds a few MiB however large the
    /// artifact and however many downloads run at once. The file is opened before this returns (an
    /// unknown digest is an error then); a read error ends the stream with it.
    pub async fn read_chunks(
        &self,
        digest: &str,
        offset: u64,
    ) -> Result<tokio::sync::mpsc::Receiver<Result<Vec<u8>, ArtifactError>>, ArtifactError> {
        let path = self.path(digest);
        let mut file = tokio::fs::File::open(&path).await.map_err(|_| ArtifactError::Unknown(digest.to_string()))?;
        file.seek(std::io::SeekFrom::Start(offset)).await.map_err(|e| ArtifactError::Io(e.to_string()))?;
        let (tx, rx) = tokio::sync::mpsc::channel(READ_AHEAD);
        tokio::spawn(async move {
            loop {
                let mut buf = vec![0u8; CHUNK];
                let mut filled = 0;
                while filled < CHUNK {
                    match file.read(&mut buf[filled..]).await {
                        Ok(0) => break,
                        Ok(n) => filled += n,
                        Err(e) => {
                            let _ = tx.send(Err(ArtifactError::Io(e.to_string()))).await;
                            return;
                        }
                    }
                }
                if filled == 0 {
                    return;
                }
                buf.truncate(filled);
                // The receiver went away: the download was cut short.
                if tx.send(Ok(buf)).await.is_err() || filled < CHUNK {
                    return;
                }
            }
        });
        Ok(rx)
    }

    /// Store `bytes` (a result the coordinator made itself, such as a merged map) under their
    /// digest; storing the same bytes again changes nothing.
    pub fn store_bytes(&self, bytes: &[u8]) -> Result<(String, u64), ArtifactError> {
        let mut hasher = digest::Hasher::default();
        hasher.update(bytes);
        let digest = hasher.finish();
        let target = self.path(&digest);
        if !target.is_file() {
            std::fs::create_dir_all(&self.root).map_err(|e| ArtifactError::Io(e.to_string()))?;
            let partial = target.with_extension("partial");
            std::fs::write(&partial, bytes)
                .and_then(|()| std::fs::File::open(&partial)?.sync_all())
                .and_then(|()| std::fs::rename(&partial, &target))
                .map_err(|e| ArtifactError::Io(format!("{}: {e}", partial.display())))?;
        }
        Ok((digest, bytes.len() as u64))
    }

    /// Store a local file (e.g. a dataset the coordinator prepares) and return `(digest, size)`.
    pub fn import(&self, source: &Path) -> Result<(String, u64), ArtifactError> {
        let (digest, size) =
            digest::of_file(source).map_err(|e| ArtifactError::Io(format!("{}: {e}", source.display())))?;
        let target = self.path(&digest);
        if !target.is_file() {
            std::fs::create_dir_all(&self.root).map_err(|e| ArtifactError::Io(e.to_string()))?;
            let partial = target.with_extension("partial");
            std::fs::copy(source, &partial).map_err(|e| ArtifactError::Io(e.to_string()))?;
            std::fs::rename(&partial, &target).map_err(|e| ArtifactError::Io(e.to_string()))?;
        }
        Ok((digest, size))
    }
}

impl Upload {
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ArtifactError> {
        if offset != self.received {
            return Err(ArtifactError::Offset { name: self.name.clone(), got: offset, expected: self.received });
        }
        self.file.write_all(data).await.map_err(|e| ArtifactError::Io(e.to_string()))?;
        self.hasher.update(data);
        self.received += data.len() as u64;
        Ok(())
    }

    /// Verify and move into place; returns the final path.
    pub async fn finish(self, dir: &ArtifactDir) -> Result<PathBuf, ArtifactError> {
        self.file.sync_all().await.map_err(|e| ArtifactError::Io(e.to_string()))?;
        let digest = self.hasher.finish();
        if digest != self.announced || self.received != self.announced_size {
            let _ = tokio::fs::remove_file(&self.partial).await;
            return Err(ArtifactError::Mismatch {
                name: self.name,
                digest,
                size: self.received,
                announced: self.announced,
                announced_size: self.announced_size,
            });
        }
        let target = dir.path(&digest);
        tokio::fs::rename(&self.partial, &target).await.map_err(|e| ArtifactError::Io(e.to_string()))?;
        Ok(target)
    }

    /// Drop a failed upload's partial file.
    pub async fn abort(self) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.partial).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn uploads_are_verified_before_they_become_visible() {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = ArtifactDir::new(dir.path().join("artifacts"));
        let bytes: Vec<u8> = (0..(CHUNK + 100)).map(|i| (i % 251) as u8).collect();
        let digest = digest::of_bytes(&bytes);

        let mut upload = artifacts.begin("checkpoint", &digest, bytes.len() as u64).await.unwrap();
        upload.write(0, &bytes[..CHUNK]).await.unwrap();
        assert!(!artifacts.contains(&digest), "not visible before it is verified");
        assert!(matches!(upload.write(7, &bytes[CHUNK..]).await, Err(ArtifactError::Offset { .. })));
        upload.write(CHUNK as u64, &bytes[CHUNK..]).await.unwrap();
        upload.finish(&artifacts).await.unwrap();
        assert!(artifacts.contains(&digest));
        let read = |offset: u64| {
            let artifacts = artifacts.clone();
            let digest = digest.clone();
            async move {
                let mut rx = artifacts.read_chunks(&digest, offset).await.unwrap();
                let mut chunks = Vec::new();
                while let Some(chunk) = rx.recv().await {
                    chunks.push(chunk.unwrap());
                }
                chunks
            }
        };
        let chunks = read(0).await;
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks.concat(), bytes);
        assert_eq!(read(CHUNK as u64).await.concat(), &bytes[CHUNK..]);

        // A corrupt upload (announced digest does not match) is refused and leaves nothing.
        let wrong = digest::of_bytes(b"something else");
        let mut bad = artifacts.begin("checkpoint", &wrong, 3).await.unwrap();
        bad.write(0, b"abc").await.unwrap();
        let err = bad.finish(&artifacts).await.unwrap_err();
        assert!(err.to_string().contains("announced 3 bytes sha256:"), "{err}");
        assert!(!artifacts.contains(&wrong));
        let leftovers = std::fs::read_dir(dir.path().join("artifacts")).unwrap().count();
        assert_eq!(leftovers, 1, "only the good artifact remains");
        assert!(matches!(artifacts.read_chunks(&wrong, 0).await, Err(ArtifactError::Unknown(_))));
    }
}
