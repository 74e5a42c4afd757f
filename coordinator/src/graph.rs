//! The task graph of a sweep: one train task per grid point; per trained model, heatmap tasks per
//! ε × chunk of canonical cells, each depending on its train task and taking its checkpoint as
//! input. Plain data, no I/O. Keys are stable strings (`train/<point>`,
//! `heatmap/<point>/eps<ε>/chunk<k>`), so a restarted coordinator matches stored tasks to the spec.
//! Reports are rendered by the coordinator itself once every task is terminal.

use crate::scheduler::{NewTask, TaskId};
use freqsweep_common::heatmap::partition_cells;
use freqsweep_common::spec::{LayerChoice, Sweep};
use freqsweep_common::spectrum::Shape2;
use freqsweep_common::task::{HeatmapTask, ModelSource, TaskSpec};

/// Name of the checkpoint input of heatmap tasks (and the output of train tasks).
pub const CHECKPOINT: &str = "checkpoint";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

#[derive(Clone, Debug, PartialEq)]
pub struct PlannedTask {
    pub id: TaskId,
    pub key: String,
    pub kind: TaskKind,
    /// Index of the grid point the task belongs to.
    pub point: usize,
    pub spec: TaskSpec,
    pub deps: Vec<TaskId>,
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
        NewTask { id: self.id, deps: self.deps.clone(), priority, inputs }
    }
}

/// Format ε for keys and file names (`4`, `0.5`).
pub fn eps_label(eps: f64) -> String {
    format!("{eps}")
}

/// Plan every task of `sweep`; ids are 1-based positions.
pub fn plan(sweep: &Sweep) -> Vec<PlannedTask> {
    let mut tasks = Vec::new();
    let shape = Shape2::new(32, 32);
    let cells = shape.heatmap_cells();
    for (point_index, point) in sweep.points.iter().enumerate() {
        let train_id = TaskId(tasks.len() as u64 + 1);
        tasks.push(PlannedTask {
            id: train_id,
            key: format!("train/{}", point.id),
            kind: TaskKind::Train,
            point: point_index,
            spec: TaskSpec::Train(point.task.clone()),
            deps: Vec::new(),
        });
        let Some(h) = &sweep.heatmap else { continue };
        let chunks = partition_cells(&cells, cells.len().div_ceil(h.chunk_cells.max(1)));
        let layers = match &h.layers {
            LayerChoice::None => Vec::new(),
            LayerChoice::All => vec!["all".to_string()],
            LayerChoice::Named(names) => names.clone(),
        };
        for &eps in &h.eps {
            for chunk in &chunks {
                tasks.push(PlannedTask {
                    id: TaskId(tasks.len() as u64 + 1),
                    key: format!("heatmap/{}/eps{}/chunk{:03}", point.id, eps_label(eps), chunk.index),
                    kind: TaskKind::Heatmap,
                    point: point_index,
                    spec: TaskSpec::Heatmap(HeatmapTask {
                        dataset: point.task.dataset.clone(),
                        model: ModelSource::Checkpoint { artifact: CHECKPOINT.into() },
                        eps,
                        cells: chunk.cells.clone(),
                        chunk: chunk.index,
                        layers: layers.clone(),
                        images: h.images,
                        seed: h.seed,
                        batch: h.batch,
                    }),
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
}
