//! The broker's I/O shell: binds the sockets, checks every frame, feeds the core in
//! batches, flushes the store once per batch (group commit), then answers and publishes.

use crate::config::{parse_tcp_endpoint, BrokerConfig, Keys};
use crate::core::{Core, Outbox, PeerId};
use crate::http::{CoreHandle, InternalRequest};
use crate::store::Store;
use anyhow::{Context, Result};
use bytes::Bytes;
use jobcast_protocol::envelope::{random_nonce, seal, Opener, Refusal};
use jobcast_protocol::message::encode_event;
use jobcast_protocol::Body;
use std::collections::HashMap;
use std::future::Future;
use std::net::ToSocketAddrs;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use zeromq::{PubSocket, RouterSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

/// The name the broker signs its replies with.
pub const BROKER_NAME: &str = "broker";
/// Most requests handled between two flushes.
const MAX_BATCH: usize = 256;
/// Batches slower than this are logged with where the time went.
const SLOW_BATCH: Duration = Duration::from_millis(20);
/// The longest the loop sleeps, so that a step of the wall clock is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// A reply that cannot be queued to its peer within this is dropped (the peer retries).
const SEND_TIMEOUT: Duration = Duration::from_millis(500);

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Where the broker ended up listening (ports resolved when 0 was asked for).
#[derive(Debug, Clone)]
pub struct Bound {
    pub router: String,
    pub publish: String,
    pub http: Option<String>,
}

/// The peer id of requests from inside the broker; no ZeroMQ identity is empty.
const INTERNAL_PEER: &[u8] = b"";

/// Binds the PUB socket through a listener with `TCP_USER_TIMEOUT`, which accepted
/// connections inherit: the kernel then aborts a subscriber that has stopped reading,
/// freeing what was queued for it (the crate's PUB has no working high-water mark).
fn pub_listener(endpoint: &str, user_timeout: Duration) -> Result<std::net::TcpListener> {
    let (host, port) = parse_tcp_endpoint(endpoint)?;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {endpoint}"))?
        .next()
        .with_context(|| format!("{endpoint} resolves to no address"))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_tcp_user_timeout(Some(user_timeout))?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot bind the publish socket to {endpoint}"))?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Logs refused frames without letting a flood of garbage flood the log too.
struct RejectionLog {
    last: HashMap<&'static str, (Instant, u64)>,
}

impl RejectionLog {
    fn note(&mut self, reason: &'static str, detail: &str) {
        let now = Instant::now();
        let entry = self
            .last
            .entry(reason)
            .or_insert((now - Duration::from_secs(60), 0));
        entry.1 += 1;
        if now.duration_since(entry.0) >= Duration::from_secs(1) {
            tracing::warn!(reason, count = entry.1, "refused frame: {detail}");
            *entry = (now, 0);
        }
    }
}

pub async fn serve<S: Store + 'static>(
    mut core: Core<S>,
    config: &BrokerConfig,
    on_bound: impl FnOnce(&Bound) -> Result<()>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let mut router = RouterSocket::new();
    let router_endpoint = router
        .bind(&config.router)
        .await
        .with_context(|| format!("cannot bind the request socket to {}", config.router))?;
    let mut publisher = PubSocket::new();
    let publish_endpoint = publisher
        .bind_listener(pub_listener(
            &config.publish,
            config.stalled_subscriber_timeout,
        )?)
        .await
        .with_context(|| format!("cannot bind the publish socket to {}", config.publish))?;

    let (mut replies, mut requests) = router.split();
    let (inbox_tx, mut inbox) = mpsc::channel::<(PeerId, Bytes)>(8192);
    let (internal_tx, mut internal) = mpsc::channel::<InternalRequest>(1024);
    let live = crate::http::LiveFeed::new();
    let http = match &config.http_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind the HTTP listener to {addr}"))?;
            let bound_http = listener.local_addr()?;
            tracing::info!(http = %bound_http, "dashboard and API listening");
            let app = crate::http::router(
                CoreHandle::new(internal_tx.clone()),
                config.api_tokens.clone(),
                live.clone(),
            );
            Some((
                bound_http,
                tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, app).await {
                        tracing::error!(error = %e, "HTTP server stopped");
                    }
                }),
            ))
        }
        None => None,
    };
    let bound = Bound {
        router: router_endpoint.to_string(),
        publish: publish_endpoint.to_string(),
        http: http.as_ref().map(|(addr, _)| addr.to_string()),
    };
    tracing::info!(router = %bound.router, publish = %bound.publish, boot_id = core.boot_id(), "broker listening");
    on_bound(&bound)?;
    // Replies to requests from inside the broker (the HTTP API), by request id.
    let mut internal_pending: HashMap<u64, tokio::sync::oneshot::Sender<jobcast_protocol::Reply>> =
        HashMap::new();
    let mut next_internal_id: u64 = 1;
    let max_frame = config.max_frame_bytes;
    let receiver = tokio::spawn(async move {
        loop {
            let message = match requests.recv().await {
                Ok(message) => message,
                Err(e) => {
                    tracing::warn!(error = %e, "request socket receive failed");
                    continue;
                }
            };
            let mut frames = message.into_vec();
            if frames.len() != 2 {
                tracing::debug!(
                    frames = frames.len(),
                    "ignoring a message with an unexpected frame count"
                );
                continue;
            }
            let payload = frames.pop().unwrap_or_default();
            let peer = frames.pop().unwrap_or_default().to_vec();
            // Oversized frames are refused by the opener; cut the copy short here.
            let payload = if payload.len() > max_frame + 1 {
                payload.slice(..max_frame + 1)
            } else {
                payload
            };
            if inbox_tx.send((peer, payload)).await.is_err() {
                return;
            }
        }
    });

    let mut opener = Opener::new(
        config.max_frame_bytes,
        config.max_clock_skew.as_millis() as u64,
    );
    let mut rejections = RejectionLog {
        last: HashMap::new(),
    };
    let notifier = crate::notify::Notifier::start(config.webhooks.clone(), Duration::from_secs(1));
    tokio::pin!(shutdown);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut internal_batch: Vec<InternalRequest> = Vec::new();
    let result: Result<()> = loop {
        let mut out = Outbox::default();
        let mut refusals: Vec<(PeerId, Refusal)> = Vec::new();
        tokio::select! {
            biased;
            _ = &mut shutdown => break Ok(()),
            Some(request) = internal.recv() => {
                internal_batch.push(request);
                while internal_batch.len() < MAX_BATCH {
                    match internal.try_recv() {
                        Ok(next) => internal_batch.push(next),
                        Err(_) => break,
                    }
                }
            }
            first = inbox.recv() => {
                let Some(first) = first else { break Ok(()) };
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match inbox.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
            }
            // Sleep until the core has something to do: the next tick of a job, a
            // heartbeat, a deadline.
            _ = tokio::time::sleep(
                Duration::from_micros(core.next_wakeup_us().saturating_sub(now_us())).min(MAX_SLEEP)
            ) => {}
        }
        let now = now_us();
        let batch_started = Instant::now();
        let requests = batch.len();
        let mut fatal = None;
        for (peer, payload) in batch.drain(..) {
            if fatal.is_some() {
                continue;
            }
            match opener.open(&payload, now / 1_000, |name| config.keys.for_sender(name)) {
                Ok(opened) => match opened.body {
                    Body::Request { id, request } => {
                        if let Err(e) = core.handle(&peer, &opened.from, id, request, now, &mut out)
                        {
                            fatal = Some(e);
                        }
                    }
                    Body::Reply { .. } => {
                        core.note_rejection("undecodable");
                        rejections.note("undecodable", "a reply sent to the broker");
                    }
                },
                Err(rejection) => {
                    core.note_rejection(rejection.reason());
                    rejections.note(rejection.reason(), &rejection.to_string());
                    if let Some(refusal) = Refusal::for_rejection(&rejection) {
                        refusals.push((peer, refusal));
                    }
                }
            }
        }
        for InternalRequest { request, reply } in internal_batch.drain(..) {
            if fatal.is_some() {
                break;
            }
            let id = next_internal_id;
            next_internal_id += 1;
            internal_pending.retain(|_, waiter| !waiter.is_closed());
            internal_pending.insert(id, reply);
            if let Err(e) = core.handle(
                &INTERNAL_PEER.to_vec(),
                crate::core::ADMIN,
                id,
                request,
                now,
                &mut out,
            ) {
                fatal = Some(e);
            }
        }
        if let Some(e) = fatal {
            break Err(e).context("store write failed");
        }
        if let Err(e) = core.tick(now, &mut out) {
            break Err(e).context("store write failed");
        }
        let handled = batch_started.elapsed();
        // Group commit: everything the batch wrote is durable before anyone hears of it.
        let flushed = tokio::task::block_in_place(|| core.store_mut().flush());
        let took = batch_started.elapsed();
        if took > SLOW_BATCH {
            tracing::info!(
                requests,
                handled_ms = handled.as_secs_f64() * 1e3,
                flushed_ms = (took - handled).as_secs_f64() * 1e3,
                "slow batch"
            );
        }
        if let Err(e) = flushed {
            break Err(e).context("store flush failed");
        }
        for notification in out.notifications.drain(..) {
            notifier.send(notification);
        }
        // Live views hear of changes only once they are durable.
        if live.has_clients() {
            match core.take_changes() {
                Ok(changes) => live.publish(changes),
                Err(e) => break Err(e).context("store read failed"),
            }
        } else {
            core.clear_changes();
        }
        // Replies for the HTTP API go back in-process, after the flush like all others.
        let (internal_replies, zmq_replies): (Vec<_>, Vec<_>) = out
            .replies
            .drain(..)
            .partition(|r| r.peer.as_slice() == INTERNAL_PEER);
        out.replies = zmq_replies;
        for reply in internal_replies {
            if let Some(waiter) = internal_pending.remove(&reply.id) {
                let _ = waiter.send(reply.reply);
            }
        }
        send_all(&mut replies, &mut publisher, &config.keys, out, refusals).await;
    };
    receiver.abort();
    if let Some((_, task)) = http {
        task.abort();
    }
    let flushed = tokio::task::block_in_place(|| core.store_mut().flush());
    result?;
    flushed.context("final store flush failed")?;
    tracing::info!("broker stopped");
    Ok(())
}

