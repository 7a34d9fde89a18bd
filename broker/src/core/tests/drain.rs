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
