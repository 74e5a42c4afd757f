//! The one picture of progress: the `Status` RPC, `GET /metrics` and `GET /api/status` (this
//! struct as JSON) are all rendered from [`Snapshot`], taken under the driver's lock so the numbers
//! agree with each other.

use crate::driver::{worker_name, View};
use crate::scheduler::{StateName, TaskId, WorkerId};
use crate::store::StoreStats;
use freqsweep_common::task::TaskKind;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// How many failures the snapshot keeps (the dashboard's "recent failures").
pub(crate) const RECENT_FAILURES: usize = 20;

/// A failed attempt or a worker lost while holding work, kept for the dashboard.
pub(crate) struct FailureNote {
    pub task: Option<TaskId>,
    pub attempt: Option<u64>,
    pub worker: String,
    pub error: String,
    pub at: Instant,
}

/// Counters since this coordinator process started (Prometheus counters reset on restart too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct AttemptCounts {
    /// Leases handed out.
    pub started: u64,
    /// Attempts whose result was accepted.
    pub completed: u64,
    /// Attempts that reported a failure (retryable or not).
    pub failed: u64,
    /// Attempts that ended without a report: released (drain), worker left or expired.
    pub lost: u64,
    /// Leases of a task that had been leased before (after a failure or a lost attempt).
    pub retried: u64,
}

