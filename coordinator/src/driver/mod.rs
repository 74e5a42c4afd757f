//! The driver: turns what workers say ([`FromWorker`], in domain types; `grpc.rs` converts the
//! wire) into scheduler `Input`s, and the scheduler's `Output`s into messages for the workers'
//! sessions ([`ToWorker`]) and [`Change`]s in the store. Everything the coordinator decides about
//! sessions, attempts and results lives here or in the rooms of `kinds/`.
//!
//! Sans-IO: [`Driver`] decides and [`shell::Shared`] acts. Every entry of the driver takes the
//! moment it runs at ([`Now`]) and what the shell found on disk, and returns [`Effects`]: messages
//! for sessions, store changes, derived files to write, and what to do once the changes commit
//! (acknowledgements, files to forget, "sweep done"). The driver holds no clock, no store, no
//! channel and touches no file; the shell owns the lock, the clock, the store, the artifact
//! directory and the sessions' queues, and carries effects out. Its parts:
//! - `sessions.rs`: registration, attachment, the messages of a session, sessions lost;
//! - `results.rs`: results (checked and merged by the rooms), checkpoints;
//! - `restore.rs`: a driver rebuilt from the plan and the store (a restarted coordinator);
//! - `drive.rs`: one scheduler input and what its outputs mean (leases, transitions, expiry);
//! - `shell.rs`: [`Shared`], what the gRPC and HTTP handlers hold.
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
//! Durability: a report is acknowledged only once every change it caused is on disk (the store's
//! commit callback). Metric batches are stored keyed by `(attempt, seq)`.
//!
//! Logs: one structured line per task transition (task key, attempt, worker, seconds) and per
//! worker join/leave/expiry; one per backup attempt started and per attempt that lost the race.

mod drive;
mod grow;
mod restore;
mod results;
mod sessions;
mod shell;
mod view;

pub use restore::Restore;
pub use shell::{Panicked, Shared};
pub use view::View;

use crate::artifacts::ArtifactRef;
use crate::conn::ConnectionLimits;
use crate::graph::PlannedTask;
use crate::kinds;
use crate::scheduler::{AttemptId, Millis, Scheduler, SchedulerConfig, StateName, TaskId, WorkerId};
use crate::snapshot::{AttemptCounts, FailureNote};
use crate::store::Change;
use crate::tls::TlsIdentity;
use freqsweep_common::task::{MetricPoint, TaskKind};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

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

/// What the driver knows of a registered worker.
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

/// Counters the gRPC shell updates without the driver's lock.
#[derive(Debug, Default)]
pub struct Counters {
    pub artifact_bytes_received: AtomicU64,
    pub artifact_bytes_sent: AtomicU64,
}

/// The moment the driver handles something, as the shell's clock reads it.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Milliseconds since the driver started: the scheduler's clock.
    pub ms: Millis,
    pub instant: Instant,
    /// Wall-clock milliseconds since the Unix epoch, for stored rows.
    pub wall_ms: u64,
}

/// What the shell does for the driver, in order: write `files`, send `sends`, commit `changes`,
/// then (from the commit callback) carry out `after_commit`; finally drop the queues of `closed`
/// sessions.
#[derive(Debug, Default)]
pub struct Effects {
    /// Artifacts a merge derived, `(digest, bytes)`, written before their rows commit.
    pub files: Vec<(String, Vec<u8>)>,
    pub sends: Vec<(WorkerId, ToWorker)>,
    pub changes: Vec<Change>,
    pub after_commit: Vec<AfterCommit>,
    /// Sessions the driver ended: their queues are dropped once `sends` went out.
    pub closed: Vec<WorkerId>,
}

impl Effects {
    fn send(&mut self, worker: WorkerId, message: ToWorker) {
        self.sends.push((worker, message));
    }
}

