//! The worker's client loop: dial the coordinator, register, hold one `Session` stream, lease
//! tasks, run them on the [`Engine`] and report back; survive a coordinator that goes away.
//!
//! Shape:
//! - What to do is decided by the [`Agent`] (`agent.rs`: the outbox of undelivered reports,
//!   checkpoint uploads, drain, reconnection backoff), which does no I/O; this loop only turns what
//!   arrives (stream, engine events, finished uploads, timers, the shutdown signal) into its events
//!   and carries out the actions it returns. Artifact transfers and the local cache live in
//!   `transfer.rs`.
//! - The engine runs on its own OS thread (libtorch work is blocking and long); it receives jobs
//!   over a channel and sends events (metrics, progress, finish) back to the async loop. So the
//!   loop always answers the stream and **heartbeats never wait on a task** (a worker in a long
//!   epoch is not declared dead).
//! - Every report names its attempt id; metric batches carry a per-attempt sequence number, so
//!   the coordinator drops duplicates and stale attempts.
//! - Every epoch's checkpoint of a train task is snapshotted (hard link) by the engine thread,
//!   uploaded in the background and announced with `CheckpointSaved`, so a retry elsewhere resumes
//!   from it.

use crate::agent::{self, Action, Agent, AgentExit, EngineEvent, Event, Job, ReconnectPolicy, Snapshot};
use crate::engine::{Engine, EngineError, EngineEvents, CHECKPOINT_ARTIFACT};
use crate::transfer;
use freqsweep_common::task::MetricPoint;
use freqsweep_proto::dial::{self, DialError};
use freqsweep_proto::v1::coordinator_client::CoordinatorClient;
use freqsweep_proto::v1::{self as pb, worker_message};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

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

pub(crate) type Client = CoordinatorClient<InterceptedService<Channel, Auth>>;

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

/// Why dialling and registering failed.
enum DialFailure {
    /// The URL or TLS set-up cannot work: retrying does not help.
    Misconfigured(String),
    /// The coordinator refused this worker (token, protocol version).
    Rejected(String),
    /// Nobody answered, or not usefully: a later try may succeed.
    Unreachable(String),
}

async fn connect(config: &ClientConfig) -> Result<Client, DialFailure> {
    let channel = dial::connect(&config.coordinator, config.tls_ca.as_deref(), Duration::from_secs(5)).await.map_err(
        |e| match e {
            DialError::Misconfigured(detail) => DialFailure::Misconfigured(detail),
            DialError::Unreachable(detail) => DialFailure::Unreachable(detail),
        },
    )?;
    let token = match &config.token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| DialFailure::Unreachable("the token is not valid ASCII".to_string()))?,
        ),
        None => None,
    };
    Ok(CoordinatorClient::with_interceptor(channel, Auth(token)).max_decoding_message_size(64 << 20))
}

/// Dial and register this worker.
async fn register(config: &ClientConfig, device: &str) -> Result<(Client, pb::RegisterReply), DialFailure> {
    let mut client = connect(config).await?;
    let registered = client
        .register(pb::RegisterRequest {
            protocol_version: freqsweep_proto::PROTOCOL_VERSION,
            worker_version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: config.hostname.clone(),
            capabilities: Some(pb::Capabilities {
                device: device.to_string(),
                device_memory_bytes: 0,
                cpu_threads: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
                libtorch_version: "2.11.0".into(),
            }),
            cached_artifacts: transfer::cached_digests(&config.cache_dir),
            features: vec![freqsweep_proto::FEATURE_RESUME_HISTORY.to_string()],
        })
        .await;
    match registered {
        Ok(reply) => Ok((client, reply.into_inner())),
        Err(s) => {
            // A plain connection opens before the server speaks: a TLS coordinator dialled with
            // http:// shows up only here.
            if let Some(DialError::Misconfigured(detail)) = dial::explain_status(&config.coordinator, &s).await {
                return Err(DialFailure::Misconfigured(detail));
            }
            let rejected = matches!(
                s.code(),
                tonic::Code::Unauthenticated | tonic::Code::FailedPrecondition | tonic::Code::PermissionDenied
            );
            let detail = s.message().to_string();
            Err(if rejected { DialFailure::Rejected(detail) } else { DialFailure::Unreachable(detail) })
        }
    }
}

