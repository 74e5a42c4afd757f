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

/// The 1-minute load average, to show how busy the machine was around a benchmark.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "?".into())
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

/// Scaling of one real sweep (4 train tasks, 260 heatmap chunks) with 1–16 simulated workers on
/// loopback, lease latency under 1 000 sessions and resident memory per 100 000 tasks
/// (`coordinator/benches/scaling.rs`); each efficiency is against ideals computed from the same
/// run's own sleeps.
pub fn scaling(source: &libtorch::Source) -> Result<()> {
    let mut bench = cargo(source);
    bench.args(["bench", "-p", "freqsweep-coordinator", "--bench", "scaling"]);
    bench.stderr(std::process::Stdio::inherit());
    let load_before = load_average();
    let out = bench.output().context("running the scaling benchmark")?;
    if !out.status.success() {
        bail!("scaling benchmark failed ({})", out.status);
    }
    let json = String::from_utf8_lossy(&out.stdout).to_string();
    let load = format!("load average {load_before} before, {} after", load_average());
    let body = scaling_section(&json, &machine(), "`cargo xtask bench scaling`", &load)?;
    write_section("scaling", &body)
}

/// The section text for the scaling benchmark's JSON.
fn scaling_section(json: &str, machine: &str, command: &str, load: &str) -> Result<String> {
    let n = |key: &str| json_number(json, key);
    let mib = |bytes: f64| bytes / 1_048_576.0;
    let (tasks, trains) = (n("tasks")?, n("train_tasks")?);
    let (train_ms, chunk_ms, cells) = (n("train_ms")?, n("chunk_ms")?, n("chunk_cells")?);
    let mut body = format!(
        "## Scaling (`coordinator/benches/scaling.rs`)\n\nMachine: {machine}. Command: {command}; one run ({load}). One real \
         sweep planned from a spec and opened as `freqsweep serve` opens it (`run::open`: plan, SQLite store with every \
         report committed before its ack, artifacts, TensorBoard follower; default service settings), {tasks:.0} tasks: \
         {trains:.0} train tasks and {:.0} Fourier-heatmap chunks of {cells:.0} cells, each chunk depending on its train \
         task and taking its `model` output as input. A fresh coordinator per row; the simulated workers run in the same \
         process on loopback gRPC, one connection each. Only the engine is simulated: per lease a worker downloads the \
         inputs it does not hold (`DownloadArtifact`, digest checked, cached per worker, its own outputs kept, the cache \
         announced at registration), sleeps {train_ms:.0} ms per train task and {chunk_ms:.0} ms per {cells:.0}-cell \
         chunk (proportional to its cells), uploads a train task's checkpoint ({:.1} MiB) and model ({:.1} MiB) of \
         random bytes in 1 MiB chunks, and reports a result that the coordinator checks and merges into its map; \
         heartbeats and `NoWork` retries as `freqsweep-worker` does.\n\n\
         - *work*: the sum of the sleeps the workers actually made in that run; *critical path*: the longest train + \
         chunk sleeps of one point;\n\
         - *ideal* = max(work / workers, critical path); *efficiency* = ideal / measured (goal ≥ 95 % at 16);\n\
         - *best schedule*: the makespan of a zero-overhead greedy list schedule of the same tasks with the same \
         durations (trains first, a chunk ready when its train ends). With more workers than train tasks, no schedule \
         reaches the ideal: until the first train ends there is nothing else to run;\n\
         - *overhead per task* = workers × (measured − best schedule) / tasks: worker time per task that is neither \
         simulated work nor idleness the graph forces (lease round trips, downloads, uploads, `NoWork` waits, commits \
         before acks, merging);\n\
         - *downloaded*: bytes fetched by all workers (and the most by one); *minimum*: per worker, the distinct inputs \
         of the tasks it ran that it did not produce itself, summed (downloaded above it: an input fetched twice); \
         *floor*: (workers − train tasks)⁺ × model size, what perfect locality would reach (every worker runs chunks, \
         only a point's trainer holds its model without a download).\n\n\
         | workers | measured | ideal | efficiency | best schedule | efficiency vs schedule | overhead per task | \
         downloaded (max per worker) | minimum | floor |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        tasks - trains,
        mib(n("checkpoint_bytes")?),
        mib(n("model_bytes")?),
    );
    let rows = [
        ("w1", "1"),
        ("w2", "2"),
        ("w4", "4"),
        ("w8", "8"),
        ("w16", "16"),
        ("w16_retry50", "16, `NoWork` retry 50 ms (default 500 ms)"),
    ];
    for (key, label) in rows {
        let k = |s: &str| n(&format!("{key}_{s}"));
        let (measured, ideal, schedule) = (k("measured_s")?, k("ideal_s")?, k("schedule_s")?);
        body.push_str(&format!(
            "| {label} | {measured:.2} s | {ideal:.2} s | {:.1} % | {schedule:.2} s | {:.1} % | {:.1} ms | {:.1} MiB ({:.1}) | \
             {:.1} MiB | {:.1} MiB |\n",
            100.0 * ideal / measured,
            100.0 * schedule / measured,
            k("overhead_ms_per_task")?,
            mib(k("downloaded_bytes")?),
            mib(k("downloaded_max_bytes")?),
            mib(k("download_minimum_bytes")?),
            mib(k("download_floor_bytes")?),
        ));
    }
    let mut twice = Vec::new();
    for (key, label) in rows {
        if n(&format!("{key}_downloaded_bytes"))? > n(&format!("{key}_download_minimum_bytes"))? {
            twice.push(label);
        }
    }
    let at16 = n("w16_efficiency")?;
    body.push_str(&format!(
        "\nEfficiency at 16 workers: {:.1} % against the ideal, {:.1} % against the best schedule; goal ≥ 95 %: {}. \
         Time the 16 workers spent waiting after `NoWork` before asking again: {:.1} s in all (default), {:.1} s with \
         the 50 ms retry; downloading {:.2} s, uploading {:.2} s. Inputs fetched more than once by a worker: {}.\n\n",
        100.0 * at16,
        100.0 * n("w16_schedule_efficiency")?,
        if at16 >= 0.95 { "met" } else { "not met" },
        n("w16_no_work_wait_s")?,
        n("w16_retry50_no_work_wait_s")?,
        n("w16_download_s")?,
        n("w16_upload_s")?,
        if twice.is_empty() { "none (downloaded = minimum in every row)".to_string() } else { twice.join(", ") },
    ));
    let sessions = n("sessions")?;
    body.push_str(&format!(
        "| measure | freqsweep |\n|---|---:|\n\
         | lease latency (LeaseRequest → Lease), {sessions:.0} sessions all leasing at once ({:.0} rounds of lease, result, \
         ack; {:.0} leases), p50 / p99 | {:.2} ms / {:.2} ms |\n\
         | lease latency, one more session leasing alone while the {sessions:.0} stay open ({:.0} leases), p50 / p99 | \
         {:.2} ms / {:.2} ms |\n\
         | resident memory added by `run::open` of {:.0} tasks (plan, store, `Shared::new`, TensorBoard follower), per \
         100 000 tasks | {:.0} MiB |\n\
         | for scale: one planned copy of the graph alone (`graph::plan`), per 100 000 tasks | {:.0} MiB |\n\n",
        n("lease_burst_rounds")?,
        n("lease_burst_samples")?,
        n("lease_p50_ms")?,
        n("lease_p99_ms")?,
        n("lease_quiet_samples")?,
        n("lease_quiet_p50_ms")?,
        n("lease_quiet_p99_ms")?,
        n("rss_tasks")?,
        n("rss_mib_per_100k_tasks")?,
        n("rss_plan_mib_per_100k_tasks")?,
    ));
    Ok(body)
}

