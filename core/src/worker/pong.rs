//! `Pong`: a worker answers a ping.

use crate::store::Store;
use crate::{Core, Outbox};
use jobcast_protocol::WorkerInfo;

impl<S: Store> Core<S> {
    pub(crate) fn pong(
        &mut self,
        worker: &str,
        ping_id: u64,
        info: WorkerInfo,
        now_us: u64,
        out: &mut Outbox,
    ) {
        if let Some(status) = self.workers.status_mut(worker) {
            status.version = info.version.clone();
            status.draining = info.draining;
        }
        if let Some(result) = self.pings.answer(ping_id, worker, info, now_us) {
            result.send(out);
        }
    }
}
