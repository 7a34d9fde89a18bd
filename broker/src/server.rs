//! The broker's I/O shell: binds the sockets, checks every frame, feeds the core in
//! batches, flushes the store once per batch (group commit), then answers and publishes.

use crate::config::{BrokerConfig, Keys};
use crate::http::{CoreHandle, InternalRequest};
use crate::reload::{LiveSettings, Reloading};
use crate::store::{Store, StoreError};
use crate::transport::{Incoming, Outgoing, Settings, Transport};
use anyhow::{Context, Result};
use jobcast_core::{Core, DiskChange, Outbox, PeerId, ReplyTo};
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
const VERY_SLOW_BATCH: Duration = Duration::from_secs(1);
/// The longest the loop sleeps (a step of the wall clock also wakes it).
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

/// Runs the broker until `shutdown`. `reopen` builds the core again from the store, as a
/// start does: after a failed write the broker answers "unavailable" until it succeeds.
pub async fn serve<S: Store + 'static>(
    core: Core<S>,
    mut reopen: impl FnMut(u64) -> Result<Core<S>>,
    config: &BrokerConfig,
    reloading: Reloading,
    on_bound: impl FnOnce(&Bound) -> Result<()>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let live_settings = LiveSettings::new(config);
    let transport = Transport::start(&Settings {
        router: config.router.clone(),
        publish: config.publish.clone(),
        max_frame_bytes: config.max_frame_bytes,
        peer_timeout: config.peer_timeout,
        keys: live_settings.keys.subscribe(),
    })?;
    let (internal_tx, internal) = mpsc::channel::<InternalRequest>(1024);
    let live = crate::http::LiveFeed::new();
    let metrics = crate::metrics::Metrics::default();
    let http = start_http(
        config,
        CoreHandle::new(internal_tx),
        live.clone(),
        live_settings.api_tokens.subscribe(),
        metrics.clone(),
    )
    .await?;
    let bound = Bound {
        router: transport.router_endpoint.clone(),
        publish: transport.publish_endpoint.clone(),
        http: http.as_ref().map(|(addr, _)| addr.to_string()),
    };
    tracing::info!(router = %bound.router, publish = %bound.publish, boot_id = core.boot_id(), "broker listening");
    on_bound(&bound)?;
    let replay_floors = crate::replay_floors::ReplayFloors::load(core.store())
        .context("cannot read the replay floors from the store")?;
    let mut server = Server {
        deadline: crate::deadline::Deadline::new().context("cannot create the loop's timer")?,
        space: SpaceCheck::new(config),
        reopen_delay: ReopenDelay::new(),
        opener: Opener::new(
            config.max_frame_bytes,
            config.max_clock_skew.as_millis() as u64,
        )
        .not_before(now_us() / 1_000)
        .sender_floors(replay_floors.floors()),
        replay_floors,
        previous_key_peers: PreviousKeyPeers::default(),
        clock: ClockWatch::new(),
        notifier: crate::notify::Notifier::start(config.webhooks.clone(), Duration::from_secs(1)),
        metrics,
        running: config.clone(),
        reloading,
        live_settings,
        hangup: false,
        new_keys: None,
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
    let mut core = core;
    let result = loop {
        match server.run(&mut core, shutdown.as_mut()).await {
            Ok(Stopped::StoreFailed(error)) => {
                // Like a kill at this point, without the exit: what the failed batch
                // did is not acknowledged, and the state is read again from the store.
                drop(core);
                match server.outage(&error, &mut reopen, shutdown.as_mut()).await {
                    Ok(Some(reopened)) => core = reopened,
                    Ok(None) => break Ok(None),
                    Err(e) => break Err(e),
                }
            }
            Ok(Stopped::Shutdown) => break Ok(Some(core)),
            Err(e) => break Err(e),
        }
    };
    drop(server);
    if let Some((_, task)) = http {
        task.abort();
    }
    if let Some(mut core) = result? {
        tokio::task::block_in_place(|| core.store_mut().close_cleanly())
            .context("final store flush failed")?;
    }
    tracing::info!("broker stopped");
    Ok(())
}

/// Why the serving loop returned.
enum Stopped {
    Shutdown,
    /// A store write or flush failed: the core's state may be ahead of the store.
    StoreFailed(StoreError),
}

