//! Round trips of every message kind through the signed envelope, and every way a frame
//! is refused.

use jobcast_protocol::envelope::{peek_sender, seal_with_replay_nonce, Opener, BROKER};
use jobcast_protocol::AdminRequest;
use jobcast_protocol::WorkerRequest;
use jobcast_protocol::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

const NOW: u64 = 1_800_000_000_000;
const SKEW: u64 = 30_000;

fn key() -> Secret {
    Secret::new("w1-secret")
}

fn keys(name: &str) -> Option<&'static Secret> {
    static W1: std::sync::OnceLock<Secret> = std::sync::OnceLock::new();
    (name == "w1" || name == "w2").then(|| W1.get_or_init(key))
}

fn spec() -> JobSpec {
    JobSpec {
        name: "backup".into(),
        pool: "default".into(),
        exec: Exec::Script("#!/bin/sh\necho hi\n".into()),
        env: BTreeMap::from([("A".into(), "1".into())]),
        worker_env: Vec::new(),
        workdir: Some("/tmp".into()),
        timeout_ms: Some(5_000),
        enabled: true,
        schedule: ScheduleSpec {
            cron: vec!["0 2 * * *".into()],
            timezone: Some("Europe/Amsterdam".into()),
            exclude: vec!["22:00-06:00".into()],
            ..Default::default()
        },
        policy: JobPolicy {
            overlap: Overlap::Queue,
            misfire: Misfire::All,
            children: vec![ChildSpec {
                job: "report".into(),
                on_error: true,
            }],
            ..Default::default()
        },
        params: BTreeMap::from([(
            "target".into(),
            jobcast_protocol::params::ParamSpec {
                kind: jobcast_protocol::params::ParamType::Choice,
                choices: vec!["db".into(), "files".into()],
                default: Some("db".into()),
                required: false,
                description: Some("what to back up".into()),
                secret: false,
            },
        )]),
        priority: 5,
        tags: vec!["nightly".into()],
        team: Some("data".into()),
        memory_max: Some(256 << 20),
        cpus_milli: Some(500),
    }
}

fn record() -> RunRecord {
    RunRecord {
        id: "3f9a2c1b7d4e5f60".into(),
        seq: 7,
        job: "backup".into(),
        pool: "default".into(),
        attempt: 1,
        state: RunState::Running,
        worker: Some("w1".into()),
        pid: Some(42),
        created_at_ms: NOW,
        scheduled_at_ms: NOW,
        started_at_ms: Some(NOW + 1),
        finished_at_ms: None,
        outcome: Some(Outcome::Exited { code: 3 }),
        kill_requested: false,
        log_bytes: 12,
        log_cap: 4096,
        parent: Some("p1".into()),
        first_attempt: None,
        pinned_worker: Some("w1".into()),
        not_before_ms: 5,
        created_at_us: 0,
        spawned_at_us: None,
        ended_at_us: None,
        schedule_id: None,
        worker_instance: Some(77),
        history: vec![Transition {
            state: RunState::Queued,
            at_ms: NOW,
            cause: "enqueued".into(),
        }],
        spec: spec().into(),
        params: BTreeMap::from([("target".into(), "files".into())]),
        priority: -3,
        usage: Some(jobcast_protocol::RunUsage {
            cpu_us: Some(1_200),
            peak_memory_bytes: None,
        }),
        late_result: Some(jobcast_protocol::LateResult {
            outcome: Outcome::LeaseExpired { silent_ms: 10_250 },
            duration_ms: 10_300,
            log_bytes: 40,
            reported_at_ms: NOW + 30_000,
        }),
        waiting_for: Some("job limit: 2 of 2 running".into()),
    }
}

fn info() -> WorkerInfo {
    WorkerInfo {
        version: "0.1.0".into(),
        hostname: "h".into(),
        pid: 1,
        concurrency: 4,
        pools: vec!["default".into()],
        running: vec!["r1".into()],
        uptime_ms: 10,
        rss_bytes: 1 << 20,
        draining: false,
        containment: "cgroup v2 per run".into(),
    }
}

/// A `Vec<Request>` of worker and admin requests alike.
macro_rules! requests {
    ($($request:expr),* $(,)?) => {
        vec![$(Request::from($request)),*]
    };
}

