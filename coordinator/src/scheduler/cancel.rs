//! Cancellation: of one task and everything behind it, of the whole sweep, and of the dependents
//! of a task that can no longer complete.

use super::{AttemptEnd, Output, Scheduler, State, TaskId};

impl Scheduler {
    /// Cancel `task` (its live attempts are told to stop) and everything that depends on it.
    pub(super) fn cancel_task(&mut self, task: TaskId, reason: &str, out: &mut Vec<Output>) {
        if self.tasks.contains_key(&task) {
            self.cancel_one(task, reason, out);
            self.cancel_dependents(task, &format!("dependency {} cancelled: {reason}", task.0), out);
        }
    }

    /// Cancel every task that has not finished: the sweep ends with what it has.
    pub(super) fn cancel_sweep(&mut self, reason: &str, out: &mut Vec<Output>) {
        // Once per sweep, so a walk over all tasks is fine; sorted so outputs are
        // deterministic (the store and logs see the same order on every run).
        let mut live: Vec<TaskId> =
            self.tasks.iter().filter(|(_, t)| !t.state.name().is_terminal()).map(|(id, _)| *id).collect();
        live.sort_unstable();
        for task in live {
            self.cancel_one(task, reason, out);
        }
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
    pub(super) fn cancel_dependents(&mut self, task: TaskId, reason: &str, out: &mut Vec<Output>) {
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
}
