//! Scaling: the wall time of one real sweep with 1, 2, 4, 8 and 16 simulated workers on loopback,
//! lease latency under 1 000 sessions, and the coordinator's resident memory per 100 000 tasks.
//!
//! The sweep is planned from a spec (`run::open`, as `freqsweep serve` does: store, artifacts,
//! TensorBoard follower) and served by `grpc::serve` with the default service settings. Only the
//! worker engine is simulated: per lease a worker downloads the inputs it does not hold through
//! `DownloadArtifact` (verified, cached per worker; its own outputs are kept in its cache, and the
//! cache is announced at registration, as `freqsweep-worker` does), sleeps for the task's work,
//! uploads a train task's two outputs (random bytes of a realistic size) in 1 MiB chunks, and
//! reports a result the coordinator's checks accept and merge. Heartbeats, `NoWork` retries and
//! cancellations follow the real worker's loop.
//!
//! Definitions (all from the sleeps the workers actually made in that run):
//! - `work`: the sum of every attempt's sleep;
//! - `ideal` = max(work / workers, critical path), the critical path being the longest train
//!   sleep + chunk sleep of one point; `efficiency` = ideal / measured;
//! - `schedule`: the makespan of a zero-overhead greedy list schedule of the same tasks with the
//!   same durations on the same number of workers (trains first, a chunk ready when its train
//!   ends): what the dependency graph allows at best, since no chunk can start before its train;
//! - `overhead per task` = workers × (measured − schedule) / tasks: worker time per task spent on
//!   neither simulated work nor idleness the graph forces (lease round trips, downloads, uploads,
//!   `NoWork` waits, commits before acks, merging);
//! - downloads: bytes each worker fetched; `minimum` = per worker, the distinct inputs of the tasks
//!   it ran that it did not produce itself (the cache's job), summed; `floor` = (workers −
//!   points)⁺ × model size, what perfect locality could reach (every worker must run chunks, and
//!   only the trainer of a point holds its model without downloading).
//!
//! Also measured: the 16-worker sweep once more with `NoWork`'s retry delay at 50 ms instead of
//! the default 500 ms (`w16_retry50_*`), to show what the idle poll costs; lease latency
//! (LeaseRequest → Lease) with 1 000 sessions open, all leasing at once (three rounds of lease,
//! result, ack) and one more session leasing alone; resident memory (`/proc/self/statm`) added by
//! `run::open` of a 100 152-task sweep, in a fresh child process.
//!
//! Prints one JSON object (read by `cargo xtask bench scaling`).

use freqsweep_common::task::{TaskKind, TaskSpec, CHECKPOINT_OUTPUT, MODEL_OUTPUT};
use freqsweep_coordinator::artifacts::ArtifactDir;
use freqsweep_coordinator::driver::Shared;
use freqsweep_coordinator::graph::PlannedTask;
use freqsweep_coordinator::grpc;
use freqsweep_coordinator::run::{self, default_config};
use freqsweep_coordinator::scheduler::TaskId;
use freqsweep_coordinator::store::Store;
use freqsweep_coordinator::testing;
use freqsweep_proto::v1::coordinator_client::CoordinatorClient;
use freqsweep_proto::v1::{self as pb, coordinator_message, worker_message};
use serde_json::json;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

