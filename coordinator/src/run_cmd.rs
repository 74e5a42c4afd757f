//! `freqsweep run`, `serve`, `status` and `report`: the CLI around [`freqsweep_coordinator::run`].

use anyhow::{bail, Context, Result};
use clap::Args;
use freqsweep_coordinator::run;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[derive(Args)]
pub struct RunArgs {
    /// The sweep spec (TOML).
    pub spec: PathBuf,
    /// Local worker processes to start (CPU). At most 4 per core and one per 512 MiB of
    /// available memory (at least 1 is always allowed). Default: 2, or 1 where only one is
    /// allowed.
    #[arg(long)]
    pub local_workers: Option<usize>,
    /// Run directory (default: runs/<sweep name>). Running again on the same directory resumes.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Device of the local workers: cpu, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// libtorch CPU threads per local worker (default: cores / workers). Results are bit-identical
    /// across runs with the same thread count. At most 4 × cores (and 1024) per worker, and
    /// 4 × cores for all the local workers together.
    #[arg(long)]
    pub worker_threads: Option<usize>,
    /// Serve the dashboard (/), /metrics and /api/status over HTTP on this address, e.g.
    /// 127.0.0.1:8080 (off unless given). The URL with the run's token is logged.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Seconds a worker may stay silent before it is dropped and its tasks re-queued (a worker
    /// paused longer, e.g. by `scontrol suspend`, registers again when it wakes).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub lease_timeout: f64,
    /// Attempts of one task that may end badly (a failure, or its worker dying while running
    /// it) before the task fails; releases and backups do not count.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_attempts: u32,
}

#[derive(Args)]
pub struct ServeArgs {
    pub spec: PathBuf,
    /// Address to listen on, e.g. 0.0.0.0:7070.
    #[arg(long)]
    pub listen: String,
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Shared token workers must present (default: $FREQSWEEP_TOKEN).
    #[arg(long, env = "FREQSWEEP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Serve the dashboard (/), /metrics and /api/status over HTTP on this address, e.g.
    /// 0.0.0.0:8080 (off unless given; requires the token too when one is set). HTTPS with the
    /// same certificate when --tls-cert/--tls-key are given.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Serve gRPC over TLS with this certificate (PEM, chain first); workers then dial https://.
    #[arg(long, value_name = "CERT.pem", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "KEY.pem", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Seconds a worker may stay silent before it is dropped and its tasks re-queued (a worker
    /// paused longer, e.g. by `scontrol suspend`, registers again when it wakes).
    #[arg(long, value_name = "SECONDS", default_value_t = 30.0)]
    pub lease_timeout: f64,
    /// Attempts of one task that may end badly (a failure, or its worker dying while running
    /// it) before the task fails; releases and backups do not count.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub max_attempts: u32,
    /// With --http: keep serving the dashboard this many seconds after the sweep ends (the
    /// results are written first; SIGTERM or Ctrl-C ends it sooner).
    #[arg(long, value_name = "SECONDS", default_value_t = 0.0, requires = "http")]
    pub linger: f64,
}

#[derive(Args)]
pub struct StatusArgs {
    /// Coordinator address (https://… for a coordinator serving TLS).
    #[arg(long, default_value = "http://127.0.0.1:7070", env = "FREQSWEEP_COORDINATOR")]
    pub coordinator: String,
    #[arg(long, env = "FREQSWEEP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) to trust for an https:// coordinator (default: the system's roots).
    #[arg(long, value_name = "CA.pem", env = "FREQSWEEP_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Refresh every this many seconds until the coordinator goes away (0: print once).
    #[arg(long, default_value_t = 0)]
    pub watch: u64,
}

#[derive(Args)]
pub struct ReportArgs {
    /// A run directory (holding freqsweep.db).
    pub dir: PathBuf,
}

/// `--out`, or `runs/<sweep name>`.
fn out_dir(out: &Option<PathBuf>, spec: &run::SpecFile) -> PathBuf {
    out.clone().unwrap_or_else(|| PathBuf::from("runs").join(&spec.sweep.name))
}

/// `--lease-timeout`: workers heartbeat five times per timeout (at most every 2 s).
fn set_lease_timeout(config: &mut freqsweep_coordinator::driver::ServiceConfig, seconds: f64) -> Result<()> {
    if !(0.5..=86_400.0).contains(&seconds) {
        bail!("--lease-timeout {seconds}: give between 0.5 and 86400 seconds");
    }
    let ms = (seconds * 1000.0).round() as u64;
    config.scheduler.lease_timeout = ms;
    config.heartbeat_interval_ms = (ms / 5).clamp(100, 2_000) as u32;
    Ok(())
}

