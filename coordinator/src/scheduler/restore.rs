//! Rebuilding the core from what the store holds after a restart (a fresh sweep is the case where
//! every task is pending).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{NewTask, Output, Scheduler, SchedulerConfig, State, StoredState, Task, TaskId};

impl Scheduler {
    /// Rebuild from the store: each task with its stored state and failure count. Done, failed and
    /// cancelled tasks stay so; everything else is pending again: an attempt that was running when
    /// the coordinator stopped is re-leased under a new id (its failure count kept), a backoff
    /// ends at once. Pending tasks behind a failed or cancelled dependency are cancelled; those
    /// transitions come out of the first `handle` so the store catches up. A dependency that names
    /// no task counts as done. `first_attempt` must exceed every attempt id already stored.
    pub fn restore(config: SchedulerConfig, tasks: Vec<(NewTask, StoredState, u32)>, first_attempt: u64) -> Self {
        let mut s = Scheduler::empty(config, tasks.len(), first_attempt);
        for (task, stored, failures) in &tasks {
            s.insert_stored(task, *stored, *failures);
        }
        for (task, _, _) in &tasks {
            s.link_dependencies(task);
        }
        s.ready_unblocked(&tasks);
        s.restored = s.cancel_behind_failed_and_cancelled();
        s
    }

    /// No task, no worker; attempt ids from `first_attempt` (at least 1).
    fn empty(config: SchedulerConfig, tasks: usize, first_attempt: u64) -> Self {
        Scheduler {
            config,
            tasks: HashMap::with_capacity(tasks),
            ready: BTreeSet::new(),
            by_input: HashMap::new(),
            attempts: HashMap::new(),
            workers: HashMap::new(),
            fleet: HashMap::new(),
            worker_deadlines: BTreeSet::new(),
            backoffs: BTreeSet::new(),
            counts: BTreeMap::new(),
            highest_task: None,
            next_attempt: first_attempt.max(1),
            next_seq: 0,
            finished_announced: false,
            restored: Vec::new(),
            parked: BTreeSet::new(),
        }
    }

    /// Add `t` as the store left it: finished states stay, anything else is blocked for now.
    pub(super) fn insert_stored(&mut self, t: &NewTask, stored: StoredState, failures: u32) {
        let state = match stored {
            StoredState::Done => State::Done,
            StoredState::Failed => State::Failed,
            StoredState::Cancelled => State::Cancelled,
            StoredState::Pending => State::Blocked,
        };
        *self.counts.entry(state.name()).or_default() += 1;
        self.highest_task = self.highest_task.max(Some(t.id));
        self.tasks.insert(
            t.id,
            Task {
                state,
                deps_left: 0,
                dependents: Vec::new(),
                failures,
                priority: t.priority,
                inputs: t.inputs.clone(),
                queued: None,
                cost: t.cost.clone(),
                backups: Vec::new(),
                speculated: 0,
                early: Vec::new(),
            },
        );
    }

    /// Once every task is in: `t` waits for each dependency not done (one naming no task counts
    /// as done), and is among its dependents.
    pub(super) fn link_dependencies(&mut self, t: &NewTask) {
        for &dep in &t.deps {
            let dep_done = self.tasks.get(&dep).is_none_or(|d| d.state == State::Done);
            if let Some(d) = self.tasks.get_mut(&dep) {
                d.dependents.push(t.id);
            }
            if !dep_done {
                self.tasks.get_mut(&t.id).expect("task exists").deps_left += 1;
            }
        }
    }

    /// Pending tasks whose deps are all done are ready, queued by id.
    fn ready_unblocked(&mut self, tasks: &[(NewTask, StoredState, u32)]) {
        let mut order: Vec<(TaskId, u8)> = tasks.iter().map(|(t, _, _)| (t.id, t.priority)).collect();
        order.sort();
        for (id, _) in order {
            let task = &self.tasks[&id];
            if task.state == State::Blocked && task.deps_left == 0 {
                self.set_state(id, State::Ready, None, None, &mut Vec::new());
            }
        }
    }

    /// Pending tasks behind a failed or cancelled dependency can never run: cancel them, and
    /// return the transitions (the store has not seen them yet).
    fn cancel_behind_failed_and_cancelled(&mut self) -> Vec<Output> {
        let mut doomed: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, t)| matches!(t.state, State::Failed | State::Cancelled))
            .map(|(id, _)| *id)
            .collect();
        doomed.sort_unstable();
        let mut out = Vec::new();
        for id in doomed {
            let reason = format!("dependency {} {}", id.0, self.tasks[&id].state.name().as_str());
            self.cancel_dependents(id, &reason, &mut out);
        }
        out
    }
}