/// The sweep: 4 grid points (Syn_1..Syn_4, tiny CNN), one ε, chunks of 8 cells: 4 train tasks and
/// 4 × 65 heatmap chunks (514 cells per map), each chunk depending on its point's train task and
/// taking its `model` output as input.
const SWEEP: &str = "[[dataset]]\nkind = \"syn\"\nband = [1, 2, 3, 4]\ntrain = 64\ntest = 32\n[model]\narch = \"tiny\"\n[train]\nlr = 0.001\nbatch_size = 16\nepochs = 1\n[heatmap]\neps = 4.0\nchunk_cells = 8\n";
const CHUNK_CELLS: usize = 8;
/// Simulated work: a train task, and a chunk of `CHUNK_CELLS` cells (a chunk's sleep is
/// proportional to its cells: the last chunk of a map has 2).
const TRAIN_MS: u64 = 1_000;
const CHUNK_MS: u64 = 100;
/// A train task's outputs: the weights (what a heatmap chunk downloads) and the full checkpoint
/// with Adam's two moments (three times the weights).
const MODEL_BYTES: usize = 3 << 19;
const CHECKPOINT_BYTES: usize = 9 << 19;
const UPLOAD_CHUNK: usize = 1 << 20;
const WORKER_COUNTS: [usize; 5] = [1, 2, 4, 8, 16];

const SESSIONS: usize = 1_000;
const BURST_ROUNDS: usize = 3;
const QUIET_LEASES: usize = 200;

fn page_bytes() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 {
        page as u64
    } else {
        4096
    }
}

/// Resident set size of this process (`/proc/self/statm`, second field, in pages).
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("statm has a resident field");
    pages * page_bytes()
}

/// Deterministic bytes that do not compress or repeat across tasks (splitmix64 of `seed`).
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    out.truncate(len);
    out
}

// ------------------------------------------------------------------ the simulated worker

/// What one simulated worker did in one sweep.
#[derive(Default)]
struct WorkerStats {
    /// Bytes fetched with `DownloadArtifact`.
    downloaded: u64,
    /// Inputs of the tasks it ran that it did not produce itself: digest → size.
    needed: HashMap<String, u64>,
    /// Per finished attempt: the task and how long the worker actually slept for it.
    slept: Vec<(u64, Duration)>,
    leases: usize,
    no_work: usize,
    /// Time spent waiting after `NoWork` before asking again, downloading and uploading.
    no_work_wait: Duration,
    download_time: Duration,
    upload_time: Duration,
}

async fn upload(client: &mut CoordinatorClient<Channel>, name: &str, data: &[u8]) -> pb::ArtifactRef {
    let reference = pb::ArtifactRef {
        name: name.into(),
        digest: freqsweep_common::digest::of_bytes(data),
        size: data.len() as u64,
    };
    let chunks: Vec<pb::ArtifactChunk> = data
        .chunks(UPLOAD_CHUNK)
        .enumerate()
        .map(|(i, part)| pb::ArtifactChunk {
            artifact: (i == 0).then(|| reference.clone()),
            offset: (i * UPLOAD_CHUNK) as u64,
            data: part.to_vec(),
        })
        .collect();
    client.upload_artifact(tokio_stream::iter(chunks)).await.expect("upload accepted");
    reference
}

/// Fetch `artifact` and check its digest and size, as `freqsweep-worker` does.
async fn download(client: &mut CoordinatorClient<Channel>, artifact: &pb::ArtifactRef) -> u64 {
    let request = pb::DownloadRequest { digest: artifact.digest.clone(), offset: 0 };
    let mut stream = client.download_artifact(request).await.expect("download starts").into_inner();
    let mut hasher = freqsweep_common::digest::Hasher::default();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("download chunk");
        hasher.update(&chunk.data);
        size += chunk.data.len() as u64;
    }
    assert_eq!((hasher.finish(), size), (artifact.digest.clone(), artifact.size), "download of {}", artifact.name);
    size
}

/// The simulated work of a task, proportional to its size.
fn work_of(spec: &TaskSpec) -> Duration {
    match spec {
        TaskSpec::Train(_) => Duration::from_millis(TRAIN_MS),
        TaskSpec::Heatmap(h) => Duration::from_micros(CHUNK_MS * 1_000 * h.cells.len() as u64 / CHUNK_CELLS as u64),
        other => panic!("the scaling sweep plans no {} tasks", other.kind().as_str()),
    }
}

struct Running {
    attempt: u64,
    task_id: u64,
    spec: TaskSpec,
    started: Instant,
    until: tokio::time::Instant,
}

