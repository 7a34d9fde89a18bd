//! The worker's life with the broker: register, heartbeat, claim work, follow orders,
//! reconnect after silence, and drain on SIGTERM.
//!
//! One loop owns all state. Network requests run in tasks that post their results back
//! to the loop, so the loop never waits on the broker.

use crate::config::WorkerConfig;
use crate::reporter::{ReportEvent, Reporter};
use crate::runner;
use anyhow::Result;
use jobcast_client::{Client, ClientConfig, ClientError};
use jobcast_protocol::message::{decode_event, topic};
use jobcast_protocol::{
    Assignment, ErrorCode, Event, Heartbeat, Orders, Register, Reply, RunFinished, WorkerInfo,
    WorkerRequest, JOBCAST_VERSION,
};
use jobcast_transport::{AsyncSocket, Limits, Received};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the broker may hold a claim before answering that nothing came. While it
/// waits, a run queued for this worker's pools is granted in the batch that queued it.
const CLAIM_WAIT: Duration = Duration::from_secs(10);
/// How long to keep trying to deliver the last reports when exiting.
const FINAL_FLUSH: Duration = Duration::from_secs(30);

enum Msg {
    Event(Event),
    Replied(Purpose, Result<Reply, ClientError>),
    Report(ReportEvent),
    RunnerDone(RunFinished),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Register,
    Heartbeat,
    Claim { sent: Instant },
    Orders,
    Release,
    Pong,
}

struct HeldRun {
    stop: watch::Sender<bool>,
    /// The runner has returned; the run waits for the broker to acknowledge its end.
    done: bool,
}

struct Session {
    config: Arc<WorkerConfig>,
    client: Client,
    reporter: Reporter,
    registered: watch::Sender<bool>,
    messages: mpsc::UnboundedSender<Msg>,
    held: BTreeMap<String, HeldRun>,
    boot_id: Option<u64>,
    heartbeat: Duration,
    last_heard: Instant,
    started: Instant,
    register_in_flight: bool,
    claim_in_flight: bool,
    want_work: bool,
    draining: bool,
    drain_deadline: Option<tokio::time::Instant>,
    subscriber: tokio::task::JoinHandle<()>,
    /// The broker refused this worker's registration for a reason that retrying cannot
    /// fix (its key may not serve a configured pool): exit once nothing is running.
    refused: Option<String>,
}

pub async fn run(config: WorkerConfig) -> Result<ExitCode> {
    let config = Arc::new(config);
    let client = Client::connect_in_background(ClientConfig {
        endpoint: config.broker.clone(),
        name: config.id.clone(),
        secret: config.secret.clone(),
        connect_timeout: config.connect_timeout,
        max_clock_skew: Duration::from_secs(30),
    });
    let (messages, mut inbox) = mpsc::unbounded_channel();
    let (registered, registered_rx) = watch::channel(false);
    let reporter = Reporter::default();
    let (report_tx, mut report_rx) = mpsc::unbounded_channel();
    tokio::spawn(
        reporter
            .clone()
            .run(client.clone(), registered_rx, report_tx),
    );
    {
        let messages = messages.clone();
        tokio::spawn(async move {
            while let Some(event) = report_rx.recv().await {
                if messages.send(Msg::Report(event)).is_err() {
                    return;
                }
            }
        });
    }
    let subscriber = tokio::spawn(subscribe(config.clone(), messages.clone()));
    let mut session = Session {
        config: config.clone(),
        client,
        reporter,
        registered,
        messages,
        held: BTreeMap::new(),
        boot_id: None,
        heartbeat: Duration::from_secs(1),
        last_heard: Instant::now(),
        started: Instant::now(),
        register_in_flight: false,
        claim_in_flight: false,
        want_work: true,
        draining: false,
        drain_deadline: None,
        subscriber,
        refused: None,
    };
    tracing::info!(worker = %config.id, broker = %config.broker, pools = ?config.pools, concurrency = config.concurrency, "worker starting");
    session.register();

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let mut next_heartbeat = tokio::time::Instant::now();
    let mut reap = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = term.recv() => session.on_signal("SIGTERM"),
            _ = int.recv() => session.on_signal("SIGINT"),
            Some(msg) = inbox.recv() => session.on_message(msg),
            _ = ticker.tick() => {
                let now = tokio::time::Instant::now();
                if now >= next_heartbeat {
                    next_heartbeat = now + session.heartbeat;
                    session.on_heartbeat_timer();
                }
                if session.drain_deadline.is_some_and(|d| now >= d) {
                    tracing::warn!("drain timeout reached: killing the runs still going");
                    session.drain_deadline = None;
                    session.kill_all();
                }
            }
            _ = reap.tick() => crate::process::reap_orphans(),
        }
        if let Some(reason) = &session.refused {
            if session.held.is_empty() {
                tracing::error!("the broker refuses this worker: {reason}");
                return Ok(ExitCode::FAILURE);
            }
        }
        if session.draining && session.held.values().all(|h| h.done) {
            break;
        }
    }
    // Every run has ended; make sure the broker has heard about all of them.
    let deadline = Instant::now() + FINAL_FLUSH;
    while !session.held.is_empty() || !session.reporter.is_empty() {
        if Instant::now() >= deadline {
            tracing::error!(
                unreported = session.held.len(),
                "could not deliver the last reports to the broker"
            );
            return Ok(ExitCode::FAILURE);
        }
        tokio::select! {
            Some(msg) = inbox.recv() => session.on_message(msg),
            _ = tokio::time::sleep(Duration::from_millis(250)) => {
                if !*session.registered.borrow() {
                    session.register();
                }
            }
        }
    }
    tracing::info!("drained: exiting");
    Ok(ExitCode::SUCCESS)
}

