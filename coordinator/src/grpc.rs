//! The gRPC shell, in the style of Ballista's `scheduler_server/grpc.rs`: each RPC destructures its
//! request, converts wire types into the driver's domain types (here and only here: [`from_proto`],
//! [`to_proto`]), calls the [`Driver`](crate::driver::Driver) under its lock and maps errors to a
//! `Status`. Nothing here decides what runs where or whether a report is accepted.
//!
//! A session is opened with the worker id and the session key `Register` returned, in the
//! `freqsweep-worker` and `freqsweep-session-key` metadata of the `Session` call; the stream of
//! coordinator messages ends with an `ABORTED` status when the driver closes the session (an
//! expired or non-reading worker), which tells the worker to register again.

use crate::artifacts::ArtifactRef;
use crate::driver::{FromWorker, Panicked, Registration, Shared, ToWorker, SESSION_QUEUE};
use crate::scheduler::AttemptId;
use freqsweep_common::task::MetricPoint;
use freqsweep_proto::v1::coordinator_server::{Coordinator, CoordinatorServer};
use freqsweep_proto::v1::{self as pb, coordinator_message, worker_message};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// Metadata of the `Session` call naming the worker id `Register` gave.
pub const WORKER_METADATA: &str = freqsweep_proto::SESSION_WORKER_METADATA;
/// Metadata of the `Session` call carrying the session key `Register` gave.
pub const SESSION_KEY_METADATA: &str = freqsweep_proto::SESSION_KEY_METADATA;

// ---------------------------------------------------------------- conversions

fn artifact_from_proto(a: pb::ArtifactRef) -> ArtifactRef {
    // Quoted in refusals and logs; a real name or digest is short and plain, so this changes none.
    ArtifactRef { name: peer_text(&a.name, NAME_BYTES), digest: peer_text(&a.digest, NAME_BYTES), size: a.size }
}

fn artifact_to_proto(a: ArtifactRef) -> pb::ArtifactRef {
    pb::ArtifactRef { name: a.name, digest: a.digest, size: a.size }
}

fn point_from_proto(p: pb::MetricPoint) -> MetricPoint {
    MetricPoint {
        name: peer_text(&p.name, NAME_BYTES),
        epoch: p.epoch,
        step: p.step,
        test_set: peer_text(&p.test_set, NAME_BYTES),
        class_index: p.class_index,
        value: p.value,
    }
}

/// A worker's message in domain types (`None`: a message without a body, ignored).
pub fn from_proto(message: pb::WorkerMessage) -> Option<FromWorker> {
    Some(match message.body? {
        worker_message::Body::Heartbeat(h) => FromWorker::Heartbeat {
            running: h.running_attempts.into_iter().map(AttemptId).collect(),
            newest_lease: AttemptId(h.newest_lease),
            throughput: h.throughput,
        },
        worker_message::Body::LeaseRequest(r) => FromWorker::LeaseRequest { slots: r.slots },
        worker_message::Body::Metrics(b) => FromWorker::Metrics {
            attempt: AttemptId(b.attempt_id),
            seq: b.seq,
            points: b.points.into_iter().map(point_from_proto).collect(),
        },
        worker_message::Body::Result(r) => FromWorker::Result {
            attempt: AttemptId(r.attempt_id),
            result_json: r.result_json,
            outputs: r.outputs.into_iter().map(artifact_from_proto).collect(),
        },
        worker_message::Body::Failure(f) => FromWorker::Failure {
            attempt: AttemptId(f.attempt_id),
            error: peer_text(&f.error, MESSAGE_BYTES),
            retryable: f.retryable,
        },
        worker_message::Body::Release(r) => {
            FromWorker::Release { attempt: AttemptId(r.attempt_id), reason: peer_text(&r.reason, MESSAGE_BYTES) }
        }
        worker_message::Body::Checkpoint(c) => FromWorker::Checkpoint {
            attempt: AttemptId(c.attempt_id),
            artifact: c.artifact.map(artifact_from_proto),
            epochs_done: c.epochs_done,
        },
    })
}

/// A message for a worker on the wire; a closed session becomes the stream's final `ABORTED`.
pub fn to_proto(message: ToWorker) -> Result<pb::CoordinatorMessage, Status> {
    let body = match message {
        ToWorker::Lease { task, attempt, task_json, lease_timeout_ms, inputs } => {
            coordinator_message::Body::Lease(pb::Lease {
                task_id: task.0,
                attempt_id: attempt.0,
                task_json,
                lease_timeout_ms,
                inputs: inputs.into_iter().map(artifact_to_proto).collect(),
            })
        }
        ToWorker::Cancel { attempt, reason } => {
            coordinator_message::Body::Cancel(pb::Cancel { attempt_id: attempt.0, reason })
        }
        ToWorker::NoWork { retry_after } => coordinator_message::Body::NoWork(pb::NoWork {
            retry_after_ms: retry_after.min(u64::from(u32::MAX)) as u32,
        }),
        ToWorker::Ack { attempt, accepted } => {
            coordinator_message::Body::Ack(pb::Ack { attempt_id: attempt.0, accepted })
        }
        ToWorker::SweepDone => coordinator_message::Body::SweepDone(pb::SweepDone {}),
        ToWorker::Closed { reason } => return Err(Status::aborted(reason)),
    };
    Ok(pb::CoordinatorMessage { body: Some(body) })
}

