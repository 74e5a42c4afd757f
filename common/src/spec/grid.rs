//! The grid: axes, their expansion into points, include/exclude.

use super::*;

// The grid.

/// One grid axis: value labels (as in ids, `results.csv` and include/exclude) and typed values.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Axis<T> {
    pub(crate) labels: Vec<String>,
    pub(crate) values: Vec<T>,
}

impl<T> Axis<T> {
    pub(super) fn position(&self, label: &str) -> Option<usize> {
        self.labels.iter().position(|l| l == label)
    }

    /// The index of `value`, appending it when `add` (includes may add values outside the lists).
    pub(super) fn index(&mut self, key: &str, label: String, value: T, add: bool) -> Result<usize, String> {
        if let Some(i) = self.position(&label) {
            return Ok(i);
        }
        if !add {
            return Err(format!("{key} = {label} is not among the spec's values ({})", few(&self.labels)));
        }
        self.labels.push(label);
        self.values.push(value);
        Ok(self.values.len() - 1)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct Grid {
    pub(super) dataset: Axis<DatasetSource>,
    pub(super) arch: Axis<String>,
    pub(super) optimizer: Axis<String>,
    pub(super) lr: Axis<f64>,
    pub(super) batch: Axis<usize>,
    pub(super) epochs: Axis<u32>,
    pub(super) schedule: Axis<String>,
    pub(super) momentum: Axis<f64>,
    pub(super) nesterov: Axis<bool>,
    pub(super) decay: Axis<f64>,
    pub(super) beta1: Axis<f64>,
    pub(super) beta2: Axis<f64>,
    pub(super) seed: Axis<u64>,
}

impl Grid {
    pub(super) fn labels(&self, axis: usize) -> &[String] {
        match axis {
            DATASET => &self.dataset.labels,
            ARCH => &self.arch.labels,
            OPTIMIZER => &self.optimizer.labels,
            LR => &self.lr.labels,
            BATCH => &self.batch.labels,
            EPOCHS => &self.epochs.labels,
            SCHEDULE => &self.schedule.labels,
            MOMENTUM => &self.momentum.labels,
            NESTEROV => &self.nesterov.labels,
            DECAY => &self.decay.labels,
            BETA1 => &self.beta1.labels,
            BETA2 => &self.beta2.labels,
            _ => &self.seed.labels,
        }
    }

    /// The axes an analysis section checks against.
    pub(super) fn axes(&self, trains: bool) -> section::GridAxes<'_> {
        section::GridAxes {
            archs: &self.arch.values,
            dataset_labels: &self.dataset.labels,
            datasets: &self.dataset.values,
            trains,
        }
    }

    pub(super) fn lens(&self) -> [usize; AXES] {
        std::array::from_fn(|a| self.labels(a).len())
    }

    /// The index of grid key `key` = `v` on its axis (appending a new value when `add`).
    pub(super) fn index(&mut self, key: &str, v: &Value, add: bool) -> Result<(usize, usize), String> {
        fn go<T>(
            axis: &mut Axis<T>,
            key: &str,
            v: T,
            label: impl Fn(&T) -> String,
            add: bool,
        ) -> Result<usize, String> {
            let l = label(&v);
            axis.index(key, l, v, add)
        }
        let axis = GRID_KEYS
            .iter()
            .position(|k| *k == key)
            .ok_or_else(|| format!("unknown grid key {key:?} (use one of {})", GRID_KEYS.join(", ")))?;
        let f = format_number;
        let index = match axis {
            DATASET => {
                let s = string(key, v)?;
                self.dataset.position(&s).ok_or_else(|| {
                    format!("dataset = {s:?} is not one of the spec's datasets ({})", few(&self.dataset.labels))
                })?
            }
            ARCH => go(&mut self.arch, key, check_arch(v)?, String::clone, add)?,
            OPTIMIZER => go(&mut self.optimizer, key, check_optimizer(v)?, String::clone, add)?,
            LR => go(&mut self.lr, key, check_lr(v)?, |x| f(*x), add)?,
            BATCH => go(&mut self.batch, key, check_batch(v)?, usize::to_string, add)?,
            EPOCHS => go(&mut self.epochs, key, check_epochs(v)?, u32::to_string, add)?,
            SCHEDULE => go(&mut self.schedule, key, check_schedule(v)?, String::clone, add)?,
            MOMENTUM => go(&mut self.momentum, key, check_momentum(v)?, |x| f(*x), add)?,
            NESTEROV => go(&mut self.nesterov, key, check_nesterov(v)?, bool::to_string, add)?,
            DECAY => go(&mut self.decay, key, check_decay(v)?, |x| f(*x), add)?,
            BETA1 => go(&mut self.beta1, key, check_beta1(v)?, |x| f(*x), add)?,
            BETA2 => go(&mut self.beta2, key, check_beta2(v)?, |x| f(*x), add)?,
            _ => go(&mut self.seed, key, check_seed(v)?, u64::to_string, add)?,
        };
        Ok((axis, index))
    }

    /// Blank out the axes that do not apply to the point's optimizer, so equal tasks compare equal.
    /// How many distinct points the product of `lens` has once [`Grid::normalise`] has merged
    /// the axes that do not apply (Adam's betas for SGD, momentum for Adam): computed, not
    /// enumerated, so a grid too large to plan is refused at once.
    pub(super) fn distinct_points(&self, lens: &[usize; AXES]) -> usize {
        self.optimizer
            .values
            .iter()
            .map(|o| {
                let skip: &[usize] = if o == "sgd" { &[BETA1, BETA2] } else { &[MOMENTUM, NESTEROV] };
                (0..AXES)
                    .filter(|a| *a != OPTIMIZER && !skip.contains(a))
                    .fold(1usize, |acc, a| acc.saturating_mul(lens[a]))
            })
            .fold(0usize, usize::saturating_add)
    }

    pub(super) fn normalise(&self, mut idx: [usize; AXES]) -> [usize; AXES] {
        if self.optimizer.values[idx[OPTIMIZER]] == "sgd" {
            idx[BETA1] = NOT_APPLICABLE;
            idx[BETA2] = NOT_APPLICABLE;
        } else {
            idx[MOMENTUM] = NOT_APPLICABLE;
            idx[NESTEROV] = NOT_APPLICABLE;
        }
        idx
    }
}

/// Settings shared by every point (scalars, not axes).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Fixed {
    pub(super) classes: Option<usize>,
    pub(super) adam_eps: f64,
    pub(super) step_every: u32,
    pub(super) gamma: f64,
    pub(super) min_lr: f64,
    pub(super) augment: Augment,
    pub(super) test_sets: Vec<BandSet>,
    pub(super) clip: bool,
    pub(super) every_steps: u32,
    pub(super) steps_epochs: u32,
    pub(super) test_limit: usize,
    pub(super) precision: Precision,
    pub(super) memory_format: MemoryFormat,
    pub(super) band_radii: BandRadii,
}

