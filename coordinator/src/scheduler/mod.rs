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
//! - The plan can grow: [`Input::AddTasks`] adds tasks while the sweep runs (ids above every
//!   existing one, dependencies on known tasks; a batch that breaks a rule is refused whole with
//!   [`Output::AddRefused`]). An added task enters Blocked and follows its dependencies as at
//!   restore: Ready if all are done, Cancelled behind a failed or cancelled one. A finished sweep
//!   given a task that is not terminal is unfinished again, and `SweepFinished` comes again when
//!   it ends; idle workers stay parked after the sweep finished, so an added task reaches them at
//!   once.
//! - Costs: lease, report and expiry are O(log n); nothing scans all tasks (only `restore` and
//!   `CancelSweep`, once per sweep); adding a task costs O(deps · log n).

mod attempts;
mod cancel;
mod config;
mod dependencies;
mod grow;
mod leasing;
mod messages;
mod restore;
mod speculation;
mod state;
mod throughput;
mod workers;

use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use config::{SchedulerConfig, SpeculationConfig};
pub use messages::{AddRefusal, AttemptEnd, Backup, Input, NewTask, Output, StoredState};
pub use state::StateName;
pub use throughput::{Cost, CostClass};

use state::{Live, QueueKey, State, Task};
use throughput::Rate;
use workers::Worker;

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
    /// The highest task id held: ids added at run time go above it.
    highest_task: Option<TaskId>,
    next_attempt: u64,
    next_seq: u64,
    /// `SweepFinished` was emitted and no task added since is unfinished.
    finished_announced: bool,
    /// Transitions decided while restoring (cascaded cancellations the store has not seen yet);
    /// the first `handle` emits them so the store catches up.
    restored: Vec<Output>,
    /// Idle workers told `NoWork`: the next task that turns ready (also one added to a finished
    /// sweep) is leased to them at once instead of after their retry (a worker takes a lease
    /// whenever it is idle).
    parked: BTreeSet<WorkerId>,
}

impl Scheduler {
    /// A fresh sweep: every task pending. `first_attempt` seeds attempt ids (above any stored one).
    pub fn new(config: SchedulerConfig, tasks: Vec<NewTask>, first_attempt: u64) -> Self {
        let stored = tasks.into_iter().map(|t| (t, StoredState::Pending, 0)).collect();
        Self::restore(config, stored, first_attempt)
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

    /// Hand one input to the step that handles it.
    fn apply(&mut self, now: Millis, input: Input, out: &mut Vec<Output>) {
        match input {
            Input::WorkerJoined { worker, cached } => self.worker_joined(now, worker, cached, out),
            Input::WorkerLeft { worker } => self.drop_worker(worker, out),
            Input::Heartbeat { worker } => self.renew(worker, now),
            Input::LeaseRequest { worker, slots } => self.lease_request(now, worker, slots, out),
            Input::Completed { attempt, by, outputs } => self.completed(now, attempt, by, outputs, out),
            Input::Failed { attempt, by, error: _, retryable } => self.failed(now, attempt, by, retryable, out),
            Input::Released { attempt, by } => self.released(now, attempt, by, out),
            Input::Reconcile { worker, running, seen_up_to } => self.reconcile(now, worker, &running, seen_up_to, out),
            Input::Cancel { task, reason } => self.cancel_task(task, &reason, out),
            Input::DepsSatisfied { dep, tasks } => self.deps_satisfied(dep, tasks, out),
            Input::CancelSweep { reason } => self.cancel_sweep(&reason, out),
            Input::AddTasks { tasks } => self.add_tasks(tasks, out),
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

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    fn current(&self, attempt: AttemptId) -> Option<(TaskId, WorkerId)> {
        self.attempts.get(&attempt).map(|l| (l.task, l.worker))
    }
}

#[cfg(test)]
mod tests;