/// How often free space in the data directory is looked at while requests flow.
const SPACE_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// How soon to try opening the store again after a failure: doubling while it fails, and
/// carried over to a failure soon after a recovery, so that a disk that fills up again at
/// once does not have the broker reopen its store in a tight loop.
struct ReopenDelay {
    after_recovery: Duration,
    recovered_at: Option<Instant>,
}

impl ReopenDelay {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);
    /// A store that has worked this long since its recovery starts over at `FIRST`.
    const STABLE: Duration = Duration::from_secs(60);

    fn new() -> ReopenDelay {
        ReopenDelay {
            after_recovery: Self::FIRST,
            recovered_at: None,
        }
    }

    /// The wait before the first attempt of an outage.
    fn first(&self) -> Duration {
        match self.recovered_at {
            Some(at) if at.elapsed() < Self::STABLE => self.after_recovery,
            _ => Self::FIRST,
        }
    }

    fn after_failure(delay: Duration) -> Duration {
        (delay * 2).min(Self::MAX)
    }

    fn recovered(&mut self, last_delay: Duration) {
        self.recovered_at = Some(Instant::now());
        self.after_recovery = Self::after_failure(last_delay);
    }
}

/// Free space in the data directory, read now and then (a `statvfs` call).
struct SpaceCheck {
    dir: std::path::PathBuf,
    reserve_bytes: u64,
    next: Instant,
    /// The last failure to read it, logged once.
    failing: bool,
}

impl SpaceCheck {
    fn new(config: &BrokerConfig) -> SpaceCheck {
        SpaceCheck {
            dir: config.data_dir.clone(),
            reserve_bytes: config.min_free_bytes,
            next: Instant::now(),
            failing: false,
        }
    }

    /// Reads the free space if it is time, and tells the core.
    fn check<S: Store>(&mut self, core: &mut Core<S>) {
        let now = Instant::now();
        if self.reserve_bytes == 0 || now < self.next {
            return;
        }
        self.next = now + SPACE_CHECK_INTERVAL;
        let free = match rustix::fs::statvfs(&self.dir) {
            Ok(stat) => stat.f_bavail.saturating_mul(stat.f_frsize),
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(dir = %self.dir.display(), error = %e, "cannot read the free space of the data directory");
                }
                return;
            }
        };
        self.failing = false;
        match core.note_free_space(free, self.reserve_bytes) {
            DiskChange::BecameLow(low) => tracing::error!(
                free_bytes = low.free_bytes,
                reserve_bytes = low.reserve_bytes,
                "{}",
                low.describe()
            ),
            DiskChange::Recovered { free_bytes } => {
                tracing::warn!(
                    free_bytes,
                    "free space is back over the reserve: taking new work again"
                )
            }
            DiskChange::Unchanged => {}
        }
    }
}

/// Binds the dashboard and API listener, if configured, and serves it on a task.
async fn start_http(
    config: &BrokerConfig,
    core: CoreHandle,
    live: crate::http::LiveFeed,
    tokens: tokio::sync::watch::Receiver<std::sync::Arc<Vec<crate::config::ApiToken>>>,
    metrics: crate::metrics::Metrics,
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
    let extras = crate::http::Extras {
        origins,
        metrics,
        data_dir: config.data_dir.clone(),
    };
    let app = crate::http::router(core, tokens, live, extras);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(Some((bound_http, task)))
}

/// The server loop's state: the core, the sockets, and what a batch needs on its way
/// through.
struct Server {
    metrics: crate::metrics::Metrics,
    /// The settings in force: as at start, with what reloads changed. Its keys are those
    /// replies are sealed with and requests opened with.
    running: BrokerConfig,
    reloading: Reloading,
    live_settings: LiveSettings,
    /// A SIGHUP came: reload with the next batch.
    hangup: bool,
    /// Keys a reload read, put in force once the batch's replies are sealed with the
    /// keys their requests came under.
    new_keys: Option<Keys>,
    transport: Transport,
    /// Requests from the HTTP API.
    internal: mpsc::Receiver<InternalRequest>,
    live: crate::http::LiveFeed,
    notifier: crate::notify::Notifier,
    opener: Opener,
    previous_key_peers: PreviousKeyPeers,
    clock: ClockWatch,
    /// Kept past frames sealed ahead of this clock, so that no next process takes them again.
    replay_floors: crate::replay_floors::ReplayFloors,
    rejections: RejectionLog,
    /// Replies owed to the HTTP API, by request id.
    internal_pending: HashMap<u64, tokio::sync::oneshot::Sender<jobcast_protocol::Reply>>,
    next_internal_id: u64,
    batch: Vec<Incoming>,
    internal_batch: Vec<InternalRequest>,
    space: SpaceCheck,
    reopen_delay: ReopenDelay,
    /// Wakes the loop at the core's next deadline, to the microsecond.
    deadline: crate::deadline::Deadline,
}

