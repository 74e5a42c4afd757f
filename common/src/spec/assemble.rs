//! Building the sweep from the raw spec.

use super::*;

pub(super) fn test_sets(ctx: &Ctx, raw: &List) -> Result<Vec<BandSet>, SpecError> {
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

pub(super) fn build(ctx: &Ctx, raw: RawSpec) -> Result<Sweep, SpecError> {
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