/// The PyTorch the engine baseline imports: the registry's `torch` wheel (the CUDA build, the one
/// the libtorch cache comes from), unpacked into `<cache>/pydeps` without its ~3 GB of CUDA library
/// wheels: only the CUDA runtime and CUPTI (a few MB, the same pins as `libtorch.rs`) and the pure
/// Python dependencies `import torch` needs, plus CPU stand-ins for the other CUDA libraries
/// written by `bench/torch_cpu_stubs.py` (the CPU never calls them).
const TORCH_PYTHON: &[&str] = &[
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cupti==13.0.85",
    "typing_extensions",
    "sympy",
    "mpmath",
    "filelock",
    "networkx",
    "jinja2",
    "MarkupSafe",
    "fsspec",
];

fn torch_python() -> Result<PathBuf> {
    let target = python_deps(&["numpy"])?;
    let version = fs::read_to_string(target.join("torch/version.py")).unwrap_or_default();
    if !version.contains(&format!("'{}", libtorch::TORCH_VERSION)) {
        eprintln!(
            "xtask: installing torch=={} for the PyTorch baseline into {}",
            libtorch::TORCH_VERSION,
            target.display()
        );
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps", "--upgrade"])
            .arg("--target")
            .arg(&target)
            .arg(format!("torch=={}", libtorch::TORCH_VERSION))
            .args(TORCH_PYTHON)
            .status()
            .context("running python3 -m pip (install python3-pip)")?;
        if !status.success() {
            bail!("pip install torch=={} failed", libtorch::TORCH_VERSION);
        }
    }
    if !target.join("nvidia/cu13/lib/libcublas.so.13").exists() {
        let status = Command::new("python3")
            .arg(workspace_root().join("bench/torch_cpu_stubs.py"))
            .arg(&target)
            .status()
            .context("running bench/torch_cpu_stubs.py")?;
        if !status.success() {
            bail!("bench/torch_cpu_stubs.py failed (it needs readelf and cc)");
        }
    }
    let check = Command::new("python3")
        .args(["-c", "import torch; print(torch.__version__)"])
        .current_dir(workspace_root())
        .env("PYTHONPATH", &target)
        .output()
        .context("running python3")?;
    if !check.status.success() {
        bail!("`import torch` from {} failed: {}", target.display(), String::from_utf8_lossy(&check.stderr));
    }
    Ok(target)
}

