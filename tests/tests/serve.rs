//! The cluster shape on loopback: `freqsweep serve` with a token, `freqsweep status` against it, a
//! worker with the wrong token refused with a one-line error, and a real `freqsweep-worker
//! --coordinator URL` that runs the whole sweep; both processes exit 0.

use freqsweep_tests::{binary, run_bounded, serve, tiny_spec, Served};
use std::process::Command;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn serve_status_and_a_remote_worker() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("served.toml");
    std::fs::write(&spec, tiny_spec("served", "0.003")).unwrap();
    // The log line `serving listen=127.0.0.1:PORT` names the bound port.
    let Served { child: mut serve, value, lines, .. } = serve(&spec, &dir.path().join("run"), &[], "listen=");
    let url = format!("http://{value}");
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());

    let status = run_bounded(
        Command::new(binary("freqsweep")).args(["status", "--coordinator", &url]).env("FREQSWEEP_TOKEN", "right"),
        LIMIT,
    );
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(table.contains("sweep served") && table.contains("ready"), "{table}");

    let worker = |token: &str| {
        let mut cmd = Command::new(binary("freqsweep-worker"));
        cmd.args([
            "--coordinator",
            &url,
            "--device",
            "cpu",
            "--threads",
            "1",
            "--connect-timeout",
            "10",
            "--cache-dir",
        ])
        .arg(dir.path().join(format!("cache-{token}")))
        .env("FREQSWEEP_TOKEN", token);
        run_bounded(&mut cmd, LIMIT)
    };
    let refused = worker("wrong");
    assert!(!refused.status.success());
    let last = String::from_utf8_lossy(&refused.stderr).lines().last().unwrap_or_default().to_string();
    assert!(last.contains("rejected this worker") && last.contains("wrong token"), "{last}");

    let ok = worker("right");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr).lines().last().unwrap_or(""));
    let started = Instant::now();
    let exit = loop {
        if let Some(status) = serve.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < LIMIT, "serve did not exit after the sweep");
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut serve.stdout.take().unwrap(), &mut s).unwrap();
        s
    };
    let log = drain.join().unwrap().join("\n");
    assert!(exit.success(), "{log}");
    assert!(stdout.contains("sweep finished: 3 done"), "{stdout}");
    assert!(log.contains("worker joined") && log.contains("worker left"), "joins and leaves are logged");
    assert!(dir.path().join("run/results.csv").is_file());
}
