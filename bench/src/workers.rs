//! Broker cost per run as workers grow: N one-slot synthetic workers that behave as real
//! ones do (a waiting claim while idle; the finish report claims the freed slot), a burst
//! of runs, and what each run cost the broker in CPU time and in claims.

use crate::harness::{bench_job, synthetic_registration, Broker, SYNTHETIC_WORKERS, TIMEOUT};
use anyhow::{bail, Context, Result};
use jobcast_client::{Client, ClientConfig};
use jobcast_protocol::{Exec, GrantedRun, Outcome, Reply, RunFinished, Secret, WorkerRequest};
use jobcast_worker::procfs::cpu_time;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a synthetic worker's claim may wait, as the real worker's.
const CLAIM_WAIT_MS: u64 = 10_000;
/// Synthetic workers per process: each client holds three libzmq sockets (its DEALER and
/// the two ends of its connection monitor) of a context limited to 1,023. More workers
/// run in child processes of the bench (`synthetic-workers`, hidden).
const PER_PROCESS: usize = 250;

/// One figure per worker count.
struct Row {
    workers: usize,
    runs_per_s: f64,
    broker_us_per_run: Option<f64>,
    claims_per_run: f64,
}

pub async fn many_workers(counts: &[usize], runs: usize) -> Result<()> {
    if runs == 0 || counts.iter().any(|n| *n == 0 || *n > SYNTHETIC_WORKERS) {
        bail!("use 1..={SYNTHETIC_WORKERS} workers per case and at least 1 run");
    }
    println!(
        "many workers: {runs} runs of a job that spawns nothing, on N one-slot synthetic workers that claim as real ones do (a waiting claim while idle, the finish report claiming the freed slot)"
    );
    let mut rows = Vec::new();
    for &workers in counts {
        rows.push(one_case(workers, runs).await?);
    }
    // Flat: the broker's CPU per run with the most workers within 25 % of the fewest's.
    if let (Some(first), Some(last)) = (rows.first(), rows.last()) {
        if let (Some(few), Some(many)) = (first.broker_us_per_run, last.broker_us_per_run) {
            crate::goals::at_most(
                &format!(
                    "broker CPU per run, {} workers against {}, as a share",
                    last.workers, first.workers
                ),
                125.0,
                many / few * 100.0,
                "%",
            );
        }
    }
    println!();
    println!("| workers | runs/s | broker CPU per run | claims per run |");
    println!("|---|---|---|---|");
    for row in rows {
        let cpu = row
            .broker_us_per_run
            .map(|us| format!("{us:.0} µs"))
            .unwrap_or_else(|| "unknown".into());
        println!(
            "| {} | {:.0} | {cpu} | {:.2} |",
            row.workers, row.runs_per_s, row.claims_per_run
        );
    }
    Ok(())
}

async fn one_case(workers: usize, runs: usize) -> Result<Row> {
    let broker = Broker::start().await?;
    broker
        .apply(vec![bench_job(
            "noop",
            "bench",
            Exec::Command(vec!["true".into()]),
        )])
        .await?;
    let mut fleet = Fleet::start(&broker.router, workers).await?;
    let claims_before = fleet.claims().await?;
    let broker_pid = broker.pid() as i32;
    let cpu_before = cpu_time(broker_pid);
    let started = Instant::now();
    broker.enqueue("noop", runs).await?;
    broker.wait_idle(1).await?;
    let elapsed = started.elapsed();
    let cpu_after = cpu_time(broker_pid);
    let claims_made = fleet.claims().await? - claims_before;
    fleet.stop().await;
    let total = broker.status().await?.total_runs;
    if total != runs as u64 || broker.count_unsuccessful().await? > 0 {
        bail!("{total} runs stored, some did not succeed; expected {runs} successes");
    }
    let row = Row {
        workers,
        runs_per_s: runs as f64 / elapsed.as_secs_f64(),
        broker_us_per_run: cpu_before
            .zip(cpu_after)
            .map(|(b, a)| (a - b).as_secs_f64() * 1e6 / runs as f64),
        claims_per_run: claims_made as f64 / runs as f64,
    };
    println!(
        "{workers} workers: {:.0} runs/s, {:.2} claims per run",
        row.runs_per_s, row.claims_per_run
    );
    Ok(row)
}

async fn register(router: &str, n: usize) -> Result<Client> {
    let name = format!("bench-w{n}");
    let client = Client::connect(ClientConfig {
        endpoint: router.to_string(),
        name: name.clone(),
        secret: Secret::new(crate::harness::WORKER_SECRET),
        connect_timeout: Duration::from_secs(5),
        max_clock_skew: Duration::from_secs(30),
    })
    .await?;
    let reply = client
        .request(
            WorkerRequest::Register(synthetic_registration("bench", 1)),
            TIMEOUT,
        )
        .await
        .with_context(|| format!("register {name}"))?;
    if !matches!(reply, Reply::Registered { .. }) {
        bail!("register refused: {reply:?}");
    }
    Ok(client)
}

