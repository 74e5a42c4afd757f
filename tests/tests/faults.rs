//! Fault injection: a worker process killed (SIGKILL) in the middle of a training task. Its session
//! ends, the coordinator re-queues the task at once, the surviving worker finishes the sweep, and
//! the results are complete. A worker killed after uploading an epoch's checkpoint: the retry
//! resumes from that epoch and ends bit for bit where an uninterrupted run ends. A coordinator
//! killed mid-sweep restarts from its store.

use freqsweep_coordinator::store::Store;
use freqsweep_tests::{binary, run_bounded, wait_or_kill};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

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

/// `freqsweep run SPEC --local-workers 2 --worker-threads 1 EXTRA…` in a temporary directory;
/// when the log shows both workers training, `hook` gets the run's pid (on a thread of its own,
/// so the log pipe keeps draining). Returns the hook's result, the exit status, the log and the
/// run directory.
fn run_with_fault<R: Send + 'static>(
    extra: &[&str],
    hook: impl FnOnce(u32) -> R + Send + 'static,
) -> (Option<R>, std::process::ExitStatus, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("faults.toml");
    std::fs::write(&spec, SPEC).unwrap();
    let mut child = Command::new(binary("freqsweep"))
        .arg("run")
        .arg(&spec)
        .args(["--local-workers", "2", "--worker-threads", "1"])
        .args(extra)
        .arg("--out")
        .arg(dir.path().join("run"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut log, mut leased, mut hook, mut fault) = (Vec::new(), 0, Some(hook), None);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("leased") && line.contains("kind=\"train\"") {
                leased += 1;
                if leased == 2 {
                    if let Some(hook) = hook.take() {
                        fault = Some(std::thread::spawn(move || hook(pid)));
                    }
                }
            }
            log.push(line);
        }
        (fault.map(|f| f.join().unwrap()), log.join("\n"))
    });
    let status = wait_or_kill(&mut child, Duration::from_secs(300), &mut [], "the sweep did not finish in time");
    let (fault, log) = reader.join().unwrap();
    (fault, status, log, dir)
}

fn done_rows(dir: &tempfile::TempDir) -> usize {
    let results = std::fs::read_to_string(dir.path().join("run/results.csv")).unwrap();
    results.lines().filter(|l| l.contains(",done,")).count()
}

#[test]
fn a_worker_killed_mid_task_is_replaced_and_the_sweep_completes() {
    let (killed, status, log, dir) = run_with_fault(&[], |pid| {
        let victim = *children(pid).first().expect("worker processes");
        Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap().success()
    });
    assert_eq!(killed, Some(true), "never saw both workers training");
    assert!(status.success(), "the sweep failed after a worker was killed: {}", log.lines().last().unwrap_or(""));
    assert!(log.contains("worker left"), "the coordinator noticed the lost worker");
    assert!(log.contains("from=\"running\" to=\"ready\""), "the orphaned task was re-queued");
    assert_eq!(done_rows(&dir), 2);
}

/// Both workers paused (SIGSTOP, what `scontrol suspend` does to a job) past the lease timeout
/// while training, then resumed: the coordinator dropped their sessions and re-queued their tasks;
/// when they wake they are told their session expired, register again, and the sweep completes
/// (before the fix they stayed attached to dead sessions and the sweep hung for good).
#[test]
fn workers_paused_past_the_lease_timeout_register_again_and_the_sweep_completes() {
    let (paused, status, log, dir) = run_with_fault(&["--lease-timeout", "2"], |pid| {
        let workers = children(pid);
        let signal = |sig: &str| {
            for w in &workers {
                Command::new("kill").args([sig, &w.to_string()]).status().unwrap();
            }
        };
        signal("-STOP");
        std::thread::sleep(Duration::from_secs(5));
        signal("-CONT");
        workers.len()
    });
    assert_eq!(paused, Some(2), "both workers were paused while training");
    assert!(status.success(), "the sweep failed after the pause: {}", log.lines().last().unwrap_or(""));
    assert!(log.matches("worker expired").count() >= 2, "the coordinator dropped both paused workers");
    assert!(log.contains("session expired"), "the workers were told why their session ended");
    assert!(log.matches(" registered").count() >= 4, "each worker registered again");
    assert_eq!(done_rows(&dir), 2);
}

