//! The durable store of a sweep: one SQLite database (`freqsweep.db` in the run directory, WAL
//! mode) holding the spec, tasks and their states, attempts, metric points, the artifact index and
//! the worker log. Users query it with `sqlite3` (tables below); a restarted coordinator resumes
//! from it.
//!
//! **Group commit.** One writer thread owns the write connection. Callers submit batches of
//! [`Change`]s with a completion callback; the writer takes everything queued (up to a bound), applies
//! it in **one** transaction, commits (`synchronous = FULL`: on disk before returning), and only then
//! runs the callbacks. So every change is durable before it is acknowledged, and throughput comes
//! from batching many changes per fsync rather than from weakening the guarantee.
//!
//! Tables (all times are milliseconds since the Unix epoch):
//! - `sweep(key, value)`: `spec_toml`, `name`, `created_ms`, … as key/value rows.
//! - `tasks(id, key, kind, spec_json, deps_json, state, attempts, result_json, error, updated_ms,
//!   added)`: `added` is 1 for a task added while the sweep ran (a search strategy's new point),
//!   0 for one planned when the run opened.
//! - `attempts(id, task_id, worker, started_ms, ended_ms, outcome, resumed_epoch, backup)`:
//!   `resumed_epoch` is the epoch a train attempt resumed at from a partial checkpoint (NULL: from
//!   scratch); `backup` is 1 for a speculative backup attempt; `outcome` is the task's next state
//!   for the attempt that moved it, or `superseded` (lost the race to another attempt),
//!   `cancelled`, `failed`, `released`, `lost` for one that ended while another attempt of the
//!   task ran on, or `interrupted` for one that was live when the coordinator stopped (closed
//!   when the run directory is resumed).
//! - `metric_batches(attempt_id, seq)`: which batches were stored (duplicates are dropped).
//! - `metrics(task_id, attempt_id, name, epoch, step, test_set, class_index, value)`: a task's
//!   points are those of its latest attempt; every train attempt reports the whole history (a
//!   resumed one re-sends its checkpoint's points first), so a new attempt's lease deletes the
//!   points of earlier ones and no epoch is stored twice; a backup's lease does not (the attempt
//!   it races is still live), but when one of two racing attempts ends, its points are deleted.
//! - `artifacts(digest, name, size, path, task_id, attempt_id, epochs_done)`: a task's outputs
//!   (`checkpoint`, `model`) have `epochs_done` NULL; a merged result the coordinator made itself
//!   (`map/<point>/eps<ε>`, a complete heatmap as JSON counts) has `task_id` NULL; a row with
//!   `epochs_done` set is a partial checkpoint (uploaded after that many epochs by `attempt_id`),
//!   the newest of which a retry resumes from; older ones are
//!   deleted when a newer one or the task's result is committed.
//! - `workers(id, hostname, device, joined_ms, left_ms)`.

use freqsweep_common::task::MetricPoint;
use rusqlite::{params, Connection, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;

mod added;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {detail}")]
    Open { path: PathBuf, detail: String },
    #[error("store: {0}")]
    Sql(String),
    #[error("store writer has stopped")]
    Closed,
    /// A [`Change::AddTask`] met another task under its id or key (nothing of its batch is
    /// written).
    #[error("store: cannot add task {key}: {detail}")]
    AddedTaskDiffers { key: String, detail: String },
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Sql(e.to_string())
    }
}

/// A task as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskRow {
    pub id: u64,
    pub key: String,
    pub kind: String,
    pub spec_json: String,
    pub deps: Vec<u64>,
    pub state: String,
    pub attempts: u32,
    pub result_json: Option<String>,
    pub error: Option<String>,
}

/// One write.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    SweepValue {
        key: String,
        value: String,
    },
    /// Insert a task planned when the run opens (ignored if the key exists: resuming a sweep
    /// re-plans the same tasks).
    InsertTask {
        id: u64,
        key: String,
        kind: String,
        spec_json: String,
        deps: Vec<u64>,
    },
    /// Insert a task added while the sweep runs, as pending and marked added (`tasks.added` = 1;
    /// [`Reader::added_tasks`] reads them back). Applying it again is fine if the stored row is
    /// the same added task (a retry after a crash; its state is kept); a row that differs —
    /// another task under the id or the key, a planned task, or other kind, spec or deps — fails
    /// the batch with [`StoreError::AddedTaskDiffers`] naming the key.
    AddTask {
        id: u64,
        key: String,
        kind: String,
        spec_json: String,
        deps: Vec<u64>,
    },
    TaskState {
        id: u64,
        state: String,
        attempts: u32,
        now_ms: u64,
    },
    TaskResult {
        id: u64,
        result_json: String,
    },
    TaskError {
        id: u64,
        error: String,
    },
    AttemptStarted {
        id: u64,
        task_id: u64,
        worker: String,
        now_ms: u64,
        /// A speculative backup of a running attempt.
        backup: bool,
    },
    AttemptEnded {
        id: u64,
        outcome: String,
        now_ms: u64,
    },
    /// Close every attempt still open (`interrupted`): a coordinator resuming a run directory
    /// does this first, since attempts live at a crash are not live in the new process.
    CloseOpenAttempts {
        now_ms: u64,
    },
    /// A batch of metric points; dropped whole if `(attempt_id, seq)` was stored before.
    Metrics {
        task_id: u64,
        attempt_id: u64,
        seq: u64,
        points: Vec<MetricPoint>,
    },
    /// Delete the points of an attempt that lost the race (the winner's stream is the record).
    DiscardMetrics {
        attempt_id: u64,
    },
    Artifact {
        digest: String,
        name: String,
        size: u64,
        path: String,
        task_id: Option<u64>,
    },
    WorkerJoined {
        id: String,
        hostname: String,
        device: String,
        now_ms: u64,
    },
    WorkerLeft {
        id: String,
        now_ms: u64,
    },
    /// A train attempt's checkpoint after `epochs_done` epochs (not an output of the task).
    PartialCheckpoint {
        digest: String,
        name: String,
        size: u64,
        path: String,
        task_id: u64,
        attempt_id: u64,
        epochs_done: u32,
    },
    /// Forget an artifact (a superseded partial checkpoint).
    DeleteArtifact {
        digest: String,
    },
    /// Attempt `id` resumes its task at `epochs_done` from a partial checkpoint.
    AttemptResumed {
        id: u64,
        epochs_done: u32,
    },
    /// Attempt `attempt_id` of `task_id` starts: it reports the task's whole history, so the
    /// points earlier attempts stored are deleted.
    SupersedeMetrics {
        task_id: u64,
        attempt_id: u64,
    },
}

