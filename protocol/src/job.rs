//! Jobs: what a job is (`JobSpec`, as applied from `jobs.toml`), how it is scheduled and
//! what its policy is, and what the broker keeps about it between runs.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A job definition, as applied from `jobs.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    pub name: String,
    pub pool: String,
    pub exec: Exec,
    pub env: BTreeMap<String, String>,
    /// Variables the worker fills from its own environment or files (secrets): only
    /// their names reach the broker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub worker_env: Vec<String>,
    pub workdir: Option<String>,
    pub timeout_ms: Option<u64>,
    pub enabled: bool,
    /// When it runs by itself; all empty means only when enqueued.
    #[serde(default)]
    pub schedule: ScheduleSpec,
    #[serde(default)]
    pub policy: JobPolicy,
    /// What a run may be given (`-p name=value`), by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, crate::params::ParamSpec>,
    /// Its runs' place in their pool's queue: higher first ([`MIN_PRIORITY`] to
    /// [`MAX_PRIORITY`]; an enqueue may set its own).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// Free-form labels to find it by (`jobcastctl jobs --tag`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The team it belongs to: API tokens limited to teams see and act on their teams'
    /// jobs and runs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    /// The most memory its runs' processes may hold together (bytes; `memory.max` of the
    /// run's cgroup). A worker that cannot enforce it does not start the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    /// The CPU its runs may use, in thousandths of a CPU (`cpus = 1.5` → 1,500; `cpu.max`
    /// of the run's cgroup). A worker that cannot enforce it does not start the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus_milli: Option<u32>,
}

pub const MIN_PRIORITY: i32 = -100;
pub const MAX_PRIORITY: i32 = 100;

fn is_zero(value: &i32) -> bool {
    *value == 0
}

/// A priority as written in a jobs file or on a command line: a number from
/// [`MIN_PRIORITY`] to [`MAX_PRIORITY`], or `high` (10), `normal` (0), `low` (-10).
pub fn parse_priority(text: &str) -> Result<i32, PriorityError> {
    let value = match text {
        "high" => 10,
        "normal" => 0,
        "low" => -10,
        number => number
            .parse::<i32>()
            .map_err(|_| PriorityError::NotAPriority(text.to_string()))?,
    };
    check_priority(value)?;
    Ok(value)
}

pub fn check_priority(value: i32) -> Result<(), PriorityError> {
    if (MIN_PRIORITY..=MAX_PRIORITY).contains(&value) {
        Ok(())
    } else {
        Err(PriorityError::OutOfRange(value))
    }
}

/// A priority that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PriorityError {
    #[error("priority {0:?} is not a number, high, normal or low")]
    NotAPriority(String),
    #[error("priority {0} is outside {MIN_PRIORITY} to {MAX_PRIORITY}")]
    OutOfRange(i32),
}

impl JobSpec {
    /// An enabled job with no schedule, env, working directory or timeout, and the
    /// default policy: it runs when enqueued.
    pub fn new(name: impl Into<String>, pool: impl Into<String>, exec: Exec) -> JobSpec {
        JobSpec {
            name: name.into(),
            pool: pool.into(),
            exec,
            env: BTreeMap::new(),
            worker_env: Vec::new(),
            workdir: None,
            timeout_ms: None,
            enabled: true,
            schedule: ScheduleSpec::default(),
            policy: JobPolicy::default(),
            params: BTreeMap::new(),
            priority: 0,
            tags: Vec::new(),
            team: None,
            memory_max: None,
            cpus_milli: None,
        }
    }
}

/// When a job runs. At most one of `cron`, `every_ms` and `at` is set; none means the job
/// runs only when enqueued.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ScheduleSpec {
    /// Cron expressions (5 fields, 6 with seconds, or macros such as `@hourly`).
    pub cron: Vec<String>,
    /// IANA time zone for `cron` and `exclude`; UTC when absent.
    pub timezone: Option<String>,
    /// A fixed interval, ticks at whole multiples of it since the Unix epoch.
    pub every_ms: Option<u64>,
    /// A one-off, RFC 3339.
    pub at: Option<String>,
    /// Local time-of-day windows (`"22:00-06:00"`) in which the job must not start.
    pub exclude: Vec<String>,
}

impl ScheduleSpec {
    pub fn is_manual(&self) -> bool {
        self.cron.is_empty() && self.every_ms.is_none() && self.at.is_none()
    }
}

