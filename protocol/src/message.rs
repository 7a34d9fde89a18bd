//! Every message that crosses a socket.
//!
//! Requests and replies travel inside a signed envelope (see [`crate::envelope`]); events
//! on the PUB socket are unsigned hints (see [`Event`]). All of them are MessagePack maps
//! (`rmp_serde::to_vec_named`), enums externally tagged with snake_case names, so a
//! non-Rust peer sees `{"claim": {"max": 4}}`.

pub use crate::event::{decode_event, encode_event, topic, Event};
pub use crate::job::{
    ChildSpec, Exec, JobPolicy, JobSpec, JobState, JobView, Misfire, OnBrokerLoss, Overlap,
    ScheduleSpec,
};
pub use crate::run::{LateResult, Outcome, RunFilter, RunRecord, RunRef};

use crate::request::Request;
use crate::state::RunState;
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
        #[serde(with = "crate::id64")]
        boot_id: u64,
        heartbeat_interval_ms: u64,
        orders: Orders,
        /// The worker's lease: a worker that has had no answer to any request sent in the
        /// last `lease_ms` stops its runs (those whose job says `on_broker_loss = "stop"`)
        /// and starts no grant, before the broker may give them to anyone else. 0 (an
        /// older broker): no lease.
        #[serde(default, skip_serializing_if = "is_zero")]
        lease_ms: u64,
        /// The broker takes a run's start carried by its end (`RunFinished.started`). A
        /// worker sends a start on its own to a broker that does not say so (an older
        /// one would refuse the end of a run it has not heard started).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        starts_in_ends: bool,
        /// The broker takes several reports in one message (`WorkerRequest::Reports`).
        /// A worker sends each on its own to a broker that does not say so.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        reports_together: bool,
    },
    Ack,
    /// The replies to a `WorkerRequest::Reports`, one for each report, in order.
    Reports(Vec<Reply>),
    Orders(Orders),
    Granted {
        runs: Vec<GrantedRun>,
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
        run: RunRef,
    },
    Runs {
        runs: Vec<RunRecord>,
        /// Set when the broker stopped looking before finding `limit` runs (it looks at a
        /// bounded number of stored runs per listing): list again with this as
        /// `before_seq` to go on.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume_before: Option<u64>,
        /// How many stored runs match in all, when the broker knows it without looking
        /// (a listing filtered by state at most: its counts).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
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
        /// The broker answered as `wait_ms` asks (held until there was something to say,
        /// or the wait ran out): the client may ask again at once. Absent from a broker
        /// that does not hold reads, or one holding too many already: pause first.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        waited: bool,
    },
    Applied {
        created: Vec<String>,
        updated: Vec<String>,
        unchanged: Vec<String>,
    },
    Status(Box<StatusReport>),
    /// What `Prune` found: runs deleted (or, dry, to delete) among those looked at;
    /// `complete` when it looked at every stored run.
    Pruned {
        runs: u64,
        scanned: u64,
        complete: bool,
    },
    /// What a `Reload` took from the settings file.
    Reloaded(ReloadReport),
    /// A job as `ListJobs` shows it, and its next fire times (ms since the epoch; its
    /// schedule names the zone they fall in).
    NextFires {
        job: Box<JobView>,
        times_ms: Vec<u64>,
    },
    /// A `Backup` written and read back: where, what it holds (counted in the copy,
    /// opened afresh), its records and bytes, and how long it took.
    BackedUp {
        path: String,
        runs: u64,
        jobs: u64,
        log_chunks: u64,
        records: u64,
        bytes: u64,
        took_ms: u64,
    },
    /// Audit log entries, newest first.
    Audit {
        entries: Vec<AuditEntry>,
    },
    /// Counts over time, oldest bucket first (the current one last), and the wait to
    /// start of the runs started in them all: p50 and p99, each the upper bound of the
    /// class it fell in (10, 30, 100, 300 ms, 1, 3, 10, 30 s, 1, 5, 30 min), at most the
    /// longest wait seen.
    Series {
        step_ms: u64,
        points: Vec<SeriesPoint>,
        #[serde(default)]
        wait_p50_ms: u64,
        #[serde(default)]
        wait_p99_ms: u64,
    },
    /// The next ticks that start runs, soonest first.
    Upcoming {
        fires: Vec<UpcomingFire>,
    },
    /// The alerts standing now, and the history of alerts, newest first.
    Alerts {
        current: Vec<Alert>,
        history: Vec<AlertRecord>,
    },
    /// What `RetryMany` did: the runs it made, and the runs it could not retry (why).
    RetriedMany {
        retried: Vec<RunRef>,
        refused: Vec<Refusal>,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    /// This broker is a standby (several brokers share one database and another one
    /// acts): nothing was done. Ask the leader when one is named, else another broker
    /// of the list, a moment later.
    NotLeader {
        leader: Option<LeaderAddress>,
    },
}

