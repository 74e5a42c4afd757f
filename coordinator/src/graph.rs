//! The task graph of a sweep: what the planner rooms (`kinds/`) make of the spec — one train task
//! per grid point; per trained model, heatmap tasks per ε × chunk of canonical cells, each
//! depending on its train task and taking its weights as input. Plain data, no I/O. Keys are stable
//! strings (`train/<point>`, `heatmap/<point>/eps<ε>/chunk<k>`), so a restarted coordinator matches
//! stored tasks to the spec. Reports are rendered by the coordinator itself once every task is
//! terminal (they need the store, not a GPU), so the graph has no report task.
//!
//! Ids are 1-based positions in the plan, so every dependency points to an earlier task and the
//! plan is already in topological order.

use crate::kinds;
use crate::scheduler::{Cost, NewTask, TaskId};
use freqsweep_common::spec::Sweep;
use freqsweep_common::task::{TaskKind, TaskSpec};

pub use crate::kinds::heatmap::eps_label;

#[derive(Clone, Debug, PartialEq)]
pub struct PlannedTask {
    pub id: TaskId,
    pub key: String,
    /// Index of the grid point the task belongs to.
    pub point: usize,
    pub spec: TaskSpec,
    pub deps: Vec<TaskId>,
    /// Throughput class and work units, for the scheduler's measurements.
    pub cost: Cost,
}

impl PlannedTask {
    pub fn kind(&self) -> TaskKind {
        self.spec.kind()
    }

    /// The scheduler's view of this task.
    pub fn to_new_task(&self) -> NewTask {
        NewTask {
            id: self.id,
            deps: self.deps.clone(),
            priority: kinds::priority(self.kind()),
            inputs: kinds::inputs(self)
                .iter()
                .map(kinds::Input::locality_key)
                .chain(kinds::given_model(self).map(kinds::given_key))
                .collect(),
            cost: self.cost.clone(),
        }
    }
}

/// Plan every task of `sweep`; ids are 1-based positions.
pub fn plan(sweep: &Sweep) -> Vec<PlannedTask> {
    kinds::plan(sweep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::CostClass;
    use freqsweep_common::spec;
    use freqsweep_common::task::ModelSource;

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
            // The weights alone, not the full checkpoint with optimizer state.
            assert_eq!(t.to_new_task().inputs, vec!["task:1/model".to_string()]);
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
        assert_eq!(tasks[0].cost, Cost { class: CostClass::new("train/tiny"), units: 4.0 });
        let TaskSpec::Heatmap(h) = &tasks[1].spec else { panic!("heatmap expected") };
        assert_eq!(tasks[1].cost, Cost { class: CostClass::new("heatmap/tiny"), units: h.cells.len() as f64 * 32.0 });
        let map: f64 = tasks[1..7].iter().map(|t| t.cost.units).sum();
        assert_eq!(map, 514.0 * 32.0, "one map's chunks add up to every cell on every image");
        assert_eq!(tasks[1].to_new_task().cost, tasks[1].cost);
        // One class per kind and architecture, however many there are (no fixed slots).
        let archs = SPEC.replace("arch = \"tiny\"", "arch = [\"tiny\", \"alexnet\", \"resnet18\"]");
        let classes: std::collections::BTreeSet<String> =
            plan(&spec::parse(&archs, "t.toml").unwrap()).iter().map(|t| t.cost.class.to_string()).collect();
        let expected =
            ["heatmap/alexnet", "heatmap/resnet18", "heatmap/tiny", "train/alexnet", "train/resnet18", "train/tiny"];
        assert_eq!(classes.iter().map(String::as_str).collect::<Vec<_>>(), expected);
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
            (h.eps, h.chunk, h.target.model.clone()),
            (4.0, 5, ModelSource::Checkpoint { artifact: freqsweep_common::task::MODEL_OUTPUT.into() })
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
            match t.kind() {
                TaskKind::Train => assert!(t.deps.is_empty()),
                TaskKind::Heatmap => {
                    let [dep] = t.deps[..] else { panic!("one dependency") };
                    let train = &tasks[dep.0 as usize - 1];
                    assert!(dep < t.id && train.kind() == TaskKind::Train && train.point == t.point);
                    assert!(t.key.starts_with(&format!("heatmap/{}/", sweep.points[t.point].id)));
                    let TaskSpec::Heatmap(h) = &t.spec else { panic!("heatmap spec") };
                    cells_per_point[t.point] += h.cells.len();
                }
                other => panic!("the spec asks for no {} task", other.as_str()),
            }
        }
        assert!(cells_per_point.iter().all(|&n| n == 514), "each point's map covers every cell once");
    }
}