/// `--lease-timeout` and `--max-attempts`, shared by `run` and `serve`.
fn set_limits(
    config: &mut freqsweep_coordinator::driver::ServiceConfig,
    lease_timeout: f64,
    max_attempts: u32,
) -> Result<()> {
    set_lease_timeout(config, lease_timeout)?;
    if !(1..=1000).contains(&max_attempts) {
        bail!("--max-attempts {max_attempts}: give between 1 and 1000");
    }
    config.scheduler.max_attempts = max_attempts;
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
}

/// The run's token: 128 bits from the OS's CSPRNG (it guards the local workers' port and, with
/// `--http`, the dashboard).
fn random_token() -> Result<String> {
    freqsweep_coordinator::secret::random_hex(16).context("cannot draw a random token from /dev/urandom")
}

/// The worker binary next to this one (both are built into the same directory).
fn worker_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name("freqsweep-worker");
    if !path.is_file() {
        bail!("{} not found next to {} (build both binaries: cargo xtask build)", path.display(), exe.display());
    }
    Ok(path)
}

/// Bind `addr` and serve the dashboard and `/metrics` in the background for the life of the
/// runtime. The bound address is logged (one line) so `--http 0.0.0.0:0` can be found; `shown_token`
/// is appended to the logged URL (only for `run`, whose random token the user cannot know).
async fn start_http(
    run: &run::Run,
    addr: &str,
    shown_token: Option<&str>,
    tls: Option<&freqsweep_coordinator::tls::TlsIdentity>,
) -> Result<()> {
    let acceptor = tls.map(|identity| identity.http_acceptor()).transpose().map_err(anyhow::Error::msg)?;
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen for HTTP on {addr}"))?;
    let bound = listener.local_addr()?;
    let query = shown_token.map(|t| format!("?token={t}")).unwrap_or_default();
    let scheme = if acceptor.is_some() { "https" } else { "http" };
    tracing::info!(http = %bound, "dashboard at {scheme}://{bound}/{query} (also /metrics and /api/status)");
    tokio::spawn(freqsweep_coordinator::http::serve(run.shared.clone(), listener, acceptor));
    Ok(())
}

fn print_summary(dir: &Path, summary: &run::Summary) -> Result<()> {
    print_summary_of(dir, summary, None)
}

/// The summary line: `sweep finished` only when nothing is left to do; a run still holding the
/// directory, or one stopped before the end, is said to be so.
fn print_summary_of(dir: &Path, summary: &run::Summary, running: Option<&str>) -> Result<()> {
    let counts: Vec<String> = summary.counts.iter().map(|(s, c)| format!("{c} {s}")).collect();
    let terminal = ["done", "failed", "cancelled", freqsweep_coordinator::report::UNREADABLE];
    let unfinished = summary.counts.iter().any(|(s, c)| *c > 0 && !terminal.contains(&s.as_str()));
    match running {
        Some(holder) => println!(
            "sweep running ({holder}): {}; the report shows what is stored so far, in {}",
            counts.join(", "),
            dir.display()
        ),
        None if unfinished => println!(
            "sweep stopped before it finished: {}; run it again on {} to resume",
            counts.join(", "),
            dir.display()
        ),
        None => println!("sweep finished: {}; results in {}", counts.join(", "), dir.display()),
    }
    println!("report: {}", dir.join("report.html").display());
    for (key, why) in &summary.unreadable {
        eprintln!("unreadable: {key}: {why}");
    }
    if !summary.failed.is_empty() {
        for (key, error) in &summary.failed {
            eprintln!("failed: {key}: {error}");
        }
        bail!("{} task(s) failed (see above and {}/freqsweep.db)", summary.failed.len(), dir.display());
    }
    if !summary.unreadable.is_empty() {
        bail!(
            "{} stored result(s) cannot be read: {}/freqsweep.db is damaged; those points are marked unreadable in the report",
            summary.unreadable.len(),
            dir.display()
        );
    }
    Ok(())
}

