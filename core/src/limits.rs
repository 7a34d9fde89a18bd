//! Concurrency limits: the most runs of a job (`max_concurrent` in its policy) or of a
//! pool (`[pools.NAME] max_concurrent`) assigned or running at once, across all workers.
//! A claim passes over a run whose job or pool is at its limit; the run stays queued and
//! says what it waits for. The counts come from the run table (rebuilt from the store's
//! unfinished runs at start), so a restart keeps the limits.

use crate::job_table::JobTable;
use crate::store::Store;
use crate::Core;
use jobcast_protocol::{RunRecord, RunState};
use std::collections::{BTreeMap, HashMap};

/// The limit that holds a queued run: which, and how many are out against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Held<'a> {
    Job { out: u32, limit: u32 },
    Pool { pool: &'a str, out: u32, limit: u32 },
}

impl std::fmt::Display for Held<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Held::Job { out, limit } => write!(f, "job limit: {out} of {limit} running"),
            Held::Pool { pool, out, limit } => {
                write!(f, "pool {pool} limit: {out} of {limit} running")
            }
        }
    }
}

/// Runs assigned or running, by job and by pool.
#[derive(Debug, Default)]
pub(crate) struct OutCounts {
    by_job: HashMap<String, u32>,
    by_pool: HashMap<String, u32>,
}

impl OutCounts {
    /// Counts `run` as handed out.
    pub fn add(&mut self, run: &RunRecord) {
        *self.by_job.entry(run.job.clone()).or_default() += 1;
        *self.by_pool.entry(run.pool.clone()).or_default() += 1;
    }

    /// Why a queued `run` may not be handed out now, if a limit holds it: its job's
    /// limit as the job is defined now (an edit applies to runs already queued), or its
    /// pool's. Nothing is formatted here: a claim asks this of every run it passes over.
    pub fn holding<'r>(
        &self,
        run: &'r RunRecord,
        jobs: &JobTable,
        pool_limits: &BTreeMap<String, u32>,
    ) -> Option<Held<'r>> {
        if let Some(limit) = jobs.max_concurrent(&run.job) {
            let out = self.by_job.get(&run.job).copied().unwrap_or(0);
            if out >= limit {
                return Some(Held::Job { out, limit });
            }
        }
        if let Some(&limit) = pool_limits.get(&run.pool) {
            let out = self.by_pool.get(&run.pool).copied().unwrap_or(0);
            if out >= limit {
                return Some(Held::Pool {
                    pool: &run.pool,
                    out,
                    limit,
                });
            }
        }
        None
    }
}

impl<S: Store> Core<S> {
    /// Whether any limit is set (counting costs a walk over the unfinished runs).
    pub(crate) fn limits_apply(&self) -> bool {
        !self.config.pool_limits.is_empty() || self.jobs.any_limit()
    }

    /// What is handed out now, when limits apply.
    pub(crate) fn out_counts(&self) -> Option<OutCounts> {
        if !self.limits_apply() {
            return None;
        }
        let mut counts = OutCounts::default();
        for run in self
            .runs
            .iter()
            .filter(|r| matches!(r.state, RunState::Assigned | RunState::Running))
        {
            counts.add(run);
        }
        Some(counts)
    }

    /// Marks the queued runs among `runs` that a limit holds, for listings.
    pub(crate) fn mark_held(&self, runs: &mut [RunRecord]) {
        let Some(counts) = self.out_counts() else {
            return;
        };
        for run in runs.iter_mut().filter(|r| r.state == RunState::Queued) {
            run.waiting_for = counts
                .holding(run, &self.jobs, &self.config.pool_limits)
                .map(|held| held.to_string());
        }
    }
}
