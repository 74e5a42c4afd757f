//! The driver against a real store in a temporary directory, through its shell, without a
//! network.

use super::*;
use crate::artifacts::ArtifactDir;
use crate::store::Store;
use freqsweep_common::task::TaskSpec;
use std::sync::Arc;
use tokio::sync::mpsc;

/// A planned sweep of one train task and two heatmap chunks, in a fresh store.
fn shared(config: impl FnOnce(&mut ServiceConfig)) -> (Arc<Shared>, tempfile::TempDir, crate::store::StoreWriter) {
    let dir = tempfile::tempdir().unwrap();
    let text = "[[dataset]]\nkind = \"syn\"\nband = 2\ntrain = 64\ntest = 16\n[model]\narch = \"tiny\"\n[train]\nlr = 0.01\nbatch_size = 16\nepochs = 1\n[heatmap]\neps = 4\nimages = 8\nchunks_per_map = 2\n";
    let sweep = freqsweep_common::spec::parse(text, "t.toml").unwrap();
    let tasks = crate::graph::plan(&sweep);
    let (store, writer) = Store::open(&dir.path().join("freqsweep.db")).unwrap();
    let inserts = tasks
        .iter()
        .map(|t| Change::InsertTask {
            id: t.id.0,
            key: t.key.clone(),
            kind: t.kind().as_str().into(),
            spec_json: serde_json::to_string(&t.spec).unwrap(),
            deps: t.deps.iter().map(|d| d.0).collect(),
        })
        .collect();
    store.write(inserts).unwrap();
    let mut service = crate::run::default_config(None);
    config(&mut service);
    let artifacts = ArtifactDir::new(dir.path().join("artifacts"));
    let shared = Shared::new(service, store, artifacts, tasks, HashMap::new(), 1, "t".into());
    (shared, dir, writer)
}

/// A worker with an attached session: its session id and what the coordinator sends it.
fn join(shared: &Shared, capacity: usize) -> (SessionId, mpsc::Receiver<ToWorker>, String) {
    let (tx, rx) = mpsc::channel(capacity);
    let r = shared
        .register(Registration { hostname: "h".into(), resumes_history: true, ..Registration::default() })
        .unwrap();
    let name = worker_name(r.worker);
    (shared.attach(&name, &r.session_key, tx).unwrap().unwrap(), rx, name)
}

/// The next message for a session (acks come from the store's writer thread, so wait a bit).
fn next(rx: &mut mpsc::Receiver<ToWorker>) -> ToWorker {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match rx.try_recv() {
            Ok(m) => return m,
            Err(_) if Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(2)),
            Err(e) => panic!("no message: {e:?}"),
        }
    }
}

fn lease(shared: &Shared, session: SessionId, rx: &mut mpsc::Receiver<ToWorker>) -> (TaskId, AttemptId) {
    assert!(shared.on_message(session, FromWorker::LeaseRequest { slots: 1 }).unwrap());
    match next(rx) {
        ToWorker::Lease { task, attempt, .. } => (task, attempt),
        other => panic!("expected a lease, got {other:?}"),
    }
}

fn state(shared: &Shared, task: TaskId) -> Option<StateName> {
    shared.with(|d| d.scheduler.state(task)).unwrap()
}

#[test]
fn an_expired_session_is_told_so_and_the_worker_registers_again() {
    let (shared, _dir, _writer) = shared(|_| {});
    let (session, mut rx, _) = join(&shared, 64);
    let (task, _) = lease(&shared, session, &mut rx);
    // The worker is paused (SIGSTOP, `scontrol suspend`) past the lease timeout.
    shared.advance(shared.config.scheduler.lease_timeout + 1);
    shared.tick();
    match next(&mut rx) {
        ToWorker::Closed { reason } => {
            assert!(reason.contains("session expired") && reason.contains("register again"), "{reason}")
        }
        other => panic!("expected the session to be closed, got {other:?}"),
    }
    assert_eq!(state(&shared, task), Some(StateName::Ready), "its task went back to the queue");
    // When it wakes, its old session is not served any more (the shell ends the stream) …
    assert!(!shared.on_message(session, FromWorker::LeaseRequest { slots: 1 }).unwrap());
    // … and once registered again it gets the task.
    let (again, mut rx2, _) = join(&shared, 64);
    assert_ne!(again.worker, session.worker, "a new id");
    assert_eq!(lease(&shared, again, &mut rx2).0, task);
}