pub fn run(args: &RunArgs) -> Result<()> {
    // Before anything is opened or started: 500 workers once took 16 GB and made no progress.
    let machine = freqsweep_common::machine::Machine::this();
    // The default adapts (a one-core machine runs one worker); a number given is checked.
    let workers = args.local_workers.unwrap_or(machine.max_local_workers().min(2));
    machine.check_local_workers(workers, args.worker_threads).map_err(anyhow::Error::msg)?;
    // Read once: a spec on a pipe or /dev/stdin has no second reading.
    let spec = run::SpecFile::read(&args.spec)?;
    let dir = out_dir(&args.out, &spec);
    let token = random_token()?;
    let mut config = run::default_config(Some(token.clone()));
    set_limits(&mut config, args.lease_timeout, args.max_attempts)?;
    // Local workers share this machine's cores: a backup attempt would slow the straggler it is
    // meant to overtake. Speculation is for clusters (`serve`), where workers are separate machines.
    config.scheduler.speculation.max_backups = 0;
    let mut run = run::open_spec(spec, &dir, config)?;
    let worker = worker_binary()?;
    let rt = runtime()?;
    let threads = args.worker_threads.unwrap_or(machine.cores / workers).max(1);
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("binding a loopback port")?;
        let url = format!("http://{}", listener.local_addr()?);
        tracing::info!(coordinator = %url, workers, run = %dir.display(), tasks = run.tasks.len(), "embedded sweep");
        if let Some(addr) = &args.http {
            start_http(&run, addr, Some(&token), None).await?;
        }
        let mut children: Vec<Child> = Vec::new();
        for k in 0..workers {
            let cache = dir.join("workers").join(format!("w{k}"));
            let child = Command::new(&worker)
                .arg("--coordinator")
                .arg(&url)
                .args(["--device", &args.device, "--threads", &threads.to_string(), "--connect-timeout", "60"])
                // Local workers die with this process, even when it is killed with SIGKILL.
                .args(["--exit-with-parent", &std::process::id().to_string()])
                .arg("--cache-dir")
                .arg(&cache)
                .env("FREQSWEEP_TOKEN", &token)
                .stdin(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {}", worker.display()))?;
            children.push(child);
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // If every worker process dies before the sweep ends, stop instead of waiting forever.
        let watcher = {
            let mut pids: Vec<Child> = std::mem::take(&mut children);
            tokio::task::spawn_blocking(move || loop {
                let alive = pids.iter_mut().map(|c| c.try_wait()).filter(|r| matches!(r, Ok(None))).count();
                if alive == 0 {
                    let _ = stop_tx.send(true);
                    return pids;
                }
                if stop_tx.is_closed() {
                    return pids;
                }
                std::thread::sleep(Duration::from_millis(200));
            })
        };
        run.serve_until_finished(listener, stop_rx).await?;
        let mut pids = match tokio::time::timeout(Duration::from_secs(15), watcher).await {
            Ok(Ok(pids)) => pids,
            _ => Vec::new(),
        };
        for child in &mut pids {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        Ok::<_, anyhow::Error>(())
    })?;
    let finished = run.shared.finished();
    let done = *finished.borrow();
    let summary = run.write_results()?;
    if !done {
        bail!("the local workers exited before the sweep finished (see their log lines above); run the same command again to resume");
    }
    print_summary(&dir, &summary)
}

pub fn serve(args: &ServeArgs) -> Result<()> {
    // Read once: a spec on a pipe or /dev/stdin has no second reading.
    let spec = run::SpecFile::read(&args.spec)?;
    let dir = out_dir(&args.out, &spec);
    if args.token.is_none() {
        tracing::warn!("no token set: any client that reaches {} can join (set FREQSWEEP_TOKEN)", args.listen);
    }
    let mut config = run::default_config(args.token.clone());
    set_limits(&mut config, args.lease_timeout, args.max_attempts)?;
    if !(args.linger.is_finite() && (0.0..=86_400.0 * 365.0).contains(&args.linger)) {
        bail!("--linger {} must be a number of seconds between 0 and a year", args.linger);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(freqsweep_coordinator::tls::TlsIdentity::load(cert, key).map_err(anyhow::Error::msg)?);
    }
    let tls_identity = config.tls.clone();
    let mut run = run::open_spec(spec, &dir, config)?;
    let rt = runtime()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        tracing::info!(listen = %listener.local_addr()?, tls = tls_identity.is_some(), run = %dir.display(), tasks = run.tasks.len(), "serving");
        if let Some(addr) = &args.http {
            start_http(&run, addr, None, tls_identity.as_ref()).await?;
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // SIGTERM as well as Ctrl-C: systemd, SLURM (scancel, preemption, time limit) and
        // container runtimes stop services with it. Everything acknowledged is in the store, so
        // the same command later resumes.
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot install the SIGTERM handler")?;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("stopping on a signal; run the same command again to resume");
            let _ = stop_tx.send(true);
        });
        run.serve_until_finished(listener, stop_rx).await
    })?;
    let done = *run.shared.finished().borrow();
    let summary = run.write_results()?;
    if !done {
        let counts: Vec<String> = summary.counts.iter().map(|(s, c)| format!("{c} {s}")).collect();
        println!("sweep stopped: {}; run the same command again to resume ({})", counts.join(", "), dir.display());
        return Ok(());
    }
    let printed = print_summary(&dir, &summary);
    if args.linger > 0.0 {
        // The dashboard (a task of this runtime) keeps answering while this waits.
        rt.block_on(async {
            tracing::info!(seconds = args.linger, "the dashboard stays up after the sweep (--linger)");
            let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(args.linger)) => {}
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            Ok::<_, std::io::Error>(())
        })
        .context("waiting with --linger")?;
    }
    printed
}