type Callback = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

enum Command {
    Write(Vec<Change>, Option<Callback>),
    Stop,
}

/// Most commands folded into one transaction (bounds the latency of the first one).
const MAX_GROUP: usize = 4096;

/// Handle to the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Command>,
    path: PathBuf,
    stats: Arc<Counters>,
}

/// Running totals of the writer thread, for `/metrics` (relaxed atomics: a scrape may see one
/// commit's counters half updated, which is harmless for monotonic totals).
#[derive(Default)]
struct Counters {
    commits: AtomicU64,
    batches: AtomicU64,
    changes: AtomicU64,
    commit_micros: AtomicU64,
}

/// What the writer has done since the store was opened (see [`Store::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct StoreStats {
    /// Transactions committed that wrote something (one per group).
    pub commits: u64,
    /// Non-empty batches folded into those commits (`batches / commits` = mean group size).
    pub batches: u64,
    /// Individual changes written.
    pub changes: u64,
    /// Wall time spent applying and committing, summed over commits.
    pub commit_seconds: f64,
}

/// Owns the writer thread; dropping it (or [`StoreWriter::stop`]) drains the queue and closes.
pub struct StoreWriter {
    tx: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let open_err = |e: rusqlite::Error| StoreError::Open { path: path.to_path_buf(), detail: e.to_string() };
    let conn = Connection::open(path).map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(open_err)?;
    conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
    conn.pragma_update(None, "synchronous", "FULL").map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", "OFF").map_err(open_err)?;
    Ok(conn)
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sweep (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, spec_json TEXT NOT NULL,
    deps_json TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    result_json TEXT, error TEXT, updated_ms INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS attempts (
    id INTEGER PRIMARY KEY, task_id INTEGER NOT NULL, worker TEXT NOT NULL,
    started_ms INTEGER NOT NULL, ended_ms INTEGER, outcome TEXT);
CREATE INDEX IF NOT EXISTS attempts_task ON attempts(task_id);
CREATE TABLE IF NOT EXISTS metric_batches (attempt_id INTEGER NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (attempt_id, seq));
CREATE TABLE IF NOT EXISTS metrics (
    task_id INTEGER NOT NULL, attempt_id INTEGER NOT NULL, name TEXT NOT NULL, epoch REAL NOT NULL,
    step INTEGER NOT NULL, test_set TEXT NOT NULL, class_index INTEGER NOT NULL, value REAL NOT NULL);
CREATE INDEX IF NOT EXISTS metrics_task ON metrics(task_id, name);
CREATE TABLE IF NOT EXISTS artifacts (digest TEXT PRIMARY KEY, name TEXT NOT NULL, size INTEGER NOT NULL, path TEXT NOT NULL, task_id INTEGER);
CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, hostname TEXT NOT NULL, device TEXT NOT NULL, joined_ms INTEGER NOT NULL, left_ms INTEGER);
";

/// Columns added after the first release: `(table, column, declaration)`, added to a store that
/// lacks them (a run directory written by an older coordinator).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("attempts", "resumed_epoch", "INTEGER"),
    ("artifacts", "attempt_id", "INTEGER"),
    ("artifacts", "epochs_done", "INTEGER"),
    ("attempts", "backup", "INTEGER NOT NULL DEFAULT 0"),
    // The `metric_batches` rowid of the point's batch (0 for points stored before the column).
    ("metrics", "batch", "INTEGER NOT NULL DEFAULT 0"),
    // 1 for a task added while the sweep ran, 0 for one planned when the run opened.
    ("tasks", "added", "INTEGER NOT NULL DEFAULT 0"),
];

/// Added columns a read-only open does without: a store from before one reads as if each row
/// held its default (before `tasks.added`, every task was planned when the run opened).
const READ_WITHOUT: &[(&str, &str)] = &[("tasks", "added")];

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    for (table, column, decl) in ADDED_COLUMNS {
        let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
        let present = stmt.query_map([], |r| r.get::<_, String>(1))?.collect::<Result<Vec<_>, _>>()?;
        if !present.iter().any(|c| c == column) {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
        }
    }
    conn.execute_batch("CREATE INDEX IF NOT EXISTS metrics_batch ON metrics(batch)")?;
    Ok(())
}

