//! The report's seed aggregation (`common::seeds`): grid points that differ only in `seed` form a
//! group; for every group of two runs or more, `results.csv` gets a row of means and a row of
//! standard deviations of every numeric column, and `seeds/` holds the group's per-class F1 band
//! (mean ± std per evaluation step, CSV and figure), its learning-order steps (mean ± std over
//! the runs that reached each threshold) and per ε the mean heatmap and its per-cell standard
//! error (`.npy` and figures; cells no run computed stay NaN and grey).

use super::{figures, save, short_id, write_file, LEARNED_AT};
use crate::graph::PlannedTask;
use crate::kinds::heatmap::{eps_label, MapKey, Maps};
use crate::store::Reader;
use anyhow::Result;
use figures::{CentredMap, LinePanel};
use freqsweep_common::npy::NpyArray;
use freqsweep_common::seeds::{f1_band, group_of, map_mean_and_error, Summary};
use freqsweep_common::spec::{Sweep, GRID_KEYS};
use freqsweep_common::task::MetricPoint;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// A class's mean F1 line and its ± std range.
type ClassCurve = (Vec<(f64, f64)>, Vec<figures::Spread>);

/// Test set, class, threshold, runs that reached it, steps' summary.
pub(crate) type LearningOrderRow = (String, i32, f64, usize, Option<Summary>);

/// What the report page shows of one group.
pub(crate) struct GroupReport {
    pub id: String,
    pub members: Vec<String>,
    /// `results.csv` column → summary over the members, for the columns every page reader wants
    /// first (accuracy, macro-F1, final loss, mean heatmap error).
    pub headline: Vec<(String, Summary)>,
    pub f1_png: Option<String>,
    /// Per ε: the mean map's and the standard-error map's figures.
    pub heatmaps: Vec<(f64, String, String)>,
    pub learning_order: Vec<LearningOrderRow>,
}

/// The groups of `sweep` with two or more points, in first-point order: `(group id, point indices)`.
pub(crate) fn groups(sweep: &Sweep) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    for (index, point) in sweep.points.iter().enumerate() {
        let Some(group) = group_of(&point.id, &point.values["seed"]) else { continue };
        match out.iter_mut().find(|(g, _)| g == group) {
            Some((_, members)) => members.push(index),
            None => out.push((group.to_string(), vec![index])),
        }
    }
    out.retain(|(_, members)| members.len() > 1);
    out
}

/// Rows of means and standard deviations for `results.csv`: column by column over the members'
/// rows (`rows[i]` is point `i`'s row, without its newline); grid values shared by every member
/// are kept, the seed column says `mean`/`std`, other non-numeric columns stay blank.
pub(crate) fn csv_rows(group: &str, members: &[usize], rows: &[String]) -> String {
    let fields: Vec<Vec<&str>> = members.iter().map(|&i| rows[i].split(',').collect()).collect();
    let width = fields.iter().map(Vec::len).max().unwrap_or(0);
    let first_numeric = 2 + GRID_KEYS.len();
    let seed_column = 2 + GRID_KEYS.iter().position(|k| *k == "seed").expect("seed is a grid key");
    // Only finished runs count: a "mean of 2 seeds" over one run's numbers would hide that the
    // other failed or lost its result.
    let done = fields.iter().filter(|f| f.get(1) == Some(&"done")).count();
    let of = match done {
        d if d == members.len() => format!("{d} seeds"),
        d => format!("{d} of {} seeds", members.len()),
    };
    let mut out = String::new();
    for (label, pick) in [("mean", 0usize), ("std", 1)] {
        let _ = write!(out, "{group},{label} of {of}");
        for column in 2..width {
            let values: Vec<&str> = fields.iter().map(|f| f.get(column).copied().unwrap_or("")).collect();
            let cell = if column == seed_column {
                label.to_string()
            } else if column < first_numeric {
                if values.iter().all(|v| *v == values[0]) {
                    values[0].to_string()
                } else {
                    String::new()
                }
            } else {
                let numbers: Vec<f64> = values
                    .iter()
                    .zip(&fields)
                    .filter(|(_, f)| f.get(1) == Some(&"done"))
                    .filter_map(|(v, _)| v.parse::<f64>().ok())
                    .collect();
                match Summary::of(numbers) {
                    Some(s) if pick == 0 => s.mean.to_string(),
                    Some(s) => s.std.to_string(),
                    None => String::new(),
                }
            };
            let _ = write!(out, ",{cell}");
        }
        out.push('\n');
    }
    out
}

