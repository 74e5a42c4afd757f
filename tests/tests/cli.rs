//! The binaries as a user runs them: `--help`, `freqsweep syn`, `freqsweep-worker info`, and the
//! one-line errors for bad input.

use freqsweep_common::dataset::read_npy_pair;
use freqsweep_tests::{binary, run_bounded};
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);

#[test]
fn every_binary_and_subcommand_has_help() {
    for (bin, args) in [
        ("freqsweep", vec!["--help"]),
        ("freqsweep", vec!["syn", "--help"]),
        ("freqsweep", vec!["slurm", "submit", "--help"]),
        ("freqsweep-worker", vec!["--help"]),
        ("freqsweep-worker", vec!["info", "--help"]),
        ("freqsweep-worker", vec!["train", "--help"]),
        ("freqsweep-worker", vec!["heatmap", "--help"]),
    ] {
        let out = run_bounded(Command::new(binary(bin)).args(&args), LIMIT);
        assert!(out.status.success(), "{bin} {args:?} failed");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Usage:"), "{bin} {args:?}");
    }
}

/// `freqsweep syn` for a small Syn_1 (40 train, 12 test, seed 3) into `out`; asserts it succeeded.
fn write_small_syn_1(out: &std::path::Path) {
    let result = run_bounded(
        Command::new(binary("freqsweep"))
            .args(["syn", "--band", "1", "--train", "40", "--test", "12", "--seed", "3", "--out"])
            .arg(out),
        LIMIT,
    );
    assert!(result.status.success(), "{}", String::from_utf8_lossy(&result.stderr));
}

#[test]
fn syn_writes_a_complete_dataset() {
    let dir = tempfile::tempdir().unwrap();
    write_small_syn_1(dir.path());
    let train = read_npy_pair(&dir.path().join("train_x.npy"), &dir.path().join("train_y.npy")).unwrap();
    let test = read_npy_pair(&dir.path().join("test_x.npy"), &dir.path().join("test_y.npy")).unwrap();
    assert_eq!(train.dims, [40, 3, 32, 32]);
    assert_eq!(test.dims, [12, 3, 32, 32]);
    for class in 0..4 {
        assert_eq!(train.labels.iter().filter(|&&l| l == class).count(), 10);
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("dataset.json")).unwrap()).unwrap();
    assert_eq!(meta["name"], "Syn_1");
    assert_eq!(meta["classes"][3]["bands"], "B1");
    assert_eq!(meta["classes"][0]["bands"], "B234");
    let png = std::fs::read(dir.path().join("samples.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");

    // The same seed gives the same bytes.
    let again = tempfile::tempdir().unwrap();
    write_small_syn_1(again.path());
    assert_eq!(
        std::fs::read(dir.path().join("train_x.npy")).unwrap(),
        std::fs::read(again.path().join("train_x.npy")).unwrap()
    );
}

#[test]
fn bad_input_gives_a_one_line_error_and_nonzero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let out = run_bounded(Command::new(binary("freqsweep")).args(["syn", "--band", "2", "--out"]).arg(&file), LIMIT);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    assert!(last.starts_with("freqsweep: error:") && last.contains("not-a-dir"), "{stderr}");

    let out = run_bounded(Command::new(binary("freqsweep-worker")).args(["info", "--device", "tpu"]), LIMIT);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown device \"tpu\""));

    // Sizes beyond what the machine can hold are refused before libtorch is asked (they panicked
    // inside it with kilobytes of C++ backtrace).
    for (flag, value, range) in [
        ("--crop-padding", "100000", "0..=32"),
        ("--classes", "100000000", "1..=100000"),
        ("--batch-size", "100000000000", "1..=65536"),
        ("--train", "1000000000000", "1..=5000000"),
        // It was reported as "not a freqsweep checkpoint".
        ("--epochs", "0", "1.."),
    ] {
        let out = run_bounded(
            Command::new(binary("freqsweep-worker"))
                .args(["train", "--model", "tiny", flag, value, "--out"])
                .arg(dir.path().join("t")),
            LIMIT,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(&format!("{value} is not in {range}")), "{flag}: {stderr}");
        assert!(!stderr.contains("libtorch") && !stderr.contains("frame #"), "{flag}: {stderr}");
    }
}

