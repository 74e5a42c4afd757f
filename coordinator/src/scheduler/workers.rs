//! Workers: joining, liveness deadlines, leaving or expiring (their attempts re-queued, the only
//! live attempt of a task counted), exclusion after failures in a row, and what they cache.

use std::collections::{BTreeSet, HashMap, HashSet};

use super::{AttemptEnd, CostClass, Millis, Output, Rate, Scheduler, State, TaskId, WorkerId};

pub(super) struct Worker {
    pub(super) deadline: Millis,
    pub(super) running: BTreeSet<TaskId>,
    pub(super) cached: HashSet<String>,
    /// Most recent cached keys first: the locality lookup tries these.
    pub(super) recent: Vec<String>,
    /// Measured throughput per cost class.
    pub(super) rates: HashMap<CostClass, Rate>,
    /// Failures reported since this worker last completed a task.
    pub(super) failures_in_a_row: u32,
    /// No leases before this time (see [`SchedulerConfig::exclude_after`]).
    pub(super) excluded_until: Millis,
}

impl Worker {
    /// The worker holds `keys` now (it produced or downloaded them): newest first for locality.
    pub(super) fn note_cached(&mut self, keys: impl IntoIterator<Item = String>) {
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
pub(super) const LOCALITY_KEYS: usize = 16;

impl Scheduler {
    /// A worker connects holding `cached` input keys. The same id joining again is a new
    /// incarnation: the old one's work is orphaned.
    pub(super) fn worker_joined(&mut self, now: Millis, worker: WorkerId, cached: Vec<String>, out: &mut Vec<Output>) {
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

    /// One more failure on `worker`; past `exclude_after` in a row it gets no leases for a while.
    pub(super) fn count_worker_failure(&mut self, now: Millis, worker: WorkerId, out: &mut Vec<Output>) {
        let after = self.config.exclude_after;
        let Some(w) = self.workers.get_mut(&worker) else { return };
        w.failures_in_a_row = w.failures_in_a_row.saturating_add(1);
        if after > 0 && w.failures_in_a_row >= after {
            let pause = self.config.backoff_delay(w.failures_in_a_row - after + 1);
            w.excluded_until = now.saturating_add(pause);
            out.push(Output::WorkerExcluded { worker, failures: w.failures_in_a_row, for_ms: pause });
        }
    }

    pub(super) fn renew(&mut self, worker: WorkerId, now: Millis) {
        if let Some(w) = self.workers.get_mut(&worker) {
            self.worker_deadlines.remove(&(w.deadline, worker));
            w.deadline = now.saturating_add(self.config.lease_timeout);
            self.worker_deadlines.insert((w.deadline, worker));
        }
    }

    pub(super) fn drop_worker(&mut self, worker: WorkerId, out: &mut Vec<Output>) {
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

    pub(super) fn expire(&mut self, now: Millis, out: &mut Vec<Output>) {
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
}
