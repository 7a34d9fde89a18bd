//! The broker's sockets: a ROUTER for requests and a PUB for hints, both libzmq. The
//! server loop owns them ([`Sockets`]): it reads requests straight into its batch and
//! sends the batch's replies and events itself after the group commit, so a request
//! crosses no task or thread on its way in or out. A side task answers the authentication
//! handler and reads the connection monitors, and passes what it counts as [`Incoming`]
//! values. The rest of the broker sees no socket type.
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
//! one batch reads at most [`BATCH_BYTES`] of requests before the core handles them.

use crate::config::Keys;
use crate::connection_ends::{Ended, KeptDescriptors};
use crate::handshakes::{Closed, HandshakeLedger};
use crate::subscriptions::{Flood, PublisherPeers, SubscriptionBook, Verdict};
use jobcast_core::PeerId;
use jobcast_transport::{zmq, AsyncSocket, Limits, Monitor, PeerEvent, Received};
use std::time::Duration;
use tokio::sync::mpsc;

/// Messages queued per peer and direction inside libzmq.
pub const HIGH_WATER_MARK: i32 = 1000;
/// Bytes of requests one batch reads before the core handles them.
pub const BATCH_BYTES: usize = 64 << 20;
/// A connection must finish the ZMTP handshake within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Subscriptions are short topics (72 bytes at most, with ZMTP 3.1's `SUBSCRIBE` name
/// before them); nothing else travels towards the publisher.
const MAX_SUBSCRIPTION_BYTES: usize = 128;
/// Where libzmq asks a context's authentication handler (ZAP, RFC 27).
const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";
/// Each socket's handshakes come to the handler under a domain of its own, so that a
/// key can be refused on the publisher alone.
const ZAP_DOMAIN: &str = "jobcast";
const ZAP_DOMAIN_PUBLISH: &str = "jobcast-publish";
/// A flood still going on after this is told to the side task again.
const FLOOD_TOLD_AGAIN: Duration = Duration::from_millis(100);

pub struct Settings {
    pub router: String,
    pub publish: String,
    pub max_frame_bytes: usize,
    pub peer_timeout: Duration,
    /// Who may connect; a reload sends new keys.
    pub keys: tokio::sync::watch::Receiver<Keys>,
}

