//! One scheduler input and what its outputs mean: leases (with the inputs each kind takes),
//! transitions (counted by kind, stored), attempts ended, workers expired, the sweep finished.

use super::{worker_name, AfterCommit, Driver, Effects, Now, ToWorker};
use crate::artifacts::ArtifactRef;
use crate::graph::PlannedTask;
use crate::kinds;
use crate::scheduler::{AttemptEnd, AttemptId, Input, Output, StateName, TaskId, WorkerId};
use crate::store::Change;
use freqsweep_common::task::CHECKPOINT_OUTPUT;
use std::sync::atomic::Ordering;

/// The report an input answers: acknowledged once its changes commit; `forget` holds the files
/// it superseded, deleted then if the core accepted it.
pub(super) struct Reply {
    pub worker: WorkerId,
    pub attempt: AttemptId,
    pub forget: Vec<String>,
}

impl Reply {
    pub(super) fn to(worker: WorkerId, attempt: AttemptId) -> Reply {
        Reply { worker, attempt, forget: Vec::new() }
    }
}

impl Driver {
    /// Feed one input to the scheduler and turn its outputs into effects; `reply` is the report
    /// the input answers (acknowledged once the changes commit, its superseded files forgotten
    /// if the core accepted it).
    pub(super) fn drive(&mut self, now: Now, input: Input, extra: Vec<Change>, reply: Option<Reply>, fx: &mut Effects) {
        let outputs = self.scheduler.handle(now.ms, input);
        fx.changes.extend(extra);
        let mut accepted = None;
        let mut sweep_done_to = None;
        // The attempt an `Output::Backup` announced; its lease comes next.
        let mut backup = None;
        for output in outputs {
            match output {
                Output::Lease { worker, task, attempt } => {
                    let is_backup = backup.take() == Some(attempt);
                    let message = self.lease(now, worker, task, attempt, is_backup, &mut fx.changes);
                    fx.send(worker, message);
                }
                Output::NoWork { worker, retry_after } => {
                    let message = if self.sweep_done { ToWorker::SweepDone } else { ToWorker::NoWork { retry_after } };
                    fx.send(worker, message);
                }
                Output::Cancel { worker, attempt, reason } => fx.send(worker, ToWorker::Cancel { attempt, reason }),
                Output::CancelStale { worker, attempt } => {
                    tracing::info!(worker = %worker_name(worker), attempt = attempt.0, "worker runs an attempt that is no longer its own; cancelling it");
                    let reason = "the coordinator no longer holds this attempt for this worker".to_string();
                    fx.send(worker, ToWorker::Cancel { attempt, reason });
                }
                Output::Report { accepted: a, .. } => accepted = Some(a),
                Output::Transition { task, from, to, attempt, worker } => {
                    self.transition(now, task, from, to, attempt, worker, &mut fx.changes)
                }
                Output::Backup(b) => {
                    self.log_backup(&b);
                    backup = Some(b.attempt);
                }
                Output::AttemptEnded { task, attempt, worker, outcome } => {
                    self.attempt_ended(now, task, attempt, worker, outcome, &mut fx.changes)
                }
                Output::DiedRunning { task, attempt, worker, times, failed } => {
                    let key = &self.tasks[&task].key;
                    let max = self.config.scheduler.max_attempts;
                    let error = format!(
                        "its worker {} died, was killed or went silent while running it ({times} of {max} attempts){}",
                        worker_name(worker),
                        if failed { "; a task that ends every worker it runs on is failed" } else { "; re-queued" }
                    );
                    tracing::warn!(task = %key, attempt = attempt.0, worker = %worker_name(worker), times, failed, "attempt lost with its worker");
                    self.note_failure(now, Some(task), Some(attempt.0), worker_name(worker), error.clone());
                    fx.changes.push(Change::TaskError { id: task.0, error });
                }
                Output::WorkerExcluded { worker, failures, for_ms } => {
                    tracing::warn!(
                        worker = %worker_name(worker),
                        failures,
                        seconds = for_ms as f64 / 1000.0,
                        "worker failed its last attempts in a row; no leases for it for a while"
                    );
                }
                Output::WorkerExpired { worker } => self.expire(now, worker, fx),
                Output::AddRefused { task, refusal } => {
                    tracing::error!(task = task.0, ?refusal, "added tasks refused; none of the batch was added");
                    self.add_refused = Some(format!("task {}: {refusal:?}", task.0));
                }
                Output::SweepFinished => {
                    self.sweep_done = true;
                    // Told once the changes commit, after the last acknowledgement.
                    sweep_done_to = Some(self.sessions.keys().copied().collect());
                    tracing::info!(
                        counts = ?self.scheduler.counts(),
                        seconds = now.instant.saturating_duration_since(self.started).as_secs_f64(),
                        artifact_received_bytes = self.counters.artifact_bytes_received.load(Ordering::Relaxed),
                        artifact_sent_bytes = self.counters.artifact_bytes_sent.load(Ordering::Relaxed),
                        "sweep finished"
                    );
                }
            }
        }
        if let Some(reply) = reply {
            let accepted = accepted.unwrap_or(true);
            if accepted && !reply.forget.is_empty() {
                fx.after_commit.push(AfterCommit::Forget(reply.forget));
            }
            fx.after_commit.push(AfterCommit::Ack { worker: reply.worker, attempt: reply.attempt, accepted });
        }
        if let Some(workers) = sweep_done_to {
            fx.after_commit.push(AfterCommit::SweepDone(workers));
        }
        if self.sweep_done {
            fx.after_commit.push(AfterCommit::Finished);
        }
    }

