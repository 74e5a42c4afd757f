//! `cargo xtask bench`: run each benchmark next to its baseline in the same run and write the
//! ratios into BENCHMARKS.md, one marked section per benchmark (other sections are kept).

use crate::{cargo, libtorch, step, workspace_root};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Python packages the baselines need, installed into the cache (never into the system Python).
fn python_deps(packages: &[&str]) -> Result<PathBuf> {
    let target = libtorch::cache_root()?.join("pydeps");
    let have = |pkg: &str| target.join(pkg).is_dir();
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !have(p)).collect();
    if !missing.is_empty() {
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target"])
            .arg(&target)
            .args(&missing)
            .status()
            .context("running python3 -m pip (install python3-pip)")?;
        if !status.success() {
            bail!("pip install {missing:?} failed");
        }
    }
    Ok(target)
}

fn criterion_seconds(group: &str, name: &str) -> Result<f64> {
    let path = workspace_root().join("target/criterion").join(group).join(name).join("new/estimates.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let key = "\"median\":";
    // estimates.json: {"mean":{...,"point_estimate":X,...},"median":{...,"point_estimate":Y,...},...}
    let median = text.find(key).map(|i| &text[i..]).context("no median in estimates.json")?;
    let point = median.find("\"point_estimate\":").context("no point_estimate")? + "\"point_estimate\":".len();
    let digits: String = median[point..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        .collect();
    Ok(digits.parse::<f64>()? * 1e-9)
}

fn json_number(json: &str, key: &str) -> Result<f64> {
    let at = json.find(&format!("\"{key}\":")).with_context(|| format!("baseline printed no {key}"))? + key.len() + 3;
    let digits: String = json[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
        .collect();
    Ok(digits.parse()?)
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    format!("{cpu}, {cores} cores")
}

/// Replace (or append) the section between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`.
fn write_section(name: &str, body: &str) -> Result<()> {
    let path: &Path = &workspace_root().join("BENCHMARKS.md");
    let mut doc = fs::read_to_string(path).unwrap_or_else(|_| {
        "# Benchmarks\n\nWritten by `cargo xtask bench`; every figure is measured next to its baseline in the same run.\n\n".into()
    });
    let (open, close) = (format!("<!-- bench:{name} -->"), format!("<!-- /bench:{name} -->"));
    let section = format!("{open}\n{body}{close}\n");
    match (doc.find(&open), doc.find(&close)) {
        (Some(a), Some(b)) => doc.replace_range(a..b + close.len() + 1, &section),
        _ => doc.push_str(&format!("\n{section}")),
    }
    fs::write(path, doc)?;
    eprintln!("xtask: wrote section {name} of {}", path.display());
    Ok(())
}

pub fn spectral(source: &libtorch::Source, rest: &[String]) -> Result<()> {
    let mut bench = cargo(source);
    bench.args(["bench", "-p", "freqsweep-common", "--bench", "spectral"]);
    if !rest.is_empty() {
        bench.arg("--").args(rest);
    }
    step("cargo bench spectral", &mut bench)?;
    let pydeps = python_deps(&["numpy"])?;
    let out = Command::new("python3")
        .arg(workspace_root().join("bench/numpy_spectral.py"))
        .env("PYTHONPATH", &pydeps)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .context("running bench/numpy_spectral.py")?;
    if !out.status.success() {
        bail!("numpy baseline failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let baseline = String::from_utf8_lossy(&out.stdout).to_string();
    let numpy_version =
        baseline.split("\"numpy\": \"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("?").to_string();
    let rows = [
        ("band_filter_10k", "band filter `B124`, 10 000 × 3 × 32 × 32"),
        ("basis_all_cells_32x32", "all 514 basis images of a 32 × 32 heatmap"),
        ("perturb_10k", "perturb 10 000 × 3 × 32 × 32 with one basis image"),
    ];
    let mut body = format!(
        "## Spectral kernels (`common`)\n\nMachine: {}. NumPy {numpy_version} (single-threaded pocketfft) vs freqsweep-common \
         (rustfft), median times. Command: `cargo xtask bench`. The band filter runs on all cores (rayon; the NumPy \
         baseline is its fastest plain form, `irfft2(rfft2(x) · mask)`, on one thread), so divide its speed-up by the \
         core count for a per-core figure; basis generation and perturbation run on one thread in both.\n\n\
         | kernel | NumPy | freqsweep | speed-up |\n|---|---:|---:|---:|\n",
        machine()
    );
    for (key, label) in rows {
        let ours = criterion_seconds("spectral", key)?;
        let theirs = json_number(&baseline, key)?;
        body.push_str(&format!(
            "| {label} | {:.2} ms | {:.2} ms | {:.1}× |\n",
            theirs * 1e3,
            ours * 1e3,
            theirs / ours
        ));
    }
    body.push('\n');
    write_section("spectral", &body)
}

/// Coordinator throughput through the real path (tonic on loopback, scheduler, SQLite with every
/// report committed before its ack); the baseline is the same path with one worker, where each
/// report waits for its own commit, so the ratio is what group commit and concurrency buy.
pub fn coordinator(source: &libtorch::Source) -> Result<()> {
    let mut bench = cargo(source);
    bench.args(["bench", "-p", "freqsweep-coordinator", "--bench", "coordinator"]);
    let out = bench.output().context("running the coordinator benchmark")?;
    if !out.status.success() {
        bail!("coordinator benchmark failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let json = String::from_utf8_lossy(&out.stdout).to_string();
    let cycles = json_number(&json, "cycles_per_second")?;
    let baseline = json_number(&json, "baseline_cycles_per_second")?;
    let points = json_number(&json, "metric_points_per_second")?;
    let sessions = json_number(&json, "sessions")?;
    let session_seconds = json_number(&json, "sessions_seconds")?;
    let body = format!(
        "## Coordinator (`coordinator/benches/coordinator.rs`)\n\nMachine: {}. Simulated in-process workers that do no \
         work, through the real path: tonic over loopback, the scheduler, the SQLite store (WAL, `synchronous = FULL`) with \
         every report committed before it is acknowledged. Command: `cargo xtask bench`; one run.\n\n\
         | measure | freqsweep | baseline / goal | ratio |\n|---|---:|---:|---:|\n\
         | lease + result + ack cycles/s, 64 workers (group commit) | {cycles:.0} | {baseline:.0} (1 worker: one commit per report) | {:.1}× |\n\
         | lease + result + ack cycles/s vs goal | {cycles:.0} | 20 000 | {:.2}× |\n\
         | metric points ingested durably /s (batches of 1 000, 16 workers) | {points:.0} | 200 000 | {:.2}× |\n\
         | concurrent worker sessions registered and heard from | {sessions:.0} in {session_seconds:.2} s | 1 000 | {:.2}× |\n\n",
        machine(),
        cycles / baseline,
        cycles / 20_000.0,
        points / 200_000.0,
        sessions / 1_000.0
    );
    write_section("coordinator", &body)
}
