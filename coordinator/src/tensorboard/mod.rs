//! TensorBoard output: `DIR/tensorboard/<point>/` event files, written as the run goes, readable
//! by a stock `tensorboard --logdir DIR/tensorboard`.
//!
//! A follower of the store, not of the protocol: a thread reads what the store has committed
//! (metric batches in commit order, complete maps, done tasks) about once a second and appends it,
//! so TensorBoard never shows what the store does not hold, and a coordinator killed at any point
//! resumes from the cursor (`tensorboard/.freqsweep-cursor.json`, written after the event files
//! are synced). Each point is one TensorBoard run:
//!
//! - scalars against the global step: `train/loss`, `train/lr`, `<test set>/accuracy`,
//!   `<test set>/macro_f1`, `<test set>/f1/class_<k>` (also precision and recall);
//! - images: `heatmap/eps<ε>` (and `heatmap/eps<ε>/<layer>`) when a map is complete, at the step of
//!   the checkpoint it was computed from; `confusion/<test set>` when training ends;
//!   `band_confusion/<bands>` when the band-sufficiency task ends.
//!
//! A retried attempt that starts again at step s (from a checkpoint, or from 0) writes a
//! `SessionLog START` at s first: TensorBoard then drops the earlier attempt's points at steps ≥ s,
//! as it does for a restarted TensorFlow job. After a race between two attempts, the winner's
//! points are written again if they were not the ones followed.

pub mod events;

use crate::graph::PlannedTask;
use crate::kinds::{self, TensorBoardView};
use crate::store::{FollowedPoint, Reader, Store};
use anyhow::{Context, Result};
use events::EventFile;
use freqsweep_common::figures;
use freqsweep_common::spec::Sweep;
use freqsweep_common::task::{TaskKind, TaskOutcome};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const CURSOR: &str = ".freqsweep-cursor.json";
/// Metric batches read per query (a resumed run catches up in bounded steps).
const BATCHES: i64 = 500;

/// What has been written, so a restarted coordinator neither repeats nor skips.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct Cursor {
    /// The last metric batch written (`metric_batches` rowid); -1 before any.
    metrics_batch: i64,
    /// Per task, the attempt whose points are being written.
    followed: BTreeMap<u64, u64>,
    /// Tasks whose end-of-task images are written.
    finished: BTreeSet<u64>,
    /// Map artifacts written as images.
    maps: BTreeSet<String>,
}

/// The most bytes of a stored map artifact (JSON counts and layer sums: about 100 bytes a cell,
/// 524 290 cells at 1024 × 1024, times the layers).
const MAX_MAP_BYTES: u64 = 4 << 30;

/// The most bytes a cursor may hold (a few ids per task: 2 000 000 tasks fit).
const MAX_CURSOR_BYTES: u64 = 256 << 20;

/// The cursor at `path`: `None` when there is none yet, an error (why it is unusable) otherwise.
fn read_cursor(path: &Path) -> std::result::Result<Option<Cursor>, String> {
    match freqsweep_common::files::read_bounded(path, MAX_CURSOR_BYTES) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| format!("not a cursor: {e}")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot be read: {e}")),
    }
}

/// A cursor describes this store: its batch is one the store has reached (a negative or
/// far-ahead one would make the follower loop for ever or skip every point), and everything it
/// says is written exists and is finished in the store (else its images would never be written).
fn check_cursor(cursor: &Cursor, reader: &Reader) -> std::result::Result<(), String> {
    let sql = |e: crate::store::StoreError| e.to_string();
    let newest = reader.newest_metric_batch().map_err(sql)?;
    if !(-1..=newest).contains(&cursor.metrics_batch) {
        return Err(format!("metrics_batch {} is outside the store's -1..={newest}", cursor.metrics_batch));
    }
    let mut done = BTreeSet::new();
    for kind in ["train", "bands"] {
        done.extend(reader.done_tasks(kind).map_err(sql)?);
    }
    if let Some(id) = cursor.finished.iter().find(|id| !done.contains(id)) {
        return Err(format!("it lists task {id} as written, which the store does not hold as done"));
    }
    let maps: BTreeSet<String> = reader.artifacts_named("map/").map_err(sql)?.into_iter().map(|(n, _)| n).collect();
    if let Some(name) = cursor.maps.iter().find(|n| !maps.contains(*n)) {
        return Err(format!(
            "it lists map {} as written, which the store does not hold",
            freqsweep_common::text::one_line(name, 160)
        ));
    }
    let newest_attempt = reader.max_attempt_id().map_err(sql)?;
    if let Some((task, attempt)) = cursor.followed.iter().find(|(_, a)| **a > newest_attempt) {
        return Err(format!("it follows attempt {attempt} of task {task}, newer than any in the store"));
    }
    Ok(())
}

