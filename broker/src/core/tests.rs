use super::*;
use crate::store::MemoryStore;
use jobcast_protocol::logcap;
use jobcast_protocol::message::topic;
use jobcast_protocol::{
    AdminRequest, ErrorCode, Event, Exec, Heartbeat, JobSpec, KillOutcome, Orders, Outcome,
    Register, RunFilter, RunFinished, WorkerInfo, WorkerRequest,
};

const T0: u64 = 1_800_000_000_000_000; // µs

fn job(name: &str, pool: &str) -> JobSpec {
    JobSpec::new(name, pool, Exec::Script("#!/bin/sh\necho hi\n".into()))
}

/// A one-slot worker's registration for `pools`, declaring `max_log_bytes`.
fn registration(pools: &[&str], max_log_bytes: u64) -> Register {
    Register {
        hostname: "host".into(),
        pid: 1,
        version: "0.1.0".into(),
        concurrency: 1,
        pools: pools.iter().map(|p| p.to_string()).collect(),
        running: vec![],
        max_log_bytes,
    }
}

/// The key a reply is sealed for (`admin` for an API call).
fn sealed_for(to: &ReplyTo) -> &str {
    match to {
        ReplyTo::Peer { name, .. } => name,
        ReplyTo::Api => ADMIN,
    }
}

struct Harness {
    core: Core<MemoryStore>,
    now: u64,
    next_id: u64,
}

impl Harness {
    fn new() -> Harness {
        Self::with_store(MemoryStore::default())
    }

    fn with_store(store: MemoryStore) -> Harness {
        Self::with_config(store, CoreConfig::default())
    }

    fn with_config(store: MemoryStore, config: CoreConfig) -> Harness {
        // A fixed seed: the same run ids on every run of the tests.
        let config = CoreConfig {
            seed: config.seed.or(Some(1)),
            ..config
        };
        let mut h = Harness {
            core: Core::new(store, config, T0).unwrap(),
            now: T0,
            next_id: 1,
        };
        h.admin(AdminRequest::ApplyJobs {
            jobs: vec![job("hello", "default"), job("gpu-job", "gpu")],
        });
        h
    }

    fn send(&mut self, from: &str, request: impl Into<Request>) -> (Reply, Outbox) {
        let mut out = Outbox::default();
        let id = self.next_id;
        self.next_id += 1;
        let peer = from.as_bytes().to_vec();
        self.core
            .handle(&peer, from, id, request, self.now, &mut out)
            .unwrap();
        let reply = out
            .replies
            .iter()
            .find(|r| r.id == id)
            .map(|r| r.reply.clone())
            .unwrap_or(Reply::Ack);
        (reply, out)
    }

    fn admin(&mut self, request: AdminRequest) -> Reply {
        self.send(ADMIN, request).0
    }

    fn worker(&mut self, worker: &str, request: WorkerRequest) -> Reply {
        self.send(worker, request).0
    }

    fn register(
        &mut self,
        worker: &str,
        concurrency: u32,
        pools: &[&str],
        running: &[&str],
    ) -> Orders {
        let mut register = registration(pools, 4096);
        register.concurrency = concurrency;
        register.running = running.iter().map(|r| r.to_string()).collect();
        match self.worker(worker, WorkerRequest::Register(register)) {
            Reply::Registered { orders, .. } => orders,
            other => panic!("register: {other:?}"),
        }
    }

    fn enqueue(&mut self, job: &str) -> String {
        match self.admin(AdminRequest::Enqueue { job: job.into() }) {
            Reply::Enqueued { run } => run.id,
            other => panic!("enqueue: {other:?}"),
        }
    }

    fn claim(&mut self, worker: &str, max: u32) -> Vec<String> {
        match self.worker(worker, WorkerRequest::Claim { max, wait_ms: 0 }) {
            Reply::Granted { runs, .. } => runs.into_iter().map(|a| a.run_id).collect(),
            other => panic!("claim: {other:?}"),
        }
    }

    fn finish(&mut self, worker: &str, run_id: &str, outcome: Outcome) {
        self.worker(
            worker,
            WorkerRequest::RunFinished(RunFinished {
                run_id: run_id.into(),
                outcome,
                duration_ms: 5,
                log_bytes: 0,
                claim: 0,
            }),
        );
    }

