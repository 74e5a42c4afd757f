//! `cargo xtask …`: the project's own automation (the cargo-xtask convention). Every command sets
//! itself up: it fetches libtorch into the cache when needed and builds what it runs.
//!
//! - `cargo xtask demo`     the main job on the embedded default (see README.md)
//! - `cargo xtask test`     fmt, clippy, the whole test suite; `.ci/run` calls exactly this
//! - `cargo xtask build`    release binaries into `target/release/`; `--cuda`: a CUDA worker and a
//!   bundle for GPU nodes in `target/cuda/dist/` (deploy/gpu-check.sh runs it there)
//! - `cargo xtask bench`    benchmarks, tables into `BENCHMARKS.md`
//! - `cargo xtask libtorch` print (and fetch if needed) the libtorch location; `--verify` re-hashes it

mod bench;
mod libtorch;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const USAGE: &str =
    "usage: cargo xtask <demo|test|build [--cuda]|bench [spectral|coordinator|engine|scaling]|libtorch [--verify]>";

fn main() {
    if let Err(err) = run() {
        eprintln!("xtask: error: {err:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else { bail!("{USAGE}") };
    let rest = &args[1..];
    match command.as_str() {
        "libtorch" => cmd_libtorch(rest),
        "build" if rest.iter().any(|a| a == "--cuda") => cmd_build_cuda(),
        "build" => cmd_build(),
        "test" => cmd_test(rest),
        "demo" => cmd_demo(rest),
        "bench" => cmd_bench(rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other:?}; {USAGE}"),
    }
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives one level below the root").to_path_buf()
}

/// A `cargo` child in the workspace root with libtorch wired in.
pub(crate) fn cargo(source: &libtorch::Source) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    for (key, value) in source.cargo_env() {
        cmd.env(key, value);
    }
    cmd
}

pub(crate) fn step(name: &str, cmd: &mut Command) -> Result<()> {
    let started = Instant::now();
    eprintln!("xtask: ── {name}");
    let status = cmd.status().with_context(|| format!("starting {name}"))?;
    if !status.success() {
        bail!("{name} failed ({status})");
    }
    eprintln!("xtask: ── {name} ok in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn cmd_libtorch(rest: &[String]) -> Result<()> {
    let source = libtorch::ensure()?;
    match &source {
        libtorch::Source::UserDir(dir) | libtorch::Source::Cache(dir) => {
            if rest.iter().any(|a| a == "--verify") {
                let n = libtorch::verify(dir)?;
                eprintln!("xtask: {n} files match their recorded sha256");
            }
            println!("{}", dir.display());
        }
        libtorch::Source::Python => {
            println!("LIBTORCH_USE_PYTORCH (paths come from the active Python's torch)")
        }
    }
    Ok(())
}

fn cmd_build() -> Result<()> {
    let source = libtorch::ensure()?;
    step("cargo build --release", cargo(&source).args(["build", "--release", "--workspace", "--bins"]))?;
    let bin = workspace_root().join("target/release");
    eprintln!("xtask: binaries: {} and {}", bin.join("freqsweep").display(), bin.join("freqsweep-worker").display());
    Ok(())
}

/// The CUDA worker, linked against the CUDA half of the pinned wheel (or the user's CUDA
/// libtorch), and a bundle a GPU node without a Rust toolchain runs as it is:
/// `target/cuda/dist/` with both binaries, the engine benchmark, its PyTorch baseline, the demo
/// spec and `gpu-check.sh`. Its own target directory keeps the CPU build intact.
fn cmd_build_cuda() -> Result<()> {
    let source = libtorch::ensure_cuda()?;
    let root = workspace_root();
    let target = root.join("target/cuda");
    let release = target.join("release");
    step(
        "cargo build --release (CUDA worker, coordinator)",
        cargo(&source)
            .args(["build", "--release", "--locked", "--bins", "-p", "freqsweep-worker", "-p", "freqsweep-coordinator"])
            .env("CARGO_TARGET_DIR", &target),
    )?;
    let bench = cargo(&source)
        .args(["bench", "--locked", "--no-run", "--message-format=json", "-p", "freqsweep-worker", "--bench", "engine"])
        .env("CARGO_TARGET_DIR", &target)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("building the engine benchmark")?;
    if !bench.status.success() {
        bail!("building the engine benchmark failed ({})", bench.status);
    }
    // The bench executable's path is in cargo's JSON messages (its name carries a hash).
    let engine = String::from_utf8_lossy(&bench.stdout)
        .lines()
        .filter(|l| l.contains("\"executable\"") && l.contains("\"engine\""))
        .filter_map(|l| l.split("\"executable\":\"").nth(1)?.split('"').next().map(PathBuf::from))
        .next_back()
        .context("cargo printed no engine benchmark executable")?;
    let worker = release.join("freqsweep-worker");
    let needed = Command::new("readelf").arg("-d").arg(&worker).output().context("running readelf -d")?;
    let needed = String::from_utf8_lossy(&needed.stdout);
    if !needed.contains("libtorch_cuda.so") {
        bail!("{} does not link libtorch_cuda.so: it would run on the CPU only", worker.display());
    }
    let dist = target.join("dist");
    if dist.exists() {
        std::fs::remove_dir_all(&dist)?;
    }
    std::fs::create_dir_all(&dist)?;
    let files = [
        (release.join("freqsweep"), "freqsweep"),
        (worker.clone(), "freqsweep-worker"),
        (engine, "freqsweep-engine-bench"),
        (root.join("deploy/gpu-check.sh"), "gpu-check.sh"),
        (root.join("bench/torch_engine.py"), "torch_engine.py"),
        (root.join("examples/demo.toml"), "demo.toml"),
    ];
    for (from, name) in &files {
        std::fs::copy(from, dist.join(name)).with_context(|| format!("copying {}", from.display()))?;
    }
    eprintln!(
        "xtask: CUDA bundle in {} (the worker links libtorch_cuda.so; on a node with CUDA PyTorch 2.11.0: bash gpu-check.sh)",
        dist.display()
    );
    Ok(())
}

fn cmd_test(rest: &[String]) -> Result<()> {
    let started = Instant::now();
    let source = libtorch::ensure()?;
    step("cargo fmt --check", cargo(&source).args(["fmt", "--all", "--check"]))?;
    step(
        "cargo clippy",
        cargo(&source).args(["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"]),
    )?;
    // End-to-end tests start the real binaries; build them first so tests find them beside their own executable.
    step("cargo build (binaries)", cargo(&source).args(["build", "--workspace", "--bins", "--locked"]))?;
    // Tests that cannot run here (no SLURM, no Chromium, not root) record why in this file.
    let skip_log = workspace_root().join("target/xtask-skipped-tests.txt");
    match std::fs::remove_file(&skip_log) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            bail!("cannot clear {}: {e}", skip_log.display())
        }
        _ => {}
    }
    let mut test = cargo(&source);
    test.args(["test", "--workspace", "--locked"]).env("FREQSWEEP_SKIP_LOG", &skip_log);
    if !rest.is_empty() {
        test.arg("--").args(rest);
    }
    step("cargo test", &mut test)?;
    guard_no_libtorch_in(&source, "freqsweep-coordinator")?;
    guard_no_libtorch_in(&source, "freqsweep-common")?;
    let skipped = std::fs::read_to_string(&skip_log).unwrap_or_default();
    let skipped: Vec<&str> = skipped.lines().filter(|l| !l.trim().is_empty()).collect();
    let seconds = started.elapsed().as_secs_f64();
    if skipped.is_empty() {
        eprintln!("xtask: all checks passed in {seconds:.1}s (no test skipped)");
    } else {
        // Never a silent pass: the last lines name what did not run and why.
        eprintln!(
            "xtask: checks passed in {seconds:.1}s, but {} test(s) did NOT run (`.ci/run` installs what they need; FREQSWEEP_REQUIRE_ALL=1 makes a skip fail):",
            skipped.len()
        );
        for line in &skipped {
            eprintln!("xtask:   SKIPPED {line}");
        }
    }
    Ok(())
}

