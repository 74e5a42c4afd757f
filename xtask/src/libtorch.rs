//! libtorch bootstrap: fetch the pinned `torch==2.11.0` wheel (plus the two CUDA runtime wheels whose
//! `.so` files `libtorch_cpu.so` needs at load time) with the ordinary `pip download` client, unpack
//! only what linking and running need into a cache outside the checkout, and verify it.
//!
//! Why a wheel and not a libtorch zip: the package registry is the one source every machine of this
//! project reaches, and `tch 0.24` pairs with PyTorch 2.11.0, whose wheel carries a complete libtorch
//! (`torch/lib`, `torch/include`, `torch/share`).
//!
//! The cache is complete when its marker file exists and every file the marker lists has the recorded
//! size; `cargo xtask libtorch --verify` re-hashes every file against the marker.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const TORCH_VERSION: &str = "2.11.0";
const MARKER: &str = ".freqsweep-complete";

/// One wheel pinned by name, version and checksum, so the bytes do not depend on the local Python.
struct PinnedWheel {
    requirement: &'static str,
    file_name: &'static str,
    sha256: &'static str,
    /// pip only matches the exact platform tags it is given; the CUDA wheels use older tags.
    platforms: &'static [&'static str],
    /// (path prefix inside the wheel, destination directory relative to the cache root)
    extract: &'static [(&'static str, &'static str)],
    /// Also extracted for the CUDA variant (`cargo xtask build --cuda`).
    extract_cuda: &'static [(&'static str, &'static str)],
}

const WHEELS: &[PinnedWheel] = &[
    PinnedWheel {
        requirement: "torch==2.11.0",
        file_name: "torch-2.11.0-cp311-cp311-manylinux_2_28_x86_64.whl",
        sha256: "7aa2f9bbc6d4595ba72138026b2074be1233186150e9292865e04b7a63b8c67a",
        platforms: &["manylinux_2_28_x86_64"],
        extract: &[
            ("torch/lib/libtorch_cpu.so", "lib"),
            ("torch/lib/libtorch.so", "lib"),
            ("torch/lib/libc10.so", "lib"),
            ("torch/lib/libgomp", "lib"),
            ("torch/lib/libshm.so", "lib"),
            ("torch/lib/libtorch_global_deps.so", "lib"),
            ("torch/include/", "include"),
            ("torch/share/", "share"),
        ],
        // The wheel is PyTorch's CUDA 13 build: its CUDA half links the CUDA worker. The CUDA
        // libraries those need (cuBLAS, cuDNN, NCCL, …) come with the GPU node's PyTorch at run
        // time, so the link does not need them (worker/build.rs).
        extract_cuda: &[("torch/lib/libtorch_cuda.so", "lib"), ("torch/lib/libc10_cuda.so", "lib")],
    },
    PinnedWheel {
        requirement: "nvidia-cuda-runtime==13.0.96",
        file_name: "nvidia_cuda_runtime-13.0.96-py3-none-manylinux2014_x86_64.manylinux_2_17_x86_64.whl",
        sha256: "7f82250d7782aa23b6cfe765ecc7db554bd3c2870c43f3d1821f1d18aebf0548",
        platforms: &["manylinux_2_17_x86_64", "manylinux2014_x86_64"],
        extract: &[("nvidia/cu13/lib/libcudart.so.13", "lib")],
        extract_cuda: &[],
    },
    PinnedWheel {
        requirement: "nvidia-cuda-cupti==13.0.85",
        file_name: "nvidia_cuda_cupti-13.0.85-py3-none-manylinux_2_25_x86_64.whl",
        sha256: "4eb01c08e859bf924d222250d2e8f8b8ff6d3db4721288cf35d14252a4d933c8",
        platforms: &["manylinux_2_25_x86_64"],
        extract: &[("nvidia/cu13/lib/libcupti.so.13", "lib")],
        extract_cuda: &[],
    },
];

/// Where libtorch comes from for this build.
pub enum Source {
    /// The user's `LIBTORCH` (a site install or a CUDA libtorch): always wins, never touched.
    UserDir(PathBuf),
    /// `LIBTORCH_USE_PYTORCH=1`: torch-sys asks the active Python's torch for its paths.
    Python,
    /// Our cache, fetched on demand.
    Cache(PathBuf),
}

impl Source {
    /// Environment variables to set on the `cargo` child that builds the workspace.
    pub fn cargo_env(&self) -> Vec<(&'static str, String)> {
        match self {
            Source::UserDir(p) | Source::Cache(p) => vec![("LIBTORCH", p.display().to_string())],
            Source::Python => vec![],
        }
    }
}

