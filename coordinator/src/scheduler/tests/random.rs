//! Random event sequences (joins, leases, reports, forgeries, restarts, tasks added, …) with the
//! invariants checked after every step.

use super::*;
use proptest::prelude::*;
use std::collections::HashSet;

#[derive(Clone, Debug)]
enum Event {
    Join(u64),
    Leave(u64),
    Beat(u64),
    Lease(u64, u32),
    Complete(usize),
    /// Complete one of the attempts live now (`Complete` mostly hits stale ones).
    CompleteLive(usize),
    /// A worker with nothing running asks for one task (as real workers do; `Lease` mostly
    /// comes from workers that already run everything, which get no backups).
    IdleLease(usize),
    Fail(usize, bool),
    Release(usize),
    Cancel(u64),
    CancelSweep,
    Advance(u64),
    /// The coordinator crashes and restarts from what the store holds; workers must rejoin.
    Restart,
    /// A report of some attempt from worker `w`, which need not hold it (a forged report).
    Forge(usize, u64),
    /// Worker `w` lists those of its live attempts whose bit is set in the mask, plus one
    /// leased attempt that may be stale; `seen`: it has received every lease sent so far.
    Reconcile(u64, u8, usize, bool),
    /// Tasks added while the sweep runs, one per entry: its dependencies pick (modulo) among the
    /// tasks held and the batch's earlier ones; `gap`: its id skips one.
    Add(Vec<(Vec<usize>, bool)>),
    /// A valid task, then one that breaks a rule (`rule` % 3: an id that exists, an unknown
    /// dependency, a dependency on itself): the batch must be refused whole.
    AddBad(usize, u8),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        30 => (0..4u64).prop_map(Event::Join),
        10 => (0..4u64).prop_map(Event::Leave),
        20 => (0..4u64).prop_map(Event::Beat),
        40 => ((0..4u64), (1..3u32)).prop_map(|(w, s)| Event::Lease(w, s)),
        40 => (0..64usize).prop_map(Event::Complete),
        20 => ((0..64usize), any::<bool>()).prop_map(|(i, r)| Event::Fail(i, r)),
        10 => (0..64usize).prop_map(Event::Release),
        // Ids past the planned ones hit added tasks (or none: an unknown id is ignored).
        10 => (0..TASKS + 12).prop_map(Event::Cancel),
        30 => (0..1500u64).prop_map(Event::Advance),
        30 => (0..300u64).prop_map(Event::Advance),
        60 => (0..64usize).prop_map(Event::CompleteLive),
        60 => (0..4usize).prop_map(Event::IdleLease),
        10 => Just(Event::Restart),
        20 => ((0..64usize), (0..4u64)).prop_map(|(i, w)| Event::Forge(i, w)),
        20 => ((0..4u64), any::<u8>(), (0..64usize), any::<bool>()).prop_map(|(w, m, i, seen)| Event::Reconcile(w, m, i, seen)),
        15 => prop::collection::vec((prop::collection::vec(0..64usize, 0..3), any::<bool>()), 1..4).prop_map(Event::Add),
        3 => ((0..64usize), any::<u8>()).prop_map(|(i, rule)| Event::AddBad(i, rule)),
        // Rare, or nearly every sequence would end cancelled.
        1 => Just(Event::CancelSweep),
    ]
}

const TASKS: u64 = 12;

/// Three layers: trains 0–3; heatmaps 4–7 on train `i % 4`; 8–11 on train `i % 4` and on
/// heatmap `i − 4` (a second level, so cascades and readiness go through two hops).
fn random_sweep() -> Vec<NewTask> {
    (0..TASKS)
        .map(|i| {
            let root = i % 4;
            let key = format!("task:{root}/checkpoint");
            let t = match i {
                0..4 => task(i, &[], 0, &[]),
                4..8 => task(i, &[root], 1, &[&key]),
                _ => task(i, &[root, i - 4], 2, &[&key]),
            };
            // A kind per layer, sizes 1–3 units within it.
            NewTask { cost: Cost { class: CostClass::new(&format!("layer{}", i / 4)), units: (1 + i % 3) as f64 }, ..t }
        })
        .collect()
}

