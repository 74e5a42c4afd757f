//! Readiness: a task waits for its dependencies to complete, or for what it needs from them to
//! exist already ([`Input::DepsSatisfied`]).

#[cfg(doc)]
use super::Input;
use super::{Output, Scheduler, State, TaskId};

impl Scheduler {
    /// `task` completed: each dependent that still waited for it has one dependency fewer, and
    /// turns ready with the last.
    pub(super) fn unblock_dependents(&mut self, task: TaskId, out: &mut Vec<Output>) {
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

    /// What `tasks` need from their dependency `dep` exists already: they stop waiting for it, and
    /// its failure no longer cancels them.
    pub(super) fn deps_satisfied(&mut self, dep: TaskId, tasks: Vec<TaskId>, out: &mut Vec<Output>) {
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
}
