//! A backup attempt through the real service on loopback: a fast and a slow simulated worker
//! (tonic sessions, no real work), the slow one straggling on the last task. The fast one gets a
//! backup lease, its result wins and is acknowledged, the slow one receives a Cancel and its late
//! result is refused, and the store holds one result, both attempts (one marked as the backup),
//! and only the winner's metric points. Status shows the measured throughput.

use freqsweep_common::task::TaskSpec;
use freqsweep_coordinator::artifacts::ArtifactDir;
use freqsweep_coordinator::driver::Shared;
use freqsweep_coordinator::graph::PlannedTask;
use freqsweep_coordinator::grpc;
use freqsweep_coordinator::run::default_config;
use freqsweep_coordinator::scheduler::{Cost, CostClass, TaskId};
use freqsweep_coordinator::store::{Change, Store};
use freqsweep_coordinator::testing;
use freqsweep_proto::v1::coordinator_client::CoordinatorClient;
use freqsweep_proto::v1::{self as pb, coordinator_message, worker_message};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

fn planned(n: u64) -> Vec<PlannedTask> {
    (1..=n)
        .map(|i| PlannedTask {
            id: TaskId(i),
            key: format!("race/{i}"),
            point: 0,
            spec: TaskSpec::Train(testing::sim_train_task()),
            deps: vec![],
            cost: Cost { class: CostClass::new("train/tiny"), units: 100.0 },
        })
        .collect()
}

struct Session {
    id: String,
    /// The outputs every train result names (uploaded once).
    outputs: Vec<pb::ArtifactRef>,
    tx: mpsc::Sender<pb::WorkerMessage>,
    inbound: tonic::Streaming<pb::CoordinatorMessage>,
}

impl Session {
    async fn open(url: &str) -> Session {
        let mut client = CoordinatorClient::connect(url.to_string()).await.unwrap();
        let s = testing::open_session(&mut client, "sim", None).await.unwrap();
        let outputs = testing::outputs_of(
            freqsweep_common::task::TaskKind::Train,
            &testing::upload_simulated_outputs(&mut client, None).await.unwrap(),
        );
        Session { id: s.worker_id, outputs, tx: s.tx, inbound: s.inbound }
    }

    async fn send(&self, body: worker_message::Body) {
        self.tx.send(pb::WorkerMessage { worker_id: self.id.clone(), body: Some(body) }).await.unwrap();
    }

    async fn next(&mut self) -> coordinator_message::Body {
        let m = tokio::time::timeout(Duration::from_secs(10), self.inbound.next()).await.expect("a message in time");
        m.expect("stream open").expect("no error").body.expect("a body")
    }

    /// Ask until a lease comes (NoWork: ask again shortly).
    async fn lease(&mut self) -> pb::Lease {
        for _ in 0..500 {
            self.send(worker_message::Body::LeaseRequest(pb::LeaseRequest { slots: 1 })).await;
            match self.next().await {
                coordinator_message::Body::Lease(l) => return l,
                coordinator_message::Body::NoWork(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("no lease in 500 requests");
    }

    async fn metric(&self, attempt: u64, value: f64) {
        let point = testing::f1_point(value);
        self.send(worker_message::Body::Metrics(pb::MetricBatch { attempt_id: attempt, seq: 0, points: vec![point] }))
            .await;
    }

    async fn finish(&mut self, attempt: u64, by: &str) -> bool {
        let result = pb::TaskResult {
            attempt_id: attempt,
            result_json: testing::train_result_json(&testing::sim_train_task(), by),
            outputs: self.outputs.clone(),
            seconds: 0.0,
        };
        self.send(worker_message::Body::Result(result)).await;
        loop {
            match self.next().await {
                coordinator_message::Body::Ack(a) if a.attempt_id == attempt => return a.accepted,
                coordinator_message::Body::SweepDone(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_worker_backs_up_a_straggler_and_wins() {
    // The service's log lines (backup started, loser cancelled) show with `--nocapture`.
    let _ = tracing_subscriber::fmt().with_test_writer().try_init();
    let dir = tempfile::tempdir().unwrap();
    let (store, _writer) = Store::open(&dir.path().join("freqsweep.db")).unwrap();
    let tasks = planned(2);
    let inserts = tasks
        .iter()
        .map(|t| Change::InsertTask {
            id: t.id.0,
            key: t.key.clone(),
            kind: "train".into(),
            spec_json: "{}".into(),
            deps: vec![],
        })
        .collect();
    store.write(inserts).unwrap();
    let mut config = default_config(None);
    // Millisecond tasks: a gain of 150 ms is worth a backup here.
    config.scheduler.speculation.min_gain = 150;
    let artifacts = ArtifactDir::new(dir.path().join("artifacts"));
    let shared = Shared::new(config, store.clone(), artifacts, tasks, HashMap::new(), 1, "race".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(grpc::serve(shared.clone(), listener, stop_rx));

    // The fast worker finishes task 1 at once: its measured rate is the fleet's prior too.
    let mut fast = Session::open(&url).await;
    let mut slow = Session::open(&url).await;
    let first = fast.lease().await;
    assert!(fast.finish(first.attempt_id, "fast").await);
    // The slow worker takes the last task and sits on it, having streamed one point.
    let straggling = slow.lease().await;
    assert_ne!(straggling.task_id, first.task_id);
    slow.metric(straggling.attempt_id, 0.1).await;
    // Once it is well past its expected end, the idle fast worker gets a backup of it.
    let backup = fast.lease().await;
    assert_eq!(backup.task_id, straggling.task_id);
    assert!(backup.attempt_id > straggling.attempt_id);
    fast.metric(backup.attempt_id, 0.9).await;
    assert!(fast.finish(backup.attempt_id, "fast").await, "the first result wins");
    match slow.next().await {
        coordinator_message::Body::Cancel(c) => {
            assert_eq!(c.attempt_id, straggling.attempt_id);
            assert_eq!(c.reason, format!("attempt {} finished first", backup.attempt_id));
        }
        other => panic!("expected a cancel, got {other:?}"),
    }
    assert!(!slow.finish(straggling.attempt_id, "slow").await, "the loser's late result is refused");

    let reader = store.reader().unwrap();
    let task = reader.tasks().unwrap().into_iter().find(|t| t.id == straggling.task_id).unwrap();
    assert_eq!((task.state.as_str(), task.attempts), ("done", 0), "done once; a backup is no failure");
    assert_eq!(task.result_json, Some(testing::train_result_json(&testing::sim_train_task(), "fast")));
    let attempts = reader.attempts().unwrap();
    let summary: Vec<(u64, bool, Option<&str>)> = attempts
        .iter()
        .filter(|a| a.task_id == straggling.task_id)
        .map(|a| (a.id, a.backup, a.outcome.as_deref()))
        .collect();
    assert_eq!(summary, [(straggling.attempt_id, false, Some("superseded")), (backup.attempt_id, true, Some("done"))]);
    let values: Vec<f64> = reader.metrics(straggling.task_id).unwrap().iter().map(|p| p.value).collect();
    assert_eq!(values, [0.9], "only the winner's points remain");

    let mut client = CoordinatorClient::connect(url).await.unwrap();
    let status = client.status(pb::StatusRequest {}).await.unwrap().into_inner();
    let fast_row = status.workers.iter().find(|w| w.worker_id == fast.id).unwrap();
    assert!(fast_row.measured.get("train/tiny").is_some_and(|r| *r > 0.0), "{:?}", fast_row.measured);
}
