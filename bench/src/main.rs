//! `jobcast-bench`: starts a real broker on loopback, drives it, and prints figures with
//! the command that produced them.
//!
//! Build everything in release mode first (`cargo build --release`); the tool runs the
//! `jobcast-broker` that sits next to its own executable.

mod failover;
mod floor;
mod footprint;
mod goals;
mod harness;
mod latency;
mod live;
mod machine;
mod peers;
mod postgres;
mod retention;
mod stats;
mod store_engines;
mod throughput;
mod transport;
mod workers;

use footprint::footprint;
use latency::{fanout, kill, latency};
use throughput::{capacity, throughput};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use harness::{Broker, Claiming, SyntheticWorker};
use jobcast_protocol::{Exec, JobSpec, ScheduleSpec};
use stats::Summary;
use std::time::{Duration, Instant};

/// Runs of a capacity measure: a sustained rate, not a burst (20,000 lasted under a
/// second on this machine, its start and drain a visible part of it).
const CAPACITY_RUNS: usize = 100_000;

#[derive(Debug, Parser)]
#[command(about = "Benchmarks of a real jobcast broker on loopback")]
struct Args {
    /// Smaller sizes, to check the tool works (CI), not to measure.
    #[arg(long, global = true)]
    quick: bool,
    /// Synthetic workers send each run's start as a report of its own, as workers did
    /// before starts went inside ends (and as they still do for runs longer than their
    /// reporter's gathering): to compare the two.
    #[arg(long, global = true)]
    starts_apart: bool,
    /// `capacity` (and the `postgres` part's) enqueues at this many runs a second,
    /// whatever the answers (an open loop, as many independent clients), instead of as
    /// fast as answers come back (a closed loop): the broker keeps up when the runs/s it
    /// reaches is the rate offered.
    #[arg(long, global = true, value_name = "RUNS_PER_S")]
    offered: Option<u32>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Fire-time error of scheduled ticks: from a tick's time to its run being handed to
    /// a worker.
    Firetime {
        /// Jobs that all fire in the same second, every 5 s.
        #[arg(long, default_value_t = 1_000)]
        together: usize,
        /// Jobs in total for the spread scenario, spread evenly over the seconds of each
        /// minute (job `i` at second `i × 60 / total`).
        #[arg(long, default_value_t = 10_000)]
        total: usize,
        /// How long each scenario runs.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Shell throughput: N runs of a trivial /bin/sh script on W workers × C slots, and
    /// the machine's raw limit for the same work with no scheduler.
    Throughput {
        #[arg(long, default_value_t = 2_000)]
        runs: usize,
        #[arg(long, default_value_t = 2)]
        workers: usize,
        #[arg(long, default_value_t = 2)]
        slots: u32,
    },
    /// The broker on PostgreSQL (a server of the host's, started by the bench): pgbench
    /// beside the capacity and dispatch-latency parts.
    Postgres {
        /// Runs of the capacity part (enough that starting and draining are a small part
        /// of it: 20,000 lasted under a second).
        #[arg(long, default_value_t = CAPACITY_RUNS)]
        runs: usize,
        #[arg(long, default_value_t = 1_000)]
        latency_runs: usize,
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        pgbench_time: Duration,
    },
    /// Failover: two brokers on PostgreSQL (a server of the host's, started by the bench),
    /// the leader stopped or killed, timed until a run starts through the other.
    Failover {
        /// Rounds, SIGTERM and SIGKILL in turn.
        #[arg(long, default_value_t = 10)]
        rounds: usize,
    },
    /// Broker capacity: the whole run lifecycle with synthetic workers that spawn nothing.
    Capacity {
        #[arg(long, default_value_t = CAPACITY_RUNS)]
        runs: usize,
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
    /// Memory when idle and with 10 workers, and store size and restart time with many
    /// finished runs.
    Footprint {
        #[arg(long, default_value_t = 1_000_000)]
        stored_runs: usize,
    },
    /// Broker cost per run as workers grow: N one-slot synthetic workers claiming as real
    /// ones do, broker CPU and claims per run for each N.
    Workers {
        /// Worker counts to measure, one broker each (beyond 250, the synthetic workers
        /// run in child processes of the bench).
        #[arg(long, value_delimiter = ',', default_values_t = [10, 100, 1_000])]
        counts: Vec<usize>,
        #[arg(long, default_value_t = 10_000)]
        runs: usize,
    },
    /// Retention under load: a store of N finished runs pruned to N/2 while runs flow;
    /// the prune rate and the round trip of requests meanwhile.
    Retention {
        #[arg(long, default_value_t = 1_000_000)]
        stored_runs: usize,
    },
    /// Dispatch latency on an idle system: enqueue → process spawned, and → end recorded.
    Latency {
        #[arg(long, default_value_t = 1_000)]
        runs: usize,
    },
    /// jobcast beside its peers on the same shell workload: Gearman (Debian's
    /// gearman-job-server, in-memory queue, Python workers) where it is installed.
    Peers {
        #[arg(long, default_value_t = 2_000)]
        runs: usize,
        #[arg(long, default_value_t = 1_000)]
        latency_runs: usize,
    },
    /// Kill latency: from `kill` to the whole process tree (with a setsid child) gone.
    Kill {
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// Fan-out: N workers on one broker, ping round trip to all of them.
    Fanout {
        #[arg(long, default_value_t = 200)]
        workers: usize,
    },
    /// Live feed: many WebSocket clients while runs complete at a steady rate.
    Live {
        #[arg(long, default_value_t = 1_000)]
        clients: usize,
        #[arg(long, default_value_t = 50)]
        rate: u32,
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// Round trips through the transport alone, against blocking libzmq calls.
    Transport {
        #[arg(long, default_value_t = 20_000)]
        round_trips: usize,
    },
    /// Everything above with default sizes (or --quick ones), in one run.
    All,
    /// Store engines on the broker's records: durable lifecycles/s, disk per run, memory,
    /// reopening, and SIGKILLs during writes.
    Store {
        #[arg(long, default_value_t = 200_000)]
        runs: u64,
        #[arg(long, default_value_t = 200)]
        kills: u32,
    },
    /// One engine's figures for `store`, in a child process.
    #[command(hide = true)]
    StoreEngine {
        #[arg(long)]
        engine: String,
        #[arg(long)]
        dir: std::path::PathBuf,
        #[arg(long)]
        runs: u64,
    },
    /// The writer `store` kills, in a child process.
    #[command(hide = true)]
    StoreWriter {
        #[arg(long)]
        engine: String,
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// One-slot synthetic workers for `workers`, run by the bench in a child process.
    #[command(hide = true)]
    SyntheticWorkers {
        #[arg(long)]
        router: String,
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    harness::report_starts_apart(args.starts_apart);
    harness::offer_at(args.offered.unwrap_or(0));
    let command_line: Vec<String> = std::env::args().collect();
    println!("$ {}", command_line.join(" "));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match args.command {
            Command::Firetime {
                together,
                total,
                duration,
            } => {
                let (together, total, duration) = if args.quick {
                    (50, 200, Duration::from_secs(6))
                } else {
                    (together, total, duration)
                };
                firetime(together, total, duration).await
            }
            Command::Throughput {
                runs,
                workers,
                slots,
            } => throughput(if args.quick { 100 } else { runs }, workers, slots)
                .await
                .map(drop),
            Command::Postgres {
                runs,
                latency_runs,
                pgbench_time,
            } => {
                if args.quick {
                    postgres::postgres(500, 50, Duration::from_secs(1)).await?;
                } else {
                    postgres::postgres(runs, latency_runs, pgbench_time).await?;
                }
                goals::print();
                Ok(())
            }
            Command::Failover { rounds } => {
                failover::failover(if args.quick { 2 } else { rounds }).await?;
                goals::print();
                Ok(())
            }
            Command::Capacity { runs, workers } => {
                capacity(if args.quick { 500 } else { runs }, workers).await
            }
            Command::Transport { round_trips } => {
                transport::transport(if args.quick { 200 } else { round_trips }).await
            }
            Command::Footprint { stored_runs } => {
                footprint(if args.quick { 2_000 } else { stored_runs }).await
            }
            Command::Latency { runs } => {
                latency(if args.quick { 50 } else { runs }).await.map(drop)
            }
            Command::Peers { runs, latency_runs } => {
                let (runs, latency_runs) = if args.quick {
                    (100, 50)
                } else {
                    (runs, latency_runs)
                };
                let shell = throughput(runs, 2, 2).await?;
                println!();
                let spawned = latency(latency_runs).await?;
                println!();
                peers::peers(runs, latency_runs, shell, &spawned).await?;
                println!();
                goals::print();
                Ok(())
            }
            Command::Retention { stored_runs } => {
                retention::retention(if args.quick { 5_000 } else { stored_runs }).await
            }
            Command::SyntheticWorkers {
                router,
                first,
                count,
            } => workers::serve_workers(router, first, count).await,
            Command::Store { runs, kills } => {
                if args.quick {
                    store_engines::compare(2_000, 3)
                } else {
                    store_engines::compare(runs, kills)
                }
            }
            Command::StoreEngine { engine, dir, runs } => {
                store_engines::measure_one(&engine, &dir, runs)
            }
            Command::StoreWriter { engine, dir } => {
                store_engines::write_until_killed(&engine, &dir)
            }
            Command::Workers { counts, runs } => {
                if args.quick {
                    workers::many_workers(&[5, 20], 200).await
                } else {
                    workers::many_workers(&counts, runs).await
                }
            }
            Command::Kill { runs } => kill(if args.quick { 3 } else { runs }).await,
            Command::Fanout { workers } => fanout(if args.quick { 20 } else { workers }).await,
            Command::Live {
                clients,
                rate,
                duration,
            } => {
                if args.quick {
                    live::live(20, 20, Duration::from_secs(3)).await
                } else {
                    live::live(clients, rate, duration).await
                }
            }
            Command::All => {
                let q = args.quick;
                let (together, total, duration) = if q {
                    (50, 200, Duration::from_secs(6))
                } else {
                    (1_000, 10_000, Duration::from_secs(20))
                };
                let (shell_runs, latency_runs) = if q { (100, 50) } else { (2_000, 1_000) };
                let shell = throughput(shell_runs, 2, 2).await?;
                println!();
                capacity(if q { 500 } else { CAPACITY_RUNS }, 2).await?;
                println!();
                let spawned = latency(latency_runs).await?;
                println!();
                peers::peers(shell_runs, latency_runs, shell, &spawned).await?;
                println!();
                transport::transport(if q { 200 } else { 20_000 }).await?;
                println!();
                kill(if q { 3 } else { 20 }).await?;
                println!();
                firetime(together, total, duration).await?;
                println!();
                fanout(if q { 20 } else { 200 }).await?;
                println!();
                if q {
                    workers::many_workers(&[5, 20], 200).await?;
                } else {
                    workers::many_workers(&[10, 100, 1_000], 10_000).await?;
                }
                println!();
                retention::retention(if q { 5_000 } else { 1_000_000 }).await?;
                println!();
                if q {
                    live::live(20, 20, Duration::from_secs(3)).await?;
                } else {
                    live::live(1_000, 50, Duration::from_secs(20)).await?;
                }
                println!();
                footprint(if q { 2_000 } else { 1_000_000 }).await?;
                println!();
                store_engines::compare(if q { 2_000 } else { 200_000 }, if q { 3 } else { 200 })?;
                println!();
                postgres_apart(q, args.starts_apart)?;
                println!();
                // Last: it puts the brokers' store in PostgreSQL for the rest of the run.
                failover::failover(if q { 2 } else { 10 }).await?;
                println!();
                goals::print();
                Ok(())
            }
        }
    })
}

/// The `postgres` part in a process of its own: which store the brokers use is set once
/// for a whole process (the failover part sets its own). It prints its goals itself.
fn postgres_apart(quick: bool, starts_apart: bool) -> Result<()> {
    let mut command = std::process::Command::new(std::env::current_exe()?);
    if quick {
        command.arg("--quick");
    }
    if starts_apart {
        command.arg("--starts-apart");
    }
    let status = command
        .arg("postgres")
        .status()
        .context("cannot start the bench's postgres part")?;
    if !status.success() {
        bail!("the postgres part failed ({status})");
    }
    Ok(())
}

fn job(name: String, schedule: ScheduleSpec) -> JobSpec {
    JobSpec {
        schedule,
        ..harness::bench_job(&name, "bench", Exec::Command(vec!["true".into()]))
    }
}

async fn firetime(together: usize, total: usize, duration: Duration) -> Result<()> {
    if together == 0 || total == 0 {
        bail!("--together and --total must be at least 1");
    }
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "fire-time error: tick time → run granted to a (synthetic) worker waiting in a claim, {profile} build"
    );
    println!();
    println!("| scenario | jobs | samples | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|");

    // Scenario 0: one job every second on an idle broker.
    let broker = Broker::start().await?;
    broker
        .apply(vec![job(
            "alone".into(),
            ScheduleSpec {
                every_ms: Some(1_000),
                ..Default::default()
            },
        )])
        .await?;
    let samples = measure(&broker, duration).await?;
    row("1 job every second, idle broker", 1, &samples)?;
    drop(broker);

    // Scenario 1: `together` jobs due in the same second, every 5 s.
    let broker = Broker::start().await?;
    let jobs = (0..together)
        .map(|i| {
            job(
                format!("same-second-{i}"),
                ScheduleSpec {
                    every_ms: Some(5_000),
                    ..Default::default()
                },
            )
        })
        .collect();
    broker.apply(jobs).await?;
    let samples = measure(&broker, duration).await?;
    row(
        &format!("{together} jobs due in the same second"),
        together,
        &samples,
    )?;
    if let Some(s) = Summary::of(&samples) {
        goals::at_most(
            &format!("fire-time error p99, {together} jobs due in one second"),
            10.0,
            s.p99 as f64 / 1e3,
            "ms",
        );
    }
    drop(broker);

    // Scenario 2: `total` jobs spread evenly over each minute: however few, any run of
    // the scenario meets some of their ticks.
    let broker = Broker::start().await?;
    let jobs = (0..total)
        .map(|i| {
            job(
                format!("spread-{i}"),
                ScheduleSpec {
                    cron: vec![format!("{} * * * * *", i * 60 / total)],
                    ..Default::default()
                },
            )
        })
        .collect();
    broker.apply(jobs).await?;
    let samples = measure(&broker, duration).await?;
    row(
        &format!("{total} scheduled jobs, spread over each minute"),
        total,
        &samples,
    )?;
    Ok(())
}

/// Runs a synthetic worker for `duration` and returns tick → grant delays in µs.
async fn measure(broker: &Broker, duration: Duration) -> Result<Vec<u64>> {
    // Claiming as a real worker with free slots does: a claim always waiting.
    let worker = SyntheticWorker::start_claiming(broker, "bench", 1, Claiming::Waiting).await?;
    // Ticks before the worker was there waited for a worker, not for the scheduler.
    let registered_ms = harness::now_us() / 1_000 + 1;
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < duration {
        let grants = worker.next_grants(Duration::from_secs(2)).await?;
        for (scheduled_at_ms, granted_at_us) in grants {
            if scheduled_at_ms >= registered_ms {
                samples.push(granted_at_us.saturating_sub(scheduled_at_ms * 1_000));
            }
        }
    }
    worker.stop().await;
    Ok(samples)
}

fn row(name: &str, jobs: usize, samples: &[u64]) -> Result<()> {
    let Some(summary) = Summary::of(samples) else {
        bail!("{name}: no tick fired during the run");
    };
    println!(
        "| {name} | {jobs} | {} | {} | {} | {} |",
        samples.len(),
        stats::ms(summary.p50),
        stats::ms(summary.p99),
        stats::ms(summary.max)
    );
    Ok(())
}
