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
//! - A task has at most one live attempt (so never two on one worker; no speculative copies);
//!   a report from any other attempt is not accepted, so late or duplicate reports change nothing
//!   and a task is completed at most once. Attempt ids only grow, also across restarts (the driver
//!   seeds them above the store's largest).
//! - A worker's liveness deadline is `now + lease_timeout`, renewed by any message; past it the
//!   worker is dropped and its tasks return to the queue at once (front of the queue). A worker
//!   that leaves is treated the same way without waiting.
//! - A released or orphaned attempt does not count against `max_attempts`; a failure does.
//!   Retryable failures wait `min(base · 2^(k−1), max)` before the task is ready again, at the
//!   front of the queue.
//! - A task that can no longer run because a dependency failed or was cancelled is **Cancelled**
//!   (not Failed), with the reason naming the dependency: Failed means "this task's own attempts
//!   failed", which keeps the report's failure list short and honest. The sweep still finishes.
//! - Leases prefer a task whose inputs the worker already holds (it produced or downloaded them),
//!   then retried tasks, then lower priority values (train before heatmap), then FIFO.
//! - Every state change is one [`Output::Transition`]; one that ends a live attempt names it, so
//!   the store can close the attempt. Replaying the transitions reproduces the core's states.
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
    /// Failed attempts allowed per task (releases and lost workers do not count).
    pub max_attempts: u32,
    /// Wait after the first retryable failure; doubles with each further one …
    pub backoff_base: Millis,
    /// … up to this.
    pub backoff_max: Millis,
    /// What `NoWork` tells an idle worker.
    pub idle_retry: Millis,
}

impl SchedulerConfig {
    /// How long a task waits after its `failures`-th failure: `min(base · 2^(failures−1), max)`.
    pub fn backoff_delay(&self, failures: u32) -> Millis {
        let shift = failures.saturating_sub(1).min(32);
        self.backoff_base.saturating_mul(1 << shift).min(self.backoff_max)
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            lease_timeout: 30_000,
            max_attempts: 3,
            backoff_base: 1_000,
            backoff_max: 60_000,
            idle_retry: 1_000,
        }
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
    /// An attempt finished; `outputs` are the keys the worker now holds (locality).
    Completed { attempt: AttemptId, outputs: Vec<String> },
    /// An attempt failed; a non-retryable failure fails the task at once.
    Failed { attempt: AttemptId, error: String, retryable: bool },
    /// The worker gives an attempt back unfinished (drain): re-queued, not a failure.
    Released { attempt: AttemptId },
    /// Cancel one task (its live attempt is told to stop) and everything that depends on it.
    Cancel { task: TaskId, reason: String },
    /// Cancel every task that has not finished: the sweep ends with what it has.
    CancelSweep { reason: String },
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
    /// Whether a report (completion, failure, release) of `attempt` was accepted.
    Report { attempt: AttemptId, accepted: bool },
    /// A task changed state (persist it; one log line). `attempt`/`worker` name the attempt
    /// that starts (to Running) or ends (from Running), if any.
    Transition { task: TaskId, from: StateName, to: StateName, attempt: Option<AttemptId>, worker: Option<WorkerId> },
    /// `worker` missed its deadline and was dropped (its tasks are re-queued).
    WorkerExpired { worker: WorkerId },
    /// Every task is terminal; emitted once.
    SweepFinished,
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
}

/// Ordering of the ready queue: retried tasks first, then priority, then arrival.
type QueueKey = (bool, u8, u64, TaskId);

