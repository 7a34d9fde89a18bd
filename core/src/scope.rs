//! Ownership: what an API caller limited to teams may see and do. Jobs name their team
//! (`team` in the jobs file); a token may carry `teams`. Such a caller sees its teams'
//! jobs and runs only, and acts on them only: anything else answers as if it did not
//! exist (no names of other jobs, no ids of other runs), and actions on what every team
//! shares (pools, workers, the broker) are refused. `jobcastctl` (the admin key) and
//! tokens without teams see everything.

use crate::error::listed;
use crate::store::{Store, StoreResult};
use crate::{Core, CoreError, Handled};
use jobcast_protocol::{AdminRequest, EnableTarget, Reply, RunState, StatusReport};
use std::collections::{BTreeMap, BTreeSet};

/// Whose jobs and runs a caller may see: all, or those of some teams.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    teams: Option<BTreeSet<String>>,
}

impl Scope {
    /// Everything (the admin key, tokens without teams).
    pub fn all() -> Scope {
        Scope::default()
    }

    /// The jobs of these teams, and their runs.
    pub fn teams(teams: impl IntoIterator<Item = String>) -> Scope {
        Scope {
            teams: Some(teams.into_iter().collect()),
        }
    }

    pub fn is_limited(&self) -> bool {
        self.teams.is_some()
    }

