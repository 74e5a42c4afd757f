//! The scheduler core: a pure state machine over tasks, attempts and workers. It reads no clock
//! and touches no socket or file: time is an input (`now`, milliseconds since any fixed origin the
//! driver picks, e.g. its start), decisions are outputs. A driver owns it, feeds it [`Input`]s from
//! RPCs and from a timer set to [`Scheduler::next_deadline`], persists the [`Output::Transition`]s
//! and sends the leases and cancellations it returns.
//!
//! ```text
//!             deps done                 lease                 result
//!  Blocked ───────────────► Ready ───────────────► Running ───────────────► Done
//!                            ▲  ▲                  │  │  │
//!                            │  └── released, worker left or expired (attempt kept)
//!                            │                     │  │
//!                            └──── Backoff ◄───────┘  └── failure: not retryable or
//!                                  (retryable failure,     attempts exhausted ──► Failed
//!                                   exponential delay)     (dependents ──► Cancelled)
//!
//!  any state but Done/Failed ── Cancel / CancelSweep ──► Cancelled (dependents ──► Cancelled)
//! ```
//!
//! Rules (each unit-tested, and checked after every step of random event sequences):
//! - A task has one live attempt, plus at most `speculation.max_backups` **backup** attempts at
//!   the tail (below), never two on one worker. Only a live attempt's report is accepted: the
//!   first result wins, the other live attempts are cancelled at once, so late or duplicate
//!   reports change nothing and a task is completed at most once. Attempt ids only grow, also
//!   across restarts (the driver seeds them above the store's largest).
//! - Throughput is measured from what the core sees: each accepted completion gives a sample of
//!   `cost.units / (result time − lease time)` for the worker and the task's `cost.kind`, kept as
//!   an exponentially weighted average per worker and kind (and one for the whole fleet, the
//!   prior of a worker with no history of that kind). A cancelled loser's elapsed time bounds its
//!   worker's rate from above and lowers the estimate when it is below it.
//! - Backups (MapReduce "backup tasks"): when a worker asks for work and nothing is ready, the
//!   running task with the largest expected gain gets a backup attempt on it, if the best live
//!   attempt's expected remaining time exceeds `factor` × the asking worker's expected time for
//!   the whole task and the gain is at least `min_gain`. An attempt's expected end is its lease
//!   time plus `units / rate`; one already past it is assumed to need as long again as it has
//!   overrun. Without any rate for the kind nothing is speculated. A backup does not count
//!   against `max_attempts`: a retryable failure, release or loss of one of several live attempts
//!   ends only that attempt and counts nothing; a non-retryable failure fails the task.
//! - A worker's liveness deadline is `now + lease_timeout`, renewed by any message; past it the
//!   worker is dropped and its tasks return to the queue at once (front of the queue). A worker
//!   that leaves is treated the same way without waiting.
//! - A failure counts against `max_attempts`, and so does the only live attempt of a task whose
//!   worker left, expired or joined again while running it (a task that crashes every worker it
//!   runs on must fail, not be re-leased for ever); it is re-queued at once, at the front. A
//!   released attempt, a backup whose task runs on, and a lease or report lost in transit (found
//!   by [`Input::Reconcile`]) do not count. Retryable failures wait `min(base · 2^(k−1), max)` before the task is ready again, at the
//!   front of the queue.
//! - A task that can no longer run because a dependency failed or was cancelled is **Cancelled**
//!   (not Failed), with the reason naming the dependency: Failed means "this task's own attempts
//!   failed", which keeps the report's failure list short and honest. The sweep still finishes.
//! - A worker whose last `exclude_after` (3) reports were all failures gets `NoWork` for
//!   `backoff_delay(k)` after its `exclude_after + k − 1`-th failure in a row (Spark's exclusion
//!   of failing executors): one broken worker must not use up every task's attempts. A
//!   completion ends it.
//! - A worker told `NoWork` while it runs nothing is parked: the next task that turns ready (a
//!   dependency done, a backoff over, a lease released) is leased to it in the same step, without
//!   waiting for its retry (a worker takes a lease whenever it is idle).
//! - Leases prefer a task whose inputs the worker already holds (it produced or downloaded them),
//!   then retried tasks, then lower priority values (train before heatmap), then FIFO.
//! - Every state change is one [`Output::Transition`]; one that ends a live attempt names it, so
//!   the store can close the attempt; any other attempt that ends (a race's loser, one of several
//!   live attempts lost) comes as an [`Output::AttemptEnded`]. Replaying the transitions
//!   reproduces the core's states; restoring forgets races (a running task is re-leased once).
//! - Costs: lease, report and expiry are O(log n); nothing scans all tasks (only `restore` and
//!   `CancelSweep`, once per sweep).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Time as the driver measures it: milliseconds since a fixed origin of its choice.
pub type Millis = u64;

/// A task of the sweep (the graph numbers them; the store keys rows by it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub u64);
/// One lease of a task to a worker; every report names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptId(pub u64);
/// One connected worker incarnation (the service numbers sessions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u64);

/// A task's state without its data, as logged and stored (`as_str`/`parse`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StateName {
    Blocked,
    Ready,
    Running,
    Backoff,
    Done,
    Failed,
    Cancelled,
}

impl StateName {
    pub const ALL: [StateName; 7] = [
        StateName::Blocked,
        StateName::Ready,
        StateName::Running,
        StateName::Backoff,
        StateName::Done,
        StateName::Failed,
        StateName::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StateName::Blocked => "blocked",
            StateName::Ready => "ready",
            StateName::Running => "running",
            StateName::Backoff => "backoff",
            StateName::Done => "done",
            StateName::Failed => "failed",
            StateName::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<StateName> {
        StateName::ALL.into_iter().find(|n| n.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, StateName::Done | StateName::Failed | StateName::Cancelled)
    }
}

/// Timeouts, retry bounds and backoff of the scheduler.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// A worker silent for this long is dead.
    pub lease_timeout: Millis,
    /// Attempts per task that may end badly: failures, and attempts whose worker died while
    /// running them (releases, backups and leases lost in transit do not count).
    pub max_attempts: u32,
    /// Wait after the first retryable failure; doubles with each further one …
    pub backoff_base: Millis,
    /// … up to this.
    pub backoff_max: Millis,
    /// What `NoWork` tells an idle worker.
    pub idle_retry: Millis,
    /// Live attempts one worker may hold at once (a `LeaseRequest`'s slots are capped by it): one
    /// client cannot take every ready task.
    pub max_leases_per_worker: u32,
    /// An attempt a worker's heartbeat does not list, although its lease was sent this long ago,
    /// is taken as lost (the lease or its report never arrived) and re-queued.
    pub reconcile_grace: Millis,
    /// A worker whose last this-many reports were all failures gets no leases for a while
    /// (`backoff_delay` of the failures beyond it): a worker that fails every task at once — a
    /// full disk, a broken GPU — would otherwise use up every task's attempts in seconds.
    /// A completion ends it. 0 turns it off.
    pub exclude_after: u32,
    /// Backup attempts at the tail and the throughput measurement they use.
    pub speculation: SpeculationConfig,
}

/// When a backup attempt of a running task is worth starting (see the module documentation).
#[derive(Clone, Debug)]
pub struct SpeculationConfig {
    /// Backup attempts per task while it runs (0 turns speculation off).
    pub max_backups: u32,
    /// The straggler's expected remaining time must exceed this many times the idle worker's
    /// expected time for the whole task …
    pub factor: f64,
    /// … and the difference must be at least this.
    pub min_gain: Millis,
    /// Weight of the newest sample in the throughput averages, in (0, 1].
    pub alpha: f64,
}

impl Default for SpeculationConfig {
    fn default() -> Self {
        SpeculationConfig { max_backups: 1, factor: 1.5, min_gain: 10_000, alpha: 0.3 }
    }
}

impl SchedulerConfig {
    /// How long a task waits after its `failures`-th failure: `min(base · 2^(failures−1), max)`.
    pub fn backoff_delay(&self, failures: u32) -> Millis {
        let shift = failures.saturating_sub(1).min(32);
        self.backoff_base.saturating_mul(1 << shift).min(self.backoff_max)
    }
}

/// The one set of defaults (`freqsweep run` and `serve` use these; tests override fields).
impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            lease_timeout: 30_000,
            max_attempts: 3,
            backoff_base: 1_000,
            backoff_max: 30_000,
            idle_retry: 500,
            max_leases_per_worker: 1,
            reconcile_grace: 10_000,
            exclude_after: 3,
            speculation: SpeculationConfig::default(),
        }
    }
}

/// Which throughput measurement a task's cost belongs to (the planner names them, e.g.
/// `heatmap/resnet18`). Opaque to the core: it only compares classes for equality, and keeps one
/// rate per class it has seen, so any number of classes can exist.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CostClass(std::sync::Arc<str>);

impl CostClass {
    pub fn new(name: &str) -> CostClass {
        CostClass(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CostClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a task costs: which throughput applies and how much work it is. Units are only compared
/// within one class, so any measure proportional to the work will do.
#[derive(Clone, Debug, PartialEq)]
pub struct Cost {
    pub class: CostClass,
    /// Work units, > 0.
    pub units: f64,
}

impl Default for Cost {
    fn default() -> Self {
        Cost { class: CostClass::new("default"), units: 1.0 }
    }
}

/// An exponentially weighted average of work units per second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Rate {
    per_second: f64,
    samples: u32,
}

impl Rate {
    fn get(self) -> Option<f64> {
        (self.samples > 0).then_some(self.per_second)
    }

    fn add(&mut self, sample: f64, alpha: f64) {
        self.per_second = if self.samples == 0 { sample } else { alpha * sample + (1.0 - alpha) * self.per_second };
        self.samples = self.samples.saturating_add(1);
    }
}

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
    /// Every task is terminal; emitted once.
    SweepFinished,
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

#[derive(Clone, Debug, PartialEq)]
enum State {
    Blocked,
    Ready,
    Running { attempt: AttemptId, worker: WorkerId },
    Backoff { until: Millis },
    Done,
    Failed,
    Cancelled,
}

impl State {
    fn name(&self) -> StateName {
        match self {
            State::Blocked => StateName::Blocked,
            State::Ready => StateName::Ready,
            State::Running { .. } => StateName::Running,
            State::Backoff { .. } => StateName::Backoff,
            State::Done => StateName::Done,
            State::Failed => StateName::Failed,
            State::Cancelled => StateName::Cancelled,
        }
    }
}

struct Task {
    state: State,
    deps_left: usize,
    dependents: Vec<TaskId>,
    failures: u32,
    priority: u8,
    inputs: Vec<String>,
    /// Queue position while ready.
    queued: Option<QueueKey>,
    cost: Cost,
    /// Live backup attempts while running (the first live attempt is in `State::Running`).
    backups: Vec<AttemptId>,
    /// Backups started since the task last became running (bounded by `max_backups`).
    speculated: u32,
    /// Dependencies satisfied before they completed ([`Input::DepsSatisfied`]).
    early: Vec<TaskId>,
}

/// A live attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Live {
    task: TaskId,
    worker: WorkerId,
    /// Lease time, for the throughput sample and the straggler estimate.
    since: Millis,
}

/// Ordering of the ready queue: retried tasks first, then priority, then arrival.
type QueueKey = (bool, u8, u64, TaskId);

struct Worker {
    deadline: Millis,
    running: BTreeSet<TaskId>,
    cached: HashSet<String>,
    /// Most recent cached keys first: the locality lookup tries these.
    recent: Vec<String>,
    /// Measured throughput per cost class.
    rates: HashMap<CostClass, Rate>,
    /// Failures reported since this worker last completed a task.
    failures_in_a_row: u32,
    /// No leases before this time (see [`SchedulerConfig::exclude_after`]).
    excluded_until: Millis,
}

impl Worker {
    /// The worker holds `keys` now (it produced or downloaded them): newest first for locality.
    fn note_cached(&mut self, keys: impl IntoIterator<Item = String>) {
        for key in keys {
            if self.cached.insert(key.clone()) {
                self.recent.insert(0, key);
                self.recent.truncate(LOCALITY_KEYS);
            } else if let Some(i) = self.recent.iter().position(|k| *k == key) {
                let key = self.recent.remove(i);
                self.recent.insert(0, key);
            }
        }
    }
}

/// How many of a worker's most recent inputs the locality lookup tries.
const LOCALITY_KEYS: usize = 16;

/// The scheduler core; see the module documentation for its rules.
pub struct Scheduler {
    config: SchedulerConfig,
    tasks: HashMap<TaskId, Task>,
    ready: BTreeSet<QueueKey>,
    /// Input key → ready tasks that need it.
    by_input: HashMap<String, BTreeSet<QueueKey>>,
    /// Every live attempt (first and backups).
    attempts: HashMap<AttemptId, Live>,
    workers: HashMap<WorkerId, Worker>,
    /// Throughput of the whole fleet per kind: the prior of a worker without history.
    fleet: HashMap<CostClass, Rate>,
    worker_deadlines: BTreeSet<(Millis, WorkerId)>,
    backoffs: BTreeSet<(Millis, TaskId)>,
    counts: BTreeMap<StateName, usize>,
    next_attempt: u64,
    next_seq: u64,
    finished_announced: bool,
    /// Transitions decided while restoring (cascaded cancellations the store has not seen yet);
    /// the first `handle` emits them so the store catches up.
    restored: Vec<Output>,
    /// Idle workers told `NoWork` while work was still to come: the next task that turns ready
    /// is leased to them at once instead of after their retry (a worker takes a lease whenever
    /// it is idle).
    parked: BTreeSet<WorkerId>,
}

impl Scheduler {
    /// A fresh sweep: every task pending. `first_attempt` seeds attempt ids (above any stored one).
    pub fn new(config: SchedulerConfig, tasks: Vec<NewTask>, first_attempt: u64) -> Self {
        let stored = tasks.into_iter().map(|t| (t, StoredState::Pending, 0)).collect();
        Self::restore(config, stored, first_attempt)
    }

