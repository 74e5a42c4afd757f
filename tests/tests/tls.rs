//! gRPC over TLS on loopback: `freqsweep serve --tls-cert/--tls-key` with the test CA's
//! certificate for 127.0.0.1 (`tests/fixtures/tls`, see `make.sh` there). A worker that does not
//! trust the CA, and one that dials `http://`, are refused at once with one line naming the cause;
//! `freqsweep status --tls-ca` reads the coordinator; a real `freqsweep-worker --tls-ca` runs the
//! whole sweep over TLS and both processes exit 0. With `--http` the dashboard is HTTPS with the
//! same certificate.

use freqsweep_tests::{binary, run_bounded, serve, tiny_spec, Served};
use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(300);

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tls").join(name)
}

fn last_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().to_string()
}

#[test]
fn a_worker_runs_a_sweep_over_tls_and_untrusting_or_plain_clients_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("secured.toml");
    std::fs::write(&spec, tiny_spec("secured", "0.003")).unwrap();
    let (cert, key) = (fixture("server.pem"), fixture("server.key"));
    let extra = ["--tls-cert".as_ref(), cert.as_os_str(), "--tls-key".as_ref(), key.as_os_str()];
    let Served { child: mut serve, line, value, lines } = serve(&spec, &dir.path().join("run"), &extra, "listen=");
    assert!(line.contains("tls=true"), "{line}");
    let port = value.rsplit(':').next().unwrap().to_string();
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    let https = format!("https://127.0.0.1:{port}");

    let worker = |url: &str, ca: Option<PathBuf>, cache: &str| {
        let mut cmd = Command::new(binary("freqsweep-worker"));
        cmd.args(["--coordinator", url, "--device", "cpu", "--threads", "1", "--connect-timeout", "30", "--cache-dir"])
            .arg(dir.path().join(cache))
            .env("FREQSWEEP_TOKEN", "right")
            .env_remove("FREQSWEEP_TLS_CA");
        if let Some(ca) = ca {
            cmd.arg("--tls-ca").arg(ca);
        }
        run_bounded(&mut cmd, LIMIT)
    };

    // Without the CA (system roots only): refused at once, not after --connect-timeout.
    let started = Instant::now();
    let untrusting = worker(&https, None, "cache-noca");
    assert!(!untrusting.status.success());
    let line = last_line(&untrusting);
    assert!(line.contains("does not trust") && line.contains("--tls-ca"), "{line}");
    assert!(started.elapsed() < Duration::from_secs(20), "a TLS error is not retried");
    // Another CA: the same refusal.
    let other = worker(&https, Some(fixture("other-ca.pem")), "cache-other");
    assert!(!other.status.success() && last_line(&other).contains("does not trust"), "{}", last_line(&other));
    // A plain URL against the TLS port: named as such.
    let plain = worker(&format!("http://127.0.0.1:{port}"), None, "cache-plain");
    assert!(!plain.status.success());
    let line = last_line(&plain);
    assert!(line.contains("serves TLS: dial https://"), "{line}");

    let status = run_bounded(
        Command::new(binary("freqsweep"))
            .args(["status", "--coordinator", &https, "--tls-ca"])
            .arg(fixture("ca.pem"))
            .env("FREQSWEEP_TOKEN", "right"),
        LIMIT,
    );
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{}", last_line(&status));
    assert!(table.contains("sweep secured") && table.contains("ready"), "{table}");

    let ok = worker(&https, Some(fixture("ca.pem")), "cache-ok");
    assert!(ok.status.success(), "{}", last_line(&ok));
    let started = Instant::now();
    let exit = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < LIMIT, "serve did not exit after the sweep");
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stdout = String::new();
    serve.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let log = drain.join().unwrap().join("\n");
    assert!(exit.success(), "{log}");
    assert!(stdout.contains("sweep finished: 3 done"), "{stdout}");
}

