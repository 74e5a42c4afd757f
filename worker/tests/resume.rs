//! Resuming a stopped run gives the same final weights and metric history as an uninterrupted run.
//! This lives in its own test binary (one test, one thread) because libtorch's default random
//! generator is process-global: a concurrently running test would consume draws between seeding
//! and weight initialisation.

use freqsweep_common::bands::{Band, BandLayout};
use freqsweep_common::syn::{self, Split, SynConfig};
use freqsweep_common::task::{Augment, DatasetSource, LrSchedule, MetricPoint, Optimizer, TrainConfig, TrainTask};
use freqsweep_worker::train::{self, Quiet, TrainEnd, TrainObserver};
use std::path::Path;
use tch::{Device, Kind, Tensor};

fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let mut named = Tensor::load_multi(path).unwrap();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
        .into_iter()
        .filter(|(n, _)| !n.starts_with("meta"))
        .map(|(n, t)| (n, Vec::<f32>::try_from(t.to_kind(Kind::Float).flatten(0, -1)).unwrap()))
        .collect()
}

struct StopAfter {
    epochs: u32,
    seen: u32,
}

impl TrainObserver for StopAfter {
    fn epoch_done(&mut self, epoch: u32, _: &Path, _: &[MetricPoint]) {
        self.seen = epoch;
    }
    fn should_stop(&mut self) -> bool {
        self.seen >= self.epochs
    }
}

fn history(end: TrainEnd) -> Vec<MetricPoint> {
    match end {
        TrainEnd::Finished { history, .. } => history,
        TrainEnd::Stopped { .. } => panic!("run stopped"),
    }
}

#[test]
fn resuming_after_a_stop_gives_the_same_weights_optimizer_state_and_history() {
    let syn = SynConfig { train: 192, test: 64, ..SynConfig::new(Band::new(1).unwrap(), 3) };
    let (train_set, test_set) = (syn::generate(&syn, Split::Train), syn::generate(&syn, Split::Test));
    let task = TrainTask {
        dataset: DatasetSource::Syn(syn),
        train: TrainConfig {
            model: "tiny".into(),
            classes: 4,
            optimizer: Optimizer::Sgd { momentum: 0.9, weight_decay: 5e-4, nesterov: true },
            lr: 0.05,
            schedule: LrSchedule::Cosine { min_lr: 0.001 },
            batch_size: 32,
            epochs: 3,
            seed: 5,
            augment: Augment { flip: true, crop_padding: 2 },
            test_sets: vec!["B1234".parse().unwrap(), "B234".parse().unwrap()],
            band_layout: BandLayout::default(),
            clip_filtered: true,
            eval_every_steps: 2,
            eval_steps_epochs: 2,
            test_limit: 0,
            precision: Default::default(),
            memory_format: Default::default(),
            keep_epochs: Vec::new(),
        },
    };
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.ot");
    let first = train::run(&task, &train_set, &test_set, Device::Cpu, &whole, &mut Quiet).unwrap();
    let TrainEnd::Finished { outcome: whole_outcome, .. } = &first else { panic!("run stopped") };
    let whole_outcome = whole_outcome.clone();
    let whole_history = history(first);
    // Run again on a checkpoint that holds every epoch (a worker-local resume after the last
    // epoch): it reports exactly what the uninterrupted run did, the final loss included.
    let again = train::run(&task, &train_set, &test_set, Device::Cpu, &whole, &mut Quiet).unwrap();
    let TrainEnd::Finished { outcome: again_outcome, history: again_history } = again else { panic!("run stopped") };
    assert!(again_outcome.final_loss.is_finite(), "final loss {}", again_outcome.final_loss);
    assert_eq!(again_outcome.final_loss.to_bits(), whole_outcome.final_loss.to_bits(), "the same final loss");
    assert_eq!((again_outcome.epochs, again_outcome.steps), (whole_outcome.epochs, whole_outcome.steps));
    assert_eq!(again_outcome.test_sets, whole_outcome.test_sets, "the same final test-set summaries");
    assert_eq!(again_history, whole_history, "the same history");

    let parts = dir.path().join("parts.ot");
    let end =
        train::run(&task, &train_set, &test_set, Device::Cpu, &parts, &mut StopAfter { epochs: 1, seen: 0 }).unwrap();
    assert!(matches!(end, TrainEnd::Stopped { epochs_done: 1 }), "{end:?}");
    let resumed_history = history(train::run(&task, &train_set, &test_set, Device::Cpu, &parts, &mut Quiet).unwrap());

    let (a, b) = (weights(&whole), weights(&parts));
    assert!(a.iter().any(|(n, _)| n.starts_with("optim/")), "optimizer state is checkpointed");
    assert_eq!(a, b, "resumed run ends with the same weights and optimizer state");
    assert_eq!(whole_history.len(), resumed_history.len(), "same number of metric points");
    if let Some((a, b)) = whole_history.iter().zip(&resumed_history).find(|(a, b)| a != b) {
        panic!("metric histories differ first at {a:?} vs {b:?}");
    }
}
