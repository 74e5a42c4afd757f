//! One training run (SCIENCE.md §6): the model learns the train split with SGD or Adam under a
//! learning-rate schedule, is evaluated after every epoch — and every `k` steps during the first
//! epochs when asked — on each band-filtered test set, and is checkpointed after every epoch.
//!
//! Reproducibility: weights are initialised from `seed`; epoch `e` shuffles, augments and drops out
//! with randomness derived from `(seed, e)` alone, so a run resumed from the checkpoint after epoch
//! `e` continues exactly as if it had never stopped (on the same device). Checkpoints are written
//! only after the epoch's loss was checked finite, so the last checkpoint is always a good one.

use crate::checkpoint::{self, CheckpointError, CheckpointMeta};
use crate::device;
use crate::eval::{self, TestSet};
use crate::models::{self, Arch, ModelConfig};
use crate::optim::OptimizerState;
use freqsweep_common::dataset::Dataset;
use freqsweep_common::metrics::ConfusionMatrix;
use freqsweep_common::task::{MetricPoint, Precision, TestSetSummary, TrainConfig, TrainOutcome, TrainTask};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

/// Images per forward pass when evaluating (independent of the training batch).
const EVAL_BATCH: i64 = 500;
/// Check the accumulated loss for NaN/inf at least this often (it needs a device sync).
const LOSS_CHECK_STEPS: u64 = 50;

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("invalid training task: {0}")]
    Invalid(String),
    #[error(
        "training loss became {loss} at epoch {epoch}, step {step}; stopped, last good checkpoint (epoch {epochs_done}) kept at {checkpoint}"
    )]
    NonFinite { loss: f64, epoch: u32, step: u64, epochs_done: u32, checkpoint: PathBuf },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("libtorch: {0}")]
    Torch(String),
    #[error("the model: {0}")]
    Model(String),
}

/// What the caller hears during a run. Every method has a default that ignores it.
pub trait TrainObserver {
    /// New metric points (evaluations and training loss), in order.
    fn metrics(&mut self, _points: &[MetricPoint]) {}
    /// Progress within the run, in `[0, 1]`, and training throughput in images per second.
    fn progress(&mut self, _fraction: f64, _images_per_second: f64) {}
    /// An epoch finished and its checkpoint is on disk; `history` is every point so far.
    fn epoch_done(&mut self, _epoch: u32, _checkpoint: &Path, _history: &[MetricPoint]) {}
    /// The run resumed from a checkpoint after `epochs_done` epochs; `history` is every point the
    /// checkpoint holds (`metrics` then reports only what follows).
    fn resumed(&mut self, _epochs_done: u32, _history: &[MetricPoint]) {}
    /// Asked between steps: stop now (the run can be resumed from its last checkpoint).
    fn should_stop(&mut self) -> bool {
        false
    }
}

/// A run that ignores everything it is told.
pub struct Quiet;
impl TrainObserver for Quiet {}

/// How a run ended.
#[derive(Debug)]
pub enum TrainEnd {
    Finished {
        outcome: TrainOutcome,
        history: Vec<MetricPoint>,
    },
    /// `should_stop` said so; `epochs_done` epochs are in the checkpoint.
    Stopped {
        epochs_done: u32,
    },
}

/// Check a task before spending anything on it.
pub fn validate(config: &TrainConfig, train: &Dataset, test: &Dataset) -> Result<Arch, TrainError> {
    let invalid = |s: String| Err(TrainError::Invalid(s));
    let arch: Arch = config.model.parse().map_err(TrainError::Invalid)?;
    if config.batch_size == 0 {
        return invalid("batch_size must be at least 1".into());
    }
    if !(config.lr.is_finite() && config.lr > 0.0) {
        return invalid(format!("lr must be a positive number, got {}", config.lr));
    }
    if config.classes < 2 {
        return invalid(format!("classes must be at least 2, got {}", config.classes));
    }
    for (name, data) in [("train", train), ("test", test)] {
        if data.is_empty() {
            return invalid(format!("the {name} split is empty"));
        }
        if data.dims[1] != 3 {
            return invalid(format!("{name} images have {} channels; the models take 3", data.dims[1]));
        }
        if data.classes() > config.classes {
            return invalid(format!(
                "{name} labels go up to {} but the model has {} classes",
                data.classes() - 1,
                config.classes
            ));
        }
    }
    if test.dims[2..] != train.dims[2..] {
        return invalid(format!("train images are {:?} but test images {:?}", &train.dims[2..], &test.dims[2..]));
    }
    Ok(arch)
}

