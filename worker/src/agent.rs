//! The worker's policy, without I/O: what to send, upload, start, stop and when to reconnect, as a
//! plain state machine. The client loop (`client.rs`) turns what arrives (coordinator messages,
//! engine events, finished uploads, timers, the shutdown signal) into [`Event`]s and carries out
//! the [`Action`]s that come back; time is passed in, never read, so every rule here is tested
//! without a network, a clock or a runtime.
//!
//! What it owns:
//! - the running task (its attempt, metric sequence numbers, progress, why it was asked to stop);
//! - the outbox: reports, metric batches and checkpoint announcements the stream did not take are
//!   kept, in order, and delivered first once the next session opens;
//! - checkpoint uploads: one at a time; when epochs outpace uploads only the newest waiting
//!   snapshot is kept (plus the epochs analyses take); a final checkpoint identical to an uploaded
//!   snapshot is not sent again;
//! - draining: a running task is stopped and released, an idle worker exits at once;
//! - reconnection: exponential backoff up to `max_backoff`, and `connect_timeout`, after which the
//!   worker gives up.

use crate::engine::{EngineError, EngineResult};
use freqsweep_common::task::{MetricPoint, TaskOutcome, TaskSpec};
use freqsweep_proto::v1::{self as pb, coordinator_message, worker_message};
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The first wait before dialling again, and where the backoff restarts after a registration.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// How long a finished task waits for its checkpoint upload in flight before reporting anyway.
pub const SETTLE_UPLOAD_WITHIN: Duration = Duration::from_secs(120);
/// Largest metric batch sent as one message: far below the coordinator's 64 MiB message limit
/// (an epoch of a many-class model's confusion matrix is millions of points).
const METRIC_BATCH_BYTES: usize = 4 << 20;

/// How patiently the worker waits for a coordinator.
#[derive(Clone, Copy, Debug)]
pub struct ReconnectPolicy {
    /// Give up when no coordinator could be reached for this long (`None`: never).
    pub connect_timeout: Option<Duration>,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
}

/// A per-epoch checkpoint taken out of the engine's way (the engine rewrites its file every epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub attempt: u64,
    pub epochs_done: u32,
    pub path: PathBuf,
}

/// What the engine thread reports about the job it runs.
#[derive(Debug)]
pub enum EngineEvent {
    Metrics(u64, Vec<MetricPoint>),
    /// Attempt, progress in `[0, 1]`, items per second.
    Progress(u64, f64, f64),
    /// A snapshot of the checkpoint after `epochs_done` epochs, ready to upload.
    Checkpoint(Snapshot),
    /// Attempt, how it ended, seconds it ran.
    Finished(u64, Result<EngineResult, EngineError>, f64),
}

/// Something that happened, for the agent to decide on.
#[derive(Debug)]
pub enum Event {
    /// Dialling or registering failed in a way a later try may not (the coordinator is away).
    ConnectFailed {
        detail: String,
    },
    /// A registration succeeded: the coordinator is reachable again.
    Registered,
    /// The session stream is open: what earlier sessions could not deliver goes first.
    SessionOpened,
    /// The session stream was refused or broke.
    SessionLost,
    /// Stop the running task and exit (SIGTERM, or the shutdown signal).
    DrainRequested,
    Coordinator(coordinator_message::Body),
    /// The inputs of a lease announced by [`Action::FetchInputs`] are local (or could not be).
    InputsFetched {
        lease: pb::Lease,
        spec: Box<TaskSpec>,
        inputs: Result<HashMap<String, PathBuf>, EngineError>,
    },
    Engine(EngineEvent),
    /// An upload started by [`Action::StartUpload`] or [`Action::UploadNow`] ended.
    UploadFinished(Snapshot, Result<pb::ArtifactRef, String>),
    /// The upload in flight did not end within [`Action::AwaitUpload`]'s bound.
    UploadAbandoned,
    /// The outputs of [`Action::UploadOutputs`] are stored at the coordinator (or not).
    OutputsUploaded(Result<Vec<pb::ArtifactRef>, String>),
    /// The stream did not take a message of [`Action::Deliver`].
    Undelivered(worker_message::Body),
    HeartbeatDue,
}

/// A job for the engine thread.
#[derive(Debug)]
pub struct Job {
    pub attempt: u64,
    pub task_key: String,
    pub spec: TaskSpec,
    pub inputs: HashMap<String, PathBuf>,
}

/// A finished task's outputs to store at the coordinator before its result names them.
#[derive(Debug)]
pub struct Outputs {
    pub artifacts: Vec<(String, PathBuf)>,
    /// Digests the coordinator holds already (this attempt's uploaded snapshots): not sent again.
    pub stored: HashSet<String>,
}

/// What the client loop does next. The ones marked *inline* are carried out before anything else
/// is looked at (the loop waits), and their outcome comes back as the named event.
#[derive(Debug)]
pub enum Action {
    /// Send if the stream takes it; lost otherwise (heartbeats, lease requests, refusals).
    Send(worker_message::Body),
    /// Send; if the stream does not take it, say so with [`Event::Undelivered`] (reports, metric
    /// batches, checkpoint announcements: the coordinator must see every one).
    Deliver(worker_message::Body),
    /// *Inline*: download the lease's inputs; then [`Event::InputsFetched`].
    FetchInputs {
        lease: pb::Lease,
        spec: Box<TaskSpec>,
    },
    StartJob(Box<Job>),
    /// Ask the running job to stop at its next step.
    StopJob {
        attempt: u64,
    },
    /// Upload in the background; then [`Event::UploadFinished`].
    StartUpload(Snapshot),
    /// *Inline*: wait at most this long for the upload in flight; then [`Event::UploadFinished`]
    /// or [`Event::UploadAbandoned`].
    AwaitUpload {
        within: Duration,
    },
    /// *Inline*: upload now; then [`Event::UploadFinished`].
    UploadNow(Snapshot),
    /// Remove a snapshot file nobody needs any more.
    Discard(PathBuf),
    /// *Inline*: upload a finished task's outputs; then [`Event::OutputsUploaded`].
    UploadOutputs(Outputs),
    /// End the session (if any) and dial again after this long.
    Reconnect {
        after: Duration,
    },
    Exit(AgentExit),
}

