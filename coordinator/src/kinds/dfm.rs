//! The DFM room (SCIENCE.md §7): per trained model, the removal units of its dominant-frequency
//! loss maps cut into chunks, each chunk a task that depends on the model's train task and takes
//! its final weights (`model`) as input; one chunk's forward passes serve every class. A chunk's
//! result must be exactly its units with every class's sums and counts. Chunks merge into the
//! point's maps as results are accepted ([`DfmMaps`]); a complete map set is stored as a
//! content-addressed artifact for later stages. Its report section: per class the loss map, the
//! accuracy-drop map and the DFMs at every `top`, as `.npy` and figures under `dfm/<point>/`.

use super::{next_id, Derived, Input, PointPlan};
use crate::graph::PlannedTask;
use crate::report::{esc, PointReport, RunData};
use crate::scheduler::{Cost, CostClass, TaskId};
use anyhow::Result;
use freqsweep_common::dfm::{self, ClassStat, CleanStat, DfmAccumulator};
use freqsweep_common::heatmap::{partition_cells, CellChunk};
use freqsweep_common::spec::{DfmSpec, GridPoint, Sweep};
use freqsweep_common::spectrum::{Cell, Shape2};
use freqsweep_common::task::{
    AnalysisTarget, DfmOutcome, DfmTask, MemoryFormat, Precision, TaskOutcome, TaskSpec, MODEL_OUTPUT,
};
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt::Write as _;

/// The name under which a lease carries a point's merged DFM maps.
pub const DFM_MAPS_OUTPUT: &str = "dfm_maps";

/// The key of grid point `point`'s merged DFM maps, a derived artifact.
pub(super) fn maps_key(point: usize) -> String {
    format!("derived:dfm_maps/{point}")
}

/// Merge chunk `task`'s accepted result; the point's maps complete now are derived as the
/// artifact its shortcut-degree task takes.
pub(super) fn merge(maps: &mut DfmMaps, task: &PlannedTask, outcome: &DfmOutcome) -> Result<Vec<Derived>, String> {
    if !maps.merge(task, outcome)? {
        return Ok(Vec::new());
    }
    let Some(acc) = maps.get(task.point) else { return Ok(Vec::new()) };
    let point = point_id(task);
    let Some(bytes) = map_artifact(point, acc) else { return Ok(Vec::new()) };
    Ok(vec![Derived { key: maps_key(task.point), name: map_artifact_name(point), bytes }])
}

/// The spectrum of a DFM task's images (the spec made sure every planned dataset has a size).
pub(crate) fn shape_of(d: &DfmTask) -> Shape2 {
    d.target.dataset.image_shape().unwrap_or(Shape2::new(32, 32))
}

/// What every point's DFM tasks share, cut once per image size.
pub(super) struct Prepared {
    spec: Option<DfmSpec>,
    chunks: BTreeMap<(usize, usize), Vec<CellChunk>>,
}

impl Prepared {
    pub(super) fn new(sweep: &Sweep) -> Prepared {
        let mut prepared = Prepared { spec: sweep.analyses.dfm.clone(), chunks: BTreeMap::new() };
        for shape in sweep.points.iter().filter_map(|p| p.task.dataset.image_shape()) {
            prepared.cut(shape);
        }
        prepared
    }

    /// Cut the units of images of `shape` into chunks, once per size. The spec checked the patch
    /// against every dataset's size; a size it does not divide has no units and plans no chunk.
    pub(super) fn cut(&mut self, shape: Shape2) {
        let Some(d) = &self.spec else { return };
        if self.chunks.contains_key(&(shape.h, shape.w)) {
            return;
        }
        if let Ok(units) = dfm::units(shape, d.patch) {
            self.chunks.insert((shape.h, shape.w), partition_cells(&units, d.chunks.chunks(units.len())));
        }
    }

