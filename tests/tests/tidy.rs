//! Invariants of the source that a test can hold (ARCHITECTURE.md "Cross-cutting concerns").

use std::path::{Path, PathBuf};

/// The Rust sources under `dir`, test modules kept in their own files left out (`tests.rs`,
/// anything under a `tests/` folder): like code after `#[cfg(test)]`, they are free.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap_or_default();
        if path.is_dir() {
            if name != "tests" {
                sources(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") && name != "tests.rs" {
            out.push(path);
        }
    }
}

/// Every file the programs read whole goes through `common::files::read_bounded`: `/dev/zero`
/// or a multi-gigabyte file given by mistake as a spec or a TLS file once reached 11.6 GB.
/// Allowed: the kernel's small `/proc` files, reads through `.take(n)`, a read whose line above
/// says `bounded:` and why, and test code (after `#[cfg(test)]`).
#[test]
fn every_whole_file_read_is_bounded() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for krate in ["common/src", "coordinator/src", "worker/src", "proto/src"] {
        sources(&root.join(krate), &mut files);
    }
    assert!(files.len() > 50, "the sources were found: {}", files.len());
    let mut offenders = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let lines: Vec<&str> = code.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            let reads = ["fs::read(", "fs::read_to_string(", ".read_to_end(", ".read_to_string("];
            let allowed = line.contains("\"/proc/")
                || line.contains(".take(")
                || (n > 0 && lines[n - 1].contains("bounded:"))
                || file.ends_with("files.rs");
            if reads.iter().any(|r| line.contains(r)) && !allowed {
                offenders.push(format!("{}:{}: {}", file.strip_prefix(root).unwrap().display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "read without a bound (use freqsweep_common::files::read_bounded):\n{}",
        offenders.join("\n")
    );
}

/// Code without string and char literals and comments, so braces count blocks.
fn code_only(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    if bytes[i] == b'\\' {
                        i += 1;
                    }
                    // Lines are kept, a string's escaped line end (`\` at a line's end) too.
                    if bytes.get(i) == Some(&b'\n') {
                        out.push('\n');
                    }
                    i += 1;
                }
                out.push_str("\"\"");
                i += 1;
            }
            b'\'' if bytes.get(i + 2) == Some(&b'\'') => {
                out.push_str("' '");
                i += 3;
            }
            b'\'' if bytes.get(i + 1) == Some(&b'\\') => {
                // An escaped char literal: '\n', '\'', '\\', '\u{…}'.
                let end = text[i + 2..].find('\'').map_or(bytes.len(), |e| i + 2 + e + 1);
                out.push_str("' '");
                i = end;
            }
            b => {
                out.push(b as char);
                i += 1;
            }
        }
    }
    out
}

/// A `match` over task kinds has no `_ =>` arm: a new kind must make the compiler list every
/// place that decides by kind (ARCHITECTURE.md, `kinds/`). Matches whose arms name
/// `TaskSpec::`, `TaskOutcome::` or `TaskKind::` variants are checked; the message names the
/// file and the line of the catch-all arm. (To pick out one kind, `if let` says so; a `match`
/// decides by kind and names them all.)
#[test]
fn no_catch_all_arm_over_task_kinds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for krate in ["common/src", "coordinator/src", "worker/src"] {
        sources(&root.join(krate), &mut files);
    }
    let offenders = catch_all_arms_over_kinds(&files, root);
    assert!(
        offenders.is_empty(),
        "a `_ =>` arm in a match over task kinds (name every kind):\n{}",
        offenders.join("\n")
    );
    // The check finds what it looks for: a match over kinds with a catch-all arm.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.rs");
    std::fs::write(
        &bad,
        "fn f(t: &TaskSpec) -> u8 {\n    match t {\n        TaskSpec::Train(_) => 1,\n        _ => 0,\n    }\n}\n",
    )
    .unwrap();
    let found = catch_all_arms_over_kinds(&[bad], dir.path());
    assert_eq!(found, ["bad.rs:4: _ => 0,"], "the rule fails when it is broken");
}

