//! Claims held open (`wait_ms`) and served at the end of a batch.

use super::*;
use crate::waiting_claims::MAX_CLAIM_WAIT_MS;

#[test]
fn a_waiting_claim_gets_a_run_in_the_batch_that_queues_it() {
    let mut h = Harness::new();
    h.register("w1", 2, &["default"], &[]);
    let (claim_id, out) = h.waiting_claim("w1", 2, 10_000);
    assert!(
        out.replies.is_empty(),
        "held, not answered: {:?}",
        out.replies
    );
    // The enqueue and the end of its batch (the tick), as the server runs them.
    let (reply, mut out) = h.send(
        ADMIN,
        AdminRequest::Enqueue {
            job: "hello".into(),
            key: None,
            params: Default::default(),
            priority: None,
        },
    );
    let Reply::Enqueued { run } = reply else {
        panic!("{reply:?}")
    };
    h.core.tick(h.now, &mut out).unwrap();
    assert_eq!(
        grants_for(&out, "w1"),
        vec![(claim_id, vec![run.id.clone()])]
    );
    // Granted before the batch's flush, like any claim.
    assert_eq!(h.state(&run.id), RunState::Assigned);
    // Nobody else needs waking for a run already taken.
    assert!(
        !out.events
            .iter()
            .any(|(_, e)| matches!(e, Event::Wake { .. })),
        "{:?}",
        out.events
    );
    // Answered once: the claim no longer waits.
    h.enqueue("hello");
    assert!(grants_for(&h.tick(), "w1").is_empty());
}

#[test]
fn a_waiting_claim_is_answered_with_nothing_when_its_wait_ends() {
    // A worker timeout longer than the longest wait: the worker stays online throughout.
    let config = CoreConfig {
        worker_timeout_ms: 2 * MAX_CLAIM_WAIT_MS,
        ..CoreConfig::default()
    };
    let mut h = Harness::with_config(MemoryStore::default(), config);
    h.register("w1", 1, &["default"], &[]);
    h.tick();
    let (claim_id, _) = h.waiting_claim("w1", 1, 500);
    // The loop wakes up for the deadline.
    assert_eq!(h.core.next_wakeup_us(), h.now + 500_000);
    h.advance_ms(499);
    assert!(grants_for(&h.tick(), "w1").is_empty());
    h.advance_ms(1);
    assert_eq!(grants_for(&h.tick(), "w1"), vec![(claim_id, vec![])]);
    let (claim_id, _) = h.waiting_claim("w1", 1, 2_000);
    h.advance_ms(1_999);
    assert!(grants_for(&h.tick(), "w1").is_empty());
    h.advance_ms(1);
    assert_eq!(grants_for(&h.tick(), "w1"), vec![(claim_id, vec![])]);
    // The wait is capped, whatever the worker asks for.
    let (claim_id, _) = h.waiting_claim("w1", 1, u64::MAX);
    h.advance_ms(MAX_CLAIM_WAIT_MS);
    assert_eq!(grants_for(&h.tick(), "w1"), vec![(claim_id, vec![])]);
}

#[test]
fn waiting_claims_are_served_oldest_first_and_only_for_their_pools() {
    let mut h = Harness::new();
    h.register("gpu1", 1, &["gpu"], &[]);
    h.register("w1", 1, &["default"], &[]);
    h.register("w2", 1, &["default"], &[]);
    let (gpu_claim, _) = h.waiting_claim("gpu1", 1, 10_000);
    let (first, _) = h.waiting_claim("w1", 1, 10_000);
    let (second, _) = h.waiting_claim("w2", 1, 10_000);
    let run = h.enqueue("hello");
    let out = h.tick();
    assert_eq!(grants_for(&out, "w1"), vec![(first, vec![run])]);
    assert!(grants_for(&out, "w2").is_empty());
    assert!(grants_for(&out, "gpu1").is_empty());
    let gpu_run = h.enqueue("gpu-job");
    let out = h.tick();
    assert_eq!(grants_for(&out, "gpu1"), vec![(gpu_claim, vec![gpu_run])]);
    let run = h.enqueue("hello");
    assert_eq!(grants_for(&h.tick(), "w2"), vec![(second, vec![run])]);
}

