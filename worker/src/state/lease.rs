//! The worker's lease: as long as the broker answers, the worker may keep its runs;
//! once the lease passes unanswered, runs whose job says so are stopped.

use super::*;

impl WorkerState {
    /// An answer arrived to a request sent at `sent_ms`: the broker heard this worker
    /// after that, so the lease runs from there.
    pub(super) fn renew_lease(&mut self, sent_ms: u64, now_ms: u64) {
        self.lease_from_ms = self.lease_from_ms.max(sent_ms);
        if self.lease_lost && !self.lease_expired(now_ms) {
            self.lease_lost = false;
            tracing::info!("the broker answers again: lease renewed");
        }
    }

    pub(super) fn lease_expired(&self, now_ms: u64) -> bool {
        self.lease_ms
            .is_some_and(|lease| now_ms.saturating_sub(self.lease_from_ms) > lease)
    }

    /// Once the lease runs out, the runs going are stopped (unless their job says keep):
    /// the broker gives them up after the lease, the kill grace and a margin, and may
    /// then start their retries elsewhere.
    pub(super) fn check_lease(&mut self, now_ms: u64, actions: &mut Vec<Action>) {
        if self.lease_lost || !self.lease_expired(now_ms) {
            return;
        }
        self.lease_lost = true;
        let silent_ms = now_ms.saturating_sub(self.lease_from_ms);
        let mut stopped = Vec::new();
        for (run_id, done) in &self.held {
            if !done && !self.kept_on_broker_loss.contains(run_id) {
                stopped.push(run_id.clone());
            }
        }
        tracing::error!(
            silent_ms,
            stopped = stopped.len(),
            kept = self.busy_slots() as usize - stopped.len(),
            "no answer from the broker within the lease: stopping runs"
        );
        for run_id in stopped {
            self.stopped_for_lease.insert(run_id.clone(), silent_ms);
            actions.push(Action::Stop(run_id));
        }
    }
}
