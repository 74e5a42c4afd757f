//! Helpers for the end-to-end tests in `tests/tests/`: locate the real binaries (built by
//! `cargo xtask test` before the tests run) and run them with a time bound.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary in the same target directory as the running test.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target/<profile> directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build --workspace --bins` (cargo xtask test does)",
        path.display()
    );
    path
}

/// Run a command to completion, killing it after `limit`. Panics on time-out (a hung binary is a bug).
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child =
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn binary");
    let started = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("collect output");
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().expect("collect output");
            panic!("{cmd:?} exceeded {limit:?}; stderr: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A sweep that runs in seconds: the tiny CNN on Syn_2 (96 train / 16 test images), one epoch, then
/// its Fourier heatmap at ε = 4 on 8 images in 2 chunks — 3 tasks per value of `lr` (a TOML value:
/// `0.003` or a list such as `[0.003, 0.01]`).
pub fn tiny_spec(name: &str, lr: &str) -> String {
    format!(
        r#"name = "{name}"
[[dataset]]
kind = "syn"
band = 2
train = 96
test = 16
[model]
arch = "tiny"
[train]
lr = {lr}
batch_size = 32
epochs = 1
[heatmap]
eps = [4.0]
images = 8
chunk_cells = 257
"#
    )
}

/// A `freqsweep serve` started by [`serve`], with its stderr read up to the line that named `key`.
pub struct Served {
    pub child: std::process::Child,
    /// The first log line containing `key`.
    pub line: String,
    /// The value after `key` on that line (up to the next space): an address such as `127.0.0.1:PORT`.
    pub value: String,
    /// The rest of stderr, line by line.
    pub lines: std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
}

/// Start `freqsweep serve SPEC --listen 127.0.0.1:0 --out OUT EXTRA…` with token `right` and read its
/// log until a line contains `key` (`listen=` for the gRPC port, `http=` for the dashboard's).
pub fn serve(spec: &std::path::Path, out: &std::path::Path, extra: &[&std::ffi::OsStr], key: &str) -> Served {
    use std::io::BufRead;
    let mut child = Command::new(binary("freqsweep"))
        .arg("serve")
        .arg(spec)
        .args(["--listen", "127.0.0.1:0", "--out"])
        .arg(out)
        .args(extra)
        .env("FREQSWEEP_TOKEN", "right")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn freqsweep serve");
    let mut lines = std::io::BufReader::new(child.stderr.take().expect("piped stderr")).lines();
    loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            let status = child.wait();
            panic!("serve exited before logging {key}: {status:?}");
        };
        if let Some(rest) = line.split(key).nth(1) {
            let value = rest.split_whitespace().next().unwrap_or_default().to_string();
            return Served { child, line, value, lines };
        }
    }
}

/// Wait for `child` to exit. Past `limit`, kill it and `others` and panic with `what` (a hung
/// process is a bug; the others must not outlive the test).
pub fn wait_or_kill(
    child: &mut std::process::Child,
    limit: Duration,
    others: &mut [&mut std::process::Child],
    what: &str,
) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            for other in others.iter_mut() {
                let _ = other.kill();
                let _ = other.wait();
            }
            panic!("{what} (after {limit:?})");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Width and height from a PNG's IHDR chunk, after checking the signature.
pub fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.len() > 24 && bytes[..8] == [0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a], "not a PNG");
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

/// `results.csv` of a run directory without its wall-clock `seconds` column (everything else in
/// it must match exactly between runs of the same sweep).
pub fn results_without_timing(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let header: Vec<&str> = text.lines().next().expect("a header").split(',').collect();
    let seconds = header.iter().position(|h| *h == "seconds").expect("a seconds column");
    text.lines()
        .map(|l| l.split(',').enumerate().filter(|(i, _)| *i != seconds).map(|(_, v)| v).collect::<Vec<_>>().join(","))
        .collect::<Vec<_>>()
        .join("\n")
}

/// libtorch picks CPU kernels by instruction set: an AVX-512 machine sums some reductions (the
/// layer maps' cosine distances) in another order than an AVX2 one, so bits differ between
/// machines. Pinned to AVX2 (oneDNN and ATen) and MKL's reproducible mode, any x86-64 machine with
/// AVX2 computes the `demo_small` fixture's bits; the fixture was made with the same settings.
pub const PINNED_KERNELS: [(&str, &str); 3] =
    [("ATEN_CPU_CAPABILITY", "avx2"), ("ONEDNN_MAX_CPU_ISA", "AVX2"), ("MKL_CBWR", "COMPATIBLE")];

/// Run the `demo_small` sweep into `out` (2 local workers, 1 thread each, kernels pinned) and
/// return its stderr; panics naming the last line if it fails.
pub fn run_demo_small(out: &std::path::Path) -> String {
    let result = run_bounded(
        Command::new(binary("freqsweep"))
            .arg("run")
            .arg(demo_small().join("spec.toml"))
            .args(["--local-workers", "2", "--worker-threads", "1", "--out"])
            .arg(out)
            .envs(PINNED_KERNELS),
        Duration::from_secs(600),
    );
    let stderr = String::from_utf8_lossy(&result.stderr).into_owned();
    assert!(result.status.success(), "freqsweep run failed: {}", stderr.lines().last().unwrap_or(""));
    stderr
}

