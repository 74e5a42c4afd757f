//! The driver: owns the sans-IO [`Scheduler`], the planned tasks and the store handle, and turns
//! what workers say ([`FromWorker`], in domain types; `grpc.rs` converts the wire) into scheduler
//! [`Input`]s, and the scheduler's [`Output`]s into messages for the workers' sessions
//! ([`ToWorker`]) and [`Change`]s in the store. Everything the coordinator decides about sessions,
//! attempts and results lives here or in the rooms of `kinds/`; it is unit-tested below against a
//! real store in a temporary directory, without a network.
//!
//! Protocol invariants, enforced here:
//! - A worker id belongs to the one session the coordinator gave it to: `Register` returns the id
//!   and a random session key, and only a `Session` presenting both is attached; a second session
//!   for an attached id is refused.
//! - A report (result, failure, release, checkpoint, metrics) is accepted only from the session
//!   holding that live attempt, and a result only if it fits its task (`kinds::check_result`).
//! - A session the coordinator has dropped (expired: a paused or partitioned worker) is told so
//!   (`ToWorker::Closed`) and its later messages are not processed: the worker registers again.
//! - Nothing sent to a worker is dropped silently: a session whose queue is full (a client that
//!   does not read) is closed and its attempts re-queued; heartbeats reconcile the attempts a
//!   worker runs with those the core thinks it runs.
//!
//! Durability: a report is acknowledged only from the store's commit callback, i.e. after every
//! change it caused is on disk. Metric batches are stored keyed by `(attempt, seq)`.
//!
//! Logs: one structured line per task transition (task key, attempt, worker, seconds) and per
//! worker join/leave/expiry; one per backup attempt started and per attempt that lost the race.

use crate::artifacts::{ArtifactDir, ArtifactRef};
use crate::conn::ConnectionLimits;
use crate::graph::PlannedTask;
use crate::kinds;
use crate::scheduler::{
    AttemptEnd, AttemptId, Input, Millis, Output, Scheduler, SchedulerConfig, StateName, StoredState, TaskId, WorkerId,
};
use crate::snapshot::{AttemptCounts, FailureNote};
use crate::store::{Change, Store, StoreError};
use crate::tls::TlsIdentity;
use freqsweep_common::task::{epoch_output, MetricPoint, TaskKind, TaskOutcome, CHECKPOINT_OUTPUT, MODEL_OUTPUT};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, Notify};

/// Messages queued per session before the session counts as not reading (and is closed).
pub const SESSION_QUEUE: usize = 1024;

/// Settings of a running coordinator.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Shared token every call must carry (`None`: no authentication, loopback use only).
    pub token: Option<String>,
    pub scheduler: SchedulerConfig,
    pub heartbeat_interval_ms: u32,
    /// Serve gRPC over TLS with this certificate and key (`None`: plain HTTP/2).
    pub tls: Option<TlsIdentity>,
    /// Bounds on the connections of the gRPC and the HTTP port (`None`: derived from the
    /// descriptor limit and the lease timeout, see [`crate::conn`]).
    pub connections: Option<ConnectionLimits>,
}

impl ServiceConfig {
    /// The connection bounds of a port that gets `share` of the descriptors.
    pub fn connection_limits(&self, share: f64) -> ConnectionLimits {
        self.connections.clone().unwrap_or_else(|| {
            ConnectionLimits::for_this_process(Duration::from_millis(self.scheduler.lease_timeout), share)
        })
    }
}

/// What a worker says on its session, in domain types.
#[derive(Clone, Debug, PartialEq)]
pub enum FromWorker {
    /// `running`: the attempts it runs or still has to report; `newest_lease`: the newest attempt
    /// it received a lease for.
    Heartbeat {
        running: Vec<AttemptId>,
        newest_lease: AttemptId,
        throughput: f64,
    },
    LeaseRequest {
        slots: u32,
    },
    Metrics {
        attempt: AttemptId,
        seq: u64,
        points: Vec<MetricPoint>,
    },
    Result {
        attempt: AttemptId,
        result_json: String,
        outputs: Vec<ArtifactRef>,
    },
    Failure {
        attempt: AttemptId,
        error: String,
        retryable: bool,
    },
    Release {
        attempt: AttemptId,
        reason: String,
    },
    Checkpoint {
        attempt: AttemptId,
        artifact: Option<ArtifactRef>,
        epochs_done: u32,
    },
}

/// What the coordinator tells a worker.
#[derive(Clone, Debug, PartialEq)]
pub enum ToWorker {
    Lease {
        task: TaskId,
        attempt: AttemptId,
        task_json: String,
        lease_timeout_ms: u32,
        inputs: Vec<ArtifactRef>,
    },
    Cancel {
        attempt: AttemptId,
        reason: String,
    },
    NoWork {
        retry_after: Millis,
    },
    Ack {
        attempt: AttemptId,
        accepted: bool,
    },
    SweepDone,
    /// The coordinator dropped this session: register again (what it still has to report is
    /// sent on the new session).
    Closed {
        reason: String,
    },
}

/// A worker's registration.
#[derive(Clone, Debug, Default)]
pub struct Registration {
    pub hostname: String,
    pub device: String,
    pub version: String,
    pub cached_artifacts: Vec<String>,
    pub resumes_history: bool,
}

/// What `Register` answers.
#[derive(Clone, Debug)]
pub struct Registered {
    pub worker: WorkerId,
    /// Presented when the session is opened: only the registering client knows it.
    pub session_key: String,
    pub heartbeat_interval_ms: u32,
    pub lease_timeout_ms: u32,
    pub sweep_id: String,
}

/// The session a worker's messages came in on (its id plus which attachment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionId {
    pub worker: WorkerId,
    serial: u64,
}

/// A task as the store left it (what a restarted coordinator resumes from).
#[derive(Clone, Debug, Default)]
pub struct StoredTask {
    pub state: String,
    pub failures: u32,
    pub outputs: Vec<ArtifactRef>,
    pub result_json: Option<String>,
}

/// The newest checkpoint a train task's attempts uploaded (what its next attempt resumes from).
#[derive(Clone, Debug)]
pub struct PartialCheckpoint {
    pub artifact: ArtifactRef,
    pub epochs_done: u32,
}

pub(crate) struct WorkerInfo {
    pub hostname: String,
    pub device: String,
    pub joined: Instant,
    pub last_seen: Instant,
    pub throughput: f64,
    /// Leases given to this worker session, and how many of them it completed.
    pub leases: u64,
    pub completed: u64,
    /// Re-sends a resumed run's history, so it may be given a partial checkpoint.
    resumes_history: bool,
    /// Proves the session was opened by the client that registered.
    session_key: String,
}

struct Session {
    serial: u64,
    tx: mpsc::Sender<ToWorker>,
}

/// Counters the gRPC shell updates without the driver's lock.
#[derive(Debug, Default)]
pub struct Counters {
    pub artifact_bytes_received: AtomicU64,
    pub artifact_bytes_sent: AtomicU64,
}

