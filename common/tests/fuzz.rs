//! Fuzzing the two readers of hostile input in `common` with proptest generators (cargo-fuzz
//! needs a nightly toolchain): sweep specs (`spec::parse`) and `.npy` files (`NpyArray::parse`),
//! from random bytes and from valid inputs with random edits.
//!
//! Each test asserts that nothing panics, that every error is one line naming the file, that
//! whatever is accepted respects the bounds the readers promise, and that the generator is not
//! trivial (some edited inputs are accepted, some refused, and unedited ones are all accepted).
//! The cases the bad-input corpus (`tests/corpus/`) lists as known bugs are recognised, counted
//! and printed, not failed; anything else fails with the smallest input proptest can find.
//!
//! `FREQSWEEP_FUZZ_CASES` sets the cases per test (default [`DEFAULT_CASES`], about a second each in a
//! test build; at least 1000); `PROPTEST_RNG_SEED` fixes the seed:
//! `FREQSWEEP_FUZZ_CASES=200000 cargo test -p freqsweep-common --test fuzz -- --nocapture`.

use freqsweep_common::npy::{DType, NpyArray};
use freqsweep_common::spec::{self, Sweep};
use freqsweep_common::task::{DatasetSource, Optimizer};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

const DEFAULT_CASES: u32 = 40_000;
/// As in the corpus: an error this long echoes its input.
const MAX_ERROR_CHARS: usize = 400;

fn cases() -> u32 {
    // At least 1000: the checks on how many edited inputs are accepted need a sample.
    std::env::var("FREQSWEEP_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_CASES).max(1000)
}

fn runner() -> TestRunner {
    // No regression files: a failure prints its minimal input, which belongs in the corpus.
    TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() })
}

/// What a run saw: cases, accepted, refused, and known bugs by name.
#[derive(Default, Debug)]
struct Tally {
    cases: usize,
    ok: usize,
    err: usize,
    /// Accepted inputs that had at least one edit.
    edited_ok: usize,
    /// Refused inputs that had at least one edit.
    edited_err: usize,
    known: BTreeMap<&'static str, (usize, String)>,
}

impl Tally {
    fn count(&mut self, accepted: bool) {
        if accepted {
            self.ok += 1;
        } else {
            self.err += 1;
        }
    }

    fn known(&mut self, bug: &'static str, example: &str) {
        let entry = self.known.entry(bug).or_insert((0, example.chars().take(200).collect()));
        entry.0 += 1;
    }

    fn print(&self, what: &str) {
        eprintln!(
            "{what}: {} cases ({} accepted, {} refused; edited: {} accepted, {} refused)",
            self.cases, self.ok, self.err, self.edited_ok, self.edited_err
        );
        for (bug, (n, example)) in &self.known {
            eprintln!("  known bug ({n} cases): {bug}; e.g. {example:?}");
        }
    }
}

