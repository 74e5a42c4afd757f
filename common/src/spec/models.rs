//! `[model]` / `[[model]]`: trained architectures and given models.

use super::*;

pub(super) fn check_classes(v: &Value) -> Result<Option<usize>, String> {
    bounded("classes", v, 1, MAX_CLASSES, "a classifier's output layer and confusion matrix").map(Some)
}

/// The trained entry and the given models, each with its entry.
pub(super) type Models<'a> = (Option<&'a RawModel>, Vec<(GivenModel, &'a RawModel)>);

/// The `[model]` table or `[[model]]` tables: the one entry the sweep trains (its `arch` list is
/// the grid's axis), and every given model file with its entry (for its `classes`).
pub(super) fn models<'a>(ctx: &Ctx, raw: &'a RawModels) -> Result<Models<'a>, SpecError> {
    let entries: Vec<&Spanned<RawModel>> = match raw {
        RawModels::One(m) => vec![m.as_ref()],
        RawModels::Many(list) => list.iter().collect(),
    };
    let mut trained: Option<&RawModel> = None;
    let mut given: Vec<(GivenModel, &RawModel)> = Vec::new();
    for entry in entries {
        let m = entry.get_ref();
        let at = |raw: Option<Range<usize>>| raw.filter(|s| !s.is_empty()).unwrap_or_else(|| entry.span());
        let kind = ctx.scalar(&m.kind, "builtin".to_string(), |v| choice("kind", v, &["builtin", "torchscript"]))?;
        if kind == "builtin" {
            for (key, span) in [
                ("path", m.path.as_ref().map(Spanned::span)),
                ("glob", m.glob.as_ref().map(Spanned::span)),
                ("name", m.name.as_ref().map(Spanned::span)),
            ] {
                if let Some(span) = span {
                    return Err(
                        ctx.err(&span, format!("model key {key} applies to kind = \"torchscript\" (a given model)"))
                    );
                }
            }
            if m.arch.is_none() {
                return Err(ctx.err(
                    &at(m.kind.as_ref().map(Spanned::span)),
                    "a trained [model] needs arch (alexnet, resnet18, tiny or a list)",
                ));
            }
            if trained.is_some() {
                return Err(ctx.err(
                    &at(m.arch.as_ref().map(Spanned::span)),
                    "give every trained architecture in one arch list, not in two [[model]] tables",
                ));
            }
            trained = Some(m);
            continue;
        }
        if let Some(arch) = &m.arch {
            return Err(
                ctx.err(&arch.span(), "arch applies to trained models; a torchscript model is given by path or glob")
            );
        }
        let mut paths: Vec<PathBuf> = match &m.path {
            Some(list) => ctx.list("path", list, |v| path("path", v))?.into_iter().map(|(_, p)| p).collect(),
            None => Vec::new(),
        };
        if let Some(pattern) = &m.glob {
            let text = string("glob", pattern.get_ref()).map_err(|e| ctx.err(&pattern.span(), e))?;
            paths.extend(ctx.inputs.glob(&text).map_err(|e| ctx.err(&pattern.span(), e))?);
        }
        if paths.is_empty() {
            return Err(ctx.err(
                &at(m.kind.as_ref().map(Spanned::span)),
                "a torchscript model needs path (one file or a list) or glob",
            ));
        }
        let name = ctx.scalar(&m.name, None, |v| {
            let s = string("name", v)?;
            if s.is_empty() || !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.') {
                return Err(format!("model name must be letters, digits, '_' or '.', got {s:?}"));
            }
            Ok(Some(s))
        })?;
        let several = paths.len() > 1;
        for path in paths {
            let stem: String = path
                .file_stem()
                .map(|s| {
                    s.to_string_lossy()
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() || c == '.' { c } else { '_' })
                        .collect()
                })
                .unwrap_or_else(|| "model".into());
            let label = match &name {
                Some(n) if several => format!("{n}_{stem}"),
                Some(n) => n.clone(),
                None => stem,
            };
            if given.iter().any(|(g, _)| g.name == label) || ARCHS.iter().any(|(a, _)| *a == label) {
                return Err(ctx.err(
                    &at(m.name.as_ref().map(Spanned::span).or(m.path.as_ref().map(Spanned::span))),
                    format!("two models are named {label:?} in point ids; give the [[model]] a name = \"…\""),
                ));
            }
            given.push((GivenModel { name: label, path, artifact: None }, m));
        }
    }
    Ok((trained, given))
}

/// The analysis point of a given model on `dataset`: id `<dataset>-<model>`, the evaluation
/// settings of the spec, nothing to train.
pub(super) fn given_point(
    dataset: &DatasetSource,
    model: &GivenModel,
    classes: Option<usize>,
    values: GridValues,
    fixed: &Fixed,
) -> GridPoint {
    let classes = classes.unwrap_or_else(|| default_classes(dataset));
    GridPoint {
        id: format!("{}-{}", values.at(DATASET), model.name),
        given: Some(model.clone()),
        task: TrainTask {
            dataset: dataset.clone(),
            train: TrainConfig {
                model: model.name.clone(),
                classes,
                optimizer: Optimizer::adam(),
                lr: 0.0,
                schedule: LrSchedule::Constant,
                batch_size: 1,
                epochs: 0,
                seed: 0,
                augment: Augment::default(),
                test_sets: fixed.test_sets.clone(),
                band_layout: layout_of(dataset, fixed.band_radii),
                clip_filtered: fixed.clip,
                eval_every_steps: 0,
                eval_steps_epochs: 0,
                test_limit: fixed.test_limit,
                precision: fixed.precision,
                memory_format: fixed.memory_format,
                keep_epochs: Vec::new(),
            },
        },
        values,
    }
}
