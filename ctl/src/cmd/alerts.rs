//! `jobcastctl alerts`: what stands now and the history of alerts; `jobcastctl ack`: an
//! alert seen.

use crate::ctl::{expect_reply, Ctl};
use crate::show::format_time;
use crate::table::Table;
use anyhow::Result;
use jobcast_protocol::{AdminRequest, Reply};
use std::process::ExitCode;

pub(crate) async fn alerts(ctl: &Ctl, before: Option<u64>, limit: u32) -> Result<ExitCode> {
    let reply = ctl.call(AdminRequest::Alerts { before, limit }).await?;
    let (current, history) =
        expect_reply!(reply, Reply::Alerts { current, history } => (current, history));
    let shown = serde_json::json!({ "current": current, "history": history });
    ctl.print(&shown, |_| {
        if current.is_empty() {
            println!("no alert stands");
        } else {
            let mut table = Table::new(["ALERT", "SINCE", "SEEN BY", "MESSAGE"]);
            for alert in &current {
                table.row([
                    alert.id.clone(),
                    format_time(alert.since_ms),
                    alert
                        .acknowledged
                        .as_ref()
                        .map_or("-".to_string(), |a| a.by.clone()),
                    alert.message.clone(),
                ]);
            }
            table.print();
        }
        if history.is_empty() {
            return;
        }
        println!();
        let mut table = Table::new(["#", "RAISED", "CLEARED", "ALERT", "MESSAGE"]);
        for record in &history {
            table.row([
                record.seq.to_string(),
                format_time(record.raised_ms),
                record
                    .cleared_ms
                    .map_or("standing".to_string(), format_time),
                record.id.clone(),
                record.message.clone(),
            ]);
        }
        table.print();
    })?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn ack(ctl: &Ctl, id: String) -> Result<ExitCode> {
    let reply = ctl.call(AdminRequest::AckAlert { id: id.clone() }).await?;
    expect_reply!(reply, Reply::Ack => ());
    let shown = serde_json::json!({ "acknowledged": id });
    ctl.print(&shown, |_| println!("alert {id} acknowledged"))?;
    Ok(ExitCode::SUCCESS)
}
