//! The worker's I/O shell around [`WorkerState`]: it feeds the state what happens (broker
//! answers and hints, runs ending, signals, the clock) and carries out the actions it
//! returns (requests, reports, runs started and stopped, reconnecting).
//!
//! One loop owns the state. Network requests run in tasks that post their answers back
//! to the loop, so the loop never waits on the broker.

use crate::config::{BrokerEndpoints, WorkerConfig};
use crate::reporter::Reporter;
use crate::runner;
use crate::scripts::{self, ScriptFiles};
use crate::start_ledger::StartLedger;
use crate::state::{Action, Answer, Identity, Purpose, ReportAnswer, WorkerState};
use anyhow::{Context, Result};
use jobcast_client::{Client, ClientConfig, ClientError};
use jobcast_protocol::message::{decode_event, topic};
use jobcast_protocol::{
    Assignment, Event, Reply, RunFinished, WorkerInfo, WorkerRequest, JOBCAST_VERSION,
};
use jobcast_transport::{AsyncSocket, Limits, Received};
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{mpsc, watch};

/// How long to keep trying to deliver the last reports when exiting.
const FINAL_FLUSH: Duration = Duration::from_secs(30);
/// How often the state hears the time.
const TIMER: Duration = Duration::from_millis(250);

/// The exit code of a worker the broker refuses (unknown id, wrong secret, a pool its key
/// may not serve): restarting it changes nothing until the configuration does.
pub const EXIT_REFUSED: u8 = 3;

/// How long a drained worker waits for the broker to take its leaving notice.
const LEAVING_TIMEOUT: Duration = Duration::from_secs(2);

enum Msg {
    Event(Event),
    /// A request's answer, with when it was sent (the worker's lease runs from there).
    Answered(Purpose, u64, Answer),
    Report(ReportAnswer),
    RunnerDone(RunFinished),
    /// The connection to the broker closed.
    ConnectionClosed,
}

struct Shell {
    config: Arc<WorkerConfig>,
    scripts: ScriptFiles,
    client: Client,
    reporter: Reporter,
    registered: watch::Sender<bool>,
    messages: mpsc::UnboundedSender<Msg>,
    /// How to stop each run whose process is still going.
    stops: HashMap<String, watch::Sender<bool>>,
    subscriber: tokio::task::JoinHandle<()>,
    /// The broker spoken to now: one of the list, or a leader a standby named.
    broker: BrokerEndpoints,
    /// Where in the list the broker spoken to now is (a reconnect after a silence moves
    /// on to the next).
    listed: usize,
    /// A broker the worker just moved away from (its connection closed, or it was
    /// silent), and until when a standby naming it as the leader is not followed back
    /// there (its news may be older than that).
    left: Option<(String, Instant)>,
    started: Instant,
    /// The runs this worker's processes started, on disk (`start_ledger.rs`).
    ledger: Arc<std::sync::Mutex<StartLedger>>,
}

