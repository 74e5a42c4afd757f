//! The robustness room (SCIENCE.md §9.1–9.2): per model, the `(corruption, severity)` pairs of
//! `[robustness]` cut into tasks of `pairs_per_task` pairs, each evaluating the model on its test
//! split corrupted by its pairs (and clean). A corrupted image depends only on (corruption,
//! severity, its index in the split, seed), so the cut changes no result. The report gives the
//! error per corruption × severity and per class, `E_c` (mean over severities) and `mCE_raw`
//! (mean of `E_c`), with the corruptions labelled as regenerated (CIFAR-10-C parameters).

use super::{next_id, Input, Keep, PointPlan};
use crate::graph::PlannedTask;
use crate::report::{esc, PointReport, RunData};
use crate::scheduler::{Cost, CostClass};
use anyhow::{Context, Result};
use freqsweep_common::spec::{GridPoint, Sweep};
use freqsweep_common::task::{
    AnalysisTarget, RobustnessOutcome, RobustnessSpec, RobustnessTask, TaskOutcome, TaskSpec, MODEL_OUTPUT,
};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// Tasks planned for `point` (one per chunk of pairs, for every point with a model).
pub(super) fn count(sweep: &Sweep) -> usize {
    sweep.analyses.robustness.as_ref().map_or(0, RobustnessSpec::chunks)
}

pub(super) fn plan(sweep: &Sweep, point: &PointPlan<'_>, tasks: &mut Vec<PlannedTask>) {
    let (Some(r), Some((model, deps))) = (&sweep.analyses.robustness, point.model()) else { return };
    let t = &point.point.task;
    let pairs = r.pairs();
    for (chunk, pairs) in pairs.chunks(r.pairs_per_task.max(1)).enumerate() {
        let spec = RobustnessTask {
            target: AnalysisTarget::new(t.dataset.clone(), model.clone(), t.train.classes, r.images)
                .with_numerics(r.precision, r.memory_format),
            pairs: pairs.to_vec(),
            chunk,
            seed: r.seed,
            batch: r.batch,
        };
        tasks.push(PlannedTask {
            id: next_id(tasks),
            key: format!("robustness/{}/{chunk}", point.point.id),
            point: point.index,
            cost: cost(&spec, &t.train.model),
            spec: TaskSpec::Robustness(spec),
            deps: deps.clone(),
        });
    }
}

/// Throughput class `robustness/<arch>`; work units: test images × (pairs + the clean pass).
pub fn cost(r: &RobustnessTask, arch: &str) -> Cost {
    let images = super::evaluated_images(&r.target.dataset, r.target.images);
    Cost {
        class: CostClass::new(&format!("robustness/{arch}")),
        units: images.saturating_mul(r.pairs.len() + 1) as f64,
    }
}

/// The model's weights, from the train task it depends on.
pub(super) fn inputs(task: &PlannedTask) -> Vec<Input> {
    task.deps.iter().map(|&d| Input::output(d, MODEL_OUTPUT)).collect()
}

/// The task's chunk and pairs in order, each a `classes`-square confusion matrix of the images.
pub(super) fn check(spec: &RobustnessTask, o: &RobustnessOutcome) -> Result<(), String> {
    if o.images == 0 || (spec.target.images > 0 && o.images > spec.target.images) {
        return Err(format!("the result evaluated {} images, the task allows 1..={}", o.images, spec.target.images));
    }
    if o.chunk != spec.chunk {
        return Err(format!("the result is for chunk {}, the task is chunk {}", o.chunk, spec.chunk));
    }
    let named: Vec<(&str, u32)> = o.pairs.iter().map(|(c, s, _)| (c.as_str(), *s)).collect();
    let asked: Vec<(&str, u32)> = spec.pairs.iter().map(|(c, s)| (c.as_str(), *s)).collect();
    if named != asked {
        return Err(format!(
            "the result has {} (corruption, severity) pairs, not the task's {} in order",
            named.len(),
            asked.len()
        ));
    }
    let classes = spec.target.classes;
    let fits = |rows: &Vec<Vec<u64>>| {
        rows.len() == classes
            && rows.iter().all(|r| r.len() == classes)
            && rows.iter().flatten().try_fold(0u64, |a, &n| a.checked_add(n)) == Some(o.images as u64)
    };
    if !fits(&o.clean) {
        return Err(format!("clean: the confusion matrix is not {classes}×{classes} over {} images", o.images));
    }
    for (c, s, rows) in &o.pairs {
        if !fits(rows) {
            return Err(format!(
                "{c} at severity {s}: the confusion matrix is not {classes}×{classes} over {} images",
                o.images
            ));
        }
    }
    Ok(())
}

