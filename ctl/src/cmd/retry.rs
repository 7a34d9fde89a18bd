//! `jobcastctl retry RUN`: a new attempt of a finished run, with its parameters.

use crate::ctl::{expect_reply, Ctl};
use anyhow::Result;
use jobcast_protocol::{AdminRequest, Reply};
use std::process::ExitCode;

pub(crate) async fn retry(ctl: &Ctl, run: String) -> Result<ExitCode> {
    let reply = ctl.call(AdminRequest::Retry { run }).await?;
    let run = expect_reply!(reply, Reply::Enqueued { run } => run);
    ctl.print(&run, |run| {
        println!(
            "queued run {} of job {} (attempt {})",
            run.id, run.job, run.attempt
        )
    })?;
    Ok(ExitCode::SUCCESS)
}