/// Every group's files under `seeds/` and what the page shows of it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write(
    dir: &Path,
    reader: &Reader,
    sweep: &Sweep,
    tasks: &[PlannedTask],
    heatmaps: &Maps,
    header: &str,
    rows: &[String],
    test_sets: &[String],
    raw: &mut Vec<String>,
) -> Result<Vec<GroupReport>> {
    let columns: Vec<&str> = header.split(',').collect();
    let eps_list: Vec<f64> = sweep.analyses.heatmap.as_ref().map(|h| h.eps.clone()).unwrap_or_default();
    let mut out = Vec::new();
    for (group, members) in groups(sweep) {
        let headline = headline(&columns, &members, rows);

        // F1 band and learning order from every member's metric history.
        let mut histories = Vec::new();
        for &i in &members {
            if let Some(train) = tasks.iter().find(|t| t.point == i && crate::kinds::trains_model(t.kind())) {
                histories.push(reader.metrics(train.id.0)?);
            }
        }
        let runs: Vec<&[MetricPoint]> = histories.iter().map(Vec::as_slice).collect();
        let f1_png = write_f1_band(dir, &group, members.len(), &runs, test_sets, raw)?;
        let learning_order = write_learning_order(dir, &group, &runs, test_sets, raw)?;

        // Mean heatmap and per-cell standard error, per ε.
        let mut group_maps = Vec::new();
        for &eps in &eps_list {
            group_maps.extend(write_mean_heatmap(dir, &group, &members, heatmaps, eps, raw)?);
        }
        out.push(GroupReport {
            id: group.clone(),
            members: members.iter().map(|&i| sweep.points[i].id.clone()).collect(),
            headline,
            f1_png,
            heatmaps: group_maps,
            learning_order,
        });
    }
    Ok(out)
}

/// The headline columns' summaries over a group's members (`rows[i]` is point `i`'s row).
fn headline(columns: &[&str], members: &[usize], rows: &[String]) -> Vec<(String, Summary)> {
    let mut headline = Vec::new();
    for (column, name) in columns.iter().enumerate() {
        let wanted = name.starts_with("accuracy_")
            || name.starts_with("macro_f1_")
            || name.starts_with("mean_heatmap_error_")
            || *name == "final_loss";
        if !wanted {
            continue;
        }
        let values = members.iter().filter_map(|&i| rows[i].split(',').nth(column)?.parse::<f64>().ok());
        if let Some(s) = Summary::of(values) {
            headline.push((name.to_string(), s));
        }
    }
    headline
}

/// The group's per-class F1 band over its runs: `seeds/<group>_f1.csv` and, when a test set
/// has a class, `seeds/<group>_f1.png`, whose path it returns.
fn write_f1_band(
    dir: &Path,
    group: &str,
    seeds: usize,
    runs: &[&[MetricPoint]],
    test_sets: &[String],
    raw: &mut Vec<String>,
) -> Result<Option<String>> {
    let band = f1_band(runs);
    if band.is_empty() {
        return Ok(None);
    }
    let mut csv = String::from("test_set,class,step,epoch,runs,f1_mean,f1_std\n");
    for p in &band {
        let _ =
            writeln!(csv, "{},{},{},{},{},{},{}", p.test_set, p.class, p.step, p.epoch, p.f1.n, p.f1.mean, p.f1.std);
    }
    let path = format!("seeds/{group}_f1.csv");
    write_file(&dir.join(&path), &csv)?;
    raw.push(path);
    let mut panels: Vec<LinePanel> = Vec::new();
    for set in test_sets {
        let mut series: BTreeMap<i32, ClassCurve> = BTreeMap::new();
        for p in band.iter().filter(|p| &p.test_set == set) {
            let (line, spread) = series.entry(p.class).or_default();
            line.push((p.epoch, p.f1.mean));
            spread.push((p.epoch, p.f1.mean - p.f1.std, p.f1.mean + p.f1.std));
        }
        if series.is_empty() {
            continue;
        }
        let name = |c: i32| format!("class {c}");
        panels.push(LinePanel {
            title: set.clone(),
            series: series.iter().map(|(c, (line, _))| (name(*c), line.clone())).collect(),
            bands: series.iter().map(|(c, (_, spread))| (name(*c), spread.clone())).collect(),
        });
    }
    if panels.is_empty() {
        return Ok(None);
    }
    let title = format!("per-class F1, mean ± std over {seeds} seeds — {}", short_id(group));
    let png = format!("seeds/{group}_f1.png");
    save(&figures::line_panels(&panels, "epoch", "F1", &title), dir, &png)?;
    Ok(Some(png))
}

