//! The space a spec describes, and the grid's walk of it. Parsing stops at a [`Space`]: the
//! axes with their values (an `[[include]]`'s values joined), which points of their product the
//! spec selects, the settings every point shares and the given models. A search strategy then
//! chooses points from it: the grid strategy walks every selected point in grid order
//! ([`Space::grid_points`], what `Sweep::points` holds); a strategy that picks points by their
//! axis indices builds each with [`Space::point`].

use super::*;

/// The space of a sweep's points (see the module's documentation).
#[derive(Clone, Debug, PartialEq)]
pub struct Space {
    pub(super) grid: Grid,
    pub(super) selection: Selection,
    pub(super) fixed: Fixed,
    /// Whether the spec trains models (`[model] arch`): a spec of given models only selects no
    /// trained point.
    pub(super) trains: bool,
    /// Each given model with the classes its `[[model]]` table says.
    pub(super) given: Vec<(GivenModel, Option<usize>)>,
    /// Where the walk's errors point: the spec file and `nesterov`'s line (1 when not given).
    pub(super) file: String,
    pub(super) nesterov_line: usize,
}

/// Which trained points the sweep plans: the product of the axes as written, then the
/// [[include]] points (which may add values to the axes), less the [[exclude]] matches.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Selection {
    /// The axes' lengths as written: the cartesian product covers these.
    pub(super) lens: [usize; AXES],
    pub(super) includes: Vec<[usize; AXES]>,
    pub(super) excludes: Vec<Vec<(usize, usize)>>,
}

impl Space {
    /// An upper bound on the grid's points: distinct trained ones, plus one per given model and
    /// dataset.
    pub fn most_points(&self) -> usize {
        let trained = match self.trains {
            true => self.grid.distinct_points(&self.selection.lens).saturating_add(self.selection.includes.len()),
            false => 0,
        };
        trained.saturating_add(self.given.len().saturating_mul(self.grid.dataset.values.len()))
    }

    /// The number of values on each axis, in [`GRID_KEYS`] order (an [[include]]'s values
    /// counted): the ranges of [`Space::point`]'s indices.
    pub fn axis_sizes(&self) -> Vec<usize> {
        self.grid.lens().to_vec()
    }

    /// The trained point at `indices` (one per axis, in [`GRID_KEYS`] order), whether or not the
    /// grid selects it. Keys that do not apply to its optimizer are blanked, as in the grid.
    pub fn point(&self, indices: &[usize]) -> Result<GridPoint, SpecError> {
        let sizes = self.grid.lens();
        let idx: [usize; AXES] = indices.try_into().map_err(|_| {
            self.error(1, format!("a point has one index per grid key ({AXES}), got {}", indices.len()))
        })?;
        if let Some(a) = (0..AXES).find(|&a| idx[a] >= sizes[a]) {
            return Err(self.error(1, format!("{} has {} values, no index {}", GRID_KEYS[a], sizes[a], idx[a])));
        }
        if !self.trains {
            return Err(self.error(1, "this spec trains no model: it has no trained points"));
        }
        let labels = Arc::new((0..AXES).map(|a| self.grid.labels(a).to_vec()).collect::<Vec<_>>());
        self.checked(self.grid.point(&self.grid.normalise(idx), &self.varying(), &labels, &self.fixed))
    }

    /// The grid strategy: the product of the axes (an odometer, the last axis fastest) less the
    /// excluded points, then the included ones, each distinct point once; then one point per
    /// given model and dataset. At most [`MAX_TASKS`] points (each plans at least one task).
    pub fn grid_points(&self) -> Result<Vec<GridPoint>, SpecError> {
        let mut points = self.trained_points()?;
        self.add_given_points(&mut points);
        Ok(points)
    }

    fn varying(&self) -> [bool; AXES] {
        self.grid.lens().map(|n| n > 1)
    }

    fn error(&self, line: usize, message: impl Into<String>) -> SpecError {
        SpecError { file: self.file.clone(), line, message: message.into() }
    }

    pub(super) fn too_many(&self, points: usize) -> SpecError {
        self.error(1, format!(
            "the grid has {points} points; each plans at least one task and a coordinator holds each task in memory (about 4 KB), so at most {MAX_TASKS} (8 GB) are planned; split the sweep"
        ))
    }

    /// PyTorch refuses Nesterov without momentum; say so here rather than on a worker.
    fn checked(&self, point: GridPoint) -> Result<GridPoint, SpecError> {
        if let Optimizer::Sgd { momentum, nesterov: true, .. } = point.task.train.optimizer {
            if momentum == 0.0 {
                return Err(self.error(
                    self.nesterov_line,
                    format!("nesterov = true needs momentum > 0 (point {}; exclude it with [[exclude]])", point.id),
                ));
            }
        }
        Ok(point)
    }

