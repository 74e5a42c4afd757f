//! The heatmap room: per trained model, per ε, the canonical cells of the map cut into chunks,
//! each chunk a task that depends on the model's train task and takes its final weights (the
//! `model` output, not the full checkpoint) as input. A chunk's result must be exactly its cells.
//! Chunks merge into maps as their results are accepted ([`Maps`]); a complete map is stored as a
//! content-addressed artifact for later stages. Its report section: the maps and their figures.

use super::{next_id, Derived, Input, PointPlan};
use crate::graph::PlannedTask;
use crate::merge::MergedHeatmap;
use crate::report::{esc, figures, save, short_id, PointReport, RunData};
use crate::scheduler::{Cost, CostClass, TaskId};
use anyhow::{Context, Result};
use figures::CentredMap;
use freqsweep_common::heatmap::{partition_cells, CellChunk, CellStat};
use freqsweep_common::npy::NpyArray;
use freqsweep_common::spec::GridPoint;
use freqsweep_common::spec::{LayerChoice, Sweep};
use freqsweep_common::spectrum::{Cell, Shape2};
use freqsweep_common::task::{
    epoch_output, AnalysisTarget, HeatmapOutcome, HeatmapTask, ModelSource, TaskOutcome, TaskSpec, MODEL_OUTPUT,
};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

/// Format ε for keys and file names (`4`, `0.5`).
pub fn eps_label(eps: f64) -> String {
    freqsweep_common::spec::format_number(eps)
}

/// The spectrum of a heatmap task's images (the spec made sure every planned dataset has a size).
pub(crate) fn shape_of(h: &HeatmapTask) -> Shape2 {
    h.target.dataset.image_shape().unwrap_or(Shape2::new(32, 32))
}

/// What every point's heatmaps share, cut once per image size: the selected canonical cells
/// (all 514 of a 32 × 32 spectrum by default) in chunks.
pub(super) struct Prepared {
    spec: Option<freqsweep_common::spec::HeatmapSpec>,
    chunks: BTreeMap<(usize, usize), Vec<CellChunk>>,
    layers: Vec<String>,
}

impl Prepared {
    pub(super) fn new(sweep: &Sweep) -> Prepared {
        let layers = match sweep.analyses.heatmap.as_ref().map(|h| &h.layers) {
            None | Some(LayerChoice::None) => Vec::new(),
            Some(LayerChoice::All) => vec!["all".to_string()],
            Some(LayerChoice::Named(names)) => names.clone(),
        };
        let mut prepared = Prepared { spec: sweep.analyses.heatmap.clone(), chunks: BTreeMap::new(), layers };
        for shape in sweep.points.iter().filter_map(|p| p.task.dataset.image_shape()) {
            prepared.cut(shape);
        }
        prepared
    }

    /// Cut the cells of images of `shape` into chunks, once per size.
    pub(super) fn cut(&mut self, shape: Shape2) {
        let Some(h) = &self.spec else { return };
        self.chunks.entry((shape.h, shape.w)).or_insert_with(|| {
            let cells = h.cells.cells(shape);
            partition_cells(&cells, h.chunks.chunks(cells.len()))
        });
    }

    pub(super) fn tasks_per_point(&self) -> usize {
        let most = self.chunks.values().map(Vec::len).max().unwrap_or(0);
        self.spec.as_ref().map_or(0, |h| h.eps.len() * most)
    }

    /// Per kept epoch of the point's run, a map of that epoch's checkpoint: chunks that depend
    /// on the train task but start as soon as the checkpoint is stored (`DepsSatisfied`).
    pub(super) fn plan_epochs(&self, point: &PointPlan<'_>, tasks: &mut Vec<PlannedTask>) {
        let Some(train) = point.train else { return };
        for &epoch in &point.point.task.train.keep_epochs {
            let model = ModelSource::Checkpoint { artifact: epoch_output(epoch) };
            self.plan_map(point, (model, vec![train]), Some(epoch), tasks);
        }
    }

    /// How many chunks [`Prepared::plan`] and [`Prepared::plan_epochs`] plan for `point`.
    pub(super) fn count(&self, point: &freqsweep_common::spec::GridPoint, trained: bool) -> usize {
        let Some(h) = &self.spec else { return 0 };
        let chunks = point.task.dataset.image_shape().and_then(|s| self.chunks.get(&(s.h, s.w))).map_or(0, Vec::len);
        let maps = 1 + if trained { point.task.train.keep_epochs.len() } else { 0 };
        h.eps.len().saturating_mul(chunks).saturating_mul(maps)
    }