/// Where the acting broker is reached, as it wrote it in the database with its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderAddress {
    /// Its request (ROUTER) endpoint.
    pub router: String,
    /// Its event (PUB) endpoint.
    pub publish: String,
    /// Its HTTP address ('' when it serves none).
    pub http: String,
    /// The lease's epoch: rises at each takeover, so of two answers naming different
    /// leaders the higher epoch is the newer.
    pub epoch: u64,
}

/// The result of a reload: which worker keys came, went or changed, how many API tokens
/// and webhooks are now in force, and settings that changed in the file but only take
/// effect at the next start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub workers_added: Vec<String>,
    pub workers_removed: Vec<String>,
    /// Worker ids whose secret or pools changed.
    pub workers_changed: Vec<String>,
    pub admin_changed: bool,
    pub api_tokens: u64,
    pub webhooks: u64,
    /// Names of settings whose new values wait for a restart.
    pub needs_restart: Vec<String>,
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
    /// The broker cannot take this request now (its disk is full, or its store failed
    /// and is being reopened); nothing was done. Try again later.
    Unavailable,
    /// The key the request was sealed with was removed or replaced by a reload: the
    /// worker stops its runs and exits (the answer is sealed with that key, so only the
    /// broker can send it).
    Revoked,
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
    /// Chosen at random when the worker process starts, the same in each of its
    /// registrations: a grant to this very process that it does not report was never
    /// started (its answer has not arrived), rather than lost with a dead process. 0: not
    /// known (every unreported run is then lost).
    #[serde(default, skip_serializing_if = "is_zero", with = "crate::id64")]
    pub instance: u64,
    /// Runs the worker may hold granted but not started, beyond its `concurrency`: it
    /// starts one the moment a slot frees. 0 (or absent): none.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub prefetch: u32,
    /// Between SIGTERM and SIGKILL when this worker stops a run: the broker waits its
    /// lease and this long (and a margin) before it gives a silent worker's runs up.
    /// Absent: [`DEFAULT_KILL_GRACE_MS`].
    #[serde(default = "default_kill_grace_ms")]
    pub kill_grace_ms: u64,
    /// The runs earlier processes of this worker (same id, same host, since its boot)
    /// started, from the worker's start ledger: a grant to such a process that is not
    /// listed never started, and is queued again rather than lost. Absent: not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub earlier_started: Option<Vec<RunId>>,
    /// The worker keeps the job definitions it is sent by their `GrantedRun::definition`
    /// id (until it registers again), so a grant may name one it was sent before instead
    /// of carrying it. A broker that does not know this field carries every definition.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub definition_ids: bool,
}

/// The kill grace assumed of a worker that does not declare one.
pub const DEFAULT_KILL_GRACE_MS: u64 = 5_000;

fn default_kill_grace_ms() -> u64 {
    DEFAULT_KILL_GRACE_MS
}

fn is_zero_u32(value: &u32) -> bool {
    *value == 0
}

fn is_zero(value: &u64) -> bool {
    *value == 0
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
    /// Runs granted to this worker process (same `Register::instance`) that it did not
    /// report (in its registration or heartbeat) and never reported started: their
    /// `Granted` answer was lost, or is still on its way. Start each one unless it is
    /// already held (the late answer names the same runs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resume: Vec<Assignment>,
}

/// Everything a worker needs to execute one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub run_id: RunId,
    pub attempt: u32,
    pub scheduled_at_ms: u64,
    pub job: std::sync::Arc<JobSpec>,
    /// The run's parameter values: `JOBCAST_PARAM_<NAME>` in its environment.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params: crate::params::Params,
}

impl Assignment {
    /// What a worker needs of `run` to execute it.
    pub fn of(run: &crate::run::RunRecord) -> Assignment {
        Assignment {
            run_id: run.id.clone(),
            attempt: run.attempt,
            scheduled_at_ms: run.scheduled_at_ms,
            job: run.spec.clone(),
            params: run.params.clone(),
        }
    }
}