/// The accepted chunks of each point, kept only for the report ([`Keep::Everything`]).
pub struct Results(Option<HashMap<usize, BTreeMap<usize, RobustnessOutcome>>>);

impl Results {
    pub(super) fn new(keep: Keep) -> Results {
        Results((keep == Keep::Everything).then(HashMap::new))
    }

    pub(super) fn merge(&mut self, task: &PlannedTask, outcome: &RobustnessOutcome) {
        if let Some(kept) = &mut self.0 {
            kept.entry(task.point).or_default().insert(outcome.chunk, outcome.clone());
        }
    }

    fn of(&self, point: usize) -> Option<&BTreeMap<usize, RobustnessOutcome>> {
        self.0.as_ref()?.get(&point)
    }
}

/// The error rate of a confusion matrix (`[truth][predicted]`), and per class (NaN for a class
/// with no images).
pub fn errors(rows: &[Vec<u64>]) -> (f64, Vec<f64>) {
    let total: u64 = rows.iter().flatten().sum();
    let right: u64 = rows.iter().enumerate().map(|(k, r)| r.get(k).copied().unwrap_or(0)).sum();
    let per_class = rows
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let n: u64 = r.iter().sum();
            if n == 0 {
                f64::NAN
            } else {
                1.0 - r.get(k).copied().unwrap_or(0) as f64 / n as f64
            }
        })
        .collect();
    let overall = if total == 0 { f64::NAN } else { 1.0 - right as f64 / total as f64 };
    (overall, per_class)
}

/// `E_c` per corruption (the mean of its severities' errors, in the order first met) and
/// `mCE_raw`, their mean (SCIENCE.md §9.2).
pub fn mean_corruption_error(errors: &[(String, u32, f64)]) -> (Vec<(String, f64)>, f64) {
    let mut by_corruption: Vec<(String, f64, usize)> = Vec::new();
    for (c, _, e) in errors {
        match by_corruption.iter_mut().find(|(name, _, _)| name == c) {
            Some(entry) => {
                entry.1 += e;
                entry.2 += 1;
            }
            None => by_corruption.push((c.clone(), *e, 1)),
        }
    }
    let e_c: Vec<(String, f64)> = by_corruption.into_iter().map(|(c, sum, n)| (c, sum / n as f64)).collect();
    let mce = if e_c.is_empty() { f64::NAN } else { e_c.iter().map(|(_, e)| e).sum::<f64>() / e_c.len() as f64 };
    (e_c, mce)
}

