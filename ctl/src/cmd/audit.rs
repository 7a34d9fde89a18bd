//! `jobcastctl audit`: what operators changed, by whom and when, newest first.

use crate::ctl::{expect_reply, Ctl};
use crate::show::format_time;
use crate::table::Table;
use anyhow::Result;
use jobcast_protocol::{AdminRequest, Reply};
use std::process::ExitCode;

pub(crate) async fn audit(ctl: &Ctl, before: Option<u64>, limit: u32) -> Result<ExitCode> {
    let reply = ctl.call(AdminRequest::Audit { before, limit }).await?;
    let entries = expect_reply!(reply, Reply::Audit { entries } => entries);
    ctl.print(&entries, |entries| {
        if entries.is_empty() {
            println!("no changes recorded");
            return;
        }
        let mut table = Table::new(["#", "WHEN", "WHO", "ACTION", "TARGET", "OUTCOME"]);
        for entry in entries {
            table.row([
                entry.seq.to_string(),
                format_time(entry.at_ms),
                entry.actor.clone(),
                entry.action.clone(),
                entry.target.clone(),
                entry.outcome.clone(),
            ]);
        }
        table.print();
        if let Some(oldest) = entries.last().filter(|e| e.seq > 1) {
            println!("older: jobcastctl audit --before {}", oldest.seq);
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