    fn trained_points(&self) -> Result<Vec<GridPoint>, SpecError> {
        if !self.trains {
            return Ok(Vec::new());
        }
        let Selection { lens: grid_lens, includes, excludes } = &self.selection;
        // Bounded by `MAX_POINTS` when the spec was parsed.
        let total: usize = grid_lens.iter().product();
        let varying = self.varying();
        let labels = Arc::new((0..AXES).map(|a| self.grid.labels(a).to_vec()).collect::<Vec<_>>());
        let excluded = |idx: &[usize; AXES]| excludes.iter().any(|f| f.iter().all(|&(a, i)| idx[a] == i));
        let capacity = (total + includes.len()).min(1 << 20);
        let mut seen: HashSet<[usize; AXES]> = HashSet::with_capacity(capacity);
        let mut points = Vec::with_capacity(capacity);
        let mut add = |idx: [usize; AXES], included: bool| -> Result<(), SpecError> {
            let idx = self.grid.normalise(idx);
            if (!included && excluded(&idx)) || !seen.insert(idx) {
                return Ok(());
            }
            points.push(self.checked(self.grid.point(&idx, &varying, &labels, &self.fixed))?);
            if points.len() > MAX_TASKS {
                return Err(self.too_many(self.most_points().max(points.len())));
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
        for &idx in includes {
            add(idx, true)?;
        }
        Ok(points)
    }

    /// Given models: one analysis point per model and dataset, after the trained points.
    fn add_given_points(&self, points: &mut Vec<GridPoint>) {
        let mut labels: Vec<Vec<String>> = (0..AXES).map(|a| self.grid.labels(a).to_vec()).collect();
        let first_given = labels[ARCH].len();
        labels[ARCH].extend(self.given.iter().map(|(m, _)| m.name.clone()));
        let labels = Arc::new(labels);
        for (g, (model, classes)) in self.given.iter().enumerate() {
            for (d, dataset) in self.grid.dataset.values.iter().enumerate() {
                let mut idx = [NOT_APPLICABLE; AXES];
                idx[DATASET] = d;
                idx[ARCH] = first_given + g;
                let values = GridValues { labels: Arc::clone(&labels), idx };
                points.push(given_point(dataset, model, *classes, values, &self.fixed));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::spec::{parse, GRID_KEYS};

    /// A point built by its axis indices is the grid's point at those indices; indices out of
    /// range, of the wrong count, or a Nesterov point without momentum are one-line errors.
    #[test]
    fn a_point_by_indices_is_the_grids_point() {
        let spec = "[[dataset]]\nkind = \"syn\"\nband = [1, 2]\n[model]\narch = \"tiny\"\n[train]\noptimizer = \"sgd\"\nlr = [0.1, 0.01]\nbatch_size = 8\nepochs = 1\nmomentum = [0.9, 0.0]\nnesterov = [false, true]\n[[exclude]]\nmomentum = 0.0\nnesterov = true\n";
        let sweep = parse(spec, "s.toml").unwrap();
        let sizes = sweep.space.axis_sizes();
        assert_eq!(sizes.len(), GRID_KEYS.len());
        assert_eq!(sizes[0] * sizes[3] * sizes[7] * sizes[8], 16, "2 datasets × 2 lr × 2 momentum × 2 nesterov");
        assert_eq!(sweep.points.len(), 12, "the excluded Nesterov-without-momentum points are not walked");
        let mut built = Vec::new();
        for d in 0..2 {
            for lr in 0..2 {
                for m in 0..2 {
                    for n in 0..2 {
                        let mut idx = vec![0; GRID_KEYS.len()];
                        (idx[0], idx[3], idx[7], idx[8]) = (d, lr, m, n);
                        match sweep.space.point(&idx) {
                            Ok(p) => built.push(p),
                            Err(e) => {
                                assert_eq!((m, n), (1, 1), "{e}");
                                assert_eq!(e.line, 12, "{e}");
                                assert!(e.message.contains("nesterov = true needs momentum > 0"), "{e}");
                            }
                        }
                    }
                }
            }
        }
        assert_eq!(built, sweep.points);
        let err = sweep.space.point(&[0; 3]).unwrap_err().to_string();
        assert!(err.contains("one index per grid key (13), got 3"), "{err}");
        let mut idx = vec![0; GRID_KEYS.len()];
        idx[3] = 2;
        let err = sweep.space.point(&idx).unwrap_err().to_string();
        assert!(err.contains("lr has 2 values, no index 2"), "{err}");
    }
}
