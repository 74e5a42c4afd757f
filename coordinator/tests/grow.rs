//! A plan that grows: points added to a running sweep go through the planner, the store, the
//! scheduler and the driver like the grid's; a coordinator that dies after adding them resumes
//! with exactly the same tasks (ids, keys, descriptions, states) and finishes them all.

use freqsweep_common::spec::{GridPoint, GridValues};
use freqsweep_common::task::TaskSpec;
use freqsweep_coordinator::artifacts::{ArtifactDir, ArtifactRef};
use freqsweep_coordinator::driver::{FromWorker, Registration, SessionId, Shared, ToWorker};
use freqsweep_coordinator::run;
use freqsweep_coordinator::scheduler::TaskId;
use freqsweep_coordinator::testing;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const SPEC: &str = "[[dataset]]\nkind = \"syn\"\nband = 2\ntrain = 64\ntest = 16\n[model]\narch = \"tiny\"\n[train]\nlr = 0.01\nbatch_size = 16\nepochs = 1\n[heatmap]\neps = 4\nimages = 8\nchunks_per_map = 2\n";

struct Worker {
    session: SessionId,
    rx: mpsc::Receiver<ToWorker>,
}

fn join(shared: &Shared) -> Worker {
    let (tx, rx) = mpsc::channel(64);
    let r =
        shared.register(Registration { hostname: "sim".into(), resumes_history: true, ..Default::default() }).unwrap();
    let name = freqsweep_coordinator::driver::worker_name(r.worker);
    Worker { session: shared.attach(&name, &r.session_key, tx).unwrap().unwrap(), rx }
}

fn next(rx: &mut mpsc::Receiver<ToWorker>) -> Option<ToWorker> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match rx.try_recv() {
            Ok(m) => return Some(m),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Err(_) => return None,
        }
    }
}

/// Lease one task and report a result that fits it; `None` when there is no work.
fn do_one(shared: &Shared, worker: &mut Worker, artifacts: &ArtifactDir) -> Option<(TaskId, String)> {
    // A lease the coordinator already pushed to this idle worker, or one asked for now.
    let pushed = worker.rx.try_recv().ok();
    if pushed.is_none() {
        assert!(shared.on_message(worker.session, FromWorker::LeaseRequest { slots: 1 }).unwrap());
    }
    let (task, attempt, task_json) = match pushed.or_else(|| next(&mut worker.rx))? {
        ToWorker::Lease { task, attempt, task_json, .. } => (task, attempt, task_json),
        ToWorker::NoWork { .. } | ToWorker::SweepDone => return None,
        other => panic!("unexpected {other:?}"),
    };
    let spec: TaskSpec = serde_json::from_str(&task_json).unwrap();
    let outputs = spec
        .kind()
        .outputs()
        .iter()
        .map(|name| {
            let (digest, size) = artifacts.store_bytes(format!("{name} of attempt {}", attempt.0).as_bytes()).unwrap();
            ArtifactRef { name: name.to_string(), digest, size }
        })
        .collect();
    let result = FromWorker::Result { attempt, result_json: testing::simulated_result_json(&spec, "sim"), outputs };
    assert!(shared.on_message(worker.session, result).unwrap());
    loop {
        match next(&mut worker.rx) {
            Some(ToWorker::Ack { attempt: a, accepted: true }) if a == attempt => break,
            // The answer to a request that crossed a pushed lease.
            Some(ToWorker::NoWork { .. }) => continue,
            other => panic!("expected the result acknowledged, got {other:?}"),
        }
    }
    Some((task, spec.kind().as_str().to_string()))
}

