//! Behaviour is unchanged by restructuring: the demo sweep shrunk to seconds
//! (`tests/fixtures/demo_small/spec.toml`) gives bit-identical arrays (heatmap and layer maps),
//! learning curves, confusion matrices and `results.csv` (wall-clock column aside) to the ones an
//! earlier `main` produced and that are checked in beside the spec (see its README.md). Seeded
//! training and heatmaps are bit-reproducible at a fixed libtorch thread count, whichever worker
//! runs which task, so any difference is a change in behaviour.

use freqsweep_tests::{binary, results_without_timing, run_bounded};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// libtorch picks CPU kernels by instruction set: an AVX-512 machine sums some reductions (the
/// layer maps' cosine distances) in another order than an AVX2 one, so bits differ between
/// machines. Pinned to AVX2 (oneDNN and ATen) and MKL's reproducible mode, any x86-64 machine with
/// AVX2 computes the fixture's bits; the fixture was made with the same settings.
const PINNED_KERNELS: [(&str, &str); 3] =
    [("ATEN_CPU_CAPABILITY", "avx2"), ("ONEDNN_MAX_CPU_ISA", "AVX2"), ("MKL_CBWR", "COMPATIBLE")];

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/demo_small")
}

/// Every file under `dir/sub` with one of `extensions`, as paths relative to `dir`.
fn files(dir: &Path, sub: &str, extensions: &[&str]) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(dir.join(sub))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.join(sub).display()))
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| extensions.iter().any(|x| n.ends_with(x)))
        .map(|n| format!("{sub}/{n}"))
        .collect();
    found.sort();
    found
}

#[test]
fn the_shrunk_demo_gives_the_checked_in_arrays_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let result = run_bounded(
        Command::new(binary("freqsweep"))
            .arg("run")
            .arg(fixture().join("spec.toml"))
            .args(["--local-workers", "2", "--worker-threads", "1", "--out"])
            .arg(&out)
            .envs(PINNED_KERNELS),
        Duration::from_secs(600),
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "freqsweep run failed: {}", stderr.lines().last().unwrap_or(""));

    let expected = fixture().join("expected");
    let mut compared = 0;
    for (sub, extensions) in [("heatmaps", &[".npy"][..]), ("curves", &[".csv"]), ("confusion", &[".csv"])] {
        let want = files(&expected, sub, extensions);
        assert!(!want.is_empty(), "the fixture holds no {sub}");
        assert_eq!(files(&out, sub, extensions), want, "the same {sub} files");
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
    // 2 seeds × (error map + the tiny CNN's conv1, conv2, fc maps) + 2 curves + 2 × 2 confusions.
    assert_eq!(compared, 2 * 4 + 2 + 2 * 2, "every fixture file compared");
}
