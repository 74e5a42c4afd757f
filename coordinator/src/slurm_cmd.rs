//! `freqsweep slurm submit`: write the worker array script for a running coordinator and hand it
//! to `sbatch` (the script's content is `freqsweep_coordinator::slurm`'s).

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use freqsweep_common::text::one_line;
use freqsweep_coordinator::slurm::{self, Submission};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct SlurmArgs {
    #[command(subcommand)]
    pub command: SlurmCommand,
}

#[derive(Subcommand)]
pub enum SlurmCommand {
    /// Submit a job array of workers for a coordinator (deploy/slurm/freqsweep-workers.sbatch
    /// filled in with these values and the token), or print the script with --dry-run.
    Submit(SubmitArgs),
}

#[derive(Args)]
pub struct SubmitArgs {
    /// The coordinator's URL as the worker nodes reach it, e.g. http://node1:7070.
    #[arg(long)]
    pub coordinator: String,
    /// Workers: array tasks, one worker each.
    #[arg(long)]
    pub workers: u32,
    /// SLURM partition (default: the cluster's default partition).
    #[arg(long)]
    pub partition: Option<String>,
    /// Time limit per worker job, in SLURM's format (default: the script's 1-00:00:00).
    #[arg(long)]
    pub time: Option<String>,
    /// GPUs per worker (0: CPU workers).
    #[arg(long, default_value_t = 1)]
    pub gpus_per_task: u32,
    /// CPUs per worker (default: the script's 4); the worker uses this many threads.
    #[arg(long)]
    pub cpus_per_task: Option<u32>,
    /// The worker binary as the nodes see it (default: freqsweep-worker next to this binary
    /// when it exists, else freqsweep-worker on the nodes' PATH).
    #[arg(long, value_name = "PATH")]
    pub worker_bin: Option<String>,
    /// The sweep's token (default: $FREQSWEEP_TOKEN); written into the script, which is made
    /// readable by you only.
    #[arg(long, env = "FREQSWEEP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Another #SBATCH option for the script, e.g. --sbatch-arg=--account=lab (repeatable): one
    /// option each, in its long form, its value unquoted; not one the script or a flag here sets.
    #[arg(long = "sbatch-arg", value_name = "OPTION", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
    /// Where to write the script (default: ./freqsweep-workers-<unix time>.sbatch).
    #[arg(long)]
    pub script: Option<PathBuf>,
    /// The sbatch to call.
    #[arg(long, default_value = "sbatch")]
    pub sbatch: String,
    /// Seconds to wait for sbatch before killing it (a controller that does not answer).
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub sbatch_timeout: u64,
    /// Print the script (token hidden) instead of writing and submitting it.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(args: &SlurmArgs) -> Result<()> {
    match &args.command {
        SlurmCommand::Submit(submit) => submit_workers(submit),
    }
}

fn submit_workers(args: &SubmitArgs) -> Result<()> {
    let worker = match &args.worker_bin {
        Some(w) => Some(w.clone()),
        None => std::env::current_exe()
            .ok()
            .map(|exe| exe.with_file_name("freqsweep-worker"))
            .filter(|p| p.is_file())
            .map(|p| p.display().to_string()),
    };
    let submission = Submission {
        coordinator: args.coordinator.clone(),
        workers: args.workers,
        partition: args.partition.clone(),
        time: args.time.clone(),
        gpus_per_task: args.gpus_per_task,
        cpus_per_task: args.cpus_per_task,
        token: args.token.clone().filter(|t| !t.is_empty()),
        worker,
        sbatch_args: args.sbatch_args.clone(),
    };
    if args.dry_run {
        print!("{}", slurm::worker_script(&submission, false).map_err(anyhow::Error::msg)?);
        return Ok(());
    }
    let script_text = slurm::worker_script(&submission, true).map_err(anyhow::Error::msg)?;
    if submission.token.is_none() {
        tracing::warn!("no token (FREQSWEEP_TOKEN): the workers present none; a coordinator with a token refuses them");
    }
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let script = args.script.clone().unwrap_or_else(|| PathBuf::from(format!("freqsweep-workers-{secs}.sbatch")));
    write_private(&script, &script_text)?;
    let mut sbatch = Command::new(&args.sbatch);
    // A relative path starting with `-` would read as an option.
    sbatch.arg("--parsable").arg(if script.as_os_str().as_encoded_bytes().starts_with(b"-") {
        Path::new(".").join(&script)
    } else {
        script.clone()
    });
    let shown = one_line(&script.display().to_string(), 200);
    let out = run_bounded(sbatch, Duration::from_secs(args.sbatch_timeout))
        .with_context(|| {
            format!("cannot run {} (is SLURM's client installed? --sbatch PATH)", one_line(&args.sbatch, 200))
        })?
        .ok_or_else(|| anyhow!("{} ({shown})", slurm::sbatch_timed_out(args.sbatch_timeout)))?;
    let job = slurm::sbatch_reply(out.status.success(), &out.status.to_string(), &out.stdout, &out.stderr)
        .map_err(|why| anyhow!("{why} ({shown})"))?;
    println!(
        "submitted job array {job} ({} worker{}) for {}; script {}",
        args.workers,
        if args.workers == 1 { "" } else { "s" },
        args.coordinator,
        script.display()
    );
    println!("watch: squeue -j {job}; freqsweep status --coordinator {}; stop: scancel {job}", args.coordinator);
    Ok(())
}