/// Canonical cells per model in both heatmap runs (the baseline's loop computes as many, one of
/// each conjugate pair: the half plane), training steps, and the batch size both heatmaps use.
const ENGINE_CELLS: &str = "tiny=64,alexnet=32,resnet18=16";
const ENGINE_STEPS: &str = "tiny=200,alexnet=30,resnet18=8";
/// Perturbed images per forward pass in both heatmap codes (ResNet18 runs fastest on small batches
/// on a CPU: see the forward sweep) and the batch sizes of the sweep.
const ENGINE_BATCH: &str = "tiny=256,alexnet=256,resnet18=64";
const ENGINE_BATCHES: &str = "32,64,128,256,512";
const ENGINE_ROUNDS: usize = 2;
/// Models whose DFM engine and public DFM loop are timed.
const ENGINE_DFM: [&str; 1] = ["tiny"];
const ENGINE_MODELS: [(&str, &str); 3] =
    [("tiny", "Tiny CNN"), ("alexnet", "AlexNet-CIFAR"), ("resnet18", "ResNet18-CIFAR")];
/// The numerics both sides run in: key suffix, label.
const ENGINE_VARIANTS: [(&str, &str); 3] =
    [("fp32", "fp32, NCHW"), ("fp32_cl", "fp32, channels-last"), ("bf16_cl", "bf16, channels-last")];

