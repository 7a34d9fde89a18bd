//! `Status`: counts, workers, refusals and connections as the broker sees them.

use super::*;

#[test]
fn status_counts_runs_by_state_workers_refusals_and_connections() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let running = h.enqueue("hello");
    h.claim("w1", 1);
    h.enqueue("hello");
    h.core.note_rejection("bad_mac");
    h.core.note_rejection("bad_mac");
    h.core.note_connection(true);
    h.core.note_connection(true);
    h.core.note_connection(false);
    h.advance_ms(1_500);
    let Reply::Status(status) = h.admin(AdminRequest::Status) else {
        panic!("no status")
    };
    assert_eq!(
        status.active,
        BTreeMap::from([("assigned".to_string(), 1), ("queued".to_string(), 1)])
    );
    assert_eq!(
        status.active_by_job,
        BTreeMap::from([(
            "hello".to_string(),
            BTreeMap::from([("assigned".to_string(), 1), ("queued".to_string(), 1)])
        )])
    );
    assert_eq!(
        status.queued_by_pool.get("default"),
        Some(&1),
        "{:?}",
        status.queued_by_pool
    );
    assert_eq!(status.total_runs, 2);
    assert_eq!(status.jobs, 2);
    assert_eq!(status.uptime_ms, 1_500);
    assert_eq!(status.boot_id, h.core.boot_id());
    assert_eq!(status.workers.len(), 1);
    assert!(status.workers[0].online);
    assert_eq!(status.workers[0].running, vec![running]);
    assert_eq!(
        status.rejected,
        BTreeMap::from([("bad_mac".to_string(), 2)])
    );
    assert_eq!(
        status.connections,
        BTreeMap::from([
            ("open".to_string(), 1),
            ("opened".to_string(), 2),
            ("closed".to_string(), 1)
        ])
    );
}

#[test]
fn starts_and_ends_are_observed_for_the_metrics() {
    let mut h = Harness::new();
    h.register("w1", 2, &["default"], &[]);
    let run = h.enqueue("hello");
    let queued = h.enqueue("hello");
    h.advance_ms(40);
    h.claim("w1", 1);
    h.advance_ms(10);
    let (_, out) = h.send(
        "w1",
        WorkerRequest::RunStarted {
            run_id: run.clone(),
            pid: 1,
            spawned_at_us: 0,
        },
    );
    assert_eq!(
        out.observations,
        [Observation::Started {
            pool: "default".into(),
            waited_ms: 50
        }]
    );
    h.advance_ms(250);
    let (_, out) = h.send(
        "w1",
        WorkerRequest::RunFinished(RunFinished {
            run_id: run.clone(),
            outcome: Outcome::Exited { code: 1 },
            duration_ms: 250,
            log_bytes: 0,
            claim: 0,
            usage: None,
            started: None,
        }),
    );
    assert!(
        out.observations.contains(&Observation::Ended {
            job: "hello".into(),
            state: RunState::Failed,
            ran_ms: Some(250)
        }),
        "{:?}",
        out.observations
    );
    // A queued run cancelled never ran: it ends without a duration.
    let (_, out) = h.send(
        ADMIN,
        AdminRequest::Kill {
            selectors: vec![queued],
        },
    );
    assert_eq!(
        out.observations,
        [Observation::Ended {
            job: "hello".into(),
            state: RunState::Cancelled,
            ran_ms: None
        }]
    );
}