fn catch_all_arms_over_kinds(files: &[PathBuf], root: &Path) -> Vec<String> {
    const KINDS: [&str; 3] = ["TaskSpec::", "TaskOutcome::", "TaskKind::"];
    let mut offenders = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let before_tests = text.split("#[cfg(test)]").next().unwrap_or_default();
        let code = code_only(before_tests);
        let lines: Vec<&str> = code.lines().collect();
        let raw: Vec<&str> = before_tests.lines().collect();
        // Depth at the start of each line.
        let mut depth = 0i32;
        let mut at_start = Vec::with_capacity(lines.len());
        for line in &lines {
            at_start.push(depth);
            depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
        }
        for (n, line) in lines.iter().enumerate() {
            if !(line.contains("match ") && line.trim_end().ends_with('{')) {
                continue;
            }
            let arm_depth = at_start[n] + line.matches('{').count() as i32 - line.matches('}').count() as i32;
            let mut arms = Vec::new();
            for (k, l) in lines.iter().enumerate().skip(n + 1) {
                if at_start[k] < arm_depth {
                    break;
                }
                if at_start[k] == arm_depth && !l.trim().is_empty() {
                    arms.push((k, l.trim()));
                }
            }
            let over_kinds = arms.iter().any(|(_, a)| {
                let pattern =
                    a.trim_start_matches(['(', '&', '|', ' ']).trim_start_matches("Some(").trim_start_matches("Ok(");
                KINDS.iter().any(|k| pattern.starts_with(k))
            });
            if !over_kinds {
                continue;
            }
            for (k, arm) in arms {
                if arm.starts_with("_ =>") || arm.starts_with("_ if ") {
                    let shown = raw.get(k).map_or(arm, |r| r.trim());
                    offenders.push(format!("{}:{}: {shown}", file.strip_prefix(root).unwrap().display(), k + 1));
                }
            }
        }
    }
    offenders
}

/// `common`'s science modules compute: they import neither rendering (`figures`, `image`) nor
/// the spec parser (`spec`). Drawing and file writing live in `figures`, limits and number
/// formats where the science needs them (`dataset::MAX_CLASSES`, `text::format_number`). The
/// kinds' vocabulary (`common/src/task/`) holds each kind's spec section, so it uses the parser's
/// toolkit, but it draws nothing either.
#[test]
fn the_science_modules_do_not_import_rendering_or_the_parser() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let science = ["bands", "dataset", "dfm", "heatmap", "metrics", "npy", "seeds", "spectrum", "syn"];
    let mut files: Vec<PathBuf> = science.iter().map(|m| root.join(format!("common/src/{m}.rs"))).collect();
    sources(&root.join("common/src/corruption"), &mut files);
    let offenders = forbidden_imports(&files, root, &["crate::figures", "crate::image", "crate::spec"]);
    assert!(offenders.is_empty(), "a science module imports rendering or the parser:\n{}", offenders.join("\n"));
    let mut kinds = Vec::new();
    sources(&root.join("common/src/task"), &mut kinds);
    assert!(kinds.len() >= 5, "the kinds' files were found: {}", kinds.len());
    let offenders = forbidden_imports(&kinds, root, &["crate::figures", "crate::image"]);
    assert!(offenders.is_empty(), "a kind's common file imports rendering:\n{}", offenders.join("\n"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.rs");
    std::fs::write(&bad, "fn f() {\n    let s = crate::spec::format_number(1.0);\n}\n").unwrap();
    assert_eq!(
        forbidden_imports(&[bad], dir.path(), &["crate::figures", "crate::image", "crate::spec"]),
        ["bad.rs:2: crate::spec"],
        "the rule fails when it is broken"
    );
}

fn forbidden_imports(files: &[PathBuf], root: &Path, modules: &[&str]) -> Vec<String> {
    let mut offenders = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let code = code_only(text.split("#[cfg(test)]").next().unwrap_or_default());
        for (n, line) in code.lines().enumerate() {
            for &module in modules {
                let whole = |text: &str, word: &str| {
                    text.match_indices(word).any(|(i, _)| {
                        let after = text[i + word.len()..].chars().next();
                        let before = text[..i].chars().next_back();
                        !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
                            && !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                    })
                };
                let named = whole(line, module) || (line.contains("use crate::{") && whole(line, &module[7..]));
                if named {
                    offenders.push(format!("{}:{}: {module}", file.strip_prefix(root).unwrap().display(), n + 1));
                }
            }
        }
    }
    offenders
}

