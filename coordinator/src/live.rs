//! What the dashboard shows of each grid point while the sweep runs: each kind's live view of
//! what the driver merged so far (the rooms draw them: every planned heatmap, NaN — `null` in
//! JSON, grey on the page — where no chunk has reported; the DFM loss maps), and per-class F1
//! curves of the point's training from the store. Built under the driver's lock; the curves are
//! read from the store outside it.

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
    /// Of the parts the kinds with a live view merge (a point's heatmaps), those complete.
    pub maps_complete: usize,
    pub maps: usize,
}

#[derive(Debug, Serialize)]
pub struct PointDetail {
    pub index: usize,
    pub id: String,
    pub state: String,
    /// Each kind's live view of the point, by name (`maps`: the heatmaps, `dfm`: the DFM loss
    /// maps), flattened into the point's JSON; a kind without one adds nothing.
    #[serde(flatten)]
    pub views: BTreeMap<&'static str, serde_json::Value>,
    /// Test set → per class `[step, F1]` (thinned to at most 400 points a class).
    pub f1: BTreeMap<String, Vec<Vec<(u64, f64)>>>,
    /// Test set → per class the newest F1 (`null` for a class not yet evaluated).
    pub last_f1: BTreeMap<String, Vec<Option<f64>>>,
    #[serde(skip)]
    pub(crate) train_task: Option<u64>,
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
                let (maps_complete, maps) = crate::kinds::live_progress(self.maps, index);
                PointSummary {
                    index,
                    id: self.point_ids[index].clone(),
                    state: self.point_state(index).0,
                    maps_complete,
                    maps,
                }
            })
            .collect()
    }

    /// The point's live views as merged now; `None` for an index outside the sweep.
    pub(crate) fn live_point(&self, index: usize) -> Option<PointDetail> {
        let id = self.point_ids.get(index)?.clone();
        let (state, train_task) = self.point_state(index);
        let views = crate::kinds::live_views(self.maps, index);
        Some(PointDetail { index, id, state, views, f1: BTreeMap::new(), last_f1: BTreeMap::new(), train_task })
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
