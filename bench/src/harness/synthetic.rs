//! A worker that runs nothing: it claims runs the way a real one does (at once, or with a
//! claim left waiting at the broker) and reports each started and ended at once, so that
//! what is measured is the broker.

use super::*;
use jobcast_protocol::{Report, StartedAs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Report every start on its own, as workers before the seventeenth session did (and as
/// today's do for a run that outlives the reporter's gathering): `--starts-apart`.
static STARTS_APART: AtomicBool = AtomicBool::new(false);

/// Makes the synthetic workers send each run's start as a report of its own even to a
/// broker that takes starts inside ends.
pub fn report_starts_apart(yes: bool) {
    STARTS_APART.store(yes, Ordering::Relaxed);
}

/// What the broker's `Registered` said it takes.
#[derive(Debug, Clone, Copy)]
struct Told {
    /// A run's start inside its end (and `--starts-apart` is not given).
    starts_in_ends: bool,
    /// Several reports in one message.
    reports_together: bool,
}

/// (scheduled time in ms, time granted in µs)
type Grant = (u64, u64);

/// How a synthetic worker asks for runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claiming {
    /// Claims everything queued when a wake-up hint arrives.
    OnWake,
    /// Keeps a claim waiting at the broker, as a real worker with free slots does, so a
    /// run is granted in the batch that creates it.
    Waiting,
}

/// How long a waiting claim waits before it is asked again.
const CLAIM_WAIT: Duration = Duration::from_secs(1);

/// A worker that runs nothing: what it is granted it reports started and ended at once.
pub struct SyntheticWorker {
    grants: tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<Grant>>>,
    /// Becomes true with the first event received: the subscriptions are in place.
    live: tokio::sync::watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// The registration of a synthetic worker with `slots` slots in `pool`.
pub fn synthetic_registration(pool: &str, slots: u32) -> Register {
    Register {
        hostname: "bench".into(),
        pid: std::process::id(),
        version: jobcast_protocol::JOBCAST_VERSION.into(),
        concurrency: slots,
        pools: vec![pool.to_string()],
        running: vec![],
        max_log_bytes: 1 << 20,
        instance: jobcast_protocol::envelope::random_nonce().max(1),
        prefetch: 0,
        kill_grace_ms: jobcast_protocol::DEFAULT_KILL_GRACE_MS,
        earlier_started: None,
        definition_ids: true,
    }
}

impl SyntheticWorker {
    pub async fn start(broker: &Broker, pool: &str) -> Result<SyntheticWorker> {
        Self::start_numbered(broker, pool, 1).await
    }

    pub async fn start_numbered(broker: &Broker, pool: &str, n: usize) -> Result<SyntheticWorker> {
        Self::start_claiming(broker, pool, n, Claiming::OnWake).await
    }

    pub async fn start_claiming(
        broker: &Broker,
        pool: &str,
        n: usize,
        claiming: Claiming,
    ) -> Result<SyntheticWorker> {
        let client = Client::connect(ClientConfig {
            endpoint: broker.router.clone(),
            name: format!("bench-w{n}"),
            secret: Secret::new(WORKER_SECRET),
            connect_timeout: Duration::from_secs(5),
            max_clock_skew: Duration::from_secs(30),
        })
        .await?;
        let reply = client
            .request(
                WorkerRequest::Register(synthetic_registration(pool, 1_000_000)),
                TIMEOUT,
            )
            .await?;
        // A run that "ends" the moment it starts ends while its start waits in a real
        // worker's reporter, which then sends one report for both to a broker that says
        // it takes them.
        let told = match reply {
            Reply::Registered {
                starts_in_ends,
                reports_together,
                ..
            } => Told {
                starts_in_ends: starts_in_ends && !STARTS_APART.load(Ordering::Relaxed),
                reports_together,
            },
            reply => bail!("register refused: {reply:?}"),
        };
        // `all/` last: once its heartbeats arrive, the others are in place too (libzmq
        // sends subscriptions in order).
        let sub = jobcast_transport::subscriber(
            &broker.publish,
            &[
                topic::pool(pool),
                topic::worker(&format!("bench-w{n}")),
                topic::ALL.to_string(),
            ],
            &Limits::default(),
            &jobcast_client::credentials(&format!("bench-w{n}"), &Secret::new(WORKER_SECRET)),
        )?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (live_tx, live) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(serve(client, sub, tx, live_tx, claiming, told));
        Ok(SyntheticWorker {
            grants: tokio::sync::Mutex::new(rx),
            live,
            task,
        })
    }

    /// Waits until the worker hears the broker's events (a subscription reaches the
    /// broker a moment after the connection: a hint sent before is not seen).
    pub async fn wait_live(&self, timeout: Duration) -> Result<()> {
        let mut live = self.live.clone();
        let heard =
            tokio::time::timeout(timeout, async { live.wait_for(|live| *live).await.is_ok() })
                .await
                .unwrap_or(false);
        if !heard {
            bail!("the synthetic worker heard nothing from the broker within {timeout:?}");
        }
        Ok(())
    }

    /// Grants received since the last call, waiting up to `timeout` for some.
    pub async fn next_grants(&self, timeout: Duration) -> Result<Vec<Grant>> {
        let mut rx = self.grants.lock().await;
        match tokio::time::timeout(timeout, rx.recv()).await {
            Ok(Some(batch)) => Ok(batch),
            Ok(None) => bail!("the synthetic worker stopped"),
            Err(_) => Ok(Vec::new()),
        }
    }

    pub async fn stop(self) {
        self.task.abort();
    }
}

async fn serve(
    client: Client,
    sub: AsyncSocket,
    grants: mpsc::UnboundedSender<Vec<Grant>>,
    live: tokio::sync::watch::Sender<bool>,
    claiming: Claiming,
    told: Told,
) {
    // Ended with this task: a JoinSet aborts what it holds when dropped.
    let mut claims = tokio::task::JoinSet::new();
    let reports = Arc::new(Semaphore::new(REPORTS_IN_FLIGHT));
    if claiming == Claiming::Waiting {
        claims.spawn(claim_waiting(
            client.clone(),
            grants.clone(),
            reports.clone(),
            told,
        ));
    }
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            message = sub.recv(2) => {
                let Ok(Received::Parts(frames)) = message else { return };
                live.send_if_modified(|live| !std::mem::replace(live, true));
                match frames.get(1).and_then(|b| decode_event(b)) {
                    Some(Event::Wake { .. }) if claiming == Claiming::OnWake => {}
                    Some(Event::Ping { ping_id }) => {
                        drop(client.submit(WorkerRequest::Pong { ping_id, info: jobcast_protocol::WorkerInfo {
                            version: jobcast_protocol::JOBCAST_VERSION.into(),
                            hostname: "bench".into(),
                            pid: std::process::id(),
                            concurrency: 1_000_000,
                            pools: vec![],
                            running: vec![],
                            uptime_ms: 0,
                            rss_bytes: 0,
                            draining: false,
                            containment: String::new(),
                        }}));
                        continue;
                    }
                    _ => continue,
                }
                // Claim until the queue is empty.
                loop {
                    let Ok(Reply::Granted { runs, .. }) = client.request(WorkerRequest::Claim { max: 100_000, wait_ms: 0 }, TIMEOUT).await else {
                        break;
                    };
                    let at = now_us();
                    if runs.is_empty() {
                        break;
                    }
                    let batch = runs.iter().map(|r| (r.scheduled_at_ms, at)).collect();
                    if grants.send(batch).is_err() {
                        return;
                    }
                    report_done(&client, runs, &reports, told);
                }
            }
            _ = heartbeat.tick() => {
                let _ = client.submit(WorkerRequest::Heartbeat(Heartbeat { running: vec![], free_slots: 1_000_000, draining: false }));
            }
        }
    }
}