    /// Rebuild from the store: each task with its stored state and failure count. Done, failed and
    /// cancelled tasks stay so; everything else is pending again: an attempt that was running when
    /// the coordinator stopped is re-leased under a new id (its failure count kept), a backoff
    /// ends at once. Pending tasks behind a failed or cancelled dependency are cancelled; those
    /// transitions come out of the first `handle` so the store catches up. A dependency that names
    /// no task counts as done. `first_attempt` must exceed every attempt id already stored.
    pub fn restore(config: SchedulerConfig, tasks: Vec<(NewTask, StoredState, u32)>, first_attempt: u64) -> Self {
        let mut s = Scheduler {
            config,
            tasks: HashMap::with_capacity(tasks.len()),
            ready: BTreeSet::new(),
            by_input: HashMap::new(),
            attempts: HashMap::new(),
            workers: HashMap::new(),
            fleet: HashMap::new(),
            worker_deadlines: BTreeSet::new(),
            backoffs: BTreeSet::new(),
            counts: BTreeMap::new(),
            next_attempt: first_attempt.max(1),
            next_seq: 0,
            finished_announced: false,
            restored: Vec::new(),
            parked: BTreeSet::new(),
        };
        let mut edges = Vec::new();
        for (t, stored, failures) in &tasks {
            let state = match stored {
                StoredState::Done => State::Done,
                StoredState::Failed => State::Failed,
                StoredState::Cancelled => State::Cancelled,
                StoredState::Pending => State::Blocked,
            };
            *s.counts.entry(state.name()).or_default() += 1;
            s.tasks.insert(
                t.id,
                Task {
                    state,
                    deps_left: 0,
                    dependents: Vec::new(),
                    failures: *failures,
                    priority: t.priority,
                    inputs: t.inputs.clone(),
                    queued: None,
                    cost: t.cost.clone(),
                    backups: Vec::new(),
                    speculated: 0,
                    early: Vec::new(),
                },
            );
            for d in &t.deps {
                edges.push((*d, t.id));
            }
        }
        for (dep, task) in edges {
            let dep_done = s.tasks.get(&dep).is_none_or(|d| d.state == State::Done);
            if let Some(d) = s.tasks.get_mut(&dep) {
                d.dependents.push(task);
            }
            if !dep_done {
                s.tasks.get_mut(&task).expect("task exists").deps_left += 1;
            }
        }
        // Pending tasks whose deps are all done are ready; pending tasks behind a failed or
        // cancelled dependency can never run.
        let mut order: Vec<(TaskId, u8)> = tasks.iter().map(|(t, _, _)| (t.id, t.priority)).collect();
        order.sort();
        for (id, _) in order {
            let task = &s.tasks[&id];
            if task.state == State::Blocked && task.deps_left == 0 {
                s.set_state(id, State::Ready, None, None, &mut Vec::new());
            }
        }
        let mut doomed: Vec<TaskId> = s
            .tasks
            .iter()
            .filter(|(_, t)| matches!(t.state, State::Failed | State::Cancelled))
            .map(|(id, _)| *id)
            .collect();
        doomed.sort_unstable();
        let mut out = Vec::new();
        for id in doomed {
            let reason = format!("dependency {} {}", id.0, s.tasks[&id].state.name().as_str());
            s.cancel_dependents(id, &reason, &mut out);
        }
        s.restored = out;
        s
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Apply one input at time `now`; returns what the driver must do, in order.
    pub fn handle(&mut self, now: Millis, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        self.handle_into(now, input, &mut out);
        out
    }

    /// [`Scheduler::handle`] appending to a caller-owned buffer, so a driver that reuses one
    /// `Vec` does not allocate per event.
    ///
    /// The input is applied before the deadlines due at `now` are processed: a worker whose
    /// message arrives after its deadline but before the timer fired is alive (the message proves
    /// it), so its report is still accepted.
    pub fn handle_into(&mut self, now: Millis, input: Input, out: &mut Vec<Output>) {
        out.append(&mut self.restored);
        self.apply(now, input, out);
        self.expire(now, out);
        self.lease_parked(now, out);
        if self.is_finished() && !self.finished_announced {
            self.finished_announced = true;
            out.push(Output::SweepFinished);
        }
    }

    fn apply(&mut self, now: Millis, input: Input, out: &mut Vec<Output>) {
        match input {
            Input::WorkerJoined { worker, cached } => {
                // The same id joining again is a new incarnation: the old one's work is orphaned.
                self.drop_worker(worker, out);
                let recent: Vec<String> = cached.iter().rev().take(LOCALITY_KEYS).cloned().collect();
                self.workers.insert(
                    worker,
                    Worker {
                        deadline: 0,
                        running: BTreeSet::new(),
                        cached: cached.into_iter().collect(),
                        recent,
                        rates: HashMap::new(),
                        failures_in_a_row: 0,
                        excluded_until: 0,
                    },
                );
                self.renew(worker, now);
            }
            Input::WorkerLeft { worker } => self.drop_worker(worker, out),
            Input::Heartbeat { worker } => self.renew(worker, now),
            Input::LeaseRequest { worker, slots } => {
                self.parked.remove(&worker);
                // An unknown (expired or never joined) worker gets nothing; it must join again.
                let Some(w) = self.workers.get(&worker) else { return };
                if w.excluded_until > now {
                    let retry_after = w.excluded_until - now;
                    self.renew(worker, now);
                    out.push(Output::NoWork { worker, retry_after });
                    return;
                }
                self.renew(worker, now);
                let held = self.workers[&worker].running.len() as u32;
                let slots = slots.min(self.config.max_leases_per_worker.saturating_sub(held));
                let mut granted = 0;
                while granted < slots {
                    let Some(task) = self.pick(worker) else { break };
                    let attempt = self.start_attempt(now, task, worker);
                    self.set_state(task, State::Running { attempt, worker }, Some(attempt), Some(worker), out);
                    out.push(Output::Lease { worker, task, attempt });
                    granted += 1;
                }
                // Nothing ready: the tail, where a straggler may be worth racing.
                while granted < slots && self.ready.is_empty() {
                    let Some(mut backup) = self.speculate(now, worker) else { break };
                    let task = backup.task;
                    backup.attempt = self.start_attempt(now, task, worker);
                    let t = self.tasks.get_mut(&task).expect("task exists");
                    t.backups.push(backup.attempt);
                    t.speculated += 1;
                    let attempt = backup.attempt;
                    out.push(Output::Backup(backup));
                    out.push(Output::Lease { worker, task, attempt });
                    granted += 1;
                }
                if granted == 0 {
                    if self.workers[&worker].running.is_empty() && !self.is_finished() {
                        self.parked.insert(worker);
                    }
                    out.push(Output::NoWork { worker, retry_after: self.config.idle_retry });
                }
            }
            Input::Completed { attempt, by, outputs } => {
                let Some(live) = self.close_reported(now, attempt, by, out) else { return };
                let (task, worker) = (live.task, live.worker);
                self.measure(now, live);
                // The first result wins: every other live attempt lost the race.
                let outcome = AttemptEnd::Superseded { winner: attempt, winner_worker: worker };
                self.stop_others(now, task, attempt, outcome, out);
                self.set_state(task, State::Done, Some(attempt), Some(worker), out);
                out.push(Output::Report { attempt, accepted: true });
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.failures_in_a_row = 0;
                    w.note_cached(outputs);
                }
                for i in 0..self.tasks[&task].dependents.len() {
                    let d = self.tasks[&task].dependents[i];
                    let dep = self.tasks.get_mut(&d).expect("dependent exists");
                    if dep.early.contains(&task) {
                        continue;
                    }
                    dep.deps_left = dep.deps_left.saturating_sub(1);
                    if dep.deps_left == 0 && dep.state == State::Blocked {
                        self.set_state(d, State::Ready, None, None, out);
                    }
                }
            }
            Input::Failed { attempt, by, error: _, retryable } => {
                let Some(Live { task, worker, .. }) = self.close_reported(now, attempt, by, out) else { return };
                out.push(Output::Report { attempt, accepted: true });
                self.count_worker_failure(now, worker, out);
                if retryable && self.survives(task, attempt, worker, AttemptEnd::Failed, out) {
                    return;
                }
                let t = self.tasks.get_mut(&task).expect("task exists");
                t.failures = t.failures.saturating_add(1);
                if retryable && t.failures < self.config.max_attempts {
                    let delay = self.config.backoff_delay(t.failures);
                    let until = now.saturating_add(delay);
                    self.set_state(task, State::Backoff { until }, Some(attempt), Some(worker), out);
                } else {
                    self.stop_others(now, task, attempt, AttemptEnd::Cancelled, out);
                    self.set_state(task, State::Failed, Some(attempt), Some(worker), out);
                    self.cancel_dependents(task, &format!("dependency {} failed", task.0), out);
                }
            }
            Input::Released { attempt, by } => {
                let Some(Live { task, worker, .. }) = self.close_reported(now, attempt, by, out) else { return };
                out.push(Output::Report { attempt, accepted: true });
                if !self.survives(task, attempt, worker, AttemptEnd::Released, out) {
                    self.requeue(task, Some(attempt), Some(worker), out);
                }
            }
            Input::Reconcile { worker, running, seen_up_to } => self.reconcile(now, worker, &running, seen_up_to, out),
            Input::Cancel { task, reason } => {
                if self.tasks.contains_key(&task) {
                    self.cancel_one(task, &reason, out);
                    self.cancel_dependents(task, &format!("dependency {} cancelled: {reason}", task.0), out);
                }
            }
            Input::DepsSatisfied { dep, tasks } => {
                let dep_done = self.tasks.get(&dep).is_none_or(|d| d.state == State::Done);
                if dep_done {
                    return;
                }
                for id in tasks {
                    let Some(t) = self.tasks.get_mut(&id) else { continue };
                    let waits = t.state == State::Blocked && !t.early.contains(&dep);
                    if !waits || !self.tasks[&dep].dependents.contains(&id) {
                        continue;
                    }
                    let t = self.tasks.get_mut(&id).expect("checked above");
                    t.early.push(dep);
                    t.deps_left = t.deps_left.saturating_sub(1);
                    if t.deps_left == 0 {
                        self.set_state(id, State::Ready, None, None, out);
                    }
                }
            }
            Input::CancelSweep { reason } => {
                // Once per sweep, so a walk over all tasks is fine; sorted so outputs are
                // deterministic (the store and logs see the same order on every run).
                let mut live: Vec<TaskId> =
                    self.tasks.iter().filter(|(_, t)| !t.state.name().is_terminal()).map(|(id, _)| *id).collect();
                live.sort_unstable();
                for task in live {
                    self.cancel_one(task, &reason, out);
                }
            }
            Input::Tick => {}
        }
    }

