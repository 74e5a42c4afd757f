//! Sweep specs (TOML): parsing, validation with errors that name the key and the line, and grid
//! expansion into one [`GridPoint`] (a `TrainTask` plus its grid values) per combination.
//!
//! A complete spec (every list-valued key under `[[dataset]]`, `[model]` and `[train]` expands;
//! single values are one-element lists):
//!
//! ```toml
//! name = "syn-demo"
//!
//! [[dataset]]              # one or more; each expands on its own
//! kind = "syn"             # syn | cifar10 | npy
//! band = [1, 4]            # syn: the band of class 3
//! train = 2000             # syn: images per split
//! test = 400
//! seed = 0                 # syn: generator seed
//! # kind = "cifar10", path = "/data/cifar-10-batches-bin"
//! # kind = "npy", train_images = "…", train_labels = "…", test_images = "…", test_labels = "…"
//!
//! [model]
//! arch = ["alexnet", "resnet18"]   # alexnet | resnet18 | tiny
//!
//! [train]
//! optimizer = "adam"       # adam | sgd
//! lr = [1e-4]
//! batch_size = 64
//! epochs = 3
//! seed = [0, 1]
//! schedule = "constant"    # constant | step | cosine
//! momentum = 0.9           # sgd
//! weight_decay = 0.0
//! step_every = 10          # step schedule: epochs between decays …
//! gamma = 0.1              # … and the factor
//! augment_flip = false
//! augment_crop = 0         # pixels of padding for random crops (0: off)
//!
//! [eval]
//! test_sets = ["B1234", "B124"]   # "minus_one" adds every single-band-removed set
//! every_steps = 10         # also evaluate every k steps …
//! steps_epochs = 1         # … during the first this many epochs
//! test_limit = 0           # evaluate on the first N test images (0: all)
//! clip = false             # clip band-filtered images to [0, 1]
//!
//! [heatmap]                # optional: Fourier heatmaps of every trained model
//! eps = [4.0]
//! layers = true            # true: every named layer; false; or a list of names
//! images = 500             # test images per heatmap (0: all)
//! batch = 256              # perturbed images per forward pass
//! chunk_cells = 64         # canonical cells per heatmap task
//! seed = 0
//!
//! [[exclude]]              # drop grid points matching every key given
//! arch = "alexnet"
//! optimizer = "sgd"
//!
//! [[include]]              # add points; unspecified keys take each list's first value
//! arch = "tiny"
//! lr = 0.01
//! ```
//!
//! Grid order is deterministic: datasets (in file order, each dataset's list values in order),
//! then `arch`, `optimizer`, `lr`, `batch_size`, `epochs`, `schedule`, `momentum`, `weight_decay`,
//! `seed`, the last varying fastest; includes follow, duplicates and excluded points are removed.

use crate::bands::{Band, BandLayout, BandSet};
use crate::syn::SynConfig;
use crate::task::{Augment, DatasetSource, LrSchedule, Optimizer, TrainConfig, TrainTask};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct SpecError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
enum OneOrMany<T> {
    Many(Vec<T>),
    One(T),
}

