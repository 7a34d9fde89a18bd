//! A run is handed to the store once per request or tick, as that request or tick leaves
//! it (`unwritten.rs`): a burst of ticks made and granted at once, and a worker's report
//! of a start and an end together, copy each record once.

use super::*;
use std::sync::atomic::Ordering;

/// The writes of a run (created or rewritten) this store has taken so far.
fn run_writes(h: &Harness) -> usize {
    h.core.store().run_writes.load(Ordering::Relaxed)
}

#[test]
fn a_tick_that_makes_a_run_and_grants_it_writes_it_once_as_granted() {
    let mut h = Harness::new();
    h.now = (h.now / 60_000_000 + 1) * 60_000_000;
    h.register("w1", 4, &["default"], &[]);
    h.apply_toml("[jobs.tick]\ncommand = \"true\"\nevery = \"1s\"\noverlap = \"allow\"");
    h.waiting_claim("w1", 4, 60_000);
    let before = run_writes(&h);

    h.advance_ms(1_000);
    let out = h.tick();
    let granted: Vec<String> = grants_for(&out, "w1")
        .into_iter()
        .flat_map(|(_, runs)| runs)
        .collect();
    assert_eq!(granted.len(), 1, "the tick's run went to the waiting claim");
    assert_eq!(run_writes(&h) - before, 1, "created and granted: one write");
    let stored = h.stored(&granted[0]);
    assert_eq!(
        stored.state,
        RunState::Assigned,
        "stored as the tick left it"
    );
    assert_eq!(stored.worker.as_deref(), Some("w1"));
    assert_eq!(h.core.store().run_count().unwrap(), 1);
}

#[test]
fn a_report_of_a_start_and_an_end_together_writes_the_run_once_as_ended() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let run = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![run.clone()]);
    let before = run_writes(&h);

    let spawned_at_us = h.now + 1_000;
    h.advance_ms(3);
    h.worker(
        "w1",
        WorkerRequest::RunFinished(RunFinished {
            run_id: run.clone(),
            outcome: Outcome::Exited { code: 0 },
            duration_ms: 2,
            log_bytes: 0,
            claim: 0,
            usage: None,
            started: Some(jobcast_protocol::StartedAs {
                pid: 42,
                spawned_at_us,
            }),
        }),
    );
    assert_eq!(run_writes(&h) - before, 1, "started and ended: one write");
    let stored = h.stored(&run);
    assert_eq!(stored.state, RunState::Succeeded);
    assert_eq!(stored.pid, Some(42), "the start is in the one write");
    assert_eq!(stored.spawned_at_us, Some(spawned_at_us));
}

#[test]
fn each_request_leaves_the_store_with_its_changes() {
    // A request that changes a run and the next one that reads the store (here, the
    // listing a test reads) see it changed: nothing waits for a later tick.
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let run = h.enqueue("hello");
    assert_eq!(h.state(&run), RunState::Queued);
    h.claim("w1", 1);
    assert_eq!(h.state(&run), RunState::Assigned);
    h.start("w1", &run);
    assert_eq!(h.state(&run), RunState::Running);
    assert_eq!(h.runs_of("hello")[0].state, RunState::Running);
}