/// Per corruption, Hendrycks & Dietterich's `CE_c = Σ_s E_{c,s} / Σ_s E^base_{c,s}` and
/// `rCE_c = Σ_s (E_{c,s} − E_clean) / Σ_s (E^base_{c,s} − E^base_clean)` over the severities both
/// have (SCIENCE.md §9.2), in the order of `own`; NaN where the baseline's sum is 0.
pub fn normalised_errors(
    own: &[(String, u32, f64)],
    own_clean: f64,
    base: &[(String, u32, f64)],
    base_clean: f64,
) -> Vec<(String, f64, f64)> {
    let mut out: Vec<(String, f64, f64)> = Vec::new();
    let mut sums: Vec<[f64; 4]> = Vec::new();
    for (c, s, e) in own {
        let Some(b) = base.iter().find(|(bc, bs, _)| bc == c && bs == s).map(|r| r.2) else { continue };
        let at = match out.iter().position(|(name, _, _)| name == c) {
            Some(at) => at,
            None => {
                out.push((c.clone(), f64::NAN, f64::NAN));
                sums.push([0.0; 4]);
                out.len() - 1
            }
        };
        let sum = &mut sums[at];
        sum[0] += e;
        sum[1] += b;
        sum[2] += e - own_clean;
        sum[3] += b - base_clean;
    }
    let ratio = |a: f64, b: f64| if b == 0.0 { f64::NAN } else { a / b };
    for ((_, ce, rce), sum) in out.iter_mut().zip(&sums) {
        *ce = ratio(sum[0], sum[1]);
        *rce = ratio(sum[2], sum[3]);
    }
    out
}

/// Per corruption `(name, CE_c, rCE_c)`.
type Normalised = [(String, f64, f64)];

/// The mean of the finite values (NaN when there is none).
fn finite_mean(values: impl Iterator<Item = f64>) -> f64 {
    let finite: Vec<f64> = values.filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        f64::NAN
    } else {
        finite.iter().sum::<f64>() / finite.len() as f64
    }
}

/// A point's errors once every chunk is in: the clean error and per class, per pair the error
/// and per class, and the number of images.
struct PointErrors {
    images: usize,
    clean: f64,
    clean_per_class: Vec<f64>,
    rows: Vec<(String, u32, f64, Vec<f64>)>,
}

impl PointErrors {
    fn of(run: &RunData<'_>, spec: &RobustnessSpec, index: usize) -> Option<PointErrors> {
        let chunks = run.merged.robustness.of(index).filter(|c| c.len() == spec.chunks())?;
        let first = chunks.values().next()?;
        let (clean, clean_per_class) = errors(&first.clean);
        let mut rows = Vec::new();
        for o in chunks.values() {
            for (c, s, confusion) in &o.pairs {
                let (e, per_class) = errors(confusion);
                rows.push((c.clone(), *s, e, per_class));
            }
        }
        Some(PointErrors { images: first.images, clean, clean_per_class, rows })
    }

    fn flat(&self) -> Vec<(String, u32, f64)> {
        self.rows.iter().map(|(c, s, e, _)| (c.clone(), *s, *e)).collect()
    }
}

/// `results.csv` columns: the clean error and `mCE_raw` of the robustness evaluation, and with a
/// baseline `mCE` and the relative mCE.
pub(super) fn csv_header(run: &RunData<'_>, csv: &mut String) {
    if let Some(spec) = &run.sweep.analyses.robustness {
        csv.push_str(",robustness_clean_error,mce_raw");
        if spec.baseline.is_some() {
            csv.push_str(",mce,relative_mce");
        }
    }
}