/// What the store would hold: states replayed from transitions, plus failure counts.
struct ShadowStore {
    /// Every task: the planned ones, then those added (a driver stores them before it hands them
    /// to the core).
    plan: Vec<NewTask>,
    states: HashMap<TaskId, StateName>,
    failures: HashMap<TaskId, u32>,
    /// Largest attempt id handed out so far (the store's `max(attempt_id)`).
    max_attempt: u64,
    /// Attempts started and not yet closed since the last restart.
    open: HashSet<AttemptId>,
    coverage: Coverage,
}

/// What a sequence exercised (summed over all sequences, to check they reach the rare paths).
#[derive(Clone, Copy, Default)]
struct Coverage {
    /// Backup attempts started.
    backups: usize,
    /// Leases of added tasks.
    added_leased: usize,
    /// Finished sweeps that tasks added made unfinished.
    regrown: usize,
}

impl Coverage {
    fn plus(self, other: Coverage) -> Coverage {
        Coverage {
            backups: self.backups + other.backups,
            added_leased: self.added_leased + other.added_leased,
            regrown: self.regrown + other.regrown,
        }
    }
}

impl ShadowStore {
    /// The store of a new sweep. The constructor's Blocked → Ready changes are not transitions
    /// (the store inserts tasks as pending); mirror them like the store's reading of "pending".
    fn new(s: &Scheduler) -> Self {
        ShadowStore {
            plan: random_sweep(),
            states: s.tasks.iter().map(|(id, t)| (*id, t.state.name())).collect(),
            failures: HashMap::new(),
            max_attempt: 0,
            open: HashSet::new(),
            coverage: Coverage::default(),
        }
    }

    /// Apply one step's outputs, checking them against what the store knew before.
    fn apply(&mut self, s: &Scheduler, out: &[Output], live_before: &HashMap<AttemptId, (TaskId, WorkerId)>) {
        let mut started = HashMap::new();
        for o in out {
            match o {
                Output::Transition { task, from, to, attempt, worker } => {
                    let known = self.states[task];
                    assert_eq!(*from, known, "transition of {task:?} starts where the store left it");
                    assert!(!known.is_terminal(), "{task:?} left terminal state {known:?}");
                    assert_ne!(from, to, "a transition changes the state");
                    if *to == StateName::Running {
                        started
                            .insert(attempt.expect("a lease names its attempt"), (*task, worker.expect("and worker")));
                    }
                    if *from == StateName::Running {
                        let a = attempt.expect("leaving Running names the attempt that ends");
                        assert!(live_before.contains_key(&a) || started.contains_key(&a), "{a:?} was live");
                        assert!(self.open.remove(&a), "{a:?} closed once");
                    }
                    self.states.insert(*task, *to);
                    self.failures.insert(*task, s.failures(*task));
                }
                Output::Lease { worker, task, attempt } => {
                    assert_eq!(started.get(attempt), Some(&(*task, *worker)), "a lease follows its transition");
                    assert!(attempt.0 > self.max_attempt, "attempt ids only grow, across restarts too");
                    self.max_attempt = attempt.0;
                    self.coverage.added_leased += usize::from(task.0 >= TASKS);
                    self.open.insert(*attempt);
                }
                Output::Backup(b) => {
                    assert_eq!(self.states[&b.task], StateName::Running, "a backup races a running task");
                    let racing = live_before.get(&b.straggler).or_else(|| started.get(&b.straggler));
                    assert_eq!(racing, Some(&(b.task, b.straggler_worker)), "the straggler is live");
                    assert_ne!(b.worker, b.straggler_worker, "never on the straggler's worker");
                    started.insert(b.attempt, (b.task, b.worker));
                    self.coverage.backups += 1;
                }
                Output::AttemptEnded { task, attempt, worker, .. } => {
                    assert_eq!(live_before.get(attempt).or_else(|| started.get(attempt)), Some(&(*task, *worker)));
                    assert!(self.open.remove(attempt), "{attempt:?} closed once");
                }
                Output::Cancel { attempt, worker, .. } => {
                    let owner = live_before.get(attempt).or_else(|| started.get(attempt));
                    assert_eq!(owner.map(|o| o.1), Some(*worker), "a cancel names a live attempt and its worker");
                }
                Output::CancelStale { attempt, worker } => {
                    let owner = live_before.get(attempt).map(|o| o.1);
                    assert_ne!(owner, Some(*worker), "a stale cancel never names the worker's live attempt");
                }
                _ => {}
            }
        }
    }