    /// The chunks of a point whose images are `shape`.
    fn chunks(&self, shape: Option<Shape2>) -> &[CellChunk] {
        shape.and_then(|s| self.chunks.get(&(s.h, s.w))).map_or(&[], Vec::as_slice)
    }

    pub(super) fn tasks_per_point(&self) -> usize {
        self.chunks.values().map(Vec::len).max().unwrap_or(0)
    }

    /// How many chunks [`Prepared::plan`] plans for `point`.
    pub(super) fn count(&self, point: &freqsweep_common::spec::GridPoint) -> usize {
        if self.spec.is_none() {
            return 0;
        }
        self.chunks(point.task.dataset.image_shape()).len()
    }

    /// Plan the point's chunks; returns their ids.
    pub(super) fn plan(&self, point: &PointPlan<'_>, tasks: &mut Vec<PlannedTask>) -> Vec<TaskId> {
        let (Some(d), Some((model, deps))) = (&self.spec, point.model()) else { return Vec::new() };
        let chunks = self.chunks(point.point.task.dataset.image_shape());
        let mut ids = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let spec = DfmTask {
                target: AnalysisTarget::new(
                    point.point.task.dataset.clone(),
                    model.clone(),
                    point.point.task.train.classes,
                    d.images,
                )
                .with_numerics(d.precision, d.memory_format),
                patch: d.patch,
                units: chunk.cells.clone(),
                chunk: chunk.index,
                batch: d.batch,
            };
            ids.push(next_id(tasks));
            tasks.push(PlannedTask {
                id: next_id(tasks),
                key: format!("dfm/{}/chunk{:03}", point.point.id, chunk.index),
                point: point.index,
                cost: cost(&spec, &point.point.task.train.model),
                spec: TaskSpec::Dfm(spec),
                deps: deps.clone(),
            });
        }
        ids
    }
}

/// Throughput class `dfm/<arch>`; work units: units × test images evaluated.
pub fn cost(d: &DfmTask, arch: &str) -> Cost {
    let images = super::evaluated_images(&d.target.dataset, d.target.images);
    let units = d.units.len().max(1).saturating_mul(images) as f64;
    Cost { class: CostClass::new(&format!("dfm/{arch}")), units }
}

/// The model's weights, from the train task it depends on.
pub(super) fn inputs(task: &PlannedTask) -> Vec<Input> {
    task.deps.iter().map(|&d| Input::output(d, MODEL_OUTPUT)).collect()
}

/// Exactly the chunk's units, each once, with every class's sums and counts within what the
/// images allow.
pub(super) fn check(spec: &DfmTask, o: &DfmOutcome) -> Result<(), String> {
    if o.chunk != spec.chunk || o.patch != spec.patch {
        return Err(format!(
            "the result is for patch {} chunk {}, the task is patch {} chunk {}",
            o.patch, o.chunk, spec.patch, spec.chunk
        ));
    }
    if o.images == 0 || (spec.target.images > 0 && o.images > spec.target.images) {
        return Err(format!("the result evaluated {} images, the task allows 1..={}", o.images, spec.target.images));
    }
    if o.clean.len() != spec.target.classes {
        return Err(format!("the result has {} classes, the model {}", o.clean.len(), spec.target.classes));
    }
    let per_class: u64 = o.clean.iter().map(|c| c.images).sum();
    if per_class != o.images as u64 {
        return Err(format!("the classes hold {per_class} images, the result evaluated {}", o.images));
    }
    let loss_ok = |loss: f64| loss.is_finite() && loss >= 0.0;
    if let Some((c, s)) = o.clean.iter().enumerate().find(|(_, s)| s.correct > s.images || !loss_ok(s.loss)) {
        return Err(format!("class {c}: clean {} right of {} images, loss {}", s.correct, s.images, s.loss));
    }
    let wanted: HashSet<Cell> = spec.units.iter().copied().collect();
    let got: HashSet<Cell> = o.units.iter().map(|(c, _)| *c).collect();
    if o.units.len() != spec.units.len() || got != wanted {
        return Err(format!("the result has {} units, not exactly the chunk's {}", o.units.len(), spec.units.len()));
    }
    for (anchor, stats) in &o.units {
        if stats.len() != spec.target.classes {
            return Err(format!("unit {anchor:?} has {} classes, the model {}", stats.len(), spec.target.classes));
        }
        let fits = |(s, clean): (&ClassStat, &CleanStat)| s.flipped <= clean.correct && loss_ok(s.loss);
        if let Some(c) = stats.iter().zip(&o.clean).position(|pair| !fits(pair)) {
            return Err(format!(
                "unit {anchor:?} class {c}: {} flips of {} right images, loss {}",
                stats[c].flipped, o.clean[c].correct, stats[c].loss
            ));
        }
    }
    Ok(())
}

