//! Every message that crosses a socket.
//!
//! Requests and replies travel inside a signed envelope (see [`crate::envelope`]); events
//! on the PUB socket are unsigned hints (see [`Event`]). All of them are MessagePack maps
//! (`rmp_serde::to_vec_named`), enums externally tagged with snake_case names, so a
//! non-Rust peer sees `{"claim": {"max": 4}}`.

use crate::request::Request;
use crate::state::{IllegalTransition, RunState, Transition};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub type RunId = String;

/// What the signature covers: a request from a peer, or the broker's reply to one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    Request { id: u64, request: Request },
    Reply { id: u64, reply: Reply },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Registered {
        boot_id: u64,
        heartbeat_interval_ms: u64,
        orders: Orders,
    },
    Ack,
    Orders(Orders),
    Granted {
        runs: Vec<Assignment>,
        /// Runs the worker could take are still queued (it asked for more than it was
        /// given room for, or than were waiting).
        #[serde(default)]
        more_queued: bool,
    },
    PingResult {
        workers: Vec<PingAnswer>,
    },
    KillResult {
        outcomes: Vec<KillOutcome>,
    },
    Enqueued {
        run: Box<RunRecord>,
    },
    Runs {
        runs: Vec<RunRecord>,
    },
    Jobs {
        jobs: Vec<JobView>,
    },
    Log {
        run: Box<RunRecord>,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
        /// The stream offset to ask for next when following.
        next_offset: u64,
    },
    Applied {
        created: Vec<String>,
        updated: Vec<String>,
        unchanged: Vec<String>,
    },
    Status(Box<StatusReport>),
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The worker has no session (the broker restarted or timed it out): register again.
    NotRegistered,
    NotFound,
    Ambiguous,
    BadRequest,
    Forbidden,
    UnsupportedVersion,
    Internal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    pub hostname: String,
    pub pid: u32,
    pub version: String,
    pub concurrency: u32,
    pub pools: Vec<String>,
    /// Runs this worker process is executing right now.
    pub running: Vec<RunId>,
    /// The worker's log cap; the broker keeps stored logs of its runs to the same cap.
    pub max_log_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub running: Vec<RunId>,
    pub free_slots: u32,
    pub draining: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Orders {
    pub kill: Vec<RunId>,
    pub drain: bool,
}

/// Everything a worker needs to execute one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub run_id: RunId,
    pub attempt: u32,
    pub scheduled_at_ms: u64,
    pub job: JobSpec,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFinished {
    pub run_id: RunId,
    pub outcome: Outcome,
    pub duration_ms: u64,
    /// Bytes of output the run produced in all (before capping).
    pub log_bytes: u64,
    /// Also claim up to this many runs (the slots this ending frees); the reply is then
    /// `Granted`. Saves a round trip per run.
    #[serde(default)]
    pub claim: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Exited {
        code: i32,
    },
    Signaled {
        signal: i32,
    },
    Killed,
    TimedOut,
    /// The run could not be started (unreadable script, bad working directory, …).
    FailedToStart {
        reason: String,
    },
}

impl Outcome {
    pub fn final_state(&self) -> RunState {
        match self {
            Outcome::Exited { code: 0 } => RunState::Succeeded,
            Outcome::Exited { .. } | Outcome::Signaled { .. } | Outcome::FailedToStart { .. } => {
                RunState::Failed
            }
            Outcome::Killed => RunState::Killed,
            Outcome::TimedOut => RunState::TimedOut,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Outcome::Exited { code } => format!("exited with code {code}"),
            Outcome::Signaled { signal } => format!("terminated by signal {signal}"),
            Outcome::Killed => "killed on request".to_string(),
            Outcome::TimedOut => "killed after its timeout".to_string(),
            Outcome::FailedToStart { reason } => format!("could not start: {reason}"),
        }
    }
}

