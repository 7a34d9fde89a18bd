//! `jobcastctl kill`: runs ended by id, unique prefix or substring; idempotent.

use crate::ctl::{expect_reply, Ctl};
use anyhow::Result;
use jobcast_protocol::{AdminRequest, KillOutcome, Reply};
use std::process::ExitCode;

pub(crate) async fn kill(ctl: &Ctl, runs: Vec<String>) -> Result<ExitCode> {
    let reply = ctl.call(AdminRequest::Kill { selectors: runs }).await?;
    let outcomes = expect_reply!(reply, Reply::KillResult { outcomes } => outcomes);
    let failed = outcomes.iter().any(KillOutcome::is_error);
    ctl.print(&outcomes, |outcomes| {
        for outcome in outcomes {
            match outcome {
                KillOutcome::Killing { run_id, worker } => {
                    println!("{run_id}: killing on {worker}")
                }
                KillOutcome::Cancelled { run_id } => {
                    println!("{run_id}: cancelled before it started")
                }
                KillOutcome::AlreadyFinished { run_id, state } => {
                    println!("{run_id}: already finished ({state}); nothing to do")
                }
                KillOutcome::Ambiguous {
                    selector,
                    candidates,
                } => {
                    eprintln!("{selector:?} matches several runs; say which:");
                    for c in candidates {
                        eprintln!("  {c}");
                    }
                }
                KillOutcome::NotFound { selector } => eprintln!("{selector:?}: no such run"),
            }
        }
    })?;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
