//! The rules of the module documentation, one test each, through `handle` as a driver sees the
//! core; backups in `speculation`, random event sequences against the invariants in `random`.

use super::*;

fn task(id: u64, deps: &[u64], priority: u8, inputs: &[&str]) -> NewTask {
    NewTask {
        id: TaskId(id),
        deps: deps.iter().map(|&d| TaskId(d)).collect(),
        priority,
        inputs: inputs.iter().map(|s| s.to_string()).collect(),
        cost: Cost::default(),
    }
}

fn default_class() -> CostClass {
    Cost::default().class
}

pub(super) fn config() -> SchedulerConfig {
    SchedulerConfig {
        lease_timeout: 1_000,
        max_attempts: 3,
        backoff_base: 100,
        backoff_max: 1_000,
        idle_retry: 50,
        // Tests lease several tasks to one worker at once.
        max_leases_per_worker: 16,
        reconcile_grace: 500,
        // Off for the rule tests; its own test and the random sequences turn it on.
        exclude_after: 0,
        speculation: SpeculationConfig::default(),
    }
}

#[test]
fn a_worker_that_fails_every_task_is_excluded_for_a_while_and_a_completion_ends_it() {
    let mut c = config();
    c.exclude_after = 2;
    let tasks: Vec<NewTask> = (1..=6).map(|i| task(i, &[], 0, &[])).collect();
    let mut s = Scheduler::new(c, tasks, 1);
    join(&mut s, 0, 1);
    join(&mut s, 0, 2);
    let fail = |s: &mut Scheduler, now, a| {
        s.handle(now, Input::Failed { attempt: a, by: WorkerId(1), error: "disk full".into(), retryable: true })
    };
    let (_, a) = lease_one(&mut s, 1, 1).unwrap();
    assert!(!fail(&mut s, 2, a).iter().any(|o| matches!(o, Output::WorkerExcluded { .. })), "one failure is luck");
    let (_, a) = lease_one(&mut s, 3, 1).unwrap();
    let out = fail(&mut s, 4, a);
    assert!(out.contains(&Output::WorkerExcluded { worker: WorkerId(1), failures: 2, for_ms: 100 }), "{out:?}");
    let out = s.handle(50, Input::LeaseRequest { worker: WorkerId(1), slots: 1 });
    assert_eq!(out, vec![Output::NoWork { worker: WorkerId(1), retry_after: 54 }], "excluded until 104");
    assert!(lease_one(&mut s, 50, 2).is_some(), "the other worker is not");
    // After the pause it may try again; a completion ends the run of failures.
    let (_, a) = lease_one(&mut s, 104, 1).unwrap();
    s.handle(105, Input::Completed { attempt: a, by: WorkerId(1), outputs: vec![] });
    let (_, a) = lease_one(&mut s, 106, 1).unwrap();
    assert!(!fail(&mut s, 107, a).iter().any(|o| matches!(o, Output::WorkerExcluded { .. })));
}

fn leases(out: &[Output]) -> Vec<(TaskId, AttemptId)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Lease { task, attempt, .. } => Some((*task, *attempt)),
            _ => None,
        })
        .collect()
}

fn lease_one(s: &mut Scheduler, now: Millis, worker: u64) -> Option<(TaskId, AttemptId)> {
    leases(&s.handle(now, Input::LeaseRequest { worker: WorkerId(worker), slots: 1 })).first().copied()
}

/// The worker holding `attempt` (the sender of an honest report); nobody's for a dead attempt.
fn owner(s: &Scheduler, attempt: AttemptId) -> WorkerId {
    s.attempt(attempt).map_or(WorkerId(u64::MAX), |(_, w)| w)
}

fn join(s: &mut Scheduler, now: Millis, worker: u64) {
    s.handle(now, Input::WorkerJoined { worker: WorkerId(worker), cached: vec![] });
}

#[test]
fn a_report_is_accepted_only_from_the_worker_that_holds_the_attempt() {
    let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[])], 1);
    join(&mut s, 0, 1);
    join(&mut s, 0, 2);
    let (t, a) = lease_one(&mut s, 0, 1).unwrap();
    for forged in [
        Input::Completed { attempt: a, by: WorkerId(2), outputs: vec![] },
        Input::Failed { attempt: a, by: WorkerId(2), error: "forged".into(), retryable: false },
        Input::Released { attempt: a, by: WorkerId(2) },
    ] {
        let out = s.handle(1, forged);
        assert_eq!(out, vec![Output::Report { attempt: a, accepted: false }], "another session's report is refused");
    }
    assert_eq!(s.state(t), Some(StateName::Running));
    assert_eq!(s.attempt(a), Some((t, WorkerId(1))), "the owner keeps its attempt");
    let out = s.handle(2, Input::Completed { attempt: a, by: WorkerId(1), outputs: vec![] });
    assert!(out.contains(&Output::Report { attempt: a, accepted: true }));
}

