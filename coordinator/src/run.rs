//! Running a sweep: open (or resume) a run directory, serve the coordinator, and — for the
//! embedded `freqsweep run` — start N local `freqsweep-worker` processes on loopback; when every
//! task is terminal, write the result files.
//!
//! Resuming: the run directory's store keeps every task by key; running the same spec again on
//! the same `--out` restores finished tasks and does only what is missing. A store that holds
//! another sweep (different task keys) is refused rather than mixed.

use crate::artifacts::ArtifactDir;
use crate::artifacts::ArtifactRef;
use crate::driver::{PartialCheckpoint, ServiceConfig, Shared, StoredTask};
use crate::graph::{self, PlannedTask};
use crate::grpc;
use crate::identity;
use crate::scheduler::{SchedulerConfig, TaskId};
use crate::store::{Change, Reader, Store, StoreWriter, TaskRow};
use anyhow::{bail, Context, Result};
use freqsweep_common::spec::MAX_TASKS;
use freqsweep_common::spec::{self, SpecInputs, Sweep};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// An opened run directory.
pub struct Run {
    pub dir: PathBuf,
    pub sweep: Sweep,
    pub tasks: Vec<PlannedTask>,
    pub shared: Arc<Shared>,
    pub store: Store,
    writer: Option<StoreWriter>,
    /// Appends what the store commits to `tensorboard/` as the run goes.
    tensorboard: Option<crate::tensorboard::TensorBoard>,
    /// Held for the life of the run: a second `run` or `serve` on this directory is refused.
    _lock: crate::lock::DirLock,
}

/// A spec as read once: the bytes the run stores (a spec given as a pipe or `/dev/stdin` can
/// be read only once), the sweep they plan, and what parsing read of the file system.
pub struct SpecFile {
    /// How errors name it (its path).
    pub file: String,
    pub text: String,
    pub sweep: Sweep,
    pub inputs: SpecInputs,
}

impl SpecFile {
    /// Read `path` once (bounded) and parse it, recording its file-system inputs.
    pub fn read(path: &Path) -> Result<SpecFile> {
        let text = freqsweep_common::files::read_spec(path)?;
        let file = path.display().to_string();
        // The run opening probes the file system for what the spec names (npy headers, image
        // folders, globs); the answers are recorded, so every later parse replays them.
        let (sweep, inputs) = spec::parse_probing(&text, &file, &freqsweep_common::files::FileSystem)?;
        Ok(SpecFile { file, text, sweep, inputs })
    }
}

/// Open `dir` for `spec_path`: plan the sweep, create or resume its store.
pub fn open(spec_path: &Path, dir: &Path, config: ServiceConfig) -> Result<Run> {
    open_spec(SpecFile::read(spec_path)?, dir, config)
}

/// The most bytes of one task's description: it travels in a lease, and a gRPC message may hold
/// 64 MiB (`grpc::MESSAGE_BYTES`) with the rest of the lease beside it.
pub const MAX_TASK_BYTES: usize = 32 << 20;

