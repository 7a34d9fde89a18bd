//! `jobcastctl prune`: finished runs past retention deleted now (or counted, `--dry-run`).

use crate::ctl::{expect_reply, Ctl};
use anyhow::Result;
use jobcast_protocol::{AdminRequest, Reply};
use std::process::ExitCode;

pub(crate) async fn prune(ctl: &Ctl, dry_run: bool) -> Result<ExitCode> {
    let reply = ctl.call(AdminRequest::Prune { dry_run }).await?;
    let (runs, scanned, complete) = expect_reply!(reply, Reply::Pruned {
        runs,
        scanned,
        complete,
    } => (runs, scanned, complete));
    let shown = serde_json::json!({
        "runs": runs, "scanned": scanned, "complete": complete, "dry_run": dry_run
    });
    ctl.print(&shown, |_| {
        let verb = if dry_run { "would delete" } else { "deleted" };
        let among = if complete {
            format!("all {scanned} stored runs")
        } else {
            format!("the oldest {scanned} runs (run it again for more)")
        };
        println!("{verb} {runs} finished runs, looking at {among}");
    })?;
    Ok(ExitCode::SUCCESS)
}
