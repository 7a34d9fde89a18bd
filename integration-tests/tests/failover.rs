//! Several brokers on one PostgreSQL database (started by the test): one acts, the
//! others stand by and name it; a clean stop hands the lease over at once, a kill lets
//! it run out first, and a leader stopped (SIGSTOP) past its lease stops acting when it
//! resumes, leaving nothing of its own behind.

use jobcast_integration_tests::*;
use jobcast_protocol::{AdminRequest, LeaderAddress, Reply};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(20);

/// One admin request to the broker at `router`; `None` if it did not answer.
fn ask(router: &str, request: AdminRequest) -> Option<Reply> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let client =
            jobcast_client::Client::connect(admin_client_config(router, Duration::from_secs(2)))
                .await
                .ok()?;
        client.request(request, Duration::from_secs(2)).await.ok()
    })
}

/// The leader a standby at `router` names.
fn named_leader(router: &str) -> Option<LeaderAddress> {
    match ask(router, AdminRequest::Status)? {
        Reply::NotLeader { leader } => leader,
        _ => None,
    }
}

/// Waits until the broker at `router` acts (answers a status), and how long that took.
fn until_acting(router: &str, since: Instant) -> Duration {
    wait_for(&format!("the broker at {router} to act"), LONG, || {
        matches!(ask(router, AdminRequest::Status), Some(Reply::Status(_))).then_some(())
    });
    since.elapsed()
}

/// `jobcastctl --json status` asked of `brokers` (a comma-separated list).
fn ctl_status(brokers: &str) -> serde_json::Value {
    let out = Command::new(bin("jobcastctl"))
        .args(["--broker", brokers, "--timeout", "5s", "--json", "status"])
        .env("JOBCAST_ADMIN_SECRET", ADMIN_SECRET)
        .stdin(Stdio::null())
        .output()
        .expect("run jobcastctl");
    assert!(
        out.status.success(),
        "jobcastctl --broker {brokers} status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status as JSON")
}

fn enqueue(router: &str, key: &str) {
    let reply = ask(
        router,
        AdminRequest::Enqueue {
            job: "hello".into(),
            key: Some(key.into()),
            params: Default::default(),
            priority: None,
        },
    );
    assert!(
        matches!(reply, Some(Reply::Enqueued { .. })),
        "enqueue {key} at {router}: {reply:?}"
    );
}