/// Notices steps of the wall clock: between two readings, the wall clock should move as
/// much as the monotonic clock did.
struct ClockWatch {
    at: Instant,
    wall_us: u64,
}

impl ClockWatch {
    /// Differences under this are drift and scheduling, not a step.
    const STEP_US: i64 = 1_000_000;

    fn new() -> ClockWatch {
        ClockWatch {
            at: Instant::now(),
            wall_us: now_us(),
        }
    }

    /// How far (ms, negative: back) the wall clock stepped since the last reading.
    fn step(&mut self, wall_us: u64) -> Option<i64> {
        let expected = self.wall_us as i64 + self.at.elapsed().as_micros() as i64;
        self.at = Instant::now();
        self.wall_us = wall_us;
        let step_us = wall_us as i64 - expected;
        (step_us.abs() >= Self::STEP_US).then_some(step_us / 1_000)
    }
}

/// A frame opened as a request.
struct OpenedRequest {
    from: String,
    id: u64,
    request: jobcast_protocol::Request,
    /// When the peer sealed it (its clock).
    sealed_ms: u64,
    /// Sealed with a key a reload revoked: answered only with that news.
    revoked: bool,
}

/// Peers (connections) whose last request was sealed with a worker's previous secret,
/// during a rotation: their answers are sealed with it too. Bounded; when full it starts
/// over (a peer then left out gets an answer it cannot open, and asks again).
#[derive(Default)]
struct PreviousKeyPeers(std::collections::HashSet<PeerId>);

impl PreviousKeyPeers {
    const MAX: usize = 4_096;

    fn note(&mut self, peer: &PeerId, by_previous: bool) {
        if !by_previous {
            if !self.0.is_empty() {
                self.0.remove(peer);
            }
            return;
        }
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        self.0.insert(peer.clone());
    }

    fn contains(&self, peer: &PeerId) -> bool {
        self.0.contains(peer)
    }
}

/// What one batch produced, to send once it is durable.
struct Produced {
    out: Outbox,
    refusals: Vec<(PeerId, Refusal)>,
}

impl Server {
    /// Take a batch, apply it, commit it, send what it produced; until shutdown or a
    /// store failure.
    async fn run<S: Store>(
        &mut self,
        core: &mut Core<S>,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Stopped> {
        loop {
            if !self.take_batch(core, shutdown.as_mut()).await? {
                return Ok(Stopped::Shutdown);
            }
            self.space.check(core);
            let started = Instant::now();
            let requests = self.batch.len();
            let produced = match self.apply(core, now_us()) {
                Ok(produced) => produced,
                Err(e) => return Ok(Stopped::StoreFailed(e)),
            };
            if let Err(e) = self.commit(core, started, requests) {
                return Ok(Stopped::StoreFailed(e));
            }
            if let Err(e) = self.send(core, produced) {
                return Ok(Stopped::StoreFailed(e));
            }
        }
    }

    /// After a store failure: answers every request "unavailable" (nothing is done, so
    /// retrying later is safe) while trying to open the store again, more slowly each
    /// time; the core built from it is returned, or `None` at shutdown.
    async fn outage<S: Store>(
        &mut self,
        error: &StoreError,
        reopen: &mut impl FnMut(u64) -> Result<Core<S>>,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Option<Core<S>>> {
        tracing::error!(
            error = %error,
            "store write failed: nothing of the batch was acknowledged; answering \"unavailable\" until the store opens again"
        );
        let message = format!(
            "the broker's store failed ({error}); nothing was done: try again once it is back"
        );
        let mut retry_in = self.reopen_delay.first();
        let mut next_try = tokio::time::Instant::now() + retry_in;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.as_mut() => return Ok(None),
                Some(request) = self.internal.recv() => {
                    let _ = request.reply.send(jobcast_protocol::Reply::Error {
                        code: jobcast_protocol::ErrorCode::Unavailable,
                        message: message.clone(),
                    });
                }
                ready = self.transport.sockets.readable() => {
                    ready.context("the request socket failed")?;
                    self.transport.sockets.read_into(&mut self.batch, MAX_BATCH);
                }
                first = self.transport.events.recv() => {
                    let Some(first) = first else { return Ok(None) };
                    self.batch.push(first);
                }
                _ = tokio::time::sleep_until(next_try) => {
                    let now = now_us();
                    match tokio::task::block_in_place(|| reopen(now)) {
                        Ok(core) => {
                            tracing::warn!("store open again: state read back from it, taking requests");
                            self.reopen_delay.recovered(retry_in);
                            self.space.next = Instant::now();
                            return Ok(Some(core));
                        }
                        Err(e) => {
                            retry_in = ReopenDelay::after_failure(retry_in);
                            tracing::warn!(error = %format!("{e:#}"), retry_in = ?retry_in, "store still unavailable");
                            next_try = tokio::time::Instant::now() + retry_in;
                        }
                    }
                }
            }
            self.answer_unavailable(&message);
        }
    }

