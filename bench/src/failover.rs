//! Failover time: two brokers on one PostgreSQL (started here) with the default lease,
//! a real worker that knows both; the leader is stopped (SIGTERM) or killed (SIGKILL),
//! and a run enqueued at that moment is timed until it starts on the worker, granted by
//! the broker that took over. The stopped broker is started again where it was, as a
//! standby, before the next round.

use crate::harness::{use_postgres, Broker, PostgresUnderTest, TIMEOUT};
use crate::stats::Summary;
use anyhow::{bail, Context, Result};
use jobcast_client::{Client, ClientConfig};
use jobcast_protocol::{AdminRequest, Exec, JobSpec, Reply, RunFilter, RunState, Secret};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub async fn failover(rounds: usize) -> Result<()> {
    let server = jobcast_test_postgres::TestPostgres::start()
        .context("no PostgreSQL on this host (Debian's `postgresql` package)")?;
    let url = server.create_database("jobcast");
    let password = tempfile::NamedTempFile::new()?;
    std::fs::write(password.path(), jobcast_test_postgres::PASSWORD)?;
    use_postgres(PostgresUnderTest {
        // The default lease (5 s): what an operator gets.
        settings: format!(
            "postgres = {{ url = \"{url}\", password_file = \"{}\" }}",
            password.path().display()
        ),
        pgbench_tps: 0.0,
    })?;
    let endpoints = [free_endpoints()?, free_endpoints()?];
    let mut brokers = [
        Some(Broker::start_on(&endpoints[0].0, &endpoints[0].1).await?),
        Some(Broker::start_on(&endpoints[1].0, &endpoints[1].1).await?),
    ];
    let first = brokers[0].as_ref().context("the first broker")?;
    first
        .apply(vec![JobSpec::new(
            "probe",
            "default",
            Exec::Command(vec!["true".into()]),
        )])
        .await?;
    let routers = format!("{},{}", endpoints[0].0, endpoints[1].0);
    let events = format!("{},{}", endpoints[0].1, endpoints[1].1);
    let worker = first.start_worker_to(1, 2, "default", &routers, &events)?;
    println!(
        "failover: two brokers on PostgreSQL (lease 5 s, the default), one worker knowing both; the leader stopped or killed, then a run enqueued at that moment timed until it starts"
    );
    println!();
    println!("| round | how | leader gone → run started |");
    println!("|---|---|---|");
    let mut times: [Vec<u64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let kill = round % 2 == 1;
        let leader = leader_of(&brokers).await?;
        let standby = 1 - leader;
        let gone_at = Instant::now();
        let gone_ms = now_ms();
        let signal = if kill { libc::SIGKILL } else { libc::SIGTERM };
        if let Some(broker) = &brokers[leader] {
            // SAFETY: a signal to a child process the bench started and has not reaped.
            unsafe {
                libc::kill(broker.pid() as i32, signal);
            }
        }
        let started_ms = run_started_after(&endpoints[standby].0, round, gone_at).await?;
        let took = started_ms.saturating_sub(gone_ms);
        times[usize::from(kill)].push(took);
        println!(
            "| {round} | {} | {took} ms |",
            if kill { "SIGKILL" } else { "SIGTERM" }
        );
        // The one that went, back where it was, standing by.
        brokers[leader] = None;
        brokers[leader] = Some(Broker::start_on(&endpoints[leader].0, &endpoints[leader].1).await?);
    }
    drop(worker);
    println!();
    for (how, samples, goal_ms) in [
        ("SIGTERM", &times[0], 1_000.0),
        ("SIGKILL", &times[1], 10_000.0),
    ] {
        let Some(summary) = Summary::of(samples) else {
            continue;
        };
        println!(
            "{how}: {} rounds, p50 {} ms, p99 {} ms, max {} ms",
            samples.len(),
            summary.p50,
            summary.p99,
            summary.max
        );
        crate::goals::at_most(
            &format!("leader {how} → run started, granted by the new leader, p99"),
            goal_ms,
            summary.p99 as f64,
            "ms",
        );
    }
    drop(brokers);
    drop(server);
    Ok(())
}

/// A free loopback port pair: (request endpoint, event endpoint).
fn free_endpoints() -> Result<(String, String)> {
    let port = || -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    Ok((
        format!("tcp://127.0.0.1:{}", port()?),
        format!("tcp://127.0.0.1:{}", port()?),
    ))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Which broker acts: the one that answers a status.
async fn leader_of(brokers: &[Option<Broker>; 2]) -> Result<usize> {
    let deadline = Instant::now() + TIMEOUT * 3;
    loop {
        for (index, broker) in brokers.iter().enumerate() {
            if let Some(broker) = broker {
                if broker.status().await.is_ok() {
                    return Ok(index);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no broker acts");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Enqueues a probe at the broker at `router` as soon as it acts, and waits until the
/// run has started; when it started (ms since the epoch, the broker's clock).
async fn run_started_after(router: &str, round: usize, since: Instant) -> Result<u64> {
    let client = Client::connect(ClientConfig {
        endpoint: router.to_string(),
        name: "admin".into(),
        secret: Secret::new(crate::harness::ADMIN_SECRET),
        connect_timeout: Duration::from_secs(5),
        max_clock_skew: Duration::from_secs(30),
    })
    .await?;
    let deadline = since + Duration::from_secs(60);
    let enqueue = AdminRequest::Enqueue {
        job: "probe".into(),
        key: Some(format!("probe-{round}")),
        params: Default::default(),
        priority: None,
    };
    let run_id = loop {
        if Instant::now() > deadline {
            bail!("the standby never took over");
        }
        match client
            .request(enqueue.clone(), Duration::from_secs(2))
            .await
        {
            Ok(Reply::Enqueued { run }) => break run.id,
            // Not acting yet (or the answer was lost): asking again is safe (a key).
            Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    loop {
        if Instant::now() > deadline {
            bail!("run {run_id} did not start");
        }
        let filter = RunFilter {
            job: Some("probe".into()),
            limit: 50,
            ..Default::default()
        };
        if let Ok(Reply::Runs { runs, .. }) = client
            .request(AdminRequest::ListRuns(filter), Duration::from_secs(2))
            .await
        {
            if let Some(run) = runs.iter().find(|run| run.id == run_id) {
                if let (Some(started), false) = (
                    run.started_at_ms,
                    matches!(run.state, RunState::Queued | RunState::Assigned),
                ) {
                    return Ok(started);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
