//! The band-sufficiency room of the engine: the model on its test split filtered to each of the
//! 15 non-empty band subsets (DC kept), one subset at a time (one filtered copy of the test set
//! resident at once), a confusion matrix each.

use super::{EngineError, EngineEvents, EngineResult, RoomModel, TorchEngine};
use crate::{device, eval};
use freqsweep_common::dfm::band_subsets;
use freqsweep_common::task::{BandsOutcome, BandsTask, TaskOutcome};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

/// Images per forward pass of the evaluation.
const BATCH: i64 = 256;

pub(super) fn run(
    engine: &mut TorchEngine,
    b: &BandsTask,
    inputs: &HashMap<String, PathBuf>,
    events: &mut dyn EngineEvents,
) -> Result<EngineResult, EngineError> {
    let started = Instant::now();
    let device = engine.device;
    let test = engine.test_split(&b.target.dataset, b.target.images)?;
    if test.is_empty() {
        return Err(EngineError::fatal("no test images to evaluate (the test split, or its image limit, is empty)"));
    }
    let RoomModel { model, name: model_name, precision, memory_format: format } =
        engine.room_model(&b.target, inputs, &test)?;
    let subsets = band_subsets();
    let mut sets = Vec::with_capacity(subsets.len());
    for (i, &set) in subsets.iter().enumerate() {
        let filtered = eval::band_filtered_test_sets(&test, &[set], &b.band_layout, b.clip, device);
        let m =
            eval::evaluate(model.as_ref(), &filtered[0], b.target.classes, BATCH).map_err(|e| model_name.fatal(e))?;
        sets.push((set, m.rows()));
        let done = (i + 1) as f64 / subsets.len() as f64;
        events.progress(done, ((i + 1) * test.len()) as f64 / started.elapsed().as_secs_f64().max(1e-9));
    }
    Ok(EngineResult::Done {
        outcome: TaskOutcome::Bands(BandsOutcome {
            images: test.len(),
            sets,
            seconds: started.elapsed().as_secs_f64(),
            device: device::describe(device),
            precision,
            memory_format: format,
        }),
        artifacts: Vec::new(),
    })
}
