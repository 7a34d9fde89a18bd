//! `Retry`: a finished run's job again, as the next attempt.

use super::*;

#[test]
fn a_retry_is_the_next_attempt_and_points_at_the_first() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let first = h.enqueue("hello");
    h.claim("w1", 1);
    h.finish("w1", &first, Outcome::Exited { code: 1 });

    let Reply::Enqueued { run: second } = h.admin(AdminRequest::Retry { run: first.clone() })
    else {
        panic!("retry refused")
    };
    assert_eq!(second.attempt, 2);
    let stored = h.stored(&second.id);
    assert_eq!(stored.first_attempt.as_deref(), Some(first.as_str()));
    assert_eq!(
        stored.history[0].cause,
        format!("retry of run {first} (failed) by key admin")
    );
    h.claim("w1", 1);
    h.finish("w1", &second.id, Outcome::Exited { code: 1 });

    // A retry of the retry still points at the first attempt.
    let Reply::Enqueued { run: third } = h.admin(AdminRequest::Retry {
        run: second.id.clone(),
    }) else {
        panic!("retry refused")
    };
    assert_eq!(third.attempt, 3);
    assert_eq!(
        h.stored(&third.id).first_attempt.as_deref(),
        Some(first.as_str())
    );
}

#[test]
fn only_finished_runs_are_retried() {
    let mut h = Harness::new();
    let queued = h.enqueue("hello");
    let refusal = |reply: Reply| match reply {
        Reply::Error { code, message } => (code, message),
        other => panic!("not refused: {other:?}"),
    };
    let (code, message) = refusal(h.admin(AdminRequest::Retry {
        run: queued.clone(),
    }));
    assert_eq!(code, ErrorCode::BadRequest);
    assert_eq!(message, format!("run {queued} has not finished yet"));
    let (code, _) = refusal(h.admin(AdminRequest::Retry { run: "zzzz".into() }));
    assert_eq!(code, ErrorCode::NotFound);
}