/// A finished attempt's result and outputs: a training attempt uploads a random checkpoint and
/// model (held in `cache` from then on), a heatmap attempt uploads nothing.
async fn result_of(
    client: &mut CoordinatorClient<Channel>,
    r: &Running,
    stats: &mut WorkerStats,
    cache: &mut HashSet<String>,
) -> (String, Vec<pb::ArtifactRef>) {
    match &r.spec {
        TaskSpec::Train(t) => {
            let checkpoint = random_bytes(r.attempt * 2, CHECKPOINT_BYTES);
            let model = random_bytes(r.attempt * 2 + 1, MODEL_BYTES);
            let uploading = Instant::now();
            let outputs =
                vec![upload(client, CHECKPOINT_OUTPUT, &checkpoint).await, upload(client, MODEL_OUTPUT, &model).await];
            stats.upload_time += uploading.elapsed();
            cache.extend(outputs.iter().map(|o| o.digest.clone()));
            (testing::train_result_json(t, "sim"), outputs)
        }
        TaskSpec::Heatmap(h) => {
            let images = if h.target.images > 0 { h.target.images.min(32) } else { 32 };
            (testing::heatmap_result_json(h, images, 0, "sim"), Vec::new())
        }
        other => panic!("no {} tasks here", other.kind().as_str()),
    }
}

async fn sim_worker(channel: Channel, index: usize) -> WorkerStats {
    let mut client = CoordinatorClient::new(channel).max_decoding_message_size(64 << 20);
    let mut stats = WorkerStats::default();
    // Digests this worker holds: downloaded inputs and its own outputs.
    let mut cache: HashSet<String> = HashSet::new();
    let register = pb::RegisterRequest {
        protocol_version: freqsweep_proto::PROTOCOL_VERSION,
        hostname: format!("sim{index}"),
        cached_artifacts: cache.iter().cloned().collect(),
        ..Default::default()
    };
    let reply = client.register(register).await.expect("registered").into_inner();
    let (tx, mut inbound) =
        testing::attach(&mut client, &reply.worker_id, &reply.session_key, None).await.expect("session opened");
    let msg = |body| pb::WorkerMessage { worker_id: String::new(), body: Some(body) };
    let lease_request = || msg(worker_message::Body::LeaseRequest(pb::LeaseRequest { slots: 1 }));
    let mut heartbeat = tokio::time::interval(Duration::from_millis(u64::from(reply.heartbeat_interval_ms.max(100))));
    let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
    let mut lease_at: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
    let mut running: Option<Running> = None;
    let mut newest_lease = 0;
    let mut idle_since: Option<Instant> = None;
    loop {
        if lease_at.is_some_and(|at| at <= tokio::time::Instant::now()) {
            if let Some(since) = idle_since.take() {
                stats.no_work_wait += since.elapsed();
            }
            if running.is_none() {
                tx.send(lease_request()).await.expect("session open");
            }
            lease_at = None;
        }
        let wake = running.as_ref().map(|r| r.until).into_iter().chain(lease_at).min().unwrap_or_else(far);
        tokio::select! {
            message = inbound.next() => {
                let Some(Ok(message)) = message else { break };
                match message.body {
                    Some(coordinator_message::Body::Lease(lease)) => {
                        stats.leases += 1;
                        newest_lease = newest_lease.max(lease.attempt_id);
                        assert!(running.is_none(), "one lease at a time");
                        let fetching = Instant::now();
                        for input in &lease.inputs {
                            if !cache.contains(&input.digest) {
                                stats.downloaded += download(&mut client, input).await;
                                cache.insert(input.digest.clone());
                            }
                        }
                        stats.download_time += fetching.elapsed();
                        let spec: TaskSpec = serde_json::from_str(&lease.task_json).expect("a task spec");
                        for input in &lease.inputs {
                            stats.needed.entry(input.digest.clone()).or_insert(input.size);
                        }
                        let work = work_of(&spec);
                        let started = Instant::now();
                        running = Some(Running {
                            attempt: lease.attempt_id,
                            task_id: lease.task_id,
                            spec,
                            started,
                            until: tokio::time::Instant::from_std(started) + work,
                        });
                    }
                    // A cancelled attempt's sleep so far was work too (wasted, never the ideal's).
                    Some(coordinator_message::Body::Cancel(cancel))
                        if running.as_ref().is_some_and(|r| r.attempt == cancel.attempt_id) =>
                    {
                        if let Some(r) = running.take() {
                            stats.slept.push((r.task_id, r.started.elapsed()));
                        }
                        lease_at = Some(tokio::time::Instant::now());
                    }
                    Some(coordinator_message::Body::Cancel(_)) => {}
                    Some(coordinator_message::Body::NoWork(no_work)) => {
                        stats.no_work += 1;
                        idle_since = Some(Instant::now());
                        let wait = Duration::from_millis(u64::from(no_work.retry_after_ms.max(50)));
                        lease_at = Some(tokio::time::Instant::now() + wait);
                    }
                    Some(coordinator_message::Body::Ack(ack)) => {
                        assert!(ack.accepted, "attempt {} not accepted", ack.attempt_id);
                    }
                    Some(coordinator_message::Body::SweepDone(_)) => break,
                    None => {}
                }
            }
            _ = heartbeat.tick() => {
                let attempts = running.as_ref().map(|r| vec![r.attempt]).unwrap_or_default();
                let beat = pb::Heartbeat { running_attempts: attempts, progress: 0.0, throughput: 0.0, newest_lease };
                tx.send(msg(worker_message::Body::Heartbeat(beat))).await.expect("session open");
            }
            _ = tokio::time::sleep_until(wake) => {
                if running.as_ref().is_some_and(|r| r.until <= tokio::time::Instant::now()) {
                    let r = running.take().expect("running");
                    stats.slept.push((r.task_id, r.started.elapsed()));
                    let (result_json, outputs) = result_of(&mut client, &r, &mut stats, &mut cache).await;
                    let result = pb::TaskResult { attempt_id: r.attempt, result_json, outputs, seconds: 0.0 };
                    tx.send(msg(worker_message::Body::Result(result))).await.expect("session open");
                    tx.send(lease_request()).await.expect("session open");
                }
            }
        }
    }
    stats
}

