//! The broker's sockets: a ROUTER for requests and a PUB for hints, both libzmq. One task
//! reads the ROUTER (and answers the authentication handler and the connection monitors)
//! and hands [`Incoming`] values to the server loop, which sends [`Outgoing`] values
//! itself, straight after its group commit, without a hop through that task. The rest of
//! the broker sees no socket type.
//!
//! The ROUTER is therefore used from two tasks. libzmq allows that when the uses never
//! overlap and each handover is a full memory barrier, which the socket's mutex
//! ([`AsyncSocket`]) provides. A send can consume the readiness signal the reader waits
//! for, so every batch of sends ends by checking for waiting input and waking the reader.
//!
//! Both sockets take only connections that authenticate in the ZMTP handshake (PLAIN: a
//! known sender name and the password derived from its secret, checked by the ZAP handler
//! here), so a peer without a key never gets a message read, whatever it sends. libzmq
//! bounds each frame but not the number of parts of one message, and it keeps the parts of
//! an unfinished message until the last one arrives: this gate is what keeps an endless
//! multi-part message from anyone but a key holder.
//!
//! Every limit that protects the broker's memory from the network is set here:
//! libzmq refuses a message over `max_frame_bytes` before allocating it and disconnects
//! the peer; a message with extra parts is read to its end and dropped; a connection that
//! has not finished its handshake after [`HANDSHAKE_TIMEOUT`] is closed; a peer whose host
//! stops answering TCP keepalives for `peer_timeout` is disconnected and what was queued
//! for it is freed; at most [`HIGH_WATER_MARK`] messages wait per peer in each direction; and
//! requests read but not yet handled by the core hold at most [`INBOX_BUDGET`] bytes.

use crate::config::Keys;
use crate::core::PeerId;
use jobcast_protocol::envelope::check_connection_password;
use jobcast_transport::{zmq, AsyncSocket, Limits, Monitor, PeerEvent, Received};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

/// Messages queued per peer and direction inside libzmq.
pub const HIGH_WATER_MARK: i32 = 1000;
/// Bytes of requests read from the network and not yet handled.
pub const INBOX_BUDGET: usize = 64 << 20;
/// A connection must finish the ZMTP handshake within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Subscriptions are short topics; nothing else travels towards a PUB.
const MAX_SUBSCRIPTION_BYTES: usize = 1024;
/// Messages read in one go before replies get a turn.
const READ_BURST: usize = 256;
/// Where libzmq asks a context's authentication handler (ZAP, RFC 27).
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";
const ZAP_DOMAIN: &str = "jobcast";

pub struct Settings {
    pub router: String,
    pub publish: String,
    pub max_frame_bytes: usize,
    pub peer_timeout: Duration,
    /// Who may connect.
    pub keys: Keys,
}

/// What the network brought.
#[derive(Debug)]
pub enum Incoming {
    Request {
        peer: PeerId,
        /// libzmq's buffer, not a copy.
        payload: zmq::Message,
        /// Returns the payload's bytes to the inbox budget when dropped.
        budget: OwnedSemaphorePermit,
    },
    /// Something refused before it could be read as a request.
    Refused {
        reason: &'static str,
        detail: String,
    },
    /// A connection was accepted (`true`) or closed (`false`).
    Connection { opened: bool },
}

/// What to send.
pub enum Outgoing {
    Reply {
        peer: PeerId,
        frame: Vec<u8>,
        /// Who the reply is for, for logs.
        to: String,
    },
    Publish {
        topic: String,
        event: Vec<u8>,
    },
}

pub struct Transport {
    pub incoming: mpsc::Receiver<Incoming>,
    pub router_endpoint: String,
    pub publish_endpoint: String,
    router: Arc<AsyncSocket>,
    publisher: AsyncSocket,
    /// Tells the reader to look at the ROUTER again (a send may have taken its signal).
    reader_wake: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot bind the {what} socket to {endpoint}: {source}")]
    Bind {
        what: &'static str,
        endpoint: String,
        source: jobcast_transport::TransportError,
    },
}

/// What the reader task owns or shares.
struct Reader {
    zap: AsyncSocket,
    keys: Keys,
    router: Arc<AsyncSocket>,
    wake: Arc<Notify>,
    router_events: Option<Monitor>,
    publisher_events: Option<Monitor>,
}

/// The next connection event, or never once the monitor has failed.
async fn next_event(monitor: &Option<Monitor>) -> jobcast_transport::Result<PeerEvent> {
    match monitor {
        Some(monitor) => monitor.next().await,
        None => std::future::pending().await,
    }
}