/// Open `dir` for an already read spec: plan the sweep, create or resume its store.
pub fn open_spec(spec: SpecFile, dir: &Path, config: ServiceConfig) -> Result<Run> {
    let SpecFile { file: _, text, mut sweep, inputs } = spec;
    check_run_dir(dir)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let lock = crate::lock::lock_dir(dir)?;
    let (store, writer) = Store::open(&dir.join("freqsweep.db"))?;
    let reader = store.reader()?;
    let artifacts = ArtifactDir::new(dir.join("artifacts"));
    // The planner says how many tasks the sweep plans before any is built.
    if let Err((tasks, points)) = crate::kinds::count_tasks(&sweep, MAX_TASKS) {
        bail!(
            "the sweep plans over {MAX_TASKS} tasks ({tasks} by its first {points} of {} points); a coordinator holds each in memory (about 4 KB), so at most {MAX_TASKS} (8 GB) are planned; split the sweep or use fewer heatmap chunks",
            sweep.points.len()
        );
    }
    let mut tasks = graph::plan(&sweep);
    // A description too large for a lease is a planning error, not a worker that seems lost.
    let specs: Vec<String> = tasks.iter().map(|t| serde_json::to_string(&t.spec)).collect::<Result<_, _>>()?;
    check_task_sizes(&tasks, &specs, MAX_TASK_BYTES)?;
    let given = import_given_models(&sweep, &artifacts)?;
    let inputs_json = serde_json::to_string(&inputs)?;
    let stored_rows = reader.tasks()?;
    let mut stored = HashMap::new();
    if stored_rows.is_empty() {
        let mut changes = vec![
            Change::SweepValue { key: "name".into(), value: sweep.name.clone() },
            Change::SweepValue { key: "spec_toml".into(), value: text },
            Change::SweepValue { key: SPEC_INPUTS.into(), value: inputs_json },
            Change::SweepValue { key: "created_ms".into(), value: now_ms().to_string() },
            Change::SweepValue { key: "git_revision".into(), value: crate::report::GIT_REVISION.to_string() },
        ];
        for (name, artifact) in &given {
            changes.push(Change::SweepValue { key: given_value_key(name), value: artifact.digest.clone() });
        }
        for (t, spec_json) in tasks.iter().zip(specs) {
            changes.push(Change::InsertTask {
                id: t.id.0,
                key: t.key.clone(),
                kind: t.kind().as_str().to_string(),
                spec_json,
                deps: t.deps.iter().map(|d| d.0).collect(),
            });
        }
        store.write(changes)?;
    } else {
        check_identity(dir, &store, &reader, &stored_rows, &tasks, &sweep, text, &inputs, inputs_json)?;
        crate::search::extend_with_added(&mut sweep, &mut tasks, &reader)
            .with_context(|| format!("{}: the points added while the sweep ran", dir.display()))?;
        stored = read_stored_tasks(&reader, &stored_rows)?;
        // A given model replaced since the run started would mix two models' results.
        for (name, artifact) in &given {
            match reader.sweep_value(&given_value_key(name))? {
                Some(recorded) if recorded != artifact.digest => bail!(
                    "model {name} ({}) changed since this run started (digest {}, recorded {}); restore it or use a new --out",
                    sweep.points.iter().find_map(|p| p.given.as_ref().filter(|g| &g.name == name)).map_or_else(String::new, |g| g.path.display().to_string()),
                    short(&artifact.digest),
                    short(&recorded)
                ),
                Some(_) => {}
                None => store.write(vec![Change::SweepValue { key: given_value_key(name), value: artifact.digest.clone() }])?,
            }
        }
        // Attempts live when the last coordinator stopped are not live in this one.
        store.write(vec![Change::CloseOpenAttempts { now_ms: now_ms() }])?;
        let done = stored_rows.iter().filter(|r| r.state == "done").count();
        tracing::info!(run = %dir.display(), done, total = tasks.len(), "resuming");
    }
    let first_attempt = reader.max_attempt_id()? + 1;
    let partials: Vec<_> = reader
        .partial_checkpoints()?
        .into_iter()
        .filter(|p| artifacts.contains(&p.digest))
        .map(|p| {
            let artifact = ArtifactRef { name: p.name, digest: p.digest, size: p.size };
            (TaskId(p.task_id), PartialCheckpoint { artifact, epochs_done: p.epochs_done })
        })
        .collect();
    let shared =
        Shared::new(config, store.clone(), artifacts, tasks.clone(), stored, first_attempt, sweep.name.clone());
    shared.restore_partials(partials);
    shared.set_given_models(given);
    shared.set_point_ids(sweep.points.iter().map(|p| p.id.clone()).collect());
    shared.allow_growth(crate::kinds::Planner::new(&sweep), sweep.points.len());
    let tensorboard = crate::tensorboard::TensorBoard::start(dir, &store, &sweep, &tasks, Duration::from_secs(1))?;
    Ok(Run {
        dir: dir.to_path_buf(),
        sweep,
        tasks,
        shared,
        store,
        writer: Some(writer),
        tensorboard: Some(tensorboard),
        _lock: lock,
    })
}

