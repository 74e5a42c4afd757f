//! The band-sufficiency room: per trained model one task that evaluates it on every non-empty
//! subset of the four bands (15 test sets, DC kept; `common::dfm::band_subsets`), depending on
//! the model's train task and taking its final weights. The report says, per class, the smallest
//! band sets whose F1 stays within the spec's tolerance of the full spectrum's (the poster's "2 or
//! 3 bands are enough", made automatic), with the whole class × subset table.

use super::{next_id, Input, PointPlan};
use crate::graph::PlannedTask;
use crate::report::{esc, PointReport, RunData};
use crate::scheduler::{Cost, CostClass};
use anyhow::{Context, Result};
use freqsweep_common::bands::BandSet;
use freqsweep_common::dfm::{band_subsets, sufficient_sets};
use freqsweep_common::metrics::ConfusionMatrix;
use freqsweep_common::spec::{GridPoint, Sweep};
use freqsweep_common::task::{AnalysisTarget, BandsOutcome, BandsTask, TaskOutcome, TaskSpec, MODEL_OUTPUT};
use std::fmt::Write as _;

pub(super) fn plan(sweep: &Sweep, point: &PointPlan<'_>, tasks: &mut Vec<PlannedTask>) {
    let (Some(b), Some((model, deps))) = (&sweep.analyses.bands, point.model()) else { return };
    let t = &point.point.task;
    let spec = BandsTask {
        target: AnalysisTarget::new(t.dataset.clone(), model, t.train.classes, b.images),
        band_layout: t.train.band_layout,
        clip: t.train.clip_filtered,
    };
    tasks.push(PlannedTask {
        id: next_id(tasks),
        key: format!("bands/{}", point.point.id),
        point: point.index,
        cost: cost(&spec, &t.train.model),
        spec: TaskSpec::Bands(spec),
        deps,
    });
}

/// Throughput class `bands/<arch>`; work units: test images × 15 band subsets.
pub fn cost(b: &BandsTask, arch: &str) -> Cost {
    let images = super::evaluated_images(&b.target.dataset, b.target.images);
    Cost { class: CostClass::new(&format!("bands/{arch}")), units: images.saturating_mul(15) as f64 }
}

/// The model's weights, from the train task it depends on.
pub(super) fn inputs(task: &PlannedTask) -> Vec<Input> {
    task.deps.iter().map(|&d| Input::output(d, MODEL_OUTPUT)).collect()
}

/// Every band subset once, in order, each a `classes`-square confusion matrix of the images.
pub(super) fn check(spec: &BandsTask, o: &BandsOutcome) -> Result<(), String> {
    if o.images == 0 || (spec.target.images > 0 && o.images > spec.target.images) {
        return Err(format!("the result evaluated {} images, the task allows 1..={}", o.images, spec.target.images));
    }
    let expected = band_subsets();
    let got: Vec<BandSet> = o.sets.iter().map(|(s, _)| *s).collect();
    if got != expected {
        return Err(format!("the result has {} band sets, not the {} subsets in order", got.len(), expected.len()));
    }
    for (set, rows) in &o.sets {
        let square = rows.len() == spec.target.classes && rows.iter().all(|r| r.len() == spec.target.classes);
        let total: u64 = rows.iter().flatten().sum();
        if !square || total != o.images as u64 {
            return Err(format!(
                "{set}: the confusion matrix is not {0}×{0} over {1} images",
                spec.target.classes, o.images
            ));
        }
    }
    Ok(())
}

/// What the report shows of a point's band sufficiency.
struct BandsFiles {
    pub tolerance: f64,
    pub images: usize,
    /// Per class: F1 on all bands, the smallest sufficient sets and their F1.
    pub classes: Vec<(f64, Vec<(BandSet, f64)>)>,
    pub table_csv: String,
    pub sufficiency_csv: String,
}

