//! The worker's client loop: dial the coordinator, register, hold one `Session` stream, lease
//! tasks, run them on the [`Engine`] and report back; survive a coordinator that goes away.
//!
//! Shape:
//! - The engine runs on its own OS thread (libtorch work is blocking and long); it receives jobs
//!   over a channel and sends events (metrics, progress, finish) back to the async loop. So the
//!   loop always answers the stream and **heartbeats never wait on a task** (a worker in a long
//!   epoch is not declared dead).
//! - Every report names its attempt id; metric batches carry a per-attempt sequence number, so
//!   the coordinator drops duplicates and stale attempts.
//! - Reports that could not be delivered (the stream broke) are kept and sent first after the
//!   next successful registration; a task keeps running while the loop reconnects with
//!   exponential backoff. `connect_timeout` bounds how long a worker waits for a coordinator that
//!   never answers (then it exits with a one-line error naming the address).
//! - Draining (SIGTERM, or the `shutdown` signal): the running task is asked to stop at its next
//!   step and its lease is released (the coordinator re-queues it); an idle worker exits at once.
//! - Inputs are downloaded by digest into a local cache (verified, `.partial` then rename) and
//!   reused across tasks; outputs are uploaded in chunks with their digest before the result that
//!   names them is sent, and copied into the same cache (a heatmap task that follows its train task
//!   on this worker does not download the checkpoint back). A final checkpoint identical to the
//!   last epoch's uploaded snapshot is not sent twice.
//! - Every epoch's checkpoint of a train task is snapshotted (hard link) by the engine thread,
//!   uploaded in the background and announced with `CheckpointSaved`, so a retry elsewhere resumes
//!   from it. One upload at a time; when epochs outpace uploads only the newest waiting snapshot
//!   is kept (an older one would be superseded anyway).

use crate::engine::{Engine, EngineError, EngineEvents, EngineResult, CHECKPOINT_ARTIFACT};
use freqsweep_common::digest;
use freqsweep_common::task::{MetricPoint, TaskSpec};
use freqsweep_proto::dial::{self, DialError};
use freqsweep_proto::v1::coordinator_client::CoordinatorClient;
use freqsweep_proto::v1::{self as pb, coordinator_message, worker_message};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Bytes per artifact chunk on the wire (well under gRPC's default 4 MiB message limit).
const CHUNK: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// `http://host:port` (or `https://…` with TLS).
    pub coordinator: String,
    /// Shared token sent as `authorization: Bearer <token>` on every call.
    pub token: Option<String>,
    /// Where downloaded inputs and task work directories live.
    pub cache_dir: PathBuf,
    pub hostname: String,
    /// Give up when no coordinator could be reached for this long (`None`: never).
    pub connect_timeout: Option<Duration>,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// CA certificate(s), PEM, to trust for an `https://` coordinator (`None`: the system's roots).
    pub tls_ca: Option<Vec<u8>>,
}

/// Why the loop ended without an error.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientExit {
    /// The coordinator said the sweep is done.
    SweepDone,
    /// Asked to shut down; any running task was released.
    Drained,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the coordinator at {url} for {waited:?}: {detail}")]
    Unreachable { url: String, waited: Duration, detail: String },
    #[error("the coordinator at {url} rejected this worker: {detail}")]
    Rejected { url: String, detail: String },
    /// The URL or TLS set-up cannot work (plain URL for a TLS coordinator, untrusted certificate…).
    #[error("{0}")]
    Misconfigured(String),
    #[error("{0}")]
    Local(String),
}

type Client = CoordinatorClient<InterceptedService<Channel, Auth>>;

/// Adds the bearer token to every request.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request.metadata_mut().insert("authorization", token.clone());
        }
        Ok(request)
    }
}

/// Prefix of a connection error that retrying cannot fix (see `dial::DialError::Misconfigured`).
const MISCONFIGURED: &str = "misconfigured: ";

