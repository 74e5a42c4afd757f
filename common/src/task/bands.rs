//! Band sufficiency (SCIENCE.md §4): what a bands task says and reports, and the spec's `[bands]`
//! section, which also places every dataset's bands.
//!
//! ```toml
//! [bands]                  # optional: every model on the 15 band subsets (DC kept) of its test set
//! tolerance = 0.05         # a band set suffices for a class if its F1 is within this of all bands'
//! images = 0               # test images (0: all)
//! # sufficiency = false    # only place the bands, plan no band-sufficiency tasks
//! # radii = [4, 8, 12]     # band bounds in cells, or fractions = [0.25, 0.5, 0.75] of the
//! #                        # Nyquist radius min(H, W)/2 (the default: 4, 8, 12 on 32 × 32)
//! ```

use super::*;
use crate::bands::{BandLayout, BandRadii, BandSet};
use crate::spec::section::*;

/// Band sufficiency (the poster's "2 or 3 bands are enough", made automatic): `model` on the
/// test split of `dataset` filtered to every non-empty subset of the four bands (DC kept).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
// Not `deny_unknown_fields` (serde cannot combine it with `flatten`): `AnalysisTarget`
// refuses the fields no one reads.
pub struct BandsTask {
    /// The model, the test set and how the model runs.
    #[serde(flatten)]
    pub target: AnalysisTarget,
    #[serde(default)]
    pub band_layout: BandLayout,
    /// Clip filtered images to `[0, 1]`.
    #[serde(default)]
    pub clip: bool,
}

/// What a band-sufficiency task reports: the confusion matrix (`[truth][predicted]`) on every
/// band subset, in `common::dfm::band_subsets` order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BandsOutcome {
    pub images: usize,
    pub sets: Vec<(BandSet, Vec<Vec<u64>>)>,
    pub seconds: f64,
    pub device: String,
    #[serde(default, skip_serializing_if = "is_default")]
    pub precision: Precision,
    #[serde(default, skip_serializing_if = "is_contiguous")]
    pub memory_format: MemoryFormat,
}

// The `[bands]` section.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBands {
    pub(crate) tolerance: Scalar,
    pub(crate) images: Scalar,
    pub(crate) radii: List,
    pub(crate) fractions: List,
    pub(crate) sufficiency: Scalar,
}

/// The band-sufficiency part of a spec: every model on the 15 band subsets of its test set.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BandsSpec {
    /// A band set suffices for a class when its F1 is at least the full spectrum's minus this.
    pub tolerance: f64,
    pub images: usize,
}

/// `[bands] radii = [4, 8, 12]` (cells) or `fractions = [0.25, 0.5, 0.75]` (of the Nyquist
/// radius), and the span to blame when a dataset's spectrum does not fit them.
pub(crate) fn band_radii(
    ctx: &Ctx,
    raw: Option<&Spanned<RawBands>>,
) -> Result<(BandRadii, Option<Range<usize>>), SpecError> {
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

/// `[bands]`: the sufficiency analysis, unless `sufficiency = false`.
pub(crate) fn parse_section(ctx: &Ctx, raw: Option<&Spanned<RawBands>>) -> Result<Option<BandsSpec>, SpecError> {
    Ok(match raw {
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
    })
}
