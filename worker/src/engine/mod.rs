//! The engine behind leased tasks: turns a `TaskSpec` (from `freqsweep_common::task`) into a
//! `TaskOutcome` plus output artifacts, reporting metrics and progress as it goes. The worker's
//! client loop talks only to the [`Engine`] trait, so it can be tested with a fake engine and the
//! libtorch code stays in [`TorchEngine`].

mod bands;
mod dfm;
mod heatmap;
mod robustness;
mod shortcut;
mod train;

use crate::models::Requested;
use crate::{checkpoint, data, device};
use freqsweep_common::dataset::Dataset;
use freqsweep_common::task::{
    AnalysisTarget, DatasetSource, MemoryFormat, MetricPoint, ModelSource, Precision, TaskOutcome, TaskSpec,
};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::Device;

/// Name of the checkpoint artifact a train task produces (and a retried attempt resumes from).
pub const CHECKPOINT_ARTIFACT: &str = freqsweep_common::task::CHECKPOINT_OUTPUT;
/// Name of the weights-only artifact a train task also produces (what analyses download).
pub const MODEL_ARTIFACT: &str = freqsweep_common::task::MODEL_OUTPUT;

/// Most metric points per `EngineEvents::metrics` call when a resumed run re-sends its history
/// (each call becomes one batch on the wire; this keeps batches far below the message limit).
pub(crate) const HISTORY_BATCH: usize = 4096;

/// Why a task failed, and whether another attempt could succeed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    pub message: String,
    /// False for deterministic failures (bad input, NaN loss): retrying fails the same way.
    pub retryable: bool,
}

impl EngineError {
    pub fn fatal(message: impl Into<String>) -> Self {
        EngineError { message: one_line(message.into()), retryable: false }
    }
    pub fn transient(message: impl Into<String>) -> Self {
        EngineError { message: one_line(message.into()), retryable: true }
    }
}

/// The first line of an error: libtorch's messages carry kilobytes of C++ backtrace after it,
/// which go to the debug log instead of the coordinator, the store and the report.
pub fn one_line(message: String) -> String {
    match message.split_once('\n') {
        Some((first, _)) => {
            tracing::debug!(error = %message, "full error");
            first.trim_end().to_string()
        }
        None => message,
    }
}

/// What a task hears while running; the client loop streams these to the coordinator.
pub trait EngineEvents {
    fn metrics(&mut self, points: &[MetricPoint]);
    /// Progress in `[0, 1]` and items per second.
    fn progress(&mut self, fraction: f64, throughput: f64);
    /// The checkpoint after `epochs_done` epochs was written to `path` (after every epoch): the
    /// loop uploads it so a retry resumes there. `path` is rewritten by the next epoch, so a
    /// listener that reads it later must take its own copy before returning.
    fn checkpoint(&mut self, epochs_done: u32, path: &Path);
    /// Stop as soon as possible (cancel or drain).
    fn should_stop(&mut self) -> bool;
}

/// How a task ended.
#[derive(Debug)]
pub enum EngineResult {
    Done {
        outcome: TaskOutcome,
        artifacts: Vec<(String, PathBuf)>,
    },
    /// Stopped on request; the task can be resumed by a later attempt.
    Stopped,
}

pub trait Engine {
    /// Run `task`; `inputs` maps input artifact names to local files.
    fn run(
        &mut self,
        task_key: &str,
        task: &TaskSpec,
        inputs: &HashMap<String, PathBuf>,
        events: &mut dyn EngineEvents,
    ) -> Result<EngineResult, EngineError>;

    /// The device, in words (for registration and logs).
    fn device(&self) -> String;
}

/// The libtorch engine: one device, a work directory for checkpoints, and a cache of loaded
/// datasets (a sweep's heatmap chunks reuse the same test split many times).
pub struct TorchEngine {
    device: Device,
    work_dir: PathBuf,
    datasets: HashMap<String, (Dataset, Dataset)>,
}

impl TorchEngine {
    pub fn new(device: Device, work_dir: PathBuf) -> Self {
        TorchEngine { device, work_dir, datasets: HashMap::new() }
    }

    fn dataset(&mut self, source: &DatasetSource) -> Result<&(Dataset, Dataset), EngineError> {
        let key = serde_json::to_string(source).expect("serialisable");
        if !self.datasets.contains_key(&key) {
            // Bad paths or files are the spec's fault: retrying elsewhere would not help.
            let loaded = data::load(source).map_err(|e| EngineError::fatal(e.to_string()))?;
            if self.datasets.len() >= 4 {
                self.datasets.clear();
            }
            self.datasets.insert(key.clone(), loaded);
        }
        Ok(&self.datasets[&key])
    }

