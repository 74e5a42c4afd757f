//! The coordinator's HTTP side (`--http ADDR`): `GET /metrics` (Prometheus text format 0.0.4),
//! `GET /api/status` (the [`Snapshot`] as JSON, for scripts) and `GET /` (a self-contained
//! dashboard page that polls `/api/status` every 2 s). Everything is rendered from one
//! [`Shared::snapshot`], the same one the `Status` RPC answers from, so the numbers agree.
//!
//! HTTP/1.1 through `hyper`, which tonic already compiles (no new dependency). When the
//! coordinator has a token, every request must carry it (`Authorization: Bearer TOKEN`, or
//! `?token=TOKEN` for a browser); otherwise the answer is 401 with a one-line body.

use crate::driver::Shared;
use crate::snapshot::Snapshot;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

/// The dashboard; `{{SWEEP}}` is replaced by the (escaped) sweep name so the page names the
/// sweep before its script runs.
const DASHBOARD: &str = include_str!("dashboard.html");

/// Serve HTTP on `listener` until the task is dropped or aborted.
pub async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
    // Bounded like the gRPC port (count, unauthenticated and idle time), with fewer descriptors.
    let mut incoming = crate::conn::Incoming::new(listener, shared.config.connection_limits(0.25));
    loop {
        let stream = incoming.accept().await;
        let (shared, tls) = (shared.clone(), tls.clone());
        tokio::spawn(async move {
            let conn = stream.info().clone();
            let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                // Only a request with the token proves the connection (a 405 or 404 does not).
                if authorize(shared.token(), &request).is_ok() {
                    conn.authenticated();
                }
                let response = respond(&shared, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let http = hyper::server::conn::http1::Builder::new();
            let served = match tls {
                None => http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await,
                Some(acceptor) => {
                    // A client that never finishes its handshake must not hold the task forever.
                    let handshake = tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(stream)) => http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await,
                        Ok(Err(e)) => return tracing::debug!(error = %e, "https handshake failed"),
                        Err(_) => return tracing::debug!("https handshake timed out"),
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(error = %e, "http connection ended");
            }
        });
    }
}

/// Answer one request (routing, auth, rendering); no I/O beyond the snapshot.
pub fn respond<B>(shared: &Shared, request: &Request<B>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD are supported\n");
    }
    if let Err(why) = authorize(shared.token(), request) {
        return text(StatusCode::UNAUTHORIZED, why);
    }
    let mut response = match request.uri().path() {
        "/metrics" => {
            let body = metrics_text(&shared.snapshot());
            reply(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", body)
        }
        "/api/status" => {
            let body = serde_json::to_string(&shared.snapshot()).expect("snapshots serialise");
            reply(StatusCode::OK, "application/json", body)
        }
        "/api/points" => {
            let body = serde_json::to_string(&shared.live_points()).expect("points serialise");
            reply(StatusCode::OK, "application/json", body)
        }
        "/api/point" => {
            let index = request
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("index=")))
                .and_then(|v| v.parse::<usize>().ok());
            match index.map(|i| shared.live_point(i)) {
                None => {
                    text(StatusCode::BAD_REQUEST, "/api/point needs ?index=N (a grid point's index from /api/points)\n")
                }
                Some(Ok(None)) => text(StatusCode::NOT_FOUND, "no grid point with that index\n"),
                Some(Ok(Some(detail))) => {
                    reply(StatusCode::OK, "application/json", serde_json::to_string(&detail).expect("points serialise"))
                }
                Some(Err(e)) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    format!("the store cannot be read: {e}\n"),
                ),
            }
        }
        "/" | "/index.html" => {
            let body = DASHBOARD.replace("{{SWEEP}}", &html_escape(&shared.snapshot().sweep));
            reply(StatusCode::OK, "text/html; charset=utf-8", body)
        }
        _ => {
            text(StatusCode::NOT_FOUND, "not found: try /, /metrics, /api/status, /api/points or /api/point?index=N\n")
        }
    };
    if request.method() == Method::HEAD {
        *response.body_mut() = Full::new(Bytes::new());
    }
    response
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("static headers are valid")
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    reply(status, "text/plain; charset=utf-8", body.to_string())
}