/// Why the worker stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentExit {
    /// The coordinator said the sweep is done.
    SweepDone,
    /// Asked to shut down; any running task was released.
    Drained,
    /// No coordinator answered for `connect_timeout`.
    Unreachable { waited: Duration, detail: String },
}

struct Running {
    attempt: u64,
    task_id: u64,
    /// The next metric batch's sequence number.
    seq: u64,
    progress: f64,
    throughput: f64,
    /// Why it was asked to stop, for the `Release` message.
    stop_reason: Option<String>,
    /// Epochs whose checkpoints analyses take: uploaded every one, even when epochs outpace
    /// uploads.
    keep_epochs: Vec<u32>,
}

/// A finished task whose checkpoint uploads are being settled before its report.
struct Finishing {
    attempt: u64,
    result: Result<EngineResult, EngineError>,
    seconds: f64,
    /// Stopped, or failed in a way a retry may cure: the newest checkpoint is announced before the
    /// report, so the next attempt resumes from it (after the report this attempt is stale).
    resumable: bool,
    keep_epochs: Vec<u32>,
    settled: Vec<(Snapshot, Result<pb::ArtifactRef, String>)>,
}

/// A task done whose result waits for its outputs' upload.
struct AwaitingOutputs {
    attempt: u64,
    task_id: u64,
    seconds: f64,
    outcome: TaskOutcome,
}

/// The worker's state between events; see the module documentation.
pub struct Agent {
    policy: ReconnectPolicy,
    draining: bool,
    in_session: bool,
    running: Option<Running>,
    finishing: Option<Finishing>,
    awaiting_outputs: Option<AwaitingOutputs>,
    /// The newest attempt a lease was received for (heartbeats tell the coordinator).
    newest_lease: u64,
    /// Reports not yet delivered, oldest first.
    outbox: Vec<worker_message::Body>,
    /// The snapshot whose background upload runs.
    uploading: Option<PathBuf>,
    /// Waiting in epoch order: at most one that is not kept (the newest), and every kept one.
    waiting: VecDeque<Snapshot>,
    /// Digests of the snapshots each attempt has stored at the coordinator (a final checkpoint
    /// among them is not sent again).
    stored_snapshots: HashMap<u64, HashSet<String>>,
    want_lease: bool,
    lease_at: Option<Instant>,
    backoff: Duration,
    unreachable_since: Option<Instant>,
}

impl Agent {
    /// `draining`: the shutdown was asked for before the worker started.
    pub fn new(policy: ReconnectPolicy, draining: bool) -> Agent {
        Agent {
            policy,
            draining,
            in_session: false,
            running: None,
            finishing: None,
            awaiting_outputs: None,
            newest_lease: 0,
            outbox: Vec::new(),
            uploading: None,
            waiting: VecDeque::new(),
            stored_snapshots: HashMap::new(),
            want_lease: false,
            lease_at: None,
            backoff: FIRST_BACKOFF,
            unreachable_since: None,
        }
    }

    pub fn draining(&self) -> bool {
        self.draining
    }

    /// Before dialling: a drained worker with nothing left to report has no reason to.
    pub fn exit_before_dialling(&self) -> Option<AgentExit> {
        (self.draining && self.running.is_none() && self.outbox.is_empty()).then_some(AgentExit::Drained)
    }

