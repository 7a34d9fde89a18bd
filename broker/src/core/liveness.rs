//! Time-driven work: the tick, worker timeouts, and workers going offline.

use crate::core::{ms, Core, Outbox};
use crate::store::{Store, StoreResult};
use jobcast_protocol::message::topic;
use jobcast_protocol::{Event, RunState};

impl<S: Store> Core<S> {
    /// Time-driven work: worker timeouts, ping deadlines, heartbeats and re-announcing
    /// queued work. Call it often (every 100 ms or so); it does each thing when due.
    pub fn tick(&mut self, now_us: u64, out: &mut Outbox) -> StoreResult<()> {
        let now = ms(now_us);
        self.set_clock(now_us);
        self.schedule_due(now, out)?;
        self.release_delayed(now, out);
        self.prune_step(now)?;
        let due: Vec<u64> = self
            .pings
            .pending
            .iter()
            .filter(|(_, p)| p.deadline_us <= now_us)
            .map(|(id, _)| *id)
            .collect();
        for ping_id in due {
            self.answer_ping(ping_id, out);
        }
        if now >= self.next_alive_ms {
            // Once per heartbeat interval, not per batch: these look at every session
            // and every active run, and timeouts are several intervals long anyway.
            self.next_alive_ms = now + self.config.heartbeat_interval_ms;
            self.check_liveness(now, out)?;
            self.check_alerts(now, out)?;
            out.publish(
                topic::ALL.to_string(),
                Event::BrokerAlive {
                    boot_id: self.boot_id,
                    time_ms: now,
                },
            );
            // Re-announce queued work, so a lost wake-up only delays it.
            for pool in self.runs.pools_with_queued() {
                self.wake(&pool, out);
            }
        }
        self.serve_waiting_claims(now, out)?;
        // Last in every batch: whatever ended or went in it is counted in the same commit.
        self.finished.save(&mut self.store)
    }

    /// Workers silent past the timeout go offline; runs of workers that never came back
    /// after this broker started are lost.
    pub(in crate::core) fn check_liveness(
        &mut self,
        now: u64,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        let timeout = self.config.worker_timeout_ms;
        let silent: Vec<String> = self
            .workers
            .sessions
            .iter()
            .filter(|(_, s)| now.saturating_sub(s.last_seen_ms) > timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for worker in silent {
            tracing::warn!(worker, "worker offline: silent past the timeout");
            self.worker_gone(
                &worker,
                now,
                format!("worker {worker} silent for over {timeout} ms"),
                out,
            )?;
        }
        // Runs left on workers that never came back after this broker started.
        if now.saturating_sub(self.booted_at_ms) > timeout {
            let orphans: Vec<(String, String)> = self
                .runs
                .active
                .values()
                .filter_map(|r| {
                    let w = r.worker.as_ref()?;
                    (!self.workers.sessions.contains_key(w)).then(|| (r.id.clone(), w.clone()))
                })
                .collect();
            for (run_id, worker) in orphans {
                self.finish_as(
                    &run_id,
                    RunState::Lost,
                    now,
                    format!("worker {worker} did not come back within {timeout} ms"),
                    out,
                )?;
            }
        }
        Ok(())
    }

    pub(in crate::core) fn worker_gone(
        &mut self,
        worker: &str,
        now: u64,
        cause: String,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        let Some(session) = self.workers.sessions.remove(worker) else {
            return Ok(());
        };
        self.workers.waiting.remove(worker);
        for run_id in session.runs {
            self.finish_as(&run_id, RunState::Lost, now, cause.clone(), out)?;
        }
        if let Some(status) = self.workers.statuses.get_mut(worker) {
            status.online = false;
            status.running.clear();
            status.last_seen_ms = session.last_seen_ms;
            self.store.put_worker(status)?;
            self.changes.workers = true;
        }
        Ok(())
    }
}
