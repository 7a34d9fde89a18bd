//! The broker's I/O shell: the loop that takes a batch of requests (sockets and HTTP
//! API), opens and hands them to the core, hands the batch's writes to the store to
//! commit (group commit), and takes the next batch while they commit; a batch's answers
//! and events go out once it is durable. Everything else the shell does has a module:
//! `start` (binding), `frames` (opening and sealing), `outage` (a failed store),
//! `space` (free disk), `reload` (new settings), `clock_watch` (steps of the wall
//! clock), `api_calls` (the HTTP API's requests).

mod api_calls;
mod backup;
mod clock_watch;
mod frames;
mod outage;
mod reads;
mod reload;
mod service_manager;
mod space;
mod standby;
mod standby_view;
mod start;

use crate::config::{BrokerConfig, Keys};
use crate::reload::{LiveSettings, Reloading};
use crate::sockets::{Incoming, Listeners};
use crate::store::{Store, StoreError};
use anyhow::{Context, Result};
use api_calls::ApiCalls;
use clock_watch::ClockWatch;
use frames::{outgoing, PreviousKeyPeers, RejectionLog};
use jobcast_core::{Core, Outbox, PeerId, ReplyTo};
use jobcast_protocol::envelope::{Opener, Refusal};
use outage::ReopenDelay;
use space::SpaceCheck;
pub use standby::serve_elected;
pub use start::Bound;
use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Most requests taken at once when the store is keeping up.
const MAX_BATCH: usize = 256;
/// Most requests in a batch that grew while the store was busy: requests that arrive
/// while both commits are in flight join the next batch, so a slower store (a database
/// a round trip away) gets more per commit instead of a queue in front of it.
const MAX_GROWN_BATCH: usize = 512;
/// Batches handed to the store and not yet durable, at most: one committing while the
/// next is applied. A third waits, so a slow store slows intake rather than growing
/// queues.
const MAX_IN_FLIGHT: usize = 2;
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

/// Runs the broker until `shutdown`. `reopen` builds the core again from the store, as a
/// start does: after a failed write the broker answers "unavailable" until it succeeds.
/// Called on a current-thread runtime (the loop's).
pub async fn serve<S: Store + 'static>(
    core: Core<S>,
    mut reopen: impl FnMut(u64) -> Result<Core<S>>,
    setup: Setup<'_>,
    on_bound: impl FnOnce(&Bound) -> Result<()>,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let replay_floors = crate::replay_floors::ReplayFloors::load(core.store())
        .context("cannot read the replay floors from the store")?;
    tracing::info!(boot_id = %core.boot_id(), "state read from the store");
    let (mut server, http) = Server::start(
        replay_floors,
        crate::http::BrokerRole::Alone,
        setup,
        on_bound,
    )
    .await?;
    tokio::pin!(shutdown);
    let mut core = core;
    let result = loop {
        match server.run(&mut core, shutdown.as_mut()).await {
            Ok(Stopped::StoreFailed(error)) => {
                // Like a kill at this point, without the exit: what the failed batch
                // and the batches after it did is not acknowledged, and the state is
                // read again from the store.
                server.forget_in_flight();
                server.let_go_of_held_reads(&mut core, &outage::unavailable(&error));
                drop(core);
                match server.outage(&error, &mut reopen, shutdown.as_mut()).await {
                    Ok(Some(reopened)) => core = reopened,
                    Ok(None) => break Ok(None),
                    Err(e) => break Err(e),
                }
            }
            Ok(Stopped::Shutdown) => break Ok(Some(core)),
            // Without a tenure the lease is never lost.
            Ok(Stopped::LeaseLost) => break Ok(Some(core)),
            Err(e) => break Err(e),
        }
    };
    server.service_manager.stopping();
    drop(server);
    if let Some((_, task)) = http {
        task.abort();
    }
    if let Some(mut core) = result? {
        save_and_close(&mut core).context("final store flush failed")?;
    }
    tracing::info!("broker stopped");
    Ok(())
}