/// The token check: the bearer header, else a `token` query parameter.
fn authorize<B>(token: Option<&str>, request: &Request<B>) -> Result<(), &'static str> {
    let Some(expected) = token else { return Ok(()) };
    let header =
        request.headers().get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    let query = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=")))
        .map(percent_decode);
    match header.map(str::to_string).or(query) {
        Some(got) if crate::secret::constant_time_eq(got.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err("unauthorized: wrong token (check FREQSWEEP_TOKEN)\n"),
        None => Err("unauthorized: missing token (send Authorization: Bearer TOKEN or add ?token=TOKEN)\n"),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A label value in the exposition format: backslash, double quote and newline escaped.
fn label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A sample value: integers print without a fraction, unknowns as `NaN`.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

/// Writes metric families: HELP and TYPE once, then the samples.
struct Exposition(String);

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.0.push_str(name);
        if !labels.is_empty() {
            let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", label(v))).collect();
            let _ = write!(self.0, "{{{}}}", inner.join(","));
        }
        let _ = writeln!(self.0, " {}", number(value));
    }

    fn one(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// The snapshot in the Prometheus text exposition format 0.0.4.
pub fn metrics_text(s: &Snapshot) -> String {
    let mut e = Exposition(String::new());
    e.family("freqsweep_sweep_info", "gauge", "The sweep this coordinator runs (always 1).");
    e.sample("freqsweep_sweep_info", &[("sweep", &s.sweep)], 1.0);
    e.one("freqsweep_sweep_tasks", "gauge", "Tasks in the sweep.", s.total_tasks as f64);
    e.one(
        "freqsweep_sweep_progress_ratio",
        "gauge",
        "Fraction of tasks that are terminal (done, failed or cancelled).",
        s.progress,
    );
    e.one(
        "freqsweep_sweep_eta_seconds",
        "gauge",
        "Estimated seconds until every task is terminal (NaN until a task has finished).",
        s.eta_seconds.unwrap_or(f64::NAN),
    );
    e.one("freqsweep_sweep_finished", "gauge", "1 once every task is terminal.", if s.finished { 1.0 } else { 0.0 });
    e.one("freqsweep_uptime_seconds", "gauge", "Seconds since this coordinator process started.", s.uptime_seconds);

    e.family("freqsweep_tasks", "gauge", "Tasks by kind and state.");
    for (kind, states) in &s.tasks_by_kind {
        for (state, count) in states {
            e.sample("freqsweep_tasks", &[("kind", kind), ("state", state)], *count as f64);
        }
    }

    let a = &s.attempts;
    e.one("freqsweep_attempts_started_total", "counter", "Leases handed out.", a.started as f64);
    e.one("freqsweep_attempts_completed_total", "counter", "Attempts whose result was accepted.", a.completed as f64);
    e.one("freqsweep_attempts_failed_total", "counter", "Attempts that reported a failure.", a.failed as f64);
    e.one(
        "freqsweep_attempts_lost_total",
        "counter",
        "Attempts that ended without a report (released, worker left or expired).",
        a.lost as f64,
    );
    e.one(
        "freqsweep_attempts_retried_total",
        "counter",
        "Leases of a task that had been leased before.",
        a.retried as f64,
    );

    e.one("freqsweep_workers_connected", "gauge", "Workers with a live session.", s.workers.len() as f64);
    e.one("freqsweep_workers_joined_total", "counter", "Worker registrations.", s.workers_joined as f64);
    e.one(
        "freqsweep_workers_expired_total",
        "counter",
        "Workers dropped for missing heartbeats.",
        s.workers_expired as f64,
    );
    type Per = fn(&crate::snapshot::WorkerSnapshot) -> f64;
    let per_worker: [(&str, &str, &str, Per); 5] = [
        ("freqsweep_worker_leases_total", "counter", "Leases given to the worker.", |w| w.leases as f64),
        ("freqsweep_worker_completed_total", "counter", "Tasks the worker completed.", |w| w.completed as f64),
        ("freqsweep_worker_running_tasks", "gauge", "Tasks the worker is running now.", |w| w.running.len() as f64),
        (
            "freqsweep_worker_throughput",
            "gauge",
            "Items per second of the worker's current task, as it reports.",
            |w| w.throughput,
        ),
        ("freqsweep_worker_last_seen_seconds", "gauge", "Seconds since the worker's last message.", |w| {
            w.last_seen_seconds
        }),
    ];
    for (name, kind, help, value) in per_worker {
        e.family(name, kind, help);
        for w in &s.workers {
            e.sample(name, &[("worker", &w.id), ("host", &w.hostname), ("device", &w.device)], value(w));
        }
    }

    e.one("freqsweep_metric_points_total", "counter", "Metric points received from workers.", s.metric_points as f64);
    e.one(
        "freqsweep_artifact_received_bytes_total",
        "counter",
        "Artifact bytes uploaded by workers and stored.",
        s.artifact_bytes_received as f64,
    );
    e.one(
        "freqsweep_artifact_sent_bytes_total",
        "counter",
        "Artifact bytes streamed to workers.",
        s.artifact_bytes_sent as f64,
    );
    e.one(
        "freqsweep_store_batches_total",
        "counter",
        "Non-empty change batches committed to the store.",
        s.store.batches as f64,
    );
    e.one("freqsweep_store_changes_total", "counter", "Changes written to the store.", s.store.changes as f64);
    e.family(
        "freqsweep_store_commit_seconds",
        "summary",
        "Time to apply and commit one group of batches (one fsync'd transaction).",
    );
    e.sample("freqsweep_store_commit_seconds_sum", &[], s.store.commit_seconds);
    e.sample("freqsweep_store_commit_seconds_count", &[], s.store.commits as f64);
    e.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{AttemptCounts, FailureSnapshot, RunningTask, WorkerSnapshot};
    use crate::store::StoreStats;
    use std::collections::{BTreeMap, HashMap};

    fn snapshot() -> Snapshot {
        let states = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
            pairs.iter().map(|(s, c)| (s.to_string(), *c)).collect()
        };
        Snapshot {
            sweep: "demo".into(),
            uptime_seconds: 12.5,
            finished: false,
            total_tasks: 5,
            terminal_tasks: 2,
            progress: 0.4,
            eta_seconds: None,
            tasks_by_state: states(&[("done", 2), ("running", 1), ("blocked", 2)]),
            tasks_by_kind: [
                ("train".to_string(), states(&[("done", 2), ("running", 1)])),
                ("heatmap".to_string(), states(&[("blocked", 2)])),
            ]
            .into_iter()
            .collect(),
            attempts: AttemptCounts { started: 4, completed: 2, failed: 1, lost: 0, retried: 1 },
            workers: vec![WorkerSnapshot {
                id: "w1".into(),
                hostname: "node \"7\"\\a\nb".into(),
                device: "cuda:0".into(),
                running: vec![RunningTask { id: 3, key: "train/p3".into() }],
                leases: 4,
                completed: 2,
                throughput: 812.5,
                last_seen_seconds: 0.25,
                connected_seconds: 10.0,
                measured: Default::default(),
            }],
            workers_joined: 2,
            workers_expired: 1,
            metric_points: 77,
            artifact_bytes_received: 1 << 20,
            artifact_bytes_sent: 0,
            store: StoreStats { commits: 9, batches: 30, changes: 61, commit_seconds: 0.125 },
            recent_failures: vec![FailureSnapshot {
                task: Some("train/p1".into()),
                attempt: Some(2),
                worker: "w1".into(),
                error: "loss is NaN".into(),
                age_seconds: 3.0,
                task_failed: false,
            }],
        }
    }

    /// A parsed sample: name, labels, value.
    type Sample = (String, Vec<(String, String)>, f64);

    fn valid_name(s: &str) -> bool {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    }

    /// Parse the exposition text back, checking the grammar line by line: every sample belongs to a
    /// family declared just before with HELP and TYPE, names and label names are valid, label values
    /// are properly escaped and quoted, values parse as floats, counters end in `_total`.
    fn parse(text: &str) -> Vec<Sample> {
        let mut types: HashMap<String, String> = HashMap::new();
        let mut current: Option<String> = None;
        let mut samples = Vec::new();
        assert!(text.ends_with('\n'), "the text ends with a newline");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP has a name and text");
                assert!(valid_name(name) && !help.is_empty(), "{line}");
                assert!(!types.contains_key(name), "{name} declared twice");
                current = Some(name.to_string());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a name and kind");
                assert_eq!(Some(name), current.as_deref(), "TYPE follows its HELP");
                assert!(["counter", "gauge", "summary"].contains(&kind), "{line}");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "counter {name} ends in _total");
                } else {
                    assert!(!name.ends_with("_total"), "only counters end in _total: {name}");
                }
                types.insert(name.to_string(), kind.to_string());
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "unexpected line {line:?}");
            let (name, rest) = match line.find(['{', ' ']) {
                Some(i) => line.split_at(i),
                None => panic!("no value: {line}"),
            };
            assert!(valid_name(name), "{line}");
            let family = current.as_deref().expect("a sample follows a family");
            let kind = &types[family];
            let allowed = if kind == "summary" {
                name == format!("{family}_sum") || name == format!("{family}_count")
            } else {
                name == family
            };
            assert!(allowed, "sample {name} in family {family}");
            let mut labels = Vec::new();
            let value_text = if let Some(body) = rest.strip_prefix('{') {
                let mut chars = body.char_indices().peekable();
                let end = loop {
                    let (start, _) = *chars.peek().expect("labels end");
                    let eq = body[start..].find('=').expect("label has =") + start;
                    let label_name = &body[start..eq];
                    assert!(valid_name(label_name) && !label_name.contains(':'), "{line}");
                    assert_eq!(&body[eq + 1..eq + 2], "\"", "{line}");
                    while chars.peek().is_some_and(|(i, _)| *i <= eq + 1) {
                        chars.next();
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next().expect("label value is closed") {
                            (_, '\\') => match chars.next().expect("escape").1 {
                                '\\' => value.push('\\'),
                                '"' => value.push('"'),
                                'n' => value.push('\n'),
                                other => panic!("bad escape \\{other} in {line}"),
                            },
                            (_, '"') => break,
                            (_, c) => value.push(c),
                        }
                    }
                    labels.push((label_name.to_string(), value));
                    match chars.next().expect("after a label") {
                        (_, ',') => continue,
                        (i, '}') => break i,
                        (_, c) => panic!("unexpected {c} in {line}"),
                    }
                };
                &body[end + 1..]
            } else {
                rest
            };
            let value_text = value_text.strip_prefix(' ').expect("one space before the value");
            let value = match value_text {
                "NaN" => f64::NAN,
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse::<f64>().unwrap_or_else(|_| panic!("value {v:?} in {line}")),
            };
            samples.push((name.to_string(), labels, value));
        }
        samples
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        let hits: Vec<&Sample> = samples
            .iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v)))
            .collect();
        assert_eq!(hits.len(), 1, "one sample {name} {labels:?}");
        hits[0].2
    }

    #[test]
    fn the_exposition_parses_back_with_the_snapshot_numbers() {
        let s = snapshot();
        let samples = parse(&metrics_text(&s));
        assert_eq!(value(&samples, "freqsweep_tasks", &[("kind", "train"), ("state", "done")]), 2.0);
        assert_eq!(value(&samples, "freqsweep_tasks", &[("kind", "heatmap"), ("state", "blocked")]), 2.0);
        let total: f64 = samples.iter().filter(|(n, _, _)| n == "freqsweep_tasks").map(|(_, _, v)| v).sum();
        assert_eq!(total, 5.0, "tasks by kind and state add up to the sweep");
        assert_eq!(value(&samples, "freqsweep_sweep_tasks", &[]), 5.0);
        assert_eq!(value(&samples, "freqsweep_sweep_progress_ratio", &[]), 0.4);
        assert!(value(&samples, "freqsweep_sweep_eta_seconds", &[]).is_nan(), "unknown ETA is NaN");
        assert_eq!(value(&samples, "freqsweep_attempts_started_total", &[]), 4.0);
        assert_eq!(value(&samples, "freqsweep_attempts_retried_total", &[]), 1.0);
        assert_eq!(value(&samples, "freqsweep_workers_connected", &[]), 1.0);
        assert_eq!(value(&samples, "freqsweep_worker_completed_total", &[("worker", "w1")]), 2.0);
        assert_eq!(value(&samples, "freqsweep_worker_throughput", &[("device", "cuda:0")]), 812.5);
        assert_eq!(value(&samples, "freqsweep_artifact_received_bytes_total", &[]), 1048576.0);
        assert_eq!(value(&samples, "freqsweep_store_commit_seconds_count", &[]), 9.0);
        assert_eq!(value(&samples, "freqsweep_store_commit_seconds_sum", &[]), 0.125);
        assert_eq!(value(&samples, "freqsweep_sweep_info", &[("sweep", "demo")]), 1.0);
    }

    #[test]
    fn label_values_are_escaped_and_read_back_unchanged() {
        let s = snapshot();
        let samples = parse(&metrics_text(&s));
        let (_, labels, _) = samples.iter().find(|(n, _, _)| n == "freqsweep_worker_leases_total").unwrap();
        let host = &labels.iter().find(|(k, _)| k == "host").unwrap().1;
        assert_eq!(host, "node \"7\"\\a\nb");
    }

    #[test]
    fn without_workers_the_per_worker_families_are_empty_but_declared() {
        let mut s = snapshot();
        s.workers.clear();
        s.eta_seconds = Some(30.0);
        let text = metrics_text(&s);
        let samples = parse(&text);
        assert!(text.contains("# TYPE freqsweep_worker_leases_total counter"));
        assert!(!samples.iter().any(|(n, _, _)| n.starts_with("freqsweep_worker_")));
        assert_eq!(value(&samples, "freqsweep_sweep_eta_seconds", &[]), 30.0);
    }

    fn request(uri: &str, auth: Option<&str>) -> Request<()> {
        let mut r = Request::get(uri);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.body(()).unwrap()
    }

    #[test]
    fn the_token_is_taken_from_the_header_or_the_query() {
        let token = Some("s3cret/+");
        assert!(authorize(None, &request("/metrics", None)).is_ok());
        assert!(authorize(token, &request("/metrics", Some("Bearer s3cret/+"))).is_ok());
        assert!(authorize(token, &request("/?token=s3cret%2F%2B", None)).is_ok());
        assert!(authorize(token, &request("/?a=1&token=s3cret%2f%2b", None)).is_ok());
        let wrong = authorize(token, &request("/metrics", Some("Bearer nope"))).unwrap_err();
        assert!(wrong.contains("wrong token") && wrong.trim_end().lines().count() == 1, "{wrong}");
        assert!(authorize(token, &request("/?token=s3cre", None)).unwrap_err().contains("wrong token"));
        assert!(authorize(token, &request("/metrics", Some("Basic s3cret/+"))).unwrap_err().contains("missing token"));
        assert!(authorize(token, &request("/metrics", None)).unwrap_err().contains("missing token"));
    }

    const SPEC: &str = r#"name = "web"