struct Worker {
    deadline: Millis,
    running: BTreeSet<TaskId>,
    cached: HashSet<String>,
    /// Most recent cached keys first: the locality lookup tries these.
    recent: Vec<String>,
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
    attempts: HashMap<AttemptId, TaskId>,
    workers: HashMap<WorkerId, Worker>,
    worker_deadlines: BTreeSet<(Millis, WorkerId)>,
    backoffs: BTreeSet<(Millis, TaskId)>,
    counts: BTreeMap<StateName, usize>,
    next_attempt: u64,
    next_seq: u64,
    finished_announced: bool,
    /// Transitions decided while restoring (cascaded cancellations the store has not seen yet);
    /// the first `handle` emits them so the store catches up.
    restored: Vec<Output>,
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
            worker_deadlines: BTreeSet::new(),
            backoffs: BTreeSet::new(),
            counts: BTreeMap::new(),
            next_attempt: first_attempt.max(1),
            next_seq: 0,
            finished_announced: false,
            restored: Vec::new(),
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
                    Worker { deadline: 0, running: BTreeSet::new(), cached: cached.into_iter().collect(), recent },
                );
                self.renew(worker, now);
            }
            Input::WorkerLeft { worker } => self.drop_worker(worker, out),
            Input::Heartbeat { worker } => self.renew(worker, now),
            Input::LeaseRequest { worker, slots } => {
                // An unknown (expired or never joined) worker gets nothing; it must join again.
                if !self.workers.contains_key(&worker) {
                    return;
                }
                self.renew(worker, now);
                let mut granted = 0;
                while granted < slots {
                    let Some(task) = self.pick(worker) else { break };
                    let attempt = AttemptId(self.next_attempt);
                    self.next_attempt += 1;
                    self.attempts.insert(attempt, task);
                    self.workers.get_mut(&worker).expect("worker exists").running.insert(task);
                    self.set_state(task, State::Running { attempt, worker }, Some(attempt), Some(worker), out);
                    out.push(Output::Lease { worker, task, attempt });
                    granted += 1;
                }
                if granted == 0 {
                    out.push(Output::NoWork { worker, retry_after: self.config.idle_retry });
                }
            }
            Input::Completed { attempt, outputs } => {
                let Some((task, worker)) = self.close_reported(now, attempt, out) else { return };
                if let Some(w) = self.workers.get_mut(&worker) {
                    for key in outputs {
                        if w.cached.insert(key.clone()) {
                            w.recent.insert(0, key);
                            w.recent.truncate(LOCALITY_KEYS);
                        }
                    }
                }
                self.set_state(task, State::Done, Some(attempt), Some(worker), out);
                out.push(Output::Report { attempt, accepted: true });
                for i in 0..self.tasks[&task].dependents.len() {
                    let d = self.tasks[&task].dependents[i];
                    let dep = self.tasks.get_mut(&d).expect("dependent exists");
                    dep.deps_left = dep.deps_left.saturating_sub(1);
                    if dep.deps_left == 0 && dep.state == State::Blocked {
                        self.set_state(d, State::Ready, None, None, out);
                    }
                }
            }
            Input::Failed { attempt, error: _, retryable } => {
                let Some((task, worker)) = self.close_reported(now, attempt, out) else { return };
                out.push(Output::Report { attempt, accepted: true });
                let t = self.tasks.get_mut(&task).expect("task exists");
                t.failures = t.failures.saturating_add(1);
                if retryable && t.failures < self.config.max_attempts {
                    let delay = self.config.backoff_delay(t.failures);
                    let until = now.saturating_add(delay);
                    self.set_state(task, State::Backoff { until }, Some(attempt), Some(worker), out);
                } else {
                    self.set_state(task, State::Failed, Some(attempt), Some(worker), out);
                    self.cancel_dependents(task, &format!("dependency {} failed", task.0), out);
                }
            }
            Input::Released { attempt } => {
                let Some((task, worker)) = self.close_reported(now, attempt, out) else { return };
                out.push(Output::Report { attempt, accepted: true });
                self.requeue(task, Some(attempt), Some(worker), out);
            }
            Input::Cancel { task, reason } => {
                if self.tasks.contains_key(&task) {
                    self.cancel_one(task, &reason, out);
                    self.cancel_dependents(task, &format!("dependency {} cancelled: {reason}", task.0), out);
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

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    // ------------------------------------------------------------------ internals

    fn current(&self, attempt: AttemptId) -> Option<(TaskId, WorkerId)> {
        let task = *self.attempts.get(&attempt)?;
        match self.tasks[&task].state {
            State::Running { attempt: a, worker } if a == attempt => Some((task, worker)),
            _ => None,
        }
    }

    /// A report (completion, failure, release) names `attempt`: if it is the task's live attempt,
    /// end it and renew its worker; otherwise answer that the report was not accepted.
    fn close_reported(&mut self, now: Millis, attempt: AttemptId, out: &mut Vec<Output>) -> Option<(TaskId, WorkerId)> {
        let Some((task, worker)) = self.current(attempt) else {
            out.push(Output::Report { attempt, accepted: false });
            return None;
        };
        self.renew(worker, now);
        self.end_attempt(attempt, task, worker);
        Some((task, worker))
    }

    fn end_attempt(&mut self, attempt: AttemptId, task: TaskId, worker: WorkerId) {
        self.attempts.remove(&attempt);
        if let Some(w) = self.workers.get_mut(&worker) {
            w.running.remove(&task);
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
        let Some(w) = self.workers.remove(&worker) else { return };
        self.worker_deadlines.remove(&(w.deadline, worker));
        for task in w.running {
            if let State::Running { attempt, .. } = self.tasks[&task].state {
                self.attempts.remove(&attempt);
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
                self.end_attempt(attempt, task, worker);
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
    fn cancel_dependents(&mut self, task: TaskId, reason: &str, out: &mut Vec<Output>) {
        let mut stack = self.tasks[&task].dependents.clone();
        while let Some(d) = stack.pop() {
            if self.tasks[&d].state.name().is_terminal() {
                continue;
            }
            self.cancel_one(d, reason, out);
            stack.extend(self.tasks[&d].dependents.iter().copied());
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
        }
    }

    fn config() -> SchedulerConfig {
        SchedulerConfig { lease_timeout: 1_000, max_attempts: 3, backoff_base: 100, backoff_max: 1_000, idle_retry: 50 }
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

    fn join(s: &mut Scheduler, now: Millis, worker: u64) {
        s.handle(now, Input::WorkerJoined { worker: WorkerId(worker), cached: vec![] });
    }

    #[test]
    fn dependencies_gate_readiness_and_the_sweep_finishes_once() {
        let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[]), task(2, &[1], 1, &[])], 1);
        assert_eq!(s.state(TaskId(2)), Some(StateName::Blocked));
        join(&mut s, 0, 1);
        let (t, a) = lease_one(&mut s, 0, 1).unwrap();
        assert_eq!(t, TaskId(1));
        assert_eq!(lease_one(&mut s, 0, 1), None, "task 2 waits for task 1");
        let out = s.handle(5, Input::Completed { attempt: a, outputs: vec![] });
        assert!(out.contains(&Output::Report { attempt: a, accepted: true }));
        assert_eq!(s.state(TaskId(2)), Some(StateName::Ready));
        let (t2, a2) = lease_one(&mut s, 6, 1).unwrap();
        assert_eq!(t2, TaskId(2));
        let out = s.handle(7, Input::Completed { attempt: a2, outputs: vec![] });
        assert!(out.contains(&Output::SweepFinished));
        assert!(!s.handle(8, Input::Tick).contains(&Output::SweepFinished), "announced once");
    }

    #[test]
    fn stale_and_duplicate_reports_change_nothing() {
        let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[])], 10);
        join(&mut s, 0, 1);
        let (_, a) = lease_one(&mut s, 0, 1).unwrap();
        assert_eq!(a, AttemptId(10), "attempt ids start where the store left off");
        s.handle(1, Input::Completed { attempt: a, outputs: vec![] });
        let again = s.handle(2, Input::Completed { attempt: a, outputs: vec![] });
        assert_eq!(again, vec![Output::Report { attempt: a, accepted: false }]);
        let late = s.handle(2, Input::Failed { attempt: a, error: "x".into(), retryable: true });
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
        assert_eq!(s.failures(t), 0, "a lost worker is not the task's failure");
        let (again, a2) = lease_one(&mut s, 1_001, 2).unwrap();
        assert_eq!(again, t, "the orphaned task is re-leased before the untouched one");
        assert_ne!(a, a2);
        let late = s.handle(1_002, Input::Completed { attempt: a, outputs: vec![] });
        assert_eq!(late, vec![Output::Report { attempt: a, accepted: false }], "the old attempt is stale");
    }

    #[test]
    fn retryable_failures_back_off_then_fail_after_max_attempts_and_cancel_dependents() {
        let mut s =
            Scheduler::new(config(), vec![task(1, &[], 0, &[]), task(2, &[1], 0, &[]), task(3, &[2], 0, &[])], 1);
        join(&mut s, 0, 1);
        let mut now = 0;
        for k in 1..=3u32 {
            let (t, a) = lease_one(&mut s, now, 1).unwrap();
            assert_eq!(t, TaskId(1));
            s.handle(now, Input::Failed { attempt: a, error: "oom".into(), retryable: true });
            if k < 3 {
                assert_eq!(s.state(t), Some(StateName::Backoff));
                let wait = 100 << (k - 1);
                assert_eq!(lease_one(&mut s, now + wait - 1, 1), None, "still backing off");
                assert_eq!(s.next_deadline().map(|d| d.min(now + wait)), Some(now + wait));
                now += wait;
                s.handle(now, Input::Tick);
                assert_eq!(s.state(t), Some(StateName::Ready));
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
        let out = s.handle(1, Input::Failed { attempt: a, error: "NaN loss".into(), retryable: false });
        assert_eq!(s.state(TaskId(1)), Some(StateName::Failed));
        assert!(out.contains(&Output::SweepFinished));
    }

    #[test]
    fn release_and_worker_leave_requeue_without_counting_a_failure() {
        let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[]), task(2, &[], 0, &[])], 1);
        join(&mut s, 0, 1);
        let (t, a) = lease_one(&mut s, 0, 1).unwrap();
        s.handle(1, Input::Released { attempt: a });
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
        s.handle(1, Input::Completed { attempt: a1, outputs: vec!["task:1/checkpoint".into()] });
        s.handle(1, Input::Completed { attempt: a2, outputs: vec!["task:2/checkpoint".into()] });
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
        let late = s.handle(2, Input::Completed { attempt: a, outputs: vec![] });
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
            s.handle(1, Input::Completed { attempt: a, outputs: vec![] });
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

    #[test]
    fn cancelling_the_sweep_stops_every_live_attempt_and_keeps_finished_work() {
        let tasks = (1..=5).map(|i| task(i, &[], 0, &[])).collect();
        let mut s = Scheduler::new(config(), tasks, 1);
        join(&mut s, 0, 1);
        join(&mut s, 0, 2);
        let (done, a_done) = lease_one(&mut s, 0, 1).unwrap();
        s.handle(0, Input::Completed { attempt: a_done, outputs: vec![] });
        let (_, a1) = lease_one(&mut s, 0, 1).unwrap();
        let (_, a2) = lease_one(&mut s, 0, 2).unwrap();
        let (backing_off, a3) = lease_one(&mut s, 0, 2).unwrap();
        s.handle(0, Input::Failed { attempt: a3, error: "oom".into(), retryable: true });
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
        let out = s.handle(1_500, Input::Completed { attempt: a, outputs: vec![] });
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
        assert_eq!((s.state(t), s.failures(t)), (Some(StateName::Ready), 0));
        assert!(s.running_on(WorkerId(1)).is_empty());
        let late = s.handle(11, Input::Completed { attempt: a, outputs: vec![] });
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

    // ---- randomised event sequences against invariants

    #[derive(Clone, Debug)]
    enum Event {
        Join(u64),
        Leave(u64),
        Beat(u64),
        Lease(u64, u32),
        Complete(usize),
        Fail(usize, bool),
        Release(usize),
        Cancel(u64),
        CancelSweep,
        Advance(u64),
        /// The coordinator crashes and restarts from what the store holds; workers must rejoin.
        Restart,
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
            10 => Just(Event::Restart),
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
                match i {
                    0..4 => task(i, &[], 0, &[]),
                    4..8 => task(i, &[root], 1, &[&key]),
                    _ => task(i, &[root, i - 4], 2, &[&key]),
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
                        }
                        self.states.insert(*task, *to);
                        self.failures.insert(*task, s.failures(*task));
                    }
                    Output::Lease { worker, task, attempt } => {
                        assert_eq!(started.get(attempt), Some(&(*task, *worker)), "a lease follows its transition");
                        assert!(attempt.0 > self.max_attempt, "attempt ids only grow, across restarts too");
                        self.max_attempt = attempt.0;
                    }
                    Output::Cancel { attempt, worker, .. } => {
                        let owner = live_before.get(attempt).or_else(|| started.get(attempt));
                        assert_eq!(owner.map(|o| o.1), Some(*worker), "a cancel names a live attempt and its worker");
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
            Scheduler::restore(config(), stored, self.max_attempt + 1)
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
            if let State::Running { attempt, worker } = t.state {
                let w = s.workers.get(&worker).expect("a running task's worker is alive");
                assert!(w.running.contains(id));
                assert_eq!(s.attempts.get(&attempt), Some(id));
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
        assert_eq!(s.attempts.len(), running, "one live attempt per running task, no leftovers");
        let leased: usize = s.workers.values().map(|w| w.running.len()).sum();
        assert_eq!(leased, running, "every live attempt is on exactly one worker");
        for (wid, w) in &s.workers {
            for task in &w.running {
                assert!(matches!(s.tasks[task].state, State::Running { worker, .. } if worker == *wid));
            }
        }
        assert_eq!(s.ready.len(), s.tasks.values().filter(|t| t.state == State::Ready).count());
        let backing_off = s.counts().get(&StateName::Backoff).copied().unwrap_or(0);
        assert_eq!(s.backoffs.len(), backing_off, "a timer per backoff");
        assert_eq!(s.worker_deadlines.len(), s.workers.len(), "a deadline per worker");
    }

    fn live_attempts(s: &Scheduler) -> HashMap<AttemptId, (TaskId, WorkerId)> {
        s.attempts.keys().map(|&a| (a, s.attempt(a).expect("attempts index holds live attempts"))).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
        #[test]
        fn random_event_sequences_keep_the_invariants(events in prop::collection::vec(event(), 1..150)) {
            let mut s = Scheduler::new(config(), random_sweep(), 1);
            let mut store = ShadowStore {
                states: random_sweep().iter().map(|t| (t.id, StateName::Blocked)).collect(),
                failures: HashMap::new(),
                max_attempt: 0,
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
                    Event::Join(w) => s.handle_into(now, Input::WorkerJoined { worker: WorkerId(w), cached: vec![] }, &mut out),
                    Event::Leave(w) => s.handle_into(now, Input::WorkerLeft { worker: WorkerId(w) }, &mut out),
                    Event::Beat(w) => s.handle_into(now, Input::Heartbeat { worker: WorkerId(w) }, &mut out),
                    Event::Lease(w, n) => s.handle_into(now, Input::LeaseRequest { worker: WorkerId(w), slots: n }, &mut out),
                    Event::Complete(i) => if let Some(a) = pick(i) {
                        let task = s.attempt(a).map(|(t, _)| t);
                        let outputs = task.map(|t| vec![format!("task:{}/checkpoint", t.0)]).unwrap_or_default();
                        s.handle_into(now, Input::Completed { attempt: a, outputs }, &mut out);
                        let accepted = out.contains(&Output::Report { attempt: a, accepted: true });
                        prop_assert_eq!(accepted, task.is_some(), "accepted exactly when the attempt was live");
                        if accepted {
                            *completed.entry(task.unwrap()).or_default() += 1;
                        }
                    },
                    Event::Fail(i, r) => if let Some(a) = pick(i) {
                        s.handle_into(now, Input::Failed { attempt: a, error: "e".into(), retryable: r }, &mut out);
                    },
                    Event::Release(i) => if let Some(a) = pick(i) {
                        s.handle_into(now, Input::Released { attempt: a }, &mut out);
                    },
                    Event::Cancel(t) => s.handle_into(now, Input::Cancel { task: TaskId(t), reason: "r".into() }, &mut out),
                    Event::CancelSweep => s.handle_into(now, Input::CancelSweep { reason: "r".into() }, &mut out),
                    Event::Advance(dt) => {
                        now += dt;
                        s.handle_into(now, Input::Tick, &mut out);
                    }
                    Event::Restart => {
                        s = store.restore();
                        // Restoring turns running/backoff tasks back into pending ones: the
                        // store's reading of anything unfinished.
                        for (id, t) in &s.tasks {
                            let stored = store.states[id];
                            if !stored.is_terminal() {
                                store.states.insert(*id, if t.queued.is_some() { StateName::Ready } else { StateName::Blocked });
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
                s.handle(now, Input::Heartbeat { worker: WorkerId(99) });
                let out = s.handle(now, Input::LeaseRequest { worker: WorkerId(99), slots: 4 });
                for (_, a) in leases(&out) {
                    s.handle(now, Input::Completed { attempt: a, outputs: vec![] });
                }
            }
            prop_assert!(s.is_finished(), "the sweep finishes: {:?}", s.counts());
        }
    }
}
