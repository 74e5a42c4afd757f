//! A task's state and the bookkeeping kept per task and per live attempt, and the one place a
//! state changes: every change keeps the ready queue, the input index, the backoff timers and the
//! counts in step, and comes out as one [`Output::Transition`].

use super::{AttemptId, Cost, Millis, Output, Scheduler, TaskId, WorkerId};

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

#[derive(Clone, Debug, PartialEq)]
pub(super) enum State {
    Blocked,
    Ready,
    Running { attempt: AttemptId, worker: WorkerId },
    Backoff { until: Millis },
    Done,
    Failed,
    Cancelled,
}

impl State {
    pub(super) fn name(&self) -> StateName {
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

pub(super) struct Task {
    pub(super) state: State,
    pub(super) deps_left: usize,
    pub(super) dependents: Vec<TaskId>,
    pub(super) failures: u32,
    pub(super) priority: u8,
    pub(super) inputs: Vec<String>,
    /// Queue position while ready.
    pub(super) queued: Option<QueueKey>,
    pub(super) cost: Cost,
    /// Live backup attempts while running (the first live attempt is in `State::Running`).
    pub(super) backups: Vec<AttemptId>,
    /// Backups started since the task last became running (bounded by `max_backups`).
    pub(super) speculated: u32,
    /// Dependencies satisfied before they completed ([`Input::DepsSatisfied`]).
    pub(super) early: Vec<TaskId>,
}

/// A live attempt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Live {
    pub(super) task: TaskId,
    pub(super) worker: WorkerId,
    /// Lease time, for the throughput sample and the straggler estimate.
    pub(super) since: Millis,
}

/// Ordering of the ready queue: retried tasks first, then priority, then arrival.
pub(super) type QueueKey = (bool, u8, u64, TaskId);

impl Scheduler {
    /// Back to the front of the queue without counting a failure.
    pub(super) fn requeue(
        &mut self,
        task: TaskId,
        attempt: Option<AttemptId>,
        worker: Option<WorkerId>,
        out: &mut Vec<Output>,
    ) {
        self.set_state_with(task, State::Ready, attempt, worker, true, out);
    }

    pub(super) fn set_retry_ready(&mut self, task: TaskId, out: &mut Vec<Output>) {
        self.set_state_with(task, State::Ready, None, None, true, out);
    }

    pub(super) fn set_state(
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
}
