//! One room per task kind (`common::task::TaskKind`). A room says, for its kind: how it plans
//! tasks from the spec, which inputs a lease carries (by name, only those the kind needs), whether
//! a result fits the task it claims to be for, and how its attempts treat checkpoints and metric
//! history. The planner ([`plan`]), the driver and the report reach a kind only through the
//! exhaustive matches in this file, so a new variant of `TaskKind` makes the compiler list every
//! place that must learn about it.

pub mod bands;
pub mod dfm;
pub mod heatmap;
pub mod shortcut;
pub mod train;

use crate::artifacts::ArtifactRef;
use crate::graph::PlannedTask;
use crate::scheduler::TaskId;
use freqsweep_common::spec::Sweep;
use freqsweep_common::task::{ModelSource, TaskKind, TaskOutcome, TaskSpec, MODEL_OUTPUT};
use std::collections::HashMap;

/// Every task of `sweep`, point by point and, within a point, kind by kind in `TaskKind::ALL`
/// order (a kind's dependencies are planned before it). Ids are 1-based positions, so every
/// dependency points to an earlier task and the plan is in topological order.
pub fn plan(sweep: &Sweep) -> Vec<PlannedTask> {
    let heatmaps = heatmap::Prepared::new(sweep);
    let dfms = dfm::Prepared::new(sweep);
    let per_point = 1
        + heatmaps.tasks_per_point()
        + dfms.tasks_per_point()
        + usize::from(sweep.dfm.as_ref().is_some_and(|d| d.shortcut_degree))
        + usize::from(sweep.bands.is_some());
    let mut tasks = Vec::with_capacity(sweep.points.len().saturating_mul(per_point));
    for (index, point) in sweep.points.iter().enumerate() {
        let mut planned = PointPlan { index, point, train: None, dfm_chunks: Vec::new() };
        for kind in TaskKind::ALL {
            match kind {
                TaskKind::Train => train::plan(&mut planned, &mut tasks),
                TaskKind::Heatmap => {
                    heatmaps.plan(&planned, &mut tasks);
                    heatmaps.plan_epochs(&planned, &mut tasks);
                }
                TaskKind::Dfm => planned.dfm_chunks = dfms.plan(&planned, &mut tasks),
                TaskKind::Shortcut => shortcut::plan(sweep, &planned, &planned.dfm_chunks, &mut tasks),
                TaskKind::Bands => bands::plan(sweep, &planned, &mut tasks),
            }
        }
    }
    tasks
}

/// What the rooms build from accepted results: maps merged chunk by chunk (by the driver as
/// results are accepted, by the report from the store).
pub struct Merged {
    pub heatmaps: heatmap::Maps,
    pub dfms: dfm::DfmMaps,
}

impl Merged {
    pub fn new(tasks: &[PlannedTask]) -> Merged {
        Merged { heatmaps: heatmap::Maps::new(tasks), dfms: dfm::DfmMaps::new(tasks) }
    }
}

/// What the rooms planned so far for one grid point (a later kind depends on an earlier one).
pub struct PointPlan<'a> {
    pub index: usize,
    pub point: &'a freqsweep_common::spec::GridPoint,
    /// The point's train task, once planned (none for a given model).
    pub train: Option<TaskId>,
    /// The point's DFM chunks, once planned.
    pub dfm_chunks: Vec<TaskId>,
}

impl PointPlan<'_> {
    /// The model an analysis of this point takes, and the dependencies that brings: the train
    /// task's weights (its `model` output), or the given file (stored by the coordinator, no
    /// dependency). `None` before the train task is planned.
    pub fn model(&self) -> Option<(ModelSource, Vec<TaskId>)> {
        match (&self.point.given, self.train) {
            (Some(given), _) => {
                Some((ModelSource::Given { artifact: MODEL_OUTPUT.into(), model: given.name.clone() }, Vec::new()))
            }
            (None, Some(train)) => Some((ModelSource::Checkpoint { artifact: MODEL_OUTPUT.into() }, vec![train])),
            (None, None) => None,
        }
    }
}

/// The given model a task analyses (`ModelSource::Given`), by its name.
pub fn given_model(task: &PlannedTask) -> Option<&str> {
    let model = match &task.spec {
        TaskSpec::Train(_) => return None,
        TaskSpec::Heatmap(t) => &t.model,
        TaskSpec::Dfm(t) => &t.model,
        TaskSpec::Shortcut(t) => &t.model,
        TaskSpec::Bands(t) => &t.model,
    };
    match model {
        ModelSource::Given { model, .. } => Some(model),
        ModelSource::Checkpoint { .. } | ModelSource::TorchScript { .. } => None,
    }
}

/// The locality key of given model `name` (a worker that downloaded it holds it).
pub fn given_key(name: &str) -> String {
    format!("given:{name}")
}

/// Test images an analysis of `dataset` evaluates with image limit `limit` (0: all): the limit or
/// the test split, whichever is smaller; a split of unknown size (`.npy`, CIFAR) counts as the
/// limit, or 1 without one. The work units of the analysis kinds' cost classes.
pub(crate) fn evaluated_images(dataset: &freqsweep_common::task::DatasetSource, limit: usize) -> usize {
    let test = train::dataset_size(dataset).map(|(_, test)| test);
    match (limit, test) {
        (0, None) => 1,
        (0, Some(test)) => test,
        (limit, test) => test.map_or(limit, |t| t.min(limit)),
    }
    .max(1)
}

/// The next id in a plan under construction.
pub(crate) fn next_id(tasks: &[PlannedTask]) -> TaskId {
    TaskId(tasks.len() as u64 + 1)
}