/// A string a peer sent, made safe to log and store: at most `max` bytes (cut at a character
/// boundary, `…` appended) and every control character (newlines, ANSI escapes) written as its
/// escape, so a peer cannot forge log lines or fill the store.
pub fn peer_text(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max) + 3);
    for c in s.chars() {
        let piece: String = if c.is_control() { c.escape_default().collect() } else { c.to_string() };
        if out.len() + piece.len() > max {
            out.push('…');
            break;
        }
        out.push_str(&piece);
    }
    out
}

/// Longest hostname, device or version a worker may register with.
const NAME_BYTES: usize = 256;
/// Longest error or release reason kept from a worker.
pub(crate) const MESSAGE_BYTES: usize = 4096;

fn internal(p: Panicked) -> Status {
    Status::internal(format!("coordinator error while handling the request: {}", p.0))
}

// ---------------------------------------------------------------- the service

/// Checks the bearer token on every call.
#[derive(Clone)]
pub struct Auth(Option<String>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let authenticated = |request: Request<()>| {
            // The connection has proved itself: only the idle bound applies to it now.
            if let Some(conn) = crate::conn::ConnInfo::of(&request) {
                conn.authenticated();
            }
            Ok(request)
        };
        let Some(expected) = &self.0 else { return authenticated(request) };
        match request.metadata().get("authorization").and_then(|v| v.to_str().ok()) {
            Some(got) if crate::secret::constant_time_eq(got.as_bytes(), expected.as_bytes()) => authenticated(request),
            Some(_) => Err(Status::unauthenticated("wrong token (check FREQSWEEP_TOKEN)")),
            None => Err(Status::unauthenticated("missing token (set FREQSWEEP_TOKEN)")),
        }
    }
}

/// The tonic service.
#[derive(Clone)]
pub struct Service(pub Arc<Shared>);