/// The bf16 compute copy of bf16-mixed training (PyTorch AMP's `bf16-mixed`: fp32 master
/// weights and optimizer state, bf16 compute). tch offers no autocast on the CPU, so the copy is
/// explicit: before each step the master weights and buffers are cast into it, it runs the
/// forward and backward pass in bf16, its gradients are cast back to fp32 for the optimizer, and
/// the batch-norm statistics it updated are copied back to the master.
struct MixedCopy {
    vs: nn::VarStore,
    model: Box<dyn models::Classifier>,
    /// The copy's trainable variables in the optimizer's order.
    params: Vec<Tensor>,
}

impl MixedCopy {
    fn new(config: &ModelConfig, device: Device, optimizer: &OptimizerState, channels_last: bool) -> MixedCopy {
        let mut vs = nn::VarStore::new(device);
        let mut model = models::build(&vs, config);
        let numerics = models::Numerics { kind: Kind::BFloat16, channels_last };
        models::convert_vars(&mut vs, numerics);
        model.set_numerics(numerics);
        let vars = vs.variables();
        let params = optimizer.names().map(|n| vars[n].shallow_clone()).collect();
        MixedCopy { vs, model, params }
    }

    /// One optimizer step on `master` for the batch `x`, `y`; returns the loss (fp32).
    fn step(
        &self,
        master: &nn::VarStore,
        optimizer: &mut OptimizerState,
        x: &Tensor,
        y: &Tensor,
        lr: f64,
    ) -> Result<Tensor, TrainError> {
        let (from, mut to) = (master.variables(), self.vs.variables());
        tch::no_grad(|| {
            for (name, t) in to.iter_mut() {
                t.copy_(&from[name]);
            }
        });
        for p in &self.params {
            let mut p = p.shallow_clone();
            p.zero_grad();
        }
        let loss = self.model.logits(x, true).map_err(model_error)?.to_kind(Kind::Float).cross_entropy_for_logits(y);
        loss.backward();
        // Batch-norm statistics (variables without gradients) were updated in the copy.
        tch::no_grad(|| {
            for (name, t) in &to {
                if !t.requires_grad() {
                    let mut m = from[name].shallow_clone();
                    m.copy_(t);
                }
            }
        });
        optimizer.step_with(lr, |i, _| {
            let g = self.params[i].grad();
            if g.defined() {
                g.to_kind(Kind::Float)
            } else {
                g
            }
        });
        Ok(loss)
    }
}

fn model_error(e: impl std::fmt::Display) -> TrainError {
    TrainError::Model(e.to_string())
}