    fn state(&self, run_id: &str) -> RunState {
        self.core.store().run(run_id).unwrap().unwrap().state
    }

    fn tick(&mut self) -> Outbox {
        let mut out = Outbox::default();
        self.core.tick(self.now, &mut out).unwrap();
        out
    }

    /// Bytes of log the store holds for `run_id`.
    fn stored_log_bytes(&self, run_id: &str) -> usize {
        self.core
            .store()
            .log_chunks(run_id)
            .unwrap()
            .iter()
            .map(|(_, b)| b.len())
            .sum()
    }

    fn advance_ms(&mut self, ms: u64) {
        self.now += ms * 1_000;
    }
}

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
fn a_worker_that_restarts_without_a_run_loses_it_and_it_is_not_rerun() {
    let mut h = Harness::new();
    h.register("w1", 4, &["default"], &[]);
    let run = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![run.clone()]);
    h.worker(
        "w1",
        WorkerRequest::RunStarted {
            run_id: run.clone(),
            pid: 9,
            spawned_at_us: 0,
        },
    );
    h.register("w1", 4, &["default"], &[]);
    assert_eq!(h.state(&run), RunState::Lost);
    assert!(
        h.claim("w1", 4).is_empty(),
        "a lost run must not be handed out again"
    );
}

#[test]
fn a_worker_that_reports_a_run_it_does_not_own_is_told_to_kill_it() {
    let mut h = Harness::new();
    h.register("w1", 4, &["default"], &[]);
    let run = h.enqueue("hello");
    h.claim("w1", 1);
    // w1 goes silent; its run is lost
    h.advance_ms(11_000);
    h.tick();
    assert_eq!(h.state(&run), RunState::Lost);
    // it comes back still running it
    let orders = h.register("w1", 4, &["default"], &[&run]);
    assert_eq!(orders.kill, vec![run.clone()]);
    // and a late finish report does not change the recorded outcome
    h.finish("w1", &run, Outcome::Exited { code: 0 });
    assert_eq!(h.state(&run), RunState::Lost);
}

