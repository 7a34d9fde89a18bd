//! `jobcastctl`: the operator's command line for a jobcast broker.

mod args;
mod failure;
mod kill;
mod logs;
mod ping;
mod show;
mod status;
mod table;

use anyhow::{bail, Result};
use args::{Args, Command};
use failure::Failure;
use jobcast_client::{Client, ClientConfig, ClientError};
use jobcast_protocol::envelope::random_nonce;
use jobcast_protocol::{
    jobfile, AdminRequest, EnableTarget, ReloadReport, Reply, RunFilter, Secret,
};
use serde::Serialize;
use show::{describe_schedule, format_time, print_runs};
use std::process::ExitCode;
use std::time::Duration;
use table::Table;

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

fn admin_secret(args: &Args) -> Result<Secret> {
    let secret = match (&args.secret, &args.secret_file) {
        (Some(secret), _) => secret.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| {
                Failure::Usage(format!(
                    "cannot read the secret file {}: {e}",
                    path.display()
                ))
            })?
            .trim()
            .to_string(),
        (None, None) => {
            return Err(Failure::Usage(
                "no admin secret: pass --secret-file, or set JOBCAST_ADMIN_SECRET_FILE or JOBCAST_ADMIN_SECRET".into(),
            )
            .into())
        }
    };
    Ok(Secret::new(secret))
}

pub(crate) struct Ctl {
    client: Client,
    timeout: Duration,
    json: bool,
}

impl Ctl {
    pub(crate) async fn call(&self, request: AdminRequest) -> Result<Reply> {
        let reply = self.client.request(request, self.timeout).await?;
        if let Reply::Error { code, message } = reply {
            return Err(Failure::Broker { code, message }.into());
        }
        Ok(reply)
    }

