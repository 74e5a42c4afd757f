//! Behaviour is unchanged by restructuring: the demo sweep shrunk to seconds
//! (`tests/fixtures/demo_small/spec.toml`) gives bit-identical arrays (heatmap and layer maps),
//! learning curves, confusion matrices and `results.csv` (wall-clock column aside) to the ones an
//! earlier `main` produced and that are checked in beside the spec (see its README.md). Seeded
//! training and heatmaps are bit-reproducible at a fixed libtorch thread count, whichever worker
//! runs which task, so any difference is a change in behaviour.

use freqsweep_tests::{assert_matches_demo_small, run_demo_small};

#[test]
fn the_shrunk_demo_gives_the_checked_in_arrays_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    run_demo_small(&out);

    // 2 seeds × (error map + the tiny CNN's conv1, conv2, fc maps) + 2 curves + 2 × 2 confusions.
    assert_eq!(assert_matches_demo_small(&out), 2 * 4 + 2 + 2 * 2, "every fixture file compared");
}
