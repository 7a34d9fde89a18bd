//! `Register`: reconciling what a worker reports against what the broker holds.

use super::*;

#[test]
fn a_worker_that_restarts_without_a_run_loses_it_and_it_is_not_rerun() {
    let mut h = Harness::new();
    h.register("w1", 4, &["default"], &[]);
    let run = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![run.clone()]);
    h.worker(
        "w1",
        WorkerRequest::RunStarted {
            run_id: run.clone(),
            pid: 9,
            spawned_at_us: 0,
        },
    );
    h.register("w1", 4, &["default"], &[]);
    assert_eq!(h.state(&run), RunState::Lost);
    assert!(
        h.claim("w1", 4).is_empty(),
        "a lost run must not be handed out again"
    );
}

#[test]
fn a_worker_that_reports_a_run_it_does_not_own_is_told_to_kill_it() {
    let mut h = Harness::new();
    h.register("w1", 4, &["default"], &[]);
    let run = h.enqueue("hello");
    h.claim("w1", 1);
    // w1 goes silent; its run is lost
    h.advance_ms(11_000);
    h.tick();
    assert_eq!(h.state(&run), RunState::Lost);
    // it comes back still running it
    let orders = h.register("w1", 4, &["default"], &[&run]);
    assert_eq!(orders.kill, vec![run.clone()]);
    // and a late finish report does not change the recorded outcome
    h.finish("w1", &run, Outcome::Exited { code: 0 });
    assert_eq!(h.state(&run), RunState::Lost);
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