/// Everything that decides: the scheduler core and the state around it.
pub struct Driver {
    pub(crate) scheduler: Scheduler,
    pub(crate) tasks: HashMap<TaskId, PlannedTask>,
    /// Artifacts each finished task produced, by name.
    outputs: HashMap<TaskId, Vec<ArtifactRef>>,
    /// Artifacts merges derived from accepted results, by key (`kinds::Derived`).
    derived: HashMap<String, ArtifactRef>,
    /// The stored files of the sweep's given models, by model name.
    given: HashMap<String, ArtifactRef>,
    /// Per train task, the epochs whose checkpoints analyses take, with those analyses.
    kept: HashMap<TaskId, BTreeMap<u32, Vec<TaskId>>>,
    /// Heatmaps and DFMs merged chunk by chunk as results are accepted.
    pub(crate) maps: kinds::Merged,
    /// Grid point ids by index, and each point's train task (for the dashboard).
    pub(crate) point_ids: Vec<String>,
    pub(crate) point_trains: Vec<Option<TaskId>>,
    /// Newest partial checkpoint of unfinished tasks that resume from them.
    partials: HashMap<TaskId, PartialCheckpoint>,
    /// Digest → locality key, to translate a worker's cache into keys the scheduler knows.
    digest_keys: HashMap<String, String>,
    sessions: HashMap<WorkerId, Session>,
    pub(crate) workers: HashMap<WorkerId, WorkerInfo>,
    next_worker: u64,
    next_serial: u64,
    lease_started: HashMap<AttemptId, Instant>,
    pub(crate) metric_points: u64,
    pub(crate) sweep_done: bool,
    /// Tasks by (kind, state), kept up to date from the transitions (a scrape scans no tasks).
    pub(crate) kind_counts: BTreeMap<(TaskKind, StateName), u64>,
    /// Terminal tasks when this process started: the ETA uses only progress made since.
    pub(crate) terminal_at_start: usize,
    pub(crate) attempts: AttemptCounts,
    leased_before: HashSet<TaskId>,
    pub(crate) workers_joined: u64,
    pub(crate) workers_expired: u64,
    pub(crate) failures: VecDeque<FailureNote>,
    /// Sessions found not reading while outputs were sent: closed once the outputs are handled.
    overflowed: Vec<(WorkerId, String)>,
    /// The deadline the timer task sleeps until (it is woken when an earlier one appears).
    armed: Option<Millis>,
    /// Added to the clock: tests move time forward without sleeping (0 otherwise).
    skew: Millis,
    store: Store,
    artifacts: ArtifactDir,
    pub(crate) config: ServiceConfig,
    pub(crate) started: Instant,
    finished: watch::Sender<bool>,
    pub(crate) sweep_id: String,
    pub(crate) counters: Arc<Counters>,
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

/// A handler panicked while it held the driver; the driver is still usable.
#[derive(Debug)]
pub struct Panicked(pub String);

/// The driver behind one lock, the timer's wake-up and the counters: what the gRPC and HTTP
/// handlers share.
pub struct Shared {
    driver: Mutex<Driver>,
    wake: Notify,
    pub(crate) artifacts: ArtifactDir,
    pub(crate) config: ServiceConfig,
    pub(crate) counters: Arc<Counters>,
    finished: watch::Receiver<bool>,
}

impl Shared {
    /// Build the service state from planned tasks and what the store already holds.
    pub fn new(
        config: ServiceConfig,
        store: Store,
        artifacts: ArtifactDir,
        tasks: Vec<PlannedTask>,
        stored: HashMap<TaskId, StoredTask>,
        first_attempt: u64,
        sweep_id: String,
    ) -> Arc<Shared> {
        let mut outputs = HashMap::new();
        let mut digest_keys = HashMap::new();
        let restore: Vec<_> = tasks
            .iter()
            .map(|t| {
                let (state, failures) = stored.get(&t.id).map_or((StoredState::Pending, 0), |s| {
                    if !s.outputs.is_empty() {
                        for o in &s.outputs {
                            digest_keys.insert(o.digest.clone(), kinds::output_key(t.id, &o.name));
                        }
                        outputs.insert(t.id, s.outputs.clone());
                    }
                    (stored_state(&s.state), s.failures)
                });
                (t.to_new_task(), state, failures)
            })
            .collect();
        let scheduler = Scheduler::restore(config.scheduler.clone(), restore, first_attempt);
        let done = scheduler.is_finished();
        let terminal_at_start = scheduler.counts().iter().filter(|(s, _)| s.is_terminal()).map(|(_, c)| c).sum();
        let (finished, finished_rx) = watch::channel(done);
        let counters = Arc::new(Counters::default());
        let maps = kinds::Merged::new(&tasks, kinds::Keep::MapsOnly);
        let kept = kinds::epoch_consumers(&tasks);
        let mut driver = Driver {
            scheduler,
            tasks: tasks.into_iter().map(|t| (t.id, t)).collect(),
            outputs,
            derived: HashMap::new(),
            given: HashMap::new(),
            point_ids: Vec::new(),
            point_trains: Vec::new(),
            kept,
            maps,
            partials: HashMap::new(),
            digest_keys,
            sessions: HashMap::new(),
            workers: HashMap::new(),
            next_worker: 1,
            next_serial: 1,
            lease_started: HashMap::new(),
            metric_points: 0,
            sweep_done: done,
            kind_counts: BTreeMap::new(),
            terminal_at_start,
            attempts: AttemptCounts::default(),
            leased_before: HashSet::new(),
            workers_joined: 0,
            workers_expired: 0,
            failures: VecDeque::new(),
            overflowed: Vec::new(),
            armed: None,
            skew: 0,
            store,
            artifacts: artifacts.clone(),
            config: config.clone(),
            started: Instant::now(),
            finished,
            sweep_id,
            counters: counters.clone(),
        };
        // Restoring may have decided transitions (cascaded cancellations) that only the first
        // `handle` emits; flush them now, then count tasks by kind from the settled states so
        // every later transition keeps the counts exact.
        driver.tick();
        let mut counts = BTreeMap::new();
        for (id, task) in &driver.tasks {
            if let Some(state) = driver.scheduler.state(*id) {
                *counts.entry((task.kind(), state)).or_default() += 1;
            }
        }
        driver.kind_counts = counts;
        // Merge what finished before a restart, so maps keep filling in where they were.
        let mut done: Vec<(TaskId, &String)> = stored
            .iter()
            .filter(|(_, s)| stored_state(&s.state) == StoredState::Done)
            .filter_map(|(id, s)| Some((*id, s.result_json.as_ref()?)))
            .collect();
        done.sort_by_key(|(id, _)| *id);
        let mut changes = Vec::new();
        for (id, json) in done {
            let Some(task) = driver.tasks.get(&id) else { continue };
            let merged = serde_json::from_str(json)
                .map_err(|e| e.to_string())
                .and_then(|outcome| merge_accepted(&mut driver.maps, &driver.artifacts, task, &outcome, &mut changes));
            match merged {
                Ok(derived) => driver.record_derived(derived),
                Err(e) => {
                    tracing::warn!(task = %task.key, error = %e, "a stored result could not be merged; the report merges from the store")
                }
            }
        }
        // A map completed before the crash but whose artifact row was not committed gets it now.
        driver.store.submit(changes, |result| {
            if let Err(e) = result {
                tracing::error!(error = %e, "store write failed");
            }
        });
        Arc::new(Shared {
            driver: Mutex::new(driver),
            wake: Notify::new(),
            artifacts,
            config,
            counters,
            finished: finished_rx,
        })
    }