/// Lower runs first among ready tasks: a kind before the kinds that consume it.
pub fn priority(kind: TaskKind) -> u8 {
    match kind {
        TaskKind::Train => 0,
        TaskKind::Heatmap | TaskKind::Dfm | TaskKind::Bands => 1,
        TaskKind::Shortcut => 2,
    }
}

/// The inputs of a task: `(dependency, output name)`, fetched by that name.
pub fn inputs(task: &PlannedTask) -> Vec<(TaskId, String)> {
    let named = |list: Vec<(TaskId, &'static str)>| list.into_iter().map(|(d, n)| (d, n.to_string())).collect();
    match task.kind() {
        TaskKind::Train => Vec::new(),
        TaskKind::Heatmap => heatmap::inputs(task),
        TaskKind::Dfm => named(dfm::inputs(task)),
        TaskKind::Shortcut => named(shortcut::inputs(task)),
        TaskKind::Bands => named(bands::inputs(task)),
    }
}

/// The locality key of output `name` of `task` (a worker that produced or downloaded it holds it).
pub fn output_key(task: TaskId, name: &str) -> String {
    format!("task:{}/{name}", task.0)
}

/// The artifacts a lease of `task` carries: exactly its inputs, from the outputs of its
/// dependencies and, for a given model, the stored file (a missing one is left out; the worker
/// then fails the attempt, retryably).
pub fn lease_inputs(
    task: &PlannedTask,
    outputs: &HashMap<TaskId, Vec<ArtifactRef>>,
    given: &HashMap<String, ArtifactRef>,
) -> Vec<ArtifactRef> {
    let mut found: Vec<ArtifactRef> = inputs(task)
        .into_iter()
        .filter_map(|(dep, name)| outputs.get(&dep)?.iter().find(|a| a.name == name).cloned())
        .collect();
    if let Some(model) = given_model(task).and_then(|name| given.get(name)) {
        found.push(ArtifactRef { name: MODEL_OUTPUT.to_string(), ..model.clone() });
    }
    found
}

/// Whether attempts of this kind upload per-epoch checkpoints that a later attempt resumes from.
pub fn resumes_from_partial_checkpoints(kind: TaskKind) -> bool {
    match kind {
        TaskKind::Train => true,
        TaskKind::Heatmap | TaskKind::Dfm | TaskKind::Shortcut | TaskKind::Bands => false,
    }
}

/// Whether every attempt of this kind reports the whole metric history (so a new attempt's lease
/// supersedes the points earlier attempts stored).
pub fn attempts_report_whole_history(kind: TaskKind) -> bool {
    match kind {
        TaskKind::Train => true,
        TaskKind::Heatmap | TaskKind::Dfm | TaskKind::Shortcut | TaskKind::Bands => false,
    }
}

/// Check that metric points an attempt of `task` streams are ones its kind produces (known names,
/// the task's test sets and classes, finite values): forged or broken points never reach the
/// store or the report (whose file names use the test-set names).
pub fn check_metrics(task: &PlannedTask, points: &[freqsweep_common::task::MetricPoint]) -> Result<(), String> {
    match &task.spec {
        TaskSpec::Train(spec) => {
            let sets: Vec<String> = spec.train.test_sets.iter().map(|s| s.to_string()).collect();
            points.iter().try_for_each(|p| train::check_metric(spec, &sets, p))
        }
        TaskSpec::Heatmap(_) | TaskSpec::Dfm(_) | TaskSpec::Shortcut(_) | TaskSpec::Bands(_) if points.is_empty() => {
            Ok(())
        }
        TaskSpec::Heatmap(_) | TaskSpec::Dfm(_) | TaskSpec::Shortcut(_) | TaskSpec::Bands(_) => {
            Err(format!("a {} task reports no metric points", task.kind().as_str()))
        }
    }
}

/// Check that a reported result fits `task`: it parses as the task's kind of outcome, its numbers
/// are within what the task can produce, and it names exactly the outputs the kind uploads.
/// A result that does not fit is refused (a forged or broken report must not reach the results).
pub fn check_result(task: &PlannedTask, result_json: &str, outputs: &[ArtifactRef]) -> Result<TaskOutcome, String> {
    let outcome: TaskOutcome =
        serde_json::from_str(result_json).map_err(|e| format!("the result is not a task outcome: {e}"))?;
    let kind = task.kind();
    let mut names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
    names.sort_unstable();
    let mut expected: Vec<&str> = kind.outputs().to_vec();
    expected.sort_unstable();
    if names != expected {
        return Err(format!("a {} result must name the outputs {expected:?}, this one names {names:?}", kind.as_str()));
    }
    if outcome.kind() != kind {
        return Err(format!("a {} task got a {} result", kind.as_str(), outcome.kind().as_str()));
    }
    match (&task.spec, &outcome) {
        (TaskSpec::Train(spec), TaskOutcome::Train(o)) => train::check(spec, o)?,
        (TaskSpec::Heatmap(spec), TaskOutcome::Heatmap(o)) => heatmap::check(spec, o)?,
        (TaskSpec::Dfm(spec), TaskOutcome::Dfm(o)) => dfm::check(spec, o)?,
        (TaskSpec::Shortcut(spec), TaskOutcome::Shortcut(o)) => shortcut::check(spec, o)?,
        (TaskSpec::Bands(spec), TaskOutcome::Bands(o)) => bands::check(spec, o)?,
        (
            TaskSpec::Train(_) | TaskSpec::Heatmap(_) | TaskSpec::Dfm(_) | TaskSpec::Shortcut(_) | TaskSpec::Bands(_),
            _,
        ) => {
            unreachable!("the kinds were compared above")
        }
    }
    Ok(outcome)
}