/// The running follower; [`TensorBoard::finish`] writes what is left and stops it.
pub struct TensorBoard {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Follower>>,
}

impl TensorBoard {
    /// Start following `store` into `dir/tensorboard/`, one pass every `interval`.
    pub fn start(dir: &Path, store: &Store, sweep: &Sweep, tasks: &[PlannedTask], interval: Duration) -> Result<Self> {
        let mut follower = Follower::open(dir, store.reader()?, sweep, tasks)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("tensorboard".into()).spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                if let Err(e) = follower.pass() {
                    // TensorBoard output is a view: the sweep goes on, the next pass retries.
                    tracing::warn!(error = %format!("{e:#}"), "tensorboard: writing events failed; retrying");
                }
                let mut waited = Duration::ZERO;
                while waited < interval && !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                    waited += Duration::from_millis(50);
                }
            }
            follower
        })?;
        Ok(TensorBoard { stop, thread: Some(thread) })
    }

    /// Stop the thread and write everything the store holds now.
    pub fn finish(mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        let follower = self.thread.take().expect("joined once").join();
        let mut follower = follower.map_err(|_| anyhow::anyhow!("the tensorboard thread panicked"))?;
        follower.pass()
    }
}

impl Drop for TensorBoard {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the follower knows of a task.
struct TaskInfo {
    point: String,
    classes: usize,
}

struct Follower {
    /// The sweep's points the follower knows (the spec's, then those added while it ran) and
    /// the id after their tasks: points added since are re-planned after them (`learn_added`).
    sweep: Sweep,
    first_added: u64,
    root: PathBuf,
    artifacts: crate::artifacts::ArtifactDir,
    reader: Reader,
    cursor: Cursor,
    tasks: HashMap<u64, TaskInfo>,
    /// The train task of each point that trains.
    train_of_point: HashMap<String, u64>,
    files: BTreeMap<String, EventFile>,
    host: String,
}

impl Follower {
    fn open(dir: &Path, reader: Reader, sweep: &Sweep, planned: &[PlannedTask]) -> Result<Self> {
        let root = dir.join("tensorboard");
        std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        let cursor_path = root.join(CURSOR);
        let fresh = Cursor { metrics_batch: -1, ..Cursor::default() };
        // Any cursor that cannot be read or does not describe this store (a file edited, copied
        // from another run, a directory in its place) is recovered the same way: a view of the
        // store, so the old files are set aside and every event is written again.
        let cursor = match read_cursor(&cursor_path).and_then(|c| match c {
            Some(c) => check_cursor(&c, &reader).map(|()| c),
            None => Ok(fresh),
        }) {
            Ok(cursor) => cursor,
            Err(why) => {
                let secs =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let aside = dir.join(format!("tensorboard.corrupt-{secs}"));
                tracing::warn!(cursor = %cursor_path.display(), error = %why, aside = %aside.display(), "tensorboard: the cursor is unusable; the old event files are set aside and every event is written again");
                std::fs::rename(&root, &aside).with_context(|| format!("moving {} aside", root.display()))?;
                std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
                Cursor { metrics_batch: -1, ..Cursor::default() }
            }
        };
        let mut tasks = HashMap::new();
        let mut train_of_point = HashMap::new();
        for task in planned {
            let Some(point) = sweep.points.get(task.point) else { continue };
            if crate::kinds::trains_model(task.kind()) {
                train_of_point.insert(point.id.clone(), task.id.0);
            }
            tasks.insert(task.id.0, TaskInfo { point: point.id.clone(), classes: crate::kinds::classes(task) });
        }
        let host = hostname();
        let artifacts = crate::artifacts::ArtifactDir::new(dir.join("artifacts"));
        // The sweep may hold points added before a restart: the spec's own come first.
        let added_at_open =
            crate::search::added_points(&reader)?.iter().filter(|a| a.index < sweep.points.len()).count();
        let spec_points = sweep.points.len() - added_at_open;
        let first_added = planned.iter().filter(|t| t.point < spec_points).map(|t| t.id.0).max().unwrap_or(0) + 1;
        let spec_sweep = Sweep { points: sweep.points[..spec_points].to_vec(), ..sweep.clone() };
        let mut follower = Follower {
            sweep: spec_sweep,
            first_added,
            root,
            artifacts,
            reader,
            cursor,
            tasks,
            train_of_point,
            files: BTreeMap::new(),
            host,
        };
        follower.learn_added()?;
        Ok(follower)
    }