/// The group's learning-order steps (mean ± std over the runs that reached each threshold):
/// `seeds/<group>_learning_order.csv` when any run has a class, and the page's rows.
fn write_learning_order(
    dir: &Path,
    group: &str,
    runs: &[&[MetricPoint]],
    test_sets: &[String],
    raw: &mut Vec<String>,
) -> Result<Vec<LearningOrderRow>> {
    let orders: Vec<_> = runs.iter().map(|run| crate::kinds::train::learning_order_of(run, test_sets)).collect();
    let mut steps: BTreeMap<(String, i32, usize), Vec<f64>> = BTreeMap::new();
    let mut seen: BTreeMap<(String, i32, usize), usize> = BTreeMap::new();
    for order in &orders {
        for (set, classes) in order {
            for (class, firsts) in classes {
                for (t, first) in firsts.iter().enumerate() {
                    *seen.entry((set.clone(), *class, t)).or_default() += 1;
                    if let Some(step) = first {
                        steps.entry((set.clone(), *class, t)).or_default().push(*step as f64);
                    }
                }
            }
        }
    }
    let mut learning_order = Vec::new();
    if seen.is_empty() {
        return Ok(learning_order);
    }
    let mut csv = String::from("test_set,class,threshold,runs,reached,step_mean,step_std\n");
    for ((set, class, t), runs) in &seen {
        let summary = steps.get(&(set.clone(), *class, *t)).and_then(|s| Summary::of(s.iter().copied()));
        let reached = summary.map_or(0, |s| s.n);
        let (mean, std) = summary.map_or((String::new(), String::new()), |s| (s.mean.to_string(), s.std.to_string()));
        let _ = writeln!(csv, "{set},{class},{},{runs},{reached},{mean},{std}", LEARNED_AT[*t]);
        learning_order.push((set.clone(), *class, LEARNED_AT[*t], reached, summary));
    }
    let path = format!("seeds/{group}_learning_order.csv");
    write_file(&dir.join(&path), &csv)?;
    raw.push(path);
    Ok(learning_order)
}

/// The group's mean heatmap and per-cell standard error at `eps` (`.npy` and figures), when two
/// members or more have a map there, all of one shape: `(eps, mean figure, error figure)`.
fn write_mean_heatmap(
    dir: &Path,
    group: &str,
    members: &[usize],
    heatmaps: &Maps,
    eps: f64,
    raw: &mut Vec<String>,
) -> Result<Option<(f64, String, String)>> {
    let maps: Vec<_> = members.iter().filter_map(|&i| heatmaps.get(MapKey::new(i, eps))).collect();
    if maps.len() < 2 {
        return Ok(None);
    }
    let shape = maps[0].error.shape();
    if maps.iter().any(|m| m.error.shape() != shape) {
        return Ok(None);
    }
    let means: Vec<Vec<f64>> = maps.iter().map(|m| m.error.means()).collect();
    let slices: Vec<&[f64]> = means.iter().map(Vec::as_slice).collect();
    let (mean, error) = map_mean_and_error(&slices).map_err(anyhow::Error::msg)?;
    let stem = format!("seeds/{group}_eps{}", eps_label(eps));
    let mut pngs = Vec::new();
    for (suffix, values, range, label) in
        [("mean", &mean, Some((0.0, 1.0)), "mean error rate"), ("sem", &error, None, "standard error")]
    {
        let npy = format!("{stem}_{suffix}.npy");
        let full = dir.join(&npy);
        std::fs::create_dir_all(full.parent().expect("has parent"))?;
        NpyArray::from_f64(vec![shape.h, shape.w], values).write(&full)?;
        raw.push(npy);
        let title = format!("{} ε={}: {suffix} over {} seeds", short_id(group), eps_label(eps), maps.len());
        let map = CentredMap { values, height: shape.h, width: shape.w };
        let png = format!("{stem}_{suffix}.png");
        save(&figures::heatmap(map, range, &title, label), dir, &png)?;
        pngs.push(png);
    }
    let [mean_png, sem_png]: [String; 2] = pngs.try_into().expect("two figures");
    Ok(Some((eps, mean_png, sem_png)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_rows_average_numeric_columns_and_keep_shared_values() {
        let blank = ",".repeat(GRID_KEYS.len() - 2);
        // point, state, dataset, arch, <blank grid keys>, seed, then two numeric columns.
        let row = |seed: u64, acc: &str, loss: &str| format!("p-seed{seed},done,Syn_4,tiny{blank},{seed},{acc},{loss}");
        let rows = vec![row(0, "0.5", "1.0"), row(1, "0.7", ""), row(2, "0.9", "3.0")];
        let text = csv_rows("p", &[0, 1, 2], &rows);
        let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(',').collect()).collect();
        assert_eq!(lines.len(), 2);
        let (mean, std) = (&lines[0], &lines[1]);
        assert_eq!((mean[0], mean[1], mean[2], mean[3]), ("p", "mean of 3 seeds", "Syn_4", "tiny"));
        assert_eq!((std[1], std[2 + GRID_KEYS.len() - 1]), ("std of 3 seeds", "std"));
        let n = mean.len();
        assert!((mean[n - 2].parse::<f64>().unwrap() - 0.7).abs() < 1e-12);
        assert!((std[n - 2].parse::<f64>().unwrap() - 0.2).abs() < 1e-12);
        // A missing value leaves that run out: the loss is over the two runs that have one.
        assert_eq!((mean[n - 1], std[n - 1].parse::<f64>().unwrap()), ("2", 2.0f64.sqrt()));
    }
}