// ------------------------------------------------------------------ one sweep

struct SweepRun {
    workers: usize,
    tasks: usize,
    trains: usize,
    measured: f64,
    work: f64,
    ideal: f64,
    critical: f64,
    schedule: f64,
    downloaded: u64,
    downloaded_max: u64,
    minimum: u64,
    floor: u64,
    leases: usize,
    no_work: usize,
    no_work_wait: f64,
    download_time: f64,
    upload_time: f64,
}

/// The makespan of a greedy list schedule with no overhead: trains first, then chunks in plan
/// order, each ready when its train has ended; `durations` per task id.
fn list_schedule(tasks: &[PlannedTask], durations: &HashMap<u64, f64>, workers: usize) -> f64 {
    let ns = |id: TaskId| (durations[&id.0] * 1e9) as u64;
    let mut ready: BTreeSet<(u8, u64)> = BTreeSet::new();
    let mut dependents: HashMap<u64, Vec<u64>> = HashMap::new();
    for t in tasks {
        match t.deps.first() {
            None => {
                ready.insert((u8::from(t.kind() != TaskKind::Train), t.id.0));
            }
            Some(dep) => dependents.entry(dep.0).or_default().push(t.id.0),
        }
    }
    let kind: HashMap<u64, TaskKind> = tasks.iter().map(|t| (t.id.0, t.kind())).collect();
    let mut running: BinaryHeap<Reverse<(u64, u64)>> = BinaryHeap::new();
    let (mut idle, mut now, mut end) = (workers, 0u64, 0u64);
    loop {
        while idle > 0 {
            let Some(first) = ready.pop_first() else { break };
            running.push(Reverse((now + ns(TaskId(first.1)), first.1)));
            idle -= 1;
        }
        let Some(Reverse((at, id))) = running.pop() else { break };
        now = at;
        end = end.max(at);
        idle += 1;
        for d in dependents.remove(&id).unwrap_or_default() {
            ready.insert((u8::from(kind[&d] != TaskKind::Train), d));
        }
    }
    end as f64 * 1e-9
}