/// Every point's DFM maps, merged chunk by chunk as results are accepted (the driver) or read
/// back from the store (the report). Idempotent by task: a chunk merges once.
pub struct DfmMaps {
    maps: BTreeMap<usize, MapState>,
}

struct MapState {
    acc: DfmAccumulator,
    chunks: usize,
    merged_tasks: BTreeSet<TaskId>,
    /// What each merged chunk's model computed in, by chunk.
    numerics: BTreeMap<usize, (Precision, MemoryFormat)>,
}

impl DfmMaps {
    /// Empty maps for every point that `tasks` has DFM chunks of.
    pub fn new(tasks: &[PlannedTask]) -> DfmMaps {
        let mut maps = DfmMaps { maps: BTreeMap::new() };
        maps.add(tasks);
        maps
    }

    /// Empty maps for the points of DFM chunks added to the plan.
    pub fn add(&mut self, tasks: &[PlannedTask]) {
        let maps = &mut self.maps;
        for task in tasks {
            if let TaskSpec::Dfm(d) = &task.spec {
                let state = maps.entry(task.point).or_insert_with(|| MapState {
                    acc: DfmAccumulator::new(shape_of(d), d.patch, d.target.classes)
                        .expect("planned from a checked spec"),
                    chunks: 0,
                    merged_tasks: BTreeSet::new(),
                    numerics: BTreeMap::new(),
                });
                state.chunks += 1;
            }
        }
    }

    /// Merge the accepted result of chunk `task`. Returns whether its point's maps became
    /// complete now.
    pub fn merge(&mut self, task: &PlannedTask, outcome: &DfmOutcome) -> Result<bool, String> {
        let state = self.maps.get_mut(&task.point).ok_or("a DFM task of no planned map")?;
        if state.merged_tasks.contains(&task.id) {
            return Ok(false);
        }
        let err = |e: dfm::DfmError| format!("merging {}: {e}", task.key);
        state.acc.write_clean(&outcome.clean).map_err(err)?;
        for (anchor, stats) in &outcome.units {
            state.acc.write(*anchor, stats).map_err(err)?;
        }
        state.numerics.insert(outcome.chunk, (outcome.precision, outcome.memory_format.as_recorded()));
        state.merged_tasks.insert(task.id);
        Ok(state.merged_tasks.len() == state.chunks)
    }

    /// The maps of grid point `point` as merged so far.
    pub fn get(&self, point: usize) -> Option<&DfmAccumulator> {
        self.maps.get(&point).filter(|s| !s.merged_tasks.is_empty()).map(|s| &s.acc)
    }

    /// Chunks merged and planned for `point`.
    pub fn progress(&self, point: usize) -> (usize, usize) {
        self.maps.get(&point).map_or((0, 0), |s| (s.merged_tasks.len(), s.chunks))
    }

    /// The maps of `point` as merged so far, also with nothing merged yet (for the dashboard).
    pub fn planned(&self, point: usize) -> Option<&DfmAccumulator> {
        self.maps.get(&point).map(|s| &s.acc)
    }