/// Open a store only to read it (`freqsweep report`): nothing is created, migrated or written,
/// so a damaged store stays as it was for whoever repairs it, and one that lacks a table or a
/// column this version reads is refused naming it (a 0-byte file has none). Tables and columns
/// come from [`SCHEMA`] and [`ADDED_COLUMNS`], the same source that creates them.
pub fn open_read_only(path: &Path) -> Result<Reader, StoreError> {
    let open_err = |e: rusqlite::Error| StoreError::Open { path: path.to_path_buf(), detail: e.to_string() };
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
    conn.busy_timeout(std::time::Duration::from_secs(10)).map_err(open_err)?;
    let damaged = |detail: String| StoreError::Open { path: path.to_path_buf(), detail };
    let mut missing = Vec::new();
    let expected = expected_columns();
    let mut tables_missing = 0;
    for (table, columns) in &expected {
        let mut stmt = conn
            .prepare(&format!("PRAGMA table_info({table})"))
            .map_err(|e| damaged(format!("not a readable freqsweep store ({e})")))?;
        let present = stmt
            .query_map([], |r| r.get::<_, String>(1))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| damaged(format!("not a readable freqsweep store ({e})")))?;
        if present.is_empty() {
            tables_missing += 1;
            missing.push(format!("table {table}"));
        } else {
            let required = |c: &&String| !READ_WITHOUT.contains(&(table.as_str(), c.as_str()));
            let lacking = columns.iter().filter(required).filter(|c| !present.contains(c));
            missing.extend(lacking.map(|c| format!("column {table}.{c}")));
        }
    }
    if tables_missing == expected.len() {
        return Err(damaged("holds no freqsweep store (no table of one: empty, or another database)".into()));
    }
    if !missing.is_empty() {
        return Err(damaged(format!(
            "the store is damaged or from an older freqsweep: it lacks {} (resuming the run with this version migrates an older store)",
            missing.join(", ")
        )));
    }
    Ok(Reader { conn })
}

/// Every table of [`SCHEMA`] with the columns this version reads (its own and [`ADDED_COLUMNS`]).
fn expected_columns() -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for statement in SCHEMA.split(';') {
        let Some(rest) = statement.trim().strip_prefix("CREATE TABLE IF NOT EXISTS ") else { continue };
        let Some((table, body)) = rest.split_once('(') else { continue };
        let body = body.rsplit_once(')').map_or(body, |(b, _)| b);
        let columns = body
            .split(',')
            .filter_map(|c| c.split_whitespace().next())
            .filter(|c| *c != "PRIMARY" && !c.starts_with(|ch: char| ch.is_ascii_digit() || ch == '('))
            .filter(|c| c.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_'))
            .map(String::from)
            .collect();
        out.push((table.trim().to_string(), columns));
    }
    for (table, column, _) in ADDED_COLUMNS {
        if let Some((_, columns)) = out.iter_mut().find(|(t, _)| t == table) {
            columns.push(column.to_string());
        }
    }
    out
}

impl Store {
    /// Open (creating if needed) the database at `path` and start its writer thread.
    pub fn open(path: &Path) -> Result<(Store, StoreWriter), StoreError> {
        let conn = open_connection(path)?;
        conn.execute_batch(SCHEMA)
            .and_then(|_| migrate(&conn))
            .map_err(|e| StoreError::Open { path: path.to_path_buf(), detail: e.to_string() })?;
        let (tx, rx) = mpsc::channel();
        let stats = Arc::new(Counters::default());
        let counters = stats.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer_loop(conn, rx, &counters))
            .map_err(|e| StoreError::Open { path: path.to_path_buf(), detail: e.to_string() })?;
        Ok((Store { tx: tx.clone(), path: path.to_path_buf(), stats }, StoreWriter { tx, thread: Some(thread) }))
    }

    /// Commit counters since this store was opened.
    pub fn stats(&self) -> StoreStats {
        let c = &self.stats;
        StoreStats {
            commits: c.commits.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            changes: c.changes.load(Ordering::Relaxed),
            commit_seconds: c.commit_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }

    /// Queue `changes`; `done` runs after they are committed (or failed).
    pub fn submit(&self, changes: Vec<Change>, done: impl FnOnce(Result<(), StoreError>) + Send + 'static) {
        if let Err(mpsc::SendError(Command::Write(_, Some(cb)))) =
            self.tx.send(Command::Write(changes, Some(Box::new(done))))
        {
            cb(Err(StoreError::Closed));
        }
    }

    /// Queue `changes` and wait until they are committed.
    pub fn write(&self, changes: Vec<Change>) -> Result<(), StoreError> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(changes, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().map_err(|_| StoreError::Closed)?
    }

    /// A read-only connection for queries (WAL lets readers run beside the writer).
    pub fn reader(&self) -> Result<Reader, StoreError> {
        Ok(Reader { conn: open_connection(&self.path)? })
    }
}

impl StoreWriter {
    /// Commit everything queued, then stop the writer thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.tx.send(Command::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for StoreWriter {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Command>, stats: &Counters) {
    let mut stopping = false;
    while !stopping {
        let Ok(first) = rx.recv() else { return };
        let mut group: Vec<(Vec<Change>, Option<Callback>)> = Vec::new();
        match first {
            Command::Write(c, cb) => group.push((c, cb)),
            Command::Stop => stopping = true,
        }
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(Command::Write(c, cb)) => group.push((c, cb)),
                Ok(Command::Stop) => stopping = true,
                Err(_) => break,
            }
        }
        if group.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        let results = commit_group(&mut conn, &group.iter().map(|(c, _)| c.as_slice()).collect::<Vec<_>>());
        // Empty batches (the service's periodic ticks) only order callbacks: not counted.
        let changes: u64 = group.iter().map(|(c, _)| c.len() as u64).sum();
        if changes > 0 {
            stats.commit_micros.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
            stats.commits.fetch_add(1, Ordering::Relaxed);
            stats.batches.fetch_add(group.iter().filter(|(c, _)| !c.is_empty()).count() as u64, Ordering::Relaxed);
            stats.changes.fetch_add(changes, Ordering::Relaxed);
        }
        for ((_, cb), result) in group.into_iter().zip(results) {
            if let Some(cb) = cb {
                cb(result);
            }
        }
    }
}

