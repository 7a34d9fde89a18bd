//! The tick: silent workers, lost runs, re-announced queues.

use super::*;
use crate::liveness::LEASE_MARGIN_MS;

/// What the default configuration waits, from a worker's last word, before giving its
/// running runs up: its lease (the worker timeout), its kill grace, the margin.
const GIVE_UP_MS: u64 = 10_000 + 5_000 + LEASE_MARGIN_MS;

/// `w2` heartbeats every second for `seconds` while the broker ticks; `w1` says nothing.
fn only_w2_speaks(h: &mut Harness, seconds: u64) {
    for _ in 0..seconds {
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
}

/// Workers w1 and w2 registered, and a run granted to w1 (and reported started when
/// `started`): the run, and the harness.
fn w1_holds_a_run(started: bool) -> (Harness, String) {
    let mut h = Harness::new();
    h.register("w1", 4, &["default"], &[]);
    h.register("w2", 4, &["default"], &[]);
    let run = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![run.clone()]);
    if started {
        h.start("w1", &run);
    }
    (h, run)
}

#[test]
fn a_silent_worker_goes_offline_at_the_timeout_and_its_run_is_lost_only_after_lease_and_kill_grace()
{
    let (mut h, run) = w1_holds_a_run(true);
    only_w2_speaks(&mut h, 11);
    assert!(!h.core.is_online("w1"), "offline after the worker timeout");
    assert!(h.core.is_online("w2"));
    assert_eq!(
        h.state(&run),
        RunState::Running,
        "a worker cut off is still stopping it: not given up yet"
    );
    // Just before the lease, the kill grace and the margin have passed: still running.
    only_w2_speaks(&mut h, GIVE_UP_MS / 1_000 - 11);
    assert_eq!(h.state(&run), RunState::Running);
    only_w2_speaks(&mut h, 1);
    let stored = h.stored(&run);
    assert_eq!(stored.state, RunState::Lost);
    let cause = &stored.history.last().unwrap().cause;
    assert!(
        cause.contains("lease (10000 ms) and kill grace (5000 ms)"),
        "{cause}"
    );
    match h.worker("w1", WorkerRequest::Claim { max: 1, wait_ms: 0 }) {
        Reply::Error {
            code: ErrorCode::NotRegistered,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_registration_tells_the_worker_its_lease_and_the_broker_waits_for_its_kill_grace() {
    let mut h = Harness::new();
    let mut register = registration(&["default"], 4096);
    register.kill_grace_ms = 60_000;
    match h.worker("w1", WorkerRequest::Register(register)) {
        Reply::Registered { lease_ms, .. } => assert_eq!(lease_ms, 10_000),
        other => panic!("{other:?}"),
    }
    h.register("w2", 4, &["default"], &[]);
    let run = h.enqueue("hello");
    h.claim("w1", 1);
    h.start("w1", &run);
    only_w2_speaks(&mut h, GIVE_UP_MS / 1_000 + 5);
    assert_eq!(h.state(&run), RunState::Running, "w1 takes 60 s to kill");
    only_w2_speaks(&mut h, 60);
    assert_eq!(h.state(&run), RunState::Lost);
}

#[test]
fn a_grant_never_started_on_a_worker_stopped_for_minutes_is_queued_again_not_lost() {
    let (mut h, run) = w1_holds_a_run(false);
    // w1 is stopped (SIGSTOP) for five minutes: the grant's answer waits unread.
    only_w2_speaks(&mut h, 300);
    assert!(!h.core.is_online("w1"));
    assert_eq!(h.state(&run), RunState::Assigned, "held for w1 to tell");
    // It resumes: its lease ran out, so it starts nothing; it registers again (same
    // process, not holding the run), and hands the grant back.
    let orders = h.register("w1", 4, &["default"], &[]);
    assert_eq!(
        orders
            .resume
            .iter()
            .map(|a| a.run_id.clone())
            .collect::<Vec<_>>(),
        vec![run.clone()],
        "the same process never started it: its grant is resent"
    );
    h.worker(
        "w1",
        WorkerRequest::Release {
            run_ids: vec![run.clone()],
        },
    );
    assert_eq!(h.state(&run), RunState::Queued);
    assert_eq!(
        h.claim("w2", 1),
        vec![run.clone()],
        "and runs elsewhere, once"
    );
}

#[test]
fn a_grant_never_started_is_lost_when_its_worker_does_not_come_back_within_the_hold() {
    let (mut h, run) = w1_holds_a_run(false);
    only_w2_speaks(&mut h, 600);
    assert_eq!(h.state(&run), RunState::Assigned);
    only_w2_speaks(&mut h, 1);
    let stored = h.stored(&run);
    assert_eq!(stored.state, RunState::Lost);
    let cause = &stored.history.last().unwrap().cause;
    assert!(
        cause.contains("did not come back within 600000 ms"),
        "{cause}"
    );
}

#[test]
fn runs_of_a_worker_that_never_returns_after_a_broker_restart_are_lost() {
    let mut store = MemoryStore::default();
    let (running, granted);
    {
        let mut h = Harness::with_store(std::mem::take(&mut store));
        h.register("w1", 2, &["default"], &[]);
        running = h.enqueue("hello");
        granted = h.enqueue("hello");
        h.claim("w1", 2);
        h.start("w1", &running);
        // The broker stops; the next one opens what it stored.
        store = h.core.into_store();
    }
    // w1 may have heard the old broker until it stopped: the new one counts from its start.
    let mut h = Harness::with_store(std::mem::take(&mut store));
    h.tick();
    h.advance_ms(GIVE_UP_MS);
    h.tick();
    assert_eq!(h.state(&running), RunState::Running);
    h.advance_ms(1_000);
    h.tick();
    assert_eq!(h.state(&running), RunState::Lost);
    assert_eq!(h.state(&granted), RunState::Assigned);
    h.advance_ms(600_000);
    h.tick();
    assert_eq!(h.state(&granted), RunState::Lost);
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

#[test]
fn a_revoked_workers_runs_are_given_up_as_revoked_once_it_has_been_told_and_had_its_kill_grace() {
    let mut h = Harness::new();
    h.register("w1", 4, &["default"], &[]);
    h.register("w2", 4, &["default"], &[]);
    let running = h.enqueue("hello");
    let granted = h.enqueue("hello");
    h.claim("w1", 2);
    h.start("w1", &running);
    h.core.revoke_worker("w1").unwrap();
    assert!(!h.core.is_online("w1"));
    // Its next heartbeat is answered "revoked" (by the server) a second later.
    h.advance_ms(1_000);
    h.core.revoked_worker_told("w1", h.now);
    only_w2_speaks(&mut h, (5_000 + LEASE_MARGIN_MS) / 1_000);
    assert_eq!(
        h.state(&running),
        RunState::Running,
        "within its kill grace"
    );
    only_w2_speaks(&mut h, 1);
    for run in [&running, &granted] {
        let stored = h.stored(run);
        assert_eq!(stored.state, RunState::Lost);
        let cause = &stored.history.last().unwrap().cause;
        assert_eq!(cause, "the key of worker w1 was revoked");
    }
}

#[test]
fn a_revoked_worker_never_told_has_its_runs_given_up_after_its_lease() {
    let (mut h, run) = w1_holds_a_run(true);
    h.core.revoke_worker("w1").unwrap();
    only_w2_speaks(&mut h, GIVE_UP_MS / 1_000);
    assert_eq!(h.state(&run), RunState::Running);
    only_w2_speaks(&mut h, 1);
    assert_eq!(h.state(&run), RunState::Lost);
}