/// Open the session stream with the id and key `registration` returned (`Ok(None)`: refused, try
/// again later).
async fn open_session(
    config: &ClientConfig,
    mut client: Client,
    registration: &pb::RegisterReply,
) -> Result<Option<Session>, ClientError> {
    let (out, out_rx) = mpsc::channel::<pb::WorkerMessage>(1024);
    let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(out_rx));
    for (key, value) in [
        (freqsweep_proto::SESSION_WORKER_METADATA, &registration.worker_id),
        (freqsweep_proto::SESSION_KEY_METADATA, &registration.session_key),
    ] {
        let Ok(value) = value.parse() else {
            return Err(ClientError::Rejected {
                url: config.coordinator.clone(),
                detail: format!("the coordinator sent a {key} that is not ASCII"),
            });
        };
        request.metadata_mut().insert(key, value);
    }
    match client.session(request).await {
        Ok(response) => {
            Ok(Some(Session { client, worker_id: registration.worker_id.clone(), out, inbound: response.into_inner() }))
        }
        Err(status) => {
            tracing::warn!(error = %status.message(), "session refused; reconnecting");
            Ok(None)
        }
    }
}

// ---------------------------------------------------------------- engine thread

/// A job and the flag that asks it to stop.
struct EngineJob {
    job: Job,
    stop: Arc<AtomicBool>,
}

struct Relay {
    attempt: u64,
    tx: mpsc::UnboundedSender<EngineEvent>,
    stop: Arc<AtomicBool>,
    /// Where checkpoint snapshots wait for their upload.
    uploads: PathBuf,
}