/// One of every request (the round trip below then proves each one's tag is read as the
/// right kind).
fn every_request() -> Vec<Request> {
    requests![
        WorkerRequest::Register(Register {
            hostname: "h".into(),
            pid: 9,
            version: "0.1.0".into(),
            concurrency: 4,
            pools: vec!["default".into()],
            running: vec!["r1".into()],
            max_log_bytes: 800 << 10,
            instance: 77,
            prefetch: 0,
            kill_grace_ms: 5_000,
            earlier_started: None,
            definition_ids: true,
        }),
        WorkerRequest::Heartbeat(Heartbeat {
            running: vec![],
            free_slots: 4,
            draining: true,
        }),
        WorkerRequest::Claim { max: 3, wait_ms: 0 },
        WorkerRequest::RunStarted {
            run_id: "r1".into(),
            pid: 77,
            spawned_at_us: 0,
        },
        WorkerRequest::LogChunk {
            run_id: "r1".into(),
            offset: 5,
            data: vec![0, 159, 146, 150, b'\n'],
        },
        WorkerRequest::RunFinished(RunFinished {
            run_id: "r1".into(),
            outcome: Outcome::FailedToStart {
                reason: "no such file".into(),
            },
            duration_ms: 3,
            log_bytes: 0,
            claim: 0,
            usage: None,
            started: None,
        }),
        WorkerRequest::RunFinished(RunFinished {
            run_id: "r3".into(),
            outcome: Outcome::Exited { code: 0 },
            duration_ms: 1,
            log_bytes: 0,
            claim: 1,
            usage: None,
            started: Some(jobcast_protocol::StartedAs {
                pid: 4_321,
                spawned_at_us: 1_700_000_000_000_000,
            }),
        }),
        WorkerRequest::Release {
            run_ids: vec!["r2".into()],
        },
        WorkerRequest::Leaving,
        WorkerRequest::Pong {
            ping_id: 5,
            info: info(),
        },
        WorkerRequest::FetchOrders,
        WorkerRequest::Reports(vec![
            jobcast_protocol::Report::RunStarted {
                run_id: "r4".into(),
                pid: 8,
                spawned_at_us: 1_700_000_000_000_000,
            },
            jobcast_protocol::Report::LogChunk {
                run_id: "r4".into(),
                offset: 0,
                data: b"done\n".to_vec(),
            },
            jobcast_protocol::Report::RunFinished(RunFinished {
                run_id: "r4".into(),
                outcome: Outcome::Exited { code: 0 },
                duration_ms: 2,
                log_bytes: 5,
                claim: 1,
                usage: None,
                started: None,
            }),
            jobcast_protocol::Report::Release {
                run_ids: vec!["r5".into()],
            },
        ]),
        AdminRequest::Ping {
            worker: Some("w1".into()),
            timeout_ms: 1000,
        },
        AdminRequest::Kill {
            selectors: vec!["3f9a".into()],
        },
        AdminRequest::Enqueue {
            job: "backup".into(),
            key: None,
            params: Default::default(),
            priority: None,
        },
        AdminRequest::ListRuns(RunFilter {
            state: Some(RunState::Lost),
            job: Some("backup".into()),
            limit: 50,
            worker: Some("w1".into()),
            since_ms: Some(1),
            until_ms: Some(2),
            before_seq: Some(3),
            after_seq: Some(1),
            text: Some("disk full".into()),
            linked_to: Some("3f9a".into()),
            teams: Some(vec!["data".into()]),
            output: Some("Traceback".into()),
        }),
        AdminRequest::Retry { run: "3f9a".into() },
        AdminRequest::ListJobs,
        AdminRequest::GetLog {
            run: "3f9a".into(),
            offset: Some(10),
            wait_ms: None,
        },
        AdminRequest::ApplyJobs { jobs: vec![spec()] },
        AdminRequest::Status,
        AdminRequest::Drain {
            worker: "w1".into(),
        },
        AdminRequest::SetEnabled {
            target: EnableTarget::Pool("gpu".into()),
            enabled: false,
        },
        AdminRequest::Prune { dry_run: true },
        AdminRequest::Reload,
        AdminRequest::NextFires {
            job: "nightly".into(),
            count: 5,
        },
        AdminRequest::Audit {
            before: Some(40),
            limit: 50,
        },
    ]
}