    /// The trained (or given) model's maps.
    pub(super) fn plan(&self, point: &PointPlan<'_>, tasks: &mut Vec<PlannedTask>) {
        if let Some(model) = point.model() {
            self.plan_map(point, model, None, tasks);
        }
    }

    /// One map per ε of `model`, its chunks depending on `deps`.
    fn plan_map(
        &self,
        point: &PointPlan<'_>,
        (model, deps): (ModelSource, Vec<TaskId>),
        epoch: Option<u32>,
        tasks: &mut Vec<PlannedTask>,
    ) {
        let Some(h) = &self.spec else { return };
        let shape = point.point.task.dataset.image_shape();
        let chunks = shape.and_then(|s| self.chunks.get(&(s.h, s.w))).map_or(&[][..], Vec::as_slice);
        let at = epoch.map_or_else(String::new, |e| format!("/ep{e}"));
        for &eps in &h.eps {
            for chunk in chunks {
                let spec = HeatmapTask {
                    target: AnalysisTarget::new(
                        point.point.task.dataset.clone(),
                        model.clone(),
                        point.point.task.train.classes,
                        h.images,
                    )
                    .with_numerics(h.precision, h.memory_format),
                    eps,
                    cells: chunk.cells.clone(),
                    chunk: chunk.index,
                    layers: self.layers.clone(),
                    seed: h.seed,
                    batch: h.batch,
                    epoch,
                };
                tasks.push(PlannedTask {
                    id: next_id(tasks),
                    key: format!("heatmap/{}{at}/eps{}/chunk{:03}", point.point.id, eps_label(eps), chunk.index),
                    point: point.index,
                    cost: cost(&spec, &point.point.task.train.model),
                    spec: TaskSpec::Heatmap(spec),
                    deps: deps.clone(),
                });
            }
        }
    }
}

/// Throughput class `heatmap/<arch>`; work units: cells × test images evaluated (the image limit
/// or the test split, whichever is smaller; `.npy` datasets without a limit: cells).
pub fn cost(h: &HeatmapTask, arch: &str) -> Cost {
    let images = super::evaluated_images(&h.target.dataset, h.target.images);
    let units = h.cells.len().max(1).saturating_mul(images) as f64;
    Cost { class: CostClass::new(&format!("heatmap/{arch}")), units }
}

/// The model's weights, from the train task it depends on: its final `model`, or the checkpoint
/// after the chunk's epoch.
pub(super) fn inputs(task: &PlannedTask) -> Vec<Input> {
    let name = if let TaskSpec::Heatmap(HeatmapTask { epoch: Some(e), .. }) = &task.spec {
        epoch_output(*e)
    } else {
        MODEL_OUTPUT.to_string()
    };
    task.deps.iter().map(|&d| Input::output(d, name.clone())).collect()
}

/// Exactly the chunk's cells, each once, every count within what `images` images allow.
pub(super) fn check(spec: &HeatmapTask, o: &HeatmapOutcome) -> Result<(), String> {
    if o.eps.to_bits() != spec.eps.to_bits() || o.chunk != spec.chunk {
        return Err(format!(
            "the result is for ε {} chunk {}, the task is ε {} chunk {}",
            o.eps, o.chunk, spec.eps, spec.chunk
        ));
    }
    if o.images == 0 || (spec.target.images > 0 && o.images > spec.target.images) {
        return Err(format!("the result evaluated {} images, the task allows 1..={}", o.images, spec.target.images));
    }
    let images = o.images as u64;
    let counts = |s: CellStat| s.n == images && s.sum.is_finite() && s.sum >= 0.0 && s.sum <= images as f64;
    if !counts(o.clean) {
        return Err(format!("the clean error {}/{} does not fit {images} images", o.clean.sum, o.clean.n));
    }
    let wanted: HashSet<Cell> = spec.cells.iter().copied().collect();
    let same_cells = |cells: &[(Cell, CellStat)]| {
        cells.len() == spec.cells.len() && cells.iter().map(|(c, _)| *c).collect::<HashSet<_>>() == wanted
    };
    if !same_cells(&o.error) {
        return Err(format!("the result has {} cells, not exactly the chunk's {}", o.error.len(), spec.cells.len()));
    }
    if let Some((cell, s)) = o.error.iter().find(|(_, s)| !counts(*s)) {
        return Err(format!("cell {cell:?} has {}/{} errors, which {images} images cannot give", s.sum, s.n));
    }
    let named: Option<HashSet<&str>> =
        (!spec.layers.iter().any(|l| l == "all")).then(|| spec.layers.iter().map(String::as_str).collect());
    if let Some(named) = &named {
        let got: HashSet<&str> = o.layers.keys().map(String::as_str).collect();
        if &got != named {
            return Err(format!("the result has layer maps {got:?}, the task asks for {named:?}"));
        }
    }
    // A cosine distance is at most 2 per image.
    let distances = |s: CellStat| s.n == images && s.sum.is_finite() && s.sum >= 0.0 && s.sum <= 2.0 * images as f64;
    for (layer, cells) in &o.layers {
        if !same_cells(cells) || cells.iter().any(|(_, s)| !distances(*s)) {
            return Err(format!("the layer map {layer:?} is not the chunk's cells with distances of {images} images"));
        }
    }
    Ok(())
}