/// One sweep on `workers` simulated workers with the default service settings, except `NoWork`'s
/// retry delay when `idle_retry` is given.
async fn sweep(workers: usize, idle_retry: Option<u64>) -> SweepRun {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("scaling.toml");
    std::fs::write(&spec, SWEEP).unwrap();
    let mut config = default_config(None);
    if let Some(ms) = idle_retry {
        config.scheduler.idle_retry = ms;
    }
    let run = run::open(&spec, &dir.path().join("run"), config).expect("the sweep opens");
    let tasks = run.tasks.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(grpc::serve(run.shared.clone(), listener, stop_rx));
    let mut finished = run.shared.finished();

    let started = Instant::now();
    let mut handles = Vec::new();
    for i in 0..workers {
        // One connection per worker, as separate worker processes have.
        let channel = Channel::from_shared(url.clone()).unwrap().connect().await.unwrap();
        handles.push(tokio::spawn(sim_worker(channel, i)));
    }
    while !*finished.borrow() {
        finished.changed().await.unwrap();
    }
    let measured = started.elapsed().as_secs_f64();
    let mut stats = Vec::new();
    for h in handles {
        stats.push(h.await.unwrap());
    }
    let _ = stop.send(true);
    let _ = server.await;
    let counts = run.shared.counts();
    let done = counts.iter().find(|(s, _)| s == "done").map_or(0, |(_, n)| *n);
    assert_eq!(done, tasks.len(), "every task done: {counts:?}");

    // What each worker produced: the outputs of the train tasks it slept for.
    let reader = run.store.reader().unwrap();
    let mut durations: HashMap<u64, f64> = HashMap::new();
    let mut work = 0.0;
    let (mut downloaded, mut downloaded_max, mut minimum) = (0, 0, 0);
    for s in &stats {
        let mut produced = HashSet::new();
        for (task, slept) in &s.slept {
            work += slept.as_secs_f64();
            let d = durations.entry(*task).or_insert(0.0);
            *d = d.max(slept.as_secs_f64());
            for (_, digest, _, _) in reader.task_artifacts(*task).unwrap() {
                produced.insert(digest);
            }
        }
        // Only the trainer of a task produced it (the first result wins; every attempt here won).
        let own: HashSet<&String> = produced.iter().collect();
        minimum += s.needed.iter().filter(|(d, _)| !own.contains(d)).map(|(_, size)| *size).sum::<u64>();
        downloaded += s.downloaded;
        downloaded_max = downloaded_max.max(s.downloaded);
    }
    let trains: Vec<&PlannedTask> = tasks.iter().filter(|t| t.kind() == TaskKind::Train).collect();
    let critical = tasks
        .iter()
        .map(|t| durations[&t.id.0] + t.deps.iter().map(|d| durations[&d.0]).sum::<f64>())
        .fold(0.0, f64::max);
    let ideal = (work / workers as f64).max(critical);
    let schedule = list_schedule(&tasks, &durations, workers);
    let floor = workers.saturating_sub(trains.len()) as u64 * MODEL_BYTES as u64;
    drop(run);
    SweepRun {
        workers,
        tasks: tasks.len(),
        trains: trains.len(),
        measured,
        work,
        ideal,
        critical,
        schedule,
        downloaded,
        downloaded_max,
        minimum,
        floor,
        leases: stats.iter().map(|s| s.leases).sum(),
        no_work: stats.iter().map(|s| s.no_work).sum(),
        no_work_wait: stats.iter().map(|s| s.no_work_wait.as_secs_f64()).sum(),
        download_time: stats.iter().map(|s| s.download_time.as_secs_f64()).sum(),
        upload_time: stats.iter().map(|s| s.upload_time.as_secs_f64()).sum(),
    }
}

