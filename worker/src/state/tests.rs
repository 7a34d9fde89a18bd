//! The worker's decisions, event by event, in the orders that matter.

use super::*;
use jobcast_protocol::{JobSpec, Outcome};

fn identity(concurrency: u32) -> Identity {
    Identity {
        hostname: "host".into(),
        pid: 42,
        instance: 7,
        version: "test".into(),
        concurrency,
        prefetch: 0,
        pools: vec!["default".into()],
        max_log_bytes: 1 << 20,
        reconnect_after: Duration::from_secs(30),
        brokers: 1,
        drain_timeout: Duration::from_secs(60),
        kill_grace: Duration::from_secs(5),
        earlier_started: None,
    }
}

fn assignment(run_id: &str) -> Assignment {
    Assignment {
        run_id: run_id.into(),
        attempt: 1,
        scheduled_at_ms: 0,
        job: JobSpec::new(
            "job",
            "default",
            jobcast_protocol::Exec::Command(vec!["true".into()]),
        )
        .into(),
        params: Default::default(),
    }
}

fn registered_reply() -> Answer {
    registered_resuming(&[])
}

/// The broker's answer to a registration, resending grants whose answer was lost.
fn registered_resuming(runs: &[&str]) -> Answer {
    Answer::Reply(Reply::Registered {
        boot_id: 7,
        heartbeat_interval_ms: 1_000,
        orders: Orders {
            resume: runs.iter().map(|r| assignment(r)).collect(),
            ..Orders::default()
        },
        lease_ms: 0,
        starts_in_ends: false,
        reports_together: false,
    })
}

fn granted(runs: &[&str], more_queued: bool) -> Answer {
    Answer::Reply(Reply::Granted {
        runs: runs.iter().map(|r| assignment(r).into()).collect(),
        more_queued,
    })
}

fn finished(run_id: &str) -> RunFinished {
    RunFinished {
        run_id: run_id.into(),
        outcome: Outcome::Exited { code: 0 },
        duration_ms: 1,
        log_bytes: 0,
        claim: 0,
        usage: None,
        started: None,
    }
}

/// The purpose of the claim among `actions`, and how many runs it asks for.
fn claim_in(actions: &[Action]) -> Option<(Purpose, u32, u64)> {
    actions.iter().find_map(|a| match a {
        Action::Request {
            purpose,
            request: WorkerRequest::Claim { max, wait_ms },
            ..
        } => Some((*purpose, *max, *wait_ms)),
        _ => None,
    })
}

fn started(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Start(assignment) => Some(assignment.run_id.clone()),
            _ => None,
        })
        .collect()
}

/// The runs handed back to the broker among `actions`.
fn released(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Request {
                request: WorkerRequest::Release { run_ids },
                ..
            } => Some(run_ids.clone()),
            _ => None,
        })
        .flatten()
        .collect()
}

fn stopped(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Stop(run_id) => Some(run_id.clone()),
            _ => None,
        })
        .collect()
}

/// A worker that has registered and sent its first (waiting) claim at `t` = 0.
fn registered(concurrency: u32) -> (WorkerState, Purpose) {
    let mut state = WorkerState::new(identity(concurrency), 0);
    let actions = state.start();
    assert!(matches!(
        &actions[..],
        [Action::Request {
            purpose: Purpose::Register,
            ..
        }]
    ));
    let actions = state.on_answer(Purpose::Register, registered_reply(), 0);
    let (purpose, max, wait_ms) = claim_in(&actions).expect("a claim after registering");
    assert_eq!((max, wait_ms), (concurrency, CLAIM_WAIT.as_millis() as u64));
    assert!(state.is_registered());
    (state, purpose)
}

#[test]
fn registers_then_keeps_one_waiting_claim_for_its_free_slots() {
    let (mut state, claim) = registered(2);
    // A wake-up while the claim waits sends no second claim.
    let actions = state.on_event(
        Event::Wake {
            pool: "default".into(),
        },
        10,
    );
    assert_eq!(claim_in(&actions), None);
    // One run comes; the claim is renewed for the slot still free.
    let actions = state.on_answer(claim, granted(&["r1"], false), 20);
    assert_eq!(started(&actions), ["r1"]);
    assert_eq!(claim_in(&actions).map(|(_, max, _)| max), Some(1));
}

#[test]
fn a_claim_held_to_its_end_is_renewed_but_one_answered_at_once_is_not() {
    let (mut state, claim) = registered(1);
    let held_until = CLAIM_WAIT.as_millis() as u64;
    let actions = state.on_answer(claim, granted(&[], false), held_until);
    let (renewed, ..) = claim_in(&actions).expect("waits again");
    // A broker that answers "nothing" at once (not holding claims, or draining this
    // worker): no spinning; the next wake-up asks again.
    let actions = state.on_answer(renewed, granted(&[], false), held_until + 5);
    assert_eq!(claim_in(&actions), None);
    let actions = state.on_event(
        Event::Wake {
            pool: "default".into(),
        },
        held_until + 10,
    );
    assert!(claim_in(&actions).is_some());
}

#[test]
fn a_finished_run_reports_and_claims_its_slot_in_one_message() {
    let (mut state, claim) = registered(1);
    let actions = state.on_answer(claim, granted(&["r1"], false), 5);
    assert_eq!(started(&actions), ["r1"]);
    assert_eq!(claim_in(&actions), None, "no free slot");
    let actions = state.on_run_done(finished("r1"));
    match &actions[..] {
        [Action::Report {
            request: WorkerRequest::RunFinished(report),
            ..
        }] => assert_eq!(report.claim, 1),
        other => panic!("{other:?}"),
    }
    // Granted in answer to the report: the same rules as a claim's answer.
    let actions = state.on_report(
        ReportAnswer::Granted {
            runs: vec![assignment("r2").into()],
            more_queued: false,
        },
        30,
    );
    assert_eq!(started(&actions), ["r2"]);
    // Held until the broker acknowledges the end.
    assert_eq!(state.running_ids(), ["r1", "r2"]);
    state.on_report(ReportAnswer::FinishAcked("r1".into()), 40);
    assert_eq!(state.running_ids(), ["r2"]);
}