    /// Answers each request of the batch with `Unavailable`.
    fn answer_unavailable(&mut self, message: &str) {
        let mut out = Outbox::default();
        let mut refusals = Vec::new();
        let now_ms = now_us() / 1_000;
        for incoming in std::mem::take(&mut self.batch) {
            let Incoming::Request { peer, payload } = incoming else {
                continue;
            };
            if let Ok(opened) = self.open_request(&peer, &payload, now_ms, &mut refusals) {
                out.reply(
                    &ReplyTo::peer(&peer, &opened.from),
                    opened.id,
                    jobcast_protocol::Reply::Error {
                        code: jobcast_protocol::ErrorCode::Unavailable,
                        message: message.to_string(),
                    },
                );
            }
        }
        if !out.replies.is_empty() || !refusals.is_empty() {
            self.transport.sockets.send(outgoing(
                &self.running.keys,
                &self.previous_key_peers,
                out,
                refusals,
            ));
        }
    }

    /// Opens a frame as a request: its sender, id, request and sealing time. A frame refused is logged
    /// (rate-limited) and, when its peer needs to learn why, answered through
    /// `refusals`; the reason comes back for the core's counts.
    fn open_request(
        &mut self,
        peer: &PeerId,
        payload: &[u8],
        now_ms: u64,
        refusals: &mut Vec<(PeerId, Refusal)>,
    ) -> Result<OpenedRequest, &'static str> {
        let keys = &self.running.keys;
        match self
            .opener
            .open_with_either(payload, now_ms, |name| keys.secrets_of(name))
        {
            Ok((opened, by_second)) => match opened.body {
                Body::Request { id, request } => {
                    let revoked = keys.for_sender(&opened.from).is_none();
                    self.previous_key_peers.note(peer, by_second && !revoked);
                    Ok(OpenedRequest {
                        from: opened.from,
                        id,
                        request,
                        sealed_ms: opened.ts_ms,
                        revoked,
                    })
                }
                Body::Reply { .. } => {
                    self.rejections
                        .note("undecodable", "a reply sent to the broker");
                    Err("undecodable")
                }
            },
            Err(rejection) => {
                self.rejections
                    .note(rejection.reason(), &rejection.to_string());
                if let Some(refusal) = Refusal::for_rejection(&rejection) {
                    refusals.push((peer.clone(), refusal));
                }
                Err(rejection.reason())
            }
        }
    }

    /// Waits for requests (or the next deadline of the core) and takes what is waiting,
    /// up to a batch; false at shutdown.
    async fn take_batch<S: Store>(
        &mut self,
        core: &Core<S>,
        shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<bool> {
        let wake_at_us = core
            .next_wakeup_us()
            .min(now_us() + MAX_SLEEP.as_micros() as u64);
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
            Some(()) = self.reloading.hangups.recv() => {
                tracing::info!("SIGHUP: reading the settings again");
                self.hangup = true;
            }
            // Sleep until the core has something to do: the next tick of a job, a
            // heartbeat, a deadline.
            woke = self.deadline.until(wake_at_us) => {
                if let Err(e) = woke {
                    // Not expected of a timerfd; the millisecond timer still keeps time.
                    tracing::warn!(error = %e, "the precise timer failed; using tokio's");
                    let left = wake_at_us.saturating_sub(now_us());
                    tokio::time::sleep(Duration::from_micros(left)).await;
                }
            }
        }
        Ok(true)
    }

    /// Opens every frame of the batch and hands the requests to the core, then lets the
    /// core do its time-driven work. Nothing is durable or sent yet.
    fn apply<S: Store>(&mut self, core: &mut Core<S>, now: u64) -> Result<Produced, StoreError> {
        let mut out = Outbox::default();
        if let Some(step_ms) = self.clock.step(now) {
            self.opener.clock_stepped(step_ms);
            core.clock_stepped(step_ms, now)?;
        }
        let mut refusals = Vec::new();
        // Taken out and put back, so that its allocation is reused batch after batch.
        let mut batch = std::mem::take(&mut self.batch);
        for incoming in batch.drain(..) {
            let (peer, payload) = match incoming {
                Incoming::Request { peer, payload } => (peer, payload),
                Incoming::Refused { reason, detail } => {
                    core.note_rejection(reason);
                    self.rejections.note(reason, &detail);
                    continue;
                }
                Incoming::Connection { opened } => {
                    core.note_connection(opened);
                    continue;
                }
            };
            match self.open_request(&peer, &payload, now / 1_000, &mut refusals) {
                Ok(opened) if opened.revoked => {
                    core.note_rejection("revoked");
                    core.revoked_worker_told(&opened.from, now);
                    out.reply(
                        &ReplyTo::peer(&peer, &opened.from),
                        opened.id,
                        jobcast_protocol::Reply::Error {
                            code: jobcast_protocol::ErrorCode::Revoked,
                            message: format!(
                                "the key of worker {} was revoked by a reload of the broker's settings",
                                opened.from
                            ),
                        },
                    );
                }
                Ok(opened) => {
                    self.replay_floors.accepted(
                        core.store_mut(),
                        &opened.from,
                        opened.sealed_ms,
                        now / 1_000,
                    )?;
                    core.handle(
                        &peer,
                        &opened.from,
                        opened.id,
                        opened.request,
                        now,
                        &mut out,
                    )?
                }
                Err(reason) => core.note_rejection(reason),
            }
        }
        self.batch = batch;
        for InternalRequest {
            request,
            actor,
            scope,
            reply,
        } in std::mem::take(&mut self.internal_batch)
        {
            let id = self.next_internal_id;
            self.next_internal_id += 1;
            self.internal_pending
                .retain(|_, waiter| !waiter.is_closed());
            self.internal_pending.insert(id, reply);
            core.handle_api(&actor, id, request, &scope, now, &mut out)?;
        }
        if std::mem::take(&mut self.hangup) || !out.reloads.is_empty() {
            self.reload(core, &mut out)?;
        }
        core.tick(now, &mut out)?;
        Ok(Produced { out, refusals })
    }

    /// Reads the settings again and takes their keys, API tokens and webhooks; answers
    /// those who asked with what changed, or why nothing did.
    fn reload<S: Store>(&mut self, core: &mut Core<S>, out: &mut Outbox) -> Result<(), StoreError> {
        let asked = std::mem::take(&mut out.reloads);
        let by: Vec<&str> = asked.iter().map(|a| a.actor.as_str()).collect();
        let reply = match tokio::task::block_in_place(&mut self.reloading.read) {
            Ok(new) => {
                let report = crate::reload::compare(&self.running, &new);
                tracing::info!(
                    ?by,
                    workers_added = ?report.workers_added,
                    workers_removed = ?report.workers_removed,
                    workers_changed = ?report.workers_changed,
                    admin_changed = report.admin_changed,
                    api_tokens = report.api_tokens,
                    webhooks = report.webhooks,
                    "settings reloaded"
                );
                for warning in new.warnings() {
                    tracing::warn!("{warning}");
                }
                if !report.needs_restart.is_empty() {
                    tracing::warn!(settings = ?report.needs_restart, "these settings changed in the file but only take effect at the next start");
                }
                core.set_worker_pools(new.keys.worker_pools.clone());
                self.live_settings
                    .api_tokens
                    .send_replace(std::sync::Arc::new(new.api_tokens.clone()));
                self.notifier =
                    crate::notify::Notifier::start(new.webhooks.clone(), Duration::from_secs(1));
                let (keys, revoked) = new.keys.replacing(&self.running.keys);
                for worker in revoked {
                    tracing::warn!(worker, "worker key revoked: the worker is told at its next request, and its runs are given up");
                    core.revoke_worker(&worker)?;
                }
                self.new_keys = Some(keys);
                self.running.api_tokens = new.api_tokens;
                self.running.webhooks = new.webhooks;
                jobcast_protocol::Reply::Reloaded(report)
            }
            Err(e) => {
                tracing::error!(?by, error = %format!("{e:#}"), "reload refused: the settings in force are unchanged");
                jobcast_protocol::Reply::Error {
                    code: jobcast_protocol::ErrorCode::BadRequest,
                    message: format!(
                        "the settings were not reloaded, those in force are unchanged: {e:#}"
                    ),
                }
            }
        };
        for asked in asked {
            out.reply(&asked.to, asked.id, reply.clone());
        }
        Ok(())
    }

    /// Group commit: everything the batch wrote is durable before anyone hears of it.
    fn commit<S: Store>(
        &mut self,
        core: &mut Core<S>,
        started: Instant,
        requests: usize,
    ) -> Result<(), StoreError> {
        let handled = started.elapsed();
        let flushed = tokio::task::block_in_place(|| core.store_mut().flush());
        let took = started.elapsed();
        self.metrics.observe_flush(took - handled);
        // Batches over 20 ms happen on a busy disk (docs/BENCHMARKS.md): worth a look
        // when tuning, not an operator's attention, unless one takes far longer.
        let (handled_us, flushed_us) = (
            handled.as_micros() as u64,
            (took - handled).as_micros() as u64,
        );
        if took > VERY_SLOW_BATCH {
            tracing::warn!(
                requests,
                handled_us,
                flushed_us,
                "very slow batch: is the disk overloaded?"
            );
        } else if took > SLOW_BATCH {
            tracing::debug!(requests, handled_us, flushed_us, "slow batch");
        }
        flushed
    }

    /// Sends what the batch produced: notifications, live-view changes, the API's
    /// replies in-process, and the rest over the sockets.
    fn send<S: Store>(&mut self, core: &mut Core<S>, produced: Produced) -> Result<(), StoreError> {
        let Produced { mut out, refusals } = produced;
        for notification in out.notifications.drain(..) {
            self.notifier.send(notification);
        }
        for observation in out.observations.drain(..) {
            self.metrics.observe(observation);
        }
        // Live views hear of changes only once they are durable.
        if self.live.has_clients() {
            let changes = core.take_changes()?;
            self.live.publish(changes, now_us() / 1_000);
        } else {
            core.clear_changes();
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
        self.transport.sockets.send(outgoing(
            &self.running.keys,
            &self.previous_key_peers,
            out,
            refusals,
        ));
        if let Some(keys) = self.new_keys.take() {
            self.live_settings.keys.send_replace(keys.clone());
            self.running.keys = keys;
        }
        Ok(())
    }
}

/// The batch's replies (sealed), refusals and events, to send.
fn outgoing(
    keys: &Keys,
    previous_key_peers: &PreviousKeyPeers,
    out: Outbox,
    refusals: Vec<(PeerId, Refusal)>,
) -> Vec<Outgoing> {
    let now_ms = now_us() / 1_000;
    let mut batch = Vec::with_capacity(out.replies.len() + refusals.len() + out.events.len());
    for reply in out.replies {
        let ReplyTo::Peer { peer, name } = reply.to else {
            continue;
        };
        // Sealed with the secret the peer's request came under.
        let secret = if previous_key_peers.contains(&peer) {
            keys.previous.get(&name)
        } else {
            keys.for_sender(&name).or_else(|| keys.revoked.get(&name))
        };
        let Some(secret) = secret else {
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
