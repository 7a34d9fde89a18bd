//! `RunFinished`: a run ended on its worker.

use crate::store::{Store, StoreResult};
use crate::Now;
use crate::{Core, Outbox};
use jobcast_protocol::{LateResult, RunFinished, RunRecord, RunState};

impl<S: Store> Core<S> {
    pub(crate) fn run_finished(
        &mut self,
        worker: &str,
        finished: RunFinished,
        now: Now,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        let Some(run) = self.tables.runs.get_mut(&finished.run_id) else {
            return self.late_result(worker, finished, now);
        };
        if run.worker.as_deref() != Some(worker) {
            tracing::warn!(run_id = %finished.run_id, worker, "report from a worker the run is not on; ignored");
            return Ok(());
        }
        let state = finished.outcome.final_state();
        let cause = finished.outcome.describe();
        run.outcome = Some(finished.outcome);
        run.log_bytes = finished.log_bytes;
        run.usage = finished.usage;
        run.ended_at_us = Some(now.us());
        if let Err(e) = run.transition(state, now.ms(), cause) {
            tracing::warn!(run_id = %finished.run_id, worker, error = %e, "ignoring a finish report");
            return Ok(());
        }
        if run.started_at_ms.is_none() {
            // Never reported as started (it failed to start, or was killed first):
            // the reported duration is all we know.
            run.started_at_ms = Some(now.ms().saturating_sub(finished.duration_ms));
        }
        let run = run.clone();
        self.retire(&run, now, out)
    }

    /// A run this worker had, which the broker has already given up as lost (the worker
    /// was cut off past its lease), and which has not had its late result yet.
    pub(crate) fn given_up_run(
        &self,
        worker: &str,
        run_id: &str,
    ) -> StoreResult<Option<RunRecord>> {
        Ok(self.store.run(run_id)?.filter(|run| {
            run.state == RunState::Lost
                && run.worker.as_deref() == Some(worker)
                && run.late_result.is_none()
        }))
    }

    /// The end of a run reported after the broker gave the run up: kept on the run as
    /// its late result (shown, never dropped); its state stays `lost`, and what followed
    /// that (a retry) stands.
    fn late_result(&mut self, worker: &str, finished: RunFinished, now: Now) -> StoreResult<()> {
        let Some(mut run) = self.given_up_run(worker, &finished.run_id)? else {
            tracing::info!(run_id = %finished.run_id, worker, "report for a run that already ended, or again; ignored");
            return Ok(());
        };
        tracing::warn!(run_id = %run.id, worker, outcome = %finished.outcome.describe(), "a run given up as lost reported its end late: kept on the run");
        run.late_result = Some(LateResult {
            outcome: finished.outcome,
            duration_ms: finished.duration_ms,
            log_bytes: finished.log_bytes,
            reported_at_ms: now.ms(),
        });
        self.store.put_run(&run)?;
        self.tables.logs.forget(&run.id);
        self.changes.runs.insert(run.id);
        Ok(())
    }
}
