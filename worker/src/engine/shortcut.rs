//! The shortcut-degree room of the engine (SCIENCE.md §7): the merged DFM maps (the lease's
//! input) give each chosen class's DFM at each `top` (the same `common::dfm` code that wrote the
//! report's masks decides); the whole test split is filtered to each mask with DC kept (the FFT
//! band filter on the CPU) and classified into a confusion matrix.

use super::{EngineError, EngineEvents, EngineResult, RoomModel, TorchEngine};
use crate::device;
use freqsweep_common::dfm::MapsFile;
use freqsweep_common::spectrum::Shape2;
use freqsweep_common::task::{ShortcutOutcome, ShortcutTask, TaskOutcome};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

pub(super) fn run(
    engine: &mut TorchEngine,
    s: &ShortcutTask,
    inputs: &HashMap<String, PathBuf>,
    events: &mut dyn EngineEvents,
) -> Result<EngineResult, EngineError> {
    let started = Instant::now();
    let device = engine.device;
    let maps_path = inputs
        .get(&s.maps)
        .ok_or_else(|| EngineError::transient(format!("input artifact {:?} was not provided", s.maps)))?;
    let test = engine.test_split(&s.target.dataset, s.target.images)?;
    if test.is_empty() {
        return Err(EngineError::fatal("no test images to filter (the test split, or its image limit, is empty)"));
    }
    let shape = Shape2::new(test.dims[2], test.dims[3]);
    let text = freqsweep_common::files::read_bounded(maps_path, maps_limit(s.target.classes, shape))
        .map_err(|e| EngineError::transient(format!("{}: {e}", maps_path.display())))?;
    let acc = serde_json::from_slice::<MapsFile>(&text)
        .map_err(|e| e.to_string())
        .and_then(|file| file.accumulator())
        .map_err(|e| EngineError::fatal(format!("{}: {e}", maps_path.display())))?;
    if acc.classes() != s.target.classes {
        return Err(EngineError::fatal(format!(
            "{}: the DFM maps have {} classes, the task's model {}",
            maps_path.display(),
            acc.classes(),
            s.target.classes
        )));
    }
    let RoomModel { model, name: model_name, precision, memory_format: format } =
        engine.room_model(&s.target, inputs, &test)?;
    let total = s.chosen.len() * s.top.len();
    let entries =
        crate::dfm::shortcut_confusions(model.as_ref(), &test, &acc, &s.chosen, &s.top, s.clip, device, &mut |done| {
            let rate = (done * test.len()) as f64 / started.elapsed().as_secs_f64().max(1e-9);
            events.progress(done as f64 / total.max(1) as f64, rate);
        })
        .map_err(|e| model_name.fatal(e))?;
    Ok(EngineResult::Done {
        outcome: TaskOutcome::Shortcut(ShortcutOutcome {
            images: test.len(),
            entries,
            seconds: started.elapsed().as_secs_f64(),
            device: device::describe(device),
            precision,
            memory_format: format,
        }),
        artifacts: Vec::new(),
    })
}

/// The most bytes the merged DFM maps of `classes` classes on `shape` images may hold: at most
/// one removal unit per cell, each with its anchor and every class's loss and flip count (far
/// below 64 + 128 bytes per class of JSON), and 1 MiB for the rest. Read whole, so bounded: a
/// damaged cache entry must not be read until memory runs out.
fn maps_limit(classes: usize, shape: Shape2) -> u64 {
    let units = (shape.h as u64).saturating_mul(shape.w as u64);
    let per_unit = 64 + 128 * classes as u64;
    (1 << 20) + units.saturating_mul(per_unit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use freqsweep_common::dfm::{DfmAccumulator, MapsFile};

    /// The largest maps a task can have (single cells, every unit) fit the bound with room.
    #[test]
    fn complete_maps_fit_their_bound() {
        for (classes, h, w) in [(4, 32, 32), (10, 16, 24)] {
            let shape = Shape2::new(h, w);
            let mut acc = DfmAccumulator::new(shape, 1, classes).unwrap();
            let stats: Vec<_> = (0..classes)
                .map(|_| freqsweep_common::dfm::ClassStat { loss: -1.234_567_890_123_456_7e-300, flipped: u64::MAX })
                .collect();
            let clean: Vec<_> = (0..classes)
                .map(|_| freqsweep_common::dfm::CleanStat { images: u64::MAX, loss: 1e300, correct: u64::MAX })
                .collect();
            acc.write_clean(&clean).unwrap();
            for unit in acc.units().to_vec() {
                acc.write(unit, &stats).unwrap();
            }
            let json = serde_json::to_vec(&MapsFile::of("a-point", &acc).unwrap()).unwrap();
            assert!((json.len() as u64) < maps_limit(classes, shape) - (1 << 20), "{} bytes", json.len());
        }
    }
}
