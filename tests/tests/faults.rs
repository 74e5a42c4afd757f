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
