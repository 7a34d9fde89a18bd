//! `Drain`: a worker is told to finish its runs and take no more.

use crate::store::Store;
use crate::{Core, Handled, Outbox};
use jobcast_protocol::message::topic;
use jobcast_protocol::{Event, Reply};

impl<S: Store> Core<S> {
    pub(super) fn drain(&mut self, worker: &str, actor: &str, out: &mut Outbox) -> Handled {
        let Some(session) = self.workers.session_mut(worker) else {
            return Err(self.workers.unknown(worker));
        };
        tracing::info!(actor, worker, "drain ordered");
        session.drain_ordered = true;
        out.publish(topic::worker(worker), Event::OrdersPending);
        self.cancel_waiting_claim(worker, out);
        Ok(Reply::Ack)
    }
}
