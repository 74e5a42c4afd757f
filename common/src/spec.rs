//! Sweep specs (TOML): parsing, validation with errors that name the key and the line, and grid
//! expansion into one [`GridPoint`] (a `TrainTask` plus its grid values) per combination.
//!
//! The format follows W&B Sweeps / Ray Tune habits: a key holds one value or a list, and every
//! list under `[[dataset]]`, `[model]` and `[train]` is a grid axis (the cartesian product of all
//! axes is the grid); `[[exclude]]` / `[[include]]` remove and add points. A complete spec:
//!
//! ```toml
//! name = "syn-demo"
//!
//! [[dataset]]              # one or more; each expands on its own
//! kind = "syn"             # syn | cifar10 | npy
//! band = [1, 4]            # syn: the band of class 3 (a list expands)
//! train = 2000             # syn: images per split
//! test = 400
//! seed = 0                 # syn: generator seed (a list expands)
//! # size = 64              # syn: image side (default 32; the band radii scale, SCIENCE.md §4)
//! # name = "small"         # optional label in point ids (needed when two datasets share one)
//! # special_energy = 0.5   # syn: energy of the special pattern relative to one band
//! # kind = "cifar10", path = "/data/cifar-10-batches-bin"
//! # kind = "npy", train_images = "…", train_labels = "…", test_images = "…", test_labels = "…"
//! #   size = [H, W]        # npy: read from test_images' header when not given
//!
//! [model]                  # the models the sweep trains; or [[model]] tables, which may also
//! arch = ["alexnet", "resnet18"]   # alexnet | resnet18 | tiny   give models to analyse only:
//! # classes = 4            # default: 4 for syn, 10 otherwise
//! # [[model]]
//! # kind = "torchscript"   # a given model: no training, every analysis on every dataset
//! # path = "zoo/a.pt"      # one file or a list; or glob = "zoo/*.pt"; point ids <dataset>-<stem>
//! # name = "zoo"           # optional label instead of the file stem (several files: zoo_<stem>)
//! # classes = 10
//!
//! [train]                  # needed when a model is trained; every key but the scalars noted below may be a list
//! optimizer = ["adam", "sgd"]      # adam | sgd
//! lr = [1e-4, 1e-2]
//! batch_size = 64
//! epochs = 3
//! seed = [0, 1]
//! schedule = "constant"    # constant | step | cosine
//! weight_decay = 0.0
//! momentum = 0.9           # sgd only (default 0.9)
//! nesterov = false         # sgd only
//! beta1 = 0.9              # adam only
//! beta2 = 0.999            # adam only
//! # adam_eps = 1e-8        # adam only, scalar
//! # step_every = 10        # step schedule, scalar: epochs between decays …
//! # gamma = 0.1            # … and the factor
//! # min_lr = 0.0           # cosine schedule, scalar
//! augment_flip = false     # scalar
//! augment_crop = 0         # scalar: pixels of padding for random crops (0: off)
//!
//! [eval]
//! test_sets = ["B1234", "B124"]   # any band subset; "all_minus_one" adds every single-band-removed set
//! every_steps = 10         # also evaluate every k steps …
//! steps_epochs = 1         # … during the first this many epochs
//! test_limit = 0           # evaluate on the first N test images (0: all)
//! clip = false             # clip band-filtered images to [0, 1]
//!
//! [heatmap]                # optional: Fourier heatmaps of every trained and given model
//! eps = [4.0]              # one heatmap per value
//! # cells = "all"          # or { max_radius = 20 } or { low_crop = 63 }: the rest are skipped (NaN)
//! # at_epochs = [1, 2, 5]  # also maps of the checkpoints after these epochs (or "every")
//! layers = true            # true: every named layer; false; or names such as ["conv1", "fc"]
//! images = 500             # test images per heatmap (0: all)
//! batch = 256              # perturbed images per forward pass
//! chunk_cells = 64         # canonical cells per heatmap task (or chunks_per_map = 8)
//! seed = 0
//!
//! [dfm]                    # optional: dominant frequency maps of every trained model (SCIENCE.md §7)
//! patch = 1                # side of the square patches removed together (1: single frequencies)
//! top = [1, 5, 10, 20]     # DFMs at these percentages of the units, each in (0, 100]
//! images = 500             # test images (0: all)
//! batch = 256              # filtered images per forward pass
//! chunk_cells = 64         # removal units per task (or chunks_per_map = 8)
//! classes = "all"          # or a list such as [0, 1]: the classes whose maps are written
//! shortcut_degree = true   # then filter the test set to each class's DFM: TPR and FPR per class and top
//!
//! [bands]                  # optional: every model on the 15 band subsets (DC kept) of its test set
//! tolerance = 0.05         # a band set suffices for a class if its F1 is within this of all bands'
//! images = 0               # test images (0: all)
//! # sufficiency = false    # only place the bands, plan no band-sufficiency tasks
//! # radii = [4, 8, 12]     # band bounds in cells, or fractions = [0.25, 0.5, 0.75] of the
//! #                        # Nyquist radius min(H, W)/2 (the default: 4, 8, 12 on 32 × 32)
//!
//! [[exclude]]              # drop grid points matching every key given
//! arch = "resnet18"
//! optimizer = "sgd"
//!
//! [[include]]              # add a point; keys not given take each axis's first value
//! arch = "resnet18"
//! optimizer = "sgd"
//! lr = 0.1                 # values outside the grid's lists are allowed
//! ```
//!
//! **Grid order** is deterministic: the axes in [`GRID_KEYS`] order (`dataset` first, `seed` last
//! and fastest), datasets in file order with each dataset's list values in order; then the
//! included points in file order. `[[exclude]]` prunes the product; an `[[include]]` point is
//! kept even when an exclude matches it ("no SGD for ResNet, except this one"). Repeats are dropped.
//!
//! **Keys that do not apply** to a point's optimizer (`momentum`, `nesterov` for Adam; `beta1`,
//! `beta2` for SGD) are blank in its values and left out of its id, so
//! `optimizer = ["adam", "sgd"]` × `momentum = [0, 0.9]` gives one Adam point, not two identical ones.
//! Giving such a key when no point uses it is an error, as is any unknown key.
//!
//! **Point ids** read `Syn_4-alexnet-adam-lr0.0001-bs64-ep3-seed0`, plus `-sched…`, `-mom…`,
//! `-nesterov`, `-wd…`, `-b1…`, `-b2…` for those keys that take more than one value in the spec.
//! They are stable: the same spec always gives the same ids, and the coordinator keys its stored
//! tasks by them.

use crate::bands::{Band, BandLayout, BandRadii, BandSet};
use crate::heatmap::CellSelection;
use crate::spectrum::Shape2;
use crate::syn::SynConfig;
use crate::task::{Augment, DatasetSource, LrSchedule, MemoryFormat, Optimizer, Precision, TrainConfig, TrainTask};
use crate::text::one_line;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::{Spanned, Value};

/// A spec that cannot be used: the file, the 1-based line (0 when the file cannot be read) and a
/// one-line message naming the key. Displays as `file:line: message`, like a compiler: one line
/// of bounded length whatever the spec holds (control characters escaped, an overlong message
/// cut), since messages quote the spec's values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}:{line}: {}", one_line(file, 200), one_line(message, 300))]
pub struct SpecError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// A list of values for a message: the first few, then how many in all.
fn few(labels: &[String]) -> String {
    const SHOWN: usize = 8;
    let mut out: Vec<String> = labels.iter().take(SHOWN).map(|l| one_line(l, 40)).collect();
    if labels.len() > SHOWN {
        out.push(format!("… {} in all", labels.len()));
    }
    out.join(", ")
}

/// Which layer maps a heatmap computes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum LayerChoice {
    None,
    All,
    Named(Vec<String>),
}

/// How a heatmap's canonical cells are cut into tasks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Chunking {
    /// At most this many cells per chunk (`chunk_cells`).
    Cells(usize),
    /// This many chunks per map (`chunks_per_map`), capped at one cell each.
    PerMap(usize),
}

impl Chunking {
    /// The number of chunks a map of `cells` canonical cells is cut into (at least 1).
    pub fn chunks(self, cells: usize) -> usize {
        match self {
            Chunking::Cells(n) => cells.div_ceil(n.max(1)),
            Chunking::PerMap(n) => n.min(cells),
        }
        .max(1)
    }
}

/// The heatmap part of a spec.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeatmapSpec {
    pub eps: Vec<f64>,
    /// Heatmaps of the checkpoints after these epochs too, besides the trained model's.
    pub at_epochs: AtEpochs,
    /// The canonical cells computed (`"all"`, `{ max_radius = R }`, `{ low_crop = 63 }`).
    pub cells: CellSelection,
    pub layers: LayerChoice,
    pub images: usize,
    pub batch: usize,
    pub chunks: Chunking,
    pub seed: u64,
    pub precision: Precision,
    pub memory_format: MemoryFormat,
}

/// `[heatmap] at_epochs`: which epochs' checkpoints get heatmaps besides the final model.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum AtEpochs {
    #[default]
    None,
    /// After every epoch.
    Every,
    Listed(Vec<u32>),
}

impl AtEpochs {
    /// The epochs of a run of `epochs` whose checkpoints get maps of their own: the listed ones
    /// before the last (the last epoch's model is the trained model, mapped anyway).
    pub fn of_run(&self, epochs: u32) -> Vec<u32> {
        match self {
            AtEpochs::None => Vec::new(),
            AtEpochs::Every => (1..epochs).collect(),
            AtEpochs::Listed(list) => list.iter().copied().filter(|&e| e < epochs).collect(),
        }
    }
}

/// The classes whose DFMs a sweep writes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ClassChoice {
    All,
    Listed(Vec<usize>),
}

impl ClassChoice {
    /// The classes of a model with `classes` outputs.
    pub fn of(&self, classes: usize) -> Vec<usize> {
        match self {
            ClassChoice::All => (0..classes).collect(),
            ClassChoice::Listed(list) => list.iter().copied().filter(|&c| c < classes).collect(),
        }
    }
}

/// The DFM part of a spec (SCIENCE.md §7).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DfmSpec {
    pub patch: usize,
    pub top: Vec<f64>,
    pub images: usize,
    pub batch: usize,
    pub chunks: Chunking,
    pub classes: ClassChoice,
    /// Plan the shortcut-degree task after each model's maps (default true).
    pub shortcut_degree: bool,
    pub precision: Precision,
    pub memory_format: MemoryFormat,
}

impl DfmSpec {
    /// Removal units of a map of `shape` at this patch size.
    pub fn units(&self, shape: Shape2) -> usize {
        if self.patch <= 1 {
            shape.heatmap_cells().len()
        } else {
            (shape.h / self.patch) * (shape.w / self.patch)
        }
    }
}

/// The band-sufficiency part of a spec: every model on the 15 band subsets of its test set.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BandsSpec {
    /// A band set suffices for a class when its F1 is at least the full spectrum's minus this.
    pub tolerance: f64,
    pub images: usize,
}

/// One point of the grid: its values (for names, `results.csv` and include/exclude matching) and
/// the training task it stands for.
#[derive(Clone, Debug, PartialEq)]
pub struct GridPoint {
    /// A stable, readable id, e.g. `Syn_4-alexnet-adam-lr0.0001-bs64-ep3-seed0`, or
    /// `Syn_4-<model name>` for a given model.
    pub id: String,
    /// Grid key (every one of [`GRID_KEYS`]) → value label; blank where the key does not apply.
    pub values: GridValues,
    /// The training run of a trained point; for a given model, only its dataset and evaluation
    /// settings (classes, test sets, band layout, clip) are used, and nothing is trained.
    pub task: TrainTask,
    /// The model file the point analyses, when the sweep does not train it.
    pub given: Option<GivenModel>,
}

/// A model a sweep analyses without training (`[[model]] kind = "torchscript"`): a TorchScript
/// classifier (or a freqsweep checkpoint) that travels to workers as a content-addressed
/// artifact, so no shared filesystem is assumed.
#[derive(Clone, Debug, PartialEq)]
pub struct GivenModel {
    /// Its label in point ids (a file stem, or the spec's `name`).
    pub name: String,
    pub path: PathBuf,
    /// `(digest, size)` of the file, set by the coordinator when it stores it.
    pub artifact: Option<(String, u64)>,
}

/// A point's grid values: key → label for every one of [`GRID_KEYS`] (blank where the key does
/// not apply to the point). Compact on purpose: the labels live once per sweep and a point holds
/// indices, so a 100 000-point grid costs a few megabytes, not hundreds.
#[derive(Clone)]
pub struct GridValues {
    labels: Arc<Vec<Vec<String>>>,
    idx: [usize; AXES],
}

impl GridValues {
    /// The label of grid key `key` (`None` for a key that is not in [`GRID_KEYS`]).
    pub fn get(&self, key: &str) -> Option<&String> {
        GRID_KEYS.iter().position(|k| *k == key).map(|a| self.at(a))
    }

    /// Every grid key with its label, in [`GRID_KEYS`] order.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        GRID_KEYS.iter().enumerate().map(|(a, k)| (*k, self.at(a).as_str()))
    }

    fn at(&self, axis: usize) -> &String {
        static BLANK: String = String::new();
        match self.idx[axis] {
            NOT_APPLICABLE => &BLANK,
            i => &self.labels[axis][i],
        }
    }
}

impl std::ops::Index<&str> for GridValues {
    type Output = String;

    fn index(&self, key: &str) -> &String {
        self.get(key).unwrap_or_else(|| panic!("{key:?} is not a grid key"))
    }
}