fn every_reply() -> Vec<Reply> {
    vec![
        Reply::Registered {
            boot_id: 1,
            heartbeat_interval_ms: 1000,
            orders: Orders {
                kill: vec!["r1".into()],
                drain: false,
                resume: vec![],
            },
            lease_ms: 10_000,
            starts_in_ends: true,
            reports_together: true,
        },
        Reply::Ack,
        Reply::Reports(vec![
            Reply::Ack,
            Reply::Error {
                code: ErrorCode::NotRegistered,
                message: "register first".into(),
            },
            Reply::Granted {
                more_queued: false,
                runs: vec![],
            },
        ]),
        Reply::Orders(Orders {
            kill: vec![],
            drain: true,
            resume: vec![],
        }),
        Reply::Granted {
            more_queued: true,
            runs: vec![
                GrantedRun {
                    run_id: "r1".into(),
                    attempt: 1,
                    scheduled_at_ms: NOW,
                    definition: 3,
                    job: Some(spec().into()),
                    params: BTreeMap::from([("target".into(), "files".into())]),
                },
                GrantedRun {
                    run_id: "r2".into(),
                    attempt: 1,
                    scheduled_at_ms: NOW,
                    definition: 3,
                    job: None,
                    params: BTreeMap::new(),
                },
            ],
        },
        Reply::PingResult {
            workers: vec![
                PingAnswer {
                    worker: "w1".into(),
                    rtt_us: Some(120),
                    info: Some(info()),
                },
                PingAnswer {
                    worker: "w2".into(),
                    rtt_us: None,
                    info: None,
                },
            ],
        },
        Reply::KillResult {
            outcomes: vec![
                KillOutcome::Killing {
                    run_id: "r1".into(),
                    worker: "w1".into(),
                },
                KillOutcome::Cancelled {
                    run_id: "r2".into(),
                },
                KillOutcome::AlreadyFinished {
                    run_id: "r3".into(),
                    state: RunState::Succeeded,
                },
                KillOutcome::Ambiguous {
                    selector: "r".into(),
                    candidates: vec!["r1".into(), "r2".into()],
                },
                KillOutcome::NotFound {
                    selector: "zz".into(),
                },
            ],
        },
        Reply::Enqueued {
            run: RunRef::of(&record()),
        },
        Reply::Runs {
            runs: vec![record()],
            resume_before: Some(40_001),
            total: Some(75_000),
        },
        Reply::Jobs {
            jobs: vec![JobView {
                spec: spec(),
                state: JobState {
                    last_tick_ms: 3,
                    recent_skips: vec![(3, "disabled".into())],
                    ..Default::default()
                },
                next_fire_ms: Some(NOW),
                active: true,
            }],
        },
        Reply::Log {
            run: Box::new(record()),
            data: b"hello".to_vec(),
            next_offset: 5,
            waited: true,
        },
        Reply::Applied {
            created: vec!["a".into()],
            updated: vec![],
            unchanged: vec!["b".into()],
        },
        Reply::Status(Box::new(StatusReport {
            version: "0.1.0".into(),
            boot_id: 3,
            uptime_ms: 5,
            active: BTreeMap::from([("queued".into(), 2)]),
            total_runs: 10,
            jobs: 2,
            workers: vec![WorkerStatus {
                id: "w1".into(),
                online: true,
                hostname: "h".into(),
                pid: 1,
                version: "0.1.0".into(),
                concurrency: 4,
                pools: vec!["default".into()],
                running: vec![],
                last_seen_ms: NOW,
                draining: false,
                kill_grace_ms: 5_000,
            }],
            rejected: BTreeMap::from([("bad_mac".into(), 1)]),
            connections: BTreeMap::from([("open".into(), 2)]),
            alerts: vec![Alert {
                id: String::new(),
                acknowledged: None,
                kind: AlertKind::Late,
                job: Some("backup".into()),
                pool: None,
                run_id: None,
                since_ms: NOW,
                message: "late".into(),
            }],
            disabled_pools: vec!["gpu".into()],
            pruned_runs: 7,
            active_by_job: BTreeMap::from([(
                "backup".into(),
                BTreeMap::from([("queued".into(), 2)]),
            )]),
            queued_by_pool: BTreeMap::from([("default".into(), 2)]),
            oldest_queued_by_pool: BTreeMap::from([("default".into(), NOW)]),
            held_by_pool: BTreeMap::from([("default".into(), 2)]),
            runs_by_state: BTreeMap::from([("queued".into(), 2), ("failed".into(), 8)]),
            leadership: Some(jobcast_protocol::Leadership {
                epoch: 7,
                holder: "host-a:41:0badcafe".into(),
                this_broker: "host-b:42:00c0ffee".into(),
                lease_ms: 5_000,
                renewed_ms_ago: 1_200,
                brokers: vec![jobcast_protocol::BrokerSeen {
                    holder: "host-b:42:00c0ffee".into(),
                    router: "tcp://host-b:5555".into(),
                    http: "host-b:8080".into(),
                    leader: false,
                    seen_ms_ago: 300,
                }],
            }),
        })),
        Reply::Reloaded(ReloadReport {
            workers_added: vec!["w3".into()],
            workers_removed: vec![],
            workers_changed: vec!["w1".into()],
            admin_changed: false,
            api_tokens: 2,
            webhooks: 1,
            needs_restart: vec!["router".into()],
        }),
        Reply::Pruned {
            runs: 3,
            scanned: 40,
            complete: true,
        },
        Reply::NextFires {
            job: Box::new(JobView {
                spec: spec(),
                state: JobState::default(),
                next_fire_ms: Some(NOW),
                active: true,
            }),
            times_ms: vec![1_800_000_000_000, 1_800_086_400_000],
        },
        Reply::Series {
            step_ms: 60_000,
            points: vec![SeriesPoint {
                at_ms: NOW,
                started: 3,
                succeeded: 2,
                failed: 1,
                other: 0,
                wait_avg_ms: 12,
                wait_max_ms: 30,
                queued: 4,
            }],
            wait_p50_ms: 10,
            wait_p99_ms: 30,
        },
        Reply::Audit {
            entries: vec![AuditEntry {
                seq: 7,
                at_ms: NOW,
                actor: "token alice".into(),
                action: "kill".into(),
                target: "3f2a".into(),
                outcome: "killing 3f2a9c on w1".into(),
                teams: vec!["data".into()],
            }],
        },
        Reply::Error {
            code: ErrorCode::NotFound,
            message: "no such job".into(),
        },
        Reply::NotLeader {
            leader: Some(jobcast_protocol::LeaderAddress {
                router: "tcp://host-a:5555".into(),
                publish: "tcp://host-a:5556".into(),
                http: String::new(),
                epoch: 7,
            }),
        },
        Reply::NotLeader { leader: None },
    ]
}

