//! The store engines compared on the broker's own records, through the `Store` trait:
//! durable run lifecycles per second, disk per run, memory, reopening, and SIGKILLs in
//! the middle of writes. Each engine is measured in a child process of its own, so that
//! one's memory and threads do not weigh on the other's figures.

use crate::footprint::{run_id, typical_job};
use crate::harness::{disk_usage, rss_bytes};
use anyhow::{bail, Context, Result};
use jobcast_broker::store::{FjallEngine, KvStore, SledEngine, Store, StoreError};
use jobcast_protocol::{JobSpec, Outcome, RunRecord, RunState, Transition};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs per group commit: a broker batch of 256 requests is about this many lifecycles.
const RUNS_PER_COMMIT: u64 = 64;
/// Page or block cache given to each engine.
const CACHE_BYTES: u64 = 64 << 20;

const ENGINES: [&str; 2] = ["sled", "fjall"];

fn open(engine: &str, path: &Path) -> Result<Box<dyn Store>> {
    // A store just closed by the process before may still be held for a moment by the
    // engine's own threads as they wind down (fjall's lock goes with its last one).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open_once(engine, path) {
            Err(e)
                if Instant::now() < deadline
                    && matches!(e.downcast_ref::<StoreError>(), Some(StoreError::InUse)) =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            opened => return opened,
        }
    }
}

fn open_once(engine: &str, path: &Path) -> Result<Box<dyn Store>> {
    Ok(match engine {
        "sled" => Box::new(KvStore::with_engine(SledEngine::open(path, CACHE_BYTES)?)?),
        "fjall" => Box::new(KvStore::with_engine(FjallEngine::open(path, CACHE_BYTES)?)?),
        other => bail!("no store engine {other:?} (sled or fjall)"),
    })
}

/// One run's life as the broker writes it: created queued, granted, started, a line of
/// log, finished.
fn write_lifecycle(store: &mut dyn Store, seq: u64, job: &JobSpec) -> Result<()> {
    let at = 1_800_000_000_000 + seq;
    let id = run_id(seq);
    let mut run = RunRecord::queued(id.clone(), seq, job.clone(), at, "enqueued by admin");
    store.create_run(&run)?;
    let step = |store: &mut dyn Store, run: &mut RunRecord, state: RunState, cause: &str| {
        run.state = state;
        run.history.push(Transition {
            state,
            at_ms: at,
            cause: cause.into(),
        });
        store.put_run(run)
    };
    run.worker = Some("w1".into());
    step(store, &mut run, RunState::Assigned, "granted to w1")?;
    run.pid = Some(4242);
    run.started_at_ms = Some(at + 1);
    step(
        store,
        &mut run,
        RunState::Running,
        "started on w1 as pid 4242",
    )?;
    store.put_log_chunk(&id, 0, b"dumped 1234 rows\n")?;
    run.finished_at_ms = Some(at + 9);
    run.outcome = Some(Outcome::Exited { code: 0 });
    run.log_bytes = 17;
    step(store, &mut run, RunState::Succeeded, "exited with code 0")?;
    Ok(())
}

/// In the child: fills a store with `runs` lifecycles and prints one line of figures.
pub fn measure_one(engine: &str, dir: &Path, runs: u64) -> Result<()> {
    let path = dir.join("store");
    let job = typical_job();
    let started = Instant::now();
    {
        let mut store = open(engine, &path)?;
        store.put_job(&job)?;
        for seq in 1..=runs {
            write_lifecycle(store.as_mut(), seq, &job)?;
            if seq % RUNS_PER_COMMIT == 0 {
                store.flush()?;
            }
        }
        store.flush()?;
        let rate = runs as f64 / started.elapsed().as_secs_f64();
        let rss = rss_bytes(std::process::id());
        println!("fill {rate:.0} {rss}");
    }
    let disk = disk_usage(&path);
    let reopen = Instant::now();
    let store = open(engine, &path)?;
    let active = store.active_runs()?.len();
    let count = store.run_count()?;
    let reopen_ms = reopen.elapsed().as_secs_f64() * 1e3;
    if count != runs || active != 0 {
        bail!("{engine}: reopened with {count} runs ({active} active), expected {runs}");
    }
    println!("disk {disk} reopen {reopen_ms:.1}");
    Ok(())
}