#[test]
fn a_run_granted_twice_starts_once() {
    let (mut state, claim) = registered(2);
    let actions = state.on_answer(claim, granted(&["r1"], false), 5);
    assert_eq!(started(&actions), ["r1"]);
    let actions = state.on_report(
        ReportAnswer::Granted {
            runs: vec![assignment("r1").into()],
            more_queued: false,
        },
        6,
    );
    assert!(started(&actions).is_empty());
}

#[test]
fn draining_takes_no_new_work_and_hands_back_late_grants() {
    let (mut state, claim) = registered(2);
    let actions = state.on_answer(claim, granted(&["r1"], false), 5);
    let (renewed, ..) = claim_in(&actions).expect("claims the second slot");
    assert!(state.on_signal("SIGTERM", 10).is_empty());
    assert!(state.is_draining());
    // The waiting claim comes back with a run after the drain began: released.
    let actions = state.on_answer(renewed, granted(&["r2"], false), 20);
    assert!(started(&actions).is_empty());
    assert_eq!(released(&actions), ["r2"]);
    // Heartbeats tell the broker; no claims while draining.
    let actions = state.on_timer(2_000);
    assert!(actions.iter().any(|a| matches!(a,
        Action::Request { request: WorkerRequest::Heartbeat(h), .. } if h.draining)));
    assert_eq!(claim_in(&actions), None);
    // The finish report claims nothing.
    match &state.on_run_done(finished("r1"))[..] {
        [Action::Report {
            request: WorkerRequest::RunFinished(report),
            ..
        }] => assert_eq!(report.claim, 0),
        other => panic!("{other:?}"),
    }
    assert!(state.drained());
}

#[test]
fn the_drain_deadline_and_a_second_signal_stop_what_still_runs() {
    let (mut state, claim) = registered(2);
    state.on_answer(claim, granted(&["r1", "r2"], false), 5);
    state.on_signal("SIGTERM", 10);
    assert!(stopped(&state.on_timer(59_000)).is_empty());
    assert_eq!(stopped(&state.on_timer(60_010)), ["r1", "r2"]);
    // And at once on a second signal.
    let (mut state, claim) = registered(1);
    state.on_answer(claim, granted(&["r1"], false), 5);
    state.on_signal("SIGTERM", 10);
    assert_eq!(stopped(&state.on_signal("SIGINT", 20)), ["r1"]);
}

#[test]
fn kill_orders_stop_only_runs_still_going() {
    let (mut state, claim) = registered(2);
    state.on_answer(claim, granted(&["r1", "r2"], false), 5);
    state.on_run_done(finished("r2"));
    let orders = Answer::Reply(Reply::Orders(Orders {
        kill: vec!["r1".into(), "r2".into(), "unknown".into()],
        drain: false,
        resume: vec![],
    }));
    let actions = state.on_answer(Purpose::Orders, orders, 10);
    assert_eq!(stopped(&actions), ["r1"]);
    // A drain order drains.
    let orders = Answer::Reply(Reply::Orders(Orders {
        kill: vec![],
        drain: true,
        resume: vec![],
    }));
    state.on_answer(Purpose::Orders, orders, 20);
    assert!(state.is_draining());
}

#[test]
fn an_unknown_worker_registers_again_listing_what_it_runs() {
    let (mut state, claim) = registered(2);
    state.on_answer(claim, granted(&["r1"], false), 5);
    let not_registered = Answer::Reply(Reply::Error {
        code: ErrorCode::NotRegistered,
        message: "register first".into(),
    });
    let actions = state.on_answer(Purpose::Heartbeat, not_registered, 10);
    match &actions[..] {
        [Action::Request {
            request: WorkerRequest::Register(register),
            ..
        }] => assert_eq!(register.running, ["r1"]),
        other => panic!("{other:?}"),
    }
    assert!(!state.is_registered());
    // One registration at a time: the reporter's NotRegistered adds none.
    assert!(state.on_report(ReportAnswer::NotRegistered, 11).is_empty());
}

#[test]
fn a_broker_restart_seen_on_pub_means_registering_again() {
    let (mut state, _) = registered(1);
    let same = Event::BrokerAlive {
        boot_id: 7,
        time_ms: 0,
    };
    assert!(state.on_event(same, 10).is_empty());
    let restarted = Event::BrokerAlive {
        boot_id: 8,
        time_ms: 0,
    };
    let actions = state.on_event(restarted, 20);
    assert!(matches!(
        &actions[..],
        [Action::Request {
            purpose: Purpose::Register,
            ..
        }]
    ));
}

#[test]
fn silence_past_the_limit_reconnects_and_registers() {
    let (mut state, _) = registered(1);
    // Heartbeats are due every second; only silence longer than 30 s reconnects.
    let actions = state.on_timer(29_000);
    assert!(!actions.contains(&Action::Reconnect));
    let actions = state.on_timer(31_000);
    assert_eq!(actions.first(), Some(&Action::Reconnect));
    assert!(actions.iter().any(|a| matches!(
        a,
        Action::Request {
            purpose: Purpose::Register,
            ..
        }
    )));
}

#[test]
fn a_refused_registration_drains_and_exits_once_nothing_runs() {
    let mut state = WorkerState::new(identity(1), 0);
    state.start();
    let forbidden = Answer::Reply(Reply::Error {
        code: ErrorCode::Forbidden,
        message: "the key of worker \"w1\" may not serve pool \"gpu\"".into(),
    });
    state.on_answer(Purpose::Register, forbidden, 5);
    assert!(state.is_draining());
    assert_eq!(
        state.refused_with_nothing_running(),
        Some("the key of worker \"w1\" may not serve pool \"gpu\"")
    );
}

/// What a registration gets when the broker's handshake turns the connection down.
fn auth_refused() -> Answer {
    Answer::Refused {
        reason: "auth_failed".into(),
        detail: "unknown sender or wrong secret".into(),
    }
}