/// Run identity: a run directory resumes only with the spec that planned its tasks, setting for
/// setting (points added while it ran are checked apart), or it is refused naming the change. A
/// spec that changes no task becomes the stored one.
#[allow(clippy::too_many_arguments)]
fn check_identity(
    dir: &Path,
    store: &Store,
    reader: &Reader,
    stored_rows: &[TaskRow],
    tasks: &[PlannedTask],
    sweep: &Sweep,
    text: String,
    inputs: &SpecInputs,
    inputs_json: String,
) -> Result<()> {
    // Run identity: the same tasks, setting for setting, or a refusal naming the change.
    let recorded_text = reader.sweep_value("spec_toml")?.unwrap_or_default();
    let recorded_inputs: Option<SpecInputs> =
        reader.sweep_value(SPEC_INPUTS)?.and_then(|json| serde_json::from_str(&json).ok());
    let recorded = identity::Recorded { spec_toml: &recorded_text, inputs: recorded_inputs.as_ref() };
    // The spec planned the grid's tasks; points added while the sweep ran are checked apart.
    let added_rows = reader.added_tasks()?;
    let added_ids: std::collections::HashSet<u64> = added_rows.iter().map(|r| r.id).collect();
    let stored_tasks: Vec<identity::StoredTask> = stored_rows
        .iter()
        .filter(|r| !added_ids.contains(&r.id))
        .map(|r| identity::StoredTask { id: r.id, key: &r.key, spec_json: &r.spec_json })
        .collect();
    let planned: Vec<identity::PlannedTask> =
        tasks.iter().map(|t| identity::PlannedTask { id: t.id.0, key: &t.key, spec: &t.spec }).collect();
    match identity::compare(&recorded, &stored_tasks, &text, inputs, &planned) {
        identity::Verdict::Refuse(why) => bail!(
            "{} holds a run of another spec: {why}; its results were computed with the old settings and are kept as they are: use a new --out for this spec, or give the old spec to resume",
            dir.display()
        ),
        identity::Verdict::Resume { changed } => {
            if let Some(changed) = &changed {
                tracing::info!(changed = %changed, "the spec changed only in keys that change no task; resuming with it");
            }
            // The stored spec is the one the report renders; record this one and its inputs.
            if changed.is_some() || recorded_inputs.as_ref() != Some(inputs) {
                store.write(vec![
                    Change::SweepValue { key: "spec_toml".into(), value: text },
                    Change::SweepValue { key: "name".into(), value: sweep.name.clone() },
                    Change::SweepValue { key: SPEC_INPUTS.into(), value: inputs_json },
                ])?;
            }
        }
    }
    Ok(())
}

/// What the store holds of each task (state, counted failures, outputs, result), for the
/// scheduler and the driver to resume from.
fn read_stored_tasks(reader: &Reader, rows: &[TaskRow]) -> Result<HashMap<TaskId, StoredTask>> {
    let mut stored = HashMap::new();
    for row in rows {
        let outputs = reader
            .task_artifacts(row.id)?
            .into_iter()
            .map(|(name, digest, size, _)| ArtifactRef { name, digest, size })
            .collect();
        let task = StoredTask {
            state: row.state.clone(),
            failures: row.attempts,
            outputs,
            result_json: row.result_json.clone(),
        };
        stored.insert(TaskId(row.id), task);
    }
    Ok(stored)
}

/// Store every given model file in the run's artifacts (content-addressed: once per content),
/// so workers download it like any input; a file that cannot be read is named.
fn import_given_models(sweep: &Sweep, artifacts: &ArtifactDir) -> Result<Vec<(String, ArtifactRef)>> {
    let mut out: Vec<(String, ArtifactRef)> = Vec::new();
    for given in sweep.points.iter().filter_map(|p| p.given.as_ref()) {
        if out.iter().any(|(name, _)| name == &given.name) {
            continue;
        }
        let meta = std::fs::metadata(&given.path)
            .with_context(|| format!("model {}: {}", given.name, given.path.display()))?;
        if !meta.is_file() {
            bail!("model {}: {} is not a regular file", given.name, given.path.display());
        }
        let (digest, size) = artifacts
            .import(&given.path)
            .with_context(|| format!("model {}: storing {}", given.name, given.path.display()))?;
        out.push((given.name.clone(), ArtifactRef { name: freqsweep_common::task::MODEL_OUTPUT.into(), digest, size }));
    }
    Ok(out)
}

/// Every task description fits a lease (`limit` bytes).
fn check_task_sizes(tasks: &[PlannedTask], specs: &[String], limit: usize) -> Result<()> {
    if let Some((t, json)) = tasks.iter().zip(specs).find(|(_, json)| json.len() > limit) {
        bail!(
            "task {} would be a {} lease, more than a worker may be sent ({}); split it (e.g. smaller [heatmap] chunk_cells)",
            t.key,
            freqsweep_common::files::bytes_text(json.len() as u64),
            freqsweep_common::files::bytes_text(limit as u64)
        );
    }
    Ok(())
}