// ------------------------------------------------------------------ lease latency

/// A coordinator over `n` independent empty heatmap chunks (as `benches/coordinator.rs`).
async fn start_flat(n: usize) -> (String, Arc<Shared>, tempfile::TempDir, tokio::sync::watch::Sender<bool>) {
    let dir = tempfile::tempdir().unwrap();
    let (store, writer) = Store::open(&dir.path().join("freqsweep.db")).unwrap();
    std::mem::forget(writer); // lives for the whole benchmark
    let planned: Vec<PlannedTask> = (0..n)
        .map(|i| PlannedTask {
            id: TaskId(i as u64 + 1),
            key: format!("bench/{i}"),
            point: 0,
            spec: TaskSpec::Heatmap(testing::empty_chunk()),
            deps: vec![],
            cost: Default::default(),
        })
        .collect();
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
    let shared = Shared::new(
        default_config(None),
        store,
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
    (url, shared, dir, stop)
}

type Stream = (tokio::sync::mpsc::Sender<pb::WorkerMessage>, tonic::Streaming<pb::CoordinatorMessage>);

/// `rounds` × (LeaseRequest → Lease, timed; result → Ack) on one open session.
async fn lease_cycles(mut stream: Stream, rounds: usize) -> (Vec<Duration>, Stream) {
    let result_json = testing::heatmap_result_json(&testing::empty_chunk(), 1, 0, "bench");
    let msg = |body| pb::WorkerMessage { worker_id: String::new(), body: Some(body) };
    let mut latencies = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let asked = Instant::now();
        stream.0.send(msg(worker_message::Body::LeaseRequest(pb::LeaseRequest { slots: 1 }))).await.unwrap();
        let lease = loop {
            match stream.1.next().await.expect("open").expect("ok").body {
                Some(coordinator_message::Body::Lease(lease)) => break lease,
                Some(coordinator_message::Body::NoWork(_)) => panic!("the latency sweep ran out of tasks"),
                _ => {}
            }
        };
        latencies.push(asked.elapsed());
        let result =
            pb::TaskResult { attempt_id: lease.attempt_id, result_json: result_json.clone(), ..Default::default() };
        stream.0.send(msg(worker_message::Body::Result(result))).await.unwrap();
        loop {
            if let Some(coordinator_message::Body::Ack(ack)) = stream.1.next().await.expect("open").expect("ok").body {
                assert!(ack.accepted);
                break;
            }
        }
    }
    (latencies, stream)
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

struct Latency {
    burst_p50: f64,
    burst_p99: f64,
    burst_samples: usize,
    quiet_p50: f64,
    quiet_p99: f64,
}

async fn lease_latency() -> Latency {
    let (url, _shared, _dir, _stop) = start_flat(SESSIONS * BURST_ROUNDS + QUIET_LEASES + 10).await;
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    let mut streams = Vec::new();
    for _ in 0..SESSIONS {
        let mut client = CoordinatorClient::new(channel.clone());
        let s = testing::open_session(&mut client, "bench", None).await.unwrap();
        streams.push((s.tx, s.inbound));
    }
    // Burst: all sessions lease, report and lease again at once.
    let barrier = Arc::new(tokio::sync::Barrier::new(SESSIONS));
    let handles: Vec<_> = streams
        .into_iter()
        .map(|s| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                lease_cycles(s, BURST_ROUNDS).await
            })
        })
        .collect();
    let mut burst = Vec::new();
    let mut open = Vec::new();
    for h in handles {
        let (l, s) = h.await.unwrap();
        burst.extend(l);
        open.push(s);
    }
    // Quiet: one more session leases one task at a time while the 1 000 stay open.
    let mut client = CoordinatorClient::new(channel);
    let probe = testing::open_session(&mut client, "probe", None).await.unwrap();
    let (mut quiet, _probe) = lease_cycles((probe.tx, probe.inbound), QUIET_LEASES).await;
    drop(open);
    burst.sort();
    quiet.sort();
    Latency {
        burst_p50: percentile(&burst, 0.50),
        burst_p99: percentile(&burst, 0.99),
        burst_samples: burst.len(),
        quiet_p50: percentile(&quiet, 0.50),
        quiet_p99: percentile(&quiet, 0.99),
    }
}

