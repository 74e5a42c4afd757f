//! TensorBoard output read back by the real `tensorboard` package (its `EventAccumulator`, what
//! `tensorboard --logdir` loads runs with), installed by pip into a virtual environment this test
//! creates under the target directory: every scalar equals the store's point, every image the
//! report's PNG, and a retried attempt's repeated steps replace the first attempt's, across a
//! coordinator restart.

use freqsweep_coordinator::run;
use freqsweep_coordinator::store::Change;
use freqsweep_tests::{binary, run_bounded};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const TENSORBOARD: &str = "tensorboard==2.21.0";

/// Reads runs with TensorBoard's own loader; prints scalars as JSON and writes each image's bytes
/// to `<out>/<run>/<tag with / as __>@<step>.png`.
const READER: &str = r#"
import json, os, sys
from tensorboard.backend.event_processing import event_accumulator as ea
out_dir, runs = sys.argv[1], sys.argv[2:]
result = {}
for run in runs:
    acc = ea.EventAccumulator(run, size_guidance={ea.SCALARS: 0, ea.IMAGES: 0})
    acc.Reload()
    tags = acc.Tags()
    images = {}
    name = os.path.basename(run)
    os.makedirs(os.path.join(out_dir, name), exist_ok=True)
    for tag in tags["images"]:
        images[tag] = []
        for e in acc.Images(tag):
            path = os.path.join(out_dir, name, tag.replace("/", "__") + "@" + str(e.step) + ".png")
            with open(path, "wb") as f:
                f.write(e.encoded_image_string)
            images[tag].append([e.step, e.width, e.height, path])
    result[name] = {
        "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
        "images": images,
    }
json.dump(result, sys.stdout)
"#;

/// The virtual environment, made once per test binary (both tests need it).
fn tensorboard_python() -> Option<PathBuf> {
    static VENV: Mutex<Option<Result<PathBuf, String>>> = Mutex::new(None);
    let mut venv = VENV.lock().unwrap_or_else(|e| e.into_inner());
    let made = venv.get_or_insert_with(|| {
        freqsweep_tests::python_venv(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("venv-tensorboard"), &[TENSORBOARD])
    });
    match made {
        Ok(python) => Some(python.clone()),
        Err(why) => {
            freqsweep_tests::skip(
                "the TensorBoard test (tests/tests/tensorboard.rs)",
                "FREQSWEEP_REQUIRE_TENSORBOARD",
                why,
            );
            None
        }
    }
}

