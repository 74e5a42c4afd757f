//! What the dashboard shows of each grid point while the sweep runs: every planned map as merged
//! so far (NaN, i.e. `null` in JSON and grey on the page, where no chunk has reported), the DFM
//! loss maps of the shortcut stage, and per-class F1 curves from the store. Built under the
//! driver's lock from what it merged; the curves are read from the store outside it.

use crate::driver::View;
use crate::store::Reader;
use serde::Serialize;
use std::collections::BTreeMap;

/// Points of a series beyond this are thinned (evenly, keeping the last) for the page.
const MAX_SERIES_POINTS: usize = 400;

#[derive(Debug, Serialize)]
pub struct PointSummary {
    pub index: usize,
    pub id: String,
    /// The training task's state; `given` for a given model.
    pub state: String,
    pub maps_complete: usize,
    pub maps: usize,
}

#[derive(Debug, Serialize)]
pub struct PointDetail {
    pub index: usize,
    pub id: String,
    pub state: String,
    pub maps: Vec<LiveMap>,
    pub dfm: Option<LiveDfm>,
    /// Test set → per class `[step, F1]` (thinned to at most 400 points a class).
    pub f1: BTreeMap<String, Vec<Vec<(u64, f64)>>>,
    /// Test set → per class the newest F1 (`null` for a class not yet evaluated).
    pub last_f1: BTreeMap<String, Vec<Option<f64>>>,
    #[serde(skip)]
    pub(crate) train_task: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct LiveMap {
    /// The checkpoint's epoch (`at_epochs`), `null` for the trained model.
    pub epoch: Option<u32>,
    pub eps: f64,
    pub height: usize,
    pub width: usize,
    pub chunks_done: usize,
    pub chunks: usize,
    /// Canonical cells written and planned.
    pub written: usize,
    pub planned: usize,
    pub complete: bool,
    /// Clean test error of the images the chunks used; `null` before the first chunk.
    pub clean_error: Option<f64>,
    /// Mean error over the computed cells of the centred map (the report's `mean_heatmap_error`).
    pub mean_error: Option<f64>,
    /// Centred `H × W` mean error per cell, row-major; `null` where not computed yet.
    pub values: Vec<f64>,
}

#[derive(Debug, Serialize)]
pub struct LiveDfm {
    pub height: usize,
    pub width: usize,
    pub units_done: usize,
    pub units: usize,
    /// Per class the centred loss map `L_c` (`null` where a unit has not reported).
    pub loss: Vec<Vec<f64>>,
}

impl View<'_> {
    fn point_state(&self, index: usize) -> (String, Option<u64>) {
        match self.point_trains.get(index).copied().flatten() {
            Some(t) => (self.scheduler.state(t).map_or("unknown", |s| s.as_str()).to_string(), Some(t.0)),
            None => ("given".to_string(), None),
        }
    }

    pub(crate) fn live_points(&self) -> Vec<PointSummary> {
        (0..self.point_ids.len())
            .map(|index| {
                let maps: Vec<_> = self.maps.heatmaps.of_point(index).collect();
                PointSummary {
                    index,
                    id: self.point_ids[index].clone(),
                    state: self.point_state(index).0,
                    maps_complete: maps.iter().filter(|(_, _, done, chunks)| done == chunks).count(),
                    maps: maps.len(),
                }
            })
            .collect()
    }

    /// The point's maps and DFM as merged now; `None` for an index outside the sweep.
    pub(crate) fn live_point(&self, index: usize) -> Option<PointDetail> {
        let id = self.point_ids.get(index)?.clone();
        let (state, train_task) = self.point_state(index);
        let maps = self
            .maps
            .heatmaps
            .of_point(index)
            .map(|(key, map, chunks_done, chunks)| {
                let shape = map.error.shape();
                let values = map.error.means();
                let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
                let planned = if map.planned_cells > 0 { map.planned_cells } else { shape.heatmap_cells().len() };
                LiveMap {
                    epoch: key.epoch,
                    eps: key.eps(),
                    height: shape.h,
                    width: shape.w,
                    chunks_done,
                    chunks,
                    written: map.error.written(),
                    planned,
                    complete: chunks_done == chunks,
                    clean_error: (map.clean.n > 0).then(|| map.clean.mean()),
                    mean_error: (!finite.is_empty()).then(|| finite.iter().sum::<f64>() / finite.len() as f64),
                    values,
                }
            })
            .collect();
        let dfm = self.maps.dfms.planned(index).map(|acc| {
            let shape = acc.shape();
            LiveDfm {
                height: shape.h,
                width: shape.w,
                units_done: acc.units().len() - acc.missing().len(),
                units: acc.units().len(),
                loss: (0..acc.classes()).map(|c| acc.loss_map(c)).collect(),
            }
        });
        Some(PointDetail { index, id, state, maps, dfm, f1: BTreeMap::new(), last_f1: BTreeMap::new(), train_task })
    }
}

impl PointDetail {
    /// Fill in the F1 curves from the store (the points the report's curves are drawn from).
    pub fn read_curves(&mut self, reader: &Reader) -> Result<(), crate::store::StoreError> {
        let Some(task) = self.train_task else { return Ok(()) };
        let mut series: BTreeMap<String, Vec<Vec<(u64, f64)>>> = BTreeMap::new();
        for p in reader.metrics(task)?.into_iter().filter(|p| p.name == "f1" && p.class_index >= 0) {
            let classes = series.entry(p.test_set.clone()).or_default();
            let class = p.class_index as usize;
            if classes.len() <= class {
                classes.resize_with(class + 1, Vec::new);
            }
            classes[class].push((p.step, p.value));
        }
        self.last_f1 = series
            .iter()
            .map(|(set, classes)| (set.clone(), classes.iter().map(|c| c.last().map(|p| p.1)).collect()))
            .collect();
        for classes in series.values_mut() {
            for points in classes.iter_mut() {
                *points = thin(points);
            }
        }
        self.f1 = series;
        Ok(())
    }
}

/// At most [`MAX_SERIES_POINTS`] of `points`, evenly spaced, first and last kept.
fn thin(points: &[(u64, f64)]) -> Vec<(u64, f64)> {
    if points.len() <= MAX_SERIES_POINTS {
        return points.to_vec();
    }
    let last = points.len() - 1;
    (0..MAX_SERIES_POINTS).map(|i| points[i * last / (MAX_SERIES_POINTS - 1)]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thinning_keeps_the_ends_and_the_bound() {
        let points: Vec<(u64, f64)> = (0..1000).map(|s| (s, s as f64)).collect();
        let thinned = thin(&points);
        assert_eq!(thinned.len(), MAX_SERIES_POINTS);
        assert_eq!(thinned.first(), Some(&(0, 0.0)));
        assert_eq!(thinned.last(), Some(&(999, 999.0)));
        assert!(thinned.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(thin(&points[..10]), points[..10].to_vec());
    }
}
