//! Given (TorchScript) models that are not plain classifiers of the task's images, through the
//! engine as a lease runs them: every kind (heatmap, DFM, bands, shortcut, robustness) ends such a task with
//! one line naming the model, marked not retryable (the same file fails the same way on every
//! worker), never a panic. The modules are traced here, from Rust, on 32 × 32 images:
//! - `small_batches`: runs on one or two images and raises on more (as a module whose batch size
//!   was baked in by tracing does), so it passes the load probe and fails in the first batch;
//! - `one_image`: traced with its batch size baked into a `view`, refused when loaded;
//! - `tuple`: returns `(logits, logits)` (the corpus's `tuple.pt`: tracing cannot make a module
//!   that returns a tuple, see `tests/corpus/README.md`);
//! - `seven`: 7 logits per image where the spec says 4 classes.
//!
//! `FREQSWEEP_CORPUS_WRITE=1` also writes the first two into `tests/corpus/models/` (the model
//! corpus).

use freqsweep_common::bands::{Band, BandLayout};
use freqsweep_common::dfm::{ClassStat, CleanStat, DfmAccumulator, MapsFile};
use freqsweep_common::spectrum::Shape2;
use freqsweep_common::syn::SynConfig;
use freqsweep_common::task::{
    AnalysisTarget, BandsTask, DatasetSource, DfmTask, HeatmapTask, MetricPoint, ModelSource, RobustnessTask,
    ShortcutTask, TaskSpec,
};
use freqsweep_worker::engine::{Engine, EngineError, EngineEvents, TorchEngine};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

const SIDE: i64 = 32;
const PIXELS: i64 = 3 * SIDE * SIDE;

/// A linear map of the flattened image to `classes` logits (fixed weights).
fn weights(classes: i64) -> Tensor {
    tch::manual_seed(7);
    Tensor::randn([PIXELS, classes], (Kind::Float, Device::Cpu)) * 0.01
}

/// Trace `forward` on one zero image into `path`.
fn trace(path: &Path, forward: impl Fn(&Tensor) -> Vec<Tensor>) {
    let example = Tensor::zeros([1, 3, SIDE, SIDE], (Kind::Float, Device::Cpu));
    let module = tch::CModule::create_by_tracing("Given", "forward", &[example], &mut |inputs| forward(&inputs[0]))
        .expect("tracing");
    module.save(path).expect("saving the traced module");
}

/// The traced modules, written into `dir`.
fn write_models(dir: &Path) {
    let w4 = weights(4);
    trace(&dir.join("small_batches.pt"), |x| {
        // `ones_like(x).sum()` is traced as a computation, so the index depends on the batch:
        // 0 for one or two images, 7 (out of range of the one-row table) for more.
        let table = Tensor::zeros([1, 4], (Kind::Float, Device::Cpu));
        let too_many = x.ones_like().sum(Kind::Float).gt(2.0 * PIXELS as f64).to_kind(Kind::Int64) * 7;
        vec![x.view([-1, PIXELS]).matmul(&w4) + table.index_select(0, &too_many.view([1]))]
    });
    trace(&dir.join("one_image.pt"), |x| vec![x.view([1, -1]).matmul(&w4)]);
    let w7 = weights(7);
    trace(&dir.join("seven.pt"), |x| vec![x.view([-1, PIXELS]).matmul(&w7)]);
}

struct Quiet;

impl EngineEvents for Quiet {
    fn metrics(&mut self, _: &[MetricPoint]) {}
    fn progress(&mut self, _: f64, _: f64) {}
    fn checkpoint(&mut self, _: u32, _: &Path) {}
    fn should_stop(&mut self) -> bool {
        false
    }
}

fn syn() -> DatasetSource {
    DatasetSource::Syn(SynConfig { train: 4, test: 16, ..SynConfig::new(Band::new(2).unwrap(), 3) })
}

/// Maps of 4 classes for 32 × 32 images with every unit written (the shortcut task's input).
fn maps_file(path: &Path) {
    let mut acc = DfmAccumulator::new(Shape2::new(32, 32), 1, 4).unwrap();
    acc.write_clean(&[CleanStat { images: 4, loss: 1.0, correct: 2 }; 4]).unwrap();
    for (i, unit) in acc.units().to_vec().into_iter().enumerate() {
        acc.write(unit, &[ClassStat { loss: i as f64, flipped: 0 }; 4]).unwrap();
    }
    std::fs::write(path, serde_json::to_vec(&MapsFile::of("p", &acc).unwrap()).unwrap()).unwrap();
}

