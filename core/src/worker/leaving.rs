//! `Leaving`: a worker that is exiting (drained, or stopped with nothing running) is
//! offline at once, rather than shown online until the worker timeout.

use crate::store::Store;
use crate::{Core, CoreError, Handled, Outbox};
use jobcast_protocol::Reply;

impl<S: Store> Core<S> {
    pub(super) fn leaving(&mut self, worker: &str, out: &mut Outbox) -> Handled {
        if let Some(session) = self.tables.workers.session(worker) {
            if !session.runs.is_empty() {
                // Its runs would be marked lost: the worker reports their ends first.
                return Err(CoreError::StillHoldsRuns {
                    worker: worker.to_string(),
                    runs: session.runs.iter().cloned().collect(),
                });
            }
        }
        tracing::info!(worker, "worker left");
        self.cancel_waiting_claim(worker, out);
        self.worker_gone(worker)?;
        Ok(Reply::Ack)
    }
}