/// The section of a point, once every chunk is in: `robustness/<point>.csv` (per corruption and
/// severity the error and the error per class) and the `results.csv` columns.
pub(super) fn report(
    run: &RunData<'_>,
    index: usize,
    point: &GridPoint,
    report: &mut PointReport,
    csv: &mut String,
) -> Result<()> {
    let Some(spec) = run.sweep.analyses.robustness.as_ref() else { return Ok(()) };
    let columns = if spec.baseline.is_some() { 4 } else { 2 };
    let Some(own) = PointErrors::of(run, spec, index) else {
        csv.push_str(&",".repeat(columns));
        return Ok(());
    };
    let (clean, clean_per_class, rows) = (own.clean, &own.clean_per_class, &own.rows);
    let (e_c, mce_raw) = mean_corruption_error(&own.flat());
    let _ = write!(csv, ",{clean},{mce_raw}");
    // Against the baseline, once its chunks are in too.
    let base_index = spec.baseline.as_ref().and_then(|b| run.sweep.points.iter().position(|p| &p.id == b));
    let normalised = base_index
        .and_then(|b| PointErrors::of(run, spec, b))
        .map(|base| normalised_errors(&own.flat(), clean, &base.flat(), base.clean));
    if spec.baseline.is_some() {
        match &normalised {
            Some(n) => {
                let _ = write!(csv, ",{},{}", finite_mean(n.iter().map(|r| r.1)), finite_mean(n.iter().map(|r| r.2)));
            }
            None => csv.push_str(",,"),
        }
    }
    let mut table = String::from("corruption,severity,error");
    for k in 0..clean_per_class.len() {
        let _ = write!(table, ",error_class{k}");
    }
    table.push('\n');
    let mut line = |c: &str, s: &str, e: f64, per_class: &[f64]| {
        // Names such as fourier(4,0,8) hold commas: quoted.
        let _ = write!(table, "\"{c}\",{s},{e}");
        for v in per_class {
            let _ = write!(table, ",{v}");
        }
        table.push('\n');
    };
    line("clean", "0", clean, clean_per_class);
    for (c, s, e, per_class) in rows {
        line(c, &s.to_string(), *e, per_class);
    }
    let file = format!("robustness/{}.csv", point.id);
    std::fs::create_dir_all(run.dir.join("robustness")).context("robustness/")?;
    std::fs::write(run.dir.join(&file), table).with_context(|| file.clone())?;
    report.raw.push(file.clone());
    if let Some(n) = &normalised {
        let mut ce = String::from("corruption,ce,relative_ce\n");
        for (c, v, r) in n {
            let _ = writeln!(ce, "\"{c}\",{v},{r}");
        }
        let ce_file = format!("robustness/{}_ce.csv", point.id);
        std::fs::write(run.dir.join(&ce_file), ce).with_context(|| ce_file.clone())?;
        report.raw.push(ce_file);
    }
    let against = spec.baseline.as_deref().zip(normalised.as_deref());
    report.sections.push(section(spec, &own, &e_c, mce_raw, against, &file));
    Ok(())
}

/// The report section: the error per corruption (rows) and severity (columns), `E_c`, `mCE_raw`.
fn section(
    spec: &RobustnessSpec,
    own: &PointErrors,
    e_c: &[(String, f64)],
    mce_raw: f64,
    against: Option<(&str, &Normalised)>,
    file: &str,
) -> String {
    let (images, clean, rows) = (own.images, own.clean, &own.rows);
    let mut html = String::new();
    let out = &mut html;
    let _ = writeln!(
        out,
        "<h3>Corruption robustness</h3>\n<p>The model on its {images} test images corrupted by each corruption at each severity, regenerated with the CIFAR-10-C parameters (SCIENCE.md §9.1; not the released files). Clean error {clean:.4}; mCE<sub>raw</sub> {mce_raw:.4} (<a href=\"{}\">CSV, with the error per class</a>).</p>",
        esc(file)
    );
    if let Some((baseline, n)) = against {
        let _ = writeln!(
            out,
            "<p>Against the baseline {}: mCE {:.4}, relative mCE {:.4} (CE<sub>c</sub> and rCE<sub>c</sub> per corruption in the CSV beside it).</p>",
            esc(baseline),
            finite_mean(n.iter().map(|r| r.1)),
            finite_mean(n.iter().map(|r| r.2))
        );
    }
    out.push_str("<table><tr><th class=\"l\">corruption</th>");
    for s in &spec.severities {
        let _ = write!(out, "<th>severity {s}</th>");
    }
    out.push_str("<th>E<sub>c</sub></th></tr>\n");
    for (c, mean) in e_c {
        let _ = write!(out, "<tr><td class=\"l\">{}</td>", esc(c));
        for s in &spec.severities {
            let e = rows.iter().find(|(rc, rs, _, _)| rc == c && rs == s).map_or(f64::NAN, |r| r.2);
            let _ = write!(out, "<td>{e:.4}</td>");
        }
        let _ = writeln!(out, "<td>{mean:.4}</td></tr>");
    }
    out.push_str("</table>\n");
    html
}

