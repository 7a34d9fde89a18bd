//! Shell throughput against the machine's raw spawn limit, and broker capacity.

use crate::harness::{bench_job, Broker, SyntheticWorker, MAX_WORKERS, SYNTHETIC_WORKERS};
use anyhow::{bail, Result};
use jobcast_protocol::{Exec, JobSpec};
use jobcast_worker::procfs::{children_cpu_time, cpu_time};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

const SCRIPT: &str = "#!/bin/sh\ntrue\n";

fn noop_job(pool: &str) -> JobSpec {
    bench_job("noop", pool, Exec::Script(SCRIPT.into()))
}

/// CPU used per run, µs, by each process of a throughput run.
#[derive(Debug, Default)]
struct CpuPerRun {
    /// The scheduler's own processes (the bench process itself for the raw limit).
    spawner: f64,
    broker: f64,
    /// The scripts (`sh`), as their parents account for them once waited for.
    scripts: f64,
}

/// CPU time of `pid` and of its waited-for children, µs.
pub fn cpu_us(pid: u32) -> (f64, f64) {
    let us = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e6);
    (us(cpu_time(pid as i32)), us(children_cpu_time(pid as i32)))
}

/// The machine's limit: spawn and wait for `sh script` `runs` times, `concurrency` at once.
async fn raw_spawn(runs: usize, concurrency: usize) -> Result<(f64, CpuPerRun)> {
    let before = cpu_us(std::process::id());
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("noop.sh");
    std::fs::write(&script, SCRIPT)?;
    let permits = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(runs);
    for _ in 0..runs {
        let permit = permits.clone().acquire_owned().await?;
        let script = script.clone();
        tasks.push(tokio::spawn(async move {
            let status = tokio::process::Command::new("/bin/sh")
                .arg(&script)
                .status()
                .await;
            drop(permit);
            status.map(|s| s.success()).unwrap_or(false)
        }));
    }
    for task in tasks {
        if !task.await? {
            bail!("a raw spawn failed");
        }
    }
    let rate = runs as f64 / started.elapsed().as_secs_f64();
    let after = cpu_us(std::process::id());
    let cpu = CpuPerRun {
        spawner: (after.0 - before.0) / runs as f64,
        broker: 0.0,
        scripts: (after.1 - before.1) / runs as f64,
    };
    Ok((rate, cpu))
}

/// What a shell throughput run measured, for the comparison with peers.
#[derive(Debug, Clone, Copy)]
pub struct ShellFigures {
    /// Runs a second with no scheduler, and through jobcast.
    pub raw: f64,
    pub rate: f64,
    /// jobcast's own CPU per run (workers and broker, not the scripts), µs.
    pub own_cpu_us: f64,
}

