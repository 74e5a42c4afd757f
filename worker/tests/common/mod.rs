//! Shared by the precision tests: the tiny CNN's training task on a Syn_d split.

use freqsweep_common::syn::SynConfig;
use freqsweep_common::task::{Augment, DatasetSource, LrSchedule, Optimizer, Precision, TrainConfig, TrainTask};

/// Three epochs of the tiny CNN with Adam (lr 3e-3, batch 32) on `syn`, evaluated on `B1234`.
pub fn tiny_task(syn: SynConfig, seed: u64, precision: Precision) -> TrainTask {
    TrainTask {
        dataset: DatasetSource::Syn(syn),
        train: TrainConfig {
            model: "tiny".into(),
            classes: 4,
            optimizer: Optimizer::adam(),
            lr: 3e-3,
            schedule: LrSchedule::Constant,
            batch_size: 32,
            epochs: 3,
            seed,
            augment: Augment::default(),
            test_sets: vec!["B1234".parse().unwrap()],
            band_layout: Default::default(),
            clip_filtered: false,
            eval_every_steps: 0,
            eval_steps_epochs: 0,
            test_limit: 0,
            precision,
            memory_format: Default::default(),
            keep_epochs: Vec::new(),
        },
    }
}