/// What waits for the changes of the same [`Effects`] to commit.
#[derive(Debug, PartialEq)]
pub enum AfterCommit {
    /// Acknowledge `attempt` to `worker`: accepted if the core accepted it and the commit held.
    Ack { worker: WorkerId, attempt: AttemptId, accepted: bool },
    /// Delete the files of these artifacts (no row refers to them once the commit held).
    Forget(Vec<String>),
    /// Tell these workers the sweep is done (after the last acknowledgement).
    SweepDone(Vec<WorkerId>),
    /// Every task is terminal: resolve [`Shared::finished`].
    Finished,
}

/// Everything that decides: the scheduler core and the state around it. No clock, no store, no
/// channel, no file: see the module's doc.
pub struct Driver {
    pub(crate) scheduler: Scheduler,
    pub(crate) tasks: HashMap<TaskId, PlannedTask>,
    /// Artifacts each finished task produced, by name.
    outputs: HashMap<TaskId, Vec<ArtifactRef>>,
    /// Artifacts merges derived from accepted results, by key (`kinds::Derived`).
    derived: HashMap<String, ArtifactRef>,
    /// The stored files of the sweep's given models, by model name.
    given: HashMap<String, ArtifactRef>,
    /// Per task whose epoch checkpoints analyses take, those epochs with the analyses.
    kept: HashMap<TaskId, BTreeMap<u32, Vec<TaskId>>>,
    /// Maps merged chunk by chunk as results are accepted.
    pub(crate) maps: kinds::Merged,
    /// Grid point ids by index, and each point's task that trains its model (for the dashboard).
    pub(crate) point_ids: Vec<String>,
    pub(crate) point_trains: Vec<Option<TaskId>>,
    /// Newest partial checkpoint of unfinished tasks that resume from them.
    partials: HashMap<TaskId, PartialCheckpoint>,
    /// Digest → locality key, to translate a worker's cache into keys the scheduler knows.
    digest_keys: HashMap<String, String>,
    /// The current session of each attached worker, by serial.
    sessions: HashMap<WorkerId, u64>,
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
    /// The deadline the timer task sleeps until (it is woken when an earlier one appears).
    armed: Option<Millis>,
    /// Where artifacts live: rows name their file (`ArtifactDir::path`, no file is touched).
    artifact_paths: crate::artifacts::ArtifactDir,
    pub(crate) config: ServiceConfig,
    pub(crate) started: Instant,
    pub(crate) sweep_id: String,
    pub(crate) counters: std::sync::Arc<Counters>,
    /// Plans points added while the sweep runs (`None`: the run cannot grow).
    planner: Option<kinds::Planner>,
    /// Points planned so far, grid and added: the next added point's index.
    points_planned: usize,
    /// Why the scheduler refused the last `AddTasks`, if it did.
    add_refused: Option<String>,
}

impl Driver {
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

    pub(crate) fn note_failure(
        &mut self,
        now: Now,
        task: Option<TaskId>,
        attempt: Option<u64>,
        worker: String,
        error: String,
    ) {
        if self.failures.len() == crate::snapshot::RECENT_FAILURES {
            self.failures.pop_front();
        }
        self.failures.push_back(FailureNote { task, attempt, worker, error, at: now.instant });
    }

    /// The task of `attempt` if it is live and held by `worker`.
    fn owned(&self, attempt: AttemptId, worker: WorkerId) -> Option<TaskId> {
        self.scheduler.attempt(attempt).filter(|(_, w)| *w == worker).map(|(t, _)| t)
    }

    /// The row of an artifact file the coordinator holds.
    fn artifact_change(&self, artifact: &ArtifactRef, name: String, task: Option<TaskId>) -> Change {
        Change::Artifact {
            digest: artifact.digest.clone(),
            name,
            size: artifact.size,
            path: self.artifact_paths.path(&artifact.digest).display().to_string(),
            task_id: task.map(|t| t.0),
        }
    }
}

pub fn worker_name(worker: WorkerId) -> String {
    format!("w{}", worker.0)
}

fn parse_worker(name: &str) -> Option<WorkerId> {
    name.strip_prefix('w')?.parse().ok().map(WorkerId)
}

#[cfg(test)]
mod tests;
