//! The DFM room of the engine: one chunk of a model's dominant-frequency loss maps
//! (`worker/src/dfm.rs` computes) on the first `images` test images, every class from the same
//! forward passes.

use super::{EngineError, EngineEvents, EngineResult, RoomModel, TorchEngine};
use crate::dfm::{self, DfmConfig};
use crate::{device, eval};
use freqsweep_common::task::{DfmOutcome, DfmTask, TaskOutcome};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

pub(super) fn run(
    engine: &mut TorchEngine,
    task_key: &str,
    d: &DfmTask,
    inputs: &HashMap<String, PathBuf>,
    events: &mut dyn EngineEvents,
) -> Result<EngineResult, EngineError> {
    let started = Instant::now();
    let device = engine.device;
    let test = engine.test_split(&d.target.dataset, d.target.images)?;
    let RoomModel { model, name: model_name, precision, memory_format: format } =
        engine.room_model(&d.target, inputs, &test)?;
    let images = eval::images_tensor(&test, device);
    let config = DfmConfig { patch: d.patch, units: d.units.clone(), batch: d.batch };
    let mut stopped = false;
    let counts = dfm::compute(model.as_ref(), &images, &test.labels, &config, &mut |done, total| {
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
        events.progress(done as f64 / total.max(1) as f64, rate);
        stopped |= events.should_stop();
    })
    .map_err(|e| model_name.fatal(e))?;
    if counts.clean.len() != d.target.classes {
        // Checked when the model was loaded; kept because a result must have exactly these.
        return Err(model_name.fatal(format!(
            "the model outputs {} classes, the task expects {}",
            counts.clean.len(),
            d.target.classes
        )));
    }
    if stopped {
        tracing::debug!(task = task_key, "stop requested during a DFM chunk; finished it");
    }
    let seconds = started.elapsed().as_secs_f64();
    let filtered = (d.units.len() * counts.images) as f64;
    Ok(EngineResult::Done {
        outcome: TaskOutcome::Dfm(DfmOutcome {
            chunk: d.chunk,
            patch: d.patch,
            images: counts.images,
            clean: counts.clean,
            units: counts.units,
            seconds,
            images_per_second: filtered / seconds.max(1e-9),
            device: device::describe(device),
            precision,
            memory_format: format,
        }),
        artifacts: Vec::new(),
    })
}
