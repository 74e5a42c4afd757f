//! Dominant frequency maps (SCIENCE.md §7): what a DFM chunk says and reports, and the spec's
//! `[dfm]` section that asks for them (and for the shortcut degree after them).
//!
//! ```toml
//! [dfm]                    # optional: dominant frequency maps of every trained model (SCIENCE.md §7)
//! patch = 1                # side of the square patches removed together (1: single frequencies)
//! top = [1, 5, 10, 20]     # DFMs at these percentages of the units, each in (0, 100]
//! images = 500             # test images (0: all)
//! batch = 256              # filtered images per forward pass
//! chunk_cells = 64         # removal units per task (or chunks_per_map = 8)
//! classes = "all"          # or a list such as [0, 1]: the classes whose maps are written
//! shortcut_degree = true   # then filter the test set to each class's DFM: TPR and FPR per class and top
//! ```

use super::*;
use crate::spec::section::*;
use crate::spectrum::{Cell, Shape2};

/// A chunk of dominant-frequency loss maps (SCIENCE.md §7): `model` on the test split of
/// `dataset` with each of `units` removed (a cell and its conjugate, or a patch of cells and
/// their conjugates), every class's statistics from the same forward passes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// Not `deny_unknown_fields` (serde cannot combine it with `flatten`): `AnalysisTarget`
// refuses the fields no one reads.
pub struct DfmTask {
    /// The model, the test set and how the model runs.
    #[serde(flatten)]
    pub target: AnalysisTarget,
    /// Side of the square patches removed (1: single cells).
    pub patch: usize,
    /// Anchors of this chunk's removal units (`common::dfm::units`).
    pub units: Vec<Cell>,
    /// Chunk number within the map.
    #[serde(default)]
    pub chunk: usize,
    /// Filtered images per forward pass (bounds memory).
    pub batch: usize,
}

/// What a DFM chunk reports: per class its clean statistics, and per unit per class the summed
/// loss and flip count (sums and counts, so chunks merge exactly).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DfmOutcome {
    pub chunk: usize,
    pub patch: usize,
    pub images: usize,
    pub clean: Vec<crate::dfm::CleanStat>,
    pub units: Vec<(Cell, Vec<crate::dfm::ClassStat>)>,
    pub seconds: f64,
    /// Filtered images pushed through the model per second.
    pub images_per_second: f64,
    pub device: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub precision: Precision,
    #[serde(default, skip_serializing_if = "is_contiguous")]
    pub memory_format: MemoryFormat,
}

// The `[dfm]` section.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDfm {
    pub(crate) patch: Scalar,
    pub(crate) top: List,
    pub(crate) images: Scalar,
    pub(crate) batch: Scalar,
    pub(crate) chunk_cells: Scalar,
    pub(crate) chunks_per_map: Scalar,
    pub(crate) classes: List,
    pub(crate) shortcut_degree: Scalar,
    pub(crate) precision: Scalar,
    pub(crate) memory_format: Scalar,
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

pub(crate) fn parse_section(ctx: &Ctx, raw: &Spanned<RawDfm>, grid: &GridAxes) -> Result<DfmSpec, SpecError> {
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
    let spec = DfmSpec {
        patch,
        top,
        images: ctx.scalar(&d.images, 500, |v| non_negative_usize("images", v))?,
        batch: ctx.scalar(&d.batch, 256, |v| bounded("batch", v, 1, MAX_BATCH, "filtered images per forward pass"))?,
        chunks,
        classes,
        shortcut_degree: ctx.scalar(&d.shortcut_degree, true, |v| boolean("shortcut_degree", v))?,
        precision: ctx.scalar(&d.precision, Precision::Fp32, check_precision)?,
        memory_format: ctx.scalar(&d.memory_format, MemoryFormat::Auto, check_memory_format)?,
    };
    check_patch(ctx, grid, &spec, raw)?;
    Ok(spec)
}

/// The DFM's patch divides every dataset's images (each size is cut into units of it).
fn check_patch(ctx: &Ctx, grid: &GridAxes, d: &DfmSpec, raw_d: &Spanned<RawDfm>) -> Result<(), SpecError> {
    let p = d.patch;
    for (label, dataset) in grid.dataset_labels.iter().zip(grid.datasets) {
        let Some(shape) = dataset.image_shape() else { continue };
        if p > shape.h.min(shape.w) || shape.h % p != 0 || shape.w % p != 0 {
            let span = raw_d.get_ref().patch.as_ref().map_or_else(|| raw_d.span(), Spanned::span);
            return Err(
                ctx.err(&span, format!("patch {p} does not divide dataset {label}'s {} × {} images", shape.h, shape.w))
            );
        }
    }
    Ok(())
}

/// Listed DFM classes must exist in every point's model.
pub(crate) fn check_points(
    ctx: &Ctx,
    d: &DfmSpec,
    raw: &Spanned<RawDfm>,
    points: &[GridPoint],
) -> Result<(), SpecError> {
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
    Ok(())
}
