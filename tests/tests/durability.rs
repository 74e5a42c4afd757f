//! Durability: `freqsweep serve` is killed (SIGKILL) at seeded random moments while four
//! simulated workers stream metric points as fast as it takes them and report results. After
//! every kill the store is opened and every result the coordinator had acknowledged is there —
//! the task done, its result byte for byte, and every metric point its attempt sent before the
//! result (the acknowledgement follows the commit of everything before it on the session). Then
//! the coordinator is restarted on the same directory, the workers find it again, and the sweep
//! ends complete.
//!
//! `FREQSWEEP_DURABILITY_SEED=N` picks other kill times (default 1), `FREQSWEEP_DURABILITY_KILLS=N`
//! kills more often (default 6).

use freqsweep_common::task::TaskSpec;
use freqsweep_coordinator::store::Store;
use freqsweep_coordinator::testing;
use freqsweep_proto::v1::coordinator_client::CoordinatorClient;
use freqsweep_proto::v1::{self as pb, coordinator_message, worker_message};
use freqsweep_tests::{serve, tiny_spec, Served};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Metric batches per train attempt and points per batch.
const BATCHES: usize = 40;
const POINTS: usize = 500;
/// Train tasks (each with two heatmap chunks).
const TRAIN_TASKS: usize = 60;

/// A result the coordinator acknowledged as accepted, and what its attempt had sent before it.
#[derive(Clone, Debug)]
struct Acked {
    task_id: u64,
    result_json: String,
    points: usize,
}

#[derive(Default)]
struct Shared {
    url: Mutex<String>,
    acked: Mutex<Vec<Acked>>,
    stop: AtomicBool,
}

fn points_for(task: &freqsweep_common::task::TrainTask, batch: usize) -> Vec<pb::MetricPoint> {
    let set = task.train.test_sets[0].to_string();
    (0..POINTS)
        .map(|i| pb::MetricPoint {
            name: "f1".into(),
            epoch: 1.0,
            step: (batch * POINTS + i) as u64,
            test_set: set.clone(),
            class_index: (i % task.train.classes) as i32,
            value: 0.5,
        })
        .collect()
}

/// One session's life: ask, do the task's reporting, wait for the acknowledgement; on any error
/// (the coordinator died) return, and the caller connects again.
async fn session(shared: &Shared, name: &str) -> Result<bool, String> {
    let url = shared.url.lock().unwrap().clone();
    let mut client = CoordinatorClient::connect(url).await.map_err(|e| e.to_string())?;
    let mut s = testing::open_session(&mut client, name, Some("right")).await.map_err(|e| e.to_string())?;
    let outputs = testing::upload_simulated_outputs(&mut client, Some("right")).await.map_err(|e| e.to_string())?;
    let send = |s: &testing::SimSession, body| {
        let m = s.message(body);
        let tx = s.tx.clone();
        async move { tx.send(m).await.map_err(|e| e.to_string()) }
    };
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return Ok(true);
        }
        send(&s, worker_message::Body::LeaseRequest(pb::LeaseRequest { slots: 1 })).await?;
        let lease = loop {
            let next = tokio::time::timeout(Duration::from_secs(20), s.inbound.message()).await;
            match next.map_err(|_| "silent coordinator")?.map_err(|e| e.to_string())?.and_then(|m| m.body) {
                Some(coordinator_message::Body::Lease(l)) => break l,
                Some(coordinator_message::Body::NoWork(_)) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    send(&s, worker_message::Body::LeaseRequest(pb::LeaseRequest { slots: 1 })).await?;
                }
                Some(coordinator_message::Body::SweepDone(_)) => return Ok(true),
                Some(_) => {}
                None => return Err("stream ended".into()),
            }
        };
        let spec: TaskSpec = serde_json::from_str(&lease.task_json).map_err(|e| e.to_string())?;
        // A train task streams its metric history first; every kind then reports a result that fits.
        let mut points = 0;
        if let TaskSpec::Train(t) = &spec {
            for batch in 0..BATCHES {
                let metrics =
                    pb::MetricBatch { attempt_id: lease.attempt_id, seq: batch as u64, points: points_for(t, batch) };
                send(&s, worker_message::Body::Metrics(metrics)).await?;
            }
            points = BATCHES * POINTS;
        }
        let result_json = testing::simulated_result_json(&spec, name);
        let outputs = testing::outputs_of(spec.kind(), &outputs);
        let result =
            pb::TaskResult { attempt_id: lease.attempt_id, result_json: result_json.clone(), outputs, seconds: 0.1 };
        send(&s, worker_message::Body::Result(result)).await?;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(20), s.inbound.message()).await;
            match next.map_err(|_| "silent coordinator")?.map_err(|e| e.to_string())?.and_then(|m| m.body) {
                Some(coordinator_message::Body::Ack(a)) if a.attempt_id == lease.attempt_id => {
                    if a.accepted {
                        shared.acked.lock().unwrap().push(Acked { task_id: lease.task_id, result_json, points });
                    }
                    break;
                }
                Some(coordinator_message::Body::SweepDone(_)) => return Ok(true),
                Some(_) => {}
                None => return Err("stream ended".into()),
            }
        }
    }
}

