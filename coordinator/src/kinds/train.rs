//! The train room: one train task per grid point. Its attempts upload a checkpoint after every
//! epoch (the newest becomes the next attempt's `checkpoint` input, see the driver) and report the
//! whole metric history, so a new attempt's lease supersedes earlier attempts' points. A finished
//! task outputs the full checkpoint and the final weights alone (`model`), which analyses take.
//! Its report section: the point's state, learning curves, confusion matrices and checkpoint.

use super::{next_id, PointPlan};
use crate::graph::PlannedTask;
use crate::merge;
use crate::report::{
    esc, figures, format_duration, save, short_id, write_file, LearningOrder, PointReport, RunData, EARLY_EPOCHS,
    LEARNED_AT,
};
use crate::scheduler::{Cost, CostClass};
use anyhow::{Context, Result};
use figures::LinePanel;
use freqsweep_common::spec::{GridPoint, GRID_KEYS};
use freqsweep_common::task::{
    DatasetSource, MetricPoint, TaskKind, TaskOutcome, TaskSpec, TrainOutcome, TrainTask, CHECKPOINT_OUTPUT,
};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

pub(super) fn plan(point: &mut PointPlan<'_>, tasks: &mut Vec<PlannedTask>) {
    if point.point.given.is_some() {
        return;
    }
    let id = next_id(tasks);
    point.train = Some(id);
    tasks.push(PlannedTask {
        id,
        key: format!("train/{}", point.point.id),
        point: point.index,
        spec: TaskSpec::Train(point.point.task.clone()),
        deps: Vec::new(),
        cost: cost(&point.point.task),
    });
}

/// (train, test) images of a dataset, where known without reading it.
pub(crate) fn dataset_size(d: &DatasetSource) -> Option<(usize, usize)> {
    match d {
        DatasetSource::Syn(c) => Some((c.train, c.test)),
        DatasetSource::Cifar10 { .. } => Some((50_000, 10_000)),
        DatasetSource::Npy { .. } | DatasetSource::Idx { .. } | DatasetSource::Folder { .. } => None,
    }
}

/// Throughput class `train/<arch>`; work units: epochs × optimizer steps per epoch (`.npy`
/// datasets, whose size is unknown until a worker reads them: epochs).
pub fn cost(t: &TrainTask) -> Cost {
    let steps = dataset_size(&t.dataset).map_or(1, |(train, _)| train.div_ceil(t.train.batch_size.max(1)));
    let units = (t.train.epochs.max(1) as usize).saturating_mul(steps.max(1)) as f64;
    Cost { class: CostClass::new(&format!("train/{}", t.train.model)), units }
}

/// One metric point a run of `spec` can produce: a known name, one of its test sets (none for
/// `loss` and `lr`), a class index within its classes, a finite value (rates within `[0, 1]`,
/// counts whole and non-negative) at an epoch within the run.
/// `sets` are the names of `spec`'s test sets.
pub(super) fn check_metric(spec: &TrainTask, sets: &[String], p: &MetricPoint) -> Result<(), String> {
    let config = &spec.train;
    let classes = config.classes as i64;
    let rate = |v: f64| (0.0..=1.0).contains(&v);
    let in_sets = || sets.contains(&p.test_set);
    let class = i64::from(p.class_index);
    let fits = match p.name.as_str() {
        "loss" => p.test_set.is_empty() && class == -1 && p.value.is_finite(),
        "lr" => p.test_set.is_empty() && class == -1 && p.value.is_finite(),
        "accuracy" | "macro_f1" => in_sets() && class == -1 && rate(p.value),
        "f1" | "precision" | "recall" => in_sets() && (0..classes).contains(&class) && rate(p.value),
        "confusion" => {
            in_sets()
                && (0..classes.saturating_mul(classes)).contains(&class)
                && p.value >= 0.0
                && p.value.fract() == 0.0
        }
        _ => false,
    };
    let epoch_ok = p.epoch.is_finite() && p.epoch >= 0.0 && p.epoch <= f64::from(config.epochs);
    if fits && epoch_ok {
        Ok(())
    } else {
        Err(format!(
            "metric point {:?} (test set {:?}, class {}, epoch {}, value {}) is not one this task produces",
            p.name.chars().take(64).collect::<String>(),
            p.test_set.chars().take(64).collect::<String>(),
            p.class_index,
            p.epoch,
            p.value
        ))
    }
}

