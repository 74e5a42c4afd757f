//! The bad-input corpus in `tests/corpus/` (see its README): every spec and `.npy` case there is
//! refused with one line that names the cause, and the valid ones are read, so the test can tell
//! good input from bad.
//!
//! - `specs/*.toml`: a header comment `# expect: <substring>` (and `# known-bug: <what>` for a case
//!   the library gets wrong today); the spec parser ignores comments. Most substrings start with
//!   `:<line>: `, the line the error must name. Cases too large to commit (a 5 MB string, a
//!   10^9-point grid) are [`GENERATED_SPECS`] below.
//! - `specs/valid/*.toml`: specs that must parse.
//! - `npy/expected.txt`: `<case>\t<expected substring>[\t# known-bug: <what>]`, where a case is a
//!   file read with `NpyArray::read`, or `images:<file>`, `labels:<file>` or `pair:<images>,<labels>`
//!   read with the dataset readers. The files are written by [`npy_cases`]; run
//!   `FREQSWEEP_CORPUS_WRITE=1 cargo test -p freqsweep-common --test corpus` to rewrite them after
//!   changing it (a test checks that the committed files are what it writes).
//!
//! An error passes when it is one line, shorter than [`MAX_ERROR_CHARS`], names the file and
//! contains the expected substring. A `known-bug` case is run and its outcome printed, not
//! asserted; once the bug is fixed the case passes its checks and the test fails until the marker
//! is removed, so a fixed bug becomes a regression case. File cases run on a thread of their own
//! (a panic is an outcome), generated ones in a child process that is killed at its time limit
//! (a hang or an abort is an outcome, and costs nothing after it). `FREQSWEEP_CORPUS_SHOW=1`
//! prints every outcome.

use freqsweep_common::dataset;
use freqsweep_common::npy::NpyArray;
use freqsweep_common::spec;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// An error this long is not "one line naming the cause" (it echoes the input).
const MAX_ERROR_CHARS: usize = 400;
/// Time a case may take unless it says otherwise (every case takes well under a second but the
/// million-point grid, about 2 s in a test build).
const CASE_TIMEOUT: Duration = Duration::from_secs(30);

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus")
}

/// What a case must give.
#[derive(Debug, Default)]
struct Expect {
    /// In the error (or, for a valid case, in the summary of what was read).
    substring: String,
    /// The case must be accepted.
    valid: bool,
    known_bug: Option<String>,
}

/// What a case gave.
#[derive(Debug)]
enum Outcome {
    Ok(String),
    Err(String),
    Panic(String),
    /// Killed at its time limit (or, on a thread, no answer by then).
    Hang(Duration),
    /// The child process died (an abort, a stack overflow).
    Crash(String),
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string panic)".into())
}

/// Threads whose panics are outcomes, not test failures: the panic hook stays quiet for them.
const CASE_THREAD: &str = "corpus-case";

fn quiet_case_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().name() != Some(CASE_THREAD) {
                previous(info);
            }
        }));
    });
}

/// Run `f` on a thread of its own; a panic or a hang is an outcome, not the end of the test.
fn on_thread(f: impl FnOnce() -> Result<String, String> + Send + 'static) -> Outcome {
    quiet_case_panics();
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name(CASE_THREAD.into())
        .spawn(move || {
            let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
        })
        .unwrap();
    match rx.recv_timeout(CASE_TIMEOUT) {
        Ok(Ok(Ok(ok))) => Outcome::Ok(ok),
        Ok(Ok(Err(e))) => Outcome::Err(e),
        Ok(Err(panic)) => Outcome::Panic(panic_text(&*panic)),
        Err(_) => Outcome::Hang(CASE_TIMEOUT),
    }
}

