//! The tick: silent workers, lost runs, re-announced queues.

use super::*;

#[test]
fn a_silent_worker_goes_offline_and_its_runs_are_lost() {
    let mut h = Harness::new();
    h.register("w1", 4, &["default"], &[]);
    h.register("w2", 4, &["default"], &[]);
    let run = h.enqueue("hello");
    h.claim("w1", 1);
    for _ in 0..12 {
        h.advance_ms(1_000);
        h.worker(
            "w2",
            WorkerRequest::Heartbeat(Heartbeat {
                running: vec![],
                free_slots: 4,
                draining: false,
            }),
        );
        h.tick();
    }
    assert!(!h.core.is_online("w1"));
    assert!(h.core.is_online("w2"));
    assert_eq!(h.state(&run), RunState::Lost);
    match h.worker("w1", WorkerRequest::Claim { max: 1, wait_ms: 0 }) {
        Reply::Error {
            code: ErrorCode::NotRegistered,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn runs_of_a_worker_that_never_returns_after_a_broker_restart_are_lost() {
    let mut store = MemoryStore::default();
    let run;
    {
        let mut h = Harness::with_store(std::mem::take(&mut store));
        h.register("w1", 1, &["default"], &[]);
        run = h.enqueue("hello");
        h.claim("w1", 1);
        // The broker stops; the next one opens what it stored.
        store = h.core.into_store();
    }
    let mut h = Harness::with_store(std::mem::take(&mut store));
    h.tick();
    assert_eq!(h.state(&run), RunState::Assigned);
    h.advance_ms(11_000);
    h.tick();
    assert_eq!(h.state(&run), RunState::Lost);
}

#[test]
fn queued_work_is_announced_again_every_interval() {
    let mut h = Harness::new();
    h.enqueue("hello");
    let wake = (
        topic::pool("default"),
        Event::Wake {
            pool: "default".into(),
        },
    );
    assert!(h.tick().events.contains(&wake));
    h.advance_ms(100);
    assert!(
        !h.tick().events.contains(&wake),
        "not more often than the interval"
    );
    h.advance_ms(1_000);
    assert!(h.tick().events.contains(&wake));
}