/// `results.csv` columns: per class, the smallest sufficient band sets (space-separated).
pub(super) fn csv_header(run: &RunData<'_>, csv: &mut String) {
    if run.sweep.analyses.bands.is_some() {
        for c in 0..run.classes {
            let _ = write!(csv, ",sufficient_bands_class{c}");
        }
    }
}

/// The section of a point: `bands/<point>_f1.csv` (class × subset F1), `bands/<point>_sufficiency
/// .csv` (per class the smallest sufficient sets), and the `results.csv` columns.
pub(super) fn report(
    run: &RunData<'_>,
    index: usize,
    point: &GridPoint,
    report: &mut PointReport,
    csv: &mut String,
) -> Result<()> {
    let (dir, outcome, columns) = (run.dir, run.merged.bands.get(index), run.classes);
    let Some(spec) = run.sweep.analyses.bands.as_ref() else { return Ok(()) };
    let Some(o) = outcome else {
        csv.push_str(&",".repeat(columns));
        return Ok(());
    };
    let f1: Vec<(BandSet, Vec<f64>)> = o
        .sets
        .iter()
        .map(|(set, rows)| {
            // Checked square when the result was accepted.
            let m = ConfusionMatrix::from_rows(rows).unwrap_or_else(|| ConfusionMatrix::new(0));
            (*set, m.per_class().iter().map(|s| s.f1).collect())
        })
        .collect();
    let full = f1.iter().find(|(s, _)| s.is_all()).map(|(_, f)| f.clone()).unwrap_or_default();
    let chosen = sufficient_sets(&f1, &full, spec.tolerance);
    let f1_of = |set: BandSet, class: usize| f1.iter().find(|(s, _)| *s == set).map_or(f64::NAN, |(_, f)| f[class]);

    let mut table = String::from("band_set");
    for c in 0..full.len() {
        let _ = write!(table, ",f1_class{c}");
    }
    table.push('\n');
    for (set, per_class) in &f1 {
        let _ = write!(table, "{set}");
        for v in per_class {
            let _ = write!(table, ",{v}");
        }
        table.push('\n');
    }
    let mut sufficiency = String::from("class,f1_all_bands,tolerance,smallest_sufficient_sets,their_f1\n");
    let mut classes = Vec::new();
    for (c, sets) in chosen.iter().enumerate() {
        let names: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let values: Vec<String> = sets.iter().map(|&s| format!("{:.4}", f1_of(s, c))).collect();
        let _ = writeln!(sufficiency, "{c},{},{},{},{}", full[c], spec.tolerance, names.join(" "), values.join(" "));
        classes.push((full[c], sets.iter().map(|&s| (s, f1_of(s, c))).collect()));
    }
    for c in 0..columns {
        let names: Vec<String> = chosen.get(c).into_iter().flatten().map(|s| s.to_string()).collect();
        let _ = write!(csv, ",{}", names.join(" "));
    }
    let table_csv = format!("bands/{}_f1.csv", point.id);
    let sufficiency_csv = format!("bands/{}_sufficiency.csv", point.id);
    std::fs::create_dir_all(dir.join("bands")).context("bands/")?;
    std::fs::write(dir.join(&table_csv), table).with_context(|| table_csv.clone())?;
    std::fs::write(dir.join(&sufficiency_csv), sufficiency).with_context(|| sufficiency_csv.clone())?;
    report.raw.push(table_csv.clone());
    report.raw.push(sufficiency_csv.clone());
    report.sections.push(section(&BandsFiles {
        tolerance: spec.tolerance,
        images: o.images,
        classes,
        table_csv,
        sufficiency_csv,
    }));
    Ok(())
}