/// Thread and process counts beyond what the machine can hold are refused at once with one line
/// naming the flag, the value and the machine's limit (they made thousands of threads or
/// hundreds of processes that never made progress).
#[test]
fn thread_and_worker_counts_beyond_the_machine_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("tiny.toml");
    std::fs::write(&spec, freqsweep_tests::tiny_spec("tiny", "0.003")).unwrap();
    let run = |workers: &str, threads: &str| {
        let mut cmd = Command::new(binary("freqsweep"));
        cmd.arg("run").arg(&spec).args(["--local-workers", workers, "--worker-threads", threads, "--out"]);
        cmd.arg(dir.path().join("run"));
        cmd
    };
    let mut worker = Command::new(binary("freqsweep-worker"));
    worker.args(["--threads", "100000", "info", "--device", "cpu"]);
    for (mut cmd, expected) in [
        (worker, "--threads 100000: this machine has "),
        (run("100000", "1"), "--local-workers 100000: this machine has "),
        (run("1", "100000"), "--worker-threads 100000: this machine has "),
        (run("1", "0"), "--worker-threads 0: give at least 1"),
    ] {
        let started = std::time::Instant::now();
        let out = run_bounded(&mut cmd, LIMIT);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{expected}: accepted");
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
        assert!(stderr.contains("so at most") || expected.ends_with("at least 1"), "names the limit: {stderr}");
        assert!(started.elapsed() < Duration::from_secs(30), "{expected}: {:?}", started.elapsed());
    }
    assert!(!dir.path().join("run").exists(), "nothing was started");
}

#[test]
fn worker_info_reports_a_working_libtorch() {
    let out = run_bounded(
        Command::new(binary("freqsweep-worker")).args(["info", "--device", "cpu"]).env_remove("LD_LIBRARY_PATH"),
        LIMIT,
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(info["device"].as_str().unwrap().starts_with("cpu"));
    assert!(info["cpu_threads"].as_i64().unwrap() >= 1);
}

/// `freqsweep status` against a port that accepts connections but never answers ends with one
/// line instead of hanging.
#[test]
fn status_against_a_silent_port_gives_up_with_one_line() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let started = std::time::Instant::now();
    let out = run_bounded(Command::new(binary("freqsweep")).args(["status", "--coordinator", &url]), LIMIT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&url), "names the address: {stderr}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "took {:?}", started.elapsed());
    drop(silent);
}

/// `freqsweep-worker dfm` refuses a bad patch, top or class with one line naming the flag, and
/// a class the model does not have before the computation starts.
#[test]
fn dfm_bad_input_gives_a_one_line_error_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = (dir.path().join("m"), dir.path().join("s"));
    let trained = run_bounded(
        Command::new(binary("freqsweep-worker"))
            .args(["--threads", "1", "train", "--model", "tiny", "--train", "64", "--test", "16", "--epochs", "1"])
            .args(["--batch-size", "16", "--out"])
            .arg(&model),
        LIMIT,
    );
    assert!(trained.status.success(), "{}", String::from_utf8_lossy(&trained.stderr));
    let synd = run_bounded(
        Command::new(binary("freqsweep"))
            .args(["syn", "--band", "4", "--train", "8", "--test", "16", "--out"])
            .arg(&data),
        LIMIT,
    );
    assert!(synd.status.success(), "{}", String::from_utf8_lossy(&synd.stderr));
    for (flag, value, message) in [
        ("--patch", "3", "--patch: patch 3 does not divide the 32×32 image"),
        ("--top", "0", "--top: top 0 % is outside (0, 100]"),
        ("--classes", "9", "--classes: class 9 does not exist (the model outputs 4 classes)"),
        ("--classes", "one", "--classes: \"one\" is not a class number or `all`"),
    ] {
        let out = run_bounded(
            Command::new(binary("freqsweep-worker"))
                .args(["--threads", "1", "dfm", "--model"])
                .arg(model.join("checkpoint.ot"))
                .arg("--images")
                .arg(data.join("test_x.npy"))
                .arg("--labels")
                .arg(data.join("test_y.npy"))
                .args([flag, value, "--out"])
                .arg(dir.path().join("d")),
            LIMIT,
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        assert!(
            !out.status.success() && last == format!("freqsweep-worker: error: {message}"),
            "{flag} {value}: {stderr}"
        );
        assert!(!stderr.contains("progress"), "{flag} {value}: refused before computing: {stderr}");
        assert!(!dir.path().join("d/dfm.json").exists());
    }
}
