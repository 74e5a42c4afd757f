//! What the core is told and what it answers: the tasks it starts from, the [`Input`]s a driver
//! feeds it and the [`Output`]s it returns.

use super::{AttemptId, Cost, CostClass, Millis, StateName, TaskId, WorkerId};

/// A task as the scheduler sees it: an id, what it waits for, an ordering hint and locality keys.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTask {
    pub id: TaskId,
    pub deps: Vec<TaskId>,
    /// Lower runs first among ready tasks (e.g. train 0, heatmap 1, report 2).
    pub priority: u8,
    /// Keys of the inputs (e.g. `task:7/checkpoint`); a worker holding them is preferred.
    pub inputs: Vec<String>,
    /// Throughput kind and work units (for measuring workers and judging stragglers).
    pub cost: Cost,
}

/// How a task was left in the store (for [`Scheduler::restore`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredState {
    Pending,
    Done,
    Failed,
    Cancelled,
}

/// Something that happened, as the driver tells the core.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// A worker connected, already holding `cached` input keys (locality). A known id joining
    /// again is a new incarnation: the old one's attempts are re-queued.
    WorkerJoined { worker: WorkerId, cached: Vec<String> },
    /// A worker disconnected or drained: its attempts are re-queued at once.
    WorkerLeft { worker: WorkerId },
    /// Any message from the worker proves it alive.
    Heartbeat { worker: WorkerId },
    /// A worker has `slots` free: up to that many leases, or `NoWork`.
    LeaseRequest { worker: WorkerId, slots: u32 },
    /// An attempt finished; `outputs` are the keys the worker now holds (locality). Every report
    /// names the worker `by` that sent it: it is accepted only if that worker holds the attempt.
    Completed { attempt: AttemptId, by: WorkerId, outputs: Vec<String> },
    /// An attempt failed; a non-retryable failure fails the task at once.
    Failed { attempt: AttemptId, by: WorkerId, error: String, retryable: bool },
    /// The worker gives an attempt back unfinished (drain): re-queued, not a failure.
    Released { attempt: AttemptId, by: WorkerId },
    /// A heartbeat listing the attempts the worker is running (or still has to report), and the
    /// newest attempt it has received a lease for. Attempts it lists that are not live on it are
    /// cancelled; live ones it does not list are re-queued once it has seen their lease or the
    /// lease is older than `reconcile_grace` (a lost lease or a lost report).
    Reconcile { worker: WorkerId, running: Vec<AttemptId>, seen_up_to: AttemptId },
    /// Cancel one task (its live attempt is told to stop) and everything that depends on it.
    Cancel { task: TaskId, reason: String },
    /// Cancel every task that has not finished: the sweep ends with what it has.
    CancelSweep { reason: String },
    /// What `tasks` need from their dependency `dep` exists already (a checkpoint it uploaded
    /// while it runs on): they stop waiting for it, and its failure no longer cancels them.
    DepsSatisfied { dep: TaskId, tasks: Vec<TaskId> },
    /// New tasks while the sweep runs (a search strategy adds points). The caller allocates the
    /// ids, each above every task id the core holds (the batch's earlier ones included); each
    /// dependency names a task the core holds or an earlier task of the batch (so the graph stays
    /// acyclic). A batch that breaks a rule is refused whole with [`Output::AddRefused`] and
    /// nothing of it is added. Otherwise each task enters as Blocked (the driver counts and stores
    /// it so) and follows its dependencies as at restore, each change a [`Output::Transition`]:
    /// to Ready if every dependency is done (leased at once to a parked idle worker), to
    /// Cancelled if one failed or was cancelled, else it stays Blocked. A finished sweep with a
    /// task added that is not terminal is unfinished again: [`Output::SweepFinished`] comes again
    /// when the added tasks end.
    AddTasks { tasks: Vec<NewTask> },
    /// Time passed: expire workers and end backoffs due by `now`.
    Tick,
}