/// `run name → {scalars: {tag: [[step, value]]}, images: {tag: [[step, w, h, png path]]}}`.
fn read_back(python: &Path, runs: &[PathBuf], out: &Path) -> Value {
    let script = out.join("read_events.py");
    std::fs::write(&script, READER).unwrap();
    let output = run_bounded(Command::new(python).arg(&script).arg(out).args(runs), Duration::from_secs(120));
    assert!(output.status.success(), "the TensorBoard reader failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("the reader prints JSON")
}

fn steps_and_values(series: &Value) -> Vec<(u64, f32)> {
    series.as_array().unwrap().iter().map(|p| (p[0].as_u64().unwrap(), p[1].as_f64().unwrap() as f32)).collect()
}

#[test]
fn tensorboard_reads_every_scalar_of_the_store_and_the_reports_images() {
    let Some(python) = tensorboard_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("tb.toml");
    // Two epochs, a map after epoch 1 and the final one, the 15 band subsets.
    let text =
        freqsweep_tests::tiny_spec("tb", "0.003").replace("epochs = 1", "epochs = 2") + "at_epochs = [1]\n[bands]\n";
    std::fs::write(&spec, text).unwrap();
    let out = dir.path().join("run");
    let ran = run_bounded(
        Command::new(binary("freqsweep"))
            .arg("run")
            .arg(&spec)
            .args(["--local-workers", "2", "--worker-threads", "1", "--out"])
            .arg(&out),
        Duration::from_secs(180),
    );
    assert!(ran.status.success(), "{}", String::from_utf8_lossy(&ran.stderr));

    let runs: Vec<PathBuf> =
        std::fs::read_dir(out.join("tensorboard")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_dir()).collect();
    assert_eq!(runs.len(), 1, "one TensorBoard run per point: {runs:?}");
    let point = runs[0].file_name().unwrap().to_str().unwrap().to_string();
    let read = read_back(&python, &runs, dir.path());
    let run = &read[&point];

    // Every stored point that is a scalar, in order, as TensorBoard loaded it.
    let (store, _writer) = freqsweep_coordinator::store::Store::open(&out.join("freqsweep.db")).unwrap();
    let reader = store.reader().unwrap();
    let train = reader.tasks().unwrap().into_iter().find(|t| t.kind == "train").unwrap();
    let mut expected: BTreeMap<String, Vec<(u64, f32)>> = BTreeMap::new();
    for p in reader.metrics(train.id).unwrap() {
        if let Some(tag) = freqsweep_coordinator::tensorboard::scalar_tag(&p) {
            expected.entry(tag).or_default().push((p.step, p.value as f32));
        }
    }
    let scalars = run["scalars"].as_object().unwrap();
    let got: BTreeMap<String, Vec<(u64, f32)>> =
        scalars.iter().map(|(tag, series)| (tag.clone(), steps_and_values(series))).collect();
    assert_eq!(got, expected);
    for tag in ["train/loss", "train/lr", "B1234/accuracy", "B1234/macro_f1", "B124/f1/class_3"] {
        assert!(got.contains_key(tag), "{tag} missing: {:?}", got.keys().collect::<Vec<_>>());
    }
    let last_step = expected["train/loss"].last().unwrap().0;
    let epoch_one = reader.metrics(train.id).unwrap().iter().filter(|p| p.epoch <= 1.0).map(|p| p.step).max().unwrap();

    // Images: the maps at the step of their checkpoint, the confusion matrices at the end; the
    // bytes are the report's own PNGs.
    let images = run["images"].as_object().unwrap();
    let image = |tag: &str| -> Vec<(u64, PathBuf)> {
        let list = images.get(tag).unwrap_or_else(|| panic!("image {tag} missing: {:?}", images.keys()));
        list.as_array()
            .unwrap()
            .iter()
            .map(|e| (e[0].as_u64().unwrap(), PathBuf::from(e[3].as_str().unwrap())))
            .collect()
    };
    let same = |tb: &Path, report: &str| {
        let report = out.join(report);
        let equal = std::fs::read(tb).unwrap() == std::fs::read(&report).unwrap();
        assert!(equal, "TensorBoard's {} differs from the report's {}", tb.display(), report.display());
    };
    // The final map may complete before the epoch-1 map: written in completion order.
    let mut maps = image("heatmap/eps4");
    maps.sort();
    assert_eq!(maps.iter().map(|m| m.0).collect::<Vec<_>>(), [epoch_one, last_step]);
    same(&maps[0].1, &format!("heatmaps/{point}_ep1_eps4.png"));
    same(&maps[1].1, &format!("heatmaps/{point}_eps4.png"));
    for set in ["B1234", "B124"] {
        let confusion = image(&format!("confusion/{set}"));
        assert_eq!(confusion.len(), 1);
        assert_eq!(confusion[0].0, last_step);
        same(&confusion[0].1, &format!("confusion/{point}_{set}.png"));
    }
    // The band-sufficiency task's 15 matrices, one image each, named by band subset.
    let bands = images.keys().filter(|t| t.starts_with("band_confusion/")).count();
    assert_eq!(bands, 15, "{:?}", images.keys());
    assert_eq!(image("band_confusion/B1234")[0].0, last_step);
}

fn loss(step: u64, value: f64) -> freqsweep_common::task::MetricPoint {
    freqsweep_common::task::MetricPoint {
        name: "loss".into(),
        epoch: step as f64 / 10.0,
        step,
        test_set: String::new(),
        class_index: -1,
        value,
    }
}

/// Store `train/loss` points of `attempt` (started on `worker`) at `steps`, as a worker reports them.
fn report_losses(
    run: &run::Run,
    train: u64,
    attempt: u64,
    worker: &str,
    steps: std::ops::RangeInclusive<u64>,
    offset: f64,
) {
    let points = steps.map(|s| loss(s, offset + s as f64)).collect();
    run.store
        .write(vec![
            Change::AttemptStarted {
                id: attempt,
                task_id: train,
                worker: worker.into(),
                now_ms: attempt,
                backup: false,
            },
            Change::Metrics { task_id: train, attempt_id: attempt, seq: 0, points },
        ])
        .unwrap();
}

fn train_task(run: &run::Run) -> u64 {
    run.tasks.iter().find(|t| t.key.starts_with("train/")).unwrap().id.0
}

#[test]
fn a_retried_attempt_replaces_the_steps_it_repeats_across_a_coordinator_restart() {
    let Some(python) = tensorboard_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("tb.toml");
    std::fs::write(&spec, freqsweep_tests::tiny_spec("tb-retry", "0.003")).unwrap();
    let out = dir.path().join("run");
    let cursor = out.join("tensorboard/.freqsweep-cursor.json");
    let train = {
        let run = run::open(&spec, &out, run::default_config(None)).unwrap();
        let train = train_task(&run);
        report_losses(&run, train, 1, "w1", 1..=6, 1.0);
        // The follower writes within about a second; then the coordinator "dies".
        let started = Instant::now();
        while !std::fs::read_to_string(&cursor).unwrap_or_default().contains("\"metrics_batch\":1") {
            assert!(started.elapsed() < Duration::from_secs(20), "the follower never wrote the first batch");
            std::thread::sleep(Duration::from_millis(50));
        }
        train
    };
    // Restarted: the retry resumed from a checkpoint at step 4 and reports steps 4..=8 again.
    let mut run = run::open(&spec, &out, run::default_config(None)).unwrap();
    report_losses(&run, train, 2, "w2", 4..=8, 100.0);
    run.write_results().unwrap();
    drop(run);

    let run_dir = std::fs::read_dir(out.join("tensorboard")).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir());
    let run_dir = run_dir.unwrap();
    let files = std::fs::read_dir(&run_dir).unwrap().count();
    assert_eq!(files, 2, "one event file per coordinator process");
    let read = read_back(&python, std::slice::from_ref(&run_dir), dir.path());
    let point = run_dir.file_name().unwrap().to_str().unwrap();
    let got = steps_and_values(&read[point]["scalars"]["train/loss"]);
    let want: Vec<(u64, f32)> =
        (1..=3).map(|s| (s, 1.0 + s as f32)).chain((4..=8).map(|s| (s, 100.0 + s as f32))).collect();
    assert_eq!(got, want, "the first attempt's steps 4..6 are dropped, nothing is doubled");
}