// ------------------------------------------------------------------ resident memory

/// 4 bands × 2 archs × 963 seeds = 7 704 points, each 1 train + 12 chunks: 100 152 tasks.
fn big_spec() -> String {
    let seeds: Vec<String> = (0..963).map(|s| s.to_string()).collect();
    format!(
        "[[dataset]]\nkind = \"syn\"\nband = [1, 2, 3, 4]\n[model]\narch = [\"tiny\", \"alexnet\"]\n[train]\nlr = 0.01\nbatch_size = 64\nepochs = 1\nseed = [{}]\n[heatmap]\neps = 4\nchunks_per_map = 12\n",
        seeds.join(", ")
    )
}

/// In a fresh process (so nothing freed by earlier parts is reused): RSS before and after opening
/// a run of 100 152 tasks the way `freqsweep serve` does (plan, store, `Shared::new`, TensorBoard).
fn memory_child() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("big.toml");
    std::fs::write(&spec, big_spec()).unwrap();
    let before = rss_bytes();
    // One planned copy of the graph alone, kept alive, for scale.
    let sweep = freqsweep_common::files::load_spec(&spec).unwrap();
    let plan = freqsweep_coordinator::graph::plan(&sweep);
    let planned = rss_bytes();
    let started = Instant::now();
    let run = run::open(&spec, &dir.path().join("run"), default_config(None)).expect("the big sweep opens");
    let seconds = started.elapsed().as_secs_f64();
    let after = rss_bytes();
    assert_eq!(plan.len(), run.tasks.len());
    let json =
        json!({ "tasks": run.tasks.len(), "before": before, "planned": planned, "after": after, "seconds": seconds });
    println!("{json}");
}

fn memory() -> serde_json::Value {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("FREQSWEEP_SCALING_PART", "memory")
        .stderr(std::process::Stdio::inherit())
        .output()
        .expect("the memory child runs");
    assert!(out.status.success(), "the memory child failed");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or("")).expect("the memory child prints JSON")
}

