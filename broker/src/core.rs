//! The broker's pure core: authenticated requests in; replies, events and store writes out.
//!
//! No sockets and no clock: the server passes the current time in microseconds and sends
//! what the [`Outbox`] holds after the store has been flushed. Everything happens on one
//! thread, one request at a time, which is what makes a grant atomic: a run moved to
//! `assigned` by one `Claim` is gone from the queue for the next.

mod scheduling;
mod waiting_claims;

use scheduling::NewRun;
pub use scheduling::{format_ms, Notification, MISFIRE_GRACE_MS};
use waiting_claims::{WaitingClaim, WaitingClaims, MAX_CLAIM_WAIT_MS};

use crate::schedule::Schedule;
use crate::store::{Store, StoreResult};
use jobcast_protocol::envelope::random_nonce;
use jobcast_protocol::logcap::{self, LogCap};
use jobcast_protocol::message::topic;
use jobcast_protocol::{
    jobfile, names, Alert, AlertKind, Assignment, ErrorCode, Event, Heartbeat, JobSpec, JobState,
    KillOutcome, Orders, Overlap, PingAnswer, Register, Reply, Request, RunFilter, RunFinished,
    RunRecord, RunState, StatusReport, Transition, WorkerInfo, WorkerStatus, JOBCAST_VERSION,
};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// The ZeroMQ routing identity of the connection a request came in on.
pub type PeerId = Vec<u8>;

/// The sender name of `jobcastctl`.
pub const ADMIN: &str = "admin";

/// Largest number of runs one listing returns.
pub const MAX_LIST: u32 = 10_000;
/// Largest log slice one `GetLog` reply carries when following.
const MAX_LOG_SLICE: usize = 1 << 20;
/// Most candidates shown for an ambiguous run selector.
const MAX_CANDIDATES: usize = 20;

#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub heartbeat_interval_ms: u64,
    pub worker_timeout_ms: u64,
    /// The pools each restricted worker key may register for; others may use any.
    pub worker_pools: HashMap<String, BTreeSet<String>>,
    /// The most log stored per run, whatever a worker declares.
    pub max_log_bytes: u64,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            heartbeat_interval_ms: 1_000,
            worker_timeout_ms: 10_000,
            worker_pools: HashMap::new(),
            max_log_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutReply {
    pub peer: PeerId,
    /// The peer's name, whose secret signs the reply.
    pub to: String,
    pub id: u64,
    pub reply: Reply,
}

#[derive(Debug, Default)]
pub struct Outbox {
    pub replies: Vec<OutReply>,
    /// (topic, event), deduplicated within one batch.
    pub events: Vec<(String, Event)>,
    /// For the notification webhooks.
    pub notifications: Vec<Notification>,
}

impl Outbox {
    fn reply(&mut self, peer: &PeerId, to: &str, id: u64, reply: Reply) {
        self.replies.push(OutReply {
            peer: peer.clone(),
            to: to.to_string(),
            id,
            reply,
        });
    }

    fn publish(&mut self, topic: String, event: Event) {
        if !self.events.iter().any(|(t, e)| *t == topic && *e == event) {
            self.events.push((topic, event));
        }
    }
}

/// Connections seen by the sockets, for `status`.
#[derive(Debug, Default)]
struct ConnectionCounts {
    opened: u64,
    closed: u64,
}

struct Session {
    peer: PeerId,
    register: Register,
    last_seen_ms: u64,
    /// Runs the broker has handed to this worker and not seen finish.
    runs: BTreeSet<String>,
    draining: bool,
    drain_ordered: bool,
}

/// What the broker keeps of a live run's log to prune it to the cap.
struct LogTrack {
    cap: usize,
    total: u64,
    /// Stored chunks past the head, oldest first: (offset, length).
    tail_chunks: VecDeque<(u64, u64)>,
}

struct PendingPing {
    peer: PeerId,
    id: u64,
    sent_at_us: u64,
    deadline_us: u64,
    answers: BTreeMap<String, Option<(u64, WorkerInfo)>>,
}

pub struct Core<S: Store> {
    store: S,
    config: CoreConfig,
    boot_id: u64,
    booted_at_ms: u64,
    next_alive_ms: u64,
    jobs: BTreeMap<String, JobSpec>,
    /// Runs not yet finished, by id.
    active: HashMap<String, RunRecord>,
    /// The ids of `active`, by job.
    active_by_job: HashMap<String, BTreeSet<String>>,
    /// Queued runs per pool, oldest (lowest seq) first.
    queues: BTreeMap<String, BTreeMap<u64, String>>,
    sessions: BTreeMap<String, Session>,
    workers: BTreeMap<String, WorkerStatus>,
    logs: HashMap<String, LogTrack>,
    pings: BTreeMap<u64, PendingPing>,
    next_ping_id: u64,
    next_seq: u64,
    rejected: BTreeMap<String, u64>,
    connections: ConnectionCounts,
    /// The time of the latest request or tick, in ms and µs.
    clock_ms: u64,
    clock_us: u64,
    schedules: HashMap<String, Schedule>,
    job_states: BTreeMap<String, JobState>,
    /// The next tick of each scheduled job.
    next_fire: scheduling::FireQueue,
    /// Each scheduled job's first tick after it was created (for never-run alerts).
    first_due: HashMap<String, u64>,
    /// Queued runs waiting for their retry back-off: (not before, seq) → id.
    delayed: BTreeMap<(u64, u64), String>,
    disabled_pools: BTreeSet<String>,
    /// Standing conditions, keyed by kind and job or pool.
    alerts: BTreeMap<(AlertKind, String), Alert>,
    /// What changed since the last `take_changes`, for live views.
    changes: Changes,
    /// Claims held until runs arrive for them.
    waiting: WaitingClaims,
}

/// What changed in a batch, for the dashboard's live feed.
#[derive(Debug, Default)]
pub struct Changes {
    pub runs: BTreeSet<String>,
    pub workers: bool,
    pub jobs: bool,
    /// Log output received: (run id, stream offset, bytes).
    pub logs: Vec<(String, u64, Vec<u8>)>,
}

/// The changes of a batch, resolved to what a live view shows.
#[derive(Debug, Default)]
pub struct ChangeSet {
    pub runs: Vec<RunRecord>,
    pub workers: Option<Vec<WorkerStatus>>,
    pub jobs: Option<Vec<jobcast_protocol::JobView>>,
    pub logs: Vec<(String, u64, Vec<u8>)>,
}