#[test]
fn requests_sent_before_the_broker_began_acting_are_sent_again_and_never_end_the_worker() {
    let mut state = WorkerState::new(identity(1), 0);
    state.start();
    let registers = |actions: &[Action]| {
        actions
            .iter()
            .filter(|a| {
                matches!(
                    a,
                    Action::Request {
                        purpose: Purpose::Register,
                        ..
                    }
                )
            })
            .count()
    };
    // The registration sent at start is refused; so is everything else in flight (the
    // client fails every request at once on a refusal): many refusals, none about the
    // key. The next heartbeat is due at 1 s.
    for at in [100, 101, 102, 103] {
        state.on_answer(
            Purpose::Register,
            Answer::Refused {
                reason: "before_start".into(),
                detail: "frame from \"w1\" was sealed 15 ms before this side started".into(),
            },
            at,
        );
    }
    assert!(
        !state.is_draining(),
        "a request sent early is not a refused key"
    );
    assert_eq!(state.refused_with_nothing_running(), None);
    // Asked again soon, not at the next heartbeat.
    assert_eq!(registers(&state.on_timer(350)), 1);
}

#[test]
fn refusals_at_the_connection_are_retried_a_few_times_then_the_worker_ends() {
    let mut state = WorkerState::new(identity(1), 0);
    state.start();
    state.on_answer(Purpose::Register, auth_refused(), 5);
    state.on_answer(Purpose::Register, auth_refused(), 1_005);
    assert!(!state.is_draining(), "two refusals are waited out");
    assert_eq!(state.refused_with_nothing_running(), None);
    state.on_answer(Purpose::Register, auth_refused(), 2_005);
    assert!(state.is_draining());
    let reason = state.refused_with_nothing_running().unwrap();
    assert!(reason.contains("[keys.workers]"), "{reason}");
}

#[test]
fn a_registration_resets_the_count_of_refusals() {
    let mut state = WorkerState::new(identity(1), 0);
    state.start();
    state.on_answer(Purpose::Register, auth_refused(), 5);
    state.on_answer(Purpose::Register, auth_refused(), 1_005);
    let registered = Answer::Reply(Reply::Registered {
        boot_id: 7,
        heartbeat_interval_ms: 1_000,
        orders: Default::default(),
        lease_ms: 0,
        starts_in_ends: false,
        reports_together: false,
    });
    state.on_answer(Purpose::Register, registered, 1_500);
    state.on_answer(Purpose::Register, auth_refused(), 2_005);
    state.on_answer(Purpose::Register, auth_refused(), 3_005);
    assert!(!state.is_draining());
}

#[test]
fn a_key_removed_while_registered_ends_the_worker_after_a_few_refusals() {
    // A reload at the broker took this worker's key away: its heartbeats are refused.
    let (mut state, _) = registered(1);
    state.on_answer(Purpose::Heartbeat, auth_refused(), 1_000);
    state.on_answer(Purpose::Heartbeat, auth_refused(), 2_000);
    assert!(!state.is_draining(), "two refusals are waited out");
    // Any answer in between shows the key works again.
    state.on_answer(Purpose::Heartbeat, Answer::Reply(Reply::Ack), 2_500);
    state.on_answer(Purpose::Heartbeat, auth_refused(), 3_000);
    state.on_answer(Purpose::Orders, auth_refused(), 3_500);
    assert!(!state.is_draining());
    state.on_answer(Purpose::Heartbeat, auth_refused(), 4_000);
    assert!(state.is_draining());
    let reason = state.refused_with_nothing_running().unwrap();
    assert!(reason.contains("[keys.workers]"), "{reason}");
}

#[test]
fn pings_and_pending_orders_are_answered() {
    let (mut state, _) = registered(1);
    assert_eq!(
        state.on_event(Event::Ping { ping_id: 9 }, 5),
        [Action::AnswerPing(9)]
    );
    let actions = state.on_event(Event::OrdersPending, 6);
    assert!(matches!(
        &actions[..],
        [Action::Request {
            purpose: Purpose::Orders,
            request: WorkerRequest::FetchOrders,
            ..
        }]
    ));
}

#[test]
fn failed_requests_change_nothing_but_their_in_flight_flag() {
    let (mut state, claim) = registered(1);
    let actions = state.on_answer(claim, Answer::Failed("timed out".into()), 5);
    assert!(actions.is_empty());
    // The next heartbeat claims again.
    let actions = state.on_timer(1_000);
    assert!(claim_in(&actions).is_some());
}

#[test]
fn a_grant_resent_at_registration_starts_once_whichever_answer_comes_first() {
    // The worker registers twice (a stale "not registered" answer crossed its first
    // registration); a claim's grant is on its way when the second one is answered.
    let (mut state, claim) = registered(2);
    let again = state.on_answer(
        Purpose::Heartbeat,
        Answer::Reply(Reply::Error {
            code: ErrorCode::NotRegistered,
            message: "register first".into(),
        }),
        5,
    );
    let Some(Action::Request {
        request: WorkerRequest::Register(register),
        ..
    }) = again.first()
    else {
        panic!("no second registration: {again:?}")
    };
    assert_eq!(register.instance, 7, "the same process says so");
    assert!(register.running.is_empty());
    // The broker resends the grant with its answer: the run starts now...
    let actions = state.on_answer(Purpose::Register, registered_resuming(&["r1"]), 6);
    assert_eq!(started(&actions), ["r1"]);
    // ...and the late answer to the claim, naming the same run, starts nothing more.
    let actions = state.on_answer(claim, granted(&["r1"], false), 7);
    assert!(started(&actions).is_empty(), "{actions:?}");
    assert_eq!(state.running_ids(), ["r1"]);
}

#[test]
fn a_grant_whose_answer_came_first_is_not_started_again_when_resent() {
    let (mut state, claim) = registered(2);
    assert_eq!(
        started(&state.on_answer(claim, granted(&["r1"], false), 5)),
        ["r1"]
    );
    state.on_answer(
        Purpose::Heartbeat,
        Answer::Reply(Reply::Error {
            code: ErrorCode::NotRegistered,
            message: "register first".into(),
        }),
        6,
    );
    let actions = state.on_answer(Purpose::Register, registered_resuming(&["r1"]), 7);
    assert!(started(&actions).is_empty(), "{actions:?}");
}