/// The report section: per class the smallest sufficient band sets.
fn section(b: &BandsFiles) -> String {
    let mut html = String::new();
    let out = &mut html;
    let _ = writeln!(
        out,
        "<h3>Band sufficiency</h3>\n<p>The model on its {} test images filtered to each of the 15 non-empty band subsets (DC kept). Per class, the smallest band sets whose F1 is within {} of the full spectrum's (<a href=\"{}\">table of every subset</a>, <a href=\"{}\">CSV</a>).</p>",
        b.images,
        b.tolerance,
        esc(&b.table_csv),
        esc(&b.sufficiency_csv)
    );
    out.push_str("<table><tr><th class=\"l\">class</th><th>F1, all bands</th><th class=\"l\">smallest sufficient band sets (F1)</th></tr>\n");
    for (c, (full, sets)) in b.classes.iter().enumerate() {
        let named: Vec<String> = sets.iter().map(|(s, f)| format!("{s} ({f:.3})")).collect();
        let shown = if named.is_empty() { "—".to_string() } else { named.join(", ") };
        let _ =
            writeln!(out, "<tr><td class=\"l\">{c}</td><td>{full:.4}</td><td class=\"l\">{}</td></tr>", esc(&shown));
    }
    out.push_str("</table>\n");
    html
}

/// TensorBoard: the confusion matrix on each band subset's filtered images
/// (`band_confusion/<bands>`).
pub(crate) fn tensorboard_figures(point: &str, outcome: &TaskOutcome) -> Vec<(String, super::Drawn)> {
    let TaskOutcome::Bands(outcome) = outcome else { return Vec::new() };
    outcome
        .sets
        .iter()
        .map(|(set, rows)| {
            let title = format!("{} on {set}: confusion", crate::report::short_id(point));
            (format!("band_confusion/{set}"), freqsweep_common::figures::confusion(rows, &title))
        })
        .collect()
}

/// A result that fits `task` (for the load and durability tests' simulated workers, via
/// `testing`): `images` images, all of class 0, every one classified right.
pub fn simulated(task: &BandsTask, images: usize, device: &str) -> TaskOutcome {
    TaskOutcome::Bands({
        let rows = super::simulated_confusion(task.target.classes, images);
        let sets = freqsweep_common::dfm::band_subsets().into_iter().map(|s| (s, rows.clone())).collect();
        freqsweep_common::task::BandsOutcome {
            images,
            sets,
            seconds: 0.0,
            device: device.to_string(),
            precision: Default::default(),
            memory_format: Default::default(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use freqsweep_common::spec;

    const SPEC: &str = "[[dataset]]\nkind = \"syn\"\nband = 4\ntrain = 64\ntest = 32\n[model]\narch = \"tiny\"\n[train]\nlr = 0.001\nbatch_size = 16\nepochs = 1\n[bands]\nimages = 20\n";

    #[test]
    fn one_task_per_model_and_results_that_do_not_fit_are_refused() {
        let sweep = spec::parse(SPEC, "t.toml").unwrap();
        let tasks = crate::graph::plan(&sweep);
        assert_eq!(tasks.len(), 2);
        assert_eq!(tasks[1].key, "bands/Syn_4-tiny-adam-lr0.001-bs16-ep1-seed0");
        assert_eq!(tasks[1].to_new_task().inputs, vec!["task:1/model".to_string()]);
        let TaskSpec::Bands(b) = &tasks[1].spec else { panic!("a bands task") };
        let good: BandsOutcome = match serde_json::from_str(&crate::testing::bands_result_json(b, 20, "cpu")) {
            Ok(freqsweep_common::task::TaskOutcome::Bands(o)) => o,
            other => panic!("{other:?}"),
        };
        check(b, &good).unwrap();
        let mut bad = good.clone();
        bad.sets.swap(0, 1);
        assert!(check(b, &bad).unwrap_err().contains("not the 15 subsets in order"));
        let mut bad = good.clone();
        bad.sets[3].1[1][1] += 1;
        assert!(check(b, &bad).unwrap_err().contains("not 4×4 over 20 images"));
        let mut bad = good.clone();
        bad.sets[0].1.pop();
        assert!(check(b, &bad).is_err());
        let mut bad = good;
        bad.images = 21;
        assert!(check(b, &bad).unwrap_err().contains("allows 1..=20"));
    }
}
