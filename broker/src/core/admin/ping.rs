//! `Ping`: asks workers to answer over PUB, and collects the answers until a deadline.

use crate::core::{Core, Handled, Outbox, PendingPing, ReplyTo};
use crate::store::Store;
use jobcast_protocol::message::topic;
use jobcast_protocol::{Event, PingAnswer, Reply};

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
            Some(w) if self.sessions.contains_key(&w) || self.workers.contains_key(&w) => vec![w],
            Some(w) => return Err(self.unknown_worker(&w)),
            None => self.sessions.keys().cloned().collect(),
        };
        if targets.is_empty() {
            return Ok(Some(Reply::PingResult { workers: vec![] }));
        }
        let ping_id = self.next_ping_id;
        self.next_ping_id += 1;
        for w in &targets {
            if self.sessions.contains_key(w) {
                out.publish(topic::worker(w), Event::Ping { ping_id });
            }
        }
        self.pings.insert(
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

    pub(in crate::core) fn answer_ping(&mut self, ping_id: u64, out: &mut Outbox) {
        let Some(ping) = self.pings.remove(&ping_id) else {
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