#[test]
fn reports_from_a_session_that_does_not_hold_the_attempt_are_refused() {
    let (shared, _dir, _writer) = shared(|_| {});
    let (owner, mut owner_rx, _) = join(&shared, 64);
    let (other, mut other_rx, _) = join(&shared, 64);
    let (task, attempt) = lease(&shared, owner, &mut owner_rx);
    let forged = r#"{"kind":"train","epochs":1,"steps":4,"final_loss":0.1,"test_sets":[],"seconds":1,"device":"cpu","checkpoint":"x"}"#;
    for message in [
        FromWorker::Result { attempt, result_json: forged.into(), outputs: vec![] },
        FromWorker::Failure { attempt, error: "forged".into(), retryable: false },
        FromWorker::Release { attempt, reason: "forged".into() },
    ] {
        shared.on_message(other, message).unwrap();
        assert_eq!(next(&mut other_rx), ToWorker::Ack { attempt, accepted: false });
    }
    shared.on_message(other, FromWorker::Metrics { attempt, seq: 0, points: vec![] }).unwrap();
    assert_eq!(state(&shared, task), Some(StateName::Running), "the owner's attempt runs on");
    assert_eq!(shared.with(|d| d.scheduler.attempt(attempt)).unwrap(), Some((task, owner.worker)));
    // The owner's own result must fit its task: no outputs and no test sets is refused.
    shared.on_message(owner, FromWorker::Result { attempt, result_json: forged.into(), outputs: vec![] }).unwrap();
    assert_eq!(next(&mut owner_rx), ToWorker::Ack { attempt, accepted: true }, "taken as a failed attempt");
    assert_eq!(state(&shared, task), Some(StateName::Backoff));
    let failure = shared.with(|d| d.failures.back().map(|f| f.error.clone())).unwrap().unwrap();
    assert!(failure.starts_with("result refused: a train result must name the outputs"), "{failure}");
}

#[test]
fn a_refused_result_quotes_the_peer_on_one_bounded_line() {
    let (shared, _dir, _writer) = shared(|_| {});
    let (owner, mut owner_rx, _) = join(&shared, 64);
    let forged = ArtifactRef {
        name: format!("a\n2026 INFO forged\u{1b}[31m{}", "x".repeat(20_000)),
        digest: "d".into(),
        size: 1,
    };
    let json = format!("{{\"kind\": \"train\", \"{}\n\": 1}}", "k".repeat(20_000));
    for (result_json, outputs) in [(String::new(), vec![forged]), (json, vec![])] {
        // Past the previous refusal's backoff (well within the lease timeout).
        shared.advance(5_000);
        shared.tick();
        let (_, attempt) = lease(&shared, owner, &mut owner_rx);
        shared.on_message(owner, FromWorker::Result { attempt, result_json, outputs }).unwrap();
        assert_eq!(next(&mut owner_rx), ToWorker::Ack { attempt, accepted: true }, "taken as a failed attempt");
        let note = shared.with(|d| d.failures.back().map(|f| f.error.clone())).unwrap().unwrap();
        assert!(note.starts_with("result"), "{note:.200}");
        assert!(!note.chars().any(char::is_control) && note.len() <= 4100, "{} bytes: {note:.200}", note.len());
    }
}

#[test]
fn a_heatmap_result_must_be_exactly_its_chunk() {
    let (shared, _dir, _writer) = shared(|_| {});
    let tasks: Vec<PlannedTask> = shared.with(|d| d.tasks.values().cloned().collect()).unwrap();
    let chunk = tasks.iter().find(|t| t.kind() == TaskKind::Heatmap).unwrap();
    let TaskSpec::Heatmap(h) = &chunk.spec else { unreachable!() };
    let good = crate::testing::heatmap_result_json(h, 8, 3, "cpu");
    assert!(kinds::check_result(chunk, &good, &[]).is_ok());
    let mut outcome: serde_json::Value = serde_json::from_str(&good).unwrap();
    outcome["error"][0][0] = serde_json::json!([40, 40]);
    let why = kinds::check_result(chunk, &outcome.to_string(), &[]).unwrap_err();
    assert!(why.contains("not exactly the chunk's"), "a cell outside the map: {why}");
    let mut outcome: serde_json::Value = serde_json::from_str(&good).unwrap();
    outcome["error"][1][1]["sum"] = serde_json::json!(9.0);
    let why = kinds::check_result(chunk, &outcome.to_string(), &[]).unwrap_err();
    assert!(why.contains("which 8 images cannot give"), "{why}");
    let why = kinds::check_result(chunk, &crate::testing::heatmap_result_json(h, 9, 0, "cpu"), &[]).unwrap_err();
    assert!(why.contains("evaluated 9 images"), "more images than the task allows: {why}");
}

