//! Throughput measurement and backup attempts at the tail.

use super::*;

const SLOW: u64 = 1;
const FAST: u64 = 2;

/// Long leases (nobody expires here) and the default speculation policy.
fn patient() -> SchedulerConfig {
    SchedulerConfig { lease_timeout: 1_000_000, ..config() }
}

/// A slow worker (0.05 units/s) and a fast one (1 unit/s), measured on three one-unit tasks;
/// then the slow one leases task 4 at 20 s, the last task: a straggler. Returns its attempt.
fn straggler(s: &mut Scheduler) -> AttemptId {
    join(s, 0, SLOW);
    join(s, 0, FAST);
    let (_, a) = lease_one(s, 0, SLOW).unwrap();
    let (_, b) = lease_one(s, 0, FAST).unwrap();
    s.handle(1_000, Input::Completed { attempt: b, by: owner(s, b), outputs: vec![] });
    let (_, c) = lease_one(s, 1_000, FAST).unwrap();
    s.handle(2_000, Input::Completed { attempt: c, by: owner(s, c), outputs: vec![] });
    s.handle(20_000, Input::Completed { attempt: a, by: owner(s, a), outputs: vec![] });
    let (t, slow) = lease_one(s, 20_000, SLOW).unwrap();
    assert_eq!(t, TaskId(4));
    slow
}

fn four_tasks() -> Vec<NewTask> {
    (1..=4).map(|i| task(i, &[], 0, &[])).collect()
}