    /// Tasks of points added while the sweep ran that the follower does not know yet.
    fn learn_added(&mut self) -> Result<()> {
        // Only what was added since the last look is read and planned.
        let known = self.sweep.points.len();
        let (points, tasks) = crate::search::added_since(&self.sweep, self.first_added, &self.reader)?;
        for task in &tasks {
            let Some(point) = points.get(task.point - known) else { continue };
            if crate::kinds::trains_model(task.kind()) {
                self.train_of_point.insert(point.id.clone(), task.id.0);
            }
            self.tasks.insert(task.id.0, TaskInfo { point: point.id.clone(), classes: crate::kinds::classes(task) });
        }
        if let Some(last) = tasks.last() {
            self.first_added = last.id.0 + 1;
        }
        self.sweep.points.extend(points);
        Ok(())
    }

    /// Write what the store holds beyond the cursor, sync, then move the cursor.
    fn pass(&mut self) -> Result<()> {
        self.learn_added()?;
        let mut wrote = false;
        // Batch ids only grow and a batch commits with its points, so every batch up to the
        // newest seen now is complete.
        let newest = self.reader.newest_metric_batch()?;
        while self.cursor.metrics_batch < newest {
            let upto = newest.min(self.cursor.metrics_batch.saturating_add(BATCHES));
            for p in self.reader.metrics_between(self.cursor.metrics_batch, upto)? {
                self.point(&p)?;
            }
            self.cursor.metrics_batch = upto;
            wrote = true;
        }
        wrote |= self.finished_tasks()?;
        wrote |= self.maps()?;
        if wrote {
            for file in self.files.values_mut() {
                file.flush().with_context(|| format!("writing {}", file.path().display()))?;
            }
            let bytes = serde_json::to_vec(&self.cursor).expect("the cursor serialises");
            let path = self.root.join(CURSOR);
            let partial = path.with_extension("partial");
            std::fs::write(&partial, bytes).with_context(|| format!("writing {}", partial.display()))?;
            std::fs::rename(&partial, &path).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    fn file(&mut self, point: &str) -> Result<&mut EventFile> {
        if !self.files.contains_key(point) {
            let file = EventFile::create(&self.root.join(point), &self.host)
                .with_context(|| format!("creating an event file in {}", self.root.join(point).display()))?;
            self.files.insert(point.to_string(), file);
        }
        Ok(self.files.get_mut(point).expect("inserted"))
    }

    /// One metric point, unless it belongs to an attempt older than the one followed.
    fn point(&mut self, p: &FollowedPoint) -> Result<()> {
        let Some(info) = self.tasks.get(&p.task_id) else { return Ok(()) };
        let point = info.point.clone();
        match self.cursor.followed.get(&p.task_id).copied() {
            Some(followed) if p.attempt_id < followed => return Ok(()),
            Some(followed) if p.attempt_id > followed => {
                self.cursor.followed.insert(p.task_id, p.attempt_id);
                self.file(&point)?.restart_at(p.point.step)?;
            }
            Some(_) => {}
            None => {
                self.cursor.followed.insert(p.task_id, p.attempt_id);
            }
        }
        if let Some(tag) = scalar_tag(&p.point) {
            self.file(&point)?.scalar(&tag, p.point.step, p.point.value)?;
        }
        Ok(())
    }

    /// Images of tasks that ended since the last pass, as each kind's view draws them (final
    /// confusion matrices of training, the band-sufficiency matrices). Also rewrites a race's
    /// winner if it was not followed.
    fn finished_tasks(&mut self) -> Result<bool> {
        let mut wrote = false;
        for kind in TaskKind::ALL {
            let view = kinds::tensorboard_view(kind);
            if matches!(view, TensorBoardView::Nothing) {
                continue;
            }
            for id in self.reader.done_tasks(kind.as_str())? {
                if self.cursor.finished.contains(&id) {
                    continue;
                }
                let Some(info) = self.tasks.get(&id) else { continue };
                let (point, classes) = (info.point.clone(), info.classes);
                let (step, drawn) = match view {
                    TensorBoardView::Nothing => (0, Vec::new()),
                    TensorBoardView::FromMetrics(draw) => {
                        let stored = self.reader.task_metrics(id)?;
                        self.rewrite_winner(id, &point, &stored)?;
                        let points: Vec<_> = stored.into_iter().map(|p| p.point).collect();
                        (points.iter().map(|p| p.step).max().unwrap_or(0), draw(&point, classes, &points))
                    }
                    TensorBoardView::FromResult(draw) => {
                        let result = self.reader.task_result(id)?.unwrap_or_default();
                        match serde_json::from_str::<TaskOutcome>(&result) {
                            Ok(outcome) => (self.final_step(&point)?, draw(&point, &outcome)),
                            // An unreadable result has nothing to draw (the report names it).
                            Err(_) => (0, Vec::new()),
                        }
                    }
                };
                for (tag, figure) in drawn {
                    self.figure(&point, &tag, step, figure)?;
                }
                self.cursor.finished.insert(id);
                wrote = true;
            }
        }
        Ok(wrote)
    }

    /// After a race the store keeps only the winner's points (with those of earlier attempts it
    /// resumed from): if the winner is not the attempt that was followed, write the store's
    /// record again after a restart marker at its first step.
    fn rewrite_winner(&mut self, task: u64, point: &str, stored: &[FollowedPoint]) -> Result<()> {
        let Some(winner) = stored.iter().map(|p| p.attempt_id).max() else { return Ok(()) };
        if self.cursor.followed.get(&task) == Some(&winner) {
            return Ok(());
        }
        let first = stored.iter().map(|p| p.point.step).min().unwrap_or(0);
        self.cursor.followed.insert(task, winner);
        let file = self.file(point)?;
        file.restart_at(first)?;
        for p in stored {
            if let Some(tag) = scalar_tag(&p.point) {
                file.scalar(&tag, p.point.step, p.point.value)?;
            }
        }
        Ok(())
    }

    /// The derived artifacts stored since the last pass that a kind draws (a complete heatmap
    /// and its layer maps), each at the step of the checkpoint it was computed from.
    fn maps(&mut self) -> Result<bool> {
        let mut wrote = false;
        for prefix in kinds::tensorboard_derived_prefixes() {
            for (name, digest) in self.reader.artifacts_named(prefix)? {
                if self.cursor.maps.contains(&name) {
                    continue;
                }
                let path = self.artifacts.path(&digest);
                let bytes = freqsweep_common::files::read_bounded(&path, MAX_MAP_BYTES)
                    .with_context(|| format!("reading map {name} ({})", path.display()))?;
                let drawn = kinds::tensorboard_derived(&name, &bytes)
                    .map_err(|e| anyhow::anyhow!("map {name} ({}): {e}", path.display()))?;
                if let Some(derived) = drawn {
                    let step = match derived.epoch {
                        Some(e) => self.step_at_epoch(&derived.point, e)?,
                        None => self.final_step(&derived.point)?,
                    };
                    for (tag, figure) in derived.figures {
                        self.figure(&derived.point, &tag, step, figure)?;
                    }
                    wrote = true;
                }
                self.cursor.maps.insert(name);
            }
        }
        Ok(wrote)
    }

    fn figure(&mut self, point: &str, tag: &str, step: u64, figure: Result<figures::Figure, String>) -> Result<()> {
        let figure = figure.map_err(|e| anyhow::anyhow!("rendering {tag} of {point}: {e}"))?;
        let png = figure.png().map_err(|e| anyhow::anyhow!("encoding {tag} of {point}: {e}"))?;
        self.file(point)?.image(tag, step, figure.width, figure.height, png)?;
        Ok(())
    }

    /// The last step of the point's training (0 for a given model, which is not trained).
    fn final_step(&self, point: &str) -> Result<u64> {
        let Some(&task) = self.train_of_point.get(point) else { return Ok(0) };
        Ok(self.reader.task_metrics(task)?.iter().map(|p| p.point.step).max().unwrap_or(0))
    }

    /// The last step at or before the end of `epoch` (of the followed points).
    fn step_at_epoch(&self, point: &str, epoch: u32) -> Result<u64> {
        let Some(&task) = self.train_of_point.get(point) else { return Ok(0) };
        let points = self.reader.task_metrics(task)?;
        Ok(points.iter().filter(|p| p.point.epoch <= f64::from(epoch) + 1e-9).map(|p| p.point.step).max().unwrap_or(0))
    }
}

/// The TensorBoard tag of a metric point; `None` for points that are not scalars (confusion
/// counts become an image when training ends).
pub fn scalar_tag(p: &freqsweep_common::task::MetricPoint) -> Option<String> {
    match p.name.as_str() {
        "loss" | "lr" => Some(format!("train/{}", p.name)),
        "accuracy" | "macro_f1" => Some(format!("{}/{}", p.test_set, p.name)),
        "f1" | "precision" | "recall" => Some(format!("{}/{}/class_{}", p.test_set, p.name, p.class_index)),
        _ => None,
    }
}

fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let name: String = name.trim().chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
    if name.is_empty() {
        "localhost".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_points_map_to_tags_and_confusion_counts_are_not_scalars() {
        let p = |name: &str, set: &str, class: i32| freqsweep_common::task::MetricPoint {
            name: name.into(),
            epoch: 1.0,
            step: 3,
            test_set: set.into(),
            class_index: class,
            value: 0.5,
        };
        assert_eq!(scalar_tag(&p("loss", "", -1)).unwrap(), "train/loss");
        assert_eq!(scalar_tag(&p("macro_f1", "B1234", -1)).unwrap(), "B1234/macro_f1");
        assert_eq!(scalar_tag(&p("f1", "B12", 3)).unwrap(), "B12/f1/class_3");
        assert_eq!(scalar_tag(&p("confusion", "B12", 5)), None);
    }
}