fn ms(now_us: u64) -> u64 {
    now_us / 1_000
}

fn nothing_granted() -> Reply {
    Reply::Granted {
        runs: vec![],
        more_queued: false,
    }
}

fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
    Reply::Error {
        code,
        message: message.into(),
    }
}

impl<S: Store> Core<S> {
    /// Loads jobs and unfinished runs from `store`.
    pub fn new(store: S, config: CoreConfig, now_us: u64) -> StoreResult<Core<S>> {
        let jobs = store
            .jobs()?
            .into_iter()
            .map(|j| (j.name.clone(), j))
            .collect();
        let mut core = Core {
            next_seq: store.last_run_seq()? + 1,
            workers: store
                .workers()?
                .into_iter()
                .map(|mut w| {
                    w.online = false;
                    w.running.clear();
                    (w.id.clone(), w)
                })
                .collect(),
            store,
            config,
            boot_id: random_nonce(),
            booted_at_ms: ms(now_us),
            next_alive_ms: 0,
            jobs,
            active: HashMap::new(),
            active_by_job: HashMap::new(),
            queues: BTreeMap::new(),
            sessions: BTreeMap::new(),
            logs: HashMap::new(),
            pings: BTreeMap::new(),
            next_ping_id: 1,
            rejected: BTreeMap::new(),
            connections: ConnectionCounts::default(),
            clock_ms: ms(now_us),
            clock_us: now_us,
            schedules: HashMap::new(),
            job_states: BTreeMap::new(),
            next_fire: Default::default(),
            first_due: HashMap::new(),
            delayed: BTreeMap::new(),
            disabled_pools: BTreeSet::new(),
            alerts: BTreeMap::new(),
            changes: Changes::default(),
            waiting: WaitingClaims::default(),
        };
        for run in core.store.active_runs()? {
            if run.state == RunState::Queued {
                core.enqueue_existing(&run);
            }
            core.activate(run);
        }
        core.load_scheduling(ms(now_us))?;
        Ok(core)
    }