#[test]
fn lease_requests_are_capped_per_worker() {
    let tasks: Vec<NewTask> = (1..=10).map(|i| task(i, &[], 0, &[])).collect();
    let mut s = Scheduler::new(SchedulerConfig { max_leases_per_worker: 2, ..config() }, tasks, 1);
    join(&mut s, 0, 1);
    let out = s.handle(0, Input::LeaseRequest { worker: WorkerId(1), slots: u32::MAX });
    assert_eq!(leases(&out).len(), 2, "a greedy client gets at most its cap");
    let out = s.handle(0, Input::LeaseRequest { worker: WorkerId(1), slots: 5 });
    assert!(leases(&out).is_empty() && matches!(out[..], [Output::NoWork { .. }]), "{out:?}");
    assert_eq!(s.counts()[&StateName::Ready], 8, "the rest stays for other workers");
    assert_eq!(SchedulerConfig::default().max_leases_per_worker, 1, "one task per worker (one GPU) by default");
}

#[test]
fn heartbeats_reconcile_what_the_worker_runs_with_what_the_core_thinks() {
    let tasks: Vec<NewTask> = (1..=3).map(|i| task(i, &[], 0, &[])).collect();
    let mut s = Scheduler::new(config(), tasks, 1);
    join(&mut s, 0, 1);
    let (t1, a1) = lease_one(&mut s, 0, 1).unwrap();
    let (t2, a2) = lease_one(&mut s, 0, 1).unwrap();
    // The worker lists a1 only; a2's lease may still be on its way (not seen, within grace).
    let out = s.handle(100, Input::Reconcile { worker: WorkerId(1), running: vec![a1], seen_up_to: a1 });
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(s.attempt(a2), Some((t2, WorkerId(1))));
    // Past the grace period a lease the worker never listed is taken as lost and re-queued.
    let out = s.handle(600, Input::Reconcile { worker: WorkerId(1), running: vec![a1], seen_up_to: a1 });
    assert!(out.contains(&Output::Transition {
        task: t2,
        from: StateName::Running,
        to: StateName::Ready,
        attempt: Some(a2),
        worker: Some(WorkerId(1)),
    }));
    assert_eq!(s.failures(t2), 0, "a lost lease is not the task's failure");
    // A worker that has seen a lease and does not list it lost it (no grace needed).
    let (_, a3) = lease_one(&mut s, 700, 1).unwrap();
    s.handle(701, Input::Reconcile { worker: WorkerId(1), running: vec![a1], seen_up_to: a3 });
    assert_eq!(s.attempt(a3), None);
    // It still runs a1 and a2, which the core ended: a2 is stale and gets a cancel.
    let out = s.handle(800, Input::Reconcile { worker: WorkerId(1), running: vec![a1, a2], seen_up_to: a3 });
    assert_eq!(out, vec![Output::CancelStale { worker: WorkerId(1), attempt: a2 }]);
    assert_eq!(s.attempt(a1), Some((t1, WorkerId(1))));
    // An expired (paused) worker lists its attempt after it resumed: nothing is accepted from
    // it until it joins again, and its attempt was re-queued at the expiry.
    s.handle(5_000, Input::Tick);
    assert!(s.workers().next().is_none(), "expired");
    assert_eq!(s.state(t1), Some(StateName::Ready));
    let out = s.handle(5_001, Input::Reconcile { worker: WorkerId(1), running: vec![a1], seen_up_to: a3 });
    assert!(out.is_empty(), "an unknown worker is the driver's business (it closes the session)");
}

