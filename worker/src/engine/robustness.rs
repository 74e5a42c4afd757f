//! The robustness room of the engine: the model on its test split clean and corrupted by each of
//! the task's `(corruption, severity)` pairs (`common::corruption`, SCIENCE.md §9.1), one pair's
//! corrupted copy resident at once, a confusion matrix each. Image `i` of the split is corrupted
//! with randomness keyed by (corruption, severity, `i`, seed), so the result does not depend on
//! how the pairs were cut into tasks nor on the worker.

use super::{EngineError, EngineEvents, EngineResult, RoomModel, TorchEngine};
use crate::device;
use crate::eval::{self, TestSet};
use freqsweep_common::corruption::{corrupt_batch, Corruption};
use freqsweep_common::dataset::Dataset;
use freqsweep_common::task::{RobustnessOutcome, RobustnessTask, TaskOutcome};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

pub(super) fn run(
    engine: &mut TorchEngine,
    r: &RobustnessTask,
    inputs: &HashMap<String, PathBuf>,
    events: &mut dyn EngineEvents,
) -> Result<EngineResult, EngineError> {
    let started = Instant::now();
    let device = engine.device;
    // Every name was checked by the spec; a forged or newer one is refused before any work.
    let corruptions: Vec<(Corruption, u32)> = r
        .pairs
        .iter()
        .map(|(name, severity)| Corruption::parse(name).map(|c| (c, *severity)))
        .collect::<Result<_, _>>()
        .map_err(|e| EngineError::fatal(e.to_string()))?;
    let test = engine.test_split(&r.target.dataset, r.target.images)?;
    if test.is_empty() {
        return Err(EngineError::fatal("no test images to corrupt (the test split, or its image limit, is empty)"));
    }
    let RoomModel { model, name: model_name, precision, memory_format } =
        engine.room_model(&r.target, inputs, &test)?;
    let batch = i64::try_from(r.batch.max(1)).unwrap_or(i64::MAX);
    let evaluate = |data: &Dataset, name: &str| -> Result<Vec<Vec<u64>>, EngineError> {
        let set =
            TestSet { name: name.to_string(), images: eval::images_tensor(data, device), labels: data.labels.clone() };
        Ok(eval::evaluate(model.as_ref(), &set, r.target.classes, batch).map_err(|e| model_name.fatal(e))?.rows())
    };
    let clean = evaluate(&test, "clean")?;
    let [_, channels, height, width] = test.dims;
    let mut pairs = Vec::with_capacity(corruptions.len());
    for (i, (corruption, severity)) in corruptions.iter().enumerate() {
        if events.should_stop() {
            return Ok(EngineResult::Stopped);
        }
        let images = corrupt_batch(&test.images, channels, height, width, *corruption, *severity, r.seed, 0)
            .map_err(|e| EngineError::fatal(format!("{}: {e}", corruption.name())))?;
        let corrupted = Dataset { dims: test.dims, images, labels: test.labels.clone() };
        let name = format!("{}/{severity}", corruption.name());
        pairs.push((corruption.name(), *severity, evaluate(&corrupted, &name)?));
        let done = (i + 1) as f64 / corruptions.len() as f64;
        events.progress(done, ((i + 1) * test.len()) as f64 / started.elapsed().as_secs_f64().max(1e-9));
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(EngineResult::Done {
        outcome: TaskOutcome::Robustness(RobustnessOutcome {
            chunk: r.chunk,
            images: test.len(),
            clean,
            pairs,
            seconds,
            images_per_second: (corruptions.len() * test.len()) as f64 / seconds.max(1e-9),
            device: device::describe(device),
            precision,
            memory_format,
        }),
        artifacts: Vec::new(),
    })
}