async fn worker(shared: Arc<Shared>, name: String) {
    while !shared.stop.load(Ordering::Relaxed) {
        let r = session(&shared, &name).await;
        match r {
            Ok(true) => return,
            Ok(false) | Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Every acknowledged result is in the store with every point sent before it; returns how many
/// were checked.
fn check_store(out: &std::path::Path, acked: &[Acked]) -> usize {
    let (store, writer) = Store::open(&out.join("freqsweep.db")).expect("the store opens after a SIGKILL");
    let reader = store.reader().unwrap();
    let tasks = reader.tasks().unwrap();
    for a in acked {
        let task = tasks.iter().find(|t| t.id == a.task_id).expect("the task");
        assert_eq!(task.state, "done", "acknowledged {} ({}) is not done in the store", task.id, task.key);
        assert_eq!(task.result_json.as_deref(), Some(a.result_json.as_str()), "the result of {}", task.key);
        let points = reader.metrics(a.task_id).unwrap().len();
        assert_eq!(points, a.points, "metric points of {} in the store", task.key);
    }
    drop(reader);
    writer.stop();
    acked.len()
}

#[test]
fn every_acknowledged_record_survives_a_coordinator_killed_at_random_moments() {
    let seed: u64 = std::env::var("FREQSWEEP_DURABILITY_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let kills: u32 = std::env::var("FREQSWEEP_DURABILITY_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(6);
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    let lrs: Vec<String> = (1..=TRAIN_TASKS).map(|i| format!("{}e-4", i)).collect();
    std::fs::write(&spec, tiny_spec("durability", &format!("[{}]", lrs.join(", ")))).unwrap();
    let out = dir.path().join("run");
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let start = |out: &std::path::Path| {
        let Served { child, value, lines, .. } = serve(&spec, out, &[], "listen=");
        let sink = log.clone();
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| sink.lock().unwrap().push(l)));
        (child, format!("http://{value}"))
    };
    let (mut coordinator, url) = start(&out);
    let shared = Arc::new(Shared { url: Mutex::new(url), ..Default::default() });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let workers: Vec<_> = (0..4).map(|k| runtime.spawn(worker(shared.clone(), format!("sim{k}")))).collect();
    let mut state = seed;
    let mut checked = Vec::new();
    for _ in 0..kills {
        // SplitMix64 step: a kill 100–600 ms into this coordinator's life.
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let z = (state ^ (state >> 31)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let acked_before = shared.acked.lock().unwrap().len();
        std::thread::sleep(Duration::from_millis(100 + (z >> 33) % 500));
        // On a loaded machine a life of 600 ms may end before its first acknowledgement, and a
        // kill then proves nothing: let each life acknowledge something first (up to 10 s).
        let waited = std::time::Instant::now();
        while shared.acked.lock().unwrap().len() == acked_before && waited.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        if coordinator.try_wait().unwrap().is_some() {
            break;
        }
        coordinator.kill().unwrap();
        let _ = coordinator.wait();
        let acked = shared.acked.lock().unwrap().clone();
        checked.push(check_store(&out, &acked));
        let (next, url) = start(&out);
        coordinator = next;
        *shared.url.lock().unwrap() = url;
    }
    let started = std::time::Instant::now();
    while coordinator.try_wait().unwrap().is_none() && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if coordinator.try_wait().unwrap().is_none() {
        let _ = coordinator.kill();
        let log = log.lock().unwrap();
        panic!("the sweep did not finish in 60 s:\n{}", log[log.len().saturating_sub(30)..].join("\n"));
    }
    let status = coordinator.wait().unwrap();
    shared.stop.store(true, Ordering::Relaxed);
    for w in workers {
        runtime.block_on(async { tokio::time::timeout(Duration::from_secs(10), w).await }).ok();
    }
    assert!(status.success(), "the last coordinator failed");
    let acked = shared.acked.lock().unwrap().clone();
    let total = check_store(&out, &acked);
    eprintln!(
        "durability seed {seed}: {} kills; acknowledged results checked after each: {checked:?}; {total} at the end",
        checked.len()
    );
    assert!(checked.len() >= 3, "the sweep ended before the kills: {checked:?}");
    assert!(checked.iter().any(|&n| n > 0), "no kill came after an acknowledgement: {checked:?}");
    // A result committed just before a kill may never have been acknowledged (the process died
    // before sending it): its task is done in the store and not run again. Nothing is done twice.
    let mut ids: Vec<u64> = acked.iter().map(|a| a.task_id).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), total, "a task was acknowledged twice");
    let (store, writer) = Store::open(&out.join("freqsweep.db")).unwrap();
    let tasks = store.reader().unwrap().tasks().unwrap();
    writer.stop();
    assert_eq!(tasks.len(), 3 * TRAIN_TASKS);
    assert!(tasks.iter().all(|t| t.state == "done"), "every task done by the end");
}
