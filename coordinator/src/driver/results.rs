//! Results and checkpoints: a result is checked by its kind's room, merged into what the rooms
//! build (the artifacts a merge derives get their own keys and are written by the shell) and
//! completes its attempt; a checkpoint becomes the task's newest partial (what a retry resumes
//! from) or, at a kept epoch, an output the analyses of that epoch take.

use super::drive::Reply;
use super::{worker_name, Driver, Effects, Now, PartialCheckpoint, ToWorker};
use crate::artifacts::{ArtifactDir, ArtifactRef};
use crate::graph::PlannedTask;
use crate::kinds;
use crate::scheduler::{AttemptId, Input, TaskId, WorkerId};
use crate::store::Change;
use freqsweep_common::task::{epoch_output, TaskOutcome};
use std::collections::HashSet;

impl Driver {
    /// A result: checked against its task by its room (`kinds::check_result`), merged (the
    /// artifacts the merge derives are written by the shell), stored, and completes its attempt;
    /// one that does not fit fails the attempt, retryably.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn result(
        &mut self,
        now: Now,
        worker: WorkerId,
        attempt: AttemptId,
        result_json: String,
        outputs: Vec<ArtifactRef>,
        stored: &HashSet<String>,
        fx: &mut Effects,
    ) {
        let Some(task) = self.owned(attempt, worker) else {
            tracing::debug!(worker = %worker_name(worker), attempt = attempt.0, "result of an attempt this session does not hold; not accepted");
            return fx.send(worker, ToWorker::Ack { attempt, accepted: false });
        };
        let checked = match outputs.iter().find(|o| !stored.contains(&o.digest)) {
            Some(missing) => {
                Err(format!("result names artifact {} ({}) that was never uploaded", missing.name, missing.digest))
            }
            None => kinds::check_result(&self.tasks[&task], &result_json, &outputs)
                .map_err(|why| format!("result refused: {why}")),
        };
        let mut changes = vec![Change::TaskResult { id: task.0, result_json }];
        // The owner's report of a live attempt: the core accepts it below, so merge it now.
        let merged = checked.and_then(|outcome| {
            let planned = &self.tasks[&task];
            merge_accepted(&mut self.maps, &self.artifact_paths, planned, &outcome, &mut changes, &mut fx.files)
                .map_err(|why| format!("result refused: {why}"))
        });
        // Recorded before the result is accepted, so the dependent that becomes ready with it
        // finds the input in its lease.
        let merged = merged.map(|derived| self.record_derived(derived));
        if let Err(error) = merged {
            // The refusal quotes what the peer sent (serde's messages quote the JSON).
            let error = crate::grpc::peer_text(&error, crate::grpc::MESSAGE_BYTES);
            tracing::warn!(task = %self.tasks[&task].key, attempt = attempt.0, worker = %worker_name(worker), error = %error, "result does not fit its task");
            self.note_failure(now, Some(task), Some(attempt.0), worker_name(worker), error.clone());
            let input = Input::Failed { attempt, by: worker, error: error.clone(), retryable: true };
            let changes = vec![Change::TaskError { id: task.0, error }];
            return self.drive(now, input, changes, Some(Reply::to(worker, attempt)), fx);
        }
        let mut keys = Vec::new();
        for o in &outputs {
            let key = kinds::output_key(task, &o.name);
            self.digest_keys.insert(o.digest.clone(), key.clone());
            keys.push(key);
            changes.push(self.artifact_change(o, o.name.clone(), Some(task)));
        }
        // The task is done: its partial checkpoint is no longer needed, unless it is the final
        // one (same bytes), whose row the output just replaced.
        let mut forget = Vec::new();
        if let Some(partial) = self.partials.remove(&task) {
            let kept = self.kept.get(&task).is_some_and(|k| k.contains_key(&partial.epochs_done));
            if !kept && !outputs.iter().any(|o| o.digest == partial.artifact.digest) {
                changes.push(Change::DeleteArtifact { digest: partial.artifact.digest.clone() });
                forget.push(partial.artifact.digest);
            }
        }
        if !outputs.is_empty() {
            // The kept epoch checkpoints stay outputs beside the final ones.
            let all = self.outputs.entry(task).or_default();
            all.retain(|o| !outputs.iter().any(|n| n.name == o.name));
            all.extend(outputs);
        }
        let reply = Reply { worker, attempt, forget };
        self.drive(now, Input::Completed { attempt, by: worker, outputs: keys }, changes, Some(reply), fx);
    }

    /// Record an attempt's per-epoch checkpoint if it is the task's newest, and delete the one it
    /// supersedes once that is committed.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn checkpoint_saved(
        &mut self,
        now: Now,
        worker: WorkerId,
        attempt: AttemptId,
        artifact: Option<ArtifactRef>,
        epochs_done: u32,
        stored: &HashSet<String>,
        fx: &mut Effects,
    ) {
        let mut refuse = |why: &str| {
            tracing::debug!(attempt = attempt.0, epochs_done, why, "checkpoint not recorded");
            fx.send(worker, ToWorker::Ack { attempt, accepted: false });
        };
        let Some(task) = self.owned(attempt, worker) else { return refuse("not an attempt this session holds") };
        let Some(artifact) = artifact else { return refuse("no artifact") };
        if !kinds::resumes_from_partial_checkpoints(self.tasks[&task].kind()) {
            return refuse("this kind does not resume from checkpoints");
        }
        if !stored.contains(&artifact.digest) {
            tracing::warn!(attempt = attempt.0, digest = %artifact.digest, "checkpoint announced but never uploaded");
            return refuse("not uploaded");
        }
        // An epoch checkpoint analyses take: an output of the train task from now on, and the
        // analyses waiting for it can start while training goes on.
        let kept: Option<Vec<TaskId>> = self.kept.get(&task).and_then(|k| k.get(&epochs_done)).cloned();
        let mut epoch_changes = Vec::new();
        if let Some(waiting) = &kept {
            let name = epoch_output(epochs_done);
            let outputs = self.outputs.entry(task).or_default();
            // The first copy stays (a retry's is the same run again; analyses may have read it).
            if !outputs.iter().any(|o| o.name == name) {
                tracing::info!(task = %self.tasks[&task].key, epochs_done, analyses = waiting.len(), "epoch checkpoint kept");
                outputs.push(ArtifactRef { name: name.clone(), ..artifact.clone() });
                self.digest_keys.insert(artifact.digest.clone(), kinds::output_key(task, &name));
                epoch_changes.push(self.artifact_change(&artifact, name, Some(task)));
            }
        }
        if self.partials.get(&task).is_some_and(|p| p.epochs_done >= epochs_done) {
            // An older epoch announced late (a drain flushes its last uploads): keep the newer
            // as the partial; a kept epoch is recorded as the output it is.
            if let Some(waiting) = kept {
                let input = Input::DepsSatisfied { dep: task, tasks: waiting };
                return self.drive(now, input, epoch_changes, Some(Reply::to(worker, attempt)), fx);
            }
            return fx.send(worker, ToWorker::Ack { attempt, accepted: true });
        }
        tracing::info!(task = %self.tasks[&task].key, attempt = attempt.0, epochs_done, "checkpoint saved");
        // A kept epoch's row is the output's (its partial-checkpoint record lives in memory:
        // on a restart the epoch output is the file to resume from only if nothing newer is).
        let mut changes = if kept.is_some() {
            epoch_changes
        } else {
            vec![Change::PartialCheckpoint {
                digest: artifact.digest.clone(),
                name: artifact.name.clone(),
                size: artifact.size,
                path: self.artifact_paths.path(&artifact.digest).display().to_string(),
                task_id: task.0,
                attempt_id: attempt.0,
                epochs_done,
            }]
        };
        let new_digest = artifact.digest.clone();
        let mut forget = Vec::new();
        if let Some(old) = self.partials.insert(task, PartialCheckpoint { artifact, epochs_done }) {
            let old_kept = self.kept.get(&task).is_some_and(|k| k.contains_key(&old.epochs_done));
            if old.artifact.digest != new_digest && !old_kept {
                changes.push(Change::DeleteArtifact { digest: old.artifact.digest.clone() });
                forget.push(old.artifact.digest);
            }
        }
        let input = match kept {
            Some(waiting) => Input::DepsSatisfied { dep: task, tasks: waiting },
            None => Input::Heartbeat { worker },
        };
        self.drive(now, input, changes, Some(Reply { worker, attempt, forget }), fx);
    }

    /// Artifacts merges derived, by key: the inputs of the leases that take them.
    pub(super) fn record_derived(&mut self, derived: Vec<(String, ArtifactRef)>) {
        for (key, artifact) in derived {
            self.digest_keys.insert(artifact.digest.clone(), key.clone());
            self.derived.insert(key, artifact);
        }
    }
}

