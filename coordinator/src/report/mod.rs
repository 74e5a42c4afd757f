//! The run directory's results, rendered from the store alone (DESIGN.md "run directory"):
//! `results.csv`, `heatmaps/` (`.npy` + `.png` per model × ε × layer, plus a layer grid),
//! `curves/` (per-class F1 CSV + PNG over all epochs and over the first three), `confusion/`
//! (CSV + PNG per model × test set), `checkpoints/`, `overview.png` and `report.html`.
//!
//! Every figure has its numbers beside it (`.npy` or CSV); `freqsweep report DIR` runs this same
//! function again, so the files depend only on what the store holds.

pub use freqsweep_common::figures;
mod html;

use crate::graph::{self, PlannedTask};
use crate::merge::{self, MergedHeatmap};
use crate::store::Reader;
use anyhow::{Context, Result};
use figures::{CentredMap, LinePanel};
use freqsweep_common::npy::NpyArray;
use freqsweep_common::spec::{Sweep, GRID_KEYS};
use freqsweep_common::spectrum::Shape2;
use freqsweep_common::task::{HeatmapOutcome, MetricPoint, TaskKind, TaskOutcome, TaskSpec, TrainOutcome, CHECKPOINT_OUTPUT};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

/// The git revision this binary was built from (`unknown` outside a git checkout).
pub const GIT_REVISION: &str = env!("FREQSWEEP_GIT_REVISION");

/// Epochs shown in the "early" learning-curve figure (the poster's Figure 5 shows the first 3).
pub const EARLY_EPOCHS: f64 = 3.0;

/// Per test set, per class: the first step at which F1 reached each threshold of [`LEARNED_AT`].
pub type LearningOrder = Vec<(String, Vec<(i32, Vec<Option<u64>>)>)>;

/// F1 thresholds of the learning-order table.
pub const LEARNED_AT: [f64; 2] = [0.5, 0.9];

/// What the end-of-run summary reports.
pub struct Summary {
    pub counts: Vec<(String, usize)>,
    pub failed: Vec<(String, String)>,
}

/// Everything the report shows about one grid point, with the files written for it
/// (paths relative to the run directory).
pub(crate) struct PointReport {
    pub id: String,
    /// Grid key → value, in `GRID_KEYS` order.
    pub values: Vec<(String, String)>,
    pub state: String,
    pub error: Option<String>,
    pub outcome: Option<TrainOutcome>,
    pub heatmaps: Vec<HeatmapFiles>,
    pub curves: Vec<String>,
    /// Per test set, per class: the first evaluated step at which F1 reached each of
    /// [`LEARNED_AT`] (`None`: never) — the poster's "which class is learned first".
    pub learning_order: LearningOrder,
    pub confusions: Vec<(String, String)>,
    pub raw: Vec<String>,
}

pub(crate) struct HeatmapFiles {
    pub eps: f64,
    pub clean_error: f64,
    pub images: usize,
    pub complete: bool,
    pub error_png: String,
    pub grid_png: Option<String>,
    pub layer_pngs: Vec<(String, String)>,
}