/// `Claiming::Waiting`: a claim for everything always waiting at the broker.
async fn claim_waiting(
    client: Client,
    grants: mpsc::UnboundedSender<Vec<Grant>>,
    reports: Arc<Semaphore>,
    told: Told,
) {
    loop {
        let claim = WorkerRequest::Claim {
            max: 100_000,
            wait_ms: CLAIM_WAIT.as_millis() as u64,
        };
        let Ok(Reply::Granted { runs, .. }) = client.request(claim, CLAIM_WAIT + TIMEOUT).await
        else {
            return;
        };
        let at = now_us();
        if runs.is_empty() {
            continue;
        }
        if grants
            .send(runs.iter().map(|r| (r.scheduled_at_ms, at)).collect())
            .is_err()
        {
            return;
        }
        report_done(&client, runs, &reports, told);
    }
}

/// Reports granted runs started and then ended, as a real worker's outbox does: a
/// window of reports in flight at a time, each sent again until it is answered (a
/// reply the broker had to drop, its queue to this worker full while the bench's
/// process was busy, would otherwise leave the run unfinished and the bench waiting).
/// With `starts_in_ends`, each run's start goes inside its end, one report a run; with
/// `reports_together`, a window's reports go in one message.
fn report_done(
    client: &Client,
    runs: Vec<jobcast_protocol::GrantedRun>,
    reports: &Arc<Semaphore>,
    told: Told,
) {
    let client = client.clone();
    let reports = reports.clone();
    tokio::spawn(async move {
        for window in runs.chunks(REPORT_WINDOW) {
            let Ok(_room) = reports.acquire_many(window.len() as u32).await else {
                return;
            };
            let started_as = StartedAs {
                pid: 1,
                spawned_at_us: 0,
            };
            let starts_in_ends = told.starts_in_ends;
            if !starts_in_ends {
                let started = window.iter().map(|run| WorkerRequest::RunStarted {
                    run_id: run.run_id.clone(),
                    pid: started_as.pid,
                    spawned_at_us: started_as.spawned_at_us,
                });
                report_until_answered(&client, started.collect(), told.reports_together).await;
            }
            let finished = window.iter().map(|run| {
                WorkerRequest::RunFinished(RunFinished {
                    run_id: run.run_id.clone(),
                    outcome: Outcome::Exited { code: 0 },
                    duration_ms: 0,
                    log_bytes: 0,
                    claim: 0,
                    usage: None,
                    started: starts_in_ends.then_some(started_as),
                })
            });
            report_until_answered(&client, finished.collect(), told.reports_together).await;
        }
    });
}