/// Commit `batches` in one transaction; if that fails, each again in one of its own, so a batch
/// that cannot be written (an added task that conflicts) fails alone, not with its group.
fn commit_group(conn: &mut Connection, batches: &[&[Change]]) -> Vec<Result<(), StoreError>> {
    match apply(conn, batches.iter().copied()) {
        Ok(()) => vec![Ok(()); batches.len()],
        Err(e) if batches.len() == 1 => vec![Err(e)],
        Err(_) => batches.iter().map(|batch| apply(conn, std::iter::once(*batch))).collect(),
    }
}

/// Apply `groups` in one transaction: all of them or, on an error, none.
fn apply<'a>(conn: &mut Connection, groups: impl Iterator<Item = &'a [Change]>) -> Result<(), StoreError> {
    let tx = conn.transaction()?;
    for change in groups.flatten() {
        apply_change(&tx, change)?;
    }
    Ok(tx.commit()?)
}

/// One change, inside the caller's transaction.
fn apply_change(tx: &rusqlite::Transaction<'_>, change: &Change) -> Result<(), StoreError> {
    match change {
        Change::SweepValue { key, value } => {
            tx.execute("INSERT OR REPLACE INTO sweep (key, value) VALUES (?1, ?2)", params![key, value])?;
        }
        Change::InsertTask { id, key, kind, spec_json, deps } => {
            let deps = serde_json::to_string(deps).expect("ids serialise");
            tx.prepare_cached(
                "INSERT OR IGNORE INTO tasks (id, key, kind, spec_json, deps_json, state) VALUES (?1, ?2, ?3, ?4, ?5, 'pending')",
            )?
            .execute(params![*id as i64, key, kind, spec_json, deps])?;
        }
        Change::AddTask { id, key, kind, spec_json, deps } => {
            added::add_task(tx, &added::AddedTask { id: *id, key, kind, spec_json, deps })?
        }
        Change::TaskState { id, state, attempts, now_ms } => {
            tx.prepare_cached("UPDATE tasks SET state = ?2, attempts = ?3, updated_ms = ?4 WHERE id = ?1")?
                .execute(params![*id as i64, state, attempts, *now_ms as i64])?;
        }
        Change::TaskResult { id, result_json } => {
            tx.prepare_cached("UPDATE tasks SET result_json = ?2 WHERE id = ?1")?
                .execute(params![*id as i64, result_json])?;
        }
        Change::TaskError { id, error } => {
            tx.prepare_cached("UPDATE tasks SET error = ?2 WHERE id = ?1")?.execute(params![*id as i64, error])?;
        }
        Change::AttemptStarted { id, task_id, worker, now_ms, backup } => {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO attempts (id, task_id, worker, started_ms, backup) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![*id as i64, *task_id as i64, worker, *now_ms as i64, *backup as i64])?;
        }
        Change::AttemptEnded { id, outcome, now_ms } => {
            tx.prepare_cached("UPDATE attempts SET ended_ms = ?2, outcome = ?3 WHERE id = ?1 AND ended_ms IS NULL")?
                .execute(params![*id as i64, *now_ms as i64, outcome])?;
        }
        Change::CloseOpenAttempts { now_ms } => {
            tx.execute(
                "UPDATE attempts SET ended_ms = ?1, outcome = 'interrupted' WHERE ended_ms IS NULL",
                params![*now_ms as i64],
            )?;
        }
        Change::Metrics { task_id, attempt_id, seq, points } => store_metrics(tx, *task_id, *attempt_id, *seq, points)?,
        Change::DiscardMetrics { attempt_id } => {
            tx.prepare_cached("DELETE FROM metrics WHERE attempt_id = ?1")?.execute(params![*attempt_id as i64])?;
        }
        Change::Artifact { digest, name, size, path, task_id } => {
            tx.execute(
                "INSERT OR REPLACE INTO artifacts (digest, name, size, path, task_id) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![digest, name, *size as i64, path, task_id.map(|t| t as i64)],
            )?;
        }
        Change::WorkerJoined { id, hostname, device, now_ms } => {
            tx.execute(
                "INSERT OR REPLACE INTO workers (id, hostname, device, joined_ms, left_ms) VALUES (?1, ?2, ?3, ?4, NULL)",
                params![id, hostname, device, *now_ms as i64],
            )?;
        }
        Change::WorkerLeft { id, now_ms } => {
            tx.execute("UPDATE workers SET left_ms = ?2 WHERE id = ?1", params![id, *now_ms as i64])?;
        }
        Change::PartialCheckpoint { digest, name, size, path, task_id, attempt_id, epochs_done } => {
            tx.execute(
                "INSERT OR REPLACE INTO artifacts (digest, name, size, path, task_id, attempt_id, epochs_done) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![digest, name, *size as i64, path, *task_id as i64, *attempt_id as i64, epochs_done],
            )?;
        }
        Change::DeleteArtifact { digest } => {
            tx.execute("DELETE FROM artifacts WHERE digest = ?1", params![digest])?;
        }
        Change::AttemptResumed { id, epochs_done } => {
            tx.prepare_cached("UPDATE attempts SET resumed_epoch = ?2 WHERE id = ?1")?
                .execute(params![*id as i64, epochs_done])?;
        }
        Change::SupersedeMetrics { task_id, attempt_id } => {
            tx.prepare_cached("DELETE FROM metrics WHERE task_id = ?1 AND attempt_id != ?2")?
                .execute(params![*task_id as i64, *attempt_id as i64])?;
        }
    }
    Ok(())
}