/// What a worker says about itself when pinged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub version: String,
    pub hostname: String,
    pub pid: u32,
    pub concurrency: u32,
    pub pools: Vec<String>,
    pub running: Vec<RunId>,
    pub uptime_ms: u64,
    pub rss_bytes: u64,
    pub draining: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingAnswer {
    pub worker: String,
    /// `None`: no answer within the timeout.
    pub rtt_us: Option<u64>,
    pub info: Option<WorkerInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KillOutcome {
    /// The kill order is on its way to the worker running it.
    Killing {
        run_id: RunId,
        worker: String,
    },
    /// The run was still queued and is now cancelled.
    Cancelled {
        run_id: RunId,
    },
    AlreadyFinished {
        run_id: RunId,
        state: RunState,
    },
    Ambiguous {
        selector: String,
        candidates: Vec<RunId>,
    },
    NotFound {
        selector: String,
    },
}

impl KillOutcome {
    pub fn is_error(&self) -> bool {
        matches!(
            self,
            KillOutcome::Ambiguous { .. } | KillOutcome::NotFound { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RunFilter {
    pub state: Option<RunState>,
    pub job: Option<String>,
    pub limit: u32,
    #[serde(default)]
    pub worker: Option<String>,
    /// Only runs created at or after this time (ms since the epoch).
    #[serde(default)]
    pub since_ms: Option<u64>,
    /// Only runs created before this time.
    #[serde(default)]
    pub until_ms: Option<u64>,
    /// Paging: only runs older than this sequence number (the last `seq` of a page).
    #[serde(default)]
    pub before_seq: Option<u64>,
}

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

/// A run as stored by the broker and shown to operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: RunId,
    pub seq: u64,
    pub job: String,
    pub pool: String,
    pub attempt: u32,
    pub state: RunState,
    pub worker: Option<String>,
    pub pid: Option<u32>,
    pub created_at_ms: u64,
    pub scheduled_at_ms: u64,
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: Option<u64>,
    pub outcome: Option<Outcome>,
    pub kill_requested: bool,
    pub log_bytes: u64,
    /// The log cap of the worker that ran it (0 until assigned).
    pub log_cap: u64,
    /// The run whose end enqueued this one (chains).
    #[serde(default)]
    pub parent: Option<RunId>,
    /// The first attempt, when this run is a retry.
    #[serde(default)]
    pub first_attempt: Option<RunId>,
    /// Only this worker may take it (`run_on_all_workers`).
    #[serde(default)]
    pub pinned_worker: Option<String>,
    /// Not to be handed out before this time (retry back-off).
    #[serde(default)]
    pub not_before_ms: u64,
    /// Precise times for latency measurements, µs since the epoch: when enqueued, when
    /// the worker spawned the process, when the broker recorded the end.
    #[serde(default)]
    pub created_at_us: u64,
    #[serde(default)]
    pub spawned_at_us: Option<u64>,
    #[serde(default)]
    pub ended_at_us: Option<u64>,
    /// Shared by the runs one tick created on every worker.
    #[serde(default)]
    pub schedule_id: Option<String>,
    pub history: Vec<Transition>,
    /// The job as it was when the run was created, so later edits do not change it.
    pub spec: JobSpec,
}

impl RunRecord {
    /// Moves the run to `to`, recording when and why; refuses illegal transitions.
    pub fn transition(
        &mut self,
        to: RunState,
        at_ms: u64,
        cause: impl Into<String>,
    ) -> Result<(), IllegalTransition> {
        if !self.state.can_move_to(to) {
            return Err(IllegalTransition {
                from: self.state,
                to,
            });
        }
        self.state = to;
        match to {
            RunState::Running => self.started_at_ms = Some(at_ms),
            RunState::Queued => self.worker = None,
            s if s.is_terminal() => self.finished_at_ms = Some(at_ms),
            _ => {}
        }
        self.history.push(Transition {
            state: to,
            at_ms,
            cause: cause.into(),
        });
        Ok(())
    }

    pub fn duration_ms(&self) -> Option<u64> {
        Some(self.finished_at_ms?.saturating_sub(self.started_at_ms?))
    }
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

/// Something operators should look at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub kind: AlertKind,
    pub job: Option<String>,
    pub pool: Option<String>,
    pub run_id: Option<RunId>,
    pub since_ms: u64,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    RunFailed,
    RunLost,
    Late,
    NeverRun,
    AutoDisabled,
    NoWorker,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::RunFailed => "run_failed",
            AlertKind::RunLost => "run_lost",
            AlertKind::Late => "late",
            AlertKind::NeverRun => "never_run",
            AlertKind::AutoDisabled => "auto_disabled",
            AlertKind::NoWorker => "no_worker",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub id: String,
    pub online: bool,
    pub hostname: String,
    pub pid: u32,
    pub version: String,
    pub concurrency: u32,
    pub pools: Vec<String>,
    pub running: Vec<RunId>,
    pub last_seen_ms: u64,
    pub draining: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    pub boot_id: u64,
    pub uptime_ms: u64,
    /// Runs that are not finished, by state.
    pub active: BTreeMap<String, u64>,
    /// Runs stored in all.
    pub total_runs: u64,
    pub jobs: u64,
    pub workers: Vec<WorkerStatus>,
    /// Frames and connections refused since start, by reason.
    pub rejected: BTreeMap<String, u64>,
    /// TCP connections to the broker's sockets: `open` now, and `opened` and `closed`
    /// since start, whether or not they got through the handshake (a connection libzmq
    /// drops for an oversized frame shows only as `closed`).
    #[serde(default)]
    pub connections: BTreeMap<String, u64>,
    /// Standing conditions: late or never-run jobs, pools without workers, …
    #[serde(default)]
    pub alerts: Vec<Alert>,
    #[serde(default)]
    pub disabled_pools: Vec<String>,
}

/// Unsigned hints published on the PUB socket. See the topic helpers below.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    BrokerAlive { boot_id: u64, time_ms: u64 },
    Wake { pool: String },
    Ping { ping_id: u64 },
    OrdersPending,
}

pub mod topic {
    //! PUB topics. Each ends with `/` so that a subscription cannot prefix-match a
    //! longer name (`worker/w1/` is not a prefix of `worker/w10/`).

    pub const ALL: &str = "all/";

    pub fn pool(pool: &str) -> String {
        format!("pool/{pool}/")
    }

    pub fn worker(worker: &str) -> String {
        format!("worker/{worker}/")
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_subscription_never_matches_a_longer_name() {
            assert!(!worker("w10").starts_with(&worker("w1")));
            assert!(!pool("default-2").starts_with(&pool("default")));
            assert!(worker("w1").starts_with(&worker("w1")));
        }
    }
}

/// Encodes an event as a MessagePack map.
pub fn encode_event(event: &Event) -> Vec<u8> {
    // Serialising these plain types into a Vec cannot fail.
    rmp_serde::to_vec_named(event).unwrap_or_default()
}

pub fn decode_event(bytes: &[u8]) -> Option<Event> {
    rmp_serde::from_slice(bytes).ok()
}