fn every_body() -> Vec<Body> {
    let requests = every_request()
        .into_iter()
        .enumerate()
        .map(|(i, request)| Body::Request {
            id: i as u64,
            request,
        });
    let replies = every_reply()
        .into_iter()
        .enumerate()
        .map(|(i, reply)| Body::Reply {
            id: i as u64,
            reply,
        });
    requests.chain(replies).collect()
}

#[test]
fn every_message_kind_round_trips() {
    let mut opener = Opener::new(1 << 20, SKEW);
    for (i, body) in every_body().into_iter().enumerate() {
        let frame = seal_with_replay_nonce("w1", BROKER, &key(), &body, NOW, i as u64);
        let opened = opener.open(&frame, NOW + 5, keys).unwrap();
        assert_eq!(opened.body, body);
        assert_eq!(opened.from, "w1");
        assert_eq!(opened.ts_ms, NOW);
    }
}

#[test]
fn every_event_round_trips() {
    for event in [
        Event::BrokerAlive {
            boot_id: 1,
            time_ms: NOW,
        },
        Event::Wake {
            pool: "default".into(),
        },
        Event::Ping { ping_id: 3 },
        Event::OrdersPending,
    ] {
        assert_eq!(decode_event(&encode_event(&event)), Some(event));
    }
}

#[test]
fn frames_are_messagepack_maps_and_their_content_is_sealed() {
    // An assignment carries a script and env values: none of it may cross in clear.
    let body = every_body()
        .into_iter()
        .find(|b| format!("{b:?}").contains("Granted"))
        .expect("a grant");
    let frame = seal_with_replay_nonce("w1", BROKER, &key(), &body, NOW, 1);
    // 0x83: a fixmap with three entries (from, nonce, sealed)
    assert_eq!(frame[0], 0x83);
    let text = String::from_utf8_lossy(&frame);
    for field in ["from", "nonce", "sealed", "w1"] {
        assert!(text.contains(field), "{field} missing");
    }
    for secret_part in ["echo hi", "PGHOST", "granted", "body", "runs"] {
        assert!(
            !text.contains(secret_part),
            "{secret_part} is readable on the wire"
        );
    }
}

