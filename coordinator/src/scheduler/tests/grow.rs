//! A plan that grows: tasks added while the sweep runs ([`Input::AddTasks`]).

use super::*;

fn add(s: &mut Scheduler, now: Millis, tasks: Vec<NewTask>) -> Vec<Output> {
    s.handle(now, Input::AddTasks { tasks })
}

fn complete(s: &mut Scheduler, now: Millis, attempt: AttemptId) -> Vec<Output> {
    s.handle(now, Input::Completed { attempt, by: owner(s, attempt), outputs: vec![] })
}

/// Task 1 done, task 2 running on worker 1 (returns its attempt), task 3 ready.
fn partly_done() -> (Scheduler, AttemptId) {
    let tasks = (1..=3).map(|i| task(i, &[], 0, &[])).collect();
    let mut s = Scheduler::new(config(), tasks, 1);
    join(&mut s, 0, 1);
    let (_, a) = lease_one(&mut s, 0, 1).unwrap();
    complete(&mut s, 1, a);
    let (t, running) = lease_one(&mut s, 2, 1).unwrap();
    assert_eq!(t, TaskId(2));
    (s, running)
}

#[test]
fn an_added_task_whose_dependencies_are_done_turns_ready_and_is_leased() {
    let (mut s, _) = partly_done();
    let out = add(&mut s, 3, vec![task(4, &[1], 0, &[]), task(5, &[], 0, &[])]);
    assert_eq!(
        transitions(&out),
        [
            (TaskId(4), StateName::Blocked, StateName::Ready, None),
            (TaskId(5), StateName::Blocked, StateName::Ready, None),
        ],
        "each enters Blocked; turning ready is a transition the driver stores"
    );
    assert_eq!((s.len(), s.counts()[&StateName::Ready]), (5, 3));
    join(&mut s, 3, 2);
    let out = s.handle(3, Input::LeaseRequest { worker: WorkerId(2), slots: 3 });
    let leased: Vec<TaskId> = leases(&out).into_iter().map(|(t, _)| t).collect();
    assert_eq!(leased, [TaskId(3), TaskId(4), TaskId(5)], "added tasks queue behind those ready before");
}

#[test]
fn an_added_task_waits_for_its_dependencies_also_within_its_batch() {
    let (mut s, running) = partly_done();
    let out = add(&mut s, 3, vec![task(4, &[2], 0, &[]), task(5, &[4, 1], 0, &[])]);
    assert!(transitions(&out).is_empty(), "both wait: {out:?}");
    assert_eq!(s.state(TaskId(4)), Some(StateName::Blocked));
    assert_eq!(s.state(TaskId(5)), Some(StateName::Blocked));
    let out = complete(&mut s, 4, running);
    assert!(transitions(&out).contains(&(TaskId(4), StateName::Blocked, StateName::Ready, None)));
    assert_eq!(s.state(TaskId(5)), Some(StateName::Blocked), "task 4 is not done yet");
    let (_, three) = lease_one(&mut s, 5, 1).unwrap();
    complete(&mut s, 5, three);
    let (t, four) = lease_one(&mut s, 6, 1).unwrap();
    assert_eq!(t, TaskId(4));
    complete(&mut s, 7, four);
    assert_eq!(s.state(TaskId(5)), Some(StateName::Ready), "an added dependency unblocks like a planned one");
}

#[test]
fn an_added_task_behind_a_failed_or_cancelled_dependency_is_cancelled() {
    let (mut s, running) = partly_done();
    s.handle(3, Input::Cancel { task: TaskId(3), reason: "user".into() });
    let out = add(&mut s, 4, vec![task(4, &[3], 0, &[]), task(5, &[4], 0, &[]), task(6, &[2], 0, &[])]);
    assert_eq!(
        transitions(&out),
        [
            (TaskId(4), StateName::Blocked, StateName::Cancelled, None),
            (TaskId(5), StateName::Blocked, StateName::Cancelled, None),
        ],
        "behind a cancelled task, also through a task of the same batch"
    );
    // Task 6 waits for the running task 2, whose failure cascades to it as to a planned task.
    let out = s.handle(5, Input::Failed { attempt: running, by: WorkerId(1), error: "e".into(), retryable: false });
    assert!(transitions(&out).contains(&(TaskId(6), StateName::Blocked, StateName::Cancelled, None)), "{out:?}");
    let out = add(&mut s, 6, vec![task(7, &[2], 0, &[])]);
    assert_eq!(transitions(&out), [(TaskId(7), StateName::Blocked, StateName::Cancelled, None)], "behind a failed one");
}