    /// What is due at `now` without an event: the lease request, the exit of a drained worker.
    pub fn poll(&mut self, now: Instant) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.could_request_lease() && self.lease_at.is_some_and(|at| now >= at) {
            actions.push(Action::Send(worker_message::Body::LeaseRequest(pb::LeaseRequest { slots: 1 })));
            self.want_lease = false;
            self.lease_at = None;
        }
        if self.draining && self.running.is_none() {
            actions.push(Action::Exit(AgentExit::Drained));
        }
        actions
    }

    /// When [`Agent::poll`] has something to do without an event (`None`: only events matter).
    pub fn next_wakeup(&self) -> Option<Instant> {
        self.lease_at.filter(|_| self.could_request_lease())
    }

    fn could_request_lease(&self) -> bool {
        self.want_lease && self.running.is_none() && !self.draining
    }

    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        match event {
            Event::ConnectFailed { detail } => self.connect_failed(detail, now),
            Event::Registered => {
                self.unreachable_since = None;
                self.backoff = FIRST_BACKOFF;
                Vec::new()
            }
            Event::SessionOpened => self.session_opened(now),
            Event::SessionLost => {
                self.in_session = false;
                vec![Action::Reconnect { after: self.backoff }]
            }
            Event::DrainRequested => self.drain(),
            Event::Coordinator(body) => self.coordinator(body, now),
            Event::InputsFetched { lease, spec, inputs } => self.inputs_fetched(lease, spec, inputs, now),
            Event::Engine(event) => self.engine(event, now),
            Event::UploadFinished(snapshot, result) => self.upload_finished(snapshot, result, now),
            Event::UploadAbandoned => {
                self.uploading = None;
                self.settle_waiting(now)
            }
            Event::OutputsUploaded(outputs) => self.outputs_uploaded(outputs, now),
            Event::Undelivered(body) => {
                self.outbox.push(body);
                Vec::new()
            }
            Event::HeartbeatDue => vec![Action::Send(self.heartbeat())],
        }
    }

    fn connect_failed(&mut self, detail: String, now: Instant) -> Vec<Action> {
        self.in_session = false;
        let since = *self.unreachable_since.get_or_insert(now);
        let waited = now.saturating_duration_since(since);
        if self.policy.connect_timeout.is_some_and(|limit| waited >= limit) {
            return vec![Action::Exit(AgentExit::Unreachable { waited, detail })];
        }
        let after = self.backoff;
        self.backoff = (self.backoff * 2).min(self.policy.max_backoff);
        vec![Action::Reconnect { after }]
    }

    fn session_opened(&mut self, now: Instant) -> Vec<Action> {
        self.in_session = true;
        self.want_lease = self.running.is_none() && !self.draining;
        self.lease_at = Some(now);
        // Oldest first; whatever this stream does not take comes back, in the same order.
        self.outbox.drain(..).map(Action::Deliver).collect()
    }

    fn drain(&mut self) -> Vec<Action> {
        self.draining = true;
        // Outside a session the dial loop exits once nothing is left to report.
        let reason = if self.in_session { "worker draining" } else { "draining" };
        match &mut self.running {
            Some(running) => {
                if self.in_session {
                    tracing::info!(attempt = running.attempt, "draining: stopping the running task");
                }
                vec![request_stop(running, reason)]
            }
            None if self.in_session => vec![Action::Exit(AgentExit::Drained)],
            None => Vec::new(),
        }
    }

    fn coordinator(&mut self, body: coordinator_message::Body, now: Instant) -> Vec<Action> {
        match body {
            coordinator_message::Body::Lease(lease) => self.leased(lease, now),
            coordinator_message::Body::Cancel(cancel) => match self.running.as_mut() {
                Some(running) if running.attempt == cancel.attempt_id => {
                    tracing::info!(attempt = cancel.attempt_id, reason = %cancel.reason, "cancelled");
                    vec![request_stop(running, &format!("cancelled: {}", cancel.reason))]
                }
                _ => Vec::new(),
            },
            coordinator_message::Body::NoWork(no_work) => {
                self.want_lease = true;
                self.lease_at = Some(now + Duration::from_millis(u64::from(no_work.retry_after_ms.max(50))));
                Vec::new()
            }
            coordinator_message::Body::Ack(ack) => {
                if !ack.accepted {
                    tracing::debug!(attempt = ack.attempt_id, "report not accepted (stale attempt)");
                }
                Vec::new()
            }
            coordinator_message::Body::SweepDone(_) => match &mut self.running {
                Some(running) => vec![request_stop(running, "sweep finished")],
                None => vec![Action::Exit(AgentExit::SweepDone)],
            },
        }
    }

    fn leased(&mut self, lease: pb::Lease, now: Instant) -> Vec<Action> {
        self.newest_lease = self.newest_lease.max(lease.attempt_id);
        if self.running.is_some() || self.draining {
            let reason = "busy or draining".to_string();
            return vec![Action::Send(worker_message::Body::Release(pb::Release {
                attempt_id: lease.attempt_id,
                reason,
            }))];
        }
        match serde_json::from_str::<TaskSpec>(&lease.task_json) {
            Ok(spec) => vec![Action::FetchInputs { lease, spec: Box::new(spec) }],
            Err(e) => {
                let error = format!("task {} is not a task this worker understands: {e}", lease.task_id);
                self.could_not_start(&lease, EngineError::fatal(error), now)
            }
        }
    }

    fn inputs_fetched(
        &mut self,
        lease: pb::Lease,
        spec: Box<TaskSpec>,
        inputs: Result<HashMap<String, PathBuf>, EngineError>,
        now: Instant,
    ) -> Vec<Action> {
        let inputs = match inputs {
            Ok(inputs) => inputs,
            Err(e) => return self.could_not_start(&lease, e, now),
        };
        tracing::info!(task = lease.task_id, attempt = lease.attempt_id, kind = spec.kind().as_str(), "leased");
        let keep_epochs = spec.kept_epochs().to_vec();
        self.running = Some(Running {
            attempt: lease.attempt_id,
            task_id: lease.task_id,
            seq: 0,
            progress: 0.0,
            throughput: 0.0,
            stop_reason: None,
            keep_epochs,
        });
        let task_key = format!("task-{}", lease.task_id);
        vec![Action::StartJob(Box::new(Job { attempt: lease.attempt_id, task_key, spec: *spec, inputs }))]
    }

    fn could_not_start(&mut self, lease: &pb::Lease, e: EngineError, now: Instant) -> Vec<Action> {
        tracing::warn!(task = lease.task_id, attempt = lease.attempt_id, error = %e.message, "task could not start");
        self.want_lease = true;
        self.lease_at = Some(now);
        let failure = pb::TaskFailure { attempt_id: lease.attempt_id, error: e.message, retryable: e.retryable };
        vec![Action::Send(worker_message::Body::Failure(failure))]
    }

    fn engine(&mut self, event: EngineEvent, now: Instant) -> Vec<Action> {
        match event {
            EngineEvent::Metrics(attempt, points) => match self.running.as_mut().filter(|r| r.attempt == attempt) {
                Some(running) => split_batches(points.iter().map(to_wire), METRIC_BATCH_BYTES)
                    .into_iter()
                    .map(|points| {
                        let batch = pb::MetricBatch { attempt_id: attempt, seq: running.seq, points };
                        running.seq += 1;
                        Action::Deliver(worker_message::Body::Metrics(batch))
                    })
                    .collect(),
                None => Vec::new(),
            },
            EngineEvent::Progress(attempt, fraction, throughput) => {
                if let Some(running) = self.running.as_mut().filter(|r| r.attempt == attempt) {
                    running.progress = fraction;
                    running.throughput = throughput;
                }
                Vec::new()
            }
            EngineEvent::Checkpoint(snapshot) => self.snapshot_taken(snapshot),
            EngineEvent::Finished(attempt, result, seconds) => self.finished(attempt, result, seconds, now),
        }
    }

    fn snapshot_taken(&mut self, snapshot: Snapshot) -> Vec<Action> {
        let keep = self.running.as_ref().map_or(&[][..], |r| r.keep_epochs.as_slice());
        // A newer snapshot supersedes a waiting one nobody else needs.
        let (kept, superseded): (VecDeque<Snapshot>, VecDeque<Snapshot>) =
            self.waiting.drain(..).partition(|s| s.attempt == snapshot.attempt && keep.contains(&s.epochs_done));
        let mut actions: Vec<Action> = superseded.into_iter().map(|s| Action::Discard(s.path)).collect();
        self.waiting = kept;
        self.waiting.push_back(snapshot);
        if self.uploading.is_none() {
            actions.extend(self.start_next_upload());
        }
        actions
    }

    fn start_next_upload(&mut self) -> Option<Action> {
        let next = self.waiting.pop_front()?;
        self.uploading = Some(next.path.clone());
        Some(Action::StartUpload(next))
    }

    fn upload_finished(
        &mut self,
        snapshot: Snapshot,
        result: Result<pb::ArtifactRef, String>,
        now: Instant,
    ) -> Vec<Action> {
        let was_in_flight = self.uploading.as_ref() == Some(&snapshot.path);
        if was_in_flight {
            self.uploading = None;
        }
        if let Some(finishing) = &mut self.finishing {
            finishing.settled.push((snapshot, result));
            return self.settle_waiting(now);
        }
        let current = self.running.as_ref().is_some_and(|r| r.attempt == snapshot.attempt);
        let mut actions = Vec::new();
        match result {
            Ok(artifact) if current => {
                self.stored_snapshots.entry(snapshot.attempt).or_default().insert(artifact.digest.clone());
                actions.push(Action::Deliver(checkpoint_saved(&snapshot, artifact)));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(attempt = snapshot.attempt, epochs_done = snapshot.epochs_done, error = %e, "checkpoint upload failed; the next epoch's will be tried")
            }
        }
        actions.push(Action::Discard(snapshot.path));
        // An upload given up on by a finished task may end late: the one in flight now goes on.
        if self.uploading.is_none() {
            actions.extend(self.start_next_upload());
        }
        actions
    }

    /// The engine finished: settle the checkpoint uploads first, then report.
    fn finished(
        &mut self,
        attempt: u64,
        result: Result<EngineResult, EngineError>,
        seconds: f64,
        now: Instant,
    ) -> Vec<Action> {
        // Done: the final checkpoint goes with the result, and is usually the last epoch's
        // snapshot, byte for byte: what the coordinator already holds is not sent again.
        let resumable = match &result {
            Ok(EngineResult::Stopped) => true,
            Ok(EngineResult::Done { .. }) => false,
            Err(e) => e.retryable,
        };
        let keep_epochs = self.running.as_ref().map_or(Vec::new(), |r| r.keep_epochs.clone());
        self.finishing = Some(Finishing { attempt, result, seconds, resumable, keep_epochs, settled: Vec::new() });
        if self.uploading.is_some() {
            return vec![Action::AwaitUpload { within: SETTLE_UPLOAD_WITHIN }];
        }
        self.settle_waiting(now)
    }

    /// Upload (inline) the next waiting snapshot worth it; once none is left, report.
    fn settle_waiting(&mut self, now: Instant) -> Vec<Action> {
        let Some(finishing) = &self.finishing else { return Vec::new() };
        let mut actions = Vec::new();
        while let Some(snapshot) = self.waiting.pop_front() {
            // Kept epochs go up even after a finished run: analyses wait for them.
            if finishing.resumable || finishing.keep_epochs.contains(&snapshot.epochs_done) {
                actions.push(Action::UploadNow(snapshot));
                return actions;
            }
            actions.push(Action::Discard(snapshot.path));
        }
        actions.extend(self.report(now));
        actions
    }

    /// Announce the settled checkpoints, then send the report (or upload its outputs first).
    fn report(&mut self, now: Instant) -> Vec<Action> {
        let Some(finishing) = self.finishing.take() else { return Vec::new() };
        let attempt = finishing.attempt;
        let mut stored = self.stored_snapshots.remove(&attempt).unwrap_or_default();
        let mut actions = Vec::new();
        for (snapshot, result) in finishing.settled {
            if let Ok(artifact) = result {
                stored.insert(artifact.digest.clone());
                let wanted = finishing.resumable || finishing.keep_epochs.contains(&snapshot.epochs_done);
                if wanted && snapshot.attempt == attempt {
                    actions.push(Action::Deliver(checkpoint_saved(&snapshot, artifact)));
                }
            }
            actions.push(Action::Discard(snapshot.path));
        }
        let finished = self.running.take().filter(|r| r.attempt == attempt);
        let reason = finished.as_ref().and_then(|r| r.stop_reason.clone()).unwrap_or_else(|| "stopped".into());
        let task_id = finished.as_ref().map_or(0, |r| r.task_id);
        let report = match finishing.result {
            Ok(EngineResult::Done { outcome, artifacts }) => {
                let seconds = finishing.seconds;
                self.awaiting_outputs = Some(AwaitingOutputs { attempt, task_id, seconds, outcome });
                actions.push(Action::UploadOutputs(Outputs { artifacts, stored }));
                return actions;
            }
            Ok(EngineResult::Stopped) => {
                tracing::info!(task = task_id, attempt, reason = %reason, "released");
                worker_message::Body::Release(pb::Release { attempt_id: attempt, reason })
            }
            Err(e) => {
                tracing::warn!(task = task_id, attempt, error = %e.message, retryable = e.retryable, "failed");
                worker_message::Body::Failure(pb::TaskFailure {
                    attempt_id: attempt,
                    error: e.message,
                    retryable: e.retryable,
                })
            }
        };
        actions.push(Action::Deliver(report));
        self.ready_for_the_next_lease(now);
        actions
    }

    fn outputs_uploaded(&mut self, outputs: Result<Vec<pb::ArtifactRef>, String>, now: Instant) -> Vec<Action> {
        let Some(AwaitingOutputs { attempt, task_id, seconds, outcome }) = self.awaiting_outputs.take() else {
            return Vec::new();
        };
        let report = match outputs {
            Ok(outputs) => {
                tracing::info!(task = task_id, attempt, seconds, "done");
                worker_message::Body::Result(pb::TaskResult {
                    attempt_id: attempt,
                    result_json: outcome_json(&outcome),
                    outputs,
                    seconds,
                })
            }
            Err(error) => {
                worker_message::Body::Failure(pb::TaskFailure { attempt_id: attempt, error, retryable: true })
            }
        };
        self.ready_for_the_next_lease(now);
        vec![Action::Deliver(report)]
    }

    fn ready_for_the_next_lease(&mut self, now: Instant) {
        self.want_lease = !self.draining;
        self.lease_at = Some(now);
    }

    /// What this worker runs or still has to report: the coordinator re-queues an attempt of ours
    /// it does not see here, and cancels one it no longer holds.
    fn heartbeat(&self) -> worker_message::Body {
        let (mut running_attempts, progress, throughput) =
            self.running.as_ref().map_or((vec![], 0.0, 0.0), |r| (vec![r.attempt], r.progress, r.throughput));
        running_attempts.extend(self.outbox.iter().filter_map(report_attempt));
        worker_message::Body::Heartbeat(pb::Heartbeat {
            running_attempts,
            progress,
            throughput,
            newest_lease: self.newest_lease,
        })
    }
}

