//! The authenticated request client: a libzmq DEALER connected to the broker's ROUTER.
//!
//! A background task owns the socket. Callers send a [`Request`] and await its [`Reply`];
//! many requests may be in flight at once and replies are matched by id. libzmq connects
//! and reconnects by itself (with ZMTP heartbeats to notice a dead broker); the task
//! watches the socket's connection events, and when the connection drops, the requests
//! already handed to it fail with [`ClientError::Disconnected`] at once rather than at
//! their timeout, since the broker cannot answer them any more. The caller decides
//! whether to retry. Requests made while no connection is up wait in the task's queue.

use jobcast_protocol::envelope::{random_nonce, Opener, Refusal, BROKER};
use jobcast_protocol::{Body, Reply, Request, Sealer, Secret};
use jobcast_transport::{zmq, AsyncSocket, Credentials, Limits, Monitor, PeerEvent, Received};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// Replies can be much larger than requests (a whole log); accept up to this.
const MAX_REPLY_BYTES: usize = 64 << 20;

/// Milliseconds since the Unix epoch, the protocol's time base.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ClientError {
    #[error("cannot reach the broker at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("the connection to the broker was lost before it answered")]
    Disconnected,
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the broker refused the request ({reason}): {detail}")]
    Refused { reason: String, detail: String },
    #[error("the client has shut down")]
    Closed,
}

impl ClientError {
    /// Whether the broker refused the request unread because it was sealed before the
    /// broker began acting (a start, a takeover): safe to send again, sealed anew.
    pub fn was_sent_too_early(&self) -> bool {
        matches!(self, ClientError::Refused { reason, .. } if reason == jobcast_protocol::Rejection::BEFORE_START)
    }
}

impl ClientConfig {
    /// What this peer authenticates its connections with.
    pub fn credentials(&self) -> Credentials {
        credentials(&self.name, &self.secret)
    }
}

/// The connection credentials of sender `name` with `secret`.
pub fn credentials(name: &str, secret: &Secret) -> Credentials {
    Credentials {
        username: name.to_string(),
        password: jobcast_protocol::envelope::connection_password(secret),
    }
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The broker's ROUTER endpoint, e.g. `tcp://127.0.0.1:5555`.
    pub endpoint: String,
    /// Who we are (a worker id, or `admin` for jobcastctl).
    pub name: String,
    pub secret: Secret,
    pub connect_timeout: Duration,
    /// Largest clock difference accepted on replies.
    pub max_clock_skew: Duration,
}

enum Command {
    Send {
        request: Request,
        reply_to: oneshot::Sender<Result<Reply, ClientError>>,
    },
    Reconnect,
    /// Connect to another broker from now on (several brokers: the leader moved).
    ReconnectTo(String),
}

/// A handle to the client task. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    /// How many times an established connection to the broker has closed.
    closed: tokio::sync::watch::Receiver<u64>,
}