/// The sweep value holding what parsing the spec read of the file system (JSON `SpecInputs`).
pub const SPEC_INPUTS: &str = "spec_inputs";

/// A run directory is new, empty, or holds a run: `--out /` or `--out ~` would scatter a run's
/// files among the user's. "Empty" allows the `coordinator.url` that
/// `deploy/slurm/freqsweep-coordinator.sbatch` writes into it before `serve` starts.
fn check_run_dir(dir: &Path) -> Result<()> {
    let meta = match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => bail!("cannot use {} as the run directory: {e}", dir.display()),
        Ok(meta) => meta,
    };
    if !meta.is_dir() {
        bail!("{} is not a directory; give a new or empty directory as --out", dir.display());
    }
    let is_run = dir.join("freqsweep.db").exists() || dir.join("freqsweep.lock").exists();
    let mut entries = std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))?;
    let written_first = |name: &std::ffi::OsStr| name.to_str().is_some_and(|n| n.starts_with("coordinator.url"));
    let foreign = |e: std::io::Result<std::fs::DirEntry>| match e {
        Ok(e) => !written_first(&e.file_name()),
        Err(_) => true,
    };
    if !is_run && entries.any(foreign) {
        bail!(
            "{} is not empty and holds no freqsweep run (no freqsweep.db); give a new or empty directory as --out",
            dir.display()
        );
    }
    Ok(())
}

