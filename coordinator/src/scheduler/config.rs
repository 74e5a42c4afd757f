//! The scheduler's tunables: timeouts, retry bounds, backoff and the speculation policy.

use super::Millis;

/// Timeouts, retry bounds and backoff of the scheduler.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// A worker silent for this long is dead.
    pub lease_timeout: Millis,
    /// Attempts per task that may end badly: failures, and attempts whose worker died while
    /// running them (releases, backups and leases lost in transit do not count).
    pub max_attempts: u32,
    /// Wait after the first retryable failure; doubles with each further one …
    pub backoff_base: Millis,
    /// … up to this.
    pub backoff_max: Millis,
    /// What `NoWork` tells an idle worker.
    pub idle_retry: Millis,
    /// Live attempts one worker may hold at once (a `LeaseRequest`'s slots are capped by it): one
    /// client cannot take every ready task.
    pub max_leases_per_worker: u32,
    /// An attempt a worker's heartbeat does not list, although its lease was sent this long ago,
    /// is taken as lost (the lease or its report never arrived) and re-queued.
    pub reconcile_grace: Millis,
    /// A worker whose last this-many reports were all failures gets no leases for a while
    /// (`backoff_delay` of the failures beyond it): a worker that fails every task at once — a
    /// full disk, a broken GPU — would otherwise use up every task's attempts in seconds.
    /// A completion ends it. 0 turns it off.
    pub exclude_after: u32,
    /// Backup attempts at the tail and the throughput measurement they use.
    pub speculation: SpeculationConfig,
}

/// When a backup attempt of a running task is worth starting (see the module documentation).
#[derive(Clone, Debug)]
pub struct SpeculationConfig {
    /// Backup attempts per task while it runs (0 turns speculation off).
    pub max_backups: u32,
    /// The straggler's expected remaining time must exceed this many times the idle worker's
    /// expected time for the whole task …
    pub factor: f64,
    /// … and the difference must be at least this.
    pub min_gain: Millis,
    /// Weight of the newest sample in the throughput averages, in (0, 1].
    pub alpha: f64,
}

impl Default for SpeculationConfig {
    fn default() -> Self {
        SpeculationConfig { max_backups: 1, factor: 1.5, min_gain: 10_000, alpha: 0.3 }
    }
}

impl SchedulerConfig {
    /// How long a task waits after its `failures`-th failure: `min(base · 2^(failures−1), max)`.
    pub fn backoff_delay(&self, failures: u32) -> Millis {
        let shift = failures.saturating_sub(1).min(32);
        self.backoff_base.saturating_mul(1 << shift).min(self.backoff_max)
    }
}

/// The one set of defaults (`freqsweep run` and `serve` use these; tests override fields).
impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            lease_timeout: 30_000,
            max_attempts: 3,
            backoff_base: 1_000,
            backoff_max: 30_000,
            idle_retry: 500,
            max_leases_per_worker: 1,
            reconcile_grace: 10_000,
            exclude_after: 3,
            speculation: SpeculationConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::tests::config;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let c = config();
        let delays: Vec<Millis> = (1..=6).map(|k| c.backoff_delay(k)).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1_000, 1_000]);
        let huge = SchedulerConfig { backoff_base: Millis::MAX / 2, backoff_max: Millis::MAX, ..config() };
        assert_eq!(huge.backoff_delay(u32::MAX), Millis::MAX, "saturates instead of overflowing");
    }
}