#[test]
fn throughput_is_an_ewma_per_worker_and_kind_with_the_fleet_as_prior() {
    let mut s = Scheduler::new(patient(), four_tasks(), 1);
    straggler(&mut s);
    assert_eq!(s.throughput(WorkerId(SLOW), &default_class()), Some(0.05));
    // Samples 1.0 then 1.0: the average stays; the fleet saw 1.0, 1.0, 0.05 (alpha 0.3).
    assert_eq!(s.throughput(WorkerId(FAST), &default_class()), Some(1.0));
    let fleet = s.fleet_throughput(&default_class()).unwrap();
    assert!((fleet - (0.3 * 0.05 + 0.7 * 1.0)).abs() < 1e-12, "{fleet}");
    assert_eq!(s.throughput(WorkerId(FAST), &CostClass::new("other")), None, "kinds are measured apart");
    assert_eq!(s.throughputs(WorkerId(SLOW)), vec![(default_class(), 0.05)]);
    let mut s = Scheduler::new(patient(), vec![task(1, &[], 0, &[]), task(2, &[], 0, &[])], 1);
    join(&mut s, 0, 1);
    let (_, a) = lease_one(&mut s, 0, 1).unwrap();
    s.handle(2_000, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
    let (_, b) = lease_one(&mut s, 2_000, 1).unwrap();
    s.handle(3_000, Input::Completed { attempt: b, by: owner(&s, b), outputs: vec![] });
    let rate = s.throughput(WorkerId(1), &default_class()).unwrap();
    assert!((rate - (0.3 * 1.0 + 0.7 * 0.5)).abs() < 1e-12, "0.5/s then 1/s: {rate}");
}

#[test]
fn an_idle_fast_worker_backs_up_a_straggler_its_result_wins_and_the_slow_one_is_cancelled() {
    let mut s = Scheduler::new(patient(), four_tasks(), 1);
    let slow = straggler(&mut s);
    let out = s.handle(21_000, Input::LeaseRequest { worker: WorkerId(FAST), slots: 1 });
    let [Output::Backup(b), Output::Lease { worker, task, attempt }] = &out[..] else { panic!("{out:?}") };
    assert_eq!((*worker, *task, *attempt), (WorkerId(FAST), TaskId(4), b.attempt));
    let expected = Backup {
        task: TaskId(4),
        attempt: b.attempt,
        worker: WorkerId(FAST),
        straggler: slow,
        straggler_worker: WorkerId(SLOW),
        class: default_class(),
        rate: 1.0,
        straggler_rate: 0.05,
        expected_ms: 1_000,
        remaining_ms: 19_000,
    };
    assert_eq!(*b, expected);
    let backup = b.attempt;
    assert_eq!(s.backups(TaskId(4)), [backup]);
    assert_eq!(s.state(TaskId(4)), Some(StateName::Running), "a backup is no transition");
    let out = s.handle(22_000, Input::Completed { attempt: backup, by: owner(&s, backup), outputs: vec![] });
    let winner = AttemptEnd::Superseded { winner: backup, winner_worker: WorkerId(FAST) };
    assert_eq!(
        out,
        vec![
            Output::Cancel {
                worker: WorkerId(SLOW),
                attempt: slow,
                reason: format!("attempt {} finished first", backup.0)
            },
            Output::AttemptEnded { task: TaskId(4), attempt: slow, worker: WorkerId(SLOW), outcome: winner },
            Output::Transition {
                task: TaskId(4),
                from: StateName::Running,
                to: StateName::Done,
                attempt: Some(backup),
                worker: Some(WorkerId(FAST)),
            },
            Output::Report { attempt: backup, accepted: true },
            Output::SweepFinished,
        ],
        "one result, the loser told to stop and closed"
    );
    assert!(s.running_on(WorkerId(SLOW)).is_empty() && s.backups(TaskId(4)).is_empty());
    let late = s.handle(23_000, Input::Completed { attempt: slow, by: owner(&s, slow), outputs: vec![] });
    assert_eq!(late, vec![Output::Report { attempt: slow, accepted: false }], "the loser's result changes nothing");
    assert_eq!(s.failures(TaskId(4)), 0);
    // The loser ran 2 s without finishing one unit: its worker is at most 0.5 units/s,
    // which is no news for a 0.05 units/s worker.
    assert_eq!(s.throughput(WorkerId(SLOW), &default_class()), Some(0.05));
}

#[test]
fn no_backup_without_a_clear_margin_on_the_stragglers_worker_or_beyond_the_limit() {
    // Too early: 20 s expected, 10 s gone, 1 s for the fast worker, but the gain must reach
    // 10 s *and* exceed 1.5x: at 19.5 s the remaining 0.5 s is no straggler.
    let mut s = Scheduler::new(patient(), four_tasks(), 1);
    straggler(&mut s);
    let out = s.handle(39_500, Input::LeaseRequest { worker: WorkerId(FAST), slots: 1 });
    assert_eq!(out, vec![Output::NoWork { worker: WorkerId(FAST), retry_after: 50 }], "nearly done as predicted");
    // The straggler's own worker never gets a backup of it.
    let out = s.handle(21_000, Input::LeaseRequest { worker: WorkerId(SLOW), slots: 1 });
    assert_eq!(out, vec![Output::NoWork { worker: WorkerId(SLOW), retry_after: 50 }]);
    // One backup per task: a third worker (fleet prior 0.715/s) gets nothing more.
    let out = s.handle(21_000, Input::LeaseRequest { worker: WorkerId(FAST), slots: 1 });
    assert!(matches!(out[0], Output::Backup(_)));
    join(&mut s, 21_000, 3);
    let out = s.handle(21_000, Input::LeaseRequest { worker: WorkerId(3), slots: 1 });
    assert_eq!(out, vec![Output::NoWork { worker: WorkerId(3), retry_after: 50 }]);
    // Speculation off: no backup at all.
    let off = SchedulerConfig {
        speculation: SpeculationConfig { max_backups: 0, ..SpeculationConfig::default() },
        ..patient()
    };
    let mut s = Scheduler::new(off, four_tasks(), 1);
    straggler(&mut s);
    let out = s.handle(21_000, Input::LeaseRequest { worker: WorkerId(FAST), slots: 1 });
    assert_eq!(out, vec![Output::NoWork { worker: WorkerId(FAST), retry_after: 50 }]);
    // Equal workers: nobody is a straggler.
    let mut s = Scheduler::new(patient(), vec![task(1, &[], 0, &[]), task(2, &[], 0, &[])], 1);
    join(&mut s, 0, 1);
    join(&mut s, 0, 2);
    let (_, a) = lease_one(&mut s, 0, 1).unwrap();
    s.handle(10_000, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
    lease_one(&mut s, 10_000, 1).unwrap();
    let out = s.handle(12_000, Input::LeaseRequest { worker: WorkerId(2), slots: 1 });
    assert_eq!(
        out,
        vec![Output::NoWork { worker: WorkerId(2), retry_after: 50 }],
        "a worker without history uses the fleet's rate"
    );
}

#[test]
fn an_overdue_attempt_is_assumed_to_need_as_long_again_as_it_has_overrun() {
    // Both workers measured at 1 unit/s; the first lease of task 3 is overdue by 20 s.
    let mut s = Scheduler::new(patient(), (1..=3).map(|i| task(i, &[], 0, &[])).collect(), 1);
    join(&mut s, 0, 1);
    join(&mut s, 0, 2);
    let (_, a) = lease_one(&mut s, 0, 1).unwrap();
    let (_, b) = lease_one(&mut s, 0, 2).unwrap();
    s.handle(1_000, Input::Completed { attempt: a, by: owner(&s, a), outputs: vec![] });
    s.handle(1_000, Input::Completed { attempt: b, by: owner(&s, b), outputs: vec![] });
    let (_, c) = lease_one(&mut s, 1_000, 1).unwrap();
    let out = s.handle(21_000, Input::LeaseRequest { worker: WorkerId(2), slots: 1 });
    let Some(Output::Backup(backup)) = out.first() else { panic!("{out:?}") };
    assert_eq!((backup.straggler, backup.remaining_ms, backup.expected_ms), (c, 19_000, 1_000));
}

#[test]
fn losing_or_failing_one_of_two_live_attempts_keeps_the_task_running_and_counts_nothing() {
    // The slow first attempt's worker leaves: the backup takes over.
    let mut s = Scheduler::new(patient(), four_tasks(), 1);
    let slow = straggler(&mut s);
    let backup = leases(&s.handle(21_000, Input::LeaseRequest { worker: WorkerId(FAST), slots: 1 }))[0].1;
    let out = s.handle(21_500, Input::WorkerLeft { worker: WorkerId(SLOW) });
    assert_eq!(
        out,
        vec![Output::AttemptEnded {
            task: TaskId(4),
            attempt: slow,
            worker: WorkerId(SLOW),
            outcome: AttemptEnd::Lost
        }]
    );
    assert_eq!(s.state(TaskId(4)), Some(StateName::Running));
    assert_eq!(s.attempt(backup), Some((TaskId(4), WorkerId(FAST))));
    assert!(s.backups(TaskId(4)).is_empty(), "the backup is now the task's attempt");
    // It fails retryably: alone now, so it counts and backs off as any attempt would.
    s.handle(21_600, Input::Failed { attempt: backup, by: owner(&s, backup), error: "oom".into(), retryable: true });
    assert_eq!((s.state(TaskId(4)), s.failures(TaskId(4))), (Some(StateName::Backoff), 1));

    // A retryable failure of the backup while the first attempt runs ends only the backup.
    let mut s = Scheduler::new(patient(), four_tasks(), 1);
    let slow = straggler(&mut s);
    let backup = leases(&s.handle(21_000, Input::LeaseRequest { worker: WorkerId(FAST), slots: 1 }))[0].1;
    let out = s
        .handle(21_500, Input::Failed { attempt: backup, by: owner(&s, backup), error: "oom".into(), retryable: true });
    assert_eq!(
        out,
        vec![
            Output::Report { attempt: backup, accepted: true },
            Output::AttemptEnded {
                task: TaskId(4),
                attempt: backup,
                worker: WorkerId(FAST),
                outcome: AttemptEnd::Failed
            },
        ]
    );
    assert_eq!((s.state(TaskId(4)), s.failures(TaskId(4))), (Some(StateName::Running), 0));
    assert_eq!(
        s.handle(21_600, Input::LeaseRequest { worker: WorkerId(FAST), slots: 1 }).len(),
        1,
        "NoWork: one backup per run"
    );
    s.handle(40_000, Input::Completed { attempt: slow, by: owner(&s, slow), outputs: vec![] });
    assert_eq!(s.state(TaskId(4)), Some(StateName::Done));

    // A non-retryable failure of either attempt fails the task and stops the other.
    let mut s = Scheduler::new(patient(), four_tasks(), 1);
    let slow = straggler(&mut s);
    let backup = leases(&s.handle(21_000, Input::LeaseRequest { worker: WorkerId(FAST), slots: 1 }))[0].1;
    let out = s.handle(
        21_500,
        Input::Failed { attempt: backup, by: owner(&s, backup), error: "NaN".into(), retryable: false },
    );
    assert!(out.contains(&Output::Cancel { worker: WorkerId(SLOW), attempt: slow, reason: "the task failed".into() }));
    assert_eq!((s.state(TaskId(4)), s.failures(TaskId(4))), (Some(StateName::Failed), 1));
    assert!(s.attempt(slow).is_none() && s.running_on(WorkerId(SLOW)).is_empty());
}

#[test]
fn cancelling_a_raced_task_stops_both_attempts_and_a_restart_forgets_the_race() {
    let mut s = Scheduler::new(patient(), four_tasks(), 1);
    let slow = straggler(&mut s);
    let backup = leases(&s.handle(21_000, Input::LeaseRequest { worker: WorkerId(FAST), slots: 1 }))[0].1;
    let out = s.handle(21_500, Input::Cancel { task: TaskId(4), reason: "user".into() });
    assert!(out.contains(&Output::Cancel { worker: WorkerId(SLOW), attempt: slow, reason: "user".into() }));
    assert!(out.contains(&Output::Cancel { worker: WorkerId(FAST), attempt: backup, reason: "user".into() }));
    assert_eq!(transitions(&out), vec![(TaskId(4), StateName::Running, StateName::Cancelled, Some(slow))]);
    assert!(s.workers().all(|w| s.running_on(w).is_empty()));
    // A coordinator restarted mid-race re-leases the task once, above both attempt ids.
    let stored = four_tasks()
        .into_iter()
        .map(|t| {
            let state = if t.id == TaskId(4) { StoredState::Pending } else { StoredState::Done };
            (t, state, 0)
        })
        .collect();
    let mut s = Scheduler::restore(patient(), stored, backup.0 + 1);
    join(&mut s, 0, FAST);
    assert_eq!(lease_one(&mut s, 0, FAST), Some((TaskId(4), AttemptId(backup.0 + 1))));
    assert!(s.backups(TaskId(4)).is_empty());
}