/// One HTTPS GET trusting only the test CA: the raw response, or the TLS error.
fn https_get(addr: &str, path: &str) -> Result<String, String> {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    use std::io::Write;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(fixture("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connection = rustls::ClientConnection::new(config.into(), ServerName::try_from("127.0.0.1").unwrap()).unwrap();
    let socket = std::net::TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(connection, socket);
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer right\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    match tls.read_to_end(&mut response) {
        // A server may close without a TLS close_notify once the response is complete.
        Err(e) if e.kind() != std::io::ErrorKind::UnexpectedEof => return Err(e.to_string()),
        _ => {}
    }
    Ok(String::from_utf8_lossy(&response).into_owned())
}

#[test]
fn with_tls_the_dashboard_and_metrics_are_https_only() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("watched.toml");
    std::fs::write(&spec, tiny_spec("watched", "0.003")).unwrap();
    let (cert, key) = (fixture("server.pem"), fixture("server.key"));
    let extra = [
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
        "--http".as_ref(),
        "127.0.0.1:0".as_ref(),
    ];
    let Served { child: mut serve, line, value: addr, lines } = serve(&spec, &dir.path().join("run"), &extra, "http=");
    let _drain = std::thread::spawn(move || lines.map_while(Result::ok).count());
    assert!(line.contains("dashboard at https://"), "{line}");

    let status = https_get(&addr, "/api/status").expect("an HTTPS request trusting the test CA");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(status.contains("\"sweep\":\"watched\""), "{status}");
    let metrics = https_get(&addr, "/metrics").unwrap();
    assert!(metrics.contains("freqsweep_sweep_tasks 3"), "{metrics}");

    // Plain HTTP on the same port gets no HTTP answer (the token is never read in the clear).
    let mut plain = std::net::TcpStream::connect(&addr).unwrap();
    plain.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(&mut plain, b"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer right\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/1.1 200") && !String::from_utf8_lossy(&answer).contains("freqsweep_"));

    serve.kill().unwrap();
    serve.wait().unwrap();
}

/// `/dev/zero` given as a PEM file (a slip of the shell's completion) is refused at the PEM
/// bound with one line naming the file, by each program that reads one: before the bound, the
/// whole file was read and a process reached 11.6 GB resident in 10 s.
#[test]
fn an_endless_pem_file_is_refused_at_the_limit_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("zero.toml");
    std::fs::write(&spec, tiny_spec("zero", "0.003")).unwrap();
    let zero = std::path::Path::new("/dev/zero");
    let mut serve = Command::new(binary("freqsweep"));
    serve.arg("serve").arg(&spec).args(["--listen", "127.0.0.1:0", "--out"]).arg(dir.path().join("run"));
    serve.arg("--tls-cert").arg(zero).arg("--tls-key").arg(fixture("server.key"));
    let mut status = Command::new(binary("freqsweep"));
    status.args(["status", "--coordinator", "https://127.0.0.1:1", "--tls-ca"]).arg(zero);
    let mut worker = Command::new(binary("freqsweep-worker"));
    worker.args(["--coordinator", "https://127.0.0.1:1", "--device", "cpu", "--cache-dir"]).arg(dir.path().join("w"));
    worker.arg("--tls-ca").arg(zero);
    for (what, cmd) in
        [("serve --tls-cert", &mut serve), ("status --tls-ca", &mut status), ("worker --tls-ca", &mut worker)]
    {
        let started = Instant::now();
        let out = run_bounded(cmd.env_remove("FREQSWEEP_TLS_CA"), Duration::from_secs(60));
        let line = last_line(&out);
        assert!(!out.status.success(), "{what}: accepted");
        assert!(line.contains("/dev/zero") && line.contains("larger than 1 MiB"), "{what}: {line}");
        let errors = String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.contains("error")).count();
        assert_eq!(errors, 1, "{what}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(started.elapsed() < Duration::from_secs(30), "{what}: {:?}", started.elapsed());
    }
}
