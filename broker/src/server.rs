//! The broker's I/O shell: binds the sockets, checks every frame, feeds the core in
//! batches, flushes the store once per batch (group commit), then answers and publishes.

use crate::config::{BrokerConfig, Keys};
use crate::core::{Core, Outbox, PeerId, ReplyTo};
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
    core: Core<S>,
    config: &BrokerConfig,
    on_bound: impl FnOnce(&Bound) -> Result<()>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let transport = Transport::start(&Settings {
        router: config.router.clone(),
        publish: config.publish.clone(),
        max_frame_bytes: config.max_frame_bytes,
        peer_timeout: config.peer_timeout,
        keys: config.keys.clone(),
    })?;
    let (internal_tx, internal) = mpsc::channel::<InternalRequest>(1024);
    let live = crate::http::LiveFeed::new();
    let http = start_http(config, CoreHandle::new(internal_tx), live.clone()).await?;
    let bound = Bound {
        router: transport.router_endpoint.clone(),
        publish: transport.publish_endpoint.clone(),
        http: http.as_ref().map(|(addr, _)| addr.to_string()),
    };
    tracing::info!(router = %bound.router, publish = %bound.publish, boot_id = core.boot_id(), "broker listening");
    on_bound(&bound)?;
    let mut server = Server {
        opener: Opener::new(
            config.max_frame_bytes,
            config.max_clock_skew.as_millis() as u64,
        )
        .not_before(now_us() / 1_000),
        notifier: crate::notify::Notifier::start(config.webhooks.clone(), Duration::from_secs(1)),
        core,
        config,
        transport,
        internal,
        live,
        internal_pending: HashMap::new(),
        next_internal_id: 1,
        rejections: RejectionLog {
            last: HashMap::new(),
        },
        batch: Vec::with_capacity(MAX_BATCH),
        internal_batch: Vec::new(),
    };
    tokio::pin!(shutdown);
    let result = server.run(shutdown).await;
    let Server {
        mut core,
        transport,
        ..
    } = server;
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

/// Binds the dashboard and API listener, if configured, and serves it on a task.
async fn start_http(
    config: &BrokerConfig,
    core: CoreHandle,
    live: crate::http::LiveFeed,
) -> Result<Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>> {
    let Some(addr) = &config.http_listen else {
        return Ok(None);
    };
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
    let app = crate::http::router(core, config.api_tokens.clone(), live, origins);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(Some((bound_http, task)))
}

/// The server loop's state: the core, the sockets, and what a batch needs on its way
/// through.
struct Server<'a, S: Store> {
    core: Core<S>,
    config: &'a BrokerConfig,
    transport: Transport,
    /// Requests from the HTTP API.
    internal: mpsc::Receiver<InternalRequest>,
    live: crate::http::LiveFeed,
    notifier: crate::notify::Notifier,
    opener: Opener,
    rejections: RejectionLog,
    /// Replies owed to the HTTP API, by request id.
    internal_pending: HashMap<u64, tokio::sync::oneshot::Sender<jobcast_protocol::Reply>>,
    next_internal_id: u64,
    batch: Vec<Incoming>,
    internal_batch: Vec<InternalRequest>,
}

/// What one batch produced, to send once it is durable.
struct Produced {
    out: Outbox,
    refusals: Vec<(PeerId, Refusal)>,
}

