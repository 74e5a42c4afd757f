//! bf16-mixed training against fp32 (its own test binary: it turns on emulated bf16 for the
//! process, so it runs on machines without bf16 instructions too, only slower). On Syn_4, three
//! seeds: every bf16 run ends within sampling noise of the fp32 run's accuracy, the mean over the
//! seeds too; the runs really differ (bf16 computed); and a bf16 run stopped after one epoch and
//! resumed ends bit for bit where the uninterrupted bf16 run ends (checkpoints hold the fp32
//! master weights and optimizer state).

use freqsweep_common::bands::Band;
use freqsweep_common::syn::{self, Split, SynConfig};
use freqsweep_common::task::{MetricPoint, Precision, TrainTask};
use freqsweep_worker::train::{self, Quiet, TrainEnd, TrainObserver};
use std::path::Path;
use tch::Device;

mod common;

/// Stops the run once this many epochs are done.
struct StopAfter(u32);

impl TrainObserver for StopAfter {
    fn epoch_done(&mut self, _: u32, _: &Path, _: &[MetricPoint]) {
        self.0 = self.0.saturating_sub(1);
    }
    fn should_stop(&mut self) -> bool {
        self.0 == 0
    }
}

fn task(seed: u64, precision: Precision, syn: SynConfig) -> TrainTask {
    common::tiny_task(syn, seed, precision)
}

fn finished(end: TrainEnd, precision: Precision) -> (f64, f64) {
    let TrainEnd::Finished { outcome, .. } = end else { panic!("stopped") };
    assert_eq!(outcome.precision, precision, "the outcome records what ran");
    (outcome.test_sets[0].accuracy, outcome.final_loss)
}

#[test]
fn bf16_mixed_training_reaches_fp32_accuracy_and_resumes_exactly() {
    std::env::set_var("FREQSWEEP_ALLOW_EMULATED_BF16", "1");
    let syn = SynConfig { train: 768, test: 256, ..SynConfig::new(Band::new(4).unwrap(), 0) };
    let (train_set, test_set) = (syn::generate(&syn, Split::Train), syn::generate(&syn, Split::Test));
    let dir = tempfile::tempdir().unwrap();
    let run = |seed: u64, precision: Precision, name: &str| {
        let path = dir.path().join(name);
        let end =
            train::run(&task(seed, precision, syn.clone()), &train_set, &test_set, Device::Cpu, &path, &mut Quiet);
        finished(end.unwrap(), precision)
    };
    let n = test_set.len() as f64;
    let (mut fp32_sum, mut bf16_sum) = (0.0, 0.0);
    for seed in 0..3 {
        let (fp32, fp32_loss) = run(seed, Precision::Fp32, &format!("fp32-{seed}.ot"));
        let (bf16, bf16_loss) = run(seed, Precision::Bf16, &format!("bf16-{seed}.ot"));
        eprintln!("seed {seed}: accuracy fp32 {fp32:.3}, bf16 {bf16:.3}; final loss {fp32_loss:.4} vs {bf16_loss:.4}");
        assert_ne!(fp32_loss.to_bits(), bf16_loss.to_bits(), "the bf16 run computed in fp32");
        // Two binomial estimates at p ≈ the fp32 accuracy: their difference's standard error.
        let se = (2.0 * fp32 * (1.0 - fp32) / n).sqrt();
        assert!((fp32 - bf16).abs() < 4.0 * se + 1e-9, "seed {seed}: {fp32} vs {bf16} (4 SE = {:.3})", 4.0 * se);
        fp32_sum += fp32;
        bf16_sum += bf16;
    }
    let (fp32_mean, bf16_mean) = (fp32_sum / 3.0, bf16_sum / 3.0);
    let se_mean = (2.0 * fp32_mean * (1.0 - fp32_mean) / (3.0 * n)).sqrt();
    assert!((fp32_mean - bf16_mean).abs() < 3.0 * se_mean + 1e-9, "mean {fp32_mean} vs {bf16_mean}");
    assert!(fp32_mean > 0.4, "the runs learn something: {fp32_mean}");

    // Stopped after one epoch, resumed: the same end as the uninterrupted bf16 run of seed 0.
    let whole = run(0, Precision::Bf16, "bf16-whole.ot");
    let parts = dir.path().join("bf16-parts.ot");
    let t = task(0, Precision::Bf16, syn.clone());
    let first = train::run(&t, &train_set, &test_set, Device::Cpu, &parts, &mut StopAfter(1)).unwrap();
    assert!(matches!(first, TrainEnd::Stopped { epochs_done: 1 }), "{first:?}");
    let resumed =
        finished(train::run(&t, &train_set, &test_set, Device::Cpu, &parts, &mut Quiet).unwrap(), Precision::Bf16);
    assert_eq!(resumed.1.to_bits(), whole.1.to_bits(), "resumed bf16 run ends with the same loss");
    assert_eq!(resumed.0, whole.0);
}