pub fn cache_root() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("FREQSWEEP_CACHE") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(dir).join("freqsweep"));
    }
    let home =
        std::env::var_os("HOME").context("neither FREQSWEEP_CACHE nor HOME is set: cannot place the libtorch cache")?;
    Ok(PathBuf::from(home).join(".cache").join("freqsweep"))
}

/// Resolve the libtorch to build against, fetching it into the cache if needed.
pub fn ensure() -> Result<Source> {
    if let Some(dir) = std::env::var_os("LIBTORCH") {
        let dir = PathBuf::from(dir);
        if !dir.join("lib").is_dir() || !dir.join("include").is_dir() {
            bail!("LIBTORCH={} has no lib/ and include/: point it at a libtorch directory", dir.display());
        }
        return Ok(Source::UserDir(dir));
    }
    if std::env::var("LIBTORCH_USE_PYTORCH").is_ok_and(|v| !v.is_empty() && v != "0") {
        return Ok(Source::Python);
    }
    let dir = cache_root()?.join(format!("libtorch-{TORCH_VERSION}"));
    if is_complete(&dir) {
        return Ok(Source::Cache(dir));
    }
    fetch_into(&dir, Variant::Cpu)?;
    Ok(Source::Cache(dir))
}

/// Which half of the wheel a cache holds.
#[derive(Clone, Copy, PartialEq)]
pub enum Variant {
    Cpu,
    /// Also `libtorch_cuda.so` and `libc10_cuda.so`: links a worker that runs on CUDA.
    Cuda,
}

/// The libtorch a CUDA worker links: the user's (`LIBTORCH` with `lib/libtorch_cuda.so`, or
/// `LIBTORCH_USE_PYTORCH=1` with a CUDA PyTorch), else our CUDA cache, fetched on demand.
pub fn ensure_cuda() -> Result<Source> {
    if let Some(dir) = std::env::var_os("LIBTORCH") {
        let dir = PathBuf::from(dir);
        if !dir.join("lib/libtorch_cuda.so").is_file() {
            bail!("LIBTORCH={} has no lib/libtorch_cuda.so: --cuda needs a CUDA libtorch", dir.display());
        }
        return ensure();
    }
    if std::env::var("LIBTORCH_USE_PYTORCH").is_ok_and(|v| !v.is_empty() && v != "0") {
        return Ok(Source::Python);
    }
    let dir = cache_root()?.join(format!("libtorch-{TORCH_VERSION}-cuda"));
    if !is_complete(&dir) {
        fetch_into(&dir, Variant::Cuda)?;
    }
    Ok(Source::Cache(dir))
}

/// One marker line: `<sha256> <size> <path relative to the cache dir>`.
struct MarkerEntry<'a> {
    sha256: &'a str,
    size: u64,
    rel: &'a str,
}

fn parse_marker(manifest: &str) -> Option<Vec<MarkerEntry<'_>>> {
    manifest
        .lines()
        .map(|line| {
            let mut parts = line.splitn(3, ' ');
            let (sha256, size, rel) = (parts.next()?, parts.next()?.parse().ok()?, parts.next()?);
            Some(MarkerEntry { sha256, size, rel })
        })
        .collect()
}

fn is_complete(dir: &Path) -> bool {
    let Ok(manifest) = fs::read_to_string(dir.join(MARKER)) else { return false };
    let Some(entries) = parse_marker(&manifest) else { return false };
    !entries.is_empty() && entries.iter().all(|e| fs::metadata(dir.join(e.rel)).is_ok_and(|m| m.len() == e.size))
}

/// Re-hash every file against the marker; returns how many files were checked.
pub fn verify(dir: &Path) -> Result<usize> {
    let manifest = fs::read_to_string(dir.join(MARKER))
        .with_context(|| format!("{}: no {MARKER} marker, the cache is incomplete", dir.display()))?;
    let entries = parse_marker(&manifest).with_context(|| format!("{}: malformed {MARKER} marker", dir.display()))?;
    for entry in &entries {
        let actual = sha256_file(&dir.join(entry.rel))?;
        if actual != entry.sha256 {
            bail!("{}: {} has sha256 {actual}, expected {}", dir.display(), entry.rel, entry.sha256);
        }
    }
    Ok(entries.len())
}

fn pip_command() -> Result<Vec<String>> {
    for candidate in [["python3", "-m", "pip"].as_slice(), &["pip3"], &["pip"]] {
        let ok = Command::new(candidate[0])
            .args(&candidate[1..])
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Ok(candidate.iter().map(|s| s.to_string()).collect());
        }
    }
    bail!(
        "neither `python3 -m pip` nor `pip3` works: install them (Debian: `apt-get install python3-pip`) \
         or set LIBTORCH to an existing libtorch {TORCH_VERSION}"
    )
}

