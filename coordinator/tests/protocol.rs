//! The session protocol over the wire (a real tonic server on loopback, hand-made clients): a
//! session must present the id and key its registration returned, an id cannot be claimed by a
//! second session, an old protocol version is refused, and a greedy lease request gets one task.

use freqsweep_common::task::TaskSpec;
use freqsweep_coordinator::artifacts::ArtifactDir;
use freqsweep_coordinator::conn::ConnectionLimits;
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

/// A coordinator of `n` empty heatmap tasks serving on loopback, and a client of it (the
/// directory and the store's writer live as long as the test holds them).
struct Started {
    shared: std::sync::Arc<Shared>,
    client: CoordinatorClient<tonic::transport::Channel>,
    url: String,
    _dir: tempfile::TempDir,
    _writer: freqsweep_coordinator::store::StoreWriter,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn start(n: u64) -> Started {
    start_with(n, default_config(None)).await
}

async fn start_with(n: u64, config: freqsweep_coordinator::driver::ServiceConfig) -> Started {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = Store::open(&dir.path().join("freqsweep.db")).unwrap();
    let artifacts = ArtifactDir::new(dir.path().join("artifacts"));
    let shared = Shared::new(config, store, artifacts, tasks(n), HashMap::new(), 1, "p".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(grpc::serve(shared.clone(), listener, stop_rx));
    let client = CoordinatorClient::connect(url.clone()).await.unwrap();
    Started { shared, client, url, _dir: dir, _writer: writer, _stop: stop }
}

/// Whether the coordinator closed `conn` within `within` (end of stream or a reset).
async fn closed_within(conn: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(within, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // The server's HTTP/2 preface to a connection that never sent its own.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_bounded_in_number_and_unauthenticated_ones_are_closed() {
    let mut config = default_config(Some("right".into()));
    let limits =
        ConnectionLimits { max: 4, authenticate_within: Duration::from_secs(1), idle: Duration::from_secs(60) };
    config.connections = Some(limits);
    let Started { shared, mut client, url, _dir, _writer, _stop } = start_with(2, config).await;
    let mut session = testing::open_session(&mut client, "real", Some("right")).await.unwrap();
    let addr = url.trim_start_matches("http://").to_string();
    // Three more connections fill the four; they send nothing (a stray client, or a flood).
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut over = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(closed_within(&mut over, Duration::from_millis(500)).await, "a fifth connection is closed at once");
    for conn in &mut idle {
        assert!(closed_within(conn, Duration::from_secs(5)).await, "no authenticated request within 1 s: closed");
    }
    // The worker's session outlives the deadline (it authenticated), and status answers again.
    let request = worker_message::Body::LeaseRequest(pb::LeaseRequest { slots: 1 });
    session.tx.send(session.message(request)).await.unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), session.inbound.next()).await.unwrap().unwrap().unwrap();
    assert!(matches!(reply.body, Some(coordinator_message::Body::Lease(_))), "{reply:?}");
    let mut fresh = CoordinatorClient::connect(url).await.unwrap();
    let mut request = tonic::Request::new(pb::StatusRequest {});
    request.metadata_mut().insert("authorization", "Bearer right".parse().unwrap());
    let status = fresh.status(request).await.expect("status answers once the idle connections are gone");
    assert_eq!(status.into_inner().workers.len(), shared.snapshot().workers.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_size_limit_closes_the_session_with_a_status_naming_it() {
    let Started { shared, mut client, url: _, _dir, _writer, _stop } = start(2).await;
    let mut session = testing::open_session(&mut client, "big", None).await.unwrap();
    // About 70 MB of metric points in one batch (the limit is 64 MiB).
    let point = testing::f1_point(0.5);
    let points = vec![point; 70_000_000 / 20];
    let batch = pb::MetricBatch { attempt_id: 1, seq: 0, points };
    session.tx.send(session.message(worker_message::Body::Metrics(batch))).await.unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match session.inbound.next().await {
                Some(Ok(_)) => continue,
                Some(Err(status)) => return Some(status),
                None => return None,
            }
        }
    })
    .await
    .expect("the session ends");
    let status = ended.expect("with a status, not a silent end of stream");
    assert_eq!(status.code(), tonic::Code::Aborted, "{status:?}");
    assert!(status.message().contains("could not be read") && status.message().contains("too large"), "{status:?}");
    assert!(shared.snapshot().workers.is_empty(), "the worker left");
    // The coordinator serves on: a new session works.
    testing::open_session(&mut client, "next", None).await.expect("a new session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_bound_to_their_registration() {
    let Started { shared, mut client, url: _, _dir, _writer, _stop } = start(5).await;

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