pub async fn throughput(runs: usize, workers: usize, slots: u32) -> Result<ShellFigures> {
    if workers == 0 || workers > MAX_WORKERS || slots == 0 || runs == 0 {
        bail!("use 1..={MAX_WORKERS} workers, at least 1 slot and 1 run");
    }
    let concurrency = workers * slots as usize;
    println!(
        "shell throughput: {runs} runs of `{}` on {workers} workers × {slots} slots",
        SCRIPT.replace('\n', "\\n")
    );
    let (raw, raw_cpu) = raw_spawn(runs, concurrency).await?;

    let broker = Broker::start().await?;
    broker.apply(vec![noop_job("default")]).await?;
    let mut children = Vec::new();
    for n in 1..=workers {
        children.push(broker.start_worker(n, slots, "default")?);
    }
    broker.wait_workers(workers).await?;
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let cpu_of = |pids: &[u32]| {
        pids.iter()
            .map(|&pid| cpu_us(pid))
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    let workers_before = cpu_of(&pids);
    let broker_before = cpu_us(broker.pid()).0;
    const COMMITS: &str = "jobcast_store_flush_seconds_count";
    let commits_before = broker.metric(COMMITS).ok();
    let first_enqueue_ms = crate::harness::now_us() / 1_000;
    broker.enqueue("noop", runs).await?;
    let records = broker.wait_idle(runs as u32).await?;
    let succeeded = records
        .iter()
        .filter(|r| r.state == jobcast_protocol::RunState::Succeeded)
        .count();
    if succeeded != runs {
        bail!("{succeeded} of {runs} runs succeeded");
    }
    let last_finish = records
        .iter()
        .filter_map(|r| r.finished_at_ms)
        .max()
        .unwrap_or(first_enqueue_ms);
    let elapsed = Duration::from_millis(last_finish.saturating_sub(first_enqueue_ms).max(1));
    let rate = runs as f64 / elapsed.as_secs_f64();
    let workers_after = cpu_of(&pids);
    let commits = match (commits_before, broker.metric(COMMITS).ok()) {
        (Some(before), Some(after)) if after > before => after - before,
        _ => 0.0,
    };
    let jobcast_cpu = CpuPerRun {
        spawner: (workers_after.0 - workers_before.0) / runs as f64,
        broker: (cpu_us(broker.pid()).0 - broker_before) / runs as f64,
        scripts: (workers_after.1 - workers_before.1) / runs as f64,
    };
    // Killed and waited for as they drop.
    drop(children);
    println!();
    println!("| measure | runs/s |");
    println!("|---|---|");
    println!("| raw spawn+wait, {concurrency} at once, no scheduler | {raw:.0} |");
    println!("| jobcast, first enqueue → last completion recorded | {rate:.0} |");
    println!("| ratio | {:.0} % |", rate / raw * 100.0);
    println!();
    println!(
        "the broker's commits (batches made durable): {:.2} a run",
        commits / runs as f64
    );
    println!();
    println!("CPU per run (all processes share the machine's cores: what jobcast's own processes");
    println!("take, the scripts cannot have)");
    println!();
    println!("| | spawner's own | broker | scripts (`sh`) | total |");
    println!("|---|---|---|---|---|");
    for (name, cpu) in [("raw", &raw_cpu), ("jobcast (workers)", &jobcast_cpu)] {
        println!(
            "| {name} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs |",
            cpu.spawner,
            cpu.broker,
            cpu.scripts,
            cpu.spawner + cpu.broker + cpu.scripts
        );
    }
    crate::goals::at_least(
        "shell runs/s as a share of the raw limit",
        90.0,
        rate / raw * 100.0,
        "%",
    );
    if !(rate > 0.0 && raw > 0.0) {
        bail!("no throughput measured");
    }
    Ok(ShellFigures {
        raw,
        rate,
        own_cpu_us: jobcast_cpu.spawner + jobcast_cpu.broker,
    })
}

pub async fn capacity(runs: usize, workers: usize) -> Result<()> {
    if workers == 0 || workers > SYNTHETIC_WORKERS || runs == 0 {
        bail!("use 1..={SYNTHETIC_WORKERS} synthetic workers and at least 1 run");
    }
    println!("broker capacity: {runs} runs through enqueue → claim → started → finished, {workers} synthetic workers, every step durable (group commit){}", if crate::harness::postgres().is_some() { ", records in PostgreSQL" } else { "" });
    let broker = Broker::start().await?;
    broker.apply(vec![noop_job("bench")]).await?;
    let mut synthetic = Vec::new();
    for n in 1..=workers {
        synthetic.push(SyntheticWorker::start_numbered(&broker, "bench", n).await?);
    }
    let (broker_pid, me) = (broker.pid() as i32, std::process::id() as i32);
    let cpu_before = (cpu_time(broker_pid), cpu_time(me));
    let machine_before = crate::machine::busy();
    const COMMITS: &str = "jobcast_store_flush_seconds_count";
    let commits_before = broker.metric(COMMITS).ok();
    let started = Instant::now();
    match crate::harness::offered() {
        Some(rate) => broker.enqueue_at("noop", runs, rate).await?,
        None => broker.enqueue("noop", runs).await?,
    }
    broker.wait_idle(1).await?;
    let elapsed = started.elapsed();
    let cpu_after = (cpu_time(broker_pid), cpu_time(me));
    let machine_after = crate::machine::busy();
    let commits = match (commits_before, broker.metric(COMMITS).ok()) {
        (Some(before), Some(after)) if after > before => Some(after - before),
        _ => None,
    };
    for worker in synthetic {
        worker.stop().await;
    }
    let total = broker.status().await?.total_runs;
    let unsuccessful = broker.count_unsuccessful().await?;
    if total != runs as u64 || unsuccessful > 0 {
        bail!("{total} runs stored, {unsuccessful} did not succeed; expected {runs} successes");
    }
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| runs | {runs} |");
    match crate::harness::offered() {
        Some(rate) => println!("| enqueued | {rate} runs/s offered, an open loop |"),
        None => println!(
            "| enqueued | by {} clients, each sending its next request when its last is answered (a closed loop) |",
            crate::harness::ENQUEUES_IN_FLIGHT
        ),
    }
    println!("| elapsed | {:.2} s |", elapsed.as_secs_f64());
    println!(
        "| runs/s (whole lifecycle, durable) | {:.0} |",
        runs as f64 / elapsed.as_secs_f64()
    );
    match crate::harness::postgres() {
        Some(postgres) => crate::goals::at_least(
            "whole lifecycle, durable, on PostgreSQL (3 × pgbench -N -c 8 -j 2 tps)",
            (3.0 * postgres.pgbench_tps).round(),
            runs as f64 / elapsed.as_secs_f64(),
            "runs/s",
        ),
        None => crate::goals::at_least(
            "whole lifecycle, durable",
            40_000.0,
            runs as f64 / elapsed.as_secs_f64(),
            "runs/s",
        ),
    }
    // CPU per run says what the figure would be on a machine of its own: the bench's
    // synthetic workers share these cores with the broker.
    let per_run = |before, after| crate::machine::per_unit(before, after, runs as f64);
    println!(
        "| broker CPU per run | {} |",
        per_run(cpu_before.0, cpu_after.0)
    );
    println!(
        "| synthetic workers' CPU per run (bench process) | {} |",
        per_run(cpu_before.1, cpu_after.1)
    );
    println!(
        "| machine CPU per run (every process and the kernel) | {} |",
        per_run(machine_before, machine_after)
    );
    // Each run is at least two requests (started, finished) besides its share of the
    // enqueue and the claims: how full the group commits were.
    match commits {
        Some(commits) => println!(
            "| group commits (batches) | {commits:.0}, {:.1} runs a commit |",
            runs as f64 / commits
        ),
        None => println!("| group commits (batches) | unknown (the broker's /metrics) |"),
    }
    Ok(())
}