impl<T: Clone> OneOrMany<T> {
    fn values(&self) -> Vec<T> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

type List<T> = Spanned<OneOrMany<T>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: Option<String>,
    dataset: Vec<Spanned<RawDataset>>,
    model: RawModel,
    train: RawTrain,
    #[serde(default)]
    eval: Option<RawEval>,
    heatmap: Option<Spanned<RawHeatmap>>,
    #[serde(default)]
    include: Vec<Spanned<toml::Table>>,
    #[serde(default)]
    exclude: Vec<Spanned<toml::Table>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataset {
    kind: Spanned<String>,
    band: Option<List<i64>>,
    train: Option<Spanned<i64>>,
    test: Option<Spanned<i64>>,
    seed: Option<List<i64>>,
    special_energy: Option<Spanned<f64>>,
    path: Option<PathBuf>,
    train_images: Option<PathBuf>,
    train_labels: Option<PathBuf>,
    test_images: Option<PathBuf>,
    test_labels: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModel {
    arch: List<String>,
    classes: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrain {
    optimizer: Option<List<String>>,
    lr: List<f64>,
    batch_size: List<i64>,
    epochs: List<i64>,
    seed: Option<List<i64>>,
    schedule: Option<List<String>>,
    momentum: Option<List<f64>>,
    weight_decay: Option<List<f64>>,
    step_every: Option<Spanned<i64>>,
    gamma: Option<Spanned<f64>>,
    min_lr: Option<Spanned<f64>>,
    augment_flip: Option<bool>,
    augment_crop: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEval {
    test_sets: Option<Spanned<Vec<String>>>,
    every_steps: Option<Spanned<i64>>,
    steps_epochs: Option<Spanned<i64>>,
    test_limit: Option<Spanned<i64>>,
    clip: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeatmap {
    eps: List<f64>,
    layers: Option<Spanned<Layers>>,
    images: Option<Spanned<i64>>,
    batch: Option<Spanned<i64>>,
    chunk_cells: Option<Spanned<i64>>,
    seed: Option<i64>,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(untagged)]
enum Layers {
    All(bool),
    Named(Vec<String>),
}

/// Which layer maps a heatmap computes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum LayerChoice {
    None,
    All,
    Named(Vec<String>),
}

/// The heatmap part of a spec.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HeatmapSpec {
    pub eps: Vec<f64>,
    pub layers: LayerChoice,
    pub images: usize,
    pub batch: usize,
    pub chunk_cells: usize,
    pub seed: u64,
}

/// One point of the grid: its values (for names, `results.csv` and include/exclude matching) and
/// the training task it stands for.
#[derive(Clone, Debug, PartialEq)]
pub struct GridPoint {
    /// A stable, readable id, e.g. `Syn_4-alexnet-adam-lr0.0001-bs64-ep3-seed0`.
    pub id: String,
    pub values: BTreeMap<String, String>,
    pub task: TrainTask,
}

/// A parsed, validated sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct Sweep {
    pub name: String,
    pub points: Vec<GridPoint>,
    pub heatmap: Option<HeatmapSpec>,
}

/// The grid keys, in expansion order (last varies fastest).
pub const GRID_KEYS: [&str; 10] =
    ["dataset", "arch", "optimizer", "lr", "batch_size", "epochs", "schedule", "momentum", "weight_decay", "seed"];

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
}

impl Ctx<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())].bytes().filter(|&b| b == b'\n').count() + 1
    }

    /// An error at `key` inside the table spanning `span` (tables carry no per-key spans).
    fn err_at_key(&self, span: std::ops::Range<usize>, key: &str, message: impl Into<String>) -> SpecError {
        let end = span.end.min(self.text.len());
        let at = self.text[span.start..end].find(key).map_or(span.start, |i| span.start + i);
        self.err(at..at, message)
    }

    fn err(&self, span: std::ops::Range<usize>, message: impl Into<String>) -> SpecError {
        SpecError { file: self.file.to_string(), line: self.line(span.start), message: message.into() }
    }
}

/// Read and parse a spec file.
pub fn load(path: &Path) -> Result<Sweep, SpecError> {
    let text = std::fs::read_to_string(path).map_err(|e| SpecError {
        file: path.display().to_string(),
        line: 0,
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, &path.display().to_string())
}

/// Parse spec text; `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Sweep, SpecError> {
    let ctx = Ctx { file, text };
    let raw: RawSpec = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| ctx.line(s.start));
        SpecError { file: file.to_string(), line, message: e.message().trim().to_string() }
    })?;
    build(&ctx, raw)
}

fn positive(ctx: &Ctx, v: &Spanned<i64>, key: &str) -> Result<usize, SpecError> {
    match usize::try_from(*v.get_ref()) {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ctx.err(v.span(), format!("{key} must be a positive integer, got {}", v.get_ref()))),
    }
}