/// Which map a chunk belongs to: its grid point, the epoch of its checkpoint (`None`: the
/// trained model) and ε (compared by bits, never as floats).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MapKey {
    pub point: usize,
    pub epoch: Option<u32>,
    eps_bits: u64,
}

impl MapKey {
    /// The map of the trained model.
    pub fn new(point: usize, eps: f64) -> MapKey {
        MapKey { point, epoch: None, eps_bits: eps.to_bits() }
    }

    /// The map of the checkpoint after `epoch`.
    pub fn at_epoch(point: usize, epoch: u32, eps: f64) -> MapKey {
        MapKey { epoch: Some(epoch), ..MapKey::new(point, eps) }
    }

    pub fn of(task: &PlannedTask) -> Option<MapKey> {
        // Only a heatmap task has a map: every other kind is none, so no list of them here.
        let TaskSpec::Heatmap(h) = &task.spec else { return None };
        Some(MapKey { epoch: h.epoch, ..MapKey::new(task.point, h.eps) })
    }

    pub fn eps(self) -> f64 {
        f64::from_bits(self.eps_bits)
    }
}

/// Every heatmap of a sweep, merged chunk by chunk as results are accepted (the driver) or read
/// back from the store (the report). Merging is idempotent by task: a chunk merges once, so a
/// replayed or duplicated result changes nothing.
pub struct Maps {
    maps: BTreeMap<MapKey, MapState>,
}

struct MapState {
    merged: MergedHeatmap,
    chunks: usize,
    merged_tasks: BTreeSet<TaskId>,
}

impl Maps {
    /// Empty maps for every (point, ε) that `tasks` has chunks of.
    pub fn new(tasks: &[PlannedTask]) -> Maps {
        let mut maps = Maps { maps: BTreeMap::new() };
        maps.add(tasks);
        maps
    }

    /// Empty maps for the (point, ε) of tasks added to the plan.
    pub fn add(&mut self, tasks: &[PlannedTask]) {
        let maps = &mut self.maps;
        for task in tasks {
            if let (Some(key), TaskSpec::Heatmap(h)) = (MapKey::of(task), &task.spec) {
                let state = maps.entry(key).or_insert_with(|| MapState {
                    merged: MergedHeatmap::new(shape_of(h), key.eps()),
                    chunks: 0,
                    merged_tasks: BTreeSet::new(),
                });
                state.chunks += 1;
                state.merged.planned_cells += h.cells.len();
            }
        }
    }

    /// Merge the accepted result of chunk `task`. Returns whether its map became complete now.
    pub fn merge(&mut self, task: &PlannedTask, outcome: &HeatmapOutcome) -> Result<bool, String> {
        let key = MapKey::of(task).ok_or("not a heatmap task")?;
        let state = self.maps.get_mut(&key).ok_or("a heatmap task of no planned map")?;
        if state.merged_tasks.contains(&task.id) {
            return Ok(false);
        }
        state.merged.add(outcome).map_err(|e| format!("merging {}: {e}", task.key))?;
        state.merged_tasks.insert(task.id);
        Ok(state.merged_tasks.len() == state.chunks)
    }

    /// The map of `key` as merged so far (cells not yet computed are missing).
    pub fn get(&self, key: MapKey) -> Option<&MergedHeatmap> {
        self.maps.get(&key).filter(|s| !s.merged_tasks.is_empty()).map(|s| &s.merged)
    }

    /// Chunks merged and planned for `key`.
    pub fn progress(&self, key: MapKey) -> (usize, usize) {
        self.maps.get(&key).map_or((0, 0), |s| (s.merged_tasks.len(), s.chunks))
    }

