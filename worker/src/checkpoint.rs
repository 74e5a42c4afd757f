//! Checkpoints: one file that holds everything needed to continue a run exactly — the model's
//! variables (weights and batch-norm statistics), the optimizer's buffers and step count, and a
//! JSON header (model config, the training task, epochs done, global step, the metric history).
//!
//! Format: libtorch's named-tensor archive (`Tensor::save_multi`), keys `model/<var>`,
//! `optim/<param>/<i>`, `optim/steps` and `meta` (the JSON as a `uint8` tensor), and `digest`:
//! the SHA-256 of every other entry (name, type, shape and bytes, in name order), checked on load,
//! because libtorch loads an archive whose tensor bytes were flipped without a word (its zip
//! CRCs are not checked). Files are written to `<path>.partial`, synced, then renamed, so a crash
//! mid-write leaves the previous checkpoint. Checkpoints of format 1 (before the digest) are
//! still read.

use crate::models::{ModelConfig, Numerics, Requested};
use freqsweep_common::task::{MetricPoint, TrainTask};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

const FORMAT: &str = "freqsweep-checkpoint-2";
/// Written before checkpoints carried a digest: read without one.
const FORMAT_WITHOUT_DIGEST: &str = "freqsweep-checkpoint-1";
const DIGEST_ENTRY: &str = "digest";

/// The JSON header of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format: String,
    pub model: ModelConfig,
    /// The run this checkpoint belongs to (absent for a bare model export).
    pub train: Option<TrainTask>,
    /// Completed epochs; training resumes at this (0-based) epoch.
    pub epochs_done: u32,
    pub step: u64,
    /// Every metric point emitted so far, so a resumed run reports a complete history.
    pub metrics: Vec<MetricPoint>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: not a freqsweep checkpoint ({detail})")]
    NotACheckpoint { path: PathBuf, detail: String },
    #[error("{path}: {detail}")]
    Mismatch { path: PathBuf, detail: String },
    #[error("{path}: corrupt checkpoint: its contents hash to {computed}, it was written as {recorded} (the file changed after it was written)")]
    Corrupt { path: PathBuf, recorded: String, computed: String },
    #[error("{path}: cannot write checkpoint: {detail}")]
    Write { path: PathBuf, detail: String },
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    model: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
}

/// The one line of a libtorch error that says what went wrong: its messages carry C++
/// backtraces after the first line, and the TorchScript interpreter's first line only says that
/// an operation failed (the cause is its last `RuntimeError:` line).
pub fn first_line(err: impl std::fmt::Display) -> String {
    let text = err.to_string();
    let cause = text.lines().rev().find_map(|l| l.trim().strip_prefix("RuntimeError: "));
    let line = match cause {
        Some(cause) if text.contains("TorchScript interpreter") => cause.trim(),
        _ => text.lines().next().unwrap_or("").trim(),
    };
    let line = line.strip_prefix("Internal torch error: ").unwrap_or(line);
    // Some messages go on for sentences of advice (miniz: "If you are seeing this error, …").
    match line.split_once(". ") {
        Some((first, _)) if line.len() > 160 => format!("{first}."),
        _ => line.to_string(),
    }
}

/// Run `model` on one zero image of `height × width`, so that images of a size the model was
/// not built for fail here with one line naming the sizes, not as a panic mid-heatmap (tch's
/// modules unwrap libtorch's errors, so the probe catches the panic and keeps its message).
/// Returns the logits per image.
fn probe(model: &dyn crate::models::Classifier, device: Device, height: i64, width: i64) -> Result<i64, String> {
    let x = Tensor::zeros([1, 3, height, width], (Kind::Float, device));
    let previous = std::panic::take_hook();
    // Silent while probing: the message is returned, not printed with a backtrace (one task
    // runs at a time on a worker, so no other thread's panic is hidden meanwhile).
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tch::no_grad(|| model.logits(&x, false))));
    std::panic::set_hook(previous);
    match result {
        Ok(Ok(logits)) if logits.dim() == 2 && logits.size()[0] == 1 => Ok(logits.size()[1]),
        Ok(Ok(logits)) => Err(format!("forward returned shape {:?}; expected logits [N, classes]", logits.size())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(payload) => {
            let text = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            // `called Result::unwrap() on an Err value: Torch("…")`: keep libtorch's sentence.
            let inner = text.split_once("Torch(\"").map_or(text.as_str(), |(_, rest)| rest);
            Err(inner.split("\\n").next().unwrap_or(inner).trim_end_matches("\")").to_string())
        }
    }
}