fn non_negative(ctx: &Ctx, v: &Spanned<i64>, key: &str) -> Result<usize, SpecError> {
    usize::try_from(*v.get_ref())
        .map_err(|_| ctx.err(v.span(), format!("{key} must not be negative, got {}", v.get_ref())))
}

fn list<T: Clone>(ctx: &Ctx, v: &List<T>, key: &str) -> Result<Vec<T>, SpecError> {
    let values = v.get_ref().values();
    if values.is_empty() {
        return Err(ctx.err(v.span(), format!("{key} is an empty list")));
    }
    Ok(values)
}

/// A dataset alternative: its grid label and source.
fn datasets(ctx: &Ctx, raw: &Spanned<RawDataset>) -> Result<Vec<(String, DatasetSource)>, SpecError> {
    let d = raw.get_ref();
    let span = raw.span();
    let kind = d.kind.get_ref().as_str();
    let only_for = |present: bool, key: &str, kinds: &str| {
        if present {
            Err(ctx.err(span.clone(), format!("dataset key {key} applies to kind {kinds}, not {kind:?}")))
        } else {
            Ok(())
        }
    };
    match kind {
        "syn" => {
            only_for(d.path.is_some(), "path", "cifar10")?;
            only_for(d.train_images.is_some() || d.test_images.is_some(), "train_images/test_images", "npy")?;
            let bands = match &d.band {
                Some(b) => list(ctx, b, "band")?,
                None => return Err(ctx.err(span, "a syn dataset needs band (1-4 or a list)")),
            };
            let seeds = match &d.seed {
                Some(s) => list(ctx, s, "dataset seed")?,
                None => vec![0],
            };
            let train = d.train.as_ref().map(|v| non_negative(ctx, v, "train")).transpose()?.unwrap_or(10_000);
            let test = d.test.as_ref().map(|v| positive(ctx, v, "test")).transpose()?.unwrap_or(2_000);
            let mut out = Vec::new();
            for &b in &bands {
                let band = u8::try_from(b).ok().and_then(|b| Band::new(b).ok()).ok_or_else(|| {
                    ctx.err(d.band.as_ref().expect("checked").span(), format!("band must be 1-4, got {b}"))
                })?;
                for &seed in &seeds {
                    let seed =
                        u64::try_from(seed).map_err(|_| ctx.err(span.clone(), "dataset seed must not be negative"))?;
                    let mut config = SynConfig { train, test, ..SynConfig::new(band, seed) };
                    if let Some(e) = &d.special_energy {
                        if !(e.get_ref().is_finite() && *e.get_ref() >= 0.0) {
                            return Err(ctx.err(e.span(), "special_energy must be a non-negative number"));
                        }
                        config.special_energy = *e.get_ref();
                    }
                    let label = if seeds.len() > 1 { format!("{}s{seed}", config.name()) } else { config.name() };
                    out.push((label, DatasetSource::Syn(config)));
                }
            }
            Ok(out)
        }
        "cifar10" => {
            only_for(d.band.is_some(), "band", "syn")?;
            let path = d.path.clone().ok_or_else(|| ctx.err(span, "a cifar10 dataset needs path"))?;
            Ok(vec![("cifar10".into(), DatasetSource::Cifar10 { path })])
        }
        "npy" => {
            only_for(d.band.is_some(), "band", "syn")?;
            let need = |p: &Option<PathBuf>, key: &str| {
                p.clone().ok_or_else(|| ctx.err(span.clone(), format!("an npy dataset needs {key}")))
            };
            let source = DatasetSource::Npy {
                train_images: need(&d.train_images, "train_images")?,
                train_labels: need(&d.train_labels, "train_labels")?,
                test_images: need(&d.test_images, "test_images")?,
                test_labels: need(&d.test_labels, "test_labels")?,
            };
            Ok(vec![(source.name(), source)])
        }
        other => Err(ctx.err(d.kind.span(), format!("unknown dataset kind {other:?}: use syn, cifar10 or npy"))),
    }
}

