//! Task descriptions: the contract between the coordinator (which expands a sweep into tasks) and
//! the worker's engine (which runs them). A task travels as the JSON of [`TaskSpec`] inside a
//! `Lease`; results come back as the JSON of [`TaskOutcome`], metric points as [`MetricPoint`]s.
//! Everything here is plain data with serde, so the wire format can grow without protocol changes.
//!
//! Each analysis kind has one file here (`heatmap.rs`, `dfm.rs`, `shortcut.rs`, `bands.rs`,
//! `robustness.rs`): its task and outcome, and the spec section that asks for it with the
//! section's parser and checks.
//! This file lists the kinds: the enums below and the registry of spec sections
//! ([`RawAnalyses`], [`Analyses`]). The grid's own kind, `train`, lives here.

use crate::bands::{BandLayout, BandSet};
use crate::spec::section::{Ctx, GridAxes, SpecError};
use crate::spec::GridPoint;
use crate::syn::SynConfig;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use toml::Spanned;

mod bands;
mod dfm;
mod heatmap;
mod robustness;
mod shortcut;
pub use bands::*;
pub use dfm::*;
pub use heatmap::*;
pub use robustness::*;
pub use shortcut::*;

/// Where a task's images come from. Syn_d is described rather than shipped: it is deterministic
/// given its config, so a worker regenerates it bit for bit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DatasetSource {
    Syn(SynConfig),
    /// The CIFAR-10 binary version (`data_batch_1.bin` …, `test_batch.bin`) in a directory.
    Cifar10 {
        path: PathBuf,
    },
    /// `.npy` files: images `float32 [N,3,H,W]` in `[0,1]` or `uint8 [N,H,W,3]`, labels `[N]`.
    /// `size` is the images' `[H, W]` as the spec gave or read it (a worker refuses files of
    /// another size); the heatmap's cells follow it.
    Npy {
        train_images: PathBuf,
        train_labels: PathBuf,
        test_images: PathBuf,
        test_labels: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<[usize; 2]>,
    },
    /// An image folder per split (`<split>/<class>/<image>.png|jpg`), every image resized to
    /// cover `size` (`[H, W]`) and centre-cropped to it; `classes` are the training split's
    /// sub-directories in sorted order (the labels), as the spec read them.
    Folder {
        train: PathBuf,
        test: PathBuf,
        size: [usize; 2],
        classes: Vec<String>,
    },
    /// IDX files, as MNIST, Fashion-MNIST, KMNIST and EMNIST ship (gzipped or not): images
    /// `uint8 [N, H, W]`, labels `uint8 [N]`. `channels` is how the gray plane reaches a model:
    /// replicated to 3 (what every model takes today) or 1; `size` is the images' `[H, W]` as the
    /// spec gave or read it (a worker refuses files of another size).
    Idx {
        train_images: PathBuf,
        train_labels: PathBuf,
        test_images: PathBuf,
        test_labels: PathBuf,
        channels: usize,
        size: [usize; 2],
    },
}

impl DatasetSource {
    /// The `H × W` of the images, where the source says it (an `.npy` pair given without a size
    /// and not readable where the spec was read does not).
    pub fn image_shape(&self) -> Option<crate::spectrum::Shape2> {
        use crate::spectrum::Shape2;
        match self {
            DatasetSource::Syn(config) => Some(config.shape()),
            DatasetSource::Cifar10 { .. } => Some(Shape2::new(32, 32)),
            DatasetSource::Npy { size, .. } => size.map(|[h, w]| Shape2::new(h, w)),
            DatasetSource::Folder { size: [h, w], .. } => Some(Shape2::new(*h, *w)),
            DatasetSource::Idx { size: [h, w], .. } => Some(Shape2::new(*h, *w)),
        }
    }

