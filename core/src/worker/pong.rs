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
        if let Some(status) = self.workers.statuses.get_mut(worker) {
            status.version = info.version.clone();
            status.draining = info.draining;
        }
        let Some(ping) = self.pings.pending.get_mut(&ping_id) else {
            return;
        };
        if let Some(answer) = ping.answers.get_mut(worker) {
            *answer = Some((now_us.saturating_sub(ping.sent_at_us), info));
        }
        if ping.answers.values().all(Option::is_some) {
            self.answer_ping(ping_id, out);
        }
    }
}
