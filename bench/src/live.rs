//! WebSocket fan-out: many dashboard clients on one broker while runs complete steadily.

use crate::harness::{bench_job, now_us, rss_bytes, Broker, SyntheticWorker, VIEWER_TOKEN};
use crate::stats::{ms, Summary};
use anyhow::{bail, Context, Result};
use futures_util::StreamExt;
use jobcast_protocol::Exec;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// Lets this process open one socket per client.
fn raise_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

pub async fn live(clients: usize, rate: u32, duration: Duration) -> Result<()> {
    if clients == 0 || rate == 0 {
        bail!("--clients and --rate must be at least 1");
    }
    raise_file_limit();
    println!("live feed: {clients} WebSocket clients on one broker, {rate} runs/s completing for {duration:?}; latency from the end being recorded to each client receiving it");
    let broker = Broker::start().await?;
    broker
        .apply(vec![bench_job(
            "tick",
            "bench",
            Exec::Command(vec!["true".into()]),
        )])
        .await?;
    let worker = SyntheticWorker::start(&broker, "bench").await?;
    let idle_rss = rss_bytes(broker.pid());
    let samples = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::with_capacity(clients);
    let url = format!("ws://{}/api/v1/live?token={VIEWER_TOKEN}", broker.http);
    for _ in 0..clients {
        let (mut socket, _) = tokio_tungstenite::connect_async(&url)
            .await
            .context("cannot open a WebSocket")?;
        let samples = samples.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(Ok(message)) = socket.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let received = now_us();
                let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                if value["type"] != "changes" {
                    continue;
                }
                for run in value["runs"].as_array().into_iter().flatten() {
                    if let (Some("succeeded"), Some(ended)) =
                        (run["state"].as_str(), run["ended_at_us"].as_u64())
                    {
                        mine.push(received.saturating_sub(ended));
                    }
                }
                // Handed over per message: the task is aborted at the end.
                samples.lock().map(|mut s| s.append(&mut mine)).ok();
            }
        }));
    }
    let connected_rss = rss_bytes(broker.pid());
    let started = Instant::now();
    let mut pace = tokio::time::interval(Duration::from_secs(1) / rate);
    let mut peak = connected_rss;
    let mut enqueued = 0u64;
    while started.elapsed() < duration {
        pace.tick().await;
        broker.enqueue("tick", 1).await?;
        enqueued += 1;
        if enqueued.is_multiple_of(50) {
            peak = peak.max(rss_bytes(broker.pid()));
        }
    }
    broker.wait_idle(1).await?;
    // Let the last events reach every client before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    peak = peak.max(rss_bytes(broker.pid()));
    for task in &tasks {
        task.abort();
    }
    worker.stop().await;
    let samples = samples.lock().map(|s| s.clone()).unwrap_or_default();
    let summary = Summary::of(&samples).context("no event reached a client")?;
    println!();
    println!("| measure | value |");
    println!("|---|---|");
    println!("| clients | {clients} |");
    println!("| runs completed | {enqueued} |");
    println!(
        "| events delivered (run ends × clients) | {} |",
        samples.len()
    );
    println!(
        "| delivery latency p50 / p99 / max | {} / {} / {} |",
        ms(summary.p50),
        ms(summary.p99),
        ms(summary.max)
    );
    println!(
        "| broker RSS idle / with clients / peak | {:.1} / {:.1} / {:.1} MB |",
        idle_rss as f64 / 1e6,
        connected_rss as f64 / 1e6,
        peak as f64 / 1e6
    );
    Ok(())
}