impl Client {
    /// Starts the client task and waits for the first connection, up to the connect
    /// timeout.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let connection = Connection::open(&config)?;
        let connected = tokio::time::timeout(config.connect_timeout, async {
            loop {
                tokio::select! {
                    ready = connection.socket.wait(zmq::POLLOUT) => {
                        return ready.map_err(|e| unreachable(&config, e));
                    }
                    event = connection.events.next() => match event {
                        Ok(PeerEvent::AuthFailed) => return Err(auth_refused(&config)),
                        // Waiting out the timeout would only repeat these.
                        Ok(PeerEvent::ConnectFailed) => {
                            return Err(unreachable(&config, "nothing answers there (connection refused or no route)"));
                        }
                        Ok(PeerEvent::HandshakeFailed) => {
                            return Err(unreachable(&config, "what answers there does not speak jobcast's request protocol (is it the broker's HTTP or events port?)"));
                        }
                        Ok(_) => {}
                        Err(e) => return Err(unreachable(&config, e)),
                    },
                }
            }
        })
        .await;
        match connected {
            Ok(Ok(())) => Ok(Self::start(config, Some(connection))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ClientError::Unreachable {
                endpoint: config.endpoint.clone(),
                reason: format!("no connection within {:?}", config.connect_timeout),
            }),
        }
    }

    /// Starts the client task without waiting: it connects in the background, retrying
    /// until it succeeds. Requests made meanwhile wait for the connection.
    pub fn connect_in_background(config: ClientConfig) -> Client {
        Self::start(config, None)
    }

    fn start(config: ClientConfig, connection: Option<Connection>) -> Client {
        let (commands, receiver) = mpsc::unbounded_channel();
        let (closing, closed) = tokio::sync::watch::channel(0);
        tokio::spawn(run(config, connection, receiver, closing));
        Client { commands, closed }
    }

    /// Changes each time an established connection to the broker closes (the broker
    /// stopped, or its host went away); libzmq connects again by itself, but a caller
    /// that knows other brokers may move on at once.
    pub fn closings(&self) -> tokio::sync::watch::Receiver<u64> {
        self.closed.clone()
    }

    /// Sends `request` and waits up to `timeout` for the reply.
    pub async fn request(
        &self,
        request: impl Into<Request>,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        self.submit(request).wait(timeout).await
    }

    /// Queues `request` at once and returns a handle to await its reply. Requests
    /// submitted one after another from one task reach the broker in that order.
    pub fn submit(&self, request: impl Into<Request>) -> PendingReply {
        let (reply_to, reply) = oneshot::channel();
        let queued = self.commands.send(Command::Send {
            request: request.into(),
            reply_to,
        });
        PendingReply {
            reply: queued.ok().map(|_| reply),
        }
    }

    /// Drops the current socket and connects again (used after a long silence).
    pub fn reconnect(&self) {
        let _ = self.commands.send(Command::Reconnect);
    }

    /// Drops the current socket and connects to `endpoint` from now on (several brokers:
    /// another one leads). Requests waiting to be sent go there; those sent and not
    /// answered fail as on any reconnect.
    pub fn reconnect_to(&self, endpoint: &str) {
        let _ = self
            .commands
            .send(Command::ReconnectTo(endpoint.to_string()));
    }
}

/// A submitted request's reply, still to come.
pub struct PendingReply {
    reply: Option<oneshot::Receiver<Result<Reply, ClientError>>>,
}

impl PendingReply {
    pub async fn wait(self, timeout: Duration) -> Result<Reply, ClientError> {
        let Some(reply) = self.reply else {
            return Err(ClientError::Closed);
        };
        match tokio::time::timeout(timeout, reply).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }
}

/// The DEALER and its connection events.
struct Connection {
    socket: AsyncSocket,
    events: Monitor,
}

fn unreachable(config: &ClientConfig, e: impl std::fmt::Display) -> ClientError {
    ClientError::Unreachable {
        endpoint: config.endpoint.clone(),
        reason: e.to_string(),
    }
}

/// The broker's handshake turned the connection down: the name or its secret is wrong.
fn auth_refused(config: &ClientConfig) -> ClientError {
    ClientError::Refused {
        reason: "auth_failed".to_string(),
        detail: format!(
            "the broker at {} refused the connection for {:?}: unknown sender or wrong secret",
            config.endpoint, config.name
        ),
    }
}

impl Connection {
    /// Creates the socket and starts connecting; libzmq completes the connection (and
    /// any later reconnection) in the background.
    fn open(config: &ClientConfig) -> Result<Connection, ClientError> {
        let open = || -> jobcast_transport::Result<Connection> {
            let limits = Limits {
                max_message_bytes: MAX_REPLY_BYTES,
                ..Limits::default()
            };
            let socket = jobcast_transport::socket(zmq::DEALER, &limits)?;
            // Queue only to a connected broker, so that nothing waits in a pipe that
            // dies with a connection attempt; the task keeps the backlog instead.
            socket.set_immediate(true)?;
            socket.set_reconnect_ivl(100)?;
            socket.set_reconnect_ivl_max(5_000)?;
            socket.set_connect_timeout(millis(config.connect_timeout))?;
            config.credentials().apply(&socket)?;
            let events = Monitor::attach(&socket)?;
            socket.connect(&config.endpoint)?;
            Ok(Connection {
                socket: AsyncSocket::new(socket)?,
                events,
            })
        };
        open().map_err(|e| unreachable(config, e))
    }
}

