//! Coordinator throughput with simulated in-process workers that do no real work, through the real
//! path: tonic over loopback, the scheduler, the SQLite store with every report committed
//! (`synchronous = FULL`) before it is acknowledged.
//!
//! Prints one JSON object (read by `cargo xtask bench`):
//! - `cycles_per_second`: lease + result + ack cycles with 64 simulated workers;
//! - `baseline_cycles_per_second`: the same with one worker, where every report waits for its own
//!   commit (nothing to group) — the cost group commit amortises;
//! - `metric_points_per_second`: points ingested durably (batches of 1 000, 16 workers);
//! - `sessions`, `sessions_seconds`: concurrent worker sessions opened and heard from.

use freqsweep_common::task::TaskSpec;
use freqsweep_coordinator::artifacts::ArtifactDir;
use freqsweep_coordinator::driver::Shared;
use freqsweep_coordinator::graph::PlannedTask;
use freqsweep_coordinator::grpc;
use freqsweep_coordinator::run::default_config;
use freqsweep_coordinator::scheduler::TaskId;
use freqsweep_coordinator::store::Store;
use freqsweep_coordinator::testing;
use freqsweep_proto::v1::coordinator_client::CoordinatorClient;
use freqsweep_proto::v1::{self as pb, coordinator_message, worker_message};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;

/// `n` tasks: train tasks when they stream metric points (only train tasks do), else heatmap chunks.
fn tasks(n: usize, metrics: bool) -> Vec<PlannedTask> {
    let spec =
        if metrics { TaskSpec::Train(testing::sim_train_task()) } else { TaskSpec::Heatmap(testing::empty_chunk()) };
    (0..n)
        .map(|i| PlannedTask {
            id: TaskId(i as u64 + 1),
            key: format!("bench/{i}"),
            point: 0,
            spec: spec.clone(),
            deps: vec![],
            cost: Default::default(),
        })
        .collect()
}

