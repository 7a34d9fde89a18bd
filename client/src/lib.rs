//! The authenticated request client: a ZeroMQ DEALER connected to the broker's ROUTER.
//!
//! A background task owns the socket. Callers send a [`Request`] and await its [`Reply`];
//! many requests may be in flight at once and replies are matched by id. When a send
//! fails (the `zeromq` crate's DEALER does not reconnect after the broker restarts) or
//! when the owner asks for it, the task drops the socket, builds a new one and connects
//! again with a jittered back-off. Requests in flight at that moment fail with
//! [`ClientError::Disconnected`]; the caller decides whether to retry.

use bytes::Bytes;
use jobcast_protocol::envelope::{random_nonce, Opener, Refusal};
use jobcast_protocol::{Body, Reply, Request, Sealer, Secret};
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};
use zeromq::{DealerSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

/// The name the broker signs its replies with.
pub const BROKER_NAME: &str = "broker";

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
}

/// A handle to the client task. Cheap to clone.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
}

impl Client {
    /// Starts the client task and waits for the first connection, up to the connect
    /// timeout.
    pub async fn connect(config: ClientConfig) -> Result<Client, ClientError> {
        let socket = open_socket(&config).await?;
        Ok(Self::start(config, Some(socket)))
    }

    /// Starts the client task without waiting: it connects in the background, retrying
    /// until it succeeds. Requests made meanwhile wait for the connection.
    pub fn connect_in_background(config: ClientConfig) -> Client {
        Self::start(config, None)
    }

    fn start(config: ClientConfig, socket: Option<DealerSocket>) -> Client {
        let (commands, receiver) = mpsc::unbounded_channel();
        tokio::spawn(run(config, socket, receiver));
        Client { commands }
    }

    /// Sends `request` and waits up to `timeout` for the reply.
    pub async fn request(&self, request: Request, timeout: Duration) -> Result<Reply, ClientError> {
        self.submit(request).wait(timeout).await
    }

    /// Queues `request` at once and returns a handle to await its reply. Requests
    /// submitted one after another from one task reach the broker in that order.
    pub fn submit(&self, request: Request) -> PendingReply {
        let (reply_to, reply) = oneshot::channel();
        let queued = self.commands.send(Command::Send { request, reply_to });
        PendingReply {
            reply: queued.ok().map(|_| reply),
        }
    }

    /// Drops the current socket and connects again (used after a long silence).
    pub fn reconnect(&self) {
        let _ = self.commands.send(Command::Reconnect);
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

async fn open_socket(config: &ClientConfig) -> Result<DealerSocket, ClientError> {
    let mut options = SocketOptions::default();
    options.connect_timeout(config.connect_timeout);
    let mut socket = DealerSocket::with_options(options);
    // connect() itself waits up to the connect timeout; the outer timeout is a guard in
    // case name resolution or the handshake stalls.
    match tokio::time::timeout(
        config.connect_timeout + Duration::from_secs(1),
        socket.connect(&config.endpoint),
    )
    .await
    {
        Ok(Ok(())) => Ok(socket),
        Ok(Err(e)) => Err(ClientError::Unreachable {
            endpoint: config.endpoint.clone(),
            reason: e.to_string(),
        }),
        Err(_) => Err(ClientError::Unreachable {
            endpoint: config.endpoint.clone(),
            reason: format!("no connection within {:?}", config.connect_timeout),
        }),
    }
}

fn jitter(base: Duration) -> Duration {
    let spread = (random_nonce() % 1000) as f64 / 1000.0;
    base.mul_f64(0.5 + spread)
}

type Pending = HashMap<u64, oneshot::Sender<Result<Reply, ClientError>>>;

async fn run(
    config: ClientConfig,
    mut socket: Option<DealerSocket>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let sealer = Sealer::new(config.name.clone(), config.secret.clone());
    let mut opener = Opener::new(MAX_REPLY_BYTES, config.max_clock_skew.as_millis() as u64);
    let mut next_id: u64 = 1;
    let mut backoff = Duration::from_millis(100);

    loop {
        let Some(dealer) = socket.take() else {
            match open_socket(&config).await {
                Ok(s) => {
                    tracing::debug!(endpoint = %config.endpoint, "connected to broker");
                    socket = Some(s);
                    backoff = Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "broker not reachable yet");
                    if commands.is_closed() {
                        return;
                    }
                    tokio::time::sleep(jitter(backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
            continue;
        };
        let (mut tx, mut rx) = dealer.split();
        let mut pending: Pending = HashMap::new();

        // Serve this socket until it breaks or a reconnect is asked for.
        let reason = 'serve: loop {
            let command = tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => Some(command),
                    None => return,
                },
                incoming = rx.recv() => {
                    match incoming {
                        Ok(message) => deliver(message, &mut opener, &config.secret, &mut pending),
                        Err(e) => break 'serve format!("receive failed: {e}"),
                    }
                    None
                }
            };
            match command {
                None => {}
                Some(Command::Reconnect) => break 'serve "reconnect requested".to_string(),
                Some(Command::Send { request, reply_to }) => {
                    let id = next_id;
                    next_id += 1;
                    let frame = sealer.seal(&Body::Request { id, request }, now_ms());
                    pending.retain(|_, waiter| !waiter.is_closed());
                    pending.insert(id, reply_to);
                    let sent = tokio::time::timeout(
                        Duration::from_secs(5),
                        tx.send(ZmqMessage::from(Bytes::from(frame))),
                    )
                    .await;
                    match sent {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => break 'serve format!("send failed: {e}"),
                        Err(_) => break 'serve "send stalled".to_string(),
                    }
                }
            }
        };
        tracing::debug!(%reason, "dropping broker connection");
        for (_, waiter) in pending.drain() {
            let _ = waiter.send(Err(ClientError::Disconnected));
        }
        tokio::time::sleep(jitter(Duration::from_millis(50))).await;
    }
}

fn deliver(message: ZmqMessage, opener: &mut Opener, key: &Secret, pending: &mut Pending) {
    let Some(frame) = message.into_vec().pop() else {
        return;
    };
    if let Some(refusal) = Refusal::decode(&frame) {
        // A refusal cannot say which request it answers: fail them all.
        for (_, waiter) in pending.drain() {
            let _ = waiter.send(Err(ClientError::Refused {
                reason: refusal.refused.clone(),
                detail: refusal.detail.clone(),
            }));
        }
        return;
    }
    match opener.open(&frame, now_ms(), |name| {
        (name == BROKER_NAME).then_some(key)
    }) {
        Ok(opened) => match opened.body {
            Body::Reply { id, reply } => {
                if let Some(waiter) = pending.remove(&id) {
                    let _ = waiter.send(Ok(reply));
                }
            }
            Body::Request { .. } => tracing::warn!("ignoring a request sent by the broker"),
        },
        Err(why) => tracing::warn!(%why, "ignoring an invalid frame from the broker"),
    }
}
