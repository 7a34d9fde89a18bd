//! The worker's decisions, without sockets, processes or clocks: events in (broker
//! replies and hints, runs ending, signals, the passing of time), actions out (requests,
//! reports, runs to start or stop). The session (`session.rs`) carries the actions out.
//!
//! Time is milliseconds on a monotonic clock with any origin, passed in by the caller.

mod answers;
mod grants;
mod lease;
mod orders;

use jobcast_protocol::{
    Assignment, ErrorCode, Event, GrantedRun, Heartbeat, OnBrokerLoss, Orders, Outcome, Register,
    Reply, RunFinished, WorkerRequest,
};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::time::Duration;

/// Ended runs remembered so that a grant of one arriving late is never started again.
const REMEMBERED_ENDS: usize = 4_096;
/// The longest a ready run waits for a slot before it is handed back: ready runs are for
/// short runs back to back, not for holding work while long runs fill the slots.
pub const READY_HOLD: Duration = Duration::from_secs(1);

/// How long the broker may hold a claim before answering that nothing came. While it
/// waits, a run queued for this worker's pools is granted in the batch that queued it.
pub const CLAIM_WAIT: Duration = Duration::from_secs(10);
/// How long a request may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests refused for the worker's key, in a row, before the worker gives up (one a
/// heartbeat interval at least: a few seconds).
const MAX_AUTH_REFUSALS: u32 = 3;

/// What a request was for, so that its answer can be dealt with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Register,
    Heartbeat,
    Claim { sent_ms: u64 },
    Orders,
    Release,
    Pong,
}

/// How a request ended, as far as the worker's decisions go.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Reply(Reply),
    /// The broker refused the connection or the frame (`reason` is its code).
    Refused {
        reason: String,
        detail: String,
    },
    /// Timed out, connection lost (the client says when a connection closes:
    /// [`WorkerState::on_connection_closed`]), …: nothing was learnt.
    Failed(String),
}