    fn restore(&self) -> Scheduler {
        let stored = self
            .plan
            .iter()
            .cloned()
            .map(|t| {
                let state = match self.states[&t.id] {
                    StateName::Done => StoredState::Done,
                    StateName::Failed => StoredState::Failed,
                    StateName::Cancelled => StoredState::Cancelled,
                    _ => StoredState::Pending,
                };
                let failures = self.failures.get(&t.id).copied().unwrap_or(0);
                (t, state, failures)
            })
            .collect();
        Scheduler::restore(racing_config(), stored, self.max_attempt + 1)
    }

    /// Tasks added: stored as pending (Blocked, as the core enters them) before the core's
    /// transitions for them are replayed.
    fn add(&mut self, tasks: &[NewTask]) {
        for t in tasks {
            self.states.insert(t.id, StateName::Blocked);
            self.plan.push(t.clone());
        }
    }
}

fn check_invariants(s: &Scheduler, store: &ShadowStore, completed: &HashMap<TaskId, usize>) {
    let counted: usize = s.counts().values().sum();
    assert_eq!(counted, store.plan.len(), "no task lost or duplicated");
    assert_eq!(s.len(), store.plan.len(), "every task added is held");
    for (name, count) in s.counts() {
        let actual = s.tasks.values().filter(|t| t.state.name() == *name).count();
        assert_eq!(*count, actual, "count of {name:?}");
    }
    assert!(completed.values().all(|&n| n <= 1), "a task completed more than once");
    let deps: HashMap<TaskId, &[TaskId]> = store.plan.iter().map(|t| (t.id, t.deps.as_slice())).collect();
    for (id, t) in &s.tasks {
        assert_eq!(store.states[id], t.state.name(), "replaying transitions gives the core's state");
        if let State::Running { attempt, .. } = t.state {
            // Every live attempt of the task: on a live worker that lists the task, each on
            // a different worker, at most `max_backups` of them backups.
            let mut on = HashSet::new();
            for a in std::iter::once(attempt).chain(t.backups.iter().copied()) {
                let live = s.attempts.get(&a).expect("a running task's attempts are live");
                assert_eq!(live.task, *id);
                let w = s.workers.get(&live.worker).expect("a running task's worker is alive");
                assert!(w.running.contains(id));
                assert!(on.insert(live.worker), "two live attempts of {id:?} on {:?}", live.worker);
            }
            assert!(t.backups.len() as u32 <= t.speculated && t.speculated <= s.config.speculation.max_backups);
        } else {
            assert!(t.backups.is_empty(), "{id:?} keeps backups outside Running");
        }
        assert_eq!(t.queued.is_some(), t.state == State::Ready, "queued iff ready");
        if matches!(t.state, State::Ready | State::Running { .. } | State::Backoff { .. } | State::Done) {
            assert!(deps[id].iter().all(|d| s.tasks[d].state == State::Done), "{id:?} ran before its deps");
        }
        if t.state == State::Blocked {
            assert!(deps[id].iter().any(|d| s.tasks[d].state != State::Done), "{id:?} blocked with its deps done");
        }
        if !t.state.name().is_terminal() {
            let dead = |d: &&TaskId| matches!(s.tasks[*d].state, State::Failed | State::Cancelled);
            assert!(!deps[id].iter().any(|d| dead(&d)), "{id:?} waits on a dead dependency");
        }
        if matches!(t.state, State::Failed | State::Cancelled) {
            for d in &t.dependents {
                assert!(s.tasks[d].state.name().is_terminal(), "{d:?} waits on a dead {id:?}");
            }
        }
        if t.state.name() == StateName::Failed {
            // Failed only by its own attempts: a non-retryable failure or `max_attempts` of them.
            assert!(t.failures >= 1, "{id:?} failed without a failed attempt");
        }
        assert!(t.failures <= s.config.max_attempts, "{id:?} retried past the bound");
    }
    let running = s.counts().get(&StateName::Running).copied().unwrap_or(0);
    let backups: usize = s.tasks.values().map(|t| t.backups.len()).sum();
    assert_eq!(s.attempts.len(), running + backups, "live attempts: one per running task plus backups");
    let leased: usize = s.workers.values().map(|w| w.running.len()).sum();
    assert_eq!(leased, s.attempts.len(), "every live attempt is on exactly one worker");
    for (wid, w) in &s.workers {
        for task in &w.running {
            assert!(matches!(s.tasks[task].state, State::Running { .. }));
            assert_eq!(s.attempts.values().filter(|l| l.task == *task && l.worker == *wid).count(), 1);
        }
    }
    let live: HashSet<AttemptId> = s.attempts.keys().copied().collect();
    assert_eq!(store.open, live, "the store's open attempts are the live ones");
    assert_eq!(s.ready.len(), s.tasks.values().filter(|t| t.state == State::Ready).count());
    let backing_off = s.counts().get(&StateName::Backoff).copied().unwrap_or(0);
    assert_eq!(s.backoffs.len(), backing_off, "a timer per backoff");
    assert_eq!(s.worker_deadlines.len(), s.workers.len(), "a deadline per worker");
}

