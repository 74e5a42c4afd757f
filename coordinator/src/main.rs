//! `freqsweep`: the coordinator binary. Subcommands are added as they work end to end; each one
//! listed by `--help` does what it says.

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
}

fn main() {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result: Result<()> = match cli.command {
        Command::Syn(args) => syn_cmd::run(&args),
    };
    if let Err(err) = result {
        // One line naming the cause chain, then a non-zero exit.
        eprintln!("freqsweep: error: {err:#}");
        std::process::exit(1);
    }
}
