//! `Claim`: runs granted to a worker, at once or to its waiting claim when they arrive.

use crate::limits::Limits;
use crate::store::{Store, StoreResult};
use crate::waiting_claims::{WaitingClaim, MAX_CLAIM_WAIT_MS};
use crate::worker_table::WorkerTable;
use crate::Now;
use crate::{nothing_granted, Core, Outbox, PeerId, ReplyTo};
use jobcast_protocol::message::topic;
use jobcast_protocol::{Event, GrantedRun, Reply};

/// A `Claim` as it arrived: the connection and request id to answer, when it waits.
pub(super) struct ClaimRequest<'a> {
    pub peer: &'a PeerId,
    pub id: u64,
    pub max: u32,
    pub wait_ms: u64,
}

impl<S: Store> Core<S> {
    /// Answers a claim with runs, or holds it until runs arrive or its wait ends (`None`).
    pub(super) fn claim_request(
        &mut self,
        worker: &str,
        request: ClaimRequest<'_>,
        now: Now,
        out: &mut Outbox,
    ) -> StoreResult<Option<Reply>> {
        // A newer claim stands for the worker's current free slots.
        self.cancel_waiting_claim(worker, out);
        let reply = self.claim(worker, request.max, now)?;
        let nothing = matches!(&reply, Reply::Granted { runs, .. } if runs.is_empty());
        let may_wait = self
            .tables
            .workers
            .session(worker)
            .is_some_and(|s| !s.draining && !s.drain_ordered);
        if nothing && request.wait_ms > 0 && request.max > 0 && may_wait {
            self.tables.workers.waiting_mut().insert(
                worker,
                WaitingClaim {
                    peer: request.peer.clone(),
                    id: request.id,
                    max: request.max,
                    deadline_ms: now.ms() + request.wait_ms.min(MAX_CLAIM_WAIT_MS),
                },
            );
            return Ok(None);
        }
        Ok(Some(reply))
    }

    pub(crate) fn claim(&mut self, worker: &str, max: u32, now: Now) -> StoreResult<Reply> {
        let Some(session) = self.tables.workers.session(worker) else {
            return Ok(nothing_granted());
        };
        if session.draining || session.drain_ordered || self.process.low_disk.is_some() {
            return Ok(nothing_granted());
        }
        // Never more than the worker's free slots and the ready runs it may hold, whatever
        // it asks for; ready runs only while no other worker waits for work it lacks
        // (they would sit on this one while another idles). Two busy workers that each
        // wait only to refill their ready runs do not hold each other's back.
        let others_waiting = self.tables.workers.others_lack_work(worker);
        let prefetch = if others_waiting {
            0
        } else {
            session.register.prefetch as usize
        };
        let room = (session.register.concurrency as usize + prefetch)
            .saturating_sub(session.runs.len())
            .min(max as usize);
        let pools = session.register.pools.clone();
        let cap = session.register.max_log_bytes;
        let instance = (session.register.instance != 0).then_some(session.register.instance);
        let mut granted = Vec::new();
        let limits = Limits {
            jobs: &self.tables.jobs,
            pools: &self.config.pool_limits,
        };
        let mut out_counts = limits.out_counts(&self.tables.runs);
        while granted.len() < room {
            let admit = |run: &_| {
                out_counts
                    .as_ref()
                    .is_none_or(|counts| limits.holding(run, counts).is_none())
            };
            let Some(run_id) = self.tables.runs.take_next_grantable(&pools, worker, admit) else {
                break;
            };
            let Some(run) = self
                .tables
                .runs
                .assign(&run_id, worker, instance, cap, now.ms())
            else {
                continue;
            };
            if let Some(counts) = out_counts.as_mut() {
                counts.add(run);
            }
            self.tables.unwritten.changed(run);
            self.changes.run(&run_id);
            // To a worker that keeps definitions, one this session was sent is named.
            granted.push(match self.tables.workers.session_mut(worker) {
                Some(session) if session.register.definition_ids => session
                    .definitions_sent
                    .grant(&mut self.tables.definitions, run),
                _ => GrantedRun::carrying(run, 0),
            });
            self.tables.workers.hold_run(worker, run_id);
        }
        let more_queued = pools.iter().any(|p| self.tables.runs.has_queued(p));
        Ok(Reply::Granted {
            runs: granted,
            more_queued,
        })
    }

    /// Tells `pool`'s workers that it has runs to hand out: the waiting claims first (at
    /// the end of the batch), then a wake-up event for whatever is left.
    pub(crate) fn wake(&mut self, pool: &str, out: &mut Outbox) {
        self.tables.workers.waiting_mut().mark_dirty(pool);
        out.publish(
            topic::pool(pool),
            Event::Wake {
                pool: pool.to_string(),
            },
        );
    }

    /// Answers the claims whose wait is over (with nothing), then grants runs queued in
    /// this batch to waiting claims, longest waiting first. Runs granted here are written
    /// in this batch, so they are durable when the answer goes out, as with any claim.
    pub(crate) fn serve_waiting_claims(&mut self, now: Now, out: &mut Outbox) -> StoreResult<()> {
        for (worker, claim) in self.tables.workers.waiting_mut().take_expired(now.ms()) {
            out.reply(
                &ReplyTo::peer(&claim.peer, &worker),
                claim.id,
                nothing_granted(),
            );
        }
        let dirty = self.tables.workers.waiting_mut().take_dirty();
        if dirty.is_empty() {
            return Ok(());
        }
        let mut granted_any = false;
        for worker in self.tables.workers.waiting().oldest_first() {
            if dirty.iter().all(|pool| !self.tables.runs.has_queued(pool)) {
                break;
            }
            let Some(session) = self.tables.workers.session(&worker) else {
                self.tables.workers.waiting_mut().remove(&worker);
                continue;
            };
            if !session.register.pools.iter().any(|p| dirty.contains(p)) {
                continue;
            }
            let Some(max) = self.tables.workers.waiting().get(&worker).map(|c| c.max) else {
                continue;
            };
            let reply = self.claim(&worker, max, now)?;
            if matches!(&reply, Reply::Granted { runs, .. } if !runs.is_empty()) {
                if let Some(claim) = self.tables.workers.waiting_mut().remove(&worker) {
                    out.reply(&ReplyTo::peer(&claim.peer, &worker), claim.id, reply);
                    granted_any = true;
                }
            }
        }
        if granted_any {
            // Wake-ups for pools the waiting claims emptied would only cause idle claims.
            out.events.retain(|(_, event)| match event {
                Event::Wake { pool } => self.tables.runs.has_queued(pool),
                _ => true,
            });
        }
        Ok(())
    }

    /// Answers `worker`'s waiting claim, if any, with nothing.
    pub(crate) fn cancel_waiting_claim(&mut self, worker: &str, out: &mut Outbox) {
        cancel_waiting_claim(&mut self.tables.workers, worker, out);
    }
}

/// Answers `worker`'s waiting claim, if any, with nothing (handed the worker table only).
pub(crate) fn cancel_waiting_claim(workers: &mut WorkerTable, worker: &str, out: &mut Outbox) {
    if let Some(claim) = workers.waiting_mut().remove(worker) {
        out.reply(
            &ReplyTo::peer(&claim.peer, worker),
            claim.id,
            nothing_granted(),
        );
    }
}