    /// A worker that sent nothing within the lease timeout: its session is closed (it is told
    /// so, in case it was only paused, and registers again when it wakes).
    fn expire(&mut self, now: Now, worker: WorkerId, fx: &mut Effects) {
        tracing::warn!(worker = %worker_name(worker), "worker expired (no message within the lease timeout); its session is closed");
        self.workers_expired += 1;
        let seconds = self.config.scheduler.lease_timeout / 1000;
        let error = format!("worker expired: no message for {seconds} s; its tasks were re-queued");
        self.note_failure(now, None, None, worker_name(worker), error);
        let reason = format!("session expired: no message for {seconds} s; register again");
        fx.send(worker, ToWorker::Closed { reason });
        if self.sessions.remove(&worker).is_some() {
            fx.closed.push(worker);
        }
        self.workers.remove(&worker);
        fx.changes.push(Change::WorkerLeft { id: worker_name(worker), now_ms: now.wall_ms });
    }

    fn log_backup(&self, b: &crate::scheduler::Backup) {
        let planned = &self.tasks[&b.task];
        tracing::info!(
            task = %planned.key,
            attempt = b.attempt.0,
            worker = %worker_name(b.worker),
            straggler = b.straggler.0,
            straggler_worker = %worker_name(b.straggler_worker),
            class = %b.class,
            units = planned.cost.units,
            rate = b.rate,
            straggler_rate = b.straggler_rate,
            expected_s = b.expected_ms as f64 / 1000.0,
            straggler_remaining_s = b.remaining_ms as f64 / 1000.0,
            "backup attempt started"
        );
    }

    /// The lease message of a new attempt: the task, the inputs its kind takes, and (for a kind
    /// that resumes) the newest partial checkpoint of an earlier attempt.
    fn lease(
        &mut self,
        now: Now,
        worker: WorkerId,
        task: TaskId,
        attempt: AttemptId,
        is_backup: bool,
        changes: &mut Vec<Change>,
    ) -> ToWorker {
        let planned = &self.tasks[&task];
        let kind = planned.kind();
        let mut inputs = kinds::lease_inputs(planned, &self.outputs, &self.derived, &self.given);
        let mut resumes = None;
        if kinds::resumes_from_partial_checkpoints(kind) {
            let can_resume = self.workers.get(&worker).is_some_and(|w| w.resumes_history);
            if let Some(partial) = self.partials.get(&task).filter(|_| can_resume) {
                inputs.push(ArtifactRef { name: CHECKPOINT_OUTPUT.to_string(), ..partial.artifact.clone() });
                resumes = Some(partial.epochs_done);
            }
        }
        let message = ToWorker::Lease {
            task,
            attempt,
            task_json: serde_json::to_string(&planned.spec).expect("task specs serialise"),
            lease_timeout_ms: self.config.scheduler.lease_timeout.min(u64::from(u32::MAX)) as u32,
            inputs,
        };
        self.lease_started.insert(attempt, now.instant);
        self.attempts.started += 1;
        if !self.leased_before.insert(task) && !is_backup {
            self.attempts.retried += 1;
        }
        if let Some(w) = self.workers.get_mut(&worker) {
            w.leases += 1;
        }
        changes.push(Change::AttemptStarted {
            id: attempt.0,
            task_id: task.0,
            worker: worker_name(worker),
            now_ms: now.wall_ms,
            backup: is_backup,
        });
        // Not for a backup: the attempt it races is live and its points may be the record; the
        // race's loser loses its points when it ends.
        if kinds::attempts_report_whole_history(kind) && !is_backup {
            // This attempt reports the whole history (a resumed one re-sends its checkpoint's
            // points): earlier attempts' points would be duplicates.
            changes.push(Change::SupersedeMetrics { task_id: task.0, attempt_id: attempt.0 });
        }
        if let Some(epochs_done) = resumes {
            tracing::info!(task = %self.tasks[&task].key, attempt = attempt.0, worker = %worker_name(worker), epochs_done, "resuming from a partial checkpoint");
            changes.push(Change::AttemptResumed { id: attempt.0, epochs_done });
        }
        message
    }