/// A result that fits `task` (for the load and durability tests' simulated workers, via
/// `testing`): `images` images, all of class 0, every one classified right.
pub fn simulated(task: &RobustnessTask, images: usize, device: &str) -> TaskOutcome {
    let classes = task.target.classes;
    let rows = super::simulated_confusion(classes, images);
    TaskOutcome::Robustness(RobustnessOutcome {
        chunk: task.chunk,
        images,
        clean: rows.clone(),
        pairs: task.pairs.iter().map(|(c, s)| (c.clone(), *s, rows.clone())).collect(),
        seconds: 0.0,
        images_per_second: 0.0,
        device: device.to_string(),
        precision: Default::default(),
        memory_format: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use freqsweep_common::spec;

    const SPEC: &str = "[[dataset]]\nkind = \"syn\"\nband = 4\ntrain = 64\ntest = 32\n[model]\narch = \"tiny\"\n[train]\nlr = 0.001\nbatch_size = 16\nepochs = 1\n[robustness]\ncorruptions = [\"gaussian_noise\", \"contrast\", \"fourier(1,0,4)\"]\nseverities = [1, 3]\nimages = 20\npairs_per_task = 4\n";

    #[test]
    fn pairs_are_cut_into_chunks_and_results_that_do_not_fit_are_refused() {
        let sweep = spec::parse(SPEC, "t.toml").unwrap();
        let tasks = crate::graph::plan(&sweep);
        // 3 corruptions × 2 severities = 6 pairs, 4 a task: 2 chunks after the train task.
        assert_eq!(tasks.len(), 3);
        assert_eq!(count(&sweep), 2);
        assert_eq!(tasks[2].key, "robustness/Syn_4-tiny-adam-lr0.001-bs16-ep1-seed0/1");
        assert_eq!(tasks[1].to_new_task().inputs, vec!["task:1/model".to_string()]);
        let TaskSpec::Robustness(r) = &tasks[1].spec else { panic!("a robustness task") };
        assert_eq!(r.pairs.len(), 4);
        assert_eq!(r.pairs[0], ("gaussian_noise".to_string(), 1));
        let TaskSpec::Robustness(r2) = &tasks[2].spec else { panic!("a robustness task") };
        assert_eq!(r2.pairs, vec![("fourier(1,0,4)".to_string(), 1), ("fourier(1,0,4)".to_string(), 3)]);
        let TaskOutcome::Robustness(good) = simulated(r, 20, "cpu") else { panic!() };
        check(r, &good).unwrap();
        let mut bad = good.clone();
        bad.pairs.swap(0, 1);
        assert!(check(r, &bad).unwrap_err().contains("not the task's 4 in order"));
        let mut bad = good.clone();
        bad.pairs[2].2[1][1] += 1;
        assert!(check(r, &bad)
            .unwrap_err()
            .contains("contrast at severity 1: the confusion matrix is not 4×4 over 20"));
        let mut bad = good.clone();
        bad.clean[0][0] = u64::MAX;
        assert!(check(r, &bad).unwrap_err().starts_with("clean:"));
        let mut bad = good.clone();
        bad.chunk = 1;
        assert!(check(r, &bad).unwrap_err().contains("chunk 1"));
        let mut bad = good;
        bad.images = 21;
        assert!(check(r, &bad).unwrap_err().contains("allows 1..=20"));
    }

    /// `E_c` is the mean over severities, `mCE_raw` the mean of `E_c` (SCIENCE.md §9.2), computed
    /// by hand here.
    #[test]
    fn errors_and_mean_corruption_error_follow_the_definitions() {
        let (e, per_class) = errors(&[vec![3, 1], vec![2, 4], vec![0, 0]]);
        assert!((e - 0.3).abs() < 1e-12);
        assert!((per_class[0] - 0.25).abs() < 1e-12 && (per_class[1] - 1.0 / 3.0).abs() < 1e-12);
        assert!(per_class[2].is_nan());
        let errors = [
            ("noise".to_string(), 1, 0.1),
            ("noise".to_string(), 2, 0.3),
            ("fog".to_string(), 1, 0.5),
            ("fog".to_string(), 2, 0.7),
            ("fog".to_string(), 3, 0.9),
        ];
        let (e_c, mce) = mean_corruption_error(&errors);
        assert_eq!(e_c.len(), 2);
        assert_eq!(e_c[0].0, "noise");
        assert!((e_c[0].1 - 0.2).abs() < 1e-12 && (e_c[1].1 - 0.7).abs() < 1e-12);
        assert!((mce - 0.45).abs() < 1e-12);
        assert!(mean_corruption_error(&[]).1.is_nan());
        // CE and rCE against a baseline, by hand: noise (0.1 + 0.3) / (0.2 + 0.6) = 0.5,
        // rCE ((0.1 − 0.05) + (0.3 − 0.05)) / ((0.2 − 0.1) + (0.6 − 0.1)) = 0.5; fog has no
        // baseline severity 3, so only 1 and 2 count; a zero baseline sum is NaN.
        let base = [
            ("noise".to_string(), 1, 0.2),
            ("noise".to_string(), 2, 0.6),
            ("fog".to_string(), 1, 0.1),
            ("fog".to_string(), 2, 0.1),
        ];
        let n = normalised_errors(&errors, 0.05, &base, 0.1);
        assert_eq!(n.len(), 2);
        assert!((n[0].1 - 0.5).abs() < 1e-12 && (n[0].2 - 0.5).abs() < 1e-12, "{n:?}");
        assert!((n[1].1 - 6.0).abs() < 1e-12, "{n:?}");
        assert!(n[1].2.is_nan(), "fog's baseline is no worse than its clean error: {n:?}");
        assert!((finite_mean(n.iter().map(|r| r.2)) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn bad_sections_are_one_line_naming_the_key() {
        let base = SPEC.split("[robustness]").next().unwrap();
        for (section, wanted) in [
            ("corruptions = [\"gausian_noise\"]\n", ":13: corruptions: unknown corruption"),
            ("corruptions = [\"frost\"]\n", ":13: corruptions: frost"),
            ("severities = [0]\n", ":13: severities"),
            ("severities = [6]\n", ":13: severities must be at most 5"),
            ("corruptions = [\"fog\", \"fog\"]\n", ":13: corruptions lists fog twice"),
            ("pairs_per_task = 0\n", ":13: pairs_per_task"),
            ("pairs_per_task = 1001\n", ":13: pairs_per_task must be at most 1000"),
            ("pairs_per_task = -1\n", ":13: pairs_per_task"),
            ("batch = 0\n", ":13: batch"),
            ("batch = 1000000000\n", ":13: batch must be at most 65536"),
            ("images = -1\n", ":13: images"),
            ("seed = -1\n", ":13: seed"),
            ("severities = [-1]\n", ":13: severities"),
            ("severities = []\n", ":13: severities is an empty list"),
            ("corruptions = []\n", ":13: corruptions is an empty list"),
            ("corruptions = 7\n", ":13: corruptions must be a string"),
            ("corruptions = [\"fourier(1,0,-4)\"]\n", ":13: corruptions: fourier(1,0,-4): expected"),
            ("baseline = 5\n", ":13: baseline must be a string"),
            ("colour = 1\n", ":13: unknown field `colour`"),
            ("baseline = \"nope\"\n", ":13: baseline \"nope\" is not a point of this sweep (its points: Syn_4-tiny"),
        ] {
            let err = spec::parse(&format!("{base}[robustness]\n{section}"), "t.toml").unwrap_err().to_string();
            assert!(err.contains(wanted) && !err.contains('\n'), "{section}: {err}");
        }
    }
}
