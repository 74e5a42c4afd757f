//! The task graph of a sweep: one train task per grid point; per trained model, heatmap tasks per
//! ε × chunk of canonical cells, each depending on its train task and taking its checkpoint as
//! input. Plain data, no I/O. Keys are stable strings (`train/<point>`,
//! `heatmap/<point>/eps<ε>/chunk<k>`), so a restarted coordinator matches stored tasks to the spec.
//! Reports are rendered by the coordinator itself once every task is terminal (they need the
//! store, not a GPU), so the graph has no report task.
//!
//! Ids are 1-based positions in the plan, so every dependency points to an earlier task and the
//! plan is already in topological order.

use crate::scheduler::{Cost, NewTask, TaskId, KINDS};
use freqsweep_common::heatmap::partition_cells;
use freqsweep_common::spec::{LayerChoice, Sweep};
use freqsweep_common::spectrum::Shape2;
use freqsweep_common::task::{DatasetSource, HeatmapTask, ModelSource, TaskSpec, TrainTask};

/// Name of the checkpoint input of heatmap tasks (and the output of train tasks).
pub const CHECKPOINT: &str = "checkpoint";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskKind {
    Train,
    Heatmap,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Train => "train",
            TaskKind::Heatmap => "heatmap",
        }
    }
}

/// Architectures whose throughput the scheduler measures apart (an image through ResNet18 costs
/// far more than through the tiny CNN); any other model shares the last slot.
const ARCHS: [&str; 3] = ["tiny", "alexnet", "resnet18"];

/// The scheduler's throughput kind of a task: task kind × architecture.
pub fn cost_kind(kind: TaskKind, arch: &str) -> u8 {
    let a = ARCHS.iter().position(|&x| x == arch).unwrap_or(ARCHS.len());
    let k = a * 2 + matches!(kind, TaskKind::Heatmap) as usize;
    debug_assert!(k < KINDS);
    k as u8
}

/// `train/resnet18`, `heatmap/tiny`, `heatmap/other` (for logs and `status`).
pub fn cost_kind_name(kind: u8) -> String {
    let task = if kind.is_multiple_of(2) { "train" } else { "heatmap" };
    format!("{task}/{}", ARCHS.get(kind as usize / 2).copied().unwrap_or("other"))
}

/// (train, test) images of a dataset, where known without reading it.
fn dataset_size(d: &DatasetSource) -> Option<(usize, usize)> {
    match d {
        DatasetSource::Syn(c) => Some((c.train, c.test)),
        DatasetSource::Cifar10 { .. } => Some((50_000, 10_000)),
        DatasetSource::Npy { .. } => None,
    }
}

/// Work units of a train task: epochs × optimizer steps per epoch (`.npy` datasets, whose size
/// is unknown until a worker reads them: epochs).
pub fn train_units(t: &TrainTask) -> f64 {
    let steps = dataset_size(&t.dataset).map_or(1, |(train, _)| train.div_ceil(t.train.batch_size.max(1)));
    (t.train.epochs.max(1) as usize * steps.max(1)) as f64
}

/// Work units of a heatmap task: cells × test images evaluated (the image limit or the test
/// split, whichever is smaller; `.npy` datasets without a limit: cells).
pub fn heatmap_units(h: &HeatmapTask) -> f64 {
    let test = dataset_size(&h.dataset).map(|(_, test)| test);
    let images = match (h.images, test) {
        (0, None) => 1,
        (0, Some(test)) => test,
        (limit, test) => test.map_or(limit, |t| t.min(limit)),
    };
    (h.cells.len().max(1) * images.max(1)) as f64
}

#[derive(Clone, Debug, PartialEq)]
pub struct PlannedTask {
    pub id: TaskId,
    pub key: String,
    pub kind: TaskKind,
    /// Index of the grid point the task belongs to.
    pub point: usize,
    pub spec: TaskSpec,
    pub deps: Vec<TaskId>,
    /// Throughput kind and work units, for the scheduler's measurements.
    pub cost: Cost,
}

impl PlannedTask {
    /// The locality key of a train task's checkpoint.
    pub fn checkpoint_key(train: TaskId) -> String {
        format!("task:{}/{CHECKPOINT}", train.0)
    }

    /// The scheduler's view of this task.
    pub fn to_new_task(&self) -> NewTask {
        let (priority, inputs) = match self.kind {
            TaskKind::Train => (0, Vec::new()),
            TaskKind::Heatmap => (1, self.deps.iter().map(|&d| Self::checkpoint_key(d)).collect()),
        };
        NewTask { id: self.id, deps: self.deps.clone(), priority, inputs, cost: self.cost }
    }
}

/// Format ε for keys and file names (`4`, `0.5`).
pub fn eps_label(eps: f64) -> String {
    format!("{eps}")
}

