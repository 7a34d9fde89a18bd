//! `Claim`: each run to exactly one worker, within its slots and pools.

use super::*;

#[test]
fn every_run_is_granted_to_exactly_one_worker() {
    let mut h = Harness::new();
    for w in ["w1", "w2", "w3"] {
        h.register(w, 4, &["default"], &[]);
    }
    let runs: Vec<String> = (0..100).map(|_| h.enqueue("hello")).collect();
    let mut granted: HashMap<String, String> = HashMap::new();
    let mut rounds = 0;
    while granted.len() < runs.len() {
        rounds += 1;
        assert!(rounds < 1_000, "runs left unclaimed");
        for w in ["w1", "w2", "w3"] {
            // every worker asks for more than it may hold: the broker caps it
            for run_id in h.claim(w, 10) {
                assert!(
                    granted.insert(run_id.clone(), w.to_string()).is_none(),
                    "{run_id} granted twice"
                );
                h.worker(
                    w,
                    WorkerRequest::RunStarted {
                        run_id: run_id.clone(),
                        pid: 1,
                        spawned_at_us: 0,
                    },
                );
                h.finish(w, &run_id, Outcome::Exited { code: 0 });
            }
        }
    }
    for run_id in &runs {
        assert_eq!(h.state(run_id), RunState::Succeeded);
    }
}

#[test]
fn a_worker_never_holds_more_runs_than_its_slots() {
    let mut h = Harness::new();
    h.register("w1", 2, &["default"], &[]);
    for _ in 0..5 {
        h.enqueue("hello");
    }
    assert_eq!(h.claim("w1", 5).len(), 2);
    assert_eq!(h.claim("w1", 5).len(), 0);
}

#[test]
fn runs_go_only_to_workers_of_their_pool() {
    let mut h = Harness::new();
    h.register("w1", 4, &["default"], &[]);
    h.register("g1", 4, &["gpu"], &[]);
    let gpu = h.enqueue("gpu-job");
    assert!(h.claim("w1", 4).is_empty());
    assert_eq!(h.claim("g1", 4), vec![gpu]);
}

#[test]
fn one_claim_takes_one_run_of_a_queue_job_and_the_next_only_after_it_ends() {
    let mut h = Harness::new();
    let mut queued = job("serial", "default");
    queued.policy.overlap = jobcast_protocol::Overlap::Queue;
    h.admin(AdminRequest::ApplyJobs {
        jobs: vec![job("hello", "default"), queued],
    });
    h.register("w1", 4, &["default"], &[]);
    let first = h.enqueue("serial");
    let second = h.enqueue("serial");
    let other = h.enqueue("hello");
    // In one claim with room for all: one run of the queue job, and the other job's run.
    assert_eq!(h.claim("w1", 4), vec![first.clone(), other]);
    assert!(
        h.claim("w1", 4).is_empty(),
        "the second waits for the first"
    );
    h.start("w1", &first);
    h.finish("w1", &first, Outcome::Exited { code: 0 });
    assert_eq!(h.claim("w1", 4), vec![second]);
}

/// Registers a one-slot worker that may hold `prefetch` runs ready beyond its slot.
fn register_with_prefetch(h: &mut Harness, worker: &str, prefetch: u32) {
    let register = Register {
        prefetch,
        ..registration(&["default"], 4096)
    };
    assert!(matches!(
        h.worker(worker, WorkerRequest::Register(register)),
        Reply::Registered { .. }
    ));
}

#[test]
fn a_worker_may_hold_its_ready_runs_beyond_its_slots_and_no_more() {
    let mut h = Harness::new();
    register_with_prefetch(&mut h, "w1", 2);
    for _ in 0..5 {
        h.enqueue("hello");
    }
    assert_eq!(h.claim("w1", 10).len(), 3, "one slot and two ready");
    assert!(h.claim("w1", 10).is_empty(), "all it may hold");
}

#[test]
fn no_ready_runs_are_granted_while_another_worker_waits_for_work() {
    let mut h = Harness::new();
    register_with_prefetch(&mut h, "w1", 2);
    h.register("w2", 1, &["gpu"], &[]);
    // w2 waits for work (of another pool: the rule is kept simple and cheap).
    let (_, out) = h.waiting_claim("w2", 1, 30_000);
    assert!(out.replies.is_empty(), "held, not answered");
    for _ in 0..3 {
        h.enqueue("hello");
    }
    assert_eq!(h.claim("w1", 10).len(), 1, "its slot only");
}

