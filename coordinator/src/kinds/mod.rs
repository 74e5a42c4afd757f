//! One room per task kind (`common::task::TaskKind`). A room says, for its kind: how it plans
//! tasks from the spec, which inputs a lease carries (by name, only those the kind needs), whether
//! a result fits the task it claims to be for, and how its attempts treat checkpoints and metric
//! history. The planner ([`plan`]), the driver and the report reach a kind only through the
//! exhaustive matches in this file, so a new variant of `TaskKind` makes the compiler list every
//! place that must learn about it.

pub mod bands;
pub mod dfm;
pub mod heatmap;
pub mod robustness;
pub mod shortcut;
pub mod train;

use crate::artifacts::ArtifactRef;
use crate::graph::PlannedTask;
use crate::report::{PointReport, RunData};
use crate::scheduler::TaskId;
use freqsweep_common::spec::{GridPoint, Sweep};
use freqsweep_common::task::{MetricPoint, ModelSource, TaskKind, TaskOutcome, TaskSpec, MODEL_OUTPUT};
use std::collections::{BTreeMap, HashMap};

/// Plans a sweep's points one at a time, the same way whether a point comes from the spec's grid
/// at start-up or from a search strategy while the sweep runs (`Shared::add_points`).
pub struct Planner {
    sweep: Sweep,
    heatmaps: heatmap::Prepared,
    dfms: dfm::Prepared,
}

impl Planner {
    /// A planner for the analyses `sweep` asks for (its points give the image sizes to cut cells
    /// for first; a point of another size is cut when it comes).
    pub fn new(sweep: &Sweep) -> Planner {
        let sections = Sweep { points: Vec::new(), ..sweep.clone() };
        Planner { heatmaps: heatmap::Prepared::new(sweep), dfms: dfm::Prepared::new(sweep), sweep: sections }
    }

    /// Tasks per point at most, for the plan's capacity.
    fn tasks_per_point(&self) -> usize {
        1 + self.heatmaps.tasks_per_point()
            + self.dfms.tasks_per_point()
            + usize::from(self.sweep.analyses.dfm.as_ref().is_some_and(|d| d.shortcut_degree))
            + usize::from(self.sweep.analyses.bands.is_some())
            + robustness::count(&self.sweep)
    }

    /// How many tasks [`Planner::plan_point`] plans for `point`, without planning them: each
    /// room counts beside its `plan` (a test holds the two equal on every example spec).
    pub fn count_point(&mut self, point: &GridPoint) -> usize {
        if let Some(shape) = point.task.dataset.image_shape() {
            self.heatmaps.cut(shape);
            self.dfms.cut(shape);
        }
        let trained = point.given.is_none();
        let mut count = 0usize;
        let mut dfm_chunks = 0;
        for kind in TaskKind::ALL {
            count = count.saturating_add(match kind {
                TaskKind::Train => usize::from(trained),
                TaskKind::Heatmap => self.heatmaps.count(point, trained),
                TaskKind::Dfm => {
                    dfm_chunks = self.dfms.count(point);
                    dfm_chunks
                }
                TaskKind::Shortcut => {
                    usize::from(self.sweep.analyses.dfm.as_ref().is_some_and(|d| d.shortcut_degree) && dfm_chunks > 0)
                }
                TaskKind::Bands => usize::from(self.sweep.analyses.bands.is_some()),
                TaskKind::Robustness => robustness::count(&self.sweep),
            });
        }
        count
    }

    /// The tasks of grid point `index`, kind by kind in `TaskKind::ALL` order (a kind's
    /// dependencies are planned before it), with ids from `first` on: every dependency is a task
    /// of the same point planned before it.
    pub fn plan_point(&mut self, index: usize, point: &GridPoint, first: TaskId) -> Vec<PlannedTask> {
        if let Some(shape) = point.task.dataset.image_shape() {
            self.heatmaps.cut(shape);
            self.dfms.cut(shape);
        }
        // Planned as the only point (ids from 1), then moved to `first`.
        let mut tasks = Vec::new();
        let mut planned = PointPlan { index, point, train: None, dfm_chunks: Vec::new() };
        for kind in TaskKind::ALL {
            match kind {
                TaskKind::Train => train::plan(&mut planned, &mut tasks),
                TaskKind::Heatmap => {
                    self.heatmaps.plan(&planned, &mut tasks);
                    self.heatmaps.plan_epochs(&planned, &mut tasks);
                }
                TaskKind::Dfm => planned.dfm_chunks = self.dfms.plan(&planned, &mut tasks),
                TaskKind::Shortcut => shortcut::plan(&self.sweep, &planned, &planned.dfm_chunks, &mut tasks),
                TaskKind::Bands => bands::plan(&self.sweep, &planned, &mut tasks),
                TaskKind::Robustness => robustness::plan(&self.sweep, &planned, &mut tasks),
            }
        }
        let offset = first.0 - 1;
        for task in &mut tasks {
            task.id = TaskId(task.id.0 + offset);
            for dep in &mut task.deps {
                *dep = TaskId(dep.0 + offset);
            }
        }
        tasks
    }
}