#[test]
fn each_direction_has_its_own_key() {
    // A frame sealed for w1 (as a reply would be) does not open at the broker, even
    // though both keys come from the same secret.
    let reflected = seal_with_replay_nonce("w1", "w1", &key(), &claim(), NOW, 1);
    let mut opener = Opener::new(1 << 20, SKEW);
    assert_eq!(
        opener.open(&reflected, NOW, keys).unwrap_err().reason(),
        "bad_mac"
    );
    assert_ne!(
        key().message_key("w1", BROKER),
        key().message_key(BROKER, "w1")
    );
}

#[test]
fn the_same_body_sealed_twice_differs() {
    // Random nonces: equal messages are not recognisable on the wire.
    let a = seal_with_replay_nonce("w1", BROKER, &key(), &claim(), NOW, 1);
    let b = seal_with_replay_nonce("w1", BROKER, &key(), &claim(), NOW, 1);
    assert_ne!(a, b);
}

fn claim() -> Body {
    Body::Request {
        id: 1,
        request: WorkerRequest::Claim { max: 1, wait_ms: 0 }.into(),
    }
}

#[test]
fn a_forged_mac_is_refused() {
    let mut opener = Opener::new(1 << 20, SKEW);
    let frame = seal_with_replay_nonce("w1", BROKER, &Secret::new("wrong"), &claim(), NOW, 1);
    assert_eq!(
        opener.open(&frame, NOW, keys).unwrap_err().reason(),
        "bad_mac"
    );
}

#[test]
fn a_tampered_payload_is_refused() {
    let mut opener = Opener::new(1 << 20, SKEW);
    let mut frame = seal_with_replay_nonce("w1", BROKER, &key(), &claim(), NOW, 1);
    // flip a bit inside the payload (past the outer map's keys)
    let at = frame.len() / 2;
    frame[at] ^= 0x01;
    let err = opener.open(&frame, NOW, keys).unwrap_err();
    assert!(matches!(err.reason(), "bad_mac" | "undecodable"), "{err}");
}

#[test]
fn a_replayed_frame_is_refused() {
    let mut opener = Opener::new(1 << 20, SKEW);
    let frame = seal_with_replay_nonce("w1", BROKER, &key(), &claim(), NOW, 99);
    assert!(opener.open(&frame, NOW, keys).is_ok());
    assert_eq!(
        opener.open(&frame, NOW + 10, keys).unwrap_err().reason(),
        "replay"
    );
}

#[test]
fn a_stale_or_future_frame_is_refused() {
    let mut opener = Opener::new(1 << 20, SKEW);
    let old = seal_with_replay_nonce("w1", BROKER, &key(), &claim(), NOW - SKEW - 1, 1);
    assert_eq!(
        opener.open(&old, NOW, keys).unwrap_err().reason(),
        "clock_skew"
    );
    let future = seal_with_replay_nonce("w1", BROKER, &key(), &claim(), NOW + SKEW + 1, 2);
    assert_eq!(
        opener.open(&future, NOW, keys).unwrap_err().reason(),
        "clock_skew"
    );
}

#[test]
fn a_frame_sealed_before_the_receiver_started_is_refused_and_answered() {
    // Captured before a restart, replayed after it: still inside the skew window, and the
    // new process remembers no nonces, so only the start time catches it.
    let captured = seal_with_replay_nonce("w1", BROKER, &key(), &claim(), NOW - 1_000, 1);
    let mut opener = Opener::new(1 << 20, SKEW).not_before(NOW - 500);
    let err = opener.open(&captured, NOW, keys).unwrap_err();
    assert_eq!(err.reason(), "before_start");
    let refusal = jobcast_protocol::envelope::Refusal::for_rejection(&err).expect("answered");
    assert!(
        refusal.detail.contains("500 ms before"),
        "{}",
        refusal.detail
    );
    // A fresh frame is fine.
    let fresh = seal_with_replay_nonce("w1", BROKER, &key(), &claim(), NOW, 2);
    assert!(opener.open(&fresh, NOW, keys).is_ok());
}