    /// A short human name: `Syn_4`, `cifar10`, the test images' file stem (npy), or the name of
    /// the directory holding them (folder, idx: every MNIST-like set names its files alike).
    pub fn name(&self) -> String {
        match self {
            DatasetSource::Syn(config) => config.name(),
            DatasetSource::Cifar10 { .. } => "cifar10".to_string(),
            DatasetSource::Folder { test, .. } => test
                .parent()
                .and_then(|p| p.file_name())
                .map_or_else(|| "folder".into(), |s| s.to_string_lossy().into_owned()),
            DatasetSource::Idx { test_images, .. } => test_images
                .parent()
                .and_then(|p| p.file_name())
                .map_or_else(|| "idx".into(), |s| s.to_string_lossy().into_owned()),
            DatasetSource::Npy { test_images, .. } => {
                test_images.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "npy".into())
            }
        }
    }
}

/// The optimizer and its hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Optimizer {
    /// PyTorch's SGD: `v = μ v + (g + λ w)`, `w -= lr v` (Nesterov: `w -= lr (g + λ w + μ v)`).
    Sgd {
        #[serde(default)]
        momentum: f64,
        #[serde(default)]
        weight_decay: f64,
        #[serde(default)]
        nesterov: bool,
    },
    /// PyTorch's Adam with L2 weight decay added to the gradient (not AdamW).
    Adam {
        #[serde(default)]
        weight_decay: f64,
        #[serde(default = "default_beta1")]
        beta1: f64,
        #[serde(default = "default_beta2")]
        beta2: f64,
        #[serde(default = "default_adam_eps")]
        eps: f64,
    },
}

fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_adam_eps() -> f64 {
    1e-8
}

impl Optimizer {
    pub fn sgd(momentum: f64, weight_decay: f64) -> Self {
        Optimizer::Sgd { momentum, weight_decay, nesterov: false }
    }

    pub fn adam() -> Self {
        Optimizer::Adam { weight_decay: 0.0, beta1: default_beta1(), beta2: default_beta2(), eps: default_adam_eps() }
    }
}

/// Learning-rate schedule, evaluated per epoch (like PyTorch's `StepLR` / `CosineAnnealingLR`
/// stepped once per epoch).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum LrSchedule {
    Constant,
    /// `lr · gamma^(epoch / every_epochs)`.
    Step {
        every_epochs: u32,
        gamma: f64,
    },
    /// `min_lr + (lr − min_lr)(1 + cos(π · epoch / epochs)) / 2`.
    Cosine {
        #[serde(default)]
        min_lr: f64,
    },
}

impl LrSchedule {
    /// The learning rate of (0-based) `epoch` out of `epochs`, starting from `base`.
    pub fn lr(&self, base: f64, epoch: u32, epochs: u32) -> f64 {
        match *self {
            LrSchedule::Constant => base,
            LrSchedule::Step { every_epochs, gamma } => base * gamma.powi((epoch / every_epochs.max(1)) as i32),
            LrSchedule::Cosine { min_lr } => {
                let t = f64::from(epoch) / f64::from(epochs.max(1));
                min_lr + (base - min_lr) * (1.0 + (std::f64::consts::PI * t).cos()) / 2.0
            }
        }
    }
}

/// Training-time data augmentation; off by default (the poster trains without it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// Random horizontal flip with probability 1/2.
    #[serde(default)]
    pub flip: bool,
    /// Random crop after zero-padding by this many pixels on each side (0: off; CIFAR uses 4).
    #[serde(default)]
    pub crop_padding: u32,
}

/// Everything a training run needs besides its data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// `alexnet`, `resnet18` or `tiny`.
    pub model: String,
    pub classes: usize,
    pub optimizer: Optimizer,
    pub lr: f64,
    pub schedule: LrSchedule,
    pub batch_size: usize,
    pub epochs: u32,
    pub seed: u64,
    #[serde(default)]
    pub augment: Augment,
    /// Band-filtered test sets evaluated after every epoch (`B1234`, `B124`, …).
    pub test_sets: Vec<BandSet>,
    #[serde(default)]
    pub band_layout: BandLayout,
    /// Clamp band-filtered test images to `[0, 1]` (SCIENCE.md §4: default off).
    #[serde(default)]
    pub clip_filtered: bool,
    /// Also evaluate every this many steps (0: only per epoch) …
    #[serde(default)]
    pub eval_every_steps: u32,
    /// … during the first this many epochs.
    #[serde(default)]
    pub eval_steps_epochs: u32,
    /// Use only the first this many test images (0: all) for the per-epoch evaluations.
    #[serde(default)]
    pub test_limit: usize,
    /// `Bf16`: bf16-mixed training (fp32 master weights and optimizer state, bf16 forward and
    /// backward); checkpoints hold the fp32 weights either way.
    #[serde(default, skip_serializing_if = "is_default")]
    pub precision: Precision,
    /// Layout of the images and conv weights in training (checkpoints store values, not layout).
    #[serde(default, skip_serializing_if = "is_default")]
    pub memory_format: MemoryFormat,
    /// Epochs whose checkpoints analyses take (`[heatmap] at_epochs`): the worker uploads each
    /// of them, never skipping one for a newer snapshot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keep_epochs: Vec<u32>,
}