fn test_sets(ctx: &Ctx, raw: &Option<Spanned<Vec<String>>>) -> Result<Vec<BandSet>, SpecError> {
    let Some(raw) = raw else {
        return Ok(vec![BandSet::ALL, "B124".parse().expect("valid")]);
    };
    let mut out: Vec<BandSet> = Vec::new();
    for name in raw.get_ref() {
        let sets: Vec<BandSet> = if name == "minus_one" {
            (1..=4).map(|b| BandSet::ALL.without(Band::new(b).expect("1-4"))).collect()
        } else {
            vec![name.parse().map_err(|e| ctx.err(raw.span(), format!("test_sets: {e}")))?]
        };
        for s in sets {
            if !out.contains(&s) {
                out.push(s);
            }
        }
    }
    if out.is_empty() {
        return Err(ctx.err(raw.span(), "test_sets is empty"));
    }
    Ok(out)
}

fn build(ctx: &Ctx, raw: RawSpec) -> Result<Sweep, SpecError> {
    if raw.dataset.is_empty() {
        return Err(SpecError {
            file: ctx.file.into(),
            line: 1,
            message: "the spec needs at least one [[dataset]]".into(),
        });
    }
    let mut dataset_choices = Vec::new();
    for d in &raw.dataset {
        dataset_choices.extend(datasets(ctx, d)?);
    }
    let archs = list(ctx, &raw.model.arch, "arch")?;
    for a in &archs {
        if !["alexnet", "resnet18", "tiny"].contains(&a.as_str()) {
            return Err(ctx.err(raw.model.arch.span(), format!("unknown arch {a:?}: use alexnet, resnet18 or tiny")));
        }
    }
    let t = &raw.train;
    let optimizers = match &t.optimizer {
        Some(o) => list(ctx, o, "optimizer")?,
        None => vec!["adam".into()],
    };
    if let Some(bad) = optimizers.iter().find(|o| !["adam", "sgd"].contains(&o.as_str())) {
        let span = t.optimizer.as_ref().expect("present").span();
        return Err(ctx.err(span, format!("unknown optimizer {bad:?}: use adam or sgd")));
    }
    let lrs = list(ctx, &t.lr, "lr")?;
    if let Some(bad) = lrs.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
        return Err(ctx.err(t.lr.span(), format!("lr must be a positive number, got {bad}")));
    }
    let positive_list = |v: &List<i64>, key: &str| -> Result<Vec<usize>, SpecError> {
        list(ctx, v, key)?
            .into_iter()
            .map(|n| {
                usize::try_from(n)
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| ctx.err(v.span(), format!("{key} must be a positive integer, got {n}")))
            })
            .collect()
    };
    let batches = positive_list(&t.batch_size, "batch_size")?;
    let epochs = positive_list(&t.epochs, "epochs")?;
    let seeds: Vec<u64> = match &t.seed {
        Some(s) => list(ctx, s, "seed")?
            .into_iter()
            .map(|n| u64::try_from(n).map_err(|_| ctx.err(s.span(), format!("seed must not be negative, got {n}"))))
            .collect::<Result<_, _>>()?,
        None => vec![0],
    };
    let schedules = match &t.schedule {
        Some(s) => list(ctx, s, "schedule")?,
        None => vec!["constant".into()],
    };
    let step_every = t.step_every.as_ref().map(|v| positive(ctx, v, "step_every")).transpose()?.unwrap_or(10) as u32;
    let gamma = t.gamma.as_ref().map_or(0.1, |g| *g.get_ref());
    let min_lr = t.min_lr.as_ref().map_or(0.0, |g| *g.get_ref());
    let mut schedule_values = Vec::new();
    for s in &schedules {
        schedule_values.push(match s.as_str() {
            "constant" => LrSchedule::Constant,
            "step" => LrSchedule::Step { every_epochs: step_every, gamma },
            "cosine" => LrSchedule::Cosine { min_lr },
            other => {
                let span = t.schedule.as_ref().expect("present").span();
                return Err(ctx.err(span, format!("unknown schedule {other:?}: use constant, step or cosine")));
            }
        });
    }
    let momenta = match &t.momentum {
        Some(m) => list(ctx, m, "momentum")?,
        None => vec![0.9],
    };
    if let Some(bad) = momenta.iter().find(|m| !(0.0..1.0).contains(*m)) {
        return Err(
            ctx.err(t.momentum.as_ref().expect("present").span(), format!("momentum must be in [0, 1), got {bad}"))
        );
    }
    let decays = match &t.weight_decay {
        Some(w) => list(ctx, w, "weight_decay")?,
        None => vec![0.0],
    };
    if let Some(bad) = decays.iter().find(|w| !(w.is_finite() && **w >= 0.0)) {
        return Err(
            ctx.err(t.weight_decay.as_ref().expect("present").span(), format!("weight_decay must be >= 0, got {bad}"))
        );
    }
    let augment = Augment {
        flip: t.augment_flip.unwrap_or(false),
        crop_padding: t.augment_crop.as_ref().map(|v| non_negative(ctx, v, "augment_crop")).transpose()?.unwrap_or(0)
            as u32,
    };
    let eval = raw.eval.unwrap_or_default();
    let sets = test_sets(ctx, &eval.test_sets)?;
    let every_steps =
        eval.every_steps.as_ref().map(|v| non_negative(ctx, v, "every_steps")).transpose()?.unwrap_or(0) as u32;
    let steps_epochs =
        eval.steps_epochs.as_ref().map(|v| non_negative(ctx, v, "steps_epochs")).transpose()?.unwrap_or(1) as u32;
    let test_limit = eval.test_limit.as_ref().map(|v| non_negative(ctx, v, "test_limit")).transpose()?.unwrap_or(0);
    let classes = raw.model.classes.as_ref().map(|v| positive(ctx, v, "classes")).transpose()?;

    // Every grid axis as (label, value-index) pairs; the point is built from the chosen indices.
    let axes: Vec<Vec<String>> = vec![
        dataset_choices.iter().map(|(label, _)| label.clone()).collect(),
        archs.clone(),
        optimizers.clone(),
        lrs.iter().map(|v| format_number(*v)).collect(),
        batches.iter().map(|v| v.to_string()).collect(),
        epochs.iter().map(|v| v.to_string()).collect(),
        schedules.clone(),
        momenta.iter().map(|v| format_number(*v)).collect(),
        decays.iter().map(|v| format_number(*v)).collect(),
        seeds.iter().map(|v| v.to_string()).collect(),
    ];
    let make = |idx: &[usize]| -> GridPoint {
        let (dataset_label, source) = &dataset_choices[idx[0]];
        let optimizer = match optimizers[idx[2]].as_str() {
            "sgd" => Optimizer::Sgd { momentum: momenta[idx[7]], weight_decay: decays[idx[8]], nesterov: false },
            _ => match Optimizer::adam() {
                Optimizer::Adam { beta1, beta2, eps, .. } => {
                    Optimizer::Adam { weight_decay: decays[idx[8]], beta1, beta2, eps }
                }
                other => other,
            },
        };
        let classes = classes.unwrap_or(match source {
            DatasetSource::Syn(_) => crate::syn::CLASSES,
            _ => 10,
        });
        let values: BTreeMap<String, String> =
            GRID_KEYS.iter().zip(idx).zip(&axes).map(|((k, &i), axis)| (k.to_string(), axis[i].clone())).collect();
        let id = format!(
            "{}-{}-{}-lr{}-bs{}-ep{}{}-seed{}",
            dataset_label,
            archs[idx[1]],
            optimizers[idx[2]],
            axes[3][idx[3]],
            batches[idx[4]],
            epochs[idx[5]],
            varying_suffix(&axes, idx),
            seeds[idx[9]]
        );
        GridPoint {
            id,
            values,
            task: TrainTask {
                dataset: source.clone(),
                train: TrainConfig {
                    model: archs[idx[1]].clone(),
                    classes,
                    optimizer,
                    lr: lrs[idx[3]],
                    schedule: schedule_values[idx[6]],
                    batch_size: batches[idx[4]],
                    epochs: epochs[idx[5]] as u32,
                    seed: seeds[idx[9]],
                    augment,
                    test_sets: sets.clone(),
                    band_layout: BandLayout::default(),
                    clip_filtered: eval.clip.unwrap_or(false),
                    eval_every_steps: every_steps,
                    eval_steps_epochs: steps_epochs,
                    test_limit,
                },
            },
        }
    };

    let excludes: Vec<(std::ops::Range<usize>, BTreeMap<String, String>)> =
        raw.exclude.iter().map(|e| Ok((e.span(), grid_filter(ctx, e)?))).collect::<Result<_, SpecError>>()?;
    let excluded = |values: &BTreeMap<String, String>| {
        excludes.iter().any(|(_, f)| f.iter().all(|(k, v)| values.get(k) == Some(v)))
    };
    let mut points = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let total: usize = axes.iter().map(Vec::len).product();
    let mut idx = vec![0usize; axes.len()];
    for _ in 0..total {
        let point = make(&idx);
        if !excluded(&point.values) && seen.insert(point.id.clone()) {
            points.push(point);
        }
        for d in (0..idx.len()).rev() {
            idx[d] += 1;
            if idx[d] < axes[d].len() {
                break;
            }
            idx[d] = 0;
        }
    }
    for inc in &raw.include {
        let wanted = grid_filter(ctx, inc)?;
        let mut chosen = vec![0usize; axes.len()];
        for (k, v) in &wanted {
            let axis = GRID_KEYS.iter().position(|g| g == k).expect("grid_filter checks keys");
            chosen[axis] = axes[axis].iter().position(|a| a == v).ok_or_else(|| {
                ctx.err(inc.span(), format!("include: {k} = {v} is not among the spec's values {:?}", axes[axis]))
            })?;
        }
        let point = make(&chosen);
        if !excluded(&point.values) && seen.insert(point.id.clone()) {
            points.push(point);
        }
    }
    if points.is_empty() {
        return Err(SpecError {
            file: ctx.file.into(),
            line: 1,
            message: "the grid is empty (everything was excluded)".into(),
        });
    }

    let heatmap = match raw.heatmap {
        None => None,
        Some(h) => {
            let h = h.into_inner();
            let eps = list(ctx, &h.eps, "eps")?;
            if let Some(bad) = eps.iter().find(|e| !(e.is_finite() && **e > 0.0)) {
                return Err(ctx.err(h.eps.span(), format!("eps must be a positive number, got {bad}")));
            }
            let layers = match h.layers.as_ref().map(|l| l.get_ref().clone()) {
                None | Some(Layers::All(false)) => LayerChoice::None,
                Some(Layers::All(true)) => LayerChoice::All,
                Some(Layers::Named(names)) if names.is_empty() => LayerChoice::None,
                Some(Layers::Named(names)) => LayerChoice::Named(names),
            };
            Some(HeatmapSpec {
                eps,
                layers,
                images: h.images.as_ref().map(|v| non_negative(ctx, v, "images")).transpose()?.unwrap_or(500),
                batch: h.batch.as_ref().map(|v| positive(ctx, v, "batch")).transpose()?.unwrap_or(256),
                chunk_cells: h.chunk_cells.as_ref().map(|v| positive(ctx, v, "chunk_cells")).transpose()?.unwrap_or(64),
                seed: h.seed.map_or(0, |s| s.max(0) as u64),
            })
        }
    };
    Ok(Sweep { name: raw.name.unwrap_or_else(|| "sweep".into()), points, heatmap })
}

