//! Invariants of the source that a test can hold (ARCHITECTURE.md "Cross-cutting concerns").

use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
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
