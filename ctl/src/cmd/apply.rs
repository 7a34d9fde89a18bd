//! `jobcastctl apply FILE`: the jobs file's jobs created or updated, checked here first.

use super::list;
use crate::ctl::{expect_reply, Ctl};
use crate::failure::Failure;
use anyhow::Result;
use jobcast_protocol::{jobfile, AdminRequest, JobSpec, Reply};
use std::path::Path;
use std::process::ExitCode;

/// The jobs of `file`, read and checked before any connection: a mistake in it is a
/// usage error, whether or not a broker runs.
pub(crate) fn read(file: &Path) -> Result<Vec<JobSpec>> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
    let jobs = jobfile::parse(&text)
        .map_err(|e| Failure::Usage(format!("in {}: {e:#}", file.display())))?;
    Ok(jobs)
}

pub(crate) async fn apply(ctl: &Ctl, jobs: Vec<JobSpec>) -> Result<ExitCode> {
    let reply = ctl.call(AdminRequest::ApplyJobs { jobs }).await?;
    expect_reply!(&reply, Reply::Applied { .. } => ());
    ctl.print(&reply, |reply| {
        if let Reply::Applied {
            created,
            updated,
            unchanged,
        } = reply
        {
            println!("created:   {}", list(created));
            println!("updated:   {}", list(updated));
            println!("unchanged: {}", list(unchanged));
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
