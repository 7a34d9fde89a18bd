//! `RunFinished`: a run's outcome is recorded, and the freed slot can claim at once.

use super::*;

#[test]
fn a_finish_records_the_outcome_and_its_claim_takes_the_next_run() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let first = h.enqueue("hello");
    let second = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![first.clone()]);
    let reply = h.worker(
        "w1",
        WorkerRequest::RunFinished(RunFinished {
            run_id: first.clone(),
            outcome: Outcome::Exited { code: 3 },
            duration_ms: 5,
            log_bytes: 12,
            claim: 1,
            usage: None,
            started: None,
        }),
    );
    let Reply::Granted { runs, more_queued } = reply else {
        panic!("the finish report's claim was not answered with a grant: {reply:?}")
    };
    assert_eq!(
        runs.iter().map(|a| a.run_id.clone()).collect::<Vec<_>>(),
        vec![second.clone()]
    );
    assert!(!more_queued);
    let stored = h.core.store().run(&first).unwrap().unwrap();
    assert_eq!(stored.state, RunState::Failed);
    assert_eq!(stored.outcome, Some(Outcome::Exited { code: 3 }));
    assert_eq!(stored.log_bytes, 12);
    // Never reported as started: the start is worked out from the duration.
    assert!(stored.started_at_ms.is_some());
}

#[test]
fn reports_from_another_worker_or_for_an_ended_run_change_nothing() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    h.register("w2", 1, &["default"], &[]);
    let run = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![run.clone()]);
    h.start("w1", &run);
    h.finish("w2", &run, Outcome::Exited { code: 0 });
    assert_eq!(h.state(&run), RunState::Running);
    h.finish("w1", &run, Outcome::Exited { code: 0 });
    assert_eq!(h.state(&run), RunState::Succeeded);
    // A late duplicate (say, resent after a reconnect) cannot rewrite the outcome.
    h.finish("w1", &run, Outcome::Killed);
    assert_eq!(h.state(&run), RunState::Succeeded);
}

#[test]
fn a_jobs_state_keeps_how_its_latest_runs_ended() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let mut ended = Vec::new();
    for i in 0..jobcast_protocol::job::RECENT_RUNS + 2 {
        let run = h.enqueue("hello");
        h.claim("w1", 1);
        h.start("w1", &run);
        h.advance_ms(10);
        let code = if i % 3 == 0 { 1 } else { 0 };
        h.finish("w1", &run, Outcome::Exited { code });
        ended.push((
            if code == 0 {
                RunState::Succeeded
            } else {
                RunState::Failed
            },
            h.now / 1_000,
        ));
    }
    let Reply::Jobs { jobs } = h.admin(AdminRequest::ListJobs) else {
        panic!("no jobs")
    };
    let hello = jobs.iter().find(|j| j.spec.name == "hello").unwrap();
    let kept: Vec<(RunState, u64)> = hello
        .state
        .recent_runs
        .iter()
        .map(|(state, at, _)| (*state, *at))
        .collect();
    assert_eq!(kept, ended[2..], "the newest 20, oldest first");
    assert!(hello.state.recent_runs.iter().all(|(_, _, ran)| *ran >= 10));
}

/// A run that ended before its worker sent the report of its start: the end carries the
/// start, which is taken as its own report would have been; from another worker, or for
/// a run already started, it changes nothing.
#[test]
fn an_end_that_carries_its_start_records_both() {
    let mut h = Harness::new();
    h.register("w1", 2, &["default"], &[]);
    h.register("w2", 1, &["default"], &[]);
    let run = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![run.clone()]);
    let spawned_at_us = h.now + 1_000;
    h.advance_ms(3);
    let finish = |run_id: &str, pid: u32| {
        WorkerRequest::RunFinished(RunFinished {
            run_id: run_id.to_string(),
            outcome: Outcome::Exited { code: 0 },
            duration_ms: 2,
            log_bytes: 0,
            claim: 0,
            usage: None,
            started: Some(jobcast_protocol::StartedAs { pid, spawned_at_us }),
        })
    };
    // Not this worker's run: nothing, neither the start nor the end.
    h.worker("w2", finish(&run, 99));
    assert_eq!(h.state(&run), RunState::Assigned);
    h.worker("w1", finish(&run, 4242));
    let stored = h.core.store().run(&run).unwrap().unwrap();
    assert_eq!(stored.state, RunState::Succeeded);
    assert_eq!(stored.pid, Some(4242));
    assert_eq!(stored.spawned_at_us, Some(spawned_at_us));
    let states: Vec<RunState> = stored.history.iter().map(|t| t.state).collect();
    assert_eq!(
        states,
        [
            RunState::Queued,
            RunState::Assigned,
            RunState::Running,
            RunState::Succeeded
        ]
    );
    assert!(
        stored.history[2].cause.contains("pid 4242"),
        "{:?}",
        stored.history[2]
    );
    // A run whose start was reported on its own keeps that start.
    let second = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![second.clone()]);
    h.start("w1", &second);
    let pid = h.core.store().run(&second).unwrap().unwrap().pid;
    h.worker("w1", finish(&second, 7));
    let stored = h.core.store().run(&second).unwrap().unwrap();
    assert_eq!(stored.state, RunState::Succeeded);
    assert_eq!(stored.pid, pid);
    assert_eq!(
        stored
            .history
            .iter()
            .filter(|t| t.state == RunState::Running)
            .count(),
        1
    );
}