/// Render every result file of a run directory from its store.
pub fn write_results(dir: &Path, reader: &Reader, sweep: &Sweep, tasks: &[PlannedTask]) -> Result<Summary> {
    let rows: HashMap<u64, crate::store::TaskRow> = reader.tasks()?.into_iter().map(|r| (r.id, r)).collect();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = Vec::new();
    for t in tasks {
        let row = &rows[&t.id.0];
        *counts.entry(row.state.clone()).or_default() += 1;
        if row.state == "failed" {
            failed.push((t.key.clone(), row.error.clone().unwrap_or_default()));
        }
    }
    let test_sets: Vec<String> = sweep
        .points
        .first()
        .map(|p| p.task.train.test_sets.iter().map(|s| s.to_string()).collect())
        .unwrap_or_default();
    let eps_list: Vec<f64> = sweep.heatmap.as_ref().map(|h| h.eps.clone()).unwrap_or_default();
    let mut csv = results_header(&test_sets, &eps_list);
    let mut points = Vec::new();

    for (index, point) in sweep.points.iter().enumerate() {
        let train =
            tasks.iter().find(|t| t.point == index && t.kind() == TaskKind::Train).expect("every point has a train task");
        let row = &rows[&train.id.0];
        let outcome = match row.result_json.as_deref().map(serde_json::from_str::<TaskOutcome>) {
            Some(Ok(TaskOutcome::Train(o))) => Some(o),
            _ => None,
        };
        let mut report = PointReport {
            id: point.id.clone(),
            values: point.values.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            state: row.state.clone(),
            error: row.error.clone(),
            outcome: outcome.clone(),
            heatmaps: Vec::new(),
            curves: Vec::new(),
            learning_order: Vec::new(),
            confusions: Vec::new(),
            raw: Vec::new(),
        };
        let metric_points = reader.metrics(train.id.0)?;
        if !metric_points.is_empty() {
            write_curves(dir, &point.id, &metric_points, &test_sets, &mut report)?;
            for (set, rows) in merge::final_confusions(&metric_points, point.task.train.classes) {
                let stem = format!("confusion/{}_{set}", point.id);
                write_file(&dir.join(format!("{stem}.csv")), &merge::confusion_csv(&rows))?;
                let title = format!("{} on {set}", short_id(&point.id));
                save(&figures::confusion(&rows, &title), dir, &format!("{stem}.png"))?;
                report.raw.push(format!("{stem}.csv"));
                report.confusions.push((set, format!("{stem}.png")));
            }
        }
        if let Some((_, _, _, path)) = reader.task_artifacts(train.id.0)?.into_iter().find(|a| a.0 == CHECKPOINT_OUTPUT)
        {
            let target = dir.join("checkpoints").join(format!("{}.ot", point.id));
            std::fs::create_dir_all(target.parent().expect("has parent"))?;
            std::fs::copy(&path, &target).with_context(|| format!("copying {path}"))?;
        }
        let _ = write!(csv, "{},{}", point.id, row.state);
        for k in GRID_KEYS {
            let _ = write!(csv, ",{}", point.values.get(k).map_or("", String::as_str));
        }
        match &outcome {
            Some(o) => {
                let _ = write!(csv, ",{},{},{:.3},{}", o.epochs, o.steps, o.seconds, o.final_loss);
                for s in &test_sets {
                    match o.test_sets.iter().find(|t| &t.test_set == s) {
                        Some(t) => {
                            let _ = write!(csv, ",{},{}", t.accuracy, t.macro_f1);
                        }
                        None => csv.push_str(",,"),
                    }
                }
            }
            None => {
                csv.push_str(",,,,");
                for _ in &test_sets {
                    csv.push_str(",,");
                }
            }
        }
        for &eps in &eps_list {
            let chunks: Vec<HeatmapOutcome> = tasks
                .iter()
                .filter(|t| t.point == index && matches!(&t.spec, TaskSpec::Heatmap(h) if h.eps == eps))
                .filter_map(|t| rows[&t.id.0].result_json.as_deref())
                .filter_map(|j| match serde_json::from_str::<TaskOutcome>(j) {
                    Ok(TaskOutcome::Heatmap(h)) => Some(h),
                    _ => None,
                })
                .collect();
            if chunks.is_empty() {
                csv.push_str(",,");
                continue;
            }
            let mut map = MergedHeatmap::new(Shape2::new(32, 32), eps);
            for c in &chunks {
                map.add(c).map_err(|e| anyhow::anyhow!("merging heatmap of {}: {e}", point.id))?;
            }
            let stem = format!("{}_eps{}", point.id, graph::eps_label(eps));
            report.heatmaps.push(write_heatmap(dir, &stem, &point.id, &map, &mut report.raw)?);
            let means: Vec<f64> = map.error.means().into_iter().filter(|v| v.is_finite()).collect();
            let mean = if means.is_empty() { f64::NAN } else { means.iter().sum::<f64>() / means.len() as f64 };
            let _ = write!(csv, ",{},{}", map.clean.mean(), mean);
        }
        csv.push('\n');
        points.push(report);
    }
    write_file(&dir.join("results.csv"), &csv)?;

    let overview = write_overview(dir, &points, &test_sets)?;
    let page = html::Page {
        name: &sweep.name,
        spec_toml: reader.sweep_value("spec_toml")?.unwrap_or_default(),
        created_ms: reader.sweep_value("created_ms")?.and_then(|v| v.parse().ok()),
        created_by: reader.sweep_value("git_revision")?,
        counts: &counts,
        failed: &failed,
        workers: reader.workers()?,
        attempts: reader.attempts()?,
        points: &points,
        overview,
        results_csv: &csv,
    };
    write_file(&dir.join("report.html"), &html::render(&page))?;
    Ok(Summary { counts: counts.into_iter().collect(), failed })
}

fn results_header(test_sets: &[String], eps_list: &[f64]) -> String {
    let mut csv = String::from("point,state");
    for k in GRID_KEYS {
        let _ = write!(csv, ",{k}");
    }
    csv.push_str(",epochs_done,steps,seconds,final_loss");
    for s in test_sets {
        let _ = write!(csv, ",accuracy_{s},macro_f1_{s}");
    }
    for e in eps_list {
        let _ = write!(csv, ",clean_error_eps{0},mean_heatmap_error_eps{0}", graph::eps_label(*e));
    }
    csv.push('\n');
    csv
}

