//! jobcast beside its peers on the same shell workload: Gearman (Debian's
//! `gearman-job-server`, its in-memory queue, four Python workers that run the script
//! with `subprocess`, as a home-made runner does) when it is installed. Nothing is
//! installed here; a peer that is missing is said to be missing.
//!
//! The peer's worker and client (`bench/peers/gearman_peer.py`) speak Gearman's binary
//! protocol with Python's standard library; each job answers with the time its process
//! was spawned, so submit → started is timed as jobcast's enqueue → spawned is.

use crate::stats::Summary;
use crate::throughput::{cpu_us, ShellFigures};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const PEER_SCRIPT: &str = include_str!("../peers/gearman_peer.py");
const SCRIPT: &str = "#!/bin/sh\ntrue\n";
/// As jobcast's throughput part: two workers with two slots each.
const PEER_WORKERS: usize = 4;

/// Children killed when the part ends, however it ends.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        // Last started first: the workers before the server they talk to.
        for child in self.0.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn find(program: &str, also: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(also.iter().map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_listening(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("gearmand did not listen on port {port} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn client(
    python: &Path,
    script: &Path,
    port: u16,
    mode: &str,
    runs: usize,
    ledger: &Option<PathBuf>,
) -> Result<serde_json::Value> {
    let mut command = Command::new(python);
    if let Some(ledger) = ledger {
        command.env(LEDGER, ledger);
    }
    let out = command
        .arg(script)
        .args([mode, &port.to_string(), "noop", &runs.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run the Gearman client")?;
    if !out.status.success() {
        bail!("the Gearman client failed ({})", out.status);
    }
    serde_json::from_slice(&out.stdout).context("the Gearman client's answer")
}

/// What Gearman did with the same workload.
struct GearmanFigures {
    rate: f64,
    /// Server, workers and client, less the scripts, µs per run.
    own_cpu_us: f64,
    latency: Summary,
}

/// The environment variable that makes the peer's jobs background jobs, answered in a
/// ledger file (`bench/peers/gearman_peer.py`).
const LEDGER: &str = "GEARMAN_PEER_LEDGER";

/// How gearmand keeps its queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    /// In memory (`builtin`), jobs submitted in the foreground: not durable.
    Memory,
    /// In SQLite (`libsqlite3`), background jobs, which gearmand writes there before it
    /// answers that a job was created (SQLite syncs each): durable.
    Sqlite,
}

fn gearman(
    gearmand: &Path,
    python: &Path,
    runs: usize,
    latency_runs: usize,
    queue: Queue,
) -> Result<GearmanFigures> {
    let dir = tempfile::Builder::new()
        .prefix("jobcast-bench-")
        .tempdir()?;
    let peer = dir.path().join("gearman_peer.py");
    std::fs::write(&peer, PEER_SCRIPT)?;
    let script = dir.path().join("noop.sh");
    std::fs::write(&script, SCRIPT)?;
    let port = free_port()?;
    let (queue_args, ledger) = match queue {
        Queue::Memory => (
            vec!["--queue-type".to_string(), "builtin".to_string()],
            None,
        ),
        Queue::Sqlite => (
            vec![
                "--queue-type".to_string(),
                "libsqlite3".to_string(),
                "--libsqlite3-db".to_string(),
                dir.path().join("queue.sqlite").display().to_string(),
            ],
            Some(dir.path().join("ledger")),
        ),
    };
    let mut processes = Processes(Vec::new());
    processes.0.push(
        Command::new(gearmand)
            .args(["--listen", "127.0.0.1", "--port", &port.to_string()])
            .args(["--log-file", "none"])
            .args(&queue_args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start gearmand")?,
    );
    wait_listening(port)?;
    for _ in 0..PEER_WORKERS {
        let mut worker = Command::new(python);
        if let Some(ledger) = &ledger {
            worker.env(LEDGER, ledger);
        }
        processes.0.push(
            worker
                .arg(&peer)
                .args(["worker", &port.to_string(), "noop", "/bin/sh"])
                .arg(&script)
                .stdin(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start a Gearman worker")?,
        );
    }
    // The workers are ready once a job goes through.
    client(python, &peer, port, "latency", 1, &ledger)?;
    let pids: Vec<u32> = processes.0.iter().map(|c| c.id()).collect();
    let before: Vec<(f64, f64)> = pids.iter().map(|&p| cpu_us(p)).collect();
    let burst = client(python, &peer, port, "burst", runs, &ledger)?;
    let after: Vec<(f64, f64)> = pids.iter().map(|&p| cpu_us(p)).collect();
    let failed = burst["failed"].as_u64().unwrap_or(u64::MAX);
    if failed != 0 {
        bail!("{failed} Gearman runs failed");
    }
    let seconds = burst["seconds"]
        .as_f64()
        .context("no time from the Gearman client")?;
    let client_cpu_us = burst["cpu_seconds"].as_f64().unwrap_or(0.0) * 1e6;
    let own: f64 = before.iter().zip(&after).map(|(b, a)| a.0 - b.0).sum();
    let latencies = client(python, &peer, port, "latency", latency_runs, &ledger)?;
    let samples: Vec<u64> = latencies["latencies_us"]
        .as_array()
        .context("no latencies from the Gearman client")?
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    Ok(GearmanFigures {
        rate: runs as f64 / seconds,
        own_cpu_us: (own + client_cpu_us) / runs as f64,
        latency: Summary::of(&samples).context("no Gearman latencies")?,
    })
}

/// Runs the peers that are installed and prints them beside jobcast's figures from the
/// same bench run (`shell`, and `spawned`: enqueue → spawned, µs).
pub async fn peers(
    runs: usize,
    latency_runs: usize,
    shell: ShellFigures,
    spawned: &[u64],
) -> Result<()> {
    println!("peers: the same {runs} runs of `#!/bin/sh true`, 4 at once, and {latency_runs} one at a time on an idle system (jobcast's script there writes a byte to a FIFO its client waits on; Gearman's client waits on its answer)");
    let jobcast_latency = Summary::of(spawned).context("no jobcast latencies")?;
    let floor = tokio::task::spawn_blocking(move || {
        crate::floor::measure_cpu(runs.clamp(200, 2_000), SCRIPT.as_bytes())
    })
    .await??;
    println!();
    println!(
        "the CPU a shell run costs at least on jobcast's parts (one start, one commit, one libzmq round trip): {:.0} µs = start {:.0} + commit {:.0} + round trip {:.0}; jobcast spent {:.0} µs a run (goal 150)",
        floor.total_us(),
        floor.spawn_us,
        floor.commit_us,
        floor.round_trip_us,
        shell.own_cpu_us
    );
    let (Some(gearmand), Some(python)) = (find("gearmand", &["/usr/sbin"]), find("python3", &[]))
    else {
        println!("Gearman: not run (needs gearmand from Debian's gearman-job-server, and python3)");
        return Ok(());
    };
    let (g, durable) = tokio::task::spawn_blocking(move || {
        let memory = gearman(&gearmand, &python, runs, latency_runs, Queue::Memory)?;
        // Debian's gearmand is built with SQLite; another build may refuse the queue.
        let durable = gearman(&gearmand, &python, runs, latency_runs, Queue::Sqlite)
            .inspect_err(|e| println!("Gearman with its SQLite queue: not run ({e:#})"))
            .ok();
        anyhow::Ok((memory, durable))
    })
    .await??;
    let ms = |us: u64| us as f64 / 1e3;
    let durable_cell = |cell: &dyn Fn(&GearmanFigures) -> String| match &durable {
        Some(d) => cell(d),
        None => "—".to_string(),
    };
    println!();
    println!("| measure | jobcast (durable: every step fsynced) | Gearman 1.1 (in-memory queue, foreground jobs: not durable) | Gearman 1.1 (SQLite queue, background jobs: durable) | raw spawn |");
    println!("|---|---|---|---|---|");
    println!(
        "| shell runs/s | {:.0} | {:.0} | {} | {:.0} |",
        shell.rate,
        g.rate,
        durable_cell(&|d| format!("{:.0}", d.rate)),
        shell.raw
    );
    println!(
        "| enqueue → process started, p50 / p99 (ms) | {:.2} / {:.2} | {:.2} / {:.2} | {} | — |",
        ms(jobcast_latency.p50),
        ms(jobcast_latency.p99),
        ms(g.latency.p50),
        ms(g.latency.p99),
        durable_cell(&|d| format!("{:.2} / {:.2}", ms(d.latency.p50), ms(d.latency.p99)))
    );
    println!(
        "| the scheduler's own CPU per run (µs) | {:.0} | {:.0} (server, Python workers, client) | {} | — |",
        shell.own_cpu_us,
        g.own_cpu_us,
        durable_cell(&|d| format!("{:.0}", d.own_cpu_us))
    );
    crate::goals::at_least(
        "shell runs/s as a multiple of Gearman's",
        1.25,
        shell.rate / g.rate,
        "×",
    );
    crate::goals::at_least(
        "shell runs/s as a share of the raw spawn limit",
        80.0,
        shell.rate / shell.raw * 100.0,
        "%",
    );
    crate::goals::at_most(
        "jobcast's own CPU per shell run",
        150.0,
        shell.own_cpu_us,
        "µs",
    );
    crate::goals::at_most(
        "enqueue → started p99, as a multiple of Gearman's",
        1.0,
        ms(jobcast_latency.p99) / ms(g.latency.p99).max(0.001),
        "×",
    );
    Ok(())
}
