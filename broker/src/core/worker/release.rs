//! `Release`: a draining worker hands back runs it never started.

use crate::core::{Core, Outbox};
use crate::store::{Store, StoreResult};
use jobcast_protocol::RunState;

impl<S: Store> Core<S> {
    pub(in crate::core) fn release(
        &mut self,
        worker: &str,
        run_ids: &[String],
        now: u64,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        for run_id in run_ids {
            let Some(run) = self.runs.active.get_mut(run_id) else {
                continue;
            };
            if run.worker.as_deref() != Some(worker) || run.state != RunState::Assigned {
                continue;
            }
            if run
                .transition(
                    RunState::Queued,
                    now,
                    format!("released unstarted by {worker}"),
                )
                .is_err()
            {
                continue;
            }
            run.worker = None;
            run.worker_instance = None;
            self.store.put_run(run)?;
            self.changes.runs.insert(run.id.clone());
            let run = run.clone();
            self.runs.enqueue(&run, self.clock_ms());
            self.wake(&run.pool, out);
            if let Some(session) = self.workers.sessions.get_mut(worker) {
                session.runs.remove(run_id);
            }
        }
        Ok(())
    }
}
