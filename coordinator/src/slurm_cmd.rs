//! `freqsweep slurm submit`: write the worker array script for a running coordinator and hand it
//! to `sbatch` (the script's content is `freqsweep_coordinator::slurm`'s).

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use freqsweep_coordinator::slurm::{self, Submission};
use std::path::PathBuf;
use std::process::Command;

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
    /// Another #SBATCH option for the script, e.g. --sbatch-arg=--account=lab (repeatable).
    #[arg(long = "sbatch-arg", value_name = "OPTION", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
    /// Where to write the script (default: ./freqsweep-workers-<unix time>.sbatch).
    #[arg(long)]
    pub script: Option<PathBuf>,
    /// The sbatch to call.
    #[arg(long, default_value = "sbatch")]
    pub sbatch: String,
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
    let out = Command::new(&args.sbatch)
        .arg("--parsable")
        .arg(&script)
        .output()
        .with_context(|| format!("cannot run {} (is SLURM's client installed? --sbatch PATH)", args.sbatch))?;
    let job = slurm::sbatch_reply(out.status.success(), &out.status.to_string(), &out.stdout, &out.stderr)
        .map_err(|why| anyhow::anyhow!("{why} ({})", script.display()))?;
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

/// Create `path` readable and writable by the owner only (it holds the token).
fn write_private(path: &std::path::Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // An existing file keeps its mode on open: tighten it.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("cannot restrict {}", path.display()))?;
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}
