//! `freqsweep-worker`: the GPU side of freqsweep. Subcommands are added as they work end to end;
//! each one listed by `--help` does what it says.

use anyhow::Result;
use clap::{Parser, Subcommand};
use freqsweep_common::logging::{self, LogFormat};
use freqsweep_worker::device;

#[derive(Parser)]
#[command(name = "freqsweep-worker", version, about = "freqsweep worker: trains and evaluates models on libtorch", long_about = None)]
struct Cli {
    /// Log format on stderr: pretty or json (filter with RUST_LOG, default info).
    #[arg(long, global = true, default_value = "pretty")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print what this worker can run on: libtorch location, CUDA devices, CPU threads (as JSON).
    Info {
        /// Device to check: cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "auto")]
        device: String,
    },
}

fn main() {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result: Result<()> = match cli.command {
        Command::Info { device } => info(&device),
    };
    if let Err(err) = result {
        eprintln!("freqsweep-worker: error: {err:#}");
        std::process::exit(1);
    }
}

fn info(device_spec: &str) -> Result<()> {
    let device = device::parse_device(device_spec)?;
    let cuda = tch::Cuda::is_available();
    let report = serde_json::json!({
        "worker_version": env!("CARGO_PKG_VERSION"),
        "device": device::describe(device),
        "cuda_available": cuda,
        "cuda_devices": if cuda { tch::Cuda::device_count() } else { 0 },
        "cudnn_available": tch::Cuda::cudnn_is_available(),
        "cpu_threads": tch::get_num_threads(),
        "libtorch_lib": option_env!("FREQSWEEP_LIBTORCH_LIB"),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