fn main() {
    if std::env::var("FREQSWEEP_SCALING_PART").as_deref() == Ok("memory") {
        return memory_child();
    }
    let memory = memory();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let mut out = serde_json::Map::new();
        let runs = WORKER_COUNTS.iter().map(|&w| (w, None, format!("w{w}"))).chain([(16, Some(50), "w16_retry50".into())]);
        for (workers, idle_retry, name) in runs {
            let r = sweep(workers, idle_retry).await;
            let n = r.workers as f64;
            let overhead_ms = n * (r.measured - r.schedule) / r.tasks as f64 * 1e3;
            eprintln!(
                "scaling: {name}: {:.2} s measured, ideal {:.2} s ({:.1} %), schedule {:.2} s ({:.1} %), \
                 overhead {overhead_ms:.1} ms/task, downloaded {} B (max {} per worker, minimum {}, floor {})",
                r.measured,
                r.ideal,
                100.0 * r.ideal / r.measured,
                r.schedule,
                100.0 * r.schedule / r.measured,
                r.downloaded,
                r.downloaded_max,
                r.minimum,
                r.floor
            );
            let w = |k: &str| format!("{name}_{k}");
            out.insert("tasks".into(), json!(r.tasks));
            out.insert("train_tasks".into(), json!(r.trains));
            out.insert(w("measured_s"), json!(r.measured));
            out.insert(w("work_s"), json!(r.work));
            out.insert(w("critical_s"), json!(r.critical));
            out.insert(w("ideal_s"), json!(r.ideal));
            out.insert(w("schedule_s"), json!(r.schedule));
            out.insert(w("efficiency"), json!(r.ideal / r.measured));
            out.insert(w("schedule_efficiency"), json!(r.schedule / r.measured));
            out.insert(w("overhead_ms_per_task"), json!(overhead_ms));
            out.insert(w("downloaded_bytes"), json!(r.downloaded));
            out.insert(w("downloaded_max_bytes"), json!(r.downloaded_max));
            out.insert(w("download_minimum_bytes"), json!(r.minimum));
            out.insert(w("download_floor_bytes"), json!(r.floor));
            out.insert(w("leases"), json!(r.leases));
            out.insert(w("no_work"), json!(r.no_work));
            out.insert(w("no_work_wait_s"), json!(r.no_work_wait));
            out.insert(w("download_s"), json!(r.download_time));
            out.insert(w("upload_s"), json!(r.upload_time));
        }
        let l = lease_latency().await;
        eprintln!(
            "scaling: lease latency, {SESSIONS} sessions: burst p50 {:.2} ms p99 {:.2} ms ({} samples), quiet p50 {:.2} ms p99 {:.2} ms",
            l.burst_p50, l.burst_p99, l.burst_samples, l.quiet_p50, l.quiet_p99
        );
        let tasks = memory["tasks"].as_f64().unwrap();
        // What opening the run added on top of the child's own planned copy.
        let grown = memory["after"].as_f64().unwrap() - memory["planned"].as_f64().unwrap();
        out.insert("train_ms".into(), json!(TRAIN_MS));
        out.insert("chunk_ms".into(), json!(CHUNK_MS));
        out.insert("chunk_cells".into(), json!(CHUNK_CELLS));
        out.insert("model_bytes".into(), json!(MODEL_BYTES));
        out.insert("checkpoint_bytes".into(), json!(CHECKPOINT_BYTES));
        out.insert("sessions".into(), json!(SESSIONS));
        out.insert("lease_burst_rounds".into(), json!(BURST_ROUNDS));
        out.insert("lease_burst_samples".into(), json!(l.burst_samples));
        out.insert("lease_p50_ms".into(), json!(l.burst_p50));
        out.insert("lease_p99_ms".into(), json!(l.burst_p99));
        out.insert("lease_quiet_samples".into(), json!(QUIET_LEASES));
        out.insert("lease_quiet_p50_ms".into(), json!(l.quiet_p50));
        out.insert("lease_quiet_p99_ms".into(), json!(l.quiet_p99));
        out.insert("rss_tasks".into(), json!(tasks));
        out.insert("rss_before_mib".into(), json!(memory["before"].as_f64().unwrap() / 1048576.0));
        out.insert("rss_planned_mib".into(), json!(memory["planned"].as_f64().unwrap() / 1048576.0));
        out.insert("rss_after_mib".into(), json!(memory["after"].as_f64().unwrap() / 1048576.0));
        out.insert("rss_mib_per_100k_tasks".into(), json!(grown / 1048576.0 * 100_000.0 / tasks));
        let plan = memory["planned"].as_f64().unwrap() - memory["before"].as_f64().unwrap();
        out.insert("rss_plan_mib_per_100k_tasks".into(), json!(plan / 1048576.0 * 100_000.0 / tasks));
        out.insert("rss_open_seconds".into(), json!(memory["seconds"]));
        println!("{}", serde_json::Value::Object(out));
    });
}