/// Train `task` on `train`/`test` on `device`, checkpointing to `checkpoint_path`. If that file
/// exists and belongs to the same task, the run resumes after its last completed epoch.
pub fn run(
    task: &TrainTask,
    train: &Dataset,
    test: &Dataset,
    device: Device,
    checkpoint_path: &Path,
    observer: &mut dyn TrainObserver,
) -> Result<TrainEnd, TrainError> {
    let config = &task.train;
    let arch = validate(config, train, test)?;
    let model_config = ModelConfig::new(arch, config.classes as i64);
    let started = Instant::now();

    let mut trainee = Trainee::new(config, &model_config, device);
    let fresh = CheckpointMeta::new(model_config, Some(task.clone()));
    let mut meta = resume(task, checkpoint_path, &mut trainee, fresh, observer)?;

    let test = crate::data::truncate(test.clone(), config.test_limit);
    let test_sets =
        eval::band_filtered_test_sets(&test, &config.test_sets, &config.band_layout, config.clip_filtered, device);
    let n = train.len();
    let batch = config.batch_size.min(n);
    let steps_per_epoch = n.div_ceil(batch) as u64;
    let mut epochs = Epochs {
        config,
        device,
        checkpoint_path,
        trainee,
        test_sets,
        train_images: eval::images_tensor(train, device),
        train_labels: Tensor::from_slice(&train.labels).to_device(device),
        n,
        batch,
        steps_per_epoch,
        total_steps: steps_per_epoch * u64::from(config.epochs),
    };

    if meta.step == 0 && meta.metrics.is_empty() {
        let points = evaluate_all(epochs.trainee.model.as_ref(), &epochs.test_sets, config.classes, 0.0, 0)?;
        emit(&mut meta, points, observer);
    }

    // A resumed run that has every epoch already reports the loss its history ends with, exactly
    // what the uninterrupted run reported (every epoch ends with a loss point).
    let mut last_loss = meta.metrics.iter().rev().find(|p| p.name == "loss").map_or(f64::NAN, |p| p.value);
    for epoch in meta.epochs_done..config.epochs {
        if let EpochEnd::Stopped = epochs.train_epoch(epoch, &mut meta, &mut last_loss, observer)? {
            return Ok(TrainEnd::Stopped { epochs_done: meta.epochs_done });
        }
    }

    let trainee = &epochs.trainee;
    let test_sets_summary = summarise(trainee.model.as_ref(), &epochs.test_sets, config.classes)?;
    Ok(TrainEnd::Finished {
        outcome: TrainOutcome {
            epochs: meta.epochs_done,
            steps: meta.step,
            final_loss: last_loss,
            test_sets: test_sets_summary,
            seconds: started.elapsed().as_secs_f64(),
            device: device::describe(device),
            checkpoint: checkpoint_path.display().to_string(),
            precision: if trainee.mixed.is_some() { Precision::Bf16 } else { Precision::Fp32 },
            memory_format: trainee.master.memory_format(),
        },
        history: meta.metrics,
    })
}

/// The model being trained: the master weights and their optimizer, and in bf16-mixed the copy
/// that runs the passes.
struct Trainee {
    vs: nn::VarStore,
    model: Box<dyn models::Classifier>,
    optimizer: OptimizerState,
    /// bf16-mixed: the model above keeps the fp32 master weights (what the optimizer updates, the
    /// evaluations use and checkpoints hold); this bf16 copy, refreshed before every step, runs
    /// the forward and backward passes.
    mixed: Option<MixedCopy>,
    master: models::Numerics,
}

impl Trainee {
    /// A freshly initialised model (from the run's seed), in the task's layout and precision.
    fn new(config: &TrainConfig, model_config: &ModelConfig, device: Device) -> Trainee {
        tch::manual_seed(config.seed as i64);
        let mut vs = nn::VarStore::new(device);
        let mut model = models::build(&vs, model_config);
        // The master model's layout: `Auto` is channels-last for these conv nets. Its numbers stay
        // fp32 (in bf16-mixed too); checkpoints store values, so a run resumes in either layout.
        let channels_last = config.memory_format.resolve(models::is_conv_net(vs.variables().values()))
            == freqsweep_common::task::MemoryFormat::ChannelsLast;
        let master = models::Numerics { kind: Kind::Float, channels_last };
        models::convert_vars(&mut vs, master);
        model.set_numerics(master);
        let optimizer = OptimizerState::new(&vs, config.optimizer);
        let mixed = match config.precision {
            Precision::Bf16 if crate::device::bf16_allowed(device) => {
                Some(MixedCopy::new(model_config, device, &optimizer, channels_last))
            }
            Precision::Bf16 => {
                tracing::warn!(device = %crate::device::describe(device), "bf16 training requested, but this device has no bf16 instructions (it would be emulated, slower than fp32); training in fp32");
                None
            }
            Precision::Fp32 => None,
        };
        Trainee { vs, model, optimizer, mixed, master }
    }