#[test]
fn a_frame_sealed_ahead_and_accepted_before_a_restart_is_refused_after_it() {
    use jobcast_protocol::envelope::floor_after;
    // Sealed 25 s ahead of the receiver's clock: inside the skew window, and after any
    // start time the next process could have, so only a kept floor refuses its replay.
    let ahead = seal_with_replay_nonce("w1", BROKER, &key(), &claim(), NOW + 25_000, 1);
    let mut first = Opener::new(1 << 20, SKEW).not_before(NOW - 60_000);
    assert!(first.open(&ahead, NOW, keys).is_ok());
    let floor = floor_after(NOW + 25_000, NOW).expect("a frame sealed ahead raises the floor");
    assert!(floor > NOW + 25_000);
    // A frame sealed behind the clock needs no floor: the next start time refuses it.
    assert_eq!(floor_after(NOW - 1, NOW), None);

    // The next process, started 2 s later with the floor kept for w1.
    let restarted = || {
        Opener::new(1 << 20, SKEW)
            .not_before(NOW + 2_000)
            .sender_floors([("w1".to_string(), floor)])
    };
    let mut second = restarted();
    let err = second.open(&ahead, NOW + 3_000, keys).unwrap_err();
    assert_eq!(err.reason(), "before_start");
    // Without the floor the replay would have been taken: the floor is what refuses it.
    let mut forgetful = Opener::new(1 << 20, SKEW).not_before(NOW + 2_000);
    assert!(forgetful.open(&ahead, NOW + 3_000, keys).is_ok());
    // Another sender is held only to the start time; w1's newer frames pass its floor.
    let mut second = restarted();
    let other = seal_with_replay_nonce("w2", BROKER, &key(), &claim(), NOW + 2_500, 2);
    assert!(second.open(&other, NOW + 3_000, keys).is_ok());
    let newer = seal_with_replay_nonce("w1", BROKER, &key(), &claim(), floor, 3);
    assert!(second.open(&newer, NOW + 3_000, keys).is_ok());
}

#[test]
fn after_a_step_back_of_the_clock_fresh_frames_are_taken_and_a_replay_still_is_not() {
    const HOUR: u64 = 3_600_000;
    let mut opener = Opener::new(1 << 20, SKEW).not_before(NOW - 1_000);
    let before = seal_with_replay_nonce("w1", BROKER, &key(), &claim(), NOW, 1);
    assert!(opener.open(&before, NOW, keys).is_ok());
    // The host's clock steps back an hour; peers on it seal with the new time.
    opener.clock_stepped(-(HOUR as i64));
    let fresh = seal_with_replay_nonce("w1", BROKER, &key(), &claim(), NOW - HOUR + 5, 2);
    assert!(
        opener.open(&fresh, NOW - HOUR + 10, keys).is_ok(),
        "not refused as sealed before the start"
    );
    assert_eq!(
        opener
            .open(&fresh, NOW - HOUR + 20, keys)
            .unwrap_err()
            .reason(),
        "replay"
    );
    // The frame from before the step is an hour ahead of the new clock.
    assert_eq!(
        opener
            .open(&before, NOW - HOUR + 30, keys)
            .unwrap_err()
            .reason(),
        "clock_skew"
    );
}

#[test]
fn an_unknown_sender_is_refused_and_named() {
    let mut opener = Opener::new(1 << 20, SKEW);
    let frame = seal_with_replay_nonce("intruder", BROKER, &key(), &claim(), NOW, 1);
    let err = opener.open(&frame, NOW, keys).unwrap_err();
    assert_eq!(err.reason(), "unknown_sender");
    assert!(err.to_string().contains("intruder"));
    assert_eq!(peek_sender(&frame).as_deref(), Some("intruder"));
}

#[test]
fn an_oversized_frame_is_refused_before_decoding() {
    let mut opener = Opener::new(64, SKEW);
    let frame = seal_with_replay_nonce("w1", BROKER, &key(), &claim(), NOW, 1);
    assert!(frame.len() > 64);
    assert_eq!(
        opener.open(&frame, NOW, keys).unwrap_err().reason(),
        "oversized"
    );
}

