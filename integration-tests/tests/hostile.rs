//! Forged, replayed, stale, oversized and garbage frames are refused and counted, and the
//! broker keeps serving.

use bytes::Bytes;
use jobcast_integration_tests::*;
use jobcast_protocol::envelope::{seal, Refusal};
use jobcast_protocol::{Body, Request, Secret};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn status_request() -> Body {
    Body::Request {
        id: 1,
        request: Request::Status,
    }
}

async fn send(socket: &mut DealerSocket, frame: Vec<u8>) {
    socket
        .send(ZmqMessage::from(Bytes::from(frame)))
        .await
        .unwrap();
}

async fn recv(socket: &mut DealerSocket) -> Option<Vec<u8>> {
    let message = tokio::time::timeout(Duration::from_secs(5), socket.recv())
        .await
        .ok()?
        .ok()?;
    message.into_vec().pop().map(|b| b.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_are_refused_and_the_broker_keeps_serving() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs("[jobs.quick]\ncommand = [\"echo\", \"still working\"]\n");
    let mut socket = DealerSocket::new();
    socket.connect(&cluster.router).await.unwrap();
    let admin = Secret::new(ADMIN_SECRET);

    // garbage: no answer
    send(&mut socket, b"\x00\x01garbage".to_vec()).await;
    send(&mut socket, vec![0xc1; 64]).await;
    // forged MAC: answered with a refusal that says why
    send(
        &mut socket,
        seal(
            "admin",
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
        seal("mallory", &admin, &status_request(), now_ms(), 2),
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
        seal("admin", &admin, &status_request(), now_ms() - 120_000, 3),
    )
    .await;
    assert_eq!(
        Refusal::decode(&recv(&mut socket).await.unwrap())
            .unwrap()
            .refused,
        "clock_skew"
    );
    // a valid frame is answered once; its replay is not
    let valid = seal("admin", &admin, &status_request(), now_ms(), 4);
    send(&mut socket, valid.clone()).await;
    let answer = recv(&mut socket)
        .await
        .expect("an answer to a valid request");
    assert!(Refusal::decode(&answer).is_none());
    send(&mut socket, valid).await;
    // oversized
    send(&mut socket, vec![0x90; 2 << 20]).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), socket.recv())
            .await
            .is_err(),
        "replays and oversized frames get no answer"
    );

    let status = wait_for(
        "the rejections to be counted",
        Duration::from_secs(10),
        || {
            let status = cluster.ctl_json(&["status"])?;
            (status["rejected"]["oversized"] == 1).then_some(status)
        },
    );
    let rejected = &status["rejected"];
    assert_eq!(rejected["undecodable"], 2, "{rejected}");
    assert_eq!(rejected["bad_mac"], 1, "{rejected}");
    assert_eq!(rejected["unknown_sender"], 1, "{rejected}");
    assert_eq!(rejected["clock_skew"], 1, "{rejected}");
    assert_eq!(rejected["replay"], 1, "{rejected}");
    assert_eq!(rejected["oversized"], 1, "{rejected}");

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