    /// Run `f` on the driver. A panic inside is caught and reported, and the lock it poisoned is
    /// taken over: one broken handler must not take every later RPC (and the coordinator) down.
    pub fn with<R>(&self, f: impl FnOnce(&mut Driver) -> R) -> Result<R, Panicked> {
        let mut guard = self.lock();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut guard)));
        let wake = guard.take_wake();
        drop(guard);
        if wake {
            self.wake.notify_one();
        }
        result.map_err(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(panic = %what, "a coordinator handler panicked; the request failed, the coordinator goes on");
            Panicked(what)
        })
    }

    fn lock(&self) -> MutexGuard<'_, Driver> {
        self.driver.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The token HTTP and gRPC calls must carry, if any.
    pub fn token(&self) -> Option<&str> {
        self.config.token.as_deref()
    }

    /// Everything `status`, `/metrics` and the dashboard show, taken under one lock.
    pub fn snapshot(&self) -> crate::snapshot::Snapshot {
        self.lock().snapshot()
    }

    /// The sweep's grid point ids, by index (the dashboard names points with them).
    pub fn set_point_ids(&self, ids: Vec<String>) {
        let mut driver = self.lock();
        let mut trains = vec![None; ids.len()];
        for task in driver.tasks.values().filter(|t| kinds::trains_model(t.kind())) {
            if let Some(slot) = trains.get_mut(task.point) {
                *slot = Some(task.id);
            }
        }
        driver.point_trains = trains;
        driver.point_ids = ids;
    }

    /// Every grid point: its training state and how many of its maps are complete.
    pub fn live_points(&self) -> Vec<crate::live::PointSummary> {
        self.lock().live_points()
    }

    /// Point `index` as merged now, with its F1 curves from the store; `None` outside the sweep.
    pub fn live_point(&self, index: usize) -> Result<Option<crate::live::PointDetail>, crate::store::StoreError> {
        let (detail, store) = {
            let driver = self.lock();
            (driver.live_point(index), driver.store.clone())
        };
        let Some(mut detail) = detail else { return Ok(None) };
        // Outside the lock: reading the curves must not hold up the workers' reports.
        detail.read_curves(&store.reader()?)?;
        Ok(Some(detail))
    }

    /// Restore the newest partial checkpoint of unfinished tasks (from the store, on resume).
    /// The stored files of the sweep's given models (name → artifact), which leases of their
    /// analyses carry as the input `model`.
    pub fn set_given_models(&self, given: impl IntoIterator<Item = (String, ArtifactRef)>) {
        let mut driver = self.lock();
        for (name, artifact) in given {
            driver.digest_keys.insert(artifact.digest.clone(), kinds::given_key(&name));
            driver.given.insert(name, artifact);
        }
    }

    /// The partial checkpoints of unfinished train tasks, and the analyses waiting for an epoch
    /// checkpoint stored before a restart (as a kept output, or as the newest partial).
    pub fn restore_partials(&self, partials: impl IntoIterator<Item = (TaskId, PartialCheckpoint)>) {
        let mut driver = self.lock();
        for (task, partial) in partials {
            let finished = driver.outputs.get(&task).is_some_and(|o| o.iter().any(|a| a.name == MODEL_OUTPUT));
            if !driver.tasks.contains_key(&task) || finished {
                continue;
            }
            if driver.kept.get(&task).is_some_and(|k| k.contains_key(&partial.epochs_done)) {
                let output = ArtifactRef { name: epoch_output(partial.epochs_done), ..partial.artifact.clone() };
                driver.outputs.entry(task).or_default().push(output);
            }
            let newer = driver.partials.get(&task).is_some_and(|p| p.epochs_done >= partial.epochs_done);
            if !newer {
                driver.partials.insert(task, partial);
            }
        }
        // A kept epoch checkpoint is stored as an output, not as a partial: the newest of them
        // is what an unfinished run resumes from when no newer partial is stored.
        let trains: Vec<TaskId> = driver.kept.keys().copied().collect();
        for train in trains {
            let outputs = driver.outputs.get(&train).map_or(&[][..], Vec::as_slice);
            if outputs.iter().any(|a| a.name == MODEL_OUTPUT) {
                continue;
            }
            let newest = driver.kept[&train]
                .keys()
                .rev()
                .find_map(|&e| outputs.iter().find(|o| o.name == epoch_output(e)).map(|o| (e, o.clone())));
            if let Some((epochs_done, artifact)) = newest {
                if driver.partials.get(&train).is_none_or(|p| p.epochs_done < epochs_done) {
                    driver.partials.insert(train, PartialCheckpoint { artifact, epochs_done });
                }
            }
        }
        let mut waiting: Vec<(TaskId, Vec<TaskId>)> = Vec::new();
        for (train, epochs) in &driver.kept {
            let stored = driver.outputs.get(train).map_or(&[][..], Vec::as_slice);
            let tasks: Vec<TaskId> = epochs
                .iter()
                .filter(|(e, _)| stored.iter().any(|o| o.name == epoch_output(**e)))
                .flat_map(|(_, tasks)| tasks.iter().copied())
                .collect();
            if !tasks.is_empty() {
                waiting.push((*train, tasks));
            }
        }
        waiting.sort();
        for (dep, tasks) in waiting {
            driver.drive(Input::DepsSatisfied { dep, tasks }, Vec::new(), None);
        }
    }

    /// Resolves when every task is terminal.
    pub fn finished(&self) -> watch::Receiver<bool> {
        self.finished.clone()
    }

    /// Counts by state (for `status` and the end-of-run summary).
    pub fn counts(&self) -> Vec<(String, usize)> {
        let driver = self.lock();
        driver.scheduler.counts().iter().filter(|(_, c)| **c > 0).map(|(s, c)| (s.as_str().to_string(), *c)).collect()
    }

    /// Process the deadlines due now (worker expiry, backoff ends).
    pub fn tick(&self) {
        let _ = self.with(Driver::tick);
    }

    /// The timer: sleeps until the core's next deadline and ticks then; woken early when a
    /// handler makes an earlier deadline (never a fixed poll).
    pub async fn run_timer(self: Arc<Self>) {
        loop {
            let next = self.with(|d| d.arm()).ok().flatten();
            let started = self.with(|d| d.started).unwrap_or_else(|_| Instant::now());
            let sleep = async {
                match next {
                    Some(ms) => tokio::time::sleep_until((started + std::time::Duration::from_millis(ms)).into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => self.tick(),
                _ = self.wake.notified() => {}
            }
        }
    }
}

impl Driver {
    fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as u64 + self.skew
    }

    pub(crate) fn store_stats(&self) -> crate::store::StoreStats {
        self.store.stats()
    }

    /// The next deadline, remembered as the one the timer sleeps until.
    fn arm(&mut self) -> Option<Millis> {
        self.armed = self.scheduler.next_deadline();
        self.armed
    }

    /// Whether the timer must wake up: the core's next deadline is earlier than what it sleeps to.
    fn take_wake(&mut self) -> bool {
        match (self.scheduler.next_deadline(), self.armed) {
            (Some(next), Some(armed)) => next < armed,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    pub(crate) fn note_failure(&mut self, task: Option<TaskId>, attempt: Option<u64>, worker: String, error: String) {
        if self.failures.len() == crate::snapshot::RECENT_FAILURES {
            self.failures.pop_front();
        }
        self.failures.push_back(FailureNote { task, attempt, worker, error, at: Instant::now() });
    }

    /// A worker joins: a fresh id and session key (ids are never reused, so none can be claimed).
    pub fn register(&mut self, r: Registration) -> Registered {
        let worker = WorkerId(self.next_worker);
        self.next_worker += 1;
        let cached: Vec<String> = r.cached_artifacts.iter().filter_map(|d| self.digest_keys.get(d).cloned()).collect();
        tracing::info!(worker = %worker_name(worker), hostname = %r.hostname, device = %r.device, version = %r.version, "worker joined");
        // A key nobody else can guess; without an OS random source none can be made, and an
        // empty key opens no session.
        let session_key = crate::secret::random_hex(16).unwrap_or_default();
        self.workers.insert(
            worker,
            WorkerInfo {
                hostname: r.hostname.clone(),
                device: r.device.clone(),
                joined: Instant::now(),
                last_seen: Instant::now(),
                throughput: 0.0,
                leases: 0,
                completed: 0,
                resumes_history: r.resumes_history,
                session_key: session_key.clone(),
            },
        );
        self.workers_joined += 1;
        let change =
            Change::WorkerJoined { id: worker_name(worker), hostname: r.hostname, device: r.device, now_ms: wall_ms() };
        self.drive(Input::WorkerJoined { worker, cached }, vec![change], None);
        Registered {
            worker,
            session_key,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            lease_timeout_ms: self.config.scheduler.lease_timeout.min(u64::from(u32::MAX)) as u32,
            sweep_id: self.sweep_id.clone(),
        }
    }

    /// Attach a session stream to a registered worker. Refused for an unknown (or expired) id, a
    /// wrong key, or an id that already has a session: a worker id cannot be taken over.
    pub fn attach(&mut self, worker_name: &str, key: &str, tx: mpsc::Sender<ToWorker>) -> Result<SessionId, String> {
        let worker = parse_worker(worker_name).ok_or_else(|| format!("{worker_name:?} is not a worker id"))?;
        let info = self.workers.get(&worker).ok_or("unknown worker id: register first")?;
        if info.session_key.is_empty() || !crate::secret::constant_time_eq(info.session_key.as_bytes(), key.as_bytes())
        {
            return Err(format!("wrong session key for {worker_name}: register first"));
        }
        if self.sessions.contains_key(&worker) {
            return Err(format!("{worker_name} already has a session"));
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        self.sessions.insert(worker, Session { serial, tx });
        Ok(SessionId { worker, serial })
    }

    /// The session's stream ended: the worker left (unless the session was already dropped).
    pub fn detach(&mut self, session: SessionId) {
        if !self.is_current(session) {
            return;
        }
        let worker = session.worker;
        self.sessions.remove(&worker);
        if self.workers.remove(&worker).is_some() {
            tracing::info!(worker = %worker_name(worker), "worker left");
            let change = Change::WorkerLeft { id: worker_name(worker), now_ms: wall_ms() };
            self.drive(Input::WorkerLeft { worker }, vec![change], None);
        }
    }

    /// End `session` for `why` (told to the worker as its stream's status, logged, noted): its
    /// worker leaves as by [`Driver::detach`].
    pub fn close_session(&mut self, session: SessionId, why: String) {
        if !self.is_current(session) {
            return;
        }
        tracing::warn!(worker = %worker_name(session.worker), reason = %why, "session closed");
        self.note_failure(None, None, worker_name(session.worker), why.clone());
        self.send(session.worker, ToWorker::Closed { reason: why });
        self.detach(session);
    }

    fn is_current(&self, session: SessionId) -> bool {
        self.sessions.get(&session.worker).is_some_and(|s| s.serial == session.serial)
    }

    /// One message of `session`. False when the session is no longer current (dropped after an
    /// expiry, or closed for not reading): the shell then ends the stream and the worker registers
    /// again; the message is not processed.
    pub fn on_message(&mut self, session: SessionId, message: FromWorker) -> bool {
        if !self.is_current(session) {
            return false;
        }
        let worker = session.worker;
        if let Some(info) = self.workers.get_mut(&worker) {
            info.last_seen = Instant::now();
        }
        match message {
            FromWorker::Heartbeat { running, newest_lease, throughput } => {
                if let Some(info) = self.workers.get_mut(&worker) {
                    info.throughput = throughput;
                }
                self.drive(Input::Reconcile { worker, running, seen_up_to: newest_lease }, Vec::new(), None);
            }
            FromWorker::LeaseRequest { slots } => {
                self.drive(Input::LeaseRequest { worker, slots: slots.max(1) }, Vec::new(), None);
            }
            FromWorker::Metrics { attempt, seq, points } => {
                // Only the attempt's own worker reports its points; a stale attempt's are dropped.
                let Some(task) = self.owned(attempt, worker) else {
                    return self.drive_heartbeat(worker);
                };
                if let Err(why) = kinds::check_metrics(&self.tasks[&task], &points) {
                    // Not stored: a broken or forged batch must not reach the results.
                    tracing::warn!(task = %self.tasks[&task].key, attempt = attempt.0, why = %why, "metric batch refused");
                    self.note_failure(
                        Some(task),
                        Some(attempt.0),
                        worker_name(worker),
                        format!("metric batch refused: {why}"),
                    );
                    return self.drive_heartbeat(worker);
                }
                self.metric_points += points.len() as u64;
                let change = Change::Metrics { task_id: task.0, attempt_id: attempt.0, seq, points };
                self.drive(Input::Heartbeat { worker }, vec![change], None);
            }
            FromWorker::Result { attempt, result_json, outputs } => self.result(worker, attempt, result_json, outputs),
            FromWorker::Failure { attempt, error, retryable } => {
                let task = self.owned(attempt, worker);
                let changes =
                    task.map(|t| vec![Change::TaskError { id: t.0, error: error.clone() }]).unwrap_or_default();
                if let Some(t) = task {
                    tracing::warn!(task = %self.tasks[&t].key, attempt = attempt.0, retryable, error = %error, "attempt failed");
                    self.note_failure(Some(t), Some(attempt.0), worker_name(worker), error.clone());
                }
                let ack = self.ack(worker, attempt);
                self.drive(Input::Failed { attempt, by: worker, error, retryable }, changes, Some(ack));
            }
            FromWorker::Release { attempt, reason } => {
                tracing::info!(worker = %worker_name(worker), attempt = attempt.0, reason = %reason, "lease released");
                let ack = self.ack(worker, attempt);
                self.drive(Input::Released { attempt, by: worker }, Vec::new(), Some(ack));
            }
            FromWorker::Checkpoint { attempt, artifact, epochs_done } => {
                self.checkpoint_saved(worker, attempt, artifact, epochs_done)
            }
        }
        true
    }

    fn drive_heartbeat(&mut self, worker: WorkerId) -> bool {
        self.drive(Input::Heartbeat { worker }, Vec::new(), None);
        true
    }

    /// Artifacts merges derived, by key: the inputs of the leases that take them.
    fn record_derived(&mut self, derived: Vec<(String, ArtifactRef)>) {
        for (key, artifact) in derived {
            self.digest_keys.insert(artifact.digest.clone(), key.clone());
            self.derived.insert(key, artifact);
        }
    }

    /// The task of `attempt` if it is live and held by `worker`.
    fn owned(&self, attempt: AttemptId, worker: WorkerId) -> Option<TaskId> {
        self.scheduler.attempt(attempt).filter(|(_, w)| *w == worker).map(|(t, _)| t)
    }

    fn result(&mut self, worker: WorkerId, attempt: AttemptId, result_json: String, outputs: Vec<ArtifactRef>) {
        let Some(task) = self.owned(attempt, worker) else {
            tracing::debug!(worker = %worker_name(worker), attempt = attempt.0, "result of an attempt this session does not hold; not accepted");
            self.ack(worker, attempt)(false);
            return;
        };
        let checked = match outputs.iter().find(|o| !self.artifacts.contains(&o.digest)) {
            Some(missing) => {
                Err(format!("result names artifact {} ({}) that was never uploaded", missing.name, missing.digest))
            }
            None => kinds::check_result(&self.tasks[&task], &result_json, &outputs)
                .map_err(|why| format!("result refused: {why}")),
        };
        let mut changes = vec![Change::TaskResult { id: task.0, result_json }];
        // The owner's report of a live attempt: the core accepts it below, so merge it now.
        let merged = checked.and_then(|outcome| {
            merge_accepted(&mut self.maps, &self.artifacts, &self.tasks[&task], &outcome, &mut changes)
                .map_err(|why| format!("result refused: {why}"))
        });
        // Recorded before the result is accepted, so the dependent that becomes ready with it
        // finds the input in its lease.
        let merged = merged.map(|derived| self.record_derived(derived));
        if let Err(error) = merged {
            // The refusal quotes what the peer sent (serde's messages quote the JSON).
            let error = crate::grpc::peer_text(&error, crate::grpc::MESSAGE_BYTES);
            tracing::warn!(task = %self.tasks[&task].key, attempt = attempt.0, worker = %worker_name(worker), error = %error, "result does not fit its task");
            self.note_failure(Some(task), Some(attempt.0), worker_name(worker), error.clone());
            let ack = self.ack(worker, attempt);
            let input = Input::Failed { attempt, by: worker, error: error.clone(), retryable: true };
            self.drive(input, vec![Change::TaskError { id: task.0, error }], Some(ack));
            return;
        }
        let mut keys = Vec::new();
        for o in &outputs {
            let key = kinds::output_key(task, &o.name);
            self.digest_keys.insert(o.digest.clone(), key.clone());
            keys.push(key);
            changes.push(Change::Artifact {
                digest: o.digest.clone(),
                name: o.name.clone(),
                size: o.size,
                path: self.artifacts.path(&o.digest).display().to_string(),
                task_id: Some(task.0),
            });
        }
        // The task is done: its partial checkpoint is no longer needed, unless it is the final
        // one (same bytes), whose row the output just replaced.
        let mut forget = Vec::new();
        if let Some(partial) = self.partials.remove(&task) {
            let kept = self.kept.get(&task).is_some_and(|k| k.contains_key(&partial.epochs_done));
            if !kept && !outputs.iter().any(|o| o.digest == partial.artifact.digest) {
                changes.push(Change::DeleteArtifact { digest: partial.artifact.digest.clone() });
                forget.push(partial.artifact.digest);
            }
        }
        if !outputs.is_empty() {
            // The kept epoch checkpoints stay outputs beside the final ones.
            let all = self.outputs.entry(task).or_default();
            all.retain(|o| !outputs.iter().any(|n| n.name == o.name));
            all.extend(outputs);
        }
        let acknowledge = self.ack(worker, attempt);
        let forget = self.forget_files(forget);
        self.drive(
            Input::Completed { attempt, by: worker, outputs: keys },
            changes,
            Some(Box::new(move |accepted| {
                if accepted {
                    forget();
                }
                acknowledge(accepted)
            })),
        );
    }

    /// Record an attempt's per-epoch checkpoint if it is the task's newest, and delete the one it
    /// supersedes once that is committed.
    fn checkpoint_saved(
        &mut self,
        worker: WorkerId,
        attempt: AttemptId,
        artifact: Option<ArtifactRef>,
        epochs_done: u32,
    ) {
        let refuse = |d: &Self, why: &str| {
            tracing::debug!(attempt = attempt.0, epochs_done, why, "checkpoint not recorded");
            d.ack(worker, attempt)(false);
        };
        let Some(task) = self.owned(attempt, worker) else { return refuse(self, "not an attempt this session holds") };
        let Some(artifact) = artifact else { return refuse(self, "no artifact") };
        if !kinds::resumes_from_partial_checkpoints(self.tasks[&task].kind()) {
            return refuse(self, "this kind does not resume from checkpoints");
        }
        if !self.artifacts.contains(&artifact.digest) {
            tracing::warn!(attempt = attempt.0, digest = %artifact.digest, "checkpoint announced but never uploaded");
            return refuse(self, "not uploaded");
        }
        // An epoch checkpoint analyses take: an output of the train task from now on, and the
        // analyses waiting for it can start while training goes on.
        let kept: Option<Vec<TaskId>> = self.kept.get(&task).and_then(|k| k.get(&epochs_done)).cloned();
        let mut epoch_changes = Vec::new();
        if let Some(waiting) = &kept {
            let name = epoch_output(epochs_done);
            let outputs = self.outputs.entry(task).or_default();
            // The first copy stays (a retry's is the same run again; analyses may have read it).
            if !outputs.iter().any(|o| o.name == name) {
                tracing::info!(task = %self.tasks[&task].key, epochs_done, analyses = waiting.len(), "epoch checkpoint kept");
                outputs.push(ArtifactRef { name: name.clone(), ..artifact.clone() });
                self.digest_keys.insert(artifact.digest.clone(), kinds::output_key(task, &name));
                epoch_changes.push(Change::Artifact {
                    digest: artifact.digest.clone(),
                    name,
                    size: artifact.size,
                    path: self.artifacts.path(&artifact.digest).display().to_string(),
                    task_id: Some(task.0),
                });
            }
        }
        if self.partials.get(&task).is_some_and(|p| p.epochs_done >= epochs_done) {
            // An older epoch announced late (a drain flushes its last uploads): keep the newer
            // as the partial; a kept epoch is recorded as the output it is.
            if let Some(waiting) = kept {
                let ack = self.ack(worker, attempt);
                return self.drive(Input::DepsSatisfied { dep: task, tasks: waiting }, epoch_changes, Some(ack));
            }
            return self.ack(worker, attempt)(true);
        }
        tracing::info!(task = %self.tasks[&task].key, attempt = attempt.0, epochs_done, "checkpoint saved");
        // A kept epoch's row is the output's (its partial-checkpoint record lives in memory:
        // on a restart the epoch output is the file to resume from only if nothing newer is).
        let mut changes = if kept.is_some() {
            epoch_changes
        } else {
            vec![Change::PartialCheckpoint {
                digest: artifact.digest.clone(),
                name: artifact.name.clone(),
                size: artifact.size,
                path: self.artifacts.path(&artifact.digest).display().to_string(),
                task_id: task.0,
                attempt_id: attempt.0,
                epochs_done,
            }]
        };
        let new_digest = artifact.digest.clone();
        let mut forget = Vec::new();
        if let Some(old) = self.partials.insert(task, PartialCheckpoint { artifact, epochs_done }) {
            let old_kept = self.kept.get(&task).is_some_and(|k| k.contains_key(&old.epochs_done));
            if old.artifact.digest != new_digest && !old_kept {
                changes.push(Change::DeleteArtifact { digest: old.artifact.digest.clone() });
                forget.push(old.artifact.digest);
            }
        }
        let acknowledge = self.ack(worker, attempt);
        let forget = self.forget_files(forget);
        let input = match kept {
            Some(waiting) => Input::DepsSatisfied { dep: task, tasks: waiting },
            None => Input::Heartbeat { worker },
        };
        self.drive(
            input,
            changes,
            Some(Box::new(move |accepted| {
                if accepted {
                    forget();
                }
                acknowledge(accepted)
            })),
        );
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

    /// An acknowledgement for `attempt` to `worker`'s session, to send once its changes committed.
    fn ack(&self, worker: WorkerId, attempt: AttemptId) -> Box<dyn FnOnce(bool) + Send> {
        let tx = self.sessions.get(&worker).map(|s| s.tx.clone());
        Box::new(move |accepted| {
            if let Some(tx) = tx {
                // The session queue is bounded; an ack that does not fit belongs to a session the
                // driver closes at its next send (the worker re-sends unacknowledged reports).
                if tx.try_send(ToWorker::Ack { attempt, accepted }).is_err() {
                    tracing::debug!(attempt = attempt.0, "acknowledgement not queued: the session is gone or full");
                }
            }
        })
    }

    /// Send to a worker's session. A full queue (a client that does not read) or a closed one
    /// closes the session: its attempts are re-queued, so nothing is lost silently.
    fn send(&mut self, worker: WorkerId, message: ToWorker) {
        let Some(session) = self.sessions.get(&worker) else { return };
        if let Err(e) = session.tx.try_send(message) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => format!("its {SESSION_QUEUE} queued messages were not read"),
                mpsc::error::TrySendError::Closed(_) => "its stream is closed".to_string(),
            };
            self.overflowed.push((worker, why));
        }
    }

    /// Periodic deadline processing (worker expiry, backoff ends).
    pub fn tick(&mut self) {
        self.drive(Input::Tick, Vec::new(), None);
    }

    /// Feed one input and act on the outputs; `then` runs after the resulting changes commit.
    fn drive(&mut self, input: Input, extra: Vec<Change>, then: Option<Box<dyn FnOnce(bool) + Send>>) {
        let now = self.now();
        let outputs = self.scheduler.handle(now, input);
        let mut changes = extra;
        let mut accepted = None;
        let mut sweep_done_to: Vec<mpsc::Sender<ToWorker>> = Vec::new();
        // The attempt an `Output::Backup` announced; its lease comes next.
        let mut backup = None;
        for output in outputs {
            match output {
                Output::Lease { worker, task, attempt } => {
                    let is_backup = backup.take() == Some(attempt);
                    let message = self.lease(worker, task, attempt, is_backup, &mut changes);
                    self.send(worker, message);
                }
                Output::NoWork { worker, retry_after } => {
                    let message = if self.sweep_done { ToWorker::SweepDone } else { ToWorker::NoWork { retry_after } };
                    self.send(worker, message);
                }
                Output::Cancel { worker, attempt, reason } => self.send(worker, ToWorker::Cancel { attempt, reason }),
                Output::CancelStale { worker, attempt } => {
                    tracing::info!(worker = %worker_name(worker), attempt = attempt.0, "worker runs an attempt that is no longer its own; cancelling it");
                    let reason = "the coordinator no longer holds this attempt for this worker".to_string();
                    self.send(worker, ToWorker::Cancel { attempt, reason });
                }
                Output::Report { accepted: a, .. } => accepted = Some(a),
                Output::Transition { task, from, to, attempt, worker } => {
                    self.transition(task, from, to, attempt, worker, &mut changes)
                }
                Output::Backup(b) => {
                    let planned = &self.tasks[&b.task];
                    tracing::info!(
                        task = %planned.key,
                        attempt = b.attempt.0,
                        worker = %worker_name(b.worker),
                        straggler = b.straggler.0,
                        straggler_worker = %worker_name(b.straggler_worker),
                        class = %b.class,
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
                    self.attempt_ended(task, attempt, worker, outcome, &mut changes)
                }
                Output::DiedRunning { task, attempt, worker, times, failed } => {
                    let key = &self.tasks[&task].key;
                    let max = self.config.scheduler.max_attempts;
                    let error = format!(
                        "its worker {} died, was killed or went silent while running it ({times} of {max} attempts){}",
                        worker_name(worker),
                        if failed { "; a task that ends every worker it runs on is failed" } else { "; re-queued" }
                    );
                    tracing::warn!(task = %key, attempt = attempt.0, worker = %worker_name(worker), times, failed, "attempt lost with its worker");
                    self.note_failure(Some(task), Some(attempt.0), worker_name(worker), error.clone());
                    changes.push(Change::TaskError { id: task.0, error });
                }
                Output::WorkerExcluded { worker, failures, for_ms } => {
                    tracing::warn!(
                        worker = %worker_name(worker),
                        failures,
                        seconds = for_ms as f64 / 1000.0,
                        "worker failed its last attempts in a row; no leases for it for a while"
                    );
                }
                Output::WorkerExpired { worker } => {
                    tracing::warn!(worker = %worker_name(worker), "worker expired (no message within the lease timeout); its session is closed");
                    self.workers_expired += 1;
                    let seconds = self.config.scheduler.lease_timeout / 1000;
                    let error = format!("worker expired: no message for {seconds} s; its tasks were re-queued");
                    self.note_failure(None, None, worker_name(worker), error);
                    // Tell the (perhaps only paused) worker, so it registers again when it wakes.
                    let reason = format!("session expired: no message for {seconds} s; register again");
                    self.send(worker, ToWorker::Closed { reason });
                    self.sessions.remove(&worker);
                    self.workers.remove(&worker);
                    changes.push(Change::WorkerLeft { id: worker_name(worker), now_ms: wall_ms() });
                }
                Output::AddRefused { task, refusal } => {
                    // The driver sends no `AddTasks` yet; a refusal would be a bug in whoever does.
                    tracing::error!(task = task.0, ?refusal, "added tasks refused; none of the batch was added");
                }
                Output::SweepFinished => {
                    self.sweep_done = true;
                    // Told from the commit callback below, after the last acknowledgement.
                    sweep_done_to = self.sessions.values().map(|s| s.tx.clone()).collect();
                    tracing::info!(
                        counts = ?self.scheduler.counts(),
                        seconds = self.started.elapsed().as_secs_f64(),
                        artifact_received_bytes = self.counters.artifact_bytes_received.load(Ordering::Relaxed),
                        artifact_sent_bytes = self.counters.artifact_bytes_sent.load(Ordering::Relaxed),
                        "sweep finished"
                    );
                }
            }
        }
        let finished_now = self.sweep_done;
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
                let _ = tx.try_send(ToWorker::SweepDone);
            }
            if finished_now {
                let _ = finished.send(true);
            }
        });
        self.close_overflowed();
    }

    /// Sessions that could not take a message are closed now, like a worker that left.
    fn close_overflowed(&mut self) {
        while let Some((worker, why)) = self.overflowed.pop() {
            if self.sessions.remove(&worker).is_none() {
                continue;
            }
            tracing::warn!(worker = %worker_name(worker), why = %why, "session closed: a message could not be delivered; its attempts are re-queued");
            self.note_failure(None, None, worker_name(worker), format!("session closed: {why}"));
            if self.workers.remove(&worker).is_some() {
                let change = Change::WorkerLeft { id: worker_name(worker), now_ms: wall_ms() };
                self.drive(Input::WorkerLeft { worker }, vec![change], None);
            }
        }
    }

    /// The lease message of a new attempt: the task, the inputs its kind takes, and (for a kind
    /// that resumes) the newest partial checkpoint of an earlier attempt.
    fn lease(
        &mut self,
        worker: WorkerId,
        task: TaskId,
        attempt: AttemptId,
        is_backup: bool,
        changes: &mut Vec<Change>,
    ) -> ToWorker {
        let planned = &self.tasks[&task];
        let kind = planned.kind();
        let mut inputs = kinds::lease_inputs(planned, &self.outputs, &self.derived, &self.given);
        let mut resumes = None;
        if kinds::resumes_from_partial_checkpoints(kind) {
            let can_resume = self.workers.get(&worker).is_some_and(|w| w.resumes_history);
            if let Some(partial) = self.partials.get(&task).filter(|_| can_resume) {
                inputs.push(ArtifactRef { name: CHECKPOINT_OUTPUT.to_string(), ..partial.artifact.clone() });
                resumes = Some(partial.epochs_done);
            }
        }
        let message = ToWorker::Lease {
            task,
            attempt,
            task_json: serde_json::to_string(&planned.spec).expect("task specs serialise"),
            lease_timeout_ms: self.config.scheduler.lease_timeout.min(u64::from(u32::MAX)) as u32,
            inputs,
        };
        self.lease_started.insert(attempt, Instant::now());
        self.attempts.started += 1;
        if !self.leased_before.insert(task) && !is_backup {
            self.attempts.retried += 1;
        }
        if let Some(w) = self.workers.get_mut(&worker) {
            w.leases += 1;
        }
        changes.push(Change::AttemptStarted {
            id: attempt.0,
            task_id: task.0,
            worker: worker_name(worker),
            now_ms: wall_ms(),
            backup: is_backup,
        });
        // Not for a backup: the attempt it races is live and its points may be the record; the
        // race's loser loses its points when it ends.
        if kinds::attempts_report_whole_history(kind) && !is_backup {
            // This attempt reports the whole history (a resumed one re-sends its checkpoint's
            // points): earlier attempts' points would be duplicates.
            changes.push(Change::SupersedeMetrics { task_id: task.0, attempt_id: attempt.0 });
        }
        if let Some(epochs_done) = resumes {
            tracing::info!(task = %self.tasks[&task].key, attempt = attempt.0, worker = %worker_name(worker), epochs_done, "resuming from a partial checkpoint");
            changes.push(Change::AttemptResumed { id: attempt.0, epochs_done });
        }
        message
    }

    fn transition(
        &mut self,
        task: TaskId,
        from: StateName,
        to: StateName,
        attempt: Option<AttemptId>,
        worker: Option<WorkerId>,
        changes: &mut Vec<Change>,
    ) {
        let kind = self.tasks[&task].kind();
        if let Some(c) = self.kind_counts.get_mut(&(kind, from)) {
            *c = c.saturating_sub(1);
        }
        *self.kind_counts.entry((kind, to)).or_default() += 1;
        if from == StateName::Running {
            match to {
                StateName::Done => {
                    self.attempts.completed += 1;
                    if let Some(w) = worker.and_then(|w| self.workers.get_mut(&w)) {
                        w.completed += 1;
                    }
                }
                StateName::Backoff | StateName::Failed => self.attempts.failed += 1,
                // Cancelled while running is neither a failure nor lost work.
                StateName::Cancelled => {}
                StateName::Blocked | StateName::Ready | StateName::Running => self.attempts.lost += 1,
            }
        }
        let seconds = attempt
            .filter(|_| from == StateName::Running)
            .and_then(|a| self.lease_started.remove(&a))
            .map(|t| t.elapsed().as_secs_f64());
        log_transition(&self.tasks[&task], from, to, attempt, worker, seconds);
        changes.push(Change::TaskState {
            id: task.0,
            state: to.as_str().to_string(),
            attempts: self.scheduler.failures(task),
            now_ms: wall_ms(),
        });
        if let Some(a) = attempt.filter(|_| from == StateName::Running) {
            changes.push(Change::AttemptEnded { id: a.0, outcome: to.as_str().to_string(), now_ms: wall_ms() });
        }
    }

    fn attempt_ended(
        &mut self,
        task: TaskId,
        attempt: AttemptId,
        worker: WorkerId,
        outcome: AttemptEnd,
        changes: &mut Vec<Change>,
    ) {
        let planned = &self.tasks[&task];
        let seconds = self.lease_started.remove(&attempt).map(|t| t.elapsed().as_secs_f64());
        let class = &planned.cost.class;
        let rate = |w| self.scheduler.throughput(w, class).or(self.scheduler.fleet_throughput(class));
        match outcome {
            AttemptEnd::Superseded { winner, winner_worker } => tracing::info!(
                task = %planned.key,
                attempt = attempt.0,
                worker = %worker_name(worker),
                winner = winner.0,
                winner_worker = %worker_name(winner_worker),
                class = %class,
                rate = ?rate(worker),
                winner_rate = ?rate(winner_worker),
                ?seconds,
                "attempt lost the race and is cancelled"
            ),
            AttemptEnd::Cancelled | AttemptEnd::Failed | AttemptEnd::Released | AttemptEnd::Lost => tracing::info!(
                task = %planned.key,
                attempt = attempt.0,
                worker = %worker_name(worker),
                outcome = outcome.as_str(),
                ?seconds,
                "attempt ended; another attempt of the task runs on"
            ),
        }
        changes.push(Change::AttemptEnded { id: attempt.0, outcome: outcome.as_str().into(), now_ms: wall_ms() });
        // Another attempt of the task finished or runs on, reporting the whole history itself:
        // this one's points would be duplicates.
        changes.push(Change::DiscardMetrics { attempt_id: attempt.0 });
    }
}