/// One consistent picture of the coordinator: the `Status` RPC, `GET /metrics` and
/// `GET /api/status` (this struct as JSON) are all rendered from it.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub sweep: String,
    pub uptime_seconds: f64,
    /// Every task is terminal.
    pub finished: bool,
    pub total_tasks: u64,
    /// Done, failed or cancelled.
    pub terminal_tasks: u64,
    /// `terminal_tasks / total_tasks` (1 for an empty sweep).
    pub progress: f64,
    /// Remaining tasks at the rate tasks became terminal since this process started; `None`
    /// until one has.
    pub eta_seconds: Option<f64>,
    /// Every state, zeros included.
    pub tasks_by_state: BTreeMap<String, u64>,
    /// Kind (`train`, `heatmap`) → state → count, zeros included.
    pub tasks_by_kind: BTreeMap<String, BTreeMap<String, u64>>,
    pub attempts: AttemptCounts,
    /// Connected workers, by id.
    pub workers: Vec<WorkerSnapshot>,
    pub workers_joined: u64,
    pub workers_expired: u64,
    /// Metric points received from workers (including batches later found to be duplicates).
    pub metric_points: u64,
    /// Bytes of artifacts uploaded by workers and stored (already-stored digests excluded).
    pub artifact_bytes_received: u64,
    /// Bytes of artifacts streamed to workers.
    pub artifact_bytes_sent: u64,
    pub store: StoreStats,
    /// The most recent failed attempts and lost workers, oldest first.
    pub recent_failures: Vec<FailureSnapshot>,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkerSnapshot {
    pub id: String,
    pub hostname: String,
    pub device: String,
    pub running: Vec<RunningTask>,
    pub leases: u64,
    pub completed: u64,
    /// As the worker reports it in heartbeats (items per second of its current task).
    pub throughput: f64,
    pub last_seen_seconds: f64,
    pub connected_seconds: f64,
    /// The scheduler's measured throughput per task kind (`heatmap/resnet18` → work units per
    /// second), what backup decisions use.
    pub measured: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunningTask {
    pub id: u64,
    pub key: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct FailureSnapshot {
    /// Task key (`None` for a worker lost while idle).
    pub task: Option<String>,
    pub attempt: Option<u64>,
    pub worker: String,
    pub error: String,
    pub age_seconds: f64,
    /// The task has failed for good (no attempts left or not retryable).
    pub task_failed: bool,
}

impl View<'_> {
    /// Everything `status`, `/metrics` and the dashboard show, at `now`.
    pub fn snapshot(&self, store: StoreStats, now: Instant) -> Snapshot {
        let core = self;
        let counts = core.scheduler.counts();
        let all_states = StateName::ALL;
        let tasks_by_state =
            all_states.iter().map(|s| (s.as_str().to_string(), counts.get(s).copied().unwrap_or(0) as u64)).collect();
        let tasks_by_kind = TaskKind::ALL
            .iter()
            .map(|k| {
                let by_state = all_states
                    .iter()
                    .map(|s| (s.as_str().to_string(), core.kind_counts.get(&(*k, *s)).copied().unwrap_or(0)))
                    .collect();
                (k.as_str().to_string(), by_state)
            })
            .collect();
        // The per-kind counts are kept incrementally; they must always add up to the core's.
        debug_assert!(
            all_states.iter().all(|s| {
                let by_kind: u64 = core.kind_counts.iter().filter(|((_, st), _)| st == s).map(|(_, c)| c).sum();
                by_kind == counts.get(s).copied().unwrap_or(0) as u64
            }),
            "tasks by kind drifted from the scheduler's counts"
        );
        let total = core.scheduler.len();
        let terminal: usize = counts.iter().filter(|(s, _)| s.is_terminal()).map(|(_, c)| c).sum();
        let uptime = now.saturating_duration_since(self.started).as_secs_f64();
        let remaining = total - terminal;
        let since_start = terminal.saturating_sub(core.terminal_at_start);
        let eta_seconds = if remaining == 0 {
            Some(0.0)
        } else if since_start > 0 {
            Some(uptime / since_start as f64 * remaining as f64)
        } else {
            None
        };
        let mut ids: Vec<&WorkerId> = core.workers.keys().collect();
        ids.sort();
        let workers = ids
            .into_iter()
            .map(|id| {
                let w = &core.workers[id];
                let running = core
                    .scheduler
                    .running_on(*id)
                    .into_iter()
                    .map(|t| RunningTask { id: t.0, key: core.tasks[&t].key.clone() })
                    .collect();
                WorkerSnapshot {
                    id: worker_name(*id),
                    hostname: w.hostname.clone(),
                    device: w.device.clone(),
                    running,
                    leases: w.leases,
                    completed: w.completed,
                    throughput: w.throughput,
                    last_seen_seconds: now.saturating_duration_since(w.last_seen).as_secs_f64(),
                    connected_seconds: now.saturating_duration_since(w.joined).as_secs_f64(),
                    measured: core
                        .scheduler
                        .throughputs(*id)
                        .into_iter()
                        .map(|(class, rate)| (class.to_string(), rate))
                        .collect(),
                }
            })
            .collect();
        let recent_failures = core
            .failures
            .iter()
            .map(|f| FailureSnapshot {
                task: f.task.map(|t| core.tasks[&t].key.clone()),
                attempt: f.attempt,
                worker: f.worker.clone(),
                error: f.error.clone(),
                age_seconds: now.saturating_duration_since(f.at).as_secs_f64(),
                task_failed: f.task.and_then(|t| core.scheduler.state(t)) == Some(StateName::Failed),
            })
            .collect();
        Snapshot {
            sweep: self.sweep_id.to_string(),
            uptime_seconds: uptime,
            finished: core.sweep_done,
            total_tasks: total as u64,
            terminal_tasks: terminal as u64,
            progress: if total == 0 { 1.0 } else { terminal as f64 / total as f64 },
            eta_seconds,
            tasks_by_state,
            tasks_by_kind,
            attempts: core.attempts,
            workers,
            workers_joined: core.workers_joined,
            workers_expired: core.workers_expired,
            metric_points: core.metric_points,
            artifact_bytes_received: self.counters.artifact_bytes_received.load(Ordering::Relaxed),
            artifact_bytes_sent: self.counters.artifact_bytes_sent.load(Ordering::Relaxed),
            store,
            recent_failures,
        }
    }
}
