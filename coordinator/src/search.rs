//! The search layer: which points of a sweep run. Today's one strategy, [`Strategy::Grid`], runs
//! every point of the spec's grid, all planned when the run opens. The seam the next strategies
//! use (random and quasi-random search, successive halving, "analyse only the best k") is
//! [`crate::driver::Shared::add_points`]: a strategy adds points while the sweep runs; the
//! driver plans each with the same planner the grid's points went through
//! (`kinds::Planner::plan_point`), gives its tasks ids above every existing one, stores the
//! point ([`AddedPoint`], sweep key `added_point/<index>`) and its tasks (`tasks.added = 1`), and
//! the scheduler leases them. A restarted coordinator re-plans the stored points in order
//! ([`replan_added`]) and resumes them only if that gives exactly the stored tasks.

use crate::graph::PlannedTask;
use crate::kinds::Planner;
use crate::scheduler::TaskId;
use crate::store::{Reader, TaskRow};
use anyhow::{bail, Context, Result};
use freqsweep_common::spec::{GridPoint, GridValues, Sweep};
use freqsweep_common::task::{TaskSpec, TrainTask};
use serde::{Deserialize, Serialize};

/// How a sweep chooses its points.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// Every point of the spec's grid (`include`/`exclude` applied), planned at start-up.
    #[default]
    Grid,
}

impl Strategy {
    /// The points planned when the run opens. The grid's are the walk of the spec's space
    /// (`spec::Space::grid_points`) done when the spec was parsed; a strategy that picks its own
    /// points builds them from the same space (`spec::Space::point`).
    pub fn initial_points(self, sweep: &Sweep) -> &[GridPoint] {
        match self {
            Strategy::Grid => &sweep.points,
        }
    }
}

/// The prefix of the sweep keys that hold added points, by index.
pub const ADDED_POINT: &str = "added_point/";

/// The sweep key of added point `index` (zero-padded, so keys sort by index).
fn point_key(index: usize) -> String {
    format!("{ADDED_POINT}{index:08}")
}

/// A point added while the sweep ran, as stored: what re-planning it needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AddedPoint {
    /// Its index among the sweep's points (after the grid's).
    pub index: usize,
    pub id: String,
    /// Grid key → label, blank keys left out.
    pub values: Vec<(String, String)>,
    pub task: TrainTask,
}

impl AddedPoint {
    /// The stored form of `point`, the sweep's point `index`. Only trained points can be added
    /// (a given model is a file the run opened with).
    pub fn of(index: usize, point: &GridPoint) -> Result<AddedPoint, String> {
        if point.given.is_some() {
            return Err(format!("point {}: a given model cannot be added while a sweep runs", point.id));
        }
        let values = point.values.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.to_string(), v.to_string()));
        Ok(AddedPoint { index, id: point.id.clone(), values: values.collect(), task: point.task.clone() })
    }

    pub fn key(&self) -> String {
        point_key(self.index)
    }

    pub fn to_point(&self) -> GridPoint {
        GridPoint {
            id: self.id.clone(),
            values: GridValues::from_labels(self.values.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
            task: self.task.clone(),
            given: None,
        }
    }
}

/// The points a run added while it ran, in index order.
pub fn added_points(reader: &Reader) -> Result<Vec<AddedPoint>> {
    added_points_from(reader, 0)
}

/// The points a run added with index `index` or above, in index order (read from the store
/// only from there: a follower asks for what is new since it last looked).
pub fn added_points_from(reader: &Reader, index: usize) -> Result<Vec<AddedPoint>> {
    let from = point_key(index);
    let mut points = Vec::new();
    for (key, json) in reader.sweep_values_from(ADDED_POINT, &from)? {
        let point: AddedPoint =
            serde_json::from_str(&json).with_context(|| format!("the stored point {key} cannot be read"))?;
        points.push(point);
    }
    points.sort_by_key(|p| p.index);
    Ok(points)
}

/// Extend `sweep` and `tasks` with the points added while the sweep ran that they do not hold
/// yet (all of them for the spec's own plan; those added since for a plan that already has
/// some), re-planned and checked against the added tasks the store holds: same ids, keys and
/// descriptions, in the same order.
pub fn extend_with_added(sweep: &mut Sweep, tasks: &mut Vec<PlannedTask>, reader: &Reader) -> Result<()> {
    let first = tasks.iter().map(|t| t.id.0).max().unwrap_or(0) + 1;
    let (points, replanned) = added_since(sweep, first, reader)?;
    sweep.points.extend(points);
    tasks.extend(replanned);
    Ok(())
}

/// The points added after `sweep`'s and their tasks (ids from `first`), re-planned and checked
/// against the added tasks the store holds; only what is new is read.
pub fn added_since(sweep: &Sweep, first: u64, reader: &Reader) -> Result<(Vec<GridPoint>, Vec<PlannedTask>)> {
    let added = added_points_from(reader, sweep.points.len())?;
    if added.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let rows = reader.added_tasks_from(first)?;
    replan(sweep, first, &added, &rows)
}

/// The points and tasks of `added`, planned after `sweep`'s own points with ids from `first`,
/// checked against the added tasks the store holds.
pub fn replan(
    sweep: &Sweep,
    first: u64,
    added: &[AddedPoint],
    stored: &[TaskRow],
) -> Result<(Vec<GridPoint>, Vec<PlannedTask>)> {
    let mut planner = Planner::new(sweep);
    let mut points: Vec<GridPoint> = Vec::new();
    let mut replanned: Vec<PlannedTask> = Vec::new();
    for point in added {
        let index = sweep.points.len() + points.len();
        if point.index != index {
            bail!("stored point {} is at index {}, expected {index}; the store is damaged", point.id, point.index);
        }
        let next = replanned.last().map_or(first, |t| t.id.0 + 1);
        let grid_point = point.to_point();
        replanned.extend(planner.plan_point(point.index, &grid_point, TaskId(next)));
        points.push(grid_point);
    }
    if replanned.len() != stored.len() {
        bail!(
            "the added points plan {} tasks, the store holds {} added tasks; the store is damaged",
            replanned.len(),
            stored.len()
        );
    }
    for (task, row) in replanned.iter().zip(stored) {
        let spec: Option<TaskSpec> = serde_json::from_str(&row.spec_json).ok();
        if task.id.0 != row.id || task.key != row.key || spec.as_ref() != Some(&task.spec) {
            bail!("added task {} (id {}) is not what its point plans; the store is damaged", row.key, row.id);
        }
    }
    Ok((points, replanned))
}