    #[allow(clippy::too_many_arguments)]
    fn transition(
        &mut self,
        now: Now,
        task: TaskId,
        from: StateName,
        to: StateName,
        attempt: Option<AttemptId>,
        worker: Option<WorkerId>,
        changes: &mut Vec<Change>,
    ) {
        let kind = self.tasks[&task].kind();
        if let Some(c) = self.kind_counts.get_mut(&(kind, from)) {
            *c = c.saturating_sub(1);
        }
        *self.kind_counts.entry((kind, to)).or_default() += 1;
        if from == StateName::Running {
            match to {
                StateName::Done => {
                    self.attempts.completed += 1;
                    if let Some(w) = worker.and_then(|w| self.workers.get_mut(&w)) {
                        w.completed += 1;
                    }
                }
                StateName::Backoff | StateName::Failed => self.attempts.failed += 1,
                // Cancelled while running is neither a failure nor lost work.
                StateName::Cancelled => {}
                StateName::Blocked | StateName::Ready | StateName::Running => self.attempts.lost += 1,
            }
        }
        let seconds = attempt
            .filter(|_| from == StateName::Running)
            .and_then(|a| self.lease_started.remove(&a))
            .map(|t| now.instant.saturating_duration_since(t).as_secs_f64());
        log_transition(&self.tasks[&task], from, to, attempt, worker, seconds);
        changes.push(Change::TaskState {
            id: task.0,
            state: to.as_str().to_string(),
            attempts: self.scheduler.failures(task),
            now_ms: now.wall_ms,
        });
        if let Some(a) = attempt.filter(|_| from == StateName::Running) {
            changes.push(Change::AttemptEnded { id: a.0, outcome: to.as_str().to_string(), now_ms: now.wall_ms });
        }
    }

    fn attempt_ended(
        &mut self,
        now: Now,
        task: TaskId,
        attempt: AttemptId,
        worker: WorkerId,
        outcome: AttemptEnd,
        changes: &mut Vec<Change>,
    ) {
        let planned = &self.tasks[&task];
        let seconds =
            self.lease_started.remove(&attempt).map(|t| now.instant.saturating_duration_since(t).as_secs_f64());
        let class = &planned.cost.class;
        let rate = |w| self.scheduler.throughput(w, class).or(self.scheduler.fleet_throughput(class));
        match outcome {
            AttemptEnd::Superseded { winner, winner_worker } => tracing::info!(
                task = %planned.key,
                attempt = attempt.0,
                worker = %worker_name(worker),
                winner = winner.0,
                winner_worker = %worker_name(winner_worker),
                class = %class,
                rate = ?rate(worker),
                winner_rate = ?rate(winner_worker),
                ?seconds,
                "attempt lost the race and is cancelled"
            ),
            AttemptEnd::Cancelled | AttemptEnd::Failed | AttemptEnd::Released | AttemptEnd::Lost => tracing::info!(
                task = %planned.key,
                attempt = attempt.0,
                worker = %worker_name(worker),
                outcome = outcome.as_str(),
                ?seconds,
                "attempt ended; another attempt of the task runs on"
            ),
        }
        changes.push(Change::AttemptEnded { id: attempt.0, outcome: outcome.as_str().into(), now_ms: now.wall_ms });
        // Another attempt of the task finished or runs on, reporting the whole history itself:
        // this one's points would be duplicates.
        changes.push(Change::DiscardMetrics { attempt_id: attempt.0 });
    }
}

fn log_transition(
    task: &PlannedTask,
    from: StateName,
    to: StateName,
    attempt: Option<AttemptId>,
    worker: Option<WorkerId>,
    seconds: Option<f64>,
) {
    let attempt = attempt.map(|a| a.0);
    let worker = worker.map(worker_name);
    match to {
        StateName::Failed => {
            tracing::warn!(task = %task.key, id = task.id.0, ?attempt, ?worker, ?seconds, from = from.as_str(), "task failed")
        }
        _ => tracing::info!(
            task = %task.key,
            id = task.id.0,
            ?attempt,
            ?worker,
            ?seconds,
            from = from.as_str(),
            to = to.as_str(),
            "task"
        ),
    }
}
