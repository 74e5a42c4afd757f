//! A plan that grows: points added while the sweep runs (by a search strategy) are planned by the
//! same planner as the grid's, get ids above every task's, are stored (the point and its tasks)
//! and join the scheduler, whose leases reach idle workers at once.

use super::{Driver, Effects, Now};
use crate::graph::PlannedTask;
use crate::kinds;
use crate::scheduler::{Input, StateName, TaskId};
use crate::search::AddedPoint;
use crate::store::Change;
use freqsweep_common::spec::GridPoint;

impl Driver {
    /// Let points be added to this sweep: `planner` plans them as the grid's points were,
    /// after the `points` already planned (grid and added ones).
    pub fn allow_growth(&mut self, planner: kinds::Planner, points: usize) {
        self.planner = Some(planner);
        self.points_planned = points;
    }

    /// Add `points` to the running sweep; returns the ids of their tasks. Nothing is added when
    /// one cannot be (a given model, a run that cannot grow, tasks the scheduler refuses).
    pub fn add_points(&mut self, now: Now, points: &[GridPoint], fx: &mut Effects) -> Result<Vec<TaskId>, String> {
        let planner = self.planner.as_mut().ok_or("this run cannot add points (it was opened without its planner)")?;
        // Counted before planned: a point of millions of tasks is refused without building them.
        let limit = freqsweep_common::spec::MAX_TASKS;
        let adding = points.iter().fold(0usize, |n, p| n.saturating_add(planner.count_point(p)));
        if self.tasks.len().saturating_add(adding) > limit {
            return Err(format!(
                "adding {} points ({adding} tasks) would make the sweep over {limit} tasks; it holds {}",
                points.len(),
                self.tasks.len()
            ));
        }
        let mut next = self.tasks.keys().map(|t| t.0).max().unwrap_or(0) + 1;
        let mut stored = Vec::new();
        let mut tasks: Vec<PlannedTask> = Vec::new();
        for (k, point) in points.iter().enumerate() {
            let index = self.points_planned + k;
            let added = AddedPoint::of(index, point)?;
            let planned = planner.plan_point(index, point, TaskId(next));
            next += planned.len() as u64;
            let value = serde_json::to_string(&added).map_err(|e| format!("point {}: {e}", point.id))?;
            stored.push(Change::SweepValue { key: added.key(), value });
            tasks.extend(planned);
        }
        for task in &tasks {
            let spec_json = serde_json::to_string(&task.spec).map_err(|e| format!("task {}: {e}", task.key))?;
            let deps = task.deps.iter().map(|d| d.0).collect();
            stored.push(Change::AddTask {
                id: task.id.0,
                key: task.key.clone(),
                kind: task.kind().as_str().into(),
                spec_json,
                deps,
            });
        }
        // Known before the scheduler decides, so its transitions count and find them.
        for task in &tasks {
            *self.kind_counts.entry((task.kind(), StateName::Blocked)).or_default() += 1;
            self.tasks.insert(task.id, task.clone());
        }
        let mut decided = Effects::default();
        let input = Input::AddTasks { tasks: tasks.iter().map(PlannedTask::to_new_task).collect() };
        self.add_refused = None;
        self.drive(now, input, Vec::new(), None, &mut decided);
        if let Some(why) = self.add_refused.take() {
            for task in &tasks {
                self.tasks.remove(&task.id);
                if let Some(c) = self.kind_counts.get_mut(&(task.kind(), StateName::Blocked)) {
                    *c = c.saturating_sub(1);
                }
            }
            return Err(format!("the scheduler refused the added tasks ({why})"));
        }
        self.maps.add(&tasks);
        for (task, epochs) in kinds::epoch_consumers(&tasks) {
            self.kept.entry(task).or_default().extend(epochs);
        }
        self.points_planned += points.len();
        self.point_ids.extend(points.iter().map(|p| p.id.clone()));
        self.point_trains.extend(points.iter().enumerate().map(|(k, _)| {
            let index = self.points_planned - points.len() + k;
            tasks.iter().find(|t| t.point == index && kinds::trains_model(t.kind())).map(|t| t.id)
        }));
        if !self.scheduler.is_finished() {
            self.sweep_done = false;
        }
        tracing::info!(points = points.len(), tasks = tasks.len(), "points added to the sweep");
        // The rows first: the state changes the scheduler decided name them.
        fx.changes.extend(stored);
        fx.changes.append(&mut decided.changes);
        fx.sends.append(&mut decided.sends);
        fx.after_commit.append(&mut decided.after_commit);
        fx.closed.append(&mut decided.closed);
        fx.files.append(&mut decided.files);
        Ok(tasks.iter().map(|t| t.id).collect())
    }
}