#[test]
fn dependencies_gate_readiness_and_the_sweep_finishes_once() {
    let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[]), task(2, &[1], 1, &[])], 1);
    assert_eq!(s.state(TaskId(2)), Some(StateName::Blocked));
    join(&mut s, 0, 1);
    let (t, a) = lease_one(&mut s, 0, 1).unwrap();
    assert_eq!(t, TaskId(1));
    assert_eq!(lease_one(&mut s, 0, 1), None, "task 2 waits for task 1");
    let out = s.handle(5, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
    assert!(out.contains(&Output::Report { attempt: a, accepted: true }));
    assert_eq!(s.state(TaskId(2)), Some(StateName::Ready));
    let (t2, a2) = lease_one(&mut s, 6, 1).unwrap();
    assert_eq!(t2, TaskId(2));
    let out = s.handle(7, Input::Completed { attempt: a2, by: owner(&s, a2), outputs: vec![] });
    assert!(out.contains(&Output::SweepFinished));
    assert!(!s.handle(8, Input::Tick).contains(&Output::SweepFinished), "announced once");
}

#[test]
fn stale_and_duplicate_reports_change_nothing() {
    let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[])], 10);
    join(&mut s, 0, 1);
    let (_, a) = lease_one(&mut s, 0, 1).unwrap();
    assert_eq!(a, AttemptId(10), "attempt ids start where the store left off");
    s.handle(1, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
    let again = s.handle(2, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
    assert_eq!(again, vec![Output::Report { attempt: a, accepted: false }]);
    let late = s.handle(2, Input::Failed { attempt: a, by: owner(&s, a), error: "x".into(), retryable: true });
    assert_eq!(late, vec![Output::Report { attempt: a, accepted: false }]);
    assert_eq!(s.state(TaskId(1)), Some(StateName::Done));
}

#[test]
fn a_silent_worker_expires_and_its_task_goes_back_to_the_front() {
    let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[]), task(2, &[], 0, &[])], 1);
    join(&mut s, 0, 1);
    join(&mut s, 0, 2);
    let (t, a) = lease_one(&mut s, 0, 1).unwrap();
    assert_eq!(s.next_deadline(), Some(1_000));
    s.handle(900, Input::Heartbeat { worker: WorkerId(2) });
    let out = s.handle(1_000, Input::Tick);
    assert!(out.contains(&Output::WorkerExpired { worker: WorkerId(1) }));
    assert_eq!(s.state(t), Some(StateName::Ready));
    let died = Output::DiedRunning { task: t, attempt: a, worker: WorkerId(1), times: 1, failed: false };
    assert!(out.contains(&died), "{out:?}");
    assert_eq!(s.failures(t), 1, "an attempt whose worker died counts");
    let (again, a2) = lease_one(&mut s, 1_001, 2).unwrap();
    assert_eq!(again, t, "the orphaned task is re-leased before the untouched one");
    assert_ne!(a, a2);
    let late = s.handle(1_002, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
    assert_eq!(late, vec![Output::Report { attempt: a, accepted: false }], "the old attempt is stale");
}

#[test]
fn a_task_that_kills_every_worker_fails_after_max_attempts_and_cancels_dependents() {
    let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[]), task(2, &[1], 0, &[])], 1);
    for w in 1..=3 {
        join(&mut s, w * 10, w);
        let (t, a) = lease_one(&mut s, w * 10, w).unwrap();
        assert_eq!(t, TaskId(1));
        // Killed: the stream closes (left) or the process restarts (joins again).
        let out = if w == 2 {
            s.handle(w * 10 + 1, Input::WorkerJoined { worker: WorkerId(w), cached: vec![] })
        } else {
            s.handle(w * 10 + 1, Input::WorkerLeft { worker: WorkerId(w) })
        };
        let failed = w == 3;
        let died = Output::DiedRunning { task: t, attempt: a, worker: WorkerId(w), times: w as u32, failed };
        assert!(out.contains(&died), "{out:?}");
        let expected = if failed { StateName::Failed } else { StateName::Ready };
        assert_eq!(s.state(t), Some(expected));
    }
    assert_eq!(s.state(TaskId(2)), Some(StateName::Cancelled));
    assert!(s.is_finished());
}

#[test]
fn a_lost_lease_and_a_release_do_not_count() {
    let mut c = config();
    c.max_attempts = 1;
    let mut s = Scheduler::new(c, vec![task(1, &[], 0, &[])], 1);
    join(&mut s, 0, 1);
    let (t, a) = lease_one(&mut s, 0, 1).unwrap();
    s.handle(1, Input::Released { attempt: a, by: WorkerId(1) });
    let (_, a) = lease_one(&mut s, 2, 1).unwrap();
    s.handle(3, Input::Reconcile { worker: WorkerId(1), running: vec![], seen_up_to: a });
    assert_eq!((s.state(t), s.failures(t)), (Some(StateName::Ready), 0));
}

