//! Load: 1 000 simulated workers (one connection and session each) against one `freqsweep serve`
//! on loopback, running a sweep of 100 425 tasks (195 train tasks, each with 514 one-cell heatmap
//! chunks). Every task is completed exactly once, every result is acknowledged and stored; the
//! coordinator's peak memory and the lease latency (lease request sent → lease received, p50 and
//! p99) are printed. The coordinator logs at `warn` (its info log would be 300 000 lines).
//!
//! `FREQSWEEP_LOAD_WORKERS=N` and `FREQSWEEP_LOAD_POINTS=N` (sweep points; tasks = 515 × points)
//! change the size.

use freqsweep_common::task::TaskSpec;
use freqsweep_coordinator::store::Store;
use freqsweep_coordinator::testing;
use freqsweep_proto::v1::coordinator_client::CoordinatorClient;
use freqsweep_proto::v1::{self as pb, coordinator_message, worker_message};
use freqsweep_tests::binary;
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

fn spec(points: usize) -> String {
    let lrs: Vec<String> = (1..=points).map(|i| format!("{i}e-5")).collect();
    format!(
        r#"name = "load"
[[dataset]]
kind = "syn"
band = 2
train = 96
test = 16
[model]
arch = "tiny"
[train]
lr = [{}]
batch_size = 32
epochs = 1
[heatmap]
eps = [4.0]
images = 8
chunk_cells = 1
"#,
        lrs.join(", ")
    )
}

/// What one simulated worker saw.
#[derive(Default)]
struct Seen {
    completed: usize,
    lease_latencies_us: Vec<u64>,
}

async fn worker(url: String, name: String) -> Result<Seen, String> {
    let mut client = CoordinatorClient::connect(url).await.map_err(|e| e.to_string())?;
    let mut s = testing::open_session(&mut client, &name, Some("right")).await.map_err(|e| e.to_string())?;
    let outputs = testing::upload_simulated_outputs(&mut client, Some("right")).await.map_err(|e| e.to_string())?;
    let mut seen = Seen::default();
    let ask = |s: &testing::SimSession| s.message(worker_message::Body::LeaseRequest(pb::LeaseRequest { slots: 1 }));
    s.tx.send(ask(&s)).await.map_err(|e| e.to_string())?;
    let mut asked = Instant::now();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(60), s.inbound.message()).await;
        let body = next.map_err(|_| "no message for 60 s")?.map_err(|e| e.to_string())?.and_then(|m| m.body);
        match body {
            Some(coordinator_message::Body::Lease(lease)) => {
                seen.lease_latencies_us.push(asked.elapsed().as_micros() as u64);
                let spec: TaskSpec = serde_json::from_str(&lease.task_json).map_err(|e| e.to_string())?;
                let result_json = testing::simulated_result_json(&spec, &name);
                let outputs = testing::outputs_of(spec.kind(), &outputs);
                let result = pb::TaskResult { attempt_id: lease.attempt_id, result_json, outputs, seconds: 0.0 };
                s.tx.send(s.message(worker_message::Body::Result(result))).await.map_err(|e| e.to_string())?;
            }
            Some(coordinator_message::Body::Ack(a)) => {
                if !a.accepted {
                    return Err(format!("result of attempt {} refused", a.attempt_id));
                }
                seen.completed += 1;
                s.tx.send(ask(&s)).await.map_err(|e| e.to_string())?;
                asked = Instant::now();
            }
            Some(coordinator_message::Body::NoWork(n)) => {
                tokio::time::sleep(Duration::from_millis(u64::from(n.retry_after_ms).min(200))).await;
                s.tx.send(ask(&s)).await.map_err(|e| e.to_string())?;
                asked = Instant::now();
            }
            Some(coordinator_message::Body::SweepDone(_)) | None => return Ok(seen),
            Some(_) => {}
        }
    }
}

