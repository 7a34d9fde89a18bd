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

#[test]
fn several_runs_are_retried_at_once_and_each_refusal_stands_alone() {
    let mut h = Harness::new();
    h.register("w1", 4, &["default"], &[]);
    let failed: Vec<String> = (0..3).map(|_| h.enqueue("hello")).collect();
    h.claim("w1", 3);
    for run in &failed {
        h.finish("w1", run, Outcome::Exited { code: 1 });
    }
    let queued = h.enqueue("hello");
    let mut asked = failed.clone();
    asked.push(queued.clone());
    asked.push("nosuchrun".into());
    let Reply::RetriedMany { retried, refused } = h.admin(AdminRequest::RetryMany {
        runs: asked.clone(),
    }) else {
        panic!("not retried")
    };
    assert_eq!(retried.len(), 3);
    for (new, old) in retried.iter().zip(&failed) {
        assert_eq!(new.attempt, 2);
        assert_eq!(
            h.stored(&new.id).first_attempt.as_deref(),
            Some(old.as_str())
        );
    }
    let refused: Vec<(&str, ErrorCode)> =
        refused.iter().map(|r| (r.run.as_str(), r.code)).collect();
    assert_eq!(
        refused,
        vec![
            (queued.as_str(), ErrorCode::BadRequest),
            ("nosuchrun", ErrorCode::NotFound)
        ]
    );
    let Reply::Audit { entries } = h.admin(AdminRequest::Audit {
        before: None,
        limit: 1,
    }) else {
        panic!("no audit log")
    };
    assert_eq!(entries[0].action, "retry");
    assert_eq!(entries[0].target, asked.join(" "), "five are named in full");
    assert_eq!(entries[0].outcome, "3 retried, 2 refused");
    // Nothing, or too many at once, is refused whole.
    for runs in [vec![], vec!["x".to_string(); 1_001]] {
        let Reply::Error { code, .. } = h.admin(AdminRequest::RetryMany { runs }) else {
            panic!("not refused")
        };
        assert_eq!(code, ErrorCode::BadRequest);
    }
    let Reply::Error { message, .. } = h.admin(AdminRequest::Kill {
        selectors: vec!["x".to_string(); 1_001],
    }) else {
        panic!("not refused")
    };
    assert_eq!(message, "name 1 to 1000 runs at a time, not 1001");
}