#[test]
fn retryable_failures_back_off_then_fail_after_max_attempts_and_cancel_dependents() {
    let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[]), task(2, &[1], 0, &[]), task(3, &[2], 0, &[])], 1);
    join(&mut s, 0, 1);
    let mut now = 0;
    let mut pushed = None;
    for k in 1..=3u32 {
        let (t, a) = pushed.take().or_else(|| lease_one(&mut s, now, 1)).unwrap();
        assert_eq!(t, TaskId(1));
        s.handle(now, Input::Failed { attempt: a, by: owner(&s, a), error: "oom".into(), retryable: true });
        if k < 3 {
            assert_eq!(s.state(t), Some(StateName::Backoff));
            let wait = 100 << (k - 1);
            assert_eq!(lease_one(&mut s, now + wait - 1, 1), None, "still backing off");
            assert_eq!(s.next_deadline().map(|d| d.min(now + wait)), Some(now + wait));
            now += wait;
            // Ready again, and the worker told NoWork meanwhile is idle: leased at once.
            pushed = leases(&s.handle(now, Input::Tick)).first().copied();
            assert_eq!(s.state(t), Some(StateName::Running));
            assert!(pushed.is_some());
        }
    }
    assert_eq!(s.state(TaskId(1)), Some(StateName::Failed));
    assert_eq!(s.state(TaskId(2)), Some(StateName::Cancelled));
    assert_eq!(s.state(TaskId(3)), Some(StateName::Cancelled));
    assert!(s.is_finished());
}

#[test]
fn a_non_retryable_failure_fails_at_once() {
    let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[])], 1);
    join(&mut s, 0, 1);
    let (_, a) = lease_one(&mut s, 0, 1).unwrap();
    let out = s.handle(1, Input::Failed { attempt: a, by: owner(&s, a), error: "NaN loss".into(), retryable: false });
    assert_eq!(s.state(TaskId(1)), Some(StateName::Failed));
    assert!(out.contains(&Output::SweepFinished));
}

#[test]
fn release_and_worker_leave_requeue_without_counting_a_failure() {
    let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[]), task(2, &[], 0, &[])], 1);
    join(&mut s, 0, 1);
    let (t, a) = lease_one(&mut s, 0, 1).unwrap();
    s.handle(1, Input::Released { attempt: a, by: owner(&s, a) });
    assert_eq!((s.state(t), s.failures(t)), (Some(StateName::Ready), 0));
    let (t2, _) = lease_one(&mut s, 2, 1).unwrap();
    assert_eq!(t2, t, "released work goes first");
    s.handle(3, Input::WorkerLeft { worker: WorkerId(1) });
    assert_eq!(s.state(t), Some(StateName::Ready));
    assert!(s.running_on(WorkerId(1)).is_empty());
}

#[test]
fn locality_prefers_the_worker_that_holds_the_input() {
    let tasks = vec![
        task(1, &[], 0, &[]),
        task(2, &[], 0, &[]),
        task(10, &[1], 1, &["task:1/checkpoint"]),
        task(20, &[2], 1, &["task:2/checkpoint"]),
    ];
    let mut s = Scheduler::new(config(), tasks, 1);
    join(&mut s, 0, 1);
    join(&mut s, 0, 2);
    let (t1, a1) = lease_one(&mut s, 0, 1).unwrap();
    let (t2, a2) = lease_one(&mut s, 0, 2).unwrap();
    assert_eq!((t1, t2), (TaskId(1), TaskId(2)));
    s.handle(1, Input::Completed { attempt: a1, by: owner(&s, a1), outputs: vec!["task:1/checkpoint".into()] });
    s.handle(1, Input::Completed { attempt: a2, by: owner(&s, a2), outputs: vec!["task:2/checkpoint".into()] });
    // FIFO would hand task 10 to whoever asks first; locality gives each worker its own.
    assert_eq!(lease_one(&mut s, 2, 2).unwrap().0, TaskId(20));
    assert_eq!(lease_one(&mut s, 2, 1).unwrap().0, TaskId(10));
}