impl<S: Store> Server<'_, S> {
    /// Take a batch, apply it, commit it, send what it produced; until shutdown.
    async fn run(
        &mut self,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<()> {
        loop {
            if !self.take_batch(shutdown.as_mut()).await? {
                return Ok(());
            }
            let started = Instant::now();
            let requests = self.batch.len();
            let produced = self.apply(now_us())?;
            self.commit(started, requests)?;
            self.send(produced)?;
        }
    }

    /// Waits for requests (or the next deadline of the core) and takes what is waiting,
    /// up to a batch; false at shutdown.
    async fn take_batch(
        &mut self,
        shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<bool> {
        let sleep = Duration::from_micros(self.core.next_wakeup_us().saturating_sub(now_us()))
            .min(MAX_SLEEP);
        tokio::select! {
            biased;
            _ = shutdown => return Ok(false),
            Some(request) = self.internal.recv() => {
                self.internal_batch.push(request);
                while self.internal_batch.len() < MAX_BATCH {
                    match self.internal.try_recv() {
                        Ok(next) => self.internal_batch.push(next),
                        Err(_) => break,
                    }
                }
            }
            ready = self.transport.sockets.readable() => {
                ready.context("the request socket failed")?;
                self.transport.sockets.read_into(&mut self.batch, MAX_BATCH);
            }
            first = self.transport.events.recv() => {
                let Some(first) = first else { return Ok(false) };
                self.batch.push(first);
                while self.batch.len() < MAX_BATCH {
                    match self.transport.events.try_recv() {
                        Ok(next) => self.batch.push(next),
                        Err(_) => break,
                    }
                }
            }
            // Sleep until the core has something to do: the next tick of a job, a
            // heartbeat, a deadline.
            _ = tokio::time::sleep(sleep) => {}
        }
        Ok(true)
    }

    /// Opens every frame of the batch and hands the requests to the core, then lets the
    /// core do its time-driven work. Nothing is durable or sent yet.
    fn apply(&mut self, now: u64) -> Result<Produced> {
        let mut out = Outbox::default();
        let mut refusals = Vec::new();
        // Taken out and put back, so that its allocation is reused batch after batch.
        let mut batch = std::mem::take(&mut self.batch);
        for incoming in batch.drain(..) {
            let (peer, payload) = match incoming {
                Incoming::Request { peer, payload } => (peer, payload),
                Incoming::Refused { reason, detail } => {
                    self.core.note_rejection(reason);
                    self.rejections.note(reason, &detail);
                    continue;
                }
                Incoming::Connection { opened } => {
                    self.core.note_connection(opened);
                    continue;
                }
            };
            let keys = &self.config.keys;
            match self
                .opener
                .open(&payload, now / 1_000, |name| keys.for_sender(name))
            {
                Ok(opened) => match opened.body {
                    Body::Request { id, request } => self
                        .core
                        .handle(&peer, &opened.from, id, request, now, &mut out)
                        .context("store write failed")?,
                    Body::Reply { .. } => {
                        self.core.note_rejection("undecodable");
                        self.rejections
                            .note("undecodable", "a reply sent to the broker");
                    }
                },
                Err(rejection) => {
                    self.core.note_rejection(rejection.reason());
                    self.rejections
                        .note(rejection.reason(), &rejection.to_string());
                    if let Some(refusal) = Refusal::for_rejection(&rejection) {
                        refusals.push((peer, refusal));
                    }
                }
            }
        }
        self.batch = batch;
        for InternalRequest {
            request,
            actor,
            reply,
        } in std::mem::take(&mut self.internal_batch)
        {
            let id = self.next_internal_id;
            self.next_internal_id += 1;
            self.internal_pending
                .retain(|_, waiter| !waiter.is_closed());
            self.internal_pending.insert(id, reply);
            self.core
                .handle_api(&actor, id, request, now, &mut out)
                .context("store write failed")?;
        }
        self.core
            .tick(now, &mut out)
            .context("store write failed")?;
        Ok(Produced { out, refusals })
    }

    /// Group commit: everything the batch wrote is durable before anyone hears of it.
    fn commit(&mut self, started: Instant, requests: usize) -> Result<()> {
        let handled = started.elapsed();
        let flushed = tokio::task::block_in_place(|| self.core.store_mut().flush());
        let took = started.elapsed();
        if took > SLOW_BATCH {
            tracing::info!(
                requests,
                handled_ms = handled.as_secs_f64() * 1e3,
                flushed_ms = (took - handled).as_secs_f64() * 1e3,
                "slow batch"
            );
        }
        flushed.context("store flush failed")
    }

    /// Sends what the batch produced: notifications, live-view changes, the API's
    /// replies in-process, and the rest over the sockets.
    fn send(&mut self, produced: Produced) -> Result<()> {
        let Produced { mut out, refusals } = produced;
        for notification in out.notifications.drain(..) {
            self.notifier.send(notification);
        }
        // Live views hear of changes only once they are durable.
        if self.live.has_clients() {
            let changes = self.core.take_changes().context("store read failed")?;
            self.live.publish(changes);
        } else {
            self.core.clear_changes();
        }
        // The API's replies go back in-process; the rest are sealed and sent.
        let (api_replies, peer_replies): (Vec<_>, Vec<_>) =
            out.replies.drain(..).partition(|r| r.to == ReplyTo::Api);
        out.replies = peer_replies;
        for reply in api_replies {
            if let Some(waiter) = self.internal_pending.remove(&reply.id) {
                let _ = waiter.send(reply.reply);
            }
        }
        self.transport
            .sockets
            .send(outgoing(&self.config.keys, out, refusals));
        Ok(())
    }
}

/// The batch's replies (sealed), refusals and events, to send.
fn outgoing(keys: &Keys, out: Outbox, refusals: Vec<(PeerId, Refusal)>) -> Vec<Outgoing> {
    let now_ms = now_us() / 1_000;
    let mut batch = Vec::with_capacity(out.replies.len() + refusals.len() + out.events.len());
    for reply in out.replies {
        let ReplyTo::Peer { peer, name } = reply.to else {
            continue;
        };
        let Some(secret) = keys.for_sender(&name) else {
            continue;
        };
        let frame = seal(
            BROKER,
            &name,
            secret,
            &Body::Reply {
                id: reply.id,
                reply: reply.reply,
            },
            now_ms,
        );
        batch.push(Outgoing::Reply {
            peer,
            frame,
            to: name,
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
