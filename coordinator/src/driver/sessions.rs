//! Sessions: a worker registers (a fresh id and a secret key), attaches its one session, sends
//! messages on it and leaves; a session the shell could not deliver to is lost like a worker
//! that left.

use super::drive::Reply;
use super::WorkerInfo;
use super::{
    parse_worker, worker_name, Driver, Effects, FromWorker, Now, Registered, Registration, SessionId, ToWorker,
};
use crate::kinds;
use crate::scheduler::{AttemptId, Input, WorkerId};
use crate::store::Change;
use std::collections::HashSet;

impl Driver {
    /// A worker joins: a fresh id and session key (ids are never reused, so none can be claimed).
    /// `session_key` comes from the shell's random source (empty without one: then no session
    /// can be opened).
    pub fn register(&mut self, now: Now, r: Registration, session_key: String, fx: &mut Effects) -> Registered {
        let worker = WorkerId(self.next_worker);
        self.next_worker += 1;
        let cached: Vec<String> = r.cached_artifacts.iter().filter_map(|d| self.digest_keys.get(d).cloned()).collect();
        tracing::info!(worker = %worker_name(worker), hostname = %r.hostname, device = %r.device, version = %r.version, "worker joined");
        self.workers.insert(
            worker,
            WorkerInfo {
                hostname: r.hostname.clone(),
                device: r.device.clone(),
                joined: now.instant,
                last_seen: now.instant,
                throughput: 0.0,
                leases: 0,
                completed: 0,
                resumes_history: r.resumes_history,
                session_key: session_key.clone(),
            },
        );
        self.workers_joined += 1;
        let change = Change::WorkerJoined {
            id: worker_name(worker),
            hostname: r.hostname,
            device: r.device,
            now_ms: now.wall_ms,
        };
        self.drive(now, Input::WorkerJoined { worker, cached }, vec![change], None, fx);
        Registered {
            worker,
            session_key,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            lease_timeout_ms: self.config.scheduler.lease_timeout.min(u64::from(u32::MAX)) as u32,
            sweep_id: self.sweep_id.clone(),
        }
    }

