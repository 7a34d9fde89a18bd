//! `jobcastctl enable` and `disable`: a job or a whole pool turned on or off.

use crate::ctl::Ctl;
use anyhow::Result;
use jobcast_protocol::{AdminRequest, EnableTarget};
use std::process::ExitCode;

pub(crate) async fn set_enabled(
    ctl: &Ctl,
    target: EnableTarget,
    enabled: bool,
) -> Result<ExitCode> {
    ctl.call(AdminRequest::SetEnabled {
        target: target.clone(),
        enabled,
    })
    .await?;
    let shown = serde_json::json!({ "target": target, "enabled": enabled });
    ctl.print(&shown, |_| {
        let what = match &target {
            EnableTarget::Job(job) => format!("job {job}"),
            EnableTarget::Pool(pool) => format!("pool {pool}"),
        };
        let word = if enabled { "enabled" } else { "disabled" };
        println!("{what} {word}");
    })?;
    Ok(ExitCode::SUCCESS)
}