#[test]
fn a_waiting_worker_with_a_run_for_each_slot_does_not_hold_back_anothers_ready_runs() {
    let mut h = Harness::new();
    for worker in ["w1", "w2", "w3"] {
        register_with_prefetch(&mut h, worker, 2);
    }
    h.enqueue("hello");
    let w2_runs = h.claim("w2", 10);
    assert_eq!(w2_runs.len(), 1, "all there was");
    // w2's one slot is covered; it waits only to refill its ready runs.
    let (_, out) = h.waiting_claim("w2", 2, 30_000);
    assert!(out.replies.is_empty(), "held, not answered");
    for _ in 0..3 {
        h.enqueue("hello");
    }
    assert_eq!(h.claim("w1", 10).len(), 3, "its slot and two ready");
    // Once w2's run ends it lacks work, and holds the others' ready runs back.
    h.start("w2", &w2_runs[0]);
    h.finish("w2", &w2_runs[0], Outcome::Exited { code: 0 });
    for _ in 0..3 {
        h.enqueue("hello");
    }
    assert_eq!(
        h.claim("w3", 10).len(),
        1,
        "its slot only: w2 waits for work"
    );
}

#[test]
fn a_registration_declaring_more_than_1024_ready_runs_is_refused() {
    let mut h = Harness::new();
    let register = Register {
        prefetch: 5_000,
        ..registration(&["default"], 4096)
    };
    match h.worker("w1", WorkerRequest::Register(register)) {
        Reply::Error { code, message } => {
            assert_eq!(code, ErrorCode::BadRequest);
            assert!(message.contains("at most 1024"), "{message}");
        }
        other => panic!("registered: {other:?}"),
    }
}