thread_local! {
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f`, a panic becoming `Err(message)`; the panic hook stays quiet meanwhile (a panic is an
/// outcome this test judges, not noise).
fn catch<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    result.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

/// The shape checks every error must pass: one line without control characters, bounded, naming
/// `file`.
fn one_line(e: &str, file: &str) -> Result<(), String> {
    if e.contains('\n') || e.contains('\r') {
        return Err(format!("error over several lines: {e:?}"));
    }
    if e.chars().any(char::is_control) {
        return Err(format!("a control character in the error: {e:?}"));
    }
    if e.chars().count() >= MAX_ERROR_CHARS {
        return Err(format!(
            "error of {} characters: {:?}",
            e.chars().count(),
            e.chars().take(300).collect::<String>()
        ));
    }
    if !e.starts_with(file) {
        return Err(format!("error does not start with the file {file:?}: {e:?}"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Specs.

/// The valid specs edits start from: the corpus's valid specs and the examples.
fn seed_specs() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut specs = Vec::new();
    for dir in [root.join("tests/corpus/specs/valid"), root.join("examples")] {
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for f in files.into_iter().filter(|p| p.extension().is_some_and(|e| e == "toml")) {
            let text = std::fs::read_to_string(&f).unwrap();
            // zoo.toml reads what examples/make_zoo.sh writes: point it at files that exist.
            let text = text
                .replace("runs/digits", &root.join("tests/fixtures/digits").display().to_string())
                .replace("runs/zoo/*.pt", &root.join("tests/corpus/models/*.pt").display().to_string());
            specs.push(text);
        }
    }
    assert!(specs.len() >= 5, "{} seed specs", specs.len());
    specs
}

/// Pieces an edit inserts: TOML syntax, keys of the schema, and values at or past every bound.
const TOKENS: &[&str] = &[
    "=",
    " = ",
    "[",
    "]",
    "[[",
    "]]",
    "{",
    "}",
    ",",
    "\"",
    "'",
    "\n",
    "#",
    ".",
    "-",
    "+",
    "_",
    "0",
    "1",
    "\\",
    "\"\"\"",
    "'''",
    "\\n",
    "\\u0000",
    "\t",
    "é",
    "\u{feff}",
    "\u{0}",
    " ",
    "true",
    "false",
    "nan",
    "inf",
    "-inf",
    "1e308",
    "-1e308",
    "1e-320",
    "-0.0",
    "9223372036854775807",
    "-9223372036854775808",
    "99999999999999999999",
    "4294967296",
    "65536",
    "65537",
    "5000001",
    "100001",
    "32",
    "33",
    "10001",
    "[]",
    "{}",
    "[1, 1]",
    "[0.5, 0.25]",
    "\"x\"",
    "\"../x\"",
    "\"a/b\"",
    "\"\"",
    "1979-05-27",
    "lr",
    "eps",
    "band",
    "seed",
    "name",
    "kind",
    "arch",
    "classes",
    "epochs",
    "batch_size",
    "optimizer",
    "momentum",
    "nesterov",
    "beta1",
    "layers",
    "chunk_cells",
    "chunks_per_map",
    "images",
    "batch",
    "test_sets",
    "augment_crop",
    "train",
    "test",
    "path",
    "channels",
    "train_images",
    "schedule",
    "gamma",
    "min_lr",
    "step_every",
    "[heatmap]\n",
    "[[dataset]]\n",
    "[[include]]\n",
    "[[exclude]]\n",
    "[eval]\n",
    "[train]\n",
    "[model]\n",
    "\"sgd\"",
    "\"adam\"",
    "\"step\"",
    "\"cosine\"",
    "\"resnet18\"",
    "\"alexnet\"",
    "\"tiny\"",
    "\"syn\"",
    "\"cifar10\"",
    "\"npy\"",
    "\"idx\"",
    "\"B5\"",
    "\"B13\"",
    "\"all_minus_one\"",
    "[\"conv1\", \"fc\"]",
];

/// Values a number in a spec is swapped for.
const EXTREMES: &[&str] = &[
    "0",
    "-1",
    "-0.0",
    "1",
    "2",
    "0.5",
    "1.0",
    "nan",
    "inf",
    "-inf",
    "1e308",
    "-1e308",
    "1e-320",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "65536",
    "65537",
    "5000000",
    "5000001",
    "100000",
    "100001",
    "32",
    "33",
    "10000",
    "10000.5",
    "514",
    "515",
    "\"7\"",
    "[]",
    "[1, 1]",
    "{}",
    "true",
];

#[derive(Clone, Debug)]
enum LineOp {
    Duplicate,
    Delete,
    SwapWithNext,
}

/// One edit of a text; positions are taken modulo its length (snapped to a character boundary).
#[derive(Clone, Debug)]
enum Edit {
    Insert {
        at: u16,
        token: &'static str,
    },
    Replace {
        at: u16,
        len: u8,
        token: &'static str,
    },
    Delete {
        at: u16,
        len: u8,
    },
    /// Swap the `nth` number (modulo their count) for an extreme value.
    Number {
        nth: u8,
        value: &'static str,
    },
    Line {
        nth: u8,
        op: LineOp,
    },
    /// Insert a quoted string of `len` × `x` (a long value or key) at `at`, or put it in place of
    /// the `nth` string (modulo their count) when `nth` is given.
    Long {
        at: u16,
        nth: Option<u8>,
        len: u16,
    },
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    prop_oneof![
        1 => (any::<u16>(), prop::sample::select(TOKENS)).prop_map(|(at, token)| Edit::Insert { at, token }),
        1 => (any::<u16>(), 1..8u8, prop::sample::select(TOKENS)).prop_map(|(at, len, token)| Edit::Replace {
            at,
            len,
            token
        }),
        1 => (any::<u16>(), 1..12u8).prop_map(|(at, len)| Edit::Delete { at, len }),
        3 => (any::<u8>(), prop::sample::select(EXTREMES)).prop_map(|(nth, value)| Edit::Number { nth, value }),
        1 => (any::<u16>(), prop::option::of(any::<u8>()), 300..600u16)
            .prop_map(|(at, nth, len)| Edit::Long { at, nth, len }),
        1 => (any::<u8>(), prop_oneof![Just(LineOp::Duplicate), Just(LineOp::Delete), Just(LineOp::SwapWithNext)])
            .prop_map(|(nth, op)| Edit::Line { nth, op }),
    ]
}

fn boundary(text: &str, at: usize) -> usize {
    let mut at = at % (text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Byte ranges of the number literals in `text` (digits with sign, point, exponent, underscores).
fn number_spans(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = bytes[i].is_ascii_digit()
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_' || bytes[i - 1] == b'"'));
        if starts {
            let start = if i > 0 && bytes[i - 1] == b'-' { i - 1 } else { i };
            let mut j = i;
            while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || b"._-+".contains(&bytes[j])) {
                j += 1;
            }
            spans.push((start, j));
            i = j;
        } else {
            i += 1;
        }
    }
    spans
}

/// Byte ranges of the basic strings (`"…"`, on one line) in `text`, quotes included.
fn string_spans(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut open = None;
    for (i, c) in text.char_indices() {
        match (c, open) {
            ('"', None) => open = Some(i),
            ('"', Some(a)) => {
                spans.push((a, i + 1));
                open = None;
            }
            ('\n', Some(_)) => open = None,
            _ => {}
        }
    }
    spans
}

fn apply(text: &str, edit: &Edit) -> String {
    let mut t = text.to_string();
    match edit {
        Edit::Insert { at, token } => {
            let at = boundary(&t, usize::from(*at));
            t.insert_str(at, token);
        }
        Edit::Replace { at, len, token } => {
            let a = boundary(&t, usize::from(*at));
            let b = boundary(&t, (a + usize::from(*len)).min(t.len()));
            t.replace_range(a..b.max(a), token);
        }
        Edit::Delete { at, len } => {
            let a = boundary(&t, usize::from(*at));
            let b = boundary(&t, (a + usize::from(*len)).min(t.len()));
            t.replace_range(a..b.max(a), "");
        }
        Edit::Number { nth, value } => {
            let spans = number_spans(&t);
            if !spans.is_empty() {
                let (a, b) = spans[usize::from(*nth) % spans.len()];
                t.replace_range(a..b, value);
            }
        }
        Edit::Long { at, nth, len } => {
            let long = format!("\"{}\"", "x".repeat(usize::from(*len)));
            let strings = string_spans(&t);
            match nth {
                Some(n) if !strings.is_empty() => {
                    let (a, b) = strings[usize::from(*n) % strings.len()];
                    t.replace_range(a..b, &long);
                }
                _ => {
                    let at = boundary(&t, usize::from(*at));
                    t.insert_str(at, &long);
                }
            }
        }
        Edit::Line { nth, op } => {
            let mut lines: Vec<&str> = text.lines().collect();
            if !lines.is_empty() {
                let i = usize::from(*nth) % lines.len();
                match op {
                    LineOp::Duplicate => lines.insert(i, lines[i]),
                    LineOp::Delete => {
                        lines.remove(i);
                    }
                    LineOp::SwapWithNext => {
                        let n = lines.len();
                        lines.swap(i, (i + 1) % n);
                    }
                }
                t = lines.join("\n") + "\n";
            }
        }
    }
    t
}

/// A spec error the corpus lists as a known bug, by name.
fn known_spec_bug(e: &str) -> Option<&'static str> {
    if e.contains('\n') && (e.contains("\"\"\"") || e.contains("'''")) {
        return Some(
            "a string value with a newline is echoed as a multi-line TOML string (corpus: lr_multiline_string.toml)",
        );
    }
    // Mostly the `x` of an inserted long string (see `Edit::Long`).
    if e.chars().count() >= MAX_ERROR_CHARS && e.matches('x').count() * 2 > e.len() {
        return Some("a long value or key is echoed in full (corpus: arch_5MB_string, unknown_key_10kB)");
    }
    let digits = e.as_bytes().split(|b| !b.is_ascii_digit()).map(<[u8]>::len).max().unwrap_or(0);
    if e.chars().count() >= MAX_ERROR_CHARS && digits >= 100 {
        return Some(
            "a number is printed in full, hundreds of digits for 1e308 or 1e-320 (corpus: lr_nested_huge.toml)",
        );
    }
    None
}

/// What an accepted spec promises (ARCHITECTURE.md, "Sizes bounded by what they cost").
fn check_sweep(s: &Sweep) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
    if s.name.is_empty() || s.name.len() > 100 || s.name.starts_with('.') || !s.name.chars().all(plain) {
        return Err(format!("accepted name {:?}", s.name));
    }
    if s.points.is_empty() || s.points.len() > spec::MAX_TASKS {
        return Err(format!("{} points", s.points.len()));
    }
    let mut ids = HashSet::new();
    for p in &s.points {
        if !ids.insert(&p.id) {
            return Err(format!("point id {} twice", p.id));
        }
        let t = &p.task.train;
        let rate = |x: f64| (0.0..1.0).contains(&x);
        let optimizer_ok = match t.optimizer {
            Optimizer::Sgd { momentum, weight_decay, nesterov } => {
                rate(momentum) && weight_decay.is_finite() && weight_decay >= 0.0 && (!nesterov || momentum > 0.0)
            }
            Optimizer::Adam { weight_decay, beta1, beta2, eps } => {
                rate(beta1) && rate(beta2) && weight_decay.is_finite() && weight_decay >= 0.0 && eps > 0.0
            }
        };
        // A given model trains nothing: only its evaluation settings are used.
        let trains = p.given.is_none();
        let fits = (!trains || (t.lr.is_finite() && t.lr > 0.0))
            && (1..=spec::MAX_BATCH as usize).contains(&t.batch_size)
            && (!trains || t.epochs >= 1)
            && (1..=spec::MAX_CLASSES as usize).contains(&t.classes)
            && u64::from(t.augment.crop_padding) <= spec::MAX_CROP_PADDING
            && !t.test_sets.is_empty()
            && optimizer_ok;
        let dataset_ok = match &p.task.dataset {
            DatasetSource::Syn(c) => {
                (1..=spec::MAX_SYN_IMAGES as usize).contains(&c.train)
                    && (1..=spec::MAX_SYN_IMAGES as usize).contains(&c.test)
                    && c.special_energy.is_finite()
                    && c.special_energy >= 0.0
            }
            DatasetSource::Cifar10 { path } => !path.as_os_str().is_empty(),
            _ => true,
        };
        if !fits || !dataset_ok {
            return Err(format!("point {} outside the bounds: {:?}", p.id, p.task));
        }
    }
    if let Some(h) = &s.analyses.heatmap {
        let eps_ok = !h.eps.is_empty() && h.eps.iter().all(|e| e.is_finite() && *e > 0.0 && *e <= 1e4);
        if !eps_ok || !(1..=spec::MAX_BATCH as usize).contains(&h.batch) {
            return Err(format!("heatmap outside the bounds: {h:?}"));
        }
    }
    Ok(())
}

/// Parse `text`; `Ok(accepted)` or a failure.
fn judge_spec(text: &str, tally: &mut Tally) -> Result<bool, String> {
    let file = "fuzz.toml";
    match catch(|| spec::parse(text, file)) {
        Err(panic) => Err(format!("panicked: {panic}")),
        Ok(Ok(sweep)) => check_sweep(&sweep).map(|()| true),
        Ok(Err(e)) => {
            let shown = e.to_string();
            if let Some(bug) = known_spec_bug(&shown) {
                tally.known(bug, &shown);
                return Ok(false);
            }
            one_line(&shown, &format!("{file}:"))?;
            // The line is one of the text's (1 for errors about the whole spec).
            if e.line == 0 || e.line > text.lines().count().max(1) + 1 {
                return Err(format!("line {} of a {}-line text: {shown}", e.line, text.lines().count()));
            }
            Ok(false)
        }
    }
}

fn finish(result: Result<(), impl std::fmt::Debug>, tally: &RefCell<Tally>, what: &str) {
    tally.borrow().print(what);
    if let Err(e) = result {
        panic!("{what}: {e:?}");
    }
}

#[test]
fn random_bytes_never_panic_a_spec_parse() {
    let tally = RefCell::new(Tally::default());
    let bytes = prop::collection::vec(any::<u8>(), 0..600).prop_map(|b| String::from_utf8_lossy(&b).into_owned());
    let tokens = prop::collection::vec(prop::sample::select(TOKENS), 0..60).prop_map(|t| t.concat());
    let result = runner().run(&prop_oneof![bytes, tokens], |text| {
        let mut t = tally.borrow_mut();
        t.cases += 1;
        let accepted = judge_spec(&text, &mut t).map_err(TestCaseError::fail)?;
        t.count(accepted);
        Ok(())
    });
    finish(result, &tally, "random spec text");
    assert!(tally.borrow().err > 0, "random text is refused");
}

#[test]
fn edited_valid_specs_never_panic_and_accepted_ones_respect_the_bounds() {
    let seeds = seed_specs();
    for s in &seeds {
        spec::parse(s, "seed.toml").unwrap_or_else(|e| panic!("a seed spec is refused: {e}"));
    }
    let tally = RefCell::new(Tally::default());
    let strategy = (prop::sample::select(seeds), prop::collection::vec(edit_strategy(), 0..6));
    let result = runner().run(&strategy, |(seed, edits)| {
        let text = edits.iter().fold(seed, |t, e| apply(&t, e));
        let mut t = tally.borrow_mut();
        t.cases += 1;
        let accepted = judge_spec(&text, &mut t).map_err(TestCaseError::fail)?;
        if edits.is_empty() && !accepted {
            return Err(TestCaseError::fail("an unedited seed spec is refused"));
        }
        match (accepted, edits.is_empty()) {
            (true, false) => t.edited_ok += 1,
            (false, _) => t.edited_err += 1,
            _ => {}
        }
        t.count(accepted);
        Ok(())
    });
    finish(result, &tally, "edited specs");
    let t = tally.borrow();
    // The edits are neither all harmless nor all fatal: both outcomes are explored.
    assert!(t.edited_ok * 20 > t.cases && t.edited_err * 4 > t.cases, "{t:?}");
}

// ---------------------------------------------------------------------------------------------
// .npy files.

const DTYPES: &[(&str, usize)] = &[
    ("|u1", 1),
    ("|i1", 1),
    ("<u2", 2),
    ("<i2", 2),
    ("<u4", 4),
    ("<i4", 4),
    ("<u8", 8),
    ("<i8", 8),
    ("<f4", 4),
    ("<f8", 8),
    ("|b1", 1),
    ("=f4", 4),
];

/// Pieces a rewritten header is made of, good and bad.
const DESCRS: &[&str] = &[
    "'<f4'",
    "'<f8'",
    "'|u1'",
    "'<i8'",
    "\"<f4\"",
    "'>f4'",
    "'<c8'",
    "'|O'",
    "'<U4'",
    "''",
    "'é4'",
    "'<'",
    "'f4'",
    "'<f16'",
    "[('x', '<f4')]",
    "<f4",
    "'<f4",
    "None",
];
const FORTRANS: &[&str] = &["False", "True", "false", "0", "'False'", "", "False False"];
const SHAPES: &[&str] = &[
    "()",
    "(0,)",
    "(1,)",
    "(2,)",
    "(3,)",
    "(2, 2)",
    "(1, 3, 2, 2)",
    "(4,)",
    "(-1,)",
    "(2,,)",
    "(1,,2)",
    "[2]",
    "(2.0,)",
    "(2L,)",
    "(18446744073709551616,)",
    "(9223372036854775807,)",
    "(0, 9223372036854775808, 9223372036854775808)",
    "(1099511627776, 1099511627776, 1099511627776)",
    "(",
    ")",
    "((2,),)",
    "(2, 'a')",
    "",
    "(0x2,)",
    "( 2 , )",
];
const KEYS: &[&str] =
    &["'descr'", "'fortran_order'", "'shape'", "\"shape\"", "'extra'", "descr", "'a\nb'", "'ключ'", "''"];

/// A valid array as `.npy` bytes and what it holds.
#[derive(Clone, Debug)]
struct ValidNpy {
    bytes: Vec<u8>,
    shape: Vec<usize>,
    /// The header's `descr` and `shape` values, for header rewrites.
    descr: &'static str,
    shape_text: String,
    data_len: usize,
}

/// A valid array's `.npy` bytes: format version 1, 2 or 3, a random dtype and shape, random data.
fn valid_npy() -> impl Strategy<Value = ValidNpy> {
    (1..=3u8, prop::sample::select(DTYPES), prop::collection::vec(0..5usize, 0..4), any::<u64>()).prop_map(
        |(major, (descr, size), shape, fill)| {
            let n: usize = shape.iter().product();
            let data: Vec<u8> = (0..n * size).map(|i| (fill.rotate_left(i as u32 % 64) >> 3) as u8).collect();
            let shape_text = match shape.len() {
                1 => format!("({},)", shape[0]),
                _ => format!("({})", shape.iter().map(usize::to_string).collect::<Vec<_>>().join(", ")),
            };
            let header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_text}, }}");
            ValidNpy { bytes: npy_bytes(major, &header, &data), shape, descr, shape_text, data_len: data.len() }
        },
    )
}

fn npy_bytes(major: u8, header: &str, data: &[u8]) -> Vec<u8> {
    freqsweep_common::npy::file_bytes(major, header, data)
}

/// One edit of `.npy` bytes.
#[derive(Clone, Debug)]
enum ByteEdit {
    Flip {
        at: u16,
        mask: u8,
    },
    Insert {
        at: u16,
        bytes: Vec<u8>,
    },
    Truncate {
        at: u16,
    },
    /// Replace the header: with `entries` built from the tables above when there are three or
    /// more, else with the array's own entries (in another order, with double quotes, or with one
    /// value swapped for `entries[0]`); the data kept, `extra` bytes longer or shorter.
    Header {
        major: u8,
        entries: Vec<(usize, usize)>,
        rotate: u8,
        double_quotes: bool,
        extra: i8,
    },
}

fn byte_edit_strategy() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        3 => (any::<u16>(), 1..=255u8).prop_map(|(at, mask)| ByteEdit::Flip { at, mask }),
        1 => (any::<u16>(), prop::collection::vec(any::<u8>(), 1..8)).prop_map(|(at, bytes)| ByteEdit::Insert { at, bytes }),
        1 => any::<u16>().prop_map(|at| ByteEdit::Truncate { at }),
        3 => (
            prop_oneof![4 => 1..=3u8, 1 => 0..5u8],
            prop::collection::vec((0..KEYS.len(), any::<usize>()), 0..5),
            0..3u8,
            any::<bool>(),
            prop_oneof![4 => Just(0i8), 1 => -9..9i8],
        )
            .prop_map(|(major, entries, rotate, double_quotes, extra)| ByteEdit::Header {
                major,
                entries,
                rotate,
                double_quotes,
                extra
            }),
    ]
}

/// The value text of entry `(key, pick)`: from the table that belongs to the key.
fn header_value(key: &str, pick: usize) -> &'static str {
    let table = if key.contains("descr") {
        DESCRS
    } else if key.contains("fortran") {
        FORTRANS
    } else {
        SHAPES
    };
    table[pick % table.len()]
}

fn apply_bytes(bytes: &[u8], valid: &ValidNpy, edit: &ByteEdit) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let at = |at: u16, len: usize| usize::from(at) % (len + 1);
    match edit {
        ByteEdit::Flip { at: i, mask } => {
            if !b.is_empty() {
                let i = usize::from(*i) % b.len();
                b[i] ^= mask;
            }
        }
        ByteEdit::Insert { at: i, bytes } => {
            let i = at(*i, b.len());
            b.splice(i..i, bytes.iter().copied());
        }
        ByteEdit::Truncate { at: i } => b.truncate(at(*i, b.len())),
        ByteEdit::Header { major, entries, rotate, double_quotes, extra } => {
            let mut parts: Vec<String> =
                entries.iter().map(|&(k, pick)| format!("{}: {}", KEYS[k], header_value(KEYS[k], pick))).collect();
            if entries.len() < 3 {
                let q = if *double_quotes { '"' } else { '\'' };
                parts = vec![
                    format!("{q}descr{q}: {q}{}{q}", valid.descr),
                    format!("{q}fortran_order{q}: False"),
                    format!("{q}shape{q}: {}", valid.shape_text),
                ];
                if let Some(&(k, pick)) = entries.first() {
                    let key = ["'descr'", "'fortran_order'", "'shape'"][k % 3];
                    parts[k % 3] = format!("{key}: {}", header_value(key, pick));
                }
                parts.rotate_left(usize::from(*rotate) % 3);
            }
            let header = format!("{{{}, }}", parts.join(", "));
            let mut data = bytes[bytes.len().saturating_sub(valid.data_len)..].to_vec();
            data.resize((data.len() as i64 + i64::from(*extra)).max(0) as usize, 0x5a);
            b = npy_bytes(*major, &header, &data);
        }
    }
    b
}

/// Parse `bytes`; `Ok(accepted)` or a failure.
fn judge_npy(bytes: &[u8]) -> Result<bool, String> {
    let path = Path::new("fuzz.npy");
    match catch(|| NpyArray::parse(path, bytes)) {
        Err(panic) => Err(format!("panicked: {panic}")),
        Ok(Ok(a)) => {
            // What was accepted is consistent: the data is exactly shape × element size.
            let expected = a.shape.iter().try_fold(a.dtype.size(), |acc, &d| acc.checked_mul(d));
            if expected != Some(a.data.len()) {
                return Err(format!("{:?} {:?} with {} data bytes", a.dtype, a.shape, a.data.len()));
            }
            let elements = catch(|| (a.len(), a.to_f64().len())).map_err(|p| format!("len() panicked: {p}"))?;
            if elements.0 != elements.1 {
                return Err(format!("len() {} but {} elements", elements.0, elements.1));
            }
            if a.dtype.is_integer() != a.to_i64().is_some()
                || matches!(a.dtype, DType::F32 | DType::F64) != a.to_f32().is_some()
            {
                return Err(format!("conversions disagree with dtype {:?}", a.dtype));
            }
            Ok(true)
        }
        Ok(Err(e)) => {
            let shown = e.to_string();
            one_line(&shown, "fuzz.npy: ")?;
            Ok(false)
        }
    }
}

#[test]
fn random_bytes_never_panic_an_npy_parse() {
    let tally = RefCell::new(Tally::default());
    let raw = prop::collection::vec(any::<u8>(), 0..300);
    // Random bytes after a valid magic and version reach the header parser.
    let after_magic = (1..=3u8, prop::collection::vec(any::<u8>(), 0..300)).prop_map(|(major, rest)| {
        let mut b = b"\x93NUMPY".to_vec();
        b.extend_from_slice(&[major, 0]);
        b.extend(rest);
        b
    });
    let result = runner().run(&prop_oneof![raw, after_magic], |bytes| {
        let mut t = tally.borrow_mut();
        t.cases += 1;
        let accepted = judge_npy(&bytes).map_err(TestCaseError::fail)?;
        t.count(accepted);
        Ok(())
    });
    finish(result, &tally, "random .npy bytes");
    assert!(tally.borrow().err > 0, "random bytes are refused");
}

#[test]
fn edited_valid_npy_files_never_panic_and_accepted_ones_are_consistent() {
    let tally = RefCell::new(Tally::default());
    let strategy = (valid_npy(), prop::collection::vec(byte_edit_strategy(), 0..4));
    let result = runner().run(&strategy, |(valid, edits)| {
        let edited = edits.iter().fold(valid.bytes.clone(), |b, e| apply_bytes(&b, &valid, e));
        let mut t = tally.borrow_mut();
        t.cases += 1;
        let accepted = judge_npy(&edited).map_err(TestCaseError::fail)?;
        if edits.is_empty() {
            // Unedited: read back exactly.
            let a =
                NpyArray::parse(Path::new("fuzz.npy"), &valid.bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
            if a.shape != valid.shape || a.data != valid.bytes[valid.bytes.len() - valid.data_len..] {
                return Err(TestCaseError::fail(format!("read back as {:?}, written {:?}", a.shape, valid.shape)));
            }
        } else if accepted {
            t.edited_ok += 1;
        } else {
            t.edited_err += 1;
        }
        t.count(accepted);
        Ok(())
    });
    finish(result, &tally, "edited .npy files");
    let t = tally.borrow();
    assert!(t.edited_ok * 100 > t.cases && t.edited_err * 4 > t.cases, "{t:?}");
}