    fn numerics_text(&self, point: usize) -> String {
        let Some(state) = self.maps.get(&point) else { return String::new() };
        let mut names: BTreeSet<String> = BTreeSet::new();
        for (p, f) in state.numerics.values() {
            let layout = if matches!(f, MemoryFormat::ChannelsLast) { "channels-last" } else { "NCHW" };
            names.insert(format!("{}, {layout}", p.as_str()));
        }
        names.into_iter().collect::<Vec<_>>().join("; ")
    }
}

/// The artifact bytes of the merged maps of grid point `point_id` (`None` while incomplete;
/// deterministic: the same maps give the same digest).
pub fn map_artifact(point_id: &str, acc: &DfmAccumulator) -> Option<Vec<u8>> {
    dfm::MapsFile::of(point_id, acc).map(|file| serde_json::to_vec(&file).expect("maps serialise"))
}

/// The grid point id of a chunk task (from its key `dfm/<point>/chunk<k>`).
pub fn point_id(task: &PlannedTask) -> &str {
    let rest = task.key.strip_prefix("dfm/").unwrap_or(&task.key);
    rest.rsplit_once('/').map_or(rest, |(point, _)| point)
}

/// The artifact name of a point's merged DFM maps (`dfm/<point>`).
pub fn map_artifact_name(point_id: &str) -> String {
    format!("dfm/{point_id}")
}

// ---------------------------------------------------------------- live view

/// The dashboard's view of a point's DFM maps as merged so far.
#[derive(Debug, serde::Serialize)]
pub struct LiveDfm {
    pub height: usize,
    pub width: usize,
    pub units_done: usize,
    pub units: usize,
    /// Per class the centred loss map `L_c` (`null` where a unit has not reported).
    pub loss: Vec<Vec<f64>>,
}

/// The dashboard's `dfm` of point `index`, also with nothing merged yet.
pub(crate) fn live_view(maps: &DfmMaps, index: usize) -> Option<LiveDfm> {
    maps.planned(index).map(|acc| {
        let shape = acc.shape();
        LiveDfm {
            height: shape.h,
            width: shape.w,
            units_done: acc.units().len() - acc.missing().len(),
            units: acc.units().len(),
            loss: (0..acc.classes()).map(|c| acc.loss_map(c)).collect(),
        }
    })
}

// ---------------------------------------------------------------- report section

/// What the report shows of a point's DFMs.
struct DfmFiles {
    pub patch: usize,
    pub units: usize,
    pub images: u64,
    pub complete: bool,
    pub numerics: String,
    /// Per class: its number, images, the top units of its loss map (anchor, mean loss) at the
    /// smallest `top`, and the per-class figure.
    pub classes: Vec<DfmClassFiles>,
}

struct DfmClassFiles {
    pub class: usize,
    pub images: u64,
    pub clean_loss: f64,
    pub top: Vec<(Cell, f64)>,
    pub figure: String,
}