/// Why `outcome` does not meet `expect` (`None`: it does); `file` is what the error must name.
fn check(outcome: &Outcome, expect: &Expect, file: &str) -> Option<String> {
    let e = match outcome {
        Outcome::Ok(what) if expect.valid && what.contains(&expect.substring) => return None,
        Outcome::Ok(what) => return Some(format!("accepted ({what})")),
        Outcome::Err(e) if expect.valid => return Some(format!("refused: {}", shorten(e))),
        Outcome::Panic(p) => return Some(format!("panicked: {}", shorten(p))),
        Outcome::Hang(limit) => return Some(format!("no answer within {limit:?}")),
        Outcome::Crash(why) => return Some(format!("crashed: {why}")),
        Outcome::Err(e) => e,
    };
    let mut problems = Vec::new();
    if e.contains('\n') || e.contains('\r') {
        problems.push(format!("{} lines", e.lines().count()));
    }
    if e.chars().count() >= MAX_ERROR_CHARS {
        problems.push(format!("{} characters long", e.chars().count()));
    }
    if expect.substring.is_empty() || !e.contains(&expect.substring) {
        problems.push(format!("does not contain {:?}", expect.substring));
    }
    if !e.contains(file) {
        problems.push(format!("does not name the file {file:?}"));
    }
    if problems.is_empty() {
        None
    } else {
        Some(format!("{}: {}", problems.join(", "), shorten(e)))
    }
}

/// `s` on one line and cut for a report (errors that echo megabytes stay readable).
fn shorten(s: &str) -> String {
    let one: String = s.escape_debug().collect();
    if one.chars().count() > 300 {
        format!("{}… ({} chars)", one.chars().take(300).collect::<String>(), s.chars().count())
    } else {
        one
    }
}

/// Checks every case, prints the known bugs, and fails on a case that does not meet its
/// expectation (or a known-bug case that now does).
#[derive(Default)]
struct Report {
    passed: usize,
    known: Vec<String>,
    failures: Vec<String>,
}

impl Report {
    fn case(&mut self, name: &str, outcome: &Outcome, expect: &Expect, file: &str) {
        let problem = check(outcome, expect, file);
        if std::env::var_os("FREQSWEEP_CORPUS_SHOW").is_some() {
            let shown = match outcome {
                Outcome::Err(e) => shorten(e),
                other => shorten(&format!("{other:?}")),
            };
            eprintln!("{name}\t{shown}");
        }
        match (&expect.known_bug, problem) {
            (None, None) => self.passed += 1,
            (None, Some(p)) => self.failures.push(format!("{name}: {p}")),
            (Some(bug), Some(p)) => self.known.push(format!("{name}: {bug} [{p}]")),
            (Some(bug), None) => self
                .failures
                .push(format!("{name}: marked `known-bug: {bug}` but now meets its expectation: remove the marker")),
        }
    }

