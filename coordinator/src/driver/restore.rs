//! A driver rebuilt from the plan and what the store holds: tasks in their stored states, the
//! outputs of finished tasks, what finished merged again (so maps keep filling in where they
//! were), partial and kept-epoch checkpoints, given models and the grid's point ids.

use super::results::merge_accepted;
use super::{Counters, Driver, Effects, Now, PartialCheckpoint, ServiceConfig, StoredTask};
use crate::artifacts::{ArtifactDir, ArtifactRef};
use crate::graph::PlannedTask;
use crate::kinds;
use crate::scheduler::{Input, Scheduler, StateName, StoredState, TaskId};
use crate::snapshot::AttemptCounts;
use freqsweep_common::task::{epoch_output, MODEL_OUTPUT};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// Stored task state → what the scheduler restores.
fn stored_state(state: &str) -> StoredState {
    match StateName::parse(state) {
        Some(StateName::Done) => StoredState::Done,
        Some(StateName::Failed) => StoredState::Failed,
        Some(StateName::Cancelled) => StoredState::Cancelled,
        _ => StoredState::Pending,
    }
}

/// What a driver is built from.
pub struct Restore {
    pub config: ServiceConfig,
    pub artifacts: ArtifactDir,
    pub tasks: Vec<PlannedTask>,
    pub stored: HashMap<TaskId, StoredTask>,
    pub first_attempt: u64,
    pub sweep_id: String,
    pub counters: Arc<Counters>,
}

impl Driver {
    /// The driver of `from.tasks` as the store left them; the effects flush what restoring
    /// decided (cascaded cancellations) and store the rows of maps completed before a crash
    /// whose artifact row was not committed.
    pub fn restore(now: Now, from: Restore) -> (Driver, Effects) {
        let Restore { config, artifacts, tasks, stored, first_attempt, sweep_id, counters } = from;
        let mut outputs = HashMap::new();
        let mut digest_keys = HashMap::new();
        let restore: Vec<_> = tasks
            .iter()
            .map(|t| {
                let (state, failures) = stored.get(&t.id).map_or((StoredState::Pending, 0), |s| {
                    if !s.outputs.is_empty() {
                        for o in &s.outputs {
                            digest_keys.insert(o.digest.clone(), kinds::output_key(t.id, &o.name));
                        }
                        outputs.insert(t.id, s.outputs.clone());
                    }
                    (stored_state(&s.state), s.failures)
                });
                (t.to_new_task(), state, failures)
            })
            .collect();
        let scheduler = Scheduler::restore(config.scheduler.clone(), restore, first_attempt);
        let done = scheduler.is_finished();
        let terminal_at_start = scheduler.counts().iter().filter(|(s, _)| s.is_terminal()).map(|(_, c)| c).sum();
        let maps = kinds::Merged::new(&tasks, kinds::Keep::MapsOnly);
        let kept = kinds::epoch_consumers(&tasks);
        let mut driver = Driver {
            scheduler,
            tasks: tasks.into_iter().map(|t| (t.id, t)).collect(),
            outputs,
            derived: HashMap::new(),
            given: HashMap::new(),
            point_ids: Vec::new(),
            point_trains: Vec::new(),
            kept,
            maps,
            partials: HashMap::new(),
            digest_keys,
            sessions: HashMap::new(),
            workers: HashMap::new(),
            next_worker: 1,
            next_serial: 1,
            lease_started: HashMap::new(),
            metric_points: 0,
            sweep_done: done,
            kind_counts: BTreeMap::new(),
            terminal_at_start,
            attempts: AttemptCounts::default(),
            leased_before: HashSet::new(),
            workers_joined: 0,
            workers_expired: 0,
            failures: VecDeque::new(),
            armed: None,
            artifact_paths: artifacts,
            config,
            started: now.instant,
            sweep_id,
            counters,
            planner: None,
            points_planned: 0,
            add_refused: None,
        };
        let mut fx = Effects::default();
        // Restoring may have decided transitions (cascaded cancellations) that only the first
        // `handle` emits; flush them now, then count tasks by kind from the settled states so
        // every later transition keeps the counts exact.
        driver.tick(now, &mut fx);
        let mut counts = BTreeMap::new();
        for (id, task) in &driver.tasks {
            if let Some(state) = driver.scheduler.state(*id) {
                *counts.entry((task.kind(), state)).or_default() += 1;
            }
        }
        driver.kind_counts = counts;
        driver.merge_stored(&stored, &mut fx);
        (driver, fx)
    }

