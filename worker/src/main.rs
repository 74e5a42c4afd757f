//! `freqsweep-worker`: the GPU side of freqsweep. Standalone subcommands (`train`, `heatmap`) run
//! the engine without a coordinator and write plain files; each one listed by `--help` works end
//! to end.

mod corrupt_cmd;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use freqsweep_common::bands::BandSet;
use freqsweep_common::dataset::{self, Dataset};
use freqsweep_common::figures::write_map_files;
use freqsweep_common::heatmap::HeatmapAccumulator;
use freqsweep_common::logging::{self, LogFormat};
use freqsweep_common::spec;
use freqsweep_common::spectrum::{Cell, Shape2};
use freqsweep_common::syn::SynConfig;
use freqsweep_common::task::{
    Augment, DatasetSource, LrSchedule, MemoryFormat, MetricPoint, Optimizer, Precision, TrainConfig, TrainTask,
};
use freqsweep_worker::heatmap::{self, HeatmapConfig};
use freqsweep_worker::progress::Progress;
use freqsweep_worker::train::{TrainEnd, TrainObserver};
use freqsweep_worker::{checkpoint, data, device, eval, models};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(name = "freqsweep-worker", version, about = "freqsweep worker: trains and evaluates models on libtorch", long_about = None)]
struct Cli {
    /// Log format on stderr: pretty or json (filter with RUST_LOG, default info).
    #[arg(long, global = true, default_value = "pretty")]
    log_format: LogFormat,
    /// Join a sweep: the coordinator's address, e.g. http://10.0.0.5:7070, or https://… when it
    /// serves TLS (used without a subcommand).
    #[arg(long, env = "FREQSWEEP_COORDINATOR")]
    coordinator: Option<String>,
    /// Shared token of the sweep (sent on every call).
    #[arg(long, env = "FREQSWEEP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Device for leased tasks: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Where inputs are cached and tasks work (default: $FREQSWEEP_CACHE/worker or ~/.cache/freqsweep/worker).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// CPU threads for libtorch (default: libtorch's choice, usually every core). At most
    /// 4 × this machine's cores, and at most 1024.
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// CA certificate (PEM) to trust for an https:// coordinator (default: the system's roots).
    #[arg(long, value_name = "CA.pem", env = "FREQSWEEP_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Exit with an error when no coordinator answers for this many seconds.
    #[arg(long, default_value_t = 300)]
    connect_timeout: u64,
    /// Exit when the process with this pid is no longer this worker's parent (`freqsweep run`
    /// passes its own: its local workers must not outlive it).
    #[arg(long, value_name = "PID", hide = true)]
    exit_with_parent: Option<u32>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print what this worker can run on: libtorch location, CUDA devices, CPU threads (as JSON).
    Info {
        /// Device to check: cpu, cuda, cuda:N or auto.
        #[arg(long, default_value = "auto")]
        device: String,
    },
    /// Train one model without a coordinator; resumes if DIR holds a checkpoint of the same run.
    ///
    /// Writes DIR/task.json, DIR/checkpoint.ot (after every epoch), DIR/metrics.csv and
    /// DIR/metrics.jsonl (per-epoch and every-k-steps evaluations), DIR/result.json and
    /// DIR/model.pt (TorchScript, usable with `freqsweep-worker heatmap`).
    Train(TrainArgs),
    /// Fourier heatmap of a model (SCIENCE.md §2-3): test error under perturbation at every frequency.
    ///
    /// Writes DIR/heatmap.npy (float64 HxW error rate, DC at the centre), DIR/heatmap.png,
    /// DIR/heatmap.json and, with --layers, DIR/heatmap_<layer>.npy/.png (mean cosine distance).
    Heatmap(HeatmapArgs),
    /// Dominant frequency maps of a model (SCIENCE.md §7): per class, the loss with each
    /// frequency (or patch) removed, and the top-X % masks.
    ///
    /// Writes DIR/loss_class<c>.npy/.png, DIR/accdrop_class<c>.npy/.png,
    /// DIR/dfm_class<c>_top<X>.npy/.png for every class and X, and DIR/dfm.json.
    Dfm(DfmArgs),
    /// A corrupted copy of an image set (SCIENCE.md §9.1: the CIFAR-10-C suite regenerated, or
    /// fourier(u,v,eps)), and/or a sample sheet of every corruption × severity of one image.
    ///
    /// Writes OUT.npy (float32 [N,C,H,W] in [0,1]) and/or SHEET.png.
    Corrupt(corrupt_cmd::CorruptArgs),
}