impl Service {
    /// The service wrapped with the token check.
    pub fn into_server(self) -> tonic::service::interceptor::InterceptedService<CoordinatorServer<Service>, Auth> {
        let token = self.0.config.token.clone().map(|t| format!("Bearer {t}"));
        tonic::service::interceptor::InterceptedService::new(
            CoordinatorServer::new(self).max_decoding_message_size(64 << 20),
            Auth(token),
        )
    }
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Coordinator for Service {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterReply>, Status> {
        let r = request.into_inner();
        if r.protocol_version != freqsweep_proto::PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "protocol version {} but this coordinator speaks {}",
                r.protocol_version,
                freqsweep_proto::PROTOCOL_VERSION
            )));
        }
        let registration = Registration {
            hostname: peer_text(&r.hostname, NAME_BYTES),
            device: peer_text(&r.capabilities.map(|c| c.device).unwrap_or_default(), NAME_BYTES),
            version: peer_text(&r.worker_version, NAME_BYTES),
            cached_artifacts: r.cached_artifacts,
            resumes_history: r.features.iter().any(|f| f == freqsweep_proto::FEATURE_RESUME_HISTORY),
        };
        let registered = self.0.register(registration).map_err(internal)?;
        Ok(Response::new(pb::RegisterReply {
            worker_id: crate::driver::worker_name(registered.worker),
            heartbeat_interval_ms: registered.heartbeat_interval_ms,
            lease_timeout_ms: registered.lease_timeout_ms,
            sweep_id: registered.sweep_id,
            session_key: registered.session_key,
        }))
    }

    type SessionStream = Boxed<pb::CoordinatorMessage>;

    async fn session(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let text = |key: &str| request.metadata().get(key).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let (worker, key) = (text(WORKER_METADATA), text(SESSION_KEY_METADATA));
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        let session = self.0.attach(&worker, &key, tx).map_err(internal)?.map_err(Status::failed_precondition)?;
        let mut inbound = request.into_inner();
        let shared = self.0.clone();
        tokio::spawn(async move {
            while let Some(next) = inbound.next().await {
                let message = match next {
                    Ok(message) => message,
                    Err(status) => {
                        // Too large or malformed: the worker is told why, not just cut off.
                        let why = format!(
                            "a message of this session could not be read ({:?}: {}); the session is closed",
                            status.code(),
                            peer_text(status.message(), MESSAGE_BYTES)
                        );
                        let _ = shared.close_session(session, why);
                        break;
                    }
                };
                let Some(message) = from_proto(message) else { continue };
                // A panic is logged by `with` and costs this message only.
                if let Ok(false) = shared.on_message(session, message) {
                    break;
                }
            }
            let _ = shared.detach(session);
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx).map(to_proto))))
    }

    async fn upload_artifact(
        &self,
        request: Request<Streaming<pb::ArtifactChunk>>,
    ) -> Result<Response<pb::UploadReply>, Status> {
        let shared = self.0.clone();
        let mut chunks = request.into_inner();
        let first = chunks.next().await.ok_or_else(|| Status::invalid_argument("empty upload"))??;
        let reference = first
            .artifact
            .clone()
            .ok_or_else(|| Status::invalid_argument("first chunk carries no artifact reference"))?;
        if shared.artifacts.contains(&reference.digest) {
            // Already stored (content-addressed): drain and accept.
            while chunks.next().await.is_some() {}
            return Ok(Response::new(pb::UploadReply { artifact: Some(reference) }));
        }
        let mut upload = shared
            .artifacts
            .begin(&reference.name, &reference.digest, reference.size)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut next = Some(first);
        while let Some(chunk) = next.take() {
            if let Err(e) = upload.write(chunk.offset, &chunk.data).await {
                upload.abort().await;
                return Err(Status::invalid_argument(e.to_string()));
            }
            match chunks.next().await {
                Some(Ok(c)) => next = Some(c),
                Some(Err(status)) => {
                    upload.abort().await;
                    return Err(status);
                }
                None => {}
            }
        }
        upload.finish(&shared.artifacts).await.map_err(|e| Status::data_loss(e.to_string()))?;
        shared.counters.artifact_bytes_received.fetch_add(reference.size, Ordering::Relaxed);
        Ok(Response::new(pb::UploadReply { artifact: Some(reference) }))
    }

    type DownloadArtifactStream = Boxed<pb::ArtifactChunk>;

    async fn download_artifact(
        &self,
        request: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        let r = request.into_inner();
        let chunks =
            self.0.artifacts.read_chunks(&r.digest, r.offset).await.map_err(|e| Status::not_found(e.to_string()))?;
        let counters = self.0.counters.clone();
        let mut offset = r.offset;
        // Read as the network takes them; a download cut short is retried from its offset (and
        // counted again).
        let stream = tokio_stream::wrappers::ReceiverStream::new(chunks).map(move |chunk| {
            let data = chunk.map_err(|e| Status::data_loss(e.to_string()))?;
            let message = pb::ArtifactChunk { artifact: None, offset, data };
            offset += message.data.len() as u64;
            counters.artifact_bytes_sent.fetch_add(message.data.len() as u64, Ordering::Relaxed);
            Ok(message)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        let snap = self.0.try_snapshot().map_err(internal)?;
        let workers = snap
            .workers
            .into_iter()
            .map(|w| pb::WorkerStatus {
                worker_id: w.id,
                hostname: w.hostname,
                device: w.device,
                running_tasks: w.running.iter().map(|t| t.id).collect(),
                throughput: w.throughput,
                last_seen_ms_ago: (w.last_seen_seconds * 1000.0) as u64,
                measured: w.measured.into_iter().collect(),
            })
            .collect();
        Ok(Response::new(pb::StatusReply {
            sweep_id: snap.sweep,
            tasks_by_state: snap.tasks_by_state.into_iter().collect(),
            workers,
            eta_seconds: snap.eta_seconds.unwrap_or(-1.0),
            metric_points: snap.metric_points,
        }))
    }
}

/// Serve on `listener` until `shutdown` flips; the driver's timer runs meanwhile.
pub async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let timer = tokio::spawn(shared.clone().run_timer());
    // Most descriptors go to workers; the HTTP port has the rest (`http::serve`).
    let limits = shared.config.connection_limits(0.75);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &shared.config.tls {
        builder = match builder.tls_config(tls.server_config()) {
            Ok(b) => b,
            Err(e) => {
                timer.abort();
                return Err(e);
            }
        };
    }
    let result = builder
        .add_service(Service(shared).into_server())
        .serve_with_incoming_shutdown(crate::conn::Incoming::new(listener, limits), async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    timer.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_strings_are_bounded_and_cannot_forge_log_lines() {
        let forged = "node1\n2026-12-01T00:00:00Z  INFO worker joined worker=w9\u{1b}[31m";
        let safe = peer_text(forged, NAME_BYTES);
        assert!(!safe.chars().any(char::is_control), "{safe:?}");
        assert!(safe.starts_with("node1\\n2026"), "{safe:?}");
        let huge = "é".repeat(15_000_000);
        let cut = peer_text(&huge, NAME_BYTES);
        assert!(cut.len() <= NAME_BYTES + '…'.len_utf8() && cut.ends_with('…'), "{} bytes", cut.len());
        let message = pb::WorkerMessage {
            worker_id: String::new(),
            body: Some(worker_message::Body::Failure(pb::TaskFailure {
                attempt_id: 3,
                error: "a\nb".repeat(10_000),
                retryable: true,
            })),
        };
        let Some(FromWorker::Failure { error, .. }) = from_proto(message) else { panic!("a failure") };
        assert!(error.len() <= MESSAGE_BYTES + 3 && !error.contains('\n'), "{} bytes", error.len());
    }
}