/// Point ids spell out the whole grid point; figure titles keep the part before the seed short.
fn short_id(id: &str) -> &str {
    if id.len() <= 48 {
        id
    } else {
        &id[..id.char_indices().nth(48).map_or(id.len(), |(i, _)| i)]
    }
}

/// Per-class F1 over all epochs (x = epoch) and over the first [`EARLY_EPOCHS`] (x = step).
fn write_curves(
    dir: &Path,
    id: &str,
    metric_points: &[MetricPoint],
    test_sets: &[String],
    report: &mut PointReport,
) -> Result<()> {
    let csv_path = format!("curves/{id}.csv");
    write_file(&dir.join(&csv_path), &merge::f1_curve_csv(metric_points))?;
    report.raw.push(csv_path);
    let f1: Vec<&MetricPoint> = metric_points.iter().filter(|p| p.name == "f1").collect();
    if f1.is_empty() {
        return Ok(());
    }
    let panels = |x_of: &dyn Fn(&MetricPoint) -> Option<f64>| -> Vec<LinePanel> {
        let mut sets: Vec<String> = test_sets.to_vec();
        for p in &f1 {
            if !sets.contains(&p.test_set) {
                sets.push(p.test_set.clone());
            }
        }
        sets.into_iter()
            .map(|set| {
                let mut by_class: BTreeMap<i32, Vec<(f64, f64)>> = BTreeMap::new();
                for p in f1.iter().filter(|p| p.test_set == set) {
                    if let Some(x) = x_of(p) {
                        by_class.entry(p.class_index).or_default().push((x, p.value));
                    }
                }
                for points in by_class.values_mut() {
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                }
                LinePanel {
                    title: set,
                    series: by_class.into_iter().map(|(c, pts)| (format!("class {c}"), pts)).collect(),
                }
            })
            .filter(|panel| !panel.series.is_empty())
            .collect()
    };
    let all = panels(&|p| Some(p.epoch));
    report.learning_order = learning_order(&f1, test_sets);
    let title = format!("per-class F1 — {}", short_id(id));
    save(&figures::line_panels(&all, "epoch", "F1", &title), dir, &format!("curves/{id}.png"))?;
    report.curves.push(format!("curves/{id}.png"));
    let early = panels(&|p| (p.epoch <= EARLY_EPOCHS).then_some(p.step as f64));
    if !early.is_empty() {
        let title = format!("per-class F1, first {EARLY_EPOCHS} epochs — {}", short_id(id));
        save(&figures::line_panels(&early, "step", "F1", &title), dir, &format!("curves/{id}_first3.png"))?;
        report.curves.push(format!("curves/{id}_first3.png"));
    }
    Ok(())
}

/// For each test set and class, the first step at which F1 reached each threshold of [`LEARNED_AT`].
fn learning_order(f1: &[&MetricPoint], test_sets: &[String]) -> LearningOrder {
    test_sets
        .iter()
        .map(|set| {
            let mut by_class: BTreeMap<i32, Vec<(u64, f64)>> = BTreeMap::new();
            for p in f1.iter().filter(|p| &p.test_set == set) {
                by_class.entry(p.class_index).or_default().push((p.step, p.value));
            }
            let classes = by_class
                .into_iter()
                .map(|(class, mut points)| {
                    points.sort_by_key(|p| p.0);
                    let firsts = LEARNED_AT.iter().map(|&t| points.iter().find(|p| p.1 >= t).map(|p| p.0)).collect();
                    (class, firsts)
                })
                .collect();
            (set.clone(), classes)
        })
        .filter(|(_, classes): &(String, Vec<_>)| !classes.is_empty())
        .collect()
}