/// A one-slot worker: wait in a claim; run what comes (instantly); report its end with a
/// claim for the freed slot; back to waiting when that brings nothing.
async fn one_slot(client: Client, claims: Arc<AtomicU64>) {
    let wait = Duration::from_millis(CLAIM_WAIT_MS) + TIMEOUT;
    let mut next: Vec<GrantedRun> = Vec::new();
    loop {
        if next.is_empty() {
            claims.fetch_add(1, Ordering::Relaxed);
            let claim = WorkerRequest::Claim {
                max: 1,
                wait_ms: CLAIM_WAIT_MS,
            };
            match client.request(claim, wait).await {
                Ok(Reply::Granted { runs, .. }) => next = runs,
                _ => return,
            }
            continue;
        }
        for run in std::mem::take(&mut next) {
            drop(client.submit(WorkerRequest::RunStarted {
                run_id: run.run_id.clone(),
                pid: 1,
                spawned_at_us: 0,
            }));
            claims.fetch_add(1, Ordering::Relaxed);
            let finished = WorkerRequest::RunFinished(RunFinished {
                run_id: run.run_id,
                outcome: Outcome::Exited { code: 0 },
                duration_ms: 0,
                log_bytes: 0,
                claim: 1,
                usage: None,
                started: None,
            });
            match client.request(finished, TIMEOUT).await {
                Ok(Reply::Granted { runs, .. }) => next.extend(runs),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
}

/// One-slot workers in this process, `first..first + count`, claiming; returns once each
/// has its first claim waiting.
async fn start_local(
    router: &str,
    first: usize,
    count: usize,
) -> Result<(Vec<tokio::task::JoinHandle<()>>, Arc<AtomicU64>)> {
    let claims = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for n in first..first + count {
        let client = register(router, n).await?;
        tasks.push(tokio::spawn(one_slot(client, claims.clone())));
    }
    let started = Instant::now();
    while claims.load(Ordering::Relaxed) < count as u64 {
        if started.elapsed() > TIMEOUT {
            bail!("the synthetic workers did not all claim");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok((tasks, claims))
}

/// The synthetic workers of one case: in this process, or in child processes of
/// `PER_PROCESS` each.
enum Fleet {
    Local {
        tasks: Vec<tokio::task::JoinHandle<()>>,
        claims: Arc<AtomicU64>,
    },
    Children(Vec<Child>),
}

struct Child {
    process: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl Child {
    /// The next line the child prints that starts with `prefix`, without it.
    async fn line_after(&mut self, prefix: &str) -> Result<String> {
        loop {
            let line = tokio::time::timeout(TIMEOUT, self.stdout.next_line())
                .await
                .context("a synthetic-workers process went silent")??
                .context("a synthetic-workers process ended")?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_string());
            }
        }
    }
}

impl Fleet {
    async fn start(router: &str, workers: usize) -> Result<Fleet> {
        if workers <= PER_PROCESS {
            let (tasks, claims) = start_local(router, 1, workers).await?;
            return Ok(Fleet::Local { tasks, claims });
        }
        let exe = std::env::current_exe()?;
        let mut children = Vec::new();
        for first in (1..=workers).step_by(PER_PROCESS) {
            let count = PER_PROCESS.min(workers + 1 - first);
            let mut process = tokio::process::Command::new(&exe)
                .args(["synthetic-workers", "--router", router])
                .args(["--first", &first.to_string(), "--count", &count.to_string()])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start a synthetic-workers process")?;
            let (Some(stdin), Some(stdout)) = (process.stdin.take(), process.stdout.take()) else {
                bail!("a synthetic-workers process without pipes");
            };
            use tokio::io::AsyncBufReadExt;
            children.push(Child {
                process,
                stdin,
                stdout: tokio::io::BufReader::new(stdout).lines(),
            });
        }
        for child in &mut children {
            child.line_after("ready").await?;
        }
        Ok(Fleet::Children(children))
    }

    /// Claims made so far by every worker.
    async fn claims(&mut self) -> Result<u64> {
        match self {
            Fleet::Local { claims, .. } => Ok(claims.load(Ordering::Relaxed)),
            Fleet::Children(children) => {
                use tokio::io::AsyncWriteExt;
                let mut total = 0;
                for child in children.iter_mut() {
                    child.stdin.write_all(b"count\n").await?;
                    child.stdin.flush().await?;
                    total += child.line_after("claims").await?.parse::<u64>()?;
                }
                Ok(total)
            }
        }
    }

    async fn stop(self) {
        match self {
            Fleet::Local { tasks, .. } => tasks.into_iter().for_each(|t| t.abort()),
            Fleet::Children(children) => {
                for mut child in children {
                    drop(child.stdin);
                    let _ = child.process.kill().await;
                }
            }
        }
    }
}

/// The hidden `synthetic-workers` command, run by the bench itself for cases with more
/// workers than one process holds: prints `ready` once every worker has claimed, then
/// `claims N` for each line it reads; ends when its input ends.
pub async fn serve_workers(router: String, first: usize, count: usize) -> Result<()> {
    let (tasks, claims) = start_local(&router, first, count).await?;
    println!("ready");
    // Standard input is read on a thread of its own (a blocking read).
    tokio::task::spawn_blocking(move || {
        use std::io::BufRead;
        for _line in std::io::stdin().lock().lines().map_while(Result::ok) {
            println!("claims {}", claims.load(Ordering::Relaxed));
        }
    })
    .await?;
    tasks.into_iter().for_each(|t| t.abort());
    Ok(())
}