/// One training run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainTask {
    pub dataset: DatasetSource,
    pub train: TrainConfig,
}

/// Which model a heatmap task evaluates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelSource {
    /// A freqsweep checkpoint (the artifact of the named input, or a file path when standalone).
    Checkpoint { artifact: String },
    /// A TorchScript classifier file: `float32 [N,3,H,W]` in `[0,1]` → logits. `digest` is the
    /// file's digest when the run recorded it; a worker refuses a file that differs (changed
    /// since, corrupt, or another file at the same path on its node).
    TorchScript {
        path: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digest: Option<String>,
    },
    /// A model file the sweep was given (`[[model]] kind = "torchscript"`: TorchScript or a
    /// freqsweep checkpoint), named `model` in point ids; the coordinator stores the file and
    /// the lease carries it as the input `artifact` (no shared filesystem).
    Given { artifact: String, model: String },
}

/// What an analysis task evaluates and how: one model on the test split of one dataset. The four
/// analysis tasks flatten it, so their JSON is as it was when each repeated these fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnalysisTarget {
    pub dataset: DatasetSource,
    pub model: ModelSource,
    /// The model's outputs: it must return exactly this many logits per image (0: not said, in a
    /// heatmap task stored by a coordinator from before the field).
    #[serde(default, skip_serializing_if = "is_default")]
    pub classes: usize,
    /// Use only the first this many test images (0: all).
    #[serde(default)]
    pub images: usize,
    /// Numbers of the model's forward pass (the analysis's own arithmetic stays fp32/fp64).
    #[serde(default, skip_serializing_if = "is_default")]
    pub precision: Precision,
    #[serde(default, skip_serializing_if = "is_default")]
    pub memory_format: MemoryFormat,
    /// Every field of the task that neither the task nor this names: refused.
    #[serde(flatten, default)]
    others: NoOtherFields,
}

impl AnalysisTarget {
    pub fn new(dataset: DatasetSource, model: ModelSource, classes: usize, images: usize) -> AnalysisTarget {
        AnalysisTarget {
            dataset,
            model,
            classes,
            images,
            precision: Precision::default(),
            memory_format: MemoryFormat::default(),
            others: NoOtherFields,
        }
    }

    pub fn with_numerics(self, precision: Precision, memory_format: MemoryFormat) -> AnalysisTarget {
        AnalysisTarget { precision, memory_format, ..self }
    }
}

/// The fields of a flattened task left after every named one is read: there must be none, as
/// `deny_unknown_fields` would say (a task from a newer coordinator that this worker would
/// misread is refused, not run without the field).
#[derive(Clone, Debug, Default, PartialEq)]
struct NoOtherFields;

impl Serialize for NoOtherFields {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        s.serialize_map(Some(0))?.end()
    }
}

impl<'de> Deserialize<'de> for NoOtherFields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = NoOtherFields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("no other fields")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<NoOtherFields, A::Error> {
                match map.next_key::<String>()? {
                    Some(key) => Err(serde::de::Error::custom(format!("unknown field `{key}`"))),
                    None => Ok(NoOtherFields),
                }
            }
        }
        d.deserialize_map(V)
    }
}

