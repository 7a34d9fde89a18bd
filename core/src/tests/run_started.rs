//! `RunStarted`: a granted run is running, as its worker says, once.

use super::*;

fn started(h: &mut Harness, worker: &str, run_id: &str, pid: u32) -> Reply {
    h.worker(
        worker,
        WorkerRequest::RunStarted {
            run_id: run_id.into(),
            pid,
            spawned_at_us: T0 + 7,
        },
    )
}

#[test]
fn a_start_counts_only_from_the_runs_worker_and_only_once() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    h.register("w2", 1, &["default"], &[]);
    let run = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![run.clone()]);

    // Another worker's report changes nothing.
    assert_eq!(started(&mut h, "w2", &run, 99), Reply::Ack);
    assert_eq!(h.state(&run), RunState::Assigned);

    assert_eq!(started(&mut h, "w1", &run, 42), Reply::Ack);
    let stored = h.core.store().run(&run).unwrap().unwrap();
    assert_eq!(stored.state, RunState::Running);
    assert_eq!(stored.pid, Some(42));
    assert_eq!(stored.spawned_at_us, Some(T0 + 7));
    let history = stored.history.len();

    // A repeated report (a resent request) adds nothing.
    started(&mut h, "w1", &run, 43);
    let again = h.core.store().run(&run).unwrap().unwrap();
    assert_eq!(again.history.len(), history);
    assert_eq!(again.pid, Some(42));

    // A report for a run the broker does not hold is acknowledged and ignored.
    assert_eq!(started(&mut h, "w1", "no-such-run", 1), Reply::Ack);
    assert!(h.core.store().run("no-such-run").unwrap().is_none());
}