fn given_value_key(name: &str) -> String {
    format!("given_model/{name}")
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256-").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

pub use crate::report::{write_results, Summary};

impl Run {
    /// Serve until every task is terminal (or `stop` flips). Returns the local address it bound.
    pub async fn serve_until_finished(
        &self,
        listener: tokio::net::TcpListener,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<()> {
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let mut server = tokio::spawn(grpc::serve(self.shared.clone(), listener, shutdown_rx));
        let mut finished = self.shared.finished();
        loop {
            if *finished.borrow() {
                break;
            }
            tokio::select! {
                r = finished.changed() => if r.is_err() { break },
                _ = stop.changed() => if *stop.borrow() { break },
                // The server never stops by itself before shutdown: if it does, say why.
                ended = &mut server => {
                    let why = match ended {
                        Ok(Ok(())) => "stopped".to_string(),
                        Ok(Err(e)) => format!("{e}{}", std::error::Error::source(&e).map(|s| format!(": {s}")).unwrap_or_default()),
                        Err(e) => e.to_string(),
                    };
                    bail!("the gRPC server ended before the sweep finished: {why}");
                }
            }
        }
        // Give workers a moment to hear SweepDone and hang up before the server stops.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = shutdown_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
        Ok(())
    }

    /// Write heatmaps, curves, confusion matrices, checkpoints and `results.csv` from the store.
    pub fn write_results(&mut self) -> Result<Summary> {
        // Everything acknowledged is committed; stop the writer so the files see it all.
        if let Some(writer) = self.writer.take() {
            writer.stop();
        }
        if let Some(tensorboard) = self.tensorboard.take() {
            // A view of the store: failing to write it does not lose results.
            if let Err(e) = tensorboard.finish() {
                tracing::warn!(error = %format!("{e:#}"), "tensorboard: the last events could not be written");
            }
        }
        let reader = Store::open(&self.dir.join("freqsweep.db"))?.0.reader()?;
        // Points a search added since the run opened are results too.
        crate::search::extend_with_added(&mut self.sweep, &mut self.tasks, &reader)?;
        write_results(&self.dir, &reader, &self.sweep, &self.tasks)
    }
}

/// Default service settings for a run (the scheduler's come from its one `Default`).
pub fn default_config(token: Option<String>) -> ServiceConfig {
    ServiceConfig {
        token,
        scheduler: SchedulerConfig::default(),
        heartbeat_interval_ms: 2_000,
        tls: None,
        connections: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `run`/`serve` and the scheduler had two sets of defaults that disagreed (`backoff_max` 30 s
    /// against 60 s); there is one now.
    #[test]
    fn the_run_uses_the_schedulers_one_set_of_defaults() {
        let run = format!("{:?}", default_config(None).scheduler);
        assert_eq!(run, format!("{:?}", SchedulerConfig::default()));
        assert!(run.contains("backoff_max: 30000"), "{run}");
    }

    /// A lease larger than a gRPC message was sent, dropped, and ended as a "lost session" with
    /// advice to run again; it is a planning error naming the task now.
    #[test]
    fn a_task_too_large_for_a_lease_is_a_planning_error() {
        let text = "[[dataset]]\nkind = \"syn\"\nband = 1\ntrain = 32\ntest = 8\n[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\n[heatmap]\neps = 4\nimages = 4\nchunk_cells = 600\n";
        let sweep = spec::parse(text, "s.toml").unwrap();
        let tasks = graph::plan(&sweep);
        let specs: Vec<String> = tasks.iter().map(|t| serde_json::to_string(&t.spec).unwrap()).collect();
        check_task_sizes(&tasks, &specs, MAX_TASK_BYTES).unwrap();
        let largest = specs.iter().map(String::len).max().unwrap();
        let e = check_task_sizes(&tasks, &specs, largest - 1).unwrap_err().to_string();
        assert!(e.starts_with("task heatmap/") && e.contains("more than a worker may be sent"), "{e}");
    }

    /// `--out /` was accepted and the run's files went into the root directory: a run
    /// directory is new, empty, or holds a run.
    #[test]
    fn a_run_directory_is_new_empty_or_a_run() {
        for dir in ["/", "/usr"] {
            let e = check_run_dir(Path::new(dir)).unwrap_err().to_string();
            assert!(e.contains("is not empty and holds no freqsweep run"), "{e}");
        }
        let tmp = tempfile::tempdir().unwrap();
        check_run_dir(&tmp.path().join("new")).unwrap();
        check_run_dir(tmp.path()).unwrap();
        std::fs::write(tmp.path().join("coordinator.url"), "http://node1:7070").unwrap();
        check_run_dir(tmp.path()).expect("the SLURM coordinator script writes its URL first");
        std::fs::write(tmp.path().join("notes.txt"), "").unwrap();
        assert!(check_run_dir(tmp.path()).is_err());
        std::fs::write(tmp.path().join("freqsweep.lock"), "").unwrap();
        check_run_dir(tmp.path()).expect("a run killed before its store was made");
        let file = tmp.path().join("freqsweep.lock");
        let e = check_run_dir(&file).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
    }

    /// A coordinator killed while attempts ran left their rows open; resuming closes them.
    #[test]
    fn a_sweep_over_the_task_bound_is_refused_with_the_planners_count_before_planning() {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("s.toml");
        let seeds: Vec<String> = (0..4000).map(|s| s.to_string()).collect();
        let text = format!(
            "[[dataset]]\nkind = \"syn\"\nband = 1\n[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\nseed = [{}]\n[heatmap]\neps = [2, 4]\nchunk_cells = 1\n",
            seeds.join(", ")
        );
        std::fs::write(&spec, text).unwrap();
        let out = dir.path().join("run");
        let err = open(&spec, &out, default_config(None)).err().expect("refused").to_string();
        assert!(
            err.starts_with("the sweep plans over 2000000 tasks (2000376 by its first 1944 of 4000 points)"),
            "{err}"
        );
        // Nothing was planned into the store: the directory takes a smaller spec as a new run.
        let store = crate::store::open_read_only(&out.join("freqsweep.db")).unwrap();
        assert!(store.tasks().unwrap().is_empty());
    }

    #[test]
    fn resuming_closes_the_attempts_a_killed_coordinator_left_open() {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("s.toml");
        let text = "[[dataset]]\nkind = \"syn\"\nband = 1\ntrain = 32\ntest = 8\n[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\n";
        std::fs::write(&spec, text).unwrap();
        let out = dir.path().join("run");
        {
            let run = open(&spec, &out, default_config(None)).unwrap();
            let started = Change::AttemptStarted { id: 7, task_id: 1, worker: "w1".into(), now_ms: 1, backup: false };
            run.store.write(vec![started]).unwrap();
        } // the "kill": nothing closed the attempt
        let run = open(&spec, &out, default_config(None)).unwrap();
        let attempts = run.store.reader().unwrap().attempts().unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].outcome.as_deref(), Some("interrupted"), "{attempts:?}");
        assert!(attempts[0].ended_ms.is_some());
    }
}
