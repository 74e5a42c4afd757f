//! `report.html`: one self-contained page (no scripts, no external assets) whose images and raw
//! arrays lie beside it in the run directory, referenced by relative paths.

use super::{PointReport, GIT_REVISION, OVERVIEW_ROWS};
use crate::store::{AttemptRow, WorkerRow};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

pub(crate) struct Page<'a> {
    pub name: &'a str,
    pub spec_toml: String,
    pub created_ms: Option<u64>,
    pub created_by: Option<String>,
    pub counts: &'a BTreeMap<String, usize>,
    pub failed: &'a [(String, String)],
    pub workers: Vec<WorkerRow>,
    pub attempts: Vec<AttemptRow>,
    pub points: &'a [PointReport],
    pub groups: &'a [super::seeds::GroupReport],
    pub overview: Option<String>,
    pub results_csv: &'a str,
}

const STYLE: &str = "body{font-family:DejaVu Sans,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1400px;\
color:#222;padding:0 1em}h1{margin-bottom:.2em}table{border-collapse:collapse;margin:.5em 0 1.5em}\
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:right}th{background:#f3f3f3}\
td.l,th.l{text-align:left}img{max-width:100%;border:1px solid #eee;margin:4px 0}\
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:12px}.muted{color:#777}\
section.point{border-top:2px solid #ddd;margin-top:2em}.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}\
.fail{color:#a00}";

pub(crate) fn render(page: &Page) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>freqsweep report: {name}</title>\
         <style>{STYLE}</style></head><body>\n<h1>freqsweep report: {name}</h1>\n",
        name = esc(page.name)
    );
    header(&mut out, page);
    contents(&mut out, page);
    overview(&mut out, page);
    seed_groups(&mut out, page);
    for point in page.points {
        point_section(&mut out, point);
    }
    let _ = write!(out, "<h2 id=\"spec\">Sweep spec</h2>\n<pre>{}</pre>\n", esc(&page.spec_toml));
    out.push_str("</body></html>\n");
    out
}

fn header(out: &mut String, page: &Page) {
    let total: usize = page.counts.values().sum();
    let states: Vec<String> = page.counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let _ = writeln!(out, "<p>{total} tasks: {}.</p>", esc(&states.join(", ")));
    out.push_str("<table>\n");
    let row = |out: &mut String, k: &str, v: String| {
        let _ = writeln!(out, "<tr><th class=\"l\">{}</th><td class=\"l\">{}</td></tr>", esc(k), esc(&v));
    };
    row(out, "created", page.created_ms.map_or("unknown".into(), format_time));
    let started = page.attempts.iter().map(|a| a.started_ms).min();
    let ended = page.attempts.iter().filter_map(|a| a.ended_ms).max();
    if let (Some(s), Some(e)) = (started, ended) {
        row(
            out,
            "first lease → last result",
            format!("{} → {} ({})", format_time(s), format_time(e), format_duration(e.saturating_sub(s))),
        );
    }
    let busy: u64 = page.attempts.iter().filter_map(|a| Some(a.ended_ms?.saturating_sub(a.started_ms))).sum();
    let backups = page.attempts.iter().filter(|a| a.backup).count();
    row(
        out,
        "attempts / worker time",
        format!("{} ({backups} of them backups) / {}", page.attempts.len(), format_duration(busy)),
    );
    row(out, "run created by freqsweep", page.created_by.clone().unwrap_or_else(|| "unknown (older run)".into()));
    row(out, "report rendered by freqsweep", format!("{} {GIT_REVISION}", env!("CARGO_PKG_VERSION")));
    let mut devices: BTreeSet<String> = page.workers.iter().map(|w| w.device.clone()).collect();
    devices.extend(page.points.iter().filter_map(|p| p.outcome.as_ref().map(|o| o.device.clone())));
    row(out, "devices", devices.into_iter().collect::<Vec<_>>().join(", "));
    out.push_str("</table>\n");
    if !page.failed.is_empty() {
        out.push_str("<h2>Failed tasks</h2>\n<table><tr><th class=\"l\">task</th><th class=\"l\">error</th></tr>\n");
        for (key, error) in page.failed {
            let _ = writeln!(out, "<tr><td class=\"l\">{}</td><td class=\"l fail\">{}</td></tr>", esc(key), esc(error));
        }
        out.push_str("</table>\n");
    }
    if !page.workers.is_empty() {
        out.push_str(
            "<h2>Workers</h2>\n<table><tr><th class=\"l\">worker</th><th class=\"l\">host</th><th class=\"l\">device</th>\
             <th>attempts</th><th>busy</th><th class=\"l\">joined</th><th class=\"l\">left</th></tr>\n",
        );
        for w in &page.workers {
            let mine: Vec<&AttemptRow> = page.attempts.iter().filter(|a| a.worker == w.id).collect();
            let busy: u64 = mine.iter().filter_map(|a| Some(a.ended_ms?.saturating_sub(a.started_ms))).sum();
            let _ = writeln!(
                out,
                "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td><td>{}</td><td>{}</td>\
                 <td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
                esc(&w.id),
                esc(&w.hostname),
                esc(&w.device),
                mine.len(),
                format_duration(busy),
                format_time(w.joined_ms),
                w.left_ms.map_or("—".into(), format_time)
            );
        }
        out.push_str("</table>\n");
    }
}