/// A run as a grant hands it out: an [`Assignment`] whose job definition may be named
/// instead of carried. The broker carries a definition the first time it grants it to a
/// worker session, and names it by `definition` after that, to a worker whose
/// registration says `definition_ids`; to any other worker it always carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantedRun {
    pub run_id: RunId,
    pub attempt: u32,
    pub scheduled_at_ms: u64,
    /// The broker's id for this version of the job's definition, the same for every run
    /// of that version while the broker process lives (0: none; the definition is then
    /// carried). Ids are never reused within a broker process.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub definition: u64,
    /// The definition itself; absent when this worker session was sent `definition`
    /// before. A worker that does not hold it hands the run back (`Release`): the broker
    /// then carries every definition again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<std::sync::Arc<JobSpec>>,
    /// The run's parameter values: `JOBCAST_PARAM_<NAME>` in its environment.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params: crate::params::Params,
}

impl GrantedRun {
    /// `run` as granted with its definition carried, under id `definition` (0: none).
    pub fn carrying(run: &crate::run::RunRecord, definition: u64) -> GrantedRun {
        GrantedRun::of(run, definition, Some(run.spec.clone()))
    }

    /// `run` as granted naming definition `definition`, which the worker was sent.
    pub fn naming(run: &crate::run::RunRecord, definition: u64) -> GrantedRun {
        GrantedRun::of(run, definition, None)
    }

    fn of(
        run: &crate::run::RunRecord,
        definition: u64,
        job: Option<std::sync::Arc<JobSpec>>,
    ) -> GrantedRun {
        GrantedRun {
            run_id: run.id.clone(),
            attempt: run.attempt,
            scheduled_at_ms: run.scheduled_at_ms,
            definition,
            job,
            params: run.params.clone(),
        }
    }

    /// What the worker executes: this run with `job`, its definition (carried, or the
    /// one the worker kept under `definition`).
    pub fn into_assignment(self, job: std::sync::Arc<JobSpec>) -> Assignment {
        Assignment {
            run_id: self.run_id,
            attempt: self.attempt,
            scheduled_at_ms: self.scheduled_at_ms,
            job,
            params: self.params,
        }
    }
}

impl From<Assignment> for GrantedRun {
    fn from(assignment: Assignment) -> GrantedRun {
        GrantedRun {
            run_id: assignment.run_id,
            attempt: assignment.attempt,
            scheduled_at_ms: assignment.scheduled_at_ms,
            definition: 0,
            job: Some(assignment.job),
            params: assignment.params,
        }
    }
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
    /// What the run used, where its worker measures it (a cgroup per run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<RunUsage>,
    /// The run's start, when it ended before its worker had sent the report of the
    /// start: one report for both. Sent only to a broker whose `Registered` says
    /// `starts_in_ends` (an older one would refuse the end of a run it has not heard
    /// started, and the run would stay granted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<StartedAs>,
}

/// A run's process as it started: what `RunStarted` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartedAs {
    pub pid: u32,
    /// When it was spawned, by the worker's clock (µs since the epoch; 0: unknown).
    pub spawned_at_us: u64,
}

/// What a run used, read from its cgroup at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RunUsage {
    /// CPU time of all its processes (user and system), µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_us: Option<u64>,
    /// The most memory its processes held at once (needs the memory controller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_memory_bytes: Option<u64>,
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
    /// How its runs' processes are kept together: a cgroup per run, or the process tree.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub containment: String,
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

/// One bucket of a `Series`: what happened from `at_ms` for one step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesPoint {
    pub at_ms: u64,
    pub started: u32,
    pub succeeded: u32,
    /// Failed, timed out or lost.
    pub failed: u32,
    /// Killed, cancelled or missed.
    pub other: u32,
    /// From when a started run could first be handed out to its start.
    pub wait_avg_ms: u64,
    pub wait_max_ms: u64,
    /// The most runs seen queued at once (sampled once a heartbeat).
    pub queued: u32,
}

/// A tick that will start a run of `job` at `at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpcomingFire {
    pub job: String,
    pub at_ms: u64,
}

/// A run a request for several could not act on, and why (as an `error` reply says it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub run: String,
    pub code: ErrorCode,
    pub message: String,
}

/// One change an operator made, as the audit log keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Rises by one per entry (for paging with `before`).
    pub seq: u64,
    pub at_ms: u64,
    /// Who: `key admin`, `token alice`, `signal SIGHUP`.
    pub actor: String,
    /// What: `kill`, `retry`, `enable`, `disable`, `drain`, `apply_jobs`, `prune`, `reload`.
    pub action: String,
    /// On what: run selectors, a job, `pool NAME`, a worker, `settings`.
    pub target: String,
    /// What came of it, in a line.
    pub outcome: String,
    /// The teams the caller was limited to (none: unlimited); a caller limited to teams
    /// sees only the entries of callers limited to one of its teams.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub teams: Vec<String>,
}