/// Architecture invariant: the coordinator and `common` never link libtorch.
fn guard_no_libtorch_in(source: &libtorch::Source, package: &str) -> Result<()> {
    let out = cargo(source).args(["tree", "--locked", "-e", "normal,build", "-p", package]).output()?;
    if !out.status.success() {
        bail!("cargo tree -p {package} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let tree = String::from_utf8_lossy(&out.stdout);
    if let Some(line) = tree.lines().find(|l| l.contains(" tch ") || l.contains("torch-sys")) {
        bail!("{package} must not depend on libtorch, but its tree has: {}", line.trim());
    }
    eprintln!("xtask: {package} has no tch/torch-sys in its dependency tree");
    Ok(())
}

/// The main job on the embedded default, as far as it exists end to end today: generate a small
/// Syn_4 dataset with the real generator and check the worker's libtorch. Grows with the
/// coordinator (`freqsweep run examples/demo.toml --local-workers 2`).
fn cmd_demo(rest: &[String]) -> Result<()> {
    let source = libtorch::ensure()?;
    step("cargo build --release", cargo(&source).args(["build", "--release", "--workspace", "--bins"]))?;
    let root = workspace_root();
    let out = rest.first().map(PathBuf::from).unwrap_or_else(|| root.join("demo-run"));
    let bin = root.join("target/release");
    step(
        "freqsweep syn --band 4",
        Command::new(bin.join("freqsweep"))
            .args(["syn", "--band", "4", "--train", "2000", "--test", "400", "--seed", "0", "--out"])
            .arg(out.join("syn4")),
    )?;
    step("freqsweep-worker info", Command::new(bin.join("freqsweep-worker")).args(["info", "--device", "auto"]))?;
    // The main job on the embedded default: coordinator + 2 local CPU workers, the poster's study
    // shrunk (Syn_4, AlexNet, per-step F1 early on, Fourier heatmap with layer maps).
    step(
        "freqsweep run examples/demo.toml --local-workers 2",
        Command::new(bin.join("freqsweep"))
            .arg("run")
            .arg(root.join("examples/demo.toml"))
            .args(["--local-workers", "2", "--out"])
            .arg(out.join("demo")),
    )?;
    eprintln!(
        "xtask: demo finished: {} (report.html, results.csv, heatmaps/, curves/, confusion/, checkpoints/, freqsweep.db); Syn_4 samples in {}",
        out.join("demo").display(),
        out.join("syn4").display()
    );
    Ok(())
}

/// `cargo xtask bench [spectral|coordinator|scaling|engine] [criterion args]`: all benchmarks, or one.
fn cmd_bench(rest: &[String]) -> Result<()> {
    let source = libtorch::ensure()?;
    match rest.first().map(String::as_str) {
        Some("spectral") => bench::spectral(&source, &rest[1..]),
        Some("coordinator") => bench::coordinator(&source),
        Some("engine") => bench::engine(&source),
        Some("scaling") => bench::scaling(&source),
        _ => {
            bench::spectral(&source, rest)?;
            bench::coordinator(&source)?;
            bench::scaling(&source)?;
            bench::engine(&source)
        }
    }
}