fn contents(out: &mut String, page: &Page) {
    out.push_str("<p>Sections: <a href=\"#overview\">overview</a>");
    for p in page.points {
        let _ = write!(out, " · <a href=\"#{}\">{}</a>", anchor(&p.id), esc(&p.id));
    }
    if !page.groups.is_empty() {
        out.push_str(" · <a href=\"#seeds\">seeds aggregated</a>");
    }
    out.push_str(" · <a href=\"#spec\">spec</a></p>\n");
}

/// Groups of runs that differ only in seed: mean ± standard deviation of the final metrics,
/// the F1 band, the learning-order steps and the mean heatmap with its standard error.
fn seed_groups(out: &mut String, page: &Page) {
    if page.groups.is_empty() {
        return;
    }
    out.push_str("<h2 id=\"seeds\">Seeds aggregated</h2>\n<p>Points that differ only in <code>seed</code>: mean ± sample standard deviation across the runs (n runs with a value). <code>results.csv</code> has a mean row and a std row per group; the arrays are under <code>seeds/</code>.</p>\n");
    for g in page.groups {
        let _ = writeln!(out, "<h3>{} <span class=\"muted\">({} seeds)</span></h3>", esc(&g.id), g.members.len());
        if !g.headline.is_empty() {
            out.push_str("<table><tr><th class=\"l\">metric</th><th>mean ± std</th><th>n</th></tr>\n");
            for (name, s) in &g.headline {
                let _ = writeln!(
                    out,
                    "<tr><td class=\"l\">{}</td><td>{:.4} ± {:.4}</td><td>{}</td></tr>",
                    esc(name),
                    s.mean,
                    s.std,
                    s.n
                );
            }
            out.push_str("</table>\n");
        }
        out.push_str("<div class=\"figs\">");
        if let Some(png) = &g.f1_png {
            let _ = write!(out, "<a href=\"{0}\"><img src=\"{0}\" alt=\"F1 band over seeds\"></a>", esc(png));
        }
        for (eps, mean, sem) in &g.heatmaps {
            let _ = write!(
                out,
                "<a href=\"{0}\"><img src=\"{0}\" alt=\"mean heatmap eps {2}\"></a><a href=\"{1}\"><img src=\"{1}\" alt=\"standard error eps {2}\"></a>",
                esc(mean),
                esc(sem),
                eps
            );
        }
        out.push_str("</div>\n");
        if !g.learning_order.is_empty() {
            out.push_str("<table><tr><th class=\"l\">test set</th><th>class</th><th>F1 ≥</th><th>runs reaching it</th><th>first step, mean ± std</th></tr>\n");
            for (set, class, threshold, reached, steps) in &g.learning_order {
                let steps = steps.map_or_else(|| "never".to_string(), |s| format!("{:.1} ± {:.1}", s.mean, s.std));
                let _ = writeln!(
                    out,
                    "<tr><td class=\"l\">{}</td><td>{class}</td><td>{threshold}</td><td>{reached} of {}</td><td>{}</td></tr>",
                    esc(set),
                    g.members.len(),
                    esc(&steps)
                );
            }
            out.push_str("</table>\n");
        }
    }
}

