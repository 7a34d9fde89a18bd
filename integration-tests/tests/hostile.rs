//! Forged, replayed, stale, oversized and garbage frames are refused and counted, and the
//! broker keeps serving. (Attacks below the frame level, in raw TCP, are in
//! `hostile_transport.rs`.)

use jobcast_integration_tests::*;
use jobcast_protocol::envelope::{seal_any, seal_with_replay_nonce, Opener, Refusal, BROKER};
use jobcast_protocol::{AdminRequest, Body, ErrorCode, Reply, Secret};
use jobcast_transport::{zmq, AsyncSocket, Limits, Received};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn status_request() -> Body {
    Body::Request {
        id: 1,
        request: AdminRequest::Status.into(),
    }
}

async fn send(socket: &mut AsyncSocket, frame: Vec<u8>) {
    tokio::time::timeout(Duration::from_secs(5), socket.wait(zmq::POLLOUT))
        .await
        .expect("connected to the broker")
        .unwrap();
    assert!(socket.try_send([frame]).unwrap());
}

async fn recv(socket: &mut AsyncSocket) -> Option<Vec<u8>> {
    match tokio::time::timeout(Duration::from_secs(5), socket.recv(1)).await {
        Ok(Ok(Received::Parts(mut parts))) => parts.pop().map(|p| p.to_vec()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_are_refused_and_the_broker_keeps_serving() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs("[jobs.quick]\ncommand = [\"echo\", \"still working\"]\n");
    let dealer = jobcast_transport::socket(zmq::DEALER, &Limits::default()).unwrap();
    dealer.set_immediate(true).unwrap();
    jobcast_client::credentials("admin", &Secret::new(ADMIN_SECRET))
        .apply(&dealer)
        .unwrap();
    dealer.connect(&cluster.router).unwrap();
    let mut socket = AsyncSocket::new(dealer).unwrap();
    let admin = Secret::new(ADMIN_SECRET);

    // garbage: no answer
    send(&mut socket, b"\x00\x01garbage".to_vec()).await;
    send(&mut socket, vec![0xc1; 64]).await;
    // forged MAC: answered with a refusal that says why
    send(
        &mut socket,
        seal_with_replay_nonce(
            "admin",
            BROKER,
            &Secret::new("guessed-secret"),
            &status_request(),
            now_ms(),
            1,
        ),
    )
    .await;
    let refusal = Refusal::decode(&recv(&mut socket).await.expect("refusal")).expect("a refusal");
    assert_eq!(refusal.refused, "bad_mac");
    // an unknown sender
    send(
        &mut socket,
        seal_with_replay_nonce("mallory", BROKER, &admin, &status_request(), now_ms(), 2),
    )
    .await;
    assert_eq!(
        Refusal::decode(&recv(&mut socket).await.unwrap())
            .unwrap()
            .refused,
        "unknown_sender"
    );
    // a stale frame
    send(
        &mut socket,
        seal_with_replay_nonce(
            "admin",
            BROKER,
            &admin,
            &status_request(),
            now_ms() - 120_000,
            3,
        ),
    )
    .await;
    assert_eq!(
        Refusal::decode(&recv(&mut socket).await.unwrap())
            .unwrap()
            .refused,
        "clock_skew"
    );
    // a valid frame is answered once; its replay is not
    let valid = seal_with_replay_nonce("admin", BROKER, &admin, &status_request(), now_ms(), 4);
    send(&mut socket, valid.clone()).await;
    let answer = recv(&mut socket)
        .await
        .expect("an answer to a valid request");
    assert!(Refusal::decode(&answer).is_none());
    send(&mut socket, valid).await;
    // oversized: libzmq drops the connection before reading it (our DEALER reconnects)
    send(&mut socket, vec![0x90; 2 << 20]).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), socket.recv(1))
            .await
            .is_err(),
        "replays and oversized frames get no answer"
    );
    // the broker still answers this peer after it reconnected
    send(
        &mut socket,
        seal_with_replay_nonce("admin", BROKER, &admin, &status_request(), now_ms(), 5),
    )
    .await;
    let answer = recv(&mut socket)
        .await
        .expect("an answer after the oversized frame");
    assert!(Refusal::decode(&answer).is_none());

    // a request this broker does not know (a newer peer's): answered bad_request, sealed,
    // under its id
    #[derive(serde::Serialize)]
    #[serde(rename_all = "snake_case")]
    enum NewerBody {
        Request { id: u64, request: NewerRequest },
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "snake_case")]
    enum NewerRequest {
        Teleport { to: String },
    }
    let newer = NewerBody::Request {
        id: 77,
        request: NewerRequest::Teleport { to: "mars".into() },
    };
    send(
        &mut socket,
        seal_any("admin", BROKER, &admin, &newer, now_ms()),
    )
    .await;
    let answer = recv(&mut socket)
        .await
        .expect("an answer to an unknown request");
    let mut opener = Opener::new(1 << 20, 30_000).receiving_as("admin");
    let opened = opener
        .open(&answer, now_ms(), |_| Some(&admin))
        .expect("a sealed answer");
    match opened.body {
        Body::Reply {
            id: 77,
            reply: Reply::Error { code, message },
        } => {
            assert_eq!(code, ErrorCode::BadRequest);
            assert!(message.contains("does not know this request"), "{message}");
        }
        other => panic!("{other:?}"),
    }

    let status = wait_for(
        "the rejections to be counted",
        Duration::from_secs(10),
        || {
            let status = cluster.ctl_json(&["status"])?;
            (status["rejected"]["replay"] == 1).then_some(status)
        },
    );
    let rejected = &status["rejected"];
    assert_eq!(rejected["undecodable"], 2, "{rejected}");
    assert_eq!(rejected["bad_mac"], 1, "{rejected}");
    assert_eq!(rejected["unknown_sender"], 1, "{rejected}");
    assert_eq!(rejected["clock_skew"], 1, "{rejected}");
    assert_eq!(rejected["replay"], 1, "{rejected}");
    assert_eq!(rejected["unknown_request"], 1, "{rejected}");

    // secrets never reach the log
    let log = cluster.broker_log();
    assert!(log.contains("refused frame"));
    assert!(!log.contains(ADMIN_SECRET) && !log.contains("guessed-secret"));

    // and the broker still does its job
    let cluster_ref = &mut cluster;
    tokio::task::block_in_place(|| {
        cluster_ref.start_worker("w1", &[]);
        let run = cluster_ref.enqueue("quick");
        cluster_ref.wait_state(&run, "succeeded", Duration::from_secs(30));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_captured_before_a_restart_is_refused_after_it() {
    replayed_after_a_restart(0).await;
}

/// Sealed 25 s ahead of the broker's clock (inside the 30 s skew window), so its time is
/// after the restarted broker's start: only the floor the broker kept for the sender
/// refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_sealed_ahead_of_the_clock_is_refused_after_a_restart() {
    replayed_after_a_restart(25_000).await;
}

/// An enqueue sealed `ahead_ms` after now is sent once, the broker restarts, and the same
/// bytes are sent again: refused, and only one run exists.
async fn replayed_after_a_restart(ahead_ms: u64) {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs("[jobs.quick]\ncommand = [\"true\"]\n");
    let admin = Secret::new(ADMIN_SECRET);
    let connect = |router: &str| {
        let dealer = jobcast_transport::socket(zmq::DEALER, &Limits::default()).unwrap();
        dealer.set_immediate(true).unwrap();
        jobcast_client::credentials("admin", &admin)
            .apply(&dealer)
            .unwrap();
        dealer.connect(router).unwrap();
        AsyncSocket::new(dealer).unwrap()
    };
    // An enqueue, sealed and sent once: it creates one run.
    let enqueue = Body::Request {
        id: 1,
        request: AdminRequest::Enqueue {
            job: "quick".into(),
            key: None,
            params: Default::default(),
            priority: None,
        }
        .into(),
    };
    let captured =
        seal_with_replay_nonce("admin", BROKER, &admin, &enqueue, now_ms() + ahead_ms, 42);
    let mut socket = connect(&cluster.router);
    send(&mut socket, captured.clone()).await;
    let answer = recv(&mut socket).await.expect("enqueued");
    assert!(Refusal::decode(&answer).is_none());
    drop(socket);
    assert_eq!(cluster.runs().len(), 1);

    // The broker restarts; the same bytes, well inside the clock-skew window, are refused.
    tokio::task::block_in_place(|| {
        cluster.kill_broker();
        cluster.start_broker();
    });
    let mut socket = connect(&cluster.router);
    send(&mut socket, captured).await;
    let refusal = Refusal::decode(&recv(&mut socket).await.expect("an answer")).expect("refused");
    assert_eq!(refusal.refused, "before_start");
    tokio::task::block_in_place(|| {
        // Counted over HTTP: the admin key itself is held to the floor its frame sealed
        // ahead set, until the clock passes it (the documented price of a shared key
        // used from a clock that runs ahead).
        assert_eq!(cluster.all_runs().len(), 1, "the replay created no run");
    });
}

#[test]
fn a_worker_key_serves_only_its_pools() {
    let mut cluster = Cluster::start_restricted(1, &[], &[("w1", &["default"])]);
    cluster.apply_jobs(
        "[jobs.open]\ncommand = [\"true\"]\n[jobs.payroll]\npool = \"payroll\"\ncommand = [\"true\"]\n",
    );
    // Asking for a pool its key does not allow: refused, explained, and the worker exits
    // non-zero (a supervisor then shows it as failing) instead of retrying for ever.
    let index = cluster.spawn_worker("w1", &["--pools", "default,payroll"]);
    let code = cluster.workers[index].wait_exit(Duration::from_secs(20));
    assert_ne!(code, Some(0));
    let log = cluster.worker_log("w1");
    assert!(
        log.contains("may not serve pool \"payroll\""),
        "the worker says why: {log}"
    );
    // With the pools it may serve, it works; the other pool's run stays queued.
    cluster.start_worker("w1", &["--pools", "default"]);
    let open = cluster.enqueue("open");
    let payroll = cluster.enqueue("payroll");
    cluster.wait_state(&open, "succeeded", Duration::from_secs(30));
    assert_eq!(cluster.run(&payroll).unwrap()["state"], "queued");
}

#[test]
fn secrets_filled_by_the_worker_never_reach_the_broker() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs(
        "[jobs.uses-secret]\nworker_env = [\"DB_TOKEN\"]\n\
         script = \"\"\"#!/bin/sh\ncase \"$DB_TOKEN\" in tok-*) [ ${#DB_TOKEN} -eq 10 ] && echo token matched;; esac\n\"\"\"\n\
         [jobs.wants-the-key]\nworker_env = [\"JOBCAST_WORKER_SECRET\"]\ncommand = \"true\"\n",
    );
    let secret_file = cluster.path("db-token");
    std::fs::write(&secret_file, "tok-7f3a91\n").unwrap();
    let flag = format!("DB_TOKEN=file:{}", secret_file.display());
    cluster.start_worker("w1", &["--worker-env", &flag]);

    let run = cluster.enqueue("uses-secret");
    cluster.wait_state(&run, "succeeded", Duration::from_secs(30));
    let log = String::from_utf8_lossy(&cluster.log(&run)).into_owned();
    assert!(log.contains("token matched"), "the run got it: {log}");
    // (The script checks the value without naming it, so that only the worker's file
    // holds it.) Nothing the broker keeps or says holds the value: not the job, the run,
    // nor any byte of the store.
    let jobs = cluster.ctl_ok(&["jobs", "--json"]);
    assert!(jobs.contains("DB_TOKEN") && !jobs.contains("tok-7f3a91"));
    let record = cluster.run(&run).unwrap().to_string();
    assert!(!record.contains("tok-7f3a91"));
    let store = cluster.path("data");
    assert!(
        !contains_bytes_under(&store, b"tok-7f3a91"),
        "the store holds it"
    );

    // A job cannot reach what the worker does not list, such as the worker's own key.
    let run = cluster.enqueue("wants-the-key");
    let record = cluster.wait_state(&run, "failed", Duration::from_secs(30));
    assert!(
        record["outcome"]
            .to_string()
            .contains("does not provide it"),
        "{record}"
    );
}

/// Whether any file under `dir` contains `needle` (the store is small here).
fn contains_bytes_under(dir: &std::path::Path, needle: &[u8]) -> bool {
    files_under(dir).iter().any(|path| {
        std::fs::read(path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
    })
}
