//! The WebSocket feed: snapshot, then changes; auth and Origin checks.

use futures_util::{SinkExt, StreamExt};
use jobcast_integration_tests::*;
use serde_json::Value;
use std::time::Duration;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_url(cluster: &Cluster, token: &str) -> String {
    format!(
        "{}/api/v1/live?token={token}",
        cluster.http.replacen("http://", "ws://", 1)
    )
}

async fn connect(cluster: &Cluster, token: &str) -> Socket {
    let (socket, _) = tokio_tungstenite::connect_async(ws_url(cluster, token))
        .await
        .expect("connect");
    socket
}

/// Next JSON message, waiting up to `timeout`.
async fn next(socket: &mut Socket, timeout: Duration) -> Option<Value> {
    loop {
        let message = tokio::time::timeout(timeout, socket.next())
            .await
            .ok()??
            .ok()?;
        if let Message::Text(text) = message {
            return serde_json::from_str(&text).ok();
        }
    }
}

/// Waits for a message that `matches`, skipping others.
async fn wait_message(
    socket: &mut Socket,
    what: &str,
    mut matches: impl FnMut(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match next(socket, left).await {
            Some(message) if matches(&message) => return message,
            Some(_) => continue,
            None => panic!("no {what} within 30 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gets_a_snapshot_then_run_changes_and_the_logs_it_follows() {
    let mut cluster = Cluster::start(1);
    // The run talks until told to stop (a file, named in its environment, which a viewer
    // does not see; a minute at most): output the follower gets while the run still runs
    // is live, however late the follow reaches the broker.
    let stop = cluster.path("stop-talking");
    cluster.apply_jobs(&format!(
        "[jobs.talk]\nenv.STOP_FILE = \"{}\"\nscript = \"\"\"#!/bin/sh\nfor i in $(seq 300); do [ -e \"$STOP_FILE\" ] && break; echo first line; sleep 0.2; done\necho second line\n\"\"\"\n",
        stop.display()
    ));
    let cluster_ref = &mut cluster;
    tokio::task::block_in_place(|| {
        cluster_ref.start_worker("w1", &[]);
    });
    let mut socket = connect(&cluster, VIEWER_TOKEN).await;
    let snapshot = next(&mut socket, Duration::from_secs(10))
        .await
        .expect("snapshot");
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["role"], "viewer");
    assert_eq!(snapshot["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(snapshot["status"]["workers"][0]["id"], "w1");
    // a viewer sees which env variables a job sets, not their values
    let env = &snapshot["jobs"][0]["spec"]["env"];
    assert_eq!(env["JOBCAST_TEST_TAG"], "(hidden)", "{env}");
    assert!(!snapshot.to_string().contains(&cluster.tag));

    let run = tokio::task::block_in_place(|| cluster.enqueue("talk"));
    socket
        .send(Message::Text(
            serde_json::json!({ "follow": run }).to_string().into(),
        ))
        .await
        .unwrap();
    let log = wait_message(&mut socket, "log output", |m| {
        m["type"] == "log" && m["run_id"] == run.as_str()
    })
    .await;
    assert!(
        log["data"].as_str().unwrap().contains("first line"),
        "{log}"
    );
    // Output came while the run ran: it ends only now.
    std::fs::write(&stop, "").unwrap();
    wait_message(&mut socket, "the run's success", |m| {
        m["type"] == "changes"
            && m["runs"].as_array().is_some_and(|runs| {
                runs.iter()
                    .any(|r| r["id"] == run.as_str() && r["state"] == "succeeded")
            })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_refuses_bad_tokens_and_foreign_origins() {
    let cluster = Cluster::start(1);
    assert!(
        tokio_tungstenite::connect_async(ws_url(&cluster, "wrong-token-wrong-token"))
            .await
            .is_err()
    );
    let mut request = ws_url(&cluster, VIEWER_TOKEN)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Origin", "http://evil.example".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_err());
    // a DNS-rebinding page: its origin names the same host as the Host header it sends,
    // which must not make it trusted
    let port = cluster.http.rsplit(':').next().unwrap().to_string();
    let mut request = ws_url(&cluster, VIEWER_TOKEN)
        .into_client_request()
        .unwrap();
    let rebound = format!("evil.example:{port}");
    request
        .headers_mut()
        .insert("Origin", format!("http://{rebound}").parse().unwrap());
    request
        .headers_mut()
        .insert("Host", rebound.parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_err());
    // the right host with another scheme is another origin
    let mut request = ws_url(&cluster, VIEWER_TOKEN)
        .into_client_request()
        .unwrap();
    let https = cluster.http.replace("http://", "https://");
    request
        .headers_mut()
        .insert("Origin", https.parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_err());
    // the same origin is fine
    let mut request = ws_url(&cluster, VIEWER_TOKEN)
        .into_client_request()
        .unwrap();
    let own = cluster.http.clone();
    request.headers_mut().insert("Origin", own.parse().unwrap());
    assert!(tokio_tungstenite::connect_async(request).await.is_ok());
}

/// A WebSocket client with a tiny receive buffer that never reads, like a frozen tab.
async fn frozen_client(cluster: &Cluster) -> Socket {
    let address: std::net::SocketAddr = cluster.http.trim_start_matches("http://").parse().unwrap();
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&address.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    let stream = tokio::net::TcpStream::from_std(socket.into()).unwrap();
    let request = ws_url(cluster, VIEWER_TOKEN).into_client_request().unwrap();
    let (socket, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .expect("handshake");
    socket
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_client_is_dropped_and_never_holds_up_the_others() {
    let mut cluster = Cluster::start(1);
    // A run that writes 80 MB of output over about eight seconds: more live output than
    // the kernel buffers for the frozen client (its send buffer grows up to 4 MB here),
    // so that a send to it blocks and it is dropped.
    cluster.apply_jobs(
        "[jobs.flood]\nscript = '''#!/bin/sh\nfor i in $(seq 80); do head -c 1000000 /dev/zero | tr '\\0' x; sleep 0.1; done\n'''\n",
    );
    let flood = tokio::task::block_in_place(|| cluster.enqueue("flood"));
    let mut frozen = frozen_client(&cluster).await;
    let mut reading = connect(&cluster, VIEWER_TOKEN).await;
    next(&mut reading, Duration::from_secs(10))
        .await
        .expect("snapshot");
    // Both follow the flood's log; one of them then stops reading.
    for socket in [&mut frozen, &mut reading] {
        socket
            .send(Message::Text(
                serde_json::json!({ "follow": flood }).to_string().into(),
            ))
            .await
            .unwrap();
    }
    let cluster_ref = &mut cluster;
    tokio::task::block_in_place(|| {
        cluster_ref.start_worker("w1", &[]);
    });
    // The reading client sees the run through to its end while the other is frozen.
    wait_message(&mut reading, "the flood's success", |m| {
        m["type"] == "changes"
            && m["runs"].as_array().is_some_and(|runs| {
                runs.iter()
                    .any(|r| r["id"] == flood.as_str() && r["state"] == "succeeded")
            })
    })
    .await;
    // The frozen client was dropped: what it had buffered ends in a broken connection,
    // not in the rest of the stream.
    let mut received = 0usize;
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match frozen.next().await {
                Some(Ok(Message::Text(text))) => received += text.len(),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the frozen client was kept ({received} bytes)"
    );
    assert!(received < 30_000_000, "it did not get the whole stream");
    let log = cluster.broker_log();
    assert!(
        log.contains("dropping a live client that is not reading"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_revokes_a_token_closes_its_live_clients_only() {
    let cluster = Cluster::start(1);
    let mut viewer = connect(&cluster, VIEWER_TOKEN).await;
    let mut operator = connect(&cluster, OPERATOR_TOKEN).await;
    wait_message(&mut viewer, "a snapshot", |m| m["type"] == "snapshot").await;
    wait_message(&mut operator, "a snapshot", |m| m["type"] == "snapshot").await;

    // The viewer token leaves the settings; the operator's stays.
    let path = cluster.path("broker.toml");
    let config = std::fs::read_to_string(&path).expect("read config");
    let without_viewer = config.replace(
        &format!(
            "[[http.tokens]]\nname = \"viewer\"\ntoken = \"{VIEWER_TOKEN}\"\nrole = \"viewer\"\n"
        ),
        "",
    );
    assert_ne!(config, without_viewer, "the config names the viewer token");
    std::fs::write(&path, without_viewer).expect("write config");
    let report = cluster.ctl_json(&["reload"]).expect("reload");
    assert_eq!(report["api_tokens"], 1, "{report}");

    let close = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match viewer.next().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(_)) => continue,
                other => panic!("the feed ended without a close frame: {other:?}"),
            }
        }
    })
    .await
    .expect("the revoked client is closed");
    let code: u16 = close.expect("a close frame with a code").code.into();
    assert_eq!(code, 4001);
    assert!(
        tokio_tungstenite::connect_async(ws_url(&cluster, VIEWER_TOKEN))
            .await
            .is_err(),
        "the revoked token cannot reconnect"
    );
    // The operator's feed goes on: a change still reaches it.
    cluster.apply_jobs("[jobs.after]\nscript = \"#!/bin/sh\\ntrue\\n\"\n");
    let run = cluster.enqueue("after");
    wait_message(&mut operator, "the new run", |m| {
        m.to_string().contains(&run)
    })
    .await;
    let _ = operator.send(Message::Close(None)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_reaches_a_client_as_few_messages_ending_at_the_brokers_totals() {
    const RUNS: u64 = 300;
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs("[jobs.quick]\ncommand = [\"true\"]\n");
    let cluster_ref = &mut cluster;
    tokio::task::block_in_place(|| {
        cluster_ref.start_worker("w1", &[]);
    });
    let mut socket = connect(&cluster, VIEWER_TOKEN).await;
    let snapshot = next(&mut socket, Duration::from_secs(10))
        .await
        .expect("snapshot");
    assert_eq!(snapshot["status"]["runs_by_state"]["succeeded"], 0);
    let started = std::time::Instant::now();
    let cluster_ref = &cluster;
    let enqueuing = tokio::task::spawn_blocking({
        let http = cluster_ref.http.clone();
        move || {
            for _ in 0..RUNS {
                let response = ureq::post(&format!("{http}/api/v1/jobs/quick/enqueue"))
                    .header("Authorization", &format!("Bearer {OPERATOR_TOKEN}"))
                    .send_empty()
                    .expect("enqueue");
                assert_eq!(response.status(), 201);
            }
        }
    });
    let mut messages = 0u128;
    let mut last_at = 0;
    let last = loop {
        let message = next(&mut socket, Duration::from_secs(60))
            .await
            .expect("changes until every run succeeded");
        if message["type"] != "changes" {
            continue;
        }
        messages += 1;
        let at = message["at_ms"].as_u64().expect("at_ms");
        assert!(at >= last_at, "changes come in order");
        last_at = at;
        if message["runs_by_state"]["succeeded"] == RUNS {
            break message;
        }
    };
    enqueuing.await.expect("enqueued");
    let elapsed = started.elapsed().as_millis();
    // At most one message per 100 ms, however many batches the broker made.
    assert!(
        messages <= elapsed / 100 + 2,
        "{messages} messages in {elapsed} ms"
    );
    // The counts are the broker's own, over every stored run.
    let (code, body) =
        tokio::task::block_in_place(|| cluster.api("GET", "/api/v1/status", Some(VIEWER_TOKEN)));
    assert_eq!(code, 200);
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["runs_by_state"], last["runs_by_state"]);
    assert_eq!(status["total_runs"], RUNS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_heartbeats_reach_a_client_without_any_run_changing() {
    let mut cluster = Cluster::start(1);
    let cluster_ref = &mut cluster;
    tokio::task::block_in_place(|| {
        cluster_ref.start_worker("w1", &[]);
    });
    let mut socket = connect(&cluster, VIEWER_TOKEN).await;
    let snapshot = next(&mut socket, Duration::from_secs(10))
        .await
        .expect("snapshot");
    let seen_at = snapshot["status"]["workers"][0]["last_seen_ms"]
        .as_u64()
        .expect("the worker in the snapshot");
    let later = wait_message(&mut socket, "a newer heartbeat", |m| {
        m["type"] == "changes"
            && m["workers"][0]["last_seen_ms"]
                .as_u64()
                .is_some_and(|at| at > seen_at)
    })
    .await;
    assert!(later.get("runs").is_none(), "no run changed: {later}");
    assert!(later["status"]["alerts"].is_array(), "{later}");
}