/// What the reporter (the reliable outbox of run reports) tells the worker.
#[derive(Debug, Clone, PartialEq)]
pub enum ReportAnswer {
    /// The broker has recorded that this run ended.
    FinishAcked(String),
    /// Runs granted in answer to a finish report that also claimed.
    Granted {
        runs: Vec<GrantedRun>,
        more_queued: bool,
    },
    /// The broker does not know this worker: register again.
    NotRegistered,
    /// A report was acknowledged (the broker is alive).
    Heard,
    /// The broker answered that this worker's key was revoked.
    Revoked(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send a request; its answer comes back through [`WorkerState::on_answer`].
    Request {
        purpose: Purpose,
        request: WorkerRequest,
        timeout: Duration,
    },
    /// Hand a report to the reliable outbox (resent until acknowledged). With `may_wait`
    /// it may wait there for others to go with it (`reporter::GATHER`); without, it goes
    /// at once and takes what waits along.
    Report {
        request: WorkerRequest,
        may_wait: bool,
    },
    Start(Box<Assignment>),
    Stop(String),
    /// Answer a ping with this worker's details.
    AnswerPing(u64),
    /// Drop the connection to the broker and make a new one (after a jittered delay);
    /// with several brokers, to the next of the list.
    Reconnect,
    /// Several brokers: a standby named the leader; talk to it from now on.
    Follow(jobcast_protocol::LeaderAddress),
}

/// What does not change while the worker runs.
#[derive(Debug, Clone)]
pub struct Identity {
    pub hostname: String,
    pub pid: u32,
    /// Random, chosen when the process starts: tells the broker that a registration comes
    /// from the process it granted runs to, which never starts a run it does not hold.
    pub instance: u64,
    pub version: String,
    pub concurrency: u32,
    /// The most runs held ready beyond the busy slots (granted, not started); how many
    /// are asked for adapts below it (`ready_target`).
    pub prefetch: u32,
    pub pools: Vec<String>,
    pub max_log_bytes: u64,
    pub reconnect_after: Duration,
    /// How many brokers the worker knows (several share one database; one leads).
    pub brokers: usize,
    pub drain_timeout: Duration,
    /// Between SIGTERM and SIGKILL when it stops a run (declared to the broker, which
    /// waits for it before giving a silent worker's runs up).
    pub kill_grace: Duration,
    /// What earlier processes of this worker started since the host booted (its start
    /// ledger), told at registration; `None` when that cannot be proven.
    pub earlier_started: Option<Vec<String>>,
}

impl Identity {
    /// How many ready runs are asked for at first, and again after a hand-back.
    fn first_ready_target(&self) -> u32 {
        self.concurrency.min(self.prefetch)
    }
}

#[derive(Debug)]
pub struct WorkerState {
    identity: Identity,
    /// Runs this worker holds, and whether each one's process has ended (it stays held
    /// until the broker has acknowledged its end).
    held: BTreeMap<String, bool>,
    /// Runs granted beyond the free slots (about `ready_target`), oldest first, with when
    /// they were granted: each starts the moment a slot frees, without a round trip to
    /// the broker, or is handed back after `READY_HOLD` (the slots hold long runs: another
    /// worker may be free for it).
    ready: VecDeque<(Assignment, u64)>,
    /// Set when a ready run was handed back for waiting too long: no more ready runs are
    /// asked for until a run ends (a sign that slots turn over again).
    ready_paused: bool,
    /// How many ready runs are asked for: as many as cover the round trip that refills
    /// them at the rate slots turn over. Starts at the concurrency (at most `prefetch`),
    /// doubles (up to `prefetch`) each time a slot frees with none ready while the broker
    /// has more queued (the ready runs did not last that round trip), and starts again
    /// when ready runs are handed back for waiting too long (slots no longer turn over).
    ready_target: u32,
    /// The newest grant said the broker has more runs queued for this worker's pools.
    more_queued: bool,
    /// Runs whose end the broker has acknowledged, newest last: a resent grant can cross
    /// the acknowledgement (answers reach this state through different tasks), and must
    /// not start the run a second time.
    ended: (VecDeque<String>, HashSet<String>),
    registered: bool,
    boot_id: Option<u64>,
    heartbeat_ms: u64,
    next_heartbeat_ms: u64,
    last_heard_ms: u64,
    register_in_flight: bool,
    claim_in_flight: bool,
    want_work: bool,
    draining: bool,
    drain_deadline_ms: Option<u64>,
    /// The broker refused this worker for a reason retrying cannot fix.
    refused: Option<String>,
    /// Its key was revoked: runs are stopped at once and their ends cannot be reported.
    revoked: bool,
    /// The broker refuses this worker's key (revoked, unknown or wrong): the ends of its
    /// runs cannot be reported.
    reports_refused: bool,
    /// Requests turned down for the key (unknown id or wrong secret: at the connection,
    /// or after a reload removed or changed the key) in a row: a few are waited out (the
    /// broker may be reloading its keys), then the worker ends.
    auth_refusals: u32,
    /// The broker answers that it cannot take requests now (logged once, not per answer).
    broker_unavailable: bool,
    /// The highest leader epoch followed: an older standby's answer naming an older
    /// leader is not followed back.
    followed_epoch: u64,
    /// Until when a closed connection does not move the worker on again (the requests it
    /// failed each say so).
    moved_on_ms: u64,
    /// The lease the broker gave at registration; `None` before (or from a broker that
    /// gives none).
    lease_ms: Option<u64>,
    /// The broker takes a run's start inside its end (its `Registered` said so).
    starts_in_ends: bool,
    /// The broker takes several reports in one message (its `Registered` said so).
    reports_together: bool,
    /// The job definitions this registration's grants carried, by id.
    definitions: crate::definitions::Definitions,
    /// When the newest request that was answered was sent: the broker heard this worker
    /// at or after it, so it gives nothing of this worker's up before this + the lease.
    lease_from_ms: u64,
    /// The lease ran out: runs were stopped, and grants are not started, until an answer
    /// to a request sent within the lease arrives.
    lease_lost: bool,
    /// Runs whose job says `on_broker_loss = "keep"`.
    kept_on_broker_loss: HashSet<String>,
    /// Runs stopped because the lease ran out, with how long the broker had been silent:
    /// their end is reported as such, not as a kill on request.
    stopped_for_lease: BTreeMap<String, u64>,
}

impl WorkerState {
    pub fn new(identity: Identity, now_ms: u64) -> WorkerState {
        let ready_target = identity.first_ready_target();
        WorkerState {
            identity,
            held: BTreeMap::new(),
            ready: VecDeque::new(),
            ready_paused: false,
            ready_target,
            more_queued: false,
            ended: Default::default(),
            registered: false,
            boot_id: None,
            heartbeat_ms: 1_000,
            next_heartbeat_ms: now_ms,
            last_heard_ms: now_ms,
            register_in_flight: false,
            claim_in_flight: false,
            want_work: true,
            draining: false,
            drain_deadline_ms: None,
            refused: None,
            revoked: false,
            reports_refused: false,
            auth_refusals: 0,
            broker_unavailable: false,
            followed_epoch: 0,
            moved_on_ms: 0,
            lease_ms: None,
            starts_in_ends: false,
            reports_together: false,
            definitions: Default::default(),
            lease_from_ms: now_ms,
            lease_lost: false,
            kept_on_broker_loss: HashSet::new(),
            stopped_for_lease: BTreeMap::new(),
        }
    }

