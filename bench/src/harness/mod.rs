//! A real broker in a temporary directory, and a synthetic worker that claims and
//! completes runs without spawning processes.

mod synthetic;

pub use synthetic::*;

use anyhow::{bail, Context, Result};
use jobcast_client::{Client, ClientConfig};
use jobcast_protocol::message::{decode_event, topic};
use jobcast_protocol::{
    AdminRequest, Event, Heartbeat, JobSpec, Outcome, Register, Reply, RunFinished, Secret,
    WorkerRequest,
};
use jobcast_transport::{AsyncSocket, Limits, Received};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

pub const ADMIN_SECRET: &str = "bench-admin-secret-0123456789";
pub const WORKER_SECRET: &str = "bench-worker-secret-0123456789";
pub const VIEWER_TOKEN: &str = "bench-viewer-token-0123456789";
/// Real workers the broker has keys for: w1..=MAX_WORKERS.
pub const MAX_WORKERS: usize = 16;
pub const TIMEOUT: Duration = Duration::from_secs(30);
/// Enqueues a client has in flight at most: the broker keeps up to 1,000 replies queued
/// for a peer (its high-water mark) and drops what comes beyond, so a client must not
/// have more outstanding than that, other requests included.
pub const ENQUEUES_IN_FLIGHT: usize = 500;

/// The rate `capacity` enqueues at (`--offered`), if not as fast as answers allow.
static OFFERED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Makes `capacity` enqueue at `per_second` in an open loop (0: as fast as answers
/// allow, a closed loop).
pub fn offer_at(per_second: u32) {
    OFFERED.store(per_second, std::sync::atomic::Ordering::Relaxed);
}

/// The rate set by [`offer_at`], if any.
pub fn offered() -> Option<u32> {
    Some(OFFERED.load(std::sync::atomic::Ordering::Relaxed)).filter(|rate| *rate > 0)
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn sibling(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the workspace in the same profile first (cargo build --release)",
            path.display()
        );
    }
    Ok(path)
}

/// The PostgreSQL the brokers of this bench keep their records in (the `postgres` part),
/// and what `pgbench` made of it in the same run.
pub struct PostgresUnderTest {
    /// The broker's `postgres = { … }` settings line.
    pub settings: String,
    /// `pgbench -N -c 8 -j 2` transactions per second on the same server.
    pub pgbench_tps: f64,
}

static POSTGRES: std::sync::OnceLock<PostgresUnderTest> = std::sync::OnceLock::new();

/// Brokers started from now on keep their records in this PostgreSQL.
pub fn use_postgres(postgres: PostgresUnderTest) -> Result<()> {
    POSTGRES
        .set(postgres)
        .map_err(|_| anyhow::anyhow!("the bench's PostgreSQL is already set"))
}

/// The PostgreSQL in use, if the brokers are on one.
pub fn postgres() -> Option<&'static PostgresUnderTest> {
    POSTGRES.get()
}

pub struct Broker {
    pub dir: tempfile::TempDir,
    child: Child,
    pub router: String,
    pub publish: String,
    /// The HTTP listener, `127.0.0.1:port`.
    pub http: String,
    pub admin: Client,
}

impl Broker {
    pub async fn start() -> Result<Broker> {
        let dir = tempfile::Builder::new()
            .prefix("jobcast-bench-")
            .tempdir()?;
        Self::start_in(dir).await
    }

    /// Starts a broker whose data directory is `dir/data` (which may hold a store).
    pub async fn start_in(dir: tempfile::TempDir) -> Result<Broker> {
        Self::start_configured(dir, "").await
    }

    /// Like [`Broker::start_in`], with `extra` (TOML tables) appended to its config.
    pub async fn start_configured(dir: tempfile::TempDir, extra: &str) -> Result<Broker> {
        Self::start_with(dir, extra, "tcp://127.0.0.1:0", "tcp://127.0.0.1:0").await
    }

    /// A fresh broker on the endpoints given (one started again where it was).
    pub async fn start_on(router: &str, publish: &str) -> Result<Broker> {
        let dir = tempfile::Builder::new()
            .prefix("jobcast-bench-")
            .tempdir()?;
        Self::start_with(dir, "", router, publish).await
    }