/// The grid's point again with another seed: what a search strategy would add.
fn another_seed(point: &GridPoint, seed: u64) -> GridPoint {
    let mut task = point.task.clone();
    task.train.seed = seed;
    let values: Vec<(String, String)> = point
        .values
        .iter()
        .map(|(k, v)| (k.to_string(), if k == "seed" { seed.to_string() } else { v.to_string() }))
        .collect();
    GridPoint {
        id: point.id.replace("seed0", &format!("seed{seed}")),
        values: GridValues::from_labels(values.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
        task,
        given: None,
    }
}

fn summary(tasks: &[freqsweep_coordinator::graph::PlannedTask]) -> Vec<(u64, String, String)> {
    tasks.iter().map(|t| (t.id.0, t.key.clone(), serde_json::to_string(&t.spec).unwrap())).collect()
}

fn states(dir: &Path) -> Vec<(u64, String)> {
    let reader = freqsweep_coordinator::store::open_read_only(&dir.join("freqsweep.db")).unwrap();
    reader.tasks().unwrap().into_iter().map(|r| (r.id, r.state)).collect()
}

#[test]
fn points_added_to_a_running_sweep_survive_a_killed_coordinator_and_finish() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("sweep.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let dir = tmp.path().join("run");
    let artifacts = ArtifactDir::new(dir.join("artifacts"));

    let first = run::open(&spec, &dir, run::default_config(None)).unwrap();
    assert_eq!(first.tasks.len(), 3, "train and two heatmap chunks");
    let mut worker = join(&first.shared);
    let (trained, kind) = do_one(&first.shared, &mut worker, &artifacts).unwrap();
    assert_eq!((trained, kind.as_str()), (TaskId(1), "train"));

    // Two points added while the grid's chunks are still to do.
    let added = vec![another_seed(&first.sweep.points[0], 1), another_seed(&first.sweep.points[0], 2)];
    let ids = first.shared.add_points(&added).unwrap();
    assert_eq!(ids, (4..=9).map(TaskId).collect::<Vec<_>>(), "ids above every task, 3 per point");
    // Planned exactly as the grid's point was, one point later: same kinds, keys of its own.
    let mut again = freqsweep_coordinator::kinds::Planner::new(&first.sweep);
    let expected = again.plan_point(1, &added[0], TaskId(4));
    assert_eq!(expected.len(), 3);
    // Leased like any task: the worker does three more, whichever they are.
    let mut done = vec![trained];
    for _ in 0..3 {
        done.push(do_one(&first.shared, &mut worker, &artifacts).unwrap().0);
    }
    assert!(done.iter().any(|t| t.0 >= 4), "an added task was leased: {done:?}");
    let before_kill = states(&dir);
    assert_eq!(before_kill.len(), 9, "the added tasks are stored: {before_kill:?}");
    // The coordinator dies (nothing is finished or written after this point).
    drop(worker);
    drop(first);

    // It comes back with the same spec: the same 9 tasks, the same states, and it finishes.
    let second = run::open(&spec, &dir, run::default_config(None)).unwrap();
    let mut reference = freqsweep_coordinator::graph::plan(&second.sweep);
    assert_eq!(second.sweep.points.len(), 3, "the grid's point and the two added");
    assert_eq!(reference.len(), 9, "the resumed sweep's points plan the same tasks");
    reference.sort_by_key(|t| t.id);
    assert_eq!(summary(&second.tasks), summary(&reference));
    assert_eq!(states(&dir), before_kill, "no state lost or changed by the restart");
    let mut worker = join(&second.shared);
    let mut finished = 0;
    while do_one(&second.shared, &mut worker, &artifacts).is_some() {
        finished += 1;
        assert!(finished <= 9, "no task runs twice");
    }
    assert_eq!(finished, 9 - done.len(), "exactly the tasks not done before the kill");
    assert!(*second.shared.finished().borrow(), "the grown sweep finished");
    assert!(states(&dir).iter().all(|(_, s)| s == "done"), "{:?}", states(&dir));
    // A finished sweep that grows is unfinished until its new tasks end (a search strategy
    // keeps a sweep open while it may still add points; here the test adds one after the end).
    let more = second.shared.add_points(&[another_seed(&second.sweep.points[0], 3)]).unwrap();
    assert_eq!(more, (10..=12).map(TaskId).collect::<Vec<_>>());
    assert!(!*second.shared.finished().borrow(), "unfinished again");
    let mut last = 0;
    while do_one(&second.shared, &mut worker, &artifacts).is_some() {
        last += 1;
    }
    assert_eq!(last, 3);
    assert!(*second.shared.finished().borrow(), "finished again");
    let mut second = second;
    let summary = second.write_results().unwrap();
    assert!(summary.failed.is_empty());
    let csv = std::fs::read_to_string(dir.join("results.csv")).unwrap();
    assert_eq!(second.sweep.points.len(), 4, "the results cover the point added after the restart too");
    for point in &second.sweep.points {
        assert!(csv.contains(&point.id), "results.csv has {}: {csv}", point.id);
    }
    // The report, from the store alone, re-plans the added points as the run did.
    let reader = freqsweep_coordinator::store::open_read_only(&dir.join("freqsweep.db")).unwrap();
    let (sweep, tasks) = freqsweep_coordinator::report::stored_plan(&reader, &dir.join("freqsweep.db")).unwrap();
    assert_eq!((sweep.points.len(), tasks.len()), (4, 12));
}