/// `heatmaps/<stem>.npy/.png` (error rate on 0..1), `heatmaps/<stem>_<layer>.npy/.png` (cosine
/// distance, own scale) and `heatmaps/<stem>_layers.png` (all side by side).
fn write_heatmap(dir: &Path, stem: &str, id: &str, map: &MergedHeatmap, raw: &mut Vec<String>) -> Result<HeatmapFiles> {
    let shape = map.error.shape();
    let write_npy = |name: &str, values: &[f64], raw: &mut Vec<String>| -> Result<()> {
        let path = format!("heatmaps/{name}.npy");
        let full = dir.join(&path);
        std::fs::create_dir_all(full.parent().expect("has parent"))?;
        NpyArray::from_f64(vec![shape.h, shape.w], values).write(&full).with_context(|| path.clone())?;
        raw.push(path);
        Ok(())
    };
    let eps_text = graph::eps_label(map.eps);
    let error = map.error.means();
    write_npy(stem, &error, raw)?;
    let error_map = CentredMap { values: &error, height: shape.h, width: shape.w };
    let title = format!("{} ε={eps_text}: test error", short_id(id));
    save(&figures::heatmap(error_map, Some((0.0, 1.0)), &title, "error rate"), dir, &format!("heatmaps/{stem}.png"))?;
    let layer_means: Vec<(String, Vec<f64>)> = map.layers.iter().map(|(l, acc)| (l.clone(), acc.means())).collect();
    let mut layer_pngs = Vec::new();
    for (layer, values) in &layer_means {
        let name = format!("{stem}_{layer}");
        write_npy(&name, values, raw)?;
        let layer_map = CentredMap { values, height: shape.h, width: shape.w };
        let title = format!("{} ε={eps_text}: {layer}", short_id(id));
        save(&figures::heatmap(layer_map, None, &title, "1 − cos"), dir, &format!("heatmaps/{name}.png"))?;
        layer_pngs.push((layer.clone(), format!("heatmaps/{name}.png")));
    }
    let grid_png = if layer_means.is_empty() {
        None
    } else {
        let mut panels =
            vec![figures::MapPanel { name: "error", map: error_map, range: Some((0.0, 1.0)), bar_label: "error rate" }];
        for (layer, values) in &layer_means {
            let map = CentredMap { values, height: shape.h, width: shape.w };
            panels.push(figures::MapPanel { name: layer, map, range: None, bar_label: "1 − cos" });
        }
        let title = format!("{} ε={eps_text}: error and layer cosine distance", short_id(id));
        let path = format!("heatmaps/{stem}_layers.png");
        save(&figures::heatmap_grid(&panels, 3, &title), dir, &path)?;
        Some(path)
    };
    Ok(HeatmapFiles {
        eps: map.eps,
        clean_error: map.clean.mean(),
        images: map.images,
        complete: map.is_complete(),
        error_png: format!("heatmaps/{stem}.png"),
        grid_png,
        layer_pngs,
    })
}

/// Final accuracy of every point on every test set, one dot per (point, test set).
fn write_overview(dir: &Path, points: &[PointReport], test_sets: &[String]) -> Result<Option<String>> {
    let rows: Vec<(String, Vec<Option<f64>>)> = points
        .iter()
        .filter_map(|p| {
            let o = p.outcome.as_ref()?;
            let values =
                test_sets.iter().map(|s| o.test_sets.iter().find(|t| &t.test_set == s).map(|t| t.accuracy)).collect();
            Some((p.id.clone(), values))
        })
        .collect();
    if rows.is_empty() || test_sets.is_empty() {
        return Ok(None);
    }
    // A figure with thousands of rows is unreadable; the table and results.csv hold them all.
    let shown = &rows[..rows.len().min(OVERVIEW_ROWS)];
    let title = if shown.len() < rows.len() {
        format!("final accuracy (first {} of {} points)", shown.len(), rows.len())
    } else {
        "final accuracy".to_string()
    };
    save(&figures::dot_rows(shown, test_sets, "accuracy", &title), dir, "overview.png")?;
    Ok(Some("overview.png".into()))
}

/// Rows drawn in `overview.png`.
pub const OVERVIEW_ROWS: usize = 80;

fn save(figure: &Result<figures::Figure, String>, dir: &Path, relative: &str) -> Result<()> {
    let figure = figure.as_ref().map_err(|e| anyhow::anyhow!("rendering {relative}: {e}"))?;
    figure.write_png(&dir.join(relative)).map_err(anyhow::Error::msg)
}

pub(crate) fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).with_context(|| format!("{}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("{}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_order_is_the_first_step_over_each_threshold() {
        let p = |step: u64, class: i32, value: f64| MetricPoint {
            name: "f1".into(),
            epoch: step as f64 / 10.0,
            step,
            test_set: "B1234".into(),
            class_index: class,
            value,
        };
        // Out of order on purpose: the store keeps insertion order, which a resumed run may mix.
        let points = [p(20, 3, 0.95), p(0, 3, 0.1), p(10, 3, 0.6), p(10, 0, 0.2), p(20, 0, 0.55), p(0, 0, 0.0)];
        let refs: Vec<&MetricPoint> = points.iter().collect();
        let order = learning_order(&refs, &["B1234".into(), "B124".into()]);
        assert_eq!(order.len(), 1, "a test set without points is left out");
        assert_eq!(order[0].1, vec![(0, vec![Some(20), None]), (3, vec![Some(10), Some(20)])]);
    }
}
