//! Aggregation over seeds: grid points that differ only in `seed` form a group, and a claim about
//! the group rests on every run in it. The numbers: the mean and the sample standard deviation
//! (`n − 1` in the denominator, like NumPy's `std(ddof=1)` and pandas; 0 for one run) of final
//! metrics and learning-order steps; per evaluation step the mean ± std of each class's F1 (a
//! band around the mean curve); per heatmap cell the mean and the standard error of the mean
//! (`std / √n`) across the group's maps. Values that are not finite (a cell never computed, a
//! class that never reached a threshold) are left out and the count says how many remained.

use crate::task::MetricPoint;
use std::collections::BTreeMap;

/// Mean and spread of `n` finite values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub mean: f64,
    /// Sample standard deviation (0 for a single value).
    pub std: f64,
}

impl Summary {
    /// The finite values among `values`; `None` when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Summary> {
        let finite: Vec<f64> = values.into_iter().filter(|v| v.is_finite()).collect();
        let n = finite.len();
        if n == 0 {
            return None;
        }
        let mean = finite.iter().sum::<f64>() / n as f64;
        let std =
            if n < 2 { 0.0 } else { (finite.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() };
        Some(Summary { n, mean, std })
    }

    /// Standard error of the mean, `std / √n` (`NaN` for one value: no spread is known).
    pub fn standard_error(self) -> f64 {
        if self.n < 2 {
            f64::NAN
        } else {
            self.std / (self.n as f64).sqrt()
        }
    }
}

/// The group of a point id: the id without its `-seed<label>` suffix (ids end with it), or
/// `None` for a point that has no seed (a given model).
pub fn group_of<'a>(id: &'a str, seed_label: &str) -> Option<&'a str> {
    if seed_label.is_empty() {
        return None;
    }
    id.strip_suffix(&format!("-seed{seed_label}"))
}

/// Per cell of equally shaped maps: the mean and the standard error across the maps, over the
/// maps where the cell is finite (`NaN` where no map, or for the error fewer than two, has it).
pub fn map_mean_and_error(maps: &[&[f64]]) -> Result<(Vec<f64>, Vec<f64>), String> {
    let Some(len) = maps.first().map(|m| m.len()) else { return Ok((Vec::new(), Vec::new())) };
    if let Some(other) = maps.iter().find(|m| m.len() != len) {
        return Err(format!("maps of {len} and {} cells cannot be averaged", other.len()));
    }
    let mut mean = Vec::with_capacity(len);
    let mut error = Vec::with_capacity(len);
    for cell in 0..len {
        match Summary::of(maps.iter().map(|m| m[cell])) {
            Some(s) => {
                mean.push(s.mean);
                error.push(s.standard_error());
            }
            None => {
                mean.push(f64::NAN);
                error.push(f64::NAN);
            }
        }
    }
    Ok((mean, error))
}

/// One point of a group's F1 band: a class on a test set at one evaluation step.
#[derive(Clone, Debug, PartialEq)]
pub struct BandPoint {
    pub test_set: String,
    pub class: i32,
    pub step: u64,
    /// The fractional epoch of the step (the first run's; runs of one group share the schedule).
    pub epoch: f64,
    pub f1: Summary,
}

/// Per test set, class and step, the F1 of every run of the group that evaluated it (the runs
/// differ only in seed, so their evaluation steps agree), in (test set, class, step) order.
pub fn f1_band(runs: &[&[MetricPoint]]) -> Vec<BandPoint> {
    let mut cells: BTreeMap<(String, i32, u64), (f64, Vec<f64>)> = BTreeMap::new();
    for run in runs {
        for p in run.iter().filter(|p| p.name == "f1") {
            let entry = cells.entry((p.test_set.clone(), p.class_index, p.step)).or_insert((p.epoch, Vec::new()));
            entry.1.push(p.value);
        }
    }
    cells
        .into_iter()
        .filter_map(|((test_set, class, step), (epoch, values))| {
            Summary::of(values).map(|f1| BandPoint { test_set, class, step, epoch, f1 })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_sample_standard_deviation_of_hand_made_values() {
        // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, sum of squares 32, sample variance 32/7.
        let s = Summary::of([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]).unwrap();
        assert_eq!((s.n, s.mean), (8, 5.0));
        assert!((s.std - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert!((s.standard_error() - (32.0f64 / 7.0 / 8.0).sqrt()).abs() < 1e-12);
        // Non-finite values are left out; one value has no spread; none is no summary.
        let one = Summary::of([f64::NAN, 0.25, f64::INFINITY]).unwrap();
        assert_eq!((one.n, one.mean, one.std), (1, 0.25, 0.0));
        assert!(one.standard_error().is_nan());
        assert_eq!(Summary::of([f64::NAN]), None);
    }

    #[test]
    fn groups_are_ids_without_their_seed() {
        assert_eq!(group_of("Syn_4-tiny-adam-lr0.1-bs8-ep1-seed12", "12"), Some("Syn_4-tiny-adam-lr0.1-bs8-ep1"));
        assert_eq!(group_of("cifar10-zoo_a", ""), None);
        assert_eq!(group_of("Syn_4-tiny-seed1", "2"), None);
    }

    #[test]
    fn maps_average_cell_by_cell_with_their_standard_error() {
        let a = [0.1, 0.5, f64::NAN, 1.0];
        let b = [0.3, 0.5, f64::NAN, f64::NAN];
        let c = [0.2, 0.8, f64::NAN, 0.0];
        let (mean, error) = map_mean_and_error(&[&a, &b, &c]).unwrap();
        assert!((mean[0] - 0.2).abs() < 1e-12 && (error[0] - (0.01f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((mean[1] - 0.6).abs() < 1e-12 && (error[1] - (0.03f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!(mean[2].is_nan() && error[2].is_nan(), "a cell no map computed stays NaN, never 0");
        assert!((mean[3] - 0.5).abs() < 1e-12 && (error[3] - (0.5f64 / 2.0).sqrt()).abs() < 1e-12);
        assert!(map_mean_and_error(&[&a, &[0.0; 3]]).is_err());
    }

    #[test]
    fn f1_bands_join_runs_by_test_set_class_and_step() {
        let f1 = |set: &str, class: i32, step: u64, value: f64| MetricPoint {
            epoch: step as f64 / 4.0,
            step,
            name: "f1".into(),
            test_set: set.into(),
            class_index: class,
            value,
        };
        let run_a = vec![f1("B1234", 0, 0, 0.2), f1("B1234", 0, 4, 0.6), f1("B1234", 1, 4, 0.9)];
        let mut run_b = vec![f1("B1234", 0, 0, 0.4), f1("B1234", 0, 4, 0.8), f1("B1234", 1, 4, 0.7)];
        run_b.push(MetricPoint { name: "accuracy".into(), class_index: -1, ..f1("B1234", -1, 4, 0.5) });
        let band = f1_band(&[&run_a, &run_b]);
        assert_eq!(band.len(), 3);
        assert_eq!((band[0].class, band[0].step, band[0].f1.n), (0, 0, 2));
        assert!((band[0].f1.mean - 0.3).abs() < 1e-12 && (band[0].f1.std - 0.02f64.sqrt()).abs() < 1e-12);
        assert_eq!((band[2].class, band[2].step, band[2].epoch), (1, 4, 1.0));
        assert!((band[2].f1.mean - 0.8).abs() < 1e-12);
    }
}
