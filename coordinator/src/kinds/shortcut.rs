//! The shortcut-degree room (SCIENCE.md §7): per trained model with DFMs, one task after all of
//! its DFM chunks that takes the merged maps (recorded as the output `dfm_maps` of the point's
//! first chunk when the last one merges) and the model's weights, filters the whole test set to
//! each chosen class's DFM at each `top` (DC kept), and reports the confusion matrices; the true-
//! and false-positive rates follow (`common::dfm::shortcut_degree`). Its report: `dfm/<point>/
//! shortcut_degree.csv`, a table in the DFM section and `results.csv` columns.

use super::dfm::DFM_MAPS_OUTPUT;
use super::{next_id, Input, PointPlan};
use crate::graph::PlannedTask;
use crate::report::{esc, PointReport, RunData};
use crate::scheduler::{Cost, CostClass, TaskId};
use anyhow::{Context, Result};
use freqsweep_common::dfm::shortcut_degree;
use freqsweep_common::spec::{format_number, GridPoint, Sweep};
use freqsweep_common::task::{AnalysisTarget, ShortcutOutcome, ShortcutTask, TaskOutcome, TaskSpec, MODEL_OUTPUT};
use std::fmt::Write as _;

/// Plan the point's shortcut-degree task after its DFM chunks (`dfm_chunks`, planned just before).
pub(super) fn plan(sweep: &Sweep, point: &PointPlan<'_>, dfm_chunks: &[TaskId], tasks: &mut Vec<PlannedTask>) {
    let (Some(d), Some((model, model_deps))) = (&sweep.analyses.dfm, point.model()) else { return };
    if !d.shortcut_degree || dfm_chunks.is_empty() {
        return;
    }
    let t = &point.point.task;
    let spec = ShortcutTask {
        target: AnalysisTarget::new(t.dataset.clone(), model, t.train.classes, 0)
            .with_numerics(d.precision, d.memory_format),
        maps: DFM_MAPS_OUTPUT.into(),
        chosen: d.classes.of(t.train.classes),
        top: d.top.clone(),
        clip: t.train.clip_filtered,
    };
    let mut deps = model_deps;
    deps.extend_from_slice(dfm_chunks);
    tasks.push(PlannedTask {
        id: next_id(tasks),
        key: format!("shortcut/{}", point.point.id),
        point: point.index,
        cost: cost(&spec, &t.train.model),
        spec: TaskSpec::Shortcut(spec),
        deps,
    });
}

/// Throughput class `shortcut/<arch>`; work units: test images × chosen classes × tops.
pub fn cost(s: &ShortcutTask, arch: &str) -> Cost {
    let images = super::evaluated_images(&s.target.dataset, s.target.images);
    let units = images.saturating_mul(s.chosen.len().max(1)).saturating_mul(s.top.len().max(1)) as f64;
    Cost { class: CostClass::new(&format!("shortcut/{arch}")), units }
}

/// The model's weights (from the train task, the first dependency; a given model comes with
/// the lease, `kinds::lease_inputs`) and the point's merged DFM maps (derived when its last chunk
/// was accepted).
pub(super) fn inputs(task: &PlannedTask) -> Vec<Input> {
    let mut inputs = Vec::new();
    if super::given_model(task).is_none() {
        if let Some(&train) = task.deps.first() {
            inputs.push(Input::output(train, MODEL_OUTPUT));
        }
    }
    inputs.push(Input::Derived { key: super::dfm::maps_key(task.point), name: DFM_MAPS_OUTPUT });
    inputs
}