#[test]
fn priority_orders_ready_tasks_and_cancel_stops_the_live_attempt() {
    let mut s = Scheduler::new(config(), vec![task(1, &[], 2, &[]), task(2, &[], 0, &[])], 1);
    join(&mut s, 0, 1);
    let (t, a) = lease_one(&mut s, 0, 1).unwrap();
    assert_eq!(t, TaskId(2), "lower priority value first");
    let out = s.handle(1, Input::Cancel { task: t, reason: "user".into() });
    assert!(out.contains(&Output::Cancel { worker: WorkerId(1), attempt: a, reason: "user".into() }));
    assert_eq!(s.state(t), Some(StateName::Cancelled));
    let late = s.handle(2, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
    assert_eq!(late, vec![Output::Report { attempt: a, accepted: false }]);
}

#[test]
fn restore_keeps_finished_work_and_requeues_the_rest() {
    let stored = vec![
        (task(1, &[], 0, &[]), StoredState::Done, 1),
        (task(2, &[1], 1, &[]), StoredState::Pending, 1),
        (task(3, &[2], 2, &[]), StoredState::Pending, 0),
        (task(4, &[], 0, &[]), StoredState::Failed, 3),
        (task(5, &[4], 1, &[]), StoredState::Pending, 0),
    ];
    let mut s = Scheduler::restore(config(), stored, 42);
    assert_eq!(s.state(TaskId(1)), Some(StateName::Done));
    assert_eq!(s.state(TaskId(2)), Some(StateName::Ready));
    assert_eq!(s.state(TaskId(3)), Some(StateName::Blocked));
    assert_eq!(s.state(TaskId(5)), Some(StateName::Cancelled), "behind a failed task");
    assert_eq!(s.failures(TaskId(2)), 1, "failure counts survive a restart");
    join(&mut s, 0, 1);
    assert_eq!(lease_one(&mut s, 0, 1), Some((TaskId(2), AttemptId(42))));
}

#[test]
fn a_hundred_thousand_tasks_lease_and_complete() {
    let tasks: Vec<NewTask> = (0..100_000).map(|i| task(i, &[], (i % 3) as u8, &[])).collect();
    let mut s = Scheduler::new(config(), tasks, 1);
    join(&mut s, 0, 1);
    let mut done = 0;
    while let Some((_, a)) = lease_one(&mut s, 1, 1) {
        s.handle(1, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
        done += 1;
    }
    assert_eq!(done, 100_000);
    assert!(s.is_finished());
}

fn transitions(out: &[Output]) -> Vec<(TaskId, StateName, StateName, Option<AttemptId>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Transition { task, from, to, attempt, .. } => Some((*task, *from, *to, *attempt)),
            _ => None,
        })
        .collect()
}

#[test]
fn cancelling_a_running_task_names_its_attempt_and_cancels_dependents() {
    let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[]), task(2, &[1], 0, &[])], 1);
    join(&mut s, 0, 1);
    let (_, a) = lease_one(&mut s, 0, 1).unwrap();
    let out = s.handle(1, Input::Cancel { task: TaskId(1), reason: "user".into() });
    // The store closes an attempt only when the transition out of Running names it.
    assert_eq!(
        transitions(&out),
        vec![
            (TaskId(1), StateName::Running, StateName::Cancelled, Some(a)),
            (TaskId(2), StateName::Blocked, StateName::Cancelled, None),
        ]
    );
    assert!(s.running_on(WorkerId(1)).is_empty());
    assert!(out.contains(&Output::SweepFinished));
    let again = s.handle(2, Input::Cancel { task: TaskId(1), reason: "user".into() });
    assert!(transitions(&again).is_empty(), "cancelling a cancelled task changes nothing");
}

