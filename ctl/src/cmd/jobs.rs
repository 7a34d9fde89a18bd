//! `jobcastctl jobs`: every job with its schedule, next tick and state.

use crate::ctl::{expect_reply, Ctl};
use crate::show::{describe_schedule, format_time};
use crate::table::Table;
use anyhow::Result;
use jobcast_protocol::{AdminRequest, JobView, Reply};
use std::process::ExitCode;

pub(crate) async fn jobs(ctl: &Ctl, tag: Option<String>) -> Result<ExitCode> {
    let reply = ctl.call(AdminRequest::ListJobs).await?;
    let mut jobs = expect_reply!(reply, Reply::Jobs { jobs } => jobs);
    if let Some(tag) = &tag {
        jobs.retain(|job| job.spec.tags.contains(tag));
    }
    ctl.print(&jobs, |jobs| print_jobs(jobs))?;
    Ok(ExitCode::SUCCESS)
}

fn print_jobs(jobs: &[JobView]) {
    let mut table = Table::new(["JOB", "POOL", "SCHEDULE", "NEXT", "STATE", "LAST STARTED"]);
    for job in jobs {
        let spec = &job.spec;
        table.row([
            spec.name.clone(),
            spec.pool.clone(),
            describe_schedule(spec),
            job.next_fire_ms
                .map(format_time)
                .unwrap_or_else(|| "-".into()),
            if job.state.auto_disabled.is_some() {
                "auto-disabled".into()
            } else if !spec.enabled {
                "disabled".into()
            } else if !job.active {
                "pool disabled".into()
            } else {
                "enabled".into()
            },
            job.state
                .last_started_ms
                .map(format_time)
                .unwrap_or_else(|| "never".into()),
        ]);
    }
    table.print();
}