impl EngineEvents for Relay {
    fn metrics(&mut self, points: &[MetricPoint]) {
        let _ = self.tx.send(EngineEvent::Metrics(self.attempt, points.to_vec()));
    }
    fn progress(&mut self, fraction: f64, throughput: f64) {
        let _ = self.tx.send(EngineEvent::Progress(self.attempt, fraction, throughput));
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
                let _ = self.tx.send(EngineEvent::Checkpoint(Snapshot {
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
    events: mpsc::UnboundedSender<EngineEvent>,
    uploads: PathBuf,
) -> std::sync::mpsc::Sender<EngineJob> {
    let (tx, rx) = std::sync::mpsc::channel::<EngineJob>();
    std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || {
            for EngineJob { job, stop } in rx {
                let started = Instant::now();
                let mut relay = Relay { attempt: job.attempt, tx: events.clone(), stop, uploads: uploads.clone() };
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
                let _ = events.send(EngineEvent::Finished(job.attempt, result, started.elapsed().as_secs_f64()));
            }
        })
        .expect("spawn engine thread");
    tx
}

// ---------------------------------------------------------------- the loop

/// One session: its client, its stream both ways, and the id messages carry.
struct Session {
    client: Client,
    worker_id: String,
    out: mpsc::Sender<pb::WorkerMessage>,
    inbound: tonic::Streaming<pb::CoordinatorMessage>,
}

impl Session {
    /// Whether the stream took `body`.
    fn send(&self, body: worker_message::Body) -> bool {
        self.out.try_send(pb::WorkerMessage { worker_id: self.worker_id.clone(), body: Some(body) }).is_ok()
    }
}

/// How a session ended.
enum SessionEnd {
    Exit(AgentExit),
    Reconnect(Duration),
}

/// What outlives a session besides the agent: the engine thread, the running job's stop flag and
/// the channel finished uploads come back on.
struct Shell<'a> {
    config: &'a ClientConfig,
    jobs: std::sync::mpsc::Sender<EngineJob>,
    /// The running job's attempt and stop flag.
    stop: Option<(u64, Arc<AtomicBool>)>,
    uploaded_tx: mpsc::UnboundedSender<(Snapshot, Result<pb::ArtifactRef, String>)>,
    uploaded: mpsc::UnboundedReceiver<(Snapshot, Result<pb::ArtifactRef, String>)>,
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
    let policy = ReconnectPolicy { connect_timeout: config.connect_timeout, max_backoff: config.max_backoff };
    let mut agent = Agent::new(policy, *shutdown.borrow());
    let (uploaded_tx, uploaded) = mpsc::unbounded_channel();
    let mut shell = Shell { config: &config, jobs, stop: None, uploaded_tx, uploaded };
    loop {
        if let Some(exit) = agent.exit_before_dialling() {
            return exit_with(exit, &config);
        }
        let (client, registration) = match register(&config, &device).await {
            Ok(registered) => registered,
            Err(DialFailure::Misconfigured(detail)) => return Err(ClientError::Misconfigured(detail)),
            Err(DialFailure::Rejected(detail)) => {
                return Err(ClientError::Rejected { url: config.coordinator.clone(), detail })
            }
            Err(DialFailure::Unreachable(detail)) => {
                let mut wait = Duration::ZERO;
                for action in agent.handle(Event::ConnectFailed { detail: detail.clone() }, Instant::now()) {
                    match action {
                        Action::Exit(exit) => return exit_with(exit, &config),
                        Action::Reconnect { after } => wait = after,
                        other => shell.outside_session(&mut agent, other),
                    }
                }
                tracing::warn!(coordinator = %config.coordinator, error = %detail, retry_in_ms = wait.as_millis() as u64, "coordinator unreachable");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // Once draining, a dropped sender would make `changed` ready forever: stop asking.
                    _ = shutdown.changed(), if !agent.draining() => {
                        for action in agent.handle(Event::DrainRequested, Instant::now()) {
                            shell.outside_session(&mut agent, action);
                        }
                    }
                }
                continue;
            }
        };
        agent.handle(Event::Registered, Instant::now());
        tracing::info!(worker = %registration.worker_id, coordinator = %config.coordinator, sweep = %registration.sweep_id, "registered");
        let heartbeat_every = Duration::from_millis(u64::from(registration.heartbeat_interval_ms.max(100)));
        let end = match open_session(&config, client, &registration).await? {
            Some(session) => shell.session(&mut agent, session, heartbeat_every, &mut events, &mut shutdown).await?,
            None => match agent.handle(Event::SessionLost, Instant::now()).pop() {
                Some(Action::Reconnect { after }) => SessionEnd::Reconnect(after),
                _ => SessionEnd::Reconnect(agent::FIRST_BACKOFF),
            },
        };
        match end {
            SessionEnd::Exit(exit) => return exit_with(exit, &config),
            SessionEnd::Reconnect(after) => tokio::time::sleep(after).await,
        }
    }
}

fn exit_with(exit: AgentExit, config: &ClientConfig) -> Result<ClientExit, ClientError> {
    match exit {
        AgentExit::SweepDone => Ok(ClientExit::SweepDone),
        AgentExit::Drained => Ok(ClientExit::Drained),
        AgentExit::Unreachable { waited, detail } => {
            Err(ClientError::Unreachable { url: config.coordinator.clone(), waited, detail })
        }
    }
}

impl Shell<'_> {
    /// Hold the session until it ends, then let the stream flush what was queued.
    async fn session(
        &mut self,
        agent: &mut Agent,
        mut session: Session,
        heartbeat_every: Duration,
        events: &mut mpsc::UnboundedReceiver<EngineEvent>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd, ClientError> {
        let end = self.hold(agent, &mut session, heartbeat_every, events, shutdown).await?;
        drop(session.out);
        if let SessionEnd::Exit(_) = end {
            // Give the transport a moment to deliver the last messages (Release, results); the
            // response stream stays open meanwhile (dropping it would cancel the call).
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(end)
    }

    /// What arrives becomes the agent's events, what it answers is carried out.
    async fn hold(
        &mut self,
        agent: &mut Agent,
        session: &mut Session,
        heartbeat_every: Duration,
        events: &mut mpsc::UnboundedReceiver<EngineEvent>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<SessionEnd, ClientError> {
        let opened = agent.handle(Event::SessionOpened, Instant::now());
        if let Some(end) = self.execute(agent, session, opened).await? {
            return Ok(end);
        }
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        loop {
            let due = agent.poll(Instant::now());
            if let Some(end) = self.execute(agent, session, due).await? {
                return Ok(end);
            }
            let wake = agent.next_wakeup().map_or_else(
                || tokio::time::Instant::now() + Duration::from_secs(3600),
                tokio::time::Instant::from_std,
            );
            let event = tokio::select! {
                message = session.inbound.next() => match message {
                    Some(Ok(message)) => match message.body {
                        Some(body) => Event::Coordinator(body),
                        None => continue,
                    },
                    Some(Err(status)) => session_lost(status.message()),
                    None => session_lost("the coordinator closed the session"),
                },
                Some(event) = events.recv() => Event::Engine(event),
                Some((snapshot, result)) = self.uploaded.recv() => Event::UploadFinished(snapshot, result),
                _ = heartbeat.tick() => Event::HeartbeatDue,
                _ = tokio::time::sleep_until(wake) => continue,
                // Not once draining: the sender is usually dropped after it said so, and a closed
                // channel is always ready (the loop would spin until the task stops).
                changed = shutdown.changed(), if !agent.draining() => {
                    if changed.is_err() || *shutdown.borrow() { Event::DrainRequested } else { continue }
                }
            };
            let actions = agent.handle(event, Instant::now());
            if let Some(end) = self.execute(agent, session, actions).await? {
                return Ok(end);
            }
        }
    }

    /// Carry out `actions` in order; an inline action's outcome goes back to the agent and what it
    /// answers is carried out next. `Some` when the session ends.
    async fn execute(
        &mut self,
        agent: &mut Agent,
        session: &mut Session,
        actions: Vec<Action>,
    ) -> Result<Option<SessionEnd>, ClientError> {
        let cache = &self.config.cache_dir;
        let mut queue = VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            let outcome = match action {
                Action::Send(body) => {
                    session.send(body);
                    None
                }
                Action::Deliver(body) => (!session.send(body.clone())).then_some(Event::Undelivered(body)),
                Action::FetchInputs { lease, spec } => {
                    let inputs = transfer::fetch_inputs(&mut session.client, cache, &lease).await;
                    Some(Event::InputsFetched { lease, spec, inputs })
                }
                Action::StartJob(job) => {
                    self.start_job(*job)?;
                    None
                }
                Action::StartUpload(snapshot) => {
                    self.start_upload(&session.client, snapshot);
                    None
                }
                Action::AwaitUpload { within } => {
                    Some(match tokio::time::timeout(within, self.uploaded.recv()).await {
                        Ok(Some((snapshot, result))) => Event::UploadFinished(snapshot, result),
                        Ok(None) | Err(_) => Event::UploadAbandoned,
                    })
                }
                Action::UploadNow(snapshot) => {
                    let result = transfer::upload(&mut session.client, CHECKPOINT_ARTIFACT, &snapshot.path).await;
                    Some(Event::UploadFinished(snapshot, result))
                }
                Action::UploadOutputs(outputs) => {
                    let client = &mut session.client;
                    let uploaded = transfer::upload_outputs(client, cache, &outputs.artifacts, &outputs.stored).await;
                    Some(Event::OutputsUploaded(uploaded))
                }
                Action::Reconnect { after } => return Ok(Some(SessionEnd::Reconnect(after))),
                Action::Exit(exit) => return Ok(Some(SessionEnd::Exit(exit))),
                local @ (Action::StopJob { .. } | Action::Discard(_)) => {
                    self.outside_session(agent, local);
                    None
                }
            };
            if let Some(event) = outcome {
                for next in agent.handle(event, Instant::now()).into_iter().rev() {
                    queue.push_front(next);
                }
            }
        }
        Ok(None)
    }

    /// Carry out an action that needs no session. Between sessions the agent asks for nothing
    /// else (a report it wants delivered waits in its outbox).
    fn outside_session(&mut self, agent: &mut Agent, action: Action) {
        match action {
            Action::StopJob { attempt } => {
                if let Some((_, stop)) = self.stop.as_ref().filter(|(running, _)| *running == attempt) {
                    stop.store(true, Ordering::Relaxed);
                }
            }
            Action::Discard(path) => {
                let _ = std::fs::remove_file(path);
            }
            Action::Deliver(body) => {
                agent.handle(Event::Undelivered(body), Instant::now());
            }
            other => tracing::debug!(action = ?other, "no session to carry this out"),
        }
    }

    fn start_job(&mut self, job: Job) -> Result<(), ClientError> {
        let stop = Arc::new(AtomicBool::new(false));
        self.stop = Some((job.attempt, stop.clone()));
        self.jobs.send(EngineJob { job, stop }).map_err(|_| ClientError::Local("the engine thread has stopped".into()))
    }

    /// Upload `snapshot` in the background (the loop keeps answering the stream meanwhile); the
    /// outcome comes back on `uploaded`.
    fn start_upload(&self, client: &Client, snapshot: Snapshot) {
        let mut client = client.clone();
        let done = self.uploaded_tx.clone();
        tokio::spawn(async move {
            let result = transfer::upload(&mut client, CHECKPOINT_ARTIFACT, &snapshot.path).await;
            let _ = done.send((snapshot, result));
        });
    }
}

fn session_lost(detail: &str) -> Event {
    tracing::warn!(error = %detail, "session lost; reconnecting");
    Event::SessionLost
}