/// The rooms decide by kind; nothing else does. Outside the coordinator's kind rooms
/// (`coordinator/src/kinds/`), the worker's engine rooms (`worker/src/engine/`) and the kind
/// types themselves (`common/src/task/`), no code names a kind's variant (`TaskSpec::Dfm`,
/// `TaskOutcome::Bands(…)`, `TaskKind::Train`; `TaskKind::ALL` is fine): a new kind is then
/// learnt in its room and in the exhaustive matches the compiler points to, never by a place
/// that silently ignores it. Test code (after `#[cfg(test)]`) is free.
#[test]
fn kinds_are_decided_only_in_their_rooms() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for krate in ["common/src", "coordinator/src", "worker/src"] {
        sources(&root.join(krate), &mut files);
    }
    let rooms = ["coordinator/src/kinds/", "worker/src/engine/", "common/src/task/"];
    files.retain(|f| !rooms.iter().any(|r| f.strip_prefix(root).unwrap().to_string_lossy().starts_with(r)));
    assert!(files.len() > 40, "the sources were found: {}", files.len());
    let offenders = kind_variants_named(&files, root, &["TaskSpec", "TaskOutcome", "TaskKind"]);
    assert!(
        offenders.is_empty(),
        "a kind decided outside its room (move the decision into kinds/<kind>.rs behind an exhaustive match in kinds/mod.rs):\n{}",
        offenders.join("\n")
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.rs");
    std::fs::write(
        &bad,
        "fn f(t: &TaskSpec) -> bool {\n    let all = TaskKind::ALL;\n    matches!(t, TaskSpec::Train(_))\n}\n",
    )
    .unwrap();
    assert_eq!(
        kind_variants_named(&[bad], dir.path(), &["TaskSpec", "TaskOutcome", "TaskKind"]),
        ["bad.rs:3: TaskSpec::Train"],
        "the rule fails when it is broken"
    );
}

/// The driver, the gRPC shell, the scheduler and the store are the same for every kind, and so
/// are the surfaces that show a run (the dashboard's `live` and `http`, `status`'s `snapshot`,
/// the report page's `html`, the TensorBoard follower) and run opening (`run`): their code names no kind (no variant, no
/// room module `kinds::<kind>`, no kind's task, outcome or spec type). They reach a kind only
/// through `kinds::` functions that dispatch.
#[test]
fn the_driver_grpc_scheduler_and_store_name_no_kind() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    for part in
        ["driver", "grpc", "scheduler", "store", "live", "snapshot", "http", "run", "report/html", "tensorboard/mod"]
    {
        let dir = root.join("coordinator/src").join(part);
        if dir.is_dir() {
            sources(&dir, &mut files);
        }
        let file = root.join(format!("coordinator/src/{part}.rs"));
        if file.is_file() {
            files.push(file);
        }
    }
    assert!(files.len() >= 10, "the files were found: {files:?}");
    let offenders = kind_names(&files, root);
    assert!(offenders.is_empty(), "a kind named in a kind-free part:\n{}", offenders.join("\n"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.rs");
    std::fs::write(&bad, "fn f() {\n    let k = kinds::heatmap::kept_epochs(&tasks);\n    let t: DfmTask;\n}\n")
        .unwrap();
    assert_eq!(
        kind_names(&[bad], dir.path()),
        ["bad.rs:2: kinds::heatmap", "bad.rs:3: DfmTask"],
        "the rule fails when it is broken"
    );
}

/// `Type::Variant` names (an upper-case letter after `::`) of the given enums in code before
/// `#[cfg(test)]`, comments and strings left out; `ALL` is not a variant.
fn kind_variants_named(files: &[PathBuf], root: &Path, enums: &[&str]) -> Vec<String> {
    let mut offenders = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let code = code_only(text.split("#[cfg(test)]").next().unwrap_or_default());
        for (n, line) in code.lines().enumerate() {
            for e in enums {
                let prefix = format!("{e}::");
                for (i, _) in line.match_indices(&prefix) {
                    let before = line[..i].chars().next_back();
                    if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                        continue;
                    }
                    let rest = &line[i + prefix.len()..];
                    let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                    let variant = name.chars().next().is_some_and(|c| c.is_uppercase()) && name != "ALL";
                    if variant {
                        offenders.push(format!(
                            "{}:{}: {prefix}{name}",
                            file.strip_prefix(root).unwrap().display(),
                            n + 1
                        ));
                    }
                }
            }
        }
    }
    offenders
}