#[derive(Args)]
struct TrainArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// A training task as JSON (freqsweep_common::task::TrainTask); overrides every flag below.
    #[arg(long)]
    task: Option<PathBuf>,
    /// Device: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "auto")]
    device: String,
    /// Syn_D data set: the band D (1-4) of class 3.
    #[arg(long, default_value_t = 4)]
    syn_band: u8,
    /// Syn_D training images.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=spec::MAX_SYN_IMAGES))]
    train: u64,
    /// Syn_D test images.
    #[arg(long, default_value_t = 400, value_parser = clap::value_parser!(u64).range(1..=spec::MAX_SYN_IMAGES))]
    test: u64,
    /// Seed of the Syn_D generator.
    #[arg(long, default_value_t = 0)]
    data_seed: u64,
    /// Use CIFAR-10 (binary version) from this directory instead of Syn_D.
    #[arg(long)]
    cifar10: Option<PathBuf>,
    /// Use .npy files instead: train images, train labels, test images, test labels.
    #[arg(long, num_args = 4, value_names = ["TRAIN_X", "TRAIN_Y", "TEST_X", "TEST_Y"])]
    npy: Option<Vec<PathBuf>>,
    /// Or an image folder: DIR/train/<class>/*.png|jpg and DIR/test/<class>/…, resized and
    /// centre-cropped to --size.
    #[arg(long, value_name = "DIR")]
    folder: Option<PathBuf>,
    /// Image side for --folder.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(4..=spec::MAX_IMAGE_SIDE))]
    size: u64,
    /// Model: alexnet, resnet18 or tiny.
    #[arg(long, default_value = "resnet18")]
    model: String,
    /// Number of classes (default: from the labels).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=spec::MAX_CLASSES))]
    classes: Option<u64>,
    /// Optimizer: sgd or adam.
    #[arg(long, default_value = "adam")]
    optimizer: String,
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Learning-rate schedule: constant, step or cosine.
    #[arg(long, default_value = "constant")]
    schedule: String,
    /// Step schedule: multiply the rate by --gamma every this many epochs.
    #[arg(long, default_value_t = 10)]
    step_every: u32,
    #[arg(long, default_value_t = 0.1)]
    gamma: f64,
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=spec::MAX_BATCH))]
    batch_size: u64,
    /// Epochs to train (at least 1: a run of none has no model to write).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    epochs: u32,
    /// Seed of weight initialisation, shuffling, augmentation and dropout.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Random horizontal flips.
    #[arg(long)]
    flip: bool,
    /// Random crops after zero padding by this many pixels.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=spec::MAX_CROP_PADDING as i64))]
    crop_padding: u32,
    /// Band-filtered test sets, comma separated.
    #[arg(long, default_value = "B1234,B124", value_delimiter = ',')]
    test_sets: Vec<String>,
    /// Also evaluate every this many steps …
    #[arg(long, default_value_t = 0)]
    eval_every_steps: u32,
    /// … during the first this many epochs.
    #[arg(long, default_value_t = 1)]
    eval_steps_epochs: u32,
    /// Evaluate on the first N test images only (0: all).
    #[arg(long, default_value_t = 0)]
    test_limit: usize,
    /// Clip band-filtered test images to [0, 1].
    #[arg(long)]
    clip: bool,
    /// fp32, or bf16 (bf16-mixed: fp32 master weights and optimizer state, bf16 forward and
    /// backward; where the device has bf16 instructions).
    #[arg(long, default_value = "fp32", value_parser = parse_precision)]
    precision: Precision,
    /// Memory layout of images and conv weights: auto (channels-last for conv nets), contiguous
    /// or channels_last.
    #[arg(long, default_value = "auto", value_parser = parse_memory_format)]
    memory_format: MemoryFormat,
}