#[test]
fn a_reload_is_handed_to_the_server_and_answered_by_it() {
    let mut h = Harness::new();
    let (reply, out) = h.send(ADMIN, AdminRequest::Reload);
    assert_eq!(reply, Reply::Ack, "no answer from the core itself");
    assert!(out.replies.is_empty());
    assert_eq!(out.reloads.len(), 1);
    assert_eq!(out.reloads[0].actor, "key admin");
    // Worker keys cannot ask for it.
    h.register("w1", 1, &["default"], &[]);
    let (reply, out) = h.send("w1", AdminRequest::Reload);
    assert!(
        matches!(
            reply,
            Reply::Error {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{reply:?}"
    );
    assert!(out.reloads.is_empty());
}

fn runs_by_state(h: &mut Harness) -> BTreeMap<String, u64> {
    let Reply::Status(status) = h.admin(AdminRequest::Status) else {
        panic!("no status")
    };
    status
        .runs_by_state
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .collect()
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(s, n)| (s.to_string(), *n)).collect()
}

#[test]
fn every_stored_run_is_counted_by_state_across_a_restart_and_retention() {
    let mut h = Harness::new();
    h.register("w1", 2, &["default"], &[]);
    let done = h.enqueue("hello");
    h.claim("w1", 1);
    h.start("w1", &done);
    h.finish("w1", &done, Outcome::Exited { code: 0 });
    let cancelled = h.enqueue("hello");
    h.admin(AdminRequest::Kill {
        selectors: vec![cancelled],
    });
    h.enqueue("hello");
    h.tick();
    let expected = counts(&[("cancelled", 1), ("queued", 1), ("succeeded", 1)]);
    assert_eq!(runs_by_state(&mut h), expected);
    // Every state is listed, with 0 where there is none.
    let Reply::Status(status) = h.admin(AdminRequest::Status) else {
        panic!()
    };
    assert_eq!(status.runs_by_state.len(), RunState::ALL.len());

    // A restart reads the counts back (the finished ones are not in memory).
    let mut h = Harness::with_store(h.core.into_store());
    assert_eq!(runs_by_state(&mut h), expected);

    // Retention's deletions come off the count (the oldest finished run goes).
    let mut h = Harness::with_config(
        h.core.into_store(),
        CoreConfig {
            retention: crate::Retention {
                max_age_ms: None,
                max_runs: Some(2),
            },
            ..CoreConfig::default()
        },
    );
    h.tick();
    assert_eq!(
        runs_by_state(&mut h),
        counts(&[("cancelled", 1), ("queued", 1)])
    );
}

#[test]
fn a_store_from_before_the_counts_is_counted_once_at_start() {
    let mut store = MemoryStore::default();
    let spec = job("hello", "default");
    for (seq, state) in [
        (1, RunState::Succeeded),
        (2, RunState::Failed),
        (3, RunState::Succeeded),
        (4, RunState::Queued),
    ] {
        let mut run = RunRecord::queued(format!("r{seq}"), seq, spec.clone(), 1, "test");
        run.state = state;
        store.create_run(&run).unwrap();
    }
    let mut h = Harness::with_store(store);
    assert_eq!(
        runs_by_state(&mut h),
        counts(&[("failed", 1), ("queued", 1), ("succeeded", 2)])
    );
    h.tick();
    assert!(h
        .core
        .store()
        .setting("finished_runs_by_team")
        .unwrap()
        .is_some());
}

#[test]
fn the_leaders_lease_age_is_counted_when_status_is_asked_and_grows_while_renewals_fail() {
    let mut h = Harness::new();
    let lease_age = |h: &mut Harness| match h.admin(AdminRequest::Status) {
        Reply::Status(status) => status.leadership.map(|l| (l.epoch, l.renewed_ms_ago)),
        other => panic!("status: {other:?}"),
    };
    assert_eq!(lease_age(&mut h), None, "one broker alone: no leadership");
    let leadership = jobcast_protocol::Leadership {
        epoch: 4,
        holder: "here".into(),
        this_broker: "here".into(),
        lease_ms: 5_000,
        renewed_ms_ago: 0,
        brokers: vec![],
    };
    h.core.set_leadership(Some((leadership, h.now / 1_000)));
    h.advance_ms(1_200);
    assert_eq!(lease_age(&mut h), Some((4, 1_200)));
    // No renewal came since: the age keeps growing, as an operator watching it needs.
    h.advance_ms(3_000);
    assert_eq!(lease_age(&mut h), Some((4, 4_200)));
}

#[test]
fn a_start_is_timed_from_the_spawn_the_worker_reports_when_it_is_plausible() {
    let mut h = Harness::new();
    h.register("w1", 2, &["default"], &[]);
    let run = h.enqueue("hello");
    h.claim("w1", 1);
    h.advance_ms(30);
    // Spawned 20 ms after the enqueue, reported (held by the worker) 10 ms later.
    let spawned_at_us = h.now - 10_000;
    let (_, out) = h.send(
        "w1",
        WorkerRequest::RunStarted {
            run_id: run.clone(),
            pid: 1,
            spawned_at_us,
        },
    );
    assert_eq!(
        out.observations,
        [Observation::Started {
            pool: "default".into(),
            waited_ms: 20
        }]
    );
    // A spawn time from the future (a worker's clock ahead) is not believed.
    let other = h.enqueue("hello");
    h.claim("w1", 1);
    h.advance_ms(5);
    let (_, out) = h.send(
        "w1",
        WorkerRequest::RunStarted {
            run_id: other,
            pid: 2,
            spawned_at_us: h.now + 60_000_000,
        },
    );
    assert_eq!(
        out.observations,
        [Observation::Started {
            pool: "default".into(),
            waited_ms: 5
        }]
    );
}

#[test]
fn the_status_says_since_when_each_pools_oldest_queued_run_waits() {
    let mut h = Harness::new();
    let first = h.enqueue("hello");
    h.advance_ms(5_000);
    h.enqueue("hello");
    let Reply::Status(status) = h.admin(AdminRequest::Status) else {
        panic!("no status")
    };
    let created = h.stored(&first).created_at_ms;
    assert_eq!(
        status.oldest_queued_by_pool.get("default"),
        Some(&created),
        "{:?}",
        status.oldest_queued_by_pool
    );
    assert!(!status.oldest_queued_by_pool.contains_key("gpu"));
}

#[test]
fn the_status_counts_each_pools_queued_runs_a_limit_holds() {
    let mut h = Harness::new();
    h.apply_toml("[jobs.single]\ncommand = \"x\"\nmax_concurrent = 1\n");
    h.register("w1", 4, &["default"], &[]);
    for _ in 0..3 {
        h.enqueue("single");
    }
    let free = h.enqueue("hello");
    let granted = h.claim("w1", 4);
    assert_eq!(granted.len(), 2, "one of single, and hello");
    assert!(granted.contains(&free));
    let Reply::Status(status) = h.admin(AdminRequest::Status) else {
        panic!("no status")
    };
    assert_eq!(
        status.held_by_pool.get("default"),
        Some(&2),
        "{:?}",
        status.held_by_pool
    );
}
