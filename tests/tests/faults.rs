//! Fault injection: a worker process killed (SIGKILL) in the middle of a training task. Its session
//! ends, the coordinator re-queues the task at once, the surviving worker finishes the sweep, and
//! the results are complete.

use freqsweep_tests::binary;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SPEC: &str = r#"name = "faults"
[[dataset]]
kind = "syn"
band = [1, 4]
train = 3000
test = 64
[model]
arch = "tiny"
[train]
lr = 0.003
batch_size = 32
epochs = 3
[heatmap]
eps = [4.0]
images = 8
chunk_cells = 257
"#;

/// Child processes of `pid` (Linux).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

#[test]
fn a_worker_killed_mid_task_is_replaced_and_the_sweep_completes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("faults.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let out = dir.path().join("run");
    let mut child = Command::new(binary("freqsweep"))
        .arg("run")
        .arg(&spec)
        .args(["--local-workers", "2", "--worker-threads", "1", "--out"])
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut log = Vec::new();
        let mut leased = 0;
        let mut killed = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("leased") && line.contains("kind=\"train\"") {
                leased += 1;
                // Both workers hold a training task now: kill one of them.
                if leased == 2 && !killed {
                    let victim = *children(pid).first().expect("worker processes");
                    Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap();
                    killed = true;
                }
            }
            log.push(line);
        }
        (killed, log)
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            panic!("sweep did not finish in time");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (killed, log) = reader.join().unwrap();
    let log = log.join("\n");
    assert!(killed, "never saw both workers training");
    assert!(status.success(), "the sweep failed after a worker was killed: {}", log.lines().last().unwrap_or(""));
    assert!(log.contains("worker left"), "the coordinator noticed the lost worker");
    assert!(log.contains("from=\"running\" to=\"ready\""), "the orphaned task was re-queued");
    let results = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(results.lines().filter(|l| l.contains(",done,")).count(), 2, "{results}");
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn serve(spec: &std::path::Path, out: &std::path::Path, port: u16) -> std::process::Child {
    Command::new(binary("freqsweep"))
        .arg("serve")
        .arg(spec)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--out"])
        .arg(out)
        .env("FREQSWEEP_TOKEN", "t")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn a_coordinator_killed_mid_sweep_restarts_from_its_store_and_the_worker_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("faults.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let out = dir.path().join("run");
    let port = free_port();
    let mut first = serve(&spec, &out, port);
    let mut worker = Command::new(binary("freqsweep-worker"))
        .args(["--coordinator", &format!("http://127.0.0.1:{port}"), "--device", "cpu", "--threads", "1"])
        .args(["--connect-timeout", "60", "--cache-dir"])
        .arg(dir.path().join("cache"))
        .env("FREQSWEEP_TOKEN", "t")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the coordinator once the first training task has finished (something is in the store).
    let lines = BufReader::new(first.stderr.take().unwrap()).lines();
    let mut saw_done = false;
    for line in lines.map_while(Result::ok) {
        if line.contains("to=\"done\"") {
            saw_done = true;
            break;
        }
    }
    assert!(saw_done, "the first coordinator never completed a task");
    first.kill().unwrap();
    let _ = first.wait();

    // Same spec, same directory, same port: it resumes and the worker reconnects by itself.
    let mut second = serve(&spec, &out, port);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = second.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = second.kill();
            let _ = worker.kill();
            panic!("the restarted coordinator did not finish");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut log).unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut second.stdout.take().unwrap(), &mut stdout).unwrap();
    assert!(status.success(), "{}", log.lines().last().unwrap_or(""));
    assert!(log.contains("resuming"), "the second coordinator resumed from the store");
    assert!(stdout.contains("sweep finished: 6 done"), "{stdout}");
    let worker_status = worker.wait().unwrap();
    assert!(worker_status.success(), "the worker survived the coordinator's restart");
    let results = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(results.lines().filter(|l| l.contains(",done,")).count(), 2, "{results}");
}