/// In the child of a kill round: writes lifecycles after whatever the store holds,
/// printing the last run made durable after each commit, until killed.
pub fn write_until_killed(engine: &str, dir: &Path) -> Result<()> {
    let mut store = open(engine, &dir.join("store"))?;
    let job = typical_job();
    store.put_job(&job)?;
    let mut seq = store.last_run_seq()?;
    loop {
        for _ in 0..RUNS_PER_COMMIT {
            seq += 1;
            write_lifecycle(store.as_mut(), seq, &job)?;
        }
        store.flush()?;
        println!("{seq}");
    }
}

fn child(args: &[&str]) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("own executable"));
    command
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    command
}

struct Figures {
    rate: f64,
    rss: u64,
    disk_per_run: u64,
    reopen_ms: f64,
}

fn measure(engine: &str, runs: u64) -> Result<Figures> {
    let dir = tempfile::Builder::new()
        .prefix("jobcast-bench-store-")
        .tempdir()?;
    let out = child(&[
        "store-engine",
        "--engine",
        engine,
        "--dir",
        &dir.path().to_string_lossy(),
        "--runs",
        &runs.to_string(),
    ])
    .stdout(Stdio::piped())
    .output()?;
    if !out.status.success() {
        bail!("the {engine} measurement failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // The lines `fill RATE RSS` and `disk BYTES reopen MS` (after the command line every
    // invocation of the tool prints).
    let words: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("fill ") || l.starts_with("disk "))
        .flat_map(str::split_whitespace)
        .collect();
    let number = |at: usize| -> Result<f64> {
        words
            .get(at)
            .and_then(|w| w.parse().ok())
            .with_context(|| format!("unexpected output of the {engine} measurement: {text}"))
    };
    Ok(Figures {
        rate: number(1)?,
        rss: number(2)? as u64,
        disk_per_run: number(4)? as u64 / runs.max(1),
        reopen_ms: number(6)?,
    })
}

/// SIGKILLs the writer `kills` times at moments spread over 20–300 ms, reopening the
/// store after each: every run it said was durable must be there, finished.
fn kill_rounds(engine: &str, kills: u32) -> Result<(u32, u64)> {
    let dir = tempfile::Builder::new()
        .prefix("jobcast-bench-kills-")
        .tempdir()?;
    let mut acknowledged = 0;
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut lost = 0;
    for _ in 0..kills {
        let mut writer = child(&[
            "store-writer",
            "--engine",
            engine,
            "--dir",
            &dir.path().to_string_lossy(),
        ])
        .stdout(Stdio::piped())
        .spawn()?;
        let stdout = writer.stdout.take().context("writer output")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(seq) = line.trim().parse::<u64>() {
                    let _ = tx.send(seq);
                }
            }
        });
        // Wait for the first commit, then kill at a moment in the middle of writing.
        let first = rx.recv_timeout(Duration::from_secs(30)).ok();
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        std::thread::sleep(Duration::from_millis(20 + (seed >> 33) % 280));
        writer.kill()?;
        writer.wait()?;
        let _ = reader.join();
        let last = rx.try_iter().last().or(first).unwrap_or(acknowledged);
        acknowledged = acknowledged.max(last);
        let store = open(engine, &dir.path().join("store"))
            .with_context(|| format!("{engine} would not open after a kill"))?;
        let stored = store.last_run_seq()?;
        if stored < acknowledged {
            lost += acknowledged - stored;
        }
        for seq in (acknowledged.saturating_sub(RUNS_PER_COMMIT) + 1)..=acknowledged {
            match store.run(&run_id(seq))? {
                Some(run) if run.state == RunState::Succeeded => {}
                _ => lost += 1,
            }
        }
    }
    Ok((lost as u32, acknowledged))
}

pub fn compare(runs: u64, kills: u32) -> Result<()> {
    println!("store engines: {runs} run lifecycles each (create, 3 updates, a log line), a commit per {RUNS_PER_COMMIT} runs, {} MiB cache", CACHE_BYTES >> 20);
    println!();
    println!("| engine | durable lifecycles/s | RSS after | disk per run | reopen | SIGKILLs during writes: runs lost / acknowledged |");
    println!("|---|---|---|---|---|---|");
    for engine in ENGINES {
        let figures = measure(engine, runs)?;
        let (lost, acknowledged) = kill_rounds(engine, kills)?;
        println!(
            "| {engine} | {:.0} | {:.1} MB | {} B | {:.0} ms | {lost} of {acknowledged} ({kills} kills) |",
            figures.rate,
            figures.rss as f64 / 1e6,
            figures.disk_per_run,
            figures.reopen_ms,
        );
    }
    Ok(())
}
