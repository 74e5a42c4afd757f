//! Leases: which ready task a worker gets (locality, retries, priority, FIFO), how many, and
//! idle workers parked until work turns ready.

use super::{AttemptId, Live, Millis, Output, Scheduler, State, TaskId, WorkerId};

impl Scheduler {
    /// A worker has `slots` free: ready tasks first, then, at the tail, backups of stragglers;
    /// `NoWork` if it gets nothing (an idle worker is parked until work turns ready).
    pub(super) fn lease_request(&mut self, now: Millis, worker: WorkerId, slots: u32, out: &mut Vec<Output>) {
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
        let mut granted = self.lease_ready(now, worker, slots, out);
        // Nothing ready: the tail, where a straggler may be worth racing.
        granted += self.lease_backups(now, worker, slots - granted, out);
        if granted == 0 {
            // Parked even when the sweep is finished: tasks may still be added to it.
            if self.workers[&worker].running.is_empty() {
                self.parked.insert(worker);
            }
            out.push(Output::NoWork { worker, retry_after: self.config.idle_retry });
        }
    }

    /// Lease up to `slots` ready tasks to `worker`, best first; returns how many it got.
    fn lease_ready(&mut self, now: Millis, worker: WorkerId, slots: u32, out: &mut Vec<Output>) -> u32 {
        let mut granted = 0;
        while granted < slots {
            let Some(task) = self.pick(worker) else { break };
            self.lease(now, task, worker, out);
            granted += 1;
        }
        granted
    }

    /// Start `task`'s attempt on `worker`: it runs, and the lease goes out.
    fn lease(&mut self, now: Millis, task: TaskId, worker: WorkerId, out: &mut Vec<Output>) {
        let attempt = self.start_attempt(now, task, worker);
        self.set_state(task, State::Running { attempt, worker }, Some(attempt), Some(worker), out);
        out.push(Output::Lease { worker, task, attempt });
    }

    pub(super) fn start_attempt(&mut self, now: Millis, task: TaskId, worker: WorkerId) -> AttemptId {
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
    pub(super) fn lease_parked(&mut self, now: Millis, out: &mut Vec<Output>) {
        while !self.ready.is_empty() {
            let Some(&worker) = self.parked.iter().next() else { return };
            self.parked.remove(&worker);
            let idle = self.workers.get(&worker).is_some_and(|w| w.running.is_empty() && w.excluded_until <= now);
            if !idle {
                continue;
            }
            let Some(task) = self.pick(worker) else { return };
            self.lease(now, task, worker, out);
        }
    }

    /// The best ready task for `worker`: one whose inputs it holds, else the queue's head.
    fn pick(&self, worker: WorkerId) -> Option<TaskId> {
        let w = self.workers.get(&worker)?;
        let local = w.recent.iter().filter_map(|key| self.by_input.get(key)?.first()).min();
        local.or_else(|| self.ready.first()).map(|key| key.3)
    }
}