/// The worker engine (`worker/benches/engine.rs`) next to PyTorch (`bench/torch_engine.py`) in
/// the same run, on the same Syn_4 images, models and thread count, in each numerics variant:
/// Fourier-heatmap throughput against (a) the per-cell loop of public heatmap code and (b) the
/// best batched PyTorch at the same numerics, both against the pure forward pass, and training
/// steps/s against PyTorch's loop (autocast bf16 for bf16). `FREQSWEEP_BENCH_THREADS=N` sets
/// libtorch's CPU threads in the Rust run (the baseline takes the same): on a shared machine one
/// thread per side is far less disturbed by other work than two.
pub fn engine(source: &libtorch::Source) -> Result<()> {
    let pydeps = torch_python()?;
    let data = workspace_root().join("target/bench-engine");
    let models: Vec<&str> = ENGINE_MODELS.iter().map(|(m, _)| *m).collect();
    let load_before = load_average();
    let (ours_rounds, theirs_rounds) = engine_rounds(source, &data, &models, &pydeps)?;
    let load_after = load_average();
    let (mut body, bf16) = engine_intro(&ours_rounds[0], &theirs_rounds[0], &load_before, &load_after)?;
    let (rows, training, sweep) = engine_tables(&ours_rounds, &theirs_rounds, bf16)?;
    body.push_str(&rows);
    let dfm = engine_dfm_table(&ours_rounds, &theirs_rounds)?;
    body.push_str(&format!(
        "\nDominant frequency maps (SCIENCE.md §7), same run, fp32 NCHW, the same cells and images: the Rust engine \
         (`dfm::compute`: every class's loss and flips from one forward pass per removed cell, removal as a projection \
         on the device) against the loop of the authors' public code (`bench/torch_engine.py` `public_dfm_loop`: per \
         class, per cell, the whole test set through FFT, zeroing, inverse FFT and the model). Time to all class maps \
         is classes × (Rust img/s) / (public img/s); goal ≥ 0.9 × classes (3.6× for 4 classes), at ≥ 90 % of the \
         forward pass.\n\n{dfm}"
    ));
    body.push_str(&format!("\nTraining, same run:\n\n{training}"));
    body.push_str(&format!(
        "\nThe Rust side in fp32 NCHW by batch size (images per forward pass), same run:\n\n{sweep}\n"
    ));
    write_section("engine", &body)
}

/// Rust, PyTorch, Rust, PyTorch: each figure is the better of its two rounds, so a burst of
/// other work on the machine during one half does not decide a ratio. The JSON outputs of the
/// Rust rounds and of the PyTorch rounds, in round order.
fn engine_rounds(
    source: &libtorch::Source,
    data: &Path,
    models: &[&str],
    pydeps: &Path,
) -> Result<(Vec<String>, Vec<String>)> {
    let (mut ours_rounds, mut theirs_rounds) = (Vec::new(), Vec::new());
    for round in 1..=ENGINE_ROUNDS {
        let mut bench = cargo(source);
        bench.args(["bench", "-p", "freqsweep-worker", "--bench", "engine", "--", "--out"]).arg(data);
        bench.args(["--cells", ENGINE_CELLS, "--steps", ENGINE_STEPS, "--batches", ENGINE_BATCHES, "--sweep", "tiny"]);
        bench.args(["--batch", ENGINE_BATCH, "--models", &models.join(","), "--dfm", &ENGINE_DFM.join(",")]);
        if let Ok(threads) = std::env::var("FREQSWEEP_BENCH_THREADS") {
            bench.args(["--threads", &threads]);
        }
        bench.stderr(std::process::Stdio::inherit());
        eprintln!("xtask: ── cargo bench engine (Rust), round {round} of {ENGINE_ROUNDS}");
        let out = bench.output().context("running the engine benchmark")?;
        if !out.status.success() {
            bail!("engine benchmark failed ({})", out.status);
        }
        let ours = String::from_utf8_lossy(&out.stdout).to_string();
        let threads = json_number(&ours, "threads")? as usize;
        // bf16 only where the CPU has bf16 instructions, on both sides (emulated bf16 is slower
        // than fp32 in libtorch and PyTorch alike, so there is no fast path to measure).
        let bf16 = json_number(&ours, "cpu.tiny.bf16_native")? > 0.5;
        let variants = if bf16 { "fp32,fp32_cl,bf16_cl" } else { "fp32,fp32_cl" };
        ours_rounds.push(ours);

        eprintln!("xtask: ── bench/torch_engine.py (PyTorch, {threads} threads), round {round} of {ENGINE_ROUNDS}");
        let out = Command::new("python3")
            .arg(workspace_root().join("bench/torch_engine.py"))
            .arg("--data")
            .arg(data)
            .args(["--threads", &threads.to_string(), "--batch", ENGINE_BATCH, "--variants", variants])
            .args(["--dfm-models", &ENGINE_DFM.join(",")])
            .args(["--models", &models.join(","), "--loop-cells", ENGINE_CELLS, "--steps", ENGINE_STEPS])
            .env("PYTHONPATH", pydeps)
            .stderr(std::process::Stdio::inherit())
            .output()
            .context("running bench/torch_engine.py")?;
        if !out.status.success() {
            bail!("PyTorch baseline failed ({})", out.status);
        }
        theirs_rounds.push(String::from_utf8_lossy(&out.stdout).to_string());
    }
    Ok((ours_rounds, theirs_rounds))
}

