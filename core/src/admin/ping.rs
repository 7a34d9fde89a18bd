//! `Ping`: asks workers to answer over PUB, and collects the answers until a deadline.

use crate::store::Store;
use crate::{Core, Handled, Outbox, ReplyTo};
use jobcast_protocol::message::topic;
use jobcast_protocol::{Event, PingAnswer, Reply, WorkerInfo};
use std::collections::BTreeMap;

/// Pings waiting for their answers, by ping id.
pub(crate) struct Pings {
    pub pending: BTreeMap<u64, PendingPing>,
    pub next_id: u64,
}

impl Default for Pings {
    fn default() -> Self {
        Pings {
            pending: BTreeMap::new(),
            next_id: 1,
        }
    }
}

pub(crate) struct PendingPing {
    reply_to: ReplyTo,
    id: u64,
    pub sent_at_us: u64,
    pub deadline_us: u64,
    /// Each asked worker's round trip and answer, once it answered.
    pub answers: BTreeMap<String, Option<(u64, WorkerInfo)>>,
}

/// A `Ping` as asked: whom, how long to wait, and where the answer goes.
pub(super) struct Asked<'a> {
    pub reply_to: &'a ReplyTo,
    pub id: u64,
    /// One worker, or all connected ones.
    pub worker: Option<String>,
    pub timeout_ms: u64,
}

impl<S: Store> Core<S> {
    /// Publishes the ping; the answer goes out when every target answered or the
    /// deadline passed (`None` now), or at once when there is nobody to ask.
    pub(super) fn ping(
        &mut self,
        asked: Asked<'_>,
        now_us: u64,
        out: &mut Outbox,
    ) -> Handled<Option<Reply>> {
        let targets: Vec<String> = match asked.worker {
            Some(w)
                if self.workers.sessions.contains_key(&w)
                    || self.workers.statuses.contains_key(&w) =>
            {
                vec![w]
            }
            Some(w) => return Err(self.workers.unknown(&w)),
            None => self.workers.sessions.keys().cloned().collect(),
        };
        if targets.is_empty() {
            return Ok(Some(Reply::PingResult { workers: vec![] }));
        }
        let ping_id = self.pings.next_id;
        self.pings.next_id += 1;
        for w in &targets {
            if self.workers.sessions.contains_key(w) {
                out.publish(topic::worker(w), Event::Ping { ping_id });
            }
        }
        self.pings.pending.insert(
            ping_id,
            PendingPing {
                reply_to: asked.reply_to.clone(),
                id: asked.id,
                sent_at_us: now_us,
                deadline_us: now_us + asked.timeout_ms.clamp(10, 60_000) * 1_000,
                answers: targets.into_iter().map(|w| (w, None)).collect(),
            },
        );
        Ok(None)
    }

    pub(crate) fn answer_ping(&mut self, ping_id: u64, out: &mut Outbox) {
        let Some(ping) = self.pings.pending.remove(&ping_id) else {
            return;
        };
        let workers = ping
            .answers
            .into_iter()
            .map(|(worker, answer)| PingAnswer {
                worker,
                rtt_us: answer.as_ref().map(|(rtt, _)| *rtt),
                info: answer.map(|(_, info)| info),
            })
            .collect();
        out.reply(&ping.reply_to, ping.id, Reply::PingResult { workers });
    }
}