/// A batch of metric points, unless `(attempt_id, seq)` was stored before (a retransmission).
fn store_metrics(
    tx: &rusqlite::Transaction<'_>,
    task_id: u64,
    attempt_id: u64,
    seq: u64,
    points: &[MetricPoint],
) -> rusqlite::Result<()> {
    let mut insert_batch =
        tx.prepare_cached("INSERT OR IGNORE INTO metric_batches (attempt_id, seq) VALUES (?1, ?2)")?;
    if insert_batch.execute(params![attempt_id as i64, seq as i64])? == 0 {
        return Ok(()); // a duplicate batch: already stored
    }
    // Batches are never deleted, so their rowids only grow: a follower of the metrics
    // (TensorBoard) reads on from the last batch it saw.
    let batch = tx.last_insert_rowid();
    let mut insert_metric = tx.prepare_cached(
        "INSERT INTO metrics (task_id, attempt_id, name, epoch, step, test_set, class_index, value, batch) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for p in points {
        insert_metric.execute(params![
            task_id as i64,
            attempt_id as i64,
            p.name,
            p.epoch,
            p.step as i64,
            p.test_set,
            p.class_index,
            p.value,
            batch
        ])?;
    }
    Ok(())
}

/// The columns [`task_row`] reads, in its order.
const TASK_COLUMNS: &str = "id, key, kind, spec_json, deps_json, state, attempts, result_json, error";

fn task_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TaskRow> {
    let deps: String = r.get(4)?;
    Ok(TaskRow {
        id: r.get::<_, i64>(0)? as u64,
        key: r.get(1)?,
        kind: r.get(2)?,
        spec_json: r.get(3)?,
        deps: serde_json::from_str(&deps).unwrap_or_default(),
        state: r.get(5)?,
        attempts: r.get(6)?,
        result_json: r.get(7)?,
        error: r.get(8)?,
    })
}

/// The columns [`followed_point`] reads, in its order.
const FOLLOWED_COLUMNS: &str = "batch, task_id, attempt_id, name, epoch, step, test_set, class_index, value";

fn followed_point(r: &rusqlite::Row<'_>) -> rusqlite::Result<FollowedPoint> {
    Ok(FollowedPoint {
        batch: r.get(0)?,
        task_id: r.get::<_, i64>(1)? as u64,
        attempt_id: r.get::<_, i64>(2)? as u64,
        point: MetricPoint {
            name: r.get(3)?,
            epoch: r.get(4)?,
            step: r.get::<_, i64>(5)? as u64,
            test_set: r.get(6)?,
            class_index: r.get(7)?,
            value: r.get(8)?,
        },
    })
}

/// A stored metric point with where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct FollowedPoint {
    pub batch: i64,
    pub task_id: u64,
    pub attempt_id: u64,
    pub point: MetricPoint,
}

/// Read-only queries.
pub struct Reader {
    conn: Connection,
}

