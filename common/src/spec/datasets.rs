//! `[[dataset]]`: Syn_d, CIFAR-10, npy pairs and image folders.

use super::*;

// Building the sweep.

/// The side of an image, for `size`.
pub(super) fn image_side(v: &Value) -> Result<usize, String> {
    bounded("size", v, 4, MAX_IMAGE_SIDE, "pixels on a side (a map of 1024 × 1024 has 524 290 cells)")
}

/// `size = 64` or `size = [H, W]`.
pub(super) fn image_size(v: &Value) -> Result<[usize; 2], String> {
    match v {
        Value::Array(items) => match items.as_slice() {
            [h, w] => Ok([image_side(h)?, image_side(w)?]),
            _ => Err(format!("size must be one side or [height, width], got {}", show(v))),
        },
        _ => image_side(v).map(|side| [side, side]),
    }
}

/// The alternatives one `[[dataset]]` table expands to, as `(label, source)`.
pub(super) fn datasets(
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
    reject_keys_of_other_kinds(ctx, d, &kind)?;
    let mut out: Vec<(String, DatasetSource)> = match kind.as_str() {
        "syn" => syn(ctx, d, &layout)?,
        "folder" => folder(ctx, d, &layout)?,
        "cifar10" => {
            let path = ctx.scalar(&d.path, None, |v| path("path", v).map(Some))?;
            let path = path.ok_or_else(|| ctx.err(&d.kind.span(), "a cifar10 dataset needs path"))?;
            vec![("cifar10".into(), DatasetSource::Cifar10 { path })]
        }
        _ => npy(ctx, d, &layout)?,
    };
    apply_name(ctx, d, &mut out)?;
    Ok(out)
}

/// A key that belongs to another kind is a mistake worth naming (a typo'd kind, a pasted block).
fn reject_keys_of_other_kinds(ctx: &Ctx, d: &RawDataset, kind: &str) -> Result<(), SpecError> {
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
    Ok(())
}

/// `kind = "syn"`: one Syn_d dataset per band and seed.
fn syn(
    ctx: &Ctx,
    d: &RawDataset,
    layout: &impl Fn(Shape2, &str) -> Result<BandLayout, SpecError>,
) -> Result<Vec<(String, DatasetSource)>, SpecError> {
    let band = d.band.as_ref().ok_or_else(|| ctx.err(&d.kind.span(), "a syn dataset needs band (1-4 or a list)"))?;
    let bands = ctx.axis(
        "band",
        Some(band),
        Band::ALL[0],
        |v| {
            let n = integer("band", v, 1, "1-4")?;
            u8::try_from(n).ok().and_then(|b| Band::new(b).ok()).ok_or_else(|| format!("band must be 1-4, got {n}"))
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
            let label = if seeds.values.len() > 1 { format!("{}s{seed}", config.name()) } else { config.name() };
            out.push((label, DatasetSource::Syn(config)));
        }
    }
    Ok(out)
}

/// `kind = "folder"`: image folders, one sub-directory per class, the same classes in both splits.
fn folder(
    ctx: &Ctx,
    d: &RawDataset,
    layout: &impl Fn(Shape2, &str) -> Result<BandLayout, SpecError>,
) -> Result<Vec<(String, DatasetSource)>, SpecError> {
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
            format!("test has classes {test_classes:?}, train {classes:?}: the splits must name the same classes"),
        ));
    }
    let source = DatasetSource::Folder { train, test, size, classes };
    layout(Shape2::new(size[0], size[1]), &source.name())?;
    Ok(vec![(source.name(), source)])
}

/// `kind = "npy"`: image and label arrays per split; the image size given or read from a header.
fn npy(
    ctx: &Ctx,
    d: &RawDataset,
    layout: &impl Fn(Shape2, &str) -> Result<BandLayout, SpecError>,
) -> Result<Vec<(String, DatasetSource)>, SpecError> {
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
    Ok(vec![(source.name(), source)])
}

/// `name = …` replaces the label of a single dataset and prefixes those of several.
fn apply_name(ctx: &Ctx, d: &RawDataset, out: &mut [(String, DatasetSource)]) -> Result<(), SpecError> {
    let name = ctx.scalar(&d.name, None, |v| {
        let s = string("name", v)?;
        if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
            return Err(format!("dataset name must be letters, digits, '_' or '.', got {s:?}"));
        }
        Ok(Some(s))
    })?;
    if let Some(name) = name {
        let several = out.len() > 1;
        for (label, _) in out.iter_mut() {
            *label = if several { format!("{name}_{label}") } else { name.clone() };
        }
    }
    Ok(())
}