/// `results.csv` has no DFM columns (the maps are arrays; the shortcut degree has columns).
pub(super) fn csv_header(_run: &RunData<'_>, _csv: &mut String) {}

/// The DFM section of a point's report: `dfm/<point>/` with every chosen class's maps.
pub(super) fn report(
    run: &RunData<'_>,
    index: usize,
    point: &GridPoint,
    report: &mut PointReport,
    _csv: &mut String,
) -> Result<()> {
    let (dir, maps) = (run.dir, &run.merged.dfms);
    let (Some(spec), Some(acc)) = (run.sweep.analyses.dfm.as_ref(), maps.get(index)) else { return Ok(()) };
    let Some(clean) = acc.clean() else { return Ok(()) };
    let sub = format!("dfm/{}", point.id);
    // Classes without test images have no maps (their loss is undefined); the rest are written.
    let classes: Vec<usize> = spec.classes.of(acc.classes()).into_iter().filter(|&c| clean[c].images > 0).collect();
    let title = crate::report::short_id(&point.id).to_string();
    let written = freqsweep_common::figures::write_dfm_files(&dir.join(&sub), acc, &classes, &spec.top, &title)
        .map_err(anyhow::Error::msg)?;
    report.raw.extend(written.iter().filter(|f| f.ends_with(".npy")).map(|f| format!("{sub}/{f}")));
    let smallest = spec.top.iter().copied().fold(f64::INFINITY, f64::min);
    let mut files = DfmFiles {
        patch: acc.patch(),
        units: acc.units().len(),
        images: clean.iter().map(|c| c.images).sum(),
        complete: acc.is_complete(),
        numerics: maps.numerics_text(index),
        classes: Vec::new(),
    };
    for c in classes {
        let loss = acc.loss_map(c);
        let per_unit: Vec<f64> = acc.units().iter().map(|&u| loss[acc.shape().centred_index(u)]).collect();
        let top = dfm::top_units(&per_unit, smallest).unwrap_or_default();
        files.classes.push(DfmClassFiles {
            class: c,
            images: clean[c].images,
            clean_loss: clean[c].loss / clean[c].images as f64,
            top: top.iter().map(|&i| (acc.units()[i], per_unit[i])).collect(),
            figure: format!("{sub}/class{c}_maps.png"),
        });
    }
    report.sections.push(section(&files));
    Ok(())
}

/// The report section: per class the top units and the maps figure.
fn section(d: &DfmFiles) -> String {
    let mut html = String::new();
    let out = &mut html;
    let unit =
        if d.patch == 1 { "frequency (with its conjugate)".to_string() } else { format!("{0}×{0} patch", d.patch) };
    let _ = writeln!(
        out,
        "<h3>Dominant frequency maps</h3>\n<p>Each of {} units removed in turn: one {unit}; {} test images; model computed in {}{}. Per class: the mean cross-entropy of its images with the unit removed, the fraction of them turned wrong, and the DFMs (the highest-loss units) shown over the loss map.</p>",
        d.units,
        d.images,
        esc(&d.numerics),
        if d.complete { "" } else { "; <span class=\"fail\">incomplete: grey units were not computed and no DFM is drawn</span>" }
    );
    out.push_str("<table><tr><th class=\"l\">class</th><th>images</th><th>clean loss</th><th class=\"l\">top units (u, v): mean loss</th></tr>\n");
    for c in &d.classes {
        let top: Vec<String> = c.top.iter().map(|(u, l)| format!("({}, {}): {l:.3}", u.u, u.v)).collect();
        let _ = writeln!(
            out,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{:.4}</td><td class=\"l\">{}</td></tr>",
            c.class,
            c.images,
            c.clean_loss,
            esc(&top.join(" · "))
        );
    }
    out.push_str("</table>\n<div class=\"figs\">");
    for c in &d.classes {
        let _ = write!(out, "<a href=\"{0}\"><img src=\"{0}\" alt=\"DFMs of class {1}\"></a>", esc(&c.figure), c.class);
    }
    out.push_str("</div>\n");
    html
}

/// A result that fits `task` (for the load and durability tests' simulated workers, via
/// `testing`): `images` images, all of class 0, every one classified right, nothing flipped.
pub fn simulated(task: &DfmTask, images: usize, device: &str) -> TaskOutcome {
    TaskOutcome::Dfm({
        use freqsweep_common::dfm::{ClassStat, CleanStat};
        let mut clean = vec![CleanStat::default(); task.target.classes];
        if let Some(first) = clean.first_mut() {
            *first = CleanStat { images: images as u64, loss: 0.0, correct: images as u64 };
        }
        freqsweep_common::task::DfmOutcome {
            chunk: task.chunk,
            patch: task.patch,
            images,
            clean,
            units: task.units.iter().map(|&u| (u, vec![ClassStat::default(); task.target.classes])).collect(),
            seconds: 0.0,
            images_per_second: 0.0,
            device: device.to_string(),
            precision: Default::default(),
            memory_format: Default::default(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use freqsweep_common::spec;

    const SPEC: &str = "[[dataset]]\nkind = \"syn\"\nband = 4\ntrain = 64\ntest = 32\n[model]\narch = \"tiny\"\n[train]\nlr = 0.001\nbatch_size = 16\nepochs = 1\n[dfm]\nchunks_per_map = 3\nimages = 20\n";

    fn outcome(d: &DfmTask, loss: f64) -> DfmOutcome {
        let clean = vec![CleanStat { images: 5, loss: 2.0, correct: 4 }; 4];
        DfmOutcome {
            chunk: d.chunk,
            patch: d.patch,
            images: 20,
            units: d.units.iter().map(|&u| (u, vec![ClassStat { loss, flipped: 1 }; 4])).collect(),
            clean,
            seconds: 1.0,
            images_per_second: 1.0,
            device: "cpu".into(),
            precision: Precision::Fp32,
            memory_format: MemoryFormat::ChannelsLast,
        }
    }

    #[test]
    fn chunks_cover_every_unit_once_and_merge_into_complete_maps() {
        let sweep = spec::parse(SPEC, "t.toml").unwrap();
        let tasks = crate::graph::plan(&sweep);
        let dfms: Vec<&PlannedTask> = tasks.iter().filter(|t| matches!(t.spec, TaskSpec::Dfm(_))).collect();
        assert_eq!(dfms.len(), 3);
        assert_eq!(dfms[0].key, "dfm/Syn_4-tiny-adam-lr0.001-bs16-ep1-seed0/chunk000");
        assert_eq!(dfms[0].to_new_task().inputs, vec!["task:1/model".to_string()]);
        let mut maps = DfmMaps::new(&tasks);
        for (i, t) in dfms.iter().enumerate() {
            let TaskSpec::Dfm(d) = &t.spec else { unreachable!() };
            assert_eq!(d.target.classes, 4);
            check(d, &outcome(d, 3.0)).unwrap();
            assert_eq!(maps.merge(t, &outcome(d, 3.0)).unwrap(), i == 2, "complete with the last chunk");
            assert!(!maps.merge(t, &outcome(d, 3.0)).unwrap(), "a chunk merges once");
        }
        let acc = maps.get(0).unwrap();
        assert!(acc.is_complete() && acc.units().len() == 514);
        assert!(map_artifact("p", acc).is_some());
        assert_eq!(maps.numerics_text(0), "fp32, channels-last");
    }

    #[test]
    fn results_that_do_not_fit_the_chunk_are_refused() {
        let sweep = spec::parse(SPEC, "t.toml").unwrap();
        let tasks = crate::graph::plan(&sweep);
        let TaskSpec::Dfm(d) = &tasks[1].spec else { panic!("a DFM task") };
        let good = outcome(d, 3.0);
        let mut bad = good.clone();
        bad.units.pop();
        assert!(check(d, &bad).unwrap_err().contains("not exactly the chunk's"));
        let mut bad = good.clone();
        bad.units[0].1[2].flipped = 5;
        assert!(check(d, &bad).unwrap_err().contains("flips of 4 right images"), "{:?}", check(d, &bad));
        let mut bad = good.clone();
        bad.units[0].1[0].loss = f64::NAN;
        assert!(check(d, &bad).is_err());
        let mut bad = good.clone();
        bad.clean.pop();
        assert!(check(d, &bad).unwrap_err().contains("3 classes, the model 4"));
        let mut bad = good.clone();
        bad.images = 21;
        assert!(check(d, &bad).unwrap_err().contains("allows 1..=20"));
        let mut bad = good;
        bad.clean[0].images = 6;
        assert!(check(d, &bad).unwrap_err().contains("hold 21 images"));
    }
}