fn bind(
    what: &'static str,
    endpoint: &str,
    kind: zmq::SocketType,
    limits: &Limits,
) -> Result<(AsyncSocket, Monitor), TransportError> {
    let open = || -> jobcast_transport::Result<(AsyncSocket, Monitor)> {
        let socket = jobcast_transport::socket(kind, limits)?;
        if kind == zmq::ROUTER {
            // A reply to a peer that has gone is an error to log, not a silent drop.
            socket.set_router_mandatory(true)?;
        }
        socket.set_plain_server(true)?;
        socket.set_zap_domain(ZAP_DOMAIN)?;
        let events = Monitor::attach(&socket)?;
        socket.bind(&jobcast_transport::bindable(endpoint))?;
        Ok((AsyncSocket::new(socket)?, events))
    };
    open().map_err(|source| TransportError::Bind {
        what,
        endpoint: endpoint.to_string(),
        source,
    })
}

impl Transport {
    /// Binds both sockets and starts the task that owns them. Inside a tokio runtime.
    pub fn start(settings: &Settings) -> Result<Transport, TransportError> {
        let router_limits = Limits {
            max_message_bytes: settings.max_frame_bytes,
            high_water_mark: HIGH_WATER_MARK,
            dead_peer_timeout: settings.peer_timeout,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        };
        let publisher_limits = Limits {
            max_message_bytes: MAX_SUBSCRIPTION_BYTES,
            ..router_limits
        };
        // The handler must listen before any connection can start its handshake.
        let zap = jobcast_transport::context()
            .socket(zmq::REP)
            .and_then(|zap| {
                zap.set_linger(0)?;
                zap.bind(ZAP_ENDPOINT)?;
                Ok(zap)
            })
            .map_err(jobcast_transport::TransportError::from)
            .and_then(AsyncSocket::new)
            .map_err(|source| TransportError::Bind {
                what: "authentication",
                endpoint: ZAP_ENDPOINT.to_string(),
                source,
            })?;
        let (router, router_events) =
            bind("request", &settings.router, zmq::ROUTER, &router_limits)?;
        let (publisher, publisher_events) =
            bind("publish", &settings.publish, zmq::PUB, &publisher_limits)?;
        let endpoint = |socket: &AsyncSocket, asked: &str| {
            socket.last_endpoint().unwrap_or_else(|_| asked.to_string())
        };
        let router_endpoint = endpoint(&router, &settings.router);
        let publish_endpoint = endpoint(&publisher, &settings.publish);
        let (incoming_tx, incoming) = mpsc::channel(READ_BURST * 4);
        let router = Arc::new(router);
        let reader_wake = Arc::new(Notify::new());
        let reader = Reader {
            zap,
            keys: settings.keys.clone(),
            router: router.clone(),
            wake: reader_wake.clone(),
            router_events: Some(router_events),
            publisher_events: Some(publisher_events),
        };
        let task = tokio::spawn(run(reader, incoming_tx));
        Ok(Transport {
            incoming,
            router_endpoint,
            publish_endpoint,
            router,
            publisher,
            reader_wake,
            task,
        })
    }

    /// Sends a batch's replies and events, without waiting: a reply to a peer whose queue
    /// is full is dropped (it is not reading; it asks again), a PUB drops for a
    /// subscriber at its high-water mark.
    pub fn send(&self, batch: impl IntoIterator<Item = Outgoing>) {
        let mut replied = false;
        for out in batch {
            match out {
                Outgoing::Reply { peer, frame, to } => {
                    replied = true;
                    match self.router.try_send([peer, frame]) {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(to, "reply dropped: the peer is not reading"),
                        // The peer disconnected: it will ask again on its new connection.
                        Err(e) => tracing::debug!(to, error = %e, "reply not delivered"),
                    }
                }
                Outgoing::Publish { topic, event } => {
                    if let Err(e) = self.publisher.try_send([topic.into_bytes(), event]) {
                        tracing::warn!(error = %e, "publish failed");
                    }
                }
            }
        }
        // A send processes libzmq's pending commands and may take the signal the reader
        // sleeps on; if input is waiting, make sure the reader looks.
        let waiting = replied
            && self
                .router
                .with(|s| s.get_events())
                .is_ok_and(|events| events.contains(zmq::POLLIN));
        if waiting {
            self.reader_wake.notify_one();
        }
    }
}

