//! The SLURM test: a real single-node SLURM cluster (munged, slurmctld, slurmd, all as child
//! processes configured by a generated `slurm.conf` in a temporary directory: localhost node, free
//! ports, no cgroups, two fake GPUs) runs the real scripts of `deploy/slurm/`. The coordinator job
//! serves a tiny Syn sweep on 127.0.0.1 and writes its URL; an array of two worker jobs finds it
//! there and joins; `scancel` of the array drains them (the training task's lease is released, the
//! jobs leave the queue at once, not after SLURM's kill timeout); a second array, submitted by
//! `freqsweep slurm submit`, resumes the task from its last epoch checkpoint and completes the
//! sweep, and every job ends by itself.
//!
//! `FREQSWEEP_SLURM_TEST_KEEP=1` keeps the directory (configuration, daemon logs, job outputs).
//! Needs root and the Debian packages `slurmctld slurmd slurm-client munge` (`.ci/run` installs
//! them). Without them the test says so loudly and passes, and `cargo xtask test` names it as
//! skipped in its last lines; with `FREQSWEEP_REQUIRE_SLURM=1` or `FREQSWEEP_REQUIRE_ALL=1` (set
//! by `.ci/run`) it fails instead.

use freqsweep_tests::binary;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The whole test must finish within this.
const LIMIT: Duration = Duration::from_secs(120);

const SPEC: &str = r#"name = "slurm"
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
epochs = 8
seed = 1
[heatmap]
eps = [4.0]
images = 8
chunk_cells = 257
"#;

const BINARIES: [&str; 6] = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel"];

/// Where a system binary is (sbin directories are not always on a test's PATH).
fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file());
    found
}