/// Plan every task of `sweep`; ids are 1-based positions.
pub fn plan(sweep: &Sweep) -> Vec<PlannedTask> {
    // Heatmaps are of 32 × 32 images (Syn_d, CIFAR-10): 514 canonical cells.
    let cells = Shape2::new(32, 32).heatmap_cells();
    let per_point = 1 + sweep.heatmap.as_ref().map_or(0, |h| h.eps.len() * h.chunks.chunks(cells.len()));
    let mut tasks = Vec::with_capacity(sweep.points.len() * per_point);
    // The chunks and layer names are the same for every point: cut them once.
    let chunks =
        sweep.heatmap.as_ref().map_or_else(Vec::new, |h| partition_cells(&cells, h.chunks.chunks(cells.len())));
    let layers = match sweep.heatmap.as_ref().map(|h| &h.layers) {
        None | Some(LayerChoice::None) => Vec::new(),
        Some(LayerChoice::All) => vec!["all".to_string()],
        Some(LayerChoice::Named(names)) => names.clone(),
    };
    for (point_index, point) in sweep.points.iter().enumerate() {
        let train_id = TaskId(tasks.len() as u64 + 1);
        let arch = point.task.train.model.as_str();
        tasks.push(PlannedTask {
            id: train_id,
            key: format!("train/{}", point.id),
            kind: TaskKind::Train,
            point: point_index,
            spec: TaskSpec::Train(point.task.clone()),
            deps: Vec::new(),
            cost: Cost { kind: cost_kind(TaskKind::Train, arch), units: train_units(&point.task) },
        });
        let Some(h) = &sweep.heatmap else { continue };
        for &eps in &h.eps {
            for chunk in &chunks {
                let spec = HeatmapTask {
                    dataset: point.task.dataset.clone(),
                    model: ModelSource::Checkpoint { artifact: CHECKPOINT.into() },
                    eps,
                    cells: chunk.cells.clone(),
                    chunk: chunk.index,
                    layers: layers.clone(),
                    images: h.images,
                    seed: h.seed,
                    batch: h.batch,
                };
                tasks.push(PlannedTask {
                    id: TaskId(tasks.len() as u64 + 1),
                    key: format!("heatmap/{}/eps{}/chunk{:03}", point.id, eps_label(eps), chunk.index),
                    kind: TaskKind::Heatmap,
                    point: point_index,
                    cost: Cost { kind: cost_kind(TaskKind::Heatmap, arch), units: heatmap_units(&spec) },
                    spec: TaskSpec::Heatmap(spec),
                    deps: vec![train_id],
                });
            }
        }
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;
    use freqsweep_common::spec;

    const SPEC: &str = "[[dataset]]\nkind = \"syn\"\nband = [1, 4]\ntrain = 64\ntest = 32\n[model]\narch = \"tiny\"\n[train]\nlr = 0.001\nbatch_size = 16\nepochs = 1\n[heatmap]\neps = [2.0, 4.0]\nchunk_cells = 100\nlayers = true\n";

    #[test]
    fn train_then_heatmap_chunks_that_cover_every_cell_once() {
        let sweep = spec::parse(SPEC, "t.toml").unwrap();
        let tasks = plan(&sweep);
        // Per point: 1 train + 2 eps × ceil(514 / 100) = 6 chunks.
        assert_eq!(tasks.len(), 2 * (1 + 2 * 6));
        assert_eq!(tasks[0].key, "train/Syn_1-tiny-adam-lr0.001-bs16-ep1-seed0");
        assert_eq!(tasks[1].key, "heatmap/Syn_1-tiny-adam-lr0.001-bs16-ep1-seed0/eps2/chunk000");
        let keys: std::collections::HashSet<_> = tasks.iter().map(|t| &t.key).collect();
        assert_eq!(keys.len(), tasks.len(), "keys are unique");
        let mut covered = 0;
        for t in &tasks[1..7] {
            assert_eq!(t.deps, vec![tasks[0].id]);
            assert_eq!(t.to_new_task().inputs, vec!["task:1/checkpoint".to_string()]);
            let TaskSpec::Heatmap(h) = &t.spec else { panic!("heatmap expected") };
            assert_eq!(h.layers, ["all"]);
            covered += h.cells.len();
        }
        assert_eq!(covered, 514, "the chunks of one map cover every canonical cell once");
        assert_eq!(plan(&sweep), tasks, "planning is deterministic");
    }

    #[test]
    fn costs_are_steps_for_training_and_cells_times_images_for_heatmaps() {
        let tasks = plan(&spec::parse(SPEC, "t.toml").unwrap());
        // 64 training images in batches of 16 for 1 epoch; a chunk's cells x all 32 test images
        // (the spec's default limit of 500 images is more than the split holds).
        assert_eq!(tasks[0].cost, Cost { kind: cost_kind(TaskKind::Train, "tiny"), units: 4.0 });
        let TaskSpec::Heatmap(h) = &tasks[1].spec else { panic!("heatmap expected") };
        assert_eq!(
            tasks[1].cost,
            Cost { kind: cost_kind(TaskKind::Heatmap, "tiny"), units: h.cells.len() as f64 * 32.0 }
        );
        let map: f64 = tasks[1..7].iter().map(|t| t.cost.units).sum();
        assert_eq!(map, 514.0 * 32.0, "one map's chunks add up to every cell on every image");
        assert_eq!(tasks[1].to_new_task().cost, tasks[1].cost);
        let names: Vec<String> = (0..KINDS as u8).map(cost_kind_name).collect();
        assert_eq!(
            names,
            [
                "train/tiny",
                "heatmap/tiny",
                "train/alexnet",
                "heatmap/alexnet",
                "train/resnet18",
                "heatmap/resnet18",
                "train/other",
                "heatmap/other"
            ]
        );
        assert_eq!(cost_kind(TaskKind::Heatmap, "torchscript"), 7);
        let limited = SPEC.replace("layers = true", "layers = true\nimages = 10");
        let tasks = plan(&spec::parse(&limited, "t.toml").unwrap());
        assert_eq!(tasks[1].cost.units, h.cells.len() as f64 * 10.0, "an image limit bounds the work");
    }

    #[test]
    fn keys_are_stable_and_name_point_eps_and_chunk() {
        let tasks = plan(&spec::parse(SPEC, "t.toml").unwrap());
        let last = tasks.last().unwrap();
        assert_eq!(last.key, "heatmap/Syn_4-tiny-adam-lr0.001-bs16-ep1-seed0/eps4/chunk005");
        assert_eq!((last.id, last.deps.as_slice()), (TaskId(26), &[TaskId(14)][..]));
        let TaskSpec::Heatmap(h) = &last.spec else { panic!("heatmap expected") };
        assert_eq!(
            (h.eps, h.chunk, h.model.clone()),
            (4.0, 5, ModelSource::Checkpoint { artifact: CHECKPOINT.into() })
        );
    }

    #[test]
    fn chunks_per_map_and_named_layers_reach_the_tasks() {
        let text =
            SPEC.replace("chunk_cells = 100", "chunks_per_map = 3").replace("layers = true", "layers = [\"fc\"]");
        let tasks = plan(&spec::parse(&text, "t.toml").unwrap());
        assert_eq!(tasks.len(), 2 * (1 + 2 * 3));
        let TaskSpec::Heatmap(h) = &tasks[1].spec else { panic!("heatmap expected") };
        assert_eq!((h.layers.as_slice(), h.cells.len()), (&["fc".to_string()][..], 172), "514 cells in 3 chunks");
    }

    /// A sweep of 100 000 tasks plans in one pass; every heatmap task depends on its own point's
    /// train task, which comes earlier, and keys stay unique.
    #[test]
    fn a_hundred_thousand_task_graph() {
        // 4 bands × 2 archs × 963 seeds = 7 704 points, each 1 train + 12 heatmap chunks.
        let seeds: Vec<String> = (0..963).map(|s| s.to_string()).collect();
        let text = format!(
            "[[dataset]]\nkind = \"syn\"\nband = [1, 2, 3, 4]\n[model]\narch = [\"tiny\", \"alexnet\"]\n[train]\nlr = 0.01\nbatch_size = 64\nepochs = 1\nseed = [{}]\n[heatmap]\neps = 4\nchunks_per_map = 12\n",
            seeds.join(", ")
        );
        let sweep = spec::parse(&text, "big.toml").unwrap();
        let tasks = plan(&sweep);
        assert_eq!(tasks.len(), 7_704 * 13);
        assert!(tasks.len() >= 100_000);
        let keys: std::collections::HashSet<&str> = tasks.iter().map(|t| t.key.as_str()).collect();
        assert_eq!(keys.len(), tasks.len(), "keys are unique");
        let mut cells_per_point = vec![0usize; sweep.points.len()];
        for (i, t) in tasks.iter().enumerate() {
            assert_eq!(t.id, TaskId(i as u64 + 1));
            match t.kind {
                TaskKind::Train => assert!(t.deps.is_empty()),
                TaskKind::Heatmap => {
                    let [dep] = t.deps[..] else { panic!("one dependency") };
                    let train = &tasks[dep.0 as usize - 1];
                    assert!(dep < t.id && train.kind == TaskKind::Train && train.point == t.point);
                    assert!(t.key.starts_with(&format!("heatmap/{}/", sweep.points[t.point].id)));
                    let TaskSpec::Heatmap(h) = &t.spec else { panic!("heatmap spec") };
                    cells_per_point[t.point] += h.cells.len();
                }
            }
        }
        assert!(cells_per_point.iter().all(|&n| n == 514), "each point's map covers every cell once");
    }
}