/// A task of every kind that analyses a model, of the given model `name` with 4 classes.
fn tasks(name: &str) -> Vec<(&'static str, TaskSpec)> {
    let model = ModelSource::Given { artifact: "model".into(), model: name.into() };
    let cells = Shape2::new(32, 32).heatmap_cells()[..4].to_vec();
    vec![
        (
            "heatmap",
            TaskSpec::Heatmap(HeatmapTask {
                target: AnalysisTarget::new(syn(), model.clone(), 4, 8),
                eps: 4.0,
                cells: cells.clone(),
                chunk: 0,
                layers: vec![],
                seed: 0,
                batch: 16,
                epoch: None,
            }),
        ),
        (
            "dfm",
            TaskSpec::Dfm(DfmTask {
                target: AnalysisTarget::new(syn(), model.clone(), 4, 8),
                patch: 1,
                units: cells,
                chunk: 0,
                batch: 16,
            }),
        ),
        (
            "bands",
            TaskSpec::Bands(BandsTask {
                target: AnalysisTarget::new(syn(), model.clone(), 4, 8),
                band_layout: BandLayout::default(),
                clip: false,
            }),
        ),
        (
            "robustness",
            TaskSpec::Robustness(RobustnessTask {
                target: AnalysisTarget::new(syn(), model.clone(), 4, 8),
                pairs: vec![("gaussian_noise".into(), 3)],
                chunk: 0,
                seed: 0,
                batch: 16,
            }),
        ),
        (
            "shortcut",
            TaskSpec::Shortcut(ShortcutTask {
                target: AnalysisTarget::new(syn(), model, 4, 8),
                maps: "dfm_maps".into(),
                chosen: vec![0],
                top: vec![10.0],
                clip: false,
            }),
        ),
    ]
}

fn run(engine: &mut TorchEngine, task: &TaskSpec, model: &Path, maps: &Path) -> Result<(), EngineError> {
    let inputs: HashMap<String, PathBuf> =
        HashMap::from([("model".into(), model.to_path_buf()), ("dfm_maps".into(), maps.to_path_buf())]);
    engine.run("task", task, &inputs, &mut Quiet).map(|_| ())
}

#[test]
fn a_model_that_fails_fits_nothing_or_disagrees_with_the_spec_is_one_line_in_every_kind() {
    let dir = tempfile::tempdir().unwrap();
    write_models(dir.path());
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus/models");
    if std::env::var_os("FREQSWEEP_CORPUS_WRITE").is_some() {
        for name in ["one_image.pt", "small_batches.pt"] {
            std::fs::copy(dir.path().join(name), corpus.join(name)).unwrap();
        }
    }
    std::fs::copy(corpus.join("tuple.pt"), dir.path().join("tuple.pt")).unwrap();
    let maps = dir.path().join("maps.json");
    maps_file(&maps);
    let mut engine = TorchEngine::new(Device::Cpu, dir.path().join("work"));
    let cases = [
        ("small_batches", "forward failed on a batch of "),
        ("one_image", "forward runs on one image but fails on a batch of 2"),
        (
            "tuple",
            "forward returned a tuple instead of one tensor; the model must return one logits tensor [N, classes]",
        ),
        ("seven", "the model returns 7 logits per image, the spec says classes = 4"),
    ];
    for (name, expected) in cases {
        let path = dir.path().join(format!("{name}.pt"));
        for (kind, task) in tasks(name) {
            let err = run(&mut engine, &task, &path, &maps).expect_err(&format!("{kind} of {name} succeeded"));
            assert!(!err.retryable, "{kind} of {name}: marked retryable: {err:?}");
            assert!(err.message.starts_with(&format!("given model {name}: ")), "{kind}: {}", err.message);
            assert!(err.message.contains(expected), "{kind} of {name}: {}", err.message);
            assert!(!err.message.contains('\n') && err.message.len() < 400, "{kind} of {name}: {}", err.message);
        }
    }
    // The same traced linear map with the right output runs every kind (the failures above are
    // the models', not the tasks').
    let w4 = weights(4);
    let good = dir.path().join("good.pt");
    trace(&good, |x| vec![x.view([-1, PIXELS]).matmul(&w4)]);
    for (kind, task) in tasks("good") {
        run(&mut engine, &task, &good, &maps).unwrap_or_else(|e| panic!("{kind}: {e:?}"));
    }
}