/// Peak resident memory (`VmHWM`) of a live process, in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[test]
fn a_thousand_workers_complete_a_hundred_thousand_tasks_with_nothing_lost() {
    let (workers, points) = (env_number("FREQSWEEP_LOAD_WORKERS", 1000), env_number("FREQSWEEP_LOAD_POINTS", 195));
    let tasks = points * 515;
    // One descriptor per worker here (its connection) and one in the coordinator, whose gRPC
    // port may use 3/4 of what is left after 128 reserved.
    let descriptors = freqsweep_coordinator::conn::raise_descriptor_limit();
    let needed = (workers as u64 * 4).div_ceil(3) + 256;
    assert!(
        descriptors >= needed,
        "{workers} workers need {needed} open descriptors; the hard limit is {descriptors} (raise it: ulimit -Hn)"
    );
    let dir = tempfile::tempdir().unwrap();
    let spec_path = dir.path().join("load.toml");
    std::fs::write(&spec_path, spec(points)).unwrap();
    let out = dir.path().join("run");
    let mut coordinator = Command::new(binary("freqsweep"))
        .arg("serve")
        .arg(&spec_path)
        .args(["--listen", "127.0.0.1:0", "--out"])
        .arg(&out)
        .env("FREQSWEEP_TOKEN", "right")
        .env("RUST_LOG", "warn,freqsweep::run_cmd=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(coordinator.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("serve logs its address").unwrap();
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = log.clone();
    std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| sink.lock().unwrap().push(l)));
    let pid = coordinator.id();
    let peak = Arc::new(Mutex::new(0.0f64));
    let sampler = {
        let peak = peak.clone();
        std::thread::spawn(move || {
            while let Some(mib) = peak_rss_mib(pid) {
                *peak.lock().unwrap() = mib;
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let url = format!("http://{addr}");
    let seen: Vec<Result<Seen, String>> = runtime.block_on(async {
        let handles: Vec<_> = (0..workers).map(|k| tokio::spawn(worker(url.clone(), format!("sim{k}")))).collect();
        let mut all = Vec::new();
        for h in handles {
            all.push(h.await.unwrap_or_else(|e| Err(e.to_string())));
        }
        all
    });
    let seconds = started.elapsed().as_secs_f64();
    let status = coordinator.wait().unwrap();
    sampler.join().unwrap();
    let errors: Vec<&String> = seen.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(errors.is_empty(), "{} workers failed, first: {:?}", errors.len(), errors.first());
    assert!(status.success(), "serve failed: {:?}", log.lock().unwrap().last());
    let completed: usize = seen.iter().flatten().map(|s| s.completed).sum();
    let mut latencies: Vec<u64> = seen.iter().flatten().flat_map(|s| s.lease_latencies_us.clone()).collect();
    latencies.sort_unstable();
    let busy = seen.iter().flatten().filter(|s| s.completed > 0).count();

    // Nothing lost, nothing twice: every task done by exactly one accepted attempt.
    let (store, writer) = Store::open(&out.join("freqsweep.db")).unwrap();
    let reader = store.reader().unwrap();
    let (rows, attempts) = (reader.tasks().unwrap(), reader.attempts().unwrap());
    drop(reader);
    writer.stop();
    assert_eq!(rows.len(), tasks);
    assert!(rows.iter().all(|t| t.state == "done" && t.result_json.is_some()), "every task done with its result");
    let mut done_per_task = vec![0u32; tasks + 1];
    for a in attempts.iter().filter(|a| a.outcome.as_deref() == Some("done")) {
        done_per_task[a.task_id as usize] += 1;
    }
    assert!(done_per_task[1..].iter().all(|&n| n == 1), "a task completed twice or never");
    assert_eq!(completed, tasks, "acknowledged completions");
    eprintln!(
        "load: {workers} workers ({busy} completed tasks), {tasks} tasks in {seconds:.1} s ({:.0} tasks/s); \
         lease latency p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms over {} leases; coordinator peak RSS {:.0} MiB",
        tasks as f64 / seconds,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0),
        latencies.len(),
        *peak.lock().unwrap()
    );
    assert_eq!(latencies.len(), tasks, "one lease per task: no attempt was lost or re-leased");
}
