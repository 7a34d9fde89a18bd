//! `Enqueue`: a run of a job, now, recorded as asked by its actor.

use super::*;

#[test]
fn an_enqueued_run_is_queued_for_its_jobs_pool_and_says_who_asked() {
    let mut h = Harness::new();
    let (reply, out) = h.send(
        ADMIN,
        AdminRequest::Enqueue {
            job: "gpu-job".into(),
            key: None,
            params: Default::default(),
            priority: None,
        },
    );
    let Reply::Enqueued { run } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(run.state, RunState::Queued);
    assert_eq!(run.attempt, 1);
    let stored = h.stored(&run.id);
    assert_eq!(stored.pool, "gpu");
    assert_eq!(stored.history[0].cause, "enqueued by key admin");
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
    let Reply::Error { code, message } = h.admin(AdminRequest::Enqueue {
        job: "nope".into(),
        key: None,
        params: Default::default(),
        priority: None,
    }) else {
        panic!("an unknown job was enqueued")
    };
    assert_eq!(code, ErrorCode::NotFound);
    assert_eq!(message, "no job named \"nope\" (jobs: gpu-job, hello)");
    assert_eq!(h.core.store().run_count().unwrap(), before);
}

fn enqueue_with_key(h: &mut Harness, job: &str, key: &str) -> Reply {
    h.admin(AdminRequest::Enqueue {
        job: job.into(),
        key: Some(key.into()),
        params: Default::default(),
        priority: None,
    })
}

fn run_id(reply: Reply) -> String {
    match reply {
        Reply::Enqueued { run } => run.id,
        other => panic!("not enqueued: {other:?}"),
    }
}

#[test]
fn a_repeated_enqueue_with_the_same_key_answers_with_the_first_run() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let first = run_id(enqueue_with_key(&mut h, "hello", "k-1"));
    // A client that did not hear the answer asks again: the same run, nothing new.
    assert_eq!(run_id(enqueue_with_key(&mut h, "hello", "k-1")), first);
    assert_eq!(h.core.store().run_count().unwrap(), 1);
    // Still so once the run has ended, and after a broker restart.
    h.claim("w1", 1);
    h.start("w1", &first);
    h.finish("w1", &first, Outcome::Exited { code: 0 });
    let mut h = Harness::with_store(h.core.into_store());
    assert_eq!(run_id(enqueue_with_key(&mut h, "hello", "k-1")), first);
    assert_eq!(h.core.store().run_count().unwrap(), 1);
    // Another key, or the same key for another job, is another request.
    let second = run_id(enqueue_with_key(&mut h, "hello", "k-2"));
    let other_job = run_id(enqueue_with_key(&mut h, "gpu-job", "k-1"));
    assert_ne!(second, first);
    assert_ne!(other_job, first);
    assert_eq!(h.core.store().run_count().unwrap(), 3);
}

#[test]
fn an_empty_or_overlong_key_is_refused() {
    let mut h = Harness::new();
    for key in [String::new(), "k".repeat(129)] {
        let Reply::Error { code, message } = enqueue_with_key(&mut h, "hello", &key) else {
            panic!("a bad key was accepted")
        };
        assert_eq!(code, ErrorCode::BadRequest);
        assert!(message.contains("idempotency key"), "{message}");
    }
    assert_eq!(h.core.store().run_count().unwrap(), 0);
}