async fn send_all(
    replies: &mut zeromq::RouterSendHalf,
    publisher: &mut PubSocket,
    keys: &Keys,
    out: Outbox,
    refusals: Vec<(PeerId, Refusal)>,
) {
    let now_ms = now_us() / 1_000;
    for reply in out.replies {
        let Some(secret) = keys.for_sender(&reply.to) else {
            continue;
        };
        let frame = seal(
            BROKER_NAME,
            secret,
            &Body::Reply {
                id: reply.id,
                reply: reply.reply,
            },
            now_ms,
            random_nonce(),
        );
        send_to_peer(replies, reply.peer, frame, &reply.to).await;
    }
    for (peer, refusal) in refusals {
        send_to_peer(replies, peer, refusal.encode(), "unauthenticated peer").await;
    }
    for (topic, event) in out.events {
        let message =
            ZmqMessage::try_from(vec![Bytes::from(topic), Bytes::from(encode_event(&event))]);
        if let Ok(message) = message {
            if let Err(e) = publisher.send(message).await {
                tracing::warn!(error = %e, "publish failed");
            }
        }
    }
}

async fn send_to_peer(
    replies: &mut zeromq::RouterSendHalf,
    peer: PeerId,
    frame: Vec<u8>,
    to: &str,
) {
    let Ok(message) = ZmqMessage::try_from(vec![Bytes::from(peer), Bytes::from(frame)]) else {
        return;
    };
    match tokio::time::timeout(SEND_TIMEOUT, replies.send(message)).await {
        Ok(Ok(())) => {}
        // The peer disconnected: it will retry on its new connection.
        Ok(Err(e)) => tracing::debug!(to, error = %e, "reply not delivered"),
        Err(_) => tracing::warn!(to, "reply dropped: the peer is not reading"),
    }
}