impl KillOutcome {
    pub fn is_error(&self) -> bool {
        matches!(
            self,
            KillOutcome::Ambiguous { .. } | KillOutcome::NotFound { .. }
        )
    }
}

/// Something operators should look at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// The condition's name, stable while it stands (for links and acknowledging):
    /// `kind:job`, `kind:pool`, or the kind alone (`disk_low`).
    #[serde(default)]
    pub id: String,
    pub kind: AlertKind,
    pub job: Option<String>,
    pub pool: Option<String>,
    pub run_id: Option<RunId>,
    pub since_ms: u64,
    pub message: String,
    /// Someone has seen it (it still stands; dashboards stop raising it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<Acknowledged>,
}

/// Who acknowledged an alert, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledged {
    pub by: String,
    pub at_ms: u64,
}

/// An alert as the history keeps it: when it was raised and when it cleared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// Rises by one per record (for paging with `before`).
    pub seq: u64,
    pub id: String,
    pub kind: AlertKind,
    pub job: Option<String>,
    pub pool: Option<String>,
    pub message: String,
    pub raised_ms: u64,
    /// When the condition ended; `None` while it stands.
    pub cleared_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged: Option<Acknowledged>,
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
    /// Free space in the broker's data directory is under its reserve.
    DiskLow,
}

impl AlertKind {
    /// The kinds that stand while their condition lasts (the others are events).
    pub const STANDING: [AlertKind; 4] = [
        AlertKind::Late,
        AlertKind::NeverRun,
        AlertKind::NoWorker,
        AlertKind::DiskLow,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::RunFailed => "run_failed",
            AlertKind::RunLost => "run_lost",
            AlertKind::Late => "late",
            AlertKind::NeverRun => "never_run",
            AlertKind::AutoDisabled => "auto_disabled",
            AlertKind::NoWorker => "no_worker",
            AlertKind::DiskLow => "disk_low",
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
    /// What its last registration declared (kept across broker restarts, so that a
    /// restarted broker waits as long before giving its runs up).
    #[serde(default = "default_kill_grace_ms")]
    pub kill_grace_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub version: String,
    #[serde(with = "crate::id64")]
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
    /// Finished runs retention has deleted since the broker started.
    #[serde(default)]
    pub pruned_runs: u64,
    /// Runs not yet finished, by job, then by state.
    #[serde(default)]
    pub active_by_job: BTreeMap<String, BTreeMap<String, u64>>,
    /// Runs waiting in each pool's queue to be handed out (not those waiting for a
    /// retry's back-off).
    #[serde(default)]
    pub queued_by_pool: BTreeMap<String, u64>,
    /// Since when the longest-waiting queued run of each pool could be handed out (ms
    /// since the epoch; pools with nothing queued are not listed).
    #[serde(default)]
    pub oldest_queued_by_pool: BTreeMap<String, u64>,
    /// Queued runs of each pool that a concurrency limit (`max_concurrent` of their job
    /// or pool) holds back now (pools with none are not listed).
    #[serde(default)]
    pub held_by_pool: BTreeMap<String, u64>,
    /// Every stored run by state, finished ones included (every state listed, 0 when
    /// none): what a dashboard's counts show.
    #[serde(default)]
    pub runs_by_state: BTreeMap<String, u64>,
    /// Several brokers on one database: the lease this broker leads by, and the brokers
    /// seen lately. Absent for a broker alone on its embedded store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leadership: Option<Leadership>,
}

/// The leader's lease as its holder sees it, and the brokers that share its database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leadership {
    /// The lease's epoch: rises at each takeover.
    pub epoch: u64,
    /// The broker that holds the lease (host, pid and a random word); '' while none
    /// does.
    pub holder: String,
    /// The broker that answered, named the same way: `holder` on the leader, another
    /// name on a standby (whose dashboard and read API answer from the database).
    #[serde(default)]
    pub this_broker: String,
    /// How long a renewal holds the lease.
    pub lease_ms: u64,
    /// Since the holder last renewed the lease (as of the status; on a standby, as the
    /// database said a moment ago): it grows while renewals fail.
    pub renewed_ms_ago: u64,
    /// Every broker seen on the database within the last three leases, this one
    /// included.
    pub brokers: Vec<BrokerSeen>,
}

/// A broker seen on the database: it renewed the lease or tried to take it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerSeen {
    pub holder: String,
    pub router: String,
    /// Its HTTP address ('' when none).
    pub http: String,
    /// Whether it holds the lease.
    pub leader: bool,
    pub seen_ms_ago: u64,
}