    /// Every planned map of grid point `point` (also those with nothing merged yet): its key,
    /// what is merged so far, and chunks merged and planned.
    pub fn of_point(&self, point: usize) -> impl Iterator<Item = (MapKey, &MergedHeatmap, usize, usize)> {
        // Keys order by point first: the point's maps are one range.
        let first = MapKey { point, epoch: None, eps_bits: 0 };
        self.maps
            .range(first..)
            .take_while(move |(k, _)| k.point == point)
            .map(|(k, s)| (*k, &s.merged, s.merged_tasks.len(), s.chunks))
    }
}

/// Per train task, the epochs whose checkpoints heatmap chunks take (`[heatmap] at_epochs`),
/// with those chunks.
pub(crate) fn kept_epochs(tasks: &[PlannedTask]) -> HashMap<TaskId, BTreeMap<u32, Vec<TaskId>>> {
    let mut kept: HashMap<TaskId, BTreeMap<u32, Vec<TaskId>>> = HashMap::new();
    for task in tasks {
        if let (TaskSpec::Heatmap(h), Some(&train)) = (&task.spec, task.deps.first()) {
            if let Some(epoch) = h.epoch {
                kept.entry(train).or_default().entry(epoch).or_default().push(task.id);
            }
        }
    }
    kept
}

/// Merge chunk `task`'s accepted result; a map complete now is derived as its artifact.
pub(super) fn merge(maps: &mut Maps, task: &PlannedTask, outcome: &HeatmapOutcome) -> Result<Vec<Derived>, String> {
    if !maps.merge(task, outcome)? {
        return Ok(Vec::new());
    }
    let Some(key) = MapKey::of(task) else { return Ok(Vec::new()) };
    let Some(map) = maps.get(key) else { return Ok(Vec::new()) };
    let point = point_id(task);
    let name = map_artifact_name(point, key);
    Ok(vec![Derived { key: format!("derived:{name}"), bytes: map_artifact(point, map), name }])
}

/// A complete map as the content-addressed artifact a later stage takes as input: JSON with every
/// canonical cell's counts (sums and image counts, never rates, so it merges and compares exactly).
#[derive(Serialize)]
struct MapFile<'a> {
    format: &'static str,
    point: &'a str,
    eps: f64,
    height: usize,
    width: usize,
    images: usize,
    clean: CellStat,
    error: Vec<(Cell, CellStat)>,
    layers: BTreeMap<&'a str, Vec<(Cell, CellStat)>>,
}

/// The artifact bytes of the merged map of grid point `point_id` (deterministic: the same map
/// gives the same digest).
pub fn map_artifact(point_id: &str, map: &MergedHeatmap) -> Vec<u8> {
    let shape = map.error.shape();
    // The computed cells (a map of a cell selection skips the others).
    let cells: Vec<Cell> = shape.heatmap_cells().into_iter().filter(|&c| map.error.get(c).n > 0).collect();
    let of = |acc: &freqsweep_common::heatmap::HeatmapAccumulator| cells.iter().map(|&c| (c, acc.get(c))).collect();
    let file = MapFile {
        format: "freqsweep-heatmap-1",
        point: point_id,
        eps: map.eps,
        height: shape.h,
        width: shape.w,
        images: map.images,
        clean: map.clean,
        error: of(&map.error),
        layers: map.layers.iter().map(|(name, acc)| (name.as_str(), of(acc))).collect(),
    };
    serde_json::to_vec(&file).expect("maps serialise")
}

/// The grid point id of a chunk task (from its key `heatmap/<point>[/ep<e>]/eps<ε>/chunk<k>`).
pub fn point_id(task: &PlannedTask) -> &str {
    let rest = task.key.strip_prefix("heatmap/").unwrap_or(&task.key);
    let point = rest.rsplitn(3, '/').nth(2).unwrap_or(rest);
    if let TaskSpec::Heatmap(HeatmapTask { epoch: Some(e), .. }) = &task.spec {
        point.strip_suffix(&format!("/ep{e}")).unwrap_or(point)
    } else {
        point
    }
}

/// The artifact name of a merged map (`map/<point>/eps4`, `map/<point>/ep2/eps4`).
pub fn map_artifact_name(point_id: &str, key: MapKey) -> String {
    match key.epoch {
        None => format!("map/{point_id}/eps{}", eps_label(key.eps())),
        Some(e) => format!("map/{point_id}/ep{e}/eps{}", eps_label(key.eps())),
    }
}

// ---------------------------------------------------------------- TensorBoard view

