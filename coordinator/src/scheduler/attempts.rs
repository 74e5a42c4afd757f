//! Attempts end: reports of results, failures and releases (only from the worker holding a live
//! attempt), races between live attempts of one task, and reconciling what a worker says it runs.

use super::{AttemptEnd, AttemptId, Live, Millis, Output, Scheduler, State, TaskId, WorkerId};

impl Scheduler {
    /// A result: the first one wins the task, and its dependents may turn ready.
    pub(super) fn completed(
        &mut self,
        now: Millis,
        attempt: AttemptId,
        by: WorkerId,
        outputs: Vec<String>,
        out: &mut Vec<Output>,
    ) {
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
        self.unblock_dependents(task, out);
    }

    /// A failure: counted against the task (unless another attempt runs on), then a backoff, or,
    /// if it is not retryable or the attempts are used up, the task fails and its dependents are
    /// cancelled.
    pub(super) fn failed(
        &mut self,
        now: Millis,
        attempt: AttemptId,
        by: WorkerId,
        retryable: bool,
        out: &mut Vec<Output>,
    ) {
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

    /// The worker gives the attempt back unfinished: re-queued (unless another attempt runs on),
    /// not a failure.
    pub(super) fn released(&mut self, now: Millis, attempt: AttemptId, by: WorkerId, out: &mut Vec<Output>) {
        let Some(Live { task, worker, .. }) = self.close_reported(now, attempt, by, out) else { return };
        out.push(Output::Report { attempt, accepted: true });
        if !self.survives(task, attempt, worker, AttemptEnd::Released, out) {
            self.requeue(task, Some(attempt), Some(worker), out);
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
    pub(super) fn end_attempt(&mut self, attempt: AttemptId) -> Option<Live> {
        let live = self.attempts.remove(&attempt)?;
        if let Some(w) = self.workers.get_mut(&live.worker) {
            w.running.remove(&live.task);
        }
        Some(live)
    }

    /// `attempt` of `task` has just ended (out of the indexes); if another attempt of the task is
    /// still live, the task runs on with it (the oldest backup takes over as the first attempt),
    /// the store is told to close `attempt` with `outcome`, and the answer is true.
    pub(super) fn survives(
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

    /// What a worker says it runs against what the core thinks it runs (see [`Input::Reconcile`]).
    pub(super) fn reconcile(
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
}
