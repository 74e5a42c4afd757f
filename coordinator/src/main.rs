//! `freqsweep`: the coordinator binary. Subcommands are added as they work end to end; each one
//! listed by `--help` does what it says.

mod run_cmd;
mod slurm_cmd;
mod syn_cmd;

use anyhow::Result;
use clap::{Parser, Subcommand};
use freqsweep_common::logging::{self, LogFormat};

#[derive(Parser)]
#[command(name = "freqsweep", version, about = "Frequency analyses of image classifiers at cluster scale", long_about = None)]
struct Cli {
    /// Log format on stderr: pretty or json (filter with RUST_LOG, default info).
    #[arg(long, global = true, default_value = "pretty")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a frequency-controlled synthetic dataset Syn_D (npy arrays, a PNG sample grid, dataset.json).
    Syn(syn_cmd::SynArgs),
    /// Run a sweep on this machine: the coordinator plus N local worker processes (resumes on the same --out).
    Run(run_cmd::RunArgs),
    /// Coordinate a sweep for remote workers (`freqsweep-worker --coordinator URL`).
    Serve(run_cmd::ServeArgs),
    /// Progress of a running coordinator: tasks by state, workers, ETA.
    Status(run_cmd::StatusArgs),
    /// Re-write a run directory's result files from its store alone.
    Report(run_cmd::ReportArgs),
    /// SLURM: `freqsweep slurm submit` a job array of workers for a coordinator.
    Slurm(slurm_cmd::SlurmArgs),
}

fn main() {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result: Result<()> = match cli.command {
        Command::Syn(args) => syn_cmd::run(&args),
        Command::Run(args) => run_cmd::run(&args),
        Command::Serve(args) => run_cmd::serve(&args),
        Command::Status(args) => run_cmd::status(&args),
        Command::Report(args) => run_cmd::report(&args),
        Command::Slurm(args) => slurm_cmd::run(&args),
    };
    if let Err(err) = result {
        // One line naming the cause chain, then a non-zero exit.
        eprintln!("freqsweep: error: {err:#}");
        std::process::exit(1);
    }
}