#[test]
fn a_silent_worker_goes_offline_and_its_runs_are_lost() {
    let mut h = Harness::new();
    h.register("w1", 4, &["default"], &[]);
    h.register("w2", 4, &["default"], &[]);
    let run = h.enqueue("hello");
    h.claim("w1", 1);
    for _ in 0..12 {
        h.advance_ms(1_000);
        h.worker(
            "w2",
            WorkerRequest::Heartbeat(Heartbeat {
                running: vec![],
                free_slots: 4,
                draining: false,
            }),
        );
        h.tick();
    }
    assert!(!h.core.is_online("w1"));
    assert!(h.core.is_online("w2"));
    assert_eq!(h.state(&run), RunState::Lost);
    match h.worker("w1", WorkerRequest::Claim { max: 1, wait_ms: 0 }) {
        Reply::Error {
            code: ErrorCode::NotRegistered,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn kill_cancels_queued_orders_running_and_is_idempotent() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let running = h.enqueue("hello");
    let queued = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![running.clone()]);
    h.worker(
        "w1",
        WorkerRequest::RunStarted {
            run_id: running.clone(),
            pid: 9,
            spawned_at_us: 0,
        },
    );

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

#[test]
fn state_survives_a_restart_of_the_core() {
    let mut store = MemoryStore::default();
    let (queued, running);
    {
        let mut h = Harness::with_store(std::mem::take(&mut store));
        h.register("w1", 1, &["default"], &[]);
        running = h.enqueue("hello");
        queued = h.enqueue("hello");
        h.claim("w1", 1);
        h.worker(
            "w1",
            WorkerRequest::RunStarted {
                run_id: running.clone(),
                pid: 3,
                spawned_at_us: 0,
            },
        );
        // The broker stops; the next one opens what it stored.
        store = h.core.into_store();
    }
    let mut h = Harness::with_store(std::mem::take(&mut store));
    assert_eq!(h.state(&queued), RunState::Queued);
    assert_eq!(h.state(&running), RunState::Running);
    // the worker comes back still running its run: it keeps it
    h.register("w1", 1, &["default"], &[&running]);
    assert_eq!(h.state(&running), RunState::Running);
    h.finish("w1", &running, Outcome::Exited { code: 0 });
    assert_eq!(h.claim("w1", 1), vec![queued]);
    // new runs get new sequence numbers
    let later = h.enqueue("hello");
    assert!(h.core.store().run(&later).unwrap().unwrap().seq > 2);
}

#[test]
fn runs_of_a_worker_that_never_returns_after_a_broker_restart_are_lost() {
    let mut store = MemoryStore::default();
    let run;
    {
        let mut h = Harness::with_store(std::mem::take(&mut store));
        h.register("w1", 1, &["default"], &[]);
        run = h.enqueue("hello");
        h.claim("w1", 1);
        // The broker stops; the next one opens what it stored.
        store = h.core.into_store();
    }
    let mut h = Harness::with_store(std::mem::take(&mut store));
    h.tick();
    assert_eq!(h.state(&run), RunState::Assigned);
    h.advance_ms(11_000);
    h.tick();
    assert_eq!(h.state(&run), RunState::Lost);
}

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
fn workers_and_admin_cannot_use_each_others_requests() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    assert!(matches!(
        h.send(
            "w1",
            AdminRequest::Enqueue {
                job: "hello".into()
            }
        )
        .0,
        Reply::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    ));
    assert!(matches!(
        h.send(ADMIN, WorkerRequest::Claim { max: 1, wait_ms: 0 }).0,
        Reply::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    ));
}

#[test]
fn bad_admin_input_gets_clear_errors() {
    let mut h = Harness::new();
    let Reply::Error { code, message } = h.admin(AdminRequest::Enqueue { job: "nope".into() })
    else {
        panic!()
    };
    assert_eq!(code, ErrorCode::NotFound);
    assert!(
        message.contains("gpu-job") && message.contains("hello"),
        "{message}"
    );
    let mut bad = job("x", "default");
    bad.exec = Exec::Script("no shebang".into());
    assert!(matches!(
        h.admin(AdminRequest::ApplyJobs { jobs: vec![bad] }),
        Reply::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    assert!(matches!(
        h.admin(AdminRequest::ApplyJobs {
            jobs: vec![job("d", "default"), job("d", "default")]
        }),
        Reply::Error {
            code: ErrorCode::BadRequest,
            ..
        }
    ));
    assert!(matches!(
        h.admin(AdminRequest::Drain {
            worker: "ghost".into()
        }),
        Reply::Error {
            code: ErrorCode::NotFound,
            ..
        }
    ));
    // nothing stored was lost
    let Reply::Jobs { jobs } = h.admin(AdminRequest::ListJobs) else {
        panic!()
    };
    assert_eq!(jobs.len(), 2);
}

#[test]
fn a_listing_names_its_limit_within_the_maximum_or_gets_the_default() {
    let mut h = Harness::new();
    for _ in 0..60 {
        h.enqueue("hello");
    }
    let listed = |h: &mut Harness, limit| match h.admin(AdminRequest::ListRuns(RunFilter {
        limit,
        ..Default::default()
    })) {
        Reply::Runs { runs } => Ok(runs.len()),
        Reply::Error { code, message } => Err((code, message)),
        other => panic!("{other:?}"),
    };
    assert_eq!(listed(&mut h, 0), Ok(50));
    assert_eq!(listed(&mut h, 7), Ok(7));
    assert_eq!(listed(&mut h, MAX_LIST), Ok(60));
    let Err((code, message)) = listed(&mut h, MAX_LIST + 1) else {
        panic!("a limit over the maximum was not refused")
    };
    assert_eq!(code, ErrorCode::BadRequest);
    assert!(message.contains("10000"), "{message}");
}

#[test]
fn apply_reports_created_updated_unchanged() {
    let mut h = Harness::new();
    let mut changed = job("hello", "default");
    changed.timeout_ms = Some(1_000);
    let reply = h.admin(AdminRequest::ApplyJobs {
        jobs: vec![changed, job("gpu-job", "gpu"), job("new", "default")],
    });
    assert_eq!(
        reply,
        Reply::Applied {
            created: vec!["new".into()],
            updated: vec!["hello".into()],
            unchanged: vec!["gpu-job".into()]
        }
    );
}

#[test]
fn logs_are_stored_capped_with_head_and_tail() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]); // cap 4096
    let run = h.enqueue("hello");
    h.claim("w1", 1);
    let data: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    for (i, chunk) in data.chunks(1000).enumerate() {
        h.worker(
            "w1",
            WorkerRequest::LogChunk {
                run_id: run.clone(),
                offset: (i * 1000) as u64,
                data: chunk.to_vec(),
            },
        );
    }
    // the store holds about the cap, not the whole output
    let stored = h.stored_log_bytes(&run);
    assert!(stored <= 4096 + 1000, "{stored}");
    let Reply::Log {
        data: log,
        next_offset,
        ..
    } = h.admin(AdminRequest::GetLog {
        run: run.clone(),
        offset: None,
    })
    else {
        panic!()
    };
    assert!(log.len() <= 4096);
    assert!(log.starts_with(&data[..logcap::head_cap(4096)]));
    assert!(log.ends_with(&data[data.len() - 1000..]));
    assert!(String::from_utf8_lossy(&log).contains("bytes cut]"));
    assert_eq!(next_offset, 100_000);
    // following from an offset that was cut says so
    let Reply::Log { data: tail, .. } = h.admin(AdminRequest::GetLog {
        run,
        offset: Some(2_000),
    }) else {
        panic!()
    };
    assert!(String::from_utf8_lossy(&tail).starts_with("\n[jobcast: "));
}