impl CheckpointMeta {
    pub fn new(model: ModelConfig, train: Option<TrainTask>) -> Self {
        CheckpointMeta { format: FORMAT.to_string(), model, train, epochs_done: 0, step: 0, metrics: Vec::new() }
    }
}

/// Write `vs` (and the optimizer state, if any) with `meta` to `path` atomically.
pub fn save(
    path: &Path,
    vs: &nn::VarStore,
    optimizer: &[(String, Tensor)],
    meta: &CheckpointMeta,
) -> Result<(), CheckpointError> {
    let write_err = |detail: String| CheckpointError::Write { path: path.to_path_buf(), detail };
    let json = serde_json::to_vec(meta).map_err(|e| write_err(e.to_string()))?;
    let mut named: Vec<(String, Tensor)> = Vec::new();
    named.push(("meta".to_string(), Tensor::from_slice(&json)));
    let mut vars: Vec<_> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in vars {
        named.push((format!("model/{name}"), t.to_device(Device::Cpu)));
    }
    for (name, t) in optimizer {
        named.push((format!("optim/{name}"), t.to_device(Device::Cpu)));
    }
    write_named(path, &named)
}

/// `named` to `path` atomically: `.partial`, fsync, rename.
fn write_named(path: &Path, named: &[(String, Tensor)]) -> Result<(), CheckpointError> {
    let write_err = |detail: String| CheckpointError::Write { path: path.to_path_buf(), detail };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| write_err(e.to_string()))?;
    }
    let digest = entries_digest(named).map_err(write_err)?;
    let mut signed: Vec<(&str, &Tensor)> = named.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let digest = Tensor::from_slice(digest.as_bytes());
    signed.push((DIGEST_ENTRY, &digest));
    let partial = path.with_extension("partial");
    Tensor::save_multi(&signed, &partial).map_err(|e| write_err(first_line(e)))?;
    std::fs::File::open(&partial).and_then(|f| f.sync_all()).map_err(|e| write_err(e.to_string()))?;
    std::fs::rename(&partial, path).map_err(|e| write_err(e.to_string()))
}

/// Write the weights of the checkpoint at `checkpoint` alone to `out`: the same format and header
/// (model config, task, epochs, step) without optimizer state or metric history, so analyses of
/// the model download a third of an Adam checkpoint. [`load_classifier`] opens it like any
/// checkpoint; training cannot resume from it (no optimizer state).
pub fn export_weights(checkpoint: &Path, out: &Path) -> Result<(), CheckpointError> {
    let stored = load(checkpoint)?;
    let meta = CheckpointMeta { metrics: Vec::new(), ..stored.meta };
    let json = serde_json::to_vec(&meta)
        .map_err(|e| CheckpointError::Write { path: out.to_path_buf(), detail: e.to_string() })?;
    let mut model: Vec<(String, Tensor)> = stored.model.into_iter().map(|(n, t)| (format!("model/{n}"), t)).collect();
    model.sort_by(|a, b| a.0.cmp(&b.0));
    let mut named = vec![("meta".to_string(), Tensor::from_slice(&json))];
    named.extend(model);
    write_named(out, &named)
}

