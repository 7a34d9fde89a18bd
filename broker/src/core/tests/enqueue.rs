//! `Enqueue`: a run of a job, now, recorded as asked by its actor.

use super::*;

#[test]
fn an_enqueued_run_is_queued_for_its_jobs_pool_and_says_who_asked() {
    let mut h = Harness::new();
    let (reply, out) = h.send(
        ADMIN,
        AdminRequest::Enqueue {
            job: "gpu-job".into(),
        },
    );
    let Reply::Enqueued { run } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(run.state, RunState::Queued);
    assert_eq!(run.pool, "gpu");
    assert_eq!(run.attempt, 1);
    assert_eq!(run.history[0].cause, "enqueued by key admin");
    assert_eq!(h.state(&run.id), RunState::Queued);
    // Workers of its pool hear of it; no waiting claim took it.
    assert!(out
        .events
        .iter()
        .any(|(topic, event)| topic == &topic::pool("gpu") && matches!(event, Event::Wake { .. })));
}

#[test]
fn enqueueing_an_unknown_job_lists_the_known_ones_and_stores_nothing() {
    let mut h = Harness::new();
    let before = h.core.store().run_count().unwrap();
    let Reply::Error { code, message } = h.admin(AdminRequest::Enqueue { job: "nope".into() })
    else {
        panic!("an unknown job was enqueued")
    };
    assert_eq!(code, ErrorCode::NotFound);
    assert_eq!(message, "no job named \"nope\" (jobs: gpu-job, hello)");
    assert_eq!(h.core.store().run_count().unwrap(), before);
}
