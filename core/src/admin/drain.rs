//! `Drain`: a worker is told to finish its runs and take no more.

use crate::worker::cancel_waiting_claim;
use crate::worker_table::WorkerTable;
use crate::{Handled, Outbox};
use jobcast_protocol::message::topic;
use jobcast_protocol::{Event, Reply};

/// Handed the worker table: the drain is noted on the worker's session and the worker
/// told to fetch its orders; a claim it left waiting is answered with nothing.
pub(super) fn drain(
    workers: &mut WorkerTable,
    worker: &str,
    actor: &str,
    out: &mut Outbox,
) -> Handled {
    let Some(session) = workers.session_mut(worker) else {
        return Err(workers.unknown(worker));
    };
    tracing::info!(actor, worker, "drain ordered");
    session.drain_ordered = true;
    out.publish(topic::worker(worker), Event::OrdersPending);
    cancel_waiting_claim(workers, worker, out);
    Ok(Reply::Ack)
}
