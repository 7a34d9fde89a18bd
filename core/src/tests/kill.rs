//! `Kill`: cancelling, killing, and resolving selectors.

use super::*;

#[test]
fn kill_cancels_queued_orders_running_and_is_idempotent() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let running = h.enqueue("hello");
    let queued = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![running.clone()]);
    h.start("w1", &running);

    let (reply, out) = h.send(
        ADMIN,
        AdminRequest::Kill {
            selectors: vec![running.clone(), queued.clone()],
        },
    );
    let Reply::KillResult { outcomes } = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(
        outcomes[0],
        KillOutcome::Killing {
            run_id: running.clone(),
            worker: "w1".into()
        }
    );
    assert_eq!(
        outcomes[1],
        KillOutcome::Cancelled {
            run_id: queued.clone()
        }
    );
    assert!(out
        .events
        .contains(&(topic::worker("w1"), Event::OrdersPending)));
    assert_eq!(h.state(&queued), RunState::Cancelled);

    // the order reaches the worker through its heartbeat
    let Reply::Orders(orders) = h.worker(
        "w1",
        WorkerRequest::Heartbeat(Heartbeat {
            running: vec![running.clone()],
            free_slots: 0,
            draining: false,
        }),
    ) else {
        panic!()
    };
    assert_eq!(orders.kill, vec![running.clone()]);
    h.finish("w1", &running, Outcome::Killed);
    assert_eq!(h.state(&running), RunState::Killed);

    let Reply::KillResult { outcomes } = h.admin(AdminRequest::Kill {
        selectors: vec![running.clone()],
    }) else {
        panic!()
    };
    assert_eq!(
        outcomes[0],
        KillOutcome::AlreadyFinished {
            run_id: running,
            state: RunState::Killed
        }
    );
}

#[test]
fn kill_selectors_match_unique_prefixes_and_substrings() {
    let mut h = Harness::new();
    let a = h.enqueue("hello");
    let b = h.enqueue("hello");
    let unique_prefix = (1..=a.len())
        .map(|n| &a[..n])
        .find(|p| !b.starts_with(p))
        .unwrap()
        .to_string();
    let Reply::KillResult { outcomes } = h.admin(AdminRequest::Kill {
        selectors: vec![
            unique_prefix,
            a[6..].to_string(),
            "zzzz-none".into(),
            String::new(),
        ],
    }) else {
        panic!()
    };
    assert_eq!(outcomes[0], KillOutcome::Cancelled { run_id: a.clone() });
    assert_eq!(
        outcomes[1],
        KillOutcome::AlreadyFinished {
            run_id: a.clone(),
            state: RunState::Cancelled
        }
    );
    assert!(matches!(outcomes[2], KillOutcome::NotFound { .. }));
    assert!(matches!(outcomes[3], KillOutcome::NotFound { .. }));
    // a fragment common to both is ambiguous and lists them
    let common: String = a
        .chars()
        .zip(b.chars())
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x)
        .collect();
    if !common.is_empty() {
        let Reply::KillResult { outcomes } = h.admin(AdminRequest::Kill {
            selectors: vec![common],
        }) else {
            panic!()
        };
        let KillOutcome::Ambiguous { candidates, .. } = &outcomes[0] else {
            panic!("{outcomes:?}")
        };
        assert!(candidates.contains(&a) && candidates.contains(&b));
    }
}
