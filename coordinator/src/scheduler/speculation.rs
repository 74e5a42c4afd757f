//! Backup attempts at the tail (MapReduce "backup tasks"): when a worker asks for work and nothing
//! is ready, race the straggler with the largest expected gain (rules in the module documentation).

use super::{AttemptId, Backup, Millis, Output, Scheduler, State, WorkerId};

impl Scheduler {
    /// At the tail (nothing ready), start up to `slots` backups of stragglers on `worker`;
    /// returns how many it started.
    pub(super) fn lease_backups(&mut self, now: Millis, worker: WorkerId, slots: u32, out: &mut Vec<Output>) -> u32 {
        let mut granted = 0;
        while granted < slots && self.ready.is_empty() {
            let Some(mut backup) = self.speculate(now, worker) else { break };
            let task = backup.task;
            backup.attempt = self.start_attempt(now, task, worker);
            let t = self.tasks.get_mut(&task).expect("task exists");
            t.backups.push(backup.attempt);
            t.speculated += 1;
            let attempt = backup.attempt;
            out.push(Output::Backup(backup));
            out.push(Output::Lease { worker, task, attempt });
            granted += 1;
        }
        granted
    }

    /// The backup most worth starting on `worker` now, if any (its `attempt` is not yet set).
    /// Looks at every running task: O(running attempts), only when nothing is ready.
    fn speculate(&self, now: Millis, worker: WorkerId) -> Option<Backup> {
        let sc = &self.config.speculation;
        if sc.max_backups == 0 {
            return None;
        }
        let me = self.workers.get(&worker)?;
        let mut best: Option<(f64, Backup)> = None;
        for (&wid, w) in &self.workers {
            for &task in &w.running {
                let t = &self.tasks[&task];
                // Visit each task once, from the worker of its first attempt.
                let State::Running { attempt: first, worker: first_worker } = t.state else { continue };
                if first_worker != wid || t.speculated >= sc.max_backups || me.running.contains(&task) {
                    continue;
                }
                let class = &t.cost.class;
                let Some(rate) = self.rate_of(me, class) else { continue };
                let expected = t.cost.units * 1_000.0 / rate;
                // The live attempt expected to finish first is the one to beat.
                let mut straggler: Option<(f64, AttemptId, WorkerId, f64)> = None;
                for attempt in std::iter::once(first).chain(t.backups.iter().copied()) {
                    let live = self.attempts[&attempt];
                    let Some(r) = self.workers.get(&live.worker).and_then(|w| self.rate_of(w, class)) else { continue };
                    let total = t.cost.units * 1_000.0 / r;
                    let elapsed = now.saturating_sub(live.since) as f64;
                    // Past its expected end, an attempt needs as long again as it has overrun.
                    let remaining = (total - elapsed).abs();
                    if straggler.is_none_or(|s| remaining < s.0) {
                        straggler = Some((remaining, attempt, live.worker, r));
                    }
                }
                let Some((remaining, straggler, straggler_worker, straggler_rate)) = straggler else { continue };
                let gain = remaining - expected;
                if remaining <= sc.factor * expected || gain < sc.min_gain as f64 {
                    continue;
                }
                // Largest gain first; ties to the smaller task id (workers are visited in hash order).
                if best
                    .as_ref()
                    .is_some_and(|(g, b)| (*g, std::cmp::Reverse(b.task)) >= (gain, std::cmp::Reverse(task)))
                {
                    continue;
                }
                let backup = Backup {
                    task,
                    attempt: AttemptId(0),
                    worker,
                    straggler,
                    straggler_worker,
                    class: t.cost.class.clone(),
                    rate,
                    straggler_rate,
                    expected_ms: expected.round() as Millis,
                    remaining_ms: remaining.round() as Millis,
                };
                best = Some((gain, backup));
            }
        }
        best.map(|(_, b)| b)
    }
}