#[test]
fn a_batch_that_breaks_a_rule_is_refused_whole() {
    let (mut s, _) = partly_done();
    let refused = |task, refusal| vec![Output::AddRefused { task: TaskId(task), refusal }];
    let cases = [
        (vec![task(4, &[], 0, &[]), task(2, &[], 0, &[])], refused(2, AddRefusal::Exists)),
        (vec![task(4, &[], 0, &[]), task(4, &[], 0, &[])], refused(4, AddRefusal::Exists)),
        (vec![task(6, &[], 0, &[]), task(5, &[], 0, &[])], refused(5, AddRefusal::NotAbove { highest: TaskId(6) })),
        (vec![task(4, &[9], 0, &[])], refused(4, AddRefusal::UnknownDependency { dep: TaskId(9) })),
        (vec![task(4, &[4], 0, &[])], refused(4, AddRefusal::UnknownDependency { dep: TaskId(4) })),
        // A dependency on a later task of the batch could close a cycle.
        (
            vec![task(4, &[5], 0, &[]), task(5, &[], 0, &[])],
            refused(4, AddRefusal::UnknownDependency { dep: TaskId(5) }),
        ),
    ];
    for (batch, refusal) in cases {
        let counts = s.counts().clone();
        assert_eq!(add(&mut s, 3, batch.clone()), refusal, "{batch:?}");
        assert_eq!((s.len(), s.counts()), (3, &counts), "nothing of a refused batch is added");
    }
    // A gap in the ids is fine: the caller allocates them.
    assert!(transitions(&add(&mut s, 3, vec![task(10, &[], 0, &[])])).len() == 1);
    let out = add(&mut s, 3, vec![task(7, &[], 0, &[])]);
    assert_eq!(out, refused(7, AddRefusal::NotAbove { highest: TaskId(10) }), "ids only grow");
}

#[test]
fn restore_knows_the_highest_id_so_an_added_id_below_it_is_refused() {
    let stored = vec![(task(1, &[], 0, &[]), StoredState::Done, 0), (task(8, &[1], 0, &[]), StoredState::Pending, 0)];
    let mut s = Scheduler::restore(config(), stored, 1);
    let out = add(&mut s, 0, vec![task(5, &[], 0, &[])]);
    assert_eq!(out, [Output::AddRefused { task: TaskId(5), refusal: AddRefusal::NotAbove { highest: TaskId(8) } }]);
}

#[test]
fn a_finished_sweep_given_tasks_is_unfinished_and_announces_its_end_again() {
    let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[])], 1);
    join(&mut s, 0, 1);
    let (_, a) = lease_one(&mut s, 0, 1).unwrap();
    assert!(complete(&mut s, 1, a).contains(&Output::SweepFinished));
    let out = add(&mut s, 2, vec![task(2, &[1], 0, &[])]);
    assert!(!s.is_finished() && !out.contains(&Output::SweepFinished), "{out:?}");
    let (t, b) = lease_one(&mut s, 3, 1).unwrap();
    assert_eq!(t, TaskId(2));
    assert!(complete(&mut s, 4, b).contains(&Output::SweepFinished), "announced again when the added task ends");
    assert!(!s.handle(5, Input::Tick).contains(&Output::SweepFinished), "and only once");

    // Tasks cancelled as they come (behind a cancelled one) never make the sweep unfinished.
    add(&mut s, 6, vec![task(3, &[], 0, &[])]);
    let out = s.handle(6, Input::Cancel { task: TaskId(3), reason: "user".into() });
    assert!(out.contains(&Output::SweepFinished), "a cancelled added task ends too");
    let out = add(&mut s, 7, vec![task(4, &[3], 0, &[])]);
    assert!(s.is_finished() && !out.contains(&Output::SweepFinished), "{out:?}");
    // An empty batch changes nothing.
    assert!(add(&mut s, 8, vec![]).is_empty());
}

#[test]
fn an_idle_worker_told_no_work_after_the_sweep_finished_gets_an_added_task_at_once() {
    let mut s = Scheduler::new(config(), vec![task(1, &[], 0, &[])], 1);
    join(&mut s, 0, 1);
    join(&mut s, 0, 2);
    let (_, a) = lease_one(&mut s, 0, 1).unwrap();
    complete(&mut s, 1, a);
    assert!(s.is_finished());
    let out = s.handle(2, Input::LeaseRequest { worker: WorkerId(2), slots: 1 });
    assert!(matches!(out[..], [Output::NoWork { .. }]), "{out:?}");
    let out = add(&mut s, 3, vec![task(2, &[], 0, &[])]);
    assert_eq!(leases(&out), [(TaskId(2), AttemptId(2))], "leased in the step that added it: {out:?}");
    assert_eq!(s.attempt(AttemptId(2)), Some((TaskId(2), WorkerId(2))));
}