/// The output name of a train task's checkpoint after `epoch` epochs, kept for analyses.
pub fn epoch_output(epoch: u32) -> String {
    format!("epoch{epoch}")
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The numbers a model computes in. `Fp32` is bit-reproducible; `Bf16` runs the model in
/// bfloat16 (8 exponent bits like fp32, 8 mantissa bits), several times faster where the hardware
/// has bf16 instructions, and agrees with fp32 within sampling noise (tested).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    #[default]
    Fp32,
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 2] = [Precision::Fp32, Precision::Bf16];

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Bf16 => "bf16",
        }
    }

    pub fn parse(s: &str) -> Option<Precision> {
        Precision::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// How image tensors and conv weights are laid out in memory for the model. `Auto` lets the
/// worker choose per model: channels-last (NHWC) for conv nets, where oneDNN and cuDNN are
/// fastest in fp32 and bf16 alike (BENCHMARKS.md: 1.3–1.6× on the CPU), NCHW for anything else.
/// Either choice is bit-reproducible at a fixed thread count; the two differ from each other in
/// rounding only (the kernels sum in another order), so a run records the one it used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryFormat {
    #[default]
    Auto,
    Contiguous,
    ChannelsLast,
}

impl MemoryFormat {
    pub const ALL: [MemoryFormat; 3] = [MemoryFormat::Auto, MemoryFormat::Contiguous, MemoryFormat::ChannelsLast];

    pub fn as_str(self) -> &'static str {
        match self {
            MemoryFormat::Auto => "auto",
            MemoryFormat::Contiguous => "contiguous",
            MemoryFormat::ChannelsLast => "channels_last",
        }
    }

    pub fn parse(s: &str) -> Option<MemoryFormat> {
        MemoryFormat::ALL.into_iter().find(|f| f.as_str() == s)
    }

    /// What `Auto` means for a model that is (`conv_net`) or is not a convolutional network
    /// (the others mean themselves).
    pub fn resolve(self, conv_net: bool) -> MemoryFormat {
        match self {
            MemoryFormat::Auto if conv_net => MemoryFormat::ChannelsLast,
            MemoryFormat::Auto => MemoryFormat::Contiguous,
            other => other,
        }
    }

    /// The format a recorded outcome used: outcomes written before formats were recorded, and
    /// fp32 NCHW ones, leave the field out, which reads as `Auto`.
    pub fn as_recorded(self) -> MemoryFormat {
        match self {
            MemoryFormat::Auto => MemoryFormat::Contiguous,
            other => other,
        }
    }
}

/// A task as leased to a worker.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskSpec {
    Train(TrainTask),
    Heatmap(HeatmapTask),
    Dfm(DfmTask),
    Shortcut(ShortcutTask),
    Bands(BandsTask),
    Robustness(RobustnessTask),
}

/// The kinds of task: the unit of the design. Each has one room on either side (the coordinator's
/// planner room in `coordinator/src/kinds/`, the worker's engine room in `worker/src/engines/`);
/// code that depends on the kind matches on this enum exhaustively, so a new variant makes the
/// compiler list every place that must handle it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    Train,
    Heatmap,
    Dfm,
    Shortcut,
    Bands,
    Robustness,
}

impl TaskKind {
    /// Every kind, in planning order (a kind's dependencies come earlier).
    pub const ALL: [TaskKind; 6] =
        [TaskKind::Train, TaskKind::Heatmap, TaskKind::Dfm, TaskKind::Shortcut, TaskKind::Bands, TaskKind::Robustness];

    /// The name in task keys, logs, the store's `tasks.kind` and `status`.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Train => "train",
            TaskKind::Heatmap => "heatmap",
            TaskKind::Dfm => "dfm",
            TaskKind::Shortcut => "shortcut",
            TaskKind::Bands => "bands",
            TaskKind::Robustness => "robustness",
        }
    }

    pub fn parse(name: &str) -> Option<TaskKind> {
        TaskKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// The artifacts a finished task of this kind uploads, by name (a lease's inputs use the same
    /// names). Train: the full checkpoint (weights, optimizer state, RNG and metric history, what a
    /// retry resumes from) and the final weights alone (what analyses of the model download).
    pub fn outputs(self) -> &'static [&'static str] {
        match self {
            TaskKind::Train => &[CHECKPOINT_OUTPUT, MODEL_OUTPUT],
            TaskKind::Heatmap | TaskKind::Dfm | TaskKind::Shortcut | TaskKind::Bands | TaskKind::Robustness => &[],
        }
    }
}

