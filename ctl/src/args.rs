//! The command line: every command and option.

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use jobcast_protocol::{EnableTarget, RunState};
use std::path::PathBuf;
use std::time::Duration;

/// The version `--version` prints: the release and the commit it was built from
/// (`build/version.rs`).
const VERSION: &str = env!("JOBCAST_VERSION_LONG");

/// Control a jobcast broker.
#[derive(Debug, Parser)]
#[command(version = VERSION, about, after_long_help = EXIT_CODES)]
pub(crate) struct Args {
    /// The broker's request endpoint. Several brokers sharing one database: all of them,
    /// comma-separated (the first that answers is asked; a standby's answer names the
    /// leader, which is asked instead).
    #[arg(
        long,
        global = true,
        env = "JOBCAST_BROKER",
        default_value = "tcp://127.0.0.1:5555"
    )]
    pub(crate) broker: String,
    /// The admin secret (prefer --secret-file or the environment).
    #[arg(
        long,
        global = true,
        env = "JOBCAST_ADMIN_SECRET",
        hide_env_values = true
    )]
    pub(crate) secret: Option<String>,
    /// A file holding the admin secret.
    #[arg(long, global = true, env = "JOBCAST_ADMIN_SECRET_FILE")]
    pub(crate) secret_file: Option<PathBuf>,
    /// How long to wait for the broker's answer (`5s`, `500ms`; a bare number is seconds).
    #[arg(long, global = true, default_value = "5s", value_parser = duration)]
    pub(crate) timeout: Duration,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The end of `--help` and of the man page.
const EXIT_CODES: &str = "\
Exit codes:
  0      done (wait, logs -f: the run succeeded)
  1      the broker refused the request (unknown job, ambiguous run, …), or another error
  2      the command line or a local file is wrong (a flag, the jobs file, no secret)
  3      no broker answered: nothing listens at --broker (said at once), or not within --timeout
  4      the broker refused the admin key (wrong secret)
  5      the broker cannot take work now (its disk is low, its store is reopening): try later
  10-15  wait, logs -f: the run failed (10), was killed (11), timed out (12), was lost (13),
         was cancelled (14), was missed (15)

Errors go to stderr as `jobcastctl: …`. With --json, results go to stdout as JSON (logs:
one object per line); random 64-bit ids are strings.";

/// The command line, where a secret given as a flag beats one from the environment
/// (clap would otherwise take `JOBCAST_ADMIN_SECRET` over an explicit `--secret-file`).
pub(crate) fn parse() -> Args {
    let matches = Args::command().get_matches();
    let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    if given("secret_file") && !given("secret") {
        args.secret = None;
    }
    if given("secret") && !given("secret_file") {
        args.secret_file = None;
    }
    args
}