#[test]
fn the_broker_caps_stored_logs_whatever_the_worker_declares() {
    let mut h = Harness::with_config(
        MemoryStore::default(),
        CoreConfig {
            max_log_bytes: 4096,
            ..CoreConfig::default()
        },
    );
    // A worker that declares a terabyte of log per run.
    let reply = h.worker(
        "w1",
        WorkerRequest::Register(registration(&["default"], 1 << 40)),
    );
    assert!(matches!(reply, Reply::Registered { .. }), "{reply:?}");
    let run = h.enqueue("hello");
    h.claim("w1", 1);
    for i in 0..100u64 {
        h.worker(
            "w1",
            WorkerRequest::LogChunk {
                run_id: run.clone(),
                offset: i * 1000,
                data: vec![b'x'; 1000],
            },
        );
    }
    let stored = h.stored_log_bytes(&run);
    assert!(stored <= 4096 + 1000, "stored {stored} bytes");
}

#[test]
fn a_worker_key_limited_to_pools_cannot_register_for_another() {
    let mut h = Harness::with_config(
        MemoryStore::default(),
        CoreConfig {
            worker_pools: HashMap::from([(
                "w1".to_string(),
                BTreeSet::from(["default".to_string()]),
            )]),
            ..CoreConfig::default()
        },
    );
    let reply = h.worker(
        "w1",
        WorkerRequest::Register(registration(&["default", "gpu"], 4096)),
    );
    let Reply::Error { code, message } = reply else {
        panic!("registered for a pool it may not serve: {reply:?}");
    };
    assert_eq!(code, ErrorCode::Forbidden);
    assert!(
        message.contains("\"w1\"") && message.contains("\"gpu\""),
        "{message}"
    );
    // It never got a session, so it can claim nothing, not even from its own pool.
    h.enqueue("gpu-job");
    assert!(matches!(
        h.worker("w1", WorkerRequest::Claim { max: 1, wait_ms: 0 }),
        Reply::Error {
            code: ErrorCode::NotRegistered,
            ..
        }
    ));
    // Its own pool is fine; an unrestricted key may serve any pool.
    h.register("w1", 1, &["default"], &[]);
    h.register("w2", 1, &["gpu"], &[]);
    assert_eq!(h.claim("w1", 1), Vec::<String>::new());
    assert_eq!(h.claim("w2", 1).len(), 1);
}

