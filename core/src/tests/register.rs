//! `Register`: reconciling what a worker reports against what the broker holds.

use super::*;

#[test]
fn a_worker_that_restarts_without_a_run_loses_it_and_it_is_not_rerun() {
    let mut h = Harness::new();
    h.register("w1", 4, &["default"], &[]);
    let run = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![run.clone()]);
    h.start("w1", &run);
    h.register("w1", 4, &["default"], &[]);
    assert_eq!(h.state(&run), RunState::Lost);
    assert!(
        h.claim("w1", 4).is_empty(),
        "a lost run must not be handed out again"
    );
}

/// A run w1 started and then went silent past its lease, kill grace and margin: the
/// broker has given it up as lost.
fn given_up(h: &mut Harness) -> String {
    h.register("w1", 4, &["default"], &[]);
    let run = h.enqueue("hello");
    h.claim("w1", 1);
    h.start("w1", &run);
    h.advance_ms(18_000);
    h.tick();
    assert_eq!(h.state(&run), RunState::Lost);
    run
}

#[test]
fn a_worker_that_reports_a_run_it_does_not_own_is_told_to_kill_it() {
    let mut h = Harness::new();
    let run = given_up(&mut h);
    // it comes back still running it (its job keeps runs going without the broker)
    let orders = h.register("w1", 4, &["default"], &[&run]);
    assert_eq!(orders.kill, vec![run.clone()]);
    // its output and end, arriving late, are kept on the run; the state stays lost
    h.worker(
        "w1",
        WorkerRequest::LogChunk {
            run_id: run.clone(),
            offset: 0,
            data: b"done\n".to_vec(),
        },
    );
    h.finish("w1", &run, Outcome::Exited { code: 0 });
    let stored = h.stored(&run);
    assert_eq!(stored.state, RunState::Lost);
    let late = stored.late_result.expect("the late result is kept");
    assert_eq!(late.outcome, Outcome::Exited { code: 0 });
    assert_eq!(late.reported_at_ms, h.now / 1_000);
    assert_eq!(h.stored_log_bytes(&run), 5, "its late output is kept too");
    // a second copy of the report changes nothing
    h.advance_ms(1_000);
    h.finish("w1", &run, Outcome::Exited { code: 3 });
    let again = h.stored(&run).late_result.unwrap();
    assert_eq!(again.outcome, Outcome::Exited { code: 0 });
}

#[test]
fn a_worker_key_limited_to_pools_cannot_register_for_another() {
    let mut h = Harness::with_config(
        MemoryStore::default(),
        CoreConfig {
            worker_pools: HashMap::from([(
                "w1".to_string(),
                BTreeSet::from(["default".to_string()]),
            )]),
            ..CoreConfig::default()
        },
    );
    let reply = h.worker(
        "w1",
        WorkerRequest::Register(registration(&["default", "gpu"], 4096)),
    );
    let Reply::Error { code, message } = reply else {
        panic!("registered for a pool it may not serve: {reply:?}");
    };
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(
        message.contains("\"w1\"") && message.contains("\"gpu\""),
        "{message}"
    );
    // It never got a session, so it can claim nothing, not even from its own pool.
    h.enqueue("gpu-job");
    assert!(matches!(
        h.worker("w1", WorkerRequest::Claim { max: 1, wait_ms: 0 }),
        Reply::Error {
            code: ErrorCode::NotRegistered,
            ..
        }
    ));
    // Its own pool is fine; an unrestricted key may serve any pool.
    h.register("w1", 1, &["default"], &[]);
    h.register("w2", 1, &["gpu"], &[]);
    assert_eq!(h.claim("w1", 1), Vec::<String>::new());
    assert_eq!(h.claim("w2", 1).len(), 1);
}

/// Registers `worker` as process `instance`, reporting `running`; the whole answer.
fn register_as(h: &mut Harness, worker: &str, instance: u64, running: &[&str]) -> Reply {
    let mut register = registration(&["default"], 4096);
    register.concurrency = 4;
    register.instance = instance;
    register.running = running.iter().map(|r| r.to_string()).collect();
    h.worker(worker, WorkerRequest::Register(register))
}

fn resumed(reply: &Reply) -> Vec<String> {
    match reply {
        Reply::Registered { orders, .. } => {
            orders.resume.iter().map(|a| a.run_id.clone()).collect()
        }
        other => panic!("not registered: {other:?}"),
    }
}

#[test]
fn a_second_registration_crossing_a_grant_gets_the_grant_again_not_a_lost_run() {
    // The race from a broker restart: the worker registers, claims, and registers again
    // (a stale "not registered" answer) before the grant's answer reaches it. In order,
    // as the broker sees them:
    let mut h = Harness::new();
    assert!(resumed(&register_as(&mut h, "w1", 7, &[])).is_empty());
    let run = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![run.clone()]); // the answer is still travelling
    let again = register_as(&mut h, "w1", 7, &[]);
    // Not lost: the same process never started it, and gets it with this answer.
    assert_eq!(h.state(&run), RunState::Assigned);
    assert_eq!(resumed(&again), vec![run.clone()]);
    // It starts and finishes as any run.
    h.start("w1", &run);
    h.finish("w1", &run, Outcome::Exited { code: 0 });
    assert_eq!(h.state(&run), RunState::Succeeded);
    let history: Vec<String> = h
        .core
        .store()
        .run(&run)
        .unwrap()
        .unwrap()
        .history
        .iter()
        .map(|t| t.state.to_string())
        .collect();
    assert_eq!(history, ["queued", "assigned", "running", "succeeded"]);
}