struct Coordinator {
    url: String,
    shared: Arc<Shared>,
    store: Store,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn start(n_tasks: usize, metrics: bool) -> Coordinator {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = Store::open(&dir.path().join("freqsweep.db")).unwrap();
    std::mem::forget(writer); // lives for the whole benchmark
    let planned = tasks(n_tasks, metrics);
    let changes = planned
        .iter()
        .map(|t| freqsweep_coordinator::store::Change::InsertTask {
            id: t.id.0,
            key: t.key.clone(),
            kind: t.kind().as_str().into(),
            spec_json: "{}".into(),
            deps: vec![],
        })
        .collect();
    store.write(changes).unwrap();
    let mut config = default_config(None);
    config.scheduler.lease_timeout = 600_000;
    let shared = Shared::new(
        config,
        store.clone(),
        ArtifactDir::new(dir.path().join("artifacts")),
        planned,
        HashMap::new(),
        1,
        "bench".into(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(grpc::serve(shared.clone(), listener, stop_rx));
    Coordinator { url, shared, store, _dir: dir, _stop: stop }
}

/// One simulated worker: lease, report done at once, wait for the ack, repeat until SweepDone.
/// With `metrics`, each lease also sends one batch of that many points first.
async fn worker(url: String, metrics: usize) -> u64 {
    let mut client = CoordinatorClient::connect(url).await.unwrap();
    let session = testing::open_session(&mut client, "bench", None).await.unwrap();
    let (tx, mut inbound, id) = (session.tx, session.inbound, session.worker_id);
    // Results that fit their tasks: a train result names its two outputs (uploaded once).
    let (result_json, outputs) = if metrics > 0 {
        let outputs = testing::outputs_of(
            freqsweep_common::task::TaskKind::Train,
            &testing::upload_simulated_outputs(&mut client, None).await.unwrap(),
        );
        (testing::train_result_json(&testing::sim_train_task(), "bench"), outputs)
    } else {
        (testing::heatmap_result_json(&testing::empty_chunk(), 1, 0, "bench"), Vec::new())
    };
    let msg = |body| pb::WorkerMessage { worker_id: id.clone(), body: Some(body) };
    tx.send(msg(worker_message::Body::LeaseRequest(pb::LeaseRequest { slots: 1 }))).await.unwrap();
    let point = testing::f1_point(0.5);
    let mut cycles = 0;
    while let Some(Ok(m)) = inbound.next().await {
        match m.body {
            Some(coordinator_message::Body::Lease(lease)) => {
                if metrics > 0 {
                    let batch =
                        pb::MetricBatch { attempt_id: lease.attempt_id, seq: 0, points: vec![point.clone(); metrics] };
                    tx.send(msg(worker_message::Body::Metrics(batch))).await.unwrap();
                }
                let result = pb::TaskResult {
                    attempt_id: lease.attempt_id,
                    result_json: result_json.clone(),
                    outputs: outputs.clone(),
                    seconds: 0.0,
                };
                tx.send(msg(worker_message::Body::Result(result))).await.unwrap();
            }
            Some(coordinator_message::Body::Ack(_)) => {
                cycles += 1;
                tx.send(msg(worker_message::Body::LeaseRequest(pb::LeaseRequest { slots: 1 }))).await.unwrap();
            }
            Some(coordinator_message::Body::NoWork(_)) => {
                tokio::time::sleep(Duration::from_millis(5)).await;
                tx.send(msg(worker_message::Body::LeaseRequest(pb::LeaseRequest { slots: 1 }))).await.unwrap();
            }
            Some(coordinator_message::Body::SweepDone(_)) => break,
            _ => {}
        }
    }
    cycles
}

async fn cycles(n_tasks: usize, workers: usize, metrics: usize) -> (f64, u64, Coordinator) {
    let c = start(n_tasks, metrics > 0).await;
    let started = Instant::now();
    let handles: Vec<_> = (0..workers).map(|_| tokio::spawn(worker(c.url.clone(), metrics))).collect();
    let mut total = 0;
    for h in handles {
        total += h.await.unwrap();
    }
    let mut finished = c.shared.finished();
    while !*finished.borrow() {
        finished.changed().await.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(total as usize, n_tasks, "every task acknowledged once");
    (seconds, total, c)
}

async fn sessions(count: usize) -> f64 {
    let c = start(1, false).await;
    let started = Instant::now();
    let mut streams = Vec::new();
    let channel = tonic::transport::Channel::from_shared(c.url.clone()).unwrap().connect().await.unwrap();
    for _ in 0..count {
        let mut client = CoordinatorClient::new(channel.clone());
        let session = testing::open_session(&mut client, "bench", None).await.unwrap();
        let heartbeat = session.message(worker_message::Body::Heartbeat(pb::Heartbeat::default()));
        session.tx.send(heartbeat).await.unwrap();
        streams.push((session.tx, session.inbound));
    }
    // Wait until the coordinator has heard a heartbeat on every session.
    let mut client = CoordinatorClient::new(channel);
    loop {
        let status = client.status(pb::StatusRequest {}).await.unwrap().into_inner();
        if status.workers.len() == count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    drop(streams);
    seconds
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let (seconds, done, _c) = cycles(40_000, 64, 0).await;
        let cycles_per_second = done as f64 / seconds;
        let (base_seconds, base_done, _b) = cycles(2_000, 1, 0).await;
        let baseline = base_done as f64 / base_seconds;
        let points_per_batch = 1_000;
        let (m_seconds, m_done, m) = cycles(1_000, 16, points_per_batch).await;
        // Every batch was committed before its result was acknowledged (same writer, FIFO).
        let stored = m.store.reader().unwrap().metric_count().unwrap();
        assert_eq!(stored, m_done * points_per_batch as u64, "every metric point stored");
        let points_per_second = stored as f64 / m_seconds;
        let session_count = 1_000;
        let session_seconds = sessions(session_count).await;
        println!(
            "{}",
            serde_json::json!({
                "cycles_per_second": cycles_per_second,
                "baseline_cycles_per_second": baseline,
                "metric_points_per_second": points_per_second,
                "sessions": session_count,
                "sessions_seconds": session_seconds,
            })
        );
    });
}
