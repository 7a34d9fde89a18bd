//! `Drain` and `Release`: a worker that stops taking work hands runs back.

use super::*;

#[test]
fn a_draining_worker_gets_no_work_and_can_hand_runs_back() {
    let mut h = Harness::new();
    h.register("w1", 2, &["default"], &[]);
    let a = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![a.clone()]);
    assert_eq!(
        h.admin(AdminRequest::Drain {
            worker: "w1".into()
        }),
        Reply::Ack
    );
    h.enqueue("hello");
    assert!(h.claim("w1", 1).is_empty());
    let Reply::Orders(orders) = h.worker("w1", WorkerRequest::FetchOrders) else {
        panic!()
    };
    assert!(orders.drain);
    let (_, out) = h.send(
        "w1",
        WorkerRequest::Release {
            run_ids: vec![a.clone()],
        },
    );
    assert_eq!(h.state(&a), RunState::Queued);
    assert!(out.events.contains(&(
        topic::pool("default"),
        Event::Wake {
            pool: "default".into()
        }
    )));
    h.register("w2", 2, &["default"], &[]);
    assert_eq!(h.claim("w2", 2).len(), 2);
}

#[test]
fn a_worker_that_leaves_with_nothing_held_is_offline_at_once() {
    let mut h = Harness::new();
    h.register("w1", 2, &["default"], &[]);
    let a = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![a.clone()]);
    // Holding a run: refused, and the worker stays online with it.
    let refused = h.worker("w1", WorkerRequest::Leaving);
    assert!(
        matches!(&refused, Reply::Error { code: ErrorCode::BadRequest, message } if message.contains(&a)),
        "{refused:?}"
    );
    h.start("w1", &a);
    h.finish("w1", &a, Outcome::Exited { code: 0 });
    assert_eq!(h.worker("w1", WorkerRequest::Leaving), Reply::Ack);
    let Reply::Status(status) = h.admin(AdminRequest::Status) else {
        panic!()
    };
    let w1 = status.workers.iter().find(|w| w.id == "w1").unwrap();
    assert!(!w1.online, "{w1:?}");
    // Its finished run is untouched; anything it asks now, it must register for first.
    assert_eq!(h.state(&a), RunState::Succeeded);
    assert!(matches!(
        h.worker("w1", WorkerRequest::FetchOrders),
        Reply::Error {
            code: ErrorCode::NotRegistered,
            ..
        }
    ));
}