/// A model's outputs when the spec does not say: Syn_d's 4, an image folder's classes, else 10
/// (CIFAR-10, and MNIST, Fashion-MNIST and KMNIST among the idx sets; EMNIST's need `classes`).
pub(super) fn default_classes(dataset: &DatasetSource) -> usize {
    match dataset {
        DatasetSource::Syn(_) => crate::syn::CLASSES,
        DatasetSource::Folder { classes, .. } => classes.len(),
        DatasetSource::Cifar10 { .. } | DatasetSource::Npy { .. } | DatasetSource::Idx { .. } => 10,
    }
}

/// The band layout of `dataset`'s spectrum: Syn_d's own (its data is built from it), otherwise
/// `radii` placed on its images (checked when the spec was read).
pub(super) fn layout_of(dataset: &DatasetSource, radii: BandRadii) -> BandLayout {
    match dataset {
        DatasetSource::Syn(config) => config.layout,
        other => other.image_shape().and_then(|shape| radii.layout(shape).ok()).unwrap_or_default(),
    }
}

impl Grid {
    /// The grid point at `idx`; `labels` is the sweep's shared copy of every axis's labels.
    pub(super) fn point(
        &self,
        idx: &[usize; AXES],
        varying: &[bool; AXES],
        labels: &Arc<Vec<Vec<String>>>,
        fixed: &Fixed,
    ) -> GridPoint {
        let values = GridValues { labels: Arc::clone(labels), idx: *idx };
        let label = |a: usize| values.at(a).as_str();
        let mut id = format!(
            "{}-{}-{}-lr{}-bs{}-ep{}",
            label(DATASET),
            label(ARCH),
            label(OPTIMIZER),
            label(LR),
            label(BATCH),
            label(EPOCHS)
        );
        for (a, prefix) in [(SCHEDULE, "sched"), (MOMENTUM, "mom"), (DECAY, "wd"), (BETA1, "b1"), (BETA2, "b2")] {
            if varying[a] && idx[a] != NOT_APPLICABLE {
                id.push_str(&format!("-{prefix}{}", label(a)));
            }
            if a == MOMENTUM
                && varying[NESTEROV]
                && idx[NESTEROV] != NOT_APPLICABLE
                && self.nesterov.values[idx[NESTEROV]]
            {
                id.push_str("-nesterov");
            }
        }
        id.push_str(&format!("-seed{}", label(SEED)));

        let weight_decay = self.decay.values[idx[DECAY]];
        let optimizer = if self.optimizer.values[idx[OPTIMIZER]] == "sgd" {
            Optimizer::Sgd {
                momentum: self.momentum.values[idx[MOMENTUM]],
                weight_decay,
                nesterov: self.nesterov.values[idx[NESTEROV]],
            }
        } else {
            Optimizer::Adam {
                weight_decay,
                beta1: self.beta1.values[idx[BETA1]],
                beta2: self.beta2.values[idx[BETA2]],
                eps: fixed.adam_eps,
            }
        };
        let schedule = match self.schedule.values[idx[SCHEDULE]].as_str() {
            "step" => LrSchedule::Step { every_epochs: fixed.step_every, gamma: fixed.gamma },
            "cosine" => LrSchedule::Cosine { min_lr: fixed.min_lr },
            _ => LrSchedule::Constant,
        };
        let dataset = self.dataset.values[idx[DATASET]].clone();
        let classes = fixed.classes.unwrap_or_else(|| default_classes(&dataset));
        let band_layout = layout_of(&dataset, fixed.band_radii);
        GridPoint {
            id,
            values,
            given: None,
            task: TrainTask {
                dataset,
                train: TrainConfig {
                    model: self.arch.values[idx[ARCH]].clone(),
                    classes,
                    optimizer,
                    lr: self.lr.values[idx[LR]],
                    schedule,
                    batch_size: self.batch.values[idx[BATCH]],
                    epochs: self.epochs.values[idx[EPOCHS]],
                    seed: self.seed.values[idx[SEED]],
                    augment: fixed.augment,
                    test_sets: fixed.test_sets.clone(),
                    band_layout,
                    clip_filtered: fixed.clip,
                    eval_every_steps: fixed.every_steps,
                    eval_steps_epochs: fixed.steps_epochs,
                    test_limit: fixed.test_limit,
                    precision: fixed.precision,
                    memory_format: fixed.memory_format,
                    keep_epochs: Vec::new(),
                },
            },
        }
    }
}