#[test]
fn a_worker_id_cannot_be_taken_over() {
    let (shared, _dir, _writer) = shared(|_| {});
    let (session, _rx, name) = join(&shared, 64);
    let (tx, _) = mpsc::channel(4);
    let err = shared.attach(&name, "guess", tx.clone()).unwrap().unwrap_err();
    assert!(err.starts_with("wrong session key"), "{err}");
    let key = shared.with(|d| d.workers[&session.worker].session_key.clone()).unwrap();
    let err = shared.attach(&name, &key, tx.clone()).unwrap().unwrap_err();
    assert!(err.ends_with("already has a session"), "even with the key, one session per id: {err}");
    let err = shared.attach("w99", &key, tx).unwrap().unwrap_err();
    assert!(err.contains("unknown worker id"), "{err}");
    assert!(shared.with(|d| d.workers.contains_key(&session.worker)).unwrap(), "the real worker stays");
}

#[test]
fn a_session_that_does_not_read_is_closed_and_its_work_re_queued() {
    let (shared, _dir, _writer) = shared(|_| {});
    let (session, mut rx, _) = join(&shared, 1);
    let (task, _) = lease(&shared, session, &mut rx);
    // Fill its queue (one slot), then the next message does not fit.
    shared.on_message(session, FromWorker::LeaseRequest { slots: 1 }).unwrap();
    shared.on_message(session, FromWorker::LeaseRequest { slots: 1 }).unwrap();
    assert!(!shared.with(|d| d.workers.contains_key(&session.worker)).unwrap(), "closed, not silently dropped");
    assert_eq!(state(&shared, task), Some(StateName::Ready), "its attempt was re-queued");
    let notes: Vec<String> = shared.with(|d| d.failures.iter().map(|f| f.error.clone()).collect()).unwrap();
    assert!(notes.iter().any(|n| n.contains("were not read")), "{notes:?}");
    assert!(notes.iter().any(|n| n.contains("(1 of 3 attempts); re-queued")), "counted as a lost attempt: {notes:?}");
}

#[test]
fn heartbeats_reconcile_through_the_driver() {
    let (shared, _dir, _writer) = shared(|_| {});
    let (session, mut rx, _) = join(&shared, 64);
    let (task, attempt) = lease(&shared, session, &mut rx);
    // The worker has seen the lease but lists nothing: the attempt was lost on the worker.
    let beat = FromWorker::Heartbeat { running: vec![], newest_lease: attempt, throughput: 0.0 };
    shared.on_message(session, beat).unwrap();
    assert_eq!(state(&shared, task), Some(StateName::Ready));
    // It still runs it: told to stop.
    let beat = FromWorker::Heartbeat { running: vec![attempt], newest_lease: attempt, throughput: 0.0 };
    shared.on_message(session, beat).unwrap();
    assert!(matches!(next(&mut rx), ToWorker::Cancel { attempt: a, .. } if a == attempt));
}

#[test]
fn a_panicking_handler_does_not_take_the_coordinator_down() {
    let (shared, _dir, _writer) = shared(|_| {});
    let result: Result<(), Panicked> = shared.with(|_| panic!("boom"));
    assert_eq!(result.unwrap_err().0, "boom");
    // The lock it poisoned is taken over; every later call works.
    assert_eq!(shared.snapshot().total_tasks, 3);
    let (session, mut rx, _) = join(&shared, 64);
    lease(&shared, session, &mut rx);
}

