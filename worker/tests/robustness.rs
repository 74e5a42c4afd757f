//! The robustness room through the engine, as a lease runs it: the pairs cut into two tasks give
//! exactly the confusion matrices of one task holding them all (a corrupted image depends only on
//! its corruption, severity, index and seed), a second run is bit-identical, the clean matrix is
//! the model's on the uncorrupted split, and a name no build knows is one line, not retried.

use freqsweep_common::bands::Band;
use freqsweep_common::syn::SynConfig;
use freqsweep_common::task::{
    AnalysisTarget, DatasetSource, MetricPoint, ModelSource, RobustnessOutcome, RobustnessTask, TaskOutcome, TaskSpec,
};
use freqsweep_worker::engine::{Engine, EngineEvents, EngineResult, TorchEngine};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

struct Quiet;

impl EngineEvents for Quiet {
    fn metrics(&mut self, _: &[MetricPoint]) {}
    fn progress(&mut self, _: f64, _: f64) {}
    fn checkpoint(&mut self, _: u32, _: &Path) {}
    fn should_stop(&mut self) -> bool {
        false
    }
}

/// A fixed linear classifier of 32 × 32 images into 4 classes, traced to TorchScript.
fn model(path: &Path) {
    tch::manual_seed(11);
    let w = Tensor::randn([3 * 32 * 32, 4], (Kind::Float, Device::Cpu)) * 0.05;
    let example = Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    let module = tch::CModule::create_by_tracing("Linear", "forward", &[example], &mut |inputs| {
        vec![inputs[0].view([-1, 3 * 32 * 32]).matmul(&w)]
    })
    .unwrap();
    module.save(path).unwrap();
}

fn task(pairs: &[(&str, u32)], chunk: usize) -> TaskSpec {
    let dataset = DatasetSource::Syn(SynConfig { train: 4, test: 24, ..SynConfig::new(Band::new(4).unwrap(), 5) });
    TaskSpec::Robustness(RobustnessTask {
        target: AnalysisTarget::new(
            dataset,
            ModelSource::Given { artifact: "model".into(), model: "lin".into() },
            4,
            0,
        ),
        pairs: pairs.iter().map(|(c, s)| (c.to_string(), *s)).collect(),
        chunk,
        seed: 3,
        batch: 7,
    })
}

fn run(engine: &mut TorchEngine, task: &TaskSpec, model: &Path) -> RobustnessOutcome {
    let inputs: HashMap<String, PathBuf> = HashMap::from([("model".into(), model.to_path_buf())]);
    match engine.run("robustness", task, &inputs, &mut Quiet).unwrap() {
        EngineResult::Done { outcome: TaskOutcome::Robustness(o), .. } => o,
        _ => panic!("a robustness outcome"),
    }
}

#[test]
fn chunks_equal_the_whole_and_runs_repeat_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lin.pt");
    model(&path);
    let mut engine = TorchEngine::new(Device::Cpu, dir.path().join("work"));
    let pairs = [("gaussian_noise", 5), ("contrast", 5), ("fog", 3), ("fourier(2,0,30)", 1), ("impulse_noise", 4)];
    let whole = run(&mut engine, &task(&pairs, 0), &path);
    assert_eq!(whole.images, 24);
    assert_eq!(whole.pairs.len(), 5);
    let first = run(&mut engine, &task(&pairs[..2], 0), &path);
    let second = run(&mut engine, &task(&pairs[2..], 1), &path);
    let cut: Vec<_> = first.pairs.iter().chain(&second.pairs).cloned().collect();
    assert_eq!(cut, whole.pairs, "the pairs cut into two tasks give the same matrices");
    assert_eq!((first.clean.clone(), second.clean.clone()), (whole.clean.clone(), whole.clean.clone()));
    assert_eq!(run(&mut engine, &task(&pairs, 0), &path).pairs, whole.pairs, "a second run is bit-identical");
    for (c, s, rows) in &whole.pairs {
        assert_eq!(rows.iter().flatten().sum::<u64>(), 24, "{c}/{s}");
    }
    // The strongest corruptions move predictions: at least one pair's matrix differs from clean.
    assert!(whole.pairs.iter().any(|(_, _, rows)| *rows != whole.clean), "{whole:?}");
}

#[test]
fn an_unknown_corruption_is_one_line_and_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lin.pt");
    model(&path);
    let mut engine = TorchEngine::new(Device::Cpu, dir.path().join("work"));
    let inputs: HashMap<String, PathBuf> = HashMap::from([("model".into(), path)]);
    let err = match engine.run("robustness", &task(&[("spatter", 1)], 0), &inputs, &mut Quiet) {
        Err(e) => e,
        Ok(_) => panic!("an unknown corruption ran"),
    };
    assert!(!err.retryable && err.message.starts_with("unknown corruption \"spatter\""), "{err:?}");
    assert!(!err.message.contains('\n'));
}