/// The map artifact ([`map_artifact`]), read back.
#[derive(serde::Deserialize)]
struct StoredMap {
    height: usize,
    width: usize,
    error: Vec<(Cell, CellStat)>,
    #[serde(default)]
    layers: BTreeMap<String, Vec<(Cell, CellStat)>>,
}

/// `map/<point>/eps4` → (point, None, "4"); `map/<point>/ep2/eps4` → (point, Some(2), "4").
fn parse_map_name(name: &str) -> Option<(String, Option<u32>, String)> {
    let rest = name.strip_prefix("map/")?;
    let (head, eps) = rest.rsplit_once("/eps")?;
    match head.rsplit_once("/ep") {
        Some((point, epoch)) if epoch.parse::<u32>().is_ok() => Some((point.into(), epoch.parse().ok(), eps.into())),
        _ => Some((head.into(), None, eps.into())),
    }
}

/// TensorBoard: a complete map (`heatmap/eps<ε>`) and its layer maps (`heatmap/eps<ε>/<layer>`),
/// the report's figures (`heatmaps/<point>_eps<ε>[_<layer>].png`); `None` for an artifact that
/// is not a map.
pub(crate) fn tensorboard_map(name: &str, bytes: &[u8]) -> Result<Option<super::DerivedFigures>, String> {
    let Some((point, epoch, eps)) = parse_map_name(name) else { return Ok(None) };
    let map: StoredMap = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let shape = Shape2::new(map.height, map.width);
    let means = |cells: &[(Cell, CellStat)]| -> Result<Vec<f64>, String> {
        let mut acc = freqsweep_common::heatmap::HeatmapAccumulator::new(shape);
        acc.write_all(cells).map_err(|e| format!("a map artifact's cells: {e}"))?;
        Ok(acc.means())
    };
    let error = means(&map.error)?;
    let title = match epoch {
        Some(e) => format!("{} epoch {e} ε={eps}: test error", short_id(&point)),
        None => format!("{} ε={eps}: test error", short_id(&point)),
    };
    let centred = CentredMap { values: &error, height: shape.h, width: shape.w };
    let mut figures =
        vec![(format!("heatmap/eps{eps}"), figures::heatmap(centred, Some((0.0, 1.0)), &title, "error rate"))];
    for (layer, cells) in &map.layers {
        let values = means(cells)?;
        let centred = CentredMap { values: &values, height: shape.h, width: shape.w };
        let title = format!("{} ε={eps}: {layer}", short_id(&point));
        figures.push((format!("heatmap/eps{eps}/{layer}"), figures::heatmap(centred, None, &title, "1 − cos")));
    }
    Ok(Some(super::DerivedFigures { point, epoch, figures }))
}

// ---------------------------------------------------------------- live view

/// The dashboard's view of a heatmap: what its chunks merged so far.
#[derive(Debug, Serialize)]
pub struct LiveMap {
    /// The checkpoint's epoch (`at_epochs`), `null` for the trained model.
    pub epoch: Option<u32>,
    pub eps: f64,
    pub height: usize,
    pub width: usize,
    pub chunks_done: usize,
    pub chunks: usize,
    /// Canonical cells written and planned.
    pub written: usize,
    pub planned: usize,
    pub complete: bool,
    /// Clean test error of the images the chunks used; `null` before the first chunk.
    pub clean_error: Option<f64>,
    /// Mean error over the computed cells of the centred map (the report's `mean_heatmap_error`).
    pub mean_error: Option<f64>,
    /// Centred `H × W` mean error per cell, row-major; `null` where not computed yet.
    pub values: Vec<f64>,
}

/// The dashboard's `maps` of point `index`: every planned map, also with nothing merged yet.
pub(crate) fn live_view(maps: &Maps, index: usize) -> Vec<LiveMap> {
    maps.of_point(index)
        .map(|(key, map, chunks_done, chunks)| {
            let shape = map.error.shape();
            let values = map.error.means();
            let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
            let planned = if map.planned_cells > 0 { map.planned_cells } else { shape.heatmap_cells().len() };
            LiveMap {
                epoch: key.epoch,
                eps: key.eps(),
                height: shape.h,
                width: shape.w,
                chunks_done,
                chunks,
                written: map.error.written(),
                planned,
                complete: chunks_done == chunks,
                clean_error: (map.clean.n > 0).then(|| map.clean.mean()),
                mean_error: (!finite.is_empty()).then(|| finite.iter().sum::<f64>() / finite.len() as f64),
                values,
            }
        })
        .collect()
}