    /// One optimizer step on the batch `x`, `y`; returns the loss.
    fn step(&mut self, x: &Tensor, y: &Tensor, lr: f64) -> Result<Tensor, TrainError> {
        match &self.mixed {
            None => {
                let loss = self.model.logits(x, true).map_err(model_error)?.cross_entropy_for_logits(y);
                self.optimizer.zero_grad();
                loss.backward();
                self.optimizer.step(lr);
                Ok(loss)
            }
            Some(copy) => copy.step(&self.vs, &mut self.optimizer, x, y, lr),
        }
    }
}

/// Continue from the checkpoint at `checkpoint_path` if there is one (it must be this task's):
/// the weights and optimizer state go into `trainee`, and its metadata (epochs done, history) is
/// returned; otherwise `fresh`.
fn resume(
    task: &TrainTask,
    checkpoint_path: &Path,
    trainee: &mut Trainee,
    fresh: CheckpointMeta,
    observer: &mut dyn TrainObserver,
) -> Result<CheckpointMeta, TrainError> {
    if !checkpoint_path.exists() {
        return Ok(fresh);
    }
    let stored = checkpoint::load(checkpoint_path)?;
    if stored.meta.train.as_ref() != Some(task) {
        return Err(CheckpointError::Mismatch {
            path: checkpoint_path.to_path_buf(),
            detail: "belongs to a different training task (remove it or use another output directory)".into(),
        }
        .into());
    }
    stored.restore_model(&mut trainee.vs, checkpoint_path)?;
    trainee
        .optimizer
        .load_state(&stored.optimizer)
        .map_err(|detail| CheckpointError::Mismatch { path: checkpoint_path.to_path_buf(), detail })?;
    let meta = stored.meta;
    tracing::info!(checkpoint = %checkpoint_path.display(), epochs_done = meta.epochs_done, step = meta.step, "resuming");
    observer.resumed(meta.epochs_done, &meta.metrics);
    Ok(meta)
}

/// Tell the observer about new points and add them to the history the checkpoint keeps.
fn emit(meta: &mut CheckpointMeta, points: Vec<MetricPoint>, observer: &mut dyn TrainObserver) {
    observer.metrics(&points);
    meta.metrics.extend(points);
}

/// How an epoch ended.
enum EpochEnd {
    /// Every step ran and the checkpoint is saved.
    Done,
    /// `should_stop` said so before a step.
    Stopped,
}

/// What every epoch of a run works with: the model, the data on the device, the batch geometry.
struct Epochs<'a> {
    config: &'a TrainConfig,
    device: Device,
    checkpoint_path: &'a Path,
    trainee: Trainee,
    test_sets: Vec<TestSet>,
    train_images: Tensor,
    train_labels: Tensor,
    n: usize,
    batch: usize,
    steps_per_epoch: u64,
    total_steps: u64,
}

