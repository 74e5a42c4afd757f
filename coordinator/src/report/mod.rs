//! The run directory's results, rendered from the store alone (DESIGN.md "run directory"):
//! `results.csv`, `heatmaps/` (`.npy` + `.png` per model × ε × layer, plus a layer grid),
//! `curves/` (per-class F1 CSV + PNG over all epochs and over the first three), `confusion/`
//! (CSV + PNG per model × test set), `checkpoints/`, `overview.png` and `report.html`.
//!
//! Every figure has its numbers beside it (`.npy` or CSV); `freqsweep report DIR` runs this same
//! function again, so the files depend only on what the store holds.

pub use freqsweep_common::figures;
mod html;
mod seeds;
pub(crate) use html::{esc, format_duration, format_time};

use crate::graph::PlannedTask;
use crate::kinds::{self, Merged};
use crate::store::Reader;
use anyhow::{Context, Result};
use freqsweep_common::spec::Sweep;
use freqsweep_common::task::{TaskOutcome, TrainOutcome};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

/// The state the report gives a done task whose stored result cannot be read.
pub const UNREADABLE: &str = "unreadable";

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
    /// Done tasks whose stored result cannot be read (a damaged store): `(task key, why)`.
    /// Their points are shown as such, never as a blank row, and no mean counts them.
    pub unreadable: Vec<(String, String)>,
}

/// The sweep and plan of a stored run, from the store alone: the stored spec parsed against
/// the file-system answers recorded when the run opened (a model added to a globbed folder, a
/// renamed or deleted input, or another working directory change nothing), and checked to plan
/// exactly the store's tasks, so no row is labelled with a point that never ran.
pub fn stored_plan(reader: &Reader, db: &Path) -> Result<(Sweep, Vec<PlannedTask>)> {
    let text =
        reader.sweep_value("spec_toml")?.with_context(|| format!("{}: the store holds no spec", db.display()))?;
    let file = format!("{} (stored spec)", db.display());
    let sweep = match reader.sweep_value(crate::run::SPEC_INPUTS)? {
        Some(json) => {
            let inputs: freqsweep_common::spec::SpecInputs = serde_json::from_str(&json)
                .with_context(|| format!("{}: the recorded spec inputs cannot be read", db.display()))?;
            freqsweep_common::spec::parse_replaying(&text, &file, &inputs)?
        }
        // A store from before inputs were recorded: its spec is read against the files as they are.
        None => freqsweep_common::spec::parse(&text, &file)?,
    };
    let mut sweep = sweep;
    let mut tasks = crate::graph::plan(&sweep);
    // Points added while the sweep ran, re-planned as the run did.
    crate::search::extend_with_added(&mut sweep, &mut tasks, reader)
        .with_context(|| format!("{}: the points added while the sweep ran", db.display()))?;
    let rows = reader.tasks()?;
    let stored: HashMap<&str, u64> = rows.iter().map(|r| (r.key.as_str(), r.id)).collect();
    if let Some(t) = tasks.iter().find(|t| stored.get(t.key.as_str()) != Some(&t.id.0)) {
        anyhow::bail!(
            "{}: the stored spec plans task {} that the store does not hold as planned; the store is damaged",
            db.display(),
            freqsweep_common::text::one_line(&t.key, 160)
        );
    }
    if rows.len() != tasks.len() {
        anyhow::bail!(
            "{}: the store holds {} tasks, its spec plans {}; the store is damaged",
            db.display(),
            rows.len(),
            tasks.len()
        );
    }
    Ok((sweep, tasks))
}

/// What every room's report section reads: the run directory it writes to, the store, the plan,
/// the merged results and what every point's columns share.
pub(crate) struct RunData<'a> {
    pub dir: &'a Path,
    pub reader: &'a Reader,
    pub rows: &'a HashMap<u64, crate::store::TaskRow>,
    pub tasks: &'a [PlannedTask],
    pub sweep: &'a Sweep,
    pub merged: &'a Merged,
    /// The first point's test sets (the columns' order).
    pub test_sets: &'a [String],
    /// Per-class columns follow the first point's model (a sweep's models share their classes).
    pub classes: usize,
}

/// Everything the report shows about one grid point, with the files written for it
/// (paths relative to the run directory).
pub(crate) struct PointReport {
    pub id: String,
    /// Grid key → value, in `GRID_KEYS` order.
    pub values: Vec<(String, String)>,
    pub state: String,
    pub error: Option<String>,
    /// The point's training summary (the overview figure and the devices list read it).
    pub outcome: Option<TrainOutcome>,
    /// Each kind's section of the page, HTML, in the order of `TaskKind::ALL`.
    pub sections: Vec<String>,
    pub raw: Vec<String>,
}