/// Of point `index`'s planned maps, those complete, and how many there are.
pub(crate) fn live_progress(maps: &Maps, index: usize) -> (usize, usize) {
    let all: Vec<_> = maps.of_point(index).collect();
    (all.iter().filter(|(_, _, done, chunks)| done == chunks).count(), all.len())
}

// ---------------------------------------------------------------- report section

/// `results.csv` columns of the heatmap section: per ε the clean error and the map's mean error.
pub(super) fn csv_header(run: &RunData<'_>, csv: &mut String) {
    for e in eps_list(run.sweep) {
        let _ = write!(csv, ",clean_error_eps{0},mean_heatmap_error_eps{0}", eps_label(*e));
    }
}

/// The heatmap section of a point's report: per ε its merged map (error and layer maps, `.npy`
/// and figures; cells not computed yet are grey) and its `results.csv` columns.
pub(super) fn report(
    run: &RunData<'_>,
    index: usize,
    point: &GridPoint,
    report: &mut PointReport,
    csv: &mut String,
) -> Result<()> {
    let (dir, maps) = (run.dir, &run.merged.heatmaps);
    let mut heatmaps = Vec::new();
    for &eps in eps_list(run.sweep) {
        let Some(map) = maps.get(MapKey::new(index, eps)) else {
            csv.push_str(",,");
            continue;
        };
        let stem = format!("{}_eps{}", point.id, eps_label(eps));
        let mut files = write_heatmap(dir, &stem, &point.id, map, &mut report.raw)?;
        files.over_training = over_training(dir, maps, index, point, eps, map, &mut report.raw)?;
        heatmaps.push(files);
        let means: Vec<f64> = map.error.means().into_iter().filter(|v| v.is_finite()).collect();
        let mean = if means.is_empty() { f64::NAN } else { means.iter().sum::<f64>() / means.len() as f64 };
        let _ = write!(csv, ",{},{}", map.clean.mean(), mean);
    }
    if !heatmaps.is_empty() {
        report.sections.push(section(&heatmaps));
    }
    Ok(())
}

/// The sweep's ε list (none without `[heatmap]`).
fn eps_list(sweep: &Sweep) -> &[f64] {
    sweep.analyses.heatmap.as_ref().map_or(&[], |h| h.eps.as_slice())
}

pub(crate) struct HeatmapFiles {
    pub eps: f64,
    pub clean_error: f64,
    pub images: usize,
    pub complete: bool,
    pub error_png: String,
    pub grid_png: Option<String>,
    pub layer_pngs: Vec<(String, String)>,
    /// What the model computed in (`fp32, NCHW`, `bf16, channels-last`, …).
    pub numerics: String,
    /// The maps of the kept epochs' checkpoints and the trained model side by side, and the
    /// mean error per band against the epoch (`[heatmap] at_epochs`).
    pub over_training: Option<OverTraining>,
}

pub(crate) struct OverTraining {
    pub epochs: Vec<u32>,
    pub grid_png: String,
    pub bands_png: String,
    pub csv: String,
}

/// The report section: per ε the map (with its layers) and, with kept epochs, the maps over training.
fn section(heatmaps: &[HeatmapFiles]) -> String {
    let mut html = String::new();
    let out = &mut html;
    for h in heatmaps {
        let _ = writeln!(
            out,
            "<h3>Fourier heatmap, ε = {}</h3>\n<p>{} test images per cell; clean error {:.4}; model computed in {}{}.</p>",
            crate::graph::eps_label(h.eps),
            h.images,
            h.clean_error,
            esc(&h.numerics),
            if h.complete { "" } else { "; <span class=\"fail\">incomplete: grey cells were not computed</span>" }
        );
        let main = h.grid_png.as_ref().unwrap_or(&h.error_png);
        let _ =
            writeln!(out, "<div class=\"figs\"><a href=\"{0}\"><img src=\"{0}\" alt=\"heatmap\"></a></div>", esc(main));
        let mut links = vec![format!("<a href=\"{0}\">error map</a>", esc(&h.error_png))];
        links.extend(h.layer_pngs.iter().map(|(layer, png)| format!("<a href=\"{}\">{}</a>", esc(png), esc(layer))));
        let _ = writeln!(out, "<p>Single maps: {}.</p>", links.join(" · "));
        if let Some(t) = &h.over_training {
            let epochs: Vec<String> = t.epochs.iter().map(u32::to_string).collect();
            let _ = writeln!(
                out,
                "<h4>Over training</h4>\n<p>The maps of the checkpoints after epochs {} (the last is the trained model's) and the mean error per band against the epoch (<a href=\"{}\">CSV</a>): when each band's sensitivity appears, beside the per-class F1 curves below.</p>\n<div class=\"figs\"><a href=\"{2}\"><img src=\"{2}\" alt=\"maps over training\"></a><a href=\"{3}\"><img src=\"{3}\" alt=\"band error over training\"></a></div>",
                esc(&epochs.join(", ")),
                esc(&t.csv),
                esc(&t.grid_png),
                esc(&t.bands_png)
            );
        }
    }
    html
}

