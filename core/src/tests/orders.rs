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
            drain: false,
            resume: vec![],
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

fn heartbeat(running: &[&str]) -> WorkerRequest {
    WorkerRequest::Heartbeat(Heartbeat {
        running: running.iter().map(|r| r.to_string()).collect(),
        free_slots: 1,
        draining: false,
    })
}

fn resumed(orders: &Orders) -> Vec<String> {
    orders.resume.iter().map(|a| a.run_id.clone()).collect()
}

#[test]
fn a_grant_the_worker_does_not_report_is_resent_with_its_orders() {
    // The answer to a claim is lost on a dropped connection: the worker goes on with its
    // session and never hears of the run. Its next heartbeat does not list it.
    let mut h = Harness::new();
    h.register("w1", 2, &["default"], &[]);
    let run = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![run.clone()]);
    let answer = orders(h.worker("w1", heartbeat(&[])));
    assert_eq!(resumed(&answer), vec![run.clone()]);
    // Once the worker holds it, nothing more is resent.
    assert!(resumed(&orders(h.worker("w1", heartbeat(&[&run])))).is_empty());
    // Nor once it is reported started (the heartbeat may have crossed that report).
    h.start("w1", &run);
    assert!(resumed(&orders(h.worker("w1", heartbeat(&[])))).is_empty());
}

#[test]
fn a_grant_asked_to_die_is_not_resent() {
    let mut h = Harness::new();
    h.register("w1", 2, &["default"], &[]);
    let run = h.enqueue("hello");
    h.claim("w1", 1);
    h.admin(AdminRequest::Kill {
        selectors: vec![run.clone()],
    });
    let answer = orders(h.worker("w1", heartbeat(&[])));
    assert!(resumed(&answer).is_empty(), "{answer:?}");
}
