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
//! kind = "syn"             # syn | cifar10 | npy | idx | folder
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
//! # kind = "idx", train_images = "mnist/train-images-idx3-ubyte.gz", train_labels = "…",
//! #   test_images = "mnist/t10k-images-idx3-ubyte.gz", test_labels = "…"   # MNIST and kin, as
//! #                        # downloaded: gzipped or not (told by the bytes); uint8 [N, H, W] images
//! #   channels = 3         # idx: the gray plane replicated to the 3 channels every model takes
//! #                        # (the default, and the only value models take today; 1 is refused)
//! #   size = [H, W]        # idx: read from test_images' header when not given
//! # kind = "folder", train = "DIR", test = "DIR", size = 32   # one sub-directory per class
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
//! # [heatmap], [dfm], [bands], …: the analyses, one section per kind; each section's keys
//! # are documented beside its parser, in common/src/task/<kind>.rs.
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
use crate::spectrum::Shape2;
use crate::syn::SynConfig;
use crate::task::{
    Analyses, Augment, DatasetSource, LrSchedule, MemoryFormat, Optimizer, Precision, RawAnalyses, TrainConfig,
    TrainTask,
};
use crate::text::one_line;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use toml::{Spanned, Value};

mod assemble;
mod checks;
mod ctx;
mod datasets;
mod grid;
mod inputs;
mod models;
mod raw;
mod space;
pub use crate::text::format_number;
use assemble::*;
use checks::*;
use ctx::*;
use datasets::*;
use grid::*;
use inputs::*;
pub use inputs::{Probe, SpecInputs};
use models::*;
use raw::*;
pub use space::Space;
use space::*;

/// What an analysis section's parser (each kind's, in `crate::task`) uses of the spec's machinery.
pub(crate) mod section {
    pub(crate) use super::checks::*;
    pub(crate) use super::ctx::Ctx;
    pub(crate) use super::raw::{List, Scalar, Values};
    pub(crate) use super::{
        format_number, Chunking, GridPoint, SpecError, ARCHS, MAX_BATCH, MAX_CLASSES, MAX_IMAGE_SIDE,
    };
    pub(crate) use std::ops::Range;
    pub(crate) use toml::Value;

    /// What a section may check against: the grid's axes it can depend on.
    pub(crate) struct GridAxes<'a> {
        pub(crate) archs: &'a [String],
        pub(crate) dataset_labels: &'a [String],
        pub(crate) datasets: &'a [crate::task::DatasetSource],
        /// Whether the spec trains models (given models only: no checkpoints, no epochs).
        pub(crate) trains: bool,
    }
}

// Each analysis kind's part of a spec, named here as before the sections moved to their kinds.
pub use crate::task::{AtEpochs, BandsSpec, ClassChoice, DfmSpec, HeatmapSpec, LayerChoice, MAX_KEPT_EPOCHS};

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
    /// Values given key by key, as a point a search strategy made (a stored one read back):
    /// keys not in [`GRID_KEYS`] are left out, missing or blank ones do not apply.
    pub fn from_labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> GridValues {
        let mut labels = vec![Vec::new(); AXES];
        let mut idx = [NOT_APPLICABLE; AXES];
        for (key, label) in pairs {
            if let (Some(axis), false) = (GRID_KEYS.iter().position(|k| *k == key), label.is_empty()) {
                labels[axis] = vec![label.to_string()];
                idx[axis] = 0;
            }
        }
        GridValues { labels: Arc::new(labels), idx }
    }

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
    /// The analysis sections (`[heatmap]`, `[dfm]`, `[bands]`, …), one field per kind.
    pub analyses: Analyses,
    /// The space the points come from (`points` is the grid strategy's walk of it).
    pub space: Arc<Space>,
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
/// Tasks one sweep may plan (each costs the coordinator a few KB of memory). The spec bounds its
/// points by it (each plans at least one task); the coordinator's planner counts the tasks.
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