/// Speculation that fires often at the proptest's time scale, with two backups per task.
fn racing_config() -> SchedulerConfig {
    SchedulerConfig {
        // Workers outlive a few `Advance`s, so stragglers have time to straggle.
        lease_timeout: 4_000,
        speculation: SpeculationConfig { max_backups: 2, factor: 1.5, min_gain: 20, alpha: 0.5 },
        exclude_after: 2,
        ..config()
    }
}

fn live_attempts(s: &Scheduler) -> HashMap<AttemptId, (TaskId, WorkerId)> {
    s.attempts.keys().map(|&a| (a, s.attempt(a).expect("attempts index holds live attempts"))).collect()
}

/// Worker `w` lists the live attempts `mask` selects among its own, plus `extra` (maybe stale):
/// exactly the stale ones are cancelled, the unlisted ones it has seen are re-queued, the listed
/// live ones stay.
#[allow(clippy::too_many_arguments)]
fn reconcile(
    s: &mut Scheduler,
    now: Millis,
    w: WorkerId,
    mask: u8,
    extra: Option<AttemptId>,
    seen: bool,
    live_before: &HashMap<AttemptId, (TaskId, WorkerId)>,
    out: &mut Vec<Output>,
) -> Result<(), TestCaseError> {
    let mut mine: Vec<AttemptId> = live_before.iter().filter(|(_, (_, o))| *o == w).map(|(a, _)| *a).collect();
    mine.sort_unstable();
    let mut running: Vec<AttemptId> =
        mine.iter().enumerate().filter(|(k, _)| mask >> (k % 8) & 1 == 1).map(|(_, a)| *a).collect();
    running.extend(extra);
    let seen_up_to = if seen { AttemptId(u64::MAX) } else { AttemptId(0) };
    let input = Input::Reconcile { worker: w, running: running.clone(), seen_up_to };
    s.handle_into(now, input, out);
    for a in &running {
        let stale = live_before.get(a).is_none_or(|(_, o)| *o != w);
        let told = out.contains(&Output::CancelStale { worker: w, attempt: *a });
        let known = s.workers.contains_key(&w);
        prop_assert_eq!(told, stale && known, "exactly the stale attempts it lists are cancelled");
    }
    if seen && s.workers.contains_key(&w) {
        for a in mine.iter().filter(|a| !running.contains(a)) {
            prop_assert!(s.attempt(*a).is_none(), "an attempt its worker has seen and not listed is re-queued");
        }
    }
    for a in &running {
        if live_before.get(a).is_some_and(|(_, o)| *o == w) {
            prop_assert!(s.attempt(*a).is_some(), "a listed live attempt stays");
        }
    }
    Ok(())
}