/// Merge an accepted result into what the rooms build from results and store every artifact the
/// merge derived (content-addressed, its row in `changes`); returns them by key. Idempotent: a
/// task's result merges once.
fn merge_accepted(
    maps: &mut kinds::Merged,
    artifacts: &ArtifactDir,
    task: &PlannedTask,
    outcome: &TaskOutcome,
    changes: &mut Vec<Change>,
) -> Result<Vec<(String, ArtifactRef)>, String> {
    let mut stored = Vec::new();
    for derived in maps.merge(task, outcome)? {
        match artifacts.store_bytes(&derived.bytes) {
            Ok((digest, size)) => {
                tracing::info!(map = %derived.name, digest = %digest, "maps complete");
                let path = artifacts.path(&digest).display().to_string();
                let name = derived.name;
                changes.push(Change::Artifact {
                    digest: digest.clone(),
                    name: name.clone(),
                    size,
                    path,
                    task_id: None,
                });
                stored.push((derived.key, ArtifactRef { name, digest, size }));
            }
            // The chunks are stored; the report merges them again from the store. A later stage
            // that needs the maps fails its attempt retryably (its input is missing).
            Err(e) => tracing::warn!(error = %e, "the merged maps could not be stored as an artifact"),
        }
    }
    Ok(stored)
}