#[test]
fn the_timer_is_woken_only_for_an_earlier_deadline() {
    let (shared, _dir, _writer) = shared(|c| c.scheduler.backoff_base = 100);
    shared.with(|d| d.arm()).unwrap();
    let (session, mut rx, _) = join(&shared, 64);
    // Registering made the first worker deadline: earlier than "none".
    let wake = shared.with(|d| (d.arm(), d.take_wake())).unwrap();
    assert!(wake.0.is_some() && !wake.1);
    let (_, attempt) = lease(&shared, session, &mut rx);
    shared.on_message(session, FromWorker::LeaseRequest { slots: 1 }).unwrap();
    assert!(!shared.with(|d| d.take_wake()).unwrap(), "a renewed deadline is later");
    // A retryable failure backs off for 100 ms, well before the worker's deadline.
    let failure = FromWorker::Failure { attempt, error: "oom".into(), retryable: true };
    shared.on_message(session, failure).unwrap();
    assert!(shared.with(|d| d.take_wake()).unwrap(), "the backoff's end is earlier: wake the timer");
}

#[test]
fn a_map_is_merged_as_its_chunks_are_accepted_and_stored_once_complete() {
    let (shared, dir, _writer) = shared(|_| {});
    let (session, mut rx, _) = join(&shared, 64);
    let tasks: HashMap<TaskId, PlannedTask> = shared.with(|d| d.tasks.clone()).unwrap();
    // The train task, with a result that fits it and both outputs uploaded.
    let (train, attempt) = lease(&shared, session, &mut rx);
    let TaskSpec::Train(t) = &tasks[&train].spec else { panic!("the train task comes first") };
    let outcome = kinds::train::simulated(t, "cpu");
    let artifacts = ArtifactDir::new(dir.path().join("artifacts"));
    let outputs: Vec<ArtifactRef> = ["checkpoint", "model"]
        .iter()
        .map(|name| {
            let (digest, size) = artifacts.store_bytes(name.as_bytes()).unwrap();
            ArtifactRef { name: name.to_string(), digest, size }
        })
        .collect();
    let result = FromWorker::Result { attempt, result_json: serde_json::to_string(&outcome).unwrap(), outputs };
    shared.on_message(session, result).unwrap();
    assert_eq!(next(&mut rx), ToWorker::Ack { attempt, accepted: true });
    // The chunks: each lease carries the model's weights only; each result merges at once.
    for k in 0..2 {
        assert!(shared.on_message(session, FromWorker::LeaseRequest { slots: 1 }).unwrap());
        let ToWorker::Lease { task, attempt, inputs, .. } = next(&mut rx) else { panic!("a chunk lease") };
        assert_eq!(inputs.iter().map(|a| a.name.as_str()).collect::<Vec<_>>(), ["model"], "weights only");
        let TaskSpec::Heatmap(h) = &tasks[&task].spec else { panic!("a heatmap chunk") };
        let json = crate::testing::heatmap_result_json(h, 8, 2, "cpu");
        let key = kinds::heatmap::MapKey::of(&tasks[&task]).unwrap();
        shared.on_message(session, FromWorker::Result { attempt, result_json: json, outputs: vec![] }).unwrap();
        assert_eq!(next(&mut rx), ToWorker::Ack { attempt, accepted: true });
        assert_eq!(shared.with(|d| d.maps.heatmaps.progress(key)).unwrap(), (k + 1, 2), "merged as accepted");
    }
    let reader = shared.store.reader().unwrap();
    let map = reader.artifact_by_name("map/Syn_2-tiny-adam-lr0.01-bs16-ep1-seed0/eps4").unwrap();
    let (digest, _, path) = map.expect("the complete map is stored as an artifact");
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(file["error"].as_array().unwrap().len(), 514, "every canonical cell");
    assert!(file["error"].as_array().unwrap().iter().all(|c| c[1]["sum"] == 2.0 && c[1]["n"] == 8));
    assert!(artifacts.contains(&digest));
}