/// Tasks whose input their running dependency already produced (an epoch checkpoint) start
/// while it runs; its completion does not count them twice, and its failure cancels only
/// the dependents still waiting for it.
#[test]
fn dependencies_satisfied_early_start_their_tasks_and_survive_a_failure() {
    let tasks = vec![task(1, &[], 0, &[]), task(2, &[1], 1, &[]), task(3, &[1], 1, &[]), task(4, &[1], 1, &[])];
    let mut s = Scheduler::new(config(), tasks, 1);
    join(&mut s, 0, 1);
    join(&mut s, 0, 2);
    let (train, a) = lease_one(&mut s, 0, 1).unwrap();
    assert_eq!(train, TaskId(1));
    assert_eq!(lease_one(&mut s, 1, 2), None, "the dependents wait");
    // A satisfaction for a task that does not depend on it, or an unknown one, changes nothing.
    let out = s.handle(2, Input::DepsSatisfied { dep: TaskId(2), tasks: vec![TaskId(3), TaskId(99)] });
    assert!(transitions(&out).is_empty(), "{out:?}");
    let out = s.handle(2, Input::DepsSatisfied { dep: TaskId(1), tasks: vec![TaskId(2), TaskId(3)] });
    // Worker 2 was told NoWork and is idle: it gets the first of them at once.
    let (early, b) = leases(&out)[0];
    assert_eq!(
        transitions(&out),
        vec![
            (TaskId(2), StateName::Blocked, StateName::Ready, None),
            (TaskId(3), StateName::Blocked, StateName::Ready, None),
            (TaskId(2), StateName::Ready, StateName::Running, Some(b)),
        ]
    );
    assert_eq!(early, TaskId(2), "started while its dependency runs");
    s.handle(4, Input::Completed { attempt: b, by: WorkerId(2), outputs: vec![] });
    // Twice is once.
    assert!(transitions(&s.handle(5, Input::DepsSatisfied { dep: TaskId(1), tasks: vec![TaskId(3)] })).is_empty());
    let out = s.handle(6, Input::Failed { attempt: a, by: WorkerId(1), error: "nan".into(), retryable: false });
    let ends: Vec<_> = transitions(&out).into_iter().map(|(t, _, to, _)| (t, to)).collect();
    assert!(ends.contains(&(TaskId(1), StateName::Failed)) && ends.contains(&(TaskId(4), StateName::Cancelled)));
    assert!(!ends.iter().any(|(t, _)| *t == TaskId(3)), "task 3 had its input: {ends:?}");
    assert_eq!(s.state(TaskId(3)), Some(StateName::Ready));
    assert_eq!(s.state(TaskId(2)), Some(StateName::Done));

    // A satisfied task is not made ready again by the completion.
    let tasks = vec![task(1, &[], 0, &[]), task(2, &[1], 1, &[])];
    let mut s = Scheduler::new(config(), tasks, 1);
    join(&mut s, 0, 1);
    let (_, a) = lease_one(&mut s, 0, 1).unwrap();
    s.handle(1, Input::DepsSatisfied { dep: TaskId(1), tasks: vec![TaskId(2)] });
    let out = s.handle(2, Input::Completed { attempt: a, by: WorkerId(1), outputs: vec![] });
    assert_eq!(transitions(&out), vec![(TaskId(1), StateName::Running, StateName::Done, Some(a))]);
}

#[test]
fn cancelling_the_sweep_stops_every_live_attempt_and_keeps_finished_work() {
    let tasks = (1..=5).map(|i| task(i, &[], 0, &[])).collect();
    let mut s = Scheduler::new(config(), tasks, 1);
    join(&mut s, 0, 1);
    join(&mut s, 0, 2);
    let (done, a_done) = lease_one(&mut s, 0, 1).unwrap();
    s.handle(0, Input::Completed { attempt: a_done, by: owner(&s, a_done), outputs: vec![] });
    let (_, a1) = lease_one(&mut s, 0, 1).unwrap();
    let (_, a2) = lease_one(&mut s, 0, 2).unwrap();
    let (backing_off, a3) = lease_one(&mut s, 0, 2).unwrap();
    s.handle(0, Input::Failed { attempt: a3, by: owner(&s, a3), error: "oom".into(), retryable: true });
    assert_eq!(s.state(backing_off), Some(StateName::Backoff));
    let out = s.handle(1, Input::CancelSweep { reason: "user".into() });
    let cancels: Vec<_> = out.iter().filter(|o| matches!(o, Output::Cancel { .. })).collect();
    assert_eq!(cancels.len(), 2);
    assert!(out.contains(&Output::Cancel { worker: WorkerId(1), attempt: a1, reason: "user".into() }));
    assert!(out.contains(&Output::Cancel { worker: WorkerId(2), attempt: a2, reason: "user".into() }));
    assert_eq!(s.state(done), Some(StateName::Done));
    assert_eq!(s.counts().get(&StateName::Cancelled), Some(&4));
    assert_eq!(s.next_deadline(), Some(1_000), "the backoff timer is gone; only liveness remains");
    assert!(out.contains(&Output::SweepFinished));
}

