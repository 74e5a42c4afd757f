//! The heatmap room: per trained model, per ε, the canonical cells of the map cut into chunks,
//! each chunk a task that depends on the model's train task and takes its final weights (the
//! `model` output, not the full checkpoint) as input. A chunk's result must be exactly its cells.

use super::{next_id, PointPlan};
use crate::graph::PlannedTask;
use crate::scheduler::{Cost, CostClass, TaskId};
use freqsweep_common::heatmap::{partition_cells, CellChunk, CellStat};
use freqsweep_common::spec::{LayerChoice, Sweep};
use freqsweep_common::spectrum::{Cell, Shape2};
use freqsweep_common::task::{HeatmapOutcome, HeatmapTask, ModelSource, TaskSpec, MODEL_OUTPUT};
use std::collections::HashSet;

/// Format ε for keys and file names (`4`, `0.5`).
pub fn eps_label(eps: f64) -> String {
    format!("{eps}")
}

/// What every point's heatmaps share, cut once per sweep.
pub(super) struct Prepared {
    spec: Option<freqsweep_common::spec::HeatmapSpec>,
    chunks: Vec<CellChunk>,
    layers: Vec<String>,
}

impl Prepared {
    pub(super) fn new(sweep: &Sweep) -> Prepared {
        // Heatmaps are of 32 × 32 images (Syn_d, CIFAR-10): 514 canonical cells.
        let cells = Shape2::new(32, 32).heatmap_cells();
        let chunks = sweep.heatmap.as_ref().map_or_else(Vec::new, |h| partition_cells(&cells, h.chunks.chunks(cells.len())));
        let layers = match sweep.heatmap.as_ref().map(|h| &h.layers) {
            None | Some(LayerChoice::None) => Vec::new(),
            Some(LayerChoice::All) => vec!["all".to_string()],
            Some(LayerChoice::Named(names)) => names.clone(),
        };
        Prepared { spec: sweep.heatmap.clone(), chunks, layers }
    }

    pub(super) fn tasks_per_point(&self) -> usize {
        self.spec.as_ref().map_or(0, |h| h.eps.len() * self.chunks.len())
    }

    pub(super) fn plan(&self, point: &PointPlan<'_>, tasks: &mut Vec<PlannedTask>) {
        let (Some(h), Some(train)) = (&self.spec, point.train) else { return };
        for &eps in &h.eps {
            for chunk in &self.chunks {
                let spec = HeatmapTask {
                    dataset: point.point.task.dataset.clone(),
                    model: ModelSource::Checkpoint { artifact: MODEL_OUTPUT.into() },
                    eps,
                    cells: chunk.cells.clone(),
                    chunk: chunk.index,
                    layers: self.layers.clone(),
                    images: h.images,
                    seed: h.seed,
                    batch: h.batch,
                };
                tasks.push(PlannedTask {
                    id: next_id(tasks),
                    key: format!("heatmap/{}/eps{}/chunk{:03}", point.point.id, eps_label(eps), chunk.index),
                    point: point.index,
                    cost: cost(&spec, &point.point.task.train.model),
                    spec: TaskSpec::Heatmap(spec),
                    deps: vec![train],
                });
            }
        }
    }
}

/// Throughput class `heatmap/<arch>`; work units: cells × test images evaluated (the image limit
/// or the test split, whichever is smaller; `.npy` datasets without a limit: cells).
pub fn cost(h: &HeatmapTask, arch: &str) -> Cost {
    let test = super::train::dataset_size(&h.dataset).map(|(_, test)| test);
    let images = match (h.images, test) {
        (0, None) => 1,
        (0, Some(test)) => test,
        (limit, test) => test.map_or(limit, |t| t.min(limit)),
    };
    let units = h.cells.len().max(1).saturating_mul(images.max(1)) as f64;
    Cost { class: CostClass::new(&format!("heatmap/{arch}")), units }
}

/// The model's weights, from the train task it depends on.
pub(super) fn inputs(task: &PlannedTask) -> Vec<(TaskId, &'static str)> {
    task.deps.iter().map(|&d| (d, MODEL_OUTPUT)).collect()
}

/// Exactly the chunk's cells, each once, every count within what `images` images allow.
pub(super) fn check(spec: &HeatmapTask, o: &HeatmapOutcome) -> Result<(), String> {
    if o.eps.to_bits() != spec.eps.to_bits() || o.chunk != spec.chunk {
        return Err(format!("the result is for ε {} chunk {}, the task is ε {} chunk {}", o.eps, o.chunk, spec.eps, spec.chunk));
    }
    if o.images == 0 || (spec.images > 0 && o.images > spec.images) {
        return Err(format!("the result evaluated {} images, the task allows 1..={}", o.images, spec.images));
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