/// Copy the directory tree `from` to `to` (a run directory moved or copied by a user).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// `tests/fixtures/demo_small`: the demo shrunk to seconds and what an earlier `main` made of it.
pub fn demo_small() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo_small")
}

/// Every file under `dir/sub` with one of `extensions`, as paths relative to `dir`.
fn files(dir: &std::path::Path, sub: &str, extensions: &[&str]) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(dir.join(sub))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(sub).display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| extensions.iter().any(|x| n.ends_with(x)))
        .map(|n| format!("{sub}/{n}"))
        .collect();
    found.sort();
    found
}

/// Assert that the run directory `out` of the `demo_small` spec holds the fixture's arrays,
/// curves, confusion matrices and `results.csv` (wall clock aside) byte for byte; returns how
/// many files were compared.
pub fn assert_matches_demo_small(out: &std::path::Path) -> usize {
    let expected = demo_small().join("expected");
    let mut compared = 0;
    for (sub, extensions) in [("heatmaps", &[".npy"][..]), ("curves", &[".csv"]), ("confusion", &[".csv"])] {
        let want = files(&expected, sub, extensions);
        assert!(!want.is_empty(), "the fixture holds no {sub}");
        assert_eq!(files(out, sub, extensions), want, "the same {sub} files");
        for rel in want {
            let (got, wanted) = (std::fs::read(out.join(&rel)).unwrap(), std::fs::read(expected.join(&rel)).unwrap());
            assert!(got == wanted, "{rel} differs from the fixture ({} vs {} bytes)", got.len(), wanted.len());
            compared += 1;
        }
    }
    assert_eq!(
        results_without_timing(&out.join("results.csv")),
        results_without_timing(&expected.join("results.csv")),
        "results.csv differs from the fixture"
    );
    compared
}

/// A test that cannot run on this machine (a missing system package, not root) calls this and
/// returns: it fails when `FREQSWEEP_REQUIRE_ALL=1` (or the test's own `require_var` is `1`),
/// and otherwise records `test: why` in `$FREQSWEEP_SKIP_LOG`, which `cargo xtask test` prints
/// as its last lines, so a skip is never a silent pass.
pub fn skip(test: &str, require_var: &str, why: &str) {
    let required = |var: &str| std::env::var(var).is_ok_and(|v| v == "1");
    assert!(!required("FREQSWEEP_REQUIRE_ALL") && !required(require_var), "{test} cannot run: {why}");
    eprintln!("\n*** SKIPPED: {test} cannot run here: {why} ***\n");
    if let Ok(log) = std::env::var("FREQSWEEP_SKIP_LOG") {
        use std::io::Write;
        let line = format!("{test}: {why}\n");
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&log);
        // One write per line: tests in parallel append whole lines.
        if let Err(e) = file.and_then(|mut f| f.write_all(line.as_bytes())) {
            panic!("{test} skipped, and recording the skip in {log} failed: {e}");
        }
    }
}

/// A Python virtual environment under `root` with `requirements` installed by pip (created once;
/// `<root>/.complete` marks a finished install). `Err` says why it cannot be made here (no
/// `python3 -m venv`: Debian's `python3-venv`; no package registry), for [`skip`].
pub fn python_venv(root: &std::path::Path, requirements: &[&str]) -> Result<PathBuf, String> {
    let python = root.join("bin/python");
    let marker = root.join(".complete");
    if marker.is_file() && python.is_file() {
        return Ok(python);
    }
    let _ = std::fs::remove_dir_all(root);
    let run = |cmd: &mut Command, what: &str| -> Result<(), String> {
        let out = run_bounded(cmd, Duration::from_secs(600));
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output").trim().to_string();
        Err(format!("{what} failed ({}): {last}", out.status))
    };
    run(
        Command::new("python3").args(["-m", "venv"]).arg(root),
        "python3 -m venv (Debian: apt-get install python3-venv)",
    )?;
    run(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
            .args(requirements),
        &format!("pip install {}", requirements.join(" ")),
    )?;
    std::fs::write(&marker, requirements.join("\n")).map_err(|e| format!("{}: {e}", marker.display()))?;
    Ok(python)
}

#[cfg(test)]
mod tests {
    /// The only test in this binary: it sets process-wide variables.
    #[test]
    fn a_skip_is_recorded_with_its_reason_or_fails_when_required() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skipped.txt");
        std::env::set_var("FREQSWEEP_SKIP_LOG", &log);
        std::env::remove_var("FREQSWEEP_REQUIRE_ALL");
        super::skip("test a", "FREQSWEEP_REQUIRE_TEST_A", "no thing A");
        super::skip("test b", "FREQSWEEP_REQUIRE_TEST_B", "not root");
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text, "test a: no thing A\ntest b: not root\n");
        std::env::set_var("FREQSWEEP_REQUIRE_TEST_B", "1");
        let failed = std::panic::catch_unwind(|| super::skip("test b", "FREQSWEEP_REQUIRE_TEST_B", "not root"));
        assert!(failed.is_err(), "a required test must fail, not skip");
        std::env::remove_var("FREQSWEEP_REQUIRE_TEST_B");
        std::env::set_var("FREQSWEEP_REQUIRE_ALL", "1");
        assert!(std::panic::catch_unwind(|| super::skip("test c", "X", "why")).is_err());
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2, "a failing skip is not recorded");
    }
}