#[test]
fn a_draining_worker_hands_resent_grants_back() {
    let (mut state, _claim) = registered(1);
    state.on_signal("SIGTERM", 1);
    let actions = state.on_answer(Purpose::Register, registered_resuming(&["r9"]), 2);
    assert!(started(&actions).is_empty());
    assert_eq!(released(&actions), ["r9"]);
}

#[test]
fn a_grant_resent_with_a_heartbeats_orders_starts_once() {
    let (mut state, claim) = registered(2);
    // The claim's answer was lost: the worker only learns of the run from its orders.
    state.on_answer(claim, Answer::Failed("connection lost".into()), 3);
    let orders = Answer::Reply(Reply::Orders(Orders {
        resume: vec![assignment("r1")],
        ..Orders::default()
    }));
    let actions = state.on_answer(Purpose::Heartbeat, orders.clone(), 4);
    assert_eq!(started(&actions), ["r1"]);
    // The same orders again (the next heartbeat crossed the start report): no second start.
    assert!(started(&state.on_answer(Purpose::Heartbeat, orders, 5)).is_empty());
}

#[test]
fn a_resent_grant_that_crosses_the_end_of_its_run_does_not_start_it_again() {
    // The heartbeat's answer (resending r1) and the acknowledgement of r1's end reach the
    // state through different tasks: the acknowledgement may come first.
    let (mut state, claim) = registered(1);
    assert_eq!(
        started(&state.on_answer(claim, granted(&["r1"], false), 1)),
        ["r1"]
    );
    state.on_run_done(finished("r1"));
    state.on_report(ReportAnswer::FinishAcked("r1".into()), 2);
    assert!(state.holds_nothing());
    let orders = Answer::Reply(Reply::Orders(Orders {
        resume: vec![assignment("r1")],
        ..Orders::default()
    }));
    let actions = state.on_answer(Purpose::Heartbeat, orders, 3);
    assert!(started(&actions).is_empty(), "{actions:?}");
}

#[test]
fn a_claim_held_by_a_broker_that_restarted_is_asked_again_at_registration() {
    let (mut state, _held) = registered(1);
    // The broker's core restarts (a new boot id) while holding the claim: that claim will
    // never be answered.
    let restarted = Event::BrokerAlive {
        boot_id: 8,
        time_ms: 0,
    };
    state.on_event(restarted, 10);
    let reply = Answer::Reply(Reply::Registered {
        boot_id: 8,
        heartbeat_interval_ms: 1_000,
        orders: Orders::default(),
        lease_ms: 0,
        starts_in_ends: false,
        reports_together: false,
    });
    let actions = state.on_answer(Purpose::Register, reply, 20);
    assert_eq!(
        claim_in(&actions).map(|(_, max, _)| max),
        Some(1),
        "a new claim at once, not after the old one's timeout"
    );
}

#[test]
fn an_unavailable_broker_is_heard_and_changes_nothing_else() {
    let (mut state, claim) = registered(1);
    let unavailable = Answer::Reply(Reply::Error {
        code: ErrorCode::Unavailable,
        message: "the broker's store failed".into(),
    });
    let actions = state.on_answer(claim, unavailable, 10);
    assert!(actions.is_empty(), "{actions:?}");
    assert!(state.is_registered());
    // The next heartbeat asks for work again.
    let actions = state.on_timer(1_000);
    assert!(claim_in(&actions).is_some(), "{actions:?}");
}

/// A registered worker of one slot that may hold one run ready beyond it.
fn registered_with_prefetch() -> (WorkerState, Purpose) {
    let mut state = WorkerState::new(
        Identity {
            prefetch: 1,
            ..identity(1)
        },
        0,
    );
    state.start();
    let actions = state.on_answer(Purpose::Register, registered_reply(), 0);
    let (purpose, max, _) = claim_in(&actions).expect("a claim after registering");
    assert_eq!(max, 2, "its slot and one ready run");
    (state, purpose)
}

fn reported_finish(actions: &[Action]) -> Option<&RunFinished> {
    actions.iter().find_map(|a| match a {
        Action::Report {
            request: WorkerRequest::RunFinished(finished),
            ..
        } => Some(finished),
        _ => None,
    })
}

#[test]
fn a_ready_run_starts_the_moment_a_slot_frees_without_a_round_trip() {
    let (mut state, claim) = registered_with_prefetch();
    let actions = state.on_answer(claim, granted(&["r1", "r2"], false), 10);
    assert_eq!(
        started(&actions),
        ["r1"],
        "one slot: the second waits ready"
    );
    let mut held = state.running_ids();
    held.sort();
    assert_eq!(held, ["r1", "r2"], "both reported as this worker's");

    let actions = state.on_run_done(finished("r1"));
    assert_eq!(started(&actions), ["r2"]);
    // The report that frees the slot asks for one run: the ready place r2 left.
    assert_eq!(reported_finish(&actions).map(|f| f.claim), Some(1));
}

#[test]
fn an_end_may_wait_for_other_ends_while_ready_runs_remain_and_goes_at_once_after() {
    let (mut state, claim) = registered_with_prefetch();
    state.on_answer(claim, granted(&["r1", "r2", "r3"], false), 10);
    let may_wait = |actions: &[Action]| {
        actions.iter().find_map(|a| match a {
            Action::Report {
                request: WorkerRequest::RunFinished(_),
                may_wait,
            } => Some(*may_wait),
            _ => None,
        })
    };
    // r2 takes the slot and r3 is still ready: the end may wait for others.
    let actions = state.on_run_done(finished("r1"));
    assert_eq!(started(&actions), ["r2"]);
    assert_eq!(may_wait(&actions), Some(true));
    // r3 takes the slot and none is left ready: this end goes at once.
    let actions = state.on_run_done(finished("r2"));
    assert_eq!(started(&actions), ["r3"]);
    assert_eq!(may_wait(&actions), Some(false));
    // Nothing ready, nothing started: at once.
    let actions = state.on_run_done(finished("r3"));
    assert!(started(&actions).is_empty());
    assert_eq!(may_wait(&actions), Some(false));
}

