//! `Pong`: a worker answers a ping.

use crate::ping_table::PingTable;
use crate::worker_table::WorkerTable;
use crate::Outbox;
use jobcast_protocol::WorkerInfo;

/// Handed the worker table and the pings: the worker's status takes what it says of
/// itself, and the ping's result goes out once every asked worker answered.
pub(super) fn pong(
    workers: &mut WorkerTable,
    pings: &mut PingTable,
    worker: &str,
    (ping_id, info): (u64, WorkerInfo),
    now_us: u64,
    out: &mut Outbox,
) {
    if let Some(status) = workers.status_mut(worker) {
        status.version = info.version.clone();
        status.draining = info.draining;
    }
    if let Some(result) = pings.answer(ping_id, worker, info, now_us) {
        result.send(out);
    }
}