/// Merge an accepted result into what the rooms build from results. Every artifact the merge
/// derived gets its digest, its row in `changes` and its bytes in `files` (written by the shell
/// before the rows commit); returns them by key. Idempotent: a task's result merges once.
pub(super) fn merge_accepted(
    maps: &mut kinds::Merged,
    paths: &ArtifactDir,
    task: &PlannedTask,
    outcome: &TaskOutcome,
    changes: &mut Vec<Change>,
    files: &mut Vec<(String, Vec<u8>)>,
) -> Result<Vec<(String, ArtifactRef)>, String> {
    let mut derived_now = Vec::new();
    for derived in maps.merge(task, outcome)? {
        let mut hasher = freqsweep_common::digest::Hasher::default();
        hasher.update(&derived.bytes);
        let digest = hasher.finish();
        let size = derived.bytes.len() as u64;
        tracing::info!(map = %derived.name, digest = %digest, "maps complete");
        let path = paths.path(&digest).display().to_string();
        changes.push(Change::Artifact {
            digest: digest.clone(),
            name: derived.name.clone(),
            size,
            path,
            task_id: None,
        });
        files.push((digest.clone(), derived.bytes));
        derived_now.push((derived.key, ArtifactRef { name: derived.name, digest, size }));
    }
    Ok(derived_now)
}
