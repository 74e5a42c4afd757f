//! Records the git revision the `freqsweep` binary is built from, for reports (`report.html`
//! names the revision that created a run and the one that rendered it).
use std::process::Command;

fn main() {
    let revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=FREQSWEEP_GIT_REVISION={revision}");
    // A new commit moves HEAD's ref; rebuild then so the recorded revision stays true.
    if let Some(git_dir) = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    {
        // Only paths that exist: a missing one would make cargo rerun this script on every build.
        for path in ["HEAD", "refs/heads", "packed-refs"].map(|p| format!("{git_dir}/{p}")) {
            if std::path::Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
}