/// What the driver must do, persist or log, in the order given.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send this lease to `worker`.
    Lease { worker: WorkerId, task: TaskId, attempt: AttemptId },
    /// Nothing to lease now; the worker may ask again after `retry_after`.
    NoWork { worker: WorkerId, retry_after: Millis },
    /// Tell `worker` to stop `attempt` (its reports will not be accepted any more).
    Cancel { worker: WorkerId, attempt: AttemptId, reason: String },
    /// `worker` says it runs `attempt`, which is not live on it (ended, re-queued while the
    /// worker was paused, or never its own): tell it to stop. No state changes.
    CancelStale { worker: WorkerId, attempt: AttemptId },
    /// Whether a report (completion, failure, release) of `attempt` was accepted.
    Report { attempt: AttemptId, accepted: bool },
    /// A task changed state (persist it; one log line). `attempt`/`worker` name the attempt
    /// that starts (to Running) or ends (from Running), if any.
    Transition { task: TaskId, from: StateName, to: StateName, attempt: Option<AttemptId>, worker: Option<WorkerId> },
    /// A backup attempt starts (its `Lease` follows); what the decision was based on.
    Backup(Backup),
    /// An attempt ended while its task kept another live attempt, or it lost the race: no
    /// transition names it, so this closes it (a loser also gets a `Cancel`).
    AttemptEnded { task: TaskId, attempt: AttemptId, worker: WorkerId, outcome: AttemptEnd },
    /// `worker` missed its deadline and was dropped (its tasks are re-queued).
    WorkerExpired { worker: WorkerId },
    /// `worker`'s last `failures` reports were failures: it gets no leases for `for_ms`.
    WorkerExcluded { worker: WorkerId, failures: u32, for_ms: Millis },
    /// `attempt`, the only live attempt of `task`, ended because its worker left, expired or
    /// joined again (it died, was killed or paused while running it). It counts against
    /// `max_attempts`: this is the task's `times`-th counted attempt, and `failed` says the task
    /// failed with it (a `Transition` to Failed follows) rather than being re-queued.
    DiedRunning { task: TaskId, attempt: AttemptId, worker: WorkerId, times: u32, failed: bool },
    /// An [`Input::AddTasks`] batch was refused whole (nothing of it was added): `task` is the
    /// first of its tasks that broke a rule, `refusal` the rule.
    AddRefused { task: TaskId, refusal: AddRefusal },
    /// Every task is terminal. Emitted once each time the sweep becomes finished: once for the
    /// planned tasks, and again after an [`Input::AddTasks`] made it unfinished, when the added
    /// tasks end.
    SweepFinished,
}

/// Why an [`Input::AddTasks`] batch was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddRefusal {
    /// The id names a task the core holds already (or an earlier task of the batch).
    Exists,
    /// The id is below `highest`, the highest task id held: new ids go above every existing one.
    NotAbove { highest: TaskId },
    /// The dependency `dep` names neither a task the core holds nor an earlier task of the batch.
    UnknownDependency { dep: TaskId },
}

/// A backup attempt and why it was started (rates in work units per second: the worker's
/// measured average, or the fleet's for a worker without history of the kind).
#[derive(Clone, Debug, PartialEq)]
pub struct Backup {
    pub task: TaskId,
    pub attempt: AttemptId,
    pub worker: WorkerId,
    /// The live attempt expected to finish first, which the backup races.
    pub straggler: AttemptId,
    pub straggler_worker: WorkerId,
    pub class: CostClass,
    pub rate: f64,
    pub straggler_rate: f64,
    /// The backup's expected duration and the straggler's expected remaining time.
    pub expected_ms: Millis,
    pub remaining_ms: Millis,
}

/// How an attempt reported by [`Output::AttemptEnded`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptEnd {
    /// Another attempt of the task finished first; this one was told to stop.
    Superseded { winner: AttemptId, winner_worker: WorkerId },
    /// The task was cancelled or failed through another attempt; this one was told to stop.
    Cancelled,
    /// A retryable failure while another attempt runs on (not counted against the task).
    Failed,
    /// Given back unfinished while another attempt runs on.
    Released,
    /// Its worker left or expired while another attempt runs on.
    Lost,
}

impl AttemptEnd {
    /// The `outcome` the store records.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptEnd::Superseded { .. } => "superseded",
            AttemptEnd::Cancelled => "cancelled",
            AttemptEnd::Failed => "failed",
            AttemptEnd::Released => "released",
            AttemptEnd::Lost => "lost",
        }
    }
}