#[test]
fn one_task_never_has_two_live_attempts() {
    let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[])], 1);
    join(&mut s, 0, 1);
    join(&mut s, 0, 2);
    let out = s.handle(0, Input::LeaseRequest { worker: WorkerId(1), slots: 4 });
    assert_eq!(leases(&out).len(), 1, "four slots, one task: one lease");
    let out = s.handle(0, Input::LeaseRequest { worker: WorkerId(2), slots: 4 });
    assert_eq!(out, vec![Output::NoWork { worker: WorkerId(2), retry_after: 50 }]);
    let mut s = Scheduler::new(config(), (1..=3).map(|i| task(i, &[], 0, &[])).collect(), 1);
    join(&mut s, 0, 1);
    let mut got: Vec<TaskId> =
        leases(&s.handle(0, Input::LeaseRequest { worker: WorkerId(1), slots: 3 })).iter().map(|l| l.0).collect();
    got.sort();
    assert_eq!(got, vec![TaskId(1), TaskId(2), TaskId(3)]);
}

#[test]
fn heartbeats_keep_a_busy_worker_alive_and_silence_expires_it_exactly_at_the_deadline() {
    let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[])], 1);
    join(&mut s, 0, 1);
    let (t, _) = lease_one(&mut s, 0, 1).unwrap();
    let mut now = 0;
    for _ in 0..20 {
        now += 900;
        s.handle(now, Input::Heartbeat { worker: WorkerId(1) });
        assert!(!s.handle(now, Input::Tick).contains(&Output::WorkerExpired { worker: WorkerId(1) }));
    }
    assert_eq!(s.state(t), Some(StateName::Running), "a long task survives on heartbeats alone");
    assert_eq!(s.next_deadline(), Some(now + 1_000));
    assert!(s.handle(now + 999, Input::Tick).is_empty());
    let out = s.handle(now + 1_000, Input::Tick);
    assert_eq!(out[0], Output::WorkerExpired { worker: WorkerId(1) });
    assert_eq!(s.state(t), Some(StateName::Ready));
    assert_eq!(s.workers().count(), 0);
}

#[test]
fn a_report_that_beats_the_expiry_timer_is_accepted() {
    let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[])], 1);
    join(&mut s, 0, 1);
    let (t, a) = lease_one(&mut s, 0, 1).unwrap();
    // The deadline (1000) passed, but no Tick ran: the message itself proves the worker alive.
    let out = s.handle(1_500, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
    assert!(out.contains(&Output::Report { attempt: a, accepted: true }));
    assert!(!out.contains(&Output::WorkerExpired { worker: WorkerId(1) }));
    assert_eq!(s.state(t), Some(StateName::Done));
}

#[test]
fn an_expired_or_unknown_worker_gets_no_lease_until_it_joins_again() {
    let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[])], 1);
    assert!(s.handle(0, Input::LeaseRequest { worker: WorkerId(7), slots: 1 }).is_empty());
    join(&mut s, 0, 7);
    s.handle(1_000, Input::Tick);
    assert!(s.handle(1_001, Input::LeaseRequest { worker: WorkerId(7), slots: 1 }).is_empty());
    assert!(s.handle(1_001, Input::Heartbeat { worker: WorkerId(7) }).is_empty(), "no resurrection");
    assert_eq!(s.state(TaskId(1)), Some(StateName::Ready));
    join(&mut s, 1_002, 7);
    assert_eq!(lease_one(&mut s, 1_002, 7).map(|l| l.0), Some(TaskId(1)));
}

#[test]
fn a_worker_joining_again_orphans_its_old_attempts() {
    let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[])], 1);
    join(&mut s, 0, 1);
    let (t, a) = lease_one(&mut s, 0, 1).unwrap();
    s.handle(10, Input::WorkerJoined { worker: WorkerId(1), cached: vec![] });
    assert_eq!((s.state(t), s.failures(t)), (Some(StateName::Ready), 1), "a restarted worker lost it");
    assert!(s.running_on(WorkerId(1)).is_empty());
    let late = s.handle(11, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
    assert_eq!(late, vec![Output::Report { attempt: a, accepted: false }]);
    let (again, a2) = lease_one(&mut s, 12, 1).unwrap();
    assert_eq!(again, t);
    assert!(a2 > a);
}