/// SHA-256 of `named` but its digest entry: each entry's name, type, shape and bytes, in name
/// order (so the digest does not depend on the order entries were written or read).
fn entries_digest(named: &[(String, Tensor)]) -> Result<String, String> {
    let mut entries: Vec<&(String, Tensor)> = named.iter().filter(|(n, _)| n != DIGEST_ENTRY).collect();
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut hasher = freqsweep_common::digest::Hasher::default();
    // Bytes are copied out a slice at a time, so a large layer is not duplicated whole.
    const SLICE: i64 = 1 << 22;
    for (name, t) in entries {
        let kind = t.kind();
        hasher.update(name.as_bytes());
        hasher.update(&[0]);
        hasher.update(format!("{kind:?}{:?}", t.size()).as_bytes());
        let flat = t.to_device(Device::Cpu).contiguous().flatten(0, -1);
        let numel = flat.numel() as i64;
        let mut start = 0;
        while start < numel {
            let len = SLICE.min(numel - start);
            let mut bytes = vec![0u8; len as usize * kind.elt_size_in_bytes()];
            flat.narrow(0, start, len).f_copy_data_u8(&mut bytes, len as usize).map_err(first_line)?;
            hasher.update(&bytes);
            start += len;
        }
    }
    Ok(hasher.finish())
}

/// Read a checkpoint written by [`save`], checking its digest.
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let not = |detail: String| CheckpointError::NotACheckpoint { path: path.to_path_buf(), detail };
    if !path.is_file() {
        return Err(not("no such file".into()));
    }
    let named = Tensor::load_multi(path).map_err(|e| not(first_line(e)))?;
    let recorded = match named.iter().find(|(n, _)| n == DIGEST_ENTRY) {
        Some((_, t)) if t.kind() == Kind::Uint8 => {
            let bytes = Vec::<u8>::try_from(t).map_err(|e| not(first_line(e)))?;
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        Some(_) => return Err(not("digest has the wrong type".into())),
        None => None,
    };
    if let Some(recorded) = &recorded {
        let computed = entries_digest(&named).map_err(not)?;
        if computed != *recorded {
            return Err(CheckpointError::Corrupt { path: path.to_path_buf(), recorded: recorded.clone(), computed });
        }
    }
    let mut model = HashMap::new();
    let mut optimizer = HashMap::new();
    let mut meta = None;
    for (name, t) in named {
        if name == "meta" {
            if t.kind() != Kind::Uint8 {
                return Err(not("header has the wrong type".into()));
            }
            let bytes = Vec::<u8>::try_from(&t).map_err(|e| not(first_line(e)))?;
            let parsed: CheckpointMeta = serde_json::from_slice(&bytes).map_err(|e| not(format!("header: {e}")))?;
            meta = Some(parsed);
        } else if let Some(rest) = name.strip_prefix("model/") {
            model.insert(rest.to_string(), t);
        } else if let Some(rest) = name.strip_prefix("optim/") {
            optimizer.insert(rest.to_string(), t);
        }
    }
    let meta = meta.ok_or_else(|| not("no header".into()))?;
    match (meta.format.as_str(), &recorded) {
        (FORMAT, Some(_)) | (FORMAT_WITHOUT_DIGEST, _) => {}
        (FORMAT, None) => return Err(not("no digest entry (the file was cut or altered)".into())),
        (other, _) => return Err(not(format!("format {other:?}, this worker reads {FORMAT:?}"))),
    }
    Ok(Checkpoint { meta, model, optimizer })
}

impl Checkpoint {
    /// Copy the stored weights into `vs` (built from `self.meta.model`), checking names and shapes.
    pub fn restore_model(&self, vs: &mut nn::VarStore, path: &Path) -> Result<(), CheckpointError> {
        let mismatch = |detail: String| CheckpointError::Mismatch { path: path.to_path_buf(), detail };
        let vars = vs.variables();
        if vars.len() != self.model.len() {
            return Err(mismatch(format!(
                "holds {} model tensors, the {:?} model has {}",
                self.model.len(),
                self.meta.model.arch,
                vars.len()
            )));
        }
        tch::no_grad(|| {
            for (name, mut var) in vars {
                let stored = self.model.get(&name).ok_or_else(|| mismatch(format!("missing tensor {name}")))?;
                if stored.size() != var.size() {
                    return Err(mismatch(format!(
                        "tensor {name} has shape {:?}, the model expects {:?}",
                        stored.size(),
                        var.size()
                    )));
                }
                var.copy_(stored);
            }
            Ok(())
        })
    }
}