/// How many tasks `sweep` plans — the planner's own answer ([`Planner::count_point`]), built
/// nowhere — or `Err((tasks so far, points counted))` as soon as they are over `limit`, so a
/// sweep too large is refused before its plan is built.
pub fn count_tasks(sweep: &Sweep, limit: usize) -> Result<usize, (usize, usize)> {
    let mut planner = Planner::new(sweep);
    let mut total = 0usize;
    for (index, point) in sweep.points.iter().enumerate() {
        total = total.saturating_add(planner.count_point(point));
        if total > limit {
            return Err((total, index + 1));
        }
    }
    Ok(total)
}

/// Every task of `sweep`, point by point ([`Planner::plan_point`]). Ids are 1-based positions,
/// so every dependency points to an earlier task and the plan is in topological order.
pub fn plan(sweep: &Sweep) -> Vec<PlannedTask> {
    let mut planner = Planner::new(sweep);
    let mut tasks = Vec::with_capacity(sweep.points.len().saturating_mul(planner.tasks_per_point()));
    for (index, point) in sweep.points.iter().enumerate() {
        let first = next_id(&tasks);
        tasks.extend(planner.plan_point(index, point, first));
    }
    tasks
}

/// What a [`Merged`] keeps of results that merge into no map (whole per-point outcomes): the
/// report renders them; the driver keeps none, so its memory does not grow with them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    MapsOnly,
    Everything,
}

/// One outcome per grid point, kept only for the report ([`Keep::Everything`]).
pub struct PerPoint<T>(Option<HashMap<usize, T>>);

impl<T> PerPoint<T> {
    fn new(keep: Keep) -> PerPoint<T> {
        PerPoint((keep == Keep::Everything).then(HashMap::new))
    }

    fn insert(&mut self, point: usize, value: T) {
        if let Some(kept) = &mut self.0 {
            kept.insert(point, value);
        }
    }

    pub fn get(&self, point: usize) -> Option<&T> {
        self.0.as_ref()?.get(&point)
    }
}

/// What the rooms build from accepted results: maps merged chunk by chunk (by the driver as
/// results are accepted, by the report from the store) and, for the report, the outcomes of the
/// kinds that merge into no map.
pub struct Merged {
    pub heatmaps: heatmap::Maps,
    pub dfms: dfm::DfmMaps,
    pub shortcuts: PerPoint<freqsweep_common::task::ShortcutOutcome>,
    pub bands: PerPoint<freqsweep_common::task::BandsOutcome>,
    pub robustness: robustness::Results,
}

/// An artifact a merge derived from accepted results (a point's complete maps). It has its own
/// key, which an [`Input::Derived`] names and which is its locality key; it is no task's output.
/// The driver stores the bytes, records the artifact under `name` and hands it to the leases
/// that take it.
#[derive(Debug)]
pub struct Derived {
    pub key: String,
    /// The stored artifact's name (`map/<point>/eps4`, `dfm/<point>`).
    pub name: String,
    pub bytes: Vec<u8>,
}

impl Merged {
    pub fn new(tasks: &[PlannedTask], keep: Keep) -> Merged {
        Merged {
            heatmaps: heatmap::Maps::new(tasks),
            dfms: dfm::DfmMaps::new(tasks),
            shortcuts: PerPoint::new(keep),
            bands: PerPoint::new(keep),
            robustness: robustness::Results::new(keep),
        }
    }

    /// What tasks added to the plan merge into.
    pub fn add(&mut self, tasks: &[PlannedTask]) {
        self.heatmaps.add(tasks);
        self.dfms.add(tasks);
    }