fn enqueue_at(h: &mut Harness, job: &str, priority: Option<i32>) -> String {
    match h.admin(AdminRequest::Enqueue {
        job: job.into(),
        key: None,
        params: Default::default(),
        priority,
    }) {
        Reply::Enqueued { run } => run.id,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_claim_takes_the_oldest_run_of_the_highest_priority_first() {
    let mut h = Harness::new();
    let mut urgent = job("urgent", "default");
    urgent.priority = 50;
    h.admin(AdminRequest::ApplyJobs {
        jobs: vec![job("hello", "default"), urgent],
    });
    h.register("w1", 1, &["default"], &[]);
    let low1 = enqueue_at(&mut h, "hello", Some(-10));
    let normal = enqueue_at(&mut h, "hello", None);
    let low2 = enqueue_at(&mut h, "hello", Some(-10));
    let high1 = enqueue_at(&mut h, "hello", Some(10));
    let by_job = enqueue_at(&mut h, "urgent", None);
    let high2 = enqueue_at(&mut h, "hello", Some(10));
    let demoted = enqueue_at(&mut h, "urgent", Some(-100));
    let mut order = Vec::new();
    for _ in 0..7 {
        let granted = h.claim("w1", 1);
        assert_eq!(granted.len(), 1);
        h.start("w1", &granted[0]);
        h.finish("w1", &granted[0], Outcome::Exited { code: 0 });
        order.push(granted[0].clone());
    }
    assert_eq!(
        order,
        [by_job, high1, high2, normal, low1, low2, demoted],
        "priority first, then age"
    );
    // Out of range is refused, nothing queued.
    assert!(matches!(
        h.admin(AdminRequest::Enqueue {
            job: "hello".into(),
            key: None,
            params: Default::default(),
            priority: Some(101),
        }),
        Reply::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
}

fn listed(h: &mut Harness, job: &str) -> Vec<RunRecord> {
    match h.admin(AdminRequest::ListRuns(jobcast_protocol::RunFilter {
        job: Some(job.into()),
        limit: 100,
        ..Default::default()
    })) {
        Reply::Runs { runs, .. } => runs,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_jobs_limit_holds_across_workers_and_a_restart_and_says_what_runs_wait_for() {
    let mut h = Harness::new();
    let mut limited = job("limited", "default");
    limited.policy.max_concurrent = Some(2);
    h.admin(AdminRequest::ApplyJobs {
        jobs: vec![limited, job("hello", "default")],
    });
    for w in ["w1", "w2", "w3"] {
        h.register(w, 2, &["default"], &[]);
    }
    let runs: Vec<String> = (0..5).map(|_| h.enqueue("limited")).collect();
    let free = h.enqueue("hello");
    let mut out: Vec<String> = Vec::new();
    for w in ["w1", "w2", "w3"] {
        out.extend(h.claim(w, 2));
    }
    // Two of the job across all three workers; the other job is not held.
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(out.contains(&free));
    let limited_out: Vec<&String> = out.iter().filter(|id| runs.contains(id)).collect();
    assert_eq!(limited_out.len(), 2);
    let waiting: Vec<Option<String>> = listed(&mut h, "limited")
        .into_iter()
        .filter(|r| r.state == RunState::Queued)
        .map(|r| r.waiting_for)
        .collect();
    assert_eq!(waiting.len(), 3);
    assert!(waiting
        .iter()
        .all(|w| w.as_deref() == Some("job limit: 2 of 2 running")));

    // After a restart the two are still out (the workers come back with them): still held.
    let mut h = Harness::with_store(h.core.into_store());
    let mut limited = job("limited", "default");
    limited.policy.max_concurrent = Some(2);
    h.admin(AdminRequest::ApplyJobs {
        jobs: vec![limited, job("hello", "default")],
    });
    let on_w1: Vec<String> = out.iter().filter(|id| runs.contains(id)).cloned().collect();
    let ids: Vec<&str> = on_w1.iter().map(String::as_str).collect();
    h.register("w1", 4, &["default"], &ids);
    assert!(
        h.claim("w1", 4).is_empty(),
        "the limit held across the restart"
    );
    // One ends: one more may go.
    h.start("w1", &on_w1[0]);
    h.finish("w1", &on_w1[0], Outcome::Exited { code: 0 });
    assert_eq!(h.claim("w1", 4).len(), 1);
}

#[test]
fn a_pools_limit_counts_every_job_of_the_pool() {
    let mut h = Harness::with_config(
        MemoryStore::default(),
        CoreConfig {
            pool_limits: [("default".to_string(), 1)].into(),
            ..CoreConfig::default()
        },
    );
    h.register("w1", 4, &["default", "gpu"], &[]);
    let first = h.enqueue("hello");
    h.enqueue("hello");
    let gpu = h.enqueue("gpu-job");
    let granted = h.claim("w1", 4);
    assert_eq!(
        granted.len(),
        2,
        "one of the limited pool, and the other pool's"
    );
    assert!(granted.contains(&first) && granted.contains(&gpu));
    let held = listed(&mut h, "hello")
        .into_iter()
        .find(|r| r.state == RunState::Queued)
        .and_then(|r| r.waiting_for);
    assert_eq!(held.as_deref(), Some("pool default limit: 1 of 1 running"));
}

/// The runs a claim of `max` grants `worker`, as the grant carries them.
fn granted_runs(h: &mut Harness, worker: &str, max: u32) -> Vec<jobcast_protocol::GrantedRun> {
    match h.worker(worker, WorkerRequest::Claim { max, wait_ms: 0 }) {
        Reply::Granted { runs, .. } => runs,
        other => panic!("claim: {other:?}"),
    }
}

#[test]
fn a_grant_names_a_definition_its_session_was_sent_and_carries_it_otherwise() {
    let mut h = Harness::new();
    h.admin(AdminRequest::ApplyJobs {
        jobs: vec![job("hello", "default"), job("other", "default")],
    });
    let mut keeps = registration(&["default"], 4096);
    keeps.concurrency = 8;
    keeps.definition_ids = true;
    assert!(matches!(
        h.worker("w1", WorkerRequest::Register(keeps.clone())),
        Reply::Registered { .. }
    ));
    h.register("old", 8, &["default"], &[]);
    for _ in 0..2 {
        h.enqueue("hello");
    }
    h.enqueue("other");
    h.enqueue("hello");

    let first = granted_runs(&mut h, "w1", 3);
    assert_eq!(first.len(), 3);
    let hello = first[0].definition;
    assert!(hello != 0 && first[0].job.as_ref().is_some_and(|j| j.name == "hello"));
    assert_eq!(
        first[1].definition, hello,
        "the same version of the same job"
    );
    assert!(first[1].job.is_none(), "sent once in this session: named");
    assert_ne!(first[2].definition, hello);
    assert!(first[2].job.as_ref().is_some_and(|j| j.name == "other"));
    // A later grant names what this session was sent.
    let second = granted_runs(&mut h, "w1", 1);
    assert_eq!(
        (second[0].definition, second[0].job.is_none()),
        (hello, true)
    );

    // A worker that does not say it keeps definitions gets each one carried.
    h.enqueue("hello");
    h.enqueue("hello");
    for run in granted_runs(&mut h, "old", 2) {
        assert!(run.job.is_some() && run.definition == 0, "{run:?}");
    }

    // A run handed back (the worker did not hold the definition it was named): the
    // session's definitions are carried again, the run among them.
    let handed_back = second[0].run_id.clone();
    h.worker(
        "w1",
        WorkerRequest::Release {
            run_ids: vec![handed_back.clone()],
        },
    );
    let again = granted_runs(&mut h, "w1", 1);
    assert_eq!(again[0].run_id, handed_back);
    assert_eq!(again[0].definition, hello);
    assert!(again[0].job.is_some(), "carried again after a release");

    // A new registration is a new session: nothing counts as sent.
    assert!(matches!(
        h.worker("w1", WorkerRequest::Register(keeps)),
        Reply::Registered { .. }
    ));
    h.enqueue("hello");
    let fresh = granted_runs(&mut h, "w1", 1);
    assert!(fresh[0].job.is_some(), "{fresh:?}");
}