    fn finish(self, what: &str, at_least: usize) {
        let total = self.passed + self.known.len() + self.failures.len();
        eprintln!("{what}: {total} cases, {} as expected, {} known bugs", self.passed, self.known.len());
        for k in &self.known {
            eprintln!("  known bug: {k}");
        }
        assert!(total >= at_least, "{what}: only {total} cases found");
        assert!(
            self.failures.is_empty(),
            "{what}: {} failing cases:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Specs.

/// The `# expect:` and `# known-bug:` lines of a spec's leading comments.
fn spec_header(text: &str) -> Expect {
    let mut expect = Expect::default();
    for line in text.lines().take_while(|l| l.starts_with('#')) {
        let line = line.trim_start_matches('#').trim();
        if let Some(s) = line.strip_prefix("expect:") {
            expect.substring = s.trim().to_string();
        } else if let Some(b) = line.strip_prefix("known-bug:") {
            expect.known_bug = Some(b.trim().to_string());
        }
    }
    expect
}

fn parse_spec(text: &str, file: &str) -> Result<String, String> {
    spec::parse(text, file).map(|s| format!("{} points", s.points.len())).map_err(|e| e.to_string())
}

fn spec_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_bad_spec_is_refused_with_one_line_naming_the_cause() {
    let mut report = Report::default();
    for path in spec_files(&corpus().join("specs")) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(&path).unwrap();
        let expect = spec_header(&String::from_utf8_lossy(&bytes));
        assert!(!expect.substring.is_empty(), "{}: no `# expect:` line", path.display());
        // As `freqsweep` reads a spec: `parse` on its text, `load` when it is not UTF-8 (which
        // `parse` cannot be given).
        let (outcome, file) = match String::from_utf8(bytes) {
            Ok(text) => {
                let file = name.clone();
                (on_thread(move || parse_spec(&text, &file)), name.clone())
            }
            Err(_) => {
                let owned = path.clone();
                let load = move || {
                    freqsweep_common::files::load_spec(&owned)
                        .map(|s| format!("{} points", s.points.len()))
                        .map_err(|e| e.to_string())
                };
                (on_thread(load), path.display().to_string())
            }
        };
        report.case(&name, &outcome, &expect, &file);
    }
    report.finish("spec corpus", 100);
}

/// The valid part of the minimal spec every generated case builds on.
const BASE: &str =
    "[[dataset]]\nkind = \"syn\"\nband = 1\n[model]\narch = \"tiny\"\n[train]\nlr = 0.1\nbatch_size = 8\nepochs = 1\n";

/// `n` values of `f` as a TOML list's body.
fn numbers(n: usize, f: impl Fn(usize) -> String) -> String {
    (0..n).map(f).collect::<Vec<_>>().join(", ")
}

/// `n` distinct learning rates.
fn lrs(n: usize) -> String {
    format!("lr = [{}]", numbers(n, |i| format!("{}e-6", i + 1)))
}

/// A spec case too large to commit.
struct Generated {
    name: &'static str,
    text: fn() -> String,
    /// In the error; with `valid`, in the summary (`N points`).
    expect: &'static str,
    valid: bool,
    /// Time the case may take (default [`CASE_TIMEOUT`]).
    limit: Option<Duration>,
    known_bug: Option<&'static str>,
}

const fn refused(name: &'static str, text: fn() -> String, expect: &'static str) -> Generated {
    Generated { name, text, expect, valid: false, limit: None, known_bug: None }
}

/// Spec cases built at test time (sizes that would bloat the repository).
const GENERATED_SPECS: &[Generated] = &[
    refused("empty", String::new, ":1: missing field `model`"),
    refused("nul_bytes", || "\0\0\0\n".into(), ":1: invalid key"),
    Generated {
        ..refused(
            "name_10kB",
            || format!("name = \"{}\"\n{BASE}", "a".repeat(10_000)),
            ":1: name must be 1 to 100 letters",
        )
    },
    Generated {
        ..refused(
            "arch_5MB_string",
            || BASE.replace("arch = \"tiny\"", &format!("arch = \"{}\"", "x".repeat(5 << 20))),
            ":5: unknown arch",
        )
    },
    Generated {
        ..refused("unknown_key_10kB", || format!("{BASE}{} = 1\n", "k".repeat(10_000)), ":10: unknown field `k")
    },
    refused(
        "deeply_nested_list",
        || BASE.replace("lr = 0.1", &format!("lr = {}0.1{}", "[".repeat(100_000), "]".repeat(100_000))),
        ":7: lr: recursion limit exceeded",
    ),
    refused(
        "deeply_nested_inline_tables",
        || BASE.replace("lr = 0.1", &format!("lr = {}0.1{}", "{a = ".repeat(100_000), "}".repeat(100_000))),
        ":7: lr: recursion limit exceeded",
    ),
    refused(
        "grid_of_1e9_points",
        || {
            BASE.replace("lr = 0.1", &lrs(100))
                .replace("batch_size = 8", &format!("batch_size = [{}]", numbers(100, |i| (i + 1).to_string())))
                .replace(
                    "epochs = 1",
                    &format!(
                        "epochs = [{}]\nseed = [{}]",
                        numbers(100, |i| (i + 1).to_string()),
                        numbers(1000, |i| i.to_string())
                    ),
                )
        },
        ":1: the grid has over 10000000 points",
    ),
    Generated {
        limit: Some(Duration::from_secs(1)),
        ..refused(
            "three_million_points_with_heatmaps_are_refused_before_expanding",
            || {
                BASE.replace("lr = 0.1", &lrs(1000))
                    .replace("epochs = 1", &format!("epochs = 1\nseed = [{}]", numbers(3000, |i| i.to_string())))
                    + "[heatmap]\neps = 4\n"
            },
            ":1: the grid has 3000000 points; each plans at least one task",
        )
    },
    Generated {
        limit: Some(Duration::from_secs(1)),
        ..refused(
            "grid_of_2_1M_points_is_refused_before_expanding",
            || {
                BASE.replace("lr = 0.1", &lrs(2100))
                    .replace("epochs = 1", &format!("epochs = 1\nseed = [{}]", numbers(1000, |i| i.to_string())))
            },
            ":1: the grid has 2100000 points",
        )
    },
    Generated {
        ..refused(
            "exclude_names_a_value_among_3000",
            || BASE.replace("lr = 0.1", &lrs(3000)) + "[[exclude]]\nlr = 7\n",
            ":11: exclude: lr = 7 is not among the spec's values",
        )
    },
    Generated {
        name: "million_point_grid",
        text: || {
            BASE.replace("lr = 0.1", &lrs(1000))
                .replace("epochs = 1", &format!("epochs = 1\nseed = [{}]", numbers(1000, |i| i.to_string())))
        },
        expect: "1000000 points",
        valid: true,
        limit: None,
        known_bug: None,
    },
    Generated {
        name: "seed_list_of_100k",
        text: || BASE.replace("epochs = 1", &format!("epochs = 1\nseed = [{}]", numbers(100_000, |i| i.to_string()))),
        expect: "100000 points",
        valid: true,
        limit: Some(Duration::from_secs(3)),
        known_bug: None,
    },
];

/// Set in the child process that runs one generated case.
const CHILD_CASE: &str = "FREQSWEEP_CORPUS_CASE";
const CHILD_OUT: &str = "FREQSWEEP_CORPUS_OUT";

/// Run generated case `case` in a child process (this test binary, this test), killed at its
/// time limit.
fn in_child(case: &Generated, test: &str, out: &Path) -> Outcome {
    let limit = case.limit.unwrap_or(CASE_TIMEOUT);
    let _ = std::fs::remove_file(out);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_CASE, case.name)
        .env(CHILD_OUT, out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Outcome::Hang(limit);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    match std::fs::read_to_string(out) {
        Ok(text) => match text.split_once('\n') {
            Some(("ok", what)) => Outcome::Ok(what.into()),
            Some(("err", e)) => Outcome::Err(e.into()),
            Some(("panic", p)) => Outcome::Panic(p.into()),
            _ => Outcome::Crash(format!("unreadable outcome {text:?}")),
        },
        Err(_) => Outcome::Crash(format!("{status} without an outcome")),
    }
}

/// In the child: run the case `CHILD_CASE` names and write its outcome to `CHILD_OUT`.
fn run_child_case(name: &str) {
    let case = GENERATED_SPECS.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no case {name}"));
    let text = (case.text)();
    quiet_case_panics();
    let outcome = std::thread::Builder::new()
        .name(CASE_THREAD.into())
        .spawn(move || std::panic::catch_unwind(|| parse_spec(&text, &format!("{}.toml", case.name))))
        .unwrap()
        .join()
        .unwrap();
    let written = match outcome {
        Ok(Ok(what)) => format!("ok\n{what}"),
        Ok(Err(e)) => format!("err\n{e}"),
        Err(panic) => format!("panic\n{}", panic_text(&*panic)),
    };
    std::fs::write(std::env::var_os(CHILD_OUT).expect("FREQSWEEP_CORPUS_OUT"), written).unwrap();
}

#[test]
fn every_generated_spec_case_gives_its_outcome() {
    if let Ok(name) = std::env::var(CHILD_CASE) {
        return run_child_case(&name);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut report = Report::default();
    for case in GENERATED_SPECS {
        let started = Instant::now();
        let outcome = in_child(case, "every_generated_spec_case_gives_its_outcome", &dir.path().join("outcome"));
        if std::env::var_os("FREQSWEEP_CORPUS_SHOW").is_some() {
            eprintln!("{}: {:?}", case.name, started.elapsed());
        }
        let expect =
            Expect { substring: case.expect.into(), valid: case.valid, known_bug: case.known_bug.map(String::from) };
        report.case(case.name, &outcome, &expect, &format!("{}.toml", case.name));
    }
    report.finish("generated spec corpus", 10);
}

#[test]
fn the_valid_specs_parse() {
    let files = spec_files(&corpus().join("specs/valid"));
    assert!(files.len() >= 3, "{} valid specs", files.len());
    for path in files {
        let sweep =
            freqsweep_common::files::load_spec(&path).unwrap_or_else(|e| panic!("a valid spec is refused: {e}"));
        assert!(!sweep.points.is_empty(), "{}", path.display());
    }
}

/// The test can tell good from bad: a valid spec parses, and is refused once one value is broken.
#[test]
fn breaking_one_value_of_a_valid_spec_is_caught() {
    let text = std::fs::read_to_string(corpus().join("specs/valid/minimal.toml")).unwrap();
    spec::parse(&text, "minimal.toml").unwrap();
    for (from, to, expect) in [
        ("lr = 0.1", "lr = -0.1", "lr must be a positive number"),
        ("band = 1", "band = 5", "band must be 1-4"),
        ("arch = \"tiny\"", "arch = \"tiny2\"", "unknown arch \"tiny2\""),
    ] {
        assert!(text.contains(from), "{from}");
        let err = spec::parse(&text.replace(from, to), "minimal.toml").unwrap_err().to_string();
        assert!(err.contains(expect), "{err}");
    }
}

// ---------------------------------------------------------------------------------------------
// .npy files.

fn npy(major: u8, header: &str, data: &[u8]) -> Vec<u8> {
    freqsweep_common::npy::file_bytes(major, header, data)
}

fn header(descr: &str, shape: &str) -> String {
    format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}")
}

fn f32s(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn i64s(values: &[i64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Every `.npy` file of the corpus: name → bytes.
fn npy_cases() -> Vec<(&'static str, Vec<u8>)> {
    let good = npy(1, &header("<f4", "(2,)"), &f32s(&[0.25, 0.5]));
    let images = f32s(&[0.5; 2 * 3 * 2 * 2]);
    let mut cases: Vec<(&'static str, Vec<u8>)> = vec![
        ("valid_f4.npy", good.clone()),
        ("empty.npy", Vec::new()),
        ("wrong_magic.npy", b"PK\x03\x04 this is a zip file".to_vec()),
        ("magic_only.npy", b"\x93NUMPY\x01".to_vec()),
        ("truncated_header.npy", good[..40].to_vec()),
        ("header_length_beyond_file.npy", {
            let mut b = good.clone();
            b[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
            b
        }),
        ("v2_header_length_cut_off.npy", b"\x93NUMPY\x02\x00\x10\x00".to_vec()),
        ("v2_header_length_4GB.npy", {
            let mut b = npy(2, &header("<f4", "(2,)"), &f32s(&[0.25, 0.5]));
            b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
            b
        }),
        ("version_0.npy", {
            let mut b = good.clone();
            b[6] = 0;
            b
        }),
        ("version_9.npy", {
            let mut b = good.clone();
            b[6] = 9;
            b
        }),
        (
            "duplicate_shape.npy",
            npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'shape': (1,), }", &f32s(&[0.0, 1.0])),
        ),
        (
            "duplicate_descr.npy",
            npy(1, "{'descr': '<f4', 'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", &f32s(&[0.0, 1.0])),
        ),
        (
            "fortran_order_true.npy",
            npy(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2,), }", &f32s(&[0.0, 1.0])),
        ),
        (
            "fortran_order_maybe.npy",
            npy(1, "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }", &f32s(&[0.0, 1.0])),
        ),
        ("dtype_complex.npy", npy(1, &header("<c8", "(1,)"), &[0; 8])),
        ("dtype_big_endian.npy", npy(1, &header(">f4", "(2,)"), &f32s(&[0.0, 1.0]))),
        ("dtype_object.npy", npy(1, &header("|O", "(1,)"), &[0; 8])),
        ("dtype_unicode.npy", npy(1, &header("<U4", "(1,)"), &[0; 16])),
        ("dtype_empty.npy", npy(1, &header("", "(2,)"), &f32s(&[0.0, 1.0]))),
        ("dtype_non_ascii.npy", npy(1, &header("é4", "(2,)"), &f32s(&[0.0, 1.0]))),
        (
            "dtype_structured.npy",
            npy(1, "{'descr': [('x', '<f4')], 'fortran_order': False, 'shape': (2,), }", &f32s(&[0.0, 1.0])),
        ),
        ("missing_descr.npy", npy(1, "{'fortran_order': False, 'shape': (2,), }", &f32s(&[0.0, 1.0]))),
        ("missing_fortran_order.npy", npy(1, "{'descr': '<f4', 'shape': (2,), }", &f32s(&[0.0, 1.0]))),
        ("missing_shape.npy", npy(1, "{'descr': '<f4', 'fortran_order': False, }", &f32s(&[0.0, 1.0]))),
        ("shape_negative.npy", npy(1, &header("<f4", "(-1, 2)"), &f32s(&[0.0, 1.0]))),
        ("shape_list.npy", npy(1, &header("<f4", "[2]"), &f32s(&[0.0, 1.0]))),
        ("shape_float.npy", npy(1, &header("<f4", "(2.0,)"), &f32s(&[0.0, 1.0]))),
        ("shape_overflows.npy", npy(1, &header("<f4", "(1099511627776, 1099511627776, 1099511627776)"), &[])),
        ("shape_zero_times_overflow.npy", npy(1, &header("<f4", "(0, 9223372036854775808, 9223372036854775808)"), &[])),
        ("shape_double_comma.npy", npy(1, &header("<f4", "(1,,2)"), &f32s(&[0.0, 1.0]))),
        ("shape_beyond_data.npy", npy(1, &header("<f4", "(1000,)"), &f32s(&[0.0, 1.0]))),
        ("data_beyond_shape.npy", npy(1, &header("<f4", "(1,)"), &f32s(&[0.0, 1.0]))),
        ("header_not_a_dict.npy", npy(1, "['<f4', False, (2,)]", &f32s(&[0.0, 1.0]))),
        (
            "header_trailing_junk.npy",
            npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } junk", &f32s(&[0.0, 1.0])),
        ),
        (
            "header_unclosed_tuple.npy",
            npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,, }", &f32s(&[0.0, 1.0])),
        ),
        (
            "header_unknown_key.npy",
            npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra': 1, }", &f32s(&[0.0, 1.0])),
        ),
        (
            "header_entry_without_colon.npy",
            npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'extra', }", &f32s(&[0.0, 1.0])),
        ),
        (
            "header_non_ascii_key.npy",
            npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'ключ': 1, }", &f32s(&[0.0, 1.0])),
        ),
        (
            "header_key_with_newline.npy",
            npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'a\nb': 1, }", &f32s(&[0.0, 1.0])),
        ),
        (
            "header_unquoted_key_with_newline.npy",
            npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), a\nb: 1, }", &f32s(&[0.0, 1.0])),
        ),
        ("header_long_descr.npy", npy(1, &header(&"x".repeat(1_000), "(2,)"), &f32s(&[0.0, 1.0]))),
        ("shape_long_garbage.npy", npy(1, &header("<f4", &format!("({}2,)", "x".repeat(1_000))), &f32s(&[0.0, 1.0]))),
        ("header_not_utf8.npy", {
            let mut b = good.clone();
            let at = b.iter().position(|&c| c == b'<').unwrap();
            b[at] = 0xff;
            b
        }),
        ("v3_valid.npy", npy(3, &header("<f4", "(2,)"), &f32s(&[0.25, 0.5]))),
        ("header_over_10000.npy", npy(2, &format!("{}{}", header("<f4", "(1,)"), " ".repeat(10_000)), &f32s(&[0.5]))),
        (
            "header_key_with_escape.npy",
            npy(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), '\x1b[2J': 1, }", &f32s(&[0.0, 1.0])),
        ),
        ("shape_65_dims.npy", npy(1, &header("<f4", &format!("({})", vec!["1"; 65].join(", "))), &f32s(&[0.5]))),
        // Dataset readers.
        ("images_ok.npy", npy(1, &header("<f4", "(2, 3, 2, 2)"), &images)),
        ("labels_ok.npy", npy(1, &header("<i8", "(2,)"), &i64s(&[0, 3]))),
        ("labels_three.npy", npy(1, &header("<i8", "(3,)"), &i64s(&[0, 1, 2]))),
        ("images_nan.npy", {
            let mut v = vec![0.5f32; 24];
            v[5] = f32::NAN;
            npy(1, &header("<f4", "(2, 3, 2, 2)"), &f32s(&v))
        }),
        ("images_inf.npy", {
            let mut v = vec![0.5f32; 24];
            v[0] = f32::INFINITY;
            npy(1, &header("<f4", "(2, 3, 2, 2)"), &f32s(&v))
        }),
        ("images_255.npy", npy(1, &header("<f4", "(2, 3, 2, 2)"), &f32s(&[255.0; 24]))),
        ("images_2d.npy", npy(1, &header("<f4", "(2, 12)"), &images)),
        ("images_int32.npy", npy(1, &header("<i4", "(2, 3, 2, 2)"), &[0; 96])),
        ("images_u8_nchw.npy", npy(1, &header("|u1", "(1, 3, 32, 32)"), &[0; 3072])),
        ("labels_float.npy", npy(1, &header("<f4", "(2,)"), &f32s(&[0.0, 1.0]))),
        ("labels_negative.npy", npy(1, &header("<i8", "(2,)"), &i64s(&[0, -1]))),
        ("labels_too_many_classes.npy", npy(1, &header("<i8", "(2,)"), &i64s(&[0, 100_000]))),
        ("labels_u64_max.npy", npy(1, &header("<u8", "(2,)"), &i64s(&[0, -1]))),
        ("images_empty_huge_hw.npy", npy(1, &header("<f4", "(0, 3, 4611686018427387904, 4611686018427387904)"), &[])),
        ("labels_empty.npy", npy(1, &header("<i8", "(0,)"), &[])),
        ("labels_2d.npy", npy(1, &header("<i8", "(2, 1)"), &i64s(&[0, 1]))),
    ];
    cases.sort_by_key(|(name, _)| *name);
    cases
}