[[dataset]]
kind = "syn"
band = 2
train = 96
test = 16
[model]
arch = "tiny"
[train]
lr = 0.003
batch_size = 32
epochs = 1
[heatmap]
eps = [4.0]
images = 8
chunk_cells = 257
"#;

    /// One HTTP/1.1 request over a fresh connection: (status code, body).
    async fn get(addr: std::net::SocketAddr, path: &str, headers: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n{headers}\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = String::new();
        stream.read_to_string(&mut raw).await.unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
        let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (code, body.to_string())
    }

    /// The real service state of a planned sweep (1 train task, 2 heatmap chunks) with one
    /// registered worker, served on an ephemeral loopback port.
    #[tokio::test]
    async fn the_endpoints_serve_the_live_service_state_behind_the_token() {
        use crate::grpc::Service;
        use freqsweep_proto::v1::coordinator_server::Coordinator;
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("web.toml");
        std::fs::write(&spec, SPEC).unwrap();
        let run =
            crate::run::open(&spec, &dir.path().join("run"), crate::run::default_config(Some("tok".into()))).unwrap();
        let register = freqsweep_proto::v1::RegisterRequest {
            protocol_version: freqsweep_proto::PROTOCOL_VERSION,
            worker_version: "test".into(),
            hostname: "node<1>".into(),
            capabilities: Some(freqsweep_proto::v1::Capabilities { device: "cpu".into(), ..Default::default() }),
            cached_artifacts: Vec::new(),
            features: Vec::new(),
        };
        Service(run.shared.clone()).register(tonic::Request::new(register)).await.unwrap();

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(run.shared.clone(), listener, None));
        let auth = "Authorization: Bearer tok\r\n";

        let (code, text) = get(addr, "/metrics", auth).await;
        assert_eq!(code, 200, "{text}");
        let samples = parse(&text);
        assert_eq!(value(&samples, "freqsweep_sweep_tasks", &[]), 3.0);
        assert_eq!(value(&samples, "freqsweep_tasks", &[("kind", "train"), ("state", "ready")]), 1.0);
        assert_eq!(value(&samples, "freqsweep_tasks", &[("kind", "heatmap"), ("state", "blocked")]), 2.0);
        assert_eq!(value(&samples, "freqsweep_workers_connected", &[]), 1.0);
        assert_eq!(value(&samples, "freqsweep_worker_leases_total", &[("host", "node<1>")]), 0.0);
        assert_eq!(value(&samples, "freqsweep_sweep_progress_ratio", &[]), 0.0);

        let (code, json) = get(addr, "/api/status?token=tok", "").await;
        assert_eq!(code, 200, "{json}");
        let status: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(status["sweep"], "web");
        assert_eq!(status["total_tasks"], 3);
        assert_eq!(status["tasks_by_state"]["ready"], 1);
        assert_eq!(status["workers"][0]["hostname"], "node<1>");
        assert!(status["eta_seconds"].is_null(), "no task finished yet: {json}");

        let (code, page) = get(addr, "/?token=tok", "").await;
        assert_eq!(code, 200);
        assert!(page.contains("<title>freqsweep: web</title>") && page.contains("api/status"), "{page}");
        assert!(!page.contains("src=") && !page.contains("href="), "the page loads nothing external");

        let (code, body) = get(addr, "/metrics", "Authorization: Bearer nope\r\n").await;
        assert_eq!((code, body.as_str()), (401, "unauthorized: wrong token (check FREQSWEEP_TOKEN)\n"));
        let (code, body) = get(addr, "/api/status", "").await;
        assert_eq!(code, 401);
        assert!(body.contains("missing token") && body.lines().count() == 1, "{body}");
        assert_eq!(get(addr, "/nothing", auth).await.0, 404);

        // The live point: planned maps before any chunk (every value null: grey on the page).
        let (code, json) = get(addr, "/api/points", auth).await;
        assert_eq!(code, 200, "{json}");
        let points: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(points[0]["state"], "ready");
        assert_eq!((points[0]["maps"].as_u64(), points[0]["maps_complete"].as_u64()), (Some(1), Some(0)));
        let (code, json) = get(addr, "/api/point?index=0", auth).await;
        assert_eq!(code, 200, "{json}");
        let point: serde_json::Value = serde_json::from_str(&json).unwrap();
        let map = &point["maps"][0];
        assert_eq!(
            (map["chunks"].as_u64(), map["chunks_done"].as_u64(), map["written"].as_u64()),
            (Some(2), Some(0), Some(0))
        );
        assert_eq!(map["values"].as_array().unwrap().len(), 32 * 32);
        assert!(map["values"].as_array().unwrap().iter().all(|v| v.is_null()));
        assert!(map["mean_error"].is_null() && point["f1"].as_object().unwrap().is_empty());
        for (path, code) in [
            ("/api/point", 400),
            ("/api/point?index=x", 400),
            ("/api/point?index=-1", 400),
            ("/api/point?index=99999999999999999999999", 400),
            ("/api/point?index=1", 404),
        ] {
            let (got, body) = get(addr, path, auth).await;
            assert_eq!(got, code, "{path}: {body}");
            assert_eq!(body.lines().count(), 1, "{body}");
        }
        assert_eq!(get(addr, "/api/point?index=0", "").await.0, 401);
        server.abort();
    }

    #[test]
    fn percent_decoding_leaves_malformed_escapes_alone() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%41"), "A");
    }
}
