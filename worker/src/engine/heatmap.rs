//! The heatmap room of the engine: one chunk of a Fourier heatmap (`worker/src/heatmap.rs`
//! computes) of the model named by the lease's input, on the first `images` test images.

use super::{EngineError, EngineEvents, EngineResult, RoomModel, TorchEngine};
use crate::heatmap::{self, HeatmapConfig};
use crate::{device, eval};
use freqsweep_common::task::{HeatmapOutcome, HeatmapTask, TaskOutcome};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

pub(super) fn run(
    engine: &mut TorchEngine,
    task_key: &str,
    h: &HeatmapTask,
    inputs: &HashMap<String, PathBuf>,
    events: &mut dyn EngineEvents,
) -> Result<EngineResult, EngineError> {
    let started = Instant::now();
    let device = engine.device;
    let test = engine.test_split(&h.target.dataset, h.target.images)?;
    let RoomModel { model, name: model_name, precision, memory_format: format } =
        engine.room_model(&h.target, inputs, &test)?;
    let images = eval::images_tensor(&test, device);
    let config = HeatmapConfig {
        eps: h.eps,
        cells: h.cells.clone(),
        // `["all"]` asks for every named layer of whatever model this is.
        layers: if h.layers.iter().any(|l| l == "all") { model.layer_names() } else { h.layers.clone() },
        seed: h.seed,
        batch: h.batch,
    };
    let mut stopped = false;
    let counts = heatmap::compute(model.as_ref(), &images, &test.labels, &config, &mut |done, total| {
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
        events.progress(done as f64 / total.max(1) as f64, rate);
        stopped |= events.should_stop();
    })
    .map_err(|e| model_name.fatal(e))?;
    if stopped {
        // Chunks are short: finishing is cheaper than redoing; report it done anyway.
        tracing::debug!(task = task_key, "stop requested during a heatmap chunk; finished it");
    }
    let seconds = started.elapsed().as_secs_f64();
    let perturbed = (h.cells.len() * counts.images) as f64;
    Ok(EngineResult::Done {
        outcome: TaskOutcome::Heatmap(HeatmapOutcome {
            eps: h.eps,
            chunk: h.chunk,
            images: counts.images,
            clean: counts.clean,
            error: counts.error,
            layers: counts.layers,
            seconds,
            images_per_second: perturbed / seconds.max(1e-9),
            device: device::describe(device),
            precision,
            memory_format: format,
        }),
        artifacts: Vec::new(),
    })
}
