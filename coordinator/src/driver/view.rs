//! What `status`, `/metrics` and the dashboard read of the driver: a borrowed, read-only view
//! (`snapshot.rs` and `live.rs` build their answers from it and never see the driver itself).

use super::{Counters, Driver, WorkerInfo};
use crate::graph::PlannedTask;
use crate::kinds;
use crate::scheduler::{Scheduler, StateName, TaskId, WorkerId};
use crate::snapshot::{AttemptCounts, FailureNote};
use freqsweep_common::task::TaskKind;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

/// The driver's state as the read-only surfaces see it.
pub struct View<'a> {
    pub(crate) scheduler: &'a Scheduler,
    pub(crate) tasks: &'a HashMap<TaskId, PlannedTask>,
    pub(crate) workers: &'a HashMap<WorkerId, WorkerInfo>,
    pub(crate) kind_counts: &'a BTreeMap<(TaskKind, StateName), u64>,
    pub(crate) failures: &'a VecDeque<FailureNote>,
    pub(crate) attempts: AttemptCounts,
    pub(crate) terminal_at_start: usize,
    pub(crate) metric_points: u64,
    pub(crate) sweep_done: bool,
    pub(crate) workers_joined: u64,
    pub(crate) workers_expired: u64,
    pub(crate) started: Instant,
    pub(crate) sweep_id: &'a str,
    pub(crate) counters: &'a Counters,
    pub(crate) point_ids: &'a [String],
    pub(crate) point_trains: &'a [Option<TaskId>],
    pub(crate) maps: &'a kinds::Merged,
}

impl Driver {
    pub fn view(&self) -> View<'_> {
        View {
            scheduler: &self.scheduler,
            tasks: &self.tasks,
            workers: &self.workers,
            kind_counts: &self.kind_counts,
            failures: &self.failures,
            attempts: self.attempts,
            terminal_at_start: self.terminal_at_start,
            metric_points: self.metric_points,
            sweep_done: self.sweep_done,
            workers_joined: self.workers_joined,
            workers_expired: self.workers_expired,
            started: self.started,
            sweep_id: &self.sweep_id,
            counters: &self.counters,
            point_ids: &self.point_ids,
            point_trains: &self.point_trains,
            maps: &self.maps,
        }
    }
}
