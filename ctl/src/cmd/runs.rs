//! `jobcastctl runs`: runs newest first, filtered; where the broker stopped looking, the
//! flag that goes on from there.

use crate::ctl::{expect_reply, Ctl};
use crate::show::print_runs;
use anyhow::Result;
use jobcast_protocol::{AdminRequest, Reply, RunFilter};
use std::process::ExitCode;

pub(crate) async fn runs(ctl: &Ctl, filter: RunFilter) -> Result<ExitCode> {
    let limit = filter.limit;
    let reply = ctl.call(AdminRequest::ListRuns(filter)).await?;
    let (runs, resume_before) = expect_reply!(reply, Reply::Runs {
        runs,
        resume_before,
        ..
    } => (runs, resume_before));
    ctl.print(&runs, |runs| print_runs(runs))?;
    if let Some(resume) = resume_before {
        eprintln!(
            "jobcastctl: the broker stopped looking before finding {limit} runs; older ones: add --before {resume}"
        );
    }
    Ok(ExitCode::SUCCESS)
}