/// One `expected.txt` case: read `case`, the error or a summary of what was read.
fn run_npy_case(dir: &Path, case: &str) -> Outcome {
    let at = |f: &str| dir.join(f);
    let (kind, files) = case.split_once(':').unwrap_or(("read", case));
    let files: Vec<PathBuf> = files.split(',').map(at).collect();
    let kind = kind.to_string();
    on_thread(move || match kind.as_str() {
        "read" => NpyArray::read(&files[0])
            .map(|a| {
                // What a caller does with an array it was given.
                format!("{:?} {:?}, {} elements, {} bytes", a.dtype, a.shape, a.len(), a.data.len())
            })
            .map_err(|e| e.to_string()),
        "images" => dataset::read_images_npy(&files[0])
            .map(|(dims, x)| format!("dims {dims:?}, {} floats", x.len()))
            .map_err(|e| e.to_string()),
        "labels" => {
            dataset::read_labels_npy(&files[0]).map(|y| format!("{} labels", y.len())).map_err(|e| e.to_string())
        }
        "pair" => dataset::read_npy_pair(&files[0], &files[1])
            .map(|d| format!("{} images of {} floats", d.len(), d.image_len()))
            .map_err(|e| e.to_string()),
        other => panic!("unknown case kind {other:?}"),
    })
}