    /// Merge the accepted result of `task`; returns the artifacts that completed with it.
    /// Idempotent: a task's result merges once.
    pub fn merge(&mut self, task: &PlannedTask, outcome: &TaskOutcome) -> Result<Vec<Derived>, String> {
        match outcome {
            TaskOutcome::Train(_) => Ok(Vec::new()),
            TaskOutcome::Heatmap(h) => heatmap::merge(&mut self.heatmaps, task, h),
            TaskOutcome::Dfm(d) => dfm::merge(&mut self.dfms, task, d),
            TaskOutcome::Shortcut(s) => {
                self.shortcuts.insert(task.point, s.clone());
                Ok(Vec::new())
            }
            TaskOutcome::Bands(b) => {
                self.bands.insert(task.point, b.clone());
                Ok(Vec::new())
            }
            TaskOutcome::Robustness(r) => {
                self.robustness.merge(task, r);
                Ok(Vec::new())
            }
        }
    }
}

/// An input a lease carries, under the name the consuming kind reads it by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Output `name` of dependency `task` (a model's weights, a kept epoch's checkpoint).
    Output { task: TaskId, name: String },
    /// An artifact a merge derived (a point's complete DFM maps), by its key, read as `name`.
    Derived { key: String, name: &'static str },
}

impl Input {
    pub(crate) fn output(task: TaskId, name: impl Into<String>) -> Input {
        Input::Output { task, name: name.into() }
    }

    /// Its locality key: a worker that produced or downloaded it holds it.
    pub fn locality_key(&self) -> String {
        match self {
            Input::Output { task, name } => output_key(*task, name),
            Input::Derived { key, .. } => key.clone(),
        }
    }
}

/// The `results.csv` header's columns, kind by kind in `TaskKind::ALL` order.
pub(crate) fn csv_header(run: &RunData<'_>, csv: &mut String) {
    for kind in TaskKind::ALL {
        match kind {
            TaskKind::Train => train::csv_header(run, csv),
            TaskKind::Heatmap => heatmap::csv_header(run, csv),
            TaskKind::Dfm => dfm::csv_header(run, csv),
            TaskKind::Shortcut => shortcut::csv_header(run, csv),
            TaskKind::Bands => bands::csv_header(run, csv),
            TaskKind::Robustness => robustness::csv_header(run, csv),
        }
    }
}

/// Point `index`'s report, kind by kind in `TaskKind::ALL` order: each room writes its files,
/// adds its section of the page to `report` and its columns to the point's `results.csv` row.
pub(crate) fn report_point(
    run: &RunData<'_>,
    index: usize,
    point: &GridPoint,
    report: &mut PointReport,
    csv: &mut String,
) -> anyhow::Result<()> {
    for kind in TaskKind::ALL {
        match kind {
            TaskKind::Train => train::report(run, index, point, report, csv)?,
            TaskKind::Heatmap => heatmap::report(run, index, point, report, csv)?,
            TaskKind::Dfm => dfm::report(run, index, point, report, csv)?,
            TaskKind::Shortcut => shortcut::report(run, index, point, report, csv)?,
            TaskKind::Bands => bands::report(run, index, point, report, csv)?,
            TaskKind::Robustness => robustness::report(run, index, point, report, csv)?,
        }
    }
    Ok(())
}

/// A figure a view draws, or why it cannot be drawn.
pub(crate) type Drawn = Result<freqsweep_common::figures::Figure, String>;

/// Figures by TensorBoard tag.
pub(crate) type Tagged = Vec<(String, Drawn)>;

/// What a done task of a kind adds to its point's TensorBoard run, as `(tag, figure)`.
pub(crate) enum TensorBoardView {
    /// Nothing: the kind's results are drawn from its derived maps, or only in the report.
    Nothing,
    /// Figures from the task's whole stored metric history (the point's id, the task's classes),
    /// at its last step; a race's winner is written again first.
    FromMetrics(fn(&str, usize, &[MetricPoint]) -> Tagged),
    /// Figures from the task's result (the point's id), at the point's last training step.
    FromResult(fn(&str, &TaskOutcome) -> Tagged),
}