/// What the network brought.
#[derive(Debug)]
pub enum Incoming {
    Request {
        peer: PeerId,
        /// libzmq's buffer, not a copy.
        payload: zmq::Message,
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

/// The broker's listening sockets and the side task that watches them.
pub struct Listeners {
    /// Refusals and connection events from the side task.
    pub events: mpsc::Receiver<Incoming>,
    pub sockets: Sockets,
    pub router_endpoint: String,
    pub publish_endpoint: String,
    /// The subscriptions each key made.
    subscriptions: SubscriptionBook,
    /// Floods, to the side task: it closes their connections and refuses their keys.
    floods: mpsc::UnboundedSender<Flood>,
    /// When each key's flood was last told (a flood is thousands of subscriptions: told
    /// again only if it goes on, in case the connection closed was not its own).
    floods_told: std::collections::HashMap<String, std::time::Instant>,
    task: tokio::task::JoinHandle<()>,
}

impl Listeners {
    /// Waits for requests or events and reads what is waiting into `batch`, up to
    /// `max`: for a broker that does not act now and answers each with a refusal. False
    /// once the side task has gone (the broker is stopping).
    pub async fn read_waiting(
        &mut self,
        batch: &mut Vec<Incoming>,
        max: usize,
    ) -> jobcast_transport::Result<bool> {
        tokio::select! {
            ready = self.sockets.readable() => {
                ready?;
                self.sockets.read_into(batch, max);
                Ok(true)
            }
            ready = self.sockets.subscriptions_waiting() => {
                ready?;
                self.take_subscriptions(batch);
                Ok(true)
            }
            first = self.events.recv() => match first {
                Some(first) => {
                    batch.push(first);
                    Ok(true)
                }
                None => Ok(false),
            },
        }
    }

    /// Applies the subscriptions waiting on the publisher that the book takes; the
    /// others are counted into `batch` as refusals, and floods are told to the side task.
    /// Called whenever the publisher is readable and after every send (libzmq takes in
    /// subscriptions while it sends, and keeps them until they are read).
    pub fn take_subscriptions(&mut self, batch: &mut Vec<Incoming>) {
        while let Some(asked) = self.sockets.next_subscription() {
            let Subscription::Subscribe {
                topic,
                key,
                address,
            } = asked
            else {
                continue;
            };
            match self.subscriptions.judge(&key, &topic) {
                Verdict::Take => self.sockets.subscribe_last(&topic),
                Verdict::Refuse => batch.push(Incoming::Refused {
                    reason: "subscription",
                    detail: format!(
                        "{key} from {address} asked for topic {:?}, which the broker does not publish on",
                        String::from_utf8_lossy(&topic)
                    ),
                }),
                Verdict::Flood => {
                    batch.push(Incoming::Refused {
                        reason: "subscription",
                        detail: format!(
                            "{key} from {address} subscribed past what a key may ({} topics, {} refused): its connection is closed and the key refused on the publisher for {}s",
                            crate::subscriptions::MAX_TOPICS_PER_KEY,
                            crate::subscriptions::MAX_REFUSED_PER_KEY,
                            crate::subscriptions::FLOOD_BAN.as_secs()
                        ),
                    });
                    let now = std::time::Instant::now();
                    let told = self.floods_told.get(&key).copied();
                    if told.is_none_or(|at| now.duration_since(at) >= FLOOD_TOLD_AGAIN) {
                        self.floods_told.insert(key.clone(), now);
                        let _ = self.floods.send(Flood { key, address });
                    }
                }
            }
        }
    }
}

/// A subscription message read from the publisher.
enum Subscription {
    Subscribe {
        topic: Vec<u8>,
        /// The key its connection authenticated with.
        key: String,
        /// Its connection's address, without the port (all libzmq says).
        address: String,
    },
    /// An unsubscription (applied at once), or something else (ignored).
    Other,
}

/// The two sockets, used by the server loop only.
pub struct Sockets {
    router: AsyncSocket,
    publisher: AsyncSocket,
}

impl Drop for Listeners {
    fn drop(&mut self) {
        // The side task reads the monitors: they stop before it goes (see
        // `AsyncSocket::stop_monitoring`), or a connection arriving meanwhile would
        // hang the stop.
        self.sockets.router.stop_monitoring();
        self.sockets.publisher.stop_monitoring();
        self.task.abort();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot bind the {what} socket to {endpoint}: {source}")]
    Bind {
        what: &'static str,
        endpoint: String,
        source: jobcast_transport::TransportError,
    },
}

/// What the side task owns.
struct Side {
    zap: AsyncSocket,
    keys: tokio::sync::watch::Receiver<Keys>,
    router_events: Option<Monitor>,
    publisher_events: Option<Monitor>,
    /// The publisher's connections and the keys it refuses.
    publisher_peers: PublisherPeers,
    /// Each socket's connections, to count the closes libzmq does not explain.
    router_connections: Connections,
    publisher_connections: Connections,
    floods: mpsc::UnboundedReceiver<Flood>,
}

/// The next connection event, or never once the monitor has failed.
async fn next_event(monitor: &Option<Monitor>) -> jobcast_transport::Result<(PeerEvent, u32)> {
    match monitor {
        Some(monitor) => monitor.next_with_value().await,
        None => std::future::pending().await,
    }
}

/// Binds a socket, watched by the current runtime; its monitor is watched by `side`'s.
fn bind(
    what: &'static str,
    endpoint: &str,
    kind: zmq::SocketType,
    limits: &Limits,
    side: &tokio::runtime::Handle,
) -> Result<(AsyncSocket, Monitor), SocketError> {
    let open = || -> jobcast_transport::Result<(AsyncSocket, Monitor)> {
        let mut socket = jobcast_transport::socket(kind, limits)?;
        if kind == zmq::ROUTER {
            // A reply to a peer that has gone is an error to log, not a silent drop.
            socket.set_router_mandatory(true)?;
        }
        if kind == zmq::XPUB {
            // Subscriptions take effect only once the broker has looked at them.
            jobcast_transport::set_xpub_manual(&mut socket)?;
        }
        socket.set_plain_server(true)?;
        socket.set_zap_domain(match kind {
            zmq::XPUB => ZAP_DOMAIN_PUBLISH,
            _ => ZAP_DOMAIN,
        })?;
        let events = {
            let _on_side = side.enter();
            Monitor::attach(&socket)?
        };
        socket.bind(&jobcast_transport::bindable(endpoint))?;
        Ok((AsyncSocket::new(socket)?, events))
    };
    open().map_err(|source| SocketError::Bind {
        what,
        endpoint: endpoint.to_string(),
        source,
    })
}

impl Listeners {
    /// Binds both sockets (watched by the current runtime, the loop's) and starts the
    /// side task, which answers handshakes and reads the connection events, on `side`:
    /// its sockets are watched there, so a loop busy with a batch never holds up a
    /// handshake.
    pub fn start(
        settings: &Settings,
        side: &tokio::runtime::Handle,
    ) -> Result<Listeners, SocketError> {
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
        let zap = {
            let _on_side = side.enter();
            jobcast_transport::context()
                .socket(zmq::REP)
                .and_then(|zap| {
                    zap.set_linger(0)?;
                    zap.bind(ZAP_ENDPOINT)?;
                    Ok(zap)
                })
                .map_err(jobcast_transport::TransportError::from)
                .and_then(AsyncSocket::new)
                .map_err(|source| SocketError::Bind {
                    what: "authentication",
                    endpoint: ZAP_ENDPOINT.to_string(),
                    source,
                })?
        };
        let (router, router_events) = bind(
            "request",
            &settings.router,
            zmq::ROUTER,
            &router_limits,
            side,
        )?;
        let (publisher, publisher_events) = bind(
            "publish",
            &settings.publish,
            zmq::XPUB,
            &publisher_limits,
            side,
        )?;
        let endpoint = |socket: &AsyncSocket, asked: &str| {
            socket.last_endpoint().unwrap_or_else(|_| asked.to_string())
        };
        let router_endpoint = endpoint(&router, &settings.router);
        let publish_endpoint = endpoint(&publisher, &settings.publish);
        let (events_tx, events) = mpsc::channel(1024);
        let (floods, floods_told) = mpsc::unbounded_channel();
        let owned = Side {
            zap,
            keys: settings.keys.clone(),
            router_events: Some(router_events),
            publisher_events: Some(publisher_events),
            publisher_peers: PublisherPeers::default(),
            router_connections: Connections::new(),
            publisher_connections: Connections::new(),
            floods: floods_told,
        };
        let task = side.spawn(run(owned, events_tx));
        Ok(Listeners {
            events,
            sockets: Sockets { router, publisher },
            router_endpoint,
            publish_endpoint,
            subscriptions: SubscriptionBook::default(),
            floods,
            floods_told: Default::default(),
            task,
        })
    }
}

impl Sockets {
    /// Waits until requests are waiting to be read.
    pub async fn readable(&self) -> jobcast_transport::Result<()> {
        self.router.wait(zmq::POLLIN).await
    }

    /// Waits until subscriptions are waiting on the publisher.
    pub async fn subscriptions_waiting(&self) -> jobcast_transport::Result<()> {
        self.publisher.wait(zmq::POLLIN).await
    }

    /// The next message waiting on the publisher, without waiting. An unsubscription is
    /// applied here (to the connection it came from: none when libzmq sends it for a
    /// connection that closed, which it has already cleared).
    fn next_subscription(&self) -> Option<Subscription> {
        self.publisher.with(|socket| {
            let mut message = match socket.recv_msg(zmq::DONTWAIT) {
                Ok(message) => message,
                Err(zmq::Error::EAGAIN) => return None,
                // Interrupted: the caller comes back when the socket is readable again.
                Err(zmq::Error::EINTR) => return None,
                Err(e) => {
                    tracing::warn!(error = %e, "publish socket receive failed");
                    return None;
                }
            };
            let (first, topic) = message.split_first()?;
            let topic = topic.to_vec();
            if *first != 1 {
                if *first == 0 {
                    let _ = socket.set_unsubscribe(&topic);
                }
                return Some(Subscription::Other);
            }
            let key = message.gets("User-Id").unwrap_or_default().to_string();
            let address = message.gets("Peer-Address").unwrap_or_default().to_string();
            Some(Subscription::Subscribe {
                topic,
                key,
                address,
            })
        })
    }

    /// Applies `topic` to the connection whose subscription was read last (libzmq's
    /// manual mode: before the next read).
    fn subscribe_last(&self, topic: &[u8]) {
        if let Err(e) = self.publisher.with(|socket| socket.set_subscribe(topic)) {
            tracing::warn!(error = %e, "subscription not applied");
        }
    }

    /// Reads waiting requests into `batch` without waiting, until it holds `max` items
    /// or [`BATCH_BYTES`] of requests. A message of more than one frame is read to its
    /// end and counted as refused.
    pub fn read_into(&self, batch: &mut Vec<Incoming>, max: usize) {
        let mut bytes = 0;
        while batch.len() < max && bytes < BATCH_BYTES {
            let next = match self.router.try_recv(2) {
                Ok(Some(received)) => received,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "request socket receive failed");
                    return;
                }
            };
            batch.push(match next {
                Received::Parts(mut parts) if parts.len() == 2 => {
                    let (Some(payload), Some(peer)) = (parts.pop(), parts.pop()) else {
                        continue;
                    };
                    bytes += payload.len();
                    Incoming::Request {
                        peer: peer.to_vec(),
                        payload,
                    }
                }
                Received::Parts(parts) => Incoming::Refused {
                    reason: "multipart",
                    detail: format!("a message of {} parts", parts.len()),
                },
                Received::TooManyParts(count) => Incoming::Refused {
                    reason: "multipart",
                    detail: format!("a message of {count} parts"),
                },
            });
        }
    }

    /// Sends a batch's replies and events, without waiting: a reply to a peer whose queue
    /// is full is dropped (it is not reading; it asks again), a PUB drops for a
    /// subscriber at its high-water mark.
    pub fn send(&self, batch: impl IntoIterator<Item = Outgoing>) {
        for out in batch {
            match out {
                Outgoing::Reply { peer, frame, to } => {
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
    }
}

/// Answers the authentication handler and passes on connection events.
async fn run(mut side: Side, incoming: mpsc::Sender<Incoming>) {
    loop {
        tokio::select! {
            ready = side.zap.wait(zmq::POLLIN) => {
                if let Err(e) = ready {
                    tracing::error!(error = %e, "authentication socket failed");
                    return;
                }
                // A handshake asks only after its connection was accepted: taking the
                // monitors' events first keeps each connection's descriptor from its
                // start, before any frame of it can be refused.
                if !note_queued_events(&mut side, &incoming) {
                    return;
                }
                // Stops at the first refusal or accepted request; the loop comes back here
                // while more are waiting.
                while let Some(refused) = answer_zap(&mut side) {
                    if !pass_on(&incoming, refused) {
                        return;
                    }
                }
            }
            Some(flood) = side.floods.recv() => {
                match side.publisher_peers.stop(&flood, std::time::Instant::now()) {
                    Some(peer) => tracing::warn!(
                        key = flood.key,
                        %peer,
                        "subscription flood: the connection is closed and the key refused on the publisher for a while"
                    ),
                    None => tracing::warn!(
                        key = flood.key,
                        address = flood.address,
                        "subscription flood: the key is refused on the publisher for a while (its connection was not found)"
                    ),
                }
            }
            event = next_event(&side.router_events) => {
                if !take_event(&mut side, Monitored::Router, event, &incoming) {
                    return;
                }
            }
            event = next_event(&side.publisher_events) => {
                if !take_event(&mut side, Monitored::Publisher, event, &incoming) {
                    return;
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

/// Which of the broker's sockets a monitor watches.
#[derive(Clone, Copy)]
enum Monitored {
    Router,
    Publisher,
}

/// Takes one event of a monitor: counted, the publisher's connections followed, the
/// monitor let go if it failed; false once the broker is gone.
fn take_event(
    side: &mut Side,
    which: Monitored,
    event: jobcast_transport::Result<(PeerEvent, u32)>,
    incoming: &mpsc::Sender<Incoming>,
) -> bool {
    let (socket, monitor, connections) = match which {
        Monitored::Router => (
            "request",
            &mut side.router_events,
            &mut side.router_connections,
        ),
        Monitored::Publisher => {
            side.publisher_peers.noted(&event);
            (
                "publish",
                &mut side.publisher_events,
                &mut side.publisher_connections,
            )
        }
    };
    match note(incoming, socket, event, connections) {
        Noted::Yes => true,
        Noted::MonitorFailed => {
            *monitor = None;
            true
        }
        Noted::BrokerGone => false,
    }
}

/// Notes the events both monitors have queued, without waiting; false once the broker is
/// gone.
fn note_queued_events(side: &mut Side, incoming: &mpsc::Sender<Incoming>) -> bool {
    for which in [Monitored::Router, Monitored::Publisher] {
        loop {
            let monitor = match which {
                Monitored::Router => &side.router_events,
                Monitored::Publisher => &side.publisher_events,
            };
            let event = match monitor.as_ref().map(Monitor::try_next_with_value) {
                None | Some(Ok(None)) => break,
                Some(Ok(Some(event))) => Ok(event),
                Some(Err(e)) => Err(e),
            };
            if !take_event(side, which, event, incoming) {
                return false;
            }
        }
    }
    true
}

/// What the side task keeps of one socket's connections, to count the closes libzmq does
/// not explain.
struct Connections {
    handshakes: HandshakeLedger,
    descriptors: KeptDescriptors,
}

impl Connections {
    fn new() -> Connections {
        Connections {
            handshakes: HandshakeLedger::new(HANDSHAKE_TIMEOUT),
            descriptors: KeptDescriptors::default(),
        }
    }
}

/// Passes connection events on, to be counted; `connections` tells which closes were
/// refusals that libzmq made without an event of their own.
fn note(
    incoming: &mpsc::Sender<Incoming>,
    socket: &'static str,
    event: jobcast_transport::Result<(PeerEvent, u32)>,
    connections: &mut Connections,
) -> Noted {
    let Connections {
        handshakes,
        descriptors,
    } = connections;
    let now = std::time::Instant::now();
    let noted = match event {
        Ok((PeerEvent::HandshakeFailed, _)) => {
            handshakes.failed();
            Incoming::Refused {
                reason: "handshake_failed",
                detail: format!(
                    "a connection to the {socket} socket did not complete the ZMTP handshake"
                ),
            }
        }
        Ok((PeerEvent::Disconnected, fd)) => {
            let ended = descriptors.closed(fd as i32);
            let closed = handshakes.closed(fd, now);
            let refused = match closed {
                Closed::BeforeHandshake => Some(Incoming::Refused {
                    reason: "handshake_failed",
                    detail: format!(
                        "a connection to the {socket} socket was closed before its handshake: not ZMTP 3 (bytes before a greeting, a ZMTP 1.0 or 2.0 peer) or a handshake breaking the protocol"
                    ),
                }),
                Closed::AfterHandshake if ended == Some(Ended::ByBroker) => Some(Incoming::Refused {
                    reason: "oversized",
                    detail: format!(
                        "a connection to the {socket} socket was closed by the broker: a frame over the size limit (or one breaking ZMTP)"
                    ),
                }),
                _ => None,
            };
            if let Some(refused) = refused {
                if !pass_on(incoming, refused) {
                    return Noted::BrokerGone;
                }
            }
            Incoming::Connection { opened: false }
        }
        Ok((PeerEvent::Connected, fd)) => {
            handshakes.accepted(fd, now);
            descriptors.accepted(fd as i32);
            Incoming::Connection { opened: true }
        }
        Ok((PeerEvent::HandshakeSucceeded, _)) => {
            handshakes.succeeded(now);
            return Noted::Yes;
        }
        // Counted by the authentication handler, which knows the name.
        Ok((PeerEvent::AuthFailed, _)) => {
            handshakes.failed();
            return Noted::Yes;
        }
        // Only connecting sockets see these; the broker's are bound.
        Ok((PeerEvent::ConnectFailed, _)) => return Noted::Yes,
        Err(e) => {
            // Serve on without connection events rather than stop the broker; the kept
            // descriptors go (no close will be told to let them go).
            descriptors.clear();
            tracing::error!(socket, error = %e, "socket monitor failed");
            return Noted::MonitorFailed;
        }
    };
    if pass_on(incoming, noted) {
        Noted::Yes
    } else {
        Noted::BrokerGone
    }
}

/// Hands a count to the server loop without waiting: this task must keep reading the
/// monitors (libzmq's I/O thread waits on them), so when the loop is behind by a whole
/// channel, counts are dropped rather than waited for. False once the loop is gone.
fn pass_on(incoming: &mpsc::Sender<Incoming>, item: Incoming) -> bool {
    match incoming.try_send(item) {
        Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// Answers pending authentication requests; returns a refusal to count, if any, after
/// answering the request it refused (REP must answer before it reads the next).
fn answer_zap(side: &mut Side) -> Option<Incoming> {
    let parts = match side.zap.try_recv(8) {
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
        && side.keys.borrow().accepts_password(&name, field(7));
    let banned = accepted
        && field(2) == ZAP_DOMAIN_PUBLISH.as_bytes()
        && side
            .publisher_peers
            .is_banned(&name, std::time::Instant::now());
    let (code, text, user): (&[u8], &[u8], &[u8]) = if banned {
        (
            b"400",
            b"refused for a while after a subscription flood",
            b"",
        )
    } else if accepted {
        (b"200", b"OK", name.as_bytes())
    } else {
        (b"400", b"unknown sender or wrong password", b"")
    };
    let reply: [&[u8]; 6] = [b"1.0", field(1), code, text, user, b""];
    if let Err(e) = side.zap.try_send(reply) {
        tracing::warn!(error = %e, "authentication answer not sent");
    }
    if banned {
        return Some(Incoming::Refused {
            reason: "subscription",
            detail: format!(
                "connection from {} to the publisher refused: {name} flooded it with subscriptions",
                String::from_utf8_lossy(field(3)),
            ),
        });
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