/// A train task's full checkpoint (also the input a resumed train attempt starts from).
pub const CHECKPOINT_OUTPUT: &str = "checkpoint";
/// A train task's final weights without optimizer state: the input of analyses of the model.
pub const MODEL_OUTPUT: &str = "model";

impl TaskSpec {
    /// The epochs after which an attempt keeps its checkpoint as an output of the task, for the
    /// analyses that take it (a train task's `[heatmap] at_epochs`; none for the other kinds).
    pub fn kept_epochs(&self) -> &[u32] {
        match self {
            TaskSpec::Train(t) => &t.train.keep_epochs,
            TaskSpec::Heatmap(_)
            | TaskSpec::Dfm(_)
            | TaskSpec::Shortcut(_)
            | TaskSpec::Bands(_)
            | TaskSpec::Robustness(_) => &[],
        }
    }

    /// This task as an earlier release stored it, with the fields added since filled in as
    /// `planned` (the same task planned by this release) has them, where the old release could
    /// not have said them: they describe no change the user made, so a stored run resumes
    /// (`coordinator::identity`). Each arm names the change that added its field; a field whose
    /// default equals the old behaviour needs no arm (it deserialises to that default).
    pub fn with_fields_added_since(self, planned: &TaskSpec) -> TaskSpec {
        match (self, planned) {
            // `HeatmapTask::classes` (issue 23): 0 in a task stored before it.
            (TaskSpec::Heatmap(mut old), TaskSpec::Heatmap(new)) if old.target.classes == 0 => {
                old.target.classes = new.target.classes;
                TaskSpec::Heatmap(old)
            }
            (stored, _) => stored,
        }
    }

    /// What an analysis task evaluates (`None`: a train task).
    pub fn target(&self) -> Option<&AnalysisTarget> {
        match self {
            TaskSpec::Train(_) => None,
            TaskSpec::Heatmap(t) => Some(&t.target),
            TaskSpec::Dfm(t) => Some(&t.target),
            TaskSpec::Shortcut(t) => Some(&t.target),
            TaskSpec::Bands(t) => Some(&t.target),
            TaskSpec::Robustness(t) => Some(&t.target),
        }
    }

    pub fn kind(&self) -> TaskKind {
        match self {
            TaskSpec::Train(_) => TaskKind::Train,
            TaskSpec::Heatmap(_) => TaskKind::Heatmap,
            TaskSpec::Dfm(_) => TaskKind::Dfm,
            TaskSpec::Shortcut(_) => TaskKind::Shortcut,
            TaskSpec::Bands(_) => TaskKind::Bands,
            TaskSpec::Robustness(_) => TaskKind::Robustness,
        }
    }
}

/// Final figures of one test set after training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestSetSummary {
    pub test_set: String,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub per_class_f1: Vec<f64>,
    /// `confusion[truth][predicted]`.
    pub confusion: Vec<Vec<u64>>,
}

/// What a finished training run reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainOutcome {
    pub epochs: u32,
    pub steps: u64,
    pub final_loss: f64,
    pub test_sets: Vec<TestSetSummary>,
    pub seconds: f64,
    pub device: String,
    /// Name of the checkpoint artifact (or file) holding the final weights.
    pub checkpoint: String,
    /// What the forward and backward passes computed in (fp32 where bf16 was asked but the
    /// device lacks it), and the memory format they used (never `Auto`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub precision: Precision,
    #[serde(default, skip_serializing_if = "is_contiguous")]
    pub memory_format: MemoryFormat,
}