#[test]
fn one_broker_acts_and_another_takes_over_after_a_stop_a_kill_and_a_stall() {
    let Some(postgres) = PostgresStore::start() else {
        return;
    };
    let cluster = Cluster::start_configured(0, &[], &[], &postgres.settings());
    cluster.apply_jobs("[jobs.hello]\nscript = \"#!/bin/sh\\necho hello\\n\"\n");
    let a = cluster.router.clone();
    enqueue(&a, "first");
    let lease = |sql: &str| postgres.query(&format!("SELECT {sql} FROM jobcast_leader"));
    assert_eq!(lease("epoch"), "1");

    // A second broker stands by, and names the first.
    let b = ExtraBroker::start(&cluster, "b");
    let named = named_leader(&b.router).expect("the standby names the leader");
    assert_eq!((named.router.as_str(), named.epoch), (a.as_str(), 1));
    assert!(
        matches!(
            ask(&b.router, AdminRequest::ListJobs),
            Some(Reply::NotLeader { .. })
        ),
        "a standby does nothing"
    );

    // Its HTTP API answers reads from the database, and refuses writes naming the
    // leader's.
    let call = |method: &str, path: &str, token: &str| {
        let url = format!("{}{path}", b.http);
        let request = match method {
            "POST" => ureq::post(&url)
                .header("Authorization", &format!("Bearer {token}"))
                .config()
                .http_status_as_error(false)
                .build()
                .send_empty(),
            _ => ureq::get(&url)
                .header("Authorization", &format!("Bearer {token}"))
                .config()
                .http_status_as_error(false)
                .build()
                .call(),
        };
        let response = request.expect("b answers HTTP");
        let status = response.status().as_u16();
        (
            status,
            response.into_body().read_to_string().expect("a body"),
        )
    };
    let (code, body) = call("GET", "/api/v1/jobs", VIEWER_TOKEN);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"hello\""), "{body}");
    let (code, body) = call("GET", "/api/v1/runs", VIEWER_TOKEN);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\"job\":\"hello\""),
        "the first run, read from the database: {body}"
    );
    let (code, body) = call("POST", "/api/v1/jobs/hello/enqueue", OPERATOR_TOKEN);
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("not_leader") && body.contains(cluster.http.trim_start_matches("http://")),
        "{body}"
    );

    // /healthz tells a load balancer which one acts; /metrics and status say the same.
    let get = |url: &str| {
        let response = ureq::get(url)
            .header("Authorization", &format!("Bearer {VIEWER_TOKEN}"))
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .expect("an HTTP answer");
        let status = response.status().as_u16();
        (
            status,
            response.into_body().read_to_string().expect("a body"),
        )
    };
    let (code, body) = get(&format!("{}/healthz", cluster.http));
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\"leader\"") && body.contains("\"epoch\":1"),
        "{body}"
    );
    let (code, body) = get(&format!("{}/healthz", b.http));
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("standby") && body.contains(&a), "{body}");
    let (_, metrics) = get(&format!("{}/metrics", cluster.http));
    assert!(
        metrics.contains("jobcast_leader 1") && metrics.contains("jobcast_leader_epoch 1"),
        "{metrics}"
    );
    let (_, metrics) = get(&format!("{}/metrics", b.http));
    // A standby stands by, and says which epoch leads (a rise is a failover).
    assert!(
        metrics.contains("jobcast_leader 0") && metrics.contains("jobcast_leader_epoch 1"),
        "{metrics}"
    );
    let status = wait_for("the leader to list the standby", LONG, || {
        let status = ctl_status(&a);
        (status["leadership"]["brokers"].as_array()?.len() == 2).then_some(status)
    });
    assert_eq!(status["leadership"]["epoch"], 1, "{status}");
    let leaders: Vec<bool> = status["leadership"]["brokers"]
        .as_array()
        .expect("brokers")
        .iter()
        .map(|broker| broker["leader"].as_bool().unwrap_or(false))
        .collect();
    assert_eq!(leaders.iter().filter(|l| **l).count(), 1, "{status}");

    // A clean stop hands the lease over: the standby acts within a fraction of a lease.
    let stopped = Instant::now();
    cluster.signal_broker(libc::SIGTERM);
    let took = until_acting(&b.router, stopped);
    eprintln!("after SIGTERM the standby acted in {took:?}");
    assert_eq!(lease("epoch"), "2");
    assert_eq!(lease("router"), b.router);
    match ask(&b.router, AdminRequest::Status) {
        Some(Reply::Status(status)) => assert_eq!(status.total_runs, 1, "the first run is there"),
        other => panic!("status: {other:?}"),
    }
    enqueue(&b.router, "second");

    // The first broker again, standing by; the acting one killed: the lease runs out
    // (1 s here) and the standby takes over.
    let a2 = ExtraBroker::start(&cluster, "a2");
    assert_eq!(named_leader(&a2.router).map(|l| l.epoch), Some(2));
    // jobcastctl asked a standby goes to the leader it names; given a list whose first
    // broker is gone, it asks the next.
    let status = ctl_status(&a2.router);
    assert_eq!(status["total_runs"], 2, "{status}");
    let status = ctl_status(&format!("{a},{}", b.router));
    assert_eq!(status["total_runs"], 2, "{status}");
    let killed = Instant::now();
    b.signal(libc::SIGKILL);
    let took = until_acting(&a2.router, killed);
    eprintln!("after SIGKILL the standby acted in {took:?}");
    assert_eq!(lease("epoch"), "3");
    drop(b);

    // A `jobcastctl wait` whose read the acting broker holds (the run stays queued: no
    // worker here).
    let waited_on = match ask(
        &a2.router,
        AdminRequest::Enqueue {
            job: "hello".into(),
            key: Some("waited-on".into()),
            params: Default::default(),
            priority: None,
        },
    ) {
        Some(Reply::Enqueued { run }) => run.id,
        other => panic!("enqueue at {}: {other:?}", a2.router),
    };
    let next = unused_endpoint();
    let brokers = format!("{},{next}", a2.router);
    let waiting = spawn_ctl(&brokers, &["--timeout", "5s", "wait", &waited_on]);

    // The acting broker stalls (SIGSTOP) past its lease; another takes over; when the
    // stalled one resumes it stops acting, and what was asked meanwhile stands.
    let c = ExtraBroker::start_at(&cluster, "c", &next, "tcp://127.0.0.1:0", "127.0.0.1:0");
    assert_eq!(named_leader(&c.router).map(|l| l.epoch), Some(3));
    let stalled = Instant::now();
    a2.signal(libc::SIGSTOP);
    let took = until_acting(&c.router, stalled);
    eprintln!("after SIGSTOP the standby acted in {took:?}");
    assert_eq!(lease("epoch"), "4");
    enqueue(&c.router, "third");
    a2.signal(libc::SIGCONT);
    wait_for("the stalled broker to stand by", LONG, || {
        (named_leader(&a2.router)?.epoch == 4).then_some(())
    });
    let log = a2.log();
    assert!(
        log.contains("no longer acting") || log.contains("another broker leads now"),
        "the stalled broker says it stopped acting:\n{log}"
    );
    assert_eq!(
        postgres.query("SELECT count(*) FROM jobcast_runs"),
        "4",
        "one run per enqueue, whichever broker took it"
    );
    // The read the stalled broker held was given back ("not the leader"), and asked
    // again of the next broker of the list: cancelling the run there ends the wait.
    let out = Command::new(bin("jobcastctl"))
        .args(["--broker", &c.router, "--timeout", "5s", "kill", &waited_on])
        .env("JOBCAST_ADMIN_SECRET", ADMIN_SECRET)
        .stdin(Stdio::null())
        .output()
        .expect("run jobcastctl kill");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let waited = waiting.wait_with_output();
    assert_eq!(
        waited.status.code(),
        Some(14),
        "the wait ends with the run, cancelled: {}",
        String::from_utf8_lossy(&waited.stderr)
    );
}