    /// The earliest time at which a `Tick` would change something.
    pub fn next_deadline(&self) -> Option<Millis> {
        let w = self.worker_deadlines.first().map(|(t, _)| *t);
        let b = self.backoffs.first().map(|(t, _)| *t);
        match (w, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Every task is done, failed or cancelled.
    pub fn is_finished(&self) -> bool {
        let terminal: usize = self.counts.iter().filter(|(name, _)| name.is_terminal()).map(|(_, count)| *count).sum();
        terminal == self.tasks.len()
    }

    pub fn counts(&self) -> &BTreeMap<StateName, usize> {
        &self.counts
    }

    pub fn state(&self, task: TaskId) -> Option<StateName> {
        self.tasks.get(&task).map(|t| t.state.name())
    }

    pub fn failures(&self, task: TaskId) -> u32 {
        self.tasks.get(&task).map_or(0, |t| t.failures)
    }

    /// Tasks running on `worker`.
    pub fn running_on(&self, worker: WorkerId) -> Vec<TaskId> {
        self.workers.get(&worker).map(|w| w.running.iter().copied().collect()).unwrap_or_default()
    }

    pub fn workers(&self) -> impl Iterator<Item = WorkerId> + '_ {
        self.workers.keys().copied()
    }

    /// The task and worker of a live attempt.
    pub fn attempt(&self, attempt: AttemptId) -> Option<(TaskId, WorkerId)> {
        self.current(attempt)
    }

    /// Backup attempts of `task` that are live now.
    pub fn backups(&self, task: TaskId) -> &[AttemptId] {
        self.tasks.get(&task).map_or(&[], |t| &t.backups)
    }

    /// `worker`'s measured throughput for `class` (work units per second), if it finished any.
    pub fn throughput(&self, worker: WorkerId, class: &CostClass) -> Option<f64> {
        self.workers.get(&worker)?.rates.get(class)?.get()
    }

    /// Every class `worker` has a measured throughput for, as `(class, units per second)`, sorted.
    pub fn throughputs(&self, worker: WorkerId) -> Vec<(CostClass, f64)> {
        let Some(w) = self.workers.get(&worker) else { return Vec::new() };
        let mut rates: Vec<_> = w.rates.iter().filter_map(|(c, r)| Some((c.clone(), r.get()?))).collect();
        rates.sort_by(|a, b| a.0.cmp(&b.0));
        rates
    }

    /// The fleet's throughput for `class`: the prior of a worker without history of it.
    pub fn fleet_throughput(&self, class: &CostClass) -> Option<f64> {
        self.fleet.get(class)?.get()
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    // ------------------------------------------------------------------ internals

    fn current(&self, attempt: AttemptId) -> Option<(TaskId, WorkerId)> {
        self.attempts.get(&attempt).map(|l| (l.task, l.worker))
    }

    fn start_attempt(&mut self, now: Millis, task: TaskId, worker: WorkerId) -> AttemptId {
        let attempt = AttemptId(self.next_attempt);
        self.next_attempt += 1;
        self.attempts.insert(attempt, Live { task, worker, since: now });
        self.parked.remove(&worker);
        let inputs = self.tasks[&task].inputs.clone();
        let w = self.workers.get_mut(&worker).expect("worker exists");
        w.running.insert(task);
        // The worker downloads the lease's inputs and keeps them: later tasks on the same input
        // prefer it (a worker that trained nothing still caches the checkpoints it fetched).
        w.note_cached(inputs);
        attempt
    }

    /// Lease ready tasks to parked idle workers (in id order), each at most one.
    fn lease_parked(&mut self, now: Millis, out: &mut Vec<Output>) {
        while !self.ready.is_empty() {
            let Some(&worker) = self.parked.iter().next() else { return };
            self.parked.remove(&worker);
            let idle = self.workers.get(&worker).is_some_and(|w| w.running.is_empty() && w.excluded_until <= now);
            if !idle {
                continue;
            }
            let Some(task) = self.pick(worker) else { return };
            let attempt = self.start_attempt(now, task, worker);
            self.set_state(task, State::Running { attempt, worker }, Some(attempt), Some(worker), out);
            out.push(Output::Lease { worker, task, attempt });
        }
    }

    /// A report (completion, failure, release) names `attempt`: if it is one of the task's live
    /// attempts and `by` holds it, end it and renew its worker; otherwise answer that the report
    /// was not accepted (a late report, or one forged by another session, changes nothing).
    fn close_reported(&mut self, now: Millis, attempt: AttemptId, by: WorkerId, out: &mut Vec<Output>) -> Option<Live> {
        let Some(&live) = self.attempts.get(&attempt).filter(|l| l.worker == by) else {
            out.push(Output::Report { attempt, accepted: false });
            return None;
        };
        self.renew(live.worker, now);
        self.end_attempt(attempt);
        Some(live)
    }

    /// Remove a live attempt from the indexes (the task's state is the caller's business).
    fn end_attempt(&mut self, attempt: AttemptId) -> Option<Live> {
        let live = self.attempts.remove(&attempt)?;
        if let Some(w) = self.workers.get_mut(&live.worker) {
            w.running.remove(&live.task);
        }
        Some(live)
    }

    /// `attempt` of `task` has just ended (out of the indexes); if another attempt of the task is
    /// still live, the task runs on with it (the oldest backup takes over as the first attempt),
    /// the store is told to close `attempt` with `outcome`, and the answer is true.
    fn survives(
        &mut self,
        task: TaskId,
        attempt: AttemptId,
        worker: WorkerId,
        outcome: AttemptEnd,
        out: &mut Vec<Output>,
    ) -> bool {
        let t = self.tasks.get_mut(&task).expect("task exists");
        if let Some(i) = t.backups.iter().position(|&a| a == attempt) {
            t.backups.remove(i);
        } else if t.backups.is_empty() {
            return false;
        } else {
            let next = t.backups.remove(0);
            t.state = State::Running { attempt: next, worker: self.attempts[&next].worker };
        }
        out.push(Output::AttemptEnded { task, attempt, worker, outcome });
        true
    }

    /// Stop every live attempt of `task` but `except` (which has just ended): each is told to
    /// stop and closed with `outcome`. A loser's elapsed time bounds its worker's rate.
    fn stop_others(
        &mut self,
        now: Millis,
        task: TaskId,
        except: AttemptId,
        outcome: AttemptEnd,
        out: &mut Vec<Output>,
    ) {
        let t = self.tasks.get_mut(&task).expect("task exists");
        if t.backups.is_empty() {
            return; // the common case: one attempt, and it is `except`
        }
        let first = match t.state {
            State::Running { attempt, .. } if attempt != except => Some(attempt),
            _ => None,
        };
        let backups = std::mem::take(&mut t.backups);
        for attempt in first.into_iter().chain(backups.into_iter().filter(|&a| a != except)) {
            let Some(live) = self.end_attempt(attempt) else { continue };
            if let AttemptEnd::Superseded { .. } = outcome {
                self.bound(now, live);
            }
            let reason = match outcome {
                AttemptEnd::Superseded { winner, .. } => format!("attempt {} finished first", winner.0),
                _ => "the task failed".to_string(),
            };
            out.push(Output::Cancel { worker: live.worker, attempt, reason });
            out.push(Output::AttemptEnded { task, attempt, worker: live.worker, outcome });
        }
    }

    /// Work units per second that `live` achieved, as a sample.
    fn sample(&self, now: Millis, live: Live) -> (CostClass, f64) {
        let cost = &self.tasks[&live.task].cost;
        let ms = now.saturating_sub(live.since).max(1) as f64;
        (cost.class.clone(), cost.units * 1_000.0 / ms)
    }

    /// An accepted completion: a sample for its worker and for the fleet.
    fn measure(&mut self, now: Millis, live: Live) {
        let (class, sample) = self.sample(now, live);
        let alpha = self.config.speculation.alpha;
        self.fleet.entry(class.clone()).or_default().add(sample, alpha);
        if let Some(w) = self.workers.get_mut(&live.worker) {
            w.rates.entry(class).or_default().add(sample, alpha);
        }
    }

    /// A cancelled loser ran this long without finishing: its worker is at most this fast.
    fn bound(&mut self, now: Millis, live: Live) {
        let (class, bound) = self.sample(now, live);
        let alpha = self.config.speculation.alpha;
        if let Some(w) = self.workers.get_mut(&live.worker) {
            let rate = w.rates.entry(class).or_default();
            if rate.get().is_none_or(|r| bound < r) {
                rate.add(bound, alpha);
            }
        }
    }

    /// A worker's rate for a kind: measured, else the fleet's; `None` before any sample.
    fn rate_of(&self, worker: &Worker, class: &CostClass) -> Option<f64> {
        let measured = worker.rates.get(class).and_then(|r| r.get());
        measured.or_else(|| self.fleet.get(class)?.get()).filter(|r| *r > 0.0)
    }

    /// The backup most worth starting on `worker` now, if any (its `attempt` is not yet set).
    /// Looks at every running task: O(running attempts), only when nothing is ready.
    fn speculate(&self, now: Millis, worker: WorkerId) -> Option<Backup> {
        let sc = &self.config.speculation;
        if sc.max_backups == 0 {
            return None;
        }
        let me = self.workers.get(&worker)?;
        let mut best: Option<(f64, Backup)> = None;
        for (&wid, w) in &self.workers {
            for &task in &w.running {
                let t = &self.tasks[&task];
                // Visit each task once, from the worker of its first attempt.
                let State::Running { attempt: first, worker: first_worker } = t.state else { continue };
                if first_worker != wid || t.speculated >= sc.max_backups || me.running.contains(&task) {
                    continue;
                }
                let class = &t.cost.class;
                let Some(rate) = self.rate_of(me, class) else { continue };
                let expected = t.cost.units * 1_000.0 / rate;
                // The live attempt expected to finish first is the one to beat.
                let mut straggler: Option<(f64, AttemptId, WorkerId, f64)> = None;
                for attempt in std::iter::once(first).chain(t.backups.iter().copied()) {
                    let live = self.attempts[&attempt];
                    let Some(r) = self.workers.get(&live.worker).and_then(|w| self.rate_of(w, class)) else { continue };
                    let total = t.cost.units * 1_000.0 / r;
                    let elapsed = now.saturating_sub(live.since) as f64;
                    // Past its expected end, an attempt needs as long again as it has overrun.
                    let remaining = (total - elapsed).abs();
                    if straggler.is_none_or(|s| remaining < s.0) {
                        straggler = Some((remaining, attempt, live.worker, r));
                    }
                }
                let Some((remaining, straggler, straggler_worker, straggler_rate)) = straggler else { continue };
                let gain = remaining - expected;
                if remaining <= sc.factor * expected || gain < sc.min_gain as f64 {
                    continue;
                }
                // Largest gain first; ties to the smaller task id (workers are visited in hash order).
                if best
                    .as_ref()
                    .is_some_and(|(g, b)| (*g, std::cmp::Reverse(b.task)) >= (gain, std::cmp::Reverse(task)))
                {
                    continue;
                }
                let backup = Backup {
                    task,
                    attempt: AttemptId(0),
                    worker,
                    straggler,
                    straggler_worker,
                    class: t.cost.class.clone(),
                    rate,
                    straggler_rate,
                    expected_ms: expected.round() as Millis,
                    remaining_ms: remaining.round() as Millis,
                };
                best = Some((gain, backup));
            }
        }
        best.map(|(_, b)| b)
    }

    /// What a worker says it runs against what the core thinks it runs (see [`Input::Reconcile`]).
    fn reconcile(
        &mut self,
        now: Millis,
        worker: WorkerId,
        running: &[AttemptId],
        seen_up_to: AttemptId,
        out: &mut Vec<Output>,
    ) {
        if !self.workers.contains_key(&worker) {
            return;
        }
        self.renew(worker, now);
        let w = &self.workers[&worker];
        for &attempt in running {
            if self.attempts.get(&attempt).is_none_or(|l| l.worker != worker) {
                out.push(Output::CancelStale { worker, attempt });
            }
        }
        let grace = self.config.reconcile_grace;
        let mut lost: Vec<(TaskId, AttemptId)> = Vec::new();
        for &task in &w.running {
            let t = &self.tasks[&task];
            let first = match t.state {
                State::Running { attempt, .. } => Some(attempt),
                _ => None,
            };
            for attempt in first.into_iter().chain(t.backups.iter().copied()) {
                let live = self.attempts[&attempt];
                let overdue = attempt <= seen_up_to || now.saturating_sub(live.since) >= grace;
                if live.worker == worker && overdue && !running.contains(&attempt) {
                    lost.push((task, attempt));
                }
            }
        }
        for (task, attempt) in lost {
            self.end_attempt(attempt);
            if !self.survives(task, attempt, worker, AttemptEnd::Lost, out) {
                self.requeue(task, Some(attempt), Some(worker), out);
            }
        }
    }

    /// One more failure on `worker`; past `exclude_after` in a row it gets no leases for a while.
    fn count_worker_failure(&mut self, now: Millis, worker: WorkerId, out: &mut Vec<Output>) {
        let after = self.config.exclude_after;
        let Some(w) = self.workers.get_mut(&worker) else { return };
        w.failures_in_a_row = w.failures_in_a_row.saturating_add(1);
        if after > 0 && w.failures_in_a_row >= after {
            let pause = self.config.backoff_delay(w.failures_in_a_row - after + 1);
            w.excluded_until = now.saturating_add(pause);
            out.push(Output::WorkerExcluded { worker, failures: w.failures_in_a_row, for_ms: pause });
        }
    }

    fn renew(&mut self, worker: WorkerId, now: Millis) {
        if let Some(w) = self.workers.get_mut(&worker) {
            self.worker_deadlines.remove(&(w.deadline, worker));
            w.deadline = now.saturating_add(self.config.lease_timeout);
            self.worker_deadlines.insert((w.deadline, worker));
        }
    }

    fn drop_worker(&mut self, worker: WorkerId, out: &mut Vec<Output>) {
        self.parked.remove(&worker);
        let Some(w) = self.workers.remove(&worker) else { return };
        self.worker_deadlines.remove(&(w.deadline, worker));
        for task in w.running {
            let t = &self.tasks[&task];
            let attempt = match t.state {
                State::Running { attempt, worker: first } if first == worker => Some(attempt),
                _ => t.backups.iter().copied().find(|a| self.attempts[a].worker == worker),
            };
            let Some(attempt) = attempt else { continue };
            self.attempts.remove(&attempt);
            if self.survives(task, attempt, worker, AttemptEnd::Lost, out) {
                continue;
            }
            // The task's only attempt died with its worker: counted, so a task that crashes
            // every worker it runs on fails after `max_attempts` instead of taking the fleet down.
            let t = self.tasks.get_mut(&task).expect("task exists");
            t.failures = t.failures.saturating_add(1);
            let failed = t.failures >= self.config.max_attempts;
            out.push(Output::DiedRunning { task, attempt, worker, times: t.failures, failed });
            if failed {
                self.set_state(task, State::Failed, Some(attempt), Some(worker), out);
                self.cancel_dependents(task, &format!("dependency {} failed", task.0), out);
            } else {
                self.requeue(task, Some(attempt), Some(worker), out);
            }
        }
    }

    fn expire(&mut self, now: Millis, out: &mut Vec<Output>) {
        while let Some(&(deadline, worker)) = self.worker_deadlines.first() {
            if deadline > now {
                break;
            }
            out.push(Output::WorkerExpired { worker });
            self.drop_worker(worker, out);
        }
        while let Some(&(until, task)) = self.backoffs.first() {
            if until > now {
                break;
            }
            self.backoffs.remove(&(until, task));
            self.set_retry_ready(task, out);
        }
    }

    /// Back to the front of the queue without counting a failure.
    fn requeue(&mut self, task: TaskId, attempt: Option<AttemptId>, worker: Option<WorkerId>, out: &mut Vec<Output>) {
        self.set_state_with(task, State::Ready, attempt, worker, true, out);
    }

    fn set_retry_ready(&mut self, task: TaskId, out: &mut Vec<Output>) {
        self.set_state_with(task, State::Ready, None, None, true, out);
    }

    fn set_state(
        &mut self,
        task: TaskId,
        to: State,
        attempt: Option<AttemptId>,
        worker: Option<WorkerId>,
        out: &mut Vec<Output>,
    ) {
        self.set_state_with(task, to, attempt, worker, false, out);
    }

    fn set_state_with(
        &mut self,
        id: TaskId,
        to: State,
        attempt: Option<AttemptId>,
        worker: Option<WorkerId>,
        front: bool,
        out: &mut Vec<Output>,
    ) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let task = self.tasks.get_mut(&id).expect("task exists");
        let from = task.state.name();
        // Leave the old state's indexes.
        if let Some(key) = task.queued.take() {
            self.ready.remove(&key);
            for input in &task.inputs {
                if let Some(set) = self.by_input.get_mut(input) {
                    set.remove(&key);
                    if set.is_empty() {
                        self.by_input.remove(input);
                    }
                }
            }
        }
        if let State::Backoff { until } = task.state {
            self.backoffs.remove(&(until, id));
        }
        // Enter the new one.
        match &to {
            State::Ready => {
                let key = (!front, task.priority, seq, id);
                self.ready.insert(key);
                for input in &task.inputs {
                    self.by_input.entry(input.clone()).or_default().insert(key);
                }
                task.queued = Some(key);
            }
            State::Backoff { until } => {
                self.backoffs.insert((*until, id));
            }
            State::Running { .. } => task.speculated = 0,
            _ => {}
        }
        let to_name = to.name();
        task.state = to;
        *self.counts.entry(from).or_default() -= 1;
        *self.counts.entry(to_name).or_default() += 1;
        out.push(Output::Transition { task: id, from, to: to_name, attempt, worker });
    }

    /// Cancel `task` unless it already finished; a live attempt is told to stop, and the
    /// transition names it so the store can close the attempt.
    fn cancel_one(&mut self, task: TaskId, reason: &str, out: &mut Vec<Output>) {
        let (attempt, worker) = match self.tasks[&task].state {
            State::Running { attempt, worker } => {
                for backup in std::mem::take(&mut self.tasks.get_mut(&task).expect("task exists").backups) {
                    let live = self.end_attempt(backup).expect("backups are live");
                    out.push(Output::Cancel { worker: live.worker, attempt: backup, reason: reason.to_string() });
                    let outcome = AttemptEnd::Cancelled;
                    out.push(Output::AttemptEnded { task, attempt: backup, worker: live.worker, outcome });
                }
                self.end_attempt(attempt);
                out.push(Output::Cancel { worker, attempt, reason: reason.to_string() });
                (Some(attempt), Some(worker))
            }
            ref state if state.name().is_terminal() => return,
            _ => (None, None),
        };
        self.set_state(task, State::Cancelled, attempt, worker, out);
    }

    /// Cancel everything that (transitively) depends on `task`, which can no longer complete.
    /// Each task is visited once: a cancelled one is terminal and stops the walk.
    /// A dependent satisfied early by `task` ([`Input::DepsSatisfied`]) does not need it and
    /// stays.
    fn cancel_dependents(&mut self, task: TaskId, reason: &str, out: &mut Vec<Output>) {
        let mut stack: Vec<(TaskId, TaskId)> = self.tasks[&task].dependents.iter().map(|&d| (task, d)).collect();
        while let Some((parent, d)) = stack.pop() {
            let t = &self.tasks[&d];
            if t.state.name().is_terminal() || t.early.contains(&parent) {
                continue;
            }
            self.cancel_one(d, reason, out);
            stack.extend(self.tasks[&d].dependents.iter().map(|&e| (d, e)));
        }
    }

    /// The best ready task for `worker`: one whose inputs it holds, else the queue's head.
    fn pick(&self, worker: WorkerId) -> Option<TaskId> {
        let w = self.workers.get(&worker)?;
        let local = w.recent.iter().filter_map(|key| self.by_input.get(key)?.first()).min();
        local.or_else(|| self.ready.first()).map(|key| key.3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn task(id: u64, deps: &[u64], priority: u8, inputs: &[&str]) -> NewTask {
        NewTask {
            id: TaskId(id),
            deps: deps.iter().map(|&d| TaskId(d)).collect(),
            priority,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            cost: Cost::default(),
        }
    }

    fn default_class() -> CostClass {
        Cost::default().class
    }

    fn config() -> SchedulerConfig {
        SchedulerConfig {
            lease_timeout: 1_000,
            max_attempts: 3,
            backoff_base: 100,
            backoff_max: 1_000,
            idle_retry: 50,
            // Tests lease several tasks to one worker at once.
            max_leases_per_worker: 16,
            reconcile_grace: 500,
            // Off for the rule tests; its own test and the random sequences turn it on.
            exclude_after: 0,
            speculation: SpeculationConfig::default(),
        }
    }

    #[test]
    fn a_worker_that_fails_every_task_is_excluded_for_a_while_and_a_completion_ends_it() {
        let mut c = config();
        c.exclude_after = 2;
        let tasks: Vec<NewTask> = (1..=6).map(|i| task(i, &[], 0, &[])).collect();
        let mut s = Scheduler::new(c, tasks, 1);
        join(&mut s, 0, 1);
        join(&mut s, 0, 2);
        let fail = |s: &mut Scheduler, now, a| {
            s.handle(now, Input::Failed { attempt: a, by: WorkerId(1), error: "disk full".into(), retryable: true })
        };
        let (_, a) = lease_one(&mut s, 1, 1).unwrap();
        assert!(!fail(&mut s, 2, a).iter().any(|o| matches!(o, Output::WorkerExcluded { .. })), "one failure is luck");
        let (_, a) = lease_one(&mut s, 3, 1).unwrap();
        let out = fail(&mut s, 4, a);
        assert!(out.contains(&Output::WorkerExcluded { worker: WorkerId(1), failures: 2, for_ms: 100 }), "{out:?}");
        let out = s.handle(50, Input::LeaseRequest { worker: WorkerId(1), slots: 1 });
        assert_eq!(out, vec![Output::NoWork { worker: WorkerId(1), retry_after: 54 }], "excluded until 104");
        assert!(lease_one(&mut s, 50, 2).is_some(), "the other worker is not");
        // After the pause it may try again; a completion ends the run of failures.
        let (_, a) = lease_one(&mut s, 104, 1).unwrap();
        s.handle(105, Input::Completed { attempt: a, by: WorkerId(1), outputs: vec![] });
        let (_, a) = lease_one(&mut s, 106, 1).unwrap();
        assert!(!fail(&mut s, 107, a).iter().any(|o| matches!(o, Output::WorkerExcluded { .. })));
    }

    fn leases(out: &[Output]) -> Vec<(TaskId, AttemptId)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Lease { task, attempt, .. } => Some((*task, *attempt)),
                _ => None,
            })
            .collect()
    }