    /// A classifier from the input named by `source` (or a TorchScript path) for
    /// `height × width` images: shared by every kind that analyses a model. Its logits per image
    /// must be the spec's `classes` exactly (`None`: a task from an older coordinator that did not
    /// say): one rule, checked here once for every kind, not after the work by each.
    fn model(
        &self,
        source: &ModelSource,
        inputs: &HashMap<String, PathBuf>,
        (height, width): (i64, i64),
        classes: Option<usize>,
        requested: Requested,
    ) -> Result<(checkpoint::Loaded, ModelName), EngineError> {
        let path = match source {
            ModelSource::Checkpoint { artifact } | ModelSource::Given { artifact, .. } => inputs
                .get(artifact)
                .cloned()
                .ok_or_else(|| EngineError::transient(format!("input artifact {artifact:?} was not provided")))?,
            ModelSource::TorchScript { path, digest } => {
                if let Some(recorded) = digest {
                    verify_file_digest(path, recorded).map_err(EngineError::fatal)?;
                }
                path.clone()
            }
        };
        let loaded =
            checkpoint::load_classifier(&path, self.device, height, width, requested).map_err(|e| match source {
                // An input the coordinator verified by digest does not load here: this worker's copy
                // is damaged. Dropped from the cache, so the next attempt (here or elsewhere) fetches it.
                ModelSource::Checkpoint { .. } => {
                    let _ = std::fs::remove_file(&path);
                    EngineError::transient(format!("{e} (dropped from this worker's cache)"))
                }
                // The file the user gave, verified by digest on the way: another worker would
                // read the same bytes. Named, not retried.
                ModelSource::Given { model, .. } => EngineError::fatal(format!("given model {model}: {e}")),
                ModelSource::TorchScript { .. } => EngineError::fatal(e),
            })?;
        if let Some(why) = &loaded.fallback {
            tracing::warn!(model = %path.display(), reason = %why, "the model does not run in the requested precision; computing in fp32");
        }
        let name = ModelName::of(source, &path);
        if let Some(expected) = classes.filter(|&c| c != loaded.classes) {
            // The same file fails the same way on every worker: not retried.
            return Err(EngineError::fatal(format!(
                "{name}: the model returns {} logits per image, the spec says classes = {expected}",
                loaded.classes
            )));
        }
        Ok((loaded, name))
    }

    /// The first `images` images of `source`'s test split: what every analysis room evaluates.
    fn test_split(&mut self, source: &DatasetSource, images: usize) -> Result<Dataset, EngineError> {
        Ok(data::truncate(self.dataset(source)?.1.clone(), images))
    }

    /// An analysis room's model (`target.model`) for images the size of `test`'s, in the
    /// precision and layout the task asks for where this device has them, returning
    /// `target.classes` logits (0: a task from an older coordinator that did not say).
    fn room_model(
        &self,
        target: &AnalysisTarget,
        inputs: &HashMap<String, PathBuf>,
        test: &Dataset,
    ) -> Result<RoomModel, EngineError> {
        let (height, width) = (test.dims[2] as i64, test.dims[3] as i64);
        let requested = numerics_for(self.device, target.precision, target.memory_format);
        let classes = (target.classes > 0).then_some(target.classes);
        let (loaded, name) = self.model(&target.model, inputs, (height, width), classes, requested)?;
        Ok(RoomModel {
            precision: loaded.numerics.precision(),
            memory_format: loaded.numerics.memory_format(),
            model: loaded.model,
            name,
        })
    }

    fn task_dir(&self, task_key: &str) -> PathBuf {
        let safe: String =
            task_key.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
        self.work_dir.join(safe)
    }
}

/// The model an analysis room runs, with the numerics it runs in: recorded in the outcome as it
/// ran (a TorchScript graph that cannot run in bf16 runs in fp32, NCHW).
pub(crate) struct RoomModel {
    pub(crate) model: Box<dyn crate::models::Classifier>,
    pub(crate) name: ModelName,
    pub(crate) precision: Precision,
    pub(crate) memory_format: MemoryFormat,
}

/// How errors name a task's model: `given model <name>` for a model the sweep was given (its
/// cached copy's path means nothing to the user), the file otherwise.
pub(crate) struct ModelName(String);

impl ModelName {
    fn of(source: &ModelSource, path: &Path) -> ModelName {
        match source {
            ModelSource::Given { model, .. } => ModelName(format!("given model {model}")),
            ModelSource::Checkpoint { .. } | ModelSource::TorchScript { .. } => ModelName(path.display().to_string()),
        }
    }

    /// A failure of the model itself (its forward pass raised, its output does not fit): the
    /// same file fails the same way on any worker, so it is not retried.
    pub(crate) fn fatal(&self, cause: impl std::fmt::Display) -> EngineError {
        EngineError::fatal(format!("{self}: {cause}"))
    }
}

