//! `Status`: the broker's counters, workers and queues.

use crate::core::Core;
use crate::store::{Store, StoreResult};
use jobcast_protocol::{RunState, StatusReport, JOBCAST_VERSION};
use std::collections::BTreeMap;

impl<S: Store> Core<S> {
    pub(in crate::core) fn status(&self, now: u64) -> StoreResult<StatusReport> {
        // Counted by state first: a name per run would cost a string per active run, and
        // status is asked for often (dashboards, scripts waiting for a queue to drain).
        let mut by_state: BTreeMap<RunState, u64> = BTreeMap::new();
        for run in self.runs.active.values() {
            *by_state.entry(run.state).or_default() += 1;
        }
        let active = by_state
            .into_iter()
            .map(|(state, count)| (state.to_string(), count))
            .collect();
        let workers = self
            .workers
            .statuses
            .values()
            .map(|w| {
                let mut w = w.clone();
                if let Some(session) = self.workers.sessions.get(&w.id) {
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
            boot_id: self.boot_id,
            uptime_ms: now.saturating_sub(self.booted_at_ms),
            active,
            total_runs: self.store.run_count()?,
            jobs: self.jobs.specs.len() as u64,
            workers,
            rejected: self.rejected.clone(),
            connections: BTreeMap::from([
                (
                    "open".to_string(),
                    self.connections
                        .opened
                        .saturating_sub(self.connections.closed),
                ),
                ("opened".to_string(), self.connections.opened),
                ("closed".to_string(), self.connections.closed),
            ]),
            alerts: self.alerts.values().cloned().collect(),
            disabled_pools: self.jobs.disabled_pools.iter().cloned().collect(),
            pruned_runs: self.pruning.pruned,
        })
    }
}