#[test]
fn a_draining_worker_hands_back_its_ready_runs_unstarted() {
    let (mut state, claim) = registered_with_prefetch();
    state.on_answer(claim, granted(&["r1", "r2"], false), 10);
    let actions = state.on_signal("SIGTERM", 20);
    assert_eq!(released(&actions), ["r2"]);
    assert!(!state.drained(), "r1 still runs");
    let actions = state.on_run_done(finished("r1"));
    assert!(
        started(&actions).is_empty(),
        "nothing new starts while draining"
    );
    assert!(state.drained());
}

#[test]
fn a_kill_order_for_a_ready_run_ends_it_without_starting_it() {
    let (mut state, claim) = registered_with_prefetch();
    state.on_answer(claim, granted(&["r1", "r2"], false), 10);
    let orders = Answer::Reply(Reply::Orders(Orders {
        kill: vec!["r2".into()],
        ..Orders::default()
    }));
    let actions = state.on_answer(Purpose::Heartbeat, orders, 20);
    assert!(stopped(&actions).is_empty(), "nothing runs to stop");
    let finish = reported_finish(&actions).expect("its end reported");
    assert_eq!(
        (finish.run_id.as_str(), &finish.outcome),
        ("r2", &Outcome::Killed)
    );
    // Neither the freed ready place nor a resent grant starts it.
    let actions = state.on_run_done(finished("r1"));
    assert!(started(&actions).is_empty());
    let actions = state.on_answer(Purpose::Heartbeat, registered_resuming(&["r2"]), 30);
    assert!(started(&actions).is_empty());
}

#[test]
fn a_grant_resent_for_a_ready_run_is_held_once() {
    let (mut state, claim) = registered_with_prefetch();
    state.on_answer(claim, granted(&["r1", "r2"], false), 10);
    let actions = state.on_answer(Purpose::Register, registered_resuming(&["r2"]), 20);
    assert!(started(&actions).is_empty());
    assert_eq!(state.running_ids().len(), 2);
    let actions = state.on_run_done(finished("r1"));
    assert_eq!(started(&actions), ["r2"]);
    let actions = state.on_run_done(finished("r2"));
    assert!(started(&actions).is_empty(), "r2 was held once");
}

#[test]
fn a_ready_run_kept_waiting_by_a_long_run_is_handed_back_and_none_asked_for_until_a_run_ends() {
    let (mut state, claim) = registered_with_prefetch();
    state.on_answer(claim, granted(&["r1", "r2"], false), 10);
    let hold = READY_HOLD.as_millis() as u64;
    assert!(released(&state.on_timer(10 + hold - 1)).is_empty());
    let actions = state.on_timer(10 + hold);
    assert_eq!(released(&actions), ["r2"]);
    assert_eq!(state.running_ids(), ["r1"]);
    // The slot is still busy: no claim for ready runs while the long run goes on.
    assert_eq!(claim_in(&state.on_timer(10 + 5 * hold)), None);
    // Its end asks for the slot and ready runs again.
    let actions = state.on_run_done(finished("r1"));
    assert_eq!(reported_finish(&actions).map(|f| f.claim), Some(2));
}

/// A one-slot worker that may hold up to `prefetch` runs ready, registered, and its
/// first claim.
fn registered_holding_up_to(prefetch: u32) -> (WorkerState, Purpose, u32) {
    let mut state = WorkerState::new(
        Identity {
            prefetch,
            ..identity(1)
        },
        0,
    );
    state.start();
    let actions = state.on_answer(Purpose::Register, registered_reply(), 0);
    let (purpose, max, _) = claim_in(&actions).expect("a claim after registering");
    (state, purpose, max)
}

/// Answers `claim` with `runs`; returns what was started and the next claim's size.
fn answer_claim(
    state: &mut WorkerState,
    claim: Purpose,
    runs: &[&str],
    more_queued: bool,
) -> (Vec<String>, Option<(Purpose, u32)>) {
    let actions = state.on_answer(claim, granted(runs, more_queued), 20);
    (
        started(&actions),
        claim_in(&actions).map(|(purpose, max, _)| (purpose, max)),
    )
}

#[test]
fn ready_runs_that_run_out_before_their_refill_while_the_broker_has_more_are_asked_for_twice_as_many_up_to_prefetch(
) {
    let (mut state, claim, max) = registered_holding_up_to(8);
    assert_eq!(
        max, 2,
        "its slot and as many ready as its concurrency, to begin"
    );
    let (started_now, next) = answer_claim(&mut state, claim, &["r0"], true);
    assert_eq!(started_now, ["r0"]);
    let (mut claim, max) = next.expect("a claim for the ready place");
    assert_eq!(max, 1);
    // Each time the slot frees with none ready (the refill has not come back), the
    // broker having more, twice as many are asked for: 2, 4, 8, and no more than 8.
    for (n, asked) in [2, 4, 8, 8].into_iter().enumerate() {
        let ended = format!("r{n}");
        let actions = state.on_run_done(finished(&ended));
        assert!(started(&actions).is_empty(), "none ready");
        let run = format!("r{}", n + 1);
        let (started_now, next) = answer_claim(&mut state, claim, &[run.as_str()], true);
        assert_eq!(started_now, [run]);
        let (renewed, max) = next.expect("a claim for the ready places");
        assert_eq!(max, asked, "after {ended} ended with none ready");
        claim = renewed;
    }
}

#[test]
fn a_busy_worker_holding_half_the_ready_runs_it_wants_leaves_the_refill_to_its_next_end() {
    let (mut state, claim, _) = registered_holding_up_to(8);
    let (_, next) = answer_claim(&mut state, claim, &["r0"], true);
    let (claim, _) = next.expect("a claim for the ready place");
    // r0 ends with none ready, the broker having more: two ready wanted from now on.
    state.on_run_done(finished("r0"));
    // r1 takes the slot and r2 waits ready: half of the two wanted, so no claim now.
    let (started_now, next) = answer_claim(&mut state, claim, &["r1", "r2"], true);
    assert_eq!((started_now, next), (vec!["r1".to_string()], None));
    // r1's end asks for the refill: r2's place and the one still missing.
    let actions = state.on_run_done(finished("r1"));
    assert_eq!(started(&actions), ["r2"]);
    assert_eq!(reported_finish(&actions).map(|f| f.claim), Some(2));
    assert_eq!(claim_in(&actions), None);
}