#[test]
fn metric_points_a_task_cannot_produce_are_refused() {
    let (shared, _dir, _writer) = shared(|_| {});
    let (session, mut rx, _) = join(&shared, 64);
    let (task, attempt) = lease(&shared, session, &mut rx);
    let point = |name: &str, test_set: &str, class_index: i32, value: f64| MetricPoint {
        name: name.into(),
        epoch: 1.0,
        step: 4,
        test_set: test_set.into(),
        class_index,
        value,
    };
    for (seq, bad) in [
        point("f1", "../../etc", 0, 0.5),
        point("f1", "B1234", 4, 0.5),
        point("accuracy", "B1234", -1, 1.5),
        point("loss", "", -1, f64::NAN),
        point("nonsense", "B1234", -1, 0.5),
    ]
    .into_iter()
    .enumerate()
    {
        let message = FromWorker::Metrics { attempt, seq: seq as u64, points: vec![bad] };
        assert!(shared.on_message(session, message).unwrap());
    }
    let good = FromWorker::Metrics { attempt, seq: 9, points: vec![point("f1", "B1234", 3, 0.25)] };
    shared.on_message(session, good).unwrap();
    let reader = shared.store.reader().unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while reader.metric_count().unwrap() == 0 && Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let stored = reader.metrics(task.0).unwrap();
    assert_eq!(stored.len(), 1, "only the point the task can produce: {stored:?}");
    assert_eq!((stored[0].test_set.as_str(), stored[0].class_index), ("B1234", 3));
    let note = shared.with(|d| d.failures.back().map(|f| f.error.clone())).unwrap().unwrap();
    assert!(note.starts_with("metric batch refused: metric point \"nonsense\""), "{note}");
}

/// The driver alone — no store, no channel, no clock, no file: inputs in, [`Effects`] out.
mod sans_io {
    use super::*;
    use crate::driver::{AfterCommit, Effects, Now, Restore};
    use proptest::prelude::*;
    use std::collections::HashSet;

    const SPEC: &str = "[[dataset]]\nkind = \"syn\"\nband = 2\ntrain = 64\ntest = 16\n[model]\narch = \"tiny\"\n[train]\nlr = 0.01\nbatch_size = 16\nepochs = 1\nseed = [0, 1]\n[heatmap]\neps = 4\nimages = 8\nchunks_per_map = 2\n";

    struct Sim {
        driver: Driver,
        base: Instant,
        ms: u64,
        /// Attached sessions, and the attempts each was leased.
        sessions: Vec<(SessionId, Vec<AttemptId>)>,
        finished: bool,
    }

    impl Sim {
        fn new() -> Sim {
            let sweep = freqsweep_common::spec::parse(SPEC, "t.toml").unwrap();
            let base = Instant::now();
            let from = Restore {
                config: crate::run::default_config(None),
                artifacts: ArtifactDir::new("/nonexistent/artifacts".into()),
                tasks: crate::graph::plan(&sweep),
                stored: HashMap::new(),
                first_attempt: 1,
                sweep_id: "t".into(),
                counters: Arc::default(),
            };
            let (driver, fx) = Driver::restore(Now { ms: 0, instant: base, wall_ms: 0 }, from);
            assert!(fx.sends.is_empty(), "nobody to tell yet");
            Sim { driver, base, ms: 0, sessions: Vec::new(), finished: false }
        }

        fn now(&self) -> Now {
            Now { ms: self.ms, instant: self.base + Duration::from_millis(self.ms), wall_ms: self.ms }
        }

        /// Check what one step decided, and remember the leases it gave.
        fn check(&mut self, fx: &Effects, reported: Option<(WorkerId, AttemptId)>) {
            let started: HashSet<u64> = fx
                .changes
                .iter()
                .filter_map(|c| if let Change::AttemptStarted { id, .. } = c { Some(*id) } else { None })
                .collect();
            for (worker, message) in &fx.sends {
                if let ToWorker::Lease { attempt, .. } = message {
                    assert!(started.contains(&attempt.0), "lease of attempt {} without its stored start", attempt.0);
                    let (_, leased) = self.sessions.iter_mut().find(|(s, _)| s.worker == *worker).expect("a session");
                    leased.push(*attempt);
                }
                assert!(
                    !matches!(message, ToWorker::Ack { accepted: true, .. }) || reported.is_none(),
                    "an accepted report is acknowledged only after its changes commit"
                );
            }
            let acks: Vec<&AfterCommit> =
                fx.after_commit.iter().filter(|a| matches!(a, AfterCommit::Ack { .. })).collect();
            if let Some((worker, attempt)) = reported {
                let immediate = fx
                    .sends
                    .iter()
                    .filter(|(w, m)| *w == worker && matches!(m, ToWorker::Ack { attempt: a, .. } if *a == attempt));
                assert_eq!(
                    acks.len() + immediate.count(),
                    1,
                    "one acknowledgement per report of attempt {}: sends {:?}, after commit {:?}",
                    attempt.0,
                    fx.sends,
                    fx.after_commit
                );
            }
            for closed in &fx.closed {
                self.sessions.retain(|(s, _)| s.worker != *closed);
            }
            if fx.after_commit.contains(&AfterCommit::Finished) {
                self.finished = true;
            }
        }