/// The TensorBoard view of `kind`'s done tasks.
pub(crate) fn tensorboard_view(kind: TaskKind) -> TensorBoardView {
    match kind {
        TaskKind::Train => TensorBoardView::FromMetrics(train::tensorboard_figures),
        TaskKind::Bands => TensorBoardView::FromResult(bands::tensorboard_figures),
        // Heatmaps are drawn when a map completes (its derived artifact), DFMs and shortcut
        // degrees in the report and on the dashboard.
        // Corruption errors are in the report (TensorBoard scalars are to come).
        TaskKind::Heatmap | TaskKind::Dfm | TaskKind::Shortcut | TaskKind::Robustness => TensorBoardView::Nothing,
    }
}

/// Each kind's live view of point `index` for the dashboard, by the name the page reads it
/// under (a kind without one adds nothing: its results are in the report and TensorBoard).
pub(crate) fn live_views(merged: &Merged, index: usize) -> BTreeMap<&'static str, serde_json::Value> {
    let mut views = BTreeMap::new();
    for kind in TaskKind::ALL {
        let view = match kind {
            TaskKind::Heatmap => Some(("maps", serde_json::to_value(heatmap::live_view(&merged.heatmaps, index)))),
            TaskKind::Dfm => Some(("dfm", serde_json::to_value(dfm::live_view(&merged.dfms, index)))),
            // Training shows as the point's state and F1 curves; shortcut degrees and band
            // sufficiency only once done, in the report and TensorBoard.
            TaskKind::Train | TaskKind::Shortcut | TaskKind::Bands | TaskKind::Robustness => None,
        };
        if let Some((name, Ok(value))) = view {
            views.insert(name, value);
        }
    }
    views
}

/// Of the parts of point `index` whose progress the dashboard lists (its heatmaps), those
/// complete, and how many there are.
pub(crate) fn live_progress(merged: &Merged, index: usize) -> (usize, usize) {
    let mut progress = (0, 0);
    for kind in TaskKind::ALL {
        let (done, all) = match kind {
            TaskKind::Heatmap => heatmap::live_progress(&merged.heatmaps, index),
            TaskKind::Train | TaskKind::Dfm | TaskKind::Shortcut | TaskKind::Bands | TaskKind::Robustness => (0, 0),
        };
        progress = (progress.0 + done, progress.1 + all);
    }
    progress
}

/// A derived artifact a kind draws in TensorBoard once it is stored: the point it belongs to,
/// the epoch of the checkpoint it was computed from (`None`: the trained model), its figures.
pub(crate) struct DerivedFigures {
    pub point: String,
    pub epoch: Option<u32>,
    pub figures: Tagged,
}

/// The name prefixes of the derived artifacts the kinds draw in TensorBoard.
pub(crate) fn tensorboard_derived_prefixes() -> Vec<&'static str> {
    TaskKind::ALL
        .iter()
        .filter_map(|kind| match kind {
            TaskKind::Heatmap => Some("map/"),
            // The DFM maps are drawn in the report and on the dashboard.
            TaskKind::Train | TaskKind::Dfm | TaskKind::Shortcut | TaskKind::Bands | TaskKind::Robustness => None,
        })
        .collect()
}

/// The figures of derived artifact `name` (its stored bytes), drawn by the kind that derives
/// it; `None` when no kind draws it.
pub(crate) fn tensorboard_derived(name: &str, bytes: &[u8]) -> Result<Option<DerivedFigures>, String> {
    for kind in TaskKind::ALL {
        let drawn = match kind {
            TaskKind::Heatmap => heatmap::tensorboard_map(name, bytes)?,
            TaskKind::Train | TaskKind::Dfm | TaskKind::Shortcut | TaskKind::Bands | TaskKind::Robustness => None,
        };
        if drawn.is_some() {
            return Ok(drawn);
        }
    }
    Ok(None)
}

/// Whether `kind` trains the point's model: its metric steps are the point's timeline (the step
/// of a map, the dashboard's curves) and a given model has no such task.
pub fn trains_model(kind: TaskKind) -> bool {
    match kind {
        TaskKind::Train => true,
        TaskKind::Heatmap | TaskKind::Dfm | TaskKind::Shortcut | TaskKind::Bands | TaskKind::Robustness => false,
    }
}

/// The number of classes of the model `task` runs.
pub fn classes(task: &PlannedTask) -> usize {
    if let TaskSpec::Train(t) = &task.spec {
        return t.train.classes;
    }
    task.spec.target().map_or(0, |t| t.classes)
}