    /// Merge what finished before a restart, so maps keep filling in where they were. A map
    /// completed before the crash but whose artifact row was not committed gets it now.
    fn merge_stored(&mut self, stored: &HashMap<TaskId, StoredTask>, fx: &mut Effects) {
        let mut done: Vec<(TaskId, &String)> = stored
            .iter()
            .filter(|(_, s)| stored_state(&s.state) == StoredState::Done)
            .filter_map(|(id, s)| Some((*id, s.result_json.as_ref()?)))
            .collect();
        done.sort_by_key(|(id, _)| *id);
        for (id, json) in done {
            let Some(task) = self.tasks.get(&id) else { continue };
            let merged = serde_json::from_str(json).map_err(|e| e.to_string()).and_then(|outcome| {
                merge_accepted(&mut self.maps, &self.artifact_paths, task, &outcome, &mut fx.changes, &mut fx.files)
            });
            match merged {
                Ok(derived) => self.record_derived(derived),
                Err(e) => {
                    tracing::warn!(task = %task.key, error = %e, "a stored result could not be merged; the report merges from the store")
                }
            }
        }
    }

    /// The sweep's grid point ids, by index (the dashboard names points with them).
    pub fn set_point_ids(&mut self, ids: Vec<String>) {
        let mut trains = vec![None; ids.len()];
        for task in self.tasks.values().filter(|t| kinds::trains_model(t.kind())) {
            if let Some(slot) = trains.get_mut(task.point) {
                *slot = Some(task.id);
            }
        }
        self.point_trains = trains;
        self.point_ids = ids;
    }

    /// The stored files of the sweep's given models (name → artifact), which leases of their
    /// analyses carry as the input `model`.
    pub fn set_given_models(&mut self, given: impl IntoIterator<Item = (String, ArtifactRef)>) {
        for (name, artifact) in given {
            self.digest_keys.insert(artifact.digest.clone(), kinds::given_key(&name));
            self.given.insert(name, artifact);
        }
    }

    /// The partial checkpoints of unfinished train tasks, and the analyses waiting for an epoch
    /// checkpoint stored before a restart (as a kept output, or as the newest partial).
    pub fn restore_partials(
        &mut self,
        now: Now,
        partials: impl IntoIterator<Item = (TaskId, PartialCheckpoint)>,
        fx: &mut Effects,
    ) {
        let driver = self;
        for (task, partial) in partials {
            let finished = driver.outputs.get(&task).is_some_and(|o| o.iter().any(|a| a.name == MODEL_OUTPUT));
            if !driver.tasks.contains_key(&task) || finished {
                continue;
            }
            if driver.kept.get(&task).is_some_and(|k| k.contains_key(&partial.epochs_done)) {
                let output = ArtifactRef { name: epoch_output(partial.epochs_done), ..partial.artifact.clone() };
                driver.outputs.entry(task).or_default().push(output);
            }
            let newer = driver.partials.get(&task).is_some_and(|p| p.epochs_done >= partial.epochs_done);
            if !newer {
                driver.partials.insert(task, partial);
            }
        }
        // A kept epoch checkpoint is stored as an output, not as a partial: the newest of them
        // is what an unfinished run resumes from when no newer partial is stored.
        let trains: Vec<TaskId> = driver.kept.keys().copied().collect();
        for train in trains {
            let outputs = driver.outputs.get(&train).map_or(&[][..], Vec::as_slice);
            if outputs.iter().any(|a| a.name == MODEL_OUTPUT) {
                continue;
            }
            let newest = driver.kept[&train]
                .keys()
                .rev()
                .find_map(|&e| outputs.iter().find(|o| o.name == epoch_output(e)).map(|o| (e, o.clone())));
            if let Some((epochs_done, artifact)) = newest {
                if driver.partials.get(&train).is_none_or(|p| p.epochs_done < epochs_done) {
                    driver.partials.insert(train, PartialCheckpoint { artifact, epochs_done });
                }
            }
        }
        let mut waiting: Vec<(TaskId, Vec<TaskId>)> = Vec::new();
        for (train, epochs) in &driver.kept {
            let stored = driver.outputs.get(train).map_or(&[][..], Vec::as_slice);
            let tasks: Vec<TaskId> = epochs
                .iter()
                .filter(|(e, _)| stored.iter().any(|o| o.name == epoch_output(**e)))
                .flat_map(|(_, tasks)| tasks.iter().copied())
                .collect();
            if !tasks.is_empty() {
                waiting.push((*train, tasks));
            }
        }
        waiting.sort();
        for (dep, tasks) in waiting {
            driver.drive(now, Input::DepsSatisfied { dep, tasks }, Vec::new(), None, fx);
        }
    }
}