pub(crate) fn worker_name(worker: WorkerId) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;
    use freqsweep_common::task::TaskSpec;

    /// A planned sweep of one train task and two heatmap chunks, in a fresh store.
    fn shared(config: impl FnOnce(&mut ServiceConfig)) -> (Arc<Shared>, tempfile::TempDir, crate::store::StoreWriter) {
        let dir = tempfile::tempdir().unwrap();
        let text = "[[dataset]]\nkind = \"syn\"\nband = 2\ntrain = 64\ntest = 16\n[model]\narch = \"tiny\"\n[train]\nlr = 0.01\nbatch_size = 16\nepochs = 1\n[heatmap]\neps = 4\nimages = 8\nchunks_per_map = 2\n";
        let sweep = freqsweep_common::spec::parse(text, "t.toml").unwrap();
        let tasks = crate::graph::plan(&sweep);
        let (store, writer) = Store::open(&dir.path().join("freqsweep.db")).unwrap();
        let inserts = tasks
            .iter()
            .map(|t| Change::InsertTask {
                id: t.id.0,
                key: t.key.clone(),
                kind: t.kind().as_str().into(),
                spec_json: serde_json::to_string(&t.spec).unwrap(),
                deps: t.deps.iter().map(|d| d.0).collect(),
            })
            .collect();
        store.write(inserts).unwrap();
        let mut service = crate::run::default_config(None);
        config(&mut service);
        let artifacts = ArtifactDir::new(dir.path().join("artifacts"));
        let shared = Shared::new(service, store, artifacts, tasks, HashMap::new(), 1, "t".into());
        (shared, dir, writer)
    }

    /// A worker with an attached session: its session id and what the coordinator sends it.
    fn join(shared: &Shared, capacity: usize) -> (SessionId, mpsc::Receiver<ToWorker>, String) {
        let (tx, rx) = mpsc::channel(capacity);
        shared
            .with(|d| {
                let r =
                    d.register(Registration { hostname: "h".into(), resumes_history: true, ..Registration::default() });
                let name = worker_name(r.worker);
                (d.attach(&name, &r.session_key, tx).unwrap(), name)
            })
            .map(|(session, name)| (session, rx, name))
            .unwrap()
    }

    /// The next message for a session (acks come from the store's writer thread, so wait a bit).
    fn next(rx: &mut mpsc::Receiver<ToWorker>) -> ToWorker {
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match rx.try_recv() {
                Ok(m) => return m,
                Err(_) if Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(2)),
                Err(e) => panic!("no message: {e:?}"),
            }
        }
    }

    fn lease(shared: &Shared, session: SessionId, rx: &mut mpsc::Receiver<ToWorker>) -> (TaskId, AttemptId) {
        assert!(shared.with(|d| d.on_message(session, FromWorker::LeaseRequest { slots: 1 })).unwrap());
        match next(rx) {
            ToWorker::Lease { task, attempt, .. } => (task, attempt),
            other => panic!("expected a lease, got {other:?}"),
        }
    }

    fn state(shared: &Shared, task: TaskId) -> Option<StateName> {
        shared.with(|d| d.scheduler.state(task)).unwrap()
    }

    #[test]
    fn an_expired_session_is_told_so_and_the_worker_registers_again() {
        let (shared, _dir, _writer) = shared(|_| {});
        let (session, mut rx, _) = join(&shared, 64);
        let (task, _) = lease(&shared, session, &mut rx);
        // The worker is paused (SIGSTOP, `scontrol suspend`) past the lease timeout.
        shared.with(|d| d.skew = d.config.scheduler.lease_timeout + 1).unwrap();
        shared.tick();
        match next(&mut rx) {
            ToWorker::Closed { reason } => {
                assert!(reason.contains("session expired") && reason.contains("register again"), "{reason}")
            }
            other => panic!("expected the session to be closed, got {other:?}"),
        }
        assert_eq!(state(&shared, task), Some(StateName::Ready), "its task went back to the queue");
        // When it wakes, its old session is not served any more (the shell ends the stream) …
        assert!(!shared.with(|d| d.on_message(session, FromWorker::LeaseRequest { slots: 1 })).unwrap());
        // … and once registered again it gets the task.
        let (again, mut rx2, _) = join(&shared, 64);
        assert_ne!(again.worker, session.worker, "a new id");
        assert_eq!(lease(&shared, again, &mut rx2).0, task);
    }

    #[test]
    fn reports_from_a_session_that_does_not_hold_the_attempt_are_refused() {
        let (shared, _dir, _writer) = shared(|_| {});
        let (owner, mut owner_rx, _) = join(&shared, 64);
        let (other, mut other_rx, _) = join(&shared, 64);
        let (task, attempt) = lease(&shared, owner, &mut owner_rx);
        let forged = r#"{"kind":"train","epochs":1,"steps":4,"final_loss":0.1,"test_sets":[],"seconds":1,"device":"cpu","checkpoint":"x"}"#;
        for message in [
            FromWorker::Result { attempt, result_json: forged.into(), outputs: vec![] },
            FromWorker::Failure { attempt, error: "forged".into(), retryable: false },
            FromWorker::Release { attempt, reason: "forged".into() },
        ] {
            shared.with(|d| d.on_message(other, message)).unwrap();
            assert_eq!(next(&mut other_rx), ToWorker::Ack { attempt, accepted: false });
        }
        shared.with(|d| d.on_message(other, FromWorker::Metrics { attempt, seq: 0, points: vec![] })).unwrap();
        assert_eq!(state(&shared, task), Some(StateName::Running), "the owner's attempt runs on");
        assert_eq!(shared.with(|d| d.scheduler.attempt(attempt)).unwrap(), Some((task, owner.worker)));
        // The owner's own result must fit its task: no outputs and no test sets is refused.
        shared
            .with(|d| d.on_message(owner, FromWorker::Result { attempt, result_json: forged.into(), outputs: vec![] }))
            .unwrap();
        assert_eq!(next(&mut owner_rx), ToWorker::Ack { attempt, accepted: true }, "taken as a failed attempt");
        assert_eq!(state(&shared, task), Some(StateName::Backoff));
        let failure = shared.with(|d| d.failures.back().map(|f| f.error.clone())).unwrap().unwrap();
        assert!(failure.starts_with("result refused: a train result must name the outputs"), "{failure}");
    }

    #[test]
    fn a_refused_result_quotes_the_peer_on_one_bounded_line() {
        let (shared, _dir, _writer) = shared(|_| {});
        let (owner, mut owner_rx, _) = join(&shared, 64);
        let forged = ArtifactRef {
            name: format!("a\n2026 INFO forged\u{1b}[31m{}", "x".repeat(20_000)),
            digest: "d".into(),
            size: 1,
        };
        let json = format!("{{\"kind\": \"train\", \"{}\n\": 1}}", "k".repeat(20_000));
        for (result_json, outputs) in [(String::new(), vec![forged]), (json, vec![])] {
            // Past the previous refusal's backoff (well within the lease timeout).
            shared
                .with(|d| {
                    d.skew += 5_000;
                    d.tick();
                })
                .unwrap();
            let (_, attempt) = lease(&shared, owner, &mut owner_rx);
            shared.with(|d| d.on_message(owner, FromWorker::Result { attempt, result_json, outputs })).unwrap();
            assert_eq!(next(&mut owner_rx), ToWorker::Ack { attempt, accepted: true }, "taken as a failed attempt");
            let note = shared.with(|d| d.failures.back().map(|f| f.error.clone())).unwrap().unwrap();
            assert!(note.starts_with("result"), "{note:.200}");
            assert!(!note.chars().any(char::is_control) && note.len() <= 4100, "{} bytes: {note:.200}", note.len());
        }
    }

    #[test]
    fn a_heatmap_result_must_be_exactly_its_chunk() {
        let (shared, _dir, _writer) = shared(|_| {});
        let tasks: Vec<PlannedTask> = shared.with(|d| d.tasks.values().cloned().collect()).unwrap();
        let chunk = tasks.iter().find(|t| t.kind() == TaskKind::Heatmap).unwrap();
        let TaskSpec::Heatmap(h) = &chunk.spec else { unreachable!() };
        let good = crate::testing::heatmap_result_json(h, 8, 3, "cpu");
        assert!(kinds::check_result(chunk, &good, &[]).is_ok());
        let mut outcome: serde_json::Value = serde_json::from_str(&good).unwrap();
        outcome["error"][0][0] = serde_json::json!([40, 40]);
        let why = kinds::check_result(chunk, &outcome.to_string(), &[]).unwrap_err();
        assert!(why.contains("not exactly the chunk's"), "a cell outside the map: {why}");
        let mut outcome: serde_json::Value = serde_json::from_str(&good).unwrap();
        outcome["error"][1][1]["sum"] = serde_json::json!(9.0);
        let why = kinds::check_result(chunk, &outcome.to_string(), &[]).unwrap_err();
        assert!(why.contains("which 8 images cannot give"), "{why}");
        let why = kinds::check_result(chunk, &crate::testing::heatmap_result_json(h, 9, 0, "cpu"), &[]).unwrap_err();
        assert!(why.contains("evaluated 9 images"), "more images than the task allows: {why}");
    }

    #[test]
    fn a_worker_id_cannot_be_taken_over() {
        let (shared, _dir, _writer) = shared(|_| {});
        let (session, _rx, name) = join(&shared, 64);
        let (tx, _) = mpsc::channel(4);
        let err = shared.with(|d| d.attach(&name, "guess", tx.clone())).unwrap().unwrap_err();
        assert!(err.starts_with("wrong session key"), "{err}");
        let key = shared.with(|d| d.workers[&session.worker].session_key.clone()).unwrap();
        let err = shared.with(|d| d.attach(&name, &key, tx.clone())).unwrap().unwrap_err();
        assert!(err.ends_with("already has a session"), "even with the key, one session per id: {err}");
        let err = shared.with(|d| d.attach("w99", &key, tx)).unwrap().unwrap_err();
        assert!(err.contains("unknown worker id"), "{err}");
        assert!(shared.with(|d| d.workers.contains_key(&session.worker)).unwrap(), "the real worker stays");
    }

    #[test]
    fn a_session_that_does_not_read_is_closed_and_its_work_re_queued() {
        let (shared, _dir, _writer) = shared(|_| {});
        let (session, mut rx, _) = join(&shared, 1);
        let (task, _) = lease(&shared, session, &mut rx);
        // Fill its queue (one slot), then the next message does not fit.
        shared.with(|d| d.on_message(session, FromWorker::LeaseRequest { slots: 1 })).unwrap();
        shared.with(|d| d.on_message(session, FromWorker::LeaseRequest { slots: 1 })).unwrap();
        assert!(!shared.with(|d| d.workers.contains_key(&session.worker)).unwrap(), "closed, not silently dropped");
        assert_eq!(state(&shared, task), Some(StateName::Ready), "its attempt was re-queued");
        let notes: Vec<String> = shared.with(|d| d.failures.iter().map(|f| f.error.clone()).collect()).unwrap();
        assert!(notes.iter().any(|n| n.contains("were not read")), "{notes:?}");
        assert!(
            notes.iter().any(|n| n.contains("(1 of 3 attempts); re-queued")),
            "counted as a lost attempt: {notes:?}"
        );
    }

    #[test]
    fn heartbeats_reconcile_through_the_driver() {
        let (shared, _dir, _writer) = shared(|_| {});
        let (session, mut rx, _) = join(&shared, 64);
        let (task, attempt) = lease(&shared, session, &mut rx);
        // The worker has seen the lease but lists nothing: the attempt was lost on the worker.
        let beat = FromWorker::Heartbeat { running: vec![], newest_lease: attempt, throughput: 0.0 };
        shared.with(|d| d.on_message(session, beat)).unwrap();
        assert_eq!(state(&shared, task), Some(StateName::Ready));
        // It still runs it: told to stop.
        let beat = FromWorker::Heartbeat { running: vec![attempt], newest_lease: attempt, throughput: 0.0 };
        shared.with(|d| d.on_message(session, beat)).unwrap();
        assert!(matches!(next(&mut rx), ToWorker::Cancel { attempt: a, .. } if a == attempt));
    }

    #[test]
    fn a_panicking_handler_does_not_take_the_coordinator_down() {
        let (shared, _dir, _writer) = shared(|_| {});
        let result: Result<(), Panicked> = shared.with(|_| panic!("boom"));
        assert_eq!(result.unwrap_err().0, "boom");
        // The lock it poisoned is taken over; every later call works.
        assert_eq!(shared.snapshot().total_tasks, 3);
        let (session, mut rx, _) = join(&shared, 64);
        lease(&shared, session, &mut rx);
    }

    #[test]
    fn the_timer_is_woken_only_for_an_earlier_deadline() {
        let (shared, _dir, _writer) = shared(|c| c.scheduler.backoff_base = 100);
        shared.with(|d| d.arm()).unwrap();
        let (session, mut rx, _) = join(&shared, 64);
        // Registering made the first worker deadline: earlier than "none".
        let wake = shared.with(|d| (d.arm(), d.take_wake())).unwrap();
        assert!(wake.0.is_some() && !wake.1);
        let (_, attempt) = lease(&shared, session, &mut rx);
        shared.with(|d| d.on_message(session, FromWorker::LeaseRequest { slots: 1 })).unwrap();
        assert!(!shared.with(|d| d.take_wake()).unwrap(), "a renewed deadline is later");
        // A retryable failure backs off for 100 ms, well before the worker's deadline.
        let failure = FromWorker::Failure { attempt, error: "oom".into(), retryable: true };
        shared.with(|d| d.on_message(session, failure)).unwrap();
        assert!(shared.with(|d| d.take_wake()).unwrap(), "the backoff's end is earlier: wake the timer");
    }

    #[test]
    fn a_map_is_merged_as_its_chunks_are_accepted_and_stored_once_complete() {
        let (shared, dir, _writer) = shared(|_| {});
        let (session, mut rx, _) = join(&shared, 64);
        let tasks: HashMap<TaskId, PlannedTask> = shared.with(|d| d.tasks.clone()).unwrap();
        // The train task, with a result that fits it and both outputs uploaded.
        let (train, attempt) = lease(&shared, session, &mut rx);
        let TaskSpec::Train(t) = &tasks[&train].spec else { panic!("the train task comes first") };
        let classes = t.train.classes;
        let summaries: Vec<_> = t
            .train
            .test_sets
            .iter()
            .map(|s| freqsweep_common::task::TestSetSummary {
                test_set: s.to_string(),
                accuracy: 0.5,
                macro_f1: 0.5,
                per_class_f1: vec![0.5; classes],
                confusion: vec![vec![0; classes]; classes],
            })
            .collect();
        let outcome = TaskOutcome::Train(freqsweep_common::task::TrainOutcome {
            epochs: t.train.epochs,
            steps: 4,
            final_loss: 0.5,
            test_sets: summaries,
            seconds: 1.0,
            device: "cpu".into(),
            checkpoint: "c".into(),
            precision: Default::default(),
            memory_format: Default::default(),
        });
        let artifacts = ArtifactDir::new(dir.path().join("artifacts"));
        let outputs: Vec<ArtifactRef> = ["checkpoint", "model"]
            .iter()
            .map(|name| {
                let (digest, size) = artifacts.store_bytes(name.as_bytes()).unwrap();
                ArtifactRef { name: name.to_string(), digest, size }
            })
            .collect();
        let result = FromWorker::Result { attempt, result_json: serde_json::to_string(&outcome).unwrap(), outputs };
        shared.with(|d| d.on_message(session, result)).unwrap();
        assert_eq!(next(&mut rx), ToWorker::Ack { attempt, accepted: true });
        // The chunks: each lease carries the model's weights only; each result merges at once.
        for k in 0..2 {
            assert!(shared.with(|d| d.on_message(session, FromWorker::LeaseRequest { slots: 1 })).unwrap());
            let ToWorker::Lease { task, attempt, inputs, .. } = next(&mut rx) else { panic!("a chunk lease") };
            assert_eq!(inputs.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["model"], "weights only");
            let TaskSpec::Heatmap(h) = &tasks[&task].spec else { panic!("a heatmap chunk") };
            let json = crate::testing::heatmap_result_json(h, 8, 2, "cpu");
            let key = kinds::heatmap::MapKey::of(&tasks[&task]).unwrap();
            shared
                .with(|d| d.on_message(session, FromWorker::Result { attempt, result_json: json, outputs: vec![] }))
                .unwrap();
            assert_eq!(next(&mut rx), ToWorker::Ack { attempt, accepted: true });
            assert_eq!(shared.with(|d| d.maps.heatmaps.progress(key)).unwrap(), (k + 1, 2), "merged as accepted");
        }
        let reader = shared.with(|d| d.store.reader()).unwrap().unwrap();
        let map = reader.artifact_by_name("map/Syn_2-tiny-adam-lr0.01-bs16-ep1-seed0/eps4").unwrap();
        let (digest, _, path) = map.expect("the complete map is stored as an artifact");
        let file: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        assert_eq!(file["error"].as_array().unwrap().len(), 514, "every canonical cell");
        assert!(file["error"].as_array().unwrap().iter().all(|c| c[1]["sum"] == 2.0 && c[1]["n"] == 8));
        assert!(artifacts.contains(&digest));
    }

    #[test]
    fn metric_points_a_task_cannot_produce_are_refused() {
        let (shared, _dir, _writer) = shared(|_| {});
        let (session, mut rx, _) = join(&shared, 64);
        let (task, attempt) = lease(&shared, session, &mut rx);
        let point = |name: &str, test_set: &str, class_index: i32, value: f64| MetricPoint {
            name: name.into(),
            epoch: 1.0,
            step: 4,
            test_set: test_set.into(),
            class_index,
            value,
        };
        for (seq, bad) in [
            point("f1", "../../etc", 0, 0.5),
            point("f1", "B1234", 4, 0.5),
            point("accuracy", "B1234", -1, 1.5),
            point("loss", "", -1, f64::NAN),
            point("nonsense", "B1234", -1, 0.5),
        ]
        .into_iter()
        .enumerate()
        {
            let message = FromWorker::Metrics { attempt, seq: seq as u64, points: vec![bad] };
            assert!(shared.with(|d| d.on_message(session, message)).unwrap());
        }
        let good = FromWorker::Metrics { attempt, seq: 9, points: vec![point("f1", "B1234", 3, 0.25)] };
        shared.with(|d| d.on_message(session, good)).unwrap();
        let reader = shared.with(|d| d.store.reader()).unwrap().unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        while reader.metric_count().unwrap() == 0 && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let stored = reader.metrics(task.0).unwrap();
        assert_eq!(stored.len(), 1, "only the point the task can produce: {stored:?}");
        assert_eq!((stored[0].test_set.as_str(), stored[0].class_index), ("B1234", 3));
        let note = shared.with(|d| d.failures.back().map(|f| f.error.clone())).unwrap().unwrap();
        assert!(note.starts_with("metric batch refused: metric point \"nonsense\""), "{note}");
    }
}