/// The coordinator crashes and restarts from what the store holds.
fn restart(store: &mut ShadowStore) -> Scheduler {
    let s = store.restore();
    // Attempts live at the crash stay open in the store; none of them is live now.
    store.open.clear();
    // Restoring turns running/backoff tasks back into pending ones: the
    // store's reading of anything unfinished.
    for (id, t) in &s.tasks {
        let stored = store.states[id];
        if !stored.is_terminal() {
            store.states.insert(*id, if t.queued.is_some() { StateName::Ready } else { StateName::Blocked });
        }
    }
    s
}

/// An honest report that `attempt` completed (if there is one): accepted exactly when it is live.
fn complete(
    s: &mut Scheduler,
    now: Millis,
    attempt: Option<AttemptId>,
    completed: &mut HashMap<TaskId, usize>,
    out: &mut Vec<Output>,
) -> Result<(), TestCaseError> {
    let Some(a) = attempt else { return Ok(()) };
    let task = s.attempt(a).map(|(t, _)| t);
    let outputs = task.map(|t| vec![format!("task:{}/checkpoint", t.0)]).unwrap_or_default();
    s.handle_into(now, Input::Completed { attempt: a, by: owner(s, a), outputs }, out);
    let accepted = out.contains(&Output::Report { attempt: a, accepted: true });
    prop_assert_eq!(accepted, task.is_some(), "accepted exactly when the attempt was live");
    if let Some(task) = task.filter(|_| accepted) {
        *completed.entry(task).or_default() += 1;
    }
    Ok(())
}

/// The id a caller allocates next: above every task held.
fn next_id(store: &ShadowStore) -> u64 {
    store.plan.iter().map(|t| t.id.0 + 1).max().unwrap_or(0)
}

/// Add a batch, each task's dependencies picked among the tasks held and the batch's earlier
/// ones: always accepted, each task stored as pending before the core's transitions for it.
fn add(
    s: &mut Scheduler,
    now: Millis,
    store: &mut ShadowStore,
    batch: Vec<(Vec<usize>, bool)>,
    out: &mut Vec<Output>,
) -> Result<(), TestCaseError> {
    let mut candidates: Vec<TaskId> = store.plan.iter().map(|t| t.id).collect();
    let mut id = next_id(store);
    let mut tasks = Vec::new();
    for (picks, gap) in batch {
        id += u64::from(gap);
        let mut deps: Vec<TaskId> = picks.iter().map(|&i| candidates[i % candidates.len()]).collect();
        deps.dedup();
        let key = deps.first().map(|d| format!("task:{}/checkpoint", d.0));
        let t = task(id, &[], (id % 3) as u8, &key.iter().map(String::as_str).collect::<Vec<_>>());
        tasks.push(NewTask { deps, cost: Cost { class: CostClass::new("added"), units: 1.0 }, ..t });
        candidates.push(TaskId(id));
        id += 1;
    }
    let held = s.len();
    // The store holds the rows before the core's transitions for them come.
    store.add(&tasks);
    s.handle_into(now, Input::AddTasks { tasks: tasks.clone() }, out);
    prop_assert!(!out.iter().any(|o| matches!(o, Output::AddRefused { .. })), "refused: {:?}", out);
    prop_assert_eq!(s.len(), held + tasks.len());
    Ok(())
}