    /// Attach a session to a registered worker. Refused for an unknown (or expired) id, a wrong
    /// key, or an id that already has a session: a worker id cannot be taken over.
    pub fn attach(&mut self, worker_name: &str, key: &str) -> Result<SessionId, String> {
        let worker = parse_worker(worker_name).ok_or_else(|| format!("{worker_name:?} is not a worker id"))?;
        let info = self.workers.get(&worker).ok_or("unknown worker id: register first")?;
        if info.session_key.is_empty() || !crate::secret::constant_time_eq(info.session_key.as_bytes(), key.as_bytes())
        {
            return Err(format!("wrong session key for {worker_name}: register first"));
        }
        if self.sessions.contains_key(&worker) {
            return Err(format!("{worker_name} already has a session"));
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        self.sessions.insert(worker, serial);
        Ok(SessionId { worker, serial })
    }

    /// The session's stream ended: the worker left (unless the session was already dropped).
    pub fn detach(&mut self, now: Now, session: SessionId, fx: &mut Effects) {
        if !self.is_current(session) {
            return;
        }
        let worker = session.worker;
        self.sessions.remove(&worker);
        fx.closed.push(worker);
        if self.workers.remove(&worker).is_some() {
            tracing::info!(worker = %worker_name(worker), "worker left");
            let change = Change::WorkerLeft { id: worker_name(worker), now_ms: now.wall_ms };
            self.drive(now, Input::WorkerLeft { worker }, vec![change], None, fx);
        }
    }

    /// End `session` for `why` (told to the worker as its stream's status, logged, noted): its
    /// worker leaves as by [`Driver::detach`].
    pub fn close_session(&mut self, now: Now, session: SessionId, why: String, fx: &mut Effects) {
        if !self.is_current(session) {
            return;
        }
        tracing::warn!(worker = %worker_name(session.worker), reason = %why, "session closed");
        self.note_failure(now, None, None, worker_name(session.worker), why.clone());
        fx.send(session.worker, ToWorker::Closed { reason: why });
        self.detach(now, session, fx);
    }

    /// A message could not be queued for `worker`'s session (`why`: it does not read, or its
    /// stream is closed): the session is closed now, like a worker that left, and its attempts
    /// are re-queued.
    pub fn session_lost(&mut self, now: Now, worker: WorkerId, why: String, fx: &mut Effects) {
        if self.sessions.remove(&worker).is_none() {
            return;
        }
        fx.closed.push(worker);
        tracing::warn!(worker = %worker_name(worker), why = %why, "session closed: a message could not be delivered; its attempts are re-queued");
        self.note_failure(now, None, None, worker_name(worker), format!("session closed: {why}"));
        if self.workers.remove(&worker).is_some() {
            let change = Change::WorkerLeft { id: worker_name(worker), now_ms: now.wall_ms };
            self.drive(now, Input::WorkerLeft { worker }, vec![change], None, fx);
        }
    }

    pub(crate) fn is_current(&self, session: SessionId) -> bool {
        self.sessions.get(&session.worker).is_some_and(|&serial| serial == session.serial)
    }

    /// One message of `session`; `stored` holds the digests among those it names that the shell
    /// found in the artifact directory. False when the session is no longer current (dropped
    /// after an expiry, or closed for not reading): the shell then ends the stream and the worker
    /// registers again; the message is not processed.
    pub fn on_message(
        &mut self,
        now: Now,
        session: SessionId,
        message: FromWorker,
        stored: &HashSet<String>,
        fx: &mut Effects,
    ) -> bool {
        if !self.is_current(session) {
            return false;
        }
        let worker = session.worker;
        if let Some(info) = self.workers.get_mut(&worker) {
            info.last_seen = now.instant;
        }
        match message {
            FromWorker::Heartbeat { running, newest_lease, throughput } => {
                if let Some(info) = self.workers.get_mut(&worker) {
                    info.throughput = throughput;
                }
                self.drive(now, Input::Reconcile { worker, running, seen_up_to: newest_lease }, Vec::new(), None, fx);
            }
            FromWorker::LeaseRequest { slots } => {
                self.drive(now, Input::LeaseRequest { worker, slots: slots.max(1) }, Vec::new(), None, fx);
            }
            FromWorker::Metrics { attempt, seq, points } => self.metrics(now, worker, attempt, seq, points, fx),
            FromWorker::Result { attempt, result_json, outputs } => {
                self.result(now, worker, attempt, result_json, outputs, stored, fx)
            }
            FromWorker::Failure { attempt, error, retryable } => {
                let task = self.owned(attempt, worker);
                let changes =
                    task.map(|t| vec![Change::TaskError { id: t.0, error: error.clone() }]).unwrap_or_default();
                if let Some(t) = task {
                    tracing::warn!(task = %self.tasks[&t].key, attempt = attempt.0, retryable, error = %error, "attempt failed");
                    self.note_failure(now, Some(t), Some(attempt.0), worker_name(worker), error.clone());
                }
                let input = Input::Failed { attempt, by: worker, error, retryable };
                self.drive(now, input, changes, Some(Reply::to(worker, attempt)), fx);
            }
            FromWorker::Release { attempt, reason } => {
                tracing::info!(worker = %worker_name(worker), attempt = attempt.0, reason = %reason, "lease released");
                let input = Input::Released { attempt, by: worker };
                self.drive(now, input, Vec::new(), Some(Reply::to(worker, attempt)), fx);
            }
            FromWorker::Checkpoint { attempt, artifact, epochs_done } => {
                self.checkpoint_saved(now, worker, attempt, artifact, epochs_done, stored, fx)
            }
        }
        true
    }

    /// A metric batch: stored only from the attempt's own worker and only if its kind produces
    /// such points; anything else counts as a heartbeat.
    fn metrics(
        &mut self,
        now: Now,
        worker: WorkerId,
        attempt: AttemptId,
        seq: u64,
        points: Vec<freqsweep_common::task::MetricPoint>,
        fx: &mut Effects,
    ) {
        let heartbeat = Input::Heartbeat { worker };
        // A stale attempt's points are dropped.
        let Some(task) = self.owned(attempt, worker) else {
            return self.drive(now, heartbeat, Vec::new(), None, fx);
        };
        if let Err(why) = kinds::check_metrics(&self.tasks[&task], &points) {
            // Not stored: a broken or forged batch must not reach the results.
            tracing::warn!(task = %self.tasks[&task].key, attempt = attempt.0, why = %why, "metric batch refused");
            let error = format!("metric batch refused: {why}");
            self.note_failure(now, Some(task), Some(attempt.0), worker_name(worker), error);
            return self.drive(now, heartbeat, Vec::new(), None, fx);
        }
        self.metric_points += points.len() as u64;
        let change = Change::Metrics { task_id: task.0, attempt_id: attempt.0, seq, points };
        self.drive(now, heartbeat, vec![change], None, fx);
    }

    /// Periodic deadline processing (worker expiry, backoff ends).
    pub fn tick(&mut self, now: Now, fx: &mut Effects) {
        self.drive(now, Input::Tick, Vec::new(), None, fx);
    }
}