async fn run(mut reader: Reader, incoming: mpsc::Sender<Incoming>) {
    let budget = Arc::new(Semaphore::new(INBOX_BUDGET));
    loop {
        tokio::select! {
            ready = async {
                tokio::select! {
                    ready = reader.router.wait(zmq::POLLIN) => ready,
                    _ = reader.wake.notified() => Ok(()),
                }
            } => {
                if let Err(e) = ready {
                    tracing::error!(error = %e, "request socket failed");
                    return;
                }
                for _ in 0..READ_BURST {
                    let next = match reader.router.try_recv(2) {
                        Ok(Some(received)) => received,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::warn!(error = %e, "request socket receive failed");
                            break;
                        }
                    };
                    let item = match next {
                        Received::Parts(mut parts) if parts.len() == 2 => {
                            let (Some(payload), Some(peer)) = (parts.pop(), parts.pop()) else {
                                continue;
                            };
                            // A frame is at most max_frame_bytes (libzmq enforces it),
                            // far below u32::MAX; an empty one still takes a permit.
                            let cost = payload.len().clamp(1, INBOX_BUDGET) as u32;
                            let Ok(budget) = budget.clone().acquire_many_owned(cost).await else {
                                return;
                            };
                            Incoming::Request { peer: peer.to_vec(), payload, budget }
                        }
                        Received::Parts(parts) => Incoming::Refused {
                            reason: "multipart",
                            detail: format!("a message of {} parts", parts.len()),
                        },
                        Received::TooManyParts(count) => Incoming::Refused {
                            reason: "multipart",
                            detail: format!("a message of {count} parts"),
                        },
                    };
                    if incoming.send(item).await.is_err() {
                        return;
                    }
                }
            }
            ready = reader.zap.wait(zmq::POLLIN) => {
                if let Err(e) = ready {
                    tracing::error!(error = %e, "authentication socket failed");
                    return;
                }
                // Stops at the first refusal or accepted request; the loop comes back here
                // while more are waiting.
                while let Some(refused) = answer_zap(&reader) {
                    if incoming.send(refused).await.is_err() {
                        return;
                    }
                }
            }
            event = next_event(&reader.router_events) => {
                match note(&incoming, "request", event).await {
                    Noted::Yes => {}
                    Noted::MonitorFailed => reader.router_events = None,
                    Noted::BrokerGone => return,
                }
            }
            event = next_event(&reader.publisher_events) => {
                match note(&incoming, "publish", event).await {
                    Noted::Yes => {}
                    Noted::MonitorFailed => reader.publisher_events = None,
                    Noted::BrokerGone => return,
                }
            }
        }
    }
}

enum Noted {
    Yes,
    MonitorFailed,
    BrokerGone,
}

/// Passes connection events on, to be counted.
async fn note(
    incoming: &mpsc::Sender<Incoming>,
    socket: &'static str,
    event: jobcast_transport::Result<PeerEvent>,
) -> Noted {
    let noted = match event {
        Ok(PeerEvent::HandshakeFailed) => Incoming::Refused {
            reason: "handshake_failed",
            detail: format!(
                "a connection to the {socket} socket did not complete the ZMTP handshake"
            ),
        },
        Ok(PeerEvent::Disconnected) => Incoming::Connection { opened: false },
        Ok(PeerEvent::Connected) => Incoming::Connection { opened: true },
        // Counted by the authentication handler, which knows the name.
        Ok(PeerEvent::AuthFailed) => return Noted::Yes,
        Err(e) => {
            // Serve on without connection events rather than stop the broker.
            tracing::error!(socket, error = %e, "socket monitor failed");
            return Noted::MonitorFailed;
        }
    };
    match incoming.send(noted).await {
        Ok(()) => Noted::Yes,
        Err(_) => Noted::BrokerGone,
    }
}

/// Answers pending authentication requests; returns a refusal to count, if any, after
/// answering the request it refused (REP must answer before it reads the next).
fn answer_zap(reader: &Reader) -> Option<Incoming> {
    let parts = match reader.zap.try_recv(8) {
        Ok(Some(Received::Parts(parts))) => parts,
        Ok(Some(Received::TooManyParts(_))) => Vec::new(),
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "authentication request unreadable");
            return None;
        }
    };
    // version, request id, domain, address, routing id, mechanism, username, password
    let field = |n: usize| parts.get(n).map(|part| &part[..]).unwrap_or_default();
    let name = String::from_utf8_lossy(field(6))
        .chars()
        .take(64)
        .collect::<String>();
    let accepted = parts.len() == 8
        && field(0) == b"1.0"
        && field(5) == b"PLAIN"
        && reader
            .keys
            .for_sender(&name)
            .is_some_and(|secret| check_connection_password(secret, field(7)));
    let (code, text, user): (&[u8], &[u8], &[u8]) = if accepted {
        (b"200", b"OK", name.as_bytes())
    } else {
        (b"400", b"unknown sender or wrong password", b"")
    };
    let reply: [&[u8]; 6] = [b"1.0", field(1), code, text, user, b""];
    if let Err(e) = reader.zap.try_send(reply) {
        tracing::warn!(error = %e, "authentication answer not sent");
    }
    (!accepted).then(|| Incoming::Refused {
        reason: "auth_failed",
        detail: format!(
            "connection from {} refused: {}",
            String::from_utf8_lossy(field(3)),
            if field(5) == b"PLAIN" {
                format!("unknown sender or wrong password for {name:?}")
            } else {
                format!("mechanism {:?}", String::from_utf8_lossy(field(5)))
            }
        ),
    })
}
