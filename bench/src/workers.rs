//! Broker cost per run as workers grow: N one-slot synthetic workers that behave as real
//! ones do (a waiting claim while idle; the finish report claims the freed slot), a burst
//! of runs, and what each run cost the broker in CPU time and in claims.

use crate::harness::{bench_job, synthetic_registration, Broker, SYNTHETIC_WORKERS, TIMEOUT};
use anyhow::{bail, Context, Result};
use jobcast_client::{Client, ClientConfig};
use jobcast_protocol::{Assignment, Exec, Outcome, Reply, RunFinished, Secret, WorkerRequest};
use jobcast_worker::procfs::cpu_time;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a synthetic worker's claim may wait, as the real worker's.
const CLAIM_WAIT_MS: u64 = 10_000;

/// One figure per worker count.
struct Row {
    workers: usize,
    runs_per_s: f64,
    broker_us_per_run: Option<f64>,
    claims_per_run: f64,
}

pub async fn many_workers(counts: &[usize], runs: usize) -> Result<()> {
    // Each synthetic worker's client holds three libzmq sockets (its DEALER and the two
    // ends of its connection monitor), in a context limited to 1,023.
    let most = SYNTHETIC_WORKERS.min(300);
    if runs == 0 || counts.iter().any(|n| *n == 0 || *n > most) {
        bail!("use 1..={most} workers per case and at least 1 run");
    }
    println!(
        "many workers: {runs} runs of a job that spawns nothing, on N one-slot synthetic workers that claim as real ones do (a waiting claim while idle, the finish report claiming the freed slot)"
    );
    let mut rows = Vec::new();
    for &workers in counts {
        rows.push(one_case(workers, runs).await?);
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
    let claims = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for n in 1..=workers {
        let client = register(&broker, n).await?;
        tasks.push(tokio::spawn(one_slot(client, claims.clone())));
    }
    // Every worker's first claim is waiting before the runs come.
    let started = Instant::now();
    while claims.load(Ordering::Relaxed) < workers as u64 {
        if started.elapsed() > TIMEOUT {
            bail!("the synthetic workers did not all claim");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let claims_before = claims.load(Ordering::Relaxed);
    let broker_pid = broker.pid() as i32;
    let cpu_before = cpu_time(broker_pid);
    let started = Instant::now();
    broker.enqueue("noop", runs).await?;
    broker.wait_idle(1).await?;
    let elapsed = started.elapsed();
    let cpu_after = cpu_time(broker_pid);
    let claims_made = claims.load(Ordering::Relaxed) - claims_before;
    for task in tasks {
        task.abort();
    }
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

async fn register(broker: &Broker, n: usize) -> Result<Client> {
    let name = format!("bench-w{n}");
    let client = Client::connect(ClientConfig {
        endpoint: broker.router.clone(),
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
    let mut next: Vec<Assignment> = Vec::new();
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
            });
            match client.request(finished, TIMEOUT).await {
                Ok(Reply::Granted { runs, .. }) => next.extend(runs),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
}
