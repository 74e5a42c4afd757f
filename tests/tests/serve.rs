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

/// One run per directory: while `serve` holds a run directory, `freqsweep run` (or another
/// `serve`) on it is refused with one line naming the holder; a `kill -9` of the holder releases
/// it, and the next run resumes there.
#[test]
fn a_run_directory_is_held_by_one_process_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("held.toml");
    std::fs::write(&spec, tiny_spec("held", "0.003")).unwrap();
    let out = dir.path().join("run");
    let Served { child: mut holder, lines, .. } = serve(&spec, &out, &[], "listen=");
    let drain = std::thread::spawn(move || lines.map_while(Result::ok).count());
    let second = |subcommand: &[&str]| {
        let out = run_bounded(
            Command::new(binary("freqsweep"))
                .args(subcommand)
                .arg(&spec)
                .arg("--out")
                .arg(&out)
                .env("FREQSWEEP_TOKEN", "t"),
            LIMIT,
        );
        (out.status.success(), String::from_utf8_lossy(&out.stderr).trim().to_string())
    };
    for subcommand in [&["run", "--local-workers", "1"][..], &["serve", "--listen", "127.0.0.1:0"][..]] {
        let (ok, stderr) = second(subcommand);
        assert!(!ok, "{subcommand:?} ran beside the holder");
        let expected = format!("is in use by another freqsweep (pid {} on", holder.id());
        assert!(stderr.lines().count() == 1 && stderr.contains(&expected), "{subcommand:?}: {stderr}");
    }
    holder.kill().unwrap();
    holder.wait().unwrap();
    drain.join().unwrap();
    let (ok, stderr) = second(&["run", "--local-workers", "1", "--worker-threads", "1"]);
    assert!(ok, "the lock of a killed holder is released: {stderr}");
    let results = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(results.lines().filter(|l| l.contains(",done,")).count(), 1, "{results}");
}
