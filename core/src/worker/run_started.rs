//! `RunStarted`: a granted run is running.

use crate::store::{Store, StoreResult};
use crate::Now;
use crate::{Core, Observation, Outbox};
use jobcast_protocol::RunState;

impl<S: Store> Core<S> {
    pub(crate) fn run_started(
        &mut self,
        worker: &str,
        run_id: &str,
        pid: u32,
        spawned_at_us: u64,
        now: Now,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        let Some(run) = self.tables.runs.get_mut(run_id) else {
            tracing::warn!(
                run_id,
                worker,
                "start reported for a run that is not active"
            );
            return Ok(());
        };
        if run.worker.as_deref() != Some(worker) || run.state != RunState::Assigned {
            tracing::warn!(run_id, worker, state = %run.state, "ignoring a start report");
            return Ok(());
        }
        run.pid = Some(pid);
        run.spawned_at_us = (spawned_at_us > 0).then_some(spawned_at_us);
        if run
            .transition(
                RunState::Running,
                now.ms(),
                format!("started on {worker} as pid {pid}"),
            )
            .is_ok()
        {
            self.tables.unwritten.changed(run);
            self.changes.run(&run.id);
            // A run's output comes only while it runs, and a run runs once: nothing is
            // stored for it yet, so its first chunk needs no read of the store.
            self.tables
                .logs
                .track(&run.id, run.log_cap as usize, std::iter::empty());
            // From when it could first be handed out: its creation, or the end of its
            // retry back-off.
            let due_ms = run.created_at_ms.max(run.not_before_ms);
            // Until its process was spawned, by the worker's clock when that is plausible
            // (the report may wait behind others), else until now.
            let spawned_ms = spawned_at_us / 1_000;
            let started_ms = match spawned_ms >= due_ms && spawned_ms <= now.ms() {
                true => spawned_ms,
                false => now.ms(),
            };
            let waited_ms = started_ms.saturating_sub(due_ms);
            out.observations.push(Observation::Started {
                pool: run.pool.clone(),
                waited_ms,
            });
            let job = run.job.clone();
            self.series.started(&job, &run.pool, waited_ms, now.ms());
            let state = self.tables.jobs.state_entry(&job);
            state.last_started_ms = Some(now.ms());
            self.save_job_state(&job)?;
        }
        Ok(())
    }
}
