//! `freqsweep slurm submit` against a fake sbatch (`tests/fake-sbatch`, its behaviour picked by
//! `FAKE_SBATCH`): a noisy one is quoted on one bounded line, a hanging one is killed after
//! `--sbatch-timeout`, and the script is never written through a link. The real sbatch runs in
//! `tests/tests/slurm.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn fake_sbatch() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake-sbatch")
}

/// `freqsweep slurm submit` for 2 workers in `dir`, with `extra` arguments and the fake sbatch in
/// `mode`; killed (and the test failed) if it runs past 30 s.
fn submit(dir: &Path, mode: &str, extra: &[&str], env: &[(&str, &Path)]) -> (Output, Duration) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_freqsweep"));
    cmd.args(["slurm", "submit", "--coordinator", "http://node1:7070", "--workers", "2"])
        .args(extra)
        .arg("--sbatch")
        .arg(fake_sbatch())
        .current_dir(dir)
        .env("FREQSWEEP_TOKEN", "t0ken")
        .env("FAKE_SBATCH", mode)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let started = Instant::now();
    let mut child = cmd.spawn().unwrap();
    // Drain the pipes on threads so a chatty child never blocks; the watchdog bounds the test.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut v).ok();
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut v).ok();
        v
    });
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            child.kill().ok();
            child.wait().ok();
            panic!("freqsweep slurm submit ({mode}) still ran after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    (Output { status, stdout: out.join().unwrap(), stderr: err.join().unwrap() }, elapsed)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn slurm_submit_quotes_a_noisy_sbatch_on_one_bounded_line() {
    let dir = tempfile::tempdir().unwrap();
    for mode in ["noise", "noise-ok"] {
        let (out, _) = submit(dir.path(), mode, &[], &[]);
        let err = stderr(&out);
        assert!(!out.status.success(), "{mode}");
        assert_eq!(err.lines().count(), 1, "{mode}: one line, not {} bytes", err.len());
        assert!(err.len() < 1000, "{mode}: bounded, not {} bytes", err.len());
        assert!(!err.contains('\u{1b}'), "{mode}: escapes shown, not sent to the terminal");
        assert!(err.contains("NOISE"), "{mode}: {err}");
    }
}

#[test]
fn slurm_submit_kills_a_hanging_sbatch_after_its_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("sleep.pid");
    let (out, elapsed) = submit(dir.path(), "hang", &["--sbatch-timeout", "1"], &[("FAKE_SBATCH_PID", &pid_file)]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("did not finish within 1 s"), "{err}");
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    // The helper that held sbatch's pipes went with it (killed as its process group).
    let pid = std::fs::read_to_string(&pid_file).unwrap().trim().to_string();
    let started = Instant::now();
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie nobody reaped yet (a container's init may not).
        if state.is_empty() || state.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "sbatch's child {pid} still runs: {state}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn slurm_submit_refuses_a_symlinked_script() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, "keep me\n").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join("w.sbatch")).unwrap();
    let called = dir.path().join("sbatch-called");
    let (out, _) = submit(dir.path(), "ok", &["--script", "w.sbatch"], &[("FAKE_SBATCH_CALLED", &called)]);
    let err = stderr(&out);
    assert!(!out.status.success(), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("w.sbatch") && err.contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep me\n", "the link's target is untouched");
    assert!(!called.exists(), "sbatch is not called");
}

/// An existing script is replaced (mode 0600, the new text), not rewritten in place: a file
/// hard-linked to it keeps its text.
#[test]
fn slurm_submit_replaces_an_existing_script_not_the_files_linked_to_it() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other");
    std::fs::write(&other, "keep me\n").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o644)).unwrap();
    let script = dir.path().join("w.sbatch");
    std::fs::hard_link(&other, &script).unwrap();
    let (out, _) = submit(dir.path(), "ok", &["--script", "w.sbatch"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("submitted job array 4242 (2 workers)"), "{stdout}");
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "keep me\n");
    assert_eq!(std::fs::metadata(&other).unwrap().permissions().mode() & 0o777, 0o644);
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.contains("export FREQSWEEP_TOKEN='t0ken'"), "{text}");
    assert_eq!(std::fs::metadata(&script).unwrap().permissions().mode() & 0o777, 0o600);
    // No temporary file left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

/// A script path that starts with `-` reaches sbatch as a path, not as an option.
#[test]
fn slurm_submit_passes_a_dash_script_path_as_a_path() {
    let dir = tempfile::tempdir().unwrap();
    let called = dir.path().join("sbatch-args");
    let (out, _) = submit(dir.path(), "ok", &["--script=-w.sbatch"], &[("FAKE_SBATCH_CALLED", &called)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let args = std::fs::read_to_string(&called).unwrap();
    assert_eq!(args, "--parsable\n./-w.sbatch\n");
    assert!(dir.path().join("-w.sbatch").is_file());
}