#[test]
fn workers_follow_the_leader_and_their_runs_in_flight_end_once() {
    let Some(postgres) = PostgresStore::start() else {
        return;
    };
    let mut cluster = Cluster::start_configured(2, &[], &[], &postgres.settings());
    let ledger = cluster.path("ledger");
    cluster.apply_jobs(&format!(
        "[jobs.slow]\noverlap = \"allow\"\nscript = \"\"\"#!/bin/sh\necho \"start $JOBCAST_RUN_ID\" >> {0}\nsleep 3\necho \"end $JOBCAST_RUN_ID\" >> {0}\n\"\"\"\n\
         [jobs.quick]\noverlap = \"allow\"\nscript = \"\"\"#!/bin/sh\necho \"end $JOBCAST_RUN_ID\" >> {0}\n\"\"\"\n",
        ledger.display()
    ));
    let b = ExtraBroker::start(&cluster, "b");
    // Each worker knows both brokers, the first one first.
    let routers = format!("{},{}", cluster.router, b.router);
    let events = format!("{},{}", cluster.publish, b.publish);
    for id in ["w1", "w2"] {
        cluster.spawn_worker_to(
            id,
            &routers,
            &events,
            &worker_secret(id),
            &["--concurrency", "2"],
        );
        cluster.wait_online(id);
    }
    cluster.ctl_ok(&["enqueue", "slow", "--key", "slow-1"]);
    cluster.ctl_ok(&["enqueue", "slow", "--key", "slow-2"]);
    wait_for("both slow runs to start", LONG, || {
        let text = std::fs::read_to_string(&ledger).ok()?;
        (text.matches("start ").count() == 2).then_some(())
    });

    // The leader stops; the standby takes over; the workers find it (the first broker
    // is gone, so after a silence they try the next of their list).
    let stopped = Instant::now();
    cluster.signal_broker(libc::SIGTERM);
    until_acting(&b.router, stopped);
    cluster.router = b.router.clone();
    cluster.publish = b.publish.clone();
    cluster.http = b.http.clone();
    for id in ["w1", "w2"] {
        cluster.wait_online(id);
    }
    eprintln!(
        "workers online at the new leader {:?} after the stop",
        stopped.elapsed()
    );
    for n in 0..5 {
        cluster.ctl_ok(&["enqueue", "quick", "--key", &format!("quick-{n}")]);
    }
    wait_for("every run to end", LONG, || {
        let status = cluster.ctl_json(&["status"])?;
        let ended = status["total_runs"].as_u64()? == 7 && status["active"].as_object()?.is_empty();
        ended.then_some(())
    });
    let runs = cluster.all_runs();
    let states: Vec<&str> = runs
        .iter()
        .filter_map(|run| run["state"].as_str())
        .collect();
    assert_eq!(
        states, ["succeeded"; 7],
        "the slow runs too, reported to the new leader"
    );
    let text = std::fs::read_to_string(&ledger).expect("the ledger");
    let mut ended = std::collections::BTreeSet::new();
    for line in text.lines().filter_map(|line| line.strip_prefix("end ")) {
        assert!(ended.insert(line.to_string()), "run {line} executed twice");
    }
    assert_eq!(ended.len(), 7, "every run executed once");
}