/// `freqsweep run` killed with SIGKILL mid-sweep: its local workers exit within seconds instead of
/// living on as orphans.
#[test]
fn the_workers_of_a_killed_run_exit_with_it() {
    let (workers, status, _log, _dir) = run_with_fault(&[], |pid| {
        let workers = children(pid);
        Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap();
        let alive = |w: &u32| {
            std::fs::read_to_string(format!("/proc/{w}/stat"))
                .is_ok_and(|stat| stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()) != Some("Z"))
        };
        let started = std::time::Instant::now();
        while workers.iter().any(alive) && started.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(50));
        }
        (workers.len(), workers.iter().filter(|w| alive(w)).count(), started.elapsed())
    });
    let (count, alive, waited) = workers.expect("both workers trained");
    assert!(!status.success(), "the run was killed");
    assert_eq!(count, 2);
    assert_eq!(alive, 0, "{alive} workers outlived their run (waited {waited:?})");
    assert!(waited < Duration::from_secs(5), "the workers took {waited:?} to exit");
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
    let status = wait_or_kill(
        &mut second,
        Duration::from_secs(300),
        &mut [&mut worker],
        "the restarted coordinator did not finish",
    );
    let mut log = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut log).unwrap();
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut second.stdout.take().unwrap(), &mut stdout).unwrap();
    let failures: Vec<&str> = log.lines().filter(|l| l.contains("failed") || l.contains("ERROR")).collect();
    assert!(status.success(), "{}\n{}", failures.join("\n"), log.lines().last().unwrap_or(""));
    assert!(log.contains("resuming"), "the second coordinator resumed from the store");
    assert!(stdout.contains("sweep finished: 6 done"), "{stdout}");
    let worker_status = worker.wait().unwrap();
    assert!(worker_status.success(), "the worker survived the coordinator's restart");
    let results = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(results.lines().filter(|l| l.contains(",done,")).count(), 2, "{results}");
    // Attempts live at the kill were closed when the run resumed: none is left open.
    let (store, writer) = Store::open(&out.join("freqsweep.db")).unwrap();
    let attempts = store.reader().unwrap().attempts().unwrap();
    writer.stop();
    assert!(attempts.iter().all(|a| a.outcome.is_some()), "{attempts:?}");
}

/// One training task long enough to be killed between epochs (each takes a fraction of a second).
const RESUME_SPEC: &str = r#"name = "resume"
[[dataset]]
kind = "syn"
band = 2
train = 2048
test = 64
[model]
arch = "tiny"
[train]
lr = 0.003
batch_size = 32
epochs = 6
seed = 1
[eval]
test_sets = ["B1234", "B124"]
every_steps = 16
steps_epochs = 6
"#;