#[derive(Args)]
struct HeatmapArgs {
    /// The model: a TorchScript file or a freqsweep checkpoint (.ot).
    #[arg(long)]
    model: PathBuf,
    /// Test images: float32 [N,3,H,W] in [0,1] or uint8 [N,H,W,3].
    #[arg(long)]
    images: PathBuf,
    /// Test labels: integer [N].
    #[arg(long)]
    labels: PathBuf,
    /// L2 norm of the perturbation of one channel (Yin et al.: 4 for CIFAR-10).
    #[arg(long)]
    eps: f64,
    #[arg(long)]
    out: PathBuf,
    /// Perturbed images per forward pass (bounds memory).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=spec::MAX_BATCH))]
    batch: u64,
    /// Layers for cosine-distance maps, comma separated, or `all`.
    #[arg(long, value_delimiter = ',')]
    layers: Vec<String>,
    /// Seed of the random signs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Use the first N images only (0: all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    #[arg(long, default_value = "auto")]
    device: String,
    #[command(flatten)]
    numerics: AnalysisNumerics,
}

/// What an analysis's model computes in (`heatmap`, `dfm`).
#[derive(Args)]
struct AnalysisNumerics {
    /// Numbers of the model's forward pass: fp32 (bit-reproducible) or bf16 (faster where the
    /// device has bf16 instructions; the perturbation or removal and the sums stay fp32/fp64).
    #[arg(long, default_value = "fp32", value_parser = parse_precision)]
    precision: Precision,
    /// Memory layout of the images and conv weights: auto (channels-last for conv nets, NCHW
    /// for others), contiguous or channels_last.
    #[arg(long, default_value = "auto", value_parser = parse_memory_format)]
    memory_format: MemoryFormat,
}

/// The model at `path` for `h × w` images in the numerics asked (fp32 where the device or the
/// model cannot), with the precision and memory format it computes in, to record.
fn load_for_analysis(
    path: &Path,
    device: tch::Device,
    (h, w): (usize, usize),
    numerics: &AnalysisNumerics,
) -> Result<(checkpoint::Loaded, Precision, MemoryFormat)> {
    let requested = freqsweep_worker::engine::numerics_for(device, numerics.precision, numerics.memory_format);
    let loaded =
        checkpoint::load_classifier(path, device, h as i64, w as i64, requested).map_err(anyhow::Error::msg)?;
    if let Some(why) = &loaded.fallback {
        tracing::warn!(reason = %why, "the model does not run in the requested precision; computing in fp32");
    }
    let (precision, format) = (loaded.numerics.precision(), loaded.numerics.memory_format());
    Ok((loaded, precision, format))
}

#[derive(Args)]
struct DfmArgs {
    /// The model: a TorchScript file or a freqsweep checkpoint (.ot).
    #[arg(long)]
    model: PathBuf,
    /// Test images: float32 [N,3,H,W] in [0,1] or uint8 [N,H,W,3].
    #[arg(long)]
    images: PathBuf,
    /// Test labels: integer [N].
    #[arg(long)]
    labels: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Side of the square patches of the spectrum removed together (1: single frequencies); it
    /// must divide the image's height and width.
    #[arg(long, default_value_t = 1)]
    patch: usize,
    /// Percentages of the units kept in each DFM, comma separated, each in (0, 100].
    #[arg(long, value_delimiter = ',', default_value = "1,5,10,20")]
    top: Vec<f64>,
    /// Classes to write maps of: `all` or a comma-separated list.
    #[arg(long, default_value = "all")]
    classes: String,
    /// Filtered images per forward pass (bounds memory).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=spec::MAX_BATCH))]
    batch: u64,
    /// Use the first N images only (0: all).
    #[arg(long, default_value_t = 0)]
    limit: usize,
    #[arg(long, default_value = "auto")]
    device: String,
    #[command(flatten)]
    numerics: AnalysisNumerics,
}

fn parse_precision(s: &str) -> Result<Precision, String> {
    Precision::parse(s).ok_or_else(|| format!("{s:?}: use fp32 or bf16"))
}

fn parse_memory_format(s: &str) -> Result<MemoryFormat, String> {
    MemoryFormat::parse(s).ok_or_else(|| format!("{s:?}: use auto, contiguous or channels_last"))
}