/// A finished run of every epoch, with one summary per configured test set whose numbers are rates.
pub(super) fn check(spec: &TrainTask, o: &TrainOutcome) -> Result<(), String> {
    let config = &spec.train;
    if o.epochs != config.epochs {
        return Err(format!("the result reports {} epochs, the task trains {}", o.epochs, config.epochs));
    }
    if !o.final_loss.is_finite() {
        return Err(format!("the result's final loss is {}", o.final_loss));
    }
    let mut wanted: Vec<String> = config.test_sets.iter().map(|s| s.to_string()).collect();
    let mut got: Vec<String> = o.test_sets.iter().map(|s| s.test_set.clone()).collect();
    wanted.sort();
    got.sort();
    if wanted != got {
        return Err(format!("the result covers test sets {got:?}, the task evaluates {wanted:?}"));
    }
    let rate = |v: f64| (0.0..=1.0).contains(&v);
    for s in &o.test_sets {
        let fits = rate(s.accuracy)
            && rate(s.macro_f1)
            && s.per_class_f1.len() == config.classes
            && s.per_class_f1.iter().all(|&f| rate(f))
            && s.confusion.len() == config.classes
            && s.confusion.iter().all(|row| row.len() == config.classes);
        if !fits {
            return Err(format!(
                "the result for {} is not a {}-class evaluation (accuracy {}, F1 {})",
                s.test_set, config.classes, s.accuracy, s.macro_f1
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- report section

/// `results.csv` columns of the train section: the point's state and grid values, the run's
/// figures and every test set's accuracy and macro-F1.
pub(super) fn csv_header(run: &RunData<'_>, csv: &mut String) {
    let test_sets = run.test_sets;
    csv.push_str(",state");
    for k in GRID_KEYS {
        let _ = write!(csv, ",{k}");
    }
    csv.push_str(",epochs_done,steps,seconds,final_loss");
    for s in test_sets {
        let _ = write!(csv, ",accuracy_{s},macro_f1_{s}");
    }
}

/// The train section of a point's report: its state, learning curves, confusion matrices, the
/// final checkpoint under `checkpoints/`, and its `results.csv` columns.
pub(super) fn report(
    run: &RunData<'_>,
    index: usize,
    point: &GridPoint,
    report: &mut PointReport,
    csv: &mut String,
) -> Result<()> {
    let RunData { dir, reader, rows, tasks, test_sets, .. } = *run;
    let Some(train) = tasks.iter().find(|t| t.point == index && t.kind() == TaskKind::Train) else {
        // A given model: nothing trained; its state is its analyses' (done when all are).
        let states: Vec<&str> =
            tasks.iter().filter(|t| t.point == index).map(|t| rows[&t.id.0].state.as_str()).collect();
        let state =
            ["failed", crate::report::UNREADABLE, "cancelled", "running", "ready", "backoff", "pending", "blocked"]
                .into_iter()
                .find(|s| states.contains(s))
                .or(states.first().copied())
                .unwrap_or("done");
        report.state = state.to_string();
        let _ = write!(csv, ",{state}");
        for k in GRID_KEYS {
            let _ = write!(csv, ",{}", point.values.get(k).map_or("", String::as_str));
        }
        csv.push_str(",,,,");
        csv.push_str(&",,".repeat(test_sets.len()));
        return Ok(());
    };
    let row = &rows[&train.id.0];
    let outcome = if let Some(Ok(TaskOutcome::Train(o))) = row.result_json.as_deref().map(serde_json::from_str) {
        Some(o)
    } else {
        None
    };
    report.state = row.state.clone();
    report.error = row.error.clone();
    report.outcome = outcome.clone();
    let mut files = TrainFiles::default();
    let metric_points = reader.metrics(train.id.0)?;
    if !metric_points.is_empty() {
        write_curves(dir, &point.id, &metric_points, test_sets, &mut report.raw, &mut files)?;
        for (set, rows) in merge::final_confusions(&metric_points, point.task.train.classes) {
            let stem = format!("confusion/{}_{set}", point.id);
            write_file(&dir.join(format!("{stem}.csv")), &merge::confusion_csv(&rows))?;
            let title = format!("{} on {set}", short_id(&point.id));
            save(&figures::confusion(&rows, &title), dir, &format!("{stem}.png"))?;
            report.raw.push(format!("{stem}.csv"));
            files.confusions.push((set, format!("{stem}.png")));
        }
    }
    if let Some((_, digest, _, _)) = reader.task_artifacts(train.id.0)?.into_iter().find(|a| a.0 == CHECKPOINT_OUTPUT) {
        // By digest under this run directory, not the stored path: the directory may have moved.
        let path = crate::artifacts::ArtifactDir::new(dir.join("artifacts")).path(&digest);
        let target = dir.join("checkpoints").join(format!("{}.ot", point.id));
        std::fs::create_dir_all(target.parent().expect("has parent"))?;
        std::fs::copy(&path, &target).with_context(|| format!("copying {}", path.display()))?;
    }
    let _ = write!(csv, ",{}", row.state);
    for k in GRID_KEYS {
        let _ = write!(csv, ",{}", point.values.get(k).map_or("", String::as_str));
    }
    match &outcome {
        Some(o) => {
            let _ = write!(csv, ",{},{},{:.3},{}", o.epochs, o.steps, o.seconds, o.final_loss);
            for s in test_sets {
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
            for _ in test_sets {
                csv.push_str(",,");
            }
        }
    }
    report.sections.push(section(outcome.as_ref(), &files));
    Ok(())
}

/// What the train section shows beside the final table.
#[derive(Default)]
struct TrainFiles {
    curves: Vec<String>,
    /// Per test set, per class: the first evaluated step at which F1 reached each of
    /// [`LEARNED_AT`] (`None`: never) — the poster's "which class is learned first".
    learning_order: LearningOrder,
    confusions: Vec<(String, String)>,
}

/// The report section: the final test-set table, the F1 curves, the learning order and the confusion matrices.
fn section(outcome: Option<&TrainOutcome>, files: &TrainFiles) -> String {
    let mut html = String::new();
    let out = &mut html;
    if let Some(o) = outcome {
        let _ = writeln!(
            out,
            "<p>Trained {} epochs ({} steps) in {} on {}; final loss {:.4}.</p>",
            o.epochs,
            o.steps,
            format_duration((o.seconds * 1000.0) as u64),
            esc(&o.device),
            o.final_loss
        );
        out.push_str("<table><tr><th class=\"l\">test set</th><th>accuracy</th><th>macro-F1</th>");
        let classes = o.test_sets.first().map_or(0, |t| t.per_class_f1.len());
        for c in 0..classes {
            let _ = write!(out, "<th>F1 class {c}</th>");
        }
        out.push_str("</tr>\n");
        for t in &o.test_sets {
            let _ = write!(
                out,
                "<tr><td class=\"l\">{}</td><td>{:.4}</td><td>{:.4}</td>",
                esc(&t.test_set),
                t.accuracy,
                t.macro_f1
            );
            for f in &t.per_class_f1 {
                let _ = write!(out, "<td>{f:.4}</td>");
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</table>\n");
    }
    if !files.curves.is_empty() {
        out.push_str("<h3>Per-class F1 during training</h3>\n<div class=\"figs\">");
        for c in &files.curves {
            let _ = write!(out, "<a href=\"{0}\"><img src=\"{0}\" alt=\"F1 curves\"></a>", esc(c));
        }
        out.push_str("</div>\n");
    }
    if !files.learning_order.is_empty() {
        let thresholds: Vec<String> = LEARNED_AT.iter().map(|t| format!("F1 ≥ {t}")).collect();
        let _ = writeln!(
            out,
            "<p>Learning order: the first evaluated step at which each class reached {} (— never).</p>",
            thresholds.join(" / ")
        );
        out.push_str("<table><tr><th class=\"l\">test set</th>");
        let classes = files.learning_order[0].1.len();
        for c in 0..classes {
            let _ = write!(out, "<th>class {c}</th>");
        }
        out.push_str("</tr>\n");
        for (set, per_class) in &files.learning_order {
            let _ = write!(out, "<tr><td class=\"l\">{}</td>", esc(set));
            for (_, firsts) in per_class {
                let cells: Vec<String> = firsts.iter().map(|f| f.map_or("—".into(), |s| s.to_string())).collect();
                let _ = write!(out, "<td>{}</td>", cells.join(" / "));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</table>\n");
    }
    if !files.confusions.is_empty() {
        out.push_str("<h3>Confusion matrices after training</h3>\n<div class=\"figs\">");
        for (set, png) in &files.confusions {
            let _ = write!(out, "<a href=\"{0}\"><img src=\"{0}\" alt=\"confusion on {1}\"></a>", esc(png), esc(set));
        }
        out.push_str("</div>\n");
    }
    html
}

/// Per-class F1 over all epochs (x = epoch) and over the first [`EARLY_EPOCHS`] (x = step).
fn write_curves(
    dir: &Path,
    id: &str,
    metric_points: &[MetricPoint],
    test_sets: &[String],
    raw: &mut Vec<String>,
    files: &mut TrainFiles,
) -> Result<()> {
    let csv_path = format!("curves/{id}.csv");
    write_file(&dir.join(&csv_path), &merge::f1_curve_csv(metric_points))?;
    raw.push(csv_path);
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
                    bands: Vec::new(),
                    title: set,
                    series: by_class.into_iter().map(|(c, pts)| (format!("class {c}"), pts)).collect(),
                }
            })
            .filter(|panel| !panel.series.is_empty())
            .collect()
    };
    let all = panels(&|p| Some(p.epoch));
    files.learning_order = learning_order(&f1, test_sets);
    let title = format!("per-class F1 — {}", short_id(id));
    save(&figures::line_panels(&all, "epoch", "F1", &title), dir, &format!("curves/{id}.png"))?;
    files.curves.push(format!("curves/{id}.png"));
    let early = panels(&|p| (p.epoch <= EARLY_EPOCHS).then_some(p.step as f64));
    if !early.is_empty() {
        let title = format!("per-class F1, first {EARLY_EPOCHS} epochs — {}", short_id(id));
        save(&figures::line_panels(&early, "step", "F1", &title), dir, &format!("curves/{id}_first3.png"))?;
        files.curves.push(format!("curves/{id}_first3.png"));
    }
    Ok(())
}

/// [`learning_order`] of a run's whole metric history.
pub(crate) fn learning_order_of(points: &[MetricPoint], test_sets: &[String]) -> LearningOrder {
    let f1: Vec<&MetricPoint> = points.iter().filter(|p| p.name == "f1").collect();
    learning_order(&f1, test_sets)
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

/// TensorBoard: the final confusion matrix per test set (`confusion/<set>`), the report's
/// figures (`confusion/<point>_<set>.png`).
pub(crate) fn tensorboard_figures(point: &str, classes: usize, metrics: &[MetricPoint]) -> Vec<(String, super::Drawn)> {
    merge::final_confusions(metrics, classes)
        .into_iter()
        .map(|(set, rows)| {
            let title = format!("{} on {set}", short_id(point));
            (format!("confusion/{set}"), figures::confusion(&rows, &title))
        })
        .collect()
}

/// A result that fits `task` (for the load and durability tests' simulated workers, via
/// `testing`): the whole run, every test set at accuracy and F1 0.5.
pub fn simulated(task: &TrainTask, device: &str) -> TaskOutcome {
    let classes = task.train.classes;
    TaskOutcome::Train(TrainOutcome {
        epochs: task.train.epochs,
        steps: 1,
        final_loss: 0.5,
        test_sets: task
            .train
            .test_sets
            .iter()
            .map(|s| freqsweep_common::task::TestSetSummary {
                test_set: s.to_string(),
                accuracy: 0.5,
                macro_f1: 0.5,
                per_class_f1: vec![0.5; classes],
                confusion: vec![vec![0; classes]; classes],
            })
            .collect(),
        seconds: 0.0,
        device: device.to_string(),
        checkpoint: "checkpoint".into(),
        precision: Default::default(),
        memory_format: Default::default(),
    })
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
