//! The container image, built and run on this machine: `deploy/container/build-test.sh` makes a
//! Debian 12 base image with debootstrap (no image registry is reachable here), builds the
//! Dockerfile's runtime stage around the binaries of this build with podman, and runs both
//! binaries in it (`freqsweep --help`, `freqsweep-worker info --device cpu`: libtorch loads inside
//! the image). The base image is kept in `target/tmp/container-test` between runs.
//! Needs root and `apt-get install podman debootstrap runc` (`.ci/run` installs them).

use freqsweep_tests::{binary, run_bounded};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn missing_tools() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if uid.as_deref() != Some("0") {
        return Some("not root (debootstrap and podman build need it)".into());
    }
    let path = std::env::var("PATH").unwrap_or_default();
    let missing: Vec<&str> = ["podman", "debootstrap", "runc"]
        .into_iter()
        .filter(|tool| {
            !path.split(':').chain(["/usr/sbin", "/sbin", "/usr/bin"]).any(|d| Path::new(d).join(tool).is_file())
        })
        .collect();
    (!missing.is_empty())
        .then(|| format!("{} not installed (as root: apt-get install podman debootstrap runc)", missing.join(", ")))
}

#[test]
fn the_runtime_image_builds_here_and_runs_both_binaries() {
    if let Some(why) = missing_tools() {
        return freqsweep_tests::skip(
            "the container test (tests/tests/container.rs)",
            "FREQSWEEP_REQUIRE_CONTAINER",
            &why,
        );
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/container/build-test.sh");
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("container-test");
    let out = run_bounded(
        Command::new("bash")
            .arg(&script)
            .arg(binary("freqsweep"))
            .arg(binary("freqsweep-worker"))
            .env("FREQSWEEP_CONTAINER_WORK", &work)
            .env("PATH", format!("{}:/usr/sbin:/sbin", std::env::var("PATH").unwrap_or_default())),
        Duration::from_secs(900),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "build-test.sh failed ({}):\n{stdout}\n{stderr}", out.status);
    for line in ["build-test: freqsweep --help: ok", "build-test: freqsweep-worker --help (the entry point): ok"] {
        assert!(stdout.contains(line), "{line} missing:\n{stdout}");
    }
    // `info` ran inside the image: the worker started (it cannot without libtorch) and probed it.
    for key in ["\"libtorch_lib\"", "\"device\": \"cpu", "\"cuda_available\": false"] {
        assert!(stdout.contains(key), "{key} missing from freqsweep-worker info inside the image:\n{stdout}");
    }
}