/// Exactly the chosen classes × tops in order, each a square confusion matrix over the images.
pub(super) fn check(spec: &ShortcutTask, o: &ShortcutOutcome) -> Result<(), String> {
    if o.images == 0 || (spec.target.images > 0 && o.images > spec.target.images) {
        return Err(format!("the result evaluated {} images, the task allows 1..={}", o.images, spec.target.images));
    }
    let expected: Vec<(usize, u64)> =
        spec.chosen.iter().flat_map(|&c| spec.top.iter().map(move |t| (c, t.to_bits()))).collect();
    let got: Vec<(usize, u64)> = o.entries.iter().map(|e| (e.class, e.top.to_bits())).collect();
    if got != expected {
        return Err(format!(
            "the result has {} entries, not the {} classes × tops in order",
            got.len(),
            expected.len()
        ));
    }
    for e in &o.entries {
        let square =
            e.confusion.len() == spec.target.classes && e.confusion.iter().all(|r| r.len() == spec.target.classes);
        let total: u64 = e.confusion.iter().flatten().sum();
        if !square || total != o.images as u64 {
            return Err(format!(
                "class {} top {}: the confusion matrix is not {2}×{2} over {3} images",
                e.class, e.top, spec.target.classes, o.images
            ));
        }
    }
    Ok(())
}

/// Per chosen class and top: TPR and FPR, for the report.
struct ShortcutRows {
    pub images: usize,
    /// `(class, top, tpr, fpr)`.
    pub rows: Vec<(usize, f64, f64, f64)>,
    pub csv: String,
}

/// `results.csv` columns: per chosen class and top, the TPR and FPR.
pub(super) fn csv_header(run: &RunData<'_>, csv: &mut String) {
    let Some(d) = run.sweep.analyses.dfm.as_ref().filter(|d| d.shortcut_degree) else { return };
    for c in d.classes.of(run.classes) {
        for t in &d.top {
            let t = format_number(*t);
            let _ = write!(csv, ",tpr_class{c}_top{t},fpr_class{c}_top{t}");
        }
    }
}

/// The section of a point: `dfm/<point>/shortcut_degree.csv` and the `results.csv` columns.
pub(super) fn report(
    run: &RunData<'_>,
    index: usize,
    point: &GridPoint,
    report: &mut PointReport,
    csv: &mut String,
) -> Result<()> {
    let (dir, outcome, classes) = (run.dir, run.merged.shortcuts.get(index), run.classes);
    let Some(d) = run.sweep.analyses.dfm.as_ref().filter(|d| d.shortcut_degree) else { return Ok(()) };
    let columns = d.classes.of(classes).len() * d.top.len();
    let Some(o) = outcome else {
        csv.push_str(&",,".repeat(columns));
        return Ok(());
    };
    let mut file = String::from("class,top,tpr,fpr,images\n");
    let mut rows = Vec::new();
    for e in &o.entries {
        let (tpr, fpr) = shortcut_degree(&e.confusion, e.class);
        let _ = writeln!(file, "{},{},{tpr},{fpr},{}", e.class, format_number(e.top), o.images);
        rows.push((e.class, e.top, tpr, fpr));
    }
    for c in d.classes.of(classes) {
        for t in &d.top {
            match rows.iter().find(|r| r.0 == c && r.1.to_bits() == t.to_bits()) {
                Some((_, _, tpr, fpr)) => {
                    let _ = write!(csv, ",{tpr},{fpr}");
                }
                None => csv.push_str(",,"),
            }
        }
    }
    let path = format!("dfm/{}/shortcut_degree.csv", point.id);
    let full = dir.join(&path);
    std::fs::create_dir_all(full.parent().expect("has a parent")).with_context(|| path.clone())?;
    std::fs::write(&full, &file).with_context(|| path.clone())?;
    report.raw.push(path.clone());
    report.sections.push(section(&ShortcutRows { images: o.images, rows, csv: path }));
    Ok(())
}