fn millis(d: Duration) -> i32 {
    d.as_millis().min(i32::MAX as u128) as i32
}

fn jitter(base: Duration) -> Duration {
    let spread = (random_nonce() % 1000) as f64 / 1000.0;
    base.mul_f64(0.5 + spread)
}

/// Most requests taken from the queue in one go before the socket is served again.
const MAX_TAKEN: usize = 1_024;

/// The smallest number of waiters at which the task sweeps out abandoned ones.
const MIN_SWEEP: usize = 256;

struct Waiter {
    reply_to: oneshot::Sender<Result<Reply, ClientError>>,
    /// Handed to libzmq: lost if the connection drops before the reply.
    sent: bool,
}

type Pending = HashMap<u64, Waiter>;

/// Points the client at `endpoint` from its next connection; why the current one ends.
fn move_to(config: &mut ClientConfig, endpoint: String) -> String {
    let reason = format!("moving from {} to {endpoint}", config.endpoint);
    config.endpoint = endpoint;
    reason
}

/// The endpoints of a comma-separated list (several brokers), blanks left out.
pub fn endpoint_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|endpoint| !endpoint.is_empty())
        .map(str::to_string)
        .collect()
}

async fn run(
    mut config: ClientConfig,
    mut connection: Option<Connection>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    closing: tokio::sync::watch::Sender<u64>,
) {
    let sealer = Sealer::new(config.name.clone(), BROKER, config.secret.clone());
    let mut opener = Opener::new(MAX_REPLY_BYTES, config.max_clock_skew.as_millis() as u64)
        .receiving_as(config.name.clone());
    let mut next_id: u64 = 1;
    let mut backoff = Duration::from_millis(100);
    let mut pending: Pending = HashMap::new();
    // Sweep waiters that gave up when `pending` reaches this size (amortised: a sweep per
    // request would cost O(pending) each time).
    let mut sweep_at = MIN_SWEEP;
    // Requests not yet accepted by the socket, in order.
    let mut backlog: VecDeque<(u64, Body)> = VecDeque::new();

    loop {
        let Some(current) = connection.take() else {
            match Connection::open(&config) {
                Ok(opened) => {
                    connection = Some(opened);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    // Only a malformed endpoint or an exhausted process gets here.
                    tracing::warn!(error = %e, "cannot create the broker connection");
                    if commands.is_closed() {
                        return;
                    }
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            continue;
        };
        let socket = &current.socket;

        // Serve this socket until a reconnect is asked for or it fails.
        let reason = 'serve: loop {
            tokio::select! {
                command = commands.recv() => match command {
                    None => return,
                    Some(Command::Reconnect) => break 'serve "reconnect requested".to_string(),
                    Some(Command::ReconnectTo(endpoint)) => break 'serve move_to(&mut config, endpoint),
                    Some(Command::Send { request, reply_to }) => {
                        // Take every request already queued before going back to the
                        // socket: a burst (a worker's reports) then leaves as a burst,
                        // and reaches the broker's same batch and flush.
                        let mut next = Some((request, reply_to));
                        let mut taken = 0;
                        while let Some((request, reply_to)) = next.take() {
                            let id = next_id;
                            next_id += 1;
                            if pending.len() >= sweep_at {
                                // Forget waiters that gave up; their requests are still
                                // sent (a caller may submit without waiting for the reply).
                                pending.retain(|_, waiter| !waiter.reply_to.is_closed());
                                sweep_at = (pending.len() * 2).max(MIN_SWEEP);
                            }
                            pending.insert(id, Waiter { reply_to, sent: false });
                            backlog.push_back((id, Body::Request { id, request }));
                            taken += 1;
                            if taken < MAX_TAKEN {
                                match commands.try_recv() {
                                    Ok(Command::Send { request, reply_to }) => next = Some((request, reply_to)),
                                    Ok(Command::Reconnect) => break 'serve "reconnect requested".to_string(),
                                    Ok(Command::ReconnectTo(endpoint)) => break 'serve move_to(&mut config, endpoint),
                                    Err(_) => {}
                                }
                            }
                        }
                    }
                },
                ready = socket.wait(zmq::POLLIN) => {
                    if let Err(e) = ready {
                        break 'serve format!("socket failed: {e}");
                    }
                    loop {
                        match socket.try_recv(1) {
                            Ok(Some(Received::Parts(mut parts))) => {
                                if let Some(frame) = parts.pop() {
                                    deliver(&frame, &mut opener, &config.secret, &mut pending);
                                }
                            }
                            Ok(Some(Received::TooManyParts(_))) => {
                                tracing::warn!("ignoring a multi-part message from the broker");
                            }
                            Ok(None) => break,
                            Err(e) => break 'serve format!("receive failed: {e}"),
                        }
                    }
                }
                ready = socket.wait(zmq::POLLOUT), if !backlog.is_empty() => {
                    if let Err(e) = ready {
                        break 'serve format!("socket failed: {e}");
                    }
                }
                event = current.events.next() => match event {
                    Ok(PeerEvent::Disconnected) => {
                        closing.send_modify(|closed| *closed += 1);
                        tracing::debug!(endpoint = %config.endpoint, "broker connection lost; libzmq reconnects");
                        fail_sent(&mut pending);
                    }
                    Ok(PeerEvent::AuthFailed) => {
                        // Nothing can be sent with these credentials: say so to everyone
                        // waiting rather than let them time out.
                        let refused = auth_refused(&config);
                        tracing::error!("{refused}");
                        backlog.clear();
                        for (_, waiter) in pending.drain() {
                            let _ = waiter.reply_to.send(Err(refused.clone()));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => break 'serve format!("monitor failed: {e}"),
                },
            }
            // Hand over whatever the socket takes now, sealed as it goes: a request that
            // waited for a connection carries the time it was sent, not queued (the broker
            // refuses frames older than its start or than the clock-skew window).
            while let Some((id, body)) = backlog.front() {
                let frame = sealer.seal(body, now_ms());
                match socket.try_send([&frame[..]]) {
                    Ok(true) => {
                        if let Some(waiter) = pending.get_mut(id) {
                            waiter.sent = true;
                        }
                        backlog.pop_front();
                    }
                    Ok(false) => break,
                    Err(e) => break 'serve format!("send failed: {e}"),
                }
            }
        };
        tracing::debug!(%reason, "dropping broker connection");
        fail_sent(&mut pending);
        drop(current);
        tokio::time::sleep(jitter(Duration::from_millis(50))).await;
    }
}

/// Fails the requests the broker can no longer answer; unsent ones keep waiting.
fn fail_sent(pending: &mut Pending) {
    let lost: Vec<u64> = pending
        .iter()
        .filter(|(_, waiter)| waiter.sent)
        .map(|(id, _)| *id)
        .collect();
    for id in lost {
        if let Some(waiter) = pending.remove(&id) {
            let _ = waiter.reply_to.send(Err(ClientError::Disconnected));
        }
    }
}

fn deliver(frame: &[u8], opener: &mut Opener, key: &Secret, pending: &mut Pending) {
    if let Some(refusal) = Refusal::decode(frame) {
        // A refusal cannot say which request it answers: fail them all.
        for (_, waiter) in pending.drain() {
            let _ = waiter.reply_to.send(Err(ClientError::Refused {
                reason: refusal.refused.clone(),
                detail: refusal.detail.clone(),
            }));
        }
        return;
    }
    match opener.open(frame, now_ms(), |name| (name == BROKER).then_some(key)) {
        Ok(opened) => match opened.body {
            Body::Reply { id, reply } => {
                if let Some(waiter) = pending.remove(&id) {
                    let _ = waiter.reply_to.send(Ok(reply));
                }
            }
            Body::Request { .. } => tracing::warn!("ignoring a request sent by the broker"),
        },
        Err(why) => tracing::warn!(%why, "ignoring an invalid frame from the broker"),
    }
}

#[cfg(test)]
mod tests;