async fn connect(config: &ClientConfig) -> Result<Client, String> {
    let channel = dial::connect(&config.coordinator, config.tls_ca.as_deref(), Duration::from_secs(5)).await.map_err(
        |e| match e {
            DialError::Misconfigured(detail) => format!("{MISCONFIGURED}{detail}"),
            DialError::Unreachable(detail) => detail,
        },
    )?;
    let token = match &config.token {
        Some(t) => Some(format!("Bearer {t}").parse().map_err(|_| "the token is not valid ASCII".to_string())?),
        None => None,
    };
    Ok(CoordinatorClient::with_interceptor(channel, Auth(token)).max_decoding_message_size(64 << 20))
}

// ---------------------------------------------------------------- engine thread

struct Job {
    attempt: u64,
    task_key: String,
    spec: TaskSpec,
    inputs: HashMap<String, PathBuf>,
    stop: Arc<AtomicBool>,
}

enum FromEngine {
    Metrics(u64, Vec<MetricPoint>),
    Progress(u64, f64, f64),
    /// A snapshot of the checkpoint after `epochs_done` epochs, ready to upload.
    Checkpoint(Snapshot),
    Finished(u64, Result<EngineResult, EngineError>, f64),
}

/// A per-epoch checkpoint taken out of the engine's way (the engine rewrites its file every epoch).
struct Snapshot {
    attempt: u64,
    epochs_done: u32,
    path: PathBuf,
}

impl Snapshot {
    fn discard(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

struct Relay {
    attempt: u64,
    tx: mpsc::UnboundedSender<FromEngine>,
    stop: Arc<AtomicBool>,
    /// Where checkpoint snapshots wait for their upload.
    uploads: PathBuf,
}

impl EngineEvents for Relay {
    fn metrics(&mut self, points: &[MetricPoint]) {
        let _ = self.tx.send(FromEngine::Metrics(self.attempt, points.to_vec()));
    }
    fn progress(&mut self, fraction: f64, throughput: f64) {
        let _ = self.tx.send(FromEngine::Progress(self.attempt, fraction, throughput));
    }
    fn checkpoint(&mut self, epochs_done: u32, path: &Path) {
        // A hard link keeps this epoch's bytes even after the next epoch renames a new file over
        // `path`; a copy where links are not possible.
        let snapshot = self.uploads.join(format!("attempt{}-epoch{epochs_done}.ot", self.attempt));
        let _ = std::fs::remove_file(&snapshot);
        let taken = std::fs::create_dir_all(&self.uploads)
            .and_then(|_| std::fs::hard_link(path, &snapshot).or_else(|_| std::fs::copy(path, &snapshot).map(|_| ())));
        match taken {
            Ok(()) => {
                let _ = self.tx.send(FromEngine::Checkpoint(Snapshot {
                    attempt: self.attempt,
                    epochs_done,
                    path: snapshot,
                }));
            }
            Err(e) => {
                tracing::warn!(checkpoint = %path.display(), error = %e, "cannot snapshot the checkpoint for upload; a retry would start earlier")
            }
        }
    }
    fn should_stop(&mut self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

fn spawn_engine(
    mut engine: Box<dyn Engine + Send>,
    events: mpsc::UnboundedSender<FromEngine>,
    uploads: PathBuf,
) -> std::sync::mpsc::Sender<Job> {
    let (tx, rx) = std::sync::mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            for job in rx {
                let started = Instant::now();
                let mut relay = Relay {
                    attempt: job.attempt,
                    tx: events.clone(),
                    stop: job.stop.clone(),
                    uploads: uploads.clone(),
                };
                let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    engine.run(&job.task_key, &job.spec, &job.inputs, &mut relay)
                }))
                .unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "unknown panic".into());
                    Err(EngineError::transient(format!("engine panicked: {}", what.lines().next().unwrap_or(""))))
                });
                let _ = events.send(FromEngine::Finished(job.attempt, result, started.elapsed().as_secs_f64()));
            }
        })
        .expect("spawn engine thread");
    tx
}