    async fn start_with(
        dir: tempfile::TempDir,
        extra: &str,
        router: &str,
        publish: &str,
    ) -> Result<Broker> {
        let config = dir.path().join("broker.toml");
        // The broker's own log, for reading a run's slow batches: warnings only unless
        // JOBCAST_BENCH_BROKER_LOG names a level.
        let log_level =
            std::env::var("JOBCAST_BENCH_BROKER_LOG").unwrap_or_else(|_| "warn".to_string());
        let store = postgres().map(|p| p.settings.as_str()).unwrap_or_default();
        let mut text = format!(
            "data_dir = \"{}\"\nlog_level = \"{log_level}\"\n{store}\n[http]\nlisten = \"127.0.0.1:0\"\n\
             [[http.tokens]]\nname = \"bench\"\ntoken = \"{VIEWER_TOKEN}\"\nrole = \"viewer\"\n\
             [keys]\nadmin = \"{ADMIN_SECRET}\"\n[keys.workers]\n",
            dir.path().join("data").display()
        );
        for i in 1..=MAX_WORKERS {
            text.push_str(&format!("w{i} = \"{WORKER_SECRET}-w{i}\"\n"));
        }
        for i in 1..=SYNTHETIC_WORKERS {
            text.push_str(&format!("bench-w{i} = \"{WORKER_SECRET}\"\n"));
        }
        text.push_str(extra);
        std::fs::write(&config, text)?;
        let ready = dir.path().join("ready");
        let child = Command::new(sibling("jobcast-broker")?)
            .arg("--config")
            .arg(&config)
            .args(["--router", router, "--publish", publish])
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the broker")?;
        let started = Instant::now();
        let text = loop {
            if let Ok(text) = std::fs::read_to_string(&ready) {
                break text;
            }
            if started.elapsed() > TIMEOUT {
                bail!("the broker did not start within {TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let value = |key: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(&format!("{key} = ")))
                .map(|v| v.trim_matches('"').to_string())
                .context("bad ready file")
        };
        let router = value("router")?;
        let publish = value("publish")?;
        let http = value("http")?;
        let admin = Client::connect(ClientConfig {
            endpoint: router.clone(),
            name: "admin".into(),
            secret: Secret::new(ADMIN_SECRET),
            connect_timeout: Duration::from_secs(5),
            max_clock_skew: Duration::from_secs(30),
        })
        .await?;
        Ok(Broker {
            dir,
            child,
            router,
            publish,
            http,
            admin,
        })
    }

    pub async fn apply(&self, jobs: Vec<JobSpec>) -> Result<()> {
        for chunk in jobs.chunks(500) {
            let reply = self
                .admin
                .request(
                    AdminRequest::ApplyJobs {
                        jobs: chunk.to_vec(),
                    },
                    TIMEOUT,
                )
                .await?;
            if !matches!(reply, Reply::Applied { .. }) {
                bail!("apply refused: {reply:?}");
            }
        }
        Ok(())
    }
}

/// A worker process the bench started: killed when dropped, so that a part that fails
/// half-way leaves no worker behind.
pub struct WorkerChild(Child);

impl std::ops::Deref for WorkerChild {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl Drop for WorkerChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Broker {
    /// Stops the broker as its supervisor would (SIGTERM), killing it if it has not
    /// ended within a few seconds: a broker on PostgreSQL stopped so gives up its lease,
    /// and the next part's broker on the same database leads at once.
    fn drop(&mut self) {
        // SAFETY: a signal to our own child, which has not been reaped yet.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                _ => return,
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Synthetic workers the broker has keys for: bench-w1..=SYNTHETIC_WORKERS.
pub const SYNTHETIC_WORKERS: usize = 1_024;

impl Broker {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts real worker `wN` with `slots` slots in pool `pool`.
    pub fn start_worker(&self, n: usize, slots: u32, pool: &str) -> Result<WorkerChild> {
        self.start_worker_to(n, slots, pool, &self.router, &self.publish)
    }

    /// Like [`Broker::start_worker`], for the brokers given (comma-separated lists).
    pub fn start_worker_to(
        &self,
        n: usize,
        slots: u32,
        pool: &str,
        routers: &str,
        events: &str,
    ) -> Result<WorkerChild> {
        let scripts = self.dir.path().join(format!("w{n}-scripts"));
        // Warnings only, unless JOBCAST_BENCH_WORKER_LOG names a level.
        let log_level =
            std::env::var("JOBCAST_BENCH_WORKER_LOG").unwrap_or_else(|_| "warn".to_string());
        Command::new(sibling("jobcast-worker")?)
            .args([
                "--id",
                &format!("w{n}"),
                "--broker",
                routers,
                "--events",
                events,
            ])
            .args(["--secret", &format!("{WORKER_SECRET}-w{n}")])
            .args([
                "--concurrency",
                &slots.to_string(),
                "--pools",
                pool,
                "--log-level",
                &log_level,
            ])
            .arg("--script-temp-path")
            .arg(scripts)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map(WorkerChild)
            .context("cannot start a worker")
    }

    /// The value of a sample of the broker's `/metrics` (a line starting with `sample`,
    /// e.g. `jobcast_store_flush_seconds_count`), read with the bench's viewer token.
    pub fn metric(&self, sample: &str) -> Result<f64> {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&self.http)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {VIEWER_TOKEN}\r\nConnection: close\r\n\r\n",
            self.http
        )?;
        let mut text = String::new();
        stream.read_to_string(&mut text)?;
        text.lines()
            .find_map(|line| {
                let value = line.strip_prefix(sample)?.strip_prefix(' ')?;
                value.trim().parse().ok()
            })
            .with_context(|| format!("no {sample} in the broker's /metrics"))
    }

    pub async fn status(&self) -> Result<jobcast_protocol::StatusReport> {
        match self.admin.request(AdminRequest::Status, TIMEOUT).await? {
            Reply::Status(status) => Ok(*status),
            other => bail!("status: {other:?}"),
        }
    }

    /// Waits until `n` workers are online.
    pub async fn wait_workers(&self, n: usize) -> Result<()> {
        let started = Instant::now();
        loop {
            let online = self
                .status()
                .await?
                .workers
                .iter()
                .filter(|w| w.online)
                .count();
            if online >= n {
                return Ok(());
            }
            if started.elapsed() > TIMEOUT {
                bail!("only {online} of {n} workers came online");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends one enqueue of `job` (no key, no parameters), not waiting for its answer.
    fn submit_enqueue(&self, job: &str) -> jobcast_client::PendingReply {
        self.admin.submit(AdminRequest::Enqueue {
            job: job.into(),
            key: None,
            params: Default::default(),
            priority: None,
        })
    }

    /// Enqueues `n` runs of `job` as [`ENQUEUES_IN_FLIGHT`] clients would that each send
    /// their next request as soon as their last is answered (a window that slides, not
    /// rounds that wait for their slowest answer); returns when all are acknowledged.
    pub async fn enqueue(&self, job: &str, n: usize) -> Result<()> {
        self.enqueue_paced(job, n, None).await
    }

    /// Enqueues `n` runs of `job` at `per_second`, a millisecond's share at a time,
    /// whatever the answers: an open loop, as many independent clients make, so that
    /// requests keep arriving while a batch commits. At most [`ENQUEUES_IN_FLIGHT`] are
    /// unanswered; past that the broker is behind, and sending waits for it.
    pub async fn enqueue_at(&self, job: &str, n: usize, per_second: u32) -> Result<()> {
        self.enqueue_paced(job, n, Some(per_second)).await
    }

    /// [`Broker::enqueue`] (`per_second` none) or [`Broker::enqueue_at`].
    async fn enqueue_paced(&self, job: &str, n: usize, per_second: Option<u32>) -> Result<()> {
        let room = std::sync::Arc::new(tokio::sync::Semaphore::new(ENQUEUES_IN_FLIGHT));
        let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<(
            jobcast_client::PendingReply,
            tokio::sync::OwnedSemaphorePermit,
        )>();
        let answers = tokio::spawn(async move {
            while let Some((reply, room)) = sent_rx.recv().await {
                match reply.wait(TIMEOUT).await? {
                    Reply::Enqueued { .. } => drop(room),
                    other => bail!("enqueue: {other:?}"),
                }
            }
            Ok(())
        });
        let started = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        let mut sent = 0;
        while sent < n && !answers.is_finished() {
            let due = match per_second {
                Some(rate) => {
                    tick.tick().await;
                    ((started.elapsed().as_secs_f64() * f64::from(rate)) as usize).min(n)
                }
                None => n,
            };
            while sent < due {
                let room = room.clone().acquire_owned().await?;
                if sent_tx.send((self.submit_enqueue(job), room)).is_err() {
                    break;
                }
                sent += 1;
            }
        }
        drop(sent_tx);
        answers.await??;
        if sent < n {
            bail!("enqueue: {sent} of {n} sent");
        }
        Ok(())
    }

    /// The newest `limit` runs, newest first, in as many listings as the broker's page
    /// size asks for.
    pub async fn runs(&self, limit: u32) -> Result<Vec<jobcast_protocol::RunRecord>> {
        /// The most one listing returns.
        const PAGE: u32 = 10_000;
        let mut all = Vec::new();
        let mut before_seq = None;
        while all.len() < limit as usize {
            let filter = jobcast_protocol::RunFilter {
                limit: (limit - all.len() as u32).min(PAGE),
                before_seq,
                ..Default::default()
            };
            let (runs, resume_before) = match self
                .admin
                .request(AdminRequest::ListRuns(filter), TIMEOUT)
                .await?
            {
                Reply::Runs {
                    runs,
                    resume_before,
                    ..
                } => (runs, resume_before),
                other => bail!("runs: {other:?}"),
            };
            before_seq = resume_before.or(runs.last().map(|r| r.seq));
            let done = runs.is_empty() && resume_before.is_none();
            all.extend(runs);
            if done || before_seq.is_none() {
                break;
            }
        }
        Ok(all)
    }

    /// Runs that ended in any state but succeeded (listings are capped, so by state).
    pub async fn count_unsuccessful(&self) -> Result<usize> {
        use jobcast_protocol::RunState;
        let mut count = 0;
        for state in RunState::ALL
            .into_iter()
            .filter(|s| s.is_terminal() && *s != RunState::Succeeded)
        {
            let filter = jobcast_protocol::RunFilter {
                state: Some(state),
                limit: 10_000,
                ..Default::default()
            };
            match self
                .admin
                .request(AdminRequest::ListRuns(filter), TIMEOUT)
                .await?
            {
                Reply::Runs { runs, .. } => count += runs.len(),
                other => bail!("runs: {other:?}"),
            }
        }
        Ok(count)
    }

    /// Waits until no run is active; returns the runs (newest first, up to `limit`).
    pub async fn wait_idle(&self, limit: u32) -> Result<Vec<jobcast_protocol::RunRecord>> {
        let started = Instant::now();
        while !self.status().await?.active.is_empty() {
            if started.elapsed() > Duration::from_secs(600) {
                bail!("runs still active after 10 minutes");
            }
            // Not often: a status lists every active run, and asking for it every 20 ms
            // while thousands are queued took a sixth of the broker's CPU in the shell
            // workload (its profile in docs/BENCHMARKS.md). Rates are timed from the
            // runs' own records, not from this loop.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.runs(limit).await
    }
}

/// A job for benchmarks: no schedule, runs may overlap.
pub fn bench_job(name: &str, pool: &str, exec: jobcast_protocol::Exec) -> JobSpec {
    JobSpec {
        policy: jobcast_protocol::JobPolicy {
            overlap: jobcast_protocol::Overlap::Allow,
            ..Default::default()
        },
        ..JobSpec::new(name, pool, exec)
    }
}

/// Resident memory of a process, in bytes.
pub fn rss_bytes(pid: u32) -> u64 {
    jobcast_worker::procfs::rss_bytes(pid as i32)
}

/// Bytes used by the files under `path`.
pub fn disk_usage(path: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => total += disk_usage(&entry.path()),
                Ok(m) => {
                    use std::os::unix::fs::MetadataExt;
                    total += m.blocks() * 512;
                }
                Err(_) => {}
            }
        }
    }
    total
}