/// Kind names in code before `#[cfg(test)]`: variants of the kind enums, the rooms
/// (`kinds::train`, …) and the kinds' own types (`HeatmapTask`, `BandsOutcome`, `DfmSpec`, …).
fn kind_names(files: &[PathBuf], root: &Path) -> Vec<String> {
    const KINDS: [&str; 5] = ["train", "heatmap", "dfm", "shortcut", "bands"];
    let mut offenders = kind_variants_named(files, root, &["TaskSpec", "TaskOutcome", "TaskKind"]);
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let code = code_only(text.split("#[cfg(test)]").next().unwrap_or_default());
        for (n, line) in code.lines().enumerate() {
            let at = |what: String| format!("{}:{}: {what}", file.strip_prefix(root).unwrap().display(), n + 1);
            for kind in KINDS {
                let room = format!("kinds::{kind}");
                if line.match_indices(&room).any(|(i, _)| {
                    !line[i + room.len()..].chars().next().is_some_and(|c| c.is_alphanumeric() || c == '_')
                }) {
                    offenders.push(at(room));
                }
                let mut upper = kind.to_string();
                upper[..1].make_ascii_uppercase();
                for suffix in ["Task", "Outcome", "Spec"] {
                    let ty = format!("{upper}{suffix}");
                    let whole = line.match_indices(&ty).any(|(i, _)| {
                        let after = line[i + ty.len()..].chars().next();
                        let before = line[..i].chars().next_back();
                        !after.is_some_and(|c| c.is_alphanumeric() || c == '_')
                            && !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
                    });
                    if whole {
                        offenders.push(at(ty));
                    }
                }
            }
        }
    }
    offenders.sort_by_key(|o| {
        let mut parts = o.splitn(3, ':');
        (parts.next().unwrap_or_default().to_string(), parts.next().and_then(|n| n.parse::<usize>().ok()))
    });
    offenders
}

/// Files that still break the file rule of `no_file_over_900_lines_and_no_function_over_120`
/// (the function rule holds for them too). This list may only shrink: an entry is dropped the
/// day its file is split, and the test fails while a listed file is gone or within the rule.
/// (Empty since `driver.rs` became `driver/`.)
const KNOWN_OVER: &[&str] = &[];

/// Most lines a source file may have before its test module (issue 24).
const MAX_FILE_LINES: usize = 900;
/// Most lines a function may have, from its `fn` line to its closing brace (issue 24).
const MAX_FN_LINES: usize = 120;