    /// Like [`Self::call`] for a request that is safe to repeat (it carries an idempotency
    /// key): sent again, up to `ATTEMPTS` times in all, when no answer came.
    pub(crate) async fn call_again_if_unanswered(&self, request: AdminRequest) -> Result<Reply> {
        const ATTEMPTS: u32 = 3;
        let mut attempt = 1;
        loop {
            match self.client.request(request.clone(), self.timeout).await {
                Ok(Reply::Error { code, message }) => {
                    return Err(Failure::Broker { code, message }.into())
                }
                Ok(reply) => return Ok(reply),
                Err(e @ (ClientError::Disconnected | ClientError::Timeout(_)))
                    if attempt < ATTEMPTS =>
                {
                    eprintln!("jobcastctl: {e}; asking again (attempt {})", attempt + 1);
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn print_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        // Random 64-bit ids come out as strings (`jobcast_protocol::id64`).
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

async fn run(args: Args) -> Result<ExitCode> {
    // Commands that need no broker.
    match args.command {
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Args::command(),
                "jobcastctl",
                &mut std::io::stdout(),
            );
            return Ok(ExitCode::SUCCESS);
        }
        Command::GenerateMan { dir } => {
            use clap::CommandFactory;
            // The release alone: the pages are committed, and must not change with each
            // commit.
            let command = Args::command().version(env!("CARGO_PKG_VERSION"));
            clap_mangen::generate_to(command, &dir).map_err(|e| {
                Failure::Usage(format!(
                    "cannot write man pages into {}: {e}",
                    dir.display()
                ))
            })?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    // Check what can be checked before reaching for the network.
    let apply_jobs = match &args.command {
        Command::Apply { file } => {
            let text = std::fs::read_to_string(file)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?;
            let jobs = jobfile::parse(&text)
                .map_err(|e| Failure::Usage(format!("in {}: {e:#}", file.display())))?;
            Some(jobs)
        }
        _ => None,
    };
    let secret = admin_secret(&args)?;
    let client = Client::connect(ClientConfig {
        endpoint: args.broker.clone(),
        name: "admin".into(),
        secret,
        connect_timeout: args.timeout,
        max_clock_skew: Duration::from_secs(30),
    })
    .await?;
    let ctl = Ctl {
        client,
        timeout: args.timeout,
        json: args.json,
    };
    match args.command {
        Command::Ping { worker, wait } => ping::ping(&ctl, worker, wait).await,
        Command::Kill { runs } => kill::kill(&ctl, runs).await,
        Command::Enqueue {
            job,
            key,
            params,
            priority,
        } => {
            let key = key.unwrap_or_else(|| format!("{:016x}", random_nonce()));
            let mut values = std::collections::BTreeMap::new();
            for (name, value) in params {
                if values.insert(name.clone(), value).is_some() {
                    bail!("parameter {name:?} is given twice");
                }
            }
            let request = AdminRequest::Enqueue {
                job,
                key: Some(key),
                params: values,
                priority,
            };
            let Reply::Enqueued { run } = ctl.call_again_if_unanswered(request).await? else {
                bail!("unexpected reply");
            };
            if ctl.json {
                ctl.print_json(&run)?;
            } else {
                println!("queued run {} of job {}", run.id, run.job);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Retry { run } => {
            let Reply::Enqueued { run } = ctl.call(AdminRequest::Retry { run }).await? else {
                bail!("unexpected reply");
            };
            if ctl.json {
                ctl.print_json(&run)?;
            } else {
                println!(
                    "queued run {} of job {} (attempt {})",
                    run.id, run.job, run.attempt
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Runs {
            state,
            job,
            worker,
            limit,
            search,
            before,
        } => {
            let Reply::Runs {
                runs,
                resume_before,
            } = ctl
                .call(AdminRequest::ListRuns(RunFilter {
                    state,
                    job,
                    worker,
                    limit,
                    text: search,
                    before_seq: before,
                    ..Default::default()
                }))
                .await?
            else {
                bail!("unexpected reply");
            };
            if ctl.json {
                ctl.print_json(&runs)?;
            } else {
                print_runs(&runs);
            }
            if let Some(resume) = resume_before {
                eprintln!(
                    "jobcastctl: the broker stopped looking before finding {limit} runs; older ones: add --before {resume}"
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs { tag } => {
            let Reply::Jobs { mut jobs } = ctl.call(AdminRequest::ListJobs).await? else {
                bail!("unexpected reply");
            };
            if let Some(tag) = &tag {
                jobs.retain(|job| job.spec.tags.contains(tag));
            }
            if ctl.json {
                ctl.print_json(&jobs)?;
            } else {
                let mut table =
                    Table::new(["JOB", "POOL", "SCHEDULE", "NEXT", "STATE", "LAST STARTED"]);
                for job in &jobs {
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
            Ok(ExitCode::SUCCESS)
        }
        Command::Logs { run, follow } => logs::logs(&ctl, run, follow).await,
        Command::Wait { run } => logs::wait(&ctl, run).await,
        // Answered above, before any connection.
        Command::Completions { .. } | Command::GenerateMan { .. } => Ok(ExitCode::SUCCESS),
        Command::Apply { .. } => {
            let jobs = apply_jobs.unwrap_or_default();
            let reply = ctl.call(AdminRequest::ApplyJobs { jobs }).await?;
            let Reply::Applied {
                created,
                updated,
                unchanged,
            } = &reply
            else {
                bail!("unexpected reply");
            };
            if ctl.json {
                ctl.print_json(&reply)?;
            } else {
                println!("created:   {}", list(created));
                println!("updated:   {}", list(updated));
                println!("unchanged: {}", list(unchanged));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => status::status(&ctl).await,
        Command::Enable { target } => set_enabled(&ctl, target.into_target(), true).await,
        Command::Disable { target } => set_enabled(&ctl, target.into_target(), false).await,
        Command::Prune { dry_run } => {
            let Reply::Pruned {
                runs,
                scanned,
                complete,
            } = ctl.call(AdminRequest::Prune { dry_run }).await?
            else {
                bail!("unexpected reply");
            };
            if ctl.json {
                ctl.print_json(&serde_json::json!({
                    "runs": runs, "scanned": scanned, "complete": complete, "dry_run": dry_run
                }))?;
            } else {
                let verb = if dry_run { "would delete" } else { "deleted" };
                let among = if complete {
                    format!("all {scanned} stored runs")
                } else {
                    format!("the oldest {scanned} runs (run it again for more)")
                };
                println!("{verb} {runs} finished runs, looking at {among}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload => {
            let Reply::Reloaded(report) = ctl.call(AdminRequest::Reload).await? else {
                bail!("unexpected reply");
            };
            if ctl.json {
                ctl.print_json(&report)?;
            } else {
                print_reload(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Drain { worker } => {
            ctl.call(AdminRequest::Drain {
                worker: worker.clone(),
            })
            .await?;
            if ctl.json {
                ctl.print_json(&serde_json::json!({ "draining": worker }))?;
            } else {
                println!("worker {worker} is draining: it finishes its runs, takes no new ones, and exits");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Names joined with commas, or `-` for none.
fn list(names: &[String]) -> String {
    if names.is_empty() {
        "-".to_string()
    } else {
        names.join(", ")
    }
}

fn print_reload(report: &ReloadReport) {
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

async fn set_enabled(ctl: &Ctl, target: EnableTarget, enabled: bool) -> Result<ExitCode> {
    ctl.call(AdminRequest::SetEnabled {
        target: target.clone(),
        enabled,
    })
    .await?;
    let what = match &target {
        EnableTarget::Job(job) => format!("job {job}"),
        EnableTarget::Pool(pool) => format!("pool {pool}"),
    };
    let word = if enabled { "enabled" } else { "disabled" };
    if ctl.json {
        ctl.print_json(&serde_json::json!({ "target": target, "enabled": enabled }))?;
    } else {
        println!("{what} {word}");
    }
    Ok(ExitCode::SUCCESS)
}
