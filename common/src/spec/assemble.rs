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

/// The sweep a spec describes, checked: each step below reads one part of the spec, and the
/// order of the steps is the order in which a spec's first mistake is reported.
pub(super) fn build(ctx: &Ctx, raw: RawSpec) -> Result<Sweep, SpecError> {
    let name = sweep_name(ctx, &raw.name)?;
    if raw.dataset.is_empty() {
        return Err(ctx.err_top("the spec needs at least one [[dataset]]"));
    }
    let (band_radii, radii_span) = crate::task::band_radii(ctx, raw.analyses.bands.as_ref())?;
    let dataset = dataset_axis(ctx, &raw.dataset, band_radii, radii_span)?;

    let no_train = RawTrain::default();
    let t = raw.train.as_ref().map_or(&no_train, Spanned::get_ref);
    let (trained, given) = models(ctx, &raw.model)?;
    check_what_trains(ctx, &raw, t, trained)?;
    let mut grid = train_grid(ctx, dataset, trained, t)?;
    let selection = read_selection(ctx, &raw, &mut grid)?;
    check_keys_apply(ctx, t, &grid)?;
    let fixed = fixed_settings(ctx, t, &raw.eval, trained, band_radii)?;
    check_model_outputs(ctx, trained, &given, &grid.dataset.values)?;
    product_size(ctx, trained, &selection.lens)?;

    let analyses = Analyses::parse(ctx, &raw.analyses, &grid.axes(trained.is_some()))?;
    let mut given_classes = Vec::with_capacity(given.len());
    for (model, raw_model) in &given {
        given_classes.push((model.clone(), ctx.scalar(&raw_model.classes, None, check_classes)?));
    }
    let space = Space {
        grid,
        selection,
        fixed,
        trains: trained.is_some(),
        given: given_classes,
        file: ctx.file.to_string(),
        nesterov_line: t.nesterov.as_ref().map_or(1, |n| ctx.line(n.span().start)),
    };
    // Every point plans at least one task, so the points are bounded while they are built
    // (memory grows with them), not after. How many tasks they plan is the planner's answer
    // (the coordinator's `kinds::count_tasks`, before it plans any). Without excludes every
    // distinct point is built: refuse before building any.
    if space.selection.excludes.is_empty() && space.most_points() > MAX_TASKS {
        return Err(space.too_many(space.most_points()));
    }
    // The grid strategy's walk (the search layer's first strategy): parsing ends with `space`.
    let mut points = space.grid_points()?;
    if points.is_empty() {
        return Err(ctx.err_top("the grid is empty (everything was excluded)"));
    }
    analyses.check_points(ctx, &raw.analyses, &space.grid.axes(space.trains), &mut points)?;
    Ok(Sweep { name, points, analyses, band_radii, space: Arc::new(space) })
}

/// `name`: the sweep's name.
fn sweep_name(ctx: &Ctx, raw: &Scalar) -> Result<String, SpecError> {
    ctx.scalar(raw, "sweep".to_string(), |v| {
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
    })
}

