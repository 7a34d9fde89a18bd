//! A real broker in a temporary directory, and a synthetic worker that claims and
//! completes runs without spawning processes.

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use jobcast_client::{Client, ClientConfig};
use jobcast_protocol::message::{decode_event, topic};
use jobcast_protocol::{
    Event, Heartbeat, JobSpec, Outcome, Register, Reply, Request, RunFinished, Secret,
};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use zeromq::{Socket, SocketRecv, SubSocket};

const ADMIN_SECRET: &str = "bench-admin-secret-0123456789";
const WORKER_SECRET: &str = "bench-worker-secret-0123456789";
const TIMEOUT: Duration = Duration::from_secs(30);

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

pub struct Broker {
    _dir: tempfile::TempDir,
    child: Child,
    pub router: String,
    pub publish: String,
    pub admin: Client,
}

impl Broker {
    pub async fn start() -> Result<Broker> {
        let dir = tempfile::Builder::new()
            .prefix("jobcast-bench-")
            .tempdir()?;
        let config = dir.path().join("broker.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\nlog_level = \"warn\"\n[keys]\nadmin = \"{ADMIN_SECRET}\"\n[keys.workers]\nbench-w = \"{WORKER_SECRET}\"\n",
                dir.path().join("data").display()
            ),
        )?;
        let ready = dir.path().join("ready");
        let child = Command::new(sibling("jobcast-broker")?)
            .arg("--config")
            .arg(&config)
            .args([
                "--router",
                "tcp://127.0.0.1:0",
                "--publish",
                "tcp://127.0.0.1:0",
            ])
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
        let admin = Client::connect(ClientConfig {
            endpoint: router.clone(),
            name: "admin".into(),
            secret: Secret::new(ADMIN_SECRET),
            connect_timeout: Duration::from_secs(5),
            max_clock_skew: Duration::from_secs(30),
        })
        .await?;
        Ok(Broker {
            _dir: dir,
            child,
            router,
            publish,
            admin,
        })
    }

    pub async fn apply(&self, jobs: Vec<JobSpec>) -> Result<()> {
        for chunk in jobs.chunks(500) {
            let reply = self
                .admin
                .request(
                    Request::ApplyJobs {
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

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (scheduled time in ms, time granted in µs)
type Grant = (u64, u64);

pub struct SyntheticWorker {
    grants: tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<Grant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SyntheticWorker {
    pub async fn start(broker: &Broker, pool: &str) -> Result<SyntheticWorker> {
        let client = Client::connect(ClientConfig {
            endpoint: broker.router.clone(),
            name: "bench-w".into(),
            secret: Secret::new(WORKER_SECRET),
            connect_timeout: Duration::from_secs(5),
            max_clock_skew: Duration::from_secs(30),
        })
        .await?;
        let reply = client
            .request(
                Request::Register(Register {
                    hostname: "bench".into(),
                    pid: std::process::id(),
                    version: jobcast_protocol::JOBCAST_VERSION.into(),
                    concurrency: 1_000_000,
                    pools: vec![pool.to_string()],
                    running: vec![],
                    max_log_bytes: 1 << 20,
                }),
                TIMEOUT,
            )
            .await?;
        if !matches!(reply, Reply::Registered { .. }) {
            bail!("register refused: {reply:?}");
        }
        let mut sub = SubSocket::new();
        sub.connect(&broker.publish).await?;
        sub.subscribe(&topic::pool(pool)).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(serve(client, sub, tx));
        Ok(SyntheticWorker {
            grants: tokio::sync::Mutex::new(rx),
            task,
        })
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

async fn serve(client: Client, mut sub: SubSocket, grants: mpsc::UnboundedSender<Vec<Grant>>) {
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            message = sub.recv() => {
                let Ok(message) = message else { return };
                let frames: Vec<Bytes> = message.into_vec();
                if !matches!(frames.get(1).and_then(|b| decode_event(b)), Some(Event::Wake { .. })) {
                    continue;
                }
                // Claim until the queue is empty.
                loop {
                    let Ok(Reply::Granted { runs }) = client.request(Request::Claim { max: 100_000 }, TIMEOUT).await else {
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
                    for run in runs {
                        drop(client.submit(Request::RunStarted { run_id: run.run_id.clone(), pid: 1 }));
                        drop(client.submit(Request::RunFinished(RunFinished {
                            run_id: run.run_id,
                            outcome: Outcome::Exited { code: 0 },
                            duration_ms: 0,
                            log_bytes: 0,
                        })));
                    }
                }
            }
            _ = heartbeat.tick() => {
                let _ = client.submit(Request::Heartbeat(Heartbeat { running: vec![], free_slots: 1_000_000, draining: false }));
            }
        }
    }
}