impl Epochs<'_> {
    /// Train epoch `epoch` (its randomness from `(seed, epoch)` alone), evaluating when due, then
    /// checkpoint it.
    fn train_epoch(
        &mut self,
        epoch: u32,
        meta: &mut CheckpointMeta,
        last_loss: &mut f64,
        observer: &mut dyn TrainObserver,
    ) -> Result<EpochEnd, TrainError> {
        let config = self.config;
        let lr = config.schedule.lr(config.lr, epoch, config.epochs);
        let epoch_seed = mix(config.seed, u64::from(epoch));
        tch::manual_seed(epoch_seed as i64);
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        rng.set_stream(u64::from(epoch) + 1);
        let mut order: Vec<i64> = (0..self.n as i64).collect();
        order.shuffle(&mut rng);

        let epoch_started = Instant::now();
        let mut loss_sum = Tensor::zeros([], (Kind::Float, self.device));
        let mut loss_steps = 0u64;
        for (i, chunk) in order.chunks(self.batch).enumerate() {
            if observer.should_stop() {
                return Ok(EpochEnd::Stopped);
            }
            let index = Tensor::from_slice(chunk).to_device(self.device);
            let mut x = self.train_images.index_select(0, &index);
            let y = self.train_labels.index_select(0, &index);
            x = augment(x, &config.augment, &mut rng);
            let loss = self.trainee.step(&x, &y, lr)?;
            loss_sum += loss.detach();
            loss_steps += 1;
            meta.step += 1;

            let step_in_epoch = i as u64 + 1;
            let epoch_end = step_in_epoch == self.steps_per_epoch;
            let eval_now = config.eval_every_steps > 0
                && epoch < config.eval_steps_epochs
                && step_in_epoch.is_multiple_of(u64::from(config.eval_every_steps))
                && step_in_epoch < self.steps_per_epoch;
            if eval_now || epoch_end || meta.step.is_multiple_of(LOSS_CHECK_STEPS) {
                *last_loss = self.checked_mean_loss(&loss_sum, loss_steps, epoch, meta)?;
            }
            if eval_now || epoch_end {
                let at = f64::from(epoch) + step_in_epoch as f64 / self.steps_per_epoch as f64;
                let mut points = vec![point("loss", at, meta.step, "", -1, *last_loss)];
                if epoch_end {
                    points.push(point("lr", at, meta.step, "", -1, lr));
                }
                let model = self.trainee.model.as_ref();
                points.extend(evaluate_all(model, &self.test_sets, config.classes, at, meta.step)?);
                emit(meta, points, observer);
                loss_sum = Tensor::zeros([], (Kind::Float, self.device));
                loss_steps = 0;
            }
            let done =
                (u64::from(epoch) * self.steps_per_epoch + step_in_epoch) as f64 / self.total_steps.max(1) as f64;
            let rate = (step_in_epoch as usize * self.batch) as f64 / epoch_started.elapsed().as_secs_f64().max(1e-9);
            observer.progress(done, rate);
        }
        meta.epochs_done = epoch + 1;
        let trainee = &self.trainee;
        checkpoint::save(self.checkpoint_path, &trainee.vs, &trainee.optimizer.state_tensors(), meta)?;
        let seconds = epoch_started.elapsed().as_secs_f64();
        tracing::info!(
            epoch = epoch + 1,
            epochs = config.epochs,
            loss = *last_loss,
            lr,
            seconds,
            images_per_second = self.n as f64 / seconds.max(1e-9),
            "epoch done"
        );
        observer.epoch_done(epoch + 1, self.checkpoint_path, &meta.metrics);
        Ok(EpochEnd::Done)
    }

    /// The mean loss since the last evaluation; a NaN or infinite one ends the run (the last
    /// checkpoint, written before, stays good).
    fn checked_mean_loss(
        &self,
        loss_sum: &Tensor,
        loss_steps: u64,
        epoch: u32,
        meta: &CheckpointMeta,
    ) -> Result<f64, TrainError> {
        let mean = f64::try_from(loss_sum).map_err(|e| TrainError::Torch(e.to_string()))? / loss_steps as f64;
        if !mean.is_finite() {
            return Err(TrainError::NonFinite {
                loss: mean,
                epoch,
                step: meta.step,
                epochs_done: meta.epochs_done,
                checkpoint: self.checkpoint_path.to_path_buf(),
            });
        }
        Ok(mean)
    }
}

/// A seed for epoch `epoch` of a run seeded `seed` (SplitMix64 finaliser: nearby inputs give
/// unrelated outputs, so epochs do not share dropout masks).
fn mix(seed: u64, epoch: u64) -> u64 {
    let mut z = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) & (i64::MAX as u64)
}

fn point(name: &str, epoch: f64, step: u64, test_set: &str, class_index: i32, value: f64) -> MetricPoint {
    MetricPoint { name: name.to_string(), epoch, step, test_set: test_set.to_string(), class_index, value }
}