#[test]
fn another_protocol_version_is_refused_as_such() {
    #[derive(serde::Serialize)]
    struct FuturePayload {
        v: u16,
        from: &'static str,
        ts: u64,
        nonce: u64,
        body: &'static str,
    }
    #[derive(serde::Serialize)]
    struct Frame<'a> {
        from: &'a str,
        #[serde(with = "serde_bytes")]
        payload: &'a [u8],
        #[serde(with = "serde_bytes")]
        mac: &'a [u8],
    }
    use hmac::Mac;
    let payload = rmp_serde::to_vec_named(&FuturePayload {
        v: 99,
        from: "w1",
        ts: NOW,
        nonce: 1,
        body: "something_new",
    })
    .unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"w1-secret").unwrap();
    mac.update(&payload);
    let tag = mac.finalize().into_bytes();
    let frame = rmp_serde::to_vec_named(&Frame {
        from: "w1",
        payload: &payload,
        mac: &tag,
    })
    .unwrap();
    let mut opener = Opener::new(1 << 20, SKEW);
    let err = opener.open(&frame, NOW, keys).unwrap_err();
    assert_eq!(err.reason(), "unsupported_version", "{err}");
}

#[test]
fn garbage_is_refused() {
    let mut opener = Opener::new(1 << 20, SKEW);
    for junk in [&b""[..], b"\xc1", b"hello", &[0x83; 40]] {
        assert_eq!(
            opener.open(junk, NOW, keys).unwrap_err().reason(),
            "undecodable"
        );
    }
}

#[test]
fn debug_output_never_shows_a_secret() {
    let shown = format!("{:?}", Sealer::new("w1", BROKER, Secret::new("hunter2")));
    assert!(!shown.contains("hunter2"), "{shown}");
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut opener = Opener::new(1 << 20, SKEW);
        let _ = opener.open(&bytes, NOW, keys);
        let _ = decode_event(&bytes);
        let _ = peek_sender(&bytes);
    }

    #[test]
    fn mutated_valid_frames_never_panic_and_never_open_changed(
        index in 0usize..every_body().len(),
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
    ) {
        let body = every_body().swap_remove(index);
        let mut frame = seal_with_replay_nonce("w1", BROKER, &key(), &body, NOW, 1);
        for (at, bits) in flips {
            let at = at % frame.len();
            frame[at] ^= bits.max(1);
        }
        let mut opener = Opener::new(1 << 20, SKEW);
        if let Ok(opened) = opener.open(&frame, NOW, keys) {
            // Only a flip outside the signed payload (e.g. in a map key that decodes the
            // same) could still open, and then the content is unchanged.
            prop_assert_eq!(opened.body, body);
        }
    }
}

#[test]
fn connection_passwords_are_derived_and_checked() {
    use jobcast_protocol::envelope::{check_connection_password, connection_password};
    let password = connection_password(&key());
    assert_eq!(password.len(), 64);
    assert!(password.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(check_connection_password(&key(), password.as_bytes()));
    assert!(!check_connection_password(
        &Secret::new("another"),
        password.as_bytes()
    ));
    let mut wrong = password.clone().into_bytes();
    wrong[10] = if wrong[10] == b'0' { b'1' } else { b'0' };
    assert!(!check_connection_password(&key(), &wrong));
    assert!(!check_connection_password(&key(), b"short"));
    assert!(!check_connection_password(&key(), &[b'z'; 64]));
}

/// A grant carrying its definition reads as an `Assignment` (what workers before
/// definition ids read), and an older broker's `Assignment` reads as a grant that
/// carries its definition under no id.
#[test]
fn a_grant_that_carries_its_definition_reads_as_an_assignment_both_ways() {
    let assignment = Assignment {
        run_id: "r1".into(),
        attempt: 2,
        scheduled_at_ms: NOW,
        job: spec().into(),
        params: BTreeMap::from([("target".into(), "files".into())]),
    };
    let mut granted = GrantedRun::from(assignment.clone());
    granted.definition = 9;
    let bytes = rmp_serde::to_vec_named(&granted).expect("encode");
    let read: Assignment = rmp_serde::from_slice(&bytes).expect("an older worker reads it");
    assert_eq!(read, assignment);

    let older = rmp_serde::to_vec_named(&assignment).expect("encode");
    let read: GrantedRun = rmp_serde::from_slice(&older).expect("read from an older broker");
    assert_eq!(
        (read.definition, read.job.as_ref()),
        (0, Some(&assignment.job))
    );
    assert_eq!(read.into_assignment(assignment.job.clone()), assignment);

    // Named without the definition: not an `Assignment` (only sent to workers that say
    // they keep definitions).
    granted.job = None;
    let bytes = rmp_serde::to_vec_named(&granted).expect("encode");
    assert!(rmp_serde::from_slice::<Assignment>(&bytes).is_err());
}