    pub fn boot_id(&self) -> u64 {
        self.boot_id
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Stops the core, handing back its store (as a broker that stops leaves it).
    pub fn into_store(self) -> S {
        self.store
    }

    /// Forgets what changed (nobody is watching).
    pub fn clear_changes(&mut self) {
        self.changes = Changes::default();
    }

    /// What changed since the last call, as the records live views show.
    pub fn take_changes(&mut self) -> StoreResult<ChangeSet> {
        let changes = std::mem::take(&mut self.changes);
        let mut runs = Vec::with_capacity(changes.runs.len());
        for id in changes.runs {
            match self.active.get(&id) {
                Some(run) => runs.push(run.clone()),
                None => runs.extend(self.store.run(&id)?),
            }
        }
        Ok(ChangeSet {
            runs,
            workers: changes
                .workers
                .then(|| self.status(self.clock_ms).map(|s| s.workers))
                .transpose()?,
            jobs: changes.jobs.then(|| self.job_views()),
            logs: changes.logs,
        })
    }

    /// Counts a frame the server refused before it reached the core.
    pub fn note_rejection(&mut self, reason: &str) {
        *self.rejected.entry(reason.to_string()).or_default() += 1;
    }

    /// Counts a connection to the broker's sockets opening or closing.
    pub fn note_connection(&mut self, opened: bool) {
        if opened {
            self.connections.opened += 1;
        } else {
            self.connections.closed += 1;
        }
    }

    /// Handles one authenticated request from `from` on connection `peer`.
    pub fn handle(
        &mut self,
        peer: &PeerId,
        from: &str,
        id: u64,
        request: Request,
        now_us: u64,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        let actor = format!("key {from}");
        self.handle_as(peer, from, &actor, id, request, now_us, out)
    }

    /// Like [`Core::handle`], recording `actor` (who asked: `key admin`, `token alice`) in
    /// the history of what the request changes.
    #[allow(clippy::too_many_arguments)]
    pub fn handle_as(
        &mut self,
        peer: &PeerId,
        from: &str,
        actor: &str,
        id: u64,
        request: Request,
        now_us: u64,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        self.clock_ms = ms(now_us);
        self.clock_us = now_us;
        let is_admin = from == ADMIN;
        let reply = if request.is_admin() != is_admin {
            error(
                ErrorCode::Forbidden,
                if is_admin {
                    "the admin key cannot send worker requests"
                } else {
                    "this request needs the admin key"
                },
            )
        } else if is_admin {
            match self.handle_admin(peer, actor, id, request, now_us, out)? {
                Some(reply) => reply,
                // answered later (ping)
                None => return Ok(()),
            }
        } else {
            match self.handle_worker(peer, from, id, request, now_us, out)? {
                Some(reply) => reply,
                // held until runs arrive (a waiting claim)
                None => return Ok(()),
            }
        };
        out.reply(peer, from, id, reply);
        Ok(())
    }

    /// Handles a request from a worker; `None` when the answer comes later (a claim
    /// waiting for runs).
    fn handle_worker(
        &mut self,
        peer: &PeerId,
        worker: &str,
        id: u64,
        request: Request,
        now_us: u64,
        out: &mut Outbox,
    ) -> StoreResult<Option<Reply>> {
        let now = ms(now_us);
        if let Request::Register(register) = request {
            self.cancel_waiting_claim(worker, out);
            return self.register(peer, worker, register, now, out).map(Some);
        }
        let Some(session) = self.sessions.get_mut(worker) else {
            return Ok(Some(error(
                ErrorCode::NotRegistered,
                "no session for this worker: register first",
            )));
        };
        session.last_seen_ms = now;
        session.peer = peer.clone();
        if self
            .waiting
            .get(worker)
            .is_some_and(|claim| claim.peer != *peer)
        {
            // The worker reconnected: its old connection cannot take the answer.
            self.waiting.remove(worker);
        }
        Ok(Some(match request {
            Request::Heartbeat(Heartbeat {
                running, draining, ..
            }) => {
                session.draining = draining;
                if draining {
                    self.cancel_waiting_claim(worker, out);
                }
                Reply::Orders(self.orders_for(worker, &running))
            }
            Request::FetchOrders => Reply::Orders(self.orders_for(worker, &[])),
            Request::Claim { max, wait_ms } => {
                // A newer claim stands for the worker's current free slots.
                self.cancel_waiting_claim(worker, out);
                let reply = self.claim(worker, max, now)?;
                let nothing = matches!(&reply, Reply::Granted { runs, .. } if runs.is_empty());
                let may_wait = self
                    .sessions
                    .get(worker)
                    .is_some_and(|s| !s.draining && !s.drain_ordered);
                if nothing && wait_ms > 0 && max > 0 && may_wait {
                    self.waiting.insert(
                        worker,
                        WaitingClaim {
                            peer: peer.clone(),
                            id,
                            max,
                            deadline_ms: now + wait_ms.min(MAX_CLAIM_WAIT_MS),
                        },
                    );
                    return Ok(None);
                }
                reply
            }
            Request::RunStarted {
                run_id,
                pid,
                spawned_at_us,
            } => {
                self.run_started(worker, &run_id, pid, spawned_at_us, now)?;
                Reply::Ack
            }
            Request::LogChunk {
                run_id,
                offset,
                data,
            } => {
                self.log_chunk(worker, &run_id, offset, &data)?;
                Reply::Ack
            }
            Request::RunFinished(finished) => {
                let claim = finished.claim;
                self.run_finished(worker, finished, now, out)?;
                if claim > 0 {
                    self.claim(worker, claim, now)?
                } else {
                    Reply::Ack
                }
            }
            Request::Release { run_ids } => {
                self.release(worker, &run_ids, now, out)?;
                Reply::Ack
            }
            Request::Pong { ping_id, info } => {
                self.pong(worker, ping_id, info, now_us, out);
                Reply::Ack
            }
            // Admin requests were filtered out by the caller.
            _ => error(ErrorCode::BadRequest, "not a worker request"),
        }))
    }

    fn register(
        &mut self,
        peer: &PeerId,
        worker: &str,
        register: Register,
        now: u64,
        out: &mut Outbox,
    ) -> StoreResult<Reply> {
        if let Err(e) = names::validate("worker id", worker) {
            return Ok(error(ErrorCode::BadRequest, e.to_string()));
        }
        for pool in &register.pools {
            if let Err(e) = names::validate("pool", pool) {
                return Ok(error(ErrorCode::BadRequest, e.to_string()));
            }
        }
        if register.concurrency == 0 {
            return Ok(error(
                ErrorCode::BadRequest,
                "concurrency must be at least 1",
            ));
        }
        if let Some(allowed) = self.config.worker_pools.get(worker) {
            if let Some(pool) = register.pools.iter().find(|p| !allowed.contains(*p)) {
                tracing::warn!(
                    worker,
                    pool,
                    "register refused: pool not allowed for this key"
                );
                return Ok(error(
                    ErrorCode::Forbidden,
                    format!(
                        "the key of worker {worker:?} may not serve pool {pool:?} (allowed: {})",
                        allowed.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        // The broker decides how much log it stores, not the worker.
        let mut register = register;
        register.max_log_bytes = register.max_log_bytes.min(self.config.max_log_bytes);
        let reported: BTreeSet<&String> = register.running.iter().collect();
        // Runs we believe are on this worker but that it does not report are lost: they
        // may have been half executed and must not run again silently.
        let ours: Vec<String> = self
            .active
            .values()
            .filter(|r| r.worker.as_deref() == Some(worker))
            .map(|r| r.id.clone())
            .collect();
        let mut kept = BTreeSet::new();
        for run_id in ours {
            if reported.contains(&run_id) {
                kept.insert(run_id);
            } else {
                self.finish_as(
                    &run_id,
                    RunState::Lost,
                    now,
                    format!("worker {worker} registered without it (restarted or reconnected)"),
                    out,
                )?;
            }
        }
        let session = Session {
            peer: peer.clone(),
            last_seen_ms: now,
            runs: kept,
            draining: false,
            drain_ordered: false,
            register,
        };
        let status = WorkerStatus {
            id: worker.to_string(),
            online: true,
            hostname: session.register.hostname.clone(),
            pid: session.register.pid,
            version: session.register.version.clone(),
            concurrency: session.register.concurrency,
            pools: session.register.pools.clone(),
            running: session.runs.iter().cloned().collect(),
            last_seen_ms: now,
            draining: false,
        };
        self.store.put_worker(&status)?;
        self.changes.workers = true;
        self.workers.insert(worker.to_string(), status);
        let running = session.register.running.clone();
        self.sessions.insert(worker.to_string(), session);
        tracing::info!(worker, "worker registered");
        // Work may be waiting for this worker's pools.
        for pool in self.sessions[worker].register.pools.clone() {
            if self.queues.get(&pool).is_some_and(|q| !q.is_empty()) {
                self.wake(&pool, out);
            }
        }
        Ok(Reply::Registered {
            boot_id: self.boot_id,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            orders: self.orders_for(worker, &running),
        })
    }

    /// Kill orders for the worker's runs that were asked to die, plus any run it reports
    /// that is not (or no longer) its own.
    fn orders_for(&self, worker: &str, reported_running: &[String]) -> Orders {
        let Some(session) = self.sessions.get(worker) else {
            return Orders::default();
        };
        let mut kill: Vec<String> = session
            .runs
            .iter()
            .filter(|id| self.active.get(*id).is_some_and(|r| r.kill_requested))
            .cloned()
            .collect();
        for id in reported_running {
            if !session.runs.contains(id) && !kill.contains(id) {
                kill.push(id.clone());
            }
        }
        Orders {
            kill,
            drain: session.drain_ordered,
        }
    }

    fn claim(&mut self, worker: &str, max: u32, now: u64) -> StoreResult<Reply> {
        let Some(session) = self.sessions.get(worker) else {
            return Ok(Reply::Granted {
                runs: vec![],
                more_queued: false,
            });
        };
        if session.draining || session.drain_ordered {
            return Ok(Reply::Granted {
                runs: vec![],
                more_queued: false,
            });
        }
        // Never more than the worker's free slots, whatever it asks for.
        let room = (session.register.concurrency as usize)
            .saturating_sub(session.runs.len())
            .min(max as usize);
        let pools = session.register.pools.clone();
        let cap = session.register.max_log_bytes;
        let mut granted = Vec::new();
        // Jobs with `overlap = queue` that already have a run out cannot get another.
        let mut busy_jobs: BTreeSet<String> = self
            .active
            .values()
            .filter(|r| matches!(r.state, RunState::Assigned | RunState::Running))
            .filter(|r| r.spec.policy.overlap == Overlap::Queue)
            .map(|r| r.job.clone())
            .collect();
        while granted.len() < room {
            // The oldest grantable queued run across this worker's pools.
            let mut best: Option<(u64, String)> = None;
            for pool in &pools {
                let Some(queue) = self.queues.get(pool) else {
                    continue;
                };
                for (seq, run_id) in queue {
                    if best.as_ref().is_some_and(|(b, _)| *b < *seq) {
                        break;
                    }
                    let Some(run) = self.active.get(run_id) else {
                        continue;
                    };
                    if run.pinned_worker.as_deref().is_some_and(|w| w != worker) {
                        continue;
                    }
                    if run.spec.policy.overlap == Overlap::Queue && busy_jobs.contains(&run.job) {
                        continue;
                    }
                    best = Some((*seq, pool.clone()));
                    break;
                }
            }
            let Some((seq, pool)) = best else { break };
            let Some(run_id) = self.queues.get_mut(&pool).and_then(|q| q.remove(&seq)) else {
                break;
            };
            let Some(run) = self.active.get_mut(&run_id) else {
                continue;
            };
            if run
                .transition(RunState::Assigned, now, format!("granted to {worker}"))
                .is_err()
            {
                continue;
            }
            run.worker = Some(worker.to_string());
            run.log_cap = cap;
            self.store.put_run(run)?;
            self.changes.runs.insert(run.id.clone());
            if run.spec.policy.overlap == Overlap::Queue {
                busy_jobs.insert(run.job.clone());
            }
            granted.push(Assignment {
                run_id: run.id.clone(),
                attempt: run.attempt,
                scheduled_at_ms: run.scheduled_at_ms,
                job: run.spec.clone(),
            });
            if let Some(session) = self.sessions.get_mut(worker) {
                session.runs.insert(run_id);
            }
        }
        let more_queued = pools
            .iter()
            .any(|p| self.queues.get(p).is_some_and(|q| !q.is_empty()));
        Ok(Reply::Granted {
            runs: granted,
            more_queued,
        })
    }

    fn run_started(
        &mut self,
        worker: &str,
        run_id: &str,
        pid: u32,
        spawned_at_us: u64,
        now: u64,
    ) -> StoreResult<()> {
        let Some(run) = self.active.get_mut(run_id) else {
            tracing::warn!(
                run_id,
                worker,
                "start reported for a run that is not active"
            );
            return Ok(());
        };
        if run.worker.as_deref() != Some(worker) || run.state != RunState::Assigned {
            tracing::warn!(run_id, worker, state = %run.state, "ignoring a start report");
            return Ok(());
        }
        run.pid = Some(pid);
        run.spawned_at_us = (spawned_at_us > 0).then_some(spawned_at_us);
        if run
            .transition(
                RunState::Running,
                now,
                format!("started on {worker} as pid {pid}"),
            )
            .is_ok()
        {
            self.store.put_run(run)?;
            self.changes.runs.insert(run.id.clone());
            let job = run.job.clone();
            let state = self.job_states.entry(job.clone()).or_default();
            state.last_started_ms = Some(now);
            self.save_job_state(&job)?;
        }
        Ok(())
    }

    fn log_chunk(
        &mut self,
        worker: &str,
        run_id: &str,
        offset: u64,
        data: &[u8],
    ) -> StoreResult<()> {
        let Some(run) = self.active.get(run_id) else {
            return Ok(());
        };
        if run.worker.as_deref() != Some(worker) || data.is_empty() {
            return Ok(());
        }
        let cap = (run.log_cap as usize).max(logcap::MIN_CAP);
        if !self.logs.contains_key(run_id) {
            // First chunk since this broker started: rebuild from what is stored.
            let mut track = LogTrack {
                cap,
                total: 0,
                tail_chunks: VecDeque::new(),
            };
            for (o, bytes) in self.store.log_chunks(run_id)? {
                track.note(o, bytes.len() as u64);
            }
            self.logs.insert(run_id.to_string(), track);
        }
        let Some(track) = self.logs.get_mut(run_id) else {
            return Ok(());
        };
        let end = offset + data.len() as u64;
        if end <= track.total {
            return Ok(()); // a retransmission
        }
        self.store.put_log_chunk(run_id, offset, data)?;
        self.changes
            .logs
            .push((run_id.to_string(), offset, data.to_vec()));
        track.note(offset, data.len() as u64);
        // Drop stored tail chunks that have wholly fallen out of the tail window.
        let window_start = track
            .total
            .saturating_sub(logcap::tail_cap(track.cap) as u64);
        while let Some(&(o, len)) = track.tail_chunks.front() {
            if o + len > window_start {
                break;
            }
            track.tail_chunks.pop_front();
            self.store.delete_log_chunk(run_id, o)?;
        }
        Ok(())
    }

    fn run_finished(
        &mut self,
        worker: &str,
        finished: RunFinished,
        now: u64,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        let Some(run) = self.active.get_mut(&finished.run_id) else {
            tracing::info!(run_id = %finished.run_id, worker, "late report for a run that already ended; ignored");
            return Ok(());
        };
        if run.worker.as_deref() != Some(worker) {
            tracing::warn!(run_id = %finished.run_id, worker, "report from a worker the run is not on; ignored");
            return Ok(());
        }
        let state = finished.outcome.final_state();
        let cause = finished.outcome.describe();
        run.outcome = Some(finished.outcome);
        run.log_bytes = finished.log_bytes;
        run.ended_at_us = Some(self.clock_us);
        if let Err(e) = run.transition(state, now, cause) {
            tracing::warn!(run_id = %finished.run_id, worker, error = %e, "ignoring a finish report");
            return Ok(());
        }
        if run.started_at_ms.is_none() {
            // Never reported as started (it failed to start, or was killed first):
            // the reported duration is all we know.
            run.started_at_ms = Some(now.saturating_sub(finished.duration_ms));
        }
        let run = run.clone();
        self.retire(&run, now, out)
    }

    /// Writes a run that reached a terminal state, forgets it from memory, and does what
    /// follows its end (retry, chain, notification).
    fn retire(&mut self, run: &RunRecord, now: u64, out: &mut Outbox) -> StoreResult<()> {
        self.store.put_run(run)?;
        self.changes.runs.insert(run.id.clone());
        self.deactivate(&run.id);
        self.logs.remove(&run.id);
        if let Some(queue) = self.queues.get_mut(&run.pool) {
            queue.remove(&run.seq);
        }
        self.delayed.remove(&(run.not_before_ms, run.seq));
        if let Some(worker) = &run.worker {
            if let Some(session) = self.sessions.get_mut(worker) {
                session.runs.remove(&run.id);
                // The slot it frees, or the end of an `overlap = queue` run, may make
                // queued runs grantable to a waiting claim.
                for pool in &session.register.pools {
                    self.waiting.mark_dirty(pool);
                }
            }
        }
        self.waiting.mark_dirty(&run.pool);
        self.after_end(run, now, out)
    }

    fn finish_as(
        &mut self,
        run_id: &str,
        state: RunState,
        now: u64,
        cause: String,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        let Some(run) = self.active.get_mut(run_id) else {
            return Ok(());
        };
        if let Err(e) = run.transition(state, now, cause.clone()) {
            tracing::warn!(run_id, error = %e, "cannot end run");
            return Ok(());
        }
        tracing::warn!(run_id, %state, %cause, "run ended by the broker");
        let run = run.clone();
        self.retire(&run, now, out)
    }

    fn release(
        &mut self,
        worker: &str,
        run_ids: &[String],
        now: u64,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        for run_id in run_ids {
            let Some(run) = self.active.get_mut(run_id) else {
                continue;
            };
            if run.worker.as_deref() != Some(worker) || run.state != RunState::Assigned {
                continue;
            }
            if run
                .transition(
                    RunState::Queued,
                    now,
                    format!("released unstarted by {worker}"),
                )
                .is_err()
            {
                continue;
            }
            self.store.put_run(run)?;
            self.changes.runs.insert(run.id.clone());
            let run = run.clone();
            self.enqueue_existing(&run);
            self.wake(&run.pool, out);
            if let Some(session) = self.sessions.get_mut(worker) {
                session.runs.remove(run_id);
            }
        }
        Ok(())
    }

    fn pong(
        &mut self,
        worker: &str,
        ping_id: u64,
        info: WorkerInfo,
        now_us: u64,
        out: &mut Outbox,
    ) {
        if let Some(status) = self.workers.get_mut(worker) {
            status.version = info.version.clone();
            status.draining = info.draining;
        }
        let Some(ping) = self.pings.get_mut(&ping_id) else {
            return;
        };
        if let Some(answer) = ping.answers.get_mut(worker) {
            *answer = Some((now_us.saturating_sub(ping.sent_at_us), info));
        }
        if ping.answers.values().all(Option::is_some) {
            self.answer_ping(ping_id, out);
        }
    }

    fn answer_ping(&mut self, ping_id: u64, out: &mut Outbox) {
        let Some(ping) = self.pings.remove(&ping_id) else {
            return;
        };
        let workers = ping
            .answers
            .into_iter()
            .map(|(worker, answer)| PingAnswer {
                worker,
                rtt_us: answer.as_ref().map(|(rtt, _)| *rtt),
                info: answer.map(|(_, info)| info),
            })
            .collect();
        out.reply(&ping.peer, ADMIN, ping.id, Reply::PingResult { workers });
    }

    fn handle_admin(
        &mut self,
        peer: &PeerId,
        actor: &str,
        id: u64,
        request: Request,
        now_us: u64,
        out: &mut Outbox,
    ) -> StoreResult<Option<Reply>> {
        let now = ms(now_us);
        Ok(Some(match request {
            Request::Ping { worker, timeout_ms } => {
                let targets: Vec<String> = match worker {
                    Some(w) if self.sessions.contains_key(&w) || self.workers.contains_key(&w) => {
                        vec![w]
                    }
                    Some(w) => return Ok(Some(self.unknown_worker(&w))),
                    None => self.sessions.keys().cloned().collect(),
                };
                if targets.is_empty() {
                    return Ok(Some(Reply::PingResult { workers: vec![] }));
                }
                let ping_id = self.next_ping_id;
                self.next_ping_id += 1;
                for w in &targets {
                    if self.sessions.contains_key(w) {
                        out.publish(topic::worker(w), Event::Ping { ping_id });
                    }
                }
                self.pings.insert(
                    ping_id,
                    PendingPing {
                        peer: peer.clone(),
                        id,
                        sent_at_us: now_us,
                        deadline_us: now_us + timeout_ms.clamp(10, 60_000) * 1_000,
                        answers: targets.into_iter().map(|w| (w, None)).collect(),
                    },
                );
                return Ok(None);
            }
            Request::Kill { selectors } => {
                if selectors.is_empty() {
                    error(ErrorCode::BadRequest, "name at least one run to kill")
                } else {
                    let mut outcomes = Vec::new();
                    for selector in selectors {
                        outcomes.push(self.kill(&selector, actor, now, out)?);
                    }
                    Reply::KillResult { outcomes }
                }
            }
            Request::Enqueue { job } => self.enqueue(&job, actor, now, out)?,
            Request::ListRuns(filter) => {
                let filter = RunFilter {
                    limit: match filter.limit {
                        0 => 50,
                        n => n.min(MAX_LIST),
                    },
                    ..filter
                };
                Reply::Runs {
                    runs: self.store.runs(&filter)?,
                }
            }
            Request::ListJobs => Reply::Jobs {
                jobs: self.job_views(),
            },
            Request::GetLog { run, offset } => self.get_log(&run, offset)?,
            Request::ApplyJobs { jobs } => {
                tracing::info!(actor, jobs = jobs.len(), "applying jobs");
                self.apply(jobs, now)?
            }
            Request::SetEnabled { target, enabled } => {
                tracing::info!(actor, ?target, enabled, "enable/disable");
                self.set_enabled(target, enabled, now)?
            }
            Request::Retry { run } => self.retry(&run, actor, now, out)?,
            Request::Status => Reply::Status(Box::new(self.status(now)?)),
            Request::Drain { worker } => match self.sessions.get_mut(&worker) {
                Some(session) => {
                    tracing::info!(actor, worker, "drain ordered");
                    session.drain_ordered = true;
                    out.publish(topic::worker(&worker), Event::OrdersPending);
                    self.cancel_waiting_claim(&worker, out);
                    Reply::Ack
                }
                None => self.unknown_worker(&worker),
            },
            _ => error(ErrorCode::BadRequest, "not an admin request"),
        }))
    }

    fn unknown_worker(&self, worker: &str) -> Reply {
        let online: Vec<&str> = self.sessions.keys().map(String::as_str).collect();
        error(
            ErrorCode::NotFound,
            format!(
                "no connected worker named {worker:?} (connected: {})",
                if online.is_empty() {
                    "none".to_string()
                } else {
                    online.join(", ")
                }
            ),
        )
    }

    /// Like [`Self::resolve`], with the error as the reply to send.
    fn resolve_one(&self, selector: &str) -> StoreResult<Result<String, Reply>> {
        Ok(self.resolve(selector)?.map_err(|outcome| match outcome {
            KillOutcome::Ambiguous { candidates, .. } => error(
                ErrorCode::Ambiguous,
                format!(
                    "{selector:?} matches several runs: {}",
                    candidates.join(", ")
                ),
            ),
            _ => error(ErrorCode::NotFound, format!("no run matches {selector:?}")),
        }))
    }

    /// Resolves a full id, a unique prefix or a unique substring to one run id.
    fn resolve(&self, selector: &str) -> StoreResult<Result<String, KillOutcome>> {
        if self.active.contains_key(selector) || self.store.run(selector)?.is_some() {
            return Ok(Ok(selector.to_string()));
        }
        let mut candidates = self.store.find_run_ids(selector, MAX_CANDIDATES + 1)?;
        Ok(match candidates.len() {
            0 => Err(KillOutcome::NotFound {
                selector: selector.to_string(),
            }),
            1 => Ok(candidates.remove(0)),
            _ => {
                candidates.truncate(MAX_CANDIDATES);
                Err(KillOutcome::Ambiguous {
                    selector: selector.to_string(),
                    candidates,
                })
            }
        })
    }

    fn kill(
        &mut self,
        selector: &str,
        actor: &str,
        now: u64,
        out: &mut Outbox,
    ) -> StoreResult<KillOutcome> {
        if selector.is_empty() {
            return Ok(KillOutcome::NotFound {
                selector: String::new(),
            });
        }
        let run_id = match self.resolve(selector)? {
            Ok(id) => id,
            Err(outcome) => return Ok(outcome),
        };
        let Some(run) = self.active.get_mut(&run_id) else {
            let state = match self.store.run(&run_id)? {
                Some(run) => run.state,
                None => {
                    return Ok(KillOutcome::NotFound {
                        selector: selector.to_string(),
                    })
                }
            };
            return Ok(KillOutcome::AlreadyFinished { run_id, state });
        };
        if run.state == RunState::Queued {
            self.finish_as(
                &run_id,
                RunState::Cancelled,
                now,
                format!("cancelled by {actor} before it started"),
                out,
            )?;
            return Ok(KillOutcome::Cancelled { run_id });
        }
        let worker = run.worker.clone().unwrap_or_default();
        if !run.kill_requested {
            run.kill_requested = true;
            run.history.push(Transition {
                state: run.state,
                at_ms: now,
                cause: format!("kill requested by {actor}"),
            });
            self.store.put_run(run)?;
            self.changes.runs.insert(run.id.clone());
        }
        out.publish(topic::worker(&worker), Event::OrdersPending);
        Ok(KillOutcome::Killing { run_id, worker })
    }

    fn enqueue(
        &mut self,
        job: &str,
        actor: &str,
        now: u64,
        out: &mut Outbox,
    ) -> StoreResult<Reply> {
        let Some(spec) = self.jobs.get(job).cloned() else {
            let known: Vec<&str> = self.jobs.keys().map(String::as_str).collect();
            return Ok(error(
                ErrorCode::NotFound,
                format!(
                    "no job named {job:?} (jobs: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        match self.create_run(
            NewRun::of(spec, now, format!("enqueued by {actor}")),
            now,
            out,
        )? {
            Some(run) => Ok(Reply::Enqueued { run: Box::new(run) }),
            None => Ok(error(ErrorCode::Internal, "the run could not be created")),
        }
    }

    /// Runs a finished run's job again, as the next attempt of the same first run.
    fn retry(
        &mut self,
        selector: &str,
        actor: &str,
        now: u64,
        out: &mut Outbox,
    ) -> StoreResult<Reply> {
        let run_id = match self.resolve_one(selector)? {
            Ok(id) => id,
            Err(reply) => return Ok(reply),
        };
        if self.active.contains_key(&run_id) {
            return Ok(error(
                ErrorCode::BadRequest,
                format!("run {run_id} has not finished yet"),
            ));
        }
        let Some(old) = self.store.run(&run_id)? else {
            return Ok(error(
                ErrorCode::NotFound,
                format!("no run matches {selector:?}"),
            ));
        };
        // The job as it is now, if it still exists; else as the run had it.
        let spec = self.jobs.get(&old.job).cloned().unwrap_or(old.spec.clone());
        let mut new = NewRun::of(
            spec,
            now,
            format!("retry of run {} ({}) by {actor}", old.id, old.state),
        );
        new.attempt = old.attempt + 1;
        new.first_attempt = Some(old.first_attempt.clone().unwrap_or(old.id.clone()));
        match self.create_run(new, now, out)? {
            Some(run) => Ok(Reply::Enqueued { run: Box::new(run) }),
            None => Ok(error(ErrorCode::Internal, "the run could not be created")),
        }
    }

    fn new_run_id(&self) -> StoreResult<String> {
        loop {
            let id = format!("{:016x}", random_nonce());
            if !self.active.contains_key(&id) && self.store.run(&id)?.is_none() {
                return Ok(id);
            }
        }
    }

    /// Creates a run, unless one with its derived id exists already (then `None`).
    fn create_run(
        &mut self,
        new: NewRun,
        now: u64,
        out: &mut Outbox,
    ) -> StoreResult<Option<RunRecord>> {
        let id = match new.id {
            Some(id) => {
                // Only a time this broker has not seen can have been decided by an
                // earlier run of it; later decisions are this one's own, made once.
                let maybe_decided_before = new.scheduled_at_ms <= self.booted_at_ms
                    || new.not_before_ms > 0
                    || new.parent.is_some();
                if self.active.contains_key(&id)
                    || (maybe_decided_before && self.store.run(&id)?.is_some())
                {
                    return Ok(None);
                }
                id
            }
            None => self.new_run_id()?,
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let run = RunRecord {
            id,
            seq,
            job: new.spec.name.clone(),
            pool: new.spec.pool.clone(),
            attempt: new.attempt,
            state: RunState::Queued,
            worker: None,
            pid: None,
            created_at_ms: now,
            scheduled_at_ms: new.scheduled_at_ms,
            started_at_ms: None,
            finished_at_ms: None,
            outcome: None,
            kill_requested: false,
            log_bytes: 0,
            log_cap: 0,
            parent: new.parent,
            first_attempt: new.first_attempt,
            pinned_worker: new.pinned_worker,
            not_before_ms: new.not_before_ms,
            created_at_us: self.clock_us,
            spawned_at_us: None,
            ended_at_us: None,
            schedule_id: new.schedule_id,
            history: vec![Transition {
                state: RunState::Queued,
                at_ms: now,
                cause: new.cause,
            }],
            spec: new.spec,
        };
        self.store.create_run(&run)?;
        self.changes.runs.insert(run.id.clone());
        self.activate(run.clone());
        if self.enqueue_existing(&run) {
            self.wake(&run.pool, out);
        }
        Ok(Some(run))
    }

    fn activate(&mut self, run: RunRecord) {
        self.active_by_job
            .entry(run.job.clone())
            .or_default()
            .insert(run.id.clone());
        self.active.insert(run.id.clone(), run);
    }

    fn deactivate(&mut self, run_id: &str) {
        if let Some(run) = self.active.remove(run_id) {
            if let Some(ids) = self.active_by_job.get_mut(&run.job) {
                ids.remove(run_id);
                if ids.is_empty() {
                    self.active_by_job.remove(&run.job);
                }
            }
        }
    }

    /// Puts a queued run where it waits: its pool's queue, or the back-off list. Returns
    /// whether it can be handed out now.
    fn enqueue_existing(&mut self, run: &RunRecord) -> bool {
        if run.not_before_ms > self.clock_ms {
            self.delayed
                .insert((run.not_before_ms, run.seq), run.id.clone());
            false
        } else {
            self.queues
                .entry(run.pool.clone())
                .or_default()
                .insert(run.seq, run.id.clone());
            true
        }
    }

    fn get_log(&self, selector: &str, offset: Option<u64>) -> StoreResult<Reply> {
        let run_id = match self.resolve_one(selector)? {
            Ok(id) => id,
            Err(reply) => return Ok(reply),
        };
        let run = match self.active.get(&run_id) {
            Some(run) => run.clone(),
            None => match self.store.run(&run_id)? {
                Some(run) => run,
                None => {
                    return Ok(error(
                        ErrorCode::NotFound,
                        format!("no run matches {selector:?}"),
                    ))
                }
            },
        };
        let chunks = self.store.log_chunks(&run.id)?;
        let end = chunks.last().map(|(o, b)| o + b.len() as u64).unwrap_or(0);
        let (data, next_offset) = match offset {
            None => {
                let mut cap = LogCap::new((run.log_cap as usize).max(logcap::MIN_CAP));
                for (o, bytes) in &chunks {
                    cap.push(*o, bytes);
                }
                (cap.render(), end)
            }
            Some(from) => slice_from(&chunks, from),
        };
        Ok(Reply::Log {
            run: Box::new(run),
            data,
            next_offset,
        })
    }

    fn apply(&mut self, jobs: Vec<JobSpec>, now: u64) -> StoreResult<Reply> {
        let mut seen = BTreeSet::new();
        for job in &jobs {
            if let Err(problem) = jobfile::validate(job) {
                return Ok(error(
                    ErrorCode::BadRequest,
                    format!("job {:?}: {problem}", job.name),
                ));
            }
            if !seen.insert(job.name.clone()) {
                return Ok(error(
                    ErrorCode::BadRequest,
                    format!("job {:?} is defined twice", job.name),
                ));
            }
        }
        if let Err(problem) = self.check_jobs(&jobs) {
            return Ok(error(ErrorCode::BadRequest, problem));
        }
        let (mut created, mut updated, mut unchanged) = (vec![], vec![], vec![]);
        for job in jobs {
            let name = job.name.clone();
            match self.jobs.get(&name) {
                Some(old) if *old == job => {
                    unchanged.push(name);
                    continue;
                }
                Some(old) => {
                    if old.schedule != job.schedule {
                        // A new schedule starts from now: no catch-up under it.
                        let state = self.job_states.entry(name.clone()).or_default();
                        state.last_tick_ms = state.last_tick_ms.max(now);
                    }
                    updated.push(name.clone());
                }
                None => {
                    self.job_states.insert(
                        name.clone(),
                        JobState {
                            created_at_ms: now,
                            last_tick_ms: now,
                            ..Default::default()
                        },
                    );
                    created.push(name.clone());
                }
            }
            self.store.put_job(&job)?;
            self.changes.jobs = true;
            self.jobs.insert(name.clone(), job);
            self.save_job_state(&name)?;
            self.compile_schedule(&name);
        }
        Ok(Reply::Applied {
            created,
            updated,
            unchanged,
        })
    }

    fn status(&self, now: u64) -> StoreResult<StatusReport> {
        let mut active = BTreeMap::new();
        for run in self.active.values() {
            *active.entry(run.state.to_string()).or_default() += 1;
        }
        let workers = self
            .workers
            .values()
            .map(|w| {
                let mut w = w.clone();
                if let Some(session) = self.sessions.get(&w.id) {
                    w.online = true;
                    w.running = session.runs.iter().cloned().collect();
                    w.last_seen_ms = session.last_seen_ms;
                    w.draining = session.draining || session.drain_ordered;
                } else {
                    w.online = false;
                    w.running.clear();
                }
                w
            })
            .collect();
        Ok(StatusReport {
            version: JOBCAST_VERSION.to_string(),
            boot_id: self.boot_id,
            uptime_ms: now.saturating_sub(self.booted_at_ms),
            active,
            total_runs: self.store.run_count()?,
            jobs: self.jobs.len() as u64,
            workers,
            rejected: self.rejected.clone(),
            connections: BTreeMap::from([
                (
                    "open".to_string(),
                    self.connections
                        .opened
                        .saturating_sub(self.connections.closed),
                ),
                ("opened".to_string(), self.connections.opened),
                ("closed".to_string(), self.connections.closed),
            ]),
            alerts: self.alerts.values().cloned().collect(),
            disabled_pools: self.disabled_pools.iter().cloned().collect(),
        })
    }

    /// Time-driven work: worker timeouts, ping deadlines, heartbeats and re-announcing
    /// queued work. Call it often (every 100 ms or so); it does each thing when due.
    pub fn tick(&mut self, now_us: u64, out: &mut Outbox) -> StoreResult<()> {
        let now = ms(now_us);
        self.clock_ms = now;
        self.clock_us = now_us;
        self.schedule_due(now, out)?;
        self.release_delayed(now, out);
        let due: Vec<u64> = self
            .pings
            .iter()
            .filter(|(_, p)| p.deadline_us <= now_us)
            .map(|(id, _)| *id)
            .collect();
        for ping_id in due {
            self.answer_ping(ping_id, out);
        }
        if now >= self.next_alive_ms {
            // Once per heartbeat interval, not per batch: these look at every session
            // and every active run, and timeouts are several intervals long anyway.
            self.next_alive_ms = now + self.config.heartbeat_interval_ms;
            self.check_liveness(now, out)?;
            self.check_alerts(now, out)?;
            out.publish(
                topic::ALL.to_string(),
                Event::BrokerAlive {
                    boot_id: self.boot_id,
                    time_ms: now,
                },
            );
            // Re-announce queued work, so a lost wake-up only delays it.
            let queued: Vec<String> = self
                .queues
                .iter()
                .filter(|(_, queue)| !queue.is_empty())
                .map(|(pool, _)| pool.clone())
                .collect();
            for pool in queued {
                self.wake(&pool, out);
            }
        }
        self.serve_waiting_claims(now, out)
    }

    /// Tells `pool`'s workers that it has runs to hand out: the waiting claims first (at
    /// the end of the batch), then a wake-up event for whatever is left.
    fn wake(&mut self, pool: &str, out: &mut Outbox) {
        self.waiting.mark_dirty(pool);
        out.publish(
            topic::pool(pool),
            Event::Wake {
                pool: pool.to_string(),
            },
        );
    }

    /// Answers the claims whose wait is over (with nothing), then grants runs queued in
    /// this batch to waiting claims, longest waiting first. Runs granted here are written
    /// in this batch, so they are durable when the answer goes out, as with any claim.
    fn serve_waiting_claims(&mut self, now: u64, out: &mut Outbox) -> StoreResult<()> {
        for (worker, claim) in self.waiting.take_expired(now) {
            out.reply(&claim.peer, &worker, claim.id, nothing_granted());
        }
        let dirty = self.waiting.take_dirty();
        if dirty.is_empty() {
            return Ok(());
        }
        let mut granted_any = false;
        for worker in self.waiting.oldest_first() {
            if dirty
                .iter()
                .all(|pool| self.queues.get(pool).is_none_or(|q| q.is_empty()))
            {
                break;
            }
            let Some(session) = self.sessions.get(&worker) else {
                self.waiting.remove(&worker);
                continue;
            };
            if !session.register.pools.iter().any(|p| dirty.contains(p)) {
                continue;
            }
            let Some(max) = self.waiting.get(&worker).map(|c| c.max) else {
                continue;
            };
            let reply = self.claim(&worker, max, now)?;
            if matches!(&reply, Reply::Granted { runs, .. } if !runs.is_empty()) {
                if let Some(claim) = self.waiting.remove(&worker) {
                    out.reply(&claim.peer, &worker, claim.id, reply);
                    granted_any = true;
                }
            }
        }
        if granted_any {
            // Wake-ups for pools the waiting claims emptied would only cause idle claims.
            out.events.retain(|(_, event)| match event {
                Event::Wake { pool } => self.queues.get(pool).is_some_and(|q| !q.is_empty()),
                _ => true,
            });
        }
        Ok(())
    }

    /// Answers `worker`'s waiting claim, if any, with nothing.
    fn cancel_waiting_claim(&mut self, worker: &str, out: &mut Outbox) {
        if let Some(claim) = self.waiting.remove(worker) {
            out.reply(&claim.peer, worker, claim.id, nothing_granted());
        }
    }

    /// Workers silent past the timeout go offline; runs of workers that never came back
    /// after this broker started are lost.
    fn check_liveness(&mut self, now: u64, out: &mut Outbox) -> StoreResult<()> {
        let timeout = self.config.worker_timeout_ms;
        let silent: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| now.saturating_sub(s.last_seen_ms) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for worker in silent {
            self.worker_gone(
                &worker,
                now,
                format!("worker {worker} silent for over {timeout} ms"),
                out,
            )?;
        }
        // Runs left on workers that never came back after this broker started.
        if now.saturating_sub(self.booted_at_ms) > timeout {
            let orphans: Vec<(String, String)> = self
                .active
                .values()
                .filter_map(|r| {
                    let w = r.worker.as_ref()?;
                    (!self.sessions.contains_key(w)).then(|| (r.id.clone(), w.clone()))
                })
                .collect();
            for (run_id, worker) in orphans {
                self.finish_as(
                    &run_id,
                    RunState::Lost,
                    now,
                    format!("worker {worker} did not come back within {timeout} ms"),
                    out,
                )?;
            }
        }
        Ok(())
    }

    fn worker_gone(
        &mut self,
        worker: &str,
        now: u64,
        cause: String,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        let Some(session) = self.sessions.remove(worker) else {
            return Ok(());
        };
        self.waiting.remove(worker);
        tracing::warn!(worker, %cause, "worker offline");
        for run_id in session.runs {
            self.finish_as(&run_id, RunState::Lost, now, cause.clone(), out)?;
        }
        if let Some(status) = self.workers.get_mut(worker) {
            status.online = false;
            status.running.clear();
            status.last_seen_ms = session.last_seen_ms;
            self.store.put_worker(status)?;
            self.changes.workers = true;
        }
        Ok(())
    }

    /// Whether a worker currently has a session (for tests and the server).
    pub fn is_online(&self, worker: &str) -> bool {
        self.sessions.contains_key(worker)
    }
}

impl LogTrack {
    fn note(&mut self, offset: u64, len: u64) {
        self.total = self.total.max(offset + len);
        if offset >= logcap::head_cap(self.cap) as u64 {
            self.tail_chunks.push_back((offset, len));
        }
    }
}

/// Stored output from stream offset `from`, with a marker where bytes were cut, up to
/// [`MAX_LOG_SLICE`]. Returns the bytes and the offset to ask for next.
fn slice_from(chunks: &[(u64, Vec<u8>)], from: u64) -> (Vec<u8>, u64) {
    let mut data = Vec::new();
    let mut position = from;
    for (offset, bytes) in chunks {
        let end = offset + bytes.len() as u64;
        if end <= position {
            continue;
        }
        if data.len() >= MAX_LOG_SLICE {
            break;
        }
        if *offset > position {
            data.extend_from_slice(
                format!("\n[jobcast: {} bytes cut]\n", offset - position).as_bytes(),
            );
            position = *offset;
        }
        data.extend_from_slice(&bytes[(position - offset) as usize..]);
        position = end;
    }
    (data, position)
}

#[cfg(test)]
mod tests;