/// Render every result file of a run directory from its store.
pub fn write_results(dir: &Path, reader: &Reader, sweep: &Sweep, tasks: &[PlannedTask]) -> Result<Summary> {
    let mut rows: HashMap<u64, crate::store::TaskRow> = reader.tasks()?.into_iter().map(|r| (r.id, r)).collect();
    if let Some(t) = tasks.iter().find(|t| !rows.contains_key(&t.id.0)) {
        anyhow::bail!("the store holds no task {} of its plan; the store is damaged", t.key);
    }
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = Vec::new();
    let mut unreadable = Vec::new();
    for t in tasks {
        let row = rows.get_mut(&t.id.0).expect("checked above");
        // A done task whose result does not parse is shown as such (state `unreadable`), not as
        // a blank row, and its result is left out of every merge and mean.
        if let Some(Err(e)) = row.result_json.as_deref().map(serde_json::from_str::<TaskOutcome>) {
            let why =
                format!("its stored result cannot be read ({})", freqsweep_common::text::one_line(&e.to_string(), 160));
            unreadable.push((t.key.clone(), why.clone()));
            row.state = UNREADABLE.to_string();
            row.error = Some(why);
            row.result_json = None;
        }
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
    let classes = sweep.points.first().map_or(0, |p| p.task.train.classes);
    // Every merged map and kept outcome, from the results the store holds (the same merge the
    // driver does as results are accepted).
    let mut merged = Merged::new(tasks, kinds::Keep::Everything);
    for t in tasks {
        let Some(Ok(outcome)) = rows[&t.id.0].result_json.as_deref().map(serde_json::from_str::<TaskOutcome>) else {
            continue;
        };
        let point = &sweep.points[t.point].id;
        merged.merge(t, &outcome).map_err(|e| anyhow::anyhow!("{} of {point}: {e}", t.kind().as_str()))?;
    }
    let run = RunData { dir, reader, rows: &rows, tasks, sweep, merged: &merged, test_sets: &test_sets, classes };
    let mut csv = String::from("point");
    kinds::csv_header(&run, &mut csv);
    csv.push('\n');
    let header = csv.trim_end().to_string();
    let mut points = Vec::new();
    // Each point's row, for the seed groups' means.
    let mut rows_text: Vec<String> = Vec::with_capacity(sweep.points.len());
    for (index, point) in sweep.points.iter().enumerate() {
        let mut report = PointReport {
            id: point.id.clone(),
            values: point.values.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            state: String::new(),
            error: None,
            outcome: None,
            sections: Vec::new(),
            raw: Vec::new(),
        };
        let row_start = csv.len();
        let _ = write!(csv, "{}", point.id);
        kinds::report_point(&run, index, point, &mut report, &mut csv)?;
        rows_text.push(csv[row_start..].to_string());
        csv.push('\n');
        points.push(report);
    }
    let mut group_raw = Vec::new();
    for (group, members) in seeds::groups(sweep) {
        csv.push_str(&seeds::csv_rows(&group, &members, &rows_text));
    }
    let groups =
        seeds::write(dir, reader, sweep, tasks, &merged.heatmaps, &header, &rows_text, &test_sets, &mut group_raw)?;
    write_file(&dir.join("results.csv"), &csv)?;

    let overview = write_overview(dir, &points, &test_sets)?;
    // The page lists unreadable results with the failures: neither has a usable result.
    let shown_failed: Vec<(String, String)> = failed.iter().chain(&unreadable).cloned().collect();
    let page = html::Page {
        name: &sweep.name,
        spec_toml: reader.sweep_value("spec_toml")?.unwrap_or_default(),
        created_ms: reader.sweep_value("created_ms")?.and_then(|v| v.parse().ok()),
        created_by: reader.sweep_value("git_revision")?,
        counts: &counts,
        failed: &shown_failed,
        workers: reader.workers()?,
        attempts: reader.attempts()?,
        points: &points,
        groups: &groups,
        overview,
        results_csv: &csv,
    };
    write_file(&dir.join("report.html"), &html::render(&page))?;
    Ok(Summary { counts: counts.into_iter().collect(), failed, unreadable })
}

/// Point ids spell out the whole grid point; figure titles keep the part before the seed short.
pub(crate) fn short_id(id: &str) -> &str {
    if id.len() <= 48 {
        id
    } else {
        &id[..id.char_indices().nth(48).map_or(id.len(), |(i, _)| i)]
    }
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

pub(crate) fn save(figure: &Result<figures::Figure, String>, dir: &Path, relative: &str) -> Result<()> {
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
