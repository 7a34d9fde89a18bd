//! `jobcastctl status`: the broker, its workers and its queues.

use crate::ctl::{expect_reply, Ctl};
use crate::show::format_time;
use crate::table::Table;
use anyhow::Result;
use jobcast_protocol::{AdminRequest, Reply};
use std::process::ExitCode;
use std::time::Duration;

pub(crate) async fn status(ctl: &Ctl) -> Result<ExitCode> {
    let reply = ctl.call(AdminRequest::Status).await?;
    let report = expect_reply!(&reply, Reply::Status(report) => report);
    if ctl.json() {
        ctl.print_json(report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "broker {} up {}, {} jobs, {} runs stored",
        report.version,
        humantime::format_duration(Duration::from_secs(report.uptime_ms / 1000)),
        report.jobs,
        report.total_runs
    );
    if let Some(leadership) = &report.leadership {
        let who =
            if leadership.this_broker.is_empty() || leadership.this_broker == leadership.holder {
                "this broker"
            } else {
                "another broker"
            };
        println!(
            "leader: {who} ({}), epoch {}, lease {} renewed {} ms ago",
            leadership.holder,
            leadership.epoch,
            humantime::format_duration(Duration::from_millis(leadership.lease_ms)),
            leadership.renewed_ms_ago
        );
        let standbys: Vec<String> = leadership
            .brokers
            .iter()
            .filter(|broker| !broker.leader)
            .map(|broker| {
                format!(
                    "{} at {} (seen {} ms ago)",
                    broker.holder, broker.router, broker.seen_ms_ago
                )
            })
            .collect();
        println!("standbys: {}", list_or_none(&standbys));
    }
    let active: Vec<String> = report
        .active
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    println!("active runs: {}", list_or_none(&active));
    if !report.disabled_pools.is_empty() {
        println!("disabled pools: {}", report.disabled_pools.join(", "));
    }
    for alert in &report.alerts {
        println!("ALERT {}: {}", alert.kind.as_str(), alert.message);
    }
    if !report.rejected.is_empty() {
        let rejected: Vec<String> = report
            .rejected
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        println!("refused: {}", rejected.join(", "));
    }
    if let Some(open) = report.connections.get("open") {
        println!(
            "connections: {open} open, {} opened and {} closed since start",
            report.connections.get("opened").unwrap_or(&0),
            report.connections.get("closed").unwrap_or(&0)
        );
    }
    println!();
    let mut table = Table::new([
        "WORKER",
        "STATE",
        "VERSION",
        "HOST",
        "SLOTS",
        "RUNNING",
        "LAST SEEN",
    ]);
    for w in &report.workers {
        table.row([
            w.id.clone(),
            match (w.online, w.draining) {
                (true, true) => "draining",
                (true, false) => "online",
                (false, _) => "offline",
            }
            .into(),
            w.version.clone(),
            w.hostname.clone(),
            w.concurrency.to_string(),
            w.running.len().to_string(),
            format_time(w.last_seen_ms),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

/// `items` joined by commas, or "none".
fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}
