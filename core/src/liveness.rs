//! Time-driven work: the tick, worker timeouts, and workers going offline.

use crate::store::{Store, StoreResult};
use crate::Now;
use crate::{format_ms, ms, Core, Outbox};
use jobcast_protocol::message::topic;
use jobcast_protocol::{Event, RunState, DEFAULT_KILL_GRACE_MS};

/// Beyond a silent worker's lease and kill grace, before its running runs are given up:
/// the worker looks at its lease every quarter second, a killed tree takes a moment to be
/// reaped, and the two clocks may run at slightly different rates.
pub const LEASE_MARGIN_MS: u64 = 2_000;

impl<S: Store> Core<S> {
    /// Time-driven work: worker timeouts, ping deadlines, heartbeats and re-announcing
    /// queued work. Call it often (every 100 ms or so); it does each thing when due.
    pub fn tick(&mut self, now_us: u64, out: &mut Outbox) -> StoreResult<()> {
        let now = Now::from_us(now_us);
        // Held ticks judged first: one missed while the broker was down does not count
        // against the overlap of the job's tick due now.
        self.release_delayed(now, out)?;
        self.schedule_due(now, out)?;
        for result in self.tables.pings.expired(now_us) {
            result.send(out);
        }
        self.answer_expired_reads(now, out);
        if now.ms() >= self.process.next_alive_ms {
            // Once per heartbeat interval, not per batch: these look at every session
            // and every active run, and timeouts are several intervals long anyway.
            self.process.next_alive_ms = now.ms() + self.config.heartbeat_interval_ms;
            self.check_liveness(now, out)?;
            self.check_alerts(now, out)?;
            out.publish(
                topic::ALL.to_string(),
                Event::BrokerAlive {
                    boot_id: self.process.boot_id,
                    time_ms: now.ms(),
                },
            );
            let queued: std::collections::BTreeMap<String, u32> = self
                .tables
                .runs
                .queued_by_pool()
                .into_iter()
                .map(|(pool, n)| (pool, n.min(u64::from(u32::MAX)) as u32))
                .collect();
            self.series.queued(&queued, now.ms());
            // Re-announce queued work, so a lost wake-up only delays it.
            for pool in self.tables.runs.pools_with_queued() {
                self.wake(&pool, out);
            }
        }
        self.serve_waiting_claims(now, out)?;
        // Before retention's step, which reads the store's runs and counts them.
        self.write_runs()?;
        self.prune_step(now, out)?;
        self.series.save(&mut self.store, now.ms(), false)?;
        // Last in every batch: whatever ended or went in it is counted in the same commit.
        self.stored.given_up.save(&mut self.store)?;
        self.stored.finished.save(&mut self.store)
    }

    /// Workers silent past the timeout go offline; the runs of workers that are not
    /// connected are given up once their worker cannot be running them any more.
    pub(crate) fn check_liveness(&mut self, now: Now, out: &mut Outbox) -> StoreResult<()> {
        for run_id in self.stored.given_up.expire(now.ms()) {
            tracing::info!(
                run_id,
                "a run given up as lost: no longer waiting for its late result"
            );
            self.tables.logs.forget(&run_id);
        }
        let timeout = self.config.worker_timeout_ms;
        let silent = self.tables.workers.silent_for(timeout, now.ms());
        for worker in silent {
            tracing::warn!(
                worker,
                "worker offline: silent past the timeout; its runs are given up when its lease has passed"
            );
            self.worker_gone(&worker)?;
        }
        self.give_up_runs_of_absent_workers(now, out)
    }

    /// When the runs of a worker that is not connected are given up (`lost`), counted from
    /// when it was last heard, or from this broker's start (it may have been heard just
    /// before a restart):
    /// - a running run after the worker's lease, its kill grace and [`LEASE_MARGIN_MS`]:
    ///   by then a worker cut off has stopped it (unless its job keeps it), so its retry
    ///   never overlaps it;
    /// - a run granted and never reported started after `unstarted_grant_hold_ms`: the
    ///   worker may still come back (a stopped process, a long partition) and tell that it
    ///   never started it, and it is then queued again, not lost.
    fn give_up_runs_of_absent_workers(&mut self, now: Now, out: &mut Outbox) -> StoreResult<()> {
        let lease = self.config.worker_timeout_ms;
        let hold = self.config.unstarted_grant_hold_ms;
        let mut given_up = Vec::new();
        for run in self.tables.runs.iter() {
            let Some(worker) = run.worker.as_deref() else {
                continue;
            };
            if self.tables.workers.is_connected(worker) {
                continue;
            }
            let status = self.tables.workers.status(worker);
            let since = status
                .map_or(0, |s| s.last_seen_ms)
                .max(self.process.booted_at_ms);
            let kill_grace = status.map_or(DEFAULT_KILL_GRACE_MS, |s| s.kill_grace_ms);
            if let Some(told) = self.tables.workers.revocation(worker) {
                // Told, the worker stops everything at once; untold, its lease does.
                let stopped_by = match told {
                    Some(at) => at + kill_grace + LEASE_MARGIN_MS,
                    None => since + lease + kill_grace + LEASE_MARGIN_MS,
                };
                if now.ms() > stopped_by {
                    given_up.push((
                        run.id.clone(),
                        format!("the key of worker {worker} was revoked"),
                    ));
                }
                continue;
            }
            let cause = match run.state {
                RunState::Running if now.ms() > since + lease + kill_grace + LEASE_MARGIN_MS => {
                    format!(
                        "worker {worker} silent since {}: its lease ({lease} ms) and kill grace ({kill_grace} ms) have passed",
                        format_ms(since)
                    )
                }
                RunState::Assigned if now.ms() > since + hold => format!(
                    "granted to worker {worker}, which did not come back within {hold} ms to start it or hand it back"
                ),
                _ => continue,
            };
            given_up.push((run.id.clone(), cause));
        }
        for (run_id, cause) in given_up {
            self.finish_as(&run_id, RunState::Lost, now, cause, out)?;
        }
        Ok(())
    }

    /// A reload removed or replaced the worker's key: its session ends, and its runs are
    /// given up once it has stopped them (told at its next request, or by its lease).
    pub fn revoke_worker(&mut self, worker: &str) -> StoreResult<()> {
        self.worker_gone(worker)?;
        self.tables.workers.revoke(worker);
        Ok(())
    }

    /// A request of a revoked worker was answered that its key is revoked.
    pub fn revoked_worker_told(&mut self, worker: &str, now_us: u64) {
        self.tables.workers.revocation_told(worker, ms(now_us));
    }

    /// The worker's session ends (silent, or it left); runs still on it stay until
    /// [`Self::give_up_runs_of_absent_workers`] or its next registration decides them.
    pub(crate) fn worker_gone(&mut self, worker: &str) -> StoreResult<()> {
        if let Some(status) = self.tables.workers.disconnect(worker) {
            self.store.put_worker(status)?;
            self.changes.workers = true;
        }
        Ok(())
    }
}
