//! Dispatch latency, kill latency and ping fan-out.

use crate::harness::{bench_job, now_us, Broker, SyntheticWorker, SYNTHETIC_WORKERS};
use crate::stats::{ms, Summary};
use anyhow::{bail, Context, Result};
use jobcast_protocol::{AdminRequest, Exec, JobSpec, Reply, RunState};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

fn script_job(name: &str, script: &str) -> JobSpec {
    bench_job(name, "default", Exec::Script(script.into()))
}

/// Prints one table row: the samples' count and percentiles.
pub fn summary_row(name: &str, samples: &[u64]) -> Result<()> {
    let s = Summary::of(samples).with_context(|| format!("{name}: no samples"))?;
    println!(
        "| {name} | {} | {} | {} | {} | {} |",
        samples.len(),
        ms(s.p50),
        ms(s.p95),
        ms(s.p99),
        ms(s.max)
    );
    Ok(())
}

fn make_fifo(path: &std::path::Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: a NUL-terminated path that lives across the call.
    if unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot make the FIFO {}", path.display()));
    }
    Ok(())
}

/// Returns the enqueue → process spawned times, µs.
pub async fn latency(runs: usize) -> Result<Vec<u64>> {
    println!("dispatch latency, idle system, one worker with one slot, a `#!/bin/sh` script that writes a byte to a FIFO the bench waits on (times from the broker's and worker's clocks, µs)");
    let broker = Broker::start().await?;
    // The script tells the bench it ran through a FIFO, so that the bench asks the broker
    // nothing while a run is dispatched, as a client blocked on its answer asks nothing
    // (Gearman's in `peers`): a status request landing mid-dispatch would compete with it
    // for a small machine's cores.
    let fifo = broker.dir.path().join("ran");
    make_fifo(&fifo)?;
    let script = format!("#!/bin/sh\nprintf . > '{}'\n", fifo.display());
    broker.apply(vec![script_job("noop", &script)]).await?;
    // Read and write, so that it never reads end-of-file between runs.
    let mut ran = tokio::net::unix::pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(&fifo)
        .context("cannot open the FIFO the runs write to")?;
    let worker = broker.start_worker(1, 1, "default")?;
    broker.wait_workers(1).await?;
    for _ in 0..runs {
        broker.enqueue("noop", 1).await?;
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(30), ran.read_exact(&mut byte))
            .await
            .context("a run did not start")??;
        // Then until its end is recorded: one at a time, so each run meets an idle system.
        let started = Instant::now();
        while !broker.status().await?.active.is_empty() {
            if started.elapsed() > Duration::from_secs(30) {
                bail!("a run did not finish");
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
    }
    let records = broker.runs(runs as u32).await?;
    drop(worker);
    let spawn: Vec<u64> = records
        .iter()
        .filter_map(|r| Some(r.spawned_at_us?.saturating_sub(r.created_at_us)))
        .collect();
    let end: Vec<u64> = records
        .iter()
        .filter_map(|r| Some(r.ended_at_us?.saturating_sub(r.created_at_us)))
        .collect();
    println!();
    println!("| from enqueue to | samples | p50 | p95 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    summary_row("process spawned", &spawn)?;
    summary_row("end recorded", &end)?;
    let (floor, back_to_back) = tokio::task::spawn_blocking(|| {
        let script = b"#!/bin/sh\ntrue\n";
        anyhow::Ok((
            crate::floor::measure_from_idle(200, script)?,
            crate::floor::measure(200, script)?,
        ))
    })
    .await??;
    println!();
    for (floor, how) in [
        (
            &floor,
            "one after another after 1 ms idle, as an idle system's dispatch meets them",
        ),
        (&back_to_back, "each back to back, for comparison"),
    ] {
        println!(
            "this machine's floor (medians, {how}): fsync {} + spawn {} + loopback round trip {} = {}",
            ms(floor.fsync_us),
            ms(floor.spawn_us),
            ms(floor.round_trip_us),
            ms(floor.total_us())
        );
    }
    if let Some(s) = crate::stats::Summary::of(&spawn) {
        crate::goals::at_most(
            "enqueue → spawned p50, over this machine's floor from idle (fsync + round trip + spawn)",
            0.2,
            s.p50.saturating_sub(floor.total_us()) as f64 / 1e3,
            "ms",
        );
        let (store, p50, p99) = match crate::harness::postgres() {
            Some(_) => (", on PostgreSQL", 2.0, 5.0),
            None => ("", 0.4, 1.0),
        };
        crate::goals::at_most(
            &format!("enqueue → spawned{store}, p50"),
            p50,
            s.p50 as f64 / 1e3,
            "ms",
        );
        crate::goals::at_most(
            &format!("enqueue → spawned{store}, p99"),
            p99,
            s.p99 as f64 / 1e3,
            "ms",
        );
    }
    Ok(spawn)
}

pub async fn kill(runs: usize) -> Result<()> {
    println!("kill latency: `jobcastctl kill` request → every process of the run's tree gone (script + child + setsid child)");
    let broker = Broker::start().await?;
    let script = "#!/bin/sh\nsleep 1000 &\nsetsid sleep 1000 &\nwait\n";
    broker.apply(vec![script_job("tree", script)]).await?;
    let worker = broker.start_worker(1, 1, "default")?;
    broker.wait_workers(1).await?;
    let mut samples = Vec::new();
    for _ in 0..runs {
        broker.enqueue("tree", 1).await?;
        let started = Instant::now();
        let (run_id, pids) = loop {
            let run = broker.runs(1).await?.pop().context("no run")?;
            if run.state == RunState::Running {
                let pids = jobcast_worker::procfs::processes_with_env("JOBCAST_RUN_ID", &run.id);
                if pids.len() >= 3 {
                    break (run.id, pids);
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                bail!("the run's tree did not start");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        let t0 = now_us();
        match broker
            .admin
            .request(
                AdminRequest::Kill {
                    selectors: vec![run_id.clone()],
                },
                Duration::from_secs(10),
            )
            .await?
        {
            Reply::KillResult { .. } => {}
            other => bail!("kill: {other:?}"),
        }
        while pids.iter().any(|p| jobcast_worker::procfs::is_alive(*p)) {
            if now_us() - t0 > 30_000_000 {
                bail!("the tree survived 30 s");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        samples.push(now_us() - t0);
        while !broker.status().await?.active.is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    drop(worker);
    println!();
    println!("| measure | samples | p50 | p95 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    summary_row("kill → tree gone", &samples)
}

pub async fn fanout(workers: usize) -> Result<()> {
    if workers == 0 || workers > SYNTHETIC_WORKERS {
        bail!("use 1..={SYNTHETIC_WORKERS} workers");
    }
    println!("fan-out: {workers} workers (synthetic, in one process) connected to one broker; `ping` to all of them");
    let broker = Broker::start().await?;
    let mut pool = Vec::new();
    for n in 1..=workers {
        pool.push(SyntheticWorker::start_numbered(&broker, "fanout", n).await?);
    }
    for worker in &pool {
        worker.wait_live(Duration::from_secs(10)).await?;
    }
    let mut round_trips = Vec::new();
    let mut per_worker = Vec::new();
    for _ in 0..5 {
        let t0 = now_us();
        let reply = broker
            .admin
            .request(
                AdminRequest::Ping {
                    worker: None,
                    timeout_ms: 5_000,
                },
                Duration::from_secs(10),
            )
            .await?;
        let Reply::PingResult { workers: answers } = reply else {
            bail!("ping: {reply:?}")
        };
        round_trips.push(now_us() - t0);
        let answered = answers.iter().filter(|a| a.rtt_us.is_some()).count();
        if answered != workers {
            bail!("{answered} of {workers} workers answered");
        }
        per_worker.extend(answers.iter().filter_map(|a| a.rtt_us));
    }
    for worker in pool {
        worker.stop().await;
    }
    println!();
    println!("| measure | samples | p50 | p95 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    summary_row(
        &format!("ping all {workers}, whole round trip"),
        &round_trips,
    )?;
    summary_row("per-worker answer time (broker's view)", &per_worker)
}
