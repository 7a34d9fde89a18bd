//! `Status`: the broker's counters, workers and queues.

use crate::fast_hash::FastMap;
use crate::store::{Store, StoreResult};
use crate::Core;
use crate::Now;
use jobcast_protocol::{RunState, StatusReport, JOBCAST_VERSION};
use std::collections::BTreeMap;

impl<S: Store> Core<S> {
    pub(crate) fn status(&self, now: Now) -> StoreResult<StatusReport> {
        // Counted by (job, state) with borrowed names first: a string per active run would
        // cost an allocation each, and status is asked for often (dashboards, metrics
        // scrapes, scripts waiting for a queue to drain).
        let mut by_job_state: FastMap<(&str, RunState), u64> = FastMap::default();
        for run in self.tables.runs.iter() {
            *by_job_state.entry((&run.job, run.state)).or_default() += 1;
        }
        let mut active: BTreeMap<String, u64> = BTreeMap::new();
        let mut active_by_job: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for ((job, state), count) in by_job_state {
            *active.entry(state.to_string()).or_default() += count;
            active_by_job
                .entry(job.to_string())
                .or_default()
                .insert(state.to_string(), count);
        }
        let queued_by_pool = self.tables.runs.queued_by_pool();
        let oldest_queued_by_pool = oldest_queued(self.tables.runs.iter(), |_| true, now.ms());
        let held_by_pool = self.held_by_pool(|_| true);
        let workers = self
            .tables
            .workers
            .statuses()
            .map(|w| {
                let mut w = w.clone();
                if let Some(session) = self.tables.workers.session(&w.id) {
                    w.online = true;
                    w.running = session.runs.iter().cloned().collect();
                    w.last_seen_ms = session.last_seen_ms;
                    w.draining = session.draining || session.drain_ordered;
                } else {
                    w.online = false;
                    w.running.clear();
                }
                w
            })
            .collect();
        Ok(StatusReport {
            version: JOBCAST_VERSION.to_string(),
            boot_id: self.process.boot_id,
            uptime_ms: now.ms().saturating_sub(self.process.booted_at_ms),
            active,
            total_runs: self.store.run_count()?,
            jobs: self.tables.jobs.len() as u64,
            workers,
            rejected: self.seen.rejected.clone(),
            connections: BTreeMap::from([
                (
                    "open".to_string(),
                    self.seen
                        .connections
                        .opened
                        .saturating_sub(self.seen.connections.closed),
                ),
                ("opened".to_string(), self.seen.connections.opened),
                ("closed".to_string(), self.seen.connections.closed),
            ]),
            alerts: self.tables.alerts.values().cloned().collect(),
            disabled_pools: self.tables.jobs.disabled_pools().iter().cloned().collect(),
            pruned_runs: self.stored.pruning.pruned(),
            active_by_job,
            queued_by_pool,
            oldest_queued_by_pool,
            held_by_pool,
            runs_by_state: self.runs_by_state(),
            leadership: self
                .process
                .leadership
                .as_ref()
                .map(|(leadership, renewed_at_ms)| jobcast_protocol::Leadership {
                    renewed_ms_ago: now.ms().saturating_sub(*renewed_at_ms),
                    ..leadership.clone()
                }),
        })
    }
}

impl<S: Store> Core<S> {
    /// Per pool, how many of its queued runs (of those `shown`) a concurrency limit holds.
    pub(crate) fn held_by_pool(
        &self,
        shown: impl Fn(&jobcast_protocol::RunRecord) -> bool,
    ) -> BTreeMap<String, u64> {
        let mut held = BTreeMap::new();
        let limits = self.limits();
        let Some(counts) = limits.out_counts(&self.tables.runs) else {
            return held;
        };
        for run in self.tables.runs.iter() {
            if run.state == RunState::Queued && shown(run) && limits.holding(run, &counts).is_some()
            {
                *held.entry(run.pool.clone()).or_default() += 1;
            }
        }
        held
    }
}

/// Per pool, since when its longest-waiting queued run (of those `shown`) could be
/// handed out: its creation, or the end of its retry back-off.
/// Runs still in a retry's back-off are not waiting yet.
pub(crate) fn oldest_queued<'a>(
    runs: impl Iterator<Item = &'a jobcast_protocol::RunRecord>,
    shown: impl Fn(&jobcast_protocol::RunRecord) -> bool,
    now_ms: u64,
) -> BTreeMap<String, u64> {
    // Pool names borrowed while walking: one string a pool, not one a queued run.
    let mut oldest: FastMap<&str, u64> = FastMap::default();
    for run in runs.filter(|r| r.state == RunState::Queued && shown(r)) {
        let due = run.created_at_ms.max(run.not_before_ms);
        if due > now_ms {
            continue;
        }
        oldest
            .entry(&run.pool)
            .and_modify(|at| *at = (*at).min(due))
            .or_insert(due);
    }
    oldest
        .into_iter()
        .map(|(pool, at)| (pool.to_string(), at))
        .collect()
}
