//! The coordinator's I/O shell: the tonic service and the driver around the sans-IO
//! [`Scheduler`]. RPCs become scheduler [`Input`]s, scheduler [`Output`]s become messages on the
//! workers' session streams and [`Change`]s in the store. Nothing here decides what runs where.
//!
//! Durability: a report (result, failure, release) is acknowledged only from the store's commit
//! callback, i.e. after every change it caused is on disk. Metric batches are stored keyed by
//! `(attempt, seq)`; batches of a stale attempt are dropped.
//!
//! Retries resume: a train attempt announces each epoch's uploaded checkpoint (`CheckpointSaved`);
//! the newest one per task is recorded as a partial checkpoint and given to the task's next
//! attempt as its `checkpoint` input (to workers that re-send a resumed run's history, see
//! `FEATURE_RESUME_HISTORY`), and older ones are deleted. Every train lease supersedes the metric
//! points of earlier attempts, since each attempt reports the whole history.
//!
//! Logs: one structured line per task transition (task key, attempt, worker, seconds) and per
//! worker join/leave/expiry, so a cluster can be followed from the coordinator's log alone; one
//! per backup attempt started and per attempt that lost the race and was cancelled, naming both
//! workers and their measured throughputs.

use crate::artifacts::ArtifactDir;
use crate::graph::{cost_kind_name, PlannedTask, TaskKind, CHECKPOINT};
use crate::scheduler::{
    AttemptEnd, AttemptId, Input, Output, Scheduler, SchedulerConfig, StateName, StoredState, TaskId, WorkerId,
};
use crate::store::{Change, Store, StoreError, StoreStats};
use freqsweep_common::task::MetricPoint;
use freqsweep_proto::v1::coordinator_server::{Coordinator, CoordinatorServer};
use freqsweep_proto::v1::{self as pb, coordinator_message, worker_message};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

type Outbound = mpsc::Sender<Result<pb::CoordinatorMessage, Status>>;

/// Settings of a running coordinator.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Shared token every call must carry (`None`: no authentication, loopback use only).
    pub token: Option<String>,
    pub scheduler: SchedulerConfig,
    pub heartbeat_interval_ms: u32,
    /// Serve gRPC over TLS with this certificate and key (`None`: plain HTTP/2).
    pub tls: Option<TlsIdentity>,
}

/// The coordinator's certificate chain and private key, both PEM.
#[derive(Clone)]
pub struct TlsIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        write!(f, "TlsIdentity {{ cert: {} bytes, key: redacted }}", self.cert_pem.len())
    }
}

impl TlsIdentity {
    /// Read `cert` and `key` and check that they make a usable TLS server configuration, so a bad
    /// file is reported at start-up rather than by the first worker that fails to connect.
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsIdentity, String> {
        let read = |p: &std::path::Path, what: &str| {
            std::fs::read(p).map_err(|e| format!("cannot read the TLS {what} {}: {e}", p.display()))
        };
        let identity = TlsIdentity { cert_pem: read(cert, "certificate")?, key_pem: read(key, "key")? };
        tonic::transport::Server::builder().tls_config(identity.server_config()).map_err(|e| {
            let cause = std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default();
            format!("{} and {} are not a usable TLS certificate and key: {e}{cause}", cert.display(), key.display())
        })?;
        Ok(identity)
    }