impl PartialEq for GridValues {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl fmt::Debug for GridValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A parsed, validated sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct Sweep {
    pub name: String,
    pub points: Vec<GridPoint>,
    pub heatmap: Option<HeatmapSpec>,
    pub dfm: Option<DfmSpec>,
    /// Band sufficiency (`[bands]`, unless `sufficiency = false`).
    pub bands: Option<BandsSpec>,
    /// Where the band radii lie (`[bands] radii` or `fractions`; each dataset's layout follows).
    pub band_radii: BandRadii,
}

/// The grid keys, in expansion order (the last varies fastest). `include`/`exclude` tables use them.
pub const GRID_KEYS: [&str; 13] = [
    "dataset",
    "arch",
    "optimizer",
    "lr",
    "batch_size",
    "epochs",
    "schedule",
    "momentum",
    "nesterov",
    "weight_decay",
    "beta1",
    "beta2",
    "seed",
];

// Positions in `GRID_KEYS`.
const DATASET: usize = 0;
const ARCH: usize = 1;
const OPTIMIZER: usize = 2;
const LR: usize = 3;
const BATCH: usize = 4;
const EPOCHS: usize = 5;
const SCHEDULE: usize = 6;
const MOMENTUM: usize = 7;
const NESTEROV: usize = 8;
const DECAY: usize = 9;
const BETA1: usize = 10;
const BETA2: usize = 11;
const SEED: usize = 12;
const AXES: usize = GRID_KEYS.len();

/// Marks an axis that does not apply to a point (see the module docs).
const NOT_APPLICABLE: usize = usize::MAX;

/// The built-in architectures and the layers each reports (as `worker/src/models.rs` names them;
/// `fc` is the logits), so a spec asking for a layer a model lacks fails before any training.
pub const ARCHS: [(&str, &[&str]); 3] = [
    ("alexnet", &["conv1", "conv2", "conv3", "conv4", "conv5", "fc"]),
    ("resnet18", &["layer1", "layer2", "layer3", "layer4", "fc"]),
    ("tiny", &["conv1", "conv2", "fc"]),
];

/// The largest grid product accepted.
const MAX_POINTS: usize = 10_000_000;
/// Tasks one sweep may plan (each costs the coordinator a few KB of memory).
pub const MAX_TASKS: usize = 2_000_000;
/// The largest image side a dataset may have (a 1024 × 1024 map has 524 290 cells).
pub const MAX_IMAGE_SIDE: u64 = 1024;
/// Bytes of one Syn_d split in memory (every worker holds a split).
const MAX_SYN_BYTES: u64 = MAX_SYN_IMAGES * 12_288;
/// Images per Syn_d split (every worker holds a split: 5 000 000 × 12 KB = 60 GB).
pub const MAX_SYN_IMAGES: u64 = 5_000_000;
pub use crate::dataset::MAX_CLASSES;
/// Images per training batch or heatmap forward pass (65 536 × 12 KB = 768 MB of input alone).
pub const MAX_BATCH: u64 = 65_536;
/// Zero-padding of the random-crop augmentation, per side (the images are 32 pixels wide).
pub const MAX_CROP_PADDING: u64 = 32;

const OPTIMIZERS: [&str; 2] = ["adam", "sgd"];
const SCHEDULES: [&str; 3] = ["constant", "step", "cosine"];

/// Read a spec file once, bounded ([`crate::files::MAX_SPEC_BYTES`]): a spec given as a pipe
/// or `/dev/stdin` can be read only once, so whoever stores the spec must keep these bytes.
pub fn read(path: &Path) -> Result<String, SpecError> {
    crate::files::read_text_bounded(path, crate::files::MAX_SPEC_BYTES).map_err(|e| SpecError {
        file: path.display().to_string(),
        line: 0,
        message: format!("cannot read: {e}"),
    })
}

/// Read and parse a spec file.
pub fn load(path: &Path) -> Result<Sweep, SpecError> {
    parse(&read(path)?, &path.display().to_string())
}

/// Parse and expand spec text; `file` names it in errors. What the spec names on the file
/// system (npy headers, image folders, globs) is read live.
pub fn parse(text: &str, file: &str) -> Result<Sweep, SpecError> {
    parse_with(text, file, &Inputs::live())
}

/// [`parse`], and what it read of the file system ([`SpecInputs`]), for a run to record.
pub fn parse_recording(text: &str, file: &str) -> Result<(Sweep, SpecInputs), SpecError> {
    let inputs = Inputs::live();
    let sweep = parse_with(text, file, &inputs)?;
    Ok((sweep, inputs.recorded.into_inner()))
}

/// [`parse`] against what a run recorded when it opened, touching no file: the same spec
/// gives the same points and tasks whatever the file system holds now (a model added to or
/// renamed in a globbed directory, a folder deleted, a relative path from another directory).
pub fn parse_replaying(text: &str, file: &str, recorded: &SpecInputs) -> Result<Sweep, SpecError> {
    parse_with(text, file, &Inputs { replay: Some(recorded.clone()), recorded: Default::default() })
}

fn parse_with(text: &str, file: &str, inputs: &Inputs) -> Result<Sweep, SpecError> {
    let ctx = Ctx { file, text, inputs };
    let raw: RawSpec = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |s| ctx.line(s.start));
        // toml's messages may span lines (`expected one of …`); errors are one line.
        let mut message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        // Type and syntax errors do not say which key; the line does.
        if let Some(key) = ctx.key_on_line(line).filter(|k| !message.contains(&format!("`{k}`"))) {
            message = format!("{key}: {message}");
        }
        SpecError { file: file.to_string(), line, message }
    })?;
    build(&ctx, raw)
}

/// What parsing a spec read from the file system, keyed by the path or pattern as the spec
/// wrote it: each npy dataset's image size (from its header), each image folder's classes,
/// each glob's matches. The plan depends on these answers, so a run stores them when it opens
/// and every later parse of its stored spec replays them.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpecInputs {
    #[serde(default)]
    pub npy_sizes: BTreeMap<String, [usize; 2]>,
    #[serde(default)]
    pub folder_classes: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub globs: BTreeMap<String, Vec<String>>,
}

/// Where parsing gets its file-system answers: live (and recorded), or replayed.
struct Inputs {
    replay: Option<SpecInputs>,
    recorded: std::cell::RefCell<SpecInputs>,
}

impl Inputs {
    fn live() -> Self {
        Inputs { replay: None, recorded: Default::default() }
    }

    fn missing(what: &str, key: &str) -> String {
        format!("the run's record holds no {what} for {key:?} (a store from before inputs were recorded?)")
    }

    fn npy_image_size(&self, path: &Path) -> Result<[usize; 2], String> {
        let key = path.display().to_string();
        if let Some(replay) = &self.replay {
            return replay.npy_sizes.get(&key).copied().ok_or_else(|| Self::missing("npy image size", &key));
        }
        let (h, w) = crate::dataset::npy_image_size(path).map_err(|e| e.to_string())?;
        self.recorded.borrow_mut().npy_sizes.insert(key, [h, w]);
        Ok([h, w])
    }

    fn folder_classes(&self, dir: &Path) -> Result<Vec<String>, String> {
        let key = dir.display().to_string();
        if let Some(replay) = &self.replay {
            return replay.folder_classes.get(&key).cloned().ok_or_else(|| Self::missing("class list", &key));
        }
        let classes = crate::dataset::folder_classes(dir).map_err(|e| e.to_string())?;
        self.recorded.borrow_mut().folder_classes.insert(key, classes.clone());
        Ok(classes)
    }

    fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, String> {
        if let Some(replay) = &self.replay {
            let paths = replay.globs.get(pattern).ok_or_else(|| Self::missing("glob expansion", pattern))?;
            return Ok(paths.iter().map(PathBuf::from).collect());
        }
        let paths = expand_glob(pattern)?;
        let mut texts = Vec::with_capacity(paths.len());
        for p in &paths {
            // Recorded as text (JSON in the store); a file name that is not UTF-8 cannot
            // name a point either.
            let text = p.to_str().ok_or_else(|| {
                format!(
                    "glob {pattern:?} matches {}, whose name is not UTF-8; rename it",
                    one_line(&p.display().to_string(), 200)
                )
            })?;
            texts.push(text.to_string());
        }
        self.recorded.borrow_mut().globs.insert(pattern.to_string(), texts);
        Ok(paths)
    }
}

// ---------------------------------------------------------------------------------------------
// Raw structure. Every leaf keeps its span; values are checked by hand (not by serde) so every
// message names its key.

type Scalar = Option<Spanned<Value>>;
type List = Option<Spanned<Values>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: Scalar,
    #[serde(default)]
    dataset: Vec<Spanned<RawDataset>>,
    model: RawModels,
    train: Option<Spanned<RawTrain>>,
    #[serde(default)]
    eval: RawEval,
    heatmap: Option<Spanned<RawHeatmap>>,
    dfm: Option<Spanned<RawDfm>>,
    bands: Option<Spanned<RawBands>>,
    #[serde(default)]
    include: Vec<Spanned<RawPoint>>,
    #[serde(default)]
    exclude: Vec<Spanned<RawPoint>>,
}

type RawPoint = BTreeMap<String, Spanned<Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataset {
    kind: Spanned<Value>,
    name: Scalar,
    band: List,
    train: Scalar,
    test: Scalar,
    seed: List,
    special_energy: Scalar,
    size: Scalar,
    path: Scalar,
    train_images: Scalar,
    train_labels: Scalar,
    test_images: Scalar,
    test_labels: Scalar,
}

/// One `[model]` table (models the sweep trains) or `[[model]]` tables (trained or given).
enum RawModels {
    One(Box<Spanned<RawModel>>),
    Many(Vec<Spanned<RawModel>>),
}