/// A duration as humantime writes it (`30s`, `1m 30s`), or a bare number of seconds.
fn duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.trim().parse::<f64>() {
        return if seconds.is_finite() && seconds >= 0.0 {
            Ok(Duration::from_secs_f64(seconds))
        } else {
            Err(format!("{text:?} is not a duration"))
        };
    }
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration: {e}"))
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Ping every connected worker, or one.
    Ping {
        worker: Option<String>,
        /// How long workers have to answer (a bare number is seconds).
        #[arg(long, default_value = "2s", value_parser = duration)]
        wait: Duration,
    },
    /// Kill runs (or cancel queued ones) by id, unique prefix or unique substring.
    Kill {
        #[arg(required = true)]
        runs: Vec<String>,
    },
    /// Queue a run of a job now.
    ///
    /// If the broker's answer does not come (a lost connection, a broker restart), the
    /// request is sent again with the same idempotency key, so it creates one run however
    /// often it is sent.
    Enqueue {
        job: String,
        /// The idempotency key (default: a random one for this call). A script that may
        /// run `enqueue` twice for the same reason passes its own.
        #[arg(long)]
        key: Option<String>,
        /// A parameter value, NAME=VALUE (repeat for several); the broker checks them
        /// against the job's declaration.
        #[arg(long = "param", short = 'p', value_name = "NAME=VALUE", value_parser = parse_param)]
        params: Vec<(String, String)>,
        /// This run's priority instead of the job's: -100 to 100, or high (10), normal
        /// (0), low (-10).
        #[arg(long, value_parser = jobcast_protocol::job::parse_priority, allow_hyphen_values = true)]
        priority: Option<i32>,
    },
    /// List runs, newest first.
    Runs {
        /// Only runs in this state: queued, assigned, running, succeeded, failed, killed,
        /// timed_out, lost, cancelled or missed.
        #[arg(long)]
        state: Option<RunState>,
        /// Only runs of this job.
        #[arg(long)]
        job: Option<String>,
        /// Only runs given to this worker.
        #[arg(long)]
        worker: Option<String>,
        /// How many runs, newest first (at most 10000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// Only runs whose id, job, worker, state or result contains this text (any case).
        #[arg(long)]
        search: Option<String>,
        /// Only runs whose stored output contains this text (any case); the broker reads
        /// at most 2,000 runs' output per listing and says where to go on.
        #[arg(long)]
        output: Option<String>,
        /// Only runs older than this sequence number (paging: the `seq` of the last run
        /// listed, or the number a listing that stopped early names).
        #[arg(long)]
        before: Option<u64>,
    },
    /// Run a finished run's job again, as its next attempt.
    Retry { run: String },
    /// List jobs.
    Jobs {
        /// Only jobs with this tag.
        #[arg(long)]
        tag: Option<String>,
    },
    /// Print a run's output (with --json: a JSON line per piece).
    Logs {
        /// The run: its id, a unique prefix or a unique substring.
        run: String,
        /// Keep printing until the run ends; then exit with how it ended (0 succeeded,
        /// 10 failed, 11 killed, 12 timed out, 13 lost, 14 cancelled, 15 missed).
        #[arg(long, short)]
        follow: bool,
    },
    /// Wait until a run ends, and exit with how it ended (as `logs --follow` does).
    Wait {
        /// The run: its id, a unique prefix or a unique substring.
        run: String,
    },
    /// Create or update the jobs of a jobs.toml file.
    Apply { file: PathBuf },
    /// The broker's state: runs by state, workers, refused frames.
    Status,
    /// Ask a worker to finish its runs, take no new ones, and exit.
    Drain { worker: String },
    /// Make the broker take new worker keys, API tokens and webhooks from its settings.
    ///
    /// The broker reads its settings file again (as on SIGHUP) and prints what changed,
    /// and which changed settings wait for a restart. A file the broker cannot read or
    /// accept changes nothing (exit 1).
    Reload,
    /// The alerts that stand now, and the history of alerts (raised, cleared, seen).
    Alerts {
        /// History records older than this one (its number, the `#` column).
        #[arg(long)]
        before: Option<u64>,
        /// At most this many history records (up to 1000).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// Mark a standing alert as seen (by its id, e.g. `no_worker:gpu`): it stands until
    /// its condition ends, but dashboards stop raising it.
    Ack { alert: String },
    /// What operators changed, by whom and when, newest first.
    ///
    /// Kills, retries, enabling and disabling, drains, jobs applied, prunes and reloads,
    /// from `jobcastctl` and the HTTP API alike; the broker keeps the newest 10,000.
    Audit {
        /// Entries older than this one (its number, the `#` column): the next page.
        #[arg(long)]
        before: Option<u64>,
        /// At most this many (up to 1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// Delete what retention deletes now, among the oldest runs.
    ///
    /// Retention is `[retention]` in the broker config and `retention` per job; the
    /// broker also deletes by itself, bit by bit.
    Prune {
        /// Only count what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write a consistent copy of the broker's store into a new directory, while it runs.
    ///
    /// The directory is on the broker's host: an absolute path that does not exist yet, in
    /// a directory that does and that the broker's user may write. The copy is a store of
    /// its own (every run, log, job, setting), opened and counted by the broker before it
    /// answers; `jobcast-broker restore --from DIR` copies it back. An embedded store
    /// only: a PostgreSQL store is backed up with PostgreSQL's tools.
    Backup {
        /// The new directory, on the broker's host.
        dir: String,
        /// How long to wait for the copy to be written and counted.
        #[arg(long, default_value = "30m", value_parser = duration)]
        wait: Duration,
    },
    /// Print a completion script for a shell.
    ///
    /// E.g. `jobcastctl completions bash > /etc/bash_completion.d/jobcastctl`.
    Completions { shell: clap_complete::Shell },
    /// Write the man pages of jobcastctl and each command into a directory.
    #[command(hide = true)]
    GenerateMan { dir: PathBuf },
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
pub(crate) struct Target {
    /// The job.
    pub(crate) job: Option<String>,
    /// Every job of this pool instead.
    #[arg(long)]
    pub(crate) pool: Option<String>,
}

impl Target {
    pub(crate) fn into_target(self) -> EnableTarget {
        match (self.job, self.pool) {
            (_, Some(pool)) => EnableTarget::Pool(pool),
            (Some(job), None) => EnableTarget::Job(job),
            (None, None) => EnableTarget::Job(String::new()),
        }
    }
}

/// `NAME=VALUE`, split at the first `=`.
fn parse_param(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not NAME=VALUE")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units_or_bare_seconds() {
        assert_eq!(duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(duration("-1").is_err());
        assert!(duration("soon").is_err());
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Args::command().debug_assert();
    }
}