fn worker(port: u16, cache: &std::path::Path) -> std::process::Child {
    Command::new(binary("freqsweep-worker"))
        .args(["--coordinator", &format!("http://127.0.0.1:{port}"), "--device", "cpu", "--threads", "1"])
        .args(["--connect-timeout", "60", "--cache-dir"])
        .arg(cache)
        .env("FREQSWEEP_TOKEN", "t")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// `epochs_done=N` in a log line.
fn epochs_done(line: &str) -> Option<u32> {
    line.split_whitespace().find_map(|w| w.strip_prefix("epochs_done=")).and_then(|v| v.parse().ok())
}

#[test]
fn a_retried_train_task_resumes_from_the_last_uploaded_checkpoint_and_ends_like_a_clean_run() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("resume.toml");
    std::fs::write(&spec, RESUME_SPEC).unwrap();

    // The reference: the same task, never interrupted (one libtorch thread, like the workers below).
    let clean = dir.path().join("clean");
    let out = run_bounded(
        Command::new(binary("freqsweep"))
            .arg("run")
            .arg(&spec)
            .args(["--local-workers", "1", "--worker-threads", "1", "--out"])
            .arg(&clean),
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "clean run: {}", String::from_utf8_lossy(&out.stderr));

    // The faulted run: worker A trains until the coordinator has recorded a checkpoint, is killed,
    // and worker B (an empty cache, so nothing local to resume from) takes the task over.
    let faulted = dir.path().join("faulted");
    let port = free_port();
    let mut coordinator = serve(&spec, &faulted, port);
    let mut first = worker(port, &dir.path().join("cache-a"));
    let victim = first.id();
    let (killed_tx, killed_rx) = std::sync::mpsc::channel();
    let stderr = coordinator.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut log = Vec::new();
        let mut killed = false;
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !killed && line.contains("checkpoint saved") && epochs_done(&line).is_some_and(|e| e >= 1) {
                Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap();
                killed = true;
                let _ = killed_tx.send(epochs_done(&line).unwrap());
            }
            log.push(line);
        }
        log
    });
    let saved_at_kill = killed_rx.recv_timeout(Duration::from_secs(120)).expect("no checkpoint was ever recorded");
    let _ = first.wait();
    let mut second = worker(port, &dir.path().join("cache-b"));
    let status =
        wait_or_kill(&mut coordinator, Duration::from_secs(120), &mut [&mut second], "the retried task did not finish");
    let _ = second.wait();
    let log = reader.join().unwrap().join("\n");
    assert!(status.success(), "{}", log.lines().last().unwrap_or(""));

    // The coordinator says where the retry resumed: at least the epoch saved when A was killed
    // (a later checkpoint may have landed between the log line and the kill), never at 0.
    let resumed_line = log.lines().find(|l| l.contains("resuming from a partial checkpoint")).unwrap_or_else(|| {
        panic!("the retry did not resume from a checkpoint:\n{log}");
    });
    let resumed = epochs_done(resumed_line).unwrap();
    assert!((saved_at_kill..6).contains(&resumed), "resumed at epoch {resumed}, saved {saved_at_kill} at the kill");

    // The store agrees: two attempts, the second resumed; the history equals the clean run's
    // exactly (replayed epochs are not stored twice) and so does the final checkpoint.
    let read = |run: &std::path::Path| {
        let (store, writer) = Store::open(&run.join("freqsweep.db")).unwrap();
        let reader = store.reader().unwrap();
        let task = reader.tasks().unwrap().into_iter().find(|t| t.kind == "train").unwrap();
        let result = (reader.task_attempts(task.id).unwrap(), reader.metrics(task.id).unwrap());
        writer.stop();
        result
    };
    let (attempts, metrics) = read(&faulted);
    let (clean_attempts, clean_metrics) = read(&clean);
    assert_eq!(clean_attempts.len(), 1);
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert_eq!((attempts[0].resumed_epoch, attempts[1].resumed_epoch), (None, Some(resumed)), "{attempts:?}");
    assert_eq!(attempts[1].outcome.as_deref(), Some("done"));
    assert!(metrics.len() > 100, "{} points", metrics.len());
    assert_eq!(metrics.len(), clean_metrics.len(), "no metric point stored twice or lost");
    assert!(metrics == clean_metrics, "the history equals an uninterrupted run's");
    let checkpoint = "checkpoints/Syn_2-tiny-adam-lr0.003-bs32-ep6-seed1.ot";
    let (a, b) = (std::fs::read(faulted.join(checkpoint)).unwrap(), std::fs::read(clean.join(checkpoint)).unwrap());
    assert!(a == b, "the final checkpoint (weights, optimizer state, history) equals the clean run's");
    // Superseded partial checkpoints were deleted: only the train task's outputs are left, the
    // final checkpoint and its weights alone (what heatmap tasks download).
    let (store, writer) = Store::open(&faulted.join("freqsweep.db")).unwrap();
    let reader = store.reader().unwrap();
    let train = reader.tasks().unwrap().into_iter().find(|t| t.kind == "train").unwrap();
    let mut names: Vec<String> = reader.task_artifacts(train.id).unwrap().into_iter().map(|a| a.0).collect();
    writer.stop();
    names.sort();
    assert_eq!(names, ["checkpoint", "model"]);
    assert_eq!(std::fs::read_dir(faulted.join("artifacts")).unwrap().count(), 2, "no orphaned checkpoint file");
}