    /// The same identity for the HTTP endpoint (`--http`): dashboard, `/metrics` and the token
    /// are not sent in the clear when the gRPC port is TLS.
    pub fn http_acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, String> {
        use tokio_rustls::rustls::{
            self, pki_types::pem::PemObject, pki_types::CertificateDer, pki_types::PrivateKeyDer,
        };
        let certs = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("TLS certificate: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem).map_err(|e| format!("TLS key: {e}"))?;
        let mut config =
            rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .and_then(|builder| builder.with_no_client_auth().with_single_cert(certs, key))
                .map_err(|e| format!("TLS for HTTP: {e}"))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
    }

    fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

struct WorkerInfo {
    hostname: String,
    device: String,
    joined: Instant,
    last_seen: Instant,
    throughput: f64,
    /// Leases given to this worker session, and how many of them it completed.
    leases: u64,
    completed: u64,
    /// Re-sends a resumed run's history, so it may be given a partial checkpoint.
    resumes_history: bool,
}

/// The newest checkpoint a train task's attempts uploaded (what its next attempt resumes from).
#[derive(Clone, Debug)]
pub struct PartialCheckpoint {
    pub artifact: pb::ArtifactRef,
    pub epochs_done: u32,
}

/// How many failures the snapshot keeps (the dashboard's "recent failures").
const RECENT_FAILURES: usize = 20;

/// A failed attempt or a worker lost while holding work, kept for the dashboard.
struct FailureNote {
    task: Option<TaskId>,
    attempt: Option<u64>,
    worker: String,
    error: String,
    at: Instant,
}

/// Counters since this coordinator process started (Prometheus counters reset on restart too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct AttemptCounts {
    /// Leases handed out.
    pub started: u64,
    /// Attempts whose result was accepted.
    pub completed: u64,
    /// Attempts that reported a failure (retryable or not).
    pub failed: u64,
    /// Attempts that ended without a report: released (drain), worker left or expired.
    pub lost: u64,
    /// Leases of a task that had been leased before (after a failure or a lost attempt).
    pub retried: u64,
}

struct Core {
    scheduler: Scheduler,
    tasks: HashMap<TaskId, PlannedTask>,
    /// Artifacts each finished task produced (train tasks: the checkpoint).
    outputs: HashMap<TaskId, Vec<pb::ArtifactRef>>,
    /// Newest partial checkpoint of unfinished train tasks.
    partials: HashMap<TaskId, PartialCheckpoint>,
    /// Digest → locality key, to translate a worker's cache into keys the scheduler knows.
    digest_keys: HashMap<String, String>,
    sessions: HashMap<WorkerId, Outbound>,
    workers: HashMap<WorkerId, WorkerInfo>,
    next_worker: u64,
    lease_started: HashMap<AttemptId, Instant>,
    metric_points: u64,
    sweep_done: bool,
    /// Tasks by (kind, state), kept up to date from the transitions (a scrape scans no tasks).
    kind_counts: BTreeMap<(TaskKind, StateName), u64>,
    /// Terminal tasks when this process started: the ETA uses only progress made since.
    terminal_at_start: usize,
    attempts: AttemptCounts,
    leased_before: HashSet<TaskId>,
    workers_joined: u64,
    workers_expired: u64,
    failures: VecDeque<FailureNote>,
}

impl Core {
    fn note_failure(&mut self, task: Option<TaskId>, attempt: Option<u64>, worker: String, error: String) {
        if self.failures.len() == RECENT_FAILURES {
            self.failures.pop_front();
        }
        self.failures.push_back(FailureNote { task, attempt, worker, error, at: Instant::now() });
    }
}

/// Everything the RPC handlers share.
pub struct Shared {
    core: Mutex<Core>,
    store: Store,
    artifacts: ArtifactDir,
    config: ServiceConfig,
    started: Instant,
    finished: watch::Sender<bool>,
    sweep_id: String,
    artifact_bytes_received: AtomicU64,
    artifact_bytes_sent: AtomicU64,
}

/// One consistent picture of the coordinator: the `Status` RPC, `GET /metrics` and
/// `GET /api/status` (this struct as JSON) are all rendered from it.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub sweep: String,
    pub uptime_seconds: f64,
    /// Every task is terminal.
    pub finished: bool,
    pub total_tasks: u64,
    /// Done, failed or cancelled.
    pub terminal_tasks: u64,
    /// `terminal_tasks / total_tasks` (1 for an empty sweep).
    pub progress: f64,
    /// Remaining tasks at the rate tasks became terminal since this process started; `None`
    /// until one has.
    pub eta_seconds: Option<f64>,
    /// Every state, zeros included.
    pub tasks_by_state: BTreeMap<String, u64>,
    /// Kind (`train`, `heatmap`) → state → count, zeros included.
    pub tasks_by_kind: BTreeMap<String, BTreeMap<String, u64>>,
    pub attempts: AttemptCounts,
    /// Connected workers, by id.
    pub workers: Vec<WorkerSnapshot>,
    pub workers_joined: u64,
    pub workers_expired: u64,
    /// Metric points received from workers (including batches later found to be duplicates).
    pub metric_points: u64,
    /// Bytes of artifacts uploaded by workers and stored (already-stored digests excluded).
    pub artifact_bytes_received: u64,
    /// Bytes of artifacts streamed to workers.
    pub artifact_bytes_sent: u64,
    pub store: StoreStats,
    /// The most recent failed attempts and lost workers, oldest first.
    pub recent_failures: Vec<FailureSnapshot>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkerSnapshot {
    pub id: String,
    pub hostname: String,
    pub device: String,
    pub running: Vec<RunningTask>,
    pub leases: u64,
    pub completed: u64,
    /// As the worker reports it in heartbeats (items per second of its current task).
    pub throughput: f64,
    pub last_seen_seconds: f64,
    pub connected_seconds: f64,
    /// The scheduler's measured throughput per task kind (`heatmap/resnet18` → work units per
    /// second), what backup decisions use.
    pub measured: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunningTask {
    pub id: u64,
    pub key: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct FailureSnapshot {
    /// Task key (`None` for a worker lost while idle).
    pub task: Option<String>,
    pub attempt: Option<u64>,
    pub worker: String,
    pub error: String,
    pub age_seconds: f64,
    /// The task has failed for good (no attempts left or not retryable).
    pub task_failed: bool,
}

/// Stored task state → what the scheduler restores.
fn stored_state(state: &str) -> StoredState {
    match StateName::parse(state) {
        Some(StateName::Done) => StoredState::Done,
        Some(StateName::Failed) => StoredState::Failed,
        Some(StateName::Cancelled) => StoredState::Cancelled,
        _ => StoredState::Pending,
    }
}

impl Shared {
    /// Build the service state from planned tasks and what the store already holds.
    /// `stored` maps task id → (state, failures, outputs).
    pub fn new(
        config: ServiceConfig,
        store: Store,
        artifacts: ArtifactDir,
        tasks: Vec<PlannedTask>,
        stored: HashMap<TaskId, (String, u32, Vec<pb::ArtifactRef>)>,
        first_attempt: u64,
        sweep_id: String,
    ) -> Arc<Shared> {
        let mut outputs = HashMap::new();
        let mut digest_keys = HashMap::new();
        let restore: Vec<_> = tasks
            .iter()
            .map(|t| {
                let (state, failures) = stored.get(&t.id).map_or((StoredState::Pending, 0), |(s, f, outs)| {
                    if !outs.is_empty() {
                        for o in outs {
                            digest_keys.insert(o.digest.clone(), PlannedTask::checkpoint_key(t.id));
                        }
                        outputs.insert(t.id, outs.clone());
                    }
                    (stored_state(s), *f)
                });
                (t.to_new_task(), state, failures)
            })
            .collect();
        let scheduler = Scheduler::restore(config.scheduler.clone(), restore, first_attempt);
        let finished = scheduler.is_finished();
        let terminal_at_start = scheduler.counts().iter().filter(|(s, _)| s.is_terminal()).map(|(_, c)| c).sum();
        let core = Core {
            scheduler,
            tasks: tasks.into_iter().map(|t| (t.id, t)).collect(),
            outputs,
            partials: HashMap::new(),
            digest_keys,
            sessions: HashMap::new(),
            workers: HashMap::new(),
            next_worker: 1,
            lease_started: HashMap::new(),
            metric_points: 0,
            sweep_done: finished,
            kind_counts: BTreeMap::new(),
            terminal_at_start,
            attempts: AttemptCounts::default(),
            leased_before: HashSet::new(),
            workers_joined: 0,
            workers_expired: 0,
            failures: VecDeque::new(),
        };
        let (tx, _) = watch::channel(finished);
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            store,
            artifacts,
            config,
            started: Instant::now(),
            finished: tx,
            sweep_id,
            artifact_bytes_received: AtomicU64::new(0),
            artifact_bytes_sent: AtomicU64::new(0),
        });
        // Restoring may have decided transitions (cascaded cancellations) that only the first
        // `handle` emits; flush them now, then count tasks by kind from the settled states so
        // every later transition can keep the counts exact.
        shared.tick();
        {
            let mut guard = shared.core.lock().expect("core lock");
            let core = &mut *guard;
            let mut counts = BTreeMap::new();
            for (id, task) in &core.tasks {
                let state = core.scheduler.state(*id).expect("planned tasks are scheduled");
                *counts.entry((task.kind, state)).or_default() += 1;
            }
            core.kind_counts = counts;
        }
        shared
    }

    /// The token HTTP and gRPC calls must carry, if any.
    pub fn token(&self) -> Option<&str> {
        self.config.token.as_deref()
    }

    /// Everything `status`, `/metrics` and the dashboard show, taken under one lock.
    pub fn snapshot(&self) -> Snapshot {
        let store = self.store.stats();
        let core = self.core.lock().expect("core lock");
        let counts = core.scheduler.counts();
        let all_states = [
            StateName::Blocked,
            StateName::Ready,
            StateName::Running,
            StateName::Backoff,
            StateName::Done,
            StateName::Failed,
            StateName::Cancelled,
        ];
        let tasks_by_state =
            all_states.iter().map(|s| (s.as_str().to_string(), counts.get(s).copied().unwrap_or(0) as u64)).collect();
        let tasks_by_kind = [TaskKind::Train, TaskKind::Heatmap]
            .iter()
            .map(|k| {
                let by_state = all_states
                    .iter()
                    .map(|s| (s.as_str().to_string(), core.kind_counts.get(&(*k, *s)).copied().unwrap_or(0)))
                    .collect();
                (k.as_str().to_string(), by_state)
            })
            .collect();
        // The per-kind counts are kept incrementally; they must always add up to the core's.
        debug_assert!(
            all_states.iter().all(|s| {
                let by_kind: u64 = core.kind_counts.iter().filter(|((_, st), _)| st == s).map(|(_, c)| c).sum();
                by_kind == counts.get(s).copied().unwrap_or(0) as u64
            }),
            "tasks by kind drifted from the scheduler's counts"
        );
        let total = core.scheduler.len();
        let terminal: usize = counts.iter().filter(|(s, _)| s.is_terminal()).map(|(_, c)| c).sum();
        let uptime = self.started.elapsed().as_secs_f64();
        let remaining = total - terminal;
        let since_start = terminal.saturating_sub(core.terminal_at_start);
        let eta_seconds = if remaining == 0 {
            Some(0.0)
        } else if since_start > 0 {
            Some(uptime / since_start as f64 * remaining as f64)
        } else {
            None
        };
        let mut ids: Vec<&WorkerId> = core.workers.keys().collect();
        ids.sort();
        let workers = ids
            .into_iter()
            .map(|id| {
                let w = &core.workers[id];
                let running = core
                    .scheduler
                    .running_on(*id)
                    .into_iter()
                    .map(|t| RunningTask { id: t.0, key: core.tasks[&t].key.clone() })
                    .collect();
                WorkerSnapshot {
                    id: worker_name(*id),
                    hostname: w.hostname.clone(),
                    device: w.device.clone(),
                    running,
                    leases: w.leases,
                    completed: w.completed,
                    throughput: w.throughput,
                    last_seen_seconds: w.last_seen.elapsed().as_secs_f64(),
                    connected_seconds: w.joined.elapsed().as_secs_f64(),
                    measured: core
                        .scheduler
                        .throughputs(*id)
                        .into_iter()
                        .map(|(kind, rate)| (cost_kind_name(kind), rate))
                        .collect(),
                }
            })
            .collect();
        let recent_failures = core
            .failures
            .iter()
            .map(|f| FailureSnapshot {
                task: f.task.map(|t| core.tasks[&t].key.clone()),
                attempt: f.attempt,
                worker: f.worker.clone(),
                error: f.error.clone(),
                age_seconds: f.at.elapsed().as_secs_f64(),
                task_failed: f.task.and_then(|t| core.scheduler.state(t)) == Some(StateName::Failed),
            })
            .collect();
        Snapshot {
            sweep: self.sweep_id.clone(),
            uptime_seconds: uptime,
            finished: core.sweep_done,
            total_tasks: total as u64,
            terminal_tasks: terminal as u64,
            progress: if total == 0 { 1.0 } else { terminal as f64 / total as f64 },
            eta_seconds,
            tasks_by_state,
            tasks_by_kind,
            attempts: core.attempts,
            workers,
            workers_joined: core.workers_joined,
            workers_expired: core.workers_expired,
            metric_points: core.metric_points,
            artifact_bytes_received: self.artifact_bytes_received.load(Ordering::Relaxed),
            artifact_bytes_sent: self.artifact_bytes_sent.load(Ordering::Relaxed),
            store,
            recent_failures,
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Restore the newest partial checkpoint of unfinished train tasks (from the store, on resume).
    pub fn restore_partials(&self, partials: impl IntoIterator<Item = (TaskId, PartialCheckpoint)>) {
        let mut core = self.core.lock().expect("core lock");
        for (task, partial) in partials {
            if core.tasks.contains_key(&task) && !core.outputs.contains_key(&task) {
                core.partials.insert(task, partial);
            }
        }
    }

    /// Delete artifact files no row refers to any more (after the change that forgot them committed).
    fn forget_files(&self, digests: Vec<String>) -> impl FnOnce() + Send + 'static {
        let paths: Vec<_> = digests.iter().map(|d| self.artifacts.path(d)).collect();
        move || {
            for path in paths {
                if let Err(e) = std::fs::remove_file(&path) {
                    tracing::debug!(path = %path.display(), error = %e, "superseded checkpoint already gone");
                }
            }
        }
    }

    /// Resolves when every task is terminal.
    pub fn finished(&self) -> watch::Receiver<bool> {
        self.finished.subscribe()
    }

    /// Counts by state (for `status` and the end-of-run summary).
    pub fn counts(&self) -> Vec<(String, usize)> {
        let core = self.core.lock().expect("core lock");
        core.scheduler.counts().iter().filter(|(_, c)| **c > 0).map(|(s, c)| (s.as_str().to_string(), *c)).collect()
    }

    /// Feed one input and act on the outputs; `then` runs after the resulting changes commit.
    fn drive(&self, core: &mut Core, input: Input, extra: Vec<Change>, then: Option<Box<dyn FnOnce(bool) + Send>>) {
        let now = self.now();
        let outputs = core.scheduler.handle(now, input);
        let mut changes = extra;
        let mut accepted = None;
        let mut sweep_done_to: Vec<Outbound> = Vec::new();
        // The attempt an `Output::Backup` announced; its lease comes next.
        let mut backup = None;
        for output in outputs {
            match output {
                Output::Lease { worker, task, attempt } => {
                    let planned = &core.tasks[&task];
                    let mut inputs: Vec<pb::ArtifactRef> =
                        planned.deps.iter().filter_map(|d| core.outputs.get(d)).flatten().cloned().collect();
                    let mut resumes = None;
                    if planned.kind == TaskKind::Train {
                        let can_resume = core.workers.get(&worker).is_some_and(|w| w.resumes_history);
                        if let Some(partial) = core.partials.get(&task).filter(|_| can_resume) {
                            inputs.push(pb::ArtifactRef { name: CHECKPOINT.to_string(), ..partial.artifact.clone() });
                            resumes = Some(partial.epochs_done);
                        }
                    }
                    let lease = pb::Lease {
                        task_id: task.0,
                        attempt_id: attempt.0,
                        task_json: serde_json::to_string(&planned.spec).expect("task specs serialise"),
                        lease_timeout_ms: self.config.scheduler.lease_timeout as u32,
                        inputs,
                    };
                    core.lease_started.insert(attempt, Instant::now());
                    core.attempts.started += 1;
                    let is_backup = backup.take() == Some(attempt);
                    if !core.leased_before.insert(task) && !is_backup {
                        core.attempts.retried += 1;
                    }
                    if let Some(w) = core.workers.get_mut(&worker) {
                        w.leases += 1;
                    }
                    changes.push(Change::AttemptStarted {
                        id: attempt.0,
                        task_id: task.0,
                        worker: worker_name(worker),
                        now_ms: wall_ms(),
                        backup: is_backup,
                    });
                    // Not for a backup: the attempt it races is live and its points may be the
                    // record; the race's loser loses its points when it ends (below).
                    if planned.kind == TaskKind::Train && !is_backup {
                        // This attempt reports the whole history (a resumed one re-sends its
                        // checkpoint's points): earlier attempts' points would be duplicates.
                        changes.push(Change::SupersedeMetrics { task_id: task.0, attempt_id: attempt.0 });
                    }
                    if let Some(epochs_done) = resumes {
                        tracing::info!(task = %planned.key, attempt = attempt.0, worker = %worker_name(worker), epochs_done, "resuming from a partial checkpoint");
                        changes.push(Change::AttemptResumed { id: attempt.0, epochs_done });
                    }
                    send(core, worker, coordinator_message::Body::Lease(lease));
                }
                Output::NoWork { worker, retry_after } => {
                    let body = if core.sweep_done {
                        coordinator_message::Body::SweepDone(pb::SweepDone {})
                    } else {
                        coordinator_message::Body::NoWork(pb::NoWork { retry_after_ms: retry_after as u32 })
                    };
                    send(core, worker, body);
                }
                Output::Cancel { worker, attempt, reason } => {
                    send(core, worker, coordinator_message::Body::Cancel(pb::Cancel { attempt_id: attempt.0, reason }));
                }
                Output::Report { accepted: a, .. } => accepted = Some(a),
                Output::Transition { task, from, to, attempt, worker } => {
                    let planned = &core.tasks[&task];
                    let kind = planned.kind;
                    if let Some(c) = core.kind_counts.get_mut(&(kind, from)) {
                        *c = c.saturating_sub(1);
                    }
                    *core.kind_counts.entry((kind, to)).or_default() += 1;
                    if from == StateName::Running {
                        match to {
                            StateName::Done => {
                                core.attempts.completed += 1;
                                if let Some(w) = worker.and_then(|w| core.workers.get_mut(&w)) {
                                    w.completed += 1;
                                }
                            }
                            StateName::Backoff | StateName::Failed => core.attempts.failed += 1,
                            // Cancelled while running is neither a failure nor lost work.
                            StateName::Cancelled => {}
                            _ => core.attempts.lost += 1,
                        }
                    }
                    let planned = &core.tasks[&task];
                    let seconds = attempt
                        .filter(|_| from == StateName::Running)
                        .and_then(|a| core.lease_started.remove(&a))
                        .map(|t| t.elapsed().as_secs_f64());
                    log_transition(planned, from, to, attempt, worker, seconds);
                    changes.push(Change::TaskState {
                        id: task.0,
                        state: to.as_str().to_string(),
                        attempts: core.scheduler.failures(task),
                        now_ms: wall_ms(),
                    });
                    if let Some(a) = attempt.filter(|_| from == StateName::Running) {
                        changes.push(Change::AttemptEnded {
                            id: a.0,
                            outcome: to.as_str().to_string(),
                            now_ms: wall_ms(),
                        });
                    }
                }
                Output::Backup(b) => {
                    let planned = &core.tasks[&b.task];
                    tracing::info!(
                        task = %planned.key,
                        attempt = b.attempt.0,
                        worker = %worker_name(b.worker),
                        straggler = b.straggler.0,
                        straggler_worker = %worker_name(b.straggler_worker),
                        kind = %cost_kind_name(b.kind),
                        units = planned.cost.units,
                        rate = b.rate,
                        straggler_rate = b.straggler_rate,
                        expected_s = b.expected_ms as f64 / 1000.0,
                        straggler_remaining_s = b.remaining_ms as f64 / 1000.0,
                        "backup attempt started"
                    );
                    backup = Some(b.attempt);
                }
                Output::AttemptEnded { task, attempt, worker, outcome } => {
                    let planned = &core.tasks[&task];
                    let seconds = core.lease_started.remove(&attempt).map(|t| t.elapsed().as_secs_f64());
                    let kind = planned.cost.kind;
                    let rate = |w| core.scheduler.throughput(w, kind).or(core.scheduler.fleet_throughput(kind));
                    match outcome {
                        AttemptEnd::Superseded { winner, winner_worker } => tracing::info!(
                            task = %planned.key,
                            attempt = attempt.0,
                            worker = %worker_name(worker),
                            winner = winner.0,
                            winner_worker = %worker_name(winner_worker),
                            kind = %cost_kind_name(kind),
                            rate = ?rate(worker),
                            winner_rate = ?rate(winner_worker),
                            ?seconds,
                            "attempt lost the race and is cancelled"
                        ),
                        _ => tracing::info!(
                            task = %planned.key,
                            attempt = attempt.0,
                            worker = %worker_name(worker),
                            outcome = outcome.as_str(),
                            ?seconds,
                            "attempt ended; another attempt of the task runs on"
                        ),
                    }
                    changes.push(Change::AttemptEnded {
                        id: attempt.0,
                        outcome: outcome.as_str().into(),
                        now_ms: wall_ms(),
                    });
                    // Another attempt of the task finished or runs on, reporting the whole history
                    // itself: this one's points would be duplicates.
                    changes.push(Change::DiscardMetrics { attempt_id: attempt.0 });
                }
                Output::WorkerExpired { worker } => {
                    tracing::warn!(worker = %worker_name(worker), "worker expired (no heartbeat)");
                    core.workers_expired += 1;
                    let error = format!(
                        "worker expired: no message for {} s; its tasks were re-queued",
                        self.config.scheduler.lease_timeout / 1000
                    );
                    core.note_failure(None, None, worker_name(worker), error);
                    core.sessions.remove(&worker);
                    core.workers.remove(&worker);
                    changes.push(Change::WorkerLeft { id: worker_name(worker), now_ms: wall_ms() });
                }
                Output::SweepFinished => {
                    core.sweep_done = true;
                    // Told from the commit callback below, after the last acknowledgement.
                    sweep_done_to = core.sessions.values().cloned().collect();
                    tracing::info!(
                        counts = ?core.scheduler.counts(),
                        seconds = self.started.elapsed().as_secs_f64(),
                        artifact_received_bytes = self.artifact_bytes_received.load(Ordering::Relaxed),
                        artifact_sent_bytes = self.artifact_bytes_sent.load(Ordering::Relaxed),
                        "sweep finished"
                    );
                }
            }
        }
        let finished_now = core.sweep_done;
        let finished = self.finished.clone();
        let accepted = accepted.unwrap_or(true);
        self.store.submit(changes, move |result: Result<(), StoreError>| {
            if let Err(e) = &result {
                tracing::error!(error = %e, "store write failed");
            }
            if let Some(then) = then {
                then(accepted && result.is_ok());
            }
            for tx in sweep_done_to {
                let _ = tx.try_send(Ok(pb::CoordinatorMessage {
                    body: Some(coordinator_message::Body::SweepDone(pb::SweepDone {})),
                }));
            }
            if finished_now {
                let _ = finished.send(true);
            }
        });
    }

    /// Periodic deadline processing (worker expiry, backoff ends).
    pub fn tick(&self) {
        let mut core = self.core.lock().expect("core lock");
        self.drive(&mut core, Input::Tick, Vec::new(), None);
    }
}

fn send(core: &Core, worker: WorkerId, body: coordinator_message::Body) {
    if let Some(tx) = core.sessions.get(&worker) {
        let _ = tx.try_send(Ok(pb::CoordinatorMessage { body: Some(body) }));
    }
}

fn worker_name(worker: WorkerId) -> String {
    format!("w{}", worker.0)
}

fn parse_worker(name: &str) -> Option<WorkerId> {
    name.strip_prefix('w')?.parse().ok().map(WorkerId)
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn log_transition(
    task: &PlannedTask,
    from: StateName,
    to: StateName,
    attempt: Option<AttemptId>,
    worker: Option<WorkerId>,
    seconds: Option<f64>,
) {
    let attempt = attempt.map(|a| a.0);
    let worker = worker.map(worker_name);
    match to {
        StateName::Failed => {
            tracing::warn!(task = %task.key, id = task.id.0, ?attempt, ?worker, ?seconds, from = from.as_str(), "task failed")
        }
        _ => tracing::info!(
            task = %task.key,
            id = task.id.0,
            ?attempt,
            ?worker,
            ?seconds,
            from = from.as_str(),
            to = to.as_str(),
            "task"
        ),
    }
}

fn ack(tx: Outbound, attempt: u64) -> Box<dyn FnOnce(bool) + Send> {
    Box::new(move |accepted| {
        let _ = tx.try_send(Ok(pb::CoordinatorMessage {
            body: Some(coordinator_message::Body::Ack(pb::Ack { attempt_id: attempt, accepted })),
        }));
    })
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

    fn handle_message(&self, worker: WorkerId, tx: &Outbound, message: pb::WorkerMessage) {
        let shared = &self.0;
        let mut core = shared.core.lock().expect("core lock");
        if let Some(info) = core.workers.get_mut(&worker) {
            info.last_seen = Instant::now();
        }
        let Some(body) = message.body else { return };
        match body {
            worker_message::Body::Heartbeat(h) => {
                if let Some(info) = core.workers.get_mut(&worker) {
                    info.throughput = h.throughput;
                }
                shared.drive(&mut core, Input::Heartbeat { worker }, Vec::new(), None);
            }
            worker_message::Body::LeaseRequest(r) => {
                shared.drive(&mut core, Input::LeaseRequest { worker, slots: r.slots.max(1) }, Vec::new(), None);
            }
            worker_message::Body::Metrics(batch) => {
                let Some((task, _)) = core.scheduler.attempt(AttemptId(batch.attempt_id)) else { return };
                core.metric_points += batch.points.len() as u64;
                let points = batch.points.into_iter().map(from_wire).collect();
                let change = Change::Metrics { task_id: task.0, attempt_id: batch.attempt_id, seq: batch.seq, points };
                shared.drive(&mut core, Input::Heartbeat { worker }, vec![change], None);
            }
            worker_message::Body::Result(r) => {
                let attempt = AttemptId(r.attempt_id);
                let Some((task, _)) = core.scheduler.attempt(attempt) else {
                    ack(tx.clone(), r.attempt_id)(false);
                    return;
                };
                if let Some(missing) = r.outputs.iter().find(|o| !shared.artifacts.contains(&o.digest)) {
                    let error =
                        format!("result names artifact {} ({}) that was never uploaded", missing.name, missing.digest);
                    core.note_failure(Some(task), Some(r.attempt_id), worker_name(worker), error.clone());
                    let input = Input::Failed { attempt, error: error.clone(), retryable: true };
                    shared.drive(
                        &mut core,
                        input,
                        vec![Change::TaskError { id: task.0, error }],
                        Some(ack(tx.clone(), r.attempt_id)),
                    );
                    return;
                }
                let mut changes = vec![Change::TaskResult { id: task.0, result_json: r.result_json }];
                let mut keys = Vec::new();
                for o in &r.outputs {
                    let key = PlannedTask::checkpoint_key(task);
                    core.digest_keys.insert(o.digest.clone(), key.clone());
                    keys.push(key);
                    changes.push(Change::Artifact {
                        digest: o.digest.clone(),
                        name: o.name.clone(),
                        size: o.size,
                        path: shared.artifacts.path(&o.digest).display().to_string(),
                        task_id: Some(task.0),
                    });
                }
                if !r.outputs.is_empty() {
                    core.outputs.insert(task, r.outputs.clone());
                }
                // The task is done: its partial checkpoint is no longer needed, unless it is the
                // final one (same bytes), whose row the output just replaced.
                let mut forget = Vec::new();
                if let Some(partial) = core.partials.remove(&task) {
                    if !r.outputs.iter().any(|o| o.digest == partial.artifact.digest) {
                        changes.push(Change::DeleteArtifact { digest: partial.artifact.digest.clone() });
                        forget.push(partial.artifact.digest);
                    }
                }
                let acknowledge = ack(tx.clone(), r.attempt_id);
                let forget = shared.forget_files(forget);
                shared.drive(
                    &mut core,
                    Input::Completed { attempt, outputs: keys },
                    changes,
                    Some(Box::new(move |accepted| {
                        if accepted {
                            forget();
                        }
                        acknowledge(accepted)
                    })),
                );
            }
            worker_message::Body::Failure(f) => {
                let attempt = AttemptId(f.attempt_id);
                let task = core.scheduler.attempt(attempt).map(|(t, _)| t);
                let changes =
                    task.map(|t| vec![Change::TaskError { id: t.0, error: f.error.clone() }]).unwrap_or_default();
                if let Some(t) = task {
                    tracing::warn!(task = %core.tasks[&t].key, attempt = f.attempt_id, retryable = f.retryable, error = %f.error, "attempt failed");
                    core.note_failure(Some(t), Some(f.attempt_id), worker_name(worker), f.error.clone());
                }
                let input = Input::Failed { attempt, error: f.error, retryable: f.retryable };
                shared.drive(&mut core, input, changes, Some(ack(tx.clone(), f.attempt_id)));
            }
            worker_message::Body::Checkpoint(c) => self.checkpoint_saved(&mut core, worker, tx, c),
            worker_message::Body::Release(r) => {
                tracing::info!(worker = %worker_name(worker), attempt = r.attempt_id, reason = %r.reason, "lease released");
                shared.drive(
                    &mut core,
                    Input::Released { attempt: AttemptId(r.attempt_id) },
                    Vec::new(),
                    Some(ack(tx.clone(), r.attempt_id)),
                );
            }
        }
    }
}

impl Service {
    /// Record a train attempt's per-epoch checkpoint if it is the task's newest, and delete the one
    /// it supersedes once that is committed.
    fn checkpoint_saved(&self, core: &mut Core, worker: WorkerId, tx: &Outbound, c: pb::CheckpointSaved) {
        let shared = &self.0;
        let refuse = |why: &str| {
            tracing::debug!(attempt = c.attempt_id, epochs_done = c.epochs_done, why, "checkpoint not recorded");
            ack(tx.clone(), c.attempt_id)(false);
        };
        let Some((task, _)) = core.scheduler.attempt(AttemptId(c.attempt_id)) else { return refuse("stale attempt") };
        let Some(artifact) = c.artifact.clone() else { return refuse("no artifact") };
        if core.tasks[&task].kind != TaskKind::Train {
            return refuse("not a train task");
        }
        if !shared.artifacts.contains(&artifact.digest) {
            tracing::warn!(attempt = c.attempt_id, digest = %artifact.digest, "checkpoint announced but never uploaded");
            return refuse("not uploaded");
        }
        if core.partials.get(&task).is_some_and(|p| p.epochs_done >= c.epochs_done) {
            // An older epoch announced late (a drain flushes its last uploads): keep the newer.
            return ack(tx.clone(), c.attempt_id)(true);
        }
        tracing::info!(task = %core.tasks[&task].key, attempt = c.attempt_id, epochs_done = c.epochs_done, "checkpoint saved");
        let mut changes = vec![Change::PartialCheckpoint {
            digest: artifact.digest.clone(),
            name: artifact.name.clone(),
            size: artifact.size,
            path: shared.artifacts.path(&artifact.digest).display().to_string(),
            task_id: task.0,
            attempt_id: c.attempt_id,
            epochs_done: c.epochs_done,
        }];
        let partial = PartialCheckpoint { artifact, epochs_done: c.epochs_done };
        let mut forget = Vec::new();
        if let Some(old) = core.partials.insert(task, partial) {
            if old.artifact.digest != c.artifact.as_ref().map_or("", |a| a.digest.as_str()) {
                changes.push(Change::DeleteArtifact { digest: old.artifact.digest.clone() });
                forget.push(old.artifact.digest);
            }
        }
        let acknowledge = ack(tx.clone(), c.attempt_id);
        let forget = shared.forget_files(forget);
        shared.drive(
            core,
            Input::Heartbeat { worker },
            changes,
            Some(Box::new(move |accepted| {
                if accepted {
                    forget();
                }
                acknowledge(accepted)
            })),
        );
    }
}

/// Checks the bearer token on every call.
#[derive(Clone)]
pub struct Auth(Option<String>);

impl tonic::service::Interceptor for Auth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.0 else { return Ok(request) };
        match request.metadata().get("authorization").and_then(|v| v.to_str().ok()) {
            Some(got) if got == expected => Ok(request),
            Some(_) => Err(Status::unauthenticated("wrong token (check FREQSWEEP_TOKEN)")),
            None => Err(Status::unauthenticated("missing token (set FREQSWEEP_TOKEN)")),
        }
    }
}

fn from_wire(p: pb::MetricPoint) -> MetricPoint {
    MetricPoint {
        name: p.name,
        epoch: p.epoch,
        step: p.step,
        test_set: p.test_set,
        class_index: p.class_index,
        value: p.value,
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
        let shared = &self.0;
        let mut core = shared.core.lock().expect("core lock");
        let worker = WorkerId(core.next_worker);
        core.next_worker += 1;
        let device = r.capabilities.as_ref().map(|c| c.device.clone()).unwrap_or_default();
        let cached: Vec<String> = r.cached_artifacts.iter().filter_map(|d| core.digest_keys.get(d).cloned()).collect();
        tracing::info!(worker = %worker_name(worker), hostname = %r.hostname, device = %device, version = %r.worker_version, "worker joined");
        core.workers.insert(
            worker,
            WorkerInfo {
                hostname: r.hostname.clone(),
                device: device.clone(),
                joined: Instant::now(),
                last_seen: Instant::now(),
                throughput: 0.0,
                leases: 0,
                completed: 0,
                resumes_history: r.features.iter().any(|f| f == freqsweep_proto::FEATURE_RESUME_HISTORY),
            },
        );
        core.workers_joined += 1;
        let change = Change::WorkerJoined { id: worker_name(worker), hostname: r.hostname, device, now_ms: wall_ms() };
        shared.drive(&mut core, Input::WorkerJoined { worker, cached }, vec![change], None);
        Ok(Response::new(pb::RegisterReply {
            worker_id: worker_name(worker),
            heartbeat_interval_ms: shared.config.heartbeat_interval_ms,
            lease_timeout_ms: shared.config.scheduler.lease_timeout as u32,
            sweep_id: shared.sweep_id.clone(),
        }))
    }

    type SessionStream = Boxed<pb::CoordinatorMessage>;

    async fn session(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(1024);
        let service = self.clone();
        tokio::spawn(async move {
            let mut worker = None;
            while let Some(message) = inbound.next().await {
                let Ok(message) = message else { break };
                let id = match worker {
                    Some(id) => id,
                    None => {
                        let Some(id) = parse_worker(&message.worker_id) else { break };
                        let mut core = service.0.core.lock().expect("core lock");
                        if !core.workers.contains_key(&id) {
                            let _ = tx.try_send(Err(Status::failed_precondition("unknown worker id: register first")));
                            break;
                        }
                        core.sessions.insert(id, tx.clone());
                        worker = Some(id);
                        id
                    }
                };
                service.handle_message(id, &tx, message);
            }
            if let Some(id) = worker {
                let shared = &service.0;
                let mut core = shared.core.lock().expect("core lock");
                core.sessions.remove(&id);
                if core.workers.remove(&id).is_some() {
                    tracing::info!(worker = %worker_name(id), "worker left");
                    let change = Change::WorkerLeft { id: worker_name(id), now_ms: wall_ms() };
                    shared.drive(&mut core, Input::WorkerLeft { worker: id }, vec![change], None);
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
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
        shared.artifact_bytes_received.fetch_add(reference.size, Ordering::Relaxed);
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
        let mut offset = r.offset;
        let messages: Vec<Result<pb::ArtifactChunk, Status>> = chunks
            .into_iter()
            .map(|data| {
                let chunk = pb::ArtifactChunk { artifact: None, offset, data };
                offset += chunk.data.len() as u64;
                Ok(chunk)
            })
            .collect();
        // Counted when queued: a download cut short is retried from its offset, which counts again.
        self.0.artifact_bytes_sent.fetch_add(offset - r.offset, Ordering::Relaxed);
        Ok(Response::new(Box::pin(tokio_stream::iter(messages))))
    }

    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::StatusReply>, Status> {
        let snap = self.0.snapshot();
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

/// Serve on `listener` until `shutdown` flips; ticks the scheduler's deadlines meanwhile.
pub async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let ticker = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(100));
            loop {
                interval.tick().await;
                shared.tick();
            }
        })
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &shared.config.tls {
        builder = match builder.tls_config(tls.server_config()) {
            Ok(b) => b,
            Err(e) => {
                ticker.abort();
                return Err(e);
            }
        };
    }
    let result = builder
        .add_service(Service(shared).into_server())
        .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async move {
            while !*shutdown.borrow() {
                if shutdown.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
    ticker.abort();
    result
}
