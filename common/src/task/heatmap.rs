//! Fourier heatmaps (SCIENCE.md §2–3): what a heatmap task says and reports, and the spec's
//! `[heatmap]` section that asks for them.
//!
//! ```toml
//! [heatmap]                # optional: Fourier heatmaps of every trained and given model
//! eps = [4.0]              # one heatmap per value
//! # cells = "all"          # or { max_radius = 20 } or { low_crop = 63 }: the rest are skipped (NaN)
//! # at_epochs = [1, 2, 5]  # also maps of the checkpoints after these epochs (or "every")
//! layers = true            # true: every named layer; false; or names such as ["conv1", "fc"]
//! images = 500             # test images per heatmap (0: all)
//! batch = 256              # perturbed images per forward pass
//! chunk_cells = 64         # canonical cells per heatmap task (or chunks_per_map = 8)
//! seed = 0
//! ```

use super::*;
use crate::heatmap::{CellSelection, CellStat};
use crate::spec::section::*;
use crate::spectrum::Cell;
use std::collections::BTreeMap;

/// A chunk of one Fourier heatmap (SCIENCE.md §2–3): the error rate (and layer cosine distances)
/// of `model` on the test split of `dataset`, perturbed at each of `cells` with norm `eps`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// Not `deny_unknown_fields` (serde cannot combine it with `flatten`): `AnalysisTarget`
// refuses the fields no one reads.
pub struct HeatmapTask {
    /// The model, the test set and how the model runs.
    #[serde(flatten)]
    pub target: AnalysisTarget,
    pub eps: f64,
    /// Canonical cells of this chunk (each stands for its conjugate too).
    pub cells: Vec<Cell>,
    /// Chunk number within the map (for names and logs).
    #[serde(default)]
    pub chunk: usize,
    /// Intermediate layers whose cosine-distance maps are wanted (empty: error map only).
    #[serde(default)]
    pub layers: Vec<String>,
    /// Seed of the per-image, per-channel signs `r`.
    pub seed: u64,
    /// Perturbed images per forward pass (bounds memory).
    pub batch: usize,
    /// The training epoch whose checkpoint is the model (`None`: the trained model, after the
    /// last epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u32>,
}

/// What a heatmap chunk reports: counts, not rates, so chunks merge by writing cells.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeatmapOutcome {
    pub eps: f64,
    pub chunk: usize,
    pub images: usize,
    /// Misclassified clean images out of `images`.
    pub clean: CellStat,
    /// Per canonical cell: misclassified perturbed images out of `n`.
    pub error: Vec<(Cell, CellStat)>,
    /// Per layer, per canonical cell: summed cosine distance out of `n`.
    pub layers: BTreeMap<String, Vec<(Cell, CellStat)>>,
    pub seconds: f64,
    /// Perturbed images pushed through the model per second.
    pub images_per_second: f64,
    pub device: String,
    /// What the model ran in: the precision (fp32 where bf16 was asked but the device lacks it)
    /// and the resolved memory format (never `Auto`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub precision: Precision,
    #[serde(default, skip_serializing_if = "is_contiguous")]
    pub memory_format: MemoryFormat,
}

// The `[heatmap]` section.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeatmap {
    pub(crate) eps: Spanned<Values>,
    pub(crate) at_epochs: List,
    pub(crate) cells: Scalar,
    pub(crate) layers: List,
    pub(crate) images: Scalar,
    pub(crate) batch: Scalar,
    pub(crate) chunk_cells: Scalar,
    pub(crate) chunks_per_map: Scalar,
    pub(crate) seed: Scalar,
    pub(crate) precision: Scalar,
    pub(crate) memory_format: Scalar,
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

    /// How many epochs [`AtEpochs::of_run`] gives, without listing them.
    pub fn count_of_run(&self, epochs: u32) -> usize {
        match self {
            AtEpochs::None => 0,
            AtEpochs::Every => epochs.saturating_sub(1) as usize,
            AtEpochs::Listed(list) => list.iter().filter(|&&e| e < epochs).count(),
        }
    }
}

/// Checkpoints of one run that get maps of their own (`[heatmap] at_epochs`): each is a file
/// every worker keeps and a full map.
pub const MAX_KEPT_EPOCHS: usize = 10_000;

/// `cells = "all"`, `{ max_radius = R }` or `{ low_crop = N }`.
pub(crate) fn cell_selection(v: &Value) -> Result<CellSelection, String> {
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

pub(crate) fn parse_section(ctx: &Ctx, raw: &Spanned<RawHeatmap>, grid: &GridAxes) -> Result<HeatmapSpec, SpecError> {
    let h = raw.get_ref();
    let archs = grid.archs;
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

/// Listed epochs must exist in every trained point's run; each run keeps their checkpoints.
pub(crate) fn check_points(
    ctx: &Ctx,
    h: &HeatmapSpec,
    raw_h: &Spanned<RawHeatmap>,
    grid: &GridAxes,
    points: &mut [GridPoint],
) -> Result<(), SpecError> {
    if let AtEpochs::Listed(list) = &h.at_epochs {
        let span = raw_h.get_ref().at_epochs.as_ref().map_or_else(|| raw_h.span(), Spanned::span);
        if !grid.trains {
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
    // Counted before listed: `"every"` of a run of 4 × 10⁹ epochs would be 16 GB of epochs.
    if let Some(p) =
        points.iter().find(|p| p.given.is_none() && h.at_epochs.count_of_run(p.task.train.epochs) > MAX_KEPT_EPOCHS)
    {
        let span = raw_h.get_ref().at_epochs.as_ref().map_or_else(|| raw_h.span(), Spanned::span);
        return Err(ctx.err(
            &span,
            format!(
                "at_epochs keeps {} checkpoints of point {} ({} epochs), each with maps of its own; at most {MAX_KEPT_EPOCHS}",
                h.at_epochs.count_of_run(p.task.train.epochs),
                p.id,
                p.task.train.epochs
            ),
        ));
    }
    for p in points.iter_mut().filter(|p| p.given.is_none()) {
        p.task.train.keep_epochs = h.at_epochs.of_run(p.task.train.epochs);
    }
    Ok(())
}
