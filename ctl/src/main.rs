//! `jobcastctl`: the operator's command line for a jobcast broker.

mod args;
mod cmd;
mod ctl;
mod failure;
mod show;
mod table;

use anyhow::Result;
use args::{Args, Command};
use ctl::Ctl;
use jobcast_protocol::RunFilter;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Behave like other command-line tools when output goes to a closed pipe (`| head`):
    // end quietly instead of failing to print.
    // SAFETY: restoring the default action of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = args::parse();
    let endpoint = args.broker.clone();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jobcastctl: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("jobcastctl: {e:#}");
            if let Some(hint) = failure::hint(&e, &endpoint) {
                eprintln!("jobcastctl: {hint}");
            }
            ExitCode::from(failure::exit_code(&e))
        }
    }
}

async fn run(args: Args) -> Result<ExitCode> {
    // Commands that need no broker, and what can be checked before reaching for it.
    let jobs_to_apply = match &args.command {
        Command::Completions { shell } => return cmd::local::completions(*shell),
        Command::GenerateMan { dir } => return cmd::local::generate_man(dir),
        Command::Apply { file } => Some(cmd::apply::read(file)?),
        _ => None,
    };
    let ctl = Ctl::connect(&args).await?;
    match args.command {
        Command::Ping { worker, wait } => cmd::ping::ping(&ctl, worker, wait).await,
        Command::Kill { runs } => cmd::kill::kill(&ctl, runs).await,
        Command::Enqueue {
            job,
            key,
            params,
            priority,
        } => cmd::enqueue::enqueue(&ctl, job, key, params, priority).await,
        Command::Retry { run } => cmd::retry::retry(&ctl, run).await,
        Command::Runs {
            state,
            job,
            worker,
            limit,
            search,
            output,
            before,
        } => {
            let filter = RunFilter {
                state,
                job,
                worker,
                limit,
                text: search,
                output,
                before_seq: before,
                ..Default::default()
            };
            cmd::runs::runs(&ctl, filter).await
        }
        Command::Jobs { tag } => cmd::jobs::jobs(&ctl, tag).await,
        Command::Logs { run, follow } => cmd::logs::logs(&ctl, run, follow).await,
        Command::Wait { run } => cmd::logs::wait(&ctl, run).await,
        Command::Apply { .. } => cmd::apply::apply(&ctl, jobs_to_apply.unwrap_or_default()).await,
        Command::Status => cmd::status::status(&ctl).await,
        Command::Enable { target } => {
            cmd::enable::set_enabled(&ctl, target.into_target(), true).await
        }
        Command::Disable { target } => {
            cmd::enable::set_enabled(&ctl, target.into_target(), false).await
        }
        Command::Prune { dry_run } => cmd::prune::prune(&ctl, dry_run).await,
        Command::Backup { dir, wait } => cmd::backup::backup(&ctl, dir, wait).await,
        Command::Reload => cmd::reload::reload(&ctl).await,
        Command::Audit { before, limit } => cmd::audit::audit(&ctl, before, limit).await,
        Command::Alerts { before, limit } => cmd::alerts::alerts(&ctl, before, limit).await,
        Command::Ack { alert } => cmd::alerts::ack(&ctl, alert).await,
        Command::Drain { worker } => cmd::drain::drain(&ctl, worker).await,
        // Answered above, before any connection.
        Command::Completions { .. } | Command::GenerateMan { .. } => Ok(ExitCode::SUCCESS),
    }
}