fn is_contiguous(f: &MemoryFormat) -> bool {
    matches!(f, MemoryFormat::Contiguous | MemoryFormat::Auto)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TaskOutcome {
    Train(TrainOutcome),
    Heatmap(HeatmapOutcome),
    Dfm(DfmOutcome),
    Shortcut(ShortcutOutcome),
    Bands(BandsOutcome),
    Robustness(RobustnessOutcome),
}

impl TaskOutcome {
    pub fn kind(&self) -> TaskKind {
        match self {
            TaskOutcome::Train(_) => TaskKind::Train,
            TaskOutcome::Heatmap(_) => TaskKind::Heatmap,
            TaskOutcome::Dfm(_) => TaskKind::Dfm,
            TaskOutcome::Shortcut(_) => TaskKind::Shortcut,
            TaskOutcome::Bands(_) => TaskKind::Bands,
            TaskOutcome::Robustness(_) => TaskKind::Robustness,
        }
    }
}

/// One measured value during training. Names: `loss` (mean training loss since the previous
/// point), `lr`, `accuracy`, `macro_f1`, `f1`/`precision`/`recall` (per class), and `confusion`,
/// whose `class_index` is `truth · classes + predicted` and value the count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    pub name: String,
    /// Fractional for evaluations inside an epoch (`1.25` = a quarter into the second epoch).
    pub epoch: f64,
    pub step: u64,
    /// Empty for training metrics.
    pub test_set: String,
    /// `-1` when the metric is not per class.
    pub class_index: i32,
    pub value: f64,
}

// The registry of analysis sections: one per kind that has one. A new kind with a section adds its
// field to both structs and one line to each function below.

/// The spec's analysis sections as TOML gives them.
#[derive(Default)]
pub(crate) struct RawAnalyses {
    pub(crate) heatmap: Option<Spanned<RawHeatmap>>,
    pub(crate) dfm: Option<Spanned<RawDfm>>,
    pub(crate) bands: Option<Spanned<RawBands>>,
    pub(crate) robustness: Option<Spanned<RawRobustness>>,
}