// ---------------------------------------------------------------- artifacts

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
async fn upload(client: &mut Client, name: &str, path: &Path) -> Result<pb::ArtifactRef, String> {
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

// ---------------------------------------------------------------- the loop

struct Running {
    attempt: u64,
    task_id: u64,
    stop: Arc<AtomicBool>,
    seq: u64,
    progress: f64,
    throughput: f64,
    /// Why it was asked to stop, for the `Release` message.
    stop_reason: Option<String>,
    /// Epochs whose checkpoints analyses take: uploaded every one, even when epochs outpace
    /// uploads.
    keep_epochs: Vec<u32>,
}

fn body(worker_id: &str, body: worker_message::Body) -> pb::WorkerMessage {
    pb::WorkerMessage { worker_id: worker_id.to_string(), body: Some(body) }
}

/// Run until the sweep ends, the worker is drained, or the coordinator stays unreachable.
pub async fn run(
    config: ClientConfig,
    engine: Box<dyn Engine + Send>,
    device: String,
    mut shutdown: watch::Receiver<bool>,
) -> Result<ClientExit, ClientError> {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let jobs = spawn_engine(engine, events_tx, config.cache_dir.join("uploads"));
    let mut running: Option<Running> = None;
    // Checkpoint uploads: at most one in flight, at most one waiting (the newest).
    let (uploaded_tx, mut uploaded) = mpsc::unbounded_channel::<(Snapshot, Result<pb::ArtifactRef, String>)>();
    let mut upload_in_flight = false;
    // Waiting in epoch order: at most one that is not kept (the newest), and every kept one.
    let mut waiting: VecDeque<Snapshot> = VecDeque::new();
    // Digests of the snapshots each attempt has stored at the coordinator (a final checkpoint
    // among them is not sent again).
    let mut stored_snapshots: HashMap<u64, HashSet<String>> = HashMap::new();
    // Reports not yet delivered (sent first after every (re)connection).
    let mut outbox: Vec<worker_message::Body> = Vec::new();
    let mut draining = *shutdown.borrow();
    // The newest attempt a lease was received for (heartbeats tell the coordinator).
    let mut newest_lease = 0u64;
    let mut backoff = Duration::from_millis(200);
    let mut unreachable_since: Option<Instant> = None;

    loop {
        if draining && running.is_none() && outbox.is_empty() {
            return Ok(ClientExit::Drained);
        }
        // ---- connect and register
        let attempt_connect = async {
            let mut client = connect(&config).await?;
            let registered = client
                .register(pb::RegisterRequest {
                    protocol_version: freqsweep_proto::PROTOCOL_VERSION,
                    worker_version: env!("CARGO_PKG_VERSION").to_string(),
                    hostname: config.hostname.clone(),
                    capabilities: Some(pb::Capabilities {
                        device: device.clone(),
                        device_memory_bytes: 0,
                        cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
                        libtorch_version: "2.11.0".into(),
                    }),
                    cached_artifacts: cached_digests(&config.cache_dir),
                    features: vec![freqsweep_proto::FEATURE_RESUME_HISTORY.to_string()],
                })
                .await;
            let reply = match registered {
                Ok(reply) => reply,
                Err(s) => {
                    // A plain connection opens before the server speaks: a TLS coordinator dialled
                    // with http:// shows up only here.
                    if let Some(DialError::Misconfigured(detail)) = dial::explain_status(&config.coordinator, &s).await
                    {
                        return Err(format!("{MISCONFIGURED}{detail}"));
                    }
                    return Err(
                        if matches!(
                            s.code(),
                            tonic::Code::Unauthenticated
                                | tonic::Code::FailedPrecondition
                                | tonic::Code::PermissionDenied
                        ) {
                            format!("rejected: {}", s.message())
                        } else {
                            s.message().to_string()
                        },
                    );
                }
            };
            Ok::<_, String>((client, reply.into_inner()))
        };
        let (mut client, registration) = match attempt_connect.await {
            Ok(ok) => ok,
            Err(detail) if detail.starts_with(MISCONFIGURED) => {
                return Err(ClientError::Misconfigured(detail.trim_start_matches(MISCONFIGURED).to_string()))
            }
            Err(detail) if detail.starts_with("rejected: ") => {
                return Err(ClientError::Rejected {
                    url: config.coordinator.clone(),
                    detail: detail.trim_start_matches("rejected: ").to_string(),
                })
            }
            Err(detail) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if let Some(limit) = config.connect_timeout {
                    if since.elapsed() >= limit {
                        return Err(ClientError::Unreachable {
                            url: config.coordinator.clone(),
                            waited: since.elapsed(),
                            detail,
                        });
                    }
                }
                tracing::warn!(coordinator = %config.coordinator, error = %detail, retry_in_ms = backoff.as_millis() as u64, "coordinator unreachable");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    // Once draining, a dropped sender would make `changed` ready forever: stop asking.
                    _ = shutdown.changed(), if !draining => { draining = true; if let Some(r) = &mut running { request_stop(r, "draining"); } }
                }
                backoff = (backoff * 2).min(config.max_backoff);
                continue;
            }
        };
        unreachable_since = None;
        backoff = Duration::from_millis(200);
        let worker_id = registration.worker_id.clone();
        let heartbeat_every = Duration::from_millis(u64::from(registration.heartbeat_interval_ms.max(100)));
        tracing::info!(worker = %worker_id, coordinator = %config.coordinator, sweep = %registration.sweep_id, "registered");

        let (out_tx, out_rx) = mpsc::channel::<pb::WorkerMessage>(1024);
        // The session is ours only with the id and key this registration returned.
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(out_rx));
        for (key, value) in [
            (freqsweep_proto::SESSION_WORKER_METADATA, &registration.worker_id),
            (freqsweep_proto::SESSION_KEY_METADATA, &registration.session_key),
        ] {
            match value.parse() {
                Ok(v) => {
                    request.metadata_mut().insert(key, v);
                }
                Err(_) => {
                    return Err(ClientError::Rejected {
                        url: config.coordinator.clone(),
                        detail: format!("the coordinator sent a {key} that is not ASCII"),
                    })
                }
            }
        }
        let mut inbound = match client.session(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                tracing::warn!(error = %status.message(), "session refused; reconnecting");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let send = |b: worker_message::Body| out_tx.try_send(body(&worker_id, b)).is_ok();
        // Deliver what an earlier session could not.
        outbox.retain(|b| !send(b.clone()));
        let mut want_lease = running.is_none() && !draining;
        let mut lease_at: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
        let mut heartbeat = tokio::time::interval(heartbeat_every);

        let session_end: Result<Option<ClientExit>, String> = loop {
            if want_lease && running.is_none() && !draining {
                if let Some(at) = lease_at {
                    if tokio::time::Instant::now() >= at {
                        send(worker_message::Body::LeaseRequest(pb::LeaseRequest { slots: 1 }));
                        want_lease = false;
                        lease_at = None;
                    }
                }
            }
            if draining && running.is_none() {
                break Ok(Some(ClientExit::Drained));
            }
            let sleep_until = lease_at
                .filter(|_| want_lease)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                message = inbound.next() => {
                    let message = match message {
                        Some(Ok(m)) => m,
                        Some(Err(status)) => break Err(status.message().to_string()),
                        None => break Err("the coordinator closed the session".into()),
                    };
                    match message.body {
                        Some(coordinator_message::Body::Lease(lease)) => {
                            newest_lease = newest_lease.max(lease.attempt_id);
                            if running.is_some() || draining {
                                send(worker_message::Body::Release(pb::Release { attempt_id: lease.attempt_id, reason: "busy or draining".into() }));
                                continue;
                            }
                            match prepare(&mut client, &config, &lease).await {
                                Ok((spec, inputs)) => {
                                    let stop = Arc::new(AtomicBool::new(false));
                                    tracing::info!(task = lease.task_id, attempt = lease.attempt_id, kind = spec.kind().as_str(), "leased");
                                    let keep_epochs = spec.kept_epochs().to_vec();
                                    running = Some(Running { attempt: lease.attempt_id, task_id: lease.task_id, stop: stop.clone(), seq: 0, progress: 0.0, throughput: 0.0, stop_reason: None, keep_epochs });
                                    let job = Job { attempt: lease.attempt_id, task_key: format!("task-{}", lease.task_id), spec, inputs, stop };
                                    if jobs.send(job).is_err() {
                                        return Err(ClientError::Local("the engine thread has stopped".into()));
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(task = lease.task_id, attempt = lease.attempt_id, error = %e.message, "task could not start");
                                    send(worker_message::Body::Failure(pb::TaskFailure { attempt_id: lease.attempt_id, error: e.message, retryable: e.retryable }));
                                    want_lease = true;
                                    lease_at = Some(tokio::time::Instant::now());
                                }
                            }
                        }
                        Some(coordinator_message::Body::Cancel(cancel)) => {
                            if let Some(r) = running.as_mut().filter(|r| r.attempt == cancel.attempt_id) {
                                tracing::info!(attempt = cancel.attempt_id, reason = %cancel.reason, "cancelled");
                                request_stop(r, &format!("cancelled: {}", cancel.reason));
                            }
                        }
                        Some(coordinator_message::Body::NoWork(no_work)) => {
                            want_lease = true;
                            lease_at = Some(tokio::time::Instant::now() + Duration::from_millis(u64::from(no_work.retry_after_ms.max(50))));
                        }
                        Some(coordinator_message::Body::Ack(ack)) if !ack.accepted => {
                            tracing::debug!(attempt = ack.attempt_id, "report not accepted (stale attempt)");
                        }
                        Some(coordinator_message::Body::SweepDone(_)) => {
                            if let Some(r) = &mut running {
                                request_stop(r, "sweep finished");
                            } else {
                                break Ok(Some(ClientExit::SweepDone));
                            }
                        }
                        Some(coordinator_message::Body::Ack(_)) | None => {}
                    }
                }
                Some(event) = events.recv() => match event {
                    FromEngine::Metrics(attempt, points) => {
                        if let Some(r) = running.as_mut().filter(|r| r.attempt == attempt) {
                            for points in split_batches(points.iter().map(to_wire), METRIC_BATCH_BYTES) {
                                let batch = pb::MetricBatch { attempt_id: attempt, seq: r.seq, points };
                                r.seq += 1;
                                let b = worker_message::Body::Metrics(batch);
                                if !send(b.clone()) { outbox.push(b); }
                            }
                        }
                    }
                    FromEngine::Progress(attempt, fraction, throughput) => {
                        if let Some(r) = running.as_mut().filter(|r| r.attempt == attempt) {
                            r.progress = fraction;
                            r.throughput = throughput;
                        }
                    }
                    FromEngine::Checkpoint(snapshot) => {
                        let keep = running.as_ref().map_or(&[][..], |r| r.keep_epochs.as_slice());
                        // A newer snapshot supersedes a waiting one nobody else needs.
                        let (kept, superseded): (VecDeque<Snapshot>, VecDeque<Snapshot>) =
                            waiting.drain(..).partition(|s| s.attempt == snapshot.attempt && keep.contains(&s.epochs_done));
                        superseded.into_iter().for_each(Snapshot::discard);
                        waiting = kept;
                        waiting.push_back(snapshot);
                        if !upload_in_flight {
                            upload_in_flight = start_upload(&client, waiting.pop_front(), &uploaded_tx);
                        }
                    }
                    FromEngine::Finished(attempt, result, seconds) => {
                        // Settle the checkpoint uploads first. Stopped (drained or cancelled) or
                        // failed in a way a retry may cure: announce the newest checkpoint before
                        // the report, so the next attempt resumes from it (after the report this
                        // attempt is stale and its checkpoint would be ignored). Done: the final
                        // checkpoint goes with the result, and is usually the last epoch's
                        // snapshot, byte for byte: what the coordinator already holds is not
                        // sent again.
                        let resumable = match &result {
                            Ok(EngineResult::Stopped) => true,
                            Ok(EngineResult::Done { .. }) => false,
                            Err(e) => e.retryable,
                        };
                        let mut settled = Vec::new();
                        if upload_in_flight {
                            if let Ok(Some(done)) = tokio::time::timeout(Duration::from_secs(120), uploaded.recv()).await {
                                settled.push(done);
                            }
                            upload_in_flight = false;
                        }
                        let keep = running.as_ref().map_or(Vec::new(), |r| r.keep_epochs.clone());
                        while let Some(snapshot) = waiting.pop_front() {
                            // Kept epochs go up even after a finished run: analyses wait for them.
                            if resumable || keep.contains(&snapshot.epochs_done) {
                                let result = upload(&mut client, CHECKPOINT_ARTIFACT, &snapshot.path).await;
                                settled.push((snapshot, result));
                            } else {
                                snapshot.discard();
                            }
                        }
                        let mut stored = stored_snapshots.remove(&attempt).unwrap_or_default();
                        for (snapshot, result) in settled {
                            if let Ok(artifact) = result {
                                stored.insert(artifact.digest.clone());
                                if (resumable || keep.contains(&snapshot.epochs_done)) && snapshot.attempt == attempt {
                                    let b = checkpoint_saved(&snapshot, artifact);
                                    if !send(b.clone()) { outbox.push(b); }
                                }
                            }
                            snapshot.discard();
                        }
                        let finished = running.take().filter(|r| r.attempt == attempt);
                        let reason = finished.as_ref().and_then(|r| r.stop_reason.clone()).unwrap_or_else(|| "stopped".into());
                        let task_id = finished.as_ref().map_or(0, |r| r.task_id);
                        let report = report(&mut client, &config.cache_dir, &stored, attempt, task_id, result, seconds, reason).await;
                        if !send(report.clone()) { outbox.push(report); }
                        want_lease = !draining;
                        lease_at = Some(tokio::time::Instant::now());
                    }
                },
                Some((snapshot, result)) = uploaded.recv() => {
                    let current = running.as_ref().is_some_and(|r| r.attempt == snapshot.attempt);
                    match result {
                        Ok(artifact) if current => {
                            stored_snapshots.entry(snapshot.attempt).or_default().insert(artifact.digest.clone());
                            let b = checkpoint_saved(&snapshot, artifact);
                            if !send(b.clone()) { outbox.push(b); }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(attempt = snapshot.attempt, epochs_done = snapshot.epochs_done, error = %e, "checkpoint upload failed; the next epoch's will be tried"),
                    }
                    snapshot.discard();
                    upload_in_flight = start_upload(&client, waiting.pop_front(), &uploaded_tx);
                }
                _ = heartbeat.tick() => {
                    // What this worker runs or still has to report: the coordinator re-queues
                    // an attempt of ours it does not see here, and cancels one it no longer holds.
                    let (mut attempts, progress, throughput) = running.as_ref().map_or((vec![], 0.0, 0.0), |r| (vec![r.attempt], r.progress, r.throughput));
                    attempts.extend(outbox.iter().filter_map(report_attempt));
                    send(worker_message::Body::Heartbeat(pb::Heartbeat { running_attempts: attempts, progress, throughput, newest_lease }));
                }
                _ = tokio::time::sleep_until(sleep_until) => {}
                // Not once draining: the sender is usually dropped after it said so, and a closed
                // channel is always ready (the loop would spin until the task stops).
                changed = shutdown.changed(), if !draining => {
                    if changed.is_err() || *shutdown.borrow() {
                        draining = true;
                        match &mut running {
                            Some(r) => { tracing::info!(attempt = r.attempt, "draining: stopping the running task"); request_stop(r, "worker draining"); }
                            None => break Ok(Some(ClientExit::Drained)),
                        }
                    }
                }
            }
        };
        // Let the stream flush what was queued before the session ends.
        drop(out_tx);
        match session_end {
            Ok(Some(exit)) => {
                // Give the transport a moment to deliver the last messages (Release, results).
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Ok(exit);
            }
            Ok(None) => {}
            Err(detail) => {
                tracing::warn!(error = %detail, "session lost; reconnecting");
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

/// The attempt an undelivered report is about (a result, failure or release still owed).
fn report_attempt(body: &worker_message::Body) -> Option<u64> {
    match body {
        worker_message::Body::Result(r) => Some(r.attempt_id),
        worker_message::Body::Failure(f) => Some(f.attempt_id),
        worker_message::Body::Release(r) => Some(r.attempt_id),
        worker_message::Body::Heartbeat(_)
        | worker_message::Body::LeaseRequest(_)
        | worker_message::Body::Metrics(_)
        | worker_message::Body::Checkpoint(_) => None,
    }
}

fn checkpoint_saved(snapshot: &Snapshot, artifact: pb::ArtifactRef) -> worker_message::Body {
    tracing::debug!(attempt = snapshot.attempt, epochs_done = snapshot.epochs_done, digest = %artifact.digest, "checkpoint uploaded");
    worker_message::Body::Checkpoint(pb::CheckpointSaved {
        attempt_id: snapshot.attempt,
        artifact: Some(artifact),
        epochs_done: snapshot.epochs_done,
    })
}

/// Upload `snapshot` in the background (the loop keeps answering the stream meanwhile); the
/// outcome comes back on `done`. Returns whether an upload started.
fn start_upload(
    client: &Client,
    snapshot: Option<Snapshot>,
    done: &mpsc::UnboundedSender<(Snapshot, Result<pb::ArtifactRef, String>)>,
) -> bool {
    let Some(snapshot) = snapshot else { return false };
    let mut client = client.clone();
    let done = done.clone();
    tokio::spawn(async move {
        let result = upload(&mut client, CHECKPOINT_ARTIFACT, &snapshot.path).await;
        let _ = done.send((snapshot, result));
    });
    true
}

fn request_stop(running: &mut Running, reason: &str) {
    running.stop.store(true, Ordering::Relaxed);
    running.stop_reason.get_or_insert_with(|| reason.to_string());
}

/// Parse the task and fetch its inputs.
async fn prepare(
    client: &mut Client,
    config: &ClientConfig,
    lease: &pb::Lease,
) -> Result<(TaskSpec, HashMap<String, PathBuf>), EngineError> {
    let spec: TaskSpec = serde_json::from_str(&lease.task_json).map_err(|e| {
        EngineError::fatal(format!("task {} is not a task this worker understands: {e}", lease.task_id))
    })?;
    let mut inputs = HashMap::new();
    for artifact in &lease.inputs {
        let path = fetch_input(client, &config.cache_dir, artifact).await.map_err(EngineError::transient)?;
        inputs.insert(artifact.name.clone(), path);
    }
    Ok((spec, inputs))
}

/// Turn an engine result into the report for the coordinator (uploading outputs first, except
/// those whose digest is in `stored`: the coordinator holds them already).
#[allow(clippy::too_many_arguments)]
async fn report(
    client: &mut Client,
    cache: &Path,
    stored: &HashSet<String>,
    attempt: u64,
    task_id: u64,
    result: Result<EngineResult, EngineError>,
    seconds: f64,
    stop_reason: String,
) -> worker_message::Body {
    match result {
        Ok(EngineResult::Done { outcome, artifacts }) => {
            let mut outputs = Vec::new();
            for (name, path) in &artifacts {
                let sent = match describe(name, path) {
                    Ok(reference) if stored.contains(&reference.digest) => Ok(reference),
                    Ok(reference) => send_file(client, &reference, path).await.map(|()| reference),
                    Err(e) => Err(e),
                };
                match sent {
                    Ok(reference) => {
                        keep_in_cache(cache, path, &reference);
                        outputs.push(reference);
                    }
                    Err(e) => {
                        return worker_message::Body::Failure(pb::TaskFailure {
                            attempt_id: attempt,
                            error: e,
                            retryable: true,
                        })
                    }
                }
            }
            tracing::info!(task = task_id, attempt, seconds, "done");
            worker_message::Body::Result(pb::TaskResult {
                attempt_id: attempt,
                result_json: serde_json::to_string(&outcome).expect("outcomes serialise"),
                outputs,
                seconds,
            })
        }
        Ok(EngineResult::Stopped) => {
            tracing::info!(task = task_id, attempt, reason = %stop_reason, "released");
            worker_message::Body::Release(pb::Release { attempt_id: attempt, reason: stop_reason })
        }
        Err(e) => {
            tracing::warn!(task = task_id, attempt, error = %e.message, retryable = e.retryable, "failed");
            worker_message::Body::Failure(pb::TaskFailure {
                attempt_id: attempt,
                error: e.message,
                retryable: e.retryable,
            })
        }
    }
}

/// Largest metric batch sent as one message: far below the coordinator's 64 MiB message limit
/// (an epoch of a many-class model's confusion matrix is millions of points).
const METRIC_BATCH_BYTES: usize = 4 << 20;

/// Points in batches of at most `max_bytes` encoded (a single larger point goes alone).
fn split_batches(points: impl Iterator<Item = pb::MetricPoint>, max_bytes: usize) -> Vec<Vec<pb::MetricPoint>> {
    use prost::Message;
    let mut batches: Vec<Vec<pb::MetricPoint>> = Vec::new();
    let mut size = 0;
    for point in points {
        // A repeated field's element costs its length prefix and tag as well (≤ 11 bytes).
        let cost = point.encoded_len() + 11;
        match batches.last_mut() {
            Some(batch) if size + cost <= max_bytes => batch.push(point),
            _ => {
                batches.push(vec![point]);
                size = 0;
            }
        }
        size += cost;
    }
    batches
}

fn to_wire(p: &MetricPoint) -> pb::MetricPoint {
    pb::MetricPoint {
        name: p.name.clone(),
        epoch: p.epoch,
        step: p.step,
        test_set: p.test_set.clone(),
        class_index: p.class_index,
        value: p.value,
    }
}

/// Digests of the artifacts already in the cache (sent at registration, for locality).
fn cached_digests(cache: &Path) -> Vec<String> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn metric_batches_stay_under_the_limit_and_keep_every_point_in_order() {
        let points: Vec<pb::MetricPoint> = (0..50_000u32)
            .map(|i| pb::MetricPoint {
                name: "confusion".into(),
                epoch: 1.5,
                step: u64::from(i),
                test_set: format!("band:{}", i % 7),
                class_index: i as i32 - 1,
                value: f64::from(i),
            })
            .collect();
        let limit = 64 << 10;
        let batches = split_batches(points.clone().into_iter(), limit);
        assert!(batches.len() > 10, "{} batches", batches.len());
        for points in &batches {
            let message = pb::MetricBatch { attempt_id: u64::MAX, seq: u64::MAX, points: points.clone() };
            // The batch's own fields are the only overhead beyond the accounted points.
            assert!(message.encoded_len() <= limit + 32, "{} bytes", message.encoded_len());
        }
        let flat: Vec<pb::MetricPoint> = batches.into_iter().flatten().collect();
        assert_eq!(flat, points);
        assert!(split_batches(std::iter::empty(), limit).is_empty(), "no points, no message");
    }
}
