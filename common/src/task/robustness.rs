//! Corruption robustness (SCIENCE.md §9.1–9.2): what a robustness task says and reports, and the
//! spec's `[robustness]` section that asks for it.
//!
//! ```toml
//! [robustness]             # optional: every model on corrupted copies of its test set
//! corruptions = "all"      # the 17 CIFAR-10-C corruptions but frost (regenerated, §9.1), or
//!                          # names such as ["gaussian_noise", "fog", "fourier(4,0,8)"]
//! severities = [1, 2, 3, 4, 5]
//! images = 500             # test images (0: all)
//! seed = 0                 # the random corruptions' seed (per corruption, severity and image)
//! batch = 256              # images per forward pass
//! pairs_per_task = 5       # (corruption, severity) pairs per task: the unit of work across workers
//! # baseline = "<point id>"  # a point of the sweep (trained or given): mCE and relative mCE against
//! #                        # its errors (Hendrycks & Dietterich normalise by AlexNet's, SCIENCE.md §9.2)
//! ```

use super::*;
use crate::corruption::{Corruption, ALL as ALL_CORRUPTIONS, SEVERITIES};
use crate::spec::section::*;

/// The model on its test split corrupted by each `(corruption, severity)` of `pairs`, and clean.
/// A corrupted image depends only on (corruption, severity, its index in the split, `seed`), so
/// how the pairs are cut into tasks changes no result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// Not `deny_unknown_fields` (serde cannot combine it with `flatten`): `AnalysisTarget`
// refuses the fields no one reads.
pub struct RobustnessTask {
    /// The model, the test set and how the model runs.
    #[serde(flatten)]
    pub target: AnalysisTarget,
    /// `(corruption name, severity)`, in order: names as `Corruption::parse` reads them.
    pub pairs: Vec<(String, u32)>,
    /// Chunk number among the point's robustness tasks.
    pub chunk: usize,
    pub seed: u64,
    /// Images per forward pass (bounds memory).
    pub batch: usize,
}

/// What a robustness task reports: confusion matrices (`[truth][predicted]`), clean and per
/// pair in the task's order, so errors per class and overall follow exactly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RobustnessOutcome {
    pub chunk: usize,
    pub images: usize,
    pub clean: Vec<Vec<u64>>,
    pub pairs: Vec<(String, u32, Vec<Vec<u64>>)>,
    pub seconds: f64,
    /// Corrupted images pushed through the model per second (corrupting included).
    pub images_per_second: f64,
    pub device: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub precision: Precision,
    #[serde(default, skip_serializing_if = "is_contiguous")]
    pub memory_format: MemoryFormat,
}

// The `[robustness]` section.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRobustness {
    pub(crate) corruptions: List,
    pub(crate) severities: List,
    pub(crate) images: Scalar,
    pub(crate) seed: Scalar,
    pub(crate) batch: Scalar,
    pub(crate) pairs_per_task: Scalar,
    pub(crate) baseline: Scalar,
    pub(crate) precision: Scalar,
    pub(crate) memory_format: Scalar,
}

/// At most this many (corruption, severity) pairs in one task.
pub const MAX_PAIRS_PER_TASK: usize = 1000;

/// The robustness part of a spec.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RobustnessSpec {
    /// Canonical names (`Corruption::name`), in the spec's order.
    pub corruptions: Vec<String>,
    pub severities: Vec<u32>,
    pub images: usize,
    pub seed: u64,
    pub batch: usize,
    pub pairs_per_task: usize,
    /// The point whose errors normalise `CE_c` and `rCE_c` (`None`: only `mCE_raw`).
    pub baseline: Option<String>,
    pub precision: Precision,
    pub memory_format: MemoryFormat,
}

impl RobustnessSpec {
    /// Every `(corruption, severity)`, corruption-major.
    pub fn pairs(&self) -> Vec<(String, u32)> {
        self.corruptions.iter().flat_map(|c| self.severities.iter().map(move |&s| (c.clone(), s))).collect()
    }

    /// Tasks per model: the pairs cut `pairs_per_task` at a time.
    pub fn chunks(&self) -> usize {
        (self.corruptions.len() * self.severities.len()).div_ceil(self.pairs_per_task.max(1))
    }
}

pub(crate) fn parse_section(ctx: &Ctx, raw: &Spanned<RawRobustness>) -> Result<RobustnessSpec, SpecError> {
    let r = raw.get_ref();
    let corruptions = match &r.corruptions {
        None => ALL_CORRUPTIONS.iter().map(Corruption::name).collect(),
        Some(list) if matches!(list.get_ref().0.as_slice(), [(_, Value::String(s))] if s == "all") => {
            ALL_CORRUPTIONS.iter().map(Corruption::name).collect()
        }
        Some(list) => {
            let named = ctx.list("corruptions", list, |v| {
                let name = string("corruptions", v)?;
                Corruption::parse(&name).map(|c| c.name()).map_err(|e| format!("corruptions: {e}"))
            })?;
            let mut out: Vec<String> = Vec::new();
            for (span, name) in named {
                if out.contains(&name) {
                    return Err(ctx.err(&span, format!("corruptions lists {name} twice")));
                }
                out.push(name);
            }
            out
        }
    };
    let severities = match &r.severities {
        None => SEVERITIES.collect(),
        Some(list) => {
            let mut out: Vec<u32> = Vec::new();
            for (span, s) in ctx.list("severities", list, |v| {
                bounded("severities", v, 1, 5, "a severity from 1 to 5").map(|s| s as u32)
            })? {
                if out.contains(&s) {
                    return Err(ctx.err(&span, format!("severities lists {s} twice")));
                }
                out.push(s);
            }
            out
        }
    };
    Ok(RobustnessSpec {
        corruptions,
        severities,
        images: ctx.scalar(&r.images, 500, |v| non_negative_usize("images", v))?,
        seed: ctx.scalar(&r.seed, 0, |v| non_negative_int("seed", v))?,
        batch: ctx.scalar(&r.batch, 256, |v| bounded("batch", v, 1, MAX_BATCH, "images per forward pass"))?,
        // A task's lease lists its pairs and its result holds a confusion matrix per pair.
        pairs_per_task: ctx.scalar(&r.pairs_per_task, 5, |v| {
            bounded("pairs_per_task", v, 1, MAX_PAIRS_PER_TASK as u64, "pairs in one task's lease and result")
        })?,
        baseline: ctx.scalar(&r.baseline, None, |v| string("baseline", v).map(Some))?,
        precision: ctx.scalar(&r.precision, Precision::Fp32, check_precision)?,
        memory_format: ctx.scalar(&r.memory_format, MemoryFormat::Auto, check_memory_format)?,
    })
}

/// The baseline names a point of the sweep (checked once the points are built).
pub(crate) fn check_points(
    ctx: &Ctx,
    spec: &RobustnessSpec,
    raw: &Spanned<RawRobustness>,
    points: &[GridPoint],
) -> Result<(), SpecError> {
    let Some(baseline) = &spec.baseline else { return Ok(()) };
    if points.iter().any(|p| &p.id == baseline) {
        return Ok(());
    }
    let span = raw.get_ref().baseline.as_ref().map_or_else(|| raw.span(), Spanned::span);
    let ids: Vec<&str> = points.iter().take(3).map(|p| p.id.as_str()).collect();
    let more = if points.len() > 3 { format!(", … {} in all", points.len()) } else { String::new() };
    Err(ctx.err(
        &span,
        format!(
            "baseline {:?} is not a point of this sweep (its points: {}{more})",
            crate::text::one_line(baseline, 120),
            ids.join(", ")
        ),
    ))
}