/// The maps of a point's kept epochs at `eps` (`heatmaps/<point>_ep<e>_eps<ε>.npy/.png`), all
/// of them beside the trained model's in one figure, and the mean error per band against the
/// epoch (`…_bands_over_training.csv/.png`): which frequencies the model is sensitive to, when.
fn over_training(
    dir: &Path,
    maps: &Maps,
    index: usize,
    point: &GridPoint,
    eps: f64,
    last: &MergedHeatmap,
    raw: &mut Vec<String>,
) -> Result<Option<OverTraining>> {
    let train = &point.task.train;
    let mut stages: Vec<(u32, &MergedHeatmap)> =
        train.keep_epochs.iter().filter_map(|&e| Some((e, maps.get(MapKey::at_epoch(index, e, eps))?))).collect();
    if stages.is_empty() {
        return Ok(None);
    }
    for (epoch, map) in &stages {
        let stem = format!("{}_ep{epoch}_eps{}", point.id, eps_label(eps));
        let values = map.error.means();
        let shape = map.error.shape();
        let path = format!("heatmaps/{stem}.npy");
        NpyArray::from_f64(vec![shape.h, shape.w], &values).write(&dir.join(&path)).with_context(|| path.clone())?;
        raw.push(path);
        let title = format!("{} epoch {epoch} ε={}: test error", short_id(&point.id), eps_label(eps));
        let centred = CentredMap { values: &values, height: shape.h, width: shape.w };
        save(&figures::heatmap(centred, Some((0.0, 1.0)), &title, "error rate"), dir, &format!("heatmaps/{stem}.png"))?;
    }
    stages.push((train.epochs, last));
    let means: Vec<Vec<f64>> = stages.iter().map(|(_, m)| m.error.means()).collect();
    let names: Vec<String> = stages.iter().map(|(e, _)| format!("epoch {e}")).collect();
    let panels: Vec<figures::MapPanel> = stages
        .iter()
        .zip(&means)
        .zip(&names)
        .map(|(((_, m), values), name)| {
            let shape = m.error.shape();
            figures::MapPanel {
                name,
                map: CentredMap { values, height: shape.h, width: shape.w },
                range: Some((0.0, 1.0)),
                bar_label: "error rate",
            }
        })
        .collect();
    let stem = format!("heatmaps/{}_eps{}", point.id, eps_label(eps));
    let title = format!("{} ε={}: test error over training", short_id(&point.id), eps_label(eps));
    let grid_png = format!("{stem}_over_training.png");
    save(&figures::heatmap_grid(&panels, panels.len().min(4), &title), dir, &grid_png)?;
    // Mean error per band (DC left out) at each epoch, and the clean error it rises from.
    let mut csv = String::from("epoch,clean,B1,B2,B3,B4\n");
    let mut series: Vec<(String, Vec<(f64, f64)>)> =
        freqsweep_common::bands::Band::ALL.iter().map(|b| (b.to_string(), Vec::new())).collect();
    let mut series_clean: Vec<(f64, f64)> = Vec::new();
    for ((epoch, map), values) in stages.iter().zip(&means) {
        let shape = map.error.shape();
        let mut sums = [(0.0f64, 0usize); 4];
        for (i, cell) in shape.cells().enumerate() {
            if let (Some(band), true) = (train.band_layout.band_of(cell), values[i].is_finite()) {
                let slot = &mut sums[usize::from(band.index() - 1)];
                slot.0 += values[i];
                slot.1 += 1;
            }
        }
        let _ = write!(csv, "{epoch},{}", map.clean.mean());
        series_clean.push((f64::from(*epoch), map.clean.mean()));
        for (b, (sum, n)) in sums.iter().enumerate() {
            let mean = if *n == 0 { f64::NAN } else { sum / *n as f64 };
            let _ = write!(csv, ",{}", if mean.is_finite() { mean.to_string() } else { String::new() });
            if mean.is_finite() {
                series[b].1.push((f64::from(*epoch), mean));
            }
        }
        csv.push('\n');
    }
    let csv_path = format!("{stem}_bands_over_training.csv");
    crate::report::write_file(&dir.join(&csv_path), &csv)?;
    raw.push(csv_path.clone());
    series.retain(|(_, points)| !points.is_empty());
    series.push(("clean".to_string(), series_clean));
    // One panel: the figure is one panel wide, so the long id goes in the panel's caption.
    let panel = figures::LinePanel { title: point.id.clone(), series, bands: Vec::new() };
    let title = format!("mean error per band, ε = {}", eps_label(eps));
    let bands_png = format!("{stem}_bands_over_training.png");
    save(&figures::line_panels(&[panel], "epoch", "error rate", &title), dir, &bands_png)?;
    Ok(Some(OverTraining { epochs: stages.iter().map(|(e, _)| *e).collect(), grid_png, bands_png, csv: csv_path }))
}

