//! The broker's I/O shell: binds the sockets, checks every frame, feeds the core in
//! batches, flushes the store once per batch (group commit), then answers and publishes.

use crate::config::{BrokerConfig, Keys};
use crate::core::{Core, Outbox, PeerId};
use crate::http::{CoreHandle, InternalRequest};
use crate::store::Store;
use crate::transport::{Incoming, Outgoing, Settings, Transport};
use anyhow::{Context, Result};
use jobcast_protocol::envelope::{seal, Opener, Refusal, BROKER};
use jobcast_protocol::message::encode_event;
use jobcast_protocol::Body;
use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Most requests handled between two flushes.
const MAX_BATCH: usize = 256;
/// Batches slower than this are logged with where the time went.
const SLOW_BATCH: Duration = Duration::from_millis(20);
/// The longest the loop sleeps, so that a step of the wall clock is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(1);

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

/// The origins of the dashboard when none are configured: the listen address itself
/// (and `localhost` for a loopback one), as plain `http://`.
fn default_origins(listen: std::net::SocketAddr) -> Vec<String> {
    let mut origins = vec![format!("http://{listen}")];
    if listen.ip().is_loopback() {
        origins.push(format!("http://localhost:{}", listen.port()));
    }
    origins
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
    let mut transport = Transport::start(&Settings {
        router: config.router.clone(),
        publish: config.publish.clone(),
        max_frame_bytes: config.max_frame_bytes,
        peer_timeout: config.peer_timeout,
        keys: config.keys.clone(),
    })?;
    let (internal_tx, mut internal) = mpsc::channel::<InternalRequest>(1024);
    let live = crate::http::LiveFeed::new();
    let http = match &config.http_listen {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot bind the HTTP listener to {addr}"))?;
            let bound_http = listener.local_addr()?;
            tracing::info!(http = %bound_http, "dashboard and API listening");
            let origins = if config.public_origins.is_empty() {
                default_origins(bound_http)
            } else {
                config.public_origins.clone()
            };
            let app = crate::http::router(
                CoreHandle::new(internal_tx.clone()),
                config.api_tokens.clone(),
                live.clone(),
                origins,
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
        router: transport.router_endpoint.clone(),
        publish: transport.publish_endpoint.clone(),
        http: http.as_ref().map(|(addr, _)| addr.to_string()),
    };
    tracing::info!(router = %bound.router, publish = %bound.publish, boot_id = core.boot_id(), "broker listening");
    on_bound(&bound)?;
    // Replies to requests from inside the broker (the HTTP API), by request id.
    let mut internal_pending: HashMap<u64, tokio::sync::oneshot::Sender<jobcast_protocol::Reply>> =
        HashMap::new();
    let mut next_internal_id: u64 = 1;
    let mut opener = Opener::new(
        config.max_frame_bytes,
        config.max_clock_skew.as_millis() as u64,
    )
    .not_before(now_us() / 1_000);
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
            ready = transport.sockets.readable() => {
                if let Err(e) = ready {
                    break Err(e).context("the request socket failed");
                }
                transport.sockets.read_into(&mut batch, MAX_BATCH);
            }
            first = transport.events.recv() => {
                let Some(first) = first else { break Ok(()) };
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match transport.events.try_recv() {
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
        for incoming in batch.drain(..) {
            if fatal.is_some() {
                continue;
            }
            let (peer, payload) = match incoming {
                Incoming::Request { peer, payload } => (peer, payload),
                Incoming::Refused { reason, detail } => {
                    core.note_rejection(reason);
                    rejections.note(reason, &detail);
                    continue;
                }
                Incoming::Connection { opened } => {
                    core.note_connection(opened);
                    continue;
                }
            };
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
        for InternalRequest {
            request,
            actor,
            reply,
        } in internal_batch.drain(..)
        {
            if fatal.is_some() {
                break;
            }
            let id = next_internal_id;
            next_internal_id += 1;
            internal_pending.retain(|_, waiter| !waiter.is_closed());
            internal_pending.insert(id, reply);
            if let Err(e) = core.handle_as(
                &INTERNAL_PEER.to_vec(),
                crate::core::ADMIN,
                &actor,
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
        transport
            .sockets
            .send(outgoing(&config.keys, out, refusals));
    };
    drop(transport);
    if let Some((_, task)) = http {
        task.abort();
    }
    let flushed = tokio::task::block_in_place(|| core.store_mut().flush());
    result?;
    flushed.context("final store flush failed")?;
    tracing::info!("broker stopped");
    Ok(())
}

/// The batch's replies (sealed), refusals and events, to send.
fn outgoing(keys: &Keys, out: Outbox, refusals: Vec<(PeerId, Refusal)>) -> Vec<Outgoing> {
    let now_ms = now_us() / 1_000;
    let mut batch = Vec::with_capacity(out.replies.len() + refusals.len() + out.events.len());
    for reply in out.replies {
        let Some(secret) = keys.for_sender(&reply.to) else {
            continue;
        };
        let frame = seal(
            BROKER,
            &reply.to,
            secret,
            &Body::Reply {
                id: reply.id,
                reply: reply.reply,
            },
            now_ms,
        );
        batch.push(Outgoing::Reply {
            peer: reply.peer,
            frame,
            to: reply.to,
        });
    }
    for (peer, refusal) in refusals {
        batch.push(Outgoing::Reply {
            peer,
            frame: refusal.encode(),
            to: "unauthenticated peer".to_string(),
        });
    }
    for (topic, event) in out.events {
        batch.push(Outgoing::Publish {
            topic,
            event: encode_event(&event),
        });
    }
    batch
}
