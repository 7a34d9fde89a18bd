//! `jobcastctl drain WORKER`: the worker finishes its runs, takes no new ones, and exits.

use crate::ctl::Ctl;
use anyhow::Result;
use jobcast_protocol::AdminRequest;
use std::process::ExitCode;

pub(crate) async fn drain(ctl: &Ctl, worker: String) -> Result<ExitCode> {
    ctl.call(AdminRequest::Drain {
        worker: worker.clone(),
    })
    .await?;
    ctl.print(&serde_json::json!({ "draining": worker }), |_| {
        println!("worker {worker} is draining: it finishes its runs, takes no new ones, and exits");
    })?;
    Ok(ExitCode::SUCCESS)
}