/// How long `freqsweep status` waits for an answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

pub fn status(args: &StatusArgs) -> Result<()> {
    use freqsweep_proto::v1::coordinator_client::CoordinatorClient;
    let ca = match &args.tls_ca {
        Some(path) => Some(
            freqsweep_common::files::read_bounded(path, freqsweep_common::files::MAX_PEM_BYTES)
                .with_context(|| format!("cannot read --tls-ca {}", path.display()))?,
        ),
        None => None,
    };
    let url = &args.coordinator;
    let rt = runtime()?;
    rt.block_on(async {
        use freqsweep_proto::dial::{self, DialError};
        let channel = match dial::connect(url, ca.as_deref(), Duration::from_secs(5)).await {
            Ok(channel) => channel,
            Err(DialError::Unreachable(detail)) => bail!("cannot reach the coordinator at {url}: {detail}"),
            Err(DialError::Misconfigured(detail)) => bail!("{detail}"),
        };
        let token: Option<tonic::metadata::MetadataValue<_>> =
            args.token.as_ref().map(|t| format!("Bearer {t}").parse()).transpose()?;
        let mut client = CoordinatorClient::with_interceptor(channel, move |mut r: tonic::Request<()>| {
            if let Some(t) = &token {
                r.metadata_mut().insert("authorization", t.clone());
            }
            Ok(r)
        });
        let mut first = true;
        loop {
            // A coordinator that accepts the connection but never answers (overloaded, paused,
            // or not a coordinator) must not hang the command.
            let call = client.status(freqsweep_proto::v1::StatusRequest {});
            let Ok(reply) = tokio::time::timeout(STATUS_TIMEOUT, call).await else {
                bail!("the coordinator at {url} did not answer within {} s", STATUS_TIMEOUT.as_secs());
            };
            let s = match reply {
                Ok(s) => s.into_inner(),
                // While watching, a coordinator that finished and exited ends the watch quietly.
                Err(_) if !first && args.watch > 0 => return Ok(()),
                Err(e) => match dial::explain_status(url, &e).await {
                    Some(DialError::Misconfigured(detail)) => bail!("{detail}"),
                    _ => bail!("{url}: {}", e.message()),
                },
            };
            first = false;
            print_status(&s);
            if args.watch == 0 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_secs(args.watch)).await;
            println!();
        }
    })
}

fn print_status(s: &freqsweep_proto::v1::StatusReply) {
    println!("sweep {}", s.sweep_id);
    let mut states: Vec<_> = s.tasks_by_state.iter().filter(|(_, c)| **c > 0).collect();
    states.sort();
    for (state, count) in states {
        println!("  {state:<10} {count:>7}");
    }
    let eta = if s.eta_seconds < 0.0 { "unknown".to_string() } else { format!("{:.0} s", s.eta_seconds) };
    println!("  metric points {}; eta {eta}", s.metric_points);
    println!(
        "  {:<6} {:<20} {:<18} {:>10} {:>8}  {:<16} measured units/s",
        "worker", "host", "device", "items/s", "seen", "running"
    );
    for w in &s.workers {
        println!(
            "  {:<6} {:<20} {:<18} {:>10.1} {:>7.1}s  {:<16} {}",
            w.worker_id,
            w.hostname,
            w.device,
            w.throughput,
            w.last_seen_ms_ago as f64 / 1000.0,
            format!("{:?}", w.running_tasks),
            measured(&w.measured)
        );
    }
}

/// `heatmap/tiny 3.1e4, train/tiny 12.5` (sorted by kind; `-` before any task finished).
fn measured(rates: &std::collections::HashMap<String, f64>) -> String {
    let mut kinds: Vec<_> = rates.iter().collect();
    kinds.sort_by(|a, b| a.0.cmp(b.0));
    let text: Vec<String> = kinds
        .into_iter()
        .map(|(kind, rate)| if *rate >= 1e4 { format!("{kind} {rate:.1e}") } else { format!("{kind} {rate:.1}") })
        .collect();
    if text.is_empty() {
        "-".into()
    } else {
        text.join(", ")
    }
}

pub fn report(args: &ReportArgs) -> Result<()> {
    let db = args.dir.join("freqsweep.db");
    if !db.is_file() {
        bail!("{} is not a run directory (no freqsweep.db)", args.dir.display());
    }
    // Read-only: a report never creates, migrates or repairs a store.
    let reader = freqsweep_coordinator::store::open_read_only(&db)?;
    let (sweep, tasks) = freqsweep_coordinator::report::stored_plan(&reader, &db)?;
    let running = freqsweep_coordinator::lock::holder(&args.dir);
    let summary = run::write_results(&args.dir, &reader, &sweep, &tasks)?;
    print_summary_of(&args.dir, &summary, running.as_deref())
}