fn request_stop(running: &mut Running, reason: &str) -> Action {
    running.stop_reason.get_or_insert_with(|| reason.to_string());
    Action::StopJob { attempt: running.attempt }
}

fn outcome_json(outcome: &TaskOutcome) -> String {
    serde_json::to_string(outcome).expect("outcomes serialise")
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

#[cfg(test)]
mod tests {
    use super::*;
    use freqsweep_common::task::{DatasetSource, HeatmapOutcome, HeatmapTask, ModelSource};
    use proptest::prelude::*;
    use prost::Message;

    const POLICY: ReconnectPolicy = ReconnectPolicy { connect_timeout: None, max_backoff: Duration::from_secs(5) };

    fn spec() -> TaskSpec {
        TaskSpec::Heatmap(HeatmapTask {
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
        })
    }

    fn lease(attempt: u64) -> pb::Lease {
        pb::Lease {
            task_id: attempt % 1000,
            attempt_id: attempt,
            task_json: serde_json::to_string(&spec()).unwrap(),
            lease_timeout_ms: 5_000,
            inputs: vec![],
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

    fn point(step: u64) -> MetricPoint {
        MetricPoint { name: "f1".into(), epoch: 1.0, step, test_set: "B1".into(), class_index: -1, value: 0.5 }
    }

    /// What the coordinator would hold for a snapshot's upload.
    fn stored_as(snapshot: &Snapshot) -> pb::ArtifactRef {
        let digest = format!("sha256:{}-{}", snapshot.attempt, snapshot.epochs_done);
        pb::ArtifactRef { name: CHECKPOINT_NAME.into(), digest, size: 1 }
    }
    const CHECKPOINT_NAME: &str = "checkpoint";

    /// How a job on the fake engine ends.
    #[derive(Debug, Clone, Copy)]
    enum End {
        Done,
        Stopped,
        Retryable,
        Fatal,
    }

    impl End {
        fn result(self, artifacts: Vec<(String, PathBuf)>) -> Result<EngineResult, EngineError> {
            match self {
                End::Done => Ok(EngineResult::Done { outcome: outcome(), artifacts }),
                End::Stopped => Ok(EngineResult::Stopped),
                End::Retryable => Err(EngineError::transient("CUDA out of memory")),
                End::Fatal => Err(EngineError::fatal("loss became NaN")),
            }
        }
    }

    /// The client loop without a network: a stream that takes messages until it breaks, a fake
    /// engine thread, background uploads that end when told; inline actions are answered at once.
    struct Sim {
        agent: Agent,
        now: Instant,
        stream_up: bool,
        /// Messages of `Deliver` in the order the agent first asked for them.
        produced: Vec<worker_message::Body>,
        /// Messages of `Deliver` the stream took, in order.
        delivered: Vec<worker_message::Body>,
        /// Messages of `Send` the stream took.
        sent: Vec<worker_message::Body>,
        background: VecDeque<Snapshot>,
        /// The attempt the engine runs, and the next epoch it checkpoints.
        job: Option<(u64, u32)>,
        stop_requested: Option<u64>,
        snapshots: Vec<PathBuf>,
        discarded: Vec<PathBuf>,
        outputs: Vec<Outputs>,
        exit: Option<AgentExit>,
        next_attempt: u64,
    }

    impl Sim {
        fn new(draining: bool) -> Sim {
            let mut sim = Sim {
                agent: Agent::new(POLICY, draining),
                now: Instant::now(),
                stream_up: true,
                produced: vec![],
                delivered: vec![],
                sent: vec![],
                background: VecDeque::new(),
                job: None,
                stop_requested: None,
                snapshots: vec![],
                discarded: vec![],
                outputs: vec![],
                exit: None,
                next_attempt: 100,
            };
            sim.feed(Event::Registered);
            sim.feed(Event::SessionOpened);
            sim
        }

        fn feed(&mut self, event: Event) {
            let reemitted = matches!(event, Event::SessionOpened);
            let actions = self.agent.handle(event, self.now);
            self.execute(actions, reemitted);
        }

        fn poll(&mut self) {
            let actions = self.agent.poll(self.now);
            self.execute(actions, false);
        }

        fn execute(&mut self, actions: Vec<Action>, reemitted: bool) {
            for action in actions {
                match action {
                    Action::Send(body) => {
                        if self.stream_up {
                            self.sent.push(body);
                        }
                    }
                    Action::Deliver(body) => {
                        if !reemitted {
                            self.produced.push(body.clone());
                        }
                        if self.stream_up {
                            self.delivered.push(body);
                        } else {
                            self.feed(Event::Undelivered(body));
                        }
                    }
                    Action::FetchInputs { lease, spec } => {
                        self.feed(Event::InputsFetched { lease, spec, inputs: Ok(HashMap::new()) })
                    }
                    Action::StartJob(job) => {
                        assert!(self.job.is_none(), "a second job started while one runs");
                        self.job = Some((job.attempt, 1));
                    }
                    Action::StopJob { attempt } => self.stop_requested = Some(attempt),
                    Action::StartUpload(snapshot) => {
                        self.background.push_back(snapshot);
                        assert!(self.background.len() <= 1, "{} uploads in flight", self.background.len());
                    }
                    Action::AwaitUpload { .. } => match self.background.pop_front() {
                        Some(snapshot) => {
                            let stored = stored_as(&snapshot);
                            self.feed(Event::UploadFinished(snapshot, Ok(stored)))
                        }
                        None => self.feed(Event::UploadAbandoned),
                    },
                    Action::UploadNow(snapshot) => {
                        let stored = stored_as(&snapshot);
                        self.feed(Event::UploadFinished(snapshot, Ok(stored)))
                    }
                    Action::Discard(path) => self.discarded.push(path),
                    Action::UploadOutputs(outputs) => {
                        let references = outputs
                            .artifacts
                            .iter()
                            .map(|(name, _)| pb::ArtifactRef {
                                name: name.clone(),
                                digest: "sha256:out".into(),
                                size: 1,
                            })
                            .collect();
                        self.outputs.push(outputs);
                        self.feed(Event::OutputsUploaded(Ok(references)));
                    }
                    Action::Reconnect { .. } => {}
                    Action::Exit(exit) => self.exit = Some(exit),
                }
            }
        }

        fn lease(&mut self) {
            self.next_attempt += 1;
            let lease = lease(self.next_attempt);
            self.feed(Event::Coordinator(coordinator_message::Body::Lease(lease)));
        }

        fn checkpoint(&mut self) {
            if let Some((attempt, epoch)) = self.job.as_mut() {
                let path = PathBuf::from(format!("uploads/attempt{attempt}-epoch{epoch}.ot"));
                let snapshot = Snapshot { attempt: *attempt, epochs_done: *epoch, path: path.clone() };
                *epoch += 1;
                self.snapshots.push(path);
                self.feed(Event::Engine(EngineEvent::Checkpoint(snapshot)));
            }
        }

        fn finish(&mut self, end: End) {
            if let Some((attempt, _)) = self.job.take() {
                let artifacts = vec![("checkpoint".to_string(), PathBuf::from("work/checkpoint.ot"))];
                self.feed(Event::Engine(EngineEvent::Finished(attempt, end.result(artifacts), 1.0)));
            }
        }

        fn upload_ends(&mut self, ok: bool) {
            if let Some(snapshot) = self.background.pop_front() {
                let result = if ok { Ok(stored_as(&snapshot)) } else { Err("connection reset".to_string()) };
                self.feed(Event::UploadFinished(snapshot, result));
            }
        }

        fn reconnect(&mut self) {
            self.feed(Event::SessionLost);
            self.stream_up = true;
            self.feed(Event::Registered);
            self.feed(Event::SessionOpened);
        }

        /// Waiting snapshots that no analysis keeps (at most one: the newest).
        fn waiting_not_kept(&self) -> Vec<PathBuf> {
            let keep = self.agent.running.as_ref().map_or(&[][..], |r| r.keep_epochs.as_slice());
            self.agent.waiting.iter().filter(|s| !keep.contains(&s.epochs_done)).map(|s| s.path.clone()).collect()
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// A lease for a task whose checkpoints after these epochs analyses take.
        Lease {
            keep_epochs: Vec<u32>,
        },
        Metrics {
            stale: bool,
            points: usize,
        },
        Progress {
            stale: bool,
        },
        Checkpoint,
        Finish(End),
        UploadEnds {
            ok: bool,
        },
        StreamBreaks,
        Reconnect,
        Cancel {
            stale: bool,
        },
        Heartbeat,
        NoWork,
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        let end = prop_oneof![Just(End::Done), Just(End::Stopped), Just(End::Retryable), Just(End::Fatal)];
        prop_oneof![
            2 => proptest::collection::vec(1..6u32, 0..3).prop_map(|keep_epochs| Op::Lease { keep_epochs }),
            3 => (any::<bool>(), 1..4usize).prop_map(|(stale, points)| Op::Metrics { stale, points }),
            1 => any::<bool>().prop_map(|stale| Op::Progress { stale }),
            3 => Just(Op::Checkpoint),
            1 => end.prop_map(Op::Finish),
            3 => any::<bool>().prop_map(|ok| Op::UploadEnds { ok }),
            1 => Just(Op::StreamBreaks),
            1 => Just(Op::Reconnect),
            1 => any::<bool>().prop_map(|stale| Op::Cancel { stale }),
            1 => Just(Op::Heartbeat),
            1 => Just(Op::NoWork),
            1 => (0..500u64).prop_map(Op::Wait),
        ]
    }

    impl Sim {
        fn apply(&mut self, op: Op) {
            let running = self.job.map(|(attempt, _)| attempt);
            let attempt = |stale: bool| if stale { 7 } else { running.unwrap_or(7) };
            match op {
                Op::Lease { keep_epochs } => {
                    self.lease();
                    // As a train task's spec would say (fixed for the attempt).
                    match self.agent.running.as_mut() {
                        Some(running) if running.attempt == self.next_attempt => running.keep_epochs = keep_epochs,
                        _ => {}
                    }
                }
                Op::Metrics { stale, points } => {
                    if running.is_some() || stale {
                        let points = (0..points as u64).map(point).collect();
                        self.feed(Event::Engine(EngineEvent::Metrics(attempt(stale), points)));
                    }
                }
                Op::Progress { stale } => self.feed(Event::Engine(EngineEvent::Progress(attempt(stale), 0.5, 10.0))),
                Op::Checkpoint => self.checkpoint(),
                Op::Finish(end) => self.finish(end),
                Op::UploadEnds { ok } => self.upload_ends(ok),
                Op::StreamBreaks => self.stream_up = false,
                Op::Reconnect => self.reconnect(),
                Op::Cancel { stale } => {
                    let cancel = pb::Cancel { attempt_id: attempt(stale), reason: "superseded".into() };
                    self.feed(Event::Coordinator(coordinator_message::Body::Cancel(cancel)));
                }
                Op::Heartbeat => self.feed(Event::HeartbeatDue),
                Op::NoWork => {
                    let no_work = pb::NoWork { retry_after_ms: 100 };
                    self.feed(Event::Coordinator(coordinator_message::Body::NoWork(no_work)));
                }
                Op::Wait(ms) => self.now += Duration::from_millis(ms),
            }
            self.poll();
        }

        /// Let the running job stop, every upload end and the stream come back.
        fn settle(&mut self) {
            self.finish(End::Stopped);
            while !self.background.is_empty() {
                self.upload_ends(true);
            }
            self.reconnect();
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn every_report_is_delivered_once_and_in_order_whatever_breaks(ops in proptest::collection::vec(op(), 0..60)) {
            let mut sim = Sim::new(false);
            for op in ops {
                sim.apply(op);
            }
            sim.settle();
            prop_assert_eq!(&sim.delivered, &sim.produced);
            prop_assert!(sim.agent.outbox.is_empty());
            // Metric batches of each attempt are numbered 0, 1, 2… and none comes from a stale one.
            let mut next_seq: HashMap<u64, u64> = HashMap::new();
            for body in &sim.delivered {
                if let worker_message::Body::Metrics(batch) = body {
                    prop_assert_ne!(batch.attempt_id, 7, "a stale attempt's metrics were sent");
                    let expected = next_seq.entry(batch.attempt_id).or_default();
                    prop_assert_eq!(batch.seq, *expected);
                    *expected += 1;
                }
            }
        }

        #[test]
        fn one_upload_at_a_time_only_the_newest_waits_and_every_snapshot_is_removed_once(
            ops in proptest::collection::vec(op(), 0..60),
        ) {
            let mut sim = Sim::new(false);
            for op in ops {
                sim.apply(op);
                // `Sim::execute` checks that at most one upload runs.
                let not_kept = sim.waiting_not_kept();
                prop_assert!(not_kept.len() <= 1, "{not_kept:?}");
                if let Some(waiting) = not_kept.first() {
                    prop_assert_eq!(Some(waiting), sim.snapshots.last(), "a waiting snapshot is not the newest");
                }
            }
            sim.settle();
            let mut discarded = sim.discarded.clone();
            discarded.sort();
            let mut snapshots = sim.snapshots.clone();
            snapshots.sort();
            prop_assert_eq!(discarded, snapshots, "each snapshot file removed exactly once");
        }

        #[test]
        fn backoff_doubles_up_to_the_most_and_the_connect_timeout_ends_the_waiting(
            max_ms in 1..5_000u64,
            timeout_ms in proptest::option::of(0..20_000u64),
            extra_ms in proptest::collection::vec(0..300u64, 1..40),
        ) {
            let policy = ReconnectPolicy {
                connect_timeout: timeout_ms.map(Duration::from_millis),
                max_backoff: Duration::from_millis(max_ms),
            };
            let mut agent = Agent::new(policy, false);
            let start = Instant::now();
            let mut now = start;
            let mut expected = FIRST_BACKOFF;
            for (i, extra) in extra_ms.iter().enumerate() {
                let actions = agent.handle(Event::ConnectFailed { detail: "refused".into() }, now);
                let waited = now - start;
                match actions.as_slice() {
                    [Action::Exit(AgentExit::Unreachable { waited: w, detail })] => {
                        prop_assert!(policy.connect_timeout.is_some_and(|limit| waited >= limit));
                        prop_assert_eq!((*w, detail.as_str()), (waited, "refused"));
                        return Ok(());
                    }
                    [Action::Reconnect { after }] => {
                        prop_assert!(policy.connect_timeout.is_none_or(|limit| waited < limit), "attempt {}", i);
                        prop_assert_eq!(*after, expected, "attempt {}", i);
                        now += *after + Duration::from_millis(*extra);
                        expected = (expected * 2).min(policy.max_backoff);
                    }
                    other => prop_assert!(false, "{other:?}"),
                }
            }
            // A registration starts both over.
            agent.handle(Event::Registered, now);
            let actions = agent.handle(Event::ConnectFailed { detail: "refused".into() }, now + Duration::from_secs(3600));
            prop_assert!(matches!(actions.as_slice(), [Action::Reconnect { after }] if *after == FIRST_BACKOFF), "{actions:?}");
        }
    }

    fn reports(sim: &Sim) -> Vec<&worker_message::Body> {
        sim.delivered.iter().filter(|b| report_attempt(b).is_some()).collect()
    }

    #[test]
    fn an_idle_drain_exits_at_once() {
        let mut sim = Sim::new(false);
        sim.feed(Event::DrainRequested);
        assert_eq!(sim.exit, Some(AgentExit::Drained));
        // Drained before it started: nothing to dial for.
        assert_eq!(Agent::new(POLICY, true).exit_before_dialling(), Some(AgentExit::Drained));
    }

    #[test]
    fn a_drain_stops_the_running_task_and_releases_its_lease() {
        let mut sim = Sim::new(false);
        sim.lease();
        sim.feed(Event::DrainRequested);
        assert_eq!((sim.stop_requested, sim.exit.clone()), (Some(101), None));
        // Another lease meanwhile is refused.
        sim.lease();
        assert!(
            matches!(sim.sent.last(), Some(worker_message::Body::Release(r)) if r.attempt_id == 102 && r.reason == "busy or draining")
        );
        sim.finish(End::Stopped);
        sim.poll();
        assert_eq!(sim.exit, Some(AgentExit::Drained));
        let release = pb::Release { attempt_id: 101, reason: "worker draining".into() };
        assert_eq!(reports(&sim), [&worker_message::Body::Release(release)]);
    }

    #[test]
    fn a_drain_between_sessions_stops_the_task_and_the_release_waits_for_the_next_session() {
        let mut sim = Sim::new(false);
        sim.lease();
        sim.stream_up = false;
        sim.feed(Event::SessionLost);
        sim.feed(Event::DrainRequested);
        assert_eq!((sim.stop_requested, sim.exit.clone()), (Some(101), None));
        sim.finish(End::Stopped);
        assert_eq!(sim.agent.exit_before_dialling(), None, "a report is still owed");
        sim.stream_up = true;
        sim.feed(Event::Registered);
        sim.feed(Event::SessionOpened);
        let release = pb::Release { attempt_id: 101, reason: "draining".into() };
        assert_eq!(reports(&sim), [&worker_message::Body::Release(release)]);
        sim.poll();
        assert_eq!(sim.exit, Some(AgentExit::Drained));
    }

    #[test]
    fn stale_attempts_are_ignored() {
        let mut sim = Sim::new(false);
        sim.lease();
        sim.feed(Event::Engine(EngineEvent::Metrics(7, vec![point(1)])));
        sim.feed(Event::Engine(EngineEvent::Progress(7, 0.9, 1.0)));
        let cancel = pb::Cancel { attempt_id: 7, reason: "old".into() };
        sim.feed(Event::Coordinator(coordinator_message::Body::Cancel(cancel)));
        assert!(sim.produced.is_empty() && sim.stop_requested.is_none());
        sim.feed(Event::HeartbeatDue);
        let Some(worker_message::Body::Heartbeat(beat)) = sim.sent.last() else { panic!("{:?}", sim.sent) };
        assert_eq!((beat.running_attempts.as_slice(), beat.progress, beat.newest_lease), (&[101][..], 0.0, 101));
    }

    #[test]
    fn a_lease_request_goes_out_when_due() {
        let mut sim = Sim::new(false);
        sim.poll();
        assert!(matches!(sim.sent.as_slice(), [worker_message::Body::LeaseRequest(_)]));
        let no_work = pb::NoWork { retry_after_ms: 300 };
        sim.feed(Event::Coordinator(coordinator_message::Body::NoWork(no_work)));
        assert_eq!(sim.agent.next_wakeup(), Some(sim.now + Duration::from_millis(300)));
        sim.now += Duration::from_millis(299);
        sim.poll();
        assert_eq!(sim.sent.len(), 1, "not before the coordinator said");
        sim.now += Duration::from_millis(1);
        sim.poll();
        assert_eq!(sim.sent.len(), 2);
    }

    #[test]
    fn a_retryable_failure_announces_the_newest_checkpoint_before_the_failure() {
        let mut sim = Sim::new(false);
        sim.lease();
        sim.checkpoint();
        sim.checkpoint();
        sim.checkpoint();
        // Epoch 1 uploads, epoch 2 was superseded by 3, which waits.
        assert_eq!(sim.discarded, [PathBuf::from("uploads/attempt101-epoch2.ot")]);
        sim.finish(End::Retryable);
        let kinds: Vec<_> = sim
            .delivered
            .iter()
            .map(|b| match b {
                worker_message::Body::Checkpoint(c) => format!("checkpoint {}", c.epochs_done),
                worker_message::Body::Failure(f) => format!("failure {}", f.retryable),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["checkpoint 1", "checkpoint 3", "failure true"]);
    }

    #[test]
    fn a_done_task_does_not_send_again_what_its_snapshots_stored() {
        let mut sim = Sim::new(false);
        sim.lease();
        sim.checkpoint();
        sim.upload_ends(true);
        sim.finish(End::Done);
        let stored = &sim.outputs[0].stored;
        assert!(stored.contains("sha256:101-1"), "{stored:?}");
        assert!(matches!(sim.delivered.last(), Some(worker_message::Body::Result(r)) if r.attempt_id == 101));
    }

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