fn overview(out: &mut String, page: &Page) {
    out.push_str("<h2 id=\"overview\">Final metrics across the grid</h2>\n");
    out.push_str("<p>Raw numbers: <a href=\"results.csv\">results.csv</a> (one row per train task).</p>\n");
    if let Some(png) = &page.overview {
        let _ = writeln!(out, "<img src=\"{}\" alt=\"final accuracy per grid point and test set\">", esc(png));
        if page.points.len() > OVERVIEW_ROWS {
            let _ = writeln!(
                out,
                "<p class=\"muted\">The figure shows the first {OVERVIEW_ROWS} points; the table shows all.</p>"
            );
        }
    }
    let mut lines = page.results_csv.lines();
    let Some(header) = lines.next() else { return };
    let columns: Vec<&str> = header.split(',').collect();
    // Grid keys that are blank for every point carry no information in the table.
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let keep: Vec<usize> =
        (0..columns.len()).filter(|&c| c < 2 || rows.iter().any(|r| r.get(c).is_some_and(|v| !v.is_empty()))).collect();
    out.push_str("<table><tr>");
    for &c in &keep {
        let _ = write!(out, "<th>{}</th>", esc(columns[c]));
    }
    out.push_str("</tr>\n");
    for r in &rows {
        out.push_str("<tr>");
        for &c in &keep {
            let value = r.get(c).copied().unwrap_or("");
            let shown = value
                .parse::<f64>()
                .ok()
                .filter(|_| value.contains('.'))
                .map_or(value.to_string(), |v| format!("{v:.4}"));
            if c == 0 {
                let _ = write!(out, "<td class=\"l\"><a href=\"#{}\">{}</a></td>", anchor(value), esc(value));
            } else {
                let _ = write!(out, "<td>{}</td>", esc(&shown));
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
}

fn point_section(out: &mut String, p: &PointReport) {
    let _ = writeln!(out, "<section class=\"point\" id=\"{}\"><h2>{}</h2>", anchor(&p.id), esc(&p.id));
    // Keys that do not apply to this point (momentum for Adam, …) are blank: leave them out.
    let values: Vec<String> =
        p.values.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| format!("{k} = {v}")).collect();
    let _ = writeln!(out, "<p>{} · state <b>{}</b></p>", esc(&values.join(", ")), esc(&p.state));
    if let Some(error) = &p.error {
        let _ = writeln!(out, "<p class=\"fail\">{}</p>", esc(error));
    }
    // Each kind's section, in the order of `TaskKind::ALL` (the rooms render them).
    for section in &p.sections {
        out.push_str(section);
    }
    if !p.raw.is_empty() {
        let links: Vec<String> = p.raw.iter().map(|r| format!("<a href=\"{0}\">{0}</a>", esc(r))).collect();
        let _ = writeln!(out, "<p class=\"muted\">Raw arrays: {}</p>", links.join(" · "));
    }
    out.push_str("</section>\n");
}

/// HTML-escape text and attribute values.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn anchor(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// `YYYY-MM-DD hh:mm:ss UTC` from Unix milliseconds (civil-from-days, no time zone database).
pub(crate) fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub(crate) fn format_duration(ms: u64) -> String {
    let s = ms as f64 / 1000.0;
    if s < 60.0 {
        format!("{s:.1} s")
    } else if s < 3600.0 {
        format!("{:.0} min {:.0} s", (s / 60.0).floor(), s % 60.0)
    } else {
        format!("{:.0} h {:.0} min", (s / 3600.0).floor(), (s % 3600.0 / 60.0).floor())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_escapes() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_795_564_800_000 + 3_723_000), "2026-11-25 01:02:03 UTC");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_duration(1_500), "1.5 s");
        assert_eq!(format_duration(125_000), "2 min 5 s");
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(anchor("Syn_4-alexnet-lr0.1"), "Syn_4-alexnet-lr0_1");
    }
}