#[test]
fn a_leader_cut_from_the_database_stops_acting_and_what_it_held_is_fenced_off() {
    let Some(postgres) = PostgresStore::start() else {
        return;
    };
    let cluster = Cluster::start_configured(1, &[], &[], &postgres.settings());
    cluster.apply_jobs("[jobs.hello]\nscript = \"#!/bin/sh\\necho hello\\n\"\n");
    // Broker a reaches the database through a relay that can stop passing bytes; it
    // takes over from the cluster's own broker, which stops.
    let (relay, through_relay) = postgres.relayed();
    let a = ExtraBroker::start_with_args(&cluster, "a", &["--postgres-url", &through_relay]);
    cluster.signal_broker(libc::SIGTERM);
    until_acting(&a.router, Instant::now());
    let b = ExtraBroker::start(&cluster, "b");
    assert_eq!(
        named_leader(&b.router).map(|l| l.router),
        Some(a.router.clone())
    );
    enqueue(&a.router, "before");

    // Cut: a can neither renew nor commit. It stops acting by its own clock; b takes over
    // once the lease has run out, and takes requests.
    relay.cut();
    let cut = Instant::now();
    let took = until_acting(&b.router, cut);
    eprintln!("cut from the database: the standby acted after {took:?}");
    wait_for("a to stop acting", LONG, || {
        a.log().contains("no longer acting").then_some(())
    });
    enqueue(&b.router, "after");
    // Asked now, a does nothing that lasts: it does not act, or its commit is fenced.
    let during = ask(
        &a.router,
        AdminRequest::Enqueue {
            job: "hello".into(),
            key: Some("during".into()),
            params: Default::default(),
            priority: None,
        },
    );
    assert!(
        !matches!(during, Some(Reply::Enqueued { .. })),
        "a broker cut from the database took an enqueue: {during:?}"
    );
    // Healed: whatever a had sent and the relay held reaches the database now, and is
    // refused by the fence; a stands by, naming b.
    relay.heal();
    wait_for("a to stand by, naming b", LONG, || {
        (named_leader(&a.router)?.router == b.router).then_some(())
    });
    assert_eq!(
        postgres.query("SELECT count(*) FROM jobcast_runs"),
        "2",
        "the runs of 'before' and 'after', and nothing a took while cut off"
    );
}