#[test]
fn ping_collects_answers_and_reports_the_silent() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    h.register("w2", 1, &["default"], &[]);
    let (_, out) = h.send(
        ADMIN,
        AdminRequest::Ping {
            worker: None,
            timeout_ms: 500,
        },
    );
    assert!(out.replies.is_empty(), "the reply waits for answers");
    let ping_id = out
        .events
        .iter()
        .find_map(|(_, e)| match e {
            Event::Ping { ping_id } => Some(*ping_id),
            _ => None,
        })
        .unwrap();
    assert!(out.events.iter().any(|(t, _)| t == &topic::worker("w2")));
    let info = WorkerInfo {
        version: "9.9".into(),
        hostname: "h".into(),
        pid: 1,
        concurrency: 1,
        pools: vec![],
        running: vec![],
        uptime_ms: 1,
        rss_bytes: 1,
        draining: false,
    };
    h.advance_ms(2);
    let (_, out) = h.send("w1", WorkerRequest::Pong { ping_id, info });
    assert!(
        out.replies.iter().all(|r| sealed_for(&r.to) == "w1"),
        "still waiting for w2"
    );
    h.advance_ms(600);
    let out = h.tick();
    let reply = out
        .replies
        .iter()
        .find(|r| sealed_for(&r.to) == ADMIN)
        .unwrap();
    let Reply::PingResult { workers } = &reply.reply else {
        panic!()
    };
    assert_eq!(workers.len(), 2);
    assert_eq!(workers[0].worker, "w1");
    assert!(workers[0].rtt_us.unwrap() >= 2_000);
    assert_eq!(workers[0].info.as_ref().unwrap().version, "9.9");
    assert_eq!(workers[1].rtt_us, None);
}

#[test]
fn queued_work_is_announced_again_every_interval() {
    let mut h = Harness::new();
    h.enqueue("hello");
    let wake = (
        topic::pool("default"),
        Event::Wake {
            pool: "default".into(),
        },
    );
    assert!(h.tick().events.contains(&wake));
    h.advance_ms(100);
    assert!(
        !h.tick().events.contains(&wake),
        "not more often than the interval"
    );
    h.advance_ms(1_000);
    assert!(h.tick().events.contains(&wake));
}

/// The `Granted` answers in `out` for `worker`, by request id.
fn grants_for(out: &Outbox, worker: &str) -> Vec<(u64, Vec<String>)> {
    out.replies
        .iter()
        .filter(|r| sealed_for(&r.to) == worker)
        .filter_map(|r| match &r.reply {
            Reply::Granted { runs, .. } => {
                Some((r.id, runs.iter().map(|a| a.run_id.clone()).collect()))
            }
            _ => None,
        })
        .collect()
}

impl Harness {
    /// Sends a claim that may wait; returns its request id and whether it was answered.
    fn waiting_claim(&mut self, worker: &str, max: u32, wait_ms: u64) -> (u64, Outbox) {
        let id = self.next_id;
        let (_, out) = self.send(worker, WorkerRequest::Claim { max, wait_ms });
        (id, out)
    }
}

#[test]
fn a_waiting_claim_gets_a_run_in_the_batch_that_queues_it() {
    let mut h = Harness::new();
    h.register("w1", 2, &["default"], &[]);
    let (claim_id, out) = h.waiting_claim("w1", 2, 10_000);
    assert!(
        out.replies.is_empty(),
        "held, not answered: {:?}",
        out.replies
    );
    // The enqueue and the end of its batch (the tick), as the server runs them.
    let (reply, mut out) = h.send(
        ADMIN,
        AdminRequest::Enqueue {
            job: "hello".into(),
        },
    );
    let Reply::Enqueued { run } = reply else {
        panic!("{reply:?}")
    };
    h.core.tick(h.now, &mut out).unwrap();
    assert_eq!(
        grants_for(&out, "w1"),
        vec![(claim_id, vec![run.id.clone()])]
    );
    // Granted before the batch's flush, like any claim.
    assert_eq!(h.state(&run.id), RunState::Assigned);
    // Nobody else needs waking for a run already taken.
    assert!(
        !out.events
            .iter()
            .any(|(_, e)| matches!(e, Event::Wake { .. })),
        "{:?}",
        out.events
    );
    // Answered once: the claim no longer waits.
    h.enqueue("hello");
    assert!(grants_for(&h.tick(), "w1").is_empty());
}

