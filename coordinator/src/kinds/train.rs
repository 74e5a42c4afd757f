//! The train room: one train task per grid point. Its attempts upload a checkpoint after every
//! epoch (the newest becomes the next attempt's `checkpoint` input, see the driver) and report the
//! whole metric history, so a new attempt's lease supersedes earlier attempts' points. A finished
//! task outputs the full checkpoint and the final weights alone (`model`), which analyses take.

use super::{next_id, PointPlan};
use crate::graph::PlannedTask;
use crate::scheduler::{Cost, CostClass};
use freqsweep_common::task::{DatasetSource, TaskSpec, TrainOutcome, TrainTask};

pub(super) fn plan(point: &mut PointPlan<'_>, tasks: &mut Vec<PlannedTask>) {
    let id = next_id(tasks);
    point.train = Some(id);
    tasks.push(PlannedTask {
        id,
        key: format!("train/{}", point.point.id),
        point: point.index,
        spec: TaskSpec::Train(point.point.task.clone()),
        deps: Vec::new(),
        cost: cost(&point.point.task),
    });
}

/// (train, test) images of a dataset, where known without reading it.
pub(crate) fn dataset_size(d: &DatasetSource) -> Option<(usize, usize)> {
    match d {
        DatasetSource::Syn(c) => Some((c.train, c.test)),
        DatasetSource::Cifar10 { .. } => Some((50_000, 10_000)),
        DatasetSource::Npy { .. } => None,
    }
}

/// Throughput class `train/<arch>`; work units: epochs × optimizer steps per epoch (`.npy`
/// datasets, whose size is unknown until a worker reads them: epochs).
pub fn cost(t: &TrainTask) -> Cost {
    let steps = dataset_size(&t.dataset).map_or(1, |(train, _)| train.div_ceil(t.train.batch_size.max(1)));
    let units = (t.train.epochs.max(1) as usize).saturating_mul(steps.max(1)) as f64;
    Cost { class: CostClass::new(&format!("train/{}", t.train.model)), units }
}

/// A finished run of every epoch, with one summary per configured test set whose numbers are rates.
pub(super) fn check(spec: &TrainTask, o: &TrainOutcome) -> Result<(), String> {
    let config = &spec.train;
    if o.epochs != config.epochs {
        return Err(format!("the result reports {} epochs, the task trains {}", o.epochs, config.epochs));
    }
    if !o.final_loss.is_finite() {
        return Err(format!("the result's final loss is {}", o.final_loss));
    }
    let mut wanted: Vec<String> = config.test_sets.iter().map(|s| s.to_string()).collect();
    let mut got: Vec<String> = o.test_sets.iter().map(|s| s.test_set.clone()).collect();
    wanted.sort();
    got.sort();
    if wanted != got {
        return Err(format!("the result covers test sets {got:?}, the task evaluates {wanted:?}"));
    }
    let rate = |v: f64| (0.0..=1.0).contains(&v);
    for s in &o.test_sets {
        let fits = rate(s.accuracy)
            && rate(s.macro_f1)
            && s.per_class_f1.len() == config.classes
            && s.per_class_f1.iter().all(|&f| rate(f))
            && s.confusion.len() == config.classes
            && s.confusion.iter().all(|row| row.len() == config.classes);
        if !fits {
            return Err(format!(
                "the result for {} is not a {}-class evaluation (accuracy {}, F1 {})",
                s.test_set, config.classes, s.accuracy, s.macro_f1
            ));
        }
    }
    Ok(())
}
