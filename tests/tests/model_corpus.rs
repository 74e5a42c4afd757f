//! The model part of the bad-input corpus (`tests/corpus/models/`, table `expected.txt`): every
//! file is given to `freqsweep-worker heatmap` with 32×32 or 16×16 test images. A bad model gets
//! one line naming the file and the cause, never a panic; the two valid ones (a checkpoint and its
//! TorchScript export) give a map.

use freqsweep_common::npy::NpyArray;
use freqsweep_tests::{binary, run_bounded};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn corpus() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/models")
}

#[test]
fn every_bad_model_is_refused_with_one_line_and_the_good_ones_give_a_map() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("syn");
    let syn = Command::new(binary("freqsweep"))
        .args(["syn", "--band", "2", "--train", "4", "--test", "8", "--out"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(syn.status.success(), "{}", String::from_utf8_lossy(&syn.stderr));
    let small = dir.path().join("small.npy");
    NpyArray::from_f32(vec![8, 3, 16, 16], &vec![0.5; 8 * 3 * 16 * 16]).write(&small).unwrap();
    let table = std::fs::read_to_string(corpus().join("expected.txt")).unwrap();
    let mut cases = 0;
    for line in table.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [file, size, expected] = fields[..] else { panic!("bad table line {line:?}") };
        let images = if size == "16" { small.clone() } else { data.join("test_x.npy") };
        let out = dir.path().join(format!("out-{cases}"));
        let mut cmd = Command::new(binary("freqsweep-worker"));
        cmd.arg("heatmap").arg("--model").arg(corpus().join(file)).arg("--images").arg(&images);
        cmd.arg("--labels").arg(data.join("test_y.npy")).arg("--out").arg(&out);
        cmd.args(["--eps", "4", "--device", "cpu", "--limit", "4", "--batch", "256"]);
        let run = run_bounded(&mut cmd, Duration::from_secs(120));
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(!stderr.contains("panicked"), "{file}: panicked: {stderr}");
        if expected == "OK" {
            assert!(run.status.success(), "{file}: {stderr}");
            assert!(out.join("heatmap.npy").is_file(), "{file}: no map");
        } else {
            assert!(!run.status.success(), "{file} ({size}×{size}) was accepted");
            let last = stderr.lines().last().unwrap_or_default();
            assert!(last.starts_with("freqsweep-worker: error: "), "{file}: {stderr}");
            assert!(last.contains(file) && last.contains(expected), "{file}: expected {expected:?} in {last:?}");
            let path = corpus().join(file).display().to_string();
            assert!(last.len() - path.len() < 300, "{file}: {} characters: {last}", last.len());
            // The whole error output is that one line (libtorch's C++ backtrace goes to the debug log).
            assert_eq!(stderr.lines().filter(|l| l.contains("error")).count(), 1, "{file}: {stderr}");
        }
        cases += 1;
    }
    assert!(cases >= 8, "{cases} cases");
}
