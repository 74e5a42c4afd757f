//! The session protocol over the wire (a real tonic server on loopback, hand-made clients): a
//! session must present the id and key its registration returned, an id cannot be claimed by a
//! second session, an old protocol version is refused, and a greedy lease request gets one task.

use freqsweep_common::task::TaskSpec;
use freqsweep_coordinator::artifacts::ArtifactDir;
use freqsweep_coordinator::driver::Shared;
use freqsweep_coordinator::graph::PlannedTask;
use freqsweep_coordinator::grpc;
use freqsweep_coordinator::run::default_config;
use freqsweep_coordinator::scheduler::{Cost, TaskId};
use freqsweep_coordinator::store::Store;
use freqsweep_coordinator::testing;
use freqsweep_proto::v1::coordinator_client::CoordinatorClient;
use freqsweep_proto::v1::{self as pb, coordinator_message, worker_message};
use std::collections::HashMap;
use std::time::Duration;
use tokio_stream::StreamExt;

fn tasks(n: u64) -> Vec<PlannedTask> {
    let spec = TaskSpec::Heatmap(testing::empty_chunk());
    (1..=n)
        .map(|i| PlannedTask {
            id: TaskId(i),
            key: format!("p/{i}"),
            point: 0,
            spec: spec.clone(),
            deps: vec![],
            cost: Cost::default(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_bound_to_their_registration() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _writer) = Store::open(&dir.path().join("freqsweep.db")).unwrap();
    let artifacts = ArtifactDir::new(dir.path().join("artifacts"));
    let shared = Shared::new(default_config(None), store, artifacts, tasks(5), HashMap::new(), 1, "p".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (_stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(grpc::serve(shared.clone(), listener, stop_rx));
    let mut client = CoordinatorClient::connect(url).await.unwrap();

    let old = client.register(pb::RegisterRequest { protocol_version: 1, ..Default::default() }).await.unwrap_err();
    assert_eq!(old.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        old.message(),
        format!("protocol version 1 but this coordinator speaks {}", freqsweep_proto::PROTOCOL_VERSION)
    );

    let mut real = testing::open_session(&mut client, "real", None).await.unwrap();
    // Without the key, with a wrong one, or with the right one a second time: refused, one line.
    let refusals = [
        testing::attach(&mut client, &real.worker_id, "", None).await.unwrap_err(),
        testing::attach(&mut client, &real.worker_id, "0123456789abcdef0123456789abcdef", None).await.unwrap_err(),
        testing::attach(&mut client, &real.worker_id, &real.session_key, None).await.unwrap_err(),
        testing::attach(&mut client, "w999", &real.session_key, None).await.unwrap_err(),
    ];
    let messages: Vec<String> = refusals.iter().map(|s| format!("{:?}: {}", s.code(), s.message())).collect();
    assert_eq!(
        messages,
        [
            format!("FailedPrecondition: wrong session key for {}: register first", real.worker_id),
            format!("FailedPrecondition: wrong session key for {}: register first", real.worker_id),
            format!("FailedPrecondition: {} already has a session", real.worker_id),
            "FailedPrecondition: unknown worker id: register first".to_string(),
        ]
    );

    // The real session still works, and asking for every task gets one.
    let request = worker_message::Body::LeaseRequest(pb::LeaseRequest { slots: u32::MAX });
    real.tx.send(real.message(request)).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), real.inbound.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(first.body, Some(coordinator_message::Body::Lease(_))), "{first:?}");
    let snapshot = shared.snapshot();
    assert_eq!(snapshot.tasks_by_state["running"], 1, "one lease per worker, however many slots it asks for");
    assert_eq!(snapshot.tasks_by_state["ready"], 4);
    assert_eq!(snapshot.workers.len(), 1, "the refused sessions left the real worker alone");
}
