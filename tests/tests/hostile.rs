//! A hostile peer during a real sweep: while two real workers run the `demo_small` sweep against
//! `freqsweep serve`, a client holding the token registers and, round after round, reports
//! results, failures and releases for attempts it does not hold (with metric points and a
//! heartbeat claiming them), and opens streams naming the real workers' ids with a guessed key.
//! Not one of its reports is accepted, no stream is attached, and the sweep ends with the
//! fixture's arrays and `results.csv`, byte for byte.

use freqsweep_coordinator::testing;
use freqsweep_proto::v1::coordinator_client::CoordinatorClient;
use freqsweep_proto::v1::{self as pb, coordinator_message, worker_message};
use freqsweep_tests::{assert_matches_demo_small, binary, demo_small, serve, wait_or_kill, Served, PINNED_KERNELS};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the hostile peer did and what it got.
#[derive(Debug, Default)]
struct Forgery {
    rounds: u32,
    reports: u32,
    accepted: u32,
    /// Acknowledgements saying the report was not accepted: proof the reports were processed.
    rejected: u32,
    takeovers: u32,
    takeovers_refused: u32,
}

async fn forge(url: String, stop: Arc<AtomicBool>) -> Forgery {
    let mut seen = Forgery::default();
    let mut client = CoordinatorClient::connect(url).await.expect("connect");
    let session = testing::open_session(&mut client, "forger", Some("right")).await.expect("register");
    let (tx, mut inbound) = (session.tx.clone(), session.inbound);
    let (accepted, rejected) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let reader = {
        let (accepted, rejected) = (accepted.clone(), rejected.clone());
        tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(coordinator_message::Body::Ack(a)) = m.body {
                    let counter = if a.accepted { &accepted } else { &rejected };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let train = testing::train_result_json(&testing::sim_train_task(), "forged");
    let message = |body| pb::WorkerMessage { worker_id: session.worker_id.clone(), body: Some(body) };
    'rounds: while !stop.load(Ordering::Relaxed) {
        seen.rounds += 1;
        for attempt in 1..=40u64 {
            let result =
                pb::TaskResult { attempt_id: attempt, result_json: train.clone(), outputs: vec![], seconds: 0.0 };
            let forged = [
                worker_message::Body::Result(result),
                worker_message::Body::Failure(pb::TaskFailure {
                    attempt_id: attempt,
                    error: "x".into(),
                    retryable: false,
                }),
                worker_message::Body::Release(pb::Release { attempt_id: attempt, reason: "forged".into() }),
            ];
            for body in forged {
                if tx.send(message(body)).await.is_err() {
                    break 'rounds;
                }
                seen.reports += 1;
            }
            let batch = pb::MetricBatch { attempt_id: attempt, seq: 0, points: vec![testing::f1_point(0.0)] };
            let _ = tx.send(message(worker_message::Body::Metrics(batch))).await;
        }
        let claim = pb::Heartbeat { running_attempts: (1..=40).collect(), newest_lease: 40, ..Default::default() };
        let _ = tx.send(message(worker_message::Body::Heartbeat(claim))).await;
        for id in ["w1", "w2", "w3", "w4"] {
            seen.takeovers += 1;
            let guess = testing::attach(&mut client, id, "0123456789abcdef0123456789abcdef", Some("right")).await;
            seen.takeovers_refused += u32::from(guess.is_err());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let the last acknowledgements arrive.
    tokio::time::sleep(Duration::from_millis(300)).await;
    reader.abort();
    seen.accepted = accepted.load(Ordering::Relaxed);
    seen.rejected = rejected.load(Ordering::Relaxed);
    seen
}

#[test]
fn a_forging_peer_changes_nothing_and_the_sweep_matches_the_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let Served { child: mut coordinator, value, lines, .. } =
        serve(&demo_small().join("spec.toml"), &out, &[], "listen=");
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let url = format!("http://{value}");
    let stop = Arc::new(AtomicBool::new(false));
    let forger = {
        let (url, stop) = (url.clone(), stop.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(forge(url, stop))
        })
    };
    // Let the forger register and start before the real workers take the tasks.
    std::thread::sleep(Duration::from_millis(300));
    let mut workers: Vec<std::process::Child> = (0..2)
        .map(|k| {
            Command::new(binary("freqsweep-worker"))
                .args([
                    "--coordinator",
                    &url,
                    "--device",
                    "cpu",
                    "--threads",
                    "1",
                    "--connect-timeout",
                    "30",
                    "--cache-dir",
                ])
                .arg(dir.path().join(format!("cache{k}")))
                .env("FREQSWEEP_TOKEN", "right")
                .envs(PINNED_KERNELS)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut others: Vec<&mut std::process::Child> = workers.iter_mut().collect();
    let status = wait_or_kill(&mut coordinator, Duration::from_secs(300), &mut others, "the sweep did not finish");
    stop.store(true, Ordering::Relaxed);
    let seen = forger.join().unwrap();
    for w in &mut workers {
        let _ = w.wait();
    }
    let log = drain.join().unwrap().join("\n");
    assert!(status.success(), "{}", log.lines().last().unwrap_or(""));
    assert!(seen.rounds >= 2 && seen.reports >= 240, "the forger kept at it: {seen:?}");
    assert_eq!(seen.accepted, 0, "a forged report was accepted: {seen:?}");
    assert!(seen.rejected >= 240, "the coordinator heard and refused the forged reports: {seen:?}");
    assert_eq!(seen.takeovers_refused, seen.takeovers, "a stream took over a worker id: {seen:?}");
    assert!(!log.contains("task failed"), "no task failed");
    assert_matches_demo_small(&out);
}

/// Take a lease, then vanish as a crashed worker does (the stream closes without a report).
async fn take_a_lease_and_die(url: &str, hostname: &str) -> u64 {
    let mut client = CoordinatorClient::connect(url.to_string()).await.expect("connect");
    let mut session = testing::open_session(&mut client, hostname, Some("right")).await.expect("register");
    let ask = session.message(worker_message::Body::LeaseRequest(pb::LeaseRequest { slots: 1 }));
    session.tx.send(ask).await.expect("send");
    loop {
        let m = tokio::time::timeout(Duration::from_secs(30), session.inbound.message()).await;
        match m.expect("no lease within 30 s").expect("stream").expect("open").body {
            Some(coordinator_message::Body::Lease(l)) => return l.attempt_id,
            Some(coordinator_message::Body::NoWork(_)) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let ask = session.message(worker_message::Body::LeaseRequest(pb::LeaseRequest { slots: 1 }));
                session.tx.send(ask).await.expect("send");
            }
            _ => {}
        }
    }
}

#[test]
fn a_task_that_takes_down_every_worker_it_runs_on_fails_after_max_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    std::fs::write(&spec, freqsweep_tests::tiny_spec("crasher", "0.003")).unwrap();
    let out = dir.path().join("run");
    let Served { child: mut coordinator, value, lines, .. } = serve(&spec, &out, &[], "listen=");
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let url = format!("http://{value}");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // The train task is the only ready one: each of three workers takes it and dies with it.
    let attempts: Vec<u64> = (1..=3).map(|k| rt.block_on(take_a_lease_and_die(&url, &format!("victim{k}")))).collect();
    assert_eq!(attempts.len(), 3);
    // The last victim's connection closes with its process (here: with the runtime).
    drop(rt);
    let status = wait_or_kill(&mut coordinator, Duration::from_secs(60), &mut [], "the sweep did not end");
    let log = drain.join().unwrap().join("\n");
    assert!(!status.success(), "a failed task fails the sweep: {log}");
    let lost: Vec<&str> = log.lines().filter(|l| l.contains("attempt lost with its worker")).collect();
    assert_eq!(lost.len(), 3, "every loss is logged: {log}");
    let (store, writer) = freqsweep_coordinator::store::Store::open(&out.join("freqsweep.db")).unwrap();
    let tasks = store.reader().unwrap().tasks().unwrap();
    writer.stop();
    let train = tasks.iter().find(|t| t.kind == "train").unwrap();
    let error = train.error.clone().unwrap_or_default();
    assert_eq!((train.state.as_str(), train.attempts), ("failed", 3), "{error}");
    assert!(error.contains("died, was killed or went silent while running it (3 of 3 attempts)"), "{error}");
    let heatmaps: Vec<&str> = tasks.iter().filter(|t| t.kind == "heatmap").map(|t| t.state.as_str()).collect();
    assert!(!heatmaps.is_empty() && heatmaps.iter().all(|s| *s == "cancelled"), "{heatmaps:?}");
}
