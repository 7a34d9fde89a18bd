//! Runs: the record the broker keeps of each, how one ended, and how listings filter them.

use crate::job::JobSpec;
use crate::message::RunId;
use crate::state::{IllegalTransition, RunState, Transition};
use serde::{Deserialize, Serialize};

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
    /// The worker stopped it (or never started it) because no answer from the broker came
    /// within its lease: the broker may give the run up, so it must not go on unseen.
    LeaseExpired {
        silent_ms: u64,
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
            Outcome::LeaseExpired { .. } => RunState::Lost,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Outcome::Exited { code } => format!("exited with code {code}"),
            Outcome::Signaled { signal } => format!("terminated by signal {signal}"),
            Outcome::Killed => "killed on request".to_string(),
            Outcome::TimedOut => "killed after its timeout".to_string(),
            Outcome::FailedToStart { reason } => format!("could not start: {reason}"),
            Outcome::LeaseExpired { silent_ms } => format!(
                "stopped by its worker: no answer from the broker for {silent_ms} ms (its lease)"
            ),
        }
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
    /// Paging from the oldest: only runs newer than this sequence number (0: from the
    /// very oldest), listed oldest first. A listing that stops early then names in
    /// `resume_before` the `after_seq` to go on with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after_seq: Option<u64>,
    /// Only runs whose id, job, worker, state or result contains this text (any case).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Only runs that this run started: its retries (their first attempt) and the chain's
    /// next runs (their parent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub linked_to: Option<String>,
    /// Only runs of jobs of these teams (as the job was when the run was made).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teams: Option<Vec<String>>,
    /// Only runs whose stored output contains this text (any case). Output is read run
    /// by run, so such a listing looks at a bounded amount of it and says where to go on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

impl RunFilter {
    /// Whether `run` passes every condition but the time range and paging.
    pub fn matches(&self, run: &RunRecord) -> bool {
        if let Some(teams) = &self.teams {
            if !run.spec.team.as_ref().is_some_and(|t| teams.contains(t)) {
                return false;
            }
        }
        if let Some(origin) = &self.linked_to {
            if run.parent.as_ref() != Some(origin) && run.first_attempt.as_ref() != Some(origin) {
                return false;
            }
        }
        if self.state.is_some_and(|s| s != run.state)
            || self.job.as_ref().is_some_and(|j| *j != run.job)
            || self
                .worker
                .as_ref()
                .is_some_and(|w| run.worker.as_ref() != Some(w))
        {
            return false;
        }
        let Some(text) = &self.text else {
            return true;
        };
        let text = text.to_lowercase();
        let outcome = run.outcome.as_ref().map(Outcome::describe);
        let fields = [
            Some(run.id.as_str()),
            Some(run.job.as_str()),
            run.worker.as_deref(),
            Some(run.state.as_str()),
            outcome.as_deref(),
        ];
        for field in fields.into_iter().flatten() {
            if field.to_lowercase().contains(&text) {
                return true;
            }
        }
        false
    }
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
    /// The worker process (its `Register::instance`) the run was granted to, while it is
    /// assigned or running.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "crate::id64::option"
    )]
    pub worker_instance: Option<u64>,
    pub history: Vec<Transition>,
    /// The job as it was when the run was created, so later edits do not change it.
    /// Shared: the runs of one version of a job hold one copy, and so do their grants.
    pub spec: std::sync::Arc<JobSpec>,
    /// Its parameter values, checked against `spec.params` (defaults filled in).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub params: crate::params::Params,
    /// Its place in its pool's queue: higher first, then older first.
    #[serde(default)]
    pub priority: i32,
    /// What its processes used (CPU time, peak memory), where its worker measured it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<crate::message::RunUsage>,
    /// What the worker reported after the broker had already given the run up (`lost`):
    /// kept and shown, never dropped; the run's state stays `lost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_result: Option<LateResult>,
    /// Set in listings while the run is queued and a concurrency limit holds it (what it
    /// waits for); never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

/// A run's end as its worker reported it after the broker had recorded the run `lost`
/// (the worker was cut off longer than its lease and the broker's margins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateResult {
    pub outcome: Outcome,
    pub duration_ms: u64,
    /// Bytes of output the run produced in all (its stored log keeps what arrived).
    pub log_bytes: u64,
    /// When the report reached the broker.
    pub reported_at_ms: u64,
}

/// What an enqueue or a retry answers with: the run's identity and where it stands, not
/// the whole record (which carries the job; ask for it with `Runs` when needed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRef {
    pub id: RunId,
    pub job: String,
    pub attempt: u32,
    pub state: RunState,
}

impl RunRef {
    pub fn of(run: &RunRecord) -> RunRef {
        RunRef {
            id: run.id.clone(),
            job: run.job.clone(),
            attempt: run.attempt,
            state: run.state,
        }
    }
}

impl RunRecord {
    /// The run as anyone may see it: secret parameter values replaced by
    /// [`crate::params::SECRET_MASK`].
    pub fn with_secrets_masked(mut self) -> RunRecord {
        if !self.params.is_empty() {
            self.params = crate::params::masked(&self.spec.params, &self.params);
        }
        self
    }

    /// A new run of `spec`, queued at `created_at_ms` (its only transition so far, with
    /// `cause`): first attempt, no worker, no links, no back-off.
    pub fn queued(
        id: RunId,
        seq: u64,
        spec: impl Into<std::sync::Arc<JobSpec>>,
        created_at_ms: u64,
        cause: impl Into<String>,
    ) -> RunRecord {
        let spec = spec.into();
        RunRecord {
            id,
            seq,
            job: spec.name.clone(),
            pool: spec.pool.clone(),
            attempt: 1,
            state: RunState::Queued,
            worker: None,
            pid: None,
            created_at_ms,
            scheduled_at_ms: created_at_ms,
            started_at_ms: None,
            finished_at_ms: None,
            outcome: None,
            kill_requested: false,
            log_bytes: 0,
            log_cap: 0,
            parent: None,
            first_attempt: None,
            pinned_worker: None,
            not_before_ms: 0,
            created_at_us: 0,
            spawned_at_us: None,
            ended_at_us: None,
            schedule_id: None,
            worker_instance: None,
            history: vec![Transition {
                state: RunState::Queued,
                at_ms: created_at_ms,
                cause: cause.into(),
            }],
            priority: spec.priority,
            spec,
            params: Default::default(),
            usage: None,
            late_result: None,
            waiting_for: None,
        }
    }

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