/// Size rules (issue 24): no source file has more than 900 lines before its test module (its
/// first line that starts with `#[cfg(test)]`), and no function (free, method or nested, at any
/// indentation, before the test module) has more than 120 lines from its `fn` line to its
/// closing brace. Braces are counted in code without strings and comments; a `fn` without a
/// body (a trait method's signature) is no function here. The sources of common, coordinator,
/// worker, proto and xtask are held, and the benches of common, coordinator and worker.
#[test]
fn no_file_over_900_lines_and_no_function_over_120() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    let dirs = ["common/src", "coordinator/src", "worker/src", "proto/src", "xtask/src"];
    let benches = ["common/benches", "coordinator/benches", "worker/benches"];
    for dir in dirs.iter().chain(&benches) {
        sources(&root.join(dir), &mut files);
    }
    assert!(files.len() > 60, "the sources were found: {}", files.len());
    let (long_files, long_fns) = over_size(&files, root);
    let known = |o: &String| KNOWN_OVER.iter().any(|k| o.starts_with(&format!("{k}:")));
    let offenders: Vec<&String> = long_files.iter().filter(|o| !known(o)).chain(&long_fns).collect();
    assert!(
        offenders.is_empty(),
        "over the size rules (split the file into a folder of modules, the function into named steps):\n{}",
        offenders.iter().map(|o| o.as_str()).collect::<Vec<_>>().join("\n")
    );
    for known in KNOWN_OVER {
        assert!(root.join(known).is_file(), "{known} is gone: drop it from KNOWN_OVER (the list may only shrink)");
        assert!(
            long_files.iter().any(|o| o.starts_with(&format!("{known}:"))),
            "{known} is within {MAX_FILE_LINES} lines now: drop it from KNOWN_OVER (the list may only shrink)"
        );
    }
    // The check finds what it looks for: a long function (braces in its strings and comments
    // must not end it early, a string's escaped line end must not shorten it), a trait method's
    // signature that is no function, and a long file whose test module does not count.
    let dir = tempfile::tempdir().unwrap();
    let long_fn = dir.path().join("long_fn.rs");
    let mut text = String::from("trait T {\n    fn declared(&self) -> u8;\n}\n\nimpl S {\n    pub fn long(&self) {\n");
    text.push_str("        let s = \"}\\\n            {\"; // }\n        if true {\n");
    text.push_str(&"            step();\n".repeat(MAX_FN_LINES - 5));
    text.push_str("        }\n    }\n\n    fn short() {}\n}\n");
    std::fs::write(&long_fn, text).unwrap();
    let long_file = dir.path().join("long_file.rs");
    let mut text = "const A: u8 = 1;\n".repeat(MAX_FILE_LINES + 1);
    text.push_str("#[cfg(test)]\nmod tests {\n");
    text.push_str(&"    // a test module as long as it likes\n".repeat(MAX_FILE_LINES));
    text.push_str("}\n");
    std::fs::write(&long_file, text).unwrap();
    let fitting = dir.path().join("fitting.rs");
    let mut text = "const A: u8 = 1;\n".repeat(MAX_FILE_LINES - MAX_FN_LINES);
    text.push_str("fn fits() {\n");
    text.push_str(&"    step();\n".repeat(MAX_FN_LINES - 2));
    text.push_str("}\n#[cfg(test)]\nmod tests {\n    fn long() {\n");
    text.push_str(&"        step();\n".repeat(MAX_FN_LINES));
    text.push_str("    }\n}\n");
    std::fs::write(&fitting, text).unwrap();
    let (long_files, long_fns) = over_size(&[long_fn, long_file, fitting], dir.path());
    assert_eq!(long_files, ["long_file.rs: 901 lines before its tests (most 900)"], "the file rule fails when broken");
    assert_eq!(long_fns, ["long_fn.rs:6: fn long, 121 lines (most 120)"], "the function rule fails when broken");
}

/// The files over `MAX_FILE_LINES` and the functions over `MAX_FN_LINES`, one line each.
fn over_size(files: &[PathBuf], root: &Path) -> (Vec<String>, Vec<String>) {
    let (mut long_files, mut long_fns) = (Vec::new(), Vec::new());
    for file in files {
        let name = file.strip_prefix(root).unwrap().display().to_string();
        let text = std::fs::read_to_string(file).unwrap();
        let lines: Vec<&str> = text.lines().take_while(|l| !l.starts_with("#[cfg(test)]")).collect();
        if lines.len() > MAX_FILE_LINES {
            long_files.push(format!("{name}: {} lines before its tests (most {MAX_FILE_LINES})", lines.len()));
        }
        let code = code_only(&lines.join("\n"));
        for (line, end, fn_name) in functions(&code) {
            let length = end - line + 1;
            if length > MAX_FN_LINES {
                long_fns.push(format!("{name}:{}: fn {fn_name}, {length} lines (most {MAX_FN_LINES})", line + 1));
            }
        }
    }
    (long_files, long_fns)
}