/// The report section: per chosen class and top, the TPR and FPR.
fn section(s: &ShortcutRows) -> String {
    let mut html = String::new();
    let out = &mut html;
    let _ = writeln!(
        out,
        "<h4>Shortcut degree</h4>\n<p>All {} test images filtered to each class's DFM (DC kept) and classified: the class's true-positive rate (its recall) and false-positive rate (the fraction of other classes' images predicted as it). A high TPR with a high FPR is a shortcut (<a href=\"{}\">CSV</a>).</p>",
        s.images,
        esc(&s.csv)
    );
    out.push_str("<table><tr><th class=\"l\">class</th><th>top %</th><th>TPR</th><th>FPR</th></tr>\n");
    for (c, top, tpr, fpr) in &s.rows {
        let _ = writeln!(
            out,
            "<tr><td class=\"l\">{c}</td><td>{}</td><td>{tpr:.3}</td><td>{fpr:.3}</td></tr>",
            freqsweep_common::spec::format_number(*top)
        );
    }
    out.push_str("</table>\n");
    html
}

/// A result that fits `task` (for the load and durability tests' simulated workers, via
/// `testing`): `images` images, all of class 0, every one classified right.
pub fn simulated(task: &ShortcutTask, images: usize, device: &str) -> TaskOutcome {
    TaskOutcome::Shortcut({
        let rows = super::simulated_confusion(task.target.classes, images);
        let entries = task
            .chosen
            .iter()
            .flat_map(|&class| {
                let rows = rows.clone();
                task.top.iter().map(move |&top| freqsweep_common::task::ShortcutEntry {
                    class,
                    top,
                    confusion: rows.clone(),
                })
            })
            .collect();
        freqsweep_common::task::ShortcutOutcome {
            images,
            entries,
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
    use freqsweep_common::task::ShortcutEntry;

    const SPEC: &str = "[[dataset]]\nkind = \"syn\"\nband = 4\ntrain = 64\ntest = 32\n[model]\narch = \"tiny\"\n[train]\nlr = 0.001\nbatch_size = 16\nepochs = 1\n[dfm]\nchunks_per_map = 2\ntop = [5, 10]\nclasses = [0, 1]\n";

    #[test]
    fn the_task_follows_every_chunk_takes_the_merged_maps_and_refuses_what_does_not_fit() {
        let sweep = spec::parse(SPEC, "t.toml").unwrap();
        let tasks = crate::graph::plan(&sweep);
        assert_eq!(tasks.len(), 4, "train, 2 DFM chunks, the shortcut degree");
        let s = &tasks[3];
        assert_eq!(s.key, "shortcut/Syn_4-tiny-adam-lr0.001-bs16-ep1-seed0");
        assert_eq!(s.deps, vec![tasks[0].id, tasks[1].id, tasks[2].id]);
        assert_eq!(s.to_new_task().inputs, vec!["task:1/model".to_string(), "derived:dfm_maps/0".to_string()]);
        let TaskSpec::Shortcut(spec) = &s.spec else { panic!("a shortcut task") };
        assert_eq!((spec.chosen.as_slice(), spec.top.as_slice()), (&[0, 1][..], &[5.0, 10.0][..]));
        let entry = |class, top| ShortcutEntry { class, top, confusion: vec![vec![8, 0, 0, 0]; 4] };
        let good = ShortcutOutcome {
            images: 32,
            entries: vec![entry(0, 5.0), entry(0, 10.0), entry(1, 5.0), entry(1, 10.0)],
            seconds: 1.0,
            device: "cpu".into(),
            precision: Default::default(),
            memory_format: Default::default(),
        };
        check(spec, &good).unwrap();
        let mut bad = good.clone();
        bad.entries.swap(1, 2);
        assert!(check(spec, &bad).unwrap_err().contains("classes × tops in order"));
        let mut bad = good.clone();
        bad.entries[0].confusion[0][0] = 9;
        assert!(check(spec, &bad).unwrap_err().contains("not 4×4 over 32 images"));
        let mut bad = good;
        bad.entries[3].confusion.pop();
        assert!(check(spec, &bad).is_err());
        // Without the flag there is no such task.
        let off = SPEC.replace("classes = [0, 1]\n", "classes = [0, 1]\nshortcut_degree = false\n");
        assert_eq!(crate::graph::plan(&spec::parse(&off, "t.toml").unwrap()).len(), 3);
    }
}