#[test]
fn ready_runs_are_not_asked_for_more_when_the_broker_has_none_left() {
    let (mut state, claim, _) = registered_holding_up_to(8);
    let (_, next) = answer_claim(&mut state, claim, &["r0"], false);
    let (claim, _) = next.expect("a claim for the ready place");
    // None ready at r0's end, but the broker had said it had nothing more.
    state.on_run_done(finished("r0"));
    let (_, next) = answer_claim(&mut state, claim, &["r1"], false);
    assert_eq!(next.map(|(_, max)| max), Some(1));
}

#[test]
fn a_worker_without_ready_runs_asks_for_its_free_slots_only_however_much_is_queued() {
    let (mut state, claim, max) = registered_holding_up_to(0);
    assert_eq!(max, 1);
    let (started_now, next) = answer_claim(&mut state, claim, &["r0"], true);
    assert_eq!((started_now, next), (vec!["r0".to_string()], None));
    // None ready at its end (none are held), the broker having more: still one.
    let actions = state.on_run_done(finished("r0"));
    assert_eq!(reported_finish(&actions).map(|f| f.claim), Some(1));
}

#[test]
fn ready_runs_handed_back_for_waiting_too_long_bring_the_number_asked_for_back_to_the_concurrency()
{
    let (mut state, claim, _) = registered_holding_up_to(8);
    // Short runs first: twice none ready at an end, the number grows to 4.
    let (_, next) = answer_claim(&mut state, claim, &["r0"], true);
    let (claim, _) = next.expect("a claim");
    state.on_run_done(finished("r0"));
    let (_, next) = answer_claim(&mut state, claim, &["r1"], true);
    let (claim, _) = next.expect("a claim");
    state.on_run_done(finished("r1"));
    let (started_now, next) =
        answer_claim(&mut state, claim, &["r2", "r3", "r4", "r5", "r6"], true);
    assert_eq!((started_now, next), (vec!["r2".to_string()], None));
    // Then r2 runs long: the four ready wait a second and are handed back.
    let hold = READY_HOLD.as_millis() as u64;
    assert_eq!(
        released(&state.on_timer(20 + hold)),
        ["r3", "r4", "r5", "r6"]
    );
    // Its end asks for its slot and one ready run, as at the start.
    let actions = state.on_run_done(finished("r2"));
    assert_eq!(reported_finish(&actions).map(|f| f.claim), Some(2));
}

/// The lease the broker gives in the lease tests.
const LEASE: u64 = 10_000;

/// A two-slot worker registered at `t` = 0 with a lease, and its first claim.
fn leased() -> (WorkerState, Purpose) {
    let mut state = WorkerState::new(identity(2), 0);
    state.start();
    let registered = Answer::Reply(Reply::Registered {
        boot_id: 7,
        heartbeat_interval_ms: 1_000,
        orders: Orders::default(),
        lease_ms: LEASE,
        starts_in_ends: false,
        reports_together: false,
    });
    let actions = state.on_answer(Purpose::Register, registered, 0);
    let (claim, _, _) = claim_in(&actions).expect("a claim");
    (state, claim)
}

/// A worker registered at `t` = 0 with a lease, running `r1` (its job stops on broker
/// loss) and `r2` (its job keeps going).
fn leased_with_runs() -> WorkerState {
    let (mut state, claim) = leased();
    let mut keep = assignment("r2");
    std::sync::Arc::make_mut(&mut keep.job)
        .policy
        .on_broker_loss = OnBrokerLoss::Keep;
    let grant = Answer::Reply(Reply::Granted {
        runs: vec![assignment("r1").into(), keep.into()],
        more_queued: false,
    });
    let actions = state.on_answer(claim, grant, 5);
    assert_eq!(started(&actions), ["r1", "r2"]);
    state
}

#[test]
fn a_worker_cut_off_for_its_lease_stops_its_runs_unless_their_job_keeps_them() {
    let mut state = leased_with_runs();
    // Heartbeats go out and nothing comes back (a partition).
    for t in (1_000..=LEASE).step_by(1_000) {
        let actions = state.on_timer(t);
        assert!(
            stopped(&actions).is_empty(),
            "still within the lease at {t}"
        );
    }
    let actions = state.on_timer(LEASE + 250);
    assert_eq!(stopped(&actions), ["r1"], "r2's job says keep");
    // Stopped once, not at every tick.
    assert!(stopped(&state.on_timer(LEASE + 500)).is_empty());
    // Its end is reported as the lease's doing, not as a kill someone asked for.
    let mut end = finished("r1");
    end.outcome = Outcome::Killed;
    let actions = state.on_run_done(end);
    let reported = actions.iter().find_map(|a| match a {
        Action::Report {
            request: WorkerRequest::RunFinished(f),
            ..
        } => Some(f.outcome.clone()),
        _ => None,
    });
    // Silent since the claim answered at 5 ms was sent.
    assert_eq!(
        reported,
        Some(Outcome::LeaseExpired {
            silent_ms: LEASE + 245
        })
    );
}

#[test]
fn the_lease_runs_from_when_the_answered_request_was_sent_not_when_its_answer_came() {
    let mut state = leased_with_runs();
    // A heartbeat sent at 1 s is answered only at 9 s: the broker heard it at or after 1 s,
    // so the lease now ends at 11 s, not 19 s.
    state.on_answer_to(Purpose::Heartbeat, 1_000, Answer::Reply(Reply::Ack), 9_000);
    assert!(stopped(&state.on_timer(LEASE + 1_000)).is_empty());
    assert_eq!(stopped(&state.on_timer(LEASE + 1_001)), ["r1"]);
}

#[test]
fn a_standby_answering_not_leader_does_not_renew_the_lease() {
    // Several brokers: the leader is cut off from this worker, a standby still answers.
    // Its answers decide nothing; the lease runs out as if nobody answered.
    let mut state = leased_with_runs();
    for t in (1_000..=LEASE).step_by(1_000) {
        state.on_answer_to(
            Purpose::Heartbeat,
            t,
            Answer::Reply(Reply::NotLeader {
                leader: Some(jobcast_protocol::LeaderAddress {
                    router: "tcp://elsewhere:5555".into(),
                    publish: "tcp://elsewhere:5556".into(),
                    http: String::new(),
                    epoch: 2,
                }),
            }),
            t + 3,
        );
    }
    assert_eq!(stopped(&state.on_timer(LEASE + 250)), ["r1"]);
}