/// Reports sent together, per grant.
const REPORT_WINDOW: usize = 256;
/// Reports in flight at once, per synthetic worker, over all its grants: fewer than the
/// broker queues for one peer (`HIGH_WATER_MARK`, 1,000), so that the answers to
/// everything in flight always fit and none is dropped (a dropped answer stalls its
/// window for `REPORT_WAIT`).
const REPORTS_IN_FLIGHT: usize = 3 * REPORT_WINDOW;
/// How long a report waits for its answer before it is sent again.
const REPORT_WAIT: Duration = Duration::from_secs(2);

/// Sends every request (pipelined, or `together` in one message), then again those not
/// answered, until all are.
async fn report_until_answered(client: &Client, mut requests: Vec<WorkerRequest>, together: bool) {
    for _ in 0..30 {
        if together {
            let reports: Option<Vec<Report>> = requests
                .iter()
                .map(|request| Report::try_from(request.clone()).ok())
                .collect();
            if let Some(reports) = reports {
                match client
                    .submit(WorkerRequest::Reports(reports))
                    .wait(REPORT_WAIT)
                    .await
                {
                    Ok(Reply::Reports(replies)) if replies.len() == requests.len() => return,
                    _ => continue,
                }
            }
        }
        let pending: Vec<_> = requests
            .iter()
            .map(|request| client.submit(request.clone()))
            .collect();
        let mut unanswered = Vec::new();
        for (request, reply) in requests.into_iter().zip(pending) {
            if reply.wait(REPORT_WAIT).await.is_err() {
                unanswered.push(request);
            }
        }
        if unanswered.is_empty() {
            return;
        }
        requests = unanswered;
    }
}