/// The section's heading and preamble (machine, versions, threads, load, what each column
/// means) up to the heatmap table's header, from the first round of each side; and whether the
/// CPU has bf16 instructions.
fn engine_intro(ours: &str, theirs: &str, load_before: &str, load_after: &str) -> Result<(String, bool)> {
    let threads = json_number(ours, "threads")?;
    let torch_version =
        theirs.split("\"torch\": \"").nth(1).and_then(|s| s.split('"').next()).unwrap_or("?").to_string();
    let torch_threads = json_number(theirs, "threads")?;
    let bf16 = json_number(ours, "cpu.tiny.bf16_native")? > 0.5;
    let bf16_note = if bf16 {
        "The CPU has bf16 instructions: the bf16 rows are native bf16 on both sides."
    } else {
        "**This CPU has no bf16 instructions** (oneDNN reports AVX2 only), so bf16 would be emulated, slower than fp32 \
         on both sides: the bf16 rows are left out and a worker asked for bf16 here computes in fp32 and says so."
    };

    let body = format!(
        "## Worker engine (`worker/benches/engine.rs` vs `bench/torch_engine.py`)\n\n\
         Machine: {}, CPU only (no GPU in this run). libtorch 2.11.0 in both: the Rust engine through `tch`, the baseline \
         through PyTorch {torch_version} (the same wheel, so the same kernels); threads: {threads:.0} (libtorch in the Rust \
         run) and {torch_threads:.0} (`torch.set_num_threads` in the baseline). Same freshly initialised architectures \
         (`models.rs`, written layer for layer in PyTorch, normalisation inside the model), the same {images:.0} Syn_4 test \
         images, ε = 4. Command: `cargo xtask bench engine` (also part of `cargo xtask bench`); numbers come from one \
         run (load average {load_before} before, {load_after} after), so compare ratios within the run; each figure is \
         the better of {ENGINE_ROUNDS} rounds (Rust, PyTorch, Rust, PyTorch). {bf16_note}\n\n\
         - *Rust engine*: `heatmap::compute` (canonical cells only, signs and basis images built once, counts kept on \
         the device, one clean pass per image block, included in its time), with the model in the row's numerics. \
         Perturbed images/s.\n\
         - *(a) PyTorch loop*: the per-cell loop of public Fourier-heatmap code, fp32 NCHW in every row: for every cell \
         of the half plane build the basis image, then for each batch of images draw random signs per image and \
         channel, perturb, clamp, forward, count errors.\n\
         - *(b) PyTorch batched*: the best batched PyTorch written for this benchmark, at the row's numerics \
         (`model.to(memory_format=torch.channels_last)`, `torch.autocast(\"cpu\", torch.bfloat16)`): many \
         (cell, image) copies per forward pass, signs and basis images built once, counts kept on the device.\n\
         - *Forward*: the pure batched forward pass (`no_grad`, eval) at the row's numerics, the ceiling.\n\
         - All three heatmap codes compute the 514 cells of a 32 × 32 map (one of each conjugate pair), so the ratio of \
         images/s is the ratio of times to a full map. Goals: ≥ 3× (a), ≥ 0.9× (b), ≥ 90 % of the forward pass.\n\
         - *Training*: steps/s at batch 64 with Adam (lr 1e-3): `train::run` for one epoch, end to end (with its \
         evaluations before and after the epoch and its checkpoint; bf16 is bf16-mixed) against PyTorch's plain loop \
         with `torch.optim.Adam` at the same numerics (bf16: autocast on a channels-last model). Goal: within 10 %.\n\n\
         | model | batch | numerics | Rust heatmap img/s | forward img/s | % of forward | (a) loop img/s | time to map vs (a) | (b) batched img/s | vs (b) |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n",
        machine(),
        images = json_number(ours, "cpu.tiny.images")?,
    );
    Ok((body, bf16))
}

