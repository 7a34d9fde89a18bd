//! `jobcastctl ping`: which workers answer, with their versions and load.

use crate::ctl::{expect_reply, Ctl};
use crate::table::Table;
use anyhow::Result;
use jobcast_protocol::{AdminRequest, Reply};
use std::process::ExitCode;
use std::time::Duration;

pub(crate) async fn ping(ctl: &Ctl, worker: Option<String>, wait: Duration) -> Result<ExitCode> {
    let request = AdminRequest::Ping {
        worker,
        timeout_ms: wait.as_millis() as u64,
    };
    // The broker answers after waiting for the workers: that long, and the usual timeout.
    let reply = ctl.call_within(request, wait + ctl.timeout()).await?;
    let workers = expect_reply!(reply, Reply::PingResult { workers } => workers);
    let silent = workers.iter().filter(|w| w.rtt_us.is_none()).count();
    if ctl.json() {
        ctl.print_json(&workers)?;
    } else if workers.is_empty() {
        println!("no worker is connected");
    } else {
        let mut table = Table::new([
            "WORKER", "VERSION", "HOST", "PID", "SLOTS", "RUNNING", "RTT",
        ]);
        for w in &workers {
            match (&w.info, w.rtt_us) {
                (Some(info), Some(rtt)) => table.row([
                    w.worker.clone(),
                    info.version.clone(),
                    info.hostname.clone(),
                    info.pid.to_string(),
                    info.concurrency.to_string(),
                    info.running.len().to_string(),
                    format!("{:.2} ms", rtt as f64 / 1000.0),
                ]),
                _ => table.row([
                    w.worker.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    format!("no answer in {}", humantime::format_duration(wait)),
                ]),
            }
        }
        table.print();
    }
    Ok(if silent > 0 || workers.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
