//! The client against a stand-in broker on loopback: replies reach the requests they
//! answer, refusals and silence become errors, and requests made before the broker
//! listens are sent once it does.

use super::*;
use jobcast_protocol::{AdminRequest, WorkerRequest};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

const NAME: &str = "w1";

fn secret() -> Secret {
    Secret::new(b"client-test-secret".to_vec())
}

fn config(endpoint: &str) -> ClientConfig {
    ClientConfig {
        endpoint: endpoint.to_string(),
        name: NAME.to_string(),
        secret: secret(),
        connect_timeout: Duration::from_secs(5),
        max_clock_skew: Duration::from_secs(30),
    }
}

/// What the stand-in does with each request it opened: the frames to send back.
type Answer = dyn FnMut(u64, Request) -> Vec<Vec<u8>> + Send;

/// A ROUTER on loopback that opens requests the way the broker does and answers them
/// through a closure. It accepts any PLAIN credentials (no authentication handler).
struct StandIn {
    endpoint: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StandIn {
    fn start(answer: Box<Answer>) -> StandIn {
        Self::start_at("tcp://127.0.0.1:0", answer)
    }

    fn start_at(
        address: &str,
        mut answer: impl FnMut(u64, Request) -> Vec<Vec<u8>> + Send + 'static,
    ) -> StandIn {
        // A context of its own, so that it can have its own authentication handler (one
        // per context), which lets every connection in.
        let context = zmq::Context::new();
        let zap = context.socket(zmq::REP).expect("a REP socket");
        zap.set_linger(0).unwrap();
        zap.bind("inproc://zeromq.zap.01").unwrap();
        let socket = context.socket(zmq::ROUTER).expect("a ROUTER socket");
        socket.set_plain_server(true).unwrap();
        socket.set_linger(0).unwrap();
        socket.bind(address).expect("bind the stand-in broker");
        let endpoint = socket.get_last_endpoint().unwrap().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut opener = Opener::new(1 << 20, 30_000);
            while !stopping.load(Ordering::Relaxed) {
                let mut items = [
                    zap.as_poll_item(zmq::POLLIN),
                    socket.as_poll_item(zmq::POLLIN),
                ];
                zmq::poll(&mut items, 20).unwrap();
                if items[0].is_readable() {
                    // ZAP (RFC 27): version, request id, ... → 200 for everyone.
                    let request = zap.recv_multipart(0).unwrap();
                    let id: &[u8] = &request[1];
                    let ok: [&[u8]; 6] = [b"1.0", id, b"200", b"OK", b"", b""];
                    zap.send_multipart(ok, 0).unwrap();
                }
                if !items[1].is_readable() {
                    continue;
                }
                let parts = socket.recv_multipart(0).unwrap();
                let [peer, frame] = &parts[..] else {
                    continue;
                };
                let key = secret();
                let opened = opener
                    .open(frame, now_ms(), |name| (name == NAME).then_some(&key))
                    .expect("the client's frame opens");
                let Body::Request { id, request } = opened.body else {
                    panic!("the client sent a reply")
                };
                for out in answer(id, request) {
                    socket.send_multipart([&peer[..], &out[..]], 0).unwrap();
                }
            }
        });
        StandIn {
            endpoint,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn reply(id: u64, reply: Reply) -> Vec<u8> {
    Sealer::new(BROKER, NAME, secret()).seal(&Body::Reply { id, reply }, now_ms())
}

fn release(run: &str) -> WorkerRequest {
    WorkerRequest::Release {
        run_ids: vec![run.to_string()],
    }
}

#[tokio::test]
async fn each_reply_reaches_the_request_it_answers_even_out_of_order() {
    // Holds the first request's answer back and sends it after the second one's.
    let mut held: Option<u64> = None;
    let broker = StandIn::start(Box::new(move |id, _| match held.take() {
        None => {
            held = Some(id);
            vec![]
        }
        Some(first) => vec![
            reply(id, Reply::Orders(Default::default())),
            reply(first, Reply::Ack),
        ],
    }));
    let client = Client::connect(config(&broker.endpoint)).await.unwrap();
    let first = client.submit(release("r1"));
    let second = client.submit(WorkerRequest::FetchOrders);
    let wait = Duration::from_secs(10);
    assert_eq!(
        second.wait(wait).await.unwrap(),
        Reply::Orders(Default::default())
    );
    assert_eq!(first.wait(wait).await.unwrap(), Reply::Ack);
}

#[tokio::test]
async fn a_refusal_fails_the_waiting_requests_with_the_brokers_reason() {
    let broker = StandIn::start(Box::new(|_, _| {
        vec![Refusal {
            refused: "clock_skew".into(),
            detail: "the sender's clock is 2 minutes off".into(),
        }
        .encode()]
    }));
    let client = Client::connect(config(&broker.endpoint)).await.unwrap();
    let answer = client
        .request(AdminRequest::Status, Duration::from_secs(10))
        .await;
    let Err(ClientError::Refused { reason, detail }) = answer else {
        panic!("not refused: {answer:?}")
    };
    assert_eq!(reason, "clock_skew");
    assert!(detail.contains("2 minutes"), "{detail}");
}

#[tokio::test]
async fn a_request_nobody_answers_times_out() {
    let broker = StandIn::start(Box::new(|_, _| vec![]));
    let client = Client::connect(config(&broker.endpoint)).await.unwrap();
    let answer = client
        .request(WorkerRequest::FetchOrders, Duration::from_millis(200))
        .await;
    assert!(
        matches!(answer, Err(ClientError::Timeout(t)) if t == Duration::from_millis(200)),
        "{answer:?}"
    );
}

#[tokio::test]
async fn requests_made_before_the_broker_listens_are_sent_once_it_does() {
    // Released for the stand-in to take a moment later.
    let endpoint = unused_endpoint();
    let client = Client::connect_in_background(config(&endpoint));
    let early = client.submit(WorkerRequest::FetchOrders);
    let broker = StandIn::start_at(&endpoint, |id, _| vec![reply(id, Reply::Ack)]);
    assert_eq!(broker.endpoint, endpoint);
    assert_eq!(
        early.wait(Duration::from_secs(10)).await.unwrap(),
        Reply::Ack
    );
}

/// A loopback endpoint nothing listens on (its port was free a moment ago).
fn unused_endpoint() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port();
    format!("tcp://127.0.0.1:{port}")
}

#[tokio::test]
async fn connecting_to_nothing_fails_at_once() {
    // Long enough that failing within it would prove nothing.
    let config = ClientConfig {
        connect_timeout: Duration::from_secs(30),
        ..config(&unused_endpoint())
    };
    let started = std::time::Instant::now();
    let Err(error) = Client::connect(config).await else {
        panic!("connected to nothing")
    };
    assert!(matches!(error, ClientError::Unreachable { .. }), "{error}");
    // Refused at once, not waited out: well under the connect timeout.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_client_whose_task_is_gone_answers_closed() {
    let pending = PendingReply { reply: None };
    assert!(matches!(
        pending.wait(Duration::from_secs(1)).await,
        Err(ClientError::Closed)
    ));
}