    /// The first actions: register.
    pub fn start(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        self.register(&mut actions);
        actions
    }

    pub fn is_registered(&self) -> bool {
        self.registered
    }

    /// Whether a run's start may go inside its end (see `RunFinished.started`).
    pub fn starts_in_ends(&self) -> bool {
        self.starts_in_ends
    }

    /// Whether reports may go several in one message (`WorkerRequest::Reports`).
    pub fn reports_together(&self) -> bool {
        self.reports_together
    }

    /// Runs this process holds: started, and granted ready to start (reported to the
    /// broker as its own, so that it does not send their grants again).
    pub fn running_ids(&self) -> Vec<String> {
        self.held
            .keys()
            .cloned()
            .chain(self.ready.iter().map(|(a, _)| a.run_id.clone()))
            .collect()
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Draining and every run's process has ended: time to deliver the last reports and
    /// exit.
    pub fn drained(&self) -> bool {
        self.draining && self.held.values().all(|done| *done) && self.ready.is_empty()
    }

    /// Nothing is held any more (every end acknowledged).
    pub fn holds_nothing(&self) -> bool {
        self.held.is_empty() && self.ready.is_empty()
    }

    /// Why the worker must exit with a failure, once nothing runs any more.
    pub fn refused_with_nothing_running(&self) -> Option<&str> {
        // A refused key can report nothing more: done once every process has ended.
        let done = if self.reports_refused {
            self.held.values().all(|ended| *ended)
        } else {
            self.holds_nothing()
        };
        self.refused.as_deref().filter(|_| done)
    }

    fn busy_slots(&self) -> u32 {
        self.held.values().filter(|done| !**done).count() as u32
    }

    fn free_slots(&self) -> u32 {
        self.identity.concurrency.saturating_sub(self.busy_slots())
    }

    /// Runs to ask the broker for: the free slots, and room among the ready runs.
    fn wanted(&self) -> u32 {
        let ready_room = if self.ready_paused {
            0
        } else {
            self.ready_target.saturating_sub(self.ready.len() as u32)
        };
        self.free_slots() + ready_room
    }

    fn request(actions: &mut Vec<Action>, purpose: Purpose, request: WorkerRequest) {
        actions.push(Action::Request {
            purpose,
            request,
            timeout: REQUEST_TIMEOUT,
        });
    }

    fn register(&mut self, actions: &mut Vec<Action>) {
        if self.register_in_flight {
            return;
        }
        self.register_in_flight = true;
        let identity = &self.identity;
        Self::request(
            actions,
            Purpose::Register,
            WorkerRequest::Register(Register {
                hostname: identity.hostname.clone(),
                pid: identity.pid,
                version: identity.version.clone(),
                concurrency: identity.concurrency,
                pools: identity.pools.clone(),
                running: self.running_ids(),
                max_log_bytes: identity.max_log_bytes,
                instance: identity.instance,
                prefetch: identity.prefetch,
                kill_grace_ms: identity.kill_grace.as_millis() as u64,
                earlier_started: identity.earlier_started.clone(),
                definition_ids: true,
            }),
        );
    }

    fn set_unregistered(&mut self, actions: &mut Vec<Action>) {
        if self.registered {
            tracing::info!("broker does not know this worker (restarted?): registering again");
        }
        self.registered = false;
        self.register(actions);
    }

    /// Time passing: heartbeats, reconnecting after silence, the drain deadline. Call it
    /// every few hundred milliseconds.
    /// A new connection (with several brokers, to the next of the list) and a new
    /// registration there.
    fn reconnect(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        self.last_heard_ms = now_ms;
        self.registered = false;
        self.register_in_flight = false;
        self.claim_in_flight = false;
        actions.push(Action::Reconnect);
        self.register(actions);
    }

    pub fn on_timer(&mut self, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.drain_deadline_ms.is_some_and(|d| now_ms >= d) {
            tracing::warn!("drain timeout reached: killing the runs still going");
            self.drain_deadline_ms = None;
            self.stop_all(&mut actions);
        }
        self.release_overdue_ready(now_ms, &mut actions);
        self.check_lease(now_ms, &mut actions);
        if now_ms < self.next_heartbeat_ms {
            return actions;
        }
        self.next_heartbeat_ms = now_ms + self.heartbeat_ms;
        let silent_ms = now_ms.saturating_sub(self.last_heard_ms);
        // With several brokers, three heartbeats of silence move on to the next: the one
        // spoken to may be dead (its successor takes over within a lease), and a standby
        // that names no leader yet does not count as heard.
        let mut silence_ms = self.identity.reconnect_after.as_millis() as u64;
        if self.identity.brokers > 1 {
            silence_ms = silence_ms.min(3 * self.heartbeat_ms);
        }
        if silent_ms > silence_ms {
            tracing::warn!(silent_ms, "nothing from the broker: reconnecting");
            self.reconnect(now_ms, &mut actions);
            return actions;
        }
        if !self.registered {
            self.register(&mut actions);
            return actions;
        }
        Self::request(
            &mut actions,
            Purpose::Heartbeat,
            WorkerRequest::Heartbeat(Heartbeat {
                running: self.running_ids(),
                free_slots: self.free_slots(),
                draining: self.draining,
            }),
        );
        // Poll for work now and then even without a wake-up, in case one was lost.
        self.maybe_claim(now_ms, &mut actions);
        actions
    }

    /// A hint from the broker's PUB socket.
    pub fn on_event(&mut self, event: Event, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        self.last_heard_ms = now_ms;
        match event {
            Event::BrokerAlive { boot_id, .. } => {
                if self.boot_id.is_some_and(|known| known != boot_id) {
                    tracing::info!("the broker restarted");
                    self.set_unregistered(&mut actions);
                }
            }
            Event::Wake { .. } => {
                self.want_work = true;
                self.maybe_claim(now_ms, &mut actions);
            }
            Event::Ping { ping_id } => actions.push(Action::AnswerPing(ping_id)),
            Event::OrdersPending => {
                Self::request(&mut actions, Purpose::Orders, WorkerRequest::FetchOrders)
            }
        }
        actions
    }

    /// The answer to a request sent at once (tests: a broker that answers in no time).
    #[cfg(test)]
    pub fn on_answer(&mut self, purpose: Purpose, answer: Answer, now_ms: u64) -> Vec<Action> {
        self.on_answer_to(purpose, now_ms, answer, now_ms)
    }

    /// SIGTERM or SIGINT: drain; a second one stops the runs at once.
    pub fn on_signal(&mut self, name: &str, now_ms: u64) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.draining {
            tracing::warn!(signal = name, "second signal: killing running runs now");
            self.stop_all(&mut actions);
        } else {
            tracing::info!(signal = name, "draining");
            self.begin_drain(now_ms, &mut actions);
        }
        actions
    }
}

#[cfg(test)]
mod tests;
