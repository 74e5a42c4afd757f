//! `[[dataset]]`: Syn_d, CIFAR-10, npy pairs, IDX files (MNIST and kin) and image folders.

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
    let kind = ctx.scalar(&Some(d.kind.clone()), String::new(), |v| {
        choice("kind", v, &["syn", "cifar10", "npy", "idx", "folder"])
    })?;
    reject_keys_of_other_kinds(ctx, d, &kind)?;
    let mut out: Vec<(String, DatasetSource)> = match kind.as_str() {
        "syn" => syn(ctx, d, &layout)?,
        "folder" => folder(ctx, d, &layout)?,
        "cifar10" => {
            let path = ctx.scalar(&d.path, None, |v| path("path", v).map(Some))?;
            let path = path.ok_or_else(|| ctx.err(&d.kind.span(), "a cifar10 dataset needs path"))?;
            vec![("cifar10".into(), DatasetSource::Cifar10 { path })]
        }
        "idx" => idx(ctx, d, &layout)?,
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
        reject(&d.size, "size", "\"syn\", \"npy\", \"idx\" or \"folder\" (CIFAR-10 is 32 × 32)")?;
    }
    if kind != "idx" {
        reject(&d.channels, "channels", "\"idx\"")?;
    }
    if kind != "npy" && kind != "idx" {
        for (v, key) in [
            (&d.train_images, "train_images"),
            (&d.train_labels, "train_labels"),
            (&d.test_images, "test_images"),
            (&d.test_labels, "test_labels"),
        ] {
            reject(v, key, "\"npy\" or \"idx\"")?;
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
    let ([train_images, train_labels, test_images, test_labels], size) =
        files_and_size(ctx, d, "npy", |p| ctx.inputs.npy_image_size(p))?;
    let source = DatasetSource::Npy { train_images, train_labels, test_images, test_labels, size: Some(size) };
    layout(Shape2::new(size[0], size[1]), &source.name())?;
    Ok(vec![(source.name(), source)])
}

/// `kind = "idx"`: IDX image and label files per split (MNIST, Fashion-MNIST, KMNIST, EMNIST,
/// gzipped or not); the image size given or read from a header; `channels` 3 (the default) or 1.
fn idx(
    ctx: &Ctx,
    d: &RawDataset,
    layout: &impl Fn(Shape2, &str) -> Result<BandLayout, SpecError>,
) -> Result<Vec<(String, DatasetSource)>, SpecError> {
    let ([train_images, train_labels, test_images, test_labels], size) =
        files_and_size(ctx, d, "idx", |p| ctx.inputs.idx_image_size(p))?;
    // 3 by default: every model, built-in or TorchScript, takes `float32 [N, 3, H, W]`, so the
    // gray plane is replicated; 1-channel images would be refused by every worker, task by task,
    // after the run started. So `channels = 1` is refused here, in one line, until a model
    // takes it (the readers and tasks carry the choice already).
    let channels = ctx.scalar(&d.channels, 3, |v| match integer("channels", v, 1, "1 or 3")? {
        3 => Ok(3),
        1 => Err("channels = 1 gives the models 1-channel images, but every model takes 3 (float32 [N, 3, H, W]): use channels = 3 (the default), which replicates the gray plane".to_string()),
        n => Err(format!("channels must be 1 or 3, got {n}")),
    })?;
    let source = DatasetSource::Idx { train_images, train_labels, test_images, test_labels, channels, size };
    layout(Shape2::new(size[0], size[1]), &source.name())?;
    Ok(vec![(source.name(), source)])
}

/// The four files of an `npy` or `idx` dataset, and its image size: given (`size =`), or read
/// from `test_images`' header by `header_size` (the probe's answer for that kind).
fn files_and_size(
    ctx: &Ctx,
    d: &RawDataset,
    kind: &str,
    header_size: impl Fn(&Path) -> Result<[usize; 2], String>,
) -> Result<([PathBuf; 4], [usize; 2]), SpecError> {
    let need = |p: &Scalar, key: &str| {
        ctx.scalar(p, None, |v| path(key, v).map(Some))?
            .ok_or_else(|| ctx.err(&d.kind.span(), format!("an {kind} dataset needs {key}")))
    };
    let [train_images, train_labels, test_images, test_labels] = [
        (&d.train_images, "train_images"),
        (&d.train_labels, "train_labels"),
        (&d.test_images, "test_images"),
        (&d.test_labels, "test_labels"),
    ]
    .map(|(raw, key)| need(raw, key));
    let files = [train_images?, train_labels?, test_images?, test_labels?];
    // The size plans the heatmap's cells and the bands: given, or read from the header.
    if let Some(size) = ctx.scalar(&d.size, None, |v| image_size(v).map(Some))? {
        return Ok((files, size));
    }
    let test_images = &files[2];
    let [h, w] = header_size(test_images).map_err(|e| {
        ctx.err(
            &d.kind.span(),
            format!(
                "an {kind} dataset needs its image size: give size = [H, W], or make test_images readable here ({e})"
            ),
        )
    })?;
    // The header's size meets the bounds `size =` meets: a 200-byte file may declare
    // 65536 × 65536 images.
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
    Ok((files, [h, w]))
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

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\n";

    /// An IDX file of unsigned bytes, gzipped when `gz`.
    fn write_idx(path: &Path, dims: &[u32], gz: bool) {
        use std::io::Write;
        let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
        dims.iter().for_each(|d| bytes.extend(d.to_be_bytes()));
        bytes.resize(bytes.len() + dims.iter().product::<u32>() as usize, 0);
        if gz {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(&bytes).unwrap();
            bytes = encoder.finish().unwrap();
        }
        std::fs::write(path, bytes).unwrap();
    }

    /// An idx dataset table with the four files in `dir` and `extra` keys.
    fn idx_spec(dir: &Path, extra: &str) -> String {
        let d = dir.display();
        format!(
            "[[dataset]]\nkind = \"idx\"\ntrain_images = \"{d}/train-images-idx3-ubyte.gz\"\ntrain_labels = \"{d}/train-labels-idx1-ubyte.gz\"\ntest_images = \"{d}/t10k-images-idx3-ubyte.gz\"\ntest_labels = \"{d}/t10k-labels-idx1-ubyte\"\n{extra}{MODEL}"
        )
    }

    #[test]
    fn an_idx_dataset_parses_with_its_size_read_from_the_header_and_recorded() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("fashion");
        std::fs::create_dir(&dir).unwrap();
        write_idx(&dir.join("t10k-images-idx3-ubyte.gz"), &[3, 28, 24], true);
        let (sweep, recorded) = super::super::parse_recording(&idx_spec(&dir, ""), "s.toml").unwrap();
        let task = &sweep.points[0].task;
        let DatasetSource::Idx { channels, size, test_labels, .. } = &task.dataset else { panic!("idx") };
        assert_eq!((*channels, *size), (3, [28, 24]), "3 channels by default, the size from the header");
        assert!(test_labels.ends_with("t10k-labels-idx1-ubyte"));
        assert_eq!(sweep.points[0].id, "fashion-tiny-adam-lr0.1-bs8-ep1-seed0", "named after its directory");
        assert_eq!((task.train.classes, task.train.band_layout.upper_radii), (10, [3.0, 6.0, 9.0]));
        assert_eq!(recorded.idx_sizes.values().collect::<Vec<_>>(), [&[28, 24]]);
        // Replayed without the file, and through the JSON a run stores.
        std::fs::remove_file(dir.join("t10k-images-idx3-ubyte.gz")).unwrap();
        let json = serde_json::to_string(&recorded).unwrap();
        let back: SpecInputs = serde_json::from_str(&json).unwrap();
        assert_eq!(super::super::parse_replaying(&idx_spec(&dir, ""), "s.toml", &back).unwrap(), sweep);
        // A run without idx datasets records the JSON it did before they existed.
        assert!(!serde_json::to_string(&SpecInputs::default()).unwrap().contains("idx"));

        // Plain (not gzipped) under a `.gz` name reads the same; a given size needs no file.
        write_idx(&dir.join("t10k-images-idx3-ubyte.gz"), &[3, 28, 24], false);
        assert_eq!(super::super::parse(&idx_spec(&dir, ""), "s.toml").unwrap(), sweep);
        let given = super::super::parse(&idx_spec(&root.path().join("absent"), "size = 32\nchannels = 3\n"), "s.toml");
        assert_eq!(given.unwrap().points[0].task.dataset.image_shape(), Some(Shape2::new(32, 32)));
    }

    #[test]
    fn idx_mistakes_name_the_key_and_the_line() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path();
        write_idx(&dir.join("t10k-images-idx3-ubyte.gz"), &[3, 28, 28], true);
        write_idx(&dir.join("labels-as-images"), &[3], false);
        let spec = idx_spec(dir, "");
        let absent = idx_spec(&dir.join("absent"), "");
        for (text, message) in [
            (spec.replace("test_labels = ", "# test_labels = "), "s.toml:2: an idx dataset needs test_labels"),
            (spec.replace("train_images = ", "# train_images = "), "s.toml:2: an idx dataset needs train_images"),
            (spec.replace("test_images = \"", "test_images = 7 # \""), "s.toml:5: test_images must be"),
            (absent.clone(), "s.toml:2: an idx dataset needs its image size: give size = [H, W], or make test_images readable here ("),
            (
                spec.replace("t10k-images-idx3-ubyte.gz", "labels-as-images"),
                "s.toml:2: an idx dataset needs its image size: give size = [H, W], or make test_images readable here (",
            ),
            (idx_spec(dir, "channels = 1\n"), "s.toml:7: channels = 1 gives the models 1-channel images, but every model takes 3"),
            (idx_spec(dir, "channels = 2\n"), "s.toml:7: channels must be 1 or 3, got 2"),
            (idx_spec(dir, "channels = \"rgb\"\n"), "s.toml:7: channels must be 1 or 3, got \"rgb\""),
            (idx_spec(dir, "size = 2\n"), "s.toml:7: size must be an integer of at least 4, got 2"),
            (idx_spec(dir, "path = \"x\"\n"), "s.toml:7: dataset key path applies to kind \"cifar10\", not \"idx\""),
            (
                format!("[[dataset]]\nkind = \"cifar10\"\npath = \"c\"\nchannels = 3\n{MODEL}"),
                "s.toml:4: dataset key channels applies to kind \"idx\", not \"cifar10\"",
            ),
            (
                format!("[[dataset]]\nkind = \"syn\"\nband = 1\ntest_images = \"x\"\n{MODEL}"),
                "s.toml:4: dataset key test_images applies to kind \"npy\" or \"idx\", not \"syn\"",
            ),
            (spec.replace("kind = \"idx\"", "kind = \"mnist\""), "s.toml:2: unknown kind \"mnist\": use syn, cifar10, npy, idx or folder"),
        ] {
            let err = super::super::parse(&text, "s.toml").unwrap_err().to_string();
            assert!(err.starts_with(message) && !err.contains('\n'), "{message}\n{err}");
        }
        // The header's refusal names the file and what is wrong with it.
        let err = super::super::parse(&spec.replace("t10k-images-idx3-ubyte.gz", "labels-as-images"), "s.toml");
        let err = err.unwrap_err().to_string();
        assert!(err.contains("labels-as-images: images must be 3-D [N, H, W], the IDX header says 1-D"), "{err}");
        let err = super::super::parse(&absent, "s.toml").unwrap_err().to_string();
        assert!(err.contains("absent/t10k-images-idx3-ubyte.gz: No such file"), "{err}");
        // A header's size meets the bounds `size =` meets.
        write_idx(&dir.join("t10k-images-idx3-ubyte.gz"), &[0, 2, 2000], true);
        let err = super::super::parse(&spec, "s.toml").unwrap_err().to_string();
        assert!(err.starts_with("s.toml:2: test_images ") && err.contains("2 × 2000 images in its header"), "{err}");
    }
}