/// A classifier loaded for evaluation.
pub struct Loaded {
    pub model: Box<dyn crate::models::Classifier>,
    /// What it is, for logs (`freqsweep checkpoint (Tiny, 3 epochs)`, `TorchScript module`).
    pub what: String,
    /// The numerics it computes in: those asked for, or fp32 where the model cannot run in them
    /// (a TorchScript graph with fp32 constants) — with the reason.
    pub numerics: Numerics,
    pub fallback: Option<String>,
    /// Logits per image (the model's output width, measured when it was loaded).
    pub classes: usize,
}

/// Load a classifier for evaluation from either a freqsweep checkpoint or a TorchScript file
/// (tried in that order), for `height × width` inputs, computing in the `requested` numerics
/// (a memory format of `Auto` resolved for the model found). The probe measures its logits per
/// image ([`Loaded::classes`]), which a task compares with its spec's classes.
pub fn load_classifier(
    path: &Path,
    device: Device,
    height: i64,
    width: i64,
    requested: Requested,
) -> Result<Loaded, String> {
    match load(path) {
        Ok(stored) => {
            // Built-in models run at any size, but one trained on other images than these would
            // give a map of a model never meant for them: its run's images decide.
            if let Some(trained) = stored.meta.train.as_ref().and_then(|t| t.dataset.image_shape()) {
                if (trained.h as i64, trained.w as i64) != (height, width) {
                    return Err(format!(
                        "{}: images of 3×{height}×{width} do not fit this {:?} model (trained on 3×{}×{} images); give images of the size it was trained on",
                        path.display(),
                        stored.meta.model.arch,
                        trained.h,
                        trained.w
                    ));
                }
            }
            let mut vs = nn::VarStore::new(device);
            let mut model = crate::models::build(&vs, &stored.meta.model);
            stored.restore_model(&mut vs, path).map_err(|e| e.to_string())?;
            let numerics = requested.for_model(crate::models::is_conv_net(vs.variables().values()));
            crate::models::convert_vars(&mut vs, numerics);
            model.set_numerics(numerics);
            let classes = probe(model.as_ref(), device, height, width).map_err(|cause| {
                format!(
                    "{}: images of 3×{height}×{width} do not fit this {:?} model (forward failed: {cause}); give images of the size it was trained on",
                    path.display(),
                    stored.meta.model.arch
                )
            })?;
            let what =
                format!("freqsweep checkpoint ({:?}, {} epochs)", stored.meta.model.arch, stored.meta.epochs_done);
            Ok(Loaded { model, what, numerics, fallback: None, classes: classes.max(0) as usize })
        }
        Err(CheckpointError::NotACheckpoint { .. }) if path.is_file() => {
            match crate::models::ScriptClassifier::load(path, device, height, width) {
                Ok(mut m) => {
                    let numerics = requested.for_model(m.is_conv_net());
                    let fallback = m.convert(numerics, device, height, width).err();
                    let used = if fallback.is_some() { Numerics::FP32 } else { numerics };
                    let classes = m.classes().max(0) as usize;
                    let what = "TorchScript module".to_string();
                    Ok(Loaded { model: Box::new(m), what, numerics: used, fallback, classes })
                }
                Err(crate::models::ScriptError::NotAModule(e)) => {
                    Err(format!("{e} (and not a freqsweep checkpoint either)"))
                }
                Err(crate::models::ScriptError::Rejected(e)) => Err(e),
            }
        }
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Arch, ModelConfig};

    /// A tiny model's checkpoint with one optimizer buffer of a value easy to find in the file.
    fn saved(dir: &Path) -> PathBuf {
        let vs = nn::VarStore::new(Device::Cpu);
        let config = ModelConfig::new(Arch::Tiny, 4);
        let _model = crate::models::build(&vs, &config);
        let marker = Tensor::from_slice(&[1.25f32; 256]);
        let path = dir.join("c.ot");
        save(&path, &vs, &[("buffer".to_string(), marker)], &CheckpointMeta::new(config, None)).unwrap();
        path
    }

    #[test]
    fn flipped_bytes_are_refused_by_the_digest_and_an_intact_file_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = saved(dir.path());
        let stored = load(&path).unwrap();
        assert_eq!(stored.optimizer["buffer"].size(), [256]);
        let mut bytes = std::fs::read(&path).unwrap();
        let pattern: Vec<u8> = std::iter::repeat_n(1.25f32.to_le_bytes(), 64).flatten().collect();
        let at = bytes.windows(pattern.len()).position(|w| w == pattern).expect("the buffer's bytes");
        for b in &mut bytes[at + 10..at + 210] {
            *b ^= 0xff;
        }
        std::fs::write(&path, &bytes).unwrap();
        let err = load(&path).err().expect("refused").to_string();
        assert!(
            err.contains("c.ot: corrupt checkpoint") && err.contains("the file changed after it was written"),
            "{err}"
        );
    }

    #[test]
    fn a_checkpoint_without_its_digest_is_refused_unless_it_predates_digests() {
        let dir = tempfile::tempdir().unwrap();
        let path = saved(dir.path());
        let entries: Vec<(String, Tensor)> =
            Tensor::load_multi(&path).unwrap().into_iter().filter(|(n, _)| n != DIGEST_ENTRY).collect();
        let stripped = dir.path().join("stripped.ot");
        Tensor::save_multi(&entries, &stripped).unwrap();
        let err = load(&stripped).err().expect("refused").to_string();
        assert!(err.contains("no digest entry"), "{err}");
        // Format 1 was written before digests: still read.
        let old: Vec<(String, Tensor)> = entries
            .into_iter()
            .map(|(n, t)| {
                if n != "meta" {
                    return (n, t);
                }
                let mut meta: serde_json::Value = serde_json::from_slice(&Vec::<u8>::try_from(&t).unwrap()).unwrap();
                meta["format"] = FORMAT_WITHOUT_DIGEST.into();
                (n, Tensor::from_slice(&serde_json::to_vec(&meta).unwrap()))
            })
            .collect();
        let legacy = dir.path().join("legacy.ot");
        Tensor::save_multi(&old, &legacy).unwrap();
        assert_eq!(load(&legacy).unwrap().meta.format, FORMAT_WITHOUT_DIGEST);
    }

    /// A checkpoint of a run refuses images of another size than its run's, in one line; a
    /// bare model without a run takes any size its architecture takes (built-in models adapt),
    /// and one too small for it is one line too, not a panic.
    #[test]
    fn images_of_a_size_the_model_does_not_take_are_one_line_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let config = ModelConfig::new(Arch::Tiny, 4);
        let _model = crate::models::build(&vs, &config);
        let (task, _, _) = crate::train::tests::tiny_task(1);
        let trained = dir.path().join("trained.ot");
        save(&trained, &vs, &[], &CheckpointMeta::new(config.clone(), Some(task))).unwrap();
        assert!(load_classifier(&trained, Device::Cpu, 32, 32, Requested::FP32_NCHW).is_ok());
        let err = load_classifier(&trained, Device::Cpu, 16, 16, Requested::FP32_NCHW).err().expect("refused");
        assert!(err.contains("images of 3×16×16 do not fit this Tiny model (trained on 3×32×32 images)"), "{err}");
        assert!(!err.contains('\n'), "{err}");

        let bare = saved(dir.path());
        assert!(load_classifier(&bare, Device::Cpu, 16, 16, Requested::FP32_NCHW).is_ok());
        let err = load_classifier(&bare, Device::Cpu, 2, 2, Requested::FP32_NCHW).err().expect("refused");
        assert!(err.contains("images of 3×2×2 do not fit this Tiny model") && !err.contains('\n'), "{err}");
    }
}