impl Reader {
    pub fn sweep_value(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self.conn.query_row("SELECT value FROM sweep WHERE key = ?1", [key], |r| r.get(0)).optional()?)
    }

    /// Every task, planned or added, in id order.
    pub fn tasks(&self) -> Result<Vec<TaskRow>, StoreError> {
        let mut stmt = self.conn.prepare(&format!("SELECT {TASK_COLUMNS} FROM tasks ORDER BY id"))?;
        let rows = stmt.query_map([], task_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The largest attempt id ever issued (new attempts continue above it after a restart).
    pub fn max_attempt_id(&self) -> Result<u64, StoreError> {
        Ok(self.conn.query_row("SELECT COALESCE(MAX(id), 0) FROM attempts", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// Metric points of a task, in insertion order.
    pub fn metrics(&self, task_id: u64) -> Result<Vec<MetricPoint>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, epoch, step, test_set, class_index, value FROM metrics WHERE task_id = ?1 ORDER BY rowid",
        )?;
        let rows = stmt.query_map([task_id as i64], |r| {
            Ok(MetricPoint {
                name: r.get(0)?,
                epoch: r.get(1)?,
                step: r.get::<_, i64>(2)? as u64,
                test_set: r.get(3)?,
                class_index: r.get(4)?,
                value: r.get(5)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The newest metric batch (`metric_batches` rowid; -1 for none). A batch commits together
    /// with its points.
    pub fn newest_metric_batch(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row("SELECT COALESCE(MAX(rowid), -1) FROM metric_batches", [], |r| r.get(0))?)
    }

    /// The metric points of batches `after < batch ≤ upto` (rowids of `metric_batches`), in
    /// batch order. Points of stores older than the column have batch 0.
    pub fn metrics_between(&self, after: i64, upto: i64) -> Result<Vec<FollowedPoint>, StoreError> {
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {FOLLOWED_COLUMNS} FROM metrics WHERE batch > ?1 AND batch <= ?2 ORDER BY batch, rowid"
        ))?;
        let rows = stmt.query_map(params![after, upto], followed_point)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every stored point of a task with its attempt, in insertion order (after a race only the
    /// winner's remain).
    pub fn task_metrics(&self, task_id: u64) -> Result<Vec<FollowedPoint>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {FOLLOWED_COLUMNS} FROM metrics WHERE task_id = ?1 ORDER BY rowid"))?;
        let rows = stmt.query_map([task_id as i64], followed_point)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Ids of the done tasks of `kind`.
    pub fn done_tasks(&self, kind: &str) -> Result<Vec<u64>, StoreError> {
        let mut stmt =
            self.conn.prepare_cached("SELECT id FROM tasks WHERE state = 'done' AND kind = ?1 ORDER BY id")?;
        let rows = stmt.query_map([kind], |r| Ok(r.get::<_, i64>(0)? as u64))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The stored result of a task.
    pub fn task_result(&self, id: u64) -> Result<Option<String>, StoreError> {
        let result = self.conn.query_row("SELECT result_json FROM tasks WHERE id = ?1", [id as i64], |r| r.get(0));
        Ok(result.optional()?.flatten())
    }

    /// `(name, digest)` of the artifacts whose name starts with `prefix`. (A file is found by its
    /// digest under the run directory's `artifacts/`, not by the stored `path`, which is where it
    /// was when written: a run directory moved or copied elsewhere still reads.)
    pub fn artifacts_named(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, digest FROM artifacts WHERE substr(name, 1, length(?1)) = ?1 ORDER BY name",
        )?;
        let rows = stmt.query_map([prefix], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn metric_count(&self) -> Result<u64, StoreError> {
        Ok(self.conn.query_row("SELECT COUNT(*) FROM metrics", [], |r| r.get::<_, i64>(0))? as u64)
    }

    /// `(name, size, path)` of an artifact by digest.
    pub fn artifact(&self, digest: &str) -> Result<Option<(String, u64, String)>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT name, size, path FROM artifacts WHERE digest = ?1", [digest], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
            })
            .optional()?)
    }

    /// An artifact the coordinator made itself (a merged map), by name: `(digest, size, path)`.
    pub fn artifact_by_name(&self, name: &str) -> Result<Option<(String, u64, String)>, StoreError> {
        Ok(self
            .conn
            .query_row("SELECT digest, size, path FROM artifacts WHERE name = ?1 AND task_id IS NULL", [name], |r| {
                Ok((r.get(0)?, r.get::<_, i64>(1)? as u64, r.get(2)?))
            })
            .optional()?)
    }

    /// Artifacts produced by a task (its outputs, not partial checkpoints): `(name, digest, size, path)`.
    pub fn task_artifacts(&self, task_id: u64) -> Result<Vec<(String, String, u64, String)>, StoreError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, digest, size, path FROM artifacts WHERE task_id = ?1 AND epochs_done IS NULL ORDER BY name",
        )?;
        let rows =
            stmt.query_map([task_id as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64, r.get(3)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every worker that ever joined, in join order.
    pub fn workers(&self) -> Result<Vec<WorkerRow>, StoreError> {
        let mut stmt =
            self.conn.prepare("SELECT id, hostname, device, joined_ms, left_ms FROM workers ORDER BY joined_ms, id")?;
        let rows = stmt.query_map([], |r| {
            Ok(WorkerRow {
                id: r.get(0)?,
                hostname: r.get(1)?,
                device: r.get(2)?,
                joined_ms: r.get::<_, i64>(3)? as u64,
                left_ms: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every attempt, in id order.
    pub fn attempts(&self) -> Result<Vec<AttemptRow>, StoreError> {
        let mut stmt = self.conn.prepare(&format!("SELECT {ATTEMPT_COLUMNS} FROM attempts ORDER BY id"))?;
        let rows = stmt.query_map([], attempt_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The attempts of one task, in id order.
    pub fn task_attempts(&self, task_id: u64) -> Result<Vec<AttemptRow>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(&format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE task_id = ?1 ORDER BY id"))?;
        let rows = stmt.query_map([task_id as i64], attempt_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// A row of the `workers` table.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerRow {
    pub id: String,
    pub hostname: String,
    pub device: String,
    pub joined_ms: u64,
    pub left_ms: Option<u64>,
}

/// A row of the `attempts` table.
#[derive(Clone, Debug, PartialEq)]
pub struct AttemptRow {
    pub id: u64,
    pub task_id: u64,
    pub worker: String,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    pub outcome: Option<String>,
    /// The epoch a train attempt resumed at from a partial checkpoint (`None`: from scratch).
    pub resumed_epoch: Option<u32>,
    /// A speculative backup of a running attempt.
    pub backup: bool,
}

const ATTEMPT_COLUMNS: &str = "id, task_id, worker, started_ms, ended_ms, outcome, resumed_epoch, backup";

fn attempt_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AttemptRow> {
    Ok(AttemptRow {
        id: r.get::<_, i64>(0)? as u64,
        task_id: r.get::<_, i64>(1)? as u64,
        worker: r.get(2)?,
        started_ms: r.get::<_, i64>(3)? as u64,
        ended_ms: r.get::<_, Option<i64>>(4)?.map(|v| v as u64),
        outcome: r.get(5)?,
        resumed_epoch: r.get(6)?,
        backup: r.get::<_, i64>(7)? != 0,
    })
}

/// A partial checkpoint as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct PartialRow {
    pub task_id: u64,
    pub attempt_id: u64,
    pub epochs_done: u32,
    pub name: String,
    pub digest: String,
    pub size: u64,
}

impl Reader {
    /// The newest partial checkpoint of every task that has one (what a retry resumes from).
    pub fn partial_checkpoints(&self) -> Result<Vec<PartialRow>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT task_id, attempt_id, epochs_done, name, digest, size FROM artifacts
             WHERE epochs_done IS NOT NULL ORDER BY task_id, epochs_done",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(PartialRow {
                task_id: r.get::<_, i64>(0)? as u64,
                attempt_id: r.get::<_, Option<i64>>(1)?.unwrap_or(0) as u64,
                epochs_done: r.get(2)?,
                name: r.get(3)?,
                digest: r.get(4)?,
                size: r.get::<_, i64>(5)? as u64,
            })
        })?;
        let mut newest: Vec<PartialRow> = Vec::new();
        for row in rows {
            let row = row?;
            match newest.last_mut() {
                Some(last) if last.task_id == row.task_id => *last = row,
                _ => newest.push(row),
            }
        }
        Ok(newest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(v: f64) -> MetricPoint {
        MetricPoint { name: "f1".into(), epoch: 1.5, step: 10, test_set: "B124".into(), class_index: 3, value: v }
    }

    #[test]
    fn changes_survive_a_reopen_and_duplicates_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("freqsweep.db");
        {
            let (store, writer) = Store::open(&path).unwrap();
            store
                .write(vec![
                    Change::SweepValue { key: "name".into(), value: "demo".into() },
                    Change::InsertTask {
                        id: 1,
                        key: "train/a".into(),
                        kind: "train".into(),
                        spec_json: "{}".into(),
                        deps: vec![],
                    },
                    Change::InsertTask {
                        id: 2,
                        key: "heatmap/a/0".into(),
                        kind: "heatmap".into(),
                        spec_json: "{}".into(),
                        deps: vec![1],
                    },
                    Change::AttemptStarted { id: 7, task_id: 1, worker: "w1".into(), now_ms: 5, backup: false },
                    Change::AttemptStarted { id: 8, task_id: 1, worker: "w2".into(), now_ms: 6, backup: true },
                    Change::Metrics { task_id: 1, attempt_id: 8, seq: 0, points: vec![point(0.1)] },
                    Change::AttemptEnded { id: 8, outcome: "superseded".into(), now_ms: 7 },
                    Change::DiscardMetrics { attempt_id: 8 },
                    Change::Metrics { task_id: 1, attempt_id: 7, seq: 0, points: vec![point(0.5), point(0.6)] },
                ])
                .unwrap();
            // The same batch again (a retransmission) and the same task key again (a resumed plan).
            store
                .write(vec![
                    Change::Metrics { task_id: 1, attempt_id: 7, seq: 0, points: vec![point(0.9)] },
                    Change::InsertTask {
                        id: 9,
                        key: "train/a".into(),
                        kind: "train".into(),
                        spec_json: "{}".into(),
                        deps: vec![],
                    },
                    Change::TaskState { id: 1, state: "done".into(), attempts: 1, now_ms: 9 },
                    Change::AttemptEnded { id: 7, outcome: "done".into(), now_ms: 9 },
                ])
                .unwrap();
            writer.stop();
        }
        let (store, _writer) = Store::open(&path).unwrap();
        let reader = store.reader().unwrap();
        assert_eq!(reader.sweep_value("name").unwrap().as_deref(), Some("demo"));
        let tasks = reader.tasks().unwrap();
        assert_eq!(tasks.len(), 2, "re-inserting a key is ignored");
        assert_eq!((tasks[0].state.as_str(), tasks[0].attempts), ("done", 1));
        assert_eq!(tasks[1].deps, [1]);
        assert_eq!(reader.metrics(1).unwrap(), [point(0.5), point(0.6)], "duplicate batch dropped");
        assert_eq!(reader.max_attempt_id().unwrap(), 8, "backup attempts count for the next id too");
        let attempts: Vec<_> = reader
            .attempts()
            .unwrap()
            .into_iter()
            .map(|a| (a.id, a.task_id, a.worker, a.backup, a.ended_ms, a.outcome))
            .collect();
        assert_eq!(
            attempts,
            [
                (7, 1, "w1".to_string(), false, Some(9), Some("done".to_string())),
                (8, 1, "w2".to_string(), true, Some(7), Some("superseded".to_string())),
            ]
        );
    }

    #[test]
    fn a_database_without_the_backup_column_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("freqsweep.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE attempts (id INTEGER PRIMARY KEY, task_id INTEGER NOT NULL, worker TEXT NOT NULL,
                 started_ms INTEGER NOT NULL, ended_ms INTEGER, outcome TEXT);
                 INSERT INTO attempts (id, task_id, worker, started_ms) VALUES (3, 1, 'w1', 0);",
            )
            .unwrap();
        }
        let (store, _writer) = Store::open(&path).unwrap();
        store
            .write(vec![Change::AttemptStarted { id: 4, task_id: 1, worker: "w2".into(), now_ms: 1, backup: true }])
            .unwrap();
        let backups: Vec<bool> = store.reader().unwrap().attempts().unwrap().iter().map(|a| a.backup).collect();
        assert_eq!(backups, [false, true], "old rows are first attempts");
        drop(store);
        Store::open(&path).expect("opening a migrated database again changes nothing");
    }

    #[test]
    fn many_concurrent_submitters_are_group_committed_and_all_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::open(&dir.path().join("db")).unwrap();
        let (tx, rx) = mpsc::channel();
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let store = store.clone();
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for seq in 0..250u64 {
                        let tx = tx.clone();
                        let points = vec![point(seq as f64); 4];
                        store.submit(vec![Change::Metrics { task_id: t, attempt_id: t, seq, points }], move |r| {
                            tx.send(r).unwrap()
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(tx);
        let acks: Vec<_> = rx.iter().take(1000).collect();
        assert_eq!(acks.len(), 1000);
        assert!(acks.iter().all(|r| r.is_ok()));
        let stats = store.stats();
        assert_eq!((stats.batches, stats.changes), (1000, 1000), "every batch counted once");
        assert!(stats.commits >= 1 && stats.commits <= 1000, "{stats:?}");
        writer.stop();
        let (store, _w) = Store::open(&dir.path().join("db")).unwrap();
        assert_eq!(store.reader().unwrap().metric_count().unwrap(), 4000);
    }

    #[test]
    fn partial_checkpoints_resumed_attempts_and_superseded_metrics() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = Store::open(&dir.path().join("db")).unwrap();
        let partial = |digest: &str, attempt_id, epochs_done| Change::PartialCheckpoint {
            digest: digest.into(),
            name: "checkpoint".into(),
            size: 3,
            path: format!("/a/{digest}"),
            task_id: 1,
            attempt_id,
            epochs_done,
        };
        store
            .write(vec![
                Change::AttemptStarted { id: 1, task_id: 1, worker: "w1".into(), now_ms: 1, backup: false },
                Change::SupersedeMetrics { task_id: 1, attempt_id: 1 },
                Change::Metrics { task_id: 1, attempt_id: 1, seq: 0, points: vec![point(0.1), point(0.2)] },
                partial("sha256:e1", 1, 1),
                partial("sha256:e2", 1, 2),
                Change::DeleteArtifact { digest: "sha256:e1".into() },
                Change::AttemptEnded { id: 1, outcome: "ready".into(), now_ms: 2 },
                // The retry resumes at epoch 2 and re-sends the history.
                Change::AttemptStarted { id: 2, task_id: 1, worker: "w2".into(), now_ms: 3, backup: false },
                Change::AttemptResumed { id: 2, epochs_done: 2 },
                Change::SupersedeMetrics { task_id: 1, attempt_id: 2 },
                Change::Metrics { task_id: 1, attempt_id: 2, seq: 0, points: vec![point(0.1), point(0.2), point(0.3)] },
            ])
            .unwrap();
        let reader = store.reader().unwrap();
        let newest = reader.partial_checkpoints().unwrap();
        assert_eq!(newest.len(), 1);
        assert_eq!((newest[0].digest.as_str(), newest[0].epochs_done, newest[0].attempt_id), ("sha256:e2", 2, 1));
        assert!(reader.task_artifacts(1).unwrap().is_empty(), "a partial checkpoint is not an output");
        assert_eq!(reader.metrics(1).unwrap(), [point(0.1), point(0.2), point(0.3)], "no point stored twice");
        let attempts = reader.task_attempts(1).unwrap();
        assert_eq!(attempts.iter().map(|a| a.resumed_epoch).collect::<Vec<_>>(), [None, Some(2)]);

        // The final checkpoint has the bytes of the last partial one: its row becomes an output.
        store
            .write(vec![Change::Artifact {
                digest: "sha256:e2".into(),
                name: "checkpoint".into(),
                size: 3,
                path: "/a/sha256:e2".into(),
                task_id: Some(1),
            }])
            .unwrap();
        assert!(reader.partial_checkpoints().unwrap().is_empty());
        assert_eq!(reader.task_artifacts(1).unwrap().len(), 1);
    }

    #[test]
    fn a_store_from_before_partial_checkpoints_gains_the_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE attempts (id INTEGER PRIMARY KEY, task_id INTEGER NOT NULL, worker TEXT NOT NULL,
                    started_ms INTEGER NOT NULL, ended_ms INTEGER, outcome TEXT);
                 CREATE TABLE artifacts (digest TEXT PRIMARY KEY, name TEXT NOT NULL, size INTEGER NOT NULL, path TEXT NOT NULL, task_id INTEGER);
                 INSERT INTO artifacts VALUES ('sha256:old', 'checkpoint', 1, '/x', 4);",
            )
            .unwrap();
        }
        let (store, _writer) = Store::open(&path).unwrap();
        let reader = store.reader().unwrap();
        assert_eq!(reader.task_artifacts(4).unwrap().len(), 1, "old outputs stay outputs");
        assert!(reader.partial_checkpoints().unwrap().is_empty());
        store
            .write(vec![Change::AttemptStarted { id: 1, task_id: 4, worker: "w1".into(), now_ms: 1, backup: false }])
            .unwrap();
        store.write(vec![Change::AttemptResumed { id: 1, epochs_done: 3 }]).unwrap();
        assert_eq!(reader.task_attempts(4).unwrap()[0].resumed_epoch, Some(3));
    }

    #[test]
    fn an_unopenable_path_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Store::open(&dir.path().join("missing/dir/freqsweep.db")).err().unwrap();
        assert!(err.to_string().contains("missing/dir/freqsweep.db"), "{err}");
    }

    /// `freqsweep report` opened stores read-write: it created a 0-byte store's tables,
    /// re-created a dropped `metrics` table (the curves silently disappeared) and panicked on
    /// a dropped `tasks` table. A read-only open checks the schema and writes nothing.
    #[test]
    fn a_read_only_open_checks_the_schema_and_changes_nothing() {
        let expected = expected_columns();
        let columns = |t: &str| expected.iter().find(|(n, _)| n == t).map(|(_, c)| c.clone()).unwrap();
        assert_eq!(expected.len(), 7, "{expected:?}");
        assert_eq!(columns("metric_batches"), ["attempt_id", "seq"]);
        assert_eq!(columns("tasks").len(), 11);
        assert!(columns("metrics").contains(&"batch".to_string()), "added columns count too");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("freqsweep.db");
        {
            let (store, writer) = Store::open(&path).unwrap();
            store.write(vec![Change::SweepValue { key: "name".into(), value: "s".into() }]).unwrap();
            writer.stop();
        }
        let reader = open_read_only(&path).unwrap();
        assert_eq!(reader.sweep_value("name").unwrap().as_deref(), Some("s"));
        drop(reader);
        Connection::open(&path).unwrap().execute_batch("DROP TABLE metrics").unwrap();
        let err = open_read_only(&path).err().unwrap().to_string();
        assert!(err.contains("lacks table metrics"), "{err}");
        let err = open_read_only(&path).err().unwrap().to_string();
        assert!(err.contains("lacks table metrics"), "still missing: nothing re-created it: {err}");

        let empty = dir.path().join("empty.db");
        std::fs::write(&empty, b"").unwrap();
        let err = open_read_only(&empty).err().unwrap().to_string();
        assert!(err.contains("holds no freqsweep store"), "{err}");
        assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0);
    }
}