pub async fn run(config: WorkerConfig) -> Result<ExitCode> {
    let config = Arc::new(config);
    let first = config
        .brokers
        .first()
        .cloned()
        .context("no broker to connect to")?;
    let client = Client::connect_in_background(ClientConfig {
        endpoint: first.router.clone(),
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
            while let Some(answer) = report_rx.recv().await {
                if messages.send(Msg::Report(answer)).is_err() {
                    return;
                }
            }
        });
    }
    let scripts =
        ScriptFiles::new(&config.script_temp_path, scripts::DEFAULT_KEPT).with_context(|| {
            format!(
                "cannot clear the script directory {}",
                config.script_temp_path.display()
            )
        })?;
    let (ledger, earlier_started) =
        StartLedger::open(&config.script_temp_path).with_context(|| {
            format!(
                "cannot open the start ledger in {}",
                config.script_temp_path.display()
            )
        })?;
    {
        // A closed connection is news to the state (with several brokers it moves on).
        let mut closings = client.closings();
        let messages = messages.clone();
        tokio::spawn(async move {
            while closings.changed().await.is_ok() {
                if messages.send(Msg::ConnectionClosed).is_err() {
                    return;
                }
            }
        });
    }
    let subscriber = tokio::spawn(subscribe(
        config.clone(),
        first.events.clone(),
        messages.clone(),
    ));
    let mut shell = Shell {
        config: config.clone(),
        scripts,
        client,
        reporter,
        registered,
        messages,
        stops: HashMap::new(),
        subscriber,
        broker: first,
        listed: 0,
        left: None,
        started: Instant::now(),
        ledger: Arc::new(std::sync::Mutex::new(ledger)),
    };
    let mut state = WorkerState::new(
        Identity {
            hostname: crate::config::hostname(),
            pid: std::process::id(),
            // Never 0, which means "not known" to the broker.
            instance: jobcast_protocol::envelope::random_nonce().max(1),
            version: JOBCAST_VERSION.to_string(),
            concurrency: config.concurrency,
            prefetch: config.prefetch,
            pools: config.pools.clone(),
            max_log_bytes: config.max_log_bytes,
            reconnect_after: config.reconnect_after_inactivity,
            brokers: config.brokers.len(),
            drain_timeout: config.drain_timeout,
            kill_grace: config.kill_grace,
            earlier_started,
        },
        shell.now_ms(),
    );
    tracing::info!(worker = %config.id, brokers = %config.brokers.iter().map(|b| b.router.as_str()).collect::<Vec<_>>().join(","), pools = %config.pools.join(","), concurrency = config.concurrency, "worker starting");
    let actions = state.start();
    shell.carry_out(actions, &state);

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut timer = tokio::time::interval(TIMER);
    let mut reap = tokio::time::interval(Duration::from_secs(1));
    loop {
        let actions = tokio::select! {
            _ = term.recv() => state.on_signal("SIGTERM", shell.now_ms()),
            _ = int.recv() => state.on_signal("SIGINT", shell.now_ms()),
            Some(msg) = inbox.recv() => shell.take(msg, &mut state),
            _ = timer.tick() => state.on_timer(shell.now_ms()),
            _ = reap.tick() => {
                crate::process::reap_orphans();
                Vec::new()
            }
        };
        shell.carry_out(actions, &state);
        if let Some(reason) = state.refused_with_nothing_running() {
            tracing::error!("the broker refuses this worker: {reason}");
            return Ok(ExitCode::from(EXIT_REFUSED));
        }
        if state.drained() {
            break;
        }
    }
    // Every run has ended; make sure the broker has heard about all of them.
    let deadline = Instant::now() + FINAL_FLUSH;
    while !state.holds_nothing() || !shell.reporter.is_empty() {
        if Instant::now() >= deadline {
            tracing::error!(
                unreported = state.running_ids().len(),
                "could not deliver the last reports to the broker"
            );
            return Ok(ExitCode::FAILURE);
        }
        let actions = tokio::select! {
            Some(msg) = inbox.recv() => shell.take(msg, &mut state),
            _ = timer.tick() => state.on_timer(shell.now_ms()),
        };
        shell.carry_out(actions, &state);
    }
    // Offline at the broker now rather than after its worker timeout; an old broker
    // that does not know the request, or no answer, changes nothing but that.
    match shell
        .client
        .request(WorkerRequest::Leaving, LEAVING_TIMEOUT)
        .await
    {
        Ok(Reply::Ack) => tracing::debug!("the broker knows this worker left"),
        other => tracing::debug!(answer = ?other, "the broker did not take the leaving notice"),
    }
    tracing::info!("drained: exiting");
    Ok(ExitCode::SUCCESS)
}

impl Drop for Shell {
    fn drop(&mut self) {
        // However the worker ends, it leaves no script file that no run uses.
        self.scripts.clear();
    }
}

impl Shell {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Hands a message to the state.
    fn take(&mut self, msg: Msg, state: &mut WorkerState) -> Vec<Action> {
        let now = self.now_ms();
        match msg {
            Msg::Event(event) => state.on_event(event, now),
            Msg::Answered(purpose, sent_ms, answer) => {
                state.on_answer_to(purpose, sent_ms, answer, now)
            }
            Msg::Report(answer) => state.on_report(answer, now),
            Msg::ConnectionClosed => state.on_connection_closed(now),
            Msg::RunnerDone(finished) => {
                self.stops.remove(&finished.run_id);
                state.on_run_done(finished)
            }
        }
    }

    fn carry_out(&mut self, actions: Vec<Action>, state: &WorkerState) {
        for action in actions {
            match action {
                Action::Request {
                    purpose,
                    request,
                    timeout,
                } => self.request(purpose, request, timeout),
                Action::Report { request, may_wait } => self.reporter.push_as(request, may_wait),
                Action::Start(assignment) => self.start(*assignment),
                Action::Stop(run_id) => {
                    if let Some(stop) = self.stops.get(&run_id) {
                        let _ = stop.send(true);
                    }
                }
                Action::AnswerPing(ping_id) => {
                    let info = self.info(state);
                    self.request(
                        Purpose::Pong,
                        WorkerRequest::Pong { ping_id, info },
                        crate::state::REQUEST_TIMEOUT,
                    );
                }
                Action::Reconnect => self.reconnect(),
                Action::Follow(leader) => {
                    let just_left = self.left.as_ref().is_some_and(|(router, until)| {
                        *router == leader.router && Instant::now() < *until
                    });
                    if !just_left {
                        self.move_to(BrokerEndpoints {
                            router: leader.router,
                            events: leader.publish,
                        });
                    }
                }
            }
        }
        // The reporter sends only while the broker knows this worker, and puts a start
        // inside its run's end, and several reports in one message, only for a broker
        // that takes them so.
        self.registered.send_if_modified(|registered| {
            std::mem::replace(registered, state.is_registered()) != state.is_registered()
        });
        self.reporter.starts_in_ends(state.starts_in_ends());
        self.reporter.reports_together(state.reports_together());
    }