#[test]
fn a_waiting_claim_is_answered_with_nothing_when_its_wait_ends() {
    // A worker timeout longer than the longest wait: the worker stays online throughout.
    let config = CoreConfig {
        worker_timeout_ms: 2 * waiting_claims::MAX_CLAIM_WAIT_MS,
        ..CoreConfig::default()
    };
    let mut h = Harness::with_config(MemoryStore::default(), config);
    h.register("w1", 1, &["default"], &[]);
    h.tick();
    let (claim_id, _) = h.waiting_claim("w1", 1, 500);
    // The loop wakes up for the deadline.
    assert_eq!(h.core.next_wakeup_us(), h.now + 500_000);
    h.advance_ms(499);
    assert!(grants_for(&h.tick(), "w1").is_empty());
    h.advance_ms(1);
    assert_eq!(grants_for(&h.tick(), "w1"), vec![(claim_id, vec![])]);
    let (claim_id, _) = h.waiting_claim("w1", 1, 2_000);
    h.advance_ms(1_999);
    assert!(grants_for(&h.tick(), "w1").is_empty());
    h.advance_ms(1);
    assert_eq!(grants_for(&h.tick(), "w1"), vec![(claim_id, vec![])]);
    // The wait is capped, whatever the worker asks for.
    let (claim_id, _) = h.waiting_claim("w1", 1, u64::MAX);
    h.advance_ms(waiting_claims::MAX_CLAIM_WAIT_MS);
    assert_eq!(grants_for(&h.tick(), "w1"), vec![(claim_id, vec![])]);
}

#[test]
fn waiting_claims_are_served_oldest_first_and_only_for_their_pools() {
    let mut h = Harness::new();
    h.register("gpu1", 1, &["gpu"], &[]);
    h.register("w1", 1, &["default"], &[]);
    h.register("w2", 1, &["default"], &[]);
    let (gpu_claim, _) = h.waiting_claim("gpu1", 1, 10_000);
    let (first, _) = h.waiting_claim("w1", 1, 10_000);
    let (second, _) = h.waiting_claim("w2", 1, 10_000);
    let run = h.enqueue("hello");
    let out = h.tick();
    assert_eq!(grants_for(&out, "w1"), vec![(first, vec![run])]);
    assert!(grants_for(&out, "w2").is_empty());
    assert!(grants_for(&out, "gpu1").is_empty());
    let gpu_run = h.enqueue("gpu-job");
    let out = h.tick();
    assert_eq!(grants_for(&out, "gpu1"), vec![(gpu_claim, vec![gpu_run])]);
    let run = h.enqueue("hello");
    assert_eq!(grants_for(&h.tick(), "w2"), vec![(second, vec![run])]);
}

#[test]
fn runs_queued_while_every_slot_is_busy_reach_the_waiting_claim_when_one_frees() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let first = h.enqueue("hello");
    assert_eq!(h.claim("w1", 1), vec![first.clone()]);
    // The worker thinks its slot is free (the run ended) before the broker has heard.
    let (claim_id, out) = h.waiting_claim("w1", 1, 10_000);
    assert!(out.replies.is_empty());
    let second = h.enqueue("hello");
    assert!(grants_for(&h.tick(), "w1").is_empty(), "no room yet");
    h.worker(
        "w1",
        WorkerRequest::RunStarted {
            run_id: first.clone(),
            pid: 1,
            spawned_at_us: 0,
        },
    );
    h.finish("w1", &first, Outcome::Exited { code: 0 });
    assert_eq!(h.state(&first), RunState::Succeeded);
    assert_eq!(grants_for(&h.tick(), "w1"), vec![(claim_id, vec![second])]);
}

#[test]
fn a_waiting_claim_ends_when_the_worker_claims_again_drains_or_registers() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    // A newer claim stands for the worker's slots; the older one is answered.
    let (old, _) = h.waiting_claim("w1", 1, 10_000);
    let (newer, out) = h.waiting_claim("w1", 1, 10_000);
    assert_eq!(grants_for(&out, "w1"), vec![(old, vec![])]);
    // A worker that starts draining is answered at once and not held again.
    let (_, out) = h.send(
        "w1",
        WorkerRequest::Heartbeat(Heartbeat {
            running: vec![],
            free_slots: 1,
            draining: true,
        }),
    );
    assert_eq!(grants_for(&out, "w1"), vec![(newer, vec![])]);
    let (id, out) = h.waiting_claim("w1", 1, 10_000);
    assert_eq!(grants_for(&out, "w1"), vec![(id, vec![])]);
    // Registering again ends the old session's claim.
    h.register("w1", 1, &["default"], &[]);
    let (held, _) = h.waiting_claim("w1", 1, 10_000);
    let (_, out) = h.send(
        "w1",
        WorkerRequest::Register(registration(&["default"], 4096)),
    );
    assert_eq!(grants_for(&out, "w1"), vec![(held, vec![])]);
    let run = h.enqueue("hello");
    assert!(grants_for(&h.tick(), "w1").is_empty());
    assert_eq!(h.state(&run), RunState::Queued);
}