fn main() {
    let cli = Cli::parse();
    logging::init(cli.log_format);
    let result = match cli.threads {
        // Checked before libtorch starts a pool: 100 000 once made 3 725 threads and 31 GB of
        // virtual memory, and the worker never registered.
        Some(threads) => freqsweep_common::machine::Machine::this()
            .check_threads("--threads", threads)
            .map(|()| tch::set_num_threads(threads as i32))
            .map_err(anyhow::Error::msg),
        None => Ok(()),
    };
    let result: Result<()> = result.and_then(|()| match cli.command {
        Some(Command::Info { device }) => info(&device),
        Some(Command::Train(args)) => train(args),
        Some(Command::Heatmap(args)) => heatmap_cmd(args),
        Some(Command::Dfm(args)) => dfm_cmd(args),
        Some(Command::Corrupt(args)) => corrupt_cmd::run(args),
        None => match cli.coordinator.clone() {
            Some(url) => join(cli, url),
            None => Err(anyhow::anyhow!(
                "nothing to do: give --coordinator URL to join a sweep, or a subcommand (see --help)"
            )),
        },
    });
    if let Err(err) = result {
        // One line: the rest (a libtorch backtrace) only with RUST_LOG=debug.
        eprintln!("freqsweep-worker: error: {}", freqsweep_worker::engine::one_line(format!("{err:#}")));
        std::process::exit(1);
    }
}