/// A cursor that cannot be used does not stop the run: the old event files are set aside and
/// every event is written again from the store. Read back with freqsweep's own record reader (no
/// Python needed). Cases: corrupt JSON (a disk error, a hand edit); a valid cursor with a
/// negative batch (the follower used to spin at full CPU for ever at the end of the run, never
/// writing results.csv); one listing a task as finished that the store does not hold as done
/// (its images were suppressed for ever); one ahead of the store; a directory in its place
/// (it refused the run where a corrupt file was recovered).
#[test]
fn an_unusable_cursor_sets_the_old_files_aside_and_rewrites_from_the_store() {
    for (case, cursor) in [
        ("corrupt", Some(&b"{\"metrics_batch\": tru"[..])),
        (
            "negative batch",
            Some(&b"{\"metrics_batch\": -9223372036854775808, \"followed\": {}, \"finished\": [], \"maps\": []}"[..]),
        ),
        ("batch ahead", Some(&b"{\"metrics_batch\": 100000, \"followed\": {}, \"finished\": [], \"maps\": []}"[..])),
        (
            "finished but not done",
            Some(&b"{\"metrics_batch\": -1, \"followed\": {}, \"finished\": [1, 2], \"maps\": []}"[..]),
        ),
        (
            "a map not stored",
            Some(&b"{\"metrics_batch\": -1, \"followed\": {}, \"finished\": [], \"maps\": [\"map/x/eps4\"]}"[..]),
        ),
        ("a directory", None),
    ] {
        let (tx, rx) = std::sync::mpsc::channel();
        let cursor = cursor.map(<[u8]>::to_vec);
        std::thread::spawn(move || {
            recovers_from(cursor.as_deref());
            let _ = tx.send(());
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(()) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => panic!("{case}: the run did not end within 60 s"),
            Err(e) => panic!("{case}: {e} (the check panicked; see above)"),
        }
    }
}

fn recovers_from(cursor: Option<&[u8]>) {
    use freqsweep_coordinator::tensorboard::events::{read_records, Kind, What};
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("tb.toml");
    std::fs::write(&spec, freqsweep_tests::tiny_spec("tb-corrupt", "0.003")).unwrap();
    let out = dir.path().join("run");
    let train = {
        let mut run = run::open(&spec, &out, run::default_config(None)).unwrap();
        let train = train_task(&run);
        report_losses(&run, train, 1, "w1", 1..=6, 0.0);
        run.write_results().unwrap();
        train
    };
    let path = out.join("tensorboard/.freqsweep-cursor.json");
    match cursor {
        Some(bytes) => std::fs::write(&path, bytes).unwrap(),
        None => {
            std::fs::remove_file(&path).unwrap();
            std::fs::create_dir(&path).unwrap();
        }
    }
    let mut run = run::open(&spec, &out, run::default_config(None)).expect("an unusable cursor does not stop the run");
    run.write_results().unwrap();
    assert!(run.tasks.iter().any(|t| t.id.0 == train));
    let aside: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("tensorboard.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the old files are kept aside");
    let point = std::fs::read_dir(out.join("tensorboard")).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir());
    let files: Vec<_> = std::fs::read_dir(point.unwrap()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(files.len(), 1, "written again into one new file");
    let events = read_records(&std::fs::read(&files[0]).unwrap()).unwrap();
    let steps: Vec<i64> = events
        .iter()
        .filter(|e| match &e.what {
            Some(What::Summary(s)) => {
                s.value.iter().any(|v| v.tag == "train/loss" && matches!(v.kind, Some(Kind::SimpleValue(_))))
            }
            _ => false,
        })
        .map(|e| e.step)
        .collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
    assert!(matches!(&events[0].what, Some(What::FileVersion(v)) if v == "brain.Event:2"));
    assert!(out.join("results.csv").is_file(), "the run ended with its results");
}

/// A race won by an attempt that was not the one followed: when the task ends, the store's
/// record (the resumed-from attempt's early steps and the winner's) is what TensorBoard shows,
/// not the loser's points nor a gap where the early steps were.
#[test]
fn after_a_race_tensorboard_shows_the_stores_record_of_the_winner() {
    let Some(python) = tensorboard_python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("tb.toml");
    std::fs::write(&spec, freqsweep_tests::tiny_spec("tb-race", "0.003")).unwrap();
    let out = dir.path().join("run");
    let cursor = out.join("tensorboard/.freqsweep-cursor.json");
    let mut run = run::open(&spec, &out, run::default_config(None)).unwrap();
    let train = train_task(&run);
    report_losses(&run, train, 1, "w1", 1..=3, 0.0);
    report_losses(&run, train, 2, "w2", 4..=6, 10.0);
    // A backup (the newest attempt, so the one followed) reports too, then loses the race.
    report_losses(&run, train, 3, "w3", 4..=6, 50.0);
    let started = Instant::now();
    while !std::fs::read_to_string(&cursor).unwrap_or_default().contains("\"metrics_batch\":3") {
        assert!(started.elapsed() < Duration::from_secs(20), "the follower never wrote the batches");
        std::thread::sleep(Duration::from_millis(50));
    }
    run.store
        .write(vec![
            Change::DiscardMetrics { attempt_id: 3 },
            Change::TaskState { id: train, state: "done".into(), attempts: 0, now_ms: 9 },
        ])
        .unwrap();
    run.write_results().unwrap();
    drop(run);
    let run_dir = std::fs::read_dir(out.join("tensorboard")).unwrap().map(|e| e.unwrap().path()).find(|p| p.is_dir());
    let run_dir = run_dir.unwrap();
    let read = read_back(&python, std::slice::from_ref(&run_dir), dir.path());
    let point = run_dir.file_name().unwrap().to_str().unwrap();
    let got = steps_and_values(&read[point]["scalars"]["train/loss"]);
    let want: Vec<(u64, f32)> = (1..=3).map(|s| (s, s as f32)).chain((4..=6).map(|s| (s, 10.0 + s as f32))).collect();
    assert_eq!(got, want);
}
