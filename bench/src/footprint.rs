//! Memory and disk: idle broker and worker, 10 workers connected, and a store with many
//! finished runs (size per run, restart time to serving).

use crate::harness::{disk_usage, rss_bytes, Broker};
use anyhow::Result;
use jobcast_broker::store::{self, Store};
use jobcast_protocol::{Exec, JobSpec, Outcome, RunRecord, RunState, Transition};
use jobcast_worker::procfs::cpu_time;
use std::time::{Duration, Instant};

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

/// The id of the bench's run number `seq`: spread like the broker's random ids.
pub fn run_id(seq: u64) -> String {
    format!("{:016x}", seq.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The job the store benchmarks' runs belong to: a short script with a timeout.
pub fn typical_job() -> JobSpec {
    JobSpec {
        timeout_ms: Some(3_600_000),
        ..JobSpec::new(
            "nightly-backup",
            "default",
            Exec::Script("#!/bin/sh\npg_dump mydb > /backups/mydb.sql\n".into()),
        )
    }
}

pub fn finished_run(seq: u64, job: &JobSpec) -> RunRecord {
    let at = 1_800_000_000_000 + seq;
    let id = run_id(seq);
    RunRecord {
        state: RunState::Succeeded,
        worker: Some("w1".into()),
        pid: Some(4242),
        started_at_ms: Some(at + 1),
        finished_at_ms: Some(at + 9),
        outcome: Some(Outcome::Exited { code: 0 }),
        log_bytes: 12,
        log_cap: 819_200,
        history: vec![
            Transition {
                state: RunState::Queued,
                at_ms: at,
                cause: "enqueued by admin".into(),
            },
            Transition {
                state: RunState::Assigned,
                at_ms: at,
                cause: "granted to w1".into(),
            },
            Transition {
                state: RunState::Running,
                at_ms: at + 1,
                cause: "started on w1 as pid 4242".into(),
            },
            Transition {
                state: RunState::Succeeded,
                at_ms: at + 9,
                cause: "exited with code 0".into(),
            },
        ],
        ..RunRecord::queued(id, seq, job.clone(), at, "enqueued by admin")
    }
}

/// Writes `runs` finished runs of a typical job into the store of the data directory
/// `data_dir`, as the broker would have; returns how long it took.
pub fn fill_store(data_dir: &std::path::Path, runs: usize) -> Result<Duration> {
    let job = typical_job();
    let fill = Instant::now();
    let mut store = store::open_in(data_dir, store::DEFAULT_CACHE_BYTES)?;
    store.put_job(&job)?;
    for seq in 1..=runs as u64 {
        store.create_run(&finished_run(seq, &job))?;
        if seq % 50_000 == 0 {
            store.flush()?;
        }
    }
    store.flush()?;
    // What a broker keeps with the runs it writes: the counts by state.
    jobcast_core::count_stored_runs(&mut store)?;
    Ok(fill.elapsed())
}

pub async fn footprint(stored_runs: usize) -> Result<()> {
    println!("footprint: resident memory (RSS) and disk");
    println!();
    println!("| measure | value |");
    println!("|---|---|");

    let broker = Broker::start().await?;
    tokio::time::sleep(Duration::from_secs(1)).await; // let start-up allocations settle into idle
    println!("| idle broker RSS | {} |", mb(rss_bytes(broker.pid())));
    let mut workers = Vec::new();
    workers.push(broker.start_worker(1, 4, "default")?);
    broker.wait_workers(1).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("| idle worker RSS | {} |", mb(rss_bytes(workers[0].id())));
    for n in 2..=10 {
        workers.push(broker.start_worker(n, 4, "default")?);
    }
    broker.wait_workers(10).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "| broker RSS, 10 workers connected | {} |",
        mb(rss_bytes(broker.pid()))
    );
    drop(workers);
    drop(broker);

    // A store with many finished runs, written directly (as the broker would have).
    let dir = tempfile::Builder::new()
        .prefix("jobcast-bench-")
        .tempdir()?;
    let data_dir = dir.path().join("data");
    std::fs::create_dir_all(&data_dir)?;
    let fill_time = fill_store(&data_dir, stored_runs)?;
    let disk = disk_usage(&data_dir);
    println!(
        "| finished runs stored | {stored_runs} (written in {:.1} s) |",
        fill_time.as_secs_f64()
    );
    println!(
        "| disk used | {} ({} bytes per run) |",
        mb(disk),
        disk / stored_runs.max(1) as u64
    );
    crate::goals::at_most(
        "disk per finished run",
        500.0,
        (disk / stored_runs.max(1) as u64) as f64,
        "bytes",
    );
    let restart = Instant::now();
    let broker = Broker::start_in(dir).await?;
    // Serving: it answers a request that reads the store.
    broker
        .admin
        .request(
            jobcast_protocol::AdminRequest::ListJobs,
            Duration::from_secs(60),
        )
        .await?;
    let restart_time = restart.elapsed();
    let status = broker.status().await?;
    println!(
        "| broker start to serving, {} runs stored | {:.2} s |",
        status.total_runs,
        restart_time.as_secs_f64()
    );
    let rss = rss_bytes(broker.pid());
    println!("| broker RSS with them, idle | {} |", mb(rss));
    // With the default retention (30 days) none of them is due: an idle broker on a big
    // store should cost next to nothing.
    // Twice: just after the start, the store's engine may still be settling what the
    // fill left (compactions), which is not what an idle broker costs.
    let idle = Duration::from_secs(5);
    for (when, wait_before) in [
        ("", Duration::ZERO),
        (", 10 s later", Duration::from_secs(10)),
    ] {
        tokio::time::sleep(wait_before).await;
        let before = cpu_time(broker.pid() as i32);
        tokio::time::sleep(idle).await;
        let after = cpu_time(broker.pid() as i32);
        if let (Some(before), Some(after)) = (before, after) {
            println!(
                "| broker CPU while idle with them, over {} s{when} | {:.1} ms ({:.2} %) |",
                idle.as_secs(),
                (after - before).as_secs_f64() * 1e3,
                (after - before).as_secs_f64() / idle.as_secs_f64() * 100.0
            );
        }
    }
    crate::goals::at_most(
        &format!("broker RSS with {} runs stored", status.total_runs),
        64.0,
        rss as f64 / 1e6,
        "MB",
    );
    Ok(())
}
