//! The worker's client loop against a scripted fake coordinator on loopback (a real tonic server):
//! registration with the token, leases, input download with digest check, metric batches with
//! sequence numbers, output upload before the result, failures marked non-retryable, heartbeats
//! while a task is busy, drain on shutdown, per-epoch checkpoints uploaded and announced (before
//! the release when draining), and the one-line errors for a wrong token and an unreachable
//! coordinator. The engine is a fake, so this tests the protocol, not libtorch.

use freqsweep_common::digest;
use freqsweep_common::task::{DatasetSource, HeatmapOutcome, MetricPoint, ModelSource, TaskOutcome, TaskSpec};
use freqsweep_proto::v1::coordinator_server::{Coordinator, CoordinatorServer};
use freqsweep_proto::v1::{self as pb, coordinator_message, worker_message};
use freqsweep_worker::client::{self, ClientConfig, ClientError, ClientExit};
use freqsweep_worker::engine::{Engine, EngineError, EngineEvents, EngineResult};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

const TOKEN: &str = "s3cret";
const INPUT: &[u8] = b"the input checkpoint";

/// Task 1's output: more than two 1 MiB upload chunks, not a whole number of them.
fn output_bytes() -> Vec<u8> {
    (0..(2 << 20) + 12_345u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect()
}

#[derive(Default)]
struct Seen {
    registrations: usize,
    heartbeats_while_busy: usize,
    metric_seqs: Vec<u64>,
    metric_points: usize,
    uploads: Vec<(String, Vec<u8>)>,
    results: Vec<pb::TaskResult>,
    failures: Vec<pb::TaskFailure>,
    releases: Vec<pb::Release>,
    checkpoints: Vec<pb::CheckpointSaved>,
    /// Kinds of the session messages that matter for ordering, as they arrived.
    order: Vec<&'static str>,
    features: Vec<String>,
}

struct Fake {
    leases: Mutex<VecDeque<pb::Lease>>,
    seen: Arc<Mutex<Seen>>,
}

fn authorised<T>(request: &Request<T>) -> Result<(), Status> {
    match request.metadata().get("authorization").and_then(|v| v.to_str().ok()) {
        Some(v) if v == format!("Bearer {TOKEN}") => Ok(()),
        _ => Err(Status::unauthenticated("wrong or missing token")),
    }
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The service handle (a newtype: the orphan rule forbids implementing the trait on `Arc<Fake>`).
#[derive(Clone)]
struct FakeService(Arc<Fake>);

#[tonic::async_trait]
impl Coordinator for FakeService {
    async fn register(&self, request: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterReply>, Status> {
        authorised(&request)?;
        let mut seen = self.0.seen.lock().unwrap();
        seen.registrations += 1;
        seen.features = request.get_ref().features.clone();
        Ok(Response::new(pb::RegisterReply {
            worker_id: "w1".into(),
            heartbeat_interval_ms: 100,
            lease_timeout_ms: 5_000,
            sweep_id: "test".into(),
            session_key: "key-1".into(),
        }))
    }

    type SessionStream = Boxed<pb::CoordinatorMessage>;

    async fn session(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        authorised(&request)?;
        // The session is opened with the id and key the registration gave.
        let text = |key: &str| request.metadata().get(key).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let presented = (text(freqsweep_proto::SESSION_WORKER_METADATA), text(freqsweep_proto::SESSION_KEY_METADATA));
        if presented != ("w1".to_string(), "key-1".to_string()) {
            return Err(Status::failed_precondition(format!("session opened with {presented:?}")));
        }
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let fake = self.0.clone();
        tokio::spawn(async move {
            let mut busy = false;
            while let Some(Ok(message)) = inbound.next().await {
                let reply = |body| pb::CoordinatorMessage { body: Some(body) };
                let mut seen = fake.seen.lock().unwrap();
                match message.body {
                    Some(worker_message::Body::LeaseRequest(_)) => {
                        let next = fake.leases.lock().unwrap().pop_front();
                        busy = next.is_some();
                        let body = match next {
                            Some(lease) => coordinator_message::Body::Lease(lease),
                            None => coordinator_message::Body::SweepDone(pb::SweepDone {}),
                        };
                        let _ = tx.try_send(Ok(reply(body)));
                    }
                    Some(worker_message::Body::Heartbeat(h)) if busy && !h.running_attempts.is_empty() => {
                        seen.heartbeats_while_busy += 1;
                    }
                    Some(worker_message::Body::Metrics(batch)) => {
                        seen.metric_seqs.push(batch.seq);
                        seen.metric_points += batch.points.len();
                    }
                    Some(worker_message::Body::Result(result)) => {
                        busy = false;
                        seen.results.push(result);
                    }
                    Some(worker_message::Body::Failure(failure)) => {
                        busy = false;
                        seen.order.push("failure");
                        seen.failures.push(failure);
                    }
                    Some(worker_message::Body::Release(release)) => {
                        busy = false;
                        seen.order.push("release");
                        seen.releases.push(release);
                    }
                    Some(worker_message::Body::Checkpoint(checkpoint)) => {
                        seen.order.push("checkpoint");
                        seen.checkpoints.push(checkpoint);
                    }
                    Some(worker_message::Body::Heartbeat(_)) | None => {}
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn upload_artifact(
        &self,
        request: Request<Streaming<pb::ArtifactChunk>>,
    ) -> Result<Response<pb::UploadReply>, Status> {
        authorised(&request)?;
        let mut chunks = request.into_inner();
        let mut reference = None;
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            if reference.is_none() {
                reference = chunk.artifact.clone();
            }
            bytes.extend_from_slice(&chunk.data);
        }
        let reference = reference.ok_or_else(|| Status::invalid_argument("no artifact reference"))?;
        if digest::of_bytes(&bytes) != reference.digest {
            return Err(Status::data_loss("digest mismatch"));
        }
        self.0.seen.lock().unwrap().uploads.push((reference.digest.clone(), bytes));
        Ok(Response::new(pb::UploadReply { artifact: Some(reference) }))
    }

    type DownloadArtifactStream = Boxed<pb::ArtifactChunk>;

    async fn download_artifact(
        &self,
        request: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadArtifactStream>, Status> {
        authorised(&request)?;
        if request.get_ref().digest != digest::of_bytes(INPUT) {
            return Err(Status::not_found("no such artifact"));
        }
        // Two chunks, to exercise reassembly.
        let chunks = vec![
            Ok(pb::ArtifactChunk { artifact: None, offset: 0, data: INPUT[..5].to_vec() }),
            Ok(pb::ArtifactChunk { artifact: None, offset: 5, data: INPUT[5..].to_vec() }),
        ];
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }
}

/// Behaviour keyed by task id: 1 succeeds (checks its input, writes an output), 2 fails
/// deterministically, 3 runs until asked to stop, 4 checkpoints two epochs (the second rewriting
/// the first's file) and then runs until asked to stop.
struct FakeEngine {
    dir: PathBuf,
}

impl FakeEngine {
    /// Two epochs' checkpoints, written like the engine does (a new file renamed over the old one)
    /// and reported; returns the checkpoint's path (holding `epoch 2`).
    fn two_epochs(&self, events: &mut dyn EngineEvents) -> PathBuf {
        let path = self.dir.join("checkpoint.ot");
        for epoch in 1..=2u32 {
            std::fs::write(self.dir.join("checkpoint.partial"), format!("epoch {epoch}")).unwrap();
            std::fs::rename(self.dir.join("checkpoint.partial"), &path).unwrap();
            events.checkpoint(epoch, &path);
        }
        path
    }
}

impl Engine for FakeEngine {
    fn run(
        &mut self,
        task_key: &str,
        _task: &TaskSpec,
        inputs: &HashMap<String, PathBuf>,
        events: &mut dyn EngineEvents,
    ) -> Result<EngineResult, EngineError> {
        match task_key {
            "task-1" => {
                let input = std::fs::read(&inputs["model"]).map_err(|e| EngineError::fatal(e.to_string()))?;
                assert_eq!(input, INPUT, "input downloaded intact");
                let point = MetricPoint {
                    name: "f1".into(),
                    epoch: 0.5,
                    step: 3,
                    test_set: "B124".into(),
                    class_index: 3,
                    value: 0.9,
                };
                events.metrics(&[point.clone(), point.clone()]);
                events.metrics(&[point]);
                // Busy for a while: heartbeats must keep flowing.
                std::thread::sleep(Duration::from_millis(600));
                let out = self.dir.join("out.bin");
                std::fs::write(&out, output_bytes()).unwrap();
                Ok(EngineResult::Done { outcome: outcome(), artifacts: vec![("checkpoint".into(), out)] })
            }
            "task-2" => Err(EngineError::fatal("training loss became NaN at epoch 1")),
            "task-4" => {
                self.two_epochs(events);
                while !events.should_stop() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(EngineResult::Stopped)
            }
            "task-5" => {
                self.two_epochs(events);
                Err(EngineError::transient("CUDA out of memory in epoch 3"))
            }
            "task-6" => {
                let path = self.two_epochs(events);
                // The snapshots' uploads finish before the task does (the usual case).
                std::thread::sleep(Duration::from_millis(300));
                Ok(EngineResult::Done { outcome: outcome(), artifacts: vec![("checkpoint".into(), path)] })
            }
            _ => {
                while !events.should_stop() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Ok(EngineResult::Stopped)
            }
        }
    }

    fn device(&self) -> String {
        "fake".into()
    }
}

fn outcome() -> TaskOutcome {
    TaskOutcome::Heatmap(HeatmapOutcome {
        eps: 4.0,
        chunk: 0,
        images: 1,
        clean: Default::default(),
        error: vec![],
        layers: Default::default(),
        seconds: 0.0,
        images_per_second: 0.0,
        device: "fake".into(),
        precision: Default::default(),
        memory_format: Default::default(),
    })
}

fn lease(task_id: u64, with_input: bool) -> pb::Lease {
    let spec = TaskSpec::Heatmap(freqsweep_common::task::HeatmapTask {
        target: freqsweep_common::task::AnalysisTarget::new(
            DatasetSource::Cifar10 { path: "/nowhere".into() },
            ModelSource::Checkpoint { artifact: "model".into() },
            0,
            0,
        ),
        eps: 4.0,
        cells: vec![],
        chunk: 0,
        layers: vec![],
        seed: 0,
        batch: 1,
        epoch: None,
    });
    let inputs = if with_input {
        vec![pb::ArtifactRef { name: "model".into(), digest: digest::of_bytes(INPUT), size: INPUT.len() as u64 }]
    } else {
        vec![]
    };
    pb::Lease {
        task_id,
        attempt_id: 100 + task_id,
        task_json: serde_json::to_string(&spec).unwrap(),
        lease_timeout_ms: 5_000,
        inputs,
    }
}

async fn serve(leases: Vec<pb::Lease>) -> (String, Arc<Mutex<Seen>>) {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let fake = Arc::new(Fake { leases: Mutex::new(leases.into()), seen: seen.clone() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CoordinatorServer::new(FakeService(fake)))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), seen)
}

fn config(url: &str, token: &str, cache: &std::path::Path) -> ClientConfig {
    ClientConfig {
        coordinator: url.to_string(),
        token: Some(token.to_string()),
        cache_dir: cache.to_path_buf(),
        hostname: "test".into(),
        connect_timeout: Some(Duration::from_secs(2)),
        max_backoff: Duration::from_millis(200),
        tls_ca: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_results_failures_and_sweep_done() {
    let (url, seen) = serve(vec![lease(1, true), lease(2, false)]).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = FakeEngine { dir: dir.path().to_path_buf() };
    let (_tx, rx) = watch::channel(false);
    let exit = tokio::time::timeout(
        Duration::from_secs(30),
        client::run(config(&url, TOKEN, dir.path()), Box::new(engine), "fake".into(), rx),
    )
    .await
    .expect("bounded")
    .unwrap();
    assert_eq!(exit, ClientExit::SweepDone);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.registrations, 1);
    assert_eq!(seen.metric_seqs, [0, 1], "one batch per engine report, numbered per attempt");
    assert_eq!(seen.metric_points, 3);
    assert!(seen.heartbeats_while_busy >= 2, "heartbeats while the task ran: {}", seen.heartbeats_while_busy);
    assert_eq!(seen.uploads.len(), 1);
    assert!(seen.uploads[0].1 == output_bytes(), "the output arrived whole, in order");
    let result = &seen.results[0];
    assert_eq!(result.attempt_id, 101);
    assert_eq!(result.outputs[0].digest, seen.uploads[0].0, "the result names the uploaded artifact");
    assert_eq!(serde_json::from_str::<TaskOutcome>(&result.result_json).unwrap(), outcome());
    let failure = &seen.failures[0];
    assert_eq!((failure.attempt_id, failure.retryable), (102, false));
    assert!(failure.error.contains("NaN"));
    // The input was cached by digest for the next task that needs it, and so was the output.
    assert!(dir.path().join("artifacts").join(digest::file_name(&digest::of_bytes(INPUT))).is_file());
    let kept = dir.path().join("artifacts").join(digest::file_name(&seen.uploads[0].0));
    assert!(std::fs::read(kept).unwrap() == output_bytes());
}

/// Run the client over `leases` until the sweep is done; what the fake coordinator saw.
async fn run_to_the_end(leases: Vec<pb::Lease>) -> Arc<Mutex<Seen>> {
    let (url, seen) = serve(leases).await;
    let dir = tempfile::tempdir().unwrap();
    let engine = FakeEngine { dir: dir.path().to_path_buf() };
    let (_tx, rx) = watch::channel(false);
    let run = client::run(config(&url, TOKEN, dir.path()), Box::new(engine), "fake".into(), rx);
    let exit = tokio::time::timeout(Duration::from_secs(30), run).await.expect("bounded").unwrap();
    assert_eq!(exit, ClientExit::SweepDone);
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retryable_failure_announces_the_newest_checkpoint_first() {
    let seen = run_to_the_end(vec![lease(5, false)]).await;
    let seen = seen.lock().unwrap();
    assert_eq!(seen.failures.len(), 1);
    assert!(seen.failures[0].retryable);
    let newest = seen.checkpoints.last().expect("a checkpoint was announced");
    assert_eq!((newest.attempt_id, newest.epochs_done), (105, 2), "{:?}", seen.checkpoints);
    assert_eq!(seen.order.last(), Some(&"failure"), "checkpoints first, then the failure: {:?}", seen.order);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_checkpoint_equal_to_the_last_snapshot_is_uploaded_once() {
    let seen = run_to_the_end(vec![lease(6, false)]).await;
    let seen = seen.lock().unwrap();
    let result = &seen.results[0];
    let digest = &result.outputs[0].digest;
    assert_eq!(digest, &digest::of_bytes(b"epoch 2"));
    let sent = seen.uploads.iter().filter(|(d, _)| d == digest).count();
    assert_eq!(sent, 1, "the last epoch's bytes went over the wire {sent} times");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_the_running_task_by_releasing_it() {
    let (url, seen) = serve(vec![lease(3, false)]).await;
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = watch::channel(false);
    let handle = tokio::spawn(client::run(
        config(&url, TOKEN, dir.path()),
        Box::new(FakeEngine { dir: dir.path().to_path_buf() }),
        "fake".into(),
        rx,
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    tx.send(true).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), handle).await.expect("bounded").unwrap().unwrap();
    assert_eq!(exit, ClientExit::Drained);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.releases.len(), 1);
    assert_eq!(seen.releases[0].attempt_id, 103);
    assert!(seen.releases[0].reason.contains("draining"), "{:?}", seen.releases[0].reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epoch_checkpoints_are_uploaded_and_announced_before_a_drain_releases_the_task() {
    let (url, seen) = serve(vec![lease(4, false)]).await;
    let dir = tempfile::tempdir().unwrap();
    let (tx, rx) = watch::channel(false);
    let handle = tokio::spawn(client::run(
        config(&url, TOKEN, dir.path()),
        Box::new(FakeEngine { dir: dir.path().to_path_buf() }),
        "fake".into(),
        rx,
    ));
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Like the binary's signal handler: say so once, then go away (the channel closes).
    tx.send(true).unwrap();
    drop(tx);
    let exit = tokio::time::timeout(Duration::from_secs(10), handle).await.expect("bounded").unwrap().unwrap();
    assert_eq!(exit, ClientExit::Drained);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.features, [freqsweep_proto::FEATURE_RESUME_HISTORY]);
    let newest = seen.checkpoints.last().expect("a checkpoint was announced");
    assert_eq!((newest.attempt_id, newest.epochs_done), (104, 2), "{:?}", seen.checkpoints);
    let artifact = newest.artifact.as_ref().unwrap();
    assert_eq!(artifact.name, "checkpoint");
    let bytes = &seen.uploads.iter().find(|(d, _)| d == &artifact.digest).expect("uploaded before announced").1;
    assert_eq!(bytes, b"epoch 2", "the snapshot holds its own epoch's bytes");
    assert!(seen.checkpoints.windows(2).all(|w| w[0].epochs_done < w[1].epochs_done));
    assert_eq!(seen.order.last(), Some(&"release"), "checkpoints first, then the release: {:?}", seen.order);
    assert!(
        std::fs::read_dir(dir.path().join("uploads")).unwrap().next().is_none(),
        "snapshots are removed once uploaded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_and_an_unreachable_coordinator_are_named() {
    let (url, _) = serve(vec![]).await;
    let dir = tempfile::tempdir().unwrap();
    let (_tx, rx) = watch::channel(false);
    let engine = Box::new(FakeEngine { dir: dir.path().to_path_buf() });
    let err = client::run(config(&url, "wrong", dir.path()), engine, "fake".into(), rx.clone()).await.unwrap_err();
    assert!(matches!(err, ClientError::Rejected { .. }), "{err}");
    assert!(err.to_string().contains("rejected this worker: wrong or missing token"), "{err}");

    // A port nobody listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let engine = Box::new(FakeEngine { dir: dir.path().to_path_buf() });
    let err = tokio::time::timeout(
        Duration::from_secs(20),
        client::run(config(&url, TOKEN, dir.path()), engine, "fake".into(), rx),
    )
    .await
    .expect("bounded")
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ClientError::Unreachable { .. }) && text.contains(&url) && !text.contains('\n'), "{text}");
}
