//! `jobcastctl`: the operator's command line for a jobcast broker.

mod table;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use jobcast_client::{Client, ClientConfig};
use jobcast_protocol::{
    jobfile, AdminRequest, EnableTarget, KillOutcome, Reply, RunFilter, RunRecord, RunState, Secret,
};
use serde::Serialize;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, UNIX_EPOCH};
use table::Table;

/// Control a jobcast broker.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// The broker's request endpoint.
    #[arg(
        long,
        global = true,
        env = "JOBCAST_BROKER",
        default_value = "tcp://127.0.0.1:5555"
    )]
    broker: String,
    /// The admin secret (prefer --secret-file or the environment).
    #[arg(
        long,
        global = true,
        env = "JOBCAST_ADMIN_SECRET",
        hide_env_values = true
    )]
    secret: Option<String>,
    /// A file holding the admin secret.
    #[arg(long, global = true, env = "JOBCAST_ADMIN_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// How long to wait for the broker.
    #[arg(long, global = true, default_value = "5s", value_parser = humantime::parse_duration)]
    timeout: Duration,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ping every connected worker, or one.
    Ping {
        worker: Option<String>,
        /// How long workers have to answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        wait: Duration,
    },
    /// Kill runs (or cancel queued ones) by id, unique prefix or unique substring.
    Kill {
        #[arg(required = true)]
        runs: Vec<String>,
    },
    /// Queue a run of a job now.
    Enqueue { job: String },
    /// List runs, newest first.
    Runs {
        #[arg(long)]
        state: Option<RunState>,
        #[arg(long)]
        job: Option<String>,
        #[arg(long)]
        worker: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Run a finished run's job again, as its next attempt.
    Retry { run: String },
    /// List jobs.
    Jobs,
    /// Print a run's output.
    Logs {
        run: String,
        /// Keep printing until the run ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Create or update the jobs of a jobs.toml file.
    Apply { file: PathBuf },
    /// The broker's state: runs by state, workers, refused frames.
    Status,
    /// Ask a worker to finish its runs, take no new ones, and exit.
    Drain { worker: String },
    /// Let a job's ticks start runs again (clears an automatic disable), or a pool's jobs.
    Enable {
        #[command(flatten)]
        target: Target,
    },
    /// Skip a job's ticks (it can still be enqueued by hand), or those of a pool's jobs.
    Disable {
        #[command(flatten)]
        target: Target,
    },
}

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
struct Target {
    /// The job.
    job: Option<String>,
    /// Every job of this pool instead.
    #[arg(long)]
    pool: Option<String>,
}

impl Target {
    fn into_target(self) -> EnableTarget {
        match (self.job, self.pool) {
            (_, Some(pool)) => EnableTarget::Pool(pool),
            (Some(job), None) => EnableTarget::Job(job),
            (None, None) => EnableTarget::Job(String::new()),
        }
    }
}

fn describe_schedule(spec: &jobcast_protocol::JobSpec) -> String {
    let s = &spec.schedule;
    let mut text = if !s.cron.is_empty() {
        format!("cron {}", s.cron.join(" | "))
    } else if let Some(ms) = s.every_ms {
        format!(
            "every {}",
            humantime::format_duration(Duration::from_millis(ms))
        )
    } else if let Some(at) = &s.at {
        format!("at {at}")
    } else {
        "manual".into()
    };
    if let Some(tz) = &s.timezone {
        text.push_str(&format!(" ({tz})"));
    }
    text
}

fn main() -> ExitCode {
    // Behave like other command-line tools when output goes to a closed pipe (`| head`):
    // end quietly instead of failing to print.
    // SAFETY: restoring the default action of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let args = Args::parse();
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
            ExitCode::FAILURE
        }
    }
}