    fn lease_one(s: &mut Scheduler, now: Millis, worker: u64) -> Option<(TaskId, AttemptId)> {
        leases(&s.handle(now, Input::LeaseRequest { worker: WorkerId(worker), slots: 1 })).first().copied()
    }

    /// The worker holding `attempt` (the sender of an honest report); nobody's for a dead attempt.
    fn owner(s: &Scheduler, attempt: AttemptId) -> WorkerId {
        s.attempt(attempt).map_or(WorkerId(u64::MAX), |(_, w)| w)
    }

    fn join(s: &mut Scheduler, now: Millis, worker: u64) {
        s.handle(now, Input::WorkerJoined { worker: WorkerId(worker), cached: vec![] });
    }

    #[test]
    fn a_report_is_accepted_only_from_the_worker_that_holds_the_attempt() {
        let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[])], 1);
        join(&mut s, 0, 1);
        join(&mut s, 0, 2);
        let (t, a) = lease_one(&mut s, 0, 1).unwrap();
        for forged in [
            Input::Completed { attempt: a, by: WorkerId(2), outputs: vec![] },
            Input::Failed { attempt: a, by: WorkerId(2), error: "forged".into(), retryable: false },
            Input::Released { attempt: a, by: WorkerId(2) },
        ] {
            let out = s.handle(1, forged);
            assert_eq!(
                out,
                vec![Output::Report { attempt: a, accepted: false }],
                "another session's report is refused"
            );
        }
        assert_eq!(s.state(t), Some(StateName::Running));
        assert_eq!(s.attempt(a), Some((t, WorkerId(1))), "the owner keeps its attempt");
        let out = s.handle(2, Input::Completed { attempt: a, by: WorkerId(1), outputs: vec![] });
        assert!(out.contains(&Output::Report { attempt: a, accepted: true }));
    }

    #[test]
    fn lease_requests_are_capped_per_worker() {
        let tasks: Vec<NewTask> = (1..=10).map(|i| task(i, &[], 0, &[])).collect();
        let mut s = Scheduler::new(SchedulerConfig { max_leases_per_worker: 2, ..config() }, tasks, 1);
        join(&mut s, 0, 1);
        let out = s.handle(0, Input::LeaseRequest { worker: WorkerId(1), slots: u32::MAX });
        assert_eq!(leases(&out).len(), 2, "a greedy client gets at most its cap");
        let out = s.handle(0, Input::LeaseRequest { worker: WorkerId(1), slots: 5 });
        assert!(leases(&out).is_empty() && matches!(out[..], [Output::NoWork { .. }]), "{out:?}");
        assert_eq!(s.counts()[&StateName::Ready], 8, "the rest stays for other workers");
        assert_eq!(SchedulerConfig::default().max_leases_per_worker, 1, "one task per worker (one GPU) by default");
    }

    #[test]
    fn heartbeats_reconcile_what_the_worker_runs_with_what_the_core_thinks() {
        let tasks: Vec<NewTask> = (1..=3).map(|i| task(i, &[], 0, &[])).collect();
        let mut s = Scheduler::new(config(), tasks, 1);
        join(&mut s, 0, 1);
        let (t1, a1) = lease_one(&mut s, 0, 1).unwrap();
        let (t2, a2) = lease_one(&mut s, 0, 1).unwrap();
        // The worker lists a1 only; a2's lease may still be on its way (not seen, within grace).
        let out = s.handle(100, Input::Reconcile { worker: WorkerId(1), running: vec![a1], seen_up_to: a1 });
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(s.attempt(a2), Some((t2, WorkerId(1))));
        // Past the grace period a lease the worker never listed is taken as lost and re-queued.
        let out = s.handle(600, Input::Reconcile { worker: WorkerId(1), running: vec![a1], seen_up_to: a1 });
        assert!(out.contains(&Output::Transition {
            task: t2,
            from: StateName::Running,
            to: StateName::Ready,
            attempt: Some(a2),
            worker: Some(WorkerId(1)),
        }));
        assert_eq!(s.failures(t2), 0, "a lost lease is not the task's failure");
        // A worker that has seen a lease and does not list it lost it (no grace needed).
        let (_, a3) = lease_one(&mut s, 700, 1).unwrap();
        s.handle(701, Input::Reconcile { worker: WorkerId(1), running: vec![a1], seen_up_to: a3 });
        assert_eq!(s.attempt(a3), None);
        // It still runs a1 and a2, which the core ended: a2 is stale and gets a cancel.
        let out = s.handle(800, Input::Reconcile { worker: WorkerId(1), running: vec![a1, a2], seen_up_to: a3 });
        assert_eq!(out, vec![Output::CancelStale { worker: WorkerId(1), attempt: a2 }]);
        assert_eq!(s.attempt(a1), Some((t1, WorkerId(1))));
        // An expired (paused) worker lists its attempt after it resumed: nothing is accepted from
        // it until it joins again, and its attempt was re-queued at the expiry.
        s.handle(5_000, Input::Tick);
        assert!(s.workers().next().is_none(), "expired");
        assert_eq!(s.state(t1), Some(StateName::Ready));
        let out = s.handle(5_001, Input::Reconcile { worker: WorkerId(1), running: vec![a1], seen_up_to: a3 });
        assert!(out.is_empty(), "an unknown worker is the driver's business (it closes the session)");
    }

    #[test]
    fn dependencies_gate_readiness_and_the_sweep_finishes_once() {
        let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[]), task(2, &[1], 1, &[])], 1);
        assert_eq!(s.state(TaskId(2)), Some(StateName::Blocked));
        join(&mut s, 0, 1);
        let (t, a) = lease_one(&mut s, 0, 1).unwrap();
        assert_eq!(t, TaskId(1));
        assert_eq!(lease_one(&mut s, 0, 1), None, "task 2 waits for task 1");
        let out = s.handle(5, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
        assert!(out.contains(&Output::Report { attempt: a, accepted: true }));
        assert_eq!(s.state(TaskId(2)), Some(StateName::Ready));
        let (t2, a2) = lease_one(&mut s, 6, 1).unwrap();
        assert_eq!(t2, TaskId(2));
        let out = s.handle(7, Input::Completed { attempt: a2, by: owner(&s, a2), outputs: vec![] });
        assert!(out.contains(&Output::SweepFinished));
        assert!(!s.handle(8, Input::Tick).contains(&Output::SweepFinished), "announced once");
    }

    #[test]
    fn stale_and_duplicate_reports_change_nothing() {
        let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[])], 10);
        join(&mut s, 0, 1);
        let (_, a) = lease_one(&mut s, 0, 1).unwrap();
        assert_eq!(a, AttemptId(10), "attempt ids start where the store left off");
        s.handle(1, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
        let again = s.handle(2, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
        assert_eq!(again, vec![Output::Report { attempt: a, accepted: false }]);
        let late = s.handle(2, Input::Failed { attempt: a, by: owner(&s, a), error: "x".into(), retryable: true });
        assert_eq!(late, vec![Output::Report { attempt: a, accepted: false }]);
        assert_eq!(s.state(TaskId(1)), Some(StateName::Done));
    }

    #[test]
    fn a_silent_worker_expires_and_its_task_goes_back_to_the_front() {
        let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[]), task(2, &[], 0, &[])], 1);
        join(&mut s, 0, 1);
        join(&mut s, 0, 2);
        let (t, a) = lease_one(&mut s, 0, 1).unwrap();
        assert_eq!(s.next_deadline(), Some(1_000));
        s.handle(900, Input::Heartbeat { worker: WorkerId(2) });
        let out = s.handle(1_000, Input::Tick);
        assert!(out.contains(&Output::WorkerExpired { worker: WorkerId(1) }));
        assert_eq!(s.state(t), Some(StateName::Ready));
        let died = Output::DiedRunning { task: t, attempt: a, worker: WorkerId(1), times: 1, failed: false };
        assert!(out.contains(&died), "{out:?}");
        assert_eq!(s.failures(t), 1, "an attempt whose worker died counts");
        let (again, a2) = lease_one(&mut s, 1_001, 2).unwrap();
        assert_eq!(again, t, "the orphaned task is re-leased before the untouched one");
        assert_ne!(a, a2);
        let late = s.handle(1_002, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
        assert_eq!(late, vec![Output::Report { attempt: a, accepted: false }], "the old attempt is stale");
    }

    #[test]
    fn a_task_that_kills_every_worker_fails_after_max_attempts_and_cancels_dependents() {
        let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[]), task(2, &[1], 0, &[])], 1);
        for w in 1..=3 {
            join(&mut s, w * 10, w);
            let (t, a) = lease_one(&mut s, w * 10, w).unwrap();
            assert_eq!(t, TaskId(1));
            // Killed: the stream closes (left) or the process restarts (joins again).
            let out = if w == 2 {
                s.handle(w * 10 + 1, Input::WorkerJoined { worker: WorkerId(w), cached: vec![] })
            } else {
                s.handle(w * 10 + 1, Input::WorkerLeft { worker: WorkerId(w) })
            };
            let failed = w == 3;
            let died = Output::DiedRunning { task: t, attempt: a, worker: WorkerId(w), times: w as u32, failed };
            assert!(out.contains(&died), "{out:?}");
            let expected = if failed { StateName::Failed } else { StateName::Ready };
            assert_eq!(s.state(t), Some(expected));
        }
        assert_eq!(s.state(TaskId(2)), Some(StateName::Cancelled));
        assert!(s.is_finished());
    }

    #[test]
    fn a_lost_lease_and_a_release_do_not_count() {
        let mut c = config();
        c.max_attempts = 1;
        let mut s = Scheduler::new(c, vec![task(1, &[], 0, &[])], 1);
        join(&mut s, 0, 1);
        let (t, a) = lease_one(&mut s, 0, 1).unwrap();
        s.handle(1, Input::Released { attempt: a, by: WorkerId(1) });
        let (_, a) = lease_one(&mut s, 2, 1).unwrap();
        s.handle(3, Input::Reconcile { worker: WorkerId(1), running: vec![], seen_up_to: a });
        assert_eq!((s.state(t), s.failures(t)), (Some(StateName::Ready), 0));
    }

    #[test]
    fn retryable_failures_back_off_then_fail_after_max_attempts_and_cancel_dependents() {
        let mut s =
            Scheduler::new(config(), vec![task(1, &[], 0, &[]), task(2, &[1], 0, &[]), task(3, &[2], 0, &[])], 1);
        join(&mut s, 0, 1);
        let mut now = 0;
        let mut pushed = None;
        for k in 1..=3u32 {
            let (t, a) = pushed.take().or_else(|| lease_one(&mut s, now, 1)).unwrap();
            assert_eq!(t, TaskId(1));
            s.handle(now, Input::Failed { attempt: a, by: owner(&s, a), error: "oom".into(), retryable: true });
            if k < 3 {
                assert_eq!(s.state(t), Some(StateName::Backoff));
                let wait = 100 << (k - 1);
                assert_eq!(lease_one(&mut s, now + wait - 1, 1), None, "still backing off");
                assert_eq!(s.next_deadline().map(|d| d.min(now + wait)), Some(now + wait));
                now += wait;
                // Ready again, and the worker told NoWork meanwhile is idle: leased at once.
                pushed = leases(&s.handle(now, Input::Tick)).first().copied();
                assert_eq!(s.state(t), Some(StateName::Running));
                assert!(pushed.is_some());
            }
        }
        assert_eq!(s.state(TaskId(1)), Some(StateName::Failed));
        assert_eq!(s.state(TaskId(2)), Some(StateName::Cancelled));
        assert_eq!(s.state(TaskId(3)), Some(StateName::Cancelled));
        assert!(s.is_finished());
    }

    #[test]
    fn a_non_retryable_failure_fails_at_once() {
        let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[])], 1);
        join(&mut s, 0, 1);
        let (_, a) = lease_one(&mut s, 0, 1).unwrap();
        let out =
            s.handle(1, Input::Failed { attempt: a, by: owner(&s, a), error: "NaN loss".into(), retryable: false });
        assert_eq!(s.state(TaskId(1)), Some(StateName::Failed));
        assert!(out.contains(&Output::SweepFinished));
    }

    #[test]
    fn release_and_worker_leave_requeue_without_counting_a_failure() {
        let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[]), task(2, &[], 0, &[])], 1);
        join(&mut s, 0, 1);
        let (t, a) = lease_one(&mut s, 0, 1).unwrap();
        s.handle(1, Input::Released { attempt: a, by: owner(&s, a) });
        assert_eq!((s.state(t), s.failures(t)), (Some(StateName::Ready), 0));
        let (t2, _) = lease_one(&mut s, 2, 1).unwrap();
        assert_eq!(t2, t, "released work goes first");
        s.handle(3, Input::WorkerLeft { worker: WorkerId(1) });
        assert_eq!(s.state(t), Some(StateName::Ready));
        assert!(s.running_on(WorkerId(1)).is_empty());
    }

    #[test]
    fn locality_prefers_the_worker_that_holds_the_input() {
        let tasks = vec![
            task(1, &[], 0, &[]),
            task(2, &[], 0, &[]),
            task(10, &[1], 1, &["task:1/checkpoint"]),
            task(20, &[2], 1, &["task:2/checkpoint"]),
        ];
        let mut s = Scheduler::new(config(), tasks, 1);
        join(&mut s, 0, 1);
        join(&mut s, 0, 2);
        let (t1, a1) = lease_one(&mut s, 0, 1).unwrap();
        let (t2, a2) = lease_one(&mut s, 0, 2).unwrap();
        assert_eq!((t1, t2), (TaskId(1), TaskId(2)));
        s.handle(1, Input::Completed { attempt: a1, by: owner(&s, a1), outputs: vec!["task:1/checkpoint".into()] });
        s.handle(1, Input::Completed { attempt: a2, by: owner(&s, a2), outputs: vec!["task:2/checkpoint".into()] });
        // FIFO would hand task 10 to whoever asks first; locality gives each worker its own.
        assert_eq!(lease_one(&mut s, 2, 2).unwrap().0, TaskId(20));
        assert_eq!(lease_one(&mut s, 2, 1).unwrap().0, TaskId(10));
    }

    #[test]
    fn priority_orders_ready_tasks_and_cancel_stops_the_live_attempt() {
        let mut s = Scheduler::new(config(), vec![task(1, &[], 2, &[]), task(2, &[], 0, &[])], 1);
        join(&mut s, 0, 1);
        let (t, a) = lease_one(&mut s, 0, 1).unwrap();
        assert_eq!(t, TaskId(2), "lower priority value first");
        let out = s.handle(1, Input::Cancel { task: t, reason: "user".into() });
        assert!(out.contains(&Output::Cancel { worker: WorkerId(1), attempt: a, reason: "user".into() }));
        assert_eq!(s.state(t), Some(StateName::Cancelled));
        let late = s.handle(2, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
        assert_eq!(late, vec![Output::Report { attempt: a, accepted: false }]);
    }

    #[test]
    fn restore_keeps_finished_work_and_requeues_the_rest() {
        let stored = vec![
            (task(1, &[], 0, &[]), StoredState::Done, 1),
            (task(2, &[1], 1, &[]), StoredState::Pending, 1),
            (task(3, &[2], 2, &[]), StoredState::Pending, 0),
            (task(4, &[], 0, &[]), StoredState::Failed, 3),
            (task(5, &[4], 1, &[]), StoredState::Pending, 0),
        ];
        let mut s = Scheduler::restore(config(), stored, 42);
        assert_eq!(s.state(TaskId(1)), Some(StateName::Done));
        assert_eq!(s.state(TaskId(2)), Some(StateName::Ready));
        assert_eq!(s.state(TaskId(3)), Some(StateName::Blocked));
        assert_eq!(s.state(TaskId(5)), Some(StateName::Cancelled), "behind a failed task");
        assert_eq!(s.failures(TaskId(2)), 1, "failure counts survive a restart");
        join(&mut s, 0, 1);
        assert_eq!(lease_one(&mut s, 0, 1), Some((TaskId(2), AttemptId(42))));
    }

    #[test]
    fn a_hundred_thousand_tasks_lease_and_complete() {
        let tasks: Vec<NewTask> = (0..100_000).map(|i| task(i, &[], (i % 3) as u8, &[])).collect();
        let mut s = Scheduler::new(config(), tasks, 1);
        join(&mut s, 0, 1);
        let mut done = 0;
        while let Some((_, a)) = lease_one(&mut s, 1, 1) {
            s.handle(1, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
            done += 1;
        }
        assert_eq!(done, 100_000);
        assert!(s.is_finished());
    }

    fn transitions(out: &[Output]) -> Vec<(TaskId, StateName, StateName, Option<AttemptId>)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Transition { task, from, to, attempt, .. } => Some((*task, *from, *to, *attempt)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn cancelling_a_running_task_names_its_attempt_and_cancels_dependents() {
        let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[]), task(2, &[1], 0, &[])], 1);
        join(&mut s, 0, 1);
        let (_, a) = lease_one(&mut s, 0, 1).unwrap();
        let out = s.handle(1, Input::Cancel { task: TaskId(1), reason: "user".into() });
        // The store closes an attempt only when the transition out of Running names it.
        assert_eq!(
            transitions(&out),
            vec![
                (TaskId(1), StateName::Running, StateName::Cancelled, Some(a)),
                (TaskId(2), StateName::Blocked, StateName::Cancelled, None),
            ]
        );
        assert!(s.running_on(WorkerId(1)).is_empty());
        assert!(out.contains(&Output::SweepFinished));
        let again = s.handle(2, Input::Cancel { task: TaskId(1), reason: "user".into() });
        assert!(transitions(&again).is_empty(), "cancelling a cancelled task changes nothing");
    }

    /// Tasks whose input their running dependency already produced (an epoch checkpoint) start
    /// while it runs; its completion does not count them twice, and its failure cancels only
    /// the dependents still waiting for it.
    #[test]
    fn dependencies_satisfied_early_start_their_tasks_and_survive_a_failure() {
        let tasks = vec![task(1, &[], 0, &[]), task(2, &[1], 1, &[]), task(3, &[1], 1, &[]), task(4, &[1], 1, &[])];
        let mut s = Scheduler::new(config(), tasks, 1);
        join(&mut s, 0, 1);
        join(&mut s, 0, 2);
        let (train, a) = lease_one(&mut s, 0, 1).unwrap();
        assert_eq!(train, TaskId(1));
        assert_eq!(lease_one(&mut s, 1, 2), None, "the dependents wait");
        // A satisfaction for a task that does not depend on it, or an unknown one, changes nothing.
        let out = s.handle(2, Input::DepsSatisfied { dep: TaskId(2), tasks: vec![TaskId(3), TaskId(99)] });
        assert!(transitions(&out).is_empty(), "{out:?}");
        let out = s.handle(2, Input::DepsSatisfied { dep: TaskId(1), tasks: vec![TaskId(2), TaskId(3)] });
        // Worker 2 was told NoWork and is idle: it gets the first of them at once.
        let (early, b) = leases(&out)[0];
        assert_eq!(
            transitions(&out),
            vec![
                (TaskId(2), StateName::Blocked, StateName::Ready, None),
                (TaskId(3), StateName::Blocked, StateName::Ready, None),
                (TaskId(2), StateName::Ready, StateName::Running, Some(b)),
            ]
        );
        assert_eq!(early, TaskId(2), "started while its dependency runs");
        s.handle(4, Input::Completed { attempt: b, by: WorkerId(2), outputs: vec![] });
        // Twice is once.
        assert!(transitions(&s.handle(5, Input::DepsSatisfied { dep: TaskId(1), tasks: vec![TaskId(3)] })).is_empty());
        let out = s.handle(6, Input::Failed { attempt: a, by: WorkerId(1), error: "nan".into(), retryable: false });
        let ends: Vec<_> = transitions(&out).into_iter().map(|(t, _, to, _)| (t, to)).collect();
        assert!(ends.contains(&(TaskId(1), StateName::Failed)) && ends.contains(&(TaskId(4), StateName::Cancelled)));
        assert!(!ends.iter().any(|(t, _)| *t == TaskId(3)), "task 3 had its input: {ends:?}");
        assert_eq!(s.state(TaskId(3)), Some(StateName::Ready));
        assert_eq!(s.state(TaskId(2)), Some(StateName::Done));

        // A satisfied task is not made ready again by the completion.
        let tasks = vec![task(1, &[], 0, &[]), task(2, &[1], 1, &[])];
        let mut s = Scheduler::new(config(), tasks, 1);
        join(&mut s, 0, 1);
        let (_, a) = lease_one(&mut s, 0, 1).unwrap();
        s.handle(1, Input::DepsSatisfied { dep: TaskId(1), tasks: vec![TaskId(2)] });
        let out = s.handle(2, Input::Completed { attempt: a, by: WorkerId(1), outputs: vec![] });
        assert_eq!(transitions(&out), vec![(TaskId(1), StateName::Running, StateName::Done, Some(a))]);
    }

    #[test]
    fn cancelling_the_sweep_stops_every_live_attempt_and_keeps_finished_work() {
        let tasks = (1..=5).map(|i| task(i, &[], 0, &[])).collect();
        let mut s = Scheduler::new(config(), tasks, 1);
        join(&mut s, 0, 1);
        join(&mut s, 0, 2);
        let (done, a_done) = lease_one(&mut s, 0, 1).unwrap();
        s.handle(0, Input::Completed { attempt: a_done, by: owner(&s, a_done), outputs: vec![] });
        let (_, a1) = lease_one(&mut s, 0, 1).unwrap();
        let (_, a2) = lease_one(&mut s, 0, 2).unwrap();
        let (backing_off, a3) = lease_one(&mut s, 0, 2).unwrap();
        s.handle(0, Input::Failed { attempt: a3, by: owner(&s, a3), error: "oom".into(), retryable: true });
        assert_eq!(s.state(backing_off), Some(StateName::Backoff));
        let out = s.handle(1, Input::CancelSweep { reason: "user".into() });
        let cancels: Vec<_> = out.iter().filter(|o| matches!(o, Output::Cancel { .. })).collect();
        assert_eq!(cancels.len(), 2);
        assert!(out.contains(&Output::Cancel { worker: WorkerId(1), attempt: a1, reason: "user".into() }));
        assert!(out.contains(&Output::Cancel { worker: WorkerId(2), attempt: a2, reason: "user".into() }));
        assert_eq!(s.state(done), Some(StateName::Done));
        assert_eq!(s.counts().get(&StateName::Cancelled), Some(&4));
        assert_eq!(s.next_deadline(), Some(1_000), "the backoff timer is gone; only liveness remains");
        assert!(out.contains(&Output::SweepFinished));
    }

    #[test]
    fn one_task_never_has_two_live_attempts() {
        let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[])], 1);
        join(&mut s, 0, 1);
        join(&mut s, 0, 2);
        let out = s.handle(0, Input::LeaseRequest { worker: WorkerId(1), slots: 4 });
        assert_eq!(leases(&out).len(), 1, "four slots, one task: one lease");
        let out = s.handle(0, Input::LeaseRequest { worker: WorkerId(2), slots: 4 });
        assert_eq!(out, vec![Output::NoWork { worker: WorkerId(2), retry_after: 50 }]);
        let mut s = Scheduler::new(config(), (1..=3).map(|i| task(i, &[], 0, &[])).collect(), 1);
        join(&mut s, 0, 1);
        let mut got: Vec<TaskId> =
            leases(&s.handle(0, Input::LeaseRequest { worker: WorkerId(1), slots: 3 })).iter().map(|l| l.0).collect();
        got.sort();
        assert_eq!(got, vec![TaskId(1), TaskId(2), TaskId(3)]);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let c = config();
        let delays: Vec<Millis> = (1..=6).map(|k| c.backoff_delay(k)).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1_000, 1_000]);
        let huge = SchedulerConfig { backoff_base: Millis::MAX / 2, backoff_max: Millis::MAX, ..config() };
        assert_eq!(huge.backoff_delay(u32::MAX), Millis::MAX, "saturates instead of overflowing");
    }

    #[test]
    fn heartbeats_keep_a_busy_worker_alive_and_silence_expires_it_exactly_at_the_deadline() {
        let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[])], 1);
        join(&mut s, 0, 1);
        let (t, _) = lease_one(&mut s, 0, 1).unwrap();
        let mut now = 0;
        for _ in 0..20 {
            now += 900;
            s.handle(now, Input::Heartbeat { worker: WorkerId(1) });
            assert!(!s.handle(now, Input::Tick).contains(&Output::WorkerExpired { worker: WorkerId(1) }));
        }
        assert_eq!(s.state(t), Some(StateName::Running), "a long task survives on heartbeats alone");
        assert_eq!(s.next_deadline(), Some(now + 1_000));
        assert!(s.handle(now + 999, Input::Tick).is_empty());
        let out = s.handle(now + 1_000, Input::Tick);
        assert_eq!(out[0], Output::WorkerExpired { worker: WorkerId(1) });
        assert_eq!(s.state(t), Some(StateName::Ready));
        assert_eq!(s.workers().count(), 0);
    }

    #[test]
    fn a_report_that_beats_the_expiry_timer_is_accepted() {
        let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[])], 1);
        join(&mut s, 0, 1);
        let (t, a) = lease_one(&mut s, 0, 1).unwrap();
        // The deadline (1000) passed, but no Tick ran: the message itself proves the worker alive.
        let out = s.handle(1_500, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
        assert!(out.contains(&Output::Report { attempt: a, accepted: true }));
        assert!(!out.contains(&Output::WorkerExpired { worker: WorkerId(1) }));
        assert_eq!(s.state(t), Some(StateName::Done));
    }

    #[test]
    fn an_expired_or_unknown_worker_gets_no_lease_until_it_joins_again() {
        let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[])], 1);
        assert!(s.handle(0, Input::LeaseRequest { worker: WorkerId(7), slots: 1 }).is_empty());
        join(&mut s, 0, 7);
        s.handle(1_000, Input::Tick);
        assert!(s.handle(1_001, Input::LeaseRequest { worker: WorkerId(7), slots: 1 }).is_empty());
        assert!(s.handle(1_001, Input::Heartbeat { worker: WorkerId(7) }).is_empty(), "no resurrection");
        assert_eq!(s.state(TaskId(1)), Some(StateName::Ready));
        join(&mut s, 1_002, 7);
        assert_eq!(lease_one(&mut s, 1_002, 7).map(|l| l.0), Some(TaskId(1)));
    }

    #[test]
    fn a_worker_joining_again_orphans_its_old_attempts() {
        let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[])], 1);
        join(&mut s, 0, 1);
        let (t, a) = lease_one(&mut s, 0, 1).unwrap();
        s.handle(10, Input::WorkerJoined { worker: WorkerId(1), cached: vec![] });
        assert_eq!((s.state(t), s.failures(t)), (Some(StateName::Ready), 1), "a restarted worker lost it");
        assert!(s.running_on(WorkerId(1)).is_empty());
        let late = s.handle(11, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
        assert_eq!(late, vec![Output::Report { attempt: a, accepted: false }]);
        let (again, a2) = lease_one(&mut s, 12, 1).unwrap();
        assert_eq!(again, t);
        assert!(a2 > a);
    }

    #[test]
    fn cached_inputs_given_at_join_count_for_locality() {
        let stored = vec![
            (task(1, &[], 0, &[]), StoredState::Done, 0),
            (task(2, &[], 0, &[]), StoredState::Done, 0),
            (task(10, &[1], 1, &["task:1/checkpoint"]), StoredState::Pending, 0),
            (task(20, &[2], 1, &["task:2/checkpoint"]), StoredState::Pending, 0),
        ];
        let mut s = Scheduler::restore(config(), stored, 1);
        s.handle(0, Input::WorkerJoined { worker: WorkerId(1), cached: vec!["task:2/checkpoint".into()] });
        assert_eq!(lease_one(&mut s, 0, 1).map(|l| l.0), Some(TaskId(20)), "not the FIFO head, task 10");
    }

    /// A worker that downloaded a lease's input holds it: the next task on that input prefers it
    /// over the queue's head.
    #[test]
    fn inputs_a_worker_downloaded_for_a_lease_count_for_locality() {
        let stored = vec![
            (task(1, &[], 0, &[]), StoredState::Done, 0),
            (task(2, &[], 0, &[]), StoredState::Done, 0),
            (task(10, &[1], 1, &["task:1/checkpoint"]), StoredState::Pending, 0),
            (task(20, &[2], 1, &["task:2/checkpoint"]), StoredState::Pending, 0),
            (task(21, &[2], 1, &["task:2/checkpoint"]), StoredState::Pending, 0),
        ];
        let mut s = Scheduler::restore(config(), stored, 1);
        join(&mut s, 0, 1);
        join(&mut s, 0, 2);
        assert_eq!(lease_one(&mut s, 0, 1).map(|l| l.0), Some(TaskId(10)), "the FIFO head");
        let (t, a) = lease_one(&mut s, 0, 2).unwrap();
        assert_eq!(t, TaskId(20));
        s.handle(1, Input::Completed { attempt: a, by: WorkerId(2), outputs: vec![] });
        // Worker 1 is busy; worker 2 fetched task 2's checkpoint for task 20: task 21 is its.
        assert_eq!(lease_one(&mut s, 1, 2).map(|l| l.0), Some(TaskId(21)));
    }

    /// An idle worker told `NoWork` while work is still to come is given the next task that turns
    /// ready in the same step (no wait for its retry); a busy or departed one is not.
    #[test]
    fn an_idle_worker_told_no_work_gets_the_next_ready_task_at_once() {
        let tasks = vec![task(1, &[], 0, &[]), task(2, &[1], 1, &[]), task(3, &[1], 1, &[]), task(4, &[1], 1, &[])];
        let mut s = Scheduler::new(config(), tasks, 1);
        for w in 1..=4 {
            join(&mut s, 0, w);
        }
        let (_, a) = lease_one(&mut s, 0, 1).unwrap();
        for w in 2..=4 {
            assert_eq!(lease_one(&mut s, 0, w), None, "nothing ready yet");
        }
        s.handle(0, Input::WorkerLeft { worker: WorkerId(4) });
        let out = s.handle(1, Input::Completed { attempt: a, by: WorkerId(1), outputs: vec![] });
        let pushed: Vec<(WorkerId, TaskId)> = out
            .iter()
            .filter_map(|o| match o {
                Output::Lease { worker, task, .. } => Some((*worker, *task)),
                _ => None,
            })
            .collect();
        assert_eq!(
            pushed,
            vec![(WorkerId(2), TaskId(2)), (WorkerId(3), TaskId(3))],
            "worker 4 left; worker 1 did not ask"
        );
        assert_eq!(s.state(TaskId(4)), Some(StateName::Ready), "left for the next request");
        // Parked once, leased once: another completion pushes nothing more to them.
        assert!(leases(&s.handle(2, Input::Heartbeat { worker: WorkerId(2) })).is_empty());
    }

    #[test]
    fn restore_reports_cascaded_cancellations_once() {
        let stored = vec![
            (task(1, &[], 0, &[]), StoredState::Failed, 3),
            (task(2, &[1], 0, &[]), StoredState::Pending, 0),
            (task(3, &[2], 0, &[]), StoredState::Pending, 0),
        ];
        let mut s = Scheduler::restore(config(), stored, 1);
        assert!(s.is_finished());
        let mut out = Vec::new();
        s.handle_into(0, Input::Tick, &mut out);
        let mut changed = transitions(&out);
        changed.sort();
        assert_eq!(
            changed,
            vec![
                (TaskId(2), StateName::Blocked, StateName::Cancelled, None),
                (TaskId(3), StateName::Blocked, StateName::Cancelled, None),
            ]
        );
        assert_eq!(out.last(), Some(&Output::SweepFinished));
        assert!(s.handle(1, Input::Tick).is_empty(), "emitted once");
    }

    // ---- throughput and backup attempts

    const SLOW: u64 = 1;
    const FAST: u64 = 2;

    /// Long leases (nobody expires here) and the default speculation policy.
    fn patient() -> SchedulerConfig {
        SchedulerConfig { lease_timeout: 1_000_000, ..config() }
    }

    /// A slow worker (0.05 units/s) and a fast one (1 unit/s), measured on three one-unit tasks;
    /// then the slow one leases task 4 at 20 s, the last task: a straggler. Returns its attempt.
    fn straggler(s: &mut Scheduler) -> AttemptId {
        join(s, 0, SLOW);
        join(s, 0, FAST);
        let (_, a) = lease_one(s, 0, SLOW).unwrap();
        let (_, b) = lease_one(s, 0, FAST).unwrap();
        s.handle(1_000, Input::Completed { attempt: b, by: owner(s, b), outputs: vec![] });
        let (_, c) = lease_one(s, 1_000, FAST).unwrap();
        s.handle(2_000, Input::Completed { attempt: c, by: owner(s, c), outputs: vec![] });
        s.handle(20_000, Input::Completed { attempt: a, by: owner(s, a), outputs: vec![] });
        let (t, slow) = lease_one(s, 20_000, SLOW).unwrap();
        assert_eq!(t, TaskId(4));
        slow
    }

    fn four_tasks() -> Vec<NewTask> {
        (1..=4).map(|i| task(i, &[], 0, &[])).collect()
    }

    #[test]
    fn throughput_is_an_ewma_per_worker_and_kind_with_the_fleet_as_prior() {
        let mut s = Scheduler::new(patient(), four_tasks(), 1);
        straggler(&mut s);
        assert_eq!(s.throughput(WorkerId(SLOW), &default_class()), Some(0.05));
        // Samples 1.0 then 1.0: the average stays; the fleet saw 1.0, 1.0, 0.05 (alpha 0.3).
        assert_eq!(s.throughput(WorkerId(FAST), &default_class()), Some(1.0));
        let fleet = s.fleet_throughput(&default_class()).unwrap();
        assert!((fleet - (0.3 * 0.05 + 0.7 * 1.0)).abs() < 1e-12, "{fleet}");
        assert_eq!(s.throughput(WorkerId(FAST), &CostClass::new("other")), None, "kinds are measured apart");
        assert_eq!(s.throughputs(WorkerId(SLOW)), vec![(default_class(), 0.05)]);
        let mut s = Scheduler::new(patient(), vec![task(1, &[], 0, &[]), task(2, &[], 0, &[])], 1);
        join(&mut s, 0, 1);
        let (_, a) = lease_one(&mut s, 0, 1).unwrap();
        s.handle(2_000, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
        let (_, b) = lease_one(&mut s, 2_000, 1).unwrap();
        s.handle(3_000, Input::Completed { attempt: b, by: owner(&s, b), outputs: vec![] });
        let rate = s.throughput(WorkerId(1), &default_class()).unwrap();
        assert!((rate - (0.3 * 1.0 + 0.7 * 0.5)).abs() < 1e-12, "0.5/s then 1/s: {rate}");
    }

    #[test]
    fn an_idle_fast_worker_backs_up_a_straggler_its_result_wins_and_the_slow_one_is_cancelled() {
        let mut s = Scheduler::new(patient(), four_tasks(), 1);
        let slow = straggler(&mut s);
        let out = s.handle(21_000, Input::LeaseRequest { worker: WorkerId(FAST), slots: 1 });
        let [Output::Backup(b), Output::Lease { worker, task, attempt }] = &out[..] else { panic!("{out:?}") };
        assert_eq!((*worker, *task, *attempt), (WorkerId(FAST), TaskId(4), b.attempt));
        let expected = Backup {
            task: TaskId(4),
            attempt: b.attempt,
            worker: WorkerId(FAST),
            straggler: slow,
            straggler_worker: WorkerId(SLOW),
            class: default_class(),
            rate: 1.0,
            straggler_rate: 0.05,
            expected_ms: 1_000,
            remaining_ms: 19_000,
        };
        assert_eq!(*b, expected);
        let backup = b.attempt;
        assert_eq!(s.backups(TaskId(4)), [backup]);
        assert_eq!(s.state(TaskId(4)), Some(StateName::Running), "a backup is no transition");
        let out = s.handle(22_000, Input::Completed { attempt: backup, by: owner(&s, backup), outputs: vec![] });
        let winner = AttemptEnd::Superseded { winner: backup, winner_worker: WorkerId(FAST) };
        assert_eq!(
            out,
            vec![
                Output::Cancel {
                    worker: WorkerId(SLOW),
                    attempt: slow,
                    reason: format!("attempt {} finished first", backup.0)
                },
                Output::AttemptEnded { task: TaskId(4), attempt: slow, worker: WorkerId(SLOW), outcome: winner },
                Output::Transition {
                    task: TaskId(4),
                    from: StateName::Running,
                    to: StateName::Done,
                    attempt: Some(backup),
                    worker: Some(WorkerId(FAST)),
                },
                Output::Report { attempt: backup, accepted: true },
                Output::SweepFinished,
            ],
            "one result, the loser told to stop and closed"
        );
        assert!(s.running_on(WorkerId(SLOW)).is_empty() && s.backups(TaskId(4)).is_empty());
        let late = s.handle(23_000, Input::Completed { attempt: slow, by: owner(&s, slow), outputs: vec![] });
        assert_eq!(late, vec![Output::Report { attempt: slow, accepted: false }], "the loser's result changes nothing");
        assert_eq!(s.failures(TaskId(4)), 0);
        // The loser ran 2 s without finishing one unit: its worker is at most 0.5 units/s,
        // which is no news for a 0.05 units/s worker.
        assert_eq!(s.throughput(WorkerId(SLOW), &default_class()), Some(0.05));
    }

    #[test]
    fn no_backup_without_a_clear_margin_on_the_stragglers_worker_or_beyond_the_limit() {
        // Too early: 20 s expected, 10 s gone, 1 s for the fast worker, but the gain must reach
        // 10 s *and* exceed 1.5x: at 19.5 s the remaining 0.5 s is no straggler.
        let mut s = Scheduler::new(patient(), four_tasks(), 1);
        straggler(&mut s);
        let out = s.handle(39_500, Input::LeaseRequest { worker: WorkerId(FAST), slots: 1 });
        assert_eq!(out, vec![Output::NoWork { worker: WorkerId(FAST), retry_after: 50 }], "nearly done as predicted");
        // The straggler's own worker never gets a backup of it.
        let out = s.handle(21_000, Input::LeaseRequest { worker: WorkerId(SLOW), slots: 1 });
        assert_eq!(out, vec![Output::NoWork { worker: WorkerId(SLOW), retry_after: 50 }]);
        // One backup per task: a third worker (fleet prior 0.715/s) gets nothing more.
        let out = s.handle(21_000, Input::LeaseRequest { worker: WorkerId(FAST), slots: 1 });
        assert!(matches!(out[0], Output::Backup(_)));
        join(&mut s, 21_000, 3);
        let out = s.handle(21_000, Input::LeaseRequest { worker: WorkerId(3), slots: 1 });
        assert_eq!(out, vec![Output::NoWork { worker: WorkerId(3), retry_after: 50 }]);
        // Speculation off: no backup at all.
        let off = SchedulerConfig {
            speculation: SpeculationConfig { max_backups: 0, ..SpeculationConfig::default() },
            ..patient()
        };
        let mut s = Scheduler::new(off, four_tasks(), 1);
        straggler(&mut s);
        let out = s.handle(21_000, Input::LeaseRequest { worker: WorkerId(FAST), slots: 1 });
        assert_eq!(out, vec![Output::NoWork { worker: WorkerId(FAST), retry_after: 50 }]);
        // Equal workers: nobody is a straggler.
        let mut s = Scheduler::new(patient(), vec![task(1, &[], 0, &[]), task(2, &[], 0, &[])], 1);
        join(&mut s, 0, 1);
        join(&mut s, 0, 2);
        let (_, a) = lease_one(&mut s, 0, 1).unwrap();
        s.handle(10_000, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
        lease_one(&mut s, 10_000, 1).unwrap();
        let out = s.handle(12_000, Input::LeaseRequest { worker: WorkerId(2), slots: 1 });
        assert_eq!(
            out,
            vec![Output::NoWork { worker: WorkerId(2), retry_after: 50 }],
            "a worker without history uses the fleet's rate"
        );
    }

    #[test]
    fn an_overdue_attempt_is_assumed_to_need_as_long_again_as_it_has_overrun() {
        // Both workers measured at 1 unit/s; the first lease of task 3 is overdue by 20 s.
        let mut s = Scheduler::new(patient(), (1..=3).map(|i| task(i, &[], 0, &[])).collect(), 1);
        join(&mut s, 0, 1);
        join(&mut s, 0, 2);
        let (_, a) = lease_one(&mut s, 0, 1).unwrap();
        let (_, b) = lease_one(&mut s, 0, 2).unwrap();
        s.handle(1_000, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
        s.handle(1_000, Input::Completed { attempt: b, by: owner(&s, b), outputs: vec![] });
        let (_, c) = lease_one(&mut s, 1_000, 1).unwrap();
        let out = s.handle(21_000, Input::LeaseRequest { worker: WorkerId(2), slots: 1 });
        let Some(Output::Backup(backup)) = out.first() else { panic!("{out:?}") };
        assert_eq!((backup.straggler, backup.remaining_ms, backup.expected_ms), (c, 19_000, 1_000));
    }

    #[test]
    fn losing_or_failing_one_of_two_live_attempts_keeps_the_task_running_and_counts_nothing() {
        // The slow first attempt's worker leaves: the backup takes over.
        let mut s = Scheduler::new(patient(), four_tasks(), 1);
        let slow = straggler(&mut s);
        let backup = leases(&s.handle(21_000, Input::LeaseRequest { worker: WorkerId(FAST), slots: 1 }))[0].1;
        let out = s.handle(21_500, Input::WorkerLeft { worker: WorkerId(SLOW) });
        assert_eq!(
            out,
            vec![Output::AttemptEnded {
                task: TaskId(4),
                attempt: slow,
                worker: WorkerId(SLOW),
                outcome: AttemptEnd::Lost
            }]
        );
        assert_eq!(s.state(TaskId(4)), Some(StateName::Running));
        assert_eq!(s.attempt(backup), Some((TaskId(4), WorkerId(FAST))));
        assert!(s.backups(TaskId(4)).is_empty(), "the backup is now the task's attempt");
        // It fails retryably: alone now, so it counts and backs off as any attempt would.
        s.handle(
            21_600,
            Input::Failed { attempt: backup, by: owner(&s, backup), error: "oom".into(), retryable: true },
        );
        assert_eq!((s.state(TaskId(4)), s.failures(TaskId(4))), (Some(StateName::Backoff), 1));

        // A retryable failure of the backup while the first attempt runs ends only the backup.
        let mut s = Scheduler::new(patient(), four_tasks(), 1);
        let slow = straggler(&mut s);
        let backup = leases(&s.handle(21_000, Input::LeaseRequest { worker: WorkerId(FAST), slots: 1 }))[0].1;
        let out = s.handle(
            21_500,
            Input::Failed { attempt: backup, by: owner(&s, backup), error: "oom".into(), retryable: true },
        );
        assert_eq!(
            out,
            vec![
                Output::Report { attempt: backup, accepted: true },
                Output::AttemptEnded {
                    task: TaskId(4),
                    attempt: backup,
                    worker: WorkerId(FAST),
                    outcome: AttemptEnd::Failed
                },
            ]
        );
        assert_eq!((s.state(TaskId(4)), s.failures(TaskId(4))), (Some(StateName::Running), 0));
        assert_eq!(
            s.handle(21_600, Input::LeaseRequest { worker: WorkerId(FAST), slots: 1 }).len(),
            1,
            "NoWork: one backup per run"
        );
        s.handle(40_000, Input::Completed { attempt: slow, by: owner(&s, slow), outputs: vec![] });
        assert_eq!(s.state(TaskId(4)), Some(StateName::Done));

        // A non-retryable failure of either attempt fails the task and stops the other.
        let mut s = Scheduler::new(patient(), four_tasks(), 1);
        let slow = straggler(&mut s);
        let backup = leases(&s.handle(21_000, Input::LeaseRequest { worker: WorkerId(FAST), slots: 1 }))[0].1;
        let out = s.handle(
            21_500,
            Input::Failed { attempt: backup, by: owner(&s, backup), error: "NaN".into(), retryable: false },
        );
        assert!(out.contains(&Output::Cancel {
            worker: WorkerId(SLOW),
            attempt: slow,
            reason: "the task failed".into()
        }));
        assert_eq!((s.state(TaskId(4)), s.failures(TaskId(4))), (Some(StateName::Failed), 1));
        assert!(s.attempt(slow).is_none() && s.running_on(WorkerId(SLOW)).is_empty());
    }

    #[test]
    fn cancelling_a_raced_task_stops_both_attempts_and_a_restart_forgets_the_race() {
        let mut s = Scheduler::new(patient(), four_tasks(), 1);
        let slow = straggler(&mut s);
        let backup = leases(&s.handle(21_000, Input::LeaseRequest { worker: WorkerId(FAST), slots: 1 }))[0].1;
        let out = s.handle(21_500, Input::Cancel { task: TaskId(4), reason: "user".into() });
        assert!(out.contains(&Output::Cancel { worker: WorkerId(SLOW), attempt: slow, reason: "user".into() }));
        assert!(out.contains(&Output::Cancel { worker: WorkerId(FAST), attempt: backup, reason: "user".into() }));
        assert_eq!(transitions(&out), vec![(TaskId(4), StateName::Running, StateName::Cancelled, Some(slow))]);
        assert!(s.workers().all(|w| s.running_on(w).is_empty()));
        // A coordinator restarted mid-race re-leases the task once, above both attempt ids.
        let stored = four_tasks()
            .into_iter()
            .map(|t| {
                let state = if t.id == TaskId(4) { StoredState::Pending } else { StoredState::Done };
                (t, state, 0)
            })
            .collect();
        let mut s = Scheduler::restore(patient(), stored, backup.0 + 1);
        join(&mut s, 0, FAST);
        assert_eq!(lease_one(&mut s, 0, FAST), Some((TaskId(4), AttemptId(backup.0 + 1))));
        assert!(s.backups(TaskId(4)).is_empty());
    }

    // ---- randomised event sequences against invariants

    #[derive(Clone, Debug)]
    enum Event {
        Join(u64),
        Leave(u64),
        Beat(u64),
        Lease(u64, u32),
        Complete(usize),
        /// Complete one of the attempts live now (`Complete` mostly hits stale ones).
        CompleteLive(usize),
        /// A worker with nothing running asks for one task (as real workers do; `Lease` mostly
        /// comes from workers that already run everything, which get no backups).
        IdleLease(usize),
        Fail(usize, bool),
        Release(usize),
        Cancel(u64),
        CancelSweep,
        Advance(u64),
        /// The coordinator crashes and restarts from what the store holds; workers must rejoin.
        Restart,
        /// A report of some attempt from worker `w`, which need not hold it (a forged report).
        Forge(usize, u64),
        /// Worker `w` lists those of its live attempts whose bit is set in the mask, plus one
        /// leased attempt that may be stale; `seen`: it has received every lease sent so far.
        Reconcile(u64, u8, usize, bool),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            30 => (0..4u64).prop_map(Event::Join),
            10 => (0..4u64).prop_map(Event::Leave),
            20 => (0..4u64).prop_map(Event::Beat),
            40 => ((0..4u64), (1..3u32)).prop_map(|(w, s)| Event::Lease(w, s)),
            40 => (0..64usize).prop_map(Event::Complete),
            20 => ((0..64usize), any::<bool>()).prop_map(|(i, r)| Event::Fail(i, r)),
            10 => (0..64usize).prop_map(Event::Release),
            10 => (0..TASKS).prop_map(Event::Cancel),
            30 => (0..1500u64).prop_map(Event::Advance),
            30 => (0..300u64).prop_map(Event::Advance),
            60 => (0..64usize).prop_map(Event::CompleteLive),
            60 => (0..4usize).prop_map(Event::IdleLease),
            10 => Just(Event::Restart),
            20 => ((0..64usize), (0..4u64)).prop_map(|(i, w)| Event::Forge(i, w)),
            20 => ((0..4u64), any::<u8>(), (0..64usize), any::<bool>()).prop_map(|(w, m, i, seen)| Event::Reconcile(w, m, i, seen)),
            // Rare, or nearly every sequence would end cancelled.
            1 => Just(Event::CancelSweep),
        ]
    }

    const TASKS: u64 = 12;

    /// Three layers: trains 0–3; heatmaps 4–7 on train `i % 4`; 8–11 on train `i % 4` and on
    /// heatmap `i − 4` (a second level, so cascades and readiness go through two hops).
    fn random_sweep() -> Vec<NewTask> {
        (0..TASKS)
            .map(|i| {
                let root = i % 4;
                let key = format!("task:{root}/checkpoint");
                let t = match i {
                    0..4 => task(i, &[], 0, &[]),
                    4..8 => task(i, &[root], 1, &[&key]),
                    _ => task(i, &[root, i - 4], 2, &[&key]),
                };
                // A kind per layer, sizes 1–3 units within it.
                NewTask {
                    cost: Cost { class: CostClass::new(&format!("layer{}", i / 4)), units: (1 + i % 3) as f64 },
                    ..t
                }
            })
            .collect()
    }

    /// What the store would hold: states replayed from transitions, plus failure counts.
    struct ShadowStore {
        states: HashMap<TaskId, StateName>,
        failures: HashMap<TaskId, u32>,
        /// Largest attempt id handed out so far (the store's `max(attempt_id)`).
        max_attempt: u64,
        /// Attempts started and not yet closed since the last restart.
        open: HashSet<AttemptId>,
        /// Backup attempts started (to check that the sequences exercise them).
        backups: usize,
    }

    impl ShadowStore {
        /// Apply one step's outputs, checking them against what the store knew before.
        fn apply(&mut self, s: &Scheduler, out: &[Output], live_before: &HashMap<AttemptId, (TaskId, WorkerId)>) {
            let mut started = HashMap::new();
            for o in out {
                match o {
                    Output::Transition { task, from, to, attempt, worker } => {
                        let known = self.states[task];
                        assert_eq!(*from, known, "transition of {task:?} starts where the store left it");
                        assert!(!known.is_terminal(), "{task:?} left terminal state {known:?}");
                        assert_ne!(from, to, "a transition changes the state");
                        if *to == StateName::Running {
                            started.insert(
                                attempt.expect("a lease names its attempt"),
                                (*task, worker.expect("and worker")),
                            );
                        }
                        if *from == StateName::Running {
                            let a = attempt.expect("leaving Running names the attempt that ends");
                            assert!(live_before.contains_key(&a) || started.contains_key(&a), "{a:?} was live");
                            assert!(self.open.remove(&a), "{a:?} closed once");
                        }
                        self.states.insert(*task, *to);
                        self.failures.insert(*task, s.failures(*task));
                    }
                    Output::Lease { worker, task, attempt } => {
                        assert_eq!(started.get(attempt), Some(&(*task, *worker)), "a lease follows its transition");
                        assert!(attempt.0 > self.max_attempt, "attempt ids only grow, across restarts too");
                        self.max_attempt = attempt.0;
                        self.open.insert(*attempt);
                    }
                    Output::Backup(b) => {
                        assert_eq!(self.states[&b.task], StateName::Running, "a backup races a running task");
                        let racing = live_before.get(&b.straggler).or_else(|| started.get(&b.straggler));
                        assert_eq!(racing, Some(&(b.task, b.straggler_worker)), "the straggler is live");
                        assert_ne!(b.worker, b.straggler_worker, "never on the straggler's worker");
                        started.insert(b.attempt, (b.task, b.worker));
                        self.backups += 1;
                    }
                    Output::AttemptEnded { task, attempt, worker, .. } => {
                        assert_eq!(live_before.get(attempt).or_else(|| started.get(attempt)), Some(&(*task, *worker)));
                        assert!(self.open.remove(attempt), "{attempt:?} closed once");
                    }
                    Output::Cancel { attempt, worker, .. } => {
                        let owner = live_before.get(attempt).or_else(|| started.get(attempt));
                        assert_eq!(owner.map(|o| o.1), Some(*worker), "a cancel names a live attempt and its worker");
                    }
                    Output::CancelStale { attempt, worker } => {
                        let owner = live_before.get(attempt).map(|o| o.1);
                        assert_ne!(owner, Some(*worker), "a stale cancel never names the worker's live attempt");
                    }
                    _ => {}
                }
            }
        }

        fn restore(&self) -> Scheduler {
            let stored = random_sweep()
                .into_iter()
                .map(|t| {
                    let state = match self.states[&t.id] {
                        StateName::Done => StoredState::Done,
                        StateName::Failed => StoredState::Failed,
                        StateName::Cancelled => StoredState::Cancelled,
                        _ => StoredState::Pending,
                    };
                    let failures = self.failures.get(&t.id).copied().unwrap_or(0);
                    (t, state, failures)
                })
                .collect();
            Scheduler::restore(racing_config(), stored, self.max_attempt + 1)
        }
    }

    fn check_invariants(s: &Scheduler, store: &ShadowStore, completed: &HashMap<TaskId, usize>) {
        let counted: usize = s.counts().values().sum();
        assert_eq!(counted, TASKS as usize, "no task lost or duplicated");
        for (name, count) in s.counts() {
            let actual = s.tasks.values().filter(|t| t.state.name() == *name).count();
            assert_eq!(*count, actual, "count of {name:?}");
        }
        assert!(completed.values().all(|&n| n <= 1), "a task completed more than once");
        let sweep = random_sweep();
        for (id, t) in &s.tasks {
            assert_eq!(store.states[id], t.state.name(), "replaying transitions gives the core's state");
            if let State::Running { attempt, .. } = t.state {
                // Every live attempt of the task: on a live worker that lists the task, each on
                // a different worker, at most `max_backups` of them backups.
                let mut on = HashSet::new();
                for a in std::iter::once(attempt).chain(t.backups.iter().copied()) {
                    let live = s.attempts.get(&a).expect("a running task's attempts are live");
                    assert_eq!(live.task, *id);
                    let w = s.workers.get(&live.worker).expect("a running task's worker is alive");
                    assert!(w.running.contains(id));
                    assert!(on.insert(live.worker), "two live attempts of {id:?} on {:?}", live.worker);
                }
                assert!(t.backups.len() as u32 <= t.speculated && t.speculated <= s.config.speculation.max_backups);
            } else {
                assert!(t.backups.is_empty(), "{id:?} keeps backups outside Running");
            }
            assert_eq!(t.queued.is_some(), t.state == State::Ready, "queued iff ready");
            if matches!(t.state, State::Ready | State::Running { .. } | State::Backoff { .. } | State::Done) {
                let deps = &sweep[id.0 as usize].deps;
                assert!(deps.iter().all(|d| s.tasks[d].state == State::Done), "{id:?} ran before its deps");
            }
            if matches!(t.state, State::Failed | State::Cancelled) {
                for d in &t.dependents {
                    assert!(s.tasks[d].state.name().is_terminal(), "{d:?} waits on a dead {id:?}");
                }
            }
            if t.state.name() == StateName::Failed {
                // Failed only by its own attempts: a non-retryable failure or `max_attempts` of them.
                assert!(t.failures >= 1, "{id:?} failed without a failed attempt");
            }
            assert!(t.failures <= s.config.max_attempts, "{id:?} retried past the bound");
        }
        let running = s.counts().get(&StateName::Running).copied().unwrap_or(0);
        let backups: usize = s.tasks.values().map(|t| t.backups.len()).sum();
        assert_eq!(s.attempts.len(), running + backups, "live attempts: one per running task plus backups");
        let leased: usize = s.workers.values().map(|w| w.running.len()).sum();
        assert_eq!(leased, s.attempts.len(), "every live attempt is on exactly one worker");
        for (wid, w) in &s.workers {
            for task in &w.running {
                assert!(matches!(s.tasks[task].state, State::Running { .. }));
                assert_eq!(s.attempts.values().filter(|l| l.task == *task && l.worker == *wid).count(), 1);
            }
        }
        let live: HashSet<AttemptId> = s.attempts.keys().copied().collect();
        assert_eq!(store.open, live, "the store's open attempts are the live ones");
        assert_eq!(s.ready.len(), s.tasks.values().filter(|t| t.state == State::Ready).count());
        let backing_off = s.counts().get(&StateName::Backoff).copied().unwrap_or(0);
        assert_eq!(s.backoffs.len(), backing_off, "a timer per backoff");
        assert_eq!(s.worker_deadlines.len(), s.workers.len(), "a deadline per worker");
    }

    /// Speculation that fires often at the proptest's time scale, with two backups per task.
    fn racing_config() -> SchedulerConfig {
        SchedulerConfig {
            // Workers outlive a few `Advance`s, so stragglers have time to straggle.
            lease_timeout: 4_000,
            speculation: SpeculationConfig { max_backups: 2, factor: 1.5, min_gain: 20, alpha: 0.5 },
            exclude_after: 2,
            ..config()
        }
    }

    fn live_attempts(s: &Scheduler) -> HashMap<AttemptId, (TaskId, WorkerId)> {
        s.attempts.keys().map(|&a| (a, s.attempt(a).expect("attempts index holds live attempts"))).collect()
    }

    /// Run by hand rather than through `proptest!` so the test can also check, across all cases,
    /// that the sequences did exercise backup attempts.
    #[test]
    fn random_event_sequences_keep_the_invariants() {
        let backups = std::cell::Cell::new(0usize);
        let mut runner =
            proptest::test_runner::TestRunner::new(ProptestConfig { cases: 400, ..ProptestConfig::default() });
        let result = runner.run(&prop::collection::vec(event(), 1..150), |events| {
            let mut s = Scheduler::new(racing_config(), random_sweep(), 1);
            let mut store = ShadowStore {
                states: random_sweep().iter().map(|t| (t.id, StateName::Blocked)).collect(),
                failures: HashMap::new(),
                max_attempt: 0,
                open: HashSet::new(),
                backups: 0,
            };
            let mut now = 0;
            // Every attempt ever leased, so reports also come from stale ones.
            let mut leased: Vec<AttemptId> = Vec::new();
            let mut completed: HashMap<TaskId, usize> = HashMap::new();
            let mut out = Vec::new();
            // The constructor's Blocked → Ready changes are not transitions (the store inserts
            // tasks as pending); mirror them like the store's reading of "pending".
            for (id, t) in &s.tasks {
                store.states.insert(*id, t.state.name());
            }
            for e in events {
                let live_before = live_attempts(&s);
                out.clear();
                let pick = |i: usize| (!leased.is_empty()).then(|| leased[i % leased.len()]);
                match e {
                    Event::Join(w) => {
                        s.handle_into(now, Input::WorkerJoined { worker: WorkerId(w), cached: vec![] }, &mut out)
                    }
                    Event::Leave(w) => s.handle_into(now, Input::WorkerLeft { worker: WorkerId(w) }, &mut out),
                    Event::Beat(w) => s.handle_into(now, Input::Heartbeat { worker: WorkerId(w) }, &mut out),
                    Event::Lease(w, n) => {
                        s.handle_into(now, Input::LeaseRequest { worker: WorkerId(w), slots: n }, &mut out)
                    }
                    Event::IdleLease(i) => {
                        let mut idle: Vec<WorkerId> =
                            s.workers.iter().filter(|(_, w)| w.running.is_empty()).map(|(id, _)| *id).collect();
                        idle.sort_unstable();
                        if let Some(&w) = idle.get(i % idle.len().max(1)) {
                            s.handle_into(now, Input::LeaseRequest { worker: w, slots: 1 }, &mut out);
                        }
                    }
                    Event::Complete(i) | Event::CompleteLive(i) => {
                        if let Some(a) = match e {
                            Event::CompleteLive(_) => {
                                let mut live: Vec<AttemptId> = s.attempts.keys().copied().collect();
                                live.sort_unstable();
                                (!live.is_empty()).then(|| live[i % live.len()])
                            }
                            _ => pick(i),
                        } {
                            let task = s.attempt(a).map(|(t, _)| t);
                            let outputs = task.map(|t| vec![format!("task:{}/checkpoint", t.0)]).unwrap_or_default();
                            s.handle_into(now, Input::Completed { attempt: a, by: owner(&s, a), outputs }, &mut out);
                            let accepted = out.contains(&Output::Report { attempt: a, accepted: true });
                            prop_assert_eq!(accepted, task.is_some(), "accepted exactly when the attempt was live");
                            if accepted {
                                *completed.entry(task.unwrap()).or_default() += 1;
                            }
                        }
                    }
                    Event::Fail(i, r) => {
                        if let Some(a) = pick(i) {
                            s.handle_into(
                                now,
                                Input::Failed { attempt: a, by: owner(&s, a), error: "e".into(), retryable: r },
                                &mut out,
                            );
                        }
                    }
                    Event::Release(i) => {
                        if let Some(a) = pick(i) {
                            s.handle_into(now, Input::Released { attempt: a, by: owner(&s, a) }, &mut out);
                        }
                    }
                    Event::Cancel(t) => {
                        s.handle_into(now, Input::Cancel { task: TaskId(t), reason: "r".into() }, &mut out)
                    }
                    Event::Forge(i, w) => {
                        if let Some(a) = pick(i) {
                            let holds = s.attempt(a).is_some_and(|(_, owner)| owner == WorkerId(w));
                            let task = s.attempt(a).map(|(t, _)| t);
                            s.handle_into(
                                now,
                                Input::Completed { attempt: a, by: WorkerId(w), outputs: vec![] },
                                &mut out,
                            );
                            let accepted = out.contains(&Output::Report { attempt: a, accepted: true });
                            prop_assert_eq!(accepted, holds, "a report is accepted only from the attempt's worker");
                            if accepted {
                                *completed.entry(task.unwrap()).or_default() += 1;
                            }
                        }
                    }
                    Event::Reconcile(w, mask, i, seen) => {
                        let mut mine: Vec<AttemptId> =
                            live_before.iter().filter(|(_, (_, o))| *o == WorkerId(w)).map(|(a, _)| *a).collect();
                        mine.sort_unstable();
                        let mut running: Vec<AttemptId> = mine
                            .iter()
                            .enumerate()
                            .filter(|(k, _)| mask >> (k % 8) & 1 == 1)
                            .map(|(_, a)| *a)
                            .collect();
                        running.extend(pick(i));
                        let seen_up_to = if seen { AttemptId(u64::MAX) } else { AttemptId(0) };
                        let input = Input::Reconcile { worker: WorkerId(w), running: running.clone(), seen_up_to };
                        s.handle_into(now, input, &mut out);
                        for a in &running {
                            let stale = live_before.get(a).is_none_or(|(_, o)| *o != WorkerId(w));
                            let told = out.contains(&Output::CancelStale { worker: WorkerId(w), attempt: *a });
                            let known = s.workers.contains_key(&WorkerId(w));
                            prop_assert_eq!(told, stale && known, "exactly the stale attempts it lists are cancelled");
                        }
                        if seen && s.workers.contains_key(&WorkerId(w)) {
                            for a in mine.iter().filter(|a| !running.contains(a)) {
                                prop_assert!(
                                    s.attempt(*a).is_none(),
                                    "an attempt its worker has seen and not listed is re-queued"
                                );
                            }
                        }
                        for a in &running {
                            if live_before.get(a).is_some_and(|(_, o)| *o == WorkerId(w)) {
                                prop_assert!(s.attempt(*a).is_some(), "a listed live attempt stays");
                            }
                        }
                    }
                    Event::CancelSweep => s.handle_into(now, Input::CancelSweep { reason: "r".into() }, &mut out),
                    Event::Advance(dt) => {
                        now += dt;
                        s.handle_into(now, Input::Tick, &mut out);
                    }
                    Event::Restart => {
                        s = store.restore();
                        // Attempts live at the crash stay open in the store; none of them is live now.
                        store.open.clear();
                        // Restoring turns running/backoff tasks back into pending ones: the
                        // store's reading of anything unfinished.
                        for (id, t) in &s.tasks {
                            let stored = store.states[id];
                            if !stored.is_terminal() {
                                store.states.insert(
                                    *id,
                                    if t.queued.is_some() { StateName::Ready } else { StateName::Blocked },
                                );
                            }
                        }
                        s.handle_into(now, Input::Tick, &mut out);
                    }
                }
                store.apply(&s, &out, &live_before);
                for o in &out {
                    if let Output::Lease { attempt, .. } = o {
                        leased.push(*attempt);
                    }
                }
                check_invariants(&s, &store, &completed);
            }
            // Liveness: one worker that keeps working finishes the sweep.
            s.handle(now, Input::WorkerJoined { worker: WorkerId(99), cached: vec![] });
            for _ in 0..200 {
                if s.is_finished() {
                    break;
                }
                now += 1_000;
                // Leases come in reply to any input (a parked idle worker is given one at once).
                let mut out = s.handle(now, Input::Heartbeat { worker: WorkerId(99) });
                out.extend(s.handle(now, Input::LeaseRequest { worker: WorkerId(99), slots: 4 }));
                let mut mine: Vec<AttemptId> = Vec::new();
                loop {
                    mine.extend(leases(&out).into_iter().map(|(_, a)| a).filter(|a| owner(&s, *a) == WorkerId(99)));
                    let Some(a) = mine.pop() else { break };
                    out = s.handle(now, Input::Completed { attempt: a, by: WorkerId(99), outputs: vec![] });
                }
            }
            prop_assert!(s.is_finished(), "the sweep finishes: {:?}", s.counts());
            backups.set(backups.get() + store.backups);
            Ok(())
        });
        if let Err(e) = result {
            panic!("{e}");
        }
        assert!(backups.get() >= 20, "only {} backup attempts in all sequences", backups.get());
    }
}