/// Exit (with a one-line error) once `parent` is no longer this process's parent: it died, even
/// by `kill -9`, and this worker was handed to init. Polled, since a parent-death signal needs a
/// `prctl` this crate does not bind.
fn watch_parent(parent: u32) {
    std::thread::Builder::new()
        .name("parent-watch".into())
        .spawn(move || loop {
            if std::os::unix::process::parent_id() != parent {
                eprintln!("freqsweep-worker: error: the freqsweep run (pid {parent}) that started this worker is gone; exiting");
                // Not `process::exit`: it runs the exit handlers, whose libtorch destructors
                // pulled the context from under the engine thread's convolution, which then
                // panicked with a libtorch backtrace. Nothing is left to flush: stderr is
                // unbuffered, and the run whose work this was is gone (its next run re-leases it).
                // SAFETY: `_exit` only ends the process.
                unsafe { libc::_exit(1) }
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        })
        .expect("spawn the parent watch thread");
}

/// Join a sweep and lease tasks until it ends; SIGTERM/SIGINT drain (the running task is released).
fn join(cli: Cli, url: String) -> Result<()> {
    if let Some(parent) = cli.exit_with_parent {
        watch_parent(parent);
    }
    let device = device::parse_device(&cli.device)?;
    let cache_dir = match cli.cache_dir {
        Some(dir) => dir,
        None => default_cache_dir()?.join("worker"),
    };
    std::fs::create_dir_all(&cache_dir).with_context(|| format!("cannot create {}", cache_dir.display()))?;
    let engine = freqsweep_worker::engine::TorchEngine::new(device, cache_dir.join("tasks"));
    let config = freqsweep_worker::client::ClientConfig {
        coordinator: url,
        token: cli.token,
        cache_dir,
        hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default(),
        connect_timeout: Some(std::time::Duration::from_secs(cli.connect_timeout)),
        max_backoff: std::time::Duration::from_secs(10),
        tls_ca: match &cli.tls_ca {
            Some(path) => {
                // Bounded: `/dev/zero` given by mistake is refused at the limit, not read for ever.
                Some(
                    freqsweep_common::files::read_bounded(path, freqsweep_common::files::MAX_PEM_BYTES)
                        .with_context(|| format!("cannot read --tls-ca {}", path.display()))?,
                )
            }
            None => None,
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let exit = runtime.block_on(async move {
        let (tx, rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("signal received: draining");
            let _ = tx.send(true);
        });
        freqsweep_worker::client::run(config, Box::new(engine), device::describe(device), rx).await
    })?;
    tracing::info!(?exit, "worker finished");
    Ok(())
}

fn default_cache_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FREQSWEEP_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("HOME is not set; pass --cache-dir")?;
    Ok(PathBuf::from(home).join(".cache/freqsweep"))
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

fn task_from_flags(args: &TrainArgs, train: &Dataset) -> Result<TrainTask> {
    let dataset = if let Some(path) = &args.cifar10 {
        DatasetSource::Cifar10 { path: path.clone() }
    } else if let Some(dir) = &args.folder {
        let (train, test) = (dir.join("train"), dir.join("test"));
        let classes = freqsweep_common::dataset::folder_classes(&train)?;
        let side = args.size as usize;
        DatasetSource::Folder { train, test, size: [side, side], classes }
    } else if let Some(files) = &args.npy {
        DatasetSource::Npy {
            train_images: files[0].clone(),
            train_labels: files[1].clone(),
            test_images: files[2].clone(),
            test_labels: files[3].clone(),
            // Recorded in the checkpoint: analyses refuse images of another size.
            size: freqsweep_common::dataset::npy_image_size(&files[2]).ok().map(|(h, w)| [h, w]),
        }
    } else {
        let band = freqsweep_common::bands::Band::new(args.syn_band).context("--syn-band")?;
        DatasetSource::Syn(SynConfig {
            train: args.train as usize,
            test: args.test as usize,
            ..SynConfig::new(band, args.data_seed)
        })
    };
    // The default radii scaled to the images (exactly 4, 8, 12 on 32 × 32); the provisional
    // task, built before the data is read, has no images yet.
    let band_layout = match train.dims {
        [_, _, 0, _] | [_, _, _, 0] => freqsweep_common::bands::BandLayout::default(),
        [_, _, h, w] => freqsweep_common::bands::BandRadii::default()
            .layout(freqsweep_common::spectrum::Shape2::new(h, w))
            .context("the band radii of these images")?,
    };
    let optimizer = match args.optimizer.as_str() {
        "sgd" => Optimizer::Sgd { momentum: args.momentum, weight_decay: args.weight_decay, nesterov: false },
        "adam" => match Optimizer::adam() {
            Optimizer::Adam { beta1, beta2, eps, .. } => {
                Optimizer::Adam { weight_decay: args.weight_decay, beta1, beta2, eps }
            }
            sgd => sgd,
        },
        other => bail!("unknown optimizer {other:?}: use sgd or adam"),
    };
    let schedule = match args.schedule.as_str() {
        "constant" => LrSchedule::Constant,
        "step" => LrSchedule::Step { every_epochs: args.step_every, gamma: args.gamma },
        "cosine" => LrSchedule::Cosine { min_lr: 0.0 },
        other => bail!("unknown schedule {other:?}: use constant, step or cosine"),
    };
    let test_sets = args
        .test_sets
        .iter()
        .map(|s| s.parse::<BandSet>().map_err(|e| anyhow::anyhow!("--test-sets: {e}")))
        .collect::<Result<Vec<_>>>()?;
    Ok(TrainTask {
        dataset,
        train: TrainConfig {
            model: args.model.clone(),
            classes: args.classes.map_or_else(|| train.classes(), |c| c as usize),
            optimizer,
            lr: args.lr,
            schedule,
            batch_size: args.batch_size as usize,
            epochs: args.epochs,
            seed: args.seed,
            augment: Augment { flip: args.flip, crop_padding: args.crop_padding },
            test_sets,
            band_layout,
            clip_filtered: args.clip,
            eval_every_steps: args.eval_every_steps,
            eval_steps_epochs: args.eval_steps_epochs,
            test_limit: args.test_limit,
            precision: args.precision,
            memory_format: args.memory_format,
            keep_epochs: Vec::new(),
        },
    })
}

/// Writes the metric history as CSV and JSON lines after every epoch (rewritten whole, so a
/// resumed run never duplicates rows), and drives the progress bar.
struct FileObserver {
    out: PathBuf,
    progress: Progress,
}

impl TrainObserver for FileObserver {
    fn progress(&mut self, fraction: f64, _images_per_second: f64) {
        self.progress.set((fraction * 1000.0).round() as u64);
    }

    fn epoch_done(&mut self, _epoch: u32, _checkpoint: &Path, history: &[MetricPoint]) {
        if let Err(e) = write_metrics(&self.out, history) {
            tracing::warn!(error = %e, "could not write metrics");
        }
    }
}

fn write_metrics(dir: &Path, history: &[MetricPoint]) -> Result<()> {
    let mut csv = String::from("epoch,step,test_set,name,class,value\n");
    let mut jsonl = String::new();
    for p in history {
        csv.push_str(&format!("{},{},{},{},{},{}\n", p.epoch, p.step, p.test_set, p.name, p.class_index, p.value));
        jsonl.push_str(&serde_json::to_string(p)?);
        jsonl.push('\n');
    }
    write_atomic(&dir.join("metrics.csv"), csv.as_bytes())?;
    write_atomic(&dir.join("metrics.jsonl"), jsonl.as_bytes())
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let partial = path.with_extension("partial");
    let mut f = std::fs::File::create(&partial).with_context(|| format!("{}", partial.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&partial, path).with_context(|| format!("{}", path.display()))
}

fn train(args: TrainArgs) -> Result<()> {
    let device = device::parse_device(&args.device)?;
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let task: TrainTask = match &args.task {
        Some(path) => {
            // A task is a page of JSON: bounded like a spec.
            let text = freqsweep_common::files::read_text_bounded(path, freqsweep_common::files::MAX_SPEC_BYTES)
                .with_context(|| format!("{}", path.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{}: not a training task", path.display()))?
        }
        None => {
            // Flags describe the data; load it once to learn the class count, then build the task.
            let provisional = task_from_flags(&args, &Dataset { dims: [0; 4], images: vec![], labels: vec![] })?;
            let train = data::load_split(&provisional.dataset, freqsweep_common::syn::Split::Train)?;
            task_from_flags(&args, &train)?
        }
    };
    write_atomic(&args.out.join("task.json"), serde_json::to_string_pretty(&task)?.as_bytes())?;
    let (train_set, test_set) = data::load(&task.dataset)?;
    tracing::info!(
        dataset = %task.dataset.name(),
        model = %task.train.model,
        train = train_set.len(),
        test = test_set.len(),
        device = %device::describe(device),
        "training"
    );
    let checkpoint_path = args.out.join("checkpoint.ot");
    let mut observer = FileObserver { out: args.out.clone(), progress: Progress::new("train", 1000, "‰") };
    let end = freqsweep_worker::train::run(&task, &train_set, &test_set, device, &checkpoint_path, &mut observer)?;
    observer.progress.finish();
    let TrainEnd::Finished { outcome, history } = end else { bail!("training stopped before the end") };
    write_metrics(&args.out, &history)?;
    write_atomic(&args.out.join("result.json"), serde_json::to_string_pretty(&outcome)?.as_bytes())?;

    // A TorchScript copy of the final model, for `heatmap` and for PyTorch users.
    let mut vs = tch::nn::VarStore::new(device);
    let stored = checkpoint::load(&checkpoint_path)?;
    let export_model = models::build(&vs, &stored.meta.model);
    stored.restore_model(&mut vs, &checkpoint_path)?;
    let example = eval::images_tensor(&test_set.subset(&[0]), device);
    models::export_torchscript(&mut vs, export_model.as_ref(), &example, &args.out.join("model.pt"))
        .map_err(anyhow::Error::msg)?;

    for s in &outcome.test_sets {
        println!(
            "{:<6} accuracy {:.3}  macro-F1 {:.3}  per-class F1 [{}]",
            s.test_set,
            s.accuracy,
            s.macro_f1,
            s.per_class_f1.iter().map(|f| format!("{f:.2}")).collect::<Vec<_>>().join(", ")
        );
    }
    println!(
        "{} epochs, {} steps in {:.1} s on {}; wrote {}",
        outcome.epochs,
        outcome.steps,
        outcome.seconds,
        outcome.device,
        args.out.display()
    );
    Ok(())
}

fn heatmap_cmd(args: HeatmapArgs) -> Result<()> {
    let device = device::parse_device(&args.device)?;
    let data = data::within_size_bounds(dataset::read_npy_pair(&args.images, &args.labels)?, &args.images)?;
    let data = data::truncate(data, args.limit);
    if data.dims[1] != 3 {
        bail!("{}: images have {} channels; the models take 3", args.images.display(), data.dims[1]);
    }
    let (h, w) = (data.dims[2], data.dims[3]);
    // Recorded with the map: which file exactly was analysed (checkpoints also carry their own).
    let (model_digest, _) = freqsweep_common::digest::of_file(&args.model)
        .with_context(|| format!("cannot read {}", args.model.display()))?;
    let (loaded, precision, format) = load_for_analysis(&args.model, device, (h, w), &args.numerics)?;
    let (model, what) = (loaded.model, loaded.what);
    let layers = if args.layers.iter().any(|l| l == "all") { model.layer_names() } else { args.layers.clone() };
    let shape = Shape2::new(h, w);
    let cells: Vec<Cell> = shape.heatmap_cells();
    let config =
        HeatmapConfig { eps: args.eps, cells, layers: layers.clone(), seed: args.seed, batch: args.batch as usize };
    let images = eval::images_tensor(&data, device);
    tracing::info!(model = %args.model.display(), kind = %what, images = data.len(), cells = config.cells.len(), eps = args.eps, device = %device::describe(device), precision = precision.as_str(), memory_format = format.as_str(), "heatmap");
    let started = std::time::Instant::now();
    let mut progress = Progress::new("heatmap", (config.cells.len() * data.len()) as u64, "images");
    let counts = heatmap::compute(model.as_ref(), &images, &data.labels, &config, &mut |done, _| progress.set(done))
        .with_context(|| format!("{}", args.model.display()))?;
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();

    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut error_map = HeatmapAccumulator::new(shape);
    error_map.write_all(&counts.error)?;
    let model_name = args.model.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    let title = |what: &str| format!("{model_name} ε={}: {what}", args.eps);
    write_map_files(&args.out, "heatmap", &error_map, Some((0.0, 1.0)), &title("error"), "error rate")
        .map_err(anyhow::Error::msg)?;
    for (layer, stats) in &counts.layers {
        let mut map = HeatmapAccumulator::new(shape);
        map.write_all(stats)?;
        let (stem, title) = (format!("heatmap_{layer}"), title(&format!("{layer} cosine distance")));
        write_map_files(&args.out, &stem, &map, None, &title, "1 − cos").map_err(anyhow::Error::msg)?;
    }
    let means = error_map.means();
    let rows: Vec<&[f64]> = means.chunks(w).collect();
    let json = serde_json::json!({
        "eps": args.eps,
        "height": h,
        "width": w,
        "clean_error": counts.clean.mean(),
        "images": counts.images,
        "seed": args.seed,
        "model": args.model.display().to_string(),
        "model_digest": model_digest,
        "precision": precision.as_str(),
        "memory_format": format.as_str(),
        "device": device::describe(device),
        "layers": layers,
        "seconds": seconds,
        "perturbed_images_per_second": (config.cells.len() * counts.images) as f64 / seconds.max(1e-9),
        "error": rows,
    });
    write_atomic(&args.out.join("heatmap.json"), serde_json::to_string(&json)?.as_bytes())?;
    let worst = means.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    println!(
        "clean error {:.3}; perturbed error mean {:.3}, max {:.3} over {} cells x {} images in {:.1} s ({:.0} images/s); wrote {}",
        counts.clean.mean(),
        means.iter().sum::<f64>() / means.len() as f64,
        worst,
        config.cells.len(),
        counts.images,
        seconds,
        (config.cells.len() * counts.images) as f64 / seconds.max(1e-9),
        args.out.display()
    );
    Ok(())
}

/// The classes `--classes` names (`all`: every class the model outputs), each checked against
/// the model's outputs and the images present (`per_class[c]`: test images of class `c`).
fn chosen_classes(text: &str, per_class: &[u64]) -> Result<Vec<usize>> {
    let classes: Vec<usize> = if text.trim() == "all" {
        (0..per_class.len()).collect()
    } else {
        text.split(',')
            .map(|c| {
                c.trim()
                    .parse::<usize>()
                    .map_err(|_| anyhow::anyhow!("--classes: {c:?} is not a class number or `all`"))
            })
            .collect::<Result<_>>()?
    };
    for &c in &classes {
        if c >= per_class.len() {
            bail!("--classes: class {c} does not exist (the model outputs {} classes)", per_class.len());
        }
        if per_class[c] == 0 {
            bail!(
                "--classes: class {c} has no test images (the model outputs {} classes; choose the classes the labels have)",
                per_class.len()
            );
        }
    }
    Ok(classes)
}

fn dfm_cmd(args: DfmArgs) -> Result<()> {
    for &t in &args.top {
        freqsweep_common::dfm::top_count(1, t).map_err(|e| anyhow::anyhow!("--top: {e}"))?;
    }
    let device = device::parse_device(&args.device)?;
    let data = data::within_size_bounds(dataset::read_npy_pair(&args.images, &args.labels)?, &args.images)?;
    let data = data::truncate(data, args.limit);
    if data.dims[1] != 3 {
        bail!("{}: images have {} channels; the models take 3", args.images.display(), data.dims[1]);
    }
    let (h, w) = (data.dims[2], data.dims[3]);
    let shape = Shape2::new(h, w);
    let units = freqsweep_common::dfm::units(shape, args.patch).map_err(|e| anyhow::anyhow!("--patch: {e}"))?;
    let (model_digest, _) = freqsweep_common::digest::of_file(&args.model)
        .with_context(|| format!("cannot read {}", args.model.display()))?;
    let (loaded, precision, format) = load_for_analysis(&args.model, device, (h, w), &args.numerics)?;
    let images = eval::images_tensor(&data, device);
    // The classes are checked before the long computation: the model's outputs, measured by
    // the probe when it was loaded.
    let mut per_class = vec![0u64; loaded.classes];
    for &l in &data.labels {
        if let Some(n) = usize::try_from(l).ok().and_then(|l| per_class.get_mut(l)) {
            *n += 1;
        }
    }
    let classes = chosen_classes(&args.classes, &per_class)?;
    let config = freqsweep_worker::dfm::DfmConfig { patch: args.patch, units, batch: args.batch as usize };
    tracing::info!(model = %args.model.display(), kind = %loaded.what, images = data.len(), units = config.units.len(), patch = args.patch, device = %device::describe(device), precision = precision.as_str(), memory_format = format.as_str(), "dfm");
    let started = std::time::Instant::now();
    let mut progress = Progress::new("dfm", (config.units.len() * data.len()) as u64, "images");
    let counts =
        freqsweep_worker::dfm::compute(loaded.model.as_ref(), &images, &data.labels, &config, &mut |done, _| {
            progress.set(done)
        })
        .with_context(|| format!("{}", args.model.display()))?;
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();

    let mut acc = freqsweep_common::dfm::DfmAccumulator::new(shape, args.patch, counts.clean.len())
        .map_err(anyhow::Error::msg)?;
    acc.write_clean(&counts.clean)?;
    for (anchor, stats) in &counts.units {
        acc.write(*anchor, stats)?;
    }
    let model_name = args.model.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    freqsweep_common::figures::write_dfm_files(&args.out, &acc, &classes, &args.top, &model_name)
        .map_err(anyhow::Error::msg)?;
    // Per class: the units on top of its loss map (anchors, highest first) for the smallest X.
    let smallest = args.top.iter().copied().fold(f64::INFINITY, f64::min);
    let summary: Vec<serde_json::Value> = classes
        .iter()
        .map(|&c| {
            let loss = acc.loss_map(c);
            let per_unit: Vec<f64> = acc.units().iter().map(|&u| loss[shape.centred_index(u)]).collect();
            let top = freqsweep_common::dfm::top_units(&per_unit, smallest).unwrap_or_default();
            let clean = counts.clean[c];
            serde_json::json!({
                "class": c,
                "images": clean.images,
                "clean_loss": clean.loss / clean.images as f64,
                "clean_accuracy": clean.correct as f64 / clean.images as f64,
                "top_units": top.iter().map(|&i| [acc.units()[i].u, acc.units()[i].v]).collect::<Vec<_>>(),
                "top_losses": top.iter().map(|&i| per_unit[i]).collect::<Vec<_>>(),
            })
        })
        .collect();
    let json = serde_json::json!({
        "height": h,
        "width": w,
        "patch": args.patch,
        "units": acc.units().len(),
        "top": args.top,
        "images": counts.images,
        "model": args.model.display().to_string(),
        "model_digest": model_digest,
        "precision": precision.as_str(),
        "memory_format": format.as_str(),
        "device": device::describe(device),
        "seconds": seconds,
        "filtered_images_per_second": (acc.units().len() * counts.images) as f64 / seconds.max(1e-9),
        "classes": summary,
    });
    write_atomic(&args.out.join("dfm.json"), serde_json::to_string(&json)?.as_bytes())?;
    for entry in &summary {
        let top: Vec<String> =
            entry["top_units"].as_array().into_iter().flatten().map(|uv| format!("({},{})", uv[0], uv[1])).collect();
        println!(
            "class {}: clean loss {:.3}, accuracy {:.3}; top {} % of {} units: {}",
            entry["class"],
            entry["clean_loss"].as_f64().unwrap_or(f64::NAN),
            entry["clean_accuracy"].as_f64().unwrap_or(f64::NAN),
            freqsweep_common::spec::format_number(smallest),
            acc.units().len(),
            top.join(" ")
        );
    }
    println!(
        "{} units x {} images in {:.1} s ({:.0} images/s); wrote {}",
        acc.units().len(),
        counts.images,
        seconds,
        (acc.units().len() * counts.images) as f64 / seconds.max(1e-9),
        args.out.display()
    );
    Ok(())
}