#[test]
fn a_standby_naming_the_leader_is_followed_and_one_naming_an_older_one_is_not() {
    let mut state = leased_with_runs();
    let naming = |epoch: u64| {
        Answer::Reply(Reply::NotLeader {
            leader: Some(jobcast_protocol::LeaderAddress {
                router: format!("tcp://broker-{epoch}:5555"),
                publish: format!("tcp://broker-{epoch}:5556"),
                http: String::new(),
                epoch,
            }),
        })
    };
    let followed = |actions: &[Action]| -> Vec<String> {
        actions
            .iter()
            .filter_map(|action| match action {
                Action::Follow(leader) => Some(leader.router.clone()),
                _ => None,
            })
            .collect()
    };
    let actions = state.on_answer_to(Purpose::Heartbeat, 1_000, naming(3), 1_001);
    assert_eq!(followed(&actions), ["tcp://broker-3:5555"]);
    // Sent back to the same leader after moving on from it.
    let actions = state.on_answer_to(Purpose::Heartbeat, 1_000, naming(3), 1_001);
    assert_eq!(followed(&actions), ["tcp://broker-3:5555"]);
    // A late answer from another standby that still names an older leader.
    let actions = state.on_answer_to(Purpose::Heartbeat, 1_000, naming(2), 1_002);
    assert!(followed(&actions).is_empty(), "{actions:?}");
    let actions = state.on_answer_to(
        Purpose::Heartbeat,
        1_000,
        Answer::Reply(Reply::NotLeader { leader: None }),
        1_003,
    );
    assert!(followed(&actions).is_empty(), "{actions:?}");
    let actions = state.on_answer_to(Purpose::Heartbeat, 1_000, naming(4), 1_004);
    assert_eq!(followed(&actions), ["tcp://broker-4:5555"]);
}

#[test]
fn with_several_brokers_three_silent_heartbeats_move_on_to_the_next() {
    let reconnects = |brokers: usize| {
        let mut identity = identity(1);
        identity.brokers = brokers;
        let mut state = WorkerState::new(identity, 0);
        state.start();
        state.on_answer(Purpose::Register, registered_reply(), 0);
        (1..=20).map(|s| s * 500).find(|t| {
            state
                .on_timer(*t)
                .iter()
                .any(|a| matches!(a, Action::Reconnect))
        })
    };
    // Heartbeats every second (the broker's); one broker waits `reconnect_after` (30 s).
    assert_eq!(reconnects(1), None);
    let moved = reconnects(3).expect("moved on");
    assert!((3_000..=4_000).contains(&moved), "after {moved} ms");
}

#[test]
fn with_several_brokers_a_closed_connection_moves_on_at_once_and_once() {
    let moved = |brokers: usize| {
        let mut identity = identity(1);
        identity.brokers = brokers;
        let mut state = WorkerState::new(identity, 0);
        state.start();
        state.on_answer(Purpose::Register, registered_reply(), 0);
        // The requests in flight fail (the worker's own moves fail them too: they
        // decide nothing), and the client says the connection closed, twice here.
        let mut actions = Vec::new();
        for purpose in [Purpose::Claim { sent_ms: 0 }, Purpose::Heartbeat] {
            actions.extend(state.on_answer_to(
                purpose,
                0,
                Answer::Failed("disconnected".into()),
                100,
            ));
        }
        actions.extend(state.on_connection_closed(100));
        actions.extend(state.on_connection_closed(110));
        actions
            .iter()
            .filter(|a| matches!(a, Action::Reconnect))
            .count()
    };
    assert_eq!(moved(1), 0, "one broker: libzmq reconnects by itself");
    assert_eq!(moved(2), 1);
}

#[test]
fn answers_within_the_lease_keep_runs_going() {
    let mut state = leased_with_runs();
    for t in (1_000..60_000).step_by(1_000) {
        let actions = state.on_timer(t);
        assert!(stopped(&actions).is_empty(), "stopped at {t}");
        state.on_answer_to(Purpose::Heartbeat, t, Answer::Reply(Reply::Ack), t + 3);
    }
}

#[test]
fn a_grant_that_arrives_after_the_lease_is_handed_back_unstarted() {
    // A worker stopped (SIGSTOP) for minutes reads a claim's answer when it resumes: the
    // broker may have given those runs up, so it starts none and hands them back.
    let (mut state, claim) = leased();
    let actions = state.on_answer_to(claim, 5, granted(&["r1", "r2"], false), 300_000);
    assert!(started(&actions).is_empty(), "{actions:?}");
    assert_eq!(released(&actions), ["r1", "r2"]);
    // A fresh answer renews the lease, and grants start again.
    state.on_answer_to(
        Purpose::Heartbeat,
        300_100,
        Answer::Reply(Reply::Ack),
        300_105,
    );
    let actions = state.on_answer_to(
        Purpose::Claim { sent_ms: 300_200 },
        300_200,
        granted(&["r3"], false),
        300_205,
    );
    assert_eq!(started(&actions), ["r3"]);
}

#[test]
fn a_worker_without_a_lease_from_its_broker_never_stops_runs_for_silence() {
    let (mut state, claim) = registered(1);
    state.on_answer(claim, granted(&["r1"], false), 5);
    for t in (1_000..120_000).step_by(1_000) {
        assert!(stopped(&state.on_timer(t)).is_empty());
    }
}