        fn join(&mut self) {
            let mut fx = Effects::default();
            let r = self.driver.register(self.now(), Registration::default(), "key".into(), &mut fx);
            let session = self.driver.attach(&worker_name(r.worker), "key").unwrap();
            self.sessions.push((session, Vec::new()));
            self.check(&fx, None);
        }

        fn message(&mut self, who: usize, message: FromWorker, stored: &HashSet<String>) {
            let Some((session, _)) = self.sessions.get(who % self.sessions.len().max(1)).cloned() else { return };
            let reported = match &message {
                FromWorker::Result { attempt, .. }
                | FromWorker::Failure { attempt, .. }
                | FromWorker::Release { attempt, .. } => Some((session.worker, *attempt)),
                _ => None,
            };
            let mut fx = Effects::default();
            assert!(self.driver.on_message(self.now(), session, message, stored, &mut fx));
            self.check(&fx, reported);
        }

        /// A result that fits the task of `attempt`, with its outputs "uploaded".
        fn result(&self, attempt: AttemptId) -> Option<(FromWorker, HashSet<String>)> {
            let (task, _) = self.driver.scheduler.attempt(attempt)?;
            let spec = &self.driver.tasks[&task].spec;
            let outputs: Vec<ArtifactRef> = spec
                .kind()
                .outputs()
                .iter()
                .map(|n| ArtifactRef { name: n.to_string(), digest: format!("{n}-{}", attempt.0), size: 1 })
                .collect();
            let stored = outputs.iter().map(|o| o.digest.clone()).collect();
            let result_json = serde_json::to_string(&kinds::simulated_result(spec, "sim")).unwrap();
            Some((FromWorker::Result { attempt, result_json, outputs }, stored))
        }
    }

