//! The train room of the engine: one training run of a lease (`worker/src/train.rs` computes),
//! resumed from the `checkpoint` input when the coordinator sends one, ending with two outputs:
//! the full checkpoint (what a retry resumes from) and the final weights alone (what heatmap and
//! later analyses of the model download).

use super::{EngineError, EngineEvents, EngineResult, TorchEngine, CHECKPOINT_ARTIFACT, HISTORY_BATCH, MODEL_ARTIFACT};
use crate::checkpoint::{self, CheckpointError};
use crate::train::{self, TrainEnd, TrainError, TrainObserver};
use freqsweep_common::task::{MetricPoint, TaskOutcome, TrainTask};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub(super) fn run(
    engine: &mut TorchEngine,
    dir: &Path,
    task: &TrainTask,
    inputs: &HashMap<String, PathBuf>,
    events: &mut dyn EngineEvents,
) -> Result<EngineResult, EngineError> {
    let checkpoint_path = dir.join("checkpoint.ot");
    // A previous attempt's checkpoint (shipped by the coordinator) resumes the run. Copied beside
    // and renamed into place: a crash mid-copy must not leave a torn checkpoint to resume from.
    if let Some(previous) = inputs.get(CHECKPOINT_ARTIFACT) {
        if previous != &checkpoint_path {
            let partial = checkpoint_path.with_extension("ot.partial");
            std::fs::copy(previous, &partial)
                .and_then(|_| std::fs::rename(&partial, &checkpoint_path))
                .map_err(|e| EngineError::transient(format!("{}: {e}", previous.display())))?;
        }
    }
    let device = engine.device;
    let (train_set, test_set) = engine.dataset(&task.dataset)?;
    let end =
        train::run(task, train_set, test_set, device, &checkpoint_path, &mut Relay { events }).map_err(
            |e| match e {
                // A full or failing disk is this worker's trouble: another may finish the task.
                TrainError::Torch(_) | TrainError::Checkpoint(CheckpointError::Write { .. }) => {
                    EngineError::transient(e.to_string())
                }
                _ => EngineError::fatal(e.to_string()),
            },
        )?;
    match end {
        TrainEnd::Stopped { .. } => Ok(EngineResult::Stopped),
        TrainEnd::Finished { outcome, .. } => {
            let model_path = dir.join("model.ot");
            checkpoint::export_weights(&checkpoint_path, &model_path)
                .map_err(|e| EngineError::transient(e.to_string()))?;
            Ok(EngineResult::Done {
                outcome: TaskOutcome::Train(outcome),
                artifacts: vec![
                    (CHECKPOINT_ARTIFACT.to_string(), checkpoint_path),
                    (MODEL_ARTIFACT.to_string(), model_path),
                ],
            })
        }
    }
}

struct Relay<'a> {
    events: &'a mut dyn EngineEvents,
}

impl TrainObserver for Relay<'_> {
    fn metrics(&mut self, points: &[MetricPoint]) {
        self.events.metrics(points);
    }
    fn progress(&mut self, fraction: f64, images_per_second: f64) {
        self.events.progress(fraction, images_per_second);
    }
    fn epoch_done(&mut self, epoch: u32, checkpoint: &Path, _history: &[MetricPoint]) {
        self.events.checkpoint(epoch, checkpoint);
    }
    /// A resumed attempt first re-sends the checkpoint's history: the coordinator keeps only the
    /// current attempt's points of a task, so every attempt reports the whole run (whichever
    /// checkpoint it resumed from: the coordinator's or this worker's own) and none is counted
    /// twice.
    fn resumed(&mut self, _epochs_done: u32, history: &[MetricPoint]) {
        for batch in history.chunks(HISTORY_BATCH) {
            self.events.metrics(batch);
        }
    }
    fn should_stop(&mut self) -> bool {
        self.events.should_stop()
    }
}