#[test]
fn cached_inputs_given_at_join_count_for_locality() {
    let stored = vec![
        (task(1, &[], 0, &[]), StoredState::Done, 0),
        (task(2, &[], 0, &[]), StoredState::Done, 0),
        (task(10, &[1], 1, &["task:1/checkpoint"]), StoredState::Pending, 0),
        (task(20, &[2], 1, &["task:2/checkpoint"]), StoredState::Pending, 0),
    ];
    let mut s = Scheduler::restore(config(), stored, 1);
    s.handle(0, Input::WorkerJoined { worker: WorkerId(1), cached: vec!["task:2/checkpoint".into()] });
    assert_eq!(lease_one(&mut s, 0, 1).map(|l| l.0), Some(TaskId(20)), "not the FIFO head, task 10");
}

/// A worker that downloaded a lease's input holds it: the next task on that input prefers it
/// over the queue's head.
#[test]
fn inputs_a_worker_downloaded_for_a_lease_count_for_locality() {
    let stored = vec![
        (task(1, &[], 0, &[]), StoredState::Done, 0),
        (task(2, &[], 0, &[]), StoredState::Done, 0),
        (task(10, &[1], 1, &["task:1/checkpoint"]), StoredState::Pending, 0),
        (task(20, &[2], 1, &["task:2/checkpoint"]), StoredState::Pending, 0),
        (task(21, &[2], 1, &["task:2/checkpoint"]), StoredState::Pending, 0),
    ];
    let mut s = Scheduler::restore(config(), stored, 1);
    join(&mut s, 0, 1);
    join(&mut s, 0, 2);
    assert_eq!(lease_one(&mut s, 0, 1).map(|l| l.0), Some(TaskId(10)), "the FIFO head");
    let (t, a) = lease_one(&mut s, 0, 2).unwrap();
    assert_eq!(t, TaskId(20));
    s.handle(1, Input::Completed { attempt: a, by: WorkerId(2), outputs: vec![] });
    // Worker 1 is busy; worker 2 fetched task 2's checkpoint for task 20: task 21 is its.
    assert_eq!(lease_one(&mut s, 1, 2).map(|l| l.0), Some(TaskId(21)));
}

/// An idle worker told `NoWork` while work is still to come is given the next task that turns
/// ready in the same step (no wait for its retry); a busy or departed one is not.
#[test]
fn an_idle_worker_told_no_work_gets_the_next_ready_task_at_once() {
    let tasks = vec![task(1, &[], 0, &[]), task(2, &[1], 1, &[]), task(3, &[1], 1, &[]), task(4, &[1], 1, &[])];
    let mut s = Scheduler::new(config(), tasks, 1);
    for w in 1..=4 {
        join(&mut s, 0, w);
    }
    let (_, a) = lease_one(&mut s, 0, 1).unwrap();
    for w in 2..=4 {
        assert_eq!(lease_one(&mut s, 0, w), None, "nothing ready yet");
    }
    s.handle(0, Input::WorkerLeft { worker: WorkerId(4) });
    let out = s.handle(1, Input::Completed { attempt: a, by: WorkerId(1), outputs: vec![] });
    let pushed: Vec<(WorkerId, TaskId)> = out
        .iter()
        .filter_map(|o| match o {
            Output::Lease { worker, task, .. } => Some((*worker, *task)),
            _ => None,
        })
        .collect();
    assert_eq!(pushed, vec![(WorkerId(2), TaskId(2)), (WorkerId(3), TaskId(3))], "worker 4 left; worker 1 did not ask");
    assert_eq!(s.state(TaskId(4)), Some(StateName::Ready), "left for the next request");
    // Parked once, leased once: another completion pushes nothing more to them.
    assert!(leases(&s.handle(2, Input::Heartbeat { worker: WorkerId(2) })).is_empty());
}

#[test]
fn restore_reports_cascaded_cancellations_once() {
    let stored = vec![
        (task(1, &[], 0, &[]), StoredState::Failed, 3),
        (task(2, &[1], 0, &[]), StoredState::Pending, 0),
        (task(3, &[2], 0, &[]), StoredState::Pending, 0),
    ];
    let mut s = Scheduler::restore(config(), stored, 1);
    assert!(s.is_finished());
    let mut out = Vec::new();
    s.handle_into(0, Input::Tick, &mut out);
    let mut changed = transitions(&out);
    changed.sort();
    assert_eq!(
        changed,
        vec![
            (TaskId(2), StateName::Blocked, StateName::Cancelled, None),
            (TaskId(3), StateName::Blocked, StateName::Cancelled, None),
        ]
    );
    assert_eq!(out.last(), Some(&Output::SweepFinished));
    assert!(s.handle(1, Input::Tick).is_empty(), "emitted once");
}

mod grow;
mod random;
mod speculation;
