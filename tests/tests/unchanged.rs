//! Behaviour is unchanged by restructuring: the demo sweep shrunk to seconds
//! (`tests/fixtures/demo_small/spec.toml`) gives bit-identical arrays (heatmap and layer maps),
//! learning curves, confusion matrices and `results.csv` (wall-clock column aside) to the ones an
//! earlier `main` produced and that are checked in beside the spec (see its README.md). Seeded
//! training and heatmaps are bit-reproducible at a fixed libtorch thread count, whichever worker
//! runs which task, so any difference is a change in behaviour.

use freqsweep_tests::{assert_matches_demo_small, binary, demo_small, run_bounded, PINNED_KERNELS};
use std::process::Command;
use std::time::Duration;

#[test]
fn the_shrunk_demo_gives_the_checked_in_arrays_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let result = run_bounded(
        Command::new(binary("freqsweep"))
            .arg("run")
            .arg(demo_small().join("spec.toml"))
            .args(["--local-workers", "2", "--worker-threads", "1", "--out"])
            .arg(&out)
            .envs(PINNED_KERNELS),
        Duration::from_secs(600),
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "freqsweep run failed: {}", stderr.lines().last().unwrap_or(""));

    // 2 seeds × (error map + the tiny CNN's conv1, conv2, fc maps) + 2 curves + 2 × 2 confusions.
    assert_eq!(assert_matches_demo_small(&out), 2 * 4 + 2 + 2 * 2, "every fixture file compared");
}