/// `heatmaps/<stem>.npy/.png` (error rate on 0..1), `heatmaps/<stem>_<layer>.npy/.png` (cosine
/// distance, own scale) and `heatmaps/<stem>_layers.png` (all side by side).
fn write_heatmap(dir: &Path, stem: &str, id: &str, map: &MergedHeatmap, raw: &mut Vec<String>) -> Result<HeatmapFiles> {
    let shape = map.error.shape();
    let write_npy = |name: &str, values: &[f64], raw: &mut Vec<String>| -> Result<()> {
        let path = format!("heatmaps/{name}.npy");
        let full = dir.join(&path);
        std::fs::create_dir_all(full.parent().expect("has parent"))?;
        NpyArray::from_f64(vec![shape.h, shape.w], values).write(&full).with_context(|| path.clone())?;
        raw.push(path);
        Ok(())
    };
    let eps_text = eps_label(map.eps);
    let error = map.error.means();
    write_npy(stem, &error, raw)?;
    let error_map = CentredMap { values: &error, height: shape.h, width: shape.w };
    let title = format!("{} ε={eps_text}: test error", short_id(id));
    save(&figures::heatmap(error_map, Some((0.0, 1.0)), &title, "error rate"), dir, &format!("heatmaps/{stem}.png"))?;
    let layer_means: Vec<(String, Vec<f64>)> = map.layers.iter().map(|(l, acc)| (l.clone(), acc.means())).collect();
    let mut layer_pngs = Vec::new();
    for (layer, values) in &layer_means {
        let name = format!("{stem}_{layer}");
        write_npy(&name, values, raw)?;
        let layer_map = CentredMap { values, height: shape.h, width: shape.w };
        let title = format!("{} ε={eps_text}: {layer}", short_id(id));
        save(&figures::heatmap(layer_map, None, &title, "1 − cos"), dir, &format!("heatmaps/{name}.png"))?;
        layer_pngs.push((layer.clone(), format!("heatmaps/{name}.png")));
    }
    let grid_png = if layer_means.is_empty() {
        None
    } else {
        let mut panels =
            vec![figures::MapPanel { name: "error", map: error_map, range: Some((0.0, 1.0)), bar_label: "error rate" }];
        for (layer, values) in &layer_means {
            let map = CentredMap { values, height: shape.h, width: shape.w };
            panels.push(figures::MapPanel { name: layer, map, range: None, bar_label: "1 − cos" });
        }
        let title = format!("{} ε={eps_text}: error and layer cosine distance", short_id(id));
        let path = format!("heatmaps/{stem}_layers.png");
        save(&figures::heatmap_grid(&panels, 3, &title), dir, &path)?;
        Some(path)
    };
    Ok(HeatmapFiles {
        eps: map.eps,
        clean_error: map.clean.mean(),
        images: map.images,
        complete: map.is_complete(),
        error_png: format!("heatmaps/{stem}.png"),
        grid_png,
        layer_pngs,
        numerics: map.numerics_text(),
        over_training: None,
    })
}

/// A result that fits `task` (for the load and durability tests' simulated workers, via
/// `testing`): every cell once, `images` images, `errors` wrong per cell, the clean error 0.
pub fn simulated(task: &HeatmapTask, images: usize, errors: usize, device: &str) -> TaskOutcome {
    TaskOutcome::Heatmap({
        let n = images as u64;
        HeatmapOutcome {
            eps: task.eps,
            chunk: task.chunk,
            images,
            clean: CellStat { sum: 0.0, n },
            error: task.cells.iter().map(|&c| (c, CellStat { sum: errors as f64, n })).collect(),
            layers: BTreeMap::new(),
            seconds: 0.0,
            images_per_second: 0.0,
            device: device.to_string(),
            precision: Default::default(),
            memory_format: Default::default(),
        }
    })
}