#[test]
fn a_grant_whose_answer_died_with_the_broker_is_resent_after_the_restart() {
    let mut h = Harness::new();
    register_as(&mut h, "w1", 7, &[]);
    let run = h.enqueue("hello");
    h.claim("w1", 1); // committed; the broker is killed before the answer leaves
    let mut h = Harness::with_store(h.core.into_store());
    let reply = register_as(&mut h, "w1", 7, &[]);
    assert_eq!(h.state(&run), RunState::Assigned);
    assert_eq!(resumed(&reply), vec![run]);
}

#[test]
fn a_new_worker_process_or_an_unknown_one_loses_what_the_old_one_was_granted() {
    for instance in [8, 0] {
        let mut h = Harness::new();
        register_as(&mut h, "w1", 7, &[]);
        let run = h.enqueue("hello");
        h.claim("w1", 1);
        // A different process (the worker restarted), or one that does not say: the old
        // one may have started the run before it died.
        let reply = register_as(&mut h, "w1", instance, &[]);
        assert!(resumed(&reply).is_empty());
        assert_eq!(h.state(&run), RunState::Lost, "instance {instance}");
    }
}

#[test]
fn a_run_handed_back_is_not_the_workers_any_more() {
    let mut h = Harness::new();
    register_as(&mut h, "w1", 7, &[]);
    let run = h.enqueue("hello");
    h.claim("w1", 1);
    h.worker(
        "w1",
        WorkerRequest::Release {
            run_ids: vec![run.clone()],
        },
    );
    // Registering again (another process) does not touch the queued run.
    let reply = register_as(&mut h, "w1", 8, &[]);
    assert!(resumed(&reply).is_empty());
    assert_eq!(h.state(&run), RunState::Queued);
    let stored = h.core.store().run(&run).unwrap().unwrap();
    assert_eq!((stored.worker, stored.worker_instance), (None, None));
}

#[test]
fn a_grant_a_killed_worker_never_started_is_queued_again_when_its_successor_proves_it() {
    let mut h = Harness::new();
    h.register("w1", 2, &["default"], &[]);
    let started = h.enqueue("hello");
    let unstarted = h.enqueue("hello");
    assert_eq!(h.claim("w1", 2).len(), 2);
    h.start("w1", &started);
    // w1 is SIGKILLed; its next process (another instance) registers with the ledger of
    // what its predecessor started: only `started`.
    let mut register = registration(&["default"], 4096);
    register.instance = 8;
    register.concurrency = 2;
    register.earlier_started = Some(vec![started.clone()]);
    assert!(matches!(
        h.worker("w1", WorkerRequest::Register(register)),
        Reply::Registered { .. }
    ));
    assert_eq!(h.state(&started), RunState::Lost, "it may have half run");
    let requeued = h.stored(&unstarted);
    assert_eq!(requeued.state, RunState::Queued);
    assert!(
        requeued
            .history
            .last()
            .unwrap()
            .cause
            .contains("never started it"),
        "{:?}",
        requeued.history
    );
    assert_eq!(h.claim("w1", 2), vec![unstarted], "and runs, once");
}

#[test]
fn without_a_ledger_a_killed_workers_grants_are_lost() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let run = h.enqueue("hello");
    h.claim("w1", 1);
    let mut register = registration(&["default"], 4096);
    register.instance = 8;
    // Another boot, or no ledger: nothing can be proven.
    register.earlier_started = None;
    h.worker("w1", WorkerRequest::Register(register));
    assert_eq!(h.state(&run), RunState::Lost);
}

#[test]
fn reports_about_runs_given_up_or_unknown_are_told_apart_without_reading_the_store() {
    let mut h = Harness::new();
    let run = given_up(&mut h);
    h.register("w1", 4, &["default"], &[&run]);
    let chunk = |offset: u64| WorkerRequest::LogChunk {
        run_id: run.clone(),
        offset,
        data: b"late\n".to_vec(),
    };
    let reads = run_reads(&h);
    h.worker("w1", chunk(0));
    h.worker("w1", chunk(5));
    // A stray report (a run this broker never had) and output of it: ignored unread.
    h.finish("w1", "00000000deadbeef", Outcome::Exited { code: 0 });
    h.worker(
        "w1",
        WorkerRequest::LogChunk {
            run_id: "00000000deadbeef".into(),
            offset: 0,
            data: b"x".to_vec(),
        },
    );
    assert_eq!(run_reads(&h), reads, "a chunk or a stray report read a run");
    h.finish("w1", &run, Outcome::Exited { code: 0 });
    assert_eq!(
        run_reads(&h),
        reads + 1,
        "the late result reads its run once, to keep the result on it"
    );
    // Repeats of it are stray now.
    h.finish("w1", &run, Outcome::Exited { code: 0 });
    h.worker("w1", chunk(10));
    assert_eq!(run_reads(&h), reads + 1);
    assert_eq!(h.stored_log_bytes(&run), 10);
    assert!(h.stored(&run).late_result.is_some());
}

#[test]
fn a_run_given_up_before_a_broker_restart_still_gets_its_late_result() {
    let mut h = Harness::new();
    let run = given_up(&mut h);
    let store = h.core.into_store();
    let mut h = Harness::started_at(store, CoreConfig::default(), T0 + 30_000_000);
    h.register("w1", 4, &["default"], &[&run]);
    h.finish("w1", &run, Outcome::Exited { code: 7 });
    let late = h.stored(&run).late_result.expect("the late result is kept");
    assert_eq!(late.outcome, Outcome::Exited { code: 7 });
}