#[test]
fn a_revoked_key_stops_every_run_at_once_and_ends_the_worker_when_they_have_ended() {
    let mut state = leased_with_runs();
    let revoked = Answer::Reply(Reply::Error {
        code: ErrorCode::Revoked,
        message: "the key of worker w1 was revoked".into(),
    });
    let actions = state.on_answer(Purpose::Heartbeat, revoked, 1_000);
    let mut stopped = stopped(&actions);
    stopped.sort();
    assert_eq!(
        stopped,
        ["r1", "r2"],
        "busy or not, kept or not: everything stops"
    );
    assert!(
        state.refused_with_nothing_running().is_none(),
        "r1, r2 still going"
    );
    state.on_run_done(finished("r1"));
    assert!(state.refused_with_nothing_running().is_none());
    state.on_run_done(finished("r2"));
    // Their ends can never be acknowledged (the key is gone): the worker ends anyway.
    let reason = state.refused_with_nothing_running().expect("exits");
    assert!(reason.contains("revoked"), "{reason}");
    // A grant that crosses the revocation is not started.
    let actions = state.on_answer(
        Purpose::Claim { sent_ms: 1_000 },
        granted(&["r3"], false),
        1_100,
    );
    assert!(started(&actions).is_empty());
}

#[test]
fn an_idle_worker_whose_key_is_revoked_ends_at_once() {
    let (mut state, _) = registered(2);
    state.on_report(
        ReportAnswer::Revoked("the key of worker w1 was revoked".into()),
        10,
    );
    assert!(state.refused_with_nothing_running().is_some());
}

/// A run's start goes inside its end, and reports go several in one message, only for
/// a broker whose registration says it takes them so; a registration with a broker
/// that does not (an older one) turns them off again.
#[test]
fn starts_go_inside_ends_and_reports_together_only_for_a_broker_that_says_it_takes_them() {
    let registered_with = |starts_in_ends| {
        Answer::Reply(Reply::Registered {
            boot_id: 7,
            heartbeat_interval_ms: 1_000,
            orders: Default::default(),
            lease_ms: 0,
            starts_in_ends,
            reports_together: starts_in_ends,
        })
    };
    let mut state = WorkerState::new(identity(1), 0);
    state.start();
    assert!(!state.starts_in_ends(), "not before a registration");
    assert!(!state.reports_together(), "not before a registration");
    state.on_answer(Purpose::Register, registered_with(true), 5);
    assert!(state.starts_in_ends());
    assert!(state.reports_together());
    state.on_answer(Purpose::Register, registered_with(false), 10);
    assert!(!state.starts_in_ends());
    assert!(!state.reports_together());
}

/// A grant that names a job definition starts its run with the definition an earlier
/// grant of this registration carried under that id; one that names a definition not
/// held here (an earlier registration's) is handed back, not started.
#[test]
fn a_named_definition_runs_as_carried_before_and_an_unknown_one_is_handed_back() {
    let grant = |run_id: &str, definition: u64, carried: bool| {
        let mut run: GrantedRun = assignment(run_id).into();
        run.definition = definition;
        if !carried {
            run.job = None;
        }
        run
    };
    let reply = |runs: Vec<GrantedRun>| {
        Answer::Reply(Reply::Granted {
            runs,
            more_queued: false,
        })
    };
    let mut state = WorkerState::new(identity(4), 0);
    state.start();
    state.on_answer(Purpose::Register, registered_reply(), 5);
    let actions = state.on_answer(
        Purpose::Claim { sent_ms: 5 },
        reply(vec![grant("r1", 3, true), grant("r2", 3, false)]),
        10,
    );
    assert_eq!(started(&actions), ["r1", "r2"]);
    let job_of = |actions: &[Action], run_id: &str| {
        actions.iter().find_map(|a| match a {
            Action::Start(assignment) if assignment.run_id == run_id => {
                Some(assignment.job.name.clone())
            }
            _ => None,
        })
    };
    assert_eq!(job_of(&actions, "r2"), job_of(&actions, "r1"));
    assert!(released(&actions).is_empty());

    // Named, never carried: handed back. The same after a new registration for a
    // definition the earlier one carried.
    let actions = state.on_report(
        ReportAnswer::Granted {
            runs: vec![grant("r3", 4, false)],
            more_queued: false,
        },
        20,
    );
    assert_eq!(
        (started(&actions), released(&actions)),
        (vec![], vec!["r3".to_string()])
    );
    state.on_answer(Purpose::Register, registered_reply(), 30);
    let actions = state.on_answer(
        Purpose::Claim { sent_ms: 30 },
        reply(vec![grant("r4", 3, false), grant("r5", 3, true)]),
        40,
    );
    assert_eq!(released(&actions), ["r4"]);
    assert_eq!(started(&actions), ["r5"]);
}

/// A copy of the grant of a run this worker already holds is never handed back, not
/// while draining, not when it names a definition not held here, not after the run
/// ended: the broker may not have heard yet that the run started (its start waits in
/// the reporter, or rides inside its end), and would queue it again for another worker.
#[test]
fn a_copy_of_a_grant_of_a_run_held_here_is_never_handed_back() {
    let (mut state, claim) = registered(2);
    let actions = state.on_answer(claim, granted(&["r1", "r2"], false), 5);
    assert_eq!(started(&actions), ["r1", "r2"]);
    let named_unknown = |run_id: &str| {
        let mut run: GrantedRun = assignment(run_id).into();
        (run.definition, run.job) = (99, None);
        run
    };
    // Named by an id this registration never carried: a copy all the same.
    let actions = state.on_report(
        ReportAnswer::Granted {
            runs: vec![named_unknown("r1")],
            more_queued: false,
        },
        6,
    );
    assert!(released(&actions).is_empty() && started(&actions).is_empty());
    // Ended, its end not yet acknowledged: a copy.
    state.on_run_done(finished("r2"));
    state.on_report(ReportAnswer::FinishAcked("r2".into()), 7);
    let actions = state.on_report(
        ReportAnswer::Granted {
            runs: vec![assignment("r2").into()],
            more_queued: false,
        },
        8,
    );
    assert!(released(&actions).is_empty() && started(&actions).is_empty());
    // Draining: copies are not handed back; a run new to it is.
    assert!(state.on_signal("SIGTERM", 10).is_empty());
    let copies = vec![
        assignment("r1").into(),
        named_unknown("r1"),
        assignment("r3").into(),
    ];
    let actions = state.on_report(
        ReportAnswer::Granted {
            runs: copies,
            more_queued: false,
        },
        20,
    );
    assert_eq!(released(&actions), ["r3"]);
}