#[test]
fn a_drain_order_answers_the_waiting_claim() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    let (held, _) = h.waiting_claim("w1", 1, 10_000);
    let (_, out) = h.send(
        ADMIN,
        AdminRequest::Drain {
            worker: "w1".into(),
        },
    );
    assert_eq!(grants_for(&out, "w1"), vec![(held, vec![])]);
    let run = h.enqueue("hello");
    assert!(grants_for(&h.tick(), "w1").is_empty());
    assert_eq!(h.state(&run), RunState::Queued);
}

#[test]
fn a_claim_left_on_an_old_connection_is_dropped_not_granted() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    h.waiting_claim("w1", 1, 10_000);
    // The worker reconnected: the same name on a new connection.
    let mut out = Outbox::default();
    let heartbeat = WorkerRequest::Heartbeat(Heartbeat {
        running: vec![],
        free_slots: 1,
        draining: false,
    });
    h.core
        .handle(&b"new".to_vec(), "w1", 99, heartbeat, h.now, &mut out)
        .unwrap();
    let run = h.enqueue("hello");
    assert!(grants_for(&h.tick(), "w1").is_empty());
    assert_eq!(h.state(&run), RunState::Queued);
}

#[test]
fn a_silent_workers_waiting_claim_goes_with_it() {
    let mut h = Harness::new();
    h.register("w1", 1, &["default"], &[]);
    h.waiting_claim("w1", 1, 30_000);
    h.advance_ms(CoreConfig::default().worker_timeout_ms + 1_000);
    h.tick();
    assert!(!h.core.is_online("w1"));
    let run = h.enqueue("hello");
    assert!(grants_for(&h.tick(), "w1").is_empty());
    assert_eq!(h.state(&run), RunState::Queued);
}

#[test]
fn run_ids_come_from_the_seeded_source_and_never_repeat() {
    let ids = |seed: u64| -> Vec<String> {
        let config = CoreConfig {
            seed: Some(seed),
            ..CoreConfig::default()
        };
        let mut h = Harness::with_config(MemoryStore::default(), config);
        (0..20).map(|_| h.enqueue("hello")).collect()
    };
    let first = ids(7);
    assert_eq!(first, ids(7), "the same seed names the same runs");
    assert_ne!(first, ids(8));
    let unique: BTreeSet<&String> = first.iter().collect();
    assert_eq!(unique.len(), first.len());
    assert!(first.iter().all(|id| id.len() == 16));
}

#[test]
fn an_api_call_is_answered_in_process_and_recorded_under_its_token() {
    let mut h = Harness::new();
    let mut out = Outbox::default();
    h.core
        .handle_api(
            "token alice",
            41,
            AdminRequest::Enqueue {
                job: "hello".into(),
            },
            h.now,
            &mut out,
        )
        .unwrap();
    let [reply] = &out.replies[..] else {
        panic!("{:?}", out.replies)
    };
    assert_eq!((reply.to.clone(), reply.id), (ReplyTo::Api, 41));
    let Reply::Enqueued { run } = &reply.reply else {
        panic!("{:?}", reply.reply)
    };
    assert_eq!(run.history[0].cause, "enqueued by token alice");
    // The same request over a socket is sealed for the key that sent it.
    let (_, out) = h.send(
        ADMIN,
        AdminRequest::Enqueue {
            job: "hello".into(),
        },
    );
    assert_eq!(
        out.replies[0].to,
        ReplyTo::peer(&ADMIN.as_bytes().to_vec(), ADMIN)
    );
}

mod scheduling;