/// What to do when a tick comes while the previous run of the job is still active.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Do not start; record the tick as skipped.
    #[default]
    Skip,
    /// Start once the previous run has ended.
    Queue,
    /// Start at once, alongside.
    Allow,
    /// Kill the previous run and start.
    Replace,
}

/// What a worker does with a run of the job when it loses the broker for its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBrokerLoss {
    /// Stop the run (its whole process tree) before the broker may give it up: a retry
    /// never overlaps it.
    #[default]
    Stop,
    /// Let it go on. The broker still gives the run up after the lease (a retry may then
    /// run beside it); its result is kept on the run when it comes.
    Keep,
}

impl OnBrokerLoss {
    fn is_stop(&self) -> bool {
        *self == OnBrokerLoss::Stop
    }
}

/// What to do with ticks missed while the broker was down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    #[default]
    Skip,
    /// Run one catch-up for all of them.
    Once,
    /// Run every missed tick, up to `max_catchup`.
    All,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildSpec {
    pub job: String,
    /// Also run the child when the parent failed (timed out, was lost).
    #[serde(default)]
    pub on_error: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JobPolicy {
    pub overlap: Overlap,
    pub misfire: Misfire,
    pub max_catchup: u32,
    /// A scheduled run that has not started this long after its time is recorded as
    /// missed instead of starting late.
    pub starting_deadline_ms: Option<u64>,
    pub retries: u32,
    pub retry_backoff_ms: u64,
    pub retry_exponential: bool,
    /// Jobs enqueued when a run of this job ends.
    pub children: Vec<ChildSpec>,
    /// One run per live worker of the pool at each tick.
    pub run_on_all_workers: bool,
    /// Disable the job after this many failures in a row.
    pub disable_after_failures: Option<u32>,
    /// A run not started this long after its time makes the job late.
    pub late_after_ms: u64,
    /// Keep this job's finished runs (and their logs) this long, instead of the broker's
    /// `retention.max_age`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<u64>,
    /// The most runs of the job assigned or running at once, across all workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    #[serde(default, skip_serializing_if = "OnBrokerLoss::is_stop")]
    pub on_broker_loss: OnBrokerLoss,
}

impl Default for JobPolicy {
    fn default() -> Self {
        JobPolicy {
            overlap: Overlap::Skip,
            misfire: Misfire::Skip,
            max_catchup: 100,
            starting_deadline_ms: None,
            retries: 0,
            retry_backoff_ms: 10_000,
            retry_exponential: false,
            children: Vec::new(),
            run_on_all_workers: false,
            disable_after_failures: None,
            late_after_ms: 60_000,
            retention_ms: None,
            max_concurrent: None,
            on_broker_loss: OnBrokerLoss::Stop,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exec {
    /// A script body starting with `#!`, run by its interpreter.
    Script(String),
    /// A program and its arguments, run without a shell.
    Command(Vec<String>),
}

/// What the broker tracks about a job between runs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct JobState {
    pub created_at_ms: u64,
    /// The latest tick that has been dealt with (run, skipped or missed).
    pub last_tick_ms: u64,
    pub last_started_ms: Option<u64>,
    pub consecutive_failures: u32,
    /// Set when the job disabled itself after too many failures.
    pub auto_disabled: Option<String>,
    pub skipped_ticks: u64,
    /// The most recent skipped ticks: (tick time, reason), newest last.
    pub recent_skips: Vec<(u64, String)>,
    /// How many times the wall clock stepped back and this job went on at the new time:
    /// part of its ticks' run ids, so that a tick at a time it already had once makes a
    /// run of its own.
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub clock_era: u32,
    /// How its latest runs ended, oldest first (at most [`RECENT_RUNS`]): (state, when it
    /// ended, how long it ran, ms), for its last state, success rate and durations
    /// without reading runs. Filled in views; the broker keeps them with its counts over
    /// time, not in the stored job state.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recent_runs: Vec<(crate::RunState, u64, u64)>,
}

/// Runs a job's state remembers the end of.
pub const RECENT_RUNS: usize = 20;

fn is_zero_u32(value: &u32) -> bool {
    *value == 0
}

/// A job as listed: its definition, its state and when it fires next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobView {
    pub spec: JobSpec,
    pub state: JobState,
    pub next_fire_ms: Option<u64>,
    /// Whether its ticks start runs (enabled, not auto-disabled, pool enabled).
    pub active: bool,
}