#[test]
fn runs_queued_while_every_slot_is_busy_reach_the_waiting_claim_when_one_frees() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let first = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![first.clone()]);
    // The worker thinks its slot is free (the run ended) before the broker has heard.
    let (claim_id, out) = h.waiting_claim("w1", 1, 10_000);
    assert!(out.replies.is_empty());
    let second = h.enqueue("hello");
    assert!(grants_for(&h.tick(), "w1").is_empty(), "no room yet");
    h.start("w1", &first);
    h.finish("w1", &first, Outcome::Exited { code: 0 });
    assert_eq!(h.state(&first), RunState::Succeeded);
    assert_eq!(grants_for(&h.tick(), "w1"), vec![(claim_id, vec![second])]);
}

#[test]
fn a_waiting_claim_ends_when_the_worker_claims_again_drains_or_registers() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    // A newer claim stands for the worker's slots; the older one is answered.
    let (old, _) = h.waiting_claim("w1", 1, 10_000);
    let (newer, out) = h.waiting_claim("w1", 1, 10_000);
    assert_eq!(grants_for(&out, "w1"), vec![(old, vec![])]);
    // A worker that starts draining is answered at once and not held again.
    let (_, out) = h.send(
        "w1",
        WorkerRequest::Heartbeat(Heartbeat {
            running: vec![],
            free_slots: 1,
            draining: true,
        }),
    );
    assert_eq!(grants_for(&out, "w1"), vec![(newer, vec![])]);
    let (id, out) = h.waiting_claim("w1", 1, 10_000);
    assert_eq!(grants_for(&out, "w1"), vec![(id, vec![])]);
    // Registering again ends the old session's claim.
    h.register("w1", 1, &["default"], &[]);
    let (held, _) = h.waiting_claim("w1", 1, 10_000);
    let (_, out) = h.send(
        "w1",
        WorkerRequest::Register(registration(&["default"], 4096)),
    );
    assert_eq!(grants_for(&out, "w1"), vec![(held, vec![])]);
    let run = h.enqueue("hello");
    assert!(grants_for(&h.tick(), "w1").is_empty());
    assert_eq!(h.state(&run), RunState::Queued);
}

#[test]
fn a_drain_order_answers_the_waiting_claim() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let (held, _) = h.waiting_claim("w1", 1, 10_000);
    let (_, out) = h.send(
        ADMIN,
        AdminRequest::Drain {
            worker: "w1".into(),
        },
    );
    assert_eq!(grants_for(&out, "w1"), vec![(held, vec![])]);
    let run = h.enqueue("hello");
    assert!(grants_for(&h.tick(), "w1").is_empty());
    assert_eq!(h.state(&run), RunState::Queued);
}

#[test]
fn a_claim_left_on_an_old_connection_is_dropped_not_granted() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    h.waiting_claim("w1", 1, 10_000);
    // The worker reconnected: the same name on a new connection.
    let mut out = Outbox::default();
    let heartbeat = WorkerRequest::Heartbeat(Heartbeat {
        running: vec![],
        free_slots: 1,
        draining: false,
    });
    h.core
        .handle(&b"new".to_vec(), "w1", 99, heartbeat, h.now, &mut out)
        .unwrap();
    let run = h.enqueue("hello");
    assert!(grants_for(&h.tick(), "w1").is_empty());
    assert_eq!(h.state(&run), RunState::Queued);
}

#[test]
fn a_silent_workers_waiting_claim_goes_with_it() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    h.waiting_claim("w1", 1, 30_000);
    h.advance_ms(CoreConfig::default().worker_timeout_ms + 1_000);
    h.tick();
    assert!(!h.core.is_online("w1"));
    let run = h.enqueue("hello");
    assert!(grants_for(&h.tick(), "w1").is_empty());
    assert_eq!(h.state(&run), RunState::Queued);
}