/// The dataset axis: every `[[dataset]]` table's alternatives, under labels that differ.
fn dataset_axis(
    ctx: &Ctx,
    raw: &[Spanned<RawDataset>],
    band_radii: BandRadii,
    radii_span: Option<Range<usize>>,
) -> Result<Axis<DatasetSource>, SpecError> {
    let mut dataset = Axis { labels: Vec::new(), values: Vec::new() };
    for d in raw {
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
    Ok(dataset)
}

/// What trains needs [train]'s three keys; a spec of given models only has nothing to train, and
/// nothing for [[include]] or [[exclude]] to pick.
fn check_what_trains(ctx: &Ctx, raw: &RawSpec, t: &RawTrain, trained: Option<&RawModel>) -> Result<(), SpecError> {
    let train_span = raw.train.as_ref().map_or(0..0, Spanned::span);
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
    Ok(())
}

/// The grid's axes: the datasets, the trained architectures and every [train] list.
fn train_grid(
    ctx: &Ctx,
    dataset: Axis<DatasetSource>,
    trained: Option<&RawModel>,
    t: &RawTrain,
) -> Result<Grid, SpecError> {
    let s = |x: &String| x.clone();
    let f = |x: &f64| format_number(*x);
    Ok(Grid {
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
    })
}

/// Read [[include]] (its values join the axes) and [[exclude]].
fn read_selection(ctx: &Ctx, raw: &RawSpec, grid: &mut Grid) -> Result<Selection, SpecError> {
    // The cartesian product covers the lists as written; includes may append values after it.
    let lens = grid.lens();
    let mut includes = Vec::new();
    for inc in &raw.include {
        let mut idx = [0; AXES];
        for (axis, index) in point_table(ctx, inc, "include", grid, true)? {
            idx[axis] = index;
        }
        includes.push(idx);
    }
    let excludes: Vec<Vec<(usize, usize)>> =
        raw.exclude.iter().map(|e| point_table(ctx, e, "exclude", grid, false)).collect::<Result<_, _>>()?;
    Ok(Selection { lens, includes, excludes })
}

/// One [[include]] or [[exclude]] table as `(axis, index)` pairs; `add`: values not on an axis
/// join it.
fn point_table(
    ctx: &Ctx,
    raw: &Spanned<RawPoint>,
    what: &str,
    grid: &mut Grid,
    add: bool,
) -> Result<Vec<(usize, usize)>, SpecError> {
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
}

/// Keys that no point uses are mistakes (momentum for an Adam-only sweep, gamma without step).
fn check_keys_apply(ctx: &Ctx, t: &RawTrain, grid: &Grid) -> Result<(), SpecError> {
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
    Ok(())
}

/// The settings every trained point shares ([train] and [eval] keys that are not axes).
fn fixed_settings(
    ctx: &Ctx,
    t: &RawTrain,
    eval: &RawEval,
    trained: Option<&RawModel>,
    band_radii: BandRadii,
) -> Result<Fixed, SpecError> {
    Ok(Fixed {
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
    })
}

/// A model with fewer outputs than the dataset has classes fails on every worker; say so here.
fn check_model_outputs(
    ctx: &Ctx,
    trained: Option<&RawModel>,
    given: &[(GivenModel, &RawModel)],
    datasets: &[DatasetSource],
) -> Result<(), SpecError> {
    let mut declared: Vec<&Spanned<Value>> = trained.and_then(|m| m.classes.as_ref()).into_iter().collect();
    declared.extend(given.iter().filter_map(|(_, raw)| raw.classes.as_ref()));
    for raw_classes in declared {
        let classes = check_classes(raw_classes.get_ref()).map_err(|m| ctx.err(&raw_classes.span(), m))?.unwrap_or(0);
        for dataset in datasets {
            let (name, has) = match dataset {
                DatasetSource::Syn(_) => ("Syn_d", crate::syn::CLASSES),
                DatasetSource::Cifar10 { .. } => ("CIFAR-10", 10),
                DatasetSource::Folder { classes, .. } => ("the image folder", classes.len()),
                // Its labels are read by the workers.
                DatasetSource::Npy { .. } | DatasetSource::Idx { .. } => continue,
            };
            if classes < has {
                return Err(ctx.err(
                    &raw_classes.span(),
                    format!("classes = {classes}, but {name} has {has} classes (labels 0-{}): the model needs at least {has} outputs", has - 1),
                ));
            }
        }
    }
    Ok(())
}

/// The points in the product of the axes. A product of lists grows fast; refuse a grid far beyond
/// what a coordinator can hold (each point is a task of its own) with a message instead of
/// running out of memory.
fn product_size(ctx: &Ctx, trained: Option<&RawModel>, lens: &[usize; AXES]) -> Result<usize, SpecError> {
    let total = match trained {
        Some(_) => lens.iter().try_fold(1usize, |acc, &n| acc.checked_mul(n)),
        None => Some(0),
    };
    total
        .filter(|&n| n <= MAX_POINTS)
        .ok_or_else(|| ctx.err_top(format!("the grid has over {MAX_POINTS} points; split the sweep")))
}
