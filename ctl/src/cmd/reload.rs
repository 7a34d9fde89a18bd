//! `jobcastctl reload`: the broker reads its settings file again (as on SIGHUP) and says
//! what changed.

use super::list;
use crate::ctl::{expect_reply, Ctl};
use anyhow::Result;
use jobcast_protocol::{AdminRequest, ReloadReport, Reply};
use std::process::ExitCode;

pub(crate) async fn reload(ctl: &Ctl) -> Result<ExitCode> {
    let reply = ctl.call(AdminRequest::Reload).await?;
    let report = expect_reply!(reply, Reply::Reloaded(report) => report);
    ctl.print(&report, print_report)?;
    Ok(ExitCode::SUCCESS)
}

fn print_report(report: &ReloadReport) {
    println!("settings reloaded");
    println!("worker keys added:   {}", list(&report.workers_added));
    println!("worker keys removed: {}", list(&report.workers_removed));
    println!("worker keys changed: {}", list(&report.workers_changed));
    if report.admin_changed {
        println!("admin key changed: use the new one from now on");
    }
    println!(
        "API tokens: {}, webhooks: {}",
        report.api_tokens, report.webhooks
    );
    if !report.needs_restart.is_empty() {
        println!(
            "changed in the file, in force after a restart: {}",
            report.needs_restart.join(", ")
        );
    }
}