#[test]
fn the_npy_corpus_files_are_what_the_generator_writes() {
    let dir = corpus().join("npy");
    let write = std::env::var_os("FREQSWEEP_CORPUS_WRITE").is_some();
    let mut stale = Vec::new();
    for (name, bytes) in npy_cases() {
        let path = dir.join(name);
        if write {
            std::fs::write(&path, &bytes).unwrap();
        } else if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            stale.push(name);
        }
    }
    assert!(stale.is_empty(), "not as npy_cases() writes them (FREQSWEEP_CORPUS_WRITE=1 rewrites): {stale:?}");
    let known: Vec<&str> = npy_cases().iter().map(|(n, _)| *n).collect();
    let strays: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".npy") && !known.contains(&n.as_str()))
        .collect();
    assert!(strays.is_empty(), "files npy_cases() does not write (delete them): {strays:?}");
}

#[test]
fn every_bad_npy_is_refused_with_one_line_naming_the_cause() {
    let dir = corpus().join("npy");
    let table = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
    let mut report = Report::default();
    let mut used = std::collections::BTreeSet::new();
    for line in table.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let mut columns = line.split('\t');
        let case = columns.next().unwrap();
        let substring = columns.next().unwrap_or_else(|| panic!("{case}: no expected substring")).to_string();
        let known_bug = columns.next().map(|c| c.trim_start_matches("# known-bug:").trim().to_string());
        let files: Vec<&str> = case.split_once(':').map_or(case, |(_, f)| f).split(',').collect();
        for f in &files {
            assert!(dir.join(f).is_file(), "{case}: no file {f}");
            used.insert(f.to_string());
        }
        let outcome = run_npy_case(&dir, case);
        // The error names the file that is wrong: in a pair, the one that is not `*_ok.npy` (the
        // labels, for a count mismatch).
        let named = if files[0].ends_with("_ok.npy") { files[files.len() - 1] } else { files[0] };
        let named = dir.join(named).display().to_string();
        report.case(case, &outcome, &Expect { substring, valid: false, known_bug }, &named);
    }
    report.finish("npy corpus", 15);
    let unused: Vec<_> = npy_cases().into_iter().map(|(n, _)| n).filter(|n| !used.contains(*n)).collect();
    assert!(unused.iter().all(|n| n.contains("valid") || n.ends_with("_ok.npy")), "files no case reads: {unused:?}");
}

/// The readers accept the valid files, so the refusals above are about what is wrong in each.
#[test]
fn the_valid_npy_files_read() {
    let dir = corpus().join("npy");
    for f in ["valid_f4.npy", "v3_valid.npy"] {
        let a = NpyArray::read(&dir.join(f)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((a.shape.as_slice(), a.to_f32().unwrap()), (&[2][..], vec![0.25, 0.5]), "{f}");
    }
    let d = dataset::read_npy_pair(&dir.join("images_ok.npy"), &dir.join("labels_ok.npy")).unwrap();
    assert_eq!((d.dims, d.labels), ([2, 3, 2, 2], vec![0, 3]));
}