/// Random flips and crops (both off by default), decided on the host from the epoch's RNG.
fn augment(x: Tensor, augment: &freqsweep_common::task::Augment, rng: &mut ChaCha8Rng) -> Tensor {
    let mut x = x;
    let n = x.size()[0];
    if augment.flip {
        let flips: Vec<bool> = (0..n).map(|_| rng.random_bool(0.5)).collect();
        let mask = Tensor::from_slice(&flips).to_device(x.device()).view([n, 1, 1, 1]);
        x = x.flip([3]).where_self(&mask, &x);
    }
    let p = i64::from(augment.crop_padding);
    if p > 0 {
        let [h, w] = [x.size()[2], x.size()[3]];
        let padded = x.constant_pad_nd([p, p, p, p]);
        let crops: Vec<Tensor> = (0..n)
            .map(|i| {
                let (dy, dx) = (rng.random_range(0..=2 * p), rng.random_range(0..=2 * p));
                padded.get(i).narrow(1, dy, h).narrow(2, dx, w)
            })
            .collect();
        x = Tensor::stack(&crops, 0);
    }
    x
}

/// The metric points of one evaluation: for every test set accuracy, macro-F1, per-class
/// precision/recall/F1 and the confusion matrix.
fn evaluate_all(
    model: &dyn models::Classifier,
    sets: &[TestSet],
    classes: usize,
    epoch: f64,
    step: u64,
) -> Result<Vec<MetricPoint>, TrainError> {
    let mut points = Vec::new();
    for set in sets {
        let m = eval::evaluate(model, set, classes, EVAL_BATCH).map_err(model_error)?;
        points.extend(confusion_points(&m, &set.name, epoch, step));
    }
    Ok(points)
}

/// Metric points describing one confusion matrix (see `MetricPoint` for the names).
pub fn confusion_points(m: &ConfusionMatrix, test_set: &str, epoch: f64, step: u64) -> Vec<MetricPoint> {
    let classes = m.classes();
    let mut points = vec![
        point("accuracy", epoch, step, test_set, -1, m.accuracy()),
        point("macro_f1", epoch, step, test_set, -1, m.macro_f1()),
    ];
    for (c, scores) in m.per_class().iter().enumerate() {
        points.push(point("f1", epoch, step, test_set, c as i32, scores.f1));
        points.push(point("precision", epoch, step, test_set, c as i32, scores.precision));
        points.push(point("recall", epoch, step, test_set, c as i32, scores.recall));
    }
    for truth in 0..classes {
        for predicted in 0..classes {
            let index = (truth * classes + predicted) as i32;
            points.push(point("confusion", epoch, step, test_set, index, m.get(truth, predicted) as f64));
        }
    }
    points
}

