//! `RunFinished`: a run ended on its worker.

use crate::core::{Core, Outbox};
use crate::store::{Store, StoreResult};
use jobcast_protocol::RunFinished;

impl<S: Store> Core<S> {
    pub(in crate::core) fn run_finished(
        &mut self,
        worker: &str,
        finished: RunFinished,
        now: u64,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        let Some(run) = self.runs.active.get_mut(&finished.run_id) else {
            tracing::info!(run_id = %finished.run_id, worker, "late report for a run that already ended; ignored");
            return Ok(());
        };
        if run.worker.as_deref() != Some(worker) {
            tracing::warn!(run_id = %finished.run_id, worker, "report from a worker the run is not on; ignored");
            return Ok(());
        }
        let state = finished.outcome.final_state();
        let cause = finished.outcome.describe();
        run.outcome = Some(finished.outcome);
        run.log_bytes = finished.log_bytes;
        run.ended_at_us = Some(self.clock_us);
        if let Err(e) = run.transition(state, now, cause) {
            tracing::warn!(run_id = %finished.run_id, worker, error = %e, "ignoring a finish report");
            return Ok(());
        }
        if run.started_at_ms.is_none() {
            // Never reported as started (it failed to start, or was killed first):
            // the reported duration is all we know.
            run.started_at_ms = Some(now.saturating_sub(finished.duration_ms));
        }
        let run = run.clone();
        self.retire(&run, now, out)
    }
}
