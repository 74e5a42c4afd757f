//! A store made by the previous release resumes: `tests/fixtures/previous_release/run` is the
//! `demo_small` sweep stopped half-way (`kill -9` of its coordinator and worker) by the binaries
//! of an earlier `main` (see its README.md). Today's binaries must open it, migrate it, resume it
//! and finish it with exactly the arrays, curves, confusion matrices and `results.csv` of the
//! `demo_small` fixture, as an uninterrupted run gives. The promise is stated in RELIABILITY.md.

use freqsweep_tests::{assert_matches_demo_small, binary, copy_dir, run_bounded, run_demo_small};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[test]
fn a_store_made_by_the_previous_release_resumes_and_finishes_identically() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/previous_release/run");
    let dir = tempfile::tempdir().unwrap();
    // Elsewhere than where it was made: a run directory may be moved or copied.
    let out = dir.path().join("moved/run");
    copy_dir(&fixture, &out);
    let stored = freqsweep_coordinator::store::open_read_only(&out.join("freqsweep.db")).unwrap();
    let states: Vec<String> = stored.tasks().unwrap().into_iter().map(|t| t.state).collect();
    assert!(states.iter().any(|s| s == "done") && states.iter().any(|s| s != "done"), "half-way: {states:?}");
    drop(stored);
    let stderr = run_demo_small(&out);
    assert!(stderr.contains("resuming"), "it resumed the stored run: {stderr}");
    assert_eq!(assert_matches_demo_small(&out), 2 * 4 + 2 + 2 * 2, "every fixture file compared");
    // And the report of the finished store, from the store alone, says the same.
    let report = run_bounded(Command::new(binary("freqsweep")).arg("report").arg(&out), Duration::from_secs(120));
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    assert_eq!(assert_matches_demo_small(&out), 2 * 4 + 2 + 2 * 2);
}
