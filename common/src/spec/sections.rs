//! The analysis sections: `[bands]`, `[dfm]`, `[heatmap]`.

use super::*;

/// `[bands] radii = [4, 8, 12]` (cells) or `fractions = [0.25, 0.5, 0.75]` (of the Nyquist
/// radius), and the span to blame when a dataset's spectrum does not fit them.
pub(super) fn band_radii(
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

pub(super) fn dfm(ctx: &Ctx, raw: &Spanned<RawDfm>) -> Result<DfmSpec, SpecError> {
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
pub(super) fn cell_selection(v: &Value) -> Result<CellSelection, String> {
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

pub(super) fn heatmap(ctx: &Ctx, raw: &Spanned<RawHeatmap>, archs: &[String]) -> Result<HeatmapSpec, SpecError> {
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