fn summarise(
    model: &dyn models::Classifier,
    sets: &[TestSet],
    classes: usize,
) -> Result<Vec<TestSetSummary>, TrainError> {
    sets.iter()
        .map(|set| {
            let m = eval::evaluate(model, set, classes, EVAL_BATCH).map_err(model_error)?;
            Ok(TestSetSummary {
                test_set: set.name.clone(),
                accuracy: m.accuracy(),
                macro_f1: m.macro_f1(),
                per_class_f1: m.per_class().iter().map(|s| s.f1).collect(),
                confusion: m.rows(),
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use freqsweep_common::bands::{Band, BandLayout};
    use freqsweep_common::syn::{self, Split, SynConfig};
    use freqsweep_common::task::{Augment, DatasetSource, LrSchedule, Optimizer};

    pub(crate) fn tiny_task(epochs: u32) -> (TrainTask, Dataset, Dataset) {
        let syn = SynConfig { train: 256, test: 128, ..SynConfig::new(Band::new(4).unwrap(), 7) };
        let train = syn::generate(&syn, Split::Train);
        let test = syn::generate(&syn, Split::Test);
        let task = TrainTask {
            dataset: DatasetSource::Syn(syn),
            train: TrainConfig {
                model: "tiny".into(),
                classes: 4,
                optimizer: Optimizer::adam(),
                lr: 3e-3,
                schedule: LrSchedule::Constant,
                batch_size: 32,
                epochs,
                seed: 11,
                augment: Augment::default(),
                test_sets: vec!["B1234".parse().unwrap(), "B124".parse().unwrap()],
                band_layout: BandLayout::default(),
                clip_filtered: false,
                eval_every_steps: 4,
                eval_steps_epochs: 1,
                test_limit: 0,
                precision: Default::default(),
                memory_format: Default::default(),
                keep_epochs: Vec::new(),
            },
        };
        (task, train, test)
    }

    fn finished(end: TrainEnd) -> (TrainOutcome, Vec<MetricPoint>) {
        match end {
            TrainEnd::Finished { outcome, history } => (outcome, history),
            TrainEnd::Stopped { .. } => panic!("run stopped"),
        }
    }

    #[test]
    fn a_tiny_model_learns_syn4_above_chance() {
        let (task, train, test) = tiny_task(3);
        let dir = tempfile::tempdir().unwrap();
        let (outcome, history) =
            finished(run(&task, &train, &test, Device::Cpu, &dir.path().join("ckpt.ot"), &mut Quiet).unwrap());
        let all = &outcome.test_sets[0];
        assert_eq!(all.test_set, "B1234");
        assert!(all.accuracy > 0.5, "accuracy {} after 3 epochs (chance 0.25)", all.accuracy);
        assert_eq!(outcome.steps, 3 * 8);
        // Evaluations: before training, at steps 4 of epoch 1 (step 8 is the epoch end), every epoch.
        let epochs: Vec<f64> =
            history.iter().filter(|p| p.name == "accuracy" && p.test_set == "B1234").map(|p| p.epoch).collect();
        assert_eq!(epochs, [0.0, 0.5, 1.0, 2.0, 3.0]);
        let confusion: f64 = history
            .iter()
            .filter(|p| p.name == "confusion" && p.test_set == "B124" && p.epoch == 3.0)
            .map(|p| p.value)
            .sum();
        assert_eq!(confusion, 128.0, "confusion counts cover the test set");
    }

    #[test]
    fn nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint() {
        let (mut task, train, test) = tiny_task(2);
        task.train.lr = 1e30;
        task.train.optimizer = Optimizer::sgd(0.0, 0.0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ckpt.ot");
        let err = run(&task, &train, &test, Device::Cpu, &path, &mut Quiet).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, TrainError::NonFinite { .. }), "{text}");
        assert!(text.contains("training loss became") && !text.contains('\n'), "{text}");
    }

    #[test]
    fn bad_tasks_are_rejected_before_training() {
        let (mut task, train, test) = tiny_task(1);
        task.train.classes = 3;
        let dir = tempfile::tempdir().unwrap();
        let err = run(&task, &train, &test, Device::Cpu, &dir.path().join("c.ot"), &mut Quiet).unwrap_err();
        assert!(err.to_string().contains("labels go up to 3 but the model has 3 classes"), "{err}");
        task.train.classes = 4;
        task.train.model = "vgg".into();
        let err = run(&task, &train, &test, Device::Cpu, &dir.path().join("c.ot"), &mut Quiet).unwrap_err();
        assert!(err.to_string().contains("unknown model"), "{err}");
    }

    #[test]
    fn a_checkpoint_of_another_task_is_not_resumed() {
        let (task, train, test) = tiny_task(1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.ot");
        finished(run(&task, &train, &test, Device::Cpu, &path, &mut Quiet).unwrap());
        let mut other = task.clone();
        other.train.seed = 12;
        let err = run(&other, &train, &test, Device::Cpu, &path, &mut Quiet).unwrap_err();
        assert!(err.to_string().contains("different training task"), "{err}");
        std::fs::write(&path, b"not a checkpoint").unwrap();
        let err = run(&task, &train, &test, Device::Cpu, &path, &mut Quiet).unwrap_err();
        assert!(err.to_string().contains("not a freqsweep checkpoint"), "{err}");
        assert!(!err.to_string().contains('\n'), "{err}");
    }
}