    fn request(&self, purpose: Purpose, request: WorkerRequest, timeout: Duration) {
        let client = self.client.clone();
        let messages = self.messages.clone();
        let sent_ms = self.now_ms();
        tokio::spawn(async move {
            let answer = match client.request(request, timeout).await {
                Ok(reply) => Answer::Reply(reply),
                Err(ClientError::Refused { reason, detail }) => Answer::Refused { reason, detail },
                Err(e) => Answer::Failed(e.to_string()),
            };
            let _ = messages.send(Msg::Answered(purpose, sent_ms, answer));
        });
    }

    fn start(&mut self, assignment: Assignment) {
        let (stop, stop_rx) = watch::channel(false);
        self.stops.insert(assignment.run_id.clone(), stop);
        let config = self.config.clone();
        let scripts = self.scripts.clone();
        let reporter = self.reporter.clone();
        let messages = self.messages.clone();
        let ledger = Some(self.ledger.clone());
        tokio::spawn(async move {
            let finished =
                runner::execute(assignment, config, scripts, reporter, stop_rx, ledger).await;
            let _ = messages.send(Msg::RunnerDone(finished));
        });
    }

    /// After a silence: the same broker again, or with several, the next of the list
    /// (the one spoken to may be gone with its host).
    fn reconnect(&mut self) {
        if self.config.brokers.len() > 1 {
            // A standby's news may be older than this: it is not followed back here.
            self.left = Some((
                self.broker.router.clone(),
                Instant::now() + Duration::from_secs(2),
            ));
            self.listed = (self.listed + 1) % self.config.brokers.len();
            let next = self.config.brokers[self.listed].clone();
            tracing::info!(broker = %next.router, "trying the next broker of the list");
            self.move_to(next);
            return;
        }
        self.client.reconnect();
        self.resubscribe();
    }

    /// Talks to `broker` from now on: requests and events.
    fn move_to(&mut self, broker: BrokerEndpoints) {
        if broker.router == self.broker.router {
            // Already there (a standby on the same address names the broker it
            // replaced): nothing to move.
            return;
        }
        if let Some(listed) = self
            .config
            .brokers
            .iter()
            .position(|b| b.router == broker.router)
        {
            self.listed = listed;
        }
        self.client.reconnect_to(&broker.router);
        self.broker = broker;
        self.resubscribe();
    }

    fn resubscribe(&mut self) {
        self.subscriber.abort();
        let delay = Duration::from_millis(jobcast_protocol::envelope::random_nonce() % 500);
        let config = self.config.clone();
        let events = self.broker.events.clone();
        let messages = self.messages.clone();
        self.subscriber = tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            subscribe(config, events, messages).await
        });
    }

    fn info(&self, state: &WorkerState) -> WorkerInfo {
        WorkerInfo {
            version: JOBCAST_VERSION.to_string(),
            hostname: crate::config::hostname(),
            pid: std::process::id(),
            concurrency: self.config.concurrency,
            pools: self.config.pools.clone(),
            running: state.running_ids(),
            uptime_ms: self.now_ms(),
            rss_bytes: crate::procfs::rss_bytes(std::process::id() as i32),
            draining: state.is_draining(),
            containment: self.config.containment.describe(),
        }
    }
}

/// Events are a topic and a few dozen bytes; anything larger is not from a broker.
const MAX_EVENT_BYTES: usize = 64 << 10;

fn open_subscriber(config: &WorkerConfig, events: &str) -> jobcast_transport::Result<AsyncSocket> {
    let limits = Limits {
        max_message_bytes: MAX_EVENT_BYTES,
        ..Limits::default()
    };
    let mut topics = vec![topic::ALL.to_string(), topic::worker(&config.id)];
    topics.extend(config.pools.iter().map(|p| topic::pool(p)));
    let credentials = jobcast_client::credentials(&config.id, &config.secret);
    jobcast_transport::subscriber(events, &topics, &limits, &credentials)
}

/// Receives events for this worker's topics. libzmq connects, and reconnects after the
/// broker restarts, by itself.
async fn subscribe(
    config: Arc<WorkerConfig>,
    events: String,
    messages: mpsc::UnboundedSender<Msg>,
) {
    let socket = match open_subscriber(&config, &events) {
        Ok(socket) => socket,
        Err(e) => {
            tracing::error!(endpoint = %events, error = %e, "cannot open the event socket");
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