/// At a stop: what the core has not written yet is saved, and the store closed cleanly.
fn save_and_close<S: Store>(core: &mut Core<S>) -> Result<(), StoreError> {
    core.save_before_stop(now_us())?;
    core.store_mut().close_cleanly()
}

/// What a server starts with besides its store.
pub struct Setup<'a> {
    pub config: &'a BrokerConfig,
    /// The runtime the HTTP side and the checks of connecting keys run on, away from
    /// the loop's.
    pub side: &'a tokio::runtime::Handle,
    /// How to read the settings again, and the SIGHUPs that ask for it.
    pub reloading: Reloading,
}

/// Why the serving loop returned.
enum Stopped {
    Shutdown,
    /// A store write or flush failed: the core's state may be ahead of the store.
    StoreFailed(StoreError),
    /// This broker's lease as the leader was lost, or could have run out: it must stop
    /// acting at once.
    LeaseLost,
}

/// The server loop's state: the core, the sockets, and what a batch needs on its way
/// through.
struct Server {
    metrics: crate::metrics::Metrics,
    /// systemd (or another manager speaking its notify protocol), when there is one.
    service_manager: service_manager::ServiceManager,
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
    listeners: Listeners,
    /// Calls from the HTTP API.
    api_calls: ApiCalls,
    live: crate::http::LiveFeed,
    notifier: crate::notify::Notifier,
    opener: Opener,
    previous_key_peers: PreviousKeyPeers,
    clock: ClockWatch,
    /// Kept past frames sealed ahead of this clock, so that no next process takes them again.
    replay_floors: crate::replay_floors::ReplayFloors,
    rejections: RejectionLog,
    batch: Vec<Incoming>,
    space: SpaceCheck,
    reopen_delay: ReopenDelay,
    /// Wakes the loop at the core's next deadline, to the microsecond.
    deadline: crate::deadline::Deadline,
    /// Batches handed to the store, oldest first, with what they produced.
    in_flight: std::collections::VecDeque<InFlight>,
    /// The store tells each commit's outcome here, in order.
    commits_told: tokio::sync::mpsc::UnboundedSender<Result<(), StoreError>>,
    commits: tokio::sync::mpsc::UnboundedReceiver<Result<(), StoreError>>,
    /// Listings and logs read away from the loop.
    reads: reads::Reads,
    /// Several brokers: until when this one may act as the leader (the lease's keeper
    /// moves it on; `None` inside: lost). `None`: one broker, always acting.
    acting_until: Option<tokio::sync::watch::Receiver<Option<Instant>>>,
    /// Several brokers: the lease and the brokers seen, for `status` (given to the core
    /// when it changes).
    leadership: Option<tokio::sync::watch::Receiver<crate::election::Renewed>>,
    /// The part this broker plays, for `/healthz` and `/metrics`.
    role: tokio::sync::watch::Sender<crate::http::BrokerRole>,
}

/// What one batch produced, to send once it is durable.
struct Produced {
    out: Outbox,
    refusals: Vec<(PeerId, Refusal)>,
    /// The live views' changes as of this batch (taken when it was applied: a later
    /// batch's are not durable yet when this one is sent).
    changes: Option<jobcast_core::ChangeSet>,
    /// A reader of the store as this batch left it, for its reads (`out.listings`,
    /// `out.logs`).
    reader: Option<Box<dyn jobcast_core::store::RunReader>>,
    /// Backups asked for, each with a reader of the store as this batch left it.
    backups: Vec<(
        jobcast_core::BackupAsked,
        Option<Box<dyn jobcast_core::store::RunReader>>,
    )>,
    /// Its replies to peers, refusals and events, sealed while its commit was under way
    /// (`Server::seal_ahead`); sent before whatever `out` still holds.
    sealed: Vec<crate::sockets::Outgoing>,
}

/// A batch handed to the store, waiting to be durable before what it produced is sent.
struct InFlight {
    produced: Produced,
    started: Instant,
    /// How long applying it took.
    handled: Duration,
    requests: usize,
    /// Keys a reload in this batch read, put in force once its replies are sealed with
    /// the keys their requests came under. The next batch is opened with them, so it
    /// waits until this one is sent.
    new_keys: Option<Keys>,
}