/// Each function with a body in `code` (strings and comments left out): the 0-based lines of
/// its `fn` and of its closing brace, and its name.
fn functions(code: &str) -> Vec<(usize, usize, String)> {
    let bytes = code.as_bytes();
    let line_at = |i: usize| bytes[..i].iter().filter(|&&b| b == b'\n').count();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut found = Vec::new();
    for (at, _) in code.match_indices("fn ") {
        if at > 0 && word(bytes[at - 1]) {
            continue;
        }
        let name: String =
            code[at + 3..].trim_start().chars().take_while(|&c| c.is_alphanumeric() || c == '_').collect();
        if name.is_empty() {
            continue; // a `fn (…)` pointer type
        }
        // The body opens at the first `{` outside parentheses and brackets; a `;` first means
        // no body.
        let (mut nesting, mut open) = (0i32, None);
        for (i, &b) in bytes.iter().enumerate().skip(at) {
            match b {
                b'(' | b'[' => nesting += 1,
                b')' | b']' => nesting -= 1,
                b';' if nesting == 0 => break,
                b'{' if nesting == 0 => {
                    open = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let Some(open) = open else { continue };
        let mut depth = 0i32;
        for (i, &b) in bytes.iter().enumerate().skip(open) {
            depth += i32::from(b == b'{') - i32::from(b == b'}');
            if depth == 0 {
                found.push((line_at(at), line_at(i), name));
                break;
            }
        }
    }
    found
}

/// Parsing is pure: the spec parser (`common/src/spec/`) does no I/O of its own. What a spec
/// needs of the file system (npy and IDX headers, image folders, globs) it asks the caller's
/// `spec::Probe`: the file system when a run opens (`files::FileSystem`), the recorded answers
/// when a stored spec is parsed again.
#[test]
fn the_spec_parser_does_no_io() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = Vec::new();
    sources(&root.join("common/src/spec"), &mut files);
    // Each kind's spec section is parsed in its file there.
    sources(&root.join("common/src/task"), &mut files);
    assert!(files.len() >= 13, "the parser's modules were found: {files:?}");
    let offenders = io_calls(&files, root);
    assert!(offenders.is_empty(), "the spec parser does I/O (ask the Probe instead):\n{}", offenders.join("\n"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.rs");
    std::fs::write(&bad, "fn f(p: &Path) {\n    let n = crate::dataset::npy_image_size(p);\n}\n").unwrap();
    assert_eq!(io_calls(&[bad], dir.path()), ["bad.rs:2: dataset::npy_image_size"], "the rule fails when it is broken");
}

fn io_calls(files: &[PathBuf], root: &Path) -> Vec<String> {
    const IO: [&str; 11] = [
        "std::fs",
        "fs::",
        "File::",
        "OpenOptions",
        "read_dir",
        "dataset::npy_image_size",
        "dataset::idx_image_size",
        "idx::read",
        "dataset::folder_classes",
        "files::expand_glob",
        "files::read",
    ];
    let mut offenders = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).unwrap();
        let code = code_only(text.split("#[cfg(test)]").next().unwrap_or_default());
        for (n, line) in code.lines().enumerate() {
            if let Some(call) = IO.iter().find(|c| line.contains(*c)) {
                offenders.push(format!("{}:{}: {call}", file.strip_prefix(root).unwrap().display(), n + 1));
            }
        }
    }
    offenders
}

/// A kind is its rooms. For every kind `TaskKind::as_str` names, the coordinator's room
/// (`coordinator/src/kinds/<kind>.rs`) and the worker's (`worker/src/engine/<kind>.rs`) exist, and
/// every file in the rooms' folders (those and `common/src/task/`) is declared in its `mod.rs`: a
/// file that is not is silently never compiled. With the compiler's exhaustive matches, this
/// points to every file a new kind touches (ARCHITECTURE.md, "Adding an analysis").
#[test]
fn every_kind_has_its_rooms_and_every_room_is_compiled() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let task = std::fs::read_to_string(root.join("common/src/task/mod.rs")).unwrap();
    let kinds = kinds_of_task_kind(&task);
    assert!(kinds.len() >= 5 && kinds.contains(&"train".to_string()), "the kinds were read: {kinds:?}");
    let offenders = missing_rooms(root, &kinds);
    assert!(offenders.is_empty(), "a kind lacks a room, or a room is not compiled:\n{}", offenders.join("\n"));
    let dir = tempfile::tempdir().unwrap();
    for folder in ["common/src/task", "coordinator/src/kinds", "worker/src/engine"] {
        std::fs::create_dir_all(dir.path().join(folder)).unwrap();
        std::fs::write(dir.path().join(folder).join("mod.rs"), "mod train;\n").unwrap();
        std::fs::write(dir.path().join(folder).join("train.rs"), "").unwrap();
    }
    std::fs::write(dir.path().join("worker/src/engine/blur.rs"), "").unwrap();
    assert_eq!(
        missing_rooms(dir.path(), &["train".into(), "robustness".into()]),
        [
            "coordinator/src/kinds/robustness.rs: kind robustness has no room here",
            "worker/src/engine/robustness.rs: kind robustness has no room here",
            "worker/src/engine/blur.rs: not declared in its mod.rs (`mod blur;`)",
        ],
        "the rule fails when it is broken"
    );
}

/// The kinds' names, from the arms of `TaskKind::as_str` (`TaskKind::Train => "train",`).
fn kinds_of_task_kind(task_mod: &str) -> Vec<String> {
    let body = task_mod.split("impl TaskKind {").nth(1).unwrap_or_default();
    let body = body.split("pub fn as_str(self)").nth(1).unwrap_or_default();
    let body = body.split("\n    }").next().unwrap_or_default();
    body.lines()
        .filter_map(|l| l.trim().strip_prefix("TaskKind::")?.split("=> \"").nth(1)?.strip_suffix("\","))
        .map(str::to_string)
        .collect()
}

fn missing_rooms(root: &Path, kinds: &[String]) -> Vec<String> {
    let mut offenders = Vec::new();
    for room in ["coordinator/src/kinds", "worker/src/engine"] {
        for kind in kinds {
            if !root.join(room).join(format!("{kind}.rs")).exists() {
                offenders.push(format!("{room}/{kind}.rs: kind {kind} has no room here"));
            }
        }
    }
    for folder in ["common/src/task", "coordinator/src/kinds", "worker/src/engine"] {
        let declared = std::fs::read_to_string(root.join(folder).join("mod.rs")).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(root.join(folder))
            .unwrap()
            .filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(str::to_string))
            .filter(|n| n != "mod" && n != "tests")
            .collect();
        names.sort();
        for name in names {
            if !declared.lines().any(|l| l.trim().trim_start_matches("pub ").starts_with(&format!("mod {name};"))) {
                offenders.push(format!("{folder}/{name}.rs: not declared in its mod.rs (`mod {name};`)"));
            }
        }
    }
    offenders
}