/// A result that fits `task`, whatever its kind: what the load and durability tests' simulated
/// workers report (`testing::simulated_result_json`).
pub fn simulated_result(task: &TaskSpec, device: &str) -> TaskOutcome {
    match task {
        TaskSpec::Train(t) => train::simulated(t, device),
        TaskSpec::Heatmap(h) => heatmap::simulated(h, h.target.images, 0, device),
        TaskSpec::Dfm(d) => dfm::simulated(d, d.target.images, device),
        TaskSpec::Shortcut(s) => shortcut::simulated(s, s.target.images.max(1), device),
        TaskSpec::Bands(b) => bands::simulated(b, b.target.images, device),
        TaskSpec::Robustness(r) => robustness::simulated(r, r.target.images.max(1), device),
    }
}

/// The confusion matrix of a simulated result: `images` images, all of class 0, every one
/// classified right (`classes` square).
pub(crate) fn simulated_confusion(classes: usize, images: usize) -> Vec<Vec<u64>> {
    let mut rows = vec![vec![0u64; classes]; classes];
    if let Some(first) = rows.first_mut().and_then(|r| r.first_mut()) {
        *first = images as u64;
    }
    rows
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
    let model = &task.spec.target()?.model;
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
        TaskKind::Heatmap | TaskKind::Dfm | TaskKind::Bands | TaskKind::Robustness => 1,
        TaskKind::Shortcut => 2,
    }
}

/// The inputs of a task, fetched by their names.
pub fn inputs(task: &PlannedTask) -> Vec<Input> {
    match task.kind() {
        TaskKind::Train => Vec::new(),
        TaskKind::Heatmap => heatmap::inputs(task),
        TaskKind::Dfm => dfm::inputs(task),
        TaskKind::Shortcut => shortcut::inputs(task),
        TaskKind::Bands => bands::inputs(task),
        TaskKind::Robustness => robustness::inputs(task),
    }
}

/// Per task whose epoch checkpoints analyses take, those epochs with the analyses that take
/// each (today the heatmap chunks of `[heatmap] at_epochs`).
pub fn epoch_consumers(tasks: &[PlannedTask]) -> HashMap<TaskId, std::collections::BTreeMap<u32, Vec<TaskId>>> {
    heatmap::kept_epochs(tasks)
}

/// The locality key of output `name` of `task` (a worker that produced or downloaded it holds it).
pub fn output_key(task: TaskId, name: &str) -> String {
    format!("task:{}/{name}", task.0)
}

/// The artifacts a lease of `task` carries: exactly its inputs, from the outputs of its
/// dependencies, the artifacts merges derived and, for a given model, the stored file (a missing
/// one is left out; the worker then fails the attempt, retryably).
pub fn lease_inputs(
    task: &PlannedTask,
    outputs: &HashMap<TaskId, Vec<ArtifactRef>>,
    derived: &HashMap<String, ArtifactRef>,
    given: &HashMap<String, ArtifactRef>,
) -> Vec<ArtifactRef> {
    let mut found: Vec<ArtifactRef> = inputs(task)
        .into_iter()
        .filter_map(|input| match input {
            Input::Output { task, name } => outputs.get(&task)?.iter().find(|a| a.name == name).cloned(),
            Input::Derived { key, name } => Some(ArtifactRef { name: name.to_string(), ..derived.get(&key)?.clone() }),
        })
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
        TaskKind::Heatmap | TaskKind::Dfm | TaskKind::Shortcut | TaskKind::Bands | TaskKind::Robustness => false,
    }
}

