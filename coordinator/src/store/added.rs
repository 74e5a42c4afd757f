//! Tasks added while the sweep runs (a search strategy's new points): rows of `tasks` marked
//! `added = 1` beside those planned when the run opened, so a restarted coordinator restores them
//! too ([`Reader::added_tasks`]).

use rusqlite::{params, Transaction};

#[cfg(doc)]
use super::Change;
use super::{task_row, Reader, StoreError, TaskRow, TASK_COLUMNS};

/// The fields of a [`Change::AddTask`].
pub(super) struct AddedTask<'a> {
    pub(super) id: u64,
    pub(super) key: &'a str,
    pub(super) kind: &'a str,
    pub(super) spec_json: &'a str,
    pub(super) deps: &'a [u64],
}

/// A task row as far as adding compares it.
struct Stored {
    id: u64,
    key: String,
    kind: String,
    spec_json: String,
    deps: Vec<u64>,
    added: bool,
}

/// Insert `task` as pending and added, unless it is stored already: the same added task is
/// fine (a retry after a crash), anything else under its id or key is an error naming the key.
pub(super) fn add_task(tx: &Transaction<'_>, task: &AddedTask<'_>) -> Result<(), StoreError> {
    let mut stmt =
        tx.prepare_cached("SELECT id, key, kind, spec_json, deps_json, added FROM tasks WHERE id = ?1 OR key = ?2")?;
    let stored = stmt
        .query_map(params![task.id as i64, task.key], |r| {
            let deps: String = r.get(4)?;
            Ok(Stored {
                id: r.get::<_, i64>(0)? as u64,
                key: r.get(1)?,
                kind: r.get(2)?,
                spec_json: r.get(3)?,
                deps: serde_json::from_str(&deps).unwrap_or_default(),
                added: r.get::<_, i64>(5)? != 0,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(detail) = stored.iter().find_map(|row| difference(row, task)) {
        return Err(StoreError::AddedTaskDiffers { key: task.key.to_string(), detail });
    }
    if stored.is_empty() {
        let deps = serde_json::to_string(task.deps).expect("ids serialise");
        tx.prepare_cached(
            "INSERT INTO tasks (id, key, kind, spec_json, deps_json, state, added) VALUES (?1, ?2, ?3, ?4, ?5, 'pending', 1)",
        )?
        .execute(params![task.id as i64, task.key, task.kind, task.spec_json, deps])?;
    }
    Ok(())
}

/// How the stored `row` (which shares `task`'s id or key) differs from it, if it does.
fn difference(row: &Stored, task: &AddedTask<'_>) -> Option<String> {
    if row.key != task.key {
        Some(format!("id {} holds task {}", task.id, row.key))
    } else if row.id != task.id {
        Some(format!("it is stored under id {}, not {}", row.id, task.id))
    } else if !row.added {
        Some("it was planned when the run opened".to_string())
    } else if row.kind != task.kind {
        Some(format!("it was added as kind {}, not {}", row.kind, task.kind))
    } else if row.spec_json != task.spec_json {
        Some("it was added with another spec".to_string())
    } else if row.deps != task.deps {
        Some(format!("it was added with dependencies {:?}, not {:?}", row.deps, task.deps))
    } else {
        None
    }
}

impl Reader {
    /// Every sweep value whose key starts with `prefix`, in key order (the added points are
    /// stored as `added_point/<index>`).
    pub fn sweep_values_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt =
            self.conn.prepare("SELECT key, value FROM sweep WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key")?;
        let rows = stmt.query_map([prefix], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The sweep values whose key starts with `prefix` and is at least `from` (keys such as
    /// `added_point/00000042` sort by index): what was added since `from`.
    pub fn sweep_values_from(&self, prefix: &str, from: &str) -> Result<Vec<(String, String)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT key, value FROM sweep WHERE substr(key, 1, length(?1)) = ?1 AND key >= ?2 ORDER BY key")?;
        let rows = stmt.query_map([prefix, from], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The tasks added while the sweep ran ([`Change::AddTask`]), in id order, with their stored
    /// state: what a restarted coordinator restores beside the tasks it plans. A store from
    /// before added tasks (read-only, so not migrated) has none.
    pub fn added_tasks(&self) -> Result<Vec<TaskRow>, StoreError> {
        self.added_tasks_from(0)
    }

    /// [`Reader::added_tasks`] with ids from `first` on (those added since a task `first - 1`).
    pub fn added_tasks_from(&self, first: u64) -> Result<Vec<TaskRow>, StoreError> {
        if !self.has_column("tasks", "added")? {
            return Ok(Vec::new());
        }
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE added = 1 AND id >= ?1 ORDER BY id");
        let mut stmt = self.conn.prepare(&sql)?;
        let rows = stmt.query_map([first as i64], task_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    fn has_column(&self, table: &str, column: &str) -> Result<bool, StoreError> {
        let mut stmt = self.conn.prepare(&format!("PRAGMA table_info({table})"))?;
        let columns = stmt.query_map([], |r| r.get::<_, String>(1))?.collect::<Result<Vec<_>, _>>()?;
        Ok(columns.iter().any(|c| c == column))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{commit_group, open_read_only, Change, Store, ADDED_COLUMNS, SCHEMA};
    use super::*;
    use rusqlite::Connection;

    fn add(id: u64, key: &str, spec_json: &str, deps: &[u64]) -> Change {
        let (key, kind, spec_json) = (key.to_string(), "train".to_string(), spec_json.to_string());
        Change::AddTask { id, key, kind, spec_json, deps: deps.to_vec() }
    }

    fn plan(id: u64, key: &str) -> Change {
        let (key, kind) = (key.to_string(), "train".to_string());
        Change::InsertTask { id, key, kind, spec_json: "{}".into(), deps: vec![] }
    }

    fn ids(rows: &[TaskRow]) -> Vec<u64> {
        rows.iter().map(|r| r.id).collect()
    }

    #[test]
    fn added_tasks_survive_a_reopen_in_id_order_beside_the_planned_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("freqsweep.db");
        {
            let (store, writer) = Store::open(&path).unwrap();
            store.write(vec![plan(1, "train/a"), plan(2, "train/b")]).unwrap();
            store
                .write(vec![add(4, "train/d", r#"{"lr":2}"#, &[3]), add(3, "train/c", r#"{"lr":1}"#, &[1, 2])])
                .unwrap();
            store.write(vec![Change::TaskState { id: 3, state: "done".into(), attempts: 1, now_ms: 5 }]).unwrap();
            writer.stop();
        }
        let (store, _writer) = Store::open(&path).unwrap();
        let reader = store.reader().unwrap();
        let added = reader.added_tasks().unwrap();
        assert_eq!(ids(&added), [3, 4], "in id order, planned tasks not among them");
        assert_eq!((added[0].key.as_str(), added[0].spec_json.as_str()), ("train/c", r#"{"lr":1}"#));
        assert_eq!((added[0].kind.as_str(), added[0].deps.as_slice()), ("train", &[1, 2][..]));
        assert_eq!((added[0].state.as_str(), added[0].attempts), ("done", 1), "with their stored state");
        assert_eq!(added[1].state, "pending", "added as pending, as planned tasks are");
        assert_eq!(ids(&reader.tasks().unwrap()), [1, 2, 3, 4], "every task, planned or added");
        assert_eq!(ids(&reader.added_tasks_from(4).unwrap()), [4], "only those from an id on");
    }

    /// A follower reads only what was added since it last looked: sweep values by prefix from a
    /// key on (the added points' keys sort by index), no other key among them.
    #[test]
    fn sweep_values_are_read_by_prefix_from_a_key_on() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = Store::open(&dir.path().join("db")).unwrap();
        let value = |key: &str| Change::SweepValue { key: key.into(), value: format!("v of {key}") };
        store
            .write(vec![
                value("added_point/00000000"),
                value("added_point/00000001"),
                value("added_point/00000002"),
                value("added_pointless"),
                value("name"),
            ])
            .unwrap();
        let reader = store.reader().unwrap();
        let keys = |rows: Vec<(String, String)>| rows.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(keys(reader.sweep_values_with_prefix("added_point/").unwrap()).len(), 3);
        assert_eq!(
            keys(reader.sweep_values_from("added_point/", "added_point/00000001").unwrap()),
            ["added_point/00000001", "added_point/00000002"]
        );
        assert!(reader.sweep_values_from("added_point/", "added_point/00000003").unwrap().is_empty());
    }

    #[test]
    fn adding_the_same_task_again_changes_nothing_and_another_one_is_refused_naming_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _writer) = Store::open(&dir.path().join("db")).unwrap();
        store.write(vec![plan(1, "train/a"), add(2, "train/b", "{}", &[1])]).unwrap();
        store.write(vec![Change::TaskState { id: 2, state: "running".into(), attempts: 0, now_ms: 1 }]).unwrap();
        store.write(vec![add(2, "train/b", "{}", &[1])]).expect("a retry of the same addition is fine");
        let reader = store.reader().unwrap();
        assert_eq!(reader.added_tasks().unwrap()[0].state, "running", "a retry keeps the state");

        let cases = [
            (add(2, "train/x", "{}", &[1]), "train/x", "id 2 holds task train/b"),
            (add(3, "train/b", "{}", &[1]), "train/b", "stored under id 2, not 3"),
            (add(1, "train/a", "{}", &[]), "train/a", "planned when the run opened"),
            (add(2, "train/b", r#"{"lr":1}"#, &[1]), "train/b", "another spec"),
            (add(2, "train/b", "{}", &[]), "train/b", "dependencies [1], not []"),
            (
                Change::AddTask {
                    id: 2,
                    key: "train/b".into(),
                    kind: "heatmap".into(),
                    spec_json: "{}".into(),
                    deps: vec![1],
                },
                "train/b",
                "kind train, not heatmap",
            ),
        ];
        for (change, key, detail) in cases {
            // The batch fails whole: the value beside the addition is not written either.
            let value = Change::SweepValue { key: "beside".into(), value: key.into() };
            let err = store.write(vec![value, change.clone()]).unwrap_err();
            assert!(matches!(&err, StoreError::AddedTaskDiffers { key: k, .. } if k == key), "{change:?}: {err}");
            assert!(err.to_string().contains(key) && err.to_string().contains(detail), "{err}");
            assert_eq!(reader.sweep_value("beside").unwrap(), None);
        }
        assert_eq!(ids(&reader.tasks().unwrap()), [1, 2], "nothing else was added");
    }

    #[test]
    fn a_conflicting_addition_fails_alone_not_the_batches_committed_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, writer) = Store::open(&dir.path().join("db")).unwrap();
        store.write(vec![add(1, "train/a", "{}", &[])]).unwrap();
        writer.stop();
        let mut conn = Connection::open(dir.path().join("db")).unwrap();
        let before = [Change::SweepValue { key: "before".into(), value: "1".into() }];
        let conflict = [add(1, "train/a", r#"{"lr":1}"#, &[])];
        let after = [Change::SweepValue { key: "after".into(), value: "1".into() }];
        let results = commit_group(&mut conn, &[&before, &conflict, &after]);
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        assert!(matches!(&results[1], Err(StoreError::AddedTaskDiffers { key, .. }) if key == "train/a"));
        let reader = Reader { conn };
        assert_eq!(reader.sweep_value("before").unwrap().as_deref(), Some("1"));
        assert_eq!(reader.sweep_value("after").unwrap().as_deref(), Some("1"));
    }

    #[test]
    fn a_store_from_before_added_tasks_reads_without_them_and_is_migrated_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("freqsweep.db");
        {
            // The schema as it was before `tasks.added`, with one planned task.
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            for (table, column, decl) in ADDED_COLUMNS.iter().filter(|(_, c, _)| *c != "added") {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}")).unwrap();
            }
            conn.execute_batch(
                "INSERT INTO tasks (id, key, kind, spec_json, deps_json, state) VALUES (1, 'train/a', 'train', '{}', '[]', 'done')",
            )
            .unwrap();
        }
        let reader = open_read_only(&path).expect("a read-only open accepts a store without the column");
        assert!(reader.added_tasks().unwrap().is_empty());
        assert_eq!(ids(&reader.tasks().unwrap()), [1]);
        drop(reader);
        assert!(
            !Reader { conn: Connection::open(&path).unwrap() }.has_column("tasks", "added").unwrap(),
            "not written"
        );

        let (store, writer) = Store::open(&path).unwrap();
        assert!(store.reader().unwrap().added_tasks().unwrap().is_empty(), "planned rows read as planned");
        store.write(vec![add(2, "train/b", "{}", &[1])]).unwrap();
        writer.stop();
        let reader = open_read_only(&path).expect("and a migrated one");
        assert_eq!(ids(&reader.added_tasks().unwrap()), [2]);
    }
}
