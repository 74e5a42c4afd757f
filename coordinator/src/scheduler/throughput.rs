//! Throughput: what a task costs, and how fast each worker (and the whole fleet) turns cost into
//! results, measured from the lease and report times the core sees.

use super::{Live, Millis, Scheduler, Worker, WorkerId};

/// Which throughput measurement a task's cost belongs to (the planner names them, e.g.
/// `heatmap/resnet18`). Opaque to the core: it only compares classes for equality, and keeps one
/// rate per class it has seen, so any number of classes can exist.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CostClass(std::sync::Arc<str>);

impl CostClass {
    pub fn new(name: &str) -> CostClass {
        CostClass(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for CostClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a task costs: which throughput applies and how much work it is. Units are only compared
/// within one class, so any measure proportional to the work will do.
#[derive(Clone, Debug, PartialEq)]
pub struct Cost {
    pub class: CostClass,
    /// Work units, > 0.
    pub units: f64,
}

impl Default for Cost {
    fn default() -> Self {
        Cost { class: CostClass::new("default"), units: 1.0 }
    }
}

/// An exponentially weighted average of work units per second.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Rate {
    pub(super) per_second: f64,
    pub(super) samples: u32,
}

impl Rate {
    pub(super) fn get(self) -> Option<f64> {
        (self.samples > 0).then_some(self.per_second)
    }

    pub(super) fn add(&mut self, sample: f64, alpha: f64) {
        self.per_second = if self.samples == 0 { sample } else { alpha * sample + (1.0 - alpha) * self.per_second };
        self.samples = self.samples.saturating_add(1);
    }
}

impl Scheduler {
    /// `worker`'s measured throughput for `class` (work units per second), if it finished any.
    pub fn throughput(&self, worker: WorkerId, class: &CostClass) -> Option<f64> {
        self.workers.get(&worker)?.rates.get(class)?.get()
    }

    /// Every class `worker` has a measured throughput for, as `(class, units per second)`, sorted.
    pub fn throughputs(&self, worker: WorkerId) -> Vec<(CostClass, f64)> {
        let Some(w) = self.workers.get(&worker) else { return Vec::new() };
        let mut rates: Vec<_> = w.rates.iter().filter_map(|(c, r)| Some((c.clone(), r.get()?))).collect();
        rates.sort_by(|a, b| a.0.cmp(&b.0));
        rates
    }

    /// The fleet's throughput for `class`: the prior of a worker without history of it.
    pub fn fleet_throughput(&self, class: &CostClass) -> Option<f64> {
        self.fleet.get(class)?.get()
    }

    /// Work units per second that `live` achieved, as a sample.
    fn sample(&self, now: Millis, live: Live) -> (CostClass, f64) {
        let cost = &self.tasks[&live.task].cost;
        let ms = now.saturating_sub(live.since).max(1) as f64;
        (cost.class.clone(), cost.units * 1_000.0 / ms)
    }

    /// An accepted completion: a sample for its worker and for the fleet.
    pub(super) fn measure(&mut self, now: Millis, live: Live) {
        let (class, sample) = self.sample(now, live);
        let alpha = self.config.speculation.alpha;
        self.fleet.entry(class.clone()).or_default().add(sample, alpha);
        if let Some(w) = self.workers.get_mut(&live.worker) {
            w.rates.entry(class).or_default().add(sample, alpha);
        }
    }

    /// A cancelled loser ran this long without finishing: its worker is at most this fast.
    pub(super) fn bound(&mut self, now: Millis, live: Live) {
        let (class, bound) = self.sample(now, live);
        let alpha = self.config.speculation.alpha;
        if let Some(w) = self.workers.get_mut(&live.worker) {
            let rate = w.rates.entry(class).or_default();
            if rate.get().is_none_or(|r| bound < r) {
                rate.add(bound, alpha);
            }
        }
    }

    /// A worker's rate for a kind: measured, else the fleet's; `None` before any sample.
    pub(super) fn rate_of(&self, worker: &Worker, class: &CostClass) -> Option<f64> {
        let measured = worker.rates.get(class).and_then(|r| r.get());
        measured.or_else(|| self.fleet.get(class)?.get()).filter(|r| *r > 0.0)
    }
}