/// Whether every attempt of this kind reports the whole metric history (so a new attempt's lease
/// supersedes the points earlier attempts stored).
pub fn attempts_report_whole_history(kind: TaskKind) -> bool {
    match kind {
        TaskKind::Train => true,
        TaskKind::Heatmap | TaskKind::Dfm | TaskKind::Shortcut | TaskKind::Bands | TaskKind::Robustness => false,
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
        TaskSpec::Heatmap(_)
        | TaskSpec::Dfm(_)
        | TaskSpec::Shortcut(_)
        | TaskSpec::Bands(_)
        | TaskSpec::Robustness(_)
            if points.is_empty() =>
        {
            Ok(())
        }
        TaskSpec::Heatmap(_)
        | TaskSpec::Dfm(_)
        | TaskSpec::Shortcut(_)
        | TaskSpec::Bands(_)
        | TaskSpec::Robustness(_) => Err(format!("a {} task reports no metric points", task.kind().as_str())),
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
        (TaskSpec::Robustness(spec), TaskOutcome::Robustness(o)) => robustness::check(spec, o)?,
        (
            TaskSpec::Train(_)
            | TaskSpec::Heatmap(_)
            | TaskSpec::Dfm(_)
            | TaskSpec::Shortcut(_)
            | TaskSpec::Bands(_)
            | TaskSpec::Robustness(_),
            _,
        ) => {
            unreachable!("the kinds were compared above")
        }
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The planner answers the spec's size bound: its count is the plan's length, and a sweep
    /// over the bound is refused after counting at most the bound's worth of tasks.
    #[test]
    fn the_planner_counts_what_it_plans_and_stops_past_the_bound() {
        let base = "[[dataset]]\nkind = \"syn\"\nband = 1\n[model]\narch = \"tiny\"\n[train]\nlr = [0.1, 0.01]\nbatch_size = 8\nepochs = 3\nseed = [0, 1]\n[heatmap]\neps = [2, 4]\nat_epochs = [1]\nchunks_per_map = 3\n[dfm]\nchunks_per_map = 2\n[bands]\n";
        let sweep = freqsweep_common::spec::parse(base, "s.toml").unwrap();
        // Per point: 1 train + 2 ε × 3 chunks × 2 maps + 2 DFM chunks + 1 shortcut + 1 bands.
        assert_eq!(count_tasks(&sweep, usize::MAX), Ok(plan(&sweep).len()));
        assert_eq!(plan(&sweep).len(), 4 * (1 + 12 + 2 + 1 + 1));
        assert_eq!(count_tasks(&sweep, 30), Err((34, 2)), "stops at the first point past the bound");
        // The count is the plan's length on every example spec (given models, sizes, epochs).
        let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut compared = 0;
        for entry in std::fs::read_dir(&examples).unwrap() {
            let path = entry.unwrap().path();
            let Some(text) =
                path.extension().filter(|e| *e == "toml").and_then(|_| std::fs::read_to_string(&path).ok())
            else {
                continue;
            };
            // Examples that read data from elsewhere are skipped by the parser's own error.
            let Ok(sweep) = freqsweep_common::spec::parse(&text, &path.display().to_string()) else { continue };
            let planned = plan(&sweep);
            let mut planner = Planner::new(&sweep);
            for (index, point) in sweep.points.iter().enumerate() {
                let of_point = planned.iter().filter(|t| t.point == index).count();
                assert_eq!(planner.count_point(point), of_point, "{}: point {}", path.display(), point.id);
            }
            compared += 1;
        }
        assert!(compared >= 5, "{compared} example specs compared");
        // 4 000 points × (1 + 2 ε × 514 one-cell chunks): refused before the plan is built.
        let seeds: Vec<String> = (0..4000).map(|s| s.to_string()).collect();
        let text = format!(
            "[[dataset]]\nkind = \"syn\"\nband = 1\n[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\nseed = [{}]\n[heatmap]\neps = [2, 4]\nchunk_cells = 1\n",
            seeds.join(", ")
        );
        let big = freqsweep_common::spec::parse(&text, "s.toml").unwrap();
        let limit = freqsweep_common::spec::MAX_TASKS;
        let (tasks, points) = count_tasks(&big, limit).unwrap_err();
        assert_eq!((tasks, points), (1029 * 1944, 1944), "over {limit} after 1 944 points of 1 029 tasks");
        // One point of 4 000 ε × 514 one-cell chunks: counted, not planned.
        let eps: Vec<String> = (1..=4000).map(|i| format!("{}", i as f64 / 100.0)).collect();
        let text = format!(
            "[[dataset]]\nkind = \"syn\"\nband = 1\n[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\n[heatmap]\nchunk_cells = 1\neps = [{}]\n",
            eps.join(", ")
        );
        let one = freqsweep_common::spec::parse(&text, "s.toml").unwrap();
        assert_eq!(count_tasks(&one, limit), Err((1 + 4000 * 514, 1)));
    }
}