impl<'de> Deserialize<'de> for RawModels {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawModels;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a [model] table or [[model]] tables")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<RawModels, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq)).map(RawModels::Many)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawModels, A::Error> {
                let model = RawModel::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                // The table's own span is not known here; its keys carry theirs.
                Ok(RawModels::One(Box::new(Spanned::new(0..0, model))))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    /// `builtin` (trained by the sweep, the default) or `torchscript` (given, analysed only).
    kind: Scalar,
    arch: List,
    classes: Scalar,
    /// Given models: one path or a list …
    path: List,
    /// … and/or a pattern over a directory (`models/*.pt`).
    glob: Scalar,
    /// The given model's label in point ids (several files: `<name>_<file stem>`).
    name: Scalar,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTrain {
    optimizer: List,
    lr: List,
    batch_size: List,
    epochs: List,
    seed: List,
    schedule: List,
    momentum: List,
    nesterov: List,
    weight_decay: List,
    beta1: List,
    beta2: List,
    adam_eps: Scalar,
    step_every: Scalar,
    gamma: Scalar,
    min_lr: Scalar,
    augment_flip: Scalar,
    augment_crop: Scalar,
    precision: Scalar,
    memory_format: Scalar,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEval {
    test_sets: List,
    every_steps: Scalar,
    steps_epochs: Scalar,
    test_limit: Scalar,
    clip: Scalar,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeatmap {
    eps: Spanned<Values>,
    at_epochs: List,
    cells: Scalar,
    layers: List,
    images: Scalar,
    batch: Scalar,
    chunk_cells: Scalar,
    chunks_per_map: Scalar,
    seed: Scalar,
    precision: Scalar,
    memory_format: Scalar,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBands {
    tolerance: Scalar,
    images: Scalar,
    radii: List,
    fractions: List,
    sufficiency: Scalar,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDfm {
    patch: Scalar,
    top: List,
    images: Scalar,
    batch: Scalar,
    chunk_cells: Scalar,
    chunks_per_map: Scalar,
    classes: List,
    shortcut_degree: Scalar,
    precision: Scalar,
    memory_format: Scalar,
}

/// One value or a list of them. List elements keep their own spans (`None` for a lone value,
/// which takes the key's), so an error inside a multi-line list points at the element's line.
struct Values(Vec<(Option<Range<usize>>, Value)>);

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Values;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Values, E> {
                Ok(Values(vec![(None, Value::Boolean(v))]))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Values, E> {
                Ok(Values(vec![(None, Value::Integer(v))]))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Values, E> {
                let v = i64::try_from(v).map_err(|_| E::custom(format!("{v} is too large")))?;
                Ok(Values(vec![(None, Value::Integer(v))]))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Values, E> {
                Ok(Values(vec![(None, Value::Float(v))]))
            }
            fn visit_str<E>(self, v: &str) -> Result<Values, E> {
                Ok(Values(vec![(None, Value::String(v.to_string()))]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Values, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = seq.next_element::<Spanned<Value>>()? {
                    out.push((Some(v.span()), v.into_inner()));
                }
                Ok(Values(out))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors with lines.

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    inputs: &'a Inputs,
}

impl Ctx<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text.as_bytes()[..offset.min(self.text.len())].iter().filter(|&&b| b == b'\n').count() + 1
    }

    /// The key assigned on 1-based `line` (`key = …`), if any.
    fn key_on_line(&self, line: usize) -> Option<&str> {
        let text = self.text.lines().nth(line.checked_sub(1)?)?;
        let (key, _) = text.split_once('=')?;
        let key = key.trim();
        let bare = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.';
        (!key.is_empty() && key.chars().all(bare)).then_some(key)
    }

    fn err(&self, span: &Range<usize>, message: impl Into<String>) -> SpecError {
        SpecError { file: self.file.to_string(), line: self.line(span.start), message: message.into() }
    }

    /// An error about the whole spec rather than one key.
    fn err_top(&self, message: impl Into<String>) -> SpecError {
        SpecError { file: self.file.to_string(), line: 1, message: message.into() }
    }

    /// Check a scalar with `check`, placing its error on the value's line.
    fn scalar<T>(&self, raw: &Scalar, default: T, check: impl Fn(&Value) -> Result<T, String>) -> Result<T, SpecError> {
        match raw {
            None => Ok(default),
            Some(v) => check(v.get_ref()).map_err(|m| self.err(&v.span(), m)),
        }
    }

    /// Check every element of a one-or-many key; errors point at the element.
    fn list<T>(
        &self,
        key: &str,
        raw: &Spanned<Values>,
        check: impl Fn(&Value) -> Result<T, String>,
    ) -> Result<Vec<(Range<usize>, T)>, SpecError> {
        let items = &raw.get_ref().0;
        if items.is_empty() {
            return Err(self.err(&raw.span(), format!("{key} is an empty list")));
        }
        items
            .iter()
            .map(|(span, v)| {
                let span = span.clone().unwrap_or_else(|| raw.span());
                check(v).map(|t| (span.clone(), t)).map_err(|m| self.err(&span, m))
            })
            .collect()
    }

    /// A grid axis from a one-or-many key (or `default` when absent); repeated values are errors.
    fn axis<T>(
        &self,
        key: &str,
        raw: Option<&Spanned<Values>>,
        default: T,
        check: impl Fn(&Value) -> Result<T, String>,
        label: impl Fn(&T) -> String,
    ) -> Result<Axis<T>, SpecError> {
        let Some(raw) = raw else {
            return Ok(Axis { labels: vec![label(&default)], values: vec![default] });
        };
        let mut axis = Axis { labels: Vec::new(), values: Vec::new() };
        // A set beside the list: a million-value list is checked in linear time.
        let mut seen = HashSet::new();
        for (span, value) in self.list(key, raw, check)? {
            let l = label(&value);
            if !seen.insert(l.clone()) {
                return Err(self.err(&span, format!("{key} lists {l} twice")));
            }
            axis.labels.push(l);
            axis.values.push(value);
        }
        Ok(axis)
    }
}

// ---------------------------------------------------------------------------------------------
// Value checks: each returns the typed value or a message naming the key.

/// A spec value as a message quotes it: numbers as labels show them, strings and arrays
/// on one line and cut (a 5 MB string must not become a 5 MB error).
fn show(v: &Value) -> String {
    match v {
        // As written (`-1.0`), unless that is long (`1.7e308` is 309 digits).
        Value::Float(f) if v.to_string().len() > 16 => format!("{f:e}"),
        Value::String(s) => format!("\"{}\"", one_line(s, 60)),
        Value::Array(items) => {
            let shown: Vec<String> = items.iter().take(8).map(show).collect();
            let more = if items.len() > 8 { format!(", … {} in all", items.len()) } else { String::new() };
            format!("[{}{more}]", shown.join(", "))
        }
        _ => one_line(&v.to_string(), 60),
    }
}

fn integer(key: &str, v: &Value, min: i64, what: &str) -> Result<u64, String> {
    match v {
        Value::Integer(n) if *n >= min => Ok(*n as u64),
        _ => Err(format!("{key} must be {what}, got {}", show(v))),
    }
}

fn positive_int(key: &str, v: &Value) -> Result<u64, String> {
    integer(key, v, 1, "a positive integer")
}

fn non_negative_int(key: &str, v: &Value) -> Result<u64, String> {
    integer(key, v, 0, "a non-negative integer")
}

fn positive_usize(key: &str, v: &Value) -> Result<usize, String> {
    positive_int(key, v).and_then(|n| usize::try_from(n).map_err(|_| format!("{key} is too large: {n}")))
}

fn non_negative_usize(key: &str, v: &Value) -> Result<usize, String> {
    non_negative_int(key, v).and_then(|n| usize::try_from(n).map_err(|_| format!("{key} is too large: {n}")))
}

/// A positive (`min` 1) or non-negative (`min` 0) integer of at most `max`; `why` says what the
/// bound protects (shown in the error).
fn bounded(key: &str, v: &Value, min: u64, max: u64, why: &str) -> Result<usize, String> {
    let at_least = format!("an integer of at least {min}");
    let what = match min {
        0 => "a non-negative integer",
        1 => "a positive integer",
        _ => &at_least,
    };
    let n = integer(key, v, min as i64, what)?;
    if n > max {
        return Err(format!("{key} must be at most {max} ({why}), got {n}"));
    }
    Ok(n as usize)
}

fn small_positive(key: &str, v: &Value) -> Result<u32, String> {
    positive_int(key, v).and_then(|n| u32::try_from(n).map_err(|_| format!("{key} is too large: {n}")))
}

fn small_non_negative(key: &str, v: &Value) -> Result<u32, String> {
    non_negative_int(key, v).and_then(|n| u32::try_from(n).map_err(|_| format!("{key} is too large: {n}")))
}

/// A finite number (integers allowed) for which `ok` holds; `what` describes the allowed range.
fn number(key: &str, v: &Value, ok: impl Fn(f64) -> bool, what: &str) -> Result<f64, String> {
    let x = match v {
        Value::Integer(n) => *n as f64,
        Value::Float(f) => *f,
        _ => return Err(format!("{key} must be {what}, got {}", show(v))),
    };
    if x.is_finite() && ok(x) {
        Ok(x)
    } else {
        Err(format!("{key} must be {what}, got {}", show(v)))
    }
}

fn positive_number(key: &str, v: &Value) -> Result<f64, String> {
    number(key, v, |x| x > 0.0, "a positive number")
}

fn non_negative_number(key: &str, v: &Value) -> Result<f64, String> {
    number(key, v, |x| x >= 0.0, "a number >= 0")
}

fn unit_interval(key: &str, v: &Value) -> Result<f64, String> {
    number(key, v, |x| (0.0..1.0).contains(&x), "in [0, 1)")
}

fn string(key: &str, v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        _ => Err(format!("{key} must be a string, got {}", show(v))),
    }
}

fn boolean(key: &str, v: &Value) -> Result<bool, String> {
    match v {
        Value::Boolean(b) => Ok(*b),
        _ => Err(format!("{key} must be true or false, got {}", show(v))),
    }
}

/// `a, b or c`.
fn alternatives(options: &[&str]) -> String {
    match options {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

fn choice(key: &str, v: &Value, options: &[&str]) -> Result<String, String> {
    let s = string(key, v)?;
    if options.contains(&s.as_str()) {
        Ok(s)
    } else {
        Err(format!("unknown {key} {s:?}: use {}", alternatives(options)))
    }
}

fn check_precision(v: &Value) -> Result<Precision, String> {
    let names: Vec<&str> = Precision::ALL.iter().map(|p| p.as_str()).collect();
    choice("precision", v, &names).map(|s| Precision::parse(&s).expect("one of the names"))
}

fn check_memory_format(v: &Value) -> Result<MemoryFormat, String> {
    let names: Vec<&str> = MemoryFormat::ALL.iter().map(|f| f.as_str()).collect();
    choice("memory_format", v, &names).map(|s| MemoryFormat::parse(&s).expect("one of the names"))
}

fn path(key: &str, v: &Value) -> Result<PathBuf, String> {
    let s = string(key, v)?;
    if s.is_empty() {
        return Err(format!("{key} is an empty path"));
    }
    Ok(PathBuf::from(s))
}

pub use crate::text::format_number;

fn arch_names() -> Vec<&'static str> {
    ARCHS.iter().map(|(name, _)| *name).collect()
}

// Grid-axis checks, shared by the lists and by include/exclude tables.
fn check_arch(v: &Value) -> Result<String, String> {
    choice("arch", v, &arch_names())
}
fn check_optimizer(v: &Value) -> Result<String, String> {
    choice("optimizer", v, &OPTIMIZERS)
}
fn check_lr(v: &Value) -> Result<f64, String> {
    positive_number("lr", v)
}
fn check_batch(v: &Value) -> Result<usize, String> {
    bounded("batch_size", v, 1, MAX_BATCH, "images on the device at once")
}
fn check_epochs(v: &Value) -> Result<u32, String> {
    small_positive("epochs", v)
}
fn check_schedule(v: &Value) -> Result<String, String> {
    choice("schedule", v, &SCHEDULES)
}
fn check_momentum(v: &Value) -> Result<f64, String> {
    unit_interval("momentum", v)
}
fn check_nesterov(v: &Value) -> Result<bool, String> {
    boolean("nesterov", v)
}
fn check_decay(v: &Value) -> Result<f64, String> {
    non_negative_number("weight_decay", v)
}
fn check_beta1(v: &Value) -> Result<f64, String> {
    unit_interval("beta1", v)
}
fn check_beta2(v: &Value) -> Result<f64, String> {
    unit_interval("beta2", v)
}
fn check_seed(v: &Value) -> Result<u64, String> {
    non_negative_int("seed", v)
}

// ---------------------------------------------------------------------------------------------
// The grid.

/// One grid axis: value labels (as in ids, `results.csv` and include/exclude) and typed values.
struct Axis<T> {
    labels: Vec<String>,
    values: Vec<T>,
}

impl<T> Axis<T> {
    fn position(&self, label: &str) -> Option<usize> {
        self.labels.iter().position(|l| l == label)
    }

    /// The index of `value`, appending it when `add` (includes may add values outside the lists).
    fn index(&mut self, key: &str, label: String, value: T, add: bool) -> Result<usize, String> {
        if let Some(i) = self.position(&label) {
            return Ok(i);
        }
        if !add {
            return Err(format!("{key} = {label} is not among the spec's values ({})", few(&self.labels)));
        }
        self.labels.push(label);
        self.values.push(value);
        Ok(self.values.len() - 1)
    }
}

struct Grid {
    dataset: Axis<DatasetSource>,
    arch: Axis<String>,
    optimizer: Axis<String>,
    lr: Axis<f64>,
    batch: Axis<usize>,
    epochs: Axis<u32>,
    schedule: Axis<String>,
    momentum: Axis<f64>,
    nesterov: Axis<bool>,
    decay: Axis<f64>,
    beta1: Axis<f64>,
    beta2: Axis<f64>,
    seed: Axis<u64>,
}

impl Grid {
    fn labels(&self, axis: usize) -> &[String] {
        match axis {
            DATASET => &self.dataset.labels,
            ARCH => &self.arch.labels,
            OPTIMIZER => &self.optimizer.labels,
            LR => &self.lr.labels,
            BATCH => &self.batch.labels,
            EPOCHS => &self.epochs.labels,
            SCHEDULE => &self.schedule.labels,
            MOMENTUM => &self.momentum.labels,
            NESTEROV => &self.nesterov.labels,
            DECAY => &self.decay.labels,
            BETA1 => &self.beta1.labels,
            BETA2 => &self.beta2.labels,
            _ => &self.seed.labels,
        }
    }

    fn lens(&self) -> [usize; AXES] {
        std::array::from_fn(|a| self.labels(a).len())
    }

    /// The index of grid key `key` = `v` on its axis (appending a new value when `add`).
    fn index(&mut self, key: &str, v: &Value, add: bool) -> Result<(usize, usize), String> {
        fn go<T>(
            axis: &mut Axis<T>,
            key: &str,
            v: T,
            label: impl Fn(&T) -> String,
            add: bool,
        ) -> Result<usize, String> {
            let l = label(&v);
            axis.index(key, l, v, add)
        }
        let axis = GRID_KEYS
            .iter()
            .position(|k| *k == key)
            .ok_or_else(|| format!("unknown grid key {key:?} (use one of {})", GRID_KEYS.join(", ")))?;
        let f = format_number;
        let index = match axis {
            DATASET => {
                let s = string(key, v)?;
                self.dataset.position(&s).ok_or_else(|| {
                    format!("dataset = {s:?} is not one of the spec's datasets ({})", few(&self.dataset.labels))
                })?
            }
            ARCH => go(&mut self.arch, key, check_arch(v)?, String::clone, add)?,
            OPTIMIZER => go(&mut self.optimizer, key, check_optimizer(v)?, String::clone, add)?,
            LR => go(&mut self.lr, key, check_lr(v)?, |x| f(*x), add)?,
            BATCH => go(&mut self.batch, key, check_batch(v)?, usize::to_string, add)?,
            EPOCHS => go(&mut self.epochs, key, check_epochs(v)?, u32::to_string, add)?,
            SCHEDULE => go(&mut self.schedule, key, check_schedule(v)?, String::clone, add)?,
            MOMENTUM => go(&mut self.momentum, key, check_momentum(v)?, |x| f(*x), add)?,
            NESTEROV => go(&mut self.nesterov, key, check_nesterov(v)?, bool::to_string, add)?,
            DECAY => go(&mut self.decay, key, check_decay(v)?, |x| f(*x), add)?,
            BETA1 => go(&mut self.beta1, key, check_beta1(v)?, |x| f(*x), add)?,
            BETA2 => go(&mut self.beta2, key, check_beta2(v)?, |x| f(*x), add)?,
            _ => go(&mut self.seed, key, check_seed(v)?, u64::to_string, add)?,
        };
        Ok((axis, index))
    }

    /// Blank out the axes that do not apply to the point's optimizer, so equal tasks compare equal.
    /// How many distinct points the product of `lens` has once [`Grid::normalise`] has merged
    /// the axes that do not apply (Adam's betas for SGD, momentum for Adam): computed, not
    /// enumerated, so a grid too large to plan is refused at once.
    fn distinct_points(&self, lens: &[usize; AXES]) -> usize {
        self.optimizer
            .values
            .iter()
            .map(|o| {
                let skip: &[usize] = if o == "sgd" { &[BETA1, BETA2] } else { &[MOMENTUM, NESTEROV] };
                (0..AXES)
                    .filter(|a| *a != OPTIMIZER && !skip.contains(a))
                    .fold(1usize, |acc, a| acc.saturating_mul(lens[a]))
            })
            .fold(0usize, usize::saturating_add)
    }

    fn normalise(&self, mut idx: [usize; AXES]) -> [usize; AXES] {
        if self.optimizer.values[idx[OPTIMIZER]] == "sgd" {
            idx[BETA1] = NOT_APPLICABLE;
            idx[BETA2] = NOT_APPLICABLE;
        } else {
            idx[MOMENTUM] = NOT_APPLICABLE;
            idx[NESTEROV] = NOT_APPLICABLE;
        }
        idx
    }
}

/// Settings shared by every point (scalars, not axes).
struct Fixed {
    classes: Option<usize>,
    adam_eps: f64,
    step_every: u32,
    gamma: f64,
    min_lr: f64,
    augment: Augment,
    test_sets: Vec<BandSet>,
    clip: bool,
    every_steps: u32,
    steps_epochs: u32,
    test_limit: usize,
    precision: Precision,
    memory_format: MemoryFormat,
    band_radii: BandRadii,
}

/// A model's outputs when the spec does not say: Syn_d's 4, an image folder's classes, else 10.
fn default_classes(dataset: &DatasetSource) -> usize {
    match dataset {
        DatasetSource::Syn(_) => crate::syn::CLASSES,
        DatasetSource::Folder { classes, .. } => classes.len(),
        DatasetSource::Cifar10 { .. } | DatasetSource::Npy { .. } => 10,
    }
}

/// The band layout of `dataset`'s spectrum: Syn_d's own (its data is built from it), otherwise
/// `radii` placed on its images (checked when the spec was read).
fn layout_of(dataset: &DatasetSource, radii: BandRadii) -> BandLayout {
    match dataset {
        DatasetSource::Syn(config) => config.layout,
        other => other.image_shape().and_then(|shape| radii.layout(shape).ok()).unwrap_or_default(),
    }
}

impl Grid {
    /// The grid point at `idx`; `labels` is the sweep's shared copy of every axis's labels.
    fn point(
        &self,
        idx: &[usize; AXES],
        varying: &[bool; AXES],
        labels: &Arc<Vec<Vec<String>>>,
        fixed: &Fixed,
    ) -> GridPoint {
        let values = GridValues { labels: Arc::clone(labels), idx: *idx };
        let label = |a: usize| values.at(a).as_str();
        let mut id = format!(
            "{}-{}-{}-lr{}-bs{}-ep{}",
            label(DATASET),
            label(ARCH),
            label(OPTIMIZER),
            label(LR),
            label(BATCH),
            label(EPOCHS)
        );
        for (a, prefix) in [(SCHEDULE, "sched"), (MOMENTUM, "mom"), (DECAY, "wd"), (BETA1, "b1"), (BETA2, "b2")] {
            if varying[a] && idx[a] != NOT_APPLICABLE {
                id.push_str(&format!("-{prefix}{}", label(a)));
            }
            if a == MOMENTUM
                && varying[NESTEROV]
                && idx[NESTEROV] != NOT_APPLICABLE
                && self.nesterov.values[idx[NESTEROV]]
            {
                id.push_str("-nesterov");
            }
        }
        id.push_str(&format!("-seed{}", label(SEED)));

        let weight_decay = self.decay.values[idx[DECAY]];
        let optimizer = if self.optimizer.values[idx[OPTIMIZER]] == "sgd" {
            Optimizer::Sgd {
                momentum: self.momentum.values[idx[MOMENTUM]],
                weight_decay,
                nesterov: self.nesterov.values[idx[NESTEROV]],
            }
        } else {
            Optimizer::Adam {
                weight_decay,
                beta1: self.beta1.values[idx[BETA1]],
                beta2: self.beta2.values[idx[BETA2]],
                eps: fixed.adam_eps,
            }
        };
        let schedule = match self.schedule.values[idx[SCHEDULE]].as_str() {
            "step" => LrSchedule::Step { every_epochs: fixed.step_every, gamma: fixed.gamma },
            "cosine" => LrSchedule::Cosine { min_lr: fixed.min_lr },
            _ => LrSchedule::Constant,
        };
        let dataset = self.dataset.values[idx[DATASET]].clone();
        let classes = fixed.classes.unwrap_or_else(|| default_classes(&dataset));
        let band_layout = layout_of(&dataset, fixed.band_radii);
        GridPoint {
            id,
            values,
            given: None,
            task: TrainTask {
                dataset,
                train: TrainConfig {
                    model: self.arch.values[idx[ARCH]].clone(),
                    classes,
                    optimizer,
                    lr: self.lr.values[idx[LR]],
                    schedule,
                    batch_size: self.batch.values[idx[BATCH]],
                    epochs: self.epochs.values[idx[EPOCHS]],
                    seed: self.seed.values[idx[SEED]],
                    augment: fixed.augment,
                    test_sets: fixed.test_sets.clone(),
                    band_layout,
                    clip_filtered: fixed.clip,
                    eval_every_steps: fixed.every_steps,
                    eval_steps_epochs: fixed.steps_epochs,
                    test_limit: fixed.test_limit,
                    precision: fixed.precision,
                    memory_format: fixed.memory_format,
                    keep_epochs: Vec::new(),
                },
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Building the sweep.

/// The alternatives one `[[dataset]]` table expands to, as `(label, source)`.
/// The side of an image, for `size`.
fn image_side(v: &Value) -> Result<usize, String> {
    bounded("size", v, 4, MAX_IMAGE_SIDE, "pixels on a side (a map of 1024 × 1024 has 524 290 cells)")
}

/// `size = 64` or `size = [H, W]`.
fn image_size(v: &Value) -> Result<[usize; 2], String> {
    match v {
        Value::Array(items) => match items.as_slice() {
            [h, w] => Ok([image_side(h)?, image_side(w)?]),
            _ => Err(format!("size must be one side or [height, width], got {}", show(v))),
        },
        _ => image_side(v).map(|side| [side, side]),
    }
}

fn datasets(
    ctx: &Ctx,
    raw: &Spanned<RawDataset>,
    radii: (BandRadii, Option<Range<usize>>),
) -> Result<Vec<(String, DatasetSource)>, SpecError> {
    let d = raw.get_ref();
    // The band radii must fit every dataset's spectrum; the error points at the radii when the
    // spec gave them, else at the dataset.
    let layout = |shape: Shape2, name: &str| {
        radii.0.layout(shape).map_err(|e| {
            let span = radii.1.clone().unwrap_or_else(|| d.kind.span());
            ctx.err(&span, format!("[bands] for dataset {name}: {e}"))
        })
    };
    let kind =
        ctx.scalar(&Some(d.kind.clone()), String::new(), |v| choice("kind", v, &["syn", "cifar10", "npy", "folder"]))?;
    // A key that belongs to another kind is a mistake worth naming (a typo'd kind, a pasted block).
    let reject = |present: &Scalar, key: &str, kinds: &str| match present {
        Some(v) => Err(ctx.err(&v.span(), format!("dataset key {key} applies to kind {kinds}, not {kind:?}"))),
        None => Ok(()),
    };
    let reject_list = |present: &List, key: &str| match present {
        Some(v) => Err(ctx.err(&v.span(), format!("dataset key {key} applies to kind \"syn\", not {kind:?}"))),
        None => Ok(()),
    };
    if kind != "syn" {
        reject_list(&d.band, "band")?;
        reject_list(&d.seed, "seed")?;
        reject(&d.special_energy, "special_energy", "\"syn\"")?;
    }
    if kind != "syn" && kind != "folder" {
        for (v, key) in [(&d.train, "train"), (&d.test, "test")] {
            reject(v, key, "\"syn\" (image counts) or \"folder\" (directories)")?;
        }
    }
    if kind != "cifar10" {
        reject(&d.path, "path", "\"cifar10\"")?;
    } else {
        reject(&d.size, "size", "\"syn\" or \"npy\" (CIFAR-10 is 32 × 32)")?;
    }
    if kind != "npy" {
        for (v, key) in [
            (&d.train_images, "train_images"),
            (&d.train_labels, "train_labels"),
            (&d.test_images, "test_images"),
            (&d.test_labels, "test_labels"),
        ] {
            reject(v, key, "\"npy\"")?;
        }
    }
    let mut out: Vec<(String, DatasetSource)> = match kind.as_str() {
        "syn" => {
            let band =
                d.band.as_ref().ok_or_else(|| ctx.err(&d.kind.span(), "a syn dataset needs band (1-4 or a list)"))?;
            let bands = ctx.axis(
                "band",
                Some(band),
                Band::ALL[0],
                |v| {
                    let n = integer("band", v, 1, "1-4")?;
                    u8::try_from(n)
                        .ok()
                        .and_then(|b| Band::new(b).ok())
                        .ok_or_else(|| format!("band must be 1-4, got {n}"))
                },
                |b| b.index().to_string(),
            )?;
            let seeds = ctx.axis("seed", d.seed.as_ref(), 0, |v| non_negative_int("seed", v), u64::to_string)?;
            // Every worker holds a split in memory (12 KB per 32 × 32 image).
            let side = ctx.scalar(&d.size, crate::syn::IMAGE_SIZE, |v| match image_size(v)? {
                [h, w] if h == w => Ok(h),
                [h, w] => Err(format!("Syn_d images are square: size = {h} (not [{h}, {w}])")),
            })?;
            let image_bytes = (crate::syn::CHANNELS * 4 * side * side) as u64;
            let images = |key: &'static str| {
                move |v: &Value| {
                    let most = MAX_SYN_IMAGES.min(MAX_SYN_BYTES / image_bytes);
                    let why = format!("{} KB of memory each at {side} × {side}", image_bytes / 1000);
                    bounded(key, v, 1, most, &why)
                }
            };
            let train = ctx.scalar(&d.train, 10_000, images("train"))?;
            let test = ctx.scalar(&d.test, 2_000, images("test"))?;
            let special_energy = ctx.scalar(&d.special_energy, 0.5, |v| non_negative_number("special_energy", v))?;
            let shape = Shape2::new(side, side);
            let mut out = Vec::new();
            for &band in &bands.values {
                for &seed in &seeds.values {
                    let config = SynConfig { train, test, special_energy, size: side, ..SynConfig::new(band, seed) };
                    let config = SynConfig { layout: layout(shape, &config.name())?, ..config };
                    let label =
                        if seeds.values.len() > 1 { format!("{}s{seed}", config.name()) } else { config.name() };
                    out.push((label, DatasetSource::Syn(config)));
                }
            }
            out
        }
        "folder" => {
            let dir = |raw: &Scalar, key: &str| {
                ctx.scalar(raw, None, |v| path(key, v).map(Some))?.ok_or_else(|| {
                    ctx.err(
                        &d.kind.span(),
                        format!("a folder dataset needs {key} (a directory with one sub-directory per class)"),
                    )
                })
            };
            let (train, test) = (dir(&d.train, "train")?, dir(&d.test, "test")?);
            let size = ctx.scalar(&d.size, None, |v| image_size(v).map(Some))?.ok_or_else(|| {
                ctx.err(
                    &d.kind.span(),
                    "a folder dataset needs size (the images are resized and centre-cropped to it): 32 or [H, W]",
                )
            })?;
            // The classes are the training split's sub-directories; both splits must have them.
            let listing = |p: &Path, key: &str| {
                let span = match key {
                    "train" => d.train.as_ref(),
                    _ => d.test.as_ref(),
                }
                .map_or_else(|| d.kind.span(), Spanned::span);
                ctx.inputs.folder_classes(p).map_err(|e| ctx.err(&span, format!("{key}: {e}")))
            };
            let classes = listing(&train, "train")?;
            let test_classes = listing(&test, "test")?;
            if test_classes != classes {
                let span = d.test.as_ref().map_or_else(|| d.kind.span(), Spanned::span);
                return Err(ctx.err(
                    &span,
                    format!(
                        "test has classes {test_classes:?}, train {classes:?}: the splits must name the same classes"
                    ),
                ));
            }
            let source = DatasetSource::Folder { train, test, size, classes };
            layout(Shape2::new(size[0], size[1]), &source.name())?;
            vec![(source.name(), source)]
        }
        "cifar10" => {
            let path = ctx.scalar(&d.path, None, |v| path("path", v).map(Some))?;
            let path = path.ok_or_else(|| ctx.err(&d.kind.span(), "a cifar10 dataset needs path"))?;
            vec![("cifar10".into(), DatasetSource::Cifar10 { path })]
        }
        _ => {
            let need = |p: &Scalar, key: &str| {
                ctx.scalar(p, None, |v| path(key, v).map(Some))?
                    .ok_or_else(|| ctx.err(&d.kind.span(), format!("an npy dataset needs {key}")))
            };
            let [train_images, train_labels, test_images, test_labels] = [
                (&d.train_images, "train_images"),
                (&d.train_labels, "train_labels"),
                (&d.test_images, "test_images"),
                (&d.test_labels, "test_labels"),
            ]
            .map(|(raw, key)| need(raw, key));
            let (train_images, train_labels, test_images, test_labels) =
                (train_images?, train_labels?, test_images?, test_labels?);
            // The size plans the heatmap's cells and the bands: given, or read from the header.
            let size = match ctx.scalar(&d.size, None, |v| image_size(v).map(Some))? {
                Some(size) => size,
                None => {
                    let [h, w] = ctx.inputs.npy_image_size(&test_images).map_err(|e| {
                        ctx.err(
                            &d.kind.span(),
                            format!("an npy dataset needs its image size: give size = [H, W], or make test_images readable here ({e})"),
                        )
                    })?;
                    // The header's size meets the bounds `size =` meets: a 200-byte file may
                    // declare 65536 × 65536 images.
                    for side in [h, w] {
                        image_side(&Value::Integer(side.min(i64::MAX as usize) as i64)).map_err(|e| {
                            ctx.err(
                                &d.kind.span(),
                                format!(
                                    "test_images {}: {h} × {w} images in its header: {e}",
                                    one_line(&test_images.display().to_string(), 200)
                                ),
                            )
                        })?;
                    }
                    [h, w]
                }
            };
            let source = DatasetSource::Npy { train_images, train_labels, test_images, test_labels, size: Some(size) };
            layout(Shape2::new(size[0], size[1]), &source.name())?;
            vec![(source.name(), source)]
        }
    };
    let name = ctx.scalar(&d.name, None, |v| {
        let s = string("name", v)?;
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
            return Err(format!("dataset name must be letters, digits, '_' or '.', got {s:?}"));
        }
        Ok(Some(s))
    })?;
    if let Some(name) = name {
        let several = out.len() > 1;
        for (label, _) in &mut out {
            *label = if several { format!("{name}_{label}") } else { name.clone() };
        }
    }
    Ok(out)
}

fn test_sets(ctx: &Ctx, raw: &List) -> Result<Vec<BandSet>, SpecError> {
    let Some(raw) = raw else {
        return Ok(vec![BandSet::ALL, BandSet::ALL.without(Band::ALL[2])]);
    };
    let named = ctx.list("test_sets", raw, |v| {
        let name = string("test_sets", v)?;
        if name == "all_minus_one" || name == "minus_one" {
            return Ok(Band::ALL.iter().map(|&b| BandSet::ALL.without(b)).collect());
        }
        name.parse::<BandSet>().map(|s| vec![s]).map_err(|e| format!("test_sets: {e}"))
    })?;
    let mut out: Vec<BandSet> = Vec::new();
    for set in named.into_iter().flat_map(|(_, sets)| sets) {
        if !out.contains(&set) {
            out.push(set);
        }
    }
    Ok(out)
}

fn build(ctx: &Ctx, raw: RawSpec) -> Result<Sweep, SpecError> {
    let name = ctx.scalar(&raw.name, "sweep".to_string(), |v| {
        let s = string("name", v)?;
        // The name is the default run directory (`runs/<name>`): one plain path component.
        let plain = s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if s.trim().is_empty() {
            return Err("name must not be empty".into());
        }
        if s.len() > 100 || s.starts_with('.') || !plain {
            return Err(format!(
                "name must be 1 to 100 letters, digits, '-', '_' or '.', not starting with '.' (it names the run directory runs/<name>), got {s:?}"
            ));
        }
        Ok(s)
    })?;

    if raw.dataset.is_empty() {
        return Err(ctx.err_top("the spec needs at least one [[dataset]]"));
    }
    let (band_radii, radii_span) = band_radii(ctx, raw.bands.as_ref())?;
    let mut dataset = Axis { labels: Vec::new(), values: Vec::new() };
    for d in &raw.dataset {
        for (label, source) in datasets(ctx, d, (band_radii, radii_span.clone()))? {
            if dataset.labels.contains(&label) {
                return Err(ctx.err(
                    &d.get_ref().kind.span(),
                    format!("dataset {label} appears twice; give one of them a name = \"…\""),
                ));
            }
            dataset.labels.push(label);
            dataset.values.push(source);
        }
    }

    let no_train = RawTrain::default();
    let t = raw.train.as_ref().map_or(&no_train, Spanned::get_ref);
    let train_span = raw.train.as_ref().map_or(0..0, Spanned::span);
    let (trained, given) = models(ctx, &raw.model)?;
    // What trains needs [train]'s three keys; a spec of given models only has nothing to train.
    let required = |key: &str, list: &List| match (trained, list) {
        (Some(_), None) => Err(ctx.err(&train_span, format!("[train] needs {key}: the sweep trains [model] arch"))),
        (None, Some(v)) => {
            Err(ctx.err(&v.span(), format!("[train] {key}: this spec trains no model (give [model] arch)")))
        }
        _ => Ok(()),
    };
    required("lr", &t.lr)?;
    required("batch_size", &t.batch_size)?;
    required("epochs", &t.epochs)?;
    if trained.is_none() {
        if let Some(table) = raw.include.first().or(raw.exclude.first()) {
            return Err(
                ctx.err(&table.span(), "[[include]] and [[exclude]] pick trained points; this spec trains no model")
            );
        }
    }
    let s = |x: &String| x.clone();
    let f = |x: &f64| format_number(*x);
    let mut grid = Grid {
        dataset,
        arch: ctx.axis("arch", trained.and_then(|m| m.arch.as_ref()), String::new(), check_arch, s)?,
        optimizer: ctx.axis("optimizer", t.optimizer.as_ref(), "adam".into(), check_optimizer, s)?,
        lr: ctx.axis("lr", t.lr.as_ref(), 0.0, check_lr, f)?,
        batch: ctx.axis("batch_size", t.batch_size.as_ref(), 0, check_batch, usize::to_string)?,
        epochs: ctx.axis("epochs", t.epochs.as_ref(), 0, check_epochs, u32::to_string)?,
        schedule: ctx.axis("schedule", t.schedule.as_ref(), "constant".into(), check_schedule, s)?,
        momentum: ctx.axis("momentum", t.momentum.as_ref(), 0.9, check_momentum, f)?,
        nesterov: ctx.axis("nesterov", t.nesterov.as_ref(), false, check_nesterov, bool::to_string)?,
        decay: ctx.axis("weight_decay", t.weight_decay.as_ref(), 0.0, check_decay, f)?,
        beta1: ctx.axis("beta1", t.beta1.as_ref(), 0.9, check_beta1, f)?,
        beta2: ctx.axis("beta2", t.beta2.as_ref(), 0.999, check_beta2, f)?,
        seed: ctx.axis("seed", t.seed.as_ref(), 0, check_seed, u64::to_string)?,
    };
    // The cartesian product covers the lists as written; includes may append values after it.
    let grid_lens = grid.lens();

    let table = |raw: &Spanned<RawPoint>, what: &str, grid: &mut Grid, add: bool| {
        let mut out = Vec::new();
        for (key, v) in raw.get_ref() {
            let (axis, index) =
                grid.index(key, v.get_ref(), add).map_err(|m| ctx.err(&v.span(), format!("{what}: {m}")))?;
            out.push((axis, index));
        }
        if out.is_empty() {
            return Err(ctx.err(&raw.span(), format!("an empty [[{what}]] table")));
        }
        Ok(out)
    };
    let mut includes = Vec::new();
    for inc in &raw.include {
        let mut idx = [0; AXES];
        for (axis, index) in table(inc, "include", &mut grid, true)? {
            idx[axis] = index;
        }
        includes.push(idx);
    }
    let excludes: Vec<Vec<(usize, usize)>> =
        raw.exclude.iter().map(|e| table(e, "exclude", &mut grid, false)).collect::<Result<_, _>>()?;

    // Keys that no point uses are mistakes (momentum for an Adam-only sweep, gamma without step).
    let uses = |axis: &Axis<String>, value: &str| axis.values.iter().any(|v| v == value);
    let inapplicable: [(Option<Range<usize>>, &str, bool, &str); 8] = [
        (t.momentum.as_ref().map(Spanned::span), "momentum", uses(&grid.optimizer, "sgd"), "optimizer = \"sgd\""),
        (t.nesterov.as_ref().map(Spanned::span), "nesterov", uses(&grid.optimizer, "sgd"), "optimizer = \"sgd\""),
        (t.beta1.as_ref().map(Spanned::span), "beta1", uses(&grid.optimizer, "adam"), "optimizer = \"adam\""),
        (t.beta2.as_ref().map(Spanned::span), "beta2", uses(&grid.optimizer, "adam"), "optimizer = \"adam\""),
        (t.adam_eps.as_ref().map(Spanned::span), "adam_eps", uses(&grid.optimizer, "adam"), "optimizer = \"adam\""),
        (t.step_every.as_ref().map(Spanned::span), "step_every", uses(&grid.schedule, "step"), "schedule = \"step\""),
        (t.gamma.as_ref().map(Spanned::span), "gamma", uses(&grid.schedule, "step"), "schedule = \"step\""),
        (t.min_lr.as_ref().map(Spanned::span), "min_lr", uses(&grid.schedule, "cosine"), "schedule = \"cosine\""),
    ];
    for (span, key, used, needs) in inapplicable {
        if let (Some(span), false) = (span, used) {
            return Err(ctx.err(&span, format!("{key} applies to {needs}, which no point of this spec uses")));
        }
    }

    let eval = &raw.eval;
    let fixed = Fixed {
        classes: ctx.scalar(&trained.and_then(|m| m.classes.clone()), None, check_classes)?,
        adam_eps: ctx.scalar(&t.adam_eps, 1e-8, |v| positive_number("adam_eps", v))?,
        step_every: ctx.scalar(&t.step_every, 10, |v| small_positive("step_every", v))?,
        gamma: ctx.scalar(&t.gamma, 0.1, |v| positive_number("gamma", v))?,
        min_lr: ctx.scalar(&t.min_lr, 0.0, |v| non_negative_number("min_lr", v))?,
        augment: Augment {
            flip: ctx.scalar(&t.augment_flip, false, |v| boolean("augment_flip", v))?,
            crop_padding: ctx.scalar(&t.augment_crop, 0, |v| {
                bounded("augment_crop", v, 0, MAX_CROP_PADDING, "pixels of padding per side").map(|n| n as u32)
            })?,
        },
        test_sets: test_sets(ctx, &eval.test_sets)?,
        clip: ctx.scalar(&eval.clip, false, |v| boolean("clip", v))?,
        every_steps: ctx.scalar(&eval.every_steps, 0, |v| small_non_negative("every_steps", v))?,
        steps_epochs: ctx.scalar(&eval.steps_epochs, 1, |v| small_non_negative("steps_epochs", v))?,
        test_limit: ctx.scalar(&eval.test_limit, 0, |v| non_negative_usize("test_limit", v))?,
        precision: ctx.scalar(&t.precision, Precision::Fp32, check_precision)?,
        memory_format: ctx.scalar(&t.memory_format, MemoryFormat::Auto, check_memory_format)?,
        band_radii,
    };

    // A model with fewer outputs than the dataset has classes fails on every worker; say so here.
    let mut declared: Vec<&Spanned<Value>> = trained.and_then(|m| m.classes.as_ref()).into_iter().collect();
    declared.extend(given.iter().filter_map(|(_, raw)| raw.classes.as_ref()));
    for raw_classes in declared {
        let classes = check_classes(raw_classes.get_ref()).map_err(|m| ctx.err(&raw_classes.span(), m))?.unwrap_or(0);
        for dataset in &grid.dataset.values {
            let (name, has) = match dataset {
                DatasetSource::Syn(_) => ("Syn_d", crate::syn::CLASSES),
                DatasetSource::Cifar10 { .. } => ("CIFAR-10", 10),
                DatasetSource::Folder { classes, .. } => ("the image folder", classes.len()),
                // Its labels are read by the workers.
                DatasetSource::Npy { .. } => continue,
            };
            if classes < has {
                return Err(ctx.err(
                    &raw_classes.span(),
                    format!("classes = {classes}, but {name} has {has} classes (labels 0-{}): the model needs at least {has} outputs", has - 1),
                ));
            }
        }
    }

    let varying = grid.lens().map(|n| n > 1);
    let labels = Arc::new((0..AXES).map(|a| grid.labels(a).to_vec()).collect::<Vec<_>>());
    // A product of lists grows fast; refuse a grid far beyond what a coordinator can hold (each
    // point is a task of its own) with a message instead of running out of memory.
    let total = match trained {
        Some(_) => grid_lens.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n)),
        None => Some(0),
    };
    let total = total
        .filter(|&n| n <= MAX_POINTS)
        .ok_or_else(|| ctx.err_top(format!("the grid has over {MAX_POINTS} points; split the sweep")))?;
    // The heatmap's chunks fix the tasks per point: the task table is bounded while the points
    // are built (memory grows with the points), not after.
    let heatmap = raw.heatmap.as_ref().map(|h| heatmap(ctx, h, &grid.arch.values)).transpose()?;
    let dfm = raw.dfm.as_ref().map(|d| dfm(ctx, d)).transpose()?;
    let bands = match raw.bands.as_ref() {
        Some(b) if ctx.scalar(&b.get_ref().sufficiency, true, |v| boolean("sufficiency", v))? => {
            let b = b.get_ref();
            Some(BandsSpec {
                tolerance: ctx.scalar(&b.tolerance, 0.05, |v| {
                    number("tolerance", v, |x| (0.0..=1.0).contains(&x), "an F1 difference in [0, 1]")
                })?,
                images: ctx.scalar(&b.images, 0, |v| non_negative_usize("images", v))?,
            })
        }
        _ => None,
    };
    // Cells and units follow each dataset's size: the analyses must fit every one.
    let shapes: Vec<(String, Shape2)> = grid
        .dataset
        .labels
        .iter()
        .zip(&grid.dataset.values)
        .filter_map(|(label, d)| Some((label.clone(), d.image_shape()?)))
        .collect();
    let mut most_cells = 0;
    if let Some(h) = &heatmap {
        // Never empty: every selection keeps DC.
        most_cells = shapes.iter().map(|(_, shape)| h.cells.cells(*shape).len()).max().unwrap_or(0);
    }
    let mut most_units = 0;
    if let (Some(d), Some(raw_d)) = (&dfm, &raw.dfm) {
        for (label, shape) in &shapes {
            let p = d.patch;
            if p > shape.h.min(shape.w) || shape.h % p != 0 || shape.w % p != 0 {
                let span = raw_d.get_ref().patch.as_ref().map_or_else(|| raw_d.span(), Spanned::span);
                return Err(ctx.err(
                    &span,
                    format!("patch {p} does not divide dataset {label}'s {} × {} images", shape.h, shape.w),
                ));
            }
            most_units = most_units.max(d.units(*shape));
        }
    }
    // Maps per trained point: the final one, and one per kept epoch.
    let most_epochs = grid.epochs.values.iter().copied().max().unwrap_or(1);
    let maps_per_point = heatmap.as_ref().map_or(1, |h| 1 + h.at_epochs.of_run(most_epochs).len());
    let per_point = 1
        + usize::from(bands.is_some())
        + heatmap
            .as_ref()
            .map_or(0, |h| h.eps.len().saturating_mul(h.chunks.chunks(most_cells)).saturating_mul(maps_per_point))
        + dfm.as_ref().map_or(0, |d| d.chunks.chunks(most_units) + usize::from(d.shortcut_degree));
    let most_points = match trained {
        Some(_) => grid.distinct_points(&grid_lens).saturating_add(includes.len()),
        None => 0,
    }
    .saturating_add(given.len().saturating_mul(grid.dataset.values.len()));
    let too_many = || {
        ctx.err_top(format!(
            "the sweep plans up to {} tasks ({most_points} points × {per_point}); a coordinator holds each in memory (about 4 KB), so at most {MAX_TASKS} (8 GB) are planned; split the sweep or use fewer heatmap chunks",
            most_points.saturating_mul(per_point)
        ))
    };
    // Without excludes every distinct point is planned: refuse before building any.
    if excludes.is_empty() && most_points.saturating_mul(per_point) > MAX_TASKS {
        return Err(too_many());
    }
    let excluded = |idx: &[usize; AXES]| excludes.iter().any(|f| f.iter().all(|&(a, i)| idx[a] == i));
    let nesterov_span = t.nesterov.as_ref().map_or(0..0, Spanned::span);
    let capacity = (total + includes.len()).min(1 << 20);
    let mut seen: HashSet<[usize; AXES]> = HashSet::with_capacity(capacity);
    let mut points = Vec::with_capacity(capacity);
    let mut add = |idx: [usize; AXES], included: bool| -> Result<(), SpecError> {
        let idx = grid.normalise(idx);
        if (!included && excluded(&idx)) || !seen.insert(idx) {
            return Ok(());
        }
        let point = grid.point(&idx, &varying, &labels, &fixed);
        // PyTorch refuses Nesterov without momentum; say so here rather than on a worker.
        if let Optimizer::Sgd { momentum, nesterov: true, .. } = point.task.train.optimizer {
            if momentum == 0.0 {
                return Err(ctx.err(
                    &nesterov_span,
                    format!("nesterov = true needs momentum > 0 (point {}; exclude it with [[exclude]])", point.id),
                ));
            }
        }
        points.push(point);
        if points.len().saturating_mul(per_point) > MAX_TASKS {
            return Err(too_many());
        }
        Ok(())
    };
    // Odometer over the product, the last axis fastest.
    let mut idx = [0usize; AXES];
    for _ in 0..total {
        add(idx, false)?;
        for a in (0..AXES).rev() {
            idx[a] += 1;
            if idx[a] < grid_lens[a] {
                break;
            }
            idx[a] = 0;
        }
    }
    for idx in includes {
        add(idx, true)?;
    }
    // Given models: one analysis point per model and dataset, after the trained points.
    let given_labels: Vec<String> = given.iter().map(|(m, _)| m.name.clone()).collect();
    let mut labels = Arc::unwrap_or_clone(labels);
    let first_given = labels[ARCH].len();
    labels[ARCH].extend(given_labels);
    let labels = Arc::new(labels);
    for (g, (model, raw_model)) in given.iter().enumerate() {
        let classes = ctx.scalar(&raw_model.classes, None, check_classes)?;
        for (d, dataset) in grid.dataset.values.iter().enumerate() {
            let mut idx = [NOT_APPLICABLE; AXES];
            idx[DATASET] = d;
            idx[ARCH] = first_given + g;
            points.push(given_point(dataset, model, classes, GridValues { labels: Arc::clone(&labels), idx }, &fixed));
        }
    }
    if points.is_empty() {
        return Err(ctx.err_top("the grid is empty (everything was excluded)"));
    }

    // Listed epochs must exist in every trained point's run; each run keeps their checkpoints.
    if let (Some(h), Some(raw_h)) = (&heatmap, &raw.heatmap) {
        if let AtEpochs::Listed(list) = &h.at_epochs {
            let span = raw_h.get_ref().at_epochs.as_ref().map_or_else(|| raw_h.span(), Spanned::span);
            if trained.is_none() {
                return Err(ctx.err(&span, "at_epochs maps checkpoints of training; this spec trains no model"));
            }
            let last = list.last().copied().unwrap_or(0);
            if let Some(p) = points.iter().find(|p| p.given.is_none() && p.task.train.epochs < last) {
                return Err(ctx.err(
                    &span,
                    format!("at_epochs lists epoch {last}, but point {} trains {} epochs", p.id, p.task.train.epochs),
                ));
            }
        }
        for p in points.iter_mut().filter(|p| p.given.is_none()) {
            p.task.train.keep_epochs = h.at_epochs.of_run(p.task.train.epochs);
        }
    }

    // Listed DFM classes must exist in every point's model.
    if let (Some(d), Some(raw)) = (&dfm, &raw.dfm) {
        let fewest = points.iter().map(|p| p.task.train.classes).min().unwrap_or(0);
        if let ClassChoice::Listed(list) = &d.classes {
            if let Some(&c) = list.iter().find(|&&c| c >= fewest) {
                let span = raw.get_ref().classes.as_ref().map_or_else(|| raw.span(), Spanned::span);
                return Err(ctx.err(
                    &span,
                    format!(
                        "classes lists class {c}, but a model of the sweep has {fewest} classes (0-{})",
                        fewest.saturating_sub(1)
                    ),
                ));
            }
        }
    }

    Ok(Sweep { name, points, heatmap, dfm, bands, band_radii })
}

fn check_classes(v: &Value) -> Result<Option<usize>, String> {
    bounded("classes", v, 1, MAX_CLASSES, "a classifier's output layer and confusion matrix").map(Some)
}

/// The trained entry and the given models, each with its entry.
type Models<'a> = (Option<&'a RawModel>, Vec<(GivenModel, &'a RawModel)>);

/// The `[model]` table or `[[model]]` tables: the one entry the sweep trains (its `arch` list is
/// the grid's axis), and every given model file with its entry (for its `classes`).
fn models<'a>(ctx: &Ctx, raw: &'a RawModels) -> Result<Models<'a>, SpecError> {
    let entries: Vec<&Spanned<RawModel>> = match raw {
        RawModels::One(m) => vec![m.as_ref()],
        RawModels::Many(list) => list.iter().collect(),
    };
    let mut trained: Option<&RawModel> = None;
    let mut given: Vec<(GivenModel, &RawModel)> = Vec::new();
    for entry in entries {
        let m = entry.get_ref();
        let at = |raw: Option<Range<usize>>| raw.filter(|s| !s.is_empty()).unwrap_or_else(|| entry.span());
        let kind = ctx.scalar(&m.kind, "builtin".to_string(), |v| choice("kind", v, &["builtin", "torchscript"]))?;
        if kind == "builtin" {
            for (key, span) in [
                ("path", m.path.as_ref().map(Spanned::span)),
                ("glob", m.glob.as_ref().map(Spanned::span)),
                ("name", m.name.as_ref().map(Spanned::span)),
            ] {
                if let Some(span) = span {
                    return Err(
                        ctx.err(&span, format!("model key {key} applies to kind = \"torchscript\" (a given model)"))
                    );
                }
            }
            if m.arch.is_none() {
                return Err(ctx.err(
                    &at(m.kind.as_ref().map(Spanned::span)),
                    "a trained [model] needs arch (alexnet, resnet18, tiny or a list)",
                ));
            }
            if trained.is_some() {
                return Err(ctx.err(
                    &at(m.arch.as_ref().map(Spanned::span)),
                    "give every trained architecture in one arch list, not in two [[model]] tables",
                ));
            }
            trained = Some(m);
            continue;
        }
        if let Some(arch) = &m.arch {
            return Err(
                ctx.err(&arch.span(), "arch applies to trained models; a torchscript model is given by path or glob")
            );
        }
        let mut paths: Vec<PathBuf> = match &m.path {
            Some(list) => ctx.list("path", list, |v| path("path", v))?.into_iter().map(|(_, p)| p).collect(),
            None => Vec::new(),
        };
        if let Some(pattern) = &m.glob {
            let text = string("glob", pattern.get_ref()).map_err(|e| ctx.err(&pattern.span(), e))?;
            paths.extend(ctx.inputs.glob(&text).map_err(|e| ctx.err(&pattern.span(), e))?);
        }
        if paths.is_empty() {
            return Err(ctx.err(
                &at(m.kind.as_ref().map(Spanned::span)),
                "a torchscript model needs path (one file or a list) or glob",
            ));
        }
        let name = ctx.scalar(&m.name, None, |v| {
            let s = string("name", v)?;
            if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                return Err(format!("model name must be letters, digits, '_' or '.', got {s:?}"));
            }
            Ok(Some(s))
        })?;
        let several = paths.len() > 1;
        for path in paths {
            let stem: String = path
                .file_stem()
                .map(|s| {
                    s.to_string_lossy()
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' })
                        .collect()
                })
                .unwrap_or_else(|| "model".into());
            let label = match &name {
                Some(n) if several => format!("{n}_{stem}"),
                Some(n) => n.clone(),
                None => stem,
            };
            if given.iter().any(|(g, _)| g.name == label) || ARCHS.iter().any(|(a, _)| *a == label) {
                return Err(ctx.err(
                    &at(m.name.as_ref().map(Spanned::span).or(m.path.as_ref().map(Spanned::span))),
                    format!("two models are named {label:?} in point ids; give the [[model]] a name = \"…\""),
                ));
            }
            given.push((GivenModel { name: label, path, artifact: None }, m));
        }
    }
    Ok((trained, given))
}

/// The files a glob such as `models/*.pt` names, sorted: `*` and `?` in the last component
/// only (a directory of models, the common case).
fn expand_glob(pattern: &str) -> Result<Vec<PathBuf>, String> {
    let path = Path::new(pattern);
    let file = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if dir.to_string_lossy().contains(['*', '?']) {
        return Err(format!("glob {pattern:?}: wildcards are allowed in the file name only"));
    }
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("glob {pattern:?}: {}: {e}", dir.display()))?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file() || t.is_symlink()))
        .filter(|e| wildcard_match(file.as_bytes(), e.file_name().to_string_lossy().as_bytes()))
        .map(|e| dir.join(e.file_name()))
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(format!("glob {pattern:?} matches no file"));
    }
    Ok(out)
}

/// `*` (any run) and `?` (one character) against a whole name, in O(pattern × name) time: the
/// recursive match took over 30 s for a pattern of 16 `*` (each star retried every split).
/// Greedy with one backtrack point (the last star), which suffices because a later star can
/// absorb whatever an earlier one would have.
fn wildcard_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // The position after the last star seen, and the name position it currently absorbs to.
    let mut backtrack: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                p += 1;
                backtrack = Some((p, n));
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match backtrack {
                Some((after_star, absorbed)) => {
                    p = after_star;
                    n = absorbed + 1;
                    backtrack = Some((after_star, absorbed + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// The analysis point of a given model on `dataset`: id `<dataset>-<model>`, the evaluation
/// settings of the spec, nothing to train.
fn given_point(
    dataset: &DatasetSource,
    model: &GivenModel,
    classes: Option<usize>,
    values: GridValues,
    fixed: &Fixed,
) -> GridPoint {
    let classes = classes.unwrap_or_else(|| default_classes(dataset));
    GridPoint {
        id: format!("{}-{}", values.at(DATASET), model.name),
        given: Some(model.clone()),
        task: TrainTask {
            dataset: dataset.clone(),
            train: TrainConfig {
                model: model.name.clone(),
                classes,
                optimizer: Optimizer::adam(),
                lr: 0.0,
                schedule: LrSchedule::Constant,
                batch_size: 1,
                epochs: 0,
                seed: 0,
                augment: Augment::default(),
                test_sets: fixed.test_sets.clone(),
                band_layout: layout_of(dataset, fixed.band_radii),
                clip_filtered: fixed.clip,
                eval_every_steps: 0,
                eval_steps_epochs: 0,
                test_limit: fixed.test_limit,
                precision: fixed.precision,
                memory_format: fixed.memory_format,
                keep_epochs: Vec::new(),
            },
        },
        values,
    }
}

/// `[bands] radii = [4, 8, 12]` (cells) or `fractions = [0.25, 0.5, 0.75]` (of the Nyquist
/// radius), and the span to blame when a dataset's spectrum does not fit them.
fn band_radii(ctx: &Ctx, raw: Option<&Spanned<RawBands>>) -> Result<(BandRadii, Option<Range<usize>>), SpecError> {
    let Some(b) = raw.map(Spanned::get_ref) else { return Ok((BandRadii::default(), None)) };
    let three = |key: &str, list: &Spanned<Values>| -> Result<[f64; 3], SpecError> {
        let values = ctx.list(key, list, |v| number(key, v, |x| x > 0.0, "a positive number"))?;
        let values: Vec<f64> = values.into_iter().map(|(_, x)| x).collect();
        let three: [f64; 3] = values
            .as_slice()
            .try_into()
            .map_err(|_| ctx.err(&list.span(), format!("{key} must list three numbers (the bounds of B1, B2, B3)")))?;
        if !(three[0] < three[1] && three[1] < three[2]) {
            return Err(ctx.err(&list.span(), format!("{key} must be increasing, got {values:?}")));
        }
        Ok(three)
    };
    match (&b.radii, &b.fractions) {
        (Some(_), Some(f)) => Err(ctx.err(&f.span(), "give radii or fractions, not both")),
        (Some(r), None) => Ok((BandRadii::Cells(three("radii", r)?), Some(r.span()))),
        (None, Some(f)) => {
            let fractions = three("fractions", f)?;
            if fractions[2] > 1.0 {
                return Err(
                    ctx.err(&f.span(), format!("fractions are of the Nyquist radius: at most 1, got {}", fractions[2]))
                );
            }
            Ok((BandRadii::Fractions(fractions), Some(f.span())))
        }
        (None, None) => Ok((BandRadii::default(), None)),
    }
}

fn dfm(ctx: &Ctx, raw: &Spanned<RawDfm>) -> Result<DfmSpec, SpecError> {
    let d = raw.get_ref();
    // Checked against each dataset's size by `build`.
    let patch =
        ctx.scalar(&d.patch, 1, |v| bounded("patch", v, 1, MAX_IMAGE_SIDE, "cells on a side of the spectrum"))?;
    let top = match &d.top {
        None => vec![1.0, 5.0, 10.0, 20.0],
        Some(list) => {
            let mut seen = Vec::new();
            for (span, t) in
                ctx.list("top", list, |v| number("top", v, |x| x > 0.0 && x <= 100.0, "a percentage in (0, 100]"))?
            {
                if seen.contains(&t) {
                    return Err(ctx.err(&span, format!("top lists {} twice", format_number(t))));
                }
                seen.push(t);
            }
            seen
        }
    };
    let classes = match &d.classes {
        None => ClassChoice::All,
        Some(list) if matches!(list.get_ref().0.as_slice(), [(_, Value::String(s))] if s == "all") => ClassChoice::All,
        Some(list) => {
            let mut out = Vec::new();
            for (span, c) in
                ctx.list("classes", list, |v| bounded("classes", v, 0, MAX_CLASSES - 1, "a class number, or \"all\""))?
            {
                if out.contains(&c) {
                    return Err(ctx.err(&span, format!("classes lists class {c} twice")));
                }
                out.push(c);
            }
            ClassChoice::Listed(out)
        }
    };
    let chunks = match (&d.chunk_cells, &d.chunks_per_map) {
        (Some(_), Some(c)) => {
            return Err(ctx.err(&c.span(), "give chunk_cells or chunks_per_map, not both"));
        }
        (_, Some(_)) => Chunking::PerMap(ctx.scalar(&d.chunks_per_map, 1, |v| positive_usize("chunks_per_map", v))?),
        _ => Chunking::Cells(ctx.scalar(&d.chunk_cells, 64, |v| positive_usize("chunk_cells", v))?),
    };
    Ok(DfmSpec {
        patch,
        top,
        images: ctx.scalar(&d.images, 500, |v| non_negative_usize("images", v))?,
        batch: ctx.scalar(&d.batch, 256, |v| bounded("batch", v, 1, MAX_BATCH, "filtered images per forward pass"))?,
        chunks,
        classes,
        shortcut_degree: ctx.scalar(&d.shortcut_degree, true, |v| boolean("shortcut_degree", v))?,
        precision: ctx.scalar(&d.precision, Precision::Fp32, check_precision)?,
        memory_format: ctx.scalar(&d.memory_format, MemoryFormat::Auto, check_memory_format)?,
    })
}

/// `cells = "all"`, `{ max_radius = R }` or `{ low_crop = N }`.
fn cell_selection(v: &Value) -> Result<CellSelection, String> {
    let usage = "cells must be \"all\", { max_radius = R } or { low_crop = N }";
    match v {
        Value::String(s) if s == "all" => Ok(CellSelection::All),
        Value::Table(t) if t.len() == 1 => {
            let (key, value) = t.iter().next().expect("one entry");
            match key.as_str() {
                "max_radius" => number("cells.max_radius", value, |x| x > 0.0, "a positive radius in cells")
                    .map(CellSelection::MaxRadius),
                "low_crop" => bounded("cells.low_crop", value, 1, 2 * MAX_IMAGE_SIDE, "cells on a side of the window")
                    .map(CellSelection::LowCrop),
                other => Err(format!("{usage}, got key {other:?}")),
            }
        }
        _ => Err(format!("{usage}, got {}", show(v))),
    }
}

fn heatmap(ctx: &Ctx, raw: &Spanned<RawHeatmap>, archs: &[String]) -> Result<HeatmapSpec, SpecError> {
    let h = raw.get_ref();
    let eps = ctx
        .axis(
            "eps",
            Some(&h.eps),
            0.0,
            |v| {
                // Images are in [0, 1]: a perturbation far beyond the whole image's norm
                // (sqrt(3 · H · W), 55 for 32 × 32) only makes every pixel clip.
                number("eps", v, |x| x > 0.0 && x <= 1e4, "a positive number (an L2 norm) of at most 10000")
            },
            |x| format_number(*x),
        )?
        .values;
    let layers = match &h.layers {
        None => LayerChoice::None,
        Some(raw_layers) => match raw_layers.get_ref().0.as_slice() {
            [(_, Value::Boolean(all))] => {
                if *all {
                    LayerChoice::All
                } else {
                    LayerChoice::None
                }
            }
            _ => {
                let names = ctx.list("layers", raw_layers, |v| {
                    let name = string("layers", v)
                        .map_err(|_| format!("layers must be true, false or a list of layer names, got {}", show(v)))?;
                    if name == "all" {
                        return Ok(name);
                    }
                    for arch in archs {
                        let known = ARCHS.iter().find(|(a, _)| a == arch).map_or(&[][..], |(_, l)| *l);
                        if !known.contains(&name.as_str()) {
                            return Err(format!(
                                "layers: {arch} has no layer {name:?} (its layers: {})",
                                known.join(", ")
                            ));
                        }
                    }
                    Ok(name)
                })?;
                let mut out: Vec<String> = Vec::new();
                for (span, name) in names {
                    if out.contains(&name) {
                        return Err(ctx.err(&span, format!("layers lists {name:?} twice")));
                    }
                    out.push(name);
                }
                if out.iter().any(|n| n == "all") {
                    LayerChoice::All
                } else {
                    LayerChoice::Named(out)
                }
            }
        },
    };
    let chunks = match (&h.chunk_cells, &h.chunks_per_map) {
        (Some(_), Some(c)) => {
            return Err(ctx.err(&c.span(), "give chunk_cells or chunks_per_map, not both"));
        }
        (_, Some(_)) => Chunking::PerMap(ctx.scalar(&h.chunks_per_map, 1, |v| positive_usize("chunks_per_map", v))?),
        _ => Chunking::Cells(ctx.scalar(&h.chunk_cells, 64, |v| positive_usize("chunk_cells", v))?),
    };
    let at_epochs = match &h.at_epochs {
        None => AtEpochs::None,
        Some(list) if matches!(list.get_ref().0.as_slice(), [(_, Value::String(s))] if s == "every") => AtEpochs::Every,
        Some(list) => {
            let mut out: Vec<u32> = Vec::new();
            for (span, e) in ctx.list("at_epochs", list, |v| {
                integer(
                    "at_epochs",
                    v,
                    1,
                    "an epoch number of at least 1 (the checkpoint after that epoch), or \"every\"",
                )
                .map(|e| e.min(u64::from(u32::MAX)) as u32)
            })? {
                if out.contains(&e) {
                    return Err(ctx.err(&span, format!("at_epochs lists epoch {e} twice")));
                }
                out.push(e);
            }
            out.sort_unstable();
            AtEpochs::Listed(out)
        }
    };
    Ok(HeatmapSpec {
        eps,
        at_epochs,
        cells: ctx.scalar(&h.cells, CellSelection::All, cell_selection)?,
        layers,
        images: ctx.scalar(&h.images, 500, |v| non_negative_usize("images", v))?,
        batch: ctx.scalar(&h.batch, 256, |v| bounded("batch", v, 1, MAX_BATCH, "perturbed images per forward pass"))?,
        chunks,
        seed: ctx.scalar(&h.seed, 0, |v| non_negative_int("seed", v))?,
        precision: ctx.scalar(&h.precision, Precision::Fp32, check_precision)?,
        memory_format: ctx.scalar(&h.memory_format, MemoryFormat::Auto, check_memory_format)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dfm_section_is_read_with_defaults_and_bad_values_are_named() {
        let base = "[[dataset]]\nkind = \"syn\"\nband = 1\n[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\n[dfm]\n";
        let d = parse(base, "s.toml").unwrap().dfm.unwrap();
        assert_eq!(
            (d.patch, d.top.as_slice(), d.images, d.classes.clone()),
            (1, &[1.0, 5.0, 10.0, 20.0][..], 500, ClassChoice::All)
        );
        assert_eq!((d.units(Shape2::new(32, 32)), d.chunks.chunks(d.units(Shape2::new(32, 32)))), (514, 9));
        let d = parse(&format!("{base}patch = 4\ntop = [2.5]\nclasses = [0, 1]\nchunks_per_map = 2\n"), "s.toml")
            .unwrap()
            .dfm
            .unwrap();
        assert_eq!(
            (d.patch, d.units(Shape2::new(32, 32)), d.top.as_slice(), d.classes.of(4)),
            (4, 64, &[2.5][..], vec![0, 1])
        );
        assert_eq!(
            parse(&format!("{base}classes = \"all\"\n"), "s.toml").unwrap().dfm.unwrap().classes,
            ClassChoice::All
        );
        // A sweep's task count includes the DFM chunks (1 train + 9 chunks).
        for (extra, message) in [
            ("patch = 3\n", "s.toml:11: patch 3 does not divide dataset Syn_1's 32 × 32 images"),
            ("patch = 0\n", "s.toml:11: patch must be"),
            ("top = [0]\n", "s.toml:11: top must be a percentage in (0, 100]"),
            ("top = [5, 120]\n", "s.toml:11: top must be a percentage in (0, 100]"),
            ("top = [5, 5]\n", "s.toml:11: top lists 5 twice"),
            ("classes = [0, 4]\n", "s.toml:11: classes lists class 4, but a model of the sweep has 4 classes (0-3)"),
            ("classes = [1, 1]\n", "s.toml:11: classes lists class 1 twice"),
            ("classes = \"some\"\n", "s.toml:11: classes must be"),
            ("chunk_cells = 8\nchunks_per_map = 2\n", "give chunk_cells or chunks_per_map, not both"),
            ("colour = 1\n", "unknown field `colour`"),
        ] {
            let err = parse(&format!("{base}{extra}"), "s.toml").unwrap_err().to_string();
            assert!(err.contains(message), "{extra:?}: {err}");
        }
    }

    #[test]
    fn image_sizes_band_radii_and_cell_selections_follow_the_data() {
        let base = "[[dataset]]\nkind = \"syn\"\nband = 4\nsize = 64\n[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\n";
        let sweep = parse(base, "s.toml").unwrap();
        let task = &sweep.points[0].task;
        assert_eq!(sweep.points[0].id, "Syn_4_64px-tiny-adam-lr0.1-bs8-ep1-seed0");
        assert_eq!(task.dataset.image_shape(), Some(Shape2::new(64, 64)));
        // The default radii scale: 8, 16, 24 on 64 × 64, in the data and in the evaluation.
        let DatasetSource::Syn(config) = &task.dataset else { panic!("syn") };
        assert_eq!((config.layout.upper_radii, task.train.band_layout), ([8.0, 16.0, 24.0], config.layout));
        let radii = parse(&format!("{base}[bands]\nradii = [3, 10, 20]\nsufficiency = false\n"), "s.toml").unwrap();
        assert_eq!(radii.points[0].task.train.band_layout.upper_radii, [3.0, 10.0, 20.0]);
        assert_eq!(radii.bands, None, "sufficiency = false plans no band-sufficiency tasks");
        let fractions = parse(&format!("{base}[bands]\nfractions = [0.125, 0.5, 1]\n"), "s.toml").unwrap();
        assert_eq!(fractions.points[0].task.train.band_layout.upper_radii, [4.0, 16.0, 32.0]);
        assert!(fractions.bands.is_some());
        let cells = |text: &str| {
            parse(&format!("{base}[heatmap]\neps = 4\ncells = {text}\n"), "s.toml").map(|s| s.heatmap.unwrap().cells)
        };
        assert_eq!(cells("\"all\""), Ok(CellSelection::All));
        assert_eq!(cells("{ max_radius = 12.5 }"), Ok(CellSelection::MaxRadius(12.5)));
        assert_eq!(cells("{ low_crop = 63 }"), Ok(CellSelection::LowCrop(63)));

        // An npy pair's size is read from its header, or given.
        let dir = tempfile::tempdir().unwrap();
        let x = dir.path().join("x.npy");
        crate::npy::NpyArray::from_u8(vec![2, 48, 40, 3], &[0; 2 * 48 * 40 * 3]).write(&x).unwrap();
        let npy = |extra: &str, test: &Path| {
            format!("[[dataset]]\nkind = \"npy\"\ntrain_images = \"a\"\ntrain_labels = \"b\"\ntest_images = {:?}\ntest_labels = \"d\"\n{extra}[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\n", test.display().to_string())
        };
        let read = parse(&npy("", &x), "s.toml").unwrap();
        assert_eq!(read.points[0].task.dataset.image_shape(), Some(Shape2::new(48, 40)));
        assert_eq!(read.points[0].task.train.band_layout.upper_radii, [5.0, 10.0, 15.0], "r_N = 40 / 2");
        let given = parse(&npy("size = [96, 96]\n", &dir.path().join("absent.npy")), "s.toml").unwrap();
        assert_eq!(given.points[0].task.dataset.image_shape(), Some(Shape2::new(96, 96)));

        for (text, message) in [
            (npy("", &dir.path().join("absent.npy")), "s.toml:2: an npy dataset needs its image size: give size = [H, W], or make test_images readable here"),
            (base.replace("size = 64", "size = [64, 32]"), "s.toml:4: Syn_d images are square"),
            (base.replace("size = 64", "size = 2"), "s.toml:4: size must be an integer of at least 4, got 2"),
            (base.replace("size = 64", "size = 5000"), "s.toml:4: size must be at most 1024"),
            (base.replace("kind = \"syn\"\nband = 4\nsize = 64", "kind = \"cifar10\"\npath = \"c\"\nsize = 64"), "s.toml:4: dataset key size applies to kind"),
            (format!("{base}[bands]\nradii = [8, 4, 12]\n"), "s.toml:12: radii must be increasing"),
            (format!("{base}[bands]\nradii = [8, 12]\n"), "s.toml:12: radii must list three numbers"),
            (format!("{base}[bands]\nradii = [8, 16, 40]\n"), "s.toml:12: [bands] for dataset Syn_4_64px: band radius 40 exceeds the Nyquist radius 32 of 64 × 64 images"),
            (format!("{base}[bands]\nfractions = [0.2, 0.5, 1.5]\n"), "s.toml:12: fractions are of the Nyquist radius: at most 1"),
            (format!("{base}[bands]\nradii = [1, 2, 3]\nfractions = [0.2, 0.5, 0.7]\n"), "s.toml:13: give radii or fractions, not both"),
            (format!("{base}[heatmap]\neps = 4\ncells = {{ low_crop = 0 }}\n"), "s.toml:13: cells.low_crop must be a positive integer, got 0"),
            (format!("{base}[heatmap]\neps = 4\ncells = {{ radius = 3 }}\n"), "s.toml:13: cells must be \"all\", { max_radius = R } or { low_crop = N }, got key \"radius\""),
            (format!("{base}[heatmap]\neps = 4\ncells = \"some\"\n"), "s.toml:13: cells must be"),
            (format!("{base}[dfm]\npatch = 3\n"), "s.toml:12: patch 3 does not divide dataset Syn_4_64px's 64 × 64 images"),
        ] {
            let err = parse(&text, "s.toml").unwrap_err().to_string();
            assert!(err.starts_with(message), "{message}\n{err}");
        }
    }

    /// An npy header's image size meets the bounds `size =` meets: a 200-byte file declaring
    /// 65536 × 65536 images aborted the run (an 8 GB allocation), and 1 × 1 or 2 × 2 images
    /// panicked on the workers.
    #[test]
    fn an_npy_header_size_is_bounded_like_size() {
        let dir = tempfile::tempdir().unwrap();
        let header_only = |name: &str, shape: &str| {
            let dict = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
            let mut header = dict.into_bytes();
            while (10 + header.len() + 1) % 64 != 0 {
                header.push(b' ');
            }
            header.push(b'\n');
            let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
            bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
            bytes.extend_from_slice(&header);
            let path = dir.path().join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        };
        let spec = |test: &Path| {
            format!("[[dataset]]\nkind = \"npy\"\ntrain_images = \"a\"\ntrain_labels = \"b\"\ntest_images = {:?}\ntest_labels = \"d\"\n[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\n", test.display().to_string())
        };
        for (shape, message) in [
            ("(1, 65536, 65536, 3)", "65536 × 65536 images in its header: size must be at most 1024"),
            ("(1, 1, 1, 3)", "1 × 1 images in its header: size must be an integer of at least 4"),
            ("(1, 2, 2, 3)", "2 × 2 images in its header"),
            ("(1, 4096, 4096, 3)", "size must be at most 1024"),
        ] {
            let path = header_only(&format!("{}.npy", shape.len()), shape);
            let started = std::time::Instant::now();
            let err = parse(&spec(&path), "s.toml").unwrap_err().to_string();
            assert!(err.starts_with("s.toml:2: test_images ") && err.contains(message), "{shape}: {err}");
            assert!(started.elapsed().as_secs() < 2, "{shape}: refused at once");
        }
    }

    /// A hostile glob of 16 `*` kept parsing busy for over 30 s (the recursive match retried
    /// every split); the match is linear in the pattern times the name now.
    #[test]
    fn wildcards_match_in_polynomial_time_and_as_before() {
        for (pattern, name, expected) in [
            ("*.pt", "a.pt", true),
            ("*.pt", "a.pth", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("*a*", "bab", true),
            ("**", "x", true),
            ("m*_?.pt", "model_1.pt", true),
            ("m*_?.pt", "model_12.pt", false),
        ] {
            assert_eq!(wildcard_match(pattern.as_bytes(), name.as_bytes()), expected, "{pattern} {name}");
        }
        let hostile = "*".repeat(16) + "b";
        let name = "a".repeat(250);
        let started = std::time::Instant::now();
        assert!(!wildcard_match(hostile.as_bytes(), name.as_bytes()));
        assert!(started.elapsed().as_millis() < 500, "{:?}", started.elapsed());
    }

    /// A run records what parsing read of the file system; replaying the record gives the same
    /// sweep after the files changed, and never touches them.
    #[test]
    fn a_recorded_parse_replays_without_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        let png = |path: &Path| {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            crate::image::write_rgb_png(path, 2, 2, &[0; 12]).unwrap();
        };
        for class in ["ant", "cow"] {
            png(&dir.path().join(format!("train/{class}/a.png")));
            png(&dir.path().join(format!("test/{class}/b.png")));
        }
        std::fs::create_dir_all(dir.path().join("zoo")).unwrap();
        for m in ["a.pt", "b.pt"] {
            std::fs::write(dir.path().join("zoo").join(m), "x").unwrap();
        }
        let x = dir.path().join("x.npy");
        crate::npy::NpyArray::from_u8(vec![2, 8, 8, 3], &[0; 2 * 8 * 8 * 3]).write(&x).unwrap();
        let d = dir.path().display();
        let text = format!(
            "[[dataset]]\nkind = \"folder\"\ntrain = \"{d}/train\"\ntest = \"{d}/test\"\nsize = 8\n[[dataset]]\nkind = \"npy\"\ntrain_images = \"a\"\ntrain_labels = \"b\"\ntest_images = \"{d}/x.npy\"\ntest_labels = \"d\"\n[[model]]\nkind = \"torchscript\"\nglob = \"{d}/zoo/*.pt\"\n"
        );
        let (sweep, recorded) = parse_recording(&text, "s.toml").unwrap();
        assert_eq!(recorded.globs.values().next().map(Vec::len), Some(2));
        assert_eq!(recorded.folder_classes.len(), 2, "{recorded:?}");
        assert_eq!(recorded.npy_sizes.values().next(), Some(&[8, 8]));
        // The zoo grows, a class is renamed, the npy file goes: live parsing sees it all.
        std::fs::write(dir.path().join("zoo/c.pt"), "x").unwrap();
        std::fs::rename(dir.path().join("train/cow"), dir.path().join("train/dog")).unwrap();
        std::fs::remove_file(&x).unwrap();
        assert!(parse(&text, "s.toml").is_err());
        let replayed = parse_replaying(&text, "s.toml", &recorded).unwrap();
        assert_eq!(replayed, sweep);
        // A record through JSON (as the store keeps it) replays the same.
        let json = serde_json::to_string(&recorded).unwrap();
        let back: SpecInputs = serde_json::from_str(&json).unwrap();
        assert_eq!(parse_replaying(&text, "s.toml", &back).unwrap(), sweep);
        let err = parse_replaying(&text, "s.toml", &SpecInputs::default()).unwrap_err().to_string();
        assert!(err.contains("the run's record holds no class list"), "{err}");
    }

    #[test]
    fn an_image_folder_dataset_reads_its_classes_and_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let png = |path: &Path| {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            crate::image::write_rgb_png(path, 2, 2, &[0; 12]).unwrap();
        };
        for class in ["zebra", "ant", "cow"] {
            png(&dir.path().join(format!("train/{class}/a.png")));
            png(&dir.path().join(format!("test/{class}/b.png")));
        }
        let spec = |extra: &str, test: &str| {
            format!("[[dataset]]\nkind = \"folder\"\ntrain = \"{0}/train\"\ntest = \"{0}/{test}\"\n{extra}[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\n", dir.path().display())
        };
        let sweep = parse(&spec("size = [24, 32]\n", "test"), "s.toml").unwrap();
        let task = &sweep.points[0].task;
        let DatasetSource::Folder { classes, size, .. } = &task.dataset else { panic!("a folder") };
        assert_eq!((classes.as_slice(), *size), (&["ant".to_string(), "cow".into(), "zebra".into()][..], [24, 32]));
        assert_eq!((task.train.classes, task.dataset.image_shape()), (3, Some(Shape2::new(24, 32))));
        png(&dir.path().join("other/ant/c.png"));
        std::fs::create_dir_all(dir.path().join("empty/ant")).unwrap();
        for (text, message) in [
            (spec("", "test"), "s.toml:2: a folder dataset needs size"),
            (spec("size = 16\n", "other"), "s.toml:4: test has classes [\"ant\"], train [\"ant\", \"cow\", \"zebra\"]"),
            (spec("size = 16\n", "empty"), "holds no .png/.jpg/.jpeg image"),
            (spec("size = 16\n", "absent"), "s.toml:4: test: "),
            (spec("size = 16\nseed = 3\n", "test"), "s.toml:6: dataset key seed applies to kind \"syn\""),
        ] {
            let err = parse(&text, "s.toml").unwrap_err().to_string();
            assert!(err.contains(message), "{message}\n{err}");
        }
    }

    #[test]
    fn heatmap_precision_and_memory_format_are_read_and_default_to_fp32_auto() {
        let base = "[[dataset]]\nkind = \"syn\"\nband = 1\n[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\n[heatmap]\neps = 4\n";
        let plain = parse(base, "s.toml").unwrap().heatmap.unwrap();
        assert_eq!((plain.precision, plain.memory_format), (Precision::Fp32, MemoryFormat::Auto));
        let fast = format!("{base}precision = \"bf16\"\nmemory_format = \"channels_last\"\n");
        let fast = parse(&fast, "s.toml").unwrap().heatmap.unwrap();
        assert_eq!((fast.precision, fast.memory_format), (Precision::Bf16, MemoryFormat::ChannelsLast));
        // Auto: channels-last for conv nets, NCHW for anything else; the others mean themselves.
        assert_eq!(MemoryFormat::Auto.resolve(true), MemoryFormat::ChannelsLast);
        assert_eq!(MemoryFormat::Auto.resolve(false), MemoryFormat::Contiguous);
        assert_eq!(MemoryFormat::Contiguous.resolve(true), MemoryFormat::Contiguous);
        assert_eq!(MemoryFormat::ChannelsLast.resolve(false), MemoryFormat::ChannelsLast);
        // Training's precision reaches every train task.
        let mixed = base.replace("epochs = 1\n", "epochs = 1\nprecision = \"bf16\"\n");
        let sweep = parse(&mixed, "s.toml").unwrap();
        assert!(sweep.points.iter().all(|p| p.task.train.precision == Precision::Bf16));
        let nchw = base.replace("epochs = 1\n", "epochs = 1\nmemory_format = \"contiguous\"\n");
        let sweep = parse(&nchw, "s.toml").unwrap();
        assert!(sweep.points.iter().all(|p| p.task.train.memory_format == MemoryFormat::Contiguous));
        let err = parse(&base.replace("epochs = 1\n", "epochs = 1\nmemory_format = \"nhwc\"\n"), "s.toml").unwrap_err();
        assert!(err.to_string().contains("s.toml:10: unknown memory_format \"nhwc\": use"), "{err}");
        let err = parse(&base.replace("epochs = 1\n", "epochs = 1\nprecision = \"fp8\"\n"), "s.toml").unwrap_err();
        assert!(err.to_string().contains("s.toml:10: unknown precision \"fp8\": use"), "{err}");
    }

    const SPEC: &str = r#"name = "t"

[[dataset]]
kind = "syn"
band = [1, 4]
train = 200
test = 40

[model]
arch = ["alexnet", "tiny"]

[train]
optimizer = ["adam", "sgd"]
lr = [1e-4, 0.01]
batch_size = 64
epochs = 2
seed = [0, 1]

[eval]
test_sets = ["B1234", "minus_one"]
every_steps = 5

[heatmap]
eps = [2.0, 4.0]
layers = true
chunk_cells = 100

[[exclude]]
arch = "alexnet"
optimizer = "sgd"

[[exclude]]
arch = "tiny"
lr = 0.0001
"#;

    /// The example specs users run as they are stay valid (bounds and names included).
    #[test]
    fn every_example_spec_parses() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
        let mut parsed = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            // zoo.toml reads the files examples/make_zoo.sh writes (tests/examples.rs makes them).
            if path.extension().is_some_and(|e| e == "toml") && !path.ends_with("zoo.toml") {
                load(&path).unwrap_or_else(|e| panic!("{e}"));
                parsed += 1;
            }
        }
        assert!(parsed >= 3, "{parsed} example specs in {}", dir.display());
    }

    #[test]
    fn sizes_are_bounded_by_what_they_cost() {
        let base = "[[dataset]]\nkind = \"syn\"\nband = 1\n[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\n";
        for (text, what) in [
            (base.replace("band = 1", "band = 1\ntrain = 1000000000000"), "train must be at most 5000000"),
            (base.replace("arch = \"tiny\"", "arch = \"tiny\"\nclasses = 100000000"), "classes must be at most 100000"),
            (base.replace("batch_size = 8", "batch_size = 100000000000"), "batch_size must be at most 65536"),
            (base.replace("epochs = 1", "epochs = 1\naugment_crop = 4294967295"), "augment_crop must be at most 32"),
            (format!("{base}[heatmap]\neps = 4\nbatch = 100000000000\n"), "batch must be at most 65536"),
        ] {
            let err = parse(&text, "s.toml").unwrap_err().to_string();
            assert!(err.contains(what), "{what}: {err}");
        }
        // 4 000 points × (1 + 2 ε × 514 one-cell chunks) is over two million tasks: refused up front.
        let seeds: Vec<String> = (0..4000).map(|s| s.to_string()).collect();
        let big = format!("{}seed = [{}]\n[heatmap]\neps = [2, 4]\nchunk_cells = 1\n", base, seeds.join(", "));
        let err = parse(&big, "s.toml").unwrap_err().to_string();
        assert!(err.contains("the sweep plans up to 4116000 tasks (4000 points × 1029)"), "{err}");
    }

    #[test]
    fn huge_numbers_make_short_labels_and_eps_is_bounded() {
        assert_eq!(format_number(0.001), "0.001");
        assert_eq!(format_number(4.0), "4");
        assert_eq!(format_number(1e300), "1e300");
        let text = "[[dataset]]\nkind = \"syn\"\nband = 1\n[model]\narch = \"tiny\"\n[train]\nlr = 1e300\nbatch_size = 8\nepochs = 1\n";
        let sweep = parse(text, "s.toml").unwrap();
        assert!(sweep.points[0].id.len() < 64 && sweep.points[0].id.contains("lr1e300"), "{}", sweep.points[0].id);
        let err = parse(&format!("{text}[heatmap]\neps = 1e300\n"), "s.toml").unwrap_err().to_string();
        assert!(err.contains("s.toml:11") && err.contains("at most 10000"), "{err}");
    }

    #[test]
    fn a_sweep_name_is_one_plain_path_component() {
        for bad in ["../../etc", "a/b", ".hidden", "two words", "x\\ny"] {
            let text = format!("name = \"{bad}\"\n[[dataset]]\nkind = \"syn\"\nband = 1\n[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\n");
            let err = parse(&text, "s.toml").unwrap_err().to_string();
            assert!(err.contains("s.toml:1") && err.contains("names the run directory"), "{bad:?}: {err}");
        }
        let long = "a".repeat(101);
        let text = format!("name = \"{long}\"\n[[dataset]]\nkind = \"syn\"\nband = 1\n[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\n");
        assert!(parse(&text, "s.toml").is_err());
        let ok = "name = \"poster_cpu-2.v1\"\n[[dataset]]\nkind = \"syn\"\nband = 1\n[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\n";
        assert_eq!(parse(ok, "s.toml").unwrap().name, "poster_cpu-2.v1");
    }

    #[test]
    fn a_full_spec_expands_in_order_with_excludes() {
        let sweep = parse(SPEC, "t.toml").unwrap();
        assert_eq!(sweep.name, "t");
        // 2 datasets × 2 archs × 2 optimizers × 2 lrs × 2 seeds = 32, minus alexnet+sgd (8) and
        // tiny+lr1e-4 (8).
        assert_eq!(sweep.points.len(), 16);
        let first = &sweep.points[0];
        assert_eq!(first.id, "Syn_1-alexnet-adam-lr0.0001-bs64-ep2-seed0");
        assert_eq!(sweep.points[1].id, "Syn_1-alexnet-adam-lr0.0001-bs64-ep2-seed1", "seed varies fastest");
        assert_eq!(first.values["dataset"], "Syn_1");
        assert_eq!(first.values["momentum"], "", "momentum does not apply to adam");
        assert_eq!(first.values["beta2"], "0.999");
        assert_eq!(first.values.iter().count(), GRID_KEYS.len());
        assert_eq!(first.values.get("nesterov"), Some(&String::new()));
        assert_eq!(first.values.get("bogus"), None);
        assert_eq!(first.task.train.test_sets.len(), 5, "B1234 plus the four single-band-removed sets");
        assert_eq!(first.task.train.eval_every_steps, 5);
        assert!(sweep.points.iter().all(|p| !(p.values["arch"] == "alexnet" && p.values["optimizer"] == "sgd")));
        assert!(sweep.points.iter().all(|p| !(p.values["arch"] == "tiny" && p.values["lr"] == "0.0001")));
        let h = sweep.heatmap.clone().unwrap();
        assert_eq!((h.eps, h.layers, h.chunks), (vec![2.0, 4.0], LayerChoice::All, Chunking::Cells(100)));
        assert_eq!(parse(SPEC, "t.toml").unwrap(), sweep, "deterministic");
    }

    #[test]
    fn every_setting_reaches_the_train_task() {
        let spec = r#"
[[dataset]]
kind = "syn"
band = 3
train = 100
test = 20
seed = 7
special_energy = 0.25
[model]
arch = "resnet18"
[train]
optimizer = "sgd"
lr = 0.1
batch_size = 32
epochs = 4
seed = 9
schedule = "step"
step_every = 2
gamma = 0.5
momentum = 0.8
nesterov = true
weight_decay = 5e-4
augment_flip = true
augment_crop = 4
[eval]
test_sets = ["B1234", "b13"]
every_steps = 3
steps_epochs = 2
test_limit = 10
clip = true
"#;
        let sweep = parse(spec, "s.toml").unwrap();
        assert_eq!(sweep.points.len(), 1);
        assert_eq!(sweep.name, "sweep");
        assert!(sweep.heatmap.is_none());
        let p = &sweep.points[0];
        let mut syn = SynConfig::new(Band::new(3).unwrap(), 7);
        (syn.train, syn.test, syn.special_energy) = (100, 20, 0.25);
        let expected = TrainTask {
            dataset: DatasetSource::Syn(syn),
            train: TrainConfig {
                model: "resnet18".into(),
                classes: 4,
                optimizer: Optimizer::Sgd { momentum: 0.8, weight_decay: 5e-4, nesterov: true },
                lr: 0.1,
                schedule: LrSchedule::Step { every_epochs: 2, gamma: 0.5 },
                batch_size: 32,
                epochs: 4,
                seed: 9,
                augment: Augment { flip: true, crop_padding: 4 },
                test_sets: vec![BandSet::ALL, "B13".parse().unwrap()],
                band_layout: BandLayout::default(),
                clip_filtered: true,
                eval_every_steps: 3,
                eval_steps_epochs: 2,
                test_limit: 10,
                precision: Default::default(),
                memory_format: Default::default(),
                keep_epochs: Vec::new(),
            },
        };
        assert_eq!(p.task, expected);
        assert_eq!(p.id, "Syn_3-resnet18-sgd-lr0.1-bs32-ep4-seed9");
        assert_eq!((p.values["momentum"].as_str(), p.values["beta1"].as_str()), ("0.8", ""));
    }

    /// The example in this module's documentation is a valid spec.
    #[test]
    fn the_documented_example_parses() {
        let source = include_str!("spec.rs");
        let example: String = source
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .map(|l| l.strip_prefix(' ').unwrap_or(l))
            .skip_while(|l| *l != "```toml")
            .skip(1)
            .take_while(|l| *l != "```")
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(example.contains("[[include]]"), "example found");
        let sweep = parse(&example, "doc.toml").unwrap();
        // 2 bands × 2 archs × (adam: 2 lrs × 2 seeds + sgd: 2 lrs × 2 seeds), minus resnet18+sgd
        // (2 × 4), plus one included resnet18+sgd point.
        assert_eq!(sweep.points.len(), 2 * 2 * 8 - 8 + 1);
        let last = sweep.points.last().unwrap();
        assert_eq!(last.id, "Syn_1-resnet18-sgd-lr0.1-bs64-ep3-seed0", "the include, with the first dataset and seed");
        assert_eq!(last.task.train.lr, 0.1);
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let cases: Vec<(String, usize, &str)> = vec![
            (SPEC.replace("epochs = 2", "epochz = 2"), 16, "epochz"),
            (SPEC.replace("[eval]", "[evaluation]"), 19, "evaluation"),
            (SPEC.replace("lr = [1e-4, 0.01]", "lr = [1e-4, -1.0]"), 14, "lr must be a positive number, got -1.0"),
            (SPEC.replace("lr = [1e-4, 0.01]", "lr = [\n  1e-4,\n  -1.0,\n]"), 16, "lr must be a positive number"),
            (SPEC.replace("lr = [1e-4, 0.01]", "lr = \"fast\""), 14, "lr must be a positive number, got \"fast\""),
            (SPEC.replace("batch_size = 64", "batch_size = 0"), 15, "batch_size must be a positive integer"),
            (SPEC.replace("epochs = 2", "epochs = -2"), 16, "epochs must be a positive integer"),
            (SPEC.replace("arch = [\"alexnet\", \"tiny\"]", "arch = [\"vgg\"]"), 10, "unknown arch \"vgg\""),
            (SPEC.replace("\"minus_one\"", "\"B5\""), 20, "test_sets: there is no band 5"),
            (SPEC.replace("band = [1, 4]", "band = [1, 7]"), 5, "band must be 1-4"),
            (SPEC.replace("eps = [2.0, 4.0]", "eps = [0.0]"), 24, "eps must be a positive number"),
            (SPEC.replace("eps = [2.0, 4.0]", "eps = [4.0, 4]"), 24, "eps lists 4 twice"),
            (SPEC.replace("lr = [1e-4, 0.01]", "lr = []"), 14, "lr is an empty list"),
            (SPEC.replace("seed = [0, 1]", "seed = [0, 1, 0]"), 17, "seed lists 0 twice"),
            (SPEC.replace("optimizer = \"sgd\"", "optimiser = \"sgd\""), 30, "unknown grid key \"optimiser\""),
            (
                SPEC.replace("arch = \"tiny\"\nlr = 0.0001", "arch = \"tiny\"\nlr = 0.5"),
                34,
                "exclude: lr = 0.5 is not among",
            ),
            (SPEC.replace("test = 40", "test = 40\npath = \"/x\""), 8, "path applies to kind \"cifar10\""),
            (SPEC.replace("band = [1, 4]\n", ""), 4, "a syn dataset needs band"),
            (SPEC.replace("kind = \"syn\"", "kind = \"svhn\""), 4, "unknown kind \"svhn\""),
            (SPEC.replace("every_steps = 5", "every_steps = -5"), 21, "every_steps must be a non-negative integer"),
            (SPEC.replace("layers = true", "layers = [\"conv1\", \"layer1\"]"), 25, "alexnet has no layer \"layer1\""),
            (
                SPEC.replace("chunk_cells = 100", "chunk_cells = 100\nchunks_per_map = 4"),
                27,
                "chunk_cells or chunks_per_map",
            ),
            (SPEC.replace("chunk_cells = 100", "chunk_cells = 0"), 26, "chunk_cells must be a positive integer"),
            (SPEC.replace("chunk_cells = 100", "seed = -1"), 26, "seed must be a non-negative integer"),
            (SPEC.replace("epochs = 2", "epochs = 2\nbeta1 = 1.5"), 17, "beta1 must be in [0, 1)"),
            (SPEC.replace("epochs = 2", "epochs = 2\ngamma = 0.5"), 17, "gamma applies to schedule = \"step\""),
            (
                SPEC.replace("optimizer = [\"adam\", \"sgd\"]", "optimizer = \"adam\"\nmomentum = 0.9")
                    .replace("optimizer = \"sgd\"", "lr = 0.01"),
                14,
                "momentum applies to optimizer = \"sgd\"",
            ),
            (
                SPEC.replace("epochs = 2", "epochs = 2\nmomentum = 0\nnesterov = true"),
                18,
                "nesterov = true needs momentum > 0",
            ),
            (SPEC.replace("name = \"t\"", "name = \"\""), 1, "name must not be empty"),
            (
                SPEC.replace("band = [1, 4]", "band = [1, 4]\n[[dataset]]\nkind = \"syn\"\nband = 4"),
                7,
                "dataset Syn_4 appears twice",
            ),
            (SPEC.replace("batch_size = 64", "batch_size = { n = 64 }"), 15, "batch_size: invalid type: map"),
            (SPEC.replace("epochs = 2\n", ""), 12, "[train] needs epochs: the sweep trains [model] arch"),
            (
                SPEC.to_string() + "\n[[include]]\ndataset = \"Syn_9\"\n",
                37,
                "include: dataset = \"Syn_9\" is not one of",
            ),
        ];
        for (text, line, what) in cases {
            let err = parse(&text, "s.toml").unwrap_err();
            let shown = err.to_string();
            assert!(
                err.line == line && shown.starts_with(&format!("s.toml:{line}: ")),
                "{what}: line {line} wanted: {shown}"
            );
            assert!(shown.contains(what), "{what}: {shown}");
            assert!(!shown.contains('\n'), "one line: {shown}");
        }
    }

    #[test]
    fn include_adds_points_even_with_new_values_or_excluded() {
        let base = parse(SPEC, "t.toml").unwrap();
        let spec = SPEC.to_string() + "\n[[include]]\narch = \"alexnet\"\noptimizer = \"sgd\"\nseed = 1\n";
        let sweep = parse(&spec, "t.toml").unwrap();
        assert_eq!(sweep.points.len(), 17, "an include overrides the excludes");
        assert_eq!(sweep.points[16].id, "Syn_1-alexnet-sgd-lr0.0001-bs64-ep2-seed1");
        let spec = SPEC.to_string() + "\n[[include]]\narch = \"tiny\"\nlr = 0.5\nbatch_size = 8\n";
        let sweep = parse(&spec, "t.toml").unwrap();
        assert_eq!(sweep.points.len(), 17);
        assert_eq!(&sweep.points[..16], &base.points[..], "the grid itself is unchanged");
        let added = &sweep.points[16];
        assert_eq!(added.id, "Syn_1-tiny-adam-lr0.5-bs8-ep2-seed0");
        assert_eq!((added.task.train.lr, added.task.train.batch_size), (0.5, 8));
        // Including a point the grid already has adds nothing.
        let spec = SPEC.to_string() + "\n[[include]]\narch = \"alexnet\"\n";
        assert_eq!(parse(&spec, "t.toml").unwrap().points.len(), 16);
    }

    #[test]
    fn keys_that_do_not_apply_do_not_multiply_points() {
        let spec = "[[dataset]]\nkind = \"syn\"\nband = 1\n[model]\narch = \"tiny\"\n[train]\noptimizer = [\"adam\", \"sgd\"]\nlr = 0.01\nbatch_size = 8\nepochs = 1\nmomentum = [0.0, 0.9]\nbeta1 = [0.8, 0.9]\n";
        let sweep = parse(spec, "t.toml").unwrap();
        let ids: Vec<&str> = sweep.points.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "Syn_1-tiny-adam-lr0.01-bs8-ep1-b10.8-seed0",
                "Syn_1-tiny-adam-lr0.01-bs8-ep1-b10.9-seed0",
                "Syn_1-tiny-sgd-lr0.01-bs8-ep1-mom0-seed0",
                "Syn_1-tiny-sgd-lr0.01-bs8-ep1-mom0.9-seed0",
            ]
        );
        assert_eq!(
            sweep.points[2].task.train.optimizer,
            Optimizer::Sgd { momentum: 0.0, weight_decay: 0.0, nesterov: false }
        );
        let Optimizer::Adam { beta1, beta2, eps, .. } = sweep.points[0].task.train.optimizer else { panic!("adam") };
        assert_eq!((beta1, beta2, eps), (0.8, 0.999, 1e-8));
    }

    #[test]
    fn datasets_of_every_kind_and_names() {
        let spec = r#"
[[dataset]]
kind = "syn"
band = [2, 3]
seed = [0, 5]
name = "small"
train = 40
test = 8
[[dataset]]
kind = "cifar10"
path = "/data/cifar"
[[dataset]]
kind = "npy"
train_images = "a/x.npy"
train_labels = "a/y.npy"
test_images = "a/tx.npy"
test_labels = "a/ty.npy"
size = [32, 32]
[model]
arch = "tiny"
classes = 10
[train]
lr = 0.1
batch_size = 8
epochs = 1
schedule = ["constant", "cosine"]
min_lr = 0.001
[eval]
test_sets = "all_minus_one"
[heatmap]
eps = 1
chunks_per_map = 5
layers = ["fc", "all"]
"#;
        let sweep = parse(spec, "d.toml").unwrap();
        let datasets: Vec<&str> = sweep.points.iter().step_by(2).map(|p| p.values["dataset"].as_str()).collect();
        assert_eq!(datasets, ["small_Syn_2s0", "small_Syn_2s5", "small_Syn_3s0", "small_Syn_3s5", "cifar10", "tx"]);
        assert_eq!(sweep.points[1].id, "small_Syn_2s0-tiny-adam-lr0.1-bs8-ep1-schedcosine-seed0");
        assert_eq!(sweep.points[1].task.train.schedule, LrSchedule::Cosine { min_lr: 0.001 });
        assert!(sweep.points.iter().all(|p| p.task.train.classes == 10 && p.task.train.test_sets.len() == 4));
        let h = sweep.heatmap.unwrap();
        assert_eq!((h.chunks, h.layers, h.eps), (Chunking::PerMap(5), LayerChoice::All, vec![1.0]));
        assert_eq!((h.images, h.batch, h.seed), (500, 256, 0), "defaults");
        assert_eq!(Chunking::PerMap(5).chunks(514), 5);
        assert_eq!(Chunking::PerMap(600).chunks(514), 514);
        assert_eq!(Chunking::Cells(64).chunks(514), 9);
    }

    #[test]
    fn an_exploding_grid_is_refused_before_expanding() {
        let many: Vec<String> = (0..1000).map(|s| s.to_string()).collect();
        let spec = format!(
            "[[dataset]]\nkind = \"syn\"\nband = 1\n[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = [{0}]\nepochs = [{0}]\nseed = [{0}]\n",
            many[1..].join(", ")
        );
        let err = parse(&spec, "huge.toml").unwrap_err().to_string();
        assert!(err.starts_with("huge.toml:1: the grid has over 10000000 points"), "{err}");
    }

    #[test]
    fn a_hundred_thousand_point_grid_expands() {
        let seeds: Vec<String> = (0..2500).map(|s| s.to_string()).collect();
        let spec = format!(
            "[[dataset]]\nkind = \"syn\"\nband = [1, 2, 3, 4]\n[model]\narch = [\"tiny\", \"alexnet\"]\n[train]\nlr = [0.1, 0.01, 0.001, 0.0001, 0.00001]\nbatch_size = 64\nepochs = 1\nseed = [{}]\n",
            seeds.join(", ")
        );
        let sweep = parse(&spec, "big.toml").unwrap();
        assert_eq!(sweep.points.len(), 100_000);
        let ids: HashSet<_> = sweep.points.iter().map(|p| &p.id).collect();
        assert_eq!(ids.len(), 100_000, "ids are unique");
        assert_eq!(sweep.points[99_999].id, "Syn_4-alexnet-adam-lr0.00001-bs64-ep1-seed2499");
    }
}