/// The heatmap table's rows, the training table and the batch-size sweep table, each figure the
/// best over the rounds.
fn engine_tables(ours_rounds: &[String], theirs_rounds: &[String], bf16: bool) -> Result<(String, String, String)> {
    let mut body = String::new();
    let mut training = String::from(
        "| model | numerics | Rust `train::run` steps/s | PyTorch steps/s | ratio |\n|---|---|---:|---:|---:|\n",
    );
    let batches: Vec<&str> = ENGINE_BATCHES.split(',').collect();
    let mut sweep = format!(
        "| model | measure | {} |\n|---|---|{}\n",
        batches.join(" | "),
        batches.iter().map(|_| "---:|").collect::<String>()
    );
    for (model, label) in ENGINE_MODELS {
        let get = |what: &str| best_of(ours_rounds, &format!("cpu.{model}.{what}"));
        let theirs_get = |what: &str| best_of(theirs_rounds, &format!("{model}.{what}"));
        let batch = get("batch")?;
        let looped = theirs_get("loop_images_per_second")?;
        for (variant, numerics) in ENGINE_VARIANTS {
            if variant == "bf16_cl" && !bf16 {
                body.push_str(&format!("| {label} | {batch:.0} | {numerics} | — no bf16 instructions | | | | | | |\n"));
                continue;
            }
            // The fp32 NCHW figures carry no suffix on the Rust side.
            let ours_key = |what: &str| if variant == "fp32" { what.to_string() } else { format!("{what}.{variant}") };
            let heat = get(&ours_key("heatmap"))?;
            let forward = get(&ours_key("forward"))?;
            let batched = theirs_get(&format!("batched_images_per_second.{variant}"))?;
            body.push_str(&format!(
                "| {label} | {batch:.0} | {numerics} | {heat:.0} | {forward:.0} | {:.0} % | {looped:.0} | {:.2}× | {batched:.0} | {:.2}× |\n",
                100.0 * heat / forward,
                heat / looped,
                heat / batched,
            ));
            let train =
                get(&format!("train_run{}", if variant == "fp32" { String::new() } else { format!(".{variant}") }))?;
            let torch_train = theirs_get(&format!("train_steps_per_second.{variant}"))?;
            training.push_str(&format!(
                "| {label} | {numerics} | {train:.2} | {torch_train:.2} | {:.2}× |\n",
                train / torch_train
            ));
        }
        let row = |what: &str| -> Result<String> {
            batches.iter().map(|b| Ok(format!(" {:.0} |", get(&format!("{what}.{b}"))?))).collect()
        };
        sweep.push_str(&format!("| {label} | forward img/s |{}\n", row("forward")?));
        if model == "tiny" {
            sweep.push_str(&format!("| {label} | heatmap img/s |{}\n", row("heatmap")?));
        }
    }
    Ok((body, training, sweep))
}

/// The DFM table: the engine's one pass per removed cell for all classes against the public
/// code's loop, which re-runs the test set per class (every class costs the same, one is timed).
fn engine_dfm_table(ours_rounds: &[String], theirs_rounds: &[String]) -> Result<String> {
    let mut dfm = String::from(
        "| model | classes | Rust DFM img/s | forward img/s | % of forward | public loop img/s (per class) | time to all class maps, public / Rust |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (model, label) in ENGINE_MODELS.iter().filter(|(m, _)| ENGINE_DFM.contains(m)) {
        let ours = best_of(ours_rounds, &format!("cpu.{model}.dfm"))?;
        let forward = best_of(ours_rounds, &format!("cpu.{model}.forward"))?;
        let public = best_of(theirs_rounds, &format!("{model}.dfm_loop_images_per_second"))?;
        let classes = 4.0;
        dfm.push_str(&format!(
            "| {label} | {classes:.0} | {ours:.0} | {forward:.0} | {:.0} % | {public:.0} | {:.2}× |\n",
            100.0 * ours / forward,
            classes * ours / public
        ));
    }
    Ok(dfm)
}

/// The best (largest) value of `key` over the rounds' JSON outputs.
fn best_of(rounds: &[String], key: &str) -> Result<f64> {
    rounds.iter().map(|r| json_number(r, key)).try_fold(f64::MIN, |m, v| Ok(m.max(v?)))
}
