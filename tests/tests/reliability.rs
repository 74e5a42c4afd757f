//! What a careless user does to a finished or running run directory (issue 23): edit the spec and
//! run again, give the spec on a pipe, damage the store, ask for a report while the sweep runs.
//! Each case failed (silently or with a panic) before its fix.

use freqsweep_tests::{binary, copy_dir, run_bounded};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const NOT_SQLITE: &str = "this is not a database: it is a text file, long enough to hold what an SQLite header would, \
     written where the store should be by a careless copy or a disk error, and it must be refused in one line";

const LIMIT: Duration = Duration::from_secs(300);

/// Two seeds of the tiny CNN on a small Syn_2, one epoch, no heatmap: a seed group in seconds.
fn spec(name: &str) -> String {
    format!(
        "name = \"{name}\"\n[[dataset]]\nkind = \"syn\"\nband = 2\ntrain = 64\ntest = 16\n[model]\narch = \"tiny\"\n[train]\nlr = 0.003\nbatch_size = 32\nepochs = 1\nseed = [0, 1]\n"
    )
}

fn freqsweep(args: &[&str], dir: &Path) -> Command {
    let mut cmd = Command::new(binary("freqsweep"));
    cmd.args(args).arg(dir);
    cmd
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn last_line(stderr: &str) -> &str {
    stderr.lines().last().unwrap_or_default()
}

/// `freqsweep run SPEC` with the spec on standard input (`/dev/stdin`), the way `cat s.toml |
/// freqsweep run /dev/stdin` or `<(…)` give it.
fn run_piped(spec_text: &str, out: &Path) -> Output {
    use std::io::Write;
    let mut child = Command::new(binary("freqsweep"))
        .args(["run", "/dev/stdin", "--local-workers", "1", "--worker-threads", "1", "--out"])
        .arg(out)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(spec_text.as_bytes()).unwrap();
    let started = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            panic!("freqsweep run did not end within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sql(db: &Path, statement: &str) {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(statement).unwrap();
}

fn results(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("results.csv")).unwrap()
}

/// One finished two-seed run (its spec given on a pipe), then every way to misuse it.
#[test]
fn a_finished_run_stays_right_under_a_careless_user() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    let spec_text = spec("careless");

    // (4) A spec read from a pipe was read twice: the run finished but stored an empty spec, and
    // `report` failed later.
    let first = run_piped(&spec_text, &out);
    let (stdout, stderr) = text(&first);
    assert!(first.status.success(), "{stderr}");
    assert!(stdout.contains("sweep finished: 2 done"), "{stdout}");
    let reader = freqsweep_coordinator::store::open_read_only(&out.join("freqsweep.db")).unwrap();
    assert_eq!(reader.sweep_value("spec_toml").unwrap().as_deref(), Some(spec_text.as_str()));
    drop(reader);
    let csv = results(&out);
    let report = run_bounded(&mut freqsweep(&["report"], &out), LIMIT);
    let (stdout, stderr) = text(&report);
    assert!(report.status.success() && stdout.contains("sweep finished: 2 done"), "{stdout}{stderr}");
    assert_eq!(results(&out), csv, "the report from the store equals the run's");
    assert!(csv.contains(",mean of 2 seeds,"), "{csv}");

    // (1) The same spec edited in a key that is not part of a point's id: refused in one line
    // naming the key, old and new value, and the way out; nothing stored changes.
    let spec_path = tmp.path().join("s.toml");
    std::fs::write(&spec_path, spec_text.replace("train = 64", "train = 48")).unwrap();
    let again = run_bounded(Command::new(binary("freqsweep")).arg("run").arg(&spec_path).arg("--out").arg(&out), LIMIT);
    let (_, stderr) = text(&again);
    let line = last_line(&stderr);
    assert!(!again.status.success(), "{stderr}");
    assert!(
        line.contains("holds a run of another spec: [dataset] train = 48 (was 64)") && line.contains("use a new --out"),
        "{line}"
    );
    assert_eq!(results(&out), csv);
    // The same spec, reformatted and renamed (no task changes): resumes, nothing to do.
    std::fs::write(&spec_path, spec_text.replace("lr = 0.003", "lr   = 0.003   # the same")).unwrap();
    let same = run_bounded(Command::new(binary("freqsweep")).arg("run").arg(&spec_path).arg("--out").arg(&out), LIMIT);
    let (stdout, stderr) = text(&same);
    assert!(same.status.success() && stdout.contains("sweep finished: 2 done"), "{stdout}{stderr}");

    // (16) `report` while a run holds the directory said "sweep finished: … pending".
    {
        let _held = freqsweep_coordinator::lock::lock_dir(&out).unwrap();
        let report = run_bounded(&mut freqsweep(&["report"], &out), LIMIT);
        let (stdout, stderr) = text(&report);
        assert!(report.status.success(), "{stderr}");
        assert!(stdout.starts_with(&format!("sweep running (pid {} on ", std::process::id())), "{stdout}");
    }

    // (6) Damaged stores: each refused in one line or marked, and never modified by `report`.
    let damaged = |name: &str, damage: &dyn Fn(&Path)| -> (PathBuf, Output) {
        let dir = tmp.path().join(name);
        copy_dir(&out, &dir);
        damage(&dir.join("freqsweep.db"));
        let report = run_bounded(&mut freqsweep(&["report"], &dir), LIMIT);
        (dir, report)
    };
    for (name, statement, expected) in [
        ("no-tasks", "DROP TABLE tasks", "lacks table tasks"),
        ("no-metrics", "DROP TABLE metrics", "lacks table metrics"),
        ("no-column", "ALTER TABLE attempts DROP COLUMN backup", "lacks column attempts.backup"),
    ] {
        let (dir, report) = damaged(name, &|db| sql(db, statement));
        let (_, stderr) = text(&report);
        assert!(!report.status.success(), "{name}: {stderr}");
        assert!(
            last_line(&stderr).starts_with("freqsweep: error: ") && last_line(&stderr).contains(expected),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
        if name == "no-metrics" {
            // The report re-created the table before, and the curves silently disappeared.
            let conn = rusqlite::Connection::open(dir.join("freqsweep.db")).unwrap();
            let tables: i64 = conn
                .query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'metrics'", [], |r| {
                    r.get(0)
                })
                .unwrap();
            assert_eq!(tables, 0, "the report does not re-create what is missing");
        }
    }
    for (name, bytes, expected) in [
        ("empty-file", &b""[..], "holds no freqsweep store"),
        ("not-sqlite", NOT_SQLITE.as_bytes(), "not a readable freqsweep store"),
    ] {
        let (dir, report) = damaged(name, &|db| {
            std::fs::write(db, bytes).unwrap();
            let _ = std::fs::remove_file(db.with_extension("db-wal"));
            let _ = std::fs::remove_file(db.with_extension("db-shm"));
        });
        let (_, stderr) = text(&report);
        assert!(!report.status.success() && last_line(&stderr).contains(expected), "{name}: {stderr}");
        assert_eq!(std::fs::read(dir.join("freqsweep.db")).unwrap(), bytes, "{name}: the store is left as it was");
    }
    // A corrupt result: its point is marked unreadable, and the seed mean says it is of one run.
    let (dir, report) = damaged("corrupt-result", &|db| {
        sql(db, "UPDATE tasks SET result_json = '{\"kind\": \"train\", \"epochs_do' WHERE key LIKE 'train/%seed1'")
    });
    let (stdout, stderr) = text(&report);
    assert!(!report.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("unreadable: train/") && last_line(&stderr).contains("1 stored result(s) cannot be read"),
        "{stderr}"
    );
    let csv = results(&dir);
    let row = csv.lines().find(|l| l.contains("seed1,")).unwrap();
    assert!(row.split(',').nth(1) == Some("unreadable"), "{row}");
    assert!(csv.contains(",mean of 1 of 2 seeds,"), "{csv}");
}