impl std::fmt::Display for ModelName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a task asking for `precision` and `format` on `device` gets: bf16 only where the device
/// has it (otherwise fp32, said in the log; the outcome records what ran), the format as asked
/// (`Auto` is resolved once the model is known, by [`Requested::for_model`]).
pub fn numerics_for(device: Device, precision: Precision, format: MemoryFormat) -> Requested {
    let kind = match precision {
        Precision::Bf16 if !device::bf16_allowed(device) => {
            // Once per process: a sweep asks again with every chunk, and the outcome records it.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(device = %device::describe(device), "bf16 requested, but this device has no bf16 instructions (it would be emulated, slower than fp32); computing in fp32");
            });
            tch::Kind::Float
        }
        Precision::Bf16 => tch::Kind::BFloat16,
        Precision::Fp32 => tch::Kind::Float,
    };
    Requested { kind, format }
}

/// The file at `path` is the one whose digest the run recorded.
fn verify_file_digest(path: &Path, recorded: &str) -> Result<(), String> {
    let (now, _) = freqsweep_common::digest::of_file(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if now != recorded {
        return Err(format!(
            "{}: the model file is not the one the run recorded (its digest is {now}, the run recorded {recorded}): it changed, is corrupt, or differs on this node",
            path.display()
        ));
    }
    Ok(())
}

impl Engine for TorchEngine {
    fn device(&self) -> String {
        device::describe(self.device)
    }

    fn run(
        &mut self,
        task_key: &str,
        task: &TaskSpec,
        inputs: &HashMap<String, PathBuf>,
        events: &mut dyn EngineEvents,
    ) -> Result<EngineResult, EngineError> {
        let dir = self.task_dir(task_key);
        std::fs::create_dir_all(&dir).map_err(|e| EngineError::transient(format!("{}: {e}", dir.display())))?;
        // One room per kind (`engine/<kind>.rs`); the match is exhaustive on purpose.
        match task {
            TaskSpec::Train(t) => train::run(self, &dir, t, inputs, events),
            TaskSpec::Heatmap(h) => heatmap::run(self, task_key, h, inputs, events),
            TaskSpec::Dfm(d) => dfm::run(self, task_key, d, inputs, events),
            TaskSpec::Shortcut(s) => shortcut::run(self, s, inputs, events),
            TaskSpec::Bands(b) => bands::run(self, b, inputs, events),
            TaskSpec::Robustness(r) => robustness::run(self, r, inputs, events),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use freqsweep_common::bands::{Band, BandLayout};

    #[test]
    fn a_model_file_that_is_not_the_recorded_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.pt");
        std::fs::write(&path, b"the model the run saw").unwrap();
        let (recorded, _) = freqsweep_common::digest::of_file(&path).unwrap();
        verify_file_digest(&path, &recorded).unwrap();
        std::fs::write(&path, b"the model the run saw, altered").unwrap();
        let err = verify_file_digest(&path, &recorded).unwrap_err();
        assert!(
            err.contains("m.pt: the model file is not the one the run recorded") && err.contains(&recorded),
            "{err}"
        );
    }
    use freqsweep_common::spectrum::{Cell, Shape2};
    use freqsweep_common::syn::SynConfig;
    use freqsweep_common::task::{Augment, HeatmapTask, LrSchedule, Optimizer, TrainConfig, TrainTask};

    #[derive(Default)]
    struct Recorder {
        points: Vec<MetricPoint>,
        /// `epochs_done` of every checkpoint event.
        checkpoints: Vec<u32>,
        last_progress: f64,
        /// Copy the checkpoint after epoch 1 here (the file itself is rewritten every epoch).
        keep_epoch1: Option<PathBuf>,
    }

    impl EngineEvents for Recorder {
        fn metrics(&mut self, points: &[MetricPoint]) {
            self.points.extend_from_slice(points);
        }
        fn progress(&mut self, fraction: f64, _: f64) {
            self.last_progress = fraction;
        }
        fn checkpoint(&mut self, epochs_done: u32, path: &Path) {
            self.checkpoints.push(epochs_done);
            if let Some(keep) = self.keep_epoch1.as_ref().filter(|_| epochs_done == 1) {
                std::fs::copy(path, keep).unwrap();
            }
        }
        fn should_stop(&mut self) -> bool {
            false
        }
    }

    #[test]
    fn engine_errors_are_one_line() {
        let err =
            EngineError::fatal("shape mismatch [3, 4] vs [5]\nException raised from foo at bar.cpp:12\nframe #0: 0x7f");
        assert_eq!(err.message, "shape mismatch [3, 4] vs [5]");
        assert_eq!(EngineError::transient("plain").message, "plain");
    }

    #[test]
    fn a_train_task_then_a_heatmap_chunk_of_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = TorchEngine::new(Device::Cpu, dir.path().to_path_buf());
        let syn = SynConfig { train: 64, test: 32, ..SynConfig::new(Band::new(3).unwrap(), 1) };
        let task = TaskSpec::Train(TrainTask {
            dataset: DatasetSource::Syn(syn.clone()),
            train: TrainConfig {
                model: "tiny".into(),
                classes: 4,
                optimizer: Optimizer::adam(),
                lr: 1e-3,
                schedule: LrSchedule::Constant,
                batch_size: 16,
                epochs: 2,
                seed: 1,
                augment: Augment::default(),
                test_sets: vec!["B1234".parse().unwrap()],
                band_layout: BandLayout::default(),
                clip_filtered: false,
                eval_every_steps: 0,
                eval_steps_epochs: 0,
                test_limit: 0,
                precision: Default::default(),
                memory_format: Default::default(),
                keep_epochs: Vec::new(),
            },
        });
        let epoch1 = dir.path().join("epoch1.ot");
        let mut events = Recorder { keep_epoch1: Some(epoch1.clone()), ..Recorder::default() };
        let EngineResult::Done { outcome, artifacts } =
            engine.run("train/a b", &task, &HashMap::new(), &mut events).unwrap()
        else {
            panic!("stopped")
        };
        assert!(matches!(outcome, TaskOutcome::Train(ref t) if t.epochs == 2));
        assert_eq!(events.checkpoints, [1, 2], "one checkpoint per epoch, in order");
        assert!(!events.points.is_empty() && events.last_progress == 1.0);

        // Another attempt given the epoch-1 checkpoint as input resumes there and reports the
        // whole history: the checkpoint's points first, then epoch 2's.
        let mut again = Recorder::default();
        let inputs = HashMap::from([(CHECKPOINT_ARTIFACT.to_string(), epoch1)]);
        let EngineResult::Done { .. } = engine.run("train/retry", &task, &inputs, &mut again).unwrap() else {
            panic!("stopped")
        };
        assert_eq!(again.checkpoints, [2], "training resumed at epoch 2");
        assert_eq!(again.points.len(), events.points.len(), "the whole history, once");
        let epoch1_points = events.points.iter().filter(|p| p.epoch <= 1.0).count();
        assert!(epoch1_points > 0 && epoch1_points < events.points.len());
        assert_eq!(again.points[..epoch1_points], events.points[..epoch1_points], "history re-sent as checkpointed");
        assert_eq!(artifacts[0].0, CHECKPOINT_ARTIFACT);
        assert!(artifacts[0].1.starts_with(dir.path().join("train_a_b")), "{:?}", artifacts[0].1);
        // The weights alone: Adam's two moment buffers per parameter and the history stay behind.
        assert_eq!(artifacts[1].0, MODEL_ARTIFACT);
        let size = |p: &Path| std::fs::metadata(p).unwrap().len();
        assert!(size(&artifacts[1].1) * 2 < size(&artifacts[0].1), "weights only");
        let weights = checkpoint::load(&artifacts[1].1).unwrap();
        assert!(weights.optimizer.is_empty() && weights.meta.metrics.is_empty() && weights.meta.epochs_done == 2);

        let cells: Vec<Cell> = Shape2::new(32, 32).heatmap_cells()[..10].to_vec();
        let chunk = TaskSpec::Heatmap(HeatmapTask {
            target: freqsweep_common::task::AnalysisTarget::new(
                DatasetSource::Syn(syn),
                ModelSource::Checkpoint { artifact: "model".into() },
                4,
                16,
            )
            .with_numerics(Precision::Fp32, MemoryFormat::Auto),
            eps: 4.0,
            cells: cells.clone(),
            chunk: 3,
            layers: vec!["fc".into()],
            seed: 0,
            batch: 64,
            epoch: None,
        });
        let inputs = HashMap::from([(MODEL_ARTIFACT.to_string(), artifacts[1].1.clone())]);
        let EngineResult::Done { outcome: TaskOutcome::Heatmap(h), .. } =
            engine.run("heatmap/x", &chunk, &inputs, &mut events).unwrap()
        else {
            panic!("not a heatmap outcome")
        };
        assert_eq!((h.chunk, h.images, h.error.len()), (3, 16, 10));
        assert_eq!(h.error.iter().map(|(c, _)| *c).collect::<Vec<_>>(), cells);
        assert_eq!(h.layers["fc"].len(), 10);

        let err = engine.run("heatmap/y", &chunk, &HashMap::new(), &mut events).unwrap_err();
        assert!(err.retryable && err.message.contains("\"model\" was not provided"), "{err:?}");
    }
}
