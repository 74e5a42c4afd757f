//! Artifacts on the wire and in the local cache: inputs downloaded by digest into the cache
//! (verified, `.partial` then rename) and reused across tasks; outputs uploaded in chunks with
//! their digest, and copied into the same cache (a heatmap task that follows its train task on
//! this worker does not download the checkpoint back).

use crate::client::Client;
use crate::engine::EngineError;
use freqsweep_common::digest;
use freqsweep_proto::v1 as pb;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

/// Bytes per artifact chunk on the wire (well under gRPC's default 4 MiB message limit).
const CHUNK: usize = 1 << 20;

/// Download every input of `lease` (those in the cache are not downloaded again); their local
/// paths by name.
pub(crate) async fn fetch_inputs(
    client: &mut Client,
    cache: &Path,
    lease: &pb::Lease,
) -> Result<HashMap<String, PathBuf>, EngineError> {
    let mut inputs = HashMap::new();
    for artifact in &lease.inputs {
        let path = fetch_input(client, cache, artifact).await.map_err(EngineError::transient)?;
        inputs.insert(artifact.name.clone(), path);
    }
    Ok(inputs)
}

/// Store a finished task's outputs at the coordinator (except those whose digest is in `stored`:
/// it holds them already) and keep them in the cache; their references, in order, or the first
/// error.
pub(crate) async fn upload_outputs(
    client: &mut Client,
    cache: &Path,
    artifacts: &[(String, PathBuf)],
    stored: &HashSet<String>,
) -> Result<Vec<pb::ArtifactRef>, String> {
    let mut outputs = Vec::new();
    for (name, path) in artifacts {
        let reference = describe(name, path)?;
        if !stored.contains(&reference.digest) {
            send_file(client, &reference, path).await?;
        }
        keep_in_cache(cache, path, &reference);
        outputs.push(reference);
    }
    Ok(outputs)
}

/// Download `artifact` into the cache unless it is there already; returns the local path.
async fn fetch_input(client: &mut Client, cache: &Path, artifact: &pb::ArtifactRef) -> Result<PathBuf, String> {
    let path = cache.join("artifacts").join(digest::file_name(&artifact.digest));
    // A cached file of the wrong size (cut short by an older worker on a full disk) is fetched again.
    if std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == artifact.size) {
        return Ok(path);
    }
    tokio::fs::create_dir_all(path.parent().expect("has a parent")).await.map_err(|e| e.to_string())?;
    let partial = path.with_extension("partial");
    let mut file = tokio::fs::File::create(&partial).await.map_err(|e| format!("{}: {e}", partial.display()))?;
    let mut stream = client
        .download_artifact(pb::DownloadRequest { digest: artifact.digest.clone(), offset: 0 })
        .await
        .map_err(|s| format!("download {}: {}", artifact.name, s.message()))?
        .into_inner();
    let mut hasher = digest::Hasher::default();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|s| format!("download {}: {}", artifact.name, s.message()))?;
        hasher.update(&chunk.data);
        size += chunk.data.len() as u64;
        file.write_all(&chunk.data).await.map_err(|e| format!("{}: {e}", partial.display()))?;
    }
    // tokio writes in the background: the last write's error (a full disk) surfaces at `flush`,
    // and the size on disk is checked too, so a cut-short file never enters the cache.
    file.flush().await.map_err(|e| format!("{}: {e}", partial.display()))?;
    file.sync_all().await.map_err(|e| format!("{}: {e}", partial.display()))?;
    let written = tokio::fs::metadata(&partial).await.map(|m| m.len()).unwrap_or(0);
    let got = hasher.finish();
    if written != size {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(format!("{}: {written} of {size} bytes written (is the disk full?)", partial.display()));
    }
    if got != artifact.digest || size != artifact.size {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(format!(
            "download {}: got {size} bytes with digest {got}, expected {} bytes {}",
            artifact.name, artifact.size, artifact.digest
        ));
    }
    tokio::fs::rename(&partial, &path).await.map_err(|e| e.to_string())?;
    Ok(path)
}

/// Upload a file in chunks; the coordinator verifies the digest and size.
pub(crate) async fn upload(client: &mut Client, name: &str, path: &Path) -> Result<pb::ArtifactRef, String> {
    let reference = describe(name, path)?;
    send_file(client, &reference, path).await?;
    Ok(reference)
}

/// The reference (digest and size) that names the file at `path`.
fn describe(name: &str, path: &Path) -> Result<pb::ArtifactRef, String> {
    let (digest, size) = digest::of_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(pb::ArtifactRef { name: name.to_string(), digest, size })
}

/// Stream the file at `path` as `reference` in chunks read as they are sent (memory stays at a
/// few chunks whatever the checkpoint's size).
async fn send_file(client: &mut Client, reference: &pb::ArtifactRef, path: &Path) -> Result<(), String> {
    let mut file = tokio::fs::File::open(path).await.map_err(|e| format!("{}: {e}", path.display()))?;
    let (chunks, to_send) = mpsc::channel::<pb::ArtifactChunk>(4);
    let first = reference.clone();
    let reader = tokio::spawn(async move {
        let mut offset = 0u64;
        let mut first = Some(first);
        loop {
            let mut data = vec![0u8; CHUNK];
            let mut filled = 0;
            while filled < CHUNK {
                match file.read(&mut data[filled..]).await? {
                    0 => break,
                    n => filled += n,
                }
            }
            data.truncate(filled);
            // An empty file is still one chunk: the first carries the reference.
            if filled == 0 && first.is_none() {
                break;
            }
            let chunk = pb::ArtifactChunk { artifact: first.take(), offset, data };
            offset += filled as u64;
            if chunks.send(chunk).await.is_err() || filled < CHUNK {
                break;
            }
        }
        Ok::<u64, std::io::Error>(offset)
    });
    let sent = client.upload_artifact(tokio_stream::wrappers::ReceiverStream::new(to_send)).await;
    let read = reader.await.map_err(|e| e.to_string())?.map_err(|e| format!("{}: {e}", path.display()))?;
    sent.map_err(|s| format!("upload {}: {}", reference.name, s.message()))?;
    if read != reference.size {
        return Err(format!("{}: changed while it was being uploaded", path.display()));
    }
    Ok(())
}

/// Keep an output this worker produced in its input cache, so a later task that needs it here (the
/// scheduler prefers this worker for it) does not download it back. A copy, not a hard link: the
/// task directory's file may be rewritten by a later attempt, and a cached file must keep the
/// content its digest names.
fn keep_in_cache(cache: &Path, path: &Path, reference: &pb::ArtifactRef) {
    let cached = cache.join("artifacts").join(digest::file_name(&reference.digest));
    if cached.is_file() {
        return;
    }
    let partial = cached.with_extension("partial");
    let kept = std::fs::create_dir_all(cache.join("artifacts"))
        .and_then(|()| std::fs::copy(path, &partial))
        .and_then(|_| std::fs::rename(&partial, &cached));
    if let Err(e) = kept {
        tracing::debug!(artifact = %reference.name, error = %e, "output not kept in the cache; a later task here downloads it");
    }
}

/// Digests of the artifacts already in the cache (sent at registration, for locality).
pub(crate) fn cached_digests(cache: &Path) -> Vec<String> {
    std::fs::read_dir(cache.join("artifacts"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| !n.ends_with(".partial"))
                .filter_map(|n| n.strip_prefix("sha256-").map(|hex| format!("sha256:{hex}")))
                .collect()
        })
        .unwrap_or_default()
}
