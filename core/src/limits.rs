//! Concurrency limits: the most runs of a job (`max_concurrent` in its policy) or of a
//! pool (`[pools.NAME] max_concurrent`) assigned or running at once, across all workers.
//! A claim passes over a run whose job or pool is at its limit; the run stays queued and
//! says what it waits for. The counts come from the run table (rebuilt from the store's
//! unfinished runs at start), so a restart keeps the limits.

use crate::job_table::JobTable;
use crate::run_table::RunTable;
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

/// The limits in force: each job's (as its definition is now) and each pool's.
#[derive(Clone, Copy)]
pub(crate) struct Limits<'a> {
    pub jobs: &'a JobTable,
    pub pools: &'a BTreeMap<String, u32>,
}

impl Limits<'_> {
    /// Whether any limit is set (counting costs a walk over the unfinished runs).
    pub fn apply(self) -> bool {
        !self.pools.is_empty() || self.jobs.any_limit()
    }

    /// What is handed out now, when limits apply.
    pub fn out_counts(self, runs: &RunTable) -> Option<OutCounts> {
        if !self.apply() {
            return None;
        }
        let mut counts = OutCounts::default();
        for run in runs
            .iter()
            .filter(|r| matches!(r.state, RunState::Assigned | RunState::Running))
        {
            counts.add(run);
        }
        Some(counts)
    }

    /// Why queued `run` may not be handed out now, if a limit holds it.
    pub fn holding<'r>(self, run: &'r RunRecord, counts: &OutCounts) -> Option<Held<'r>> {
        counts.holding(run, self.jobs, self.pools)
    }

    /// Marks the queued runs among `listed` that a limit holds, for listings.
    pub fn mark_held(self, runs: &RunTable, listed: &mut [RunRecord]) {
        let Some(counts) = self.out_counts(runs) else {
            return;
        };
        for run in listed.iter_mut().filter(|r| r.state == RunState::Queued) {
            run.waiting_for = self.holding(run, &counts).map(|held| held.to_string());
        }
    }
}

impl<S: Store> Core<S> {
    /// The limits in force.
    pub(crate) fn limits(&self) -> Limits<'_> {
        Limits {
            jobs: &self.tables.jobs,
            pools: &self.config.pool_limits,
        }
    }
}
