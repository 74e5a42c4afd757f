//! The shell around the [`Driver`]: one lock over the driver and the sessions' queues, the clock,
//! the store, the artifact directory and the timer. Every handler runs the driver through
//! [`Shared::act`], which reads the clock, answers what the driver asks of the disk, and carries
//! out the [`Effects`] it returns: derived files written, messages queued (a session that cannot
//! take one is lost, and the driver told), changes committed, then acknowledgements and the rest
//! sent from the commit callback.

use super::restore::Restore;
use super::{
    AfterCommit, Counters, Driver, Effects, FromWorker, Now, PartialCheckpoint, Registered, Registration,
    ServiceConfig, SessionId, StoredTask, ToWorker, SESSION_QUEUE,
};
use crate::artifacts::{ArtifactDir, ArtifactRef};
use crate::graph::PlannedTask;
use crate::scheduler::{TaskId, WorkerId};
use crate::store::{Change, Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tokio::sync::{mpsc, watch, Notify};

/// A handler panicked while it held the driver; the driver is still usable.
#[derive(Debug)]
pub struct Panicked(pub String);

/// What the lock guards: the driver and the queue of each attached session.
struct Locked {
    driver: Driver,
    queues: HashMap<WorkerId, mpsc::Sender<ToWorker>>,
}

/// The driver behind one lock, the timer's wake-up, the store and the counters: what the gRPC
/// and HTTP handlers share.
pub struct Shared {
    locked: Mutex<Locked>,
    wake: Notify,
    pub(crate) artifacts: ArtifactDir,
    pub(crate) config: ServiceConfig,
    pub(crate) counters: Arc<Counters>,
    pub(super) store: Store,
    started: Instant,
    /// Added to the clock: tests move time forward without sleeping (0 otherwise).
    skew: AtomicU64,
    finished_tx: watch::Sender<bool>,
    finished: watch::Receiver<bool>,
}

impl Shared {
    /// Build the service state from planned tasks and what the store already holds.
    pub fn new(
        config: ServiceConfig,
        store: Store,
        artifacts: ArtifactDir,
        tasks: Vec<PlannedTask>,
        stored: HashMap<TaskId, StoredTask>,
        first_attempt: u64,
        sweep_id: String,
    ) -> Arc<Shared> {
        let counters = Arc::new(Counters::default());
        let started = Instant::now();
        let now = Now { ms: 0, instant: started, wall_ms: wall_ms() };
        let from = Restore {
            config: config.clone(),
            artifacts: artifacts.clone(),
            tasks,
            stored,
            first_attempt,
            sweep_id,
            counters: counters.clone(),
        };
        let (driver, fx) = Driver::restore(now, from);
        let (finished_tx, finished) = watch::channel(driver.sweep_done);
        let shared = Arc::new(Shared {
            locked: Mutex::new(Locked { driver, queues: HashMap::new() }),
            wake: Notify::new(),
            artifacts,
            config,
            counters,
            store,
            started,
            skew: AtomicU64::new(0),
            finished_tx,
            finished,
        });
        let mut locked = shared.lock();
        shared.carry_out(&mut locked, fx);
        drop(locked);
        shared
    }

    /// Run `f` on the driver at this moment and carry out its effects. A panic inside is caught
    /// and reported, and the lock it poisoned is taken over: one broken handler must not take
    /// every later RPC (and the coordinator) down.
    fn act<R>(&self, f: impl FnOnce(&mut Driver, Now, &mut Effects) -> R) -> Result<R, Panicked> {
        let mut locked = self.lock();
        let now = self.now();
        let mut fx = Effects::default();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mut locked.driver, now, &mut fx)));
        // What was decided before a panic is carried out too: the driver's state already holds it.
        self.carry_out(&mut locked, fx);
        let wake = locked.driver.take_wake();
        drop(locked);
        if wake {
            self.wake.notify_one();
        }
        result.map_err(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(panic = %what, "a coordinator handler panicked; the request failed, the coordinator goes on");
            Panicked(what)
        })
    }

    /// Read (or, in tests, adjust) the driver under the lock; a panic is caught as by `act`.
    pub fn with<R>(&self, f: impl FnOnce(&mut Driver) -> R) -> Result<R, Panicked> {
        self.act(|driver, _, _| f(driver))
    }

    fn lock(&self) -> MutexGuard<'_, Locked> {
        self.locked.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now(&self) -> Now {
        let instant = Instant::now();
        let ms = instant.saturating_duration_since(self.started).as_millis() as u64;
        Now { ms: ms + self.skew.load(Ordering::Relaxed), instant, wall_ms: wall_ms() }
    }

    /// Move the driver's clock `ms` forward (tests: a lease timeout passes without sleeping).
    #[cfg(test)]
    pub(crate) fn advance(&self, ms: u64) {
        self.skew.fetch_add(ms, Ordering::Relaxed);
    }

    /// Carry out `fx`, and what the driver decides about sessions that could not take a message.
    fn carry_out(&self, locked: &mut Locked, mut fx: Effects) {
        loop {
            for (digest, bytes) in std::mem::take(&mut fx.files) {
                if let Err(e) = self.artifacts.store_bytes(&bytes) {
                    // The chunks are stored; the report merges them again from the store. A later
                    // stage that takes the maps fails its attempt retryably (its input is missing).
                    tracing::warn!(error = %e, "the merged maps could not be stored as an artifact");
                    fx.changes
                        .retain(|c| !matches!(c, Change::Artifact { digest: d, task_id: None, .. } if *d == digest));
                }
            }
            let mut lost: Vec<(WorkerId, String)> = Vec::new();
            for (worker, message) in std::mem::take(&mut fx.sends) {
                let Some(queue) = locked.queues.get(&worker) else { continue };
                if let Err(e) = queue.try_send(message) {
                    let why = match e {
                        mpsc::error::TrySendError::Full(_) => {
                            format!("its {SESSION_QUEUE} queued messages were not read")
                        }
                        mpsc::error::TrySendError::Closed(_) => "its stream is closed".to_string(),
                    };
                    if !lost.iter().any(|(w, _)| *w == worker) {
                        lost.push((worker, why));
                    }
                }
            }
            self.commit(locked, std::mem::take(&mut fx.changes), std::mem::take(&mut fx.after_commit));
            for worker in std::mem::take(&mut fx.closed) {
                locked.queues.remove(&worker);
            }
            if lost.is_empty() {
                return;
            }
            let now = self.now();
            for (worker, why) in lost {
                locked.driver.session_lost(now, worker, why, &mut fx);
            }
        }
    }

    /// Submit `changes`; once they commit, carry out `after` (with the queues as they are now).
    fn commit(&self, locked: &Locked, changes: Vec<Change>, after: Vec<AfterCommit>) {
        if changes.is_empty() && after.is_empty() {
            return;
        }
        enum Deferred {
            Ack(Option<mpsc::Sender<ToWorker>>, crate::scheduler::AttemptId, bool),
            Forget(Vec<std::path::PathBuf>),
            SweepDone(Vec<mpsc::Sender<ToWorker>>),
            Finished,
        }
        let deferred: Vec<Deferred> = after
            .into_iter()
            .map(|a| match a {
                AfterCommit::Ack { worker, attempt, accepted } => {
                    Deferred::Ack(locked.queues.get(&worker).cloned(), attempt, accepted)
                }
                AfterCommit::Forget(digests) => {
                    Deferred::Forget(digests.iter().map(|d| self.artifacts.path(d)).collect())
                }
                AfterCommit::SweepDone(workers) => {
                    Deferred::SweepDone(workers.iter().filter_map(|w| locked.queues.get(w).cloned()).collect())
                }
                AfterCommit::Finished => Deferred::Finished,
            })
            .collect();
        let finished = self.finished_tx.clone();
        self.store.submit(changes, move |result: Result<(), StoreError>| {
            if let Err(e) = &result {
                tracing::error!(error = %e, "store write failed");
            }
            let committed = result.is_ok();
            for d in deferred {
                match d {
                    Deferred::Ack(queue, attempt, accepted) => {
                        // The session queue is bounded; an ack that does not fit belongs to a
                        // session closed at its next send (the worker re-sends unacknowledged
                        // reports).
                        let sent = queue.is_some_and(|q| {
                            q.try_send(ToWorker::Ack { attempt, accepted: accepted && committed }).is_ok()
                        });
                        if !sent {
                            tracing::debug!(attempt = attempt.0, "acknowledgement not queued: the session is gone or full");
                        }
                    }
                    Deferred::Forget(paths) if committed => {
                        for path in paths {
                            if let Err(e) = std::fs::remove_file(&path) {
                                tracing::debug!(path = %path.display(), error = %e, "superseded checkpoint already gone");
                            }
                        }
                    }
                    Deferred::Forget(_) => {}
                    Deferred::SweepDone(queues) => {
                        for q in queues {
                            let _ = q.try_send(ToWorker::SweepDone);
                        }
                    }
                    Deferred::Finished => {
                        let _ = finished.send(true);
                    }
                }
            }
        });
    }

    /// The digests a message names that are in the artifact directory (the driver accepts a
    /// result or checkpoint only if what it names was uploaded).
    fn stored_digests(&self, message: &FromWorker) -> HashSet<String> {
        let named: Vec<&ArtifactRef> = match message {
            FromWorker::Result { outputs, .. } => outputs.iter().collect(),
            FromWorker::Checkpoint { artifact: Some(a), .. } => vec![a],
            FromWorker::Heartbeat { .. }
            | FromWorker::LeaseRequest { .. }
            | FromWorker::Metrics { .. }
            | FromWorker::Failure { .. }
            | FromWorker::Release { .. }
            | FromWorker::Checkpoint { artifact: None, .. } => Vec::new(),
        };
        named.into_iter().filter(|a| self.artifacts.contains(&a.digest)).map(|a| a.digest.clone()).collect()
    }

    /// A worker registers (`Register`).
    pub fn register(&self, r: Registration) -> Result<Registered, Panicked> {
        // A key nobody else can guess; without an OS random source none can be made, and an
        // empty key opens no session.
        let key = crate::secret::random_hex(16).unwrap_or_default();
        self.act(|d, now, fx| d.register(now, r, key, fx))
    }

    /// Attach a session whose messages go to `queue`.
    pub fn attach(
        &self,
        worker: &str,
        key: &str,
        queue: mpsc::Sender<ToWorker>,
    ) -> Result<Result<SessionId, String>, Panicked> {
        let mut locked = self.lock();
        let attached = locked.driver.attach(worker, key);
        if let Ok(session) = &attached {
            locked.queues.insert(session.worker, queue);
        }
        Ok(attached)
    }

    /// One message of `session`; false when the session is no longer current.
    pub fn on_message(&self, session: SessionId, message: FromWorker) -> Result<bool, Panicked> {
        let stored = self.stored_digests(&message);
        self.act(|d, now, fx| d.on_message(now, session, message, &stored, fx))
    }

    /// The session's stream ended.
    pub fn detach(&self, session: SessionId) -> Result<(), Panicked> {
        self.act(|d, now, fx| d.detach(now, session, fx))
    }

    /// End `session` for `why`.
    pub fn close_session(&self, session: SessionId, why: String) -> Result<(), Panicked> {
        self.act(|d, now, fx| d.close_session(now, session, why, fx))
    }

    /// Let points be added to this sweep ([`crate::search`]), after the `points` planned.
    pub fn allow_growth(&self, planner: crate::kinds::Planner, points: usize) {
        self.lock().driver.allow_growth(planner, points);
    }

    /// Add `points` to the running sweep (a search strategy's); returns their tasks' ids. A
    /// finished sweep is unfinished again until they end.
    pub fn add_points(&self, points: &[freqsweep_common::spec::GridPoint]) -> Result<Vec<TaskId>, String> {
        let added = self.act(|d, now, fx| d.add_points(now, points, fx)).map_err(|p| p.0)??;
        if !self.lock().driver.sweep_done {
            self.finished_tx.send_replace(false);
        }
        Ok(added)
    }

    /// The token HTTP and gRPC calls must carry, if any.
    pub fn token(&self) -> Option<&str> {
        self.config.token.as_deref()
    }

    /// Everything `status`, `/metrics` and the dashboard show, taken under one lock.
    pub fn snapshot(&self) -> crate::snapshot::Snapshot {
        let stats = self.store.stats();
        self.lock().driver.view().snapshot(stats, Instant::now())
    }

    /// [`Shared::snapshot`], with a panic while taking it caught (for the `Status` RPC).
    pub fn try_snapshot(&self) -> Result<crate::snapshot::Snapshot, Panicked> {
        let stats = self.store.stats();
        self.with(|d| d.view().snapshot(stats, Instant::now()))
    }

    /// The sweep's grid point ids, by index (the dashboard names points with them).
    pub fn set_point_ids(&self, ids: Vec<String>) {
        self.lock().driver.set_point_ids(ids);
    }

    /// Every grid point: its training state and how many of its maps are complete.
    pub fn live_points(&self) -> Vec<crate::live::PointSummary> {
        self.lock().driver.view().live_points()
    }

    /// Point `index` as merged now, with its F1 curves from the store; `None` outside the sweep.
    pub fn live_point(&self, index: usize) -> Result<Option<crate::live::PointDetail>, StoreError> {
        let detail = self.lock().driver.view().live_point(index);
        let Some(mut detail) = detail else { return Ok(None) };
        // Outside the lock: reading the curves must not hold up the workers' reports.
        detail.read_curves(&self.store.reader()?)?;
        Ok(Some(detail))
    }

    /// The stored files of the sweep's given models (name → artifact), which leases of their
    /// analyses carry as the input `model`.
    pub fn set_given_models(&self, given: impl IntoIterator<Item = (String, ArtifactRef)>) {
        self.lock().driver.set_given_models(given);
    }

    /// The partial checkpoints of unfinished tasks (from the store, on resume), and the
    /// analyses waiting for an epoch checkpoint stored before a restart.
    pub fn restore_partials(&self, partials: impl IntoIterator<Item = (TaskId, PartialCheckpoint)>) {
        let _ = self.act(|d, now, fx| d.restore_partials(now, partials, fx));
    }

    /// Resolves when every task is terminal.
    pub fn finished(&self) -> watch::Receiver<bool> {
        self.finished.clone()
    }

    /// Counts by state (for `status` and the end-of-run summary).
    pub fn counts(&self) -> Vec<(String, usize)> {
        let locked = self.lock();
        let counts = locked.driver.scheduler.counts();
        counts.iter().filter(|(_, c)| **c > 0).map(|(s, c)| (s.as_str().to_string(), *c)).collect()
    }

    /// Process the deadlines due now (worker expiry, backoff ends).
    pub fn tick(&self) {
        let _ = self.act(|d, now, fx| d.tick(now, fx));
    }

    /// The timer: sleeps until the core's next deadline and ticks then; woken early when a
    /// handler makes an earlier deadline (never a fixed poll).
    pub async fn run_timer(self: Arc<Self>) {
        loop {
            let next = self.with(|d| d.arm()).ok().flatten();
            let skew = self.skew.load(Ordering::Relaxed);
            let sleep = async {
                match next {
                    Some(ms) => {
                        let at = self.started + std::time::Duration::from_millis(ms.saturating_sub(skew));
                        tokio::time::sleep_until(at.into()).await
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = sleep => self.tick(),
                _ = self.wake.notified() => {}
            }
        }
    }
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