    /// The teams it is limited to (none: unlimited), as an audit entry records them.
    pub fn team_list(&self) -> Vec<String> {
        self.teams
            .as_ref()
            .map(|teams| teams.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether an audit entry of a caller limited to `teams` (none: unlimited) is
    /// visible: to an unlimited caller always, else when the two share a team.
    pub fn sees_entry_of(&self, teams: &[String]) -> bool {
        match &self.teams {
            None => true,
            Some(mine) => teams.iter().any(|t| mine.contains(t)),
        }
    }

    /// Whether a job (or a run of it) of `team` is visible.
    pub fn allows(&self, team: Option<&str>) -> bool {
        match &self.teams {
            None => true,
            Some(teams) => team.is_some_and(|t| teams.contains(t)),
        }
    }
}

impl<S: Store> Core<S> {
    pub(crate) fn job_allowed(&self, job: &str, scope: &Scope) -> bool {
        self.tables
            .jobs
            .spec(job)
            .is_some_and(|spec| scope.allows(spec.team.as_deref()))
    }

    /// Whether what is about `job` or `pool` (an alert, counts) is for `scope` to see: a
    /// job's to its team; a pool's to the teams with a job in it; the broker's own to
    /// everyone.
    pub(crate) fn sees(&self, job: Option<&str>, pool: Option<&str>, scope: &Scope) -> bool {
        match (job, pool) {
            (Some(job), _) => self.job_allowed(job, scope),
            (None, Some(pool)) => {
                !scope.is_limited()
                    || self
                        .tables
                        .jobs
                        .specs()
                        .any(|spec| spec.pool == pool && scope.allows(spec.team.as_deref()))
            }
            (None, None) => true,
        }
    }

    /// "No such job", naming only the jobs the caller may see.
    pub(crate) fn no_such_job_for(&self, job: &str, scope: &Scope) -> CoreError {
        CoreError::NoSuchJob {
            name: job.to_string(),
            known: listed(
                self.tables
                    .jobs
                    .specs()
                    .filter(|spec| scope.allows(spec.team.as_deref()))
                    .map(|spec| &spec.name),
            ),
        }
    }

    /// A run named by its exact id that the caller may see (no prefixes or substrings: a
    /// match among other teams' runs would say they exist).
    fn check_run(&self, selector: &str, scope: &Scope) -> Handled<()> {
        let visible = crate::selector::find_run(&self.tables.runs, &self.store, selector)?
            .is_some_and(|run| scope.allows(run.spec.team.as_deref()));
        if visible {
            Ok(())
        } else {
            Err(CoreError::NoSuchRun {
                selector: selector.to_string(),
            })
        }
    }

    /// The request as a limited caller may make it, or why it may not.
    pub(crate) fn scoped_request(
        &self,
        request: AdminRequest,
        scope: &Scope,
    ) -> Handled<AdminRequest> {
        if !scope.is_limited() {
            return Ok(request);
        }
        let shared = |what: &'static str| Err(CoreError::EveryTeamsOnly { what });
        match request {
            AdminRequest::Enqueue { ref job, .. }
            | AdminRequest::NextFires { ref job, .. }
            | AdminRequest::SetEnabled {
                target: EnableTarget::Job(ref job),
                ..
            } => {
                if !self.job_allowed(job, scope) {
                    return Err(self.no_such_job_for(job, scope));
                }
                Ok(request)
            }
            AdminRequest::Kill { ref selectors }
            | AdminRequest::RetryMany {
                runs: ref selectors,
            } => {
                for selector in selectors {
                    self.check_run(selector, scope)?;
                }
                Ok(request)
            }
            AdminRequest::Retry { ref run } | AdminRequest::GetLog { ref run, .. } => {
                self.check_run(run, scope)?;
                Ok(request)
            }
            AdminRequest::ListRuns(filter) => {
                Ok(AdminRequest::ListRuns(jobcast_protocol::RunFilter {
                    teams: scope.teams.as_ref().map(|t| t.iter().cloned().collect()),
                    ..filter
                }))
            }
            // Answered with what the caller may see; an alert it may not see is not found.
            AdminRequest::ListJobs
            | AdminRequest::Status
            | AdminRequest::Audit { .. }
            | AdminRequest::Alerts { .. }
            | AdminRequest::AckAlert { .. }
            | AdminRequest::Upcoming { .. }
            | AdminRequest::Series { .. } => Ok(request),
            AdminRequest::SetEnabled {
                target: EnableTarget::Pool(_),
                ..
            } => shared("enable or disable a pool"),
            AdminRequest::Drain { .. } | AdminRequest::Ping { .. } => shared("act on workers"),
            AdminRequest::ApplyJobs { .. } | AdminRequest::Prune { .. } | AdminRequest::Reload => {
                shared("change the broker's jobs or settings")
            }
            AdminRequest::Backup { .. } => shared("back up the store"),
        }
    }

    /// The reply as a limited caller may see it.
    pub(crate) fn scoped_reply(&self, reply: Reply, scope: &Scope) -> StoreResult<Reply> {
        if !scope.is_limited() {
            return Ok(reply);
        }
        Ok(match reply {
            Reply::Jobs { mut jobs } => {
                jobs.retain(|job| scope.allows(job.spec.team.as_deref()));
                Reply::Jobs { jobs }
            }
            Reply::Status(report) => Reply::Status(Box::new(self.scoped_status(*report, scope))),
            other => other,
        })
    }

    /// The status with only the caller's teams' runs and jobs counted, and nothing of the
    /// broker's own traffic.
    fn scoped_status(&self, mut report: StatusReport, scope: &Scope) -> StatusReport {
        let visible = |team: Option<&str>| scope.allows(team);
        let mut active: BTreeMap<String, u64> = BTreeMap::new();
        let mut active_by_job: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        let mut queued_by_pool: BTreeMap<String, u64> = BTreeMap::new();
        let mut shown_runs: BTreeSet<&str> = BTreeSet::new();
        for run in self.tables.runs.iter() {
            if !visible(run.spec.team.as_deref()) {
                continue;
            }
            shown_runs.insert(&run.id);
            let state = run.state.to_string();
            *active.entry(state.clone()).or_default() += 1;
            *active_by_job
                .entry(run.job.clone())
                .or_default()
                .entry(state)
                .or_default() += 1;
            if run.state == RunState::Queued {
                *queued_by_pool.entry(run.pool.clone()).or_default() += 1;
            }
        }
        report.active = active;
        report.active_by_job = active_by_job;
        report.queued_by_pool = queued_by_pool;
        report.held_by_pool = self.held_by_pool(|run| visible(run.spec.team.as_deref()));
        // The report's own time: the broker's start and its uptime.
        report.oldest_queued_by_pool = crate::admin::oldest_queued(
            self.tables.runs.iter(),
            |run| visible(run.spec.team.as_deref()),
            self.process.booted_at_ms + report.uptime_ms,
        );
        report.runs_by_state = self.runs_by_state_in(scope);
        report.total_runs = report.runs_by_state.values().sum();
        report.jobs = self
            .tables
            .jobs
            .specs()
            .filter(|spec| visible(spec.team.as_deref()))
            .count() as u64;
        // The workers that serve the pools of its jobs, and only its runs on them.
        let pools: BTreeSet<&str> = self
            .tables
            .jobs
            .specs()
            .filter(|spec| visible(spec.team.as_deref()))
            .map(|spec| spec.pool.as_str())
            .collect();
        report
            .workers
            .retain(|worker| worker.pools.iter().any(|p| pools.contains(p.as_str())));
        for worker in &mut report.workers {
            worker.running.retain(|id| shown_runs.contains(id.as_str()));
        }
        report
            .alerts
            .retain(|alert| self.sees(alert.job.as_deref(), alert.pool.as_deref(), scope));
        report.rejected.clear();
        report.connections.clear();
        report.pruned_runs = 0;
        report
    }
}