fn fetch_into(dir: &Path, variant: Variant) -> Result<()> {
    let root = dir.parent().context("cache dir has no parent")?;
    let downloads = root.join("downloads");
    fs::create_dir_all(&downloads).with_context(|| format!("creating {}", downloads.display()))?;
    let pip = pip_command()?;
    for wheel in WHEELS {
        let path = downloads.join(wheel.file_name);
        if path.exists() && sha256_file(&path)? == wheel.sha256 {
            continue;
        }
        eprintln!("xtask: downloading {} (pip download --no-deps)", wheel.requirement);
        let mut cmd = Command::new(&pip[0]);
        cmd.args(&pip[1..]).args(["download", "--no-deps", "--only-binary=:all:", "--python-version", "3.11"]);
        cmd.args(["--implementation", "cp", "--disable-pip-version-check", "-d"]).arg(&downloads);
        for platform in wheel.platforms {
            cmd.args(["--platform", platform]);
        }
        cmd.arg(wheel.requirement);
        let status = cmd.status().with_context(|| format!("running {pip:?} download"))?;
        if !status.success() {
            bail!("`pip download {}` failed ({status}); is the package registry reachable?", wheel.requirement);
        }
        let actual = sha256_file(&path).with_context(|| format!("pip did not produce {}", path.display()))?;
        if actual != wheel.sha256 {
            bail!("{}: sha256 {actual} does not match the pinned {}", path.display(), wheel.sha256);
        }
    }

    // Unpack into a staging directory and rename it into place, so an interrupted run never leaves a
    // half-filled cache that looks complete.
    let staging = root.join(format!("{}.partial", dir.file_name().context("cache dir has no name")?.to_string_lossy()));
    if staging.exists() {
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir_all(&staging)?;
    let mut manifest = String::new();
    for wheel in WHEELS {
        let path = downloads.join(wheel.file_name);
        eprintln!("xtask: unpacking {}", wheel.file_name);
        unpack(&path, wheel, variant, &staging, &mut manifest)?;
    }
    let mut required =
        vec!["lib/libtorch_cpu.so", "lib/libtorch.so", "lib/libc10.so", "lib/libcudart.so.13", "lib/libcupti.so.13"];
    if variant == Variant::Cuda {
        required.extend(["lib/libtorch_cuda.so", "lib/libc10_cuda.so"]);
    }
    for required in required {
        if !staging.join(required).exists() {
            bail!("the pinned wheels did not contain {required}");
        }
    }
    // torch-sys checks this file against the version it was generated for.
    fs::write(staging.join("build-version"), format!("{TORCH_VERSION}\n"))?;
    fs::write(staging.join(MARKER), manifest)?;
    if dir.exists() {
        fs::remove_dir_all(dir)?;
    }
    fs::rename(&staging, dir)?;
    fs::remove_dir_all(&downloads).ok();
    eprintln!("xtask: libtorch {TORCH_VERSION} ready in {}", dir.display());
    Ok(())
}

fn unpack(wheel_path: &Path, wheel: &PinnedWheel, variant: Variant, dest: &Path, manifest: &mut String) -> Result<()> {
    let file = fs::File::open(wheel_path).with_context(|| format!("opening {}", wheel_path.display()))?;
    let mut archive =
        zip::ZipArchive::new(file).with_context(|| format!("{} is not a zip archive", wheel_path.display()))?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i)?;
        if entry.is_dir() {
            continue;
        }
        let name = entry.name().to_string();
        let cuda = if variant == Variant::Cuda { wheel.extract_cuda } else { &[] };
        let Some((prefix, target)) = wheel.extract.iter().chain(cuda).find(|(p, _)| name.starts_with(p)) else {
            continue;
        };
        // Keep the path below the matched directory prefix; single files land by their file name.
        let rel_inside = if prefix.ends_with('/') {
            name[prefix.len()..].to_string()
        } else {
            Path::new(&name).file_name().context("entry without file name")?.to_string_lossy().into_owned()
        };
        if rel_inside.split('/').any(|c| c == ".." || c.is_empty()) {
            bail!("{}: refusing suspicious entry {name}", wheel_path.display());
        }
        let rel = format!("{target}/{rel_inside}");
        let out_path = dest.join(&rel);
        if let Some(parent) = out_path.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut out = fs::File::create(&out_path).with_context(|| format!("creating {}", out_path.display()))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = entry.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            size += n as u64;
        }
        #[cfg(unix)]
        if let Some(mode) = entry.unix_mode() {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&out_path, fs::Permissions::from_mode(mode & 0o777))?;
        }
        manifest.push_str(&format!("{:x} {size} {rel}\n", hasher.finalize()));
    }
    Ok(())
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(format!("{:x}", hasher.finalize()))
}