fn admin_secret(args: &Args) -> Result<Secret> {
    let secret = match (&args.secret, &args.secret_file) {
        (Some(secret), _) => secret.clone(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the secret file {}", path.display()))?
            .trim()
            .to_string(),
        (None, None) => bail!("no admin secret: pass --secret-file, or set JOBCAST_ADMIN_SECRET"),
    };
    Ok(Secret::new(secret))
}

struct Ctl {
    client: Client,
    timeout: Duration,
    json: bool,
}

impl Ctl {
    async fn call(&self, request: AdminRequest) -> Result<Reply> {
        let reply = self.client.request(request, self.timeout).await?;
        if let Reply::Error { code, message } = reply {
            bail!("{message} ({code:?})");
        }
        Ok(reply)
    }

    fn print_json<T: Serialize + ?Sized>(&self, value: &T) -> Result<()> {
        println!("{}", serde_json::to_string_pretty(value)?);
        Ok(())
    }
}

async fn run(args: Args) -> Result<ExitCode> {
    // Check what can be checked before reaching for the network.
    let apply_jobs = match &args.command {
        Command::Apply { file } => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            Some(jobfile::parse(&text).with_context(|| format!("in {}", file.display()))?)
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
        Command::Ping { worker, wait } => ping(&ctl, worker, wait).await,
        Command::Kill { runs } => kill(&ctl, runs).await,
        Command::Enqueue { job } => {
            let Reply::Enqueued { run } = ctl.call(AdminRequest::Enqueue { job }).await? else {
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
        } => {
            let Reply::Runs { runs } = ctl
                .call(AdminRequest::ListRuns(RunFilter {
                    state,
                    job,
                    worker,
                    limit,
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
            Ok(ExitCode::SUCCESS)
        }
        Command::Jobs => {
            let Reply::Jobs { jobs } = ctl.call(AdminRequest::ListJobs).await? else {
                bail!("unexpected reply");
            };
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
        Command::Logs { run, follow } => logs(&ctl, run, follow).await,
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
                let list = |names: &[String]| {
                    if names.is_empty() {
                        "-".to_string()
                    } else {
                        names.join(", ")
                    }
                };
                println!("created:   {}", list(created));
                println!("updated:   {}", list(updated));
                println!("unchanged: {}", list(unchanged));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => status(&ctl).await,
        Command::Enable { target } => set_enabled(&ctl, target.into_target(), true).await,
        Command::Disable { target } => set_enabled(&ctl, target.into_target(), false).await,
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

async fn ping(ctl: &Ctl, worker: Option<String>, wait: Duration) -> Result<ExitCode> {
    let reply = ctl
        .client
        .request(
            AdminRequest::Ping {
                worker,
                timeout_ms: wait.as_millis() as u64,
            },
            wait + ctl.timeout,
        )
        .await?;
    let workers = match reply {
        Reply::PingResult { workers } => workers,
        Reply::Error { message, .. } => bail!("{message}"),
        _ => bail!("unexpected reply"),
    };
    let silent = workers.iter().filter(|w| w.rtt_us.is_none()).count();
    if ctl.json {
        ctl.print_json(&workers)?;
    } else if workers.is_empty() {
        println!("no worker is connected");
    } else {
        let mut table = Table::new([
            "WORKER", "VERSION", "HOST", "PID", "SLOTS", "RUNNING", "RTT",
        ]);
        for w in &workers {
            match (&w.info, w.rtt_us) {
                (Some(info), Some(rtt)) => table.row([
                    w.worker.clone(),
                    info.version.clone(),
                    info.hostname.clone(),
                    info.pid.to_string(),
                    info.concurrency.to_string(),
                    info.running.len().to_string(),
                    format!("{:.2} ms", rtt as f64 / 1000.0),
                ]),
                _ => table.row([
                    w.worker.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    format!("no answer in {}", humantime::format_duration(wait)),
                ]),
            }
        }
        table.print();
    }
    Ok(if silent > 0 || workers.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn kill(ctl: &Ctl, runs: Vec<String>) -> Result<ExitCode> {
    let Reply::KillResult { outcomes } = ctl.call(AdminRequest::Kill { selectors: runs }).await?
    else {
        bail!("unexpected reply");
    };
    let failed = outcomes.iter().any(KillOutcome::is_error);
    if ctl.json {
        ctl.print_json(&outcomes)?;
    } else {
        for outcome in &outcomes {
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
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn logs(ctl: &Ctl, run: String, follow: bool) -> Result<ExitCode> {
    let Reply::Log {
        run: record,
        data,
        next_offset,
    } = ctl.call(AdminRequest::GetLog { run, offset: None }).await?
    else {
        bail!("unexpected reply");
    };
    let mut out = std::io::stdout().lock();
    out.write_all(&data)?;
    out.flush()?;
    if !follow {
        return Ok(ExitCode::SUCCESS);
    }
    let id = record.id.clone();
    let mut offset = next_offset;
    let mut ended = record.state.is_terminal();
    loop {
        let Reply::Log {
            run: record,
            data,
            next_offset,
        } = ctl
            .call(AdminRequest::GetLog {
                run: id.clone(),
                offset: Some(offset),
            })
            .await?
        else {
            bail!("unexpected reply");
        };
        out.write_all(&data)?;
        out.flush()?;
        offset = next_offset;
        // One more read after the run ends picks up its last output.
        if ended && data.is_empty() {
            return Ok(ExitCode::SUCCESS);
        }
        ended = record.state.is_terminal();
        if data.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn status(ctl: &Ctl) -> Result<ExitCode> {
    let reply = ctl.call(AdminRequest::Status).await?;
    let Reply::Status(report) = &reply else {
        bail!("unexpected reply");
    };
    if ctl.json {
        ctl.print_json(report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "broker {} up {}, {} jobs, {} runs stored",
        report.version,
        humantime::format_duration(Duration::from_secs(report.uptime_ms / 1000)),
        report.jobs,
        report.total_runs
    );
    let active: Vec<String> = report
        .active
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    println!(
        "active runs: {}",
        if active.is_empty() {
            "none".into()
        } else {
            active.join(", ")
        }
    );
    if !report.disabled_pools.is_empty() {
        println!("disabled pools: {}", report.disabled_pools.join(", "));
    }
    for alert in &report.alerts {
        println!("ALERT {}: {}", alert.kind.as_str(), alert.message);
    }
    if !report.rejected.is_empty() {
        let rejected: Vec<String> = report
            .rejected
            .iter()
            .map(|(r, n)| format!("{r} {n}"))
            .collect();
        println!("refused: {}", rejected.join(", "));
    }
    if let Some(open) = report.connections.get("open") {
        println!(
            "connections: {open} open, {} opened and {} closed since start",
            report.connections.get("opened").unwrap_or(&0),
            report.connections.get("closed").unwrap_or(&0)
        );
    }
    println!();
    let mut table = Table::new([
        "WORKER",
        "STATE",
        "VERSION",
        "HOST",
        "SLOTS",
        "RUNNING",
        "LAST SEEN",
    ]);
    for w in &report.workers {
        table.row([
            w.id.clone(),
            match (w.online, w.draining) {
                (true, true) => "draining",
                (true, false) => "online",
                (false, _) => "offline",
            }
            .into(),
            w.version.clone(),
            w.hostname.clone(),
            w.concurrency.to_string(),
            w.running.len().to_string(),
            format_time(w.last_seen_ms),
        ]);
    }
    table.print();
    Ok(ExitCode::SUCCESS)
}

fn format_time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn print_runs(runs: &[RunRecord]) {
    let mut table = Table::new([
        "RUN", "JOB", "STATE", "WORKER", "CREATED", "DURATION", "RESULT",
    ]);
    for run in runs {
        table.row([
            run.id.clone(),
            run.job.clone(),
            run.state.to_string(),
            run.worker.clone().unwrap_or_else(|| "-".into()),
            format_time(run.created_at_ms),
            run.duration_ms()
                .map(|ms| humantime::format_duration(Duration::from_millis(ms)).to_string())
                .unwrap_or_else(|| "-".into()),
            run.outcome
                .as_ref()
                .map(|o| o.describe())
                .or_else(|| run.history.last().map(|t| t.cause.clone()))
                .unwrap_or_default(),
        ]);
    }
    table.print();
}
