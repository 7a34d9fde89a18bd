//! The pings waiting for their answers: who was asked, who answered and after how long,
//! and until when the broker waits. Publishing the ping and sending the result are the
//! `Ping` and `Pong` requests' (`admin/ping.rs`, `worker/pong.rs`).

use crate::{Outbox, ReplyTo};
use jobcast_protocol::{PingAnswer, Reply, WorkerInfo};
use std::collections::BTreeMap;

/// Longest and shortest wait for a ping's answers.
const MAX_WAIT_MS: u64 = 60_000;
const MIN_WAIT_MS: u64 = 10;

struct PendingPing {
    reply_to: ReplyTo,
    id: u64,
    sent_at_us: u64,
    deadline_us: u64,
    /// Each asked worker's round trip and answer, once it answered.
    answers: BTreeMap<String, Option<(u64, WorkerInfo)>>,
}

/// A ping's result, to send to whoever asked.
pub(crate) struct PingResult {
    pub reply_to: ReplyTo,
    pub id: u64,
    pub workers: Vec<PingAnswer>,
}

impl PingResult {
    pub fn send(self, out: &mut Outbox) {
        let workers = self.workers;
        out.reply(&self.reply_to, self.id, Reply::PingResult { workers });
    }
}

pub(crate) struct PingTable {
    pending: BTreeMap<u64, PendingPing>,
    next_id: u64,
}

impl Default for PingTable {
    fn default() -> Self {
        PingTable {
            pending: BTreeMap::new(),
            next_id: 1,
        }
    }
}

impl PingTable {
    /// A ping to `targets` sent at `now_us`, waiting `wait_ms` at most (clamped to
    /// 10 ms – 60 s); returns its id.
    pub fn start(
        &mut self,
        reply_to: &ReplyTo,
        id: u64,
        targets: Vec<String>,
        now_us: u64,
        wait_ms: u64,
    ) -> u64 {
        let ping_id = self.next_id;
        self.next_id += 1;
        self.pending.insert(
            ping_id,
            PendingPing {
                reply_to: reply_to.clone(),
                id,
                sent_at_us: now_us,
                deadline_us: now_us + wait_ms.clamp(MIN_WAIT_MS, MAX_WAIT_MS) * 1_000,
                answers: targets.into_iter().map(|w| (w, None)).collect(),
            },
        );
        ping_id
    }

    /// `worker` answered ping `ping_id` at `now_us`; returns the result once every asked
    /// worker has answered. An answer from a worker not asked, or to a ping over, is
    /// ignored.
    pub fn answer(
        &mut self,
        ping_id: u64,
        worker: &str,
        info: WorkerInfo,
        now_us: u64,
    ) -> Option<PingResult> {
        let ping = self.pending.get_mut(&ping_id)?;
        let answer = ping.answers.get_mut(worker)?;
        *answer = Some((now_us.saturating_sub(ping.sent_at_us), info));
        if ping.answers.values().all(Option::is_some) {
            self.finish(ping_id)
        } else {
            None
        }
    }

    /// The results of the pings whose wait ended at `now_us` (unanswered workers say so).
    pub fn expired(&mut self, now_us: u64) -> Vec<PingResult> {
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline_us <= now_us)
            .map(|(id, _)| *id)
            .collect();
        due.into_iter().filter_map(|id| self.finish(id)).collect()
    }

    /// When the first wait ends, if a ping waits.
    pub fn earliest_deadline_us(&self) -> Option<u64> {
        self.pending.values().map(|p| p.deadline_us).min()
    }

    /// Moves the pings' times with a step of the wall clock of `step_us` (signed), so
    /// that waits and round trips are measured as if it had not stepped.
    pub fn shift(&mut self, step_us: i64) {
        let shift = |t: u64| t.saturating_add_signed(step_us);
        for ping in self.pending.values_mut() {
            ping.sent_at_us = shift(ping.sent_at_us);
            ping.deadline_us = shift(ping.deadline_us);
        }
    }

    fn finish(&mut self, ping_id: u64) -> Option<PingResult> {
        let ping = self.pending.remove(&ping_id)?;
        let workers = ping
            .answers
            .into_iter()
            .map(|(worker, answer)| PingAnswer {
                worker,
                rtt_us: answer.as_ref().map(|(rtt, _)| *rtt),
                info: answer.map(|(_, info)| info),
            })
            .collect();
        Some(PingResult {
            reply_to: ping.reply_to,
            id: ping.id,
            workers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> WorkerInfo {
        WorkerInfo {
            version: "test".into(),
            hostname: "host".into(),
            pid: 1,
            concurrency: 1,
            pools: vec!["default".into()],
            running: vec![],
            uptime_ms: 0,
            rss_bytes: 0,
            draining: false,
            containment: String::new(),
        }
    }

    #[test]
    fn a_ping_ends_when_every_asked_worker_answered_with_their_round_trips() {
        let mut table = PingTable::default();
        let ping = table.start(&ReplyTo::Api, 3, vec!["w1".into(), "w2".into()], 1_000, 500);
        assert_eq!(table.earliest_deadline_us(), Some(501_000));
        assert!(
            table.answer(ping, "w9", info(), 1_500).is_none(),
            "not asked"
        );
        assert!(table.answer(ping, "w1", info(), 2_000).is_none());
        let done = table
            .answer(ping, "w2", info(), 4_000)
            .expect("all answered");
        assert_eq!(done.id, 3);
        let rtts: Vec<_> = done.workers.iter().map(|a| a.rtt_us).collect();
        assert_eq!(rtts, [Some(1_000), Some(3_000)]);
        assert!(table.answer(ping, "w1", info(), 5_000).is_none(), "over");
        assert_eq!(table.earliest_deadline_us(), None);
    }

    #[test]
    fn at_its_deadline_a_ping_ends_with_the_silent_workers_unanswered() {
        let mut table = PingTable::default();
        let ping = table.start(&ReplyTo::Api, 1, vec!["w1".into(), "w2".into()], 0, 0);
        assert_eq!(table.earliest_deadline_us(), Some(10_000), "10 ms at least");
        table.answer(ping, "w1", info(), 4_000);
        assert!(table.expired(9_999).is_empty());
        let ended = table.expired(10_000);
        assert_eq!(ended.len(), 1);
        let rtts: Vec<_> = ended[0].workers.iter().map(|a| a.rtt_us).collect();
        assert_eq!(rtts, [Some(4_000), None]);
        assert!(table.expired(u64::MAX).is_empty());
    }

    #[test]
    fn a_clock_step_moves_the_wait_and_the_round_trip_with_it() {
        let mut table = PingTable::default();
        let hour_us = 3_600_000_000_i64;
        let sent = 10 * hour_us as u64;
        let ping = table.start(&ReplyTo::Api, 1, vec!["w1".into()], sent, 1_000);
        table.shift(-hour_us);
        assert_eq!(
            table.earliest_deadline_us(),
            Some(sent - hour_us as u64 + 1_000_000)
        );
        let done = table
            .answer(ping, "w1", info(), sent - hour_us as u64 + 2_000)
            .expect("answered");
        assert_eq!(done.workers[0].rtt_us, Some(2_000));
    }
}