/// Write `path` readable and writable by the owner only (it holds the token), never through a
/// link: a symbolic link at `path` is refused (writing through it would overwrite whatever it
/// points to), and the text goes to a new file in the same directory (`O_EXCL`, mode 0600) renamed
/// over `path`. So an existing script, or a hard link to another file, is replaced rather than
/// rewritten, and sbatch never reads a half-written script. `rename` replaces a link created after
/// the check instead of following it.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let shown = one_line(&path.display().to_string(), 200);
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            bail!("--script {shown} is a symbolic link; freqsweep writes the script only to a path of its own")
        }
        Ok(meta) if !meta.is_file() => bail!("--script {shown} exists and is not a regular file"),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot inspect --script {shown}")),
    }
    let name = path.file_name().with_context(|| format!("--script {shown} names no file"))?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let written = (|| -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        // The umask may have narrowed the mode; fchmod, on this file itself.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()
    })();
    if let Err(e) = written {
        // Only a file this call created is removed (create_new failed otherwise: nothing to undo).
        if e.kind() != std::io::ErrorKind::AlreadyExists {
            let _ = std::fs::remove_file(&tmp);
        }
        return Err(e).with_context(|| format!("cannot write {}", one_line(&tmp.display().to_string(), 200)));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow!("cannot write --script {shown}: {e}")
    })
}

/// What a bounded run of sbatch collected.
struct Finished {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// The most of each output stream kept: an error quotes a few hundred characters of it.
const KEPT_OUTPUT: usize = 64 * 1024;

/// Run `cmd` (stdin closed) for at most `timeout`; `Ok(None)` when it ran past it, after killing
/// its process group: a shell-script wrapper's children (which hold the output pipes open) go
/// too. The first [`KEPT_OUTPUT`] bytes of each stream are kept and the rest read and dropped, so
/// a noisy child neither blocks on a full pipe nor fills memory.
fn run_bounded(mut cmd: Command, timeout: Duration) -> std::io::Result<Option<Finished>> {
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let mut child = cmd.spawn()?;
    let deadline = Instant::now() + timeout;
    let (tx, rx) = mpsc::channel();
    let pipes: [Option<Box<dyn Read + Send>>; 2] = [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>),
    ];
    let mut outputs: [Option<Vec<u8>>; 2] = [None, None];
    for (which, pipe) in pipes.into_iter().enumerate() {
        let tx = tx.clone();
        let Some(mut pipe) = pipe else {
            outputs[which] = Some(Vec::new());
            continue;
        };
        // Detached: after a kill a pipe still held by an escaped process must not hold us.
        std::thread::spawn(move || {
            let (mut kept, mut buf) = (Vec::new(), [0u8; 8192]);
            loop {
                match pipe.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let room = KEPT_OUTPUT.saturating_sub(kept.len());
                        kept.extend_from_slice(&buf[..n.min(room)]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send((which, kept));
        });
    }
    drop(tx);
    let mut status = None;
    loop {
        if status.is_none() {
            status = child.try_wait()?;
        }
        if let (Some(status), [Some(_), Some(_)]) = (status, &outputs) {
            let [stdout, stderr] = outputs.map(Option::unwrap_or_default);
            return Ok(Some(Finished { status, stdout, stderr }));
        }
        let now = Instant::now();
        if now >= deadline {
            // The group's id is the child's pid; POSIX keeps it from reuse while the group has a
            // member, and an empty group makes this a no-op (ESRCH).
            // SAFETY: killpg takes plain integers and touches no memory of ours.
            unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGKILL) };
            if status.is_none() {
                let _ = child.wait();
            }
            return Ok(None);
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_millis(20))) {
            Ok((which, bytes)) => outputs[which] = Some(bytes),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Both readers done (their results already taken): only the exit is awaited.
            Err(mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}
