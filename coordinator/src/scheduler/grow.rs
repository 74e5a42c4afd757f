//! A plan that grows: tasks added while the sweep runs ([`Input::AddTasks`]), checked as a batch
//! and then placed as restore places a pending task.

use std::collections::HashSet;

#[cfg(doc)]
use super::Input;
use super::{AddRefusal, NewTask, Output, Scheduler, State, StoredState, TaskId};

impl Scheduler {
    /// Add `tasks` (see [`Input::AddTasks`]): refused whole if one breaks a rule, else each enters
    /// Blocked and moves on as its dependencies allow.
    pub(super) fn add_tasks(&mut self, tasks: Vec<NewTask>, out: &mut Vec<Output>) {
        if let Err((task, refusal)) = self.check_added(&tasks) {
            out.push(Output::AddRefused { task, refusal });
            return;
        }
        // In batch order, so a later task of the batch sees the state an earlier one took.
        for task in &tasks {
            self.insert_stored(task, StoredState::Pending, 0);
            self.link_dependencies(task);
            self.place_added(task, out);
            if !self.tasks[&task.id].state.name().is_terminal() {
                // There is work again: the next time every task is terminal is announced too.
                self.finished_announced = false;
            }
        }
    }

    /// An added task, Blocked and linked, takes the state restore would give it: Cancelled
    /// behind a failed or cancelled dependency (it can never run), Ready if every dependency is
    /// done, else it stays Blocked until they are.
    fn place_added(&mut self, task: &NewTask, out: &mut Vec<Output>) {
        let dead = |d: &TaskId| matches!(self.tasks[d].state, State::Failed | State::Cancelled);
        if task.deps.iter().any(dead) {
            self.set_state(task.id, State::Cancelled, None, None, out);
        } else if self.tasks[&task.id].deps_left == 0 {
            self.set_state(task.id, State::Ready, None, None, out);
        }
    }

    /// The first task of the batch that breaks a rule of [`Input::AddTasks`], and the rule.
    fn check_added(&self, tasks: &[NewTask]) -> Result<(), (TaskId, AddRefusal)> {
        let mut highest = self.highest_task;
        let mut batch: HashSet<TaskId> = HashSet::with_capacity(tasks.len());
        for t in tasks {
            if self.tasks.contains_key(&t.id) || batch.contains(&t.id) {
                return Err((t.id, AddRefusal::Exists));
            }
            if let Some(highest) = highest.filter(|&h| t.id < h) {
                return Err((t.id, AddRefusal::NotAbove { highest }));
            }
            if let Some(&dep) = t.deps.iter().find(|d| !self.tasks.contains_key(d) && !batch.contains(d)) {
                return Err((t.id, AddRefusal::UnknownDependency { dep }));
            }
            batch.insert(t.id);
            highest = Some(t.id);
        }
        Ok(())
    }
}
