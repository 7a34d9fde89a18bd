//! `jobcastctl backup`: a consistent copy of the store, written by the broker on its host.

use crate::ctl::{expect_reply, Ctl};
use anyhow::Result;
use jobcast_protocol::{AdminRequest, Reply};
use std::process::ExitCode;
use std::time::Duration;

pub(crate) async fn backup(ctl: &Ctl, dir: String, wait: Duration) -> Result<ExitCode> {
    let reply = ctl
        .call_within(AdminRequest::Backup { to: dir }, wait)
        .await?;
    let shown = expect_reply!(reply, Reply::BackedUp {
        path,
        runs,
        jobs,
        log_chunks,
        records,
        bytes,
        took_ms,
    } => serde_json::json!({
        "path": path, "runs": runs, "jobs": jobs, "log_chunks": log_chunks,
        "records": records, "bytes": bytes, "took_ms": took_ms,
    }));
    ctl.print(&shown, |shown| {
        println!(
            "backup written on the broker's host in {}: {} runs, {} jobs, {} log chunks ({} records, {} bytes) in {} ms",
            shown["path"].as_str().unwrap_or_default(),
            shown["runs"],
            shown["jobs"],
            shown["log_chunks"],
            shown["records"],
            shown["bytes"],
            shown["took_ms"],
        );
    })?;
    Ok(ExitCode::SUCCESS)
}
