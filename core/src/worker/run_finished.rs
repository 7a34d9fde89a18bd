//! `RunFinished`: a run ended on its worker.

use crate::given_up::Lookup;
use crate::store::{Store, StoreResult};
use crate::Now;
use crate::{Core, Outbox};
use jobcast_protocol::{LateResult, RunFinished, RunRecord, RunState};

/// Whether a run that is not active is one given up as lost, waiting for its worker's
/// late report.
pub(crate) enum GivenUpRun {
    Waiting {
        log_cap: u64,
    },
    No,
    /// Perhaps (given up before the broker kept such runs): the store knows.
    AskStore,
}

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
        if let Some(started) = finished.started {
            // The start, reported with the end: taken as its own report would have been.
            if run.state == RunState::Assigned {
                self.run_started(
                    worker,
                    &finished.run_id,
                    started.pid,
                    started.spawned_at_us,
                    now,
                    out,
                )?;
            }
        }
        let Some(run) = self.tables.runs.get_mut(&finished.run_id) else {
            return Ok(());
        };
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
    /// was cut off past its lease), and which has not had its late result yet: known in
    /// memory, read from the store only if it may have been given up before the broker
    /// kept such runs.
    pub(crate) fn given_up_run(&self, worker: &str, run_id: &str, now: Now) -> GivenUpRun {
        match self.stored.given_up.lookup(run_id, now.ms()) {
            Lookup::Waiting(run) if run.worker == worker => GivenUpRun::Waiting {
                log_cap: run.log_cap,
            },
            Lookup::Waiting(_) | Lookup::Stray => GivenUpRun::No,
            Lookup::AskStore => GivenUpRun::AskStore,
        }
    }

    /// The stored record of a run [`Core::given_up_run`] names.
    pub(crate) fn stored_given_up_run(
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
        let stored = match self.given_up_run(worker, &finished.run_id, now) {
            GivenUpRun::No => None,
            // Once per run given up: its record is read to keep the result on it.
            GivenUpRun::Waiting { .. } | GivenUpRun::AskStore => {
                self.stored_given_up_run(worker, &finished.run_id)?
            }
        };
        let Some(mut run) = stored else {
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
        self.stop_waiting_for(&run.id);
        self.changes.run(&run.id);
        Ok(())
    }
}