/// What woke the loop.
enum Woke {
    Shutdown,
    /// Requests, or a deadline of the core.
    Work,
    /// The oldest batch in flight is durable (or failed).
    Committed(Result<(), StoreError>),
    /// A read made away from the loop is ready to answer.
    Read(Box<reads::Found>),
    /// The leader's lease is lost, or could have run out.
    LeaseLost,
}

/// A commit's outcome as received from the committer.
fn commit_outcome(received: Option<Result<(), StoreError>>) -> Result<(), StoreError> {
    // The sender is ours: its closing is not expected.
    received.unwrap_or_else(|| Err(StoreError::Engine("the commit channel closed".into())))
}

/// What waiting for a commit while the batch grows ended with.
enum Grown {
    /// The oldest commit in flight ended so.
    Committed(Result<(), StoreError>),
    /// Requests were read into the batch.
    Read,
    /// The leader's lease is lost, or could have run out.
    LeaseLost,
}

impl Server {
    /// Take a batch, apply it, hand it to the store to commit, and send what each batch
    /// produced once it is durable; until shutdown or a store failure.
    async fn run<S: Store>(
        &mut self,
        core: &mut Core<S>,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Stopped> {
        loop {
            self.service_manager.alive();
            while self.in_flight.len() >= MAX_IN_FLIGHT
                || self
                    .in_flight
                    .back()
                    .is_some_and(|batch| batch.new_keys.is_some())
            {
                let outcome = match self.grow_batch().await? {
                    Grown::Committed(outcome) => outcome,
                    Grown::Read => continue,
                    Grown::LeaseLost => return Ok(Stopped::LeaseLost),
                };
                if let Err(e) = self.release(core, outcome) {
                    return Ok(Stopped::StoreFailed(e));
                }
            }
            match self.take_batch(core, shutdown.as_mut()).await? {
                Woke::Shutdown => {
                    // What was acknowledged to the store is answered before stopping.
                    while !self.in_flight.is_empty() {
                        let outcome = tokio::select! {
                            outcome = self.commits.recv() => commit_outcome(outcome),
                            // Hanging commits of a leader cut off are not waited for.
                            () = standby::lease_ends(&mut self.acting_until) => return Ok(Stopped::LeaseLost),
                        };
                        if let Err(e) = self.release(core, outcome) {
                            return Ok(Stopped::StoreFailed(e));
                        }
                    }
                    return Ok(Stopped::Shutdown);
                }
                Woke::Committed(outcome) => {
                    if let Err(e) = self.release(core, outcome) {
                        return Ok(Stopped::StoreFailed(e));
                    }
                    continue;
                }
                Woke::Read(found) => {
                    self.answer_read(core, *found);
                    continue;
                }
                Woke::LeaseLost => return Ok(Stopped::LeaseLost),
                Woke::Work => {}
            }
            self.space.check(core);
            let started = Instant::now();
            let requests = self.batch.len();
            let produced = match self.apply(core, now_us()) {
                Ok(produced) => produced,
                Err(e) => return Ok(Stopped::StoreFailed(e)),
            };
            self.start_commit(core, produced, started, requests);
        }
    }

    /// While the store is busy: requests that arrive join the next batch (up to
    /// [`MAX_GROWN_BATCH`]) until the oldest commit in flight ends. A leader whose lease
    /// could run out stops waiting: commits that hang (a database cut off) must not keep
    /// it acting.
    async fn grow_batch(&mut self) -> Result<Grown> {
        let room = self.batch.len() < MAX_GROWN_BATCH;
        tokio::select! {
            biased;
            () = standby::lease_ends(&mut self.acting_until) => Ok(Grown::LeaseLost),
            outcome = self.commits.recv() => Ok(Grown::Committed(commit_outcome(outcome))),
            ready = self.listeners.sockets.readable(), if room => {
                ready.context("the request socket failed")?;
                self.listeners.sockets.read_into(&mut self.batch, MAX_GROWN_BATCH);
                Ok(Grown::Read)
            }
        }
    }

    /// Group commit: the batch's writes go to the store, which makes them durable while
    /// the loop goes on; what the batch produced waits for that.
    fn start_commit<S: Store>(
        &mut self,
        core: &mut Core<S>,
        produced: Produced,
        started: Instant,
        requests: usize,
    ) {
        let handled = started.elapsed();
        let told = self.commits_told.clone();
        core.store_mut().start_flush(Box::new(move |outcome| {
            let _ = told.send(outcome);
        }));
        let mut produced = produced;
        self.seal_ahead(&mut produced);
        self.in_flight.push_back(InFlight {
            produced,
            started,
            handled,
            requests,
            new_keys: self.new_keys.take(),
        });
    }

    /// Seals what a batch sends to peers while its commit is under way rather than once
    /// it is durable: a burst's replies (1,000 grants in one) took a few ms to encode
    /// and seal after the commit, on the path from a tick to its run's start. Nothing is
    /// sent before the commit ends (a failed one drops them). The keys are those the
    /// batch will be sent under: a batch that puts new keys in force is sent before the
    /// next one is opened, so none is in flight ahead of this one (checked all the same).
    fn seal_ahead(&self, produced: &mut Produced) {
        if self.in_flight.iter().any(|batch| batch.new_keys.is_some()) {
            return;
        }
        let out = &mut produced.out;
        // The API's replies go back in-process, when the batch is sent.
        let (api_replies, peer_replies): (Vec<_>, Vec<_>) =
            out.replies.drain(..).partition(|r| r.to == ReplyTo::Api);
        out.replies = api_replies;
        let to_peers = Outbox {
            replies: peer_replies,
            events: std::mem::take(&mut out.events),
            ..Outbox::default()
        };
        produced.sealed = outgoing(
            &self.running.keys,
            &self.previous_key_peers,
            to_peers,
            std::mem::take(&mut produced.refusals),
        );
    }

    /// The oldest batch in flight is durable (or failed): sends what it produced.
    fn release<S: Store>(
        &mut self,
        core: &mut Core<S>,
        outcome: Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let Some(batch) = self.in_flight.pop_front() else {
            return outcome;
        };
        core.store_mut().commit_told();
        let took = batch.started.elapsed();
        let flushed = took.saturating_sub(batch.handled);
        self.metrics.observe_flush(flushed);
        // Batches over 20 ms happen on a busy disk (docs/BENCHMARKS.md): worth a look
        // when tuning, not an operator's attention, unless one takes far longer.
        let (requests, handled_us, flushed_us) = (
            batch.requests,
            batch.handled.as_micros() as u64,
            flushed.as_micros() as u64,
        );
        if took > VERY_SLOW_BATCH {
            tracing::warn!(
                requests,
                handled_us,
                flushed_us,
                "very slow batch: is the store overloaded?"
            );
        } else if took > SLOW_BATCH {
            tracing::debug!(requests, handled_us, flushed_us, "slow batch");
        }
        outcome?;
        let mut produced = batch.produced;
        for (asked, reader) in produced.backups.drain(..) {
            backup::start(asked, reader, self.reads.tell.clone());
        }
        if !produced.out.listings.is_empty()
            || !produced.out.logs.is_empty()
            || produced.out.oldest.is_some()
        {
            match produced.reader.take() {
                Some(reader) => {
                    let asked = reads::Asked {
                        listings: std::mem::take(&mut produced.out.listings),
                        logs: std::mem::take(&mut produced.out.logs),
                        oldest: produced.out.oldest.take(),
                    };
                    self.reads.read(reader, asked);
                }
                None => {
                    if let Some(asked) = produced.out.oldest.take() {
                        // The store could not give a reader after all: the walk tries
                        // again in a while.
                        let no_reader = StoreError::Unsupported("no reader of the store");
                        core.oldest_runs_found(asked, Err(no_reader), now_us());
                    }
                    core.answer_reads(&mut produced.out)?
                }
            }
        }
        self.send(produced, batch.new_keys);
        Ok(())
    }

    /// Answers a read made away from the loop.
    fn answer_read<S: Store>(&mut self, core: &mut Core<S>, found: reads::Found) {
        let unreadable = |e: StoreError| {
            tracing::warn!(error = %e, "a read of the store failed");
            jobcast_protocol::Reply::Error {
                code: jobcast_protocol::ErrorCode::Unavailable,
                message: format!("the store could not be read ({e}); try again"),
            }
        };
        let (to, id, reply) = match found {
            reads::Found::Listing(asked, found) => (
                asked.to,
                asked.id,
                found.map_or_else(unreadable, |listing| {
                    core.listing_reply(&asked.filter, listing)
                }),
            ),
            reads::Found::Log(asked, found) => (
                asked.to,
                asked.id,
                found.map_or_else(unreadable, |chunks| {
                    jobcast_core::log_reply(*asked.run, &chunks, asked.offset, asked.waited)
                }),
            ),
            reads::Found::Backup(asked, reply) => (asked.to, asked.id, *reply),
            reads::Found::Oldest(asked, found) => {
                core.oldest_runs_found(asked, found, now_us());
                return;
            }
        };
        let mut out = Outbox::default();
        out.reply(&to, id, reply);
        self.send_replies(out);
    }

    /// Sends replies made outside a batch (nothing of them waits for a commit).
    fn send_replies(&mut self, out: Outbox) {
        self.send(
            Produced {
                out,
                refusals: Vec::new(),
                changes: None,
                reader: None,
                backups: Vec::new(),
                sealed: Vec::new(),
            },
            None,
        );
    }

    /// The core goes (its store failed, or its lease is lost): the log reads it held are
    /// answered `reply`, which says to ask again, rather than left to their client's
    /// timeout. Nothing of the store is read or acknowledged by it.
    fn let_go_of_held_reads<S: Store>(
        &mut self,
        core: &mut Core<S>,
        reply: &jobcast_protocol::Reply,
    ) {
        let mut out = Outbox::default();
        for (to, id) in core.let_go_of_held_reads() {
            out.reply(&to, id, reply.clone());
        }
        if !out.replies.is_empty() {
            self.send_replies(out);
        }
    }

    /// After a store failure: the batches in flight are never sent, and outcomes still to
    /// come for them go to a channel no one reads.
    fn forget_in_flight(&mut self) {
        self.in_flight.clear();
        let (told, commits) = tokio::sync::mpsc::unbounded_channel();
        self.commits_told = told;
        self.commits = commits;
    }

    /// Waits for requests (or the next deadline of the core) and takes what is waiting,
    /// up to a batch; false at shutdown.
    async fn take_batch<S: Store>(
        &mut self,
        core: &Core<S>,
        shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<Woke> {
        let longest = self.service_manager.longest_sleep(MAX_SLEEP);
        let wake_at_us = core
            .next_wakeup_us()
            .min(now_us() + longest.as_micros() as u64);
        let waiting_for_commit = !self.in_flight.is_empty();
        // Requests that arrived while the store was busy are taken with what is waiting
        // now, without waiting for more.
        let grown = !self.batch.is_empty();
        tokio::select! {
            biased;
            _ = shutdown => return Ok(Woke::Shutdown),
            // A leader that may no longer act stops before anything else.
            () = standby::lease_ends(&mut self.acting_until) => return Ok(Woke::LeaseLost),
            // First: however busy the sockets are, answers that are ready go out.
            Some(outcome) = self.commits.recv(), if waiting_for_commit => {
                return Ok(Woke::Committed(outcome));
            }
            Some(found) = self.reads.found.recv() => return Ok(Woke::Read(Box::new(found))),
            Some(()) = self.api_calls.take(MAX_BATCH) => {}
            // Before the sockets: however busy they are, a reload is not put off.
            Some(()) = self.reloading.hangups.recv() => {
                tracing::info!("SIGHUP: reading the settings again");
                self.hangup = true;
            }
            () = std::future::ready(()), if grown => {
                self.listeners.sockets.read_into(&mut self.batch, MAX_GROWN_BATCH);
            }
            ready = self.listeners.sockets.readable() => {
                ready.context("the request socket failed")?;
                self.listeners.sockets.read_into(&mut self.batch, MAX_BATCH);
            }
            ready = self.listeners.sockets.subscriptions_waiting() => {
                ready.context("the publish socket failed")?;
                self.listeners.take_subscriptions(&mut self.batch);
            }
            first = self.listeners.events.recv() => {
                let Some(first) = first else { return Ok(Woke::Shutdown) };
                self.batch.push(first);
                while self.batch.len() < MAX_BATCH {
                    match self.listeners.events.try_recv() {
                        Ok(next) => self.batch.push(next),
                        Err(_) => break,
                    }
                }
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
        Ok(Woke::Work)
    }

    /// Opens every frame of the batch and hands the requests to the core, then lets the
    /// core do its time-driven work. Nothing is durable or sent yet.
    fn apply<S: Store>(&mut self, core: &mut Core<S>, now: u64) -> Result<Produced, StoreError> {
        if let Some(leadership) = &mut self.leadership {
            if leadership.has_changed().unwrap_or(false) {
                core.set_leadership(Some(leadership.borrow_and_update().clone()));
            }
        }
        // Changes are noted only while a live view listens: one that connects meanwhile
        // reads its snapshot in a later batch.
        core.track_changes(self.live.has_clients());
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
            match self.open_request(&peer, &payload, now / 1_000, &mut refusals, &mut out) {
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
                    if let jobcast_protocol::Request::Worker(request) = &opened.request {
                        self.metrics.count_worker_request(request);
                    }
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
        self.api_calls.hand_to(core, now, &mut out)?;
        if std::mem::take(&mut self.hangup) || !out.reloads.is_empty() {
            self.reload(core, &mut out)?;
        }
        core.tick(now, &mut out)?;
        let changes = if self.live.has_clients() {
            Some(core.take_changes(now)?)
        } else {
            core.clear_changes();
            None
        };
        // Taken now: the store as this batch leaves it, before the next one writes.
        let reader = match out.listings.is_empty() && out.logs.is_empty() && out.oldest.is_none() {
            true => None,
            false => core.store().reader(),
        };
        let backups = std::mem::take(&mut out.backups)
            .into_iter()
            .map(|asked| (asked, core.store().reader()))
            .collect();
        Ok(Produced {
            out,
            refusals,
            changes,
            reader,
            backups,
            sealed: Vec::new(),
        })
    }

    /// Sends what the batch produced: notifications, live-view changes, the API's
    /// replies in-process, and the rest over the sockets.
    fn send(&mut self, produced: Produced, new_keys: Option<Keys>) {
        let Produced {
            mut out,
            refusals,
            changes,
            mut sealed,
            ..
        } = produced;
        for notification in out.notifications.drain(..) {
            self.notifier.send(notification);
        }
        for observation in out.observations.drain(..) {
            self.metrics.observe(observation);
        }
        // Live views hear of changes only once they are durable.
        if let Some(changes) = changes {
            self.live.publish(changes, now_us() / 1_000);
        }
        // The API's replies go back in-process; the rest are sealed and sent.
        let (api_replies, peer_replies): (Vec<_>, Vec<_>) =
            out.replies.drain(..).partition(|r| r.to == ReplyTo::Api);
        out.replies = peer_replies;
        self.api_calls.answer(api_replies.into_iter());
        sealed.extend(outgoing(
            &self.running.keys,
            &self.previous_key_peers,
            out,
            refusals,
        ));
        self.listeners.sockets.send(sealed);
        // Publishing takes in the subscriptions that arrived meanwhile: judged now.
        self.listeners.take_subscriptions(&mut self.batch);
        if let Some(keys) = new_keys {
            self.live_settings.keys.send_replace(keys.clone());
            self.running.keys = keys;
        }
    }
}
