//! `freqsweep serve --http 127.0.0.1:0`: the bound HTTP address is logged, `/metrics`,
//! `/api/status` and the dashboard answer with the sweep's numbers when given the token, and a
//! wrong or missing token gets 401 with a one-line body.

use freqsweep_tests::{serve, tiny_spec, Served};
use std::io::{Read, Write};
use std::time::Duration;

/// One GET over a fresh connection: (status code, body).
fn get(addr: &str, path: &str, headers: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\r\n").unwrap();
    let mut raw = String::new();
    stream.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    (head.split_whitespace().nth(1).unwrap().parse().unwrap(), body.to_string())
}

/// The value of the one sample whose line starts with `prefix` (name plus labels).
fn sample(metrics: &str, prefix: &str) -> f64 {
    let lines: Vec<&str> = metrics.lines().filter(|l| l.starts_with(prefix)).collect();
    assert_eq!(lines.len(), 1, "one sample {prefix}:\n{metrics}");
    lines[0].rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn serve_exposes_metrics_status_and_dashboard_behind_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("watched.toml");
    // 2 grid points × (1 train + 2 heatmap chunks) = 6 tasks.
    std::fs::write(&spec, tiny_spec("watched", "[0.003, 0.01]")).unwrap();
    // The log line `dashboard at … http=127.0.0.1:PORT` names the bound HTTP port.
    let extra = ["--http".as_ref(), "127.0.0.1:0".as_ref()];
    let Served { child: mut serve, line, value: addr, lines } = serve(&spec, &dir.path().join("run"), &extra, "http=");
    assert!(line.contains("dashboard at http://"), "{line}");
    let _drain = std::thread::spawn(move || lines.map_while(Result::ok).count());
    let auth = "Authorization: Bearer right\r\n";

    let (code, metrics) = get(&addr, "/metrics", auth);
    assert_eq!(code, 200, "{metrics}");
    assert_eq!(sample(&metrics, "freqsweep_sweep_tasks "), 6.0);
    assert_eq!(sample(&metrics, "freqsweep_tasks{kind=\"train\",state=\"ready\"}"), 2.0);
    assert_eq!(sample(&metrics, "freqsweep_tasks{kind=\"heatmap\",state=\"blocked\"}"), 4.0);
    assert_eq!(sample(&metrics, "freqsweep_workers_connected "), 0.0);
    assert_eq!(sample(&metrics, "freqsweep_attempts_started_total "), 0.0);
    assert!(metrics.contains("# TYPE freqsweep_attempts_failed_total counter"), "{metrics}");

    let (code, json) = get(&addr, "/api/status", auth);
    assert_eq!(code, 200, "{json}");
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!((status["sweep"].as_str(), status["total_tasks"].as_u64()), (Some("watched"), Some(6)), "{json}");
    assert_eq!(status["tasks_by_kind"]["heatmap"]["blocked"], 4, "{json}");

    let (code, page) = get(&addr, "/?token=right", "");
    assert_eq!(code, 200);
    assert!(page.contains("freqsweep: watched") && page.contains("setInterval(poll, 2000)"), "{page}");

    let (code, body) = get(&addr, "/metrics", "Authorization: Bearer wrong\r\n");
    assert_eq!(code, 401);
    assert_eq!(body.lines().count(), 1, "{body}");
    assert!(body.contains("wrong token"), "{body}");
    let (code, body) = get(&addr, "/?token=wrong", "");
    assert!(code == 401 && body.contains("wrong token"), "{code} {body}");
    assert_eq!(get(&addr, "/api/status", "").0, 401);

    serve.kill().unwrap();
    serve.wait().unwrap();
}
