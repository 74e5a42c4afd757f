//! Running a sweep: open (or resume) a run directory, serve the coordinator, and — for the
//! embedded `freqsweep run` — start N local `freqsweep-worker` processes on loopback; when every
//! task is terminal, write the result files.
//!
//! Resuming: the run directory's store keeps every task by key; running the same spec again on
//! the same `--out` restores finished tasks and does only what is missing. A store that holds
//! another sweep (different task keys) is refused rather than mixed.

use crate::artifacts::ArtifactDir;
use crate::graph::{self, PlannedTask, TaskKind};
use crate::merge::{self, MergedHeatmap};
use crate::scheduler::{SchedulerConfig, TaskId};
use crate::service::{self, ServiceConfig, Shared};
use crate::store::{Change, Reader, Store, StoreWriter};
use anyhow::{bail, Context, Result};
use freqsweep_common::spec::{self, Sweep, GRID_KEYS};
use freqsweep_common::spectrum::Shape2;
use freqsweep_common::task::{HeatmapOutcome, TaskOutcome, TaskSpec};
use freqsweep_proto::v1 as pb;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
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
}

/// Open `dir` for `spec_path`: plan the sweep, create or resume its store.
pub fn open(spec_path: &Path, dir: &Path, config: ServiceConfig) -> Result<Run> {
    let sweep = spec::load(spec_path)?;
    let text = std::fs::read_to_string(spec_path)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (store, writer) = Store::open(&dir.join("freqsweep.db"))?;
    let reader = store.reader()?;
    let tasks = graph::plan(&sweep);
    let stored_rows = reader.tasks()?;
    let mut stored = HashMap::new();
    if stored_rows.is_empty() {
        let mut changes = vec![
            Change::SweepValue { key: "name".into(), value: sweep.name.clone() },
            Change::SweepValue { key: "spec_toml".into(), value: text },
            Change::SweepValue { key: "created_ms".into(), value: now_ms().to_string() },
        ];
        for t in &tasks {
            changes.push(Change::InsertTask {
                id: t.id.0,
                key: t.key.clone(),
                kind: t.kind.as_str().to_string(),
                spec_json: serde_json::to_string(&t.spec)?,
                deps: t.deps.iter().map(|d| d.0).collect(),
            });
        }
        store.write(changes)?;
    } else {
        let by_key: HashMap<&str, &crate::store::TaskRow> = stored_rows.iter().map(|r| (r.key.as_str(), r)).collect();
        let differing = tasks.iter().filter(|t| by_key.get(t.key.as_str()).is_none_or(|r| r.id != t.id.0)).count();
        if differing > 0 || stored_rows.len() != tasks.len() {
            bail!(
                "{} holds another sweep ({} stored tasks, {} planned, {differing} differ); use a new --out",
                dir.display(),
                stored_rows.len(),
                tasks.len()
            );
        }
        for row in &stored_rows {
            let outputs = reader
                .task_artifacts(row.id)?
                .into_iter()
                .map(|(name, digest, size, _)| pb::ArtifactRef { name, digest, size })
                .collect();
            stored.insert(TaskId(row.id), (row.state.clone(), row.attempts, outputs));
        }
        let done = stored_rows.iter().filter(|r| r.state == "done").count();
        tracing::info!(run = %dir.display(), done, total = tasks.len(), "resuming");
    }
    let first_attempt = reader.max_attempt_id()? + 1;
    let artifacts = ArtifactDir::new(dir.join("artifacts"));
    let shared =
        Shared::new(config, store.clone(), artifacts, tasks.clone(), stored, first_attempt, sweep.name.clone());
    Ok(Run { dir: dir.to_path_buf(), sweep, tasks, shared, store, writer: Some(writer) })
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// What the end-of-run summary reports.
pub struct Summary {
    pub counts: Vec<(String, usize)>,
    pub failed: Vec<(String, String)>,
}

impl Run {
    /// Serve until every task is terminal (or `stop` flips). Returns the local address it bound.
    pub async fn serve_until_finished(
        &self,
        listener: tokio::net::TcpListener,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<()> {
        let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(service::serve(self.shared.clone(), listener, shutdown_rx));
        let mut finished = self.shared.finished();
        loop {
            if *finished.borrow() {
                break;
            }
            tokio::select! {
                r = finished.changed() => if r.is_err() { break },
                _ = stop.changed() => if *stop.borrow() { break },
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
        let reader = Store::open(&self.dir.join("freqsweep.db"))?.0.reader()?;
        write_results(&self.dir, &reader, &self.sweep, &self.tasks)
    }
}

/// Render the result files of a run directory from its store alone.
pub fn write_results(dir: &Path, reader: &Reader, sweep: &Sweep, tasks: &[PlannedTask]) -> Result<Summary> {
    let rows: HashMap<u64, crate::store::TaskRow> = reader.tasks()?.into_iter().map(|r| (r.id, r)).collect();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed = Vec::new();
    for t in tasks {
        let row = &rows[&t.id.0];
        *counts.entry(row.state.clone()).or_default() += 1;
        if row.state == "failed" {
            failed.push((t.key.clone(), row.error.clone().unwrap_or_default()));
        }
    }
    let test_sets: Vec<String> = sweep
        .points
        .first()
        .map(|p| p.task.train.test_sets.iter().map(|s| s.to_string()).collect())
        .unwrap_or_default();
    let eps_list: Vec<f64> = sweep.heatmap.as_ref().map(|h| h.eps.clone()).unwrap_or_default();
    let mut csv = String::from("point,state");
    for k in GRID_KEYS {
        let _ = write!(csv, ",{k}");
    }
    csv.push_str(",epochs_done,steps,seconds,final_loss");
    for s in &test_sets {
        let _ = write!(csv, ",accuracy_{s},macro_f1_{s}");
    }
    for e in &eps_list {
        let _ = write!(csv, ",clean_error_eps{0},mean_heatmap_error_eps{0}", graph::eps_label(*e));
    }
    csv.push('\n');

    for (index, point) in sweep.points.iter().enumerate() {
        let train =
            tasks.iter().find(|t| t.point == index && t.kind == TaskKind::Train).expect("every point has a train task");
        let row = &rows[&train.id.0];
        let outcome = row.result_json.as_deref().and_then(|j| serde_json::from_str::<TaskOutcome>(j).ok());
        let points = reader.metrics(train.id.0)?;
        if !points.is_empty() {
            write_file(&dir.join("curves").join(format!("{}.csv", point.id)), &merge::f1_curve_csv(&points))?;
            for (set, rows) in merge::final_confusions(&points, point.task.train.classes) {
                write_file(
                    &dir.join("confusion").join(format!("{}_{set}.csv", point.id)),
                    &merge::confusion_csv(&rows),
                )?;
            }
        }
        if let Some((_, _, _, path)) = reader.task_artifacts(train.id.0)?.into_iter().find(|a| a.0 == graph::CHECKPOINT)
        {
            let target = dir.join("checkpoints").join(format!("{}.ot", point.id));
            std::fs::create_dir_all(target.parent().expect("has parent"))?;
            std::fs::copy(&path, &target).with_context(|| format!("copying {path}"))?;
        }
        let _ = write!(csv, "{},{}", point.id, row.state);
        for k in GRID_KEYS {
            let _ = write!(csv, ",{}", point.values.get(k).map_or("", String::as_str));
        }
        match &outcome {
            Some(TaskOutcome::Train(o)) => {
                let _ = write!(csv, ",{},{},{:.3},{}", o.epochs, o.steps, o.seconds, o.final_loss);
                for s in &test_sets {
                    match o.test_sets.iter().find(|t| &t.test_set == s) {
                        Some(t) => {
                            let _ = write!(csv, ",{},{}", t.accuracy, t.macro_f1);
                        }
                        None => csv.push_str(",,"),
                    }
                }
            }
            _ => {
                csv.push_str(",,,,");
                for _ in &test_sets {
                    csv.push_str(",,");
                }
            }
        }
        for &eps in &eps_list {
            let chunks: Vec<HeatmapOutcome> = tasks
                .iter()
                .filter(|t| t.point == index && matches!(&t.spec, TaskSpec::Heatmap(h) if h.eps == eps))
                .filter_map(|t| rows[&t.id.0].result_json.as_deref())
                .filter_map(|j| match serde_json::from_str::<TaskOutcome>(j) {
                    Ok(TaskOutcome::Heatmap(h)) => Some(h),
                    _ => None,
                })
                .collect();
            if chunks.is_empty() {
                csv.push_str(",,");
                continue;
            }
            let mut map = MergedHeatmap::new(Shape2::new(32, 32), eps);
            for c in &chunks {
                map.add(c).map_err(|e| anyhow::anyhow!("merging heatmap of {}: {e}", point.id))?;
            }
            map.write(&dir.join("heatmaps"), &format!("{}_eps{}", point.id, graph::eps_label(eps)))
                .map_err(anyhow::Error::msg)?;
            let means: Vec<f64> = map.error.means().into_iter().filter(|v| v.is_finite()).collect();
            let mean = if means.is_empty() { f64::NAN } else { means.iter().sum::<f64>() / means.len() as f64 };
            let _ = write!(csv, ",{},{}", map.clean.mean(), mean);
        }
        csv.push('\n');
    }
    write_file(&dir.join("results.csv"), &csv)?;
    Ok(Summary { counts: counts.into_iter().collect(), failed })
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).with_context(|| format!("{}", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("{}", path.display()))
}

/// Default scheduler and service settings for a run.
pub fn default_config(token: Option<String>) -> ServiceConfig {
    ServiceConfig {
        token,
        scheduler: SchedulerConfig {
            lease_timeout: 30_000,
            max_attempts: 3,
            backoff_base: 1_000,
            backoff_max: 30_000,
            idle_retry: 500,
        },
        heartbeat_interval_ms: 2_000,
    }
}
