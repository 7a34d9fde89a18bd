//! `Reports`: several reports in one message, each handled as if sent alone, in order,
//! and answered in one reply.

use super::*;
use jobcast_protocol::{Report, MAX_REPORTS};

fn finished(run_id: &str, claim: u32) -> Report {
    Report::RunFinished(RunFinished {
        run_id: run_id.into(),
        outcome: Outcome::Exited { code: 0 },
        duration_ms: 1,
        log_bytes: 3,
        claim,
        usage: None,
        started: None,
    })
}

#[test]
fn reports_together_are_handled_in_order_and_each_answered() {
    let mut h = Harness::new();
    h.register("w1", 2, &["default"], &[]);
    let (a, b, c) = (h.enqueue("hello"), h.enqueue("hello"), h.enqueue("hello"));
    assert_eq!(h.claim("w1", 2), vec![a.clone(), b.clone()]);

    let reply = h.worker(
        "w1",
        WorkerRequest::Reports(vec![
            Report::RunStarted {
                run_id: a.clone(),
                pid: 41,
                spawned_at_us: 0,
            },
            Report::LogChunk {
                run_id: a.clone(),
                offset: 0,
                data: b"hi\n".to_vec(),
            },
            finished(&a, 1),
            Report::Release {
                run_ids: vec![b.clone()],
            },
            // A report for a run the broker does not hold: acknowledged, as alone.
            Report::RunStarted {
                run_id: "no-such-run".into(),
                pid: 1,
                spawned_at_us: 0,
            },
        ]),
    );
    let Reply::Reports(replies) = reply else {
        panic!("not answered with a reply per report: {reply:?}")
    };
    let [started, chunk, ended, released, unknown] = replies.as_slice() else {
        panic!("{} replies to 5 reports: {replies:?}", replies.len())
    };
    assert_eq!(
        (started, chunk, released, unknown),
        (&Reply::Ack, &Reply::Ack, &Reply::Ack, &Reply::Ack)
    );
    // The end's claim took the run that was still queued; the release came after it.
    let Reply::Granted { runs, .. } = ended else {
        panic!("the end's claim was not answered with a grant: {ended:?}")
    };
    assert_eq!(
        runs.iter().map(|r| r.run_id.clone()).collect::<Vec<_>>(),
        vec![c.clone()]
    );

    let stored = h.stored(&a);
    assert_eq!(stored.state, RunState::Succeeded);
    assert_eq!(stored.pid, Some(41));
    assert_eq!(
        h.core.store().log_chunks(&a).unwrap(),
        vec![(0, b"hi\n".to_vec())]
    );
    assert_eq!(h.state(&b), RunState::Queued);
    assert_eq!(h.state(&c), RunState::Assigned);
}

#[test]
fn an_empty_or_oversized_message_of_reports_is_refused_whole() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let run = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![run.clone()]);
    let refused = |reply: Reply| match reply {
        Reply::Error {
            code: ErrorCode::BadRequest,
            message,
        } => message,
        other => panic!("not refused: {other:?}"),
    };
    let message = refused(h.worker("w1", WorkerRequest::Reports(vec![])));
    assert!(message.contains("1 to 1024 reports"), "{message}");
    let too_many = vec![finished(&run, 0); MAX_REPORTS + 1];
    let message = refused(h.worker("w1", WorkerRequest::Reports(too_many)));
    assert!(message.contains("not 1025"), "{message}");
    // Nothing of the refused message was applied.
    assert_eq!(h.state(&run), RunState::Assigned);
}

#[test]
fn reports_from_a_worker_not_registered_are_refused_whole() {
    let mut h = Harness::new();
    let reply = h.worker("w9", WorkerRequest::Reports(vec![finished("r", 0)]));
    assert!(
        matches!(
            reply,
            Reply::Error {
                code: ErrorCode::NotRegistered,
                ..
            }
        ),
        "{reply:?}"
    );
}