/// Events are a topic and a few dozen bytes; anything larger is not from a broker.
const MAX_EVENT_BYTES: usize = 64 << 10;

fn open_subscriber(config: &WorkerConfig) -> jobcast_transport::Result<AsyncSocket> {
    let limits = Limits {
        max_message_bytes: MAX_EVENT_BYTES,
        ..Limits::default()
    };
    let mut topics = vec![topic::ALL.to_string(), topic::worker(&config.id)];
    topics.extend(config.pools.iter().map(|p| topic::pool(p)));
    let credentials = jobcast_client::credentials(&config.id, &config.secret);
    jobcast_transport::subscriber(&config.events, &topics, &limits, &credentials)
}

/// Receives events for this worker's topics. libzmq connects, and reconnects after the
/// broker restarts, by itself.
async fn subscribe(config: Arc<WorkerConfig>, messages: mpsc::UnboundedSender<Msg>) {
    let socket = match open_subscriber(&config) {
        Ok(socket) => socket,
        Err(e) => {
            tracing::error!(endpoint = %config.events, error = %e, "cannot open the event socket");
            return;
        }
    };
    loop {
        match socket.recv(2).await {
            Ok(Received::Parts(parts)) => {
                if let Some(event) = parts.get(1).and_then(|b| decode_event(b)) {
                    if messages.send(Msg::Event(event)).is_err() {
                        return;
                    }
                }
            }
            Ok(Received::TooManyParts(_)) => {}
            Err(e) => {
                tracing::error!(error = %e, "event socket failed");
                return;
            }
        }
    }
}

