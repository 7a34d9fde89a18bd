//! Retention under load: a store of N finished runs, a broker told to keep N/2, runs
//! flowing meanwhile; how fast it prunes, and whether any request waits on it.

use crate::footprint::fill_store;
use crate::harness::{bench_job, Broker, SyntheticWorker};
use crate::stats::{ms, Summary};
use anyhow::{bail, Result};
use jobcast_protocol::Exec;
use std::time::{Duration, Instant};

pub async fn retention(stored: usize) -> Result<()> {
    if stored < 2 {
        bail!("store at least 2 runs");
    }
    let keep = stored / 2;
    println!(
        "retention: a store of {stored} finished runs, the broker keeping {keep} (max_runs), while runs flow and a client asks for the status every 10 ms"
    );
    let dir = tempfile::Builder::new()
        .prefix("jobcast-bench-")
        .tempdir()?;
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir)?;
    let fill = fill_store(&data_dir, stored)?;
    println!("(store written in {:.1} s)", fill.as_secs_f64());
    let extra = format!("[retention]\nmax_age = \"off\"\nmax_runs = {keep}\n");
    let started = Instant::now();
    let broker = Broker::start_configured(dir, &extra).await?;
    broker
        .apply(vec![bench_job(
            "flow",
            "bench",
            Exec::Command(vec!["true".into()]),
        )])
        .await?;
    let worker = SyntheticWorker::start(&broker, "bench").await?;
    worker.wait_live(Duration::from_secs(10)).await?;
    let mut probe = Vec::new();
    let mut flowed = 0;
    let deadline = Instant::now() + Duration::from_secs(1_800);
    loop {
        // Runs keep flowing: 20 every 100 ms (200 a second).
        if probe.len() % 10 == 0 {
            broker.enqueue("flow", 20).await?;
            flowed += 20;
        }
        let asked = Instant::now();
        let status = broker.status().await?;
        probe.push(asked.elapsed().as_micros() as u64);
        if status.total_runs <= (keep + flowed) as u64 {
            break;
        }
        if Instant::now() > deadline {
            bail!("still {} runs stored after 30 minutes", status.total_runs);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let status = broker.status().await?;
    let pruned = status.pruned_runs;
    worker.stop().await;
    let Some(rtt) = Summary::of(&probe) else {
        bail!("no status round trip measured");
    };
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| runs deleted | {pruned} in {:.1} s ({:.0} a second) |",
        elapsed.as_secs_f64(),
        pruned as f64 / elapsed.as_secs_f64()
    );
    println!("| runs that flowed meanwhile | {flowed} |");
    println!(
        "| status round trip meanwhile, p50 / p99 / max | {} / {} / {} |",
        ms(rtt.p50),
        ms(rtt.p99),
        ms(rtt.max)
    );
    println!(
        "| goal: no batch over 20 ms (a request waits at most one batch) | max {} |",
        ms(rtt.max)
    );
    crate::goals::at_most(
        "longest request wait while pruning",
        20.0,
        rtt.max as f64 / 1e3,
        "ms",
    );
    Ok(())
}