/// `None` when SLURM can run here; otherwise why not.
fn unavailable() -> Option<String> {
    let missing: Vec<&str> = BINARIES.iter().copied().filter(|b| find(b).is_none()).collect();
    if !missing.is_empty() {
        return Some(format!(
            "{} not installed (as root: apt-get install slurmctld slurmd slurm-client munge)",
            missing.join(", ")
        ));
    }
    let uid = Command::new("id").arg("-u").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref() != Some("0") {
        return Some("not root (slurmd runs jobs as root in this single-node set-up)".into());
    }
    None
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running single-node cluster; dropping it cancels every job and stops the daemons.
struct Cluster {
    dir: PathBuf,
    conf: PathBuf,
    daemons: Vec<Child>,
}

impl Cluster {
    fn start(dir: &Path) -> Cluster {
        let dir = dir.join("slurm");
        for sub in ["state", "spool", "munge"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let munge = dir.join("munge");
        // munged checks permissions: a private key, a socket directory others may traverse.
        let mut key = vec![0u8; 1024];
        std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut key).unwrap();
        std::fs::write(munge.join("munge.key"), &key).unwrap();
        chmod(&munge.join("munge.key"), "600");
        chmod(&munge, "755");
        let socket = munge.join("munge.sock");
        let mut cluster = Cluster { conf: dir.join("slurm.conf"), dir: dir.clone(), daemons: Vec::new() };
        cluster.spawn(
            Command::new(find("munged").unwrap())
                .args(["--foreground", "--force", "--num-threads=2"])
                .arg(format!("--socket={}", socket.display()))
                .arg(format!("--key-file={}", munge.join("munge.key").display()))
                .arg(format!("--log-file={}", munge.join("munged.log").display()))
                .arg(format!("--pid-file={}", munge.join("munged.pid").display()))
                .arg(format!("--seed-file={}", munge.join("munged.seed").display())),
            "munged",
        );
        wait_for("munged's socket", Duration::from_secs(10), || socket.exists());

        let d = dir.display();
        let conf = format!(
            "ClusterName=fstest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={socket}
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
# The node below has the resources the scripts ask for, whatever this machine has.
SlurmdParameters=config_overrides
GresTypes=gpu
KillWait=30
MinJobAge=600
NodeName=fsnode NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=8 RealMemory=16000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=fsnode Default=YES MaxTime=INFINITE State=UP
",
            ctld_port = free_port(),
            slurmd_port = free_port(),
            socket = socket.display(),
        );
        std::fs::write(&cluster.conf, conf).unwrap();
        // Two fake GPUs: SLURM only needs device files to hand out (it sets CUDA_VISIBLE_DEVICES).
        std::fs::write(
            dir.join("gres.conf"),
            "NodeName=fsnode Name=gpu File=/dev/null\nNodeName=fsnode Name=gpu File=/dev/zero\n",
        )
        .unwrap();
        let conf_path = cluster.conf.clone();
        cluster.spawn(Command::new(find("slurmctld").unwrap()).arg("-D").arg("-f").arg(&conf_path), "slurmctld");
        cluster.spawn(
            Command::new(find("slurmd").unwrap()).args(["-D", "-N", "fsnode"]).arg("-f").arg(&conf_path),
            "slurmd",
        );
        let started = Instant::now();
        loop {
            let state = cluster.command("sinfo", &["-h", "-n", "fsnode", "-o", "%T"]);
            let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
            if state == "idle" {
                break;
            }
            if started.elapsed() > Duration::from_secs(30) {
                panic!("the SLURM node never became idle (state {state:?}); see {}/slurmctld.log", dir.display());
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        cluster
    }

    fn spawn(&mut self, command: &mut Command, name: &str) {
        let log = std::fs::File::create(self.dir.join(format!("{name}.out"))).unwrap();
        let child = command
            .env("SLURM_CONF", &self.conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        self.daemons.push(child);
    }

    /// Run a SLURM client command against this cluster.
    fn command(&self, name: &str, args: &[&str]) -> Output {
        let binary = find(name).unwrap_or_else(|| panic!("{name} not installed"));
        Command::new(binary).args(args).env("SLURM_CONF", &self.conf).output().unwrap()
    }

    /// Job ids (`123_0`, …) in the queue.
    fn queue(&self) -> Vec<String> {
        let out = self.command("squeue", &["-h", "-o", "%i %T"]);
        String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Jobs first (their processes are not children of slurmd), then the daemons.
        let _ = self.command("scancel", &["--user=root"]);
        let started = Instant::now();
        while !self.queue().is_empty() && started.elapsed() < Duration::from_secs(15) {
            std::thread::sleep(Duration::from_millis(200));
        }
        for child in self.daemons.iter_mut().rev() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

fn chmod(path: &Path, mode: &str) {
    assert!(Command::new("chmod").arg(mode).arg(path).status().unwrap().success());
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < limit, "{what} not ready after {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/slurm").join(name)
}

/// Submit with `sbatch --parsable`; returns the job id.
fn sbatch(cluster: &Cluster, args: &[&str]) -> String {
    let out = cluster.command("sbatch", args);
    assert!(out.status.success(), "sbatch failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap().to_string()
}

/// Submit the real coordinator script serving `SPEC` on 127.0.0.1; returns the job id.
fn submit_coordinator(cluster: &Cluster, dir: &Path) -> String {
    let port = free_port();
    let exports = [
        format!("FREQSWEEP_BIN={}", binary("freqsweep").display()),
        "FREQSWEEP_TOKEN=slurm-test-token".to_string(),
        format!("FREQSWEEP_LISTEN=127.0.0.1:{port}"),
        format!("FREQSWEEP_URL=http://127.0.0.1:{port}"),
    ];
    // One core instead of two: the coordinator of a three-task sweep is idle.
    sbatch(
        cluster,
        &[
            "--parsable",
            "--cpus-per-task=1",
            &format!("--chdir={}", dir.display()),
            &format!("--export=ALL,{}", exports.join(",")),
            script("freqsweep-coordinator.sbatch").to_str().unwrap(),
            dir.join("slurm.toml").to_str().unwrap(),
            dir.join("run").to_str().unwrap(),
        ],
    )
}

/// Submit the real worker script as a 2-task array; returns the array job id.
fn submit_workers(cluster: &Cluster, dir: &Path) -> String {
    let worker = binary("freqsweep-worker");
    let exports = [
        format!("FREQSWEEP_COORDINATOR_FILE={}", dir.join("run/coordinator.url").display()),
        "FREQSWEEP_TOKEN=slurm-test-token".to_string(),
        format!("FREQSWEEP_WORKER={}", worker.display()),
        // The fake GPUs are /dev/null: SLURM allocates them, libtorch here is a CPU build.
        "FREQSWEEP_DEVICE=cpu".to_string(),
        format!("FREQSWEEP_WORKER_CACHE={}", dir.join("cache").display()),
        "FREQSWEEP_WORKER_ARGS=--connect-timeout 20".to_string(),
    ];
    // One core per worker instead of four: this machine may have two, shared with the coordinator.
    sbatch(
        cluster,
        &[
            "--parsable",
            "--array=0-1",
            "--cpus-per-task=1",
            &format!("--chdir={}", dir.display()),
            &format!("--export=ALL,{}", exports.join(",")),
            script("freqsweep-workers.sbatch").to_str().unwrap(),
        ],
    )
}

/// `freqsweep slurm submit` for a 2-worker array against the coordinator job's URL: first its
/// `--dry-run` (the values in, the token out), then for real; returns the array job id.
fn submit_with_freqsweep(cluster: &Cluster, dir: &Path) -> String {
    let url = std::fs::read_to_string(dir.join("run/coordinator.url")).unwrap().trim().to_string();
    let submit = |extra: &[&str]| {
        let mut cmd = Command::new(binary("freqsweep"));
        cmd.args(["slurm", "submit", "--coordinator", &url, "--workers", "2", "--partition", "debug"])
            .args(["--time", "10:00", "--cpus-per-task", "1"])
            .args(extra)
            .arg("--sbatch")
            .arg(find("sbatch").unwrap())
            .current_dir(dir)
            .env("SLURM_CONF", &cluster.conf)
            .env("FREQSWEEP_TOKEN", "slurm-test-token")
            // The job's environment, passed on by sbatch (the fake GPUs are /dev/null).
            .env("FREQSWEEP_DEVICE", "cpu")
            .env("FREQSWEEP_WORKER_CACHE", dir.join("cache"))
            .env("FREQSWEEP_WORKER_ARGS", "--connect-timeout 20");
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "freqsweep slurm submit: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let dry = submit(&["--dry-run"]);
    for line in ["#SBATCH --array=0-1", "#SBATCH --partition=debug", "#SBATCH --time=10:00", "#SBATCH --gres=gpu:1"] {
        assert!(dry.lines().any(|l| l == line), "{line} missing from the dry run:\n{dry}");
    }
    assert!(!dry.contains("slurm-test-token"), "a dry run prints no token:\n{dry}");
    assert!(std::fs::read_dir(dir).unwrap().all(|e| !e.unwrap().path().to_string_lossy().ends_with(".sbatch")));

    let script = dir.join("workers.sbatch");
    let printed = submit(&["--script", script.to_str().unwrap()]);
    let job = printed
        .strip_prefix("submitted job array ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no job id in {printed:?}"))
        .to_string();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&script).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the script holds the token: owner only");
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.contains("export FREQSWEEP_TOKEN='slurm-test-token'"), "{text}");
    job
}

/// Wait until a line matching `pred` is in the file at `log` (or panic showing it after `limit`).
fn wait_log(log: &Path, limit: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| pred(l)) {
            return line.to_string();
        }
        if started.elapsed() > limit {
            panic!("{what} did not happen within {limit:?}; {}:\n{text}", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn job_outputs(dir: &Path, job: &str) -> String {
    let mut text = String::new();
    for task in 0..2 {
        let path = dir.join(format!("freqsweep-worker-{job}_{task}.out"));
        text.push_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())));
    }
    text
}

#[test]
fn workers_submitted_with_sbatch_complete_a_sweep_and_scancel_drains_them() {
    if let Some(why) = unavailable() {
        return freqsweep_tests::skip("the SLURM test (tests/tests/slurm.rs)", "FREQSWEEP_REQUIRE_SLURM", &why);
    }
    let started = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let kept;
    let dir = if std::env::var("FREQSWEEP_SLURM_TEST_KEEP").is_ok_and(|v| v == "1") {
        // For debugging: leave slurm.conf, the daemons' logs and the job outputs behind.
        kept = tmp.keep();
        eprintln!("SLURM test directory (kept): {}", kept.display());
        kept.as_path()
    } else {
        tmp.path()
    };
    let cluster = Cluster::start(dir);

    std::fs::write(dir.join("slurm.toml"), SPEC).unwrap();
    let coordinator = submit_coordinator(&cluster, dir);
    let log = dir.join(format!("freqsweep-coordinator-{coordinator}.out"));
    wait_log(&log, Duration::from_secs(30), "the coordinator job serving", |l| l.contains("serving"));

    // First array: both workers join; once training has a checkpoint, scancel the array.
    let first = submit_workers(&cluster, dir);
    // Both array tasks must be running before the scancel (a pending one would leave no output).
    let joined = || std::fs::read_to_string(&log).unwrap_or_default().matches("worker joined").count();
    wait_for("both workers of the first array to join", Duration::from_secs(60), || joined() >= 2);
    wait_log(&log, Duration::from_secs(60), "a checkpoint of the training task", |l| l.contains("checkpoint saved"));
    let cancel = cluster.command("scancel", &[&first]);
    assert!(cancel.status.success(), "scancel: {}", String::from_utf8_lossy(&cancel.stderr));
    let cancelled = Instant::now();
    // SIGTERM drains: the lease comes back at once and the jobs end well before KillWait (30 s).
    wait_log(&log, Duration::from_secs(20), "the drained worker releasing its lease", |l| {
        l.contains("lease released") && l.contains("draining")
    });
    let workers_left = |job: &str| !cluster.queue().iter().any(|j| j.starts_with(&format!("{job}_")));
    wait_for("the cancelled workers to leave the queue", Duration::from_secs(20), || workers_left(&first));
    assert!(cancelled.elapsed() < Duration::from_secs(20), "the workers were killed, not drained");
    let outputs = job_outputs(dir, &first);
    assert!(outputs.contains("draining"), "a worker logged its drain:\n{outputs}");
    // SLURM gave each worker its own GPU (two fake ones on this node).
    for gpu in ["CUDA_VISIBLE_DEVICES=0 ", "CUDA_VISIBLE_DEVICES=1 "] {
        assert!(outputs.contains(gpu), "{gpu} missing:\n{outputs}");
    }

    // Second array, submitted by `freqsweep slurm submit`: the training task resumes from its
    // last checkpoint and the sweep completes; the coordinator job and the workers then end by
    // themselves.
    let second = submit_with_freqsweep(&cluster, dir);
    let finished = wait_log(&log, LIMIT.saturating_sub(started.elapsed()), "the end of the sweep", |l| {
        l.starts_with("sweep finished") || l.starts_with("sweep stopped") || l.starts_with("freqsweep: error")
    });
    assert_eq!(finished, format!("sweep finished: 3 done; results in {}", dir.join("run").display()));
    let text = std::fs::read_to_string(&log).unwrap();
    let resumed = text.lines().find(|l| l.contains("resuming from a partial checkpoint")).expect("the retry resumed");
    assert!(!resumed.contains("epochs_done=0"), "{resumed}");
    wait_for("every job to end by itself", Duration::from_secs(30), || cluster.queue().is_empty());
    let outputs = job_outputs(dir, &second);
    assert!(outputs.contains("worker finished exit=SweepDone"), "{outputs}");
    let results = std::fs::read_to_string(dir.join("run/results.csv")).unwrap();
    assert_eq!(results.lines().filter(|l| l.contains(",done,")).count(), 1, "{results}");
    assert!(started.elapsed() < LIMIT);
}
