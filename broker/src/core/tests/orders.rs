//! `Heartbeat` and `FetchOrders`: the orders a worker must follow.

use super::*;

fn orders(reply: Reply) -> Orders {
    match reply {
        Reply::Orders(orders) => orders,
        other => panic!("orders: {other:?}"),
    }
}

#[test]
fn orders_name_killed_runs_and_runs_the_worker_does_not_own() {
    let mut h = Harness::new();
    h.register("w1", 2, &["default"], &[]);
    let run = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![run.clone()]);
    let heartbeat = |running: &[&str]| {
        WorkerRequest::Heartbeat(Heartbeat {
            running: running.iter().map(|r| r.to_string()).collect(),
            free_slots: 1,
            draining: false,
        })
    };
    // Nothing to do while the run is its own and nobody asked to kill it.
    assert_eq!(
        orders(h.worker("w1", heartbeat(&[run.as_str()]))),
        Orders::default()
    );
    // A run the broker never gave it is to be killed.
    assert_eq!(
        orders(h.worker("w1", heartbeat(&[run.as_str(), "stranger"]))).kill,
        vec!["stranger".to_string()]
    );
    h.admin(AdminRequest::Kill {
        selectors: vec![run.clone()],
    });
    assert_eq!(
        orders(h.worker("w1", heartbeat(&[run.as_str()]))).kill,
        vec![run.clone()]
    );
    // FetchOrders (after an OrdersPending event) gives the same kill orders.
    assert_eq!(
        orders(h.worker("w1", WorkerRequest::FetchOrders)),
        Orders {
            kill: vec![run.clone()],
            drain: false
        }
    );
    h.admin(AdminRequest::Drain {
        worker: "w1".into(),
    });
    assert!(orders(h.worker("w1", WorkerRequest::FetchOrders)).drain);
}

#[test]
fn a_worker_without_a_session_gets_no_orders_but_is_told_to_register() {
    let mut h = Harness::new();
    let Reply::Error { code, .. } = h.worker("w9", WorkerRequest::FetchOrders) else {
        panic!("an unregistered worker got orders")
    };
    assert_eq!(code, ErrorCode::NotRegistered);
}
