//! `Ping`: asks workers to answer over PUB; the answers are collected in the
//! [`crate::ping_table::PingTable`] until every worker answered or the wait ended.

use crate::ping_table::PingTable;
use crate::worker_table::WorkerTable;
use crate::{Handled, Outbox, ReplyTo};
use jobcast_protocol::message::topic;
use jobcast_protocol::{Event, Reply};

/// A `Ping` as asked: whom, how long to wait, and where the answer goes.
pub(super) struct Asked<'a> {
    pub reply_to: &'a ReplyTo,
    pub id: u64,
    /// One worker, or all connected ones.
    pub worker: Option<String>,
    pub timeout_ms: u64,
}

/// Handed the worker table and the pings: publishes the ping; the answer goes out when
/// every target answered or the deadline passed (`None` now), or at once when there is
/// nobody to ask.
pub(super) fn ping(
    workers: &WorkerTable,
    pings: &mut PingTable,
    asked: Asked<'_>,
    now_us: u64,
    out: &mut Outbox,
) -> Handled<Option<Reply>> {
    let targets: Vec<String> = match asked.worker {
        Some(w) if workers.is_known(&w) => vec![w],
        Some(w) => return Err(workers.unknown(&w)),
        None => workers.connected().cloned().collect(),
    };
    if targets.is_empty() {
        return Ok(Some(Reply::PingResult { workers: vec![] }));
    }
    let ping_id = pings.start(
        asked.reply_to,
        asked.id,
        targets.clone(),
        now_us,
        asked.timeout_ms,
    );
    for w in &targets {
        if workers.is_connected(w) {
            out.publish(topic::worker(w), Event::Ping { ping_id });
        }
    }
    Ok(None)
}