/// A room names only its own kind: `coordinator/src/kinds/<kind>.rs` and
/// `worker/src/engine/<kind>.rs` name no other kind's variant (`TaskSpec::Dfm` in the heatmap
/// room), so a new kind never has to extend another kind's room: its files are its own, the
/// kinds' list (`common/src/task/mod.rs`) and the two dispatch files the compiler points to.
#[test]
fn a_room_names_only_its_own_kind() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut offenders = Vec::new();
    for room in ["coordinator/src/kinds", "worker/src/engine"] {
        for entry in std::fs::read_dir(root.join(room)).unwrap() {
            let path = entry.unwrap().path();
            let kind = path.file_stem().unwrap().to_string_lossy().to_string();
            if kind == "mod" || path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            offenders.extend(other_kinds_named(&path, root, &kind));
        }
    }
    assert!(offenders.is_empty(), "a room names another kind:\n{}", offenders.join("\n"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("heatmap.rs");
    std::fs::write(&bad, "fn f(t: &TaskSpec) -> bool {\n    matches!(t, TaskSpec::Heatmap(_) | TaskSpec::Dfm(_))\n}\n")
        .unwrap();
    assert_eq!(
        other_kinds_named(&bad, dir.path(), "heatmap"),
        ["heatmap.rs:2: TaskSpec::Dfm"],
        "the rule fails when it is broken"
    );
}

fn other_kinds_named(file: &Path, root: &Path, kind: &str) -> Vec<String> {
    let own: String = kind.split('_').map(|w| w[..1].to_uppercase() + &w[1..]).collect();
    kind_variants_named(&[file.to_path_buf()], root, &["TaskSpec", "TaskOutcome", "TaskKind"])
        .into_iter()
        .filter(|o| !o.ends_with(&format!("::{own}")))
        .collect()
}