/// A valid task, then one that breaks a rule: the batch is refused whole, naming the second.
fn add_bad(
    s: &mut Scheduler,
    now: Millis,
    store: &ShadowStore,
    i: usize,
    rule: u8,
    out: &mut Vec<Output>,
) -> Result<(), TestCaseError> {
    let next = next_id(store);
    let (bad, refusal) = match rule % 3 {
        0 => {
            let taken = store.plan[i % store.plan.len()].id;
            (task(taken.0, &[], 0, &[]), AddRefusal::Exists)
        }
        1 => (task(next + 1, &[10_000], 0, &[]), AddRefusal::UnknownDependency { dep: TaskId(10_000) }),
        _ => (task(next + 1, &[next + 1], 0, &[]), AddRefusal::UnknownDependency { dep: TaskId(next + 1) }),
    };
    let held = s.len();
    let counts = s.counts().clone();
    s.handle_into(now, Input::AddTasks { tasks: vec![task(next, &[], 0, &[]), bad.clone()] }, out);
    let refused: Vec<&Output> = out.iter().filter(|o| matches!(o, Output::AddRefused { .. })).collect();
    prop_assert_eq!(refused, [&Output::AddRefused { task: bad.id, refusal }]);
    prop_assert_eq!(s.len(), held, "nothing of a refused batch is added");
    prop_assert!(s.state(TaskId(next)).is_none());
    // Deadlines due at `now` may still change states; without them the counts are as before.
    if !out.iter().any(|o| matches!(o, Output::Transition { .. })) {
        prop_assert_eq!(s.counts(), &counts);
    }
    Ok(())
}

/// `SweepFinished` comes exactly when the sweep turns finished: in the step that ends its last
/// task, once, and again after tasks added made it unfinished.
fn check_sweep_finished(s: &Scheduler, out: &[Output], announced: &mut bool) -> Result<(), TestCaseError> {
    let times = out.iter().filter(|o| **o == Output::SweepFinished).count();
    prop_assert!(times <= 1, "announced twice in one step");
    if times == 1 {
        prop_assert!(!*announced, "announced again while nothing was added");
        prop_assert!(s.is_finished(), "announced while unfinished");
        prop_assert_eq!(out.last(), Some(&Output::SweepFinished), "the step's last output");
        *announced = true;
    }
    if s.is_finished() {
        prop_assert!(*announced, "finished without SweepFinished: {:?}", out);
    } else {
        *announced = false;
    }
    Ok(())
}

/// Liveness: one worker that keeps working finishes the sweep.
fn finish_with_one_worker(s: &mut Scheduler, mut now: Millis) -> Result<(), TestCaseError> {
    s.handle(now, Input::WorkerJoined { worker: WorkerId(99), cached: vec![] });
    for _ in 0..200 {
        if s.is_finished() {
            break;
        }
        now += 1_000;
        // Leases come in reply to any input (a parked idle worker is given one at once).
        let mut out = s.handle(now, Input::Heartbeat { worker: WorkerId(99) });
        out.extend(s.handle(now, Input::LeaseRequest { worker: WorkerId(99), slots: 4 }));
        let mut mine: Vec<AttemptId> = Vec::new();
        loop {
            mine.extend(leases(&out).into_iter().map(|(_, a)| a).filter(|a| owner(s, *a) == WorkerId(99)));
            let Some(a) = mine.pop() else { break };
            out = s.handle(now, Input::Completed { attempt: a, by: WorkerId(99), outputs: vec![] });
        }
    }
    prop_assert!(s.is_finished(), "the sweep finishes: {:?}", s.counts());
    Ok(())
}