/// Parse and expand spec text; `file` names it in errors. What the spec names on the file
/// system (npy headers, image folders, globs) is read live.
pub fn parse(text: &str, file: &str) -> Result<Sweep, SpecError> {
    Ok(parse_probing(text, file, &crate::files::FileSystem)?.0)
}

/// Parse, asking `probe` what the spec needs of the file system (npy headers, image folders,
/// globs), and return what it answered ([`SpecInputs`]) for a run to record. Parsing does no
/// I/O itself: a run opening passes the file system (`files::FileSystem`).
pub fn parse_probing(text: &str, file: &str, probe: &dyn Probe) -> Result<(Sweep, SpecInputs), SpecError> {
    let inputs = Inputs::probing(probe);
    let sweep = parse_with(text, file, &inputs)?;
    Ok((sweep, inputs.recorded.into_inner()))
}

/// [`parse_probing`] against the file system: what the tests and examples use.
pub fn parse_recording(text: &str, file: &str) -> Result<(Sweep, SpecInputs), SpecError> {
    parse_probing(text, file, &crate::files::FileSystem)
}

/// [`parse`] against what a run recorded when it opened, touching no file: the same spec
/// gives the same points and tasks whatever the file system holds now (a model added to or
/// renamed in a globbed directory, a folder deleted, a relative path from another directory).
pub fn parse_replaying(text: &str, file: &str, recorded: &SpecInputs) -> Result<Sweep, SpecError> {
    parse_with(text, file, &Inputs::replaying(recorded))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heatmap::CellSelection;

    #[test]
    fn dfm_section_is_read_with_defaults_and_bad_values_are_named() {
        let base = "[[dataset]]\nkind = \"syn\"\nband = 1\n[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\n[dfm]\n";
        let d = parse(base, "s.toml").unwrap().analyses.dfm.unwrap();
        assert_eq!(
            (d.patch, d.top.as_slice(), d.images, d.classes.clone()),
            (1, &[1.0, 5.0, 10.0, 20.0][..], 500, ClassChoice::All)
        );
        assert_eq!((d.units(Shape2::new(32, 32)), d.chunks.chunks(d.units(Shape2::new(32, 32)))), (514, 9));
        let d = parse(&format!("{base}patch = 4\ntop = [2.5]\nclasses = [0, 1]\nchunks_per_map = 2\n"), "s.toml")
            .unwrap()
            .analyses
            .dfm
            .unwrap();
        assert_eq!(
            (d.patch, d.units(Shape2::new(32, 32)), d.top.as_slice(), d.classes.of(4)),
            (4, 64, &[2.5][..], vec![0, 1])
        );
        assert_eq!(
            parse(&format!("{base}classes = \"all\"\n"), "s.toml").unwrap().analyses.dfm.unwrap().classes,
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
        assert_eq!(radii.analyses.bands, None, "sufficiency = false plans no band-sufficiency tasks");
        let fractions = parse(&format!("{base}[bands]\nfractions = [0.125, 0.5, 1]\n"), "s.toml").unwrap();
        assert_eq!(fractions.points[0].task.train.band_layout.upper_radii, [4.0, 16.0, 32.0]);
        assert!(fractions.analyses.bands.is_some());
        let cells = |text: &str| {
            parse(&format!("{base}[heatmap]\neps = 4\ncells = {text}\n"), "s.toml")
                .map(|s| s.analyses.heatmap.unwrap().cells)
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

    /// Parsing asks its caller's probe and touches no file: a probe that answers from memory
    /// plans datasets and models that do not exist on disk, its refusals carry the spec's line,
    /// and what it answered is what a run records.
    #[test]
    fn parsing_asks_the_probe_and_touches_no_file() {
        struct Answers;
        impl Probe for Answers {
            fn npy_image_size(&self, path: &Path) -> Result<[usize; 2], String> {
                if path.ends_with("broken.npy") {
                    return Err("not an npy file".into());
                }
                Ok([16, 16])
            }
            fn idx_image_size(&self, _: &Path) -> Result<[usize; 2], String> {
                Ok([28, 28])
            }
            fn folder_classes(&self, _: &Path) -> Result<Vec<String>, String> {
                Ok(vec!["ant".into(), "bee".into(), "cat".into(), "dog".into()])
            }
            fn glob(&self, pattern: &str) -> Result<Vec<PathBuf>, String> {
                Ok(vec![PathBuf::from(pattern.replace('*', "m1")), PathBuf::from(pattern.replace('*', "m2"))])
            }
        }
        let text = "[[dataset]]\nkind = \"npy\"\ntrain_images = \"/nowhere/a\"\ntrain_labels = \"/nowhere/b\"\ntest_images = \"/nowhere/x.npy\"\ntest_labels = \"/nowhere/d\"\n[[model]]\nkind = \"torchscript\"\nglob = \"/nowhere/zoo/*.pt\"\n";
        let (sweep, inputs) = parse_probing(text, "s.toml", &Answers).unwrap();
        assert_eq!(sweep.points.len(), 2, "one point per model the probe listed");
        assert_eq!(sweep.points[0].task.dataset.image_shape(), Some(Shape2::new(16, 16)));
        assert_eq!(inputs.npy_sizes.get("/nowhere/x.npy"), Some(&[16, 16]));
        assert_eq!(inputs.globs["/nowhere/zoo/*.pt"].len(), 2);
        // Replayed, the same answers plan the same sweep.
        assert_eq!(parse_replaying(text, "s.toml", &inputs).unwrap(), sweep);
        let broken = text.replace("x.npy", "broken.npy");
        let err = parse_probing(&broken, "s.toml", &Answers).unwrap_err().to_string();
        assert!(
            err.starts_with("s.toml:2: an npy dataset needs its image size") && err.contains("not an npy file"),
            "{err}"
        );
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
            assert_eq!(crate::files::wildcard_match(pattern.as_bytes(), name.as_bytes()), expected, "{pattern} {name}");
        }
        let hostile = "*".repeat(16) + "b";
        let name = "a".repeat(250);
        let started = std::time::Instant::now();
        assert!(!crate::files::wildcard_match(hostile.as_bytes(), name.as_bytes()));
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
        let plain = parse(base, "s.toml").unwrap().analyses.heatmap.unwrap();
        assert_eq!((plain.precision, plain.memory_format), (Precision::Fp32, MemoryFormat::Auto));
        let fast = format!("{base}precision = \"bf16\"\nmemory_format = \"channels_last\"\n");
        let fast = parse(&fast, "s.toml").unwrap().analyses.heatmap.unwrap();
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
                crate::files::load_spec(&path).unwrap_or_else(|e| panic!("{e}"));
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
            // Counted before listed: 4 × 10⁹ kept epochs would be 16 GB per point.
            (
                format!(
                    "{}[heatmap]\neps = 4\nat_epochs = \"every\"\n",
                    base.replace("epochs = 1", "epochs = 4000000000")
                ),
                "at_epochs keeps 3999999999 checkpoints of point",
            ),
        ] {
            let err = parse(&text, "s.toml").unwrap_err().to_string();
            assert!(err.contains(what), "{what}: {err}");
        }
        // 4 000 points × (1 + 2 ε × 514 one-cell chunks) is over two million tasks, but how many
        // tasks a point plans is the planner's answer (the coordinator refuses it, before
        // planning, `kinds::count_tasks`): the spec bounds only the points it builds.
        let seeds: Vec<String> = (0..4000).map(|s| s.to_string()).collect();
        let big = format!("{}seed = [{}]\n[heatmap]\neps = [2, 4]\nchunk_cells = 1\n", base, seeds.join(", "));
        assert_eq!(parse(&big, "s.toml").unwrap().points.len(), 4000);
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
        let h = sweep.analyses.heatmap.clone().unwrap();
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
        assert!(sweep.analyses.heatmap.is_none());
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
        let source = include_str!("mod.rs");
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
        let h = sweep.analyses.heatmap.unwrap();
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
