//! Checkpoints: one file that holds everything needed to continue a run exactly — the model's
//! variables (weights and batch-norm statistics), the optimizer's buffers and step count, and a
//! JSON header (model config, the training task, epochs done, global step, the metric history).
//!
//! Format: libtorch's named-tensor archive (`Tensor::save_multi`), keys `model/<var>`,
//! `optim/<param>/<i>`, `optim/steps` and `meta` (the JSON as a `uint8` tensor). Files are written
//! to `<path>.partial`, synced, then renamed, so a crash mid-write leaves the previous checkpoint.

use crate::models::ModelConfig;
use freqsweep_common::task::{MetricPoint, TrainTask};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

const FORMAT: &str = "freqsweep-checkpoint-1";

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
    #[error("{path}: cannot write checkpoint: {detail}")]
    Write { path: PathBuf, detail: String },
}

/// A loaded checkpoint.
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    model: HashMap<String, Tensor>,
    pub optimizer: HashMap<String, Tensor>,
}

/// First line of a libtorch error: its messages carry C++ backtraces after the first line.
pub fn first_line(err: impl std::fmt::Display) -> String {
    err.to_string().lines().next().unwrap_or("").trim().to_string()
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
    let partial = path.with_extension("partial");
    Tensor::save_multi(named, &partial).map_err(|e| write_err(first_line(e)))?;
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

/// Read a checkpoint written by [`save`].
pub fn load(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let not = |detail: String| CheckpointError::NotACheckpoint { path: path.to_path_buf(), detail };
    if !path.is_file() {
        return Err(not("no such file".into()));
    }
    let named = Tensor::load_multi(path).map_err(|e| not(first_line(e)))?;
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
    if meta.format != FORMAT {
        return Err(not(format!("format {:?}, this worker reads {FORMAT:?}", meta.format)));
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

/// Load a classifier for evaluation from either a freqsweep checkpoint or a TorchScript file
/// (tried in that order), for `height × width` inputs. Returns the model and a description.
pub fn load_classifier(
    path: &Path,
    device: Device,
    height: i64,
    width: i64,
) -> Result<(Box<dyn crate::models::Classifier>, String), String> {
    match load(path) {
        Ok(stored) => {
            let mut vs = nn::VarStore::new(device);
            let model = crate::models::build(&vs, &stored.meta.model);
            stored.restore_model(&mut vs, path).map_err(|e| e.to_string())?;
            let what =
                format!("freqsweep checkpoint ({:?}, {} epochs)", stored.meta.model.arch, stored.meta.epochs_done);
            Ok((model, what))
        }
        Err(CheckpointError::NotACheckpoint { .. }) if path.is_file() => {
            crate::models::ScriptClassifier::load(path, device, height, width)
                .map(|m| (Box::new(m) as Box<dyn crate::models::Classifier>, "TorchScript module".to_string()))
                .map_err(|e| format!("{e} (and not a freqsweep checkpoint either)"))
        }
        Err(e) => Err(e.to_string()),
    }
}
