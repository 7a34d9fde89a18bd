//! `Release`: a worker hands back runs it never started (it is draining, or a grant
//! named a job definition it does not hold).

use crate::store::{Store, StoreResult};
use crate::Now;
use crate::{Core, Outbox};
use jobcast_protocol::RunState;

impl<S: Store> Core<S> {
    pub(crate) fn release(
        &mut self,
        worker: &str,
        run_ids: &[String],
        now: Now,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        // A worker hands a run back when it does not hold the definition its grant
        // named (or when draining, when it takes no more grants): carry them all again.
        if let Some(session) = self.tables.workers.session_mut(worker) {
            session.definitions_sent.forget();
        }
        for run_id in run_ids {
            self.requeue_unstarted(
                worker,
                run_id,
                format!("released unstarted by {worker}"),
                now,
                out,
            )?;
        }
        Ok(())
    }

    /// A run granted to `worker` that never started goes back to its pool's queue (for
    /// any worker); nothing if it is not such a run.
    pub(crate) fn requeue_unstarted(
        &mut self,
        worker: &str,
        run_id: &str,
        cause: String,
        now: Now,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        let Some(run) = self.tables.runs.get_mut(run_id) else {
            return Ok(());
        };
        if run.worker.as_deref() != Some(worker) || run.state != RunState::Assigned {
            return Ok(());
        }
        if run.transition(RunState::Queued, now.ms(), cause).is_err() {
            return Ok(());
        }
        run.worker = None;
        run.worker_instance = None;
        self.tables.unwritten.changed(run);
        self.changes.run(&run.id);
        let run = run.clone();
        self.tables.runs.enqueue(&run, now.ms());
        self.wake(&run.pool, out);
        self.tables.workers.drop_run(worker, run_id);
        Ok(())
    }
}