fn rss_bytes() -> u64 {
    let pages: u64 = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

impl Session {
    fn request(&self, purpose: Purpose, request: WorkerRequest) {
        self.request_within(purpose, request, REQUEST_TIMEOUT);
    }

    fn request_within(&self, purpose: Purpose, request: WorkerRequest, timeout: Duration) {
        let client = self.client.clone();
        let messages = self.messages.clone();
        tokio::spawn(async move {
            let result = client.request(request, timeout).await;
            let _ = messages.send(Msg::Replied(purpose, result));
        });
    }

    fn running_ids(&self) -> Vec<String> {
        self.held.keys().cloned().collect()
    }

    fn busy_slots(&self) -> u32 {
        self.held.values().filter(|h| !h.done).count() as u32
    }

    fn free_slots(&self) -> u32 {
        self.config.concurrency.saturating_sub(self.busy_slots())
    }

    fn register(&mut self) {
        if self.register_in_flight {
            return;
        }
        self.register_in_flight = true;
        self.request(
            Purpose::Register,
            WorkerRequest::Register(Register {
                hostname: crate::config::hostname(),
                pid: std::process::id(),
                version: JOBCAST_VERSION.to_string(),
                concurrency: self.config.concurrency,
                pools: self.config.pools.clone(),
                running: self.running_ids(),
                max_log_bytes: self.config.max_log_bytes,
            }),
        );
    }

    fn set_unregistered(&mut self) {
        if *self.registered.borrow() {
            tracing::info!("broker does not know this worker (restarted?): registering again");
        }
        let _ = self.registered.send(false);
        self.register();
    }

    fn on_heartbeat_timer(&mut self) {
        if self.last_heard.elapsed() > self.config.reconnect_after_inactivity {
            tracing::warn!(silent_for = ?self.last_heard.elapsed(), "nothing from the broker: reconnecting");
            self.reconnect();
            return;
        }
        if !*self.registered.borrow() {
            self.register();
            return;
        }
        self.request(
            Purpose::Heartbeat,
            WorkerRequest::Heartbeat(Heartbeat {
                running: self.running_ids(),
                free_slots: self.free_slots(),
                draining: self.draining,
            }),
        );
        // Poll for work now and then even without a wake-up, in case one was lost.
        self.maybe_claim();
    }

    fn reconnect(&mut self) {
        self.last_heard = Instant::now();
        let _ = self.registered.send(false);
        self.register_in_flight = false;
        self.claim_in_flight = false;
        self.client.reconnect();
        self.subscriber.abort();
        let delay = Duration::from_millis(jobcast_protocol::envelope::random_nonce() % 500);
        let config = self.config.clone();
        let messages = self.messages.clone();
        self.subscriber = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            subscribe(config, messages).await
        });
        self.register();
    }

    fn maybe_claim(&mut self) {
        if self.draining || self.claim_in_flight || !self.want_work || !*self.registered.borrow() {
            return;
        }
        let free = self.free_slots();
        if free == 0 {
            return;
        }
        self.claim_in_flight = true;
        self.request_within(
            Purpose::Claim {
                sent: Instant::now(),
            },
            WorkerRequest::Claim {
                max: free,
                wait_ms: CLAIM_WAIT.as_millis() as u64,
            },
            CLAIM_WAIT + REQUEST_TIMEOUT,
        );
    }

    fn on_message(&mut self, msg: Msg) {
        match msg {
            Msg::Event(event) => {
                self.last_heard = Instant::now();
                self.on_event(event);
            }
            Msg::Replied(purpose, result) => self.on_reply(purpose, result),
            Msg::Report(ReportEvent::FinishAcked(run_id)) => {
                self.held.remove(&run_id);
            }
            Msg::Report(ReportEvent::Granted { runs }) => {
                self.last_heard = Instant::now();
                // Slots still free after this wait in a claim the broker holds.
                self.want_work = true;
                for assignment in runs {
                    self.start(assignment);
                }
                self.maybe_claim();
            }
            Msg::Report(ReportEvent::NotRegistered) => self.set_unregistered(),
            Msg::Report(ReportEvent::Heard) => self.last_heard = Instant::now(),
            Msg::RunnerDone(mut finished) => {
                if let Some(held) = self.held.get_mut(&finished.run_id) {
                    held.done = true;
                }
                // The report that frees the slot also asks for work to fill it: one round
                // trip from one run's end to the next run's start.
                if !self.draining && !self.claim_in_flight && *self.registered.borrow() {
                    finished.claim = self.free_slots();
                }
                self.reporter.push(WorkerRequest::RunFinished(finished));
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::BrokerAlive { boot_id, .. } => {
                if self.boot_id.is_some_and(|known| known != boot_id) {
                    tracing::info!("the broker restarted");
                    self.set_unregistered();
                }
            }
            Event::Wake { .. } => {
                self.want_work = true;
                self.maybe_claim();
            }
            Event::Ping { ping_id } => {
                let info = WorkerInfo {
                    version: JOBCAST_VERSION.to_string(),
                    hostname: crate::config::hostname(),
                    pid: std::process::id(),
                    concurrency: self.config.concurrency,
                    pools: self.config.pools.clone(),
                    running: self.running_ids(),
                    uptime_ms: self.started.elapsed().as_millis() as u64,
                    rss_bytes: rss_bytes(),
                    draining: self.draining,
                };
                self.request(Purpose::Pong, WorkerRequest::Pong { ping_id, info });
            }
            Event::OrdersPending => self.request(Purpose::Orders, WorkerRequest::FetchOrders),
        }
    }

    fn on_reply(&mut self, purpose: Purpose, result: Result<Reply, ClientError>) {
        match purpose {
            Purpose::Register => self.register_in_flight = false,
            Purpose::Claim { .. } => self.claim_in_flight = false,
            _ => {}
        }
        let reply = match result {
            Ok(reply) => {
                self.last_heard = Instant::now();
                reply
            }
            Err(ClientError::Refused { reason, detail }) => {
                tracing::error!(%reason, "the broker refuses this worker: {detail}");
                return;
            }
            Err(e) => {
                tracing::debug!(?purpose, error = %e, "request failed");
                return;
            }
        };
        match reply {
            Reply::Registered {
                boot_id,
                heartbeat_interval_ms,
                orders,
            } => {
                if self.boot_id != Some(boot_id) {
                    tracing::info!(boot_id, "registered with the broker");
                }
                self.boot_id = Some(boot_id);
                self.heartbeat = Duration::from_millis(heartbeat_interval_ms.clamp(100, 60_000));
                let _ = self.registered.send(true);
                self.want_work = true;
                self.apply(orders);
                self.maybe_claim();
            }
            Reply::Orders(orders) => self.apply(orders),
            Reply::Granted { runs, more_queued } => {
                if let Purpose::Claim { sent } = purpose {
                    // Slots left free wait in a new claim, unless the broker answered
                    // "nothing" at once instead of holding the claim (it is draining this
                    // worker, or does not hold claims): then a wake-up or the heartbeat
                    // asks again.
                    self.want_work =
                        !runs.is_empty() || more_queued || sent.elapsed() >= CLAIM_WAIT / 2;
                }
                for assignment in runs {
                    self.start(assignment);
                }
                self.maybe_claim();
            }
            Reply::Error {
                code: ErrorCode::NotRegistered,
                ..
            } => self.set_unregistered(),
            Reply::Error {
                code: ErrorCode::Forbidden,
                message,
            } if purpose == Purpose::Register => {
                self.refused = Some(message);
                if !self.draining {
                    self.begin_drain();
                }
            }
            Reply::Error { code, message } => {
                tracing::error!(?purpose, ?code, "broker refused a request: {message}");
            }
            _ => {}
        }
    }

    fn start(&mut self, assignment: Assignment) {
        let (stop, stop_rx) = watch::channel(false);
        if self.draining {
            // Claimed just as the drain began: hand it back unstarted.
            self.request(
                Purpose::Release,
                WorkerRequest::Release {
                    run_ids: vec![assignment.run_id],
                },
            );
            return;
        }
        let run_id = assignment.run_id.clone();
        if self.held.contains_key(&run_id) {
            return;
        }
        self.held
            .insert(run_id.clone(), HeldRun { stop, done: false });
        let config = self.config.clone();
        let reporter = self.reporter.clone();
        let messages = self.messages.clone();
        tokio::spawn(async move {
            let finished = runner::execute(assignment, config, reporter, stop_rx).await;
            let _ = messages.send(Msg::RunnerDone(finished));
        });
    }

    fn apply(&mut self, orders: Orders) {
        for run_id in &orders.kill {
            match self.held.get(run_id) {
                Some(held) if !held.done => {
                    tracing::info!(run_id, "kill ordered by the broker");
                    let _ = held.stop.send(true);
                }
                _ => {}
            }
        }
        if orders.drain && !self.draining {
            tracing::info!("drain ordered by the broker");
            self.begin_drain();
        }
    }

    fn begin_drain(&mut self) {
        self.draining = true;
        self.drain_deadline = Some(tokio::time::Instant::now() + self.config.drain_timeout);
        tracing::info!(running = self.busy_slots(), timeout = ?self.config.drain_timeout, "draining: taking no new work");
    }

    fn kill_all(&mut self) {
        for held in self.held.values().filter(|h| !h.done) {
            let _ = held.stop.send(true);
        }
    }

    fn on_signal(&mut self, name: &str) {
        if self.draining {
            tracing::warn!(signal = name, "second signal: killing running runs now");
            self.kill_all();
        } else {
            tracing::info!(signal = name, "draining");
            self.begin_drain();
        }
    }
}