/// Run by hand rather than through `proptest!` so the test can also check, across all cases,
/// that the sequences did exercise backup attempts and a growing plan.
#[test]
fn random_event_sequences_keep_the_invariants() {
    let coverage = std::cell::Cell::new(Coverage::default());
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 400, ..ProptestConfig::default() });
    let result = runner.run(&prop::collection::vec(event(), 1..150), |events| {
        let mut s = Scheduler::new(racing_config(), random_sweep(), 1);
        let mut store = ShadowStore::new(&s);
        let mut now = 0;
        // Every attempt ever leased, so reports also come from stale ones.
        let mut leased: Vec<AttemptId> = Vec::new();
        let mut completed: HashMap<TaskId, usize> = HashMap::new();
        let mut out = Vec::new();
        // Whether `SweepFinished` came since the sweep last was unfinished (a restarted core
        // announces it again).
        let mut announced = false;
        for e in events {
            let live_before = live_attempts(&s);
            out.clear();
            let pick = |i: usize| (!leased.is_empty()).then(|| leased[i % leased.len()]);
            match e {
                Event::Join(w) => {
                    s.handle_into(now, Input::WorkerJoined { worker: WorkerId(w), cached: vec![] }, &mut out)
                }
                Event::Leave(w) => s.handle_into(now, Input::WorkerLeft { worker: WorkerId(w) }, &mut out),
                Event::Beat(w) => s.handle_into(now, Input::Heartbeat { worker: WorkerId(w) }, &mut out),
                Event::Lease(w, n) => {
                    s.handle_into(now, Input::LeaseRequest { worker: WorkerId(w), slots: n }, &mut out)
                }
                Event::IdleLease(i) => {
                    let mut idle: Vec<WorkerId> =
                        s.workers.iter().filter(|(_, w)| w.running.is_empty()).map(|(id, _)| *id).collect();
                    idle.sort_unstable();
                    if let Some(&w) = idle.get(i % idle.len().max(1)) {
                        s.handle_into(now, Input::LeaseRequest { worker: w, slots: 1 }, &mut out);
                    }
                }
                Event::Complete(i) => complete(&mut s, now, pick(i), &mut completed, &mut out)?,
                Event::CompleteLive(i) => {
                    let mut live: Vec<AttemptId> = s.attempts.keys().copied().collect();
                    live.sort_unstable();
                    let a = (!live.is_empty()).then(|| live[i % live.len()]);
                    complete(&mut s, now, a, &mut completed, &mut out)?
                }
                Event::Fail(i, r) => {
                    if let Some(a) = pick(i) {
                        s.handle_into(
                            now,
                            Input::Failed { attempt: a, by: owner(&s, a), error: "e".into(), retryable: r },
                            &mut out,
                        );
                    }
                }
                Event::Release(i) => {
                    if let Some(a) = pick(i) {
                        s.handle_into(now, Input::Released { attempt: a, by: owner(&s, a) }, &mut out);
                    }
                }
                Event::Cancel(t) => s.handle_into(now, Input::Cancel { task: TaskId(t), reason: "r".into() }, &mut out),
                Event::Forge(i, w) => {
                    if let Some(a) = pick(i) {
                        let holds = s.attempt(a).is_some_and(|(_, owner)| owner == WorkerId(w));
                        let task = s.attempt(a).map(|(t, _)| t);
                        s.handle_into(now, Input::Completed { attempt: a, by: WorkerId(w), outputs: vec![] }, &mut out);
                        let accepted = out.contains(&Output::Report { attempt: a, accepted: true });
                        prop_assert_eq!(accepted, holds, "a report is accepted only from the attempt's worker");
                        if accepted {
                            *completed.entry(task.unwrap()).or_default() += 1;
                        }
                    }
                }
                Event::Reconcile(w, mask, i, seen) => {
                    reconcile(&mut s, now, WorkerId(w), mask, pick(i), seen, &live_before, &mut out)?
                }
                Event::CancelSweep => s.handle_into(now, Input::CancelSweep { reason: "r".into() }, &mut out),
                Event::Advance(dt) => {
                    now += dt;
                    s.handle_into(now, Input::Tick, &mut out);
                }
                Event::Restart => {
                    s = restart(&mut store);
                    announced = false;
                    s.handle_into(now, Input::Tick, &mut out);
                }
                Event::Add(batch) => {
                    let was_finished = s.is_finished();
                    add(&mut s, now, &mut store, batch, &mut out)?;
                    store.coverage.regrown += usize::from(was_finished && !s.is_finished());
                }
                Event::AddBad(i, rule) => add_bad(&mut s, now, &store, i, rule, &mut out)?,
            }
            check_sweep_finished(&s, &out, &mut announced)?;
            store.apply(&s, &out, &live_before);
            for o in &out {
                if let Output::Lease { attempt, .. } = o {
                    leased.push(*attempt);
                }
            }
            check_invariants(&s, &store, &completed);
        }
        finish_with_one_worker(&mut s, now)?;
        coverage.set(coverage.get().plus(store.coverage));
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    let Coverage { backups, added_leased, regrown } = coverage.get();
    assert!(backups >= 20, "only {backups} backup attempts in all sequences");
    assert!(added_leased >= 100, "only {added_leased} leases of added tasks in all sequences");
    assert!(regrown >= 10, "only {regrown} finished sweeps grew in all sequences");
}
