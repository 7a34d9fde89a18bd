//! Retention under load: a store of N finished runs, a broker told to keep N/2, runs
//! flowing meanwhile; how fast it prunes, and whether any request waits on it. The same
//! flow on the same kind of store without retention, for as long, is the baseline: what
//! requests wait for anyway on this disk.

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
        "retention: a store of {stored} finished runs, the broker keeping {keep} (max_runs), while runs flow and a client asks for the status every 10 ms; then the same without retention, for as long"
    );
    let pruning = flow(stored, Until::Kept(keep)).await?;
    let baseline = flow(stored, Until::Elapsed(pruning.elapsed)).await?;
    let (Some(rtt), Some(base)) = (Summary::of(&pruning.probes), Summary::of(&baseline.probes))
    else {
        bail!("no status round trip measured");
    };
    println!();
    println!("| measure | pruning | without retention |");
    println!("|---|---|---|");
    println!(
        "| runs deleted | {} in {:.1} s ({:.0} a second) | none |",
        pruning.pruned,
        pruning.elapsed.as_secs_f64(),
        pruning.pruned as f64 / pruning.elapsed.as_secs_f64()
    );
    println!(
        "| runs that flowed meanwhile | {} | {} |",
        pruning.flowed, baseline.flowed
    );
    println!(
        "| status round trip, p50 / p99 / max | {} / {} / {} | {} / {} / {} |",
        ms(rtt.p50),
        ms(rtt.p99),
        ms(rtt.max),
        ms(base.p50),
        ms(base.p99),
        ms(base.max)
    );
    println!(
        "| goal: no batch over 20 ms (a request waits at most one batch) | max {} | max {} |",
        ms(rtt.max),
        ms(base.max)
    );
    crate::goals::at_most(
        "longest request wait while pruning",
        20.0,
        rtt.max as f64 / 1e3,
        "ms",
    );
    Ok(())
}

enum Until {
    /// Until retention has brought the store down to this many (plus what flowed).
    Kept(usize),
    Elapsed(Duration),
}

struct Flowed {
    /// Status round trips, µs.
    probes: Vec<u64>,
    flowed: usize,
    pruned: u64,
    elapsed: Duration,
}

/// A store of `stored` finished runs, a broker on it (with `max_runs` when `until` is
/// `Kept`), 200 runs a second flowing through a synthetic worker and a status asked for
/// every 10 ms.
async fn flow(stored: usize, until: Until) -> Result<Flowed> {
    let dir = tempfile::Builder::new()
        .prefix("jobcast-bench-")
        .tempdir()?;
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir)?;
    let fill = fill_store(&data_dir, stored)?;
    println!("(store written in {:.1} s)", fill.as_secs_f64());
    let extra = match until {
        Until::Kept(keep) => format!("[retention]\nmax_age = \"off\"\nmax_runs = {keep}\n"),
        Until::Elapsed(_) => "[retention]\nmax_age = \"off\"\n".to_string(),
    };
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
    let mut probes = Vec::new();
    let mut flowed = 0;
    let deadline = Instant::now() + Duration::from_secs(1_800);
    loop {
        // Runs keep flowing: 20 every 100 ms (200 a second).
        if probes.len() % 10 == 0 {
            broker.enqueue("flow", 20).await?;
            flowed += 20;
        }
        let asked = Instant::now();
        let status = broker.status().await?;
        probes.push(asked.elapsed().as_micros() as u64);
        let done = match until {
            Until::Kept(keep) => status.total_runs <= (keep + flowed) as u64,
            Until::Elapsed(time) => started.elapsed() >= time,
        };
        if done {
            break;
        }
        if Instant::now() > deadline {
            bail!("still {} runs stored after 30 minutes", status.total_runs);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed();
    let pruned = broker.status().await?.pruned_runs;
    worker.stop().await;
    Ok(Flowed {
        probes,
        flowed,
        pruned,
        elapsed,
    })
}