    #[derive(Clone, Debug)]
    enum Step {
        Join,
        Ask(usize),
        Report(usize, u8),
        Beat(usize),
        Wait(u64),
        Lost(usize),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            1 => Just(Step::Join),
            4 => (0..4usize).prop_map(Step::Ask),
            4 => (0..4usize, 0..4u8).prop_map(|(w, how)| Step::Report(w, how)),
            2 => (0..4usize).prop_map(Step::Beat),
            1 => (0..120_000u64).prop_map(Step::Wait),
            1 => (0..4usize).prop_map(Step::Lost),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        /// Whatever workers do — join, ask, report (fitting, failing, releasing, or for an
        /// attempt they do not hold), go silent past the lease timeout, lose their session —
        /// every lease goes out with its attempt's stored start, every report gets exactly one
        /// acknowledgement (an accepted one only after its changes commit), and one honest worker
        /// then finishes the sweep.
        #[test]
        fn any_interleaving_keeps_the_protocol_and_a_good_worker_finishes(steps in prop::collection::vec(step(), 0..60)) {
            let mut sim = Sim::new();
            for s in steps {
                match s {
                    Step::Join => sim.join(),
                    Step::Ask(w) => sim.message(w, FromWorker::LeaseRequest { slots: 1 }, &HashSet::new()),
                    Step::Report(w, how) => {
                        let Some((_, leased)) = sim.sessions.get(w % sim.sessions.len().max(1)).cloned() else { continue };
                        // The newest attempt this session was leased, or one of another session's.
                        let attempt = match how {
                            3 => sim.sessions.iter().flat_map(|(_, l)| l.iter().copied()).last(),
                            _ => leased.last().copied(),
                        };
                        let Some(attempt) = attempt else { continue };
                        match how {
                            0 | 3 => {
                                if let Some((message, stored)) = sim.result(attempt) {
                                    sim.message(w, message, &stored);
                                } else {
                                    sim.message(w, FromWorker::Release { attempt, reason: "gone".into() }, &HashSet::new());
                                }
                            }
                            1 => sim.message(w, FromWorker::Failure { attempt, error: "oom".into(), retryable: true }, &HashSet::new()),
                            _ => sim.message(w, FromWorker::Release { attempt, reason: "drain".into() }, &HashSet::new()),
                        }
                    }
                    Step::Beat(w) => {
                        let Some((_, leased)) = sim.sessions.get(w % sim.sessions.len().max(1)).cloned() else { continue };
                        let running: Vec<AttemptId> = leased.iter().copied().filter(|a| sim.driver.scheduler.attempt(*a).is_some()).collect();
                        let newest = leased.last().copied().unwrap_or(AttemptId(0));
                        sim.message(w, FromWorker::Heartbeat { running, newest_lease: newest, throughput: 1.0 }, &HashSet::new());
                    }
                    Step::Wait(ms) => {
                        sim.ms += ms;
                        let mut fx = Effects::default();
                        sim.driver.tick(sim.now(), &mut fx);
                        sim.check(&fx, None);
                    }
                    Step::Lost(w) => {
                        if let Some((session, _)) = sim.sessions.get(w % sim.sessions.len().max(1)).cloned() {
                            let mut fx = Effects::default();
                            sim.driver.session_lost(sim.now(), session.worker, "not read".into(), &mut fx);
                            sim.check(&fx, None);
                        }
                    }
                }
            }
            // Everyone else leaves; one worker that does everything right finishes the sweep.
            for (session, _) in sim.sessions.clone() {
                let mut fx = Effects::default();
                sim.driver.detach(sim.now(), session, &mut fx);
                sim.check(&fx, None);
            }
            sim.join();
            let good = sim.sessions.len() - 1;
            // Within the lease timeout between messages (30 s), past any backoff within 40 steps.
            for _ in 0..400 {
                if sim.finished {
                    break;
                }
                sim.ms += 5_000;
                let mut fx = Effects::default();
                sim.driver.tick(sim.now(), &mut fx);
                sim.check(&fx, None);
                sim.message(good, FromWorker::LeaseRequest { slots: 1 }, &HashSet::new());
                if let Some(&attempt) = sim.sessions[good].1.last() {
                    if let Some((message, stored)) = sim.result(attempt) {
                        sim.message(good, message, &stored);
                    }
                }
            }
            prop_assert!(sim.finished || sim.driver.scheduler.is_finished(), "the sweep finished: {:?}", sim.driver.scheduler.counts());
        }
    }
}

/// A point added while the sweep runs is counted before it is planned: one of 4 000 ε × 514
/// one-cell chunks (over two million tasks) is refused in one line, nothing stored, nothing added.
#[test]
fn an_added_point_over_the_task_bound_is_refused_before_it_is_planned() {
    let eps: Vec<String> = (1..=4000).map(|i| format!("{}", i as f64 / 100.0)).collect();
    let text = format!(
        "[[dataset]]\nkind = \"syn\"\nband = 1\n[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\n[heatmap]\nchunk_cells = 1\neps = [{}]\n",
        eps.join(", ")
    );
    let sweep = freqsweep_common::spec::parse(&text, "s.toml").unwrap();
    let from = crate::driver::Restore {
        config: crate::run::default_config(None),
        artifacts: ArtifactDir::new("/nonexistent/artifacts".into()),
        tasks: Vec::new(),
        stored: HashMap::new(),
        first_attempt: 1,
        sweep_id: "t".into(),
        counters: Arc::default(),
    };
    let now = crate::driver::Now { ms: 0, instant: Instant::now(), wall_ms: 0 };
    let (mut driver, _) = Driver::restore(now, from);
    driver.allow_growth(crate::kinds::Planner::new(&sweep), 0);
    let mut fx = crate::driver::Effects::default();
    let started = Instant::now();
    let err = driver.add_points(now, &sweep.points, &mut fx).unwrap_err();
    assert!(err.starts_with("adding 1 points (2056001 tasks) would make the sweep over 2000000 tasks"), "{err}");
    assert!(started.elapsed().as_secs() < 2, "refused without planning");
    assert!(fx.changes.is_empty() && driver.tasks.is_empty(), "nothing stored, nothing added");
}