/// (3) `freqsweep report` re-expanded globs and folders from the live file system: a model added
/// to the zoo made it panic, a renamed one relabelled a row, a deleted or relative input made it
/// refuse. It reads the inputs recorded when the run opened now, from any directory.
#[test]
fn the_report_is_made_from_the_store_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let zoo = tmp.path().join("zoo");
    std::fs::create_dir_all(&zoo).unwrap();
    for m in ["a.pt", "b.pt"] {
        std::fs::write(zoo.join(m), format!("model {m}")).unwrap();
    }
    let spec = "name = \"zoo\"\n[[dataset]]\nkind = \"syn\"\nband = 2\ntrain = 64\ntest = 16\n[[model]]\nkind = \"torchscript\"\nglob = \"zoo/*.pt\"\n[heatmap]\neps = 4\nimages = 4\n";
    std::fs::write(tmp.path().join("s.toml"), spec).unwrap();
    // Opened as `serve` opens it, from the spec's directory (a relative glob), then stopped.
    let before = std::env::current_dir().unwrap();
    let out = tmp.path().join("run");
    {
        let opened = Command::new(binary("freqsweep"))
            .current_dir(tmp.path())
            .args(["serve", "s.toml", "--listen", "127.0.0.1:0", "--out", "run"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut served = opened;
        // Wait until it listens (the store is written by then), then stop it.
        let started = std::time::Instant::now();
        while !out.join("freqsweep.db").is_file() || started.elapsed() < Duration::from_millis(500) {
            assert!(started.elapsed() < Duration::from_secs(60), "serve did not open the run");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(500));
        let _ = served.kill();
        let _ = served.wait();
    }
    assert_eq!(std::env::current_dir().unwrap(), before);
    let report = run_bounded(&mut freqsweep(&["report"], &out), LIMIT);
    let (stdout, stderr) = text(&report);
    assert!(report.status.success(), "{stdout}{stderr}");
    assert!(stdout.starts_with("sweep stopped before it finished: "), "{stdout}");
    let csv = results(&out);
    assert!(csv.contains("Syn_2-a,") && csv.contains("Syn_2-b,"), "{csv}");
    // The zoo changes under the finished run: a model added, one renamed.
    std::fs::write(zoo.join("c.pt"), "model c").unwrap();
    std::fs::rename(zoo.join("b.pt"), zoo.join("z.pt")).unwrap();
    let report = run_bounded(&mut freqsweep(&["report"], &out), LIMIT);
    let (stdout, stderr) = text(&report);
    assert!(report.status.success() && !stderr.contains("panicked"), "{stdout}{stderr}");
    assert_eq!(results(&out), csv, "the same rows, labelled with the models that were recorded");
    // Resuming with the changed zoo is refused naming the change (it would mix two zoos).
    let resumed = run_bounded(
        Command::new(binary("freqsweep")).current_dir(tmp.path()).args(["run", "s.toml", "--out", "run"]),
        LIMIT,
    );
    let (_, stderr) = text(&resumed);
    assert!(!resumed.status.success(), "{stderr}");
    assert!(last_line(&stderr).contains("glob \"zoo/*.pt\""), "{stderr}");
}

/// (16) `--out /` (or any non-empty directory that holds no run) was accepted: the run's files
/// would be scattered among the user's.
#[test]
fn a_run_directory_is_new_empty_or_a_run() {
    let tmp = tempfile::tempdir().unwrap();
    let spec_path = tmp.path().join("s.toml");
    std::fs::write(&spec_path, spec("outdir")).unwrap();
    std::fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
    // (`--out /` itself is a unit test of the rule in `run.rs`: a regression here must not
    // scatter a run over the test machine's root.)
    for out in [tmp.path(), spec_path.as_path()] {
        let result =
            run_bounded(Command::new(binary("freqsweep")).arg("run").arg(&spec_path).arg("--out").arg(out), LIMIT);
        let (_, stderr) = text(&result);
        assert!(!result.status.success(), "{}: {stderr}", out.display());
        let line = last_line(&stderr);
        assert!(line.contains("give a new or empty directory as --out"), "{}: {line}", out.display());
    }
}