impl RawAnalyses {
    /// The sections' names (top-level keys of a spec).
    pub(crate) const KEYS: &'static [&'static str] = &["heatmap", "dfm", "bands", "robustness"];

    /// Read the section named `key` from `map`; `false` when no analysis has a section of that name.
    pub(crate) fn read<'de, A: serde::de::MapAccess<'de>>(&mut self, key: &str, map: &mut A) -> Result<bool, A::Error> {
        match key {
            "heatmap" => self.heatmap = Some(map.next_value()?),
            "dfm" => self.dfm = Some(map.next_value()?),
            "bands" => self.bands = Some(map.next_value()?),
            "robustness" => self.robustness = Some(map.next_value()?),
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// The analyses a sweep asks for, parsed and checked (`None`: not asked for).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Analyses {
    pub heatmap: Option<HeatmapSpec>,
    pub dfm: Option<DfmSpec>,
    /// Band sufficiency (`[bands]`, unless `sufficiency = false`).
    pub bands: Option<BandsSpec>,
    /// Corruption robustness (`[robustness]`).
    pub robustness: Option<RobustnessSpec>,
}

impl Analyses {
    /// Each section parsed and checked against the grid's axes, in this order (the order in which
    /// a spec's first mistake is reported).
    pub(crate) fn parse(ctx: &Ctx, raw: &RawAnalyses, grid: &GridAxes) -> Result<Analyses, SpecError> {
        Ok(Analyses {
            heatmap: raw.heatmap.as_ref().map(|h| heatmap::parse_section(ctx, h, grid)).transpose()?,
            dfm: raw.dfm.as_ref().map(|d| dfm::parse_section(ctx, d, grid)).transpose()?,
            bands: bands::parse_section(ctx, raw.bands.as_ref())?,
            robustness: raw.robustness.as_ref().map(|r| robustness::parse_section(ctx, r)).transpose()?,
        })
    }

    /// Checks against the grid's points, once they are built (a section may also set what the
    /// points' training keeps for it, as `[heatmap] at_epochs` does).
    pub(crate) fn check_points(
        &self,
        ctx: &Ctx,
        raw: &RawAnalyses,
        grid: &GridAxes,
        points: &mut [GridPoint],
    ) -> Result<(), SpecError> {
        if let (Some(h), Some(raw_h)) = (&self.heatmap, &raw.heatmap) {
            heatmap::check_points(ctx, h, raw_h, grid, points)?;
        }
        if let (Some(d), Some(raw_d)) = (&self.dfm, &raw.dfm) {
            dfm::check_points(ctx, d, raw_d, points)?;
        }
        if let (Some(r), Some(raw_r)) = (&self.robustness, &raw.robustness) {
            robustness::check_points(ctx, r, raw_r, points)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bands::Band;

    /// Every section name the registry lists is one it reads (a name listed but not read would
    /// be refused as unknown; one read but not listed would be missing from the error's list),
    /// and each section appears in the sweep it parses to.
    #[test]
    fn every_listed_section_is_read() {
        let base = "[[dataset]]\nkind = \"syn\"\nband = 1\n[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\n";
        for key in RawAnalyses::KEYS {
            let parsed = crate::spec::parse(&format!("{base}[{key}]\n"), "s.toml");
            let message = parsed.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(!message.contains("unknown field"), "[{key}]: {message}");
        }
        let all =
            crate::spec::parse(&format!("{base}[heatmap]\neps = 4\n[dfm]\n[bands]\n[robustness]\n"), "s.toml").unwrap();
        let a = &all.analyses;
        assert!(a.heatmap.is_some() && a.dfm.is_some() && a.bands.is_some() && a.robustness.is_some());
        let err = crate::spec::parse(&format!("{base}[robustnes]\n"), "s.toml").unwrap_err().to_string();
        assert!(err.starts_with("s.toml:10: unknown field `robustnes`") && err.contains("`bands`"), "{err}");
    }

    /// fp32/auto tasks serialise as before the keys existed (stored task JSON and resumed runs
    /// stay the same); bf16 round-trips.
    #[test]
    fn default_numerics_are_not_written_and_bf16_round_trips() {
        let task = HeatmapTask {
            target: AnalysisTarget::new(
                DatasetSource::Cifar10 { path: "/c".into() },
                ModelSource::Checkpoint { artifact: "model".into() },
                0,
                0,
            )
            .with_numerics(Precision::Fp32, MemoryFormat::Auto),
            eps: 4.0,
            cells: vec![],
            chunk: 0,
            layers: vec![],
            seed: 0,
            batch: 1,
            epoch: None,
        };
        let json = serde_json::to_string(&task).unwrap();
        assert!(!json.contains("precision") && !json.contains("memory_format"), "{json}");
        let fast = HeatmapTask {
            target: task.target.clone().with_numerics(Precision::Bf16, MemoryFormat::ChannelsLast),
            ..task
        };
        let json = serde_json::to_string(&fast).unwrap();
        assert!(
            json.contains(r#""precision":"bf16""#) && json.contains(r#""memory_format":"channels_last""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<HeatmapTask>(&json).unwrap(), fast);
        // Flattened, the shared target still refuses a field no one reads, as each task did.
        let unknown = json.replace(r#""eps":"#, r#""epz":1,"eps":"#);
        let err = serde_json::from_str::<TaskSpec>(&format!(r#"{{"kind":"heatmap",{}"#, &unknown[1..])).unwrap_err();
        assert!(err.to_string().contains("unknown field `epz`"), "{err}");
        let unknown = json.replace(r#""eps":"#, r#""dataset2":1,"eps":"#);
        assert!(serde_json::from_str::<HeatmapTask>(&unknown).unwrap_err().to_string().contains("dataset2"));

        // A heatmap task stored before `classes` existed is the task planned now with them;
        // another value than 0 is a change, kept as stored.
        let with_classes = |classes| {
            let mut task = fast.clone();
            task.target.classes = classes;
            TaskSpec::Heatmap(task)
        };
        let (stored, planned) = (with_classes(0), with_classes(10));
        assert_eq!(stored.with_fields_added_since(&planned), planned);
        let other = with_classes(4);
        assert_eq!(other.clone().with_fields_added_since(&planned), other);
    }

    /// The idx kind's JSON; the other kinds' JSON is as before it (stored tasks still read).
    #[test]
    fn dataset_json_of_every_kind() {
        let npy =
            r#"{"kind":"npy","train_images":"a","train_labels":"b","test_images":"c","test_labels":"d","size":[8,8]}"#;
        let folder = r#"{"kind":"folder","train":"t","test":"/data/digits/test","size":[16,16],"classes":["0","1"]}"#;
        let cifar = r#"{"kind":"cifar10","path":"/c"}"#;
        for json in [npy, folder, cifar] {
            let source: DatasetSource = serde_json::from_str(json).unwrap();
            assert_eq!(serde_json::to_string(&source).unwrap(), json);
        }
        let idx = DatasetSource::Idx {
            train_images: "/data/fashion/train-images-idx3-ubyte.gz".into(),
            train_labels: "/data/fashion/train-labels-idx1-ubyte.gz".into(),
            test_images: "/data/fashion/t10k-images-idx3-ubyte.gz".into(),
            test_labels: "/data/fashion/t10k-labels-idx1-ubyte.gz".into(),
            channels: 3,
            size: [28, 28],
        };
        let json = serde_json::to_string(&idx).unwrap();
        assert!(
            json.starts_with(r#"{"kind":"idx","train_images":"#) && json.ends_with(r#""channels":3,"size":[28,28]}"#)
        );
        assert_eq!(serde_json::from_str::<DatasetSource>(&json).unwrap(), idx);
        assert_eq!(
            (idx.name(), idx.image_shape()),
            ("fashion".to_string(), Some(crate::spectrum::Shape2::new(28, 28)))
        );
        let err = serde_json::from_str::<DatasetSource>(&json.replace(r#","channels":3"#, "")).unwrap_err();
        assert!(err.to_string().contains("missing field `channels`"), "{err}");
    }

    #[test]
    fn schedules_follow_pytorch() {
        let step = LrSchedule::Step { every_epochs: 2, gamma: 0.1 };
        let lrs: Vec<f64> = (0..5).map(|e| step.lr(1.0, e, 5)).collect();
        assert_eq!(lrs[0], 1.0);
        assert_eq!(lrs[1], 1.0);
        assert!((lrs[2] - 0.1).abs() < 1e-15 && (lrs[4] - 0.01).abs() < 1e-15);
        let cos = LrSchedule::Cosine { min_lr: 0.0 };
        assert_eq!(cos.lr(0.1, 0, 10), 0.1);
        assert!((cos.lr(0.1, 5, 10) - 0.05).abs() < 1e-12);
        assert_eq!(LrSchedule::Constant.lr(0.3, 7, 10), 0.3);
    }

    #[test]
    fn task_json_round_trips_and_rejects_unknown_fields() {
        let task = TaskSpec::Train(TrainTask {
            dataset: DatasetSource::Syn(SynConfig::new(Band::new(4).unwrap(), 1)),
            train: TrainConfig {
                model: "tiny".into(),
                classes: 4,
                optimizer: Optimizer::adam(),
                lr: 1e-3,
                schedule: LrSchedule::Cosine { min_lr: 0.0 },
                batch_size: 32,
                epochs: 2,
                seed: 3,
                augment: Augment { flip: true, crop_padding: 4 },
                test_sets: vec!["B1234".parse().unwrap(), "B124".parse().unwrap()],
                band_layout: BandLayout::default(),
                clip_filtered: false,
                eval_every_steps: 10,
                eval_steps_epochs: 1,
                test_limit: 0,
                precision: Default::default(),
                memory_format: Default::default(),
                keep_epochs: Vec::new(),
            },
        });
        let json = serde_json::to_string(&task).unwrap();
        assert!(json.contains("\"kind\":\"train\""), "{json}");
        assert_eq!(serde_json::from_str::<TaskSpec>(&json).unwrap(), task);
        let bad = json.replace("\"epochs\":2", "\"epochs\":2,\"epochz\":3");
        assert!(serde_json::from_str::<TaskSpec>(&bad).unwrap_err().to_string().contains("epochz"));
    }
}