/// Keys beyond the always-named ones that vary in this grid, for readable ids.
fn varying_suffix(axes: &[Vec<String>], idx: &[usize]) -> String {
    let mut s = String::new();
    for (k, name) in [(6, "sched"), (7, "mom"), (8, "wd")] {
        if axes[k].len() > 1 {
            s.push_str(&format!("-{name}{}", axes[k][idx[k]]));
        }
    }
    s
}

/// A number as written in ids and `results.csv` (shortest round-trip form).
fn format_number(v: f64) -> String {
    format!("{v}")
}

/// An include/exclude table as grid key → value label (the same labels the grid uses).
fn grid_filter(ctx: &Ctx, table: &Spanned<toml::Table>) -> Result<BTreeMap<String, String>, SpecError> {
    let mut out = BTreeMap::new();
    for (k, v) in table.get_ref() {
        if !GRID_KEYS.contains(&k.as_str()) {
            return Err(ctx.err_at_key(
                table.span(),
                k,
                format!("unknown grid key {k:?} (use one of {})", GRID_KEYS.join(", ")),
            ));
        }
        let label = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) if matches!(k.as_str(), "lr" | "momentum" | "weight_decay") => {
                format_number(*i as f64)
            }
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => format_number(*f),
            other => return Err(ctx.err_at_key(table.span(), k, format!("{k}: expected a single value, got {other}"))),
        };
        out.insert(k.clone(), label);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(first.task.train.test_sets.len(), 5, "B1234 plus the four single-band-removed sets");
        assert_eq!(first.task.train.eval_every_steps, 5);
        assert!(sweep.points.iter().all(|p| !(p.values["arch"] == "alexnet" && p.values["optimizer"] == "sgd")));
        let h = sweep.heatmap.unwrap();
        assert_eq!((h.eps, h.layers, h.chunk_cells), (vec![2.0, 4.0], LayerChoice::All, 100));
        assert_eq!(parse(SPEC, "t.toml").unwrap().points, sweep.points, "deterministic");
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let cases = [
            (SPEC.replace("epochs = 2", "epochz = 2"), "line 16", "epochz"),
            (SPEC.replace("lr = [1e-4, 0.01]", "lr = [1e-4, -1.0]"), "line 14", "lr must be a positive number"),
            (SPEC.replace("batch_size = 64", "batch_size = 0"), "line 15", "batch_size must be a positive integer"),
            (SPEC.replace("arch = [\"alexnet\", \"tiny\"]", "arch = [\"vgg\"]"), "line 10", "unknown arch \"vgg\""),
            (SPEC.replace("\"minus_one\"", "\"B5\""), "line 20", "test_sets"),
            (SPEC.replace("band = [1, 4]", "band = [1, 7]"), "line 5", "band must be 1-4"),
            (SPEC.replace("eps = [2.0, 4.0]", "eps = [0.0]"), "line 24", "eps must be a positive number"),
            (SPEC.replace("lr = [1e-4, 0.01]", "lr = []"), "line 14", "lr is an empty list"),
            (SPEC.replace("optimizer = \"sgd\"", "optimiser = \"sgd\""), "line 30", "unknown grid key \"optimiser\""),
        ];
        for (text, line, what) in cases {
            let err = parse(&text, "s.toml").unwrap_err().to_string();
            assert!(err.starts_with(&format!("s.toml:{}:", &line[5..])) && err.contains(what), "{what}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn include_adds_points_and_unknown_values_are_refused() {
        let spec = SPEC.to_string() + "\n[[include]]\narch = \"alexnet\"\noptimizer = \"sgd\"\nseed = 1\n";
        let sweep = parse(&spec, "t.toml").unwrap();
        assert_eq!(sweep.points.len(), 16, "an included point that is also excluded stays out");
        let spec = SPEC.replace("[[exclude]]\narch = \"alexnet\"\noptimizer = \"sgd\"\n", "")
            + "\n[[include]]\narch = \"tiny\"\nlr = 0.5\n";
        let err = parse(&spec, "t.toml").unwrap_err().to_string();
        assert!(err.contains("include: lr = 0.5 is not among"), "{err}");
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
        let ids: std::collections::HashSet<_> = sweep.points.iter().map(|p| &p.id).collect();
        assert_eq!(ids.len(), 100_000, "ids are unique");
    }
}
