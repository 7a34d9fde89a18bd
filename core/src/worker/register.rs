//! `Register`: a worker starts a session; the runs it reports are reconciled.

use crate::error::listed;
use crate::runs::unstarted_grant_to;
use crate::store::Store;
use crate::Now;
use crate::{Core, CoreError, Handled, Outbox, PeerId, Session};
use jobcast_protocol::{names, Register, Reply, RunState, WorkerStatus};
use std::collections::BTreeSet;

impl<S: Store> Core<S> {
    pub(crate) fn register(
        &mut self,
        peer: &PeerId,
        worker: &str,
        register: Register,
        now: Now,
        out: &mut Outbox,
    ) -> Handled {
        const MAX_PREFETCH: u32 = 1024;
        names::validate("worker id", worker)?;
        for pool in &register.pools {
            names::validate("pool", pool)?;
        }
        if register.concurrency == 0 {
            return Err(CoreError::NoConcurrency);
        }
        // Ready runs sit on one worker while others may be free: at most this many,
        // whatever it declares (the bound its own configuration enforces).
        if register.prefetch > MAX_PREFETCH {
            return Err(CoreError::TooMuchPrefetch { max: MAX_PREFETCH });
        }
        if let Some(allowed) = self.config.worker_pools.get(worker) {
            if let Some(pool) = register.pools.iter().find(|p| !allowed.contains(*p)) {
                tracing::warn!(
                    worker,
                    pool,
                    "register refused: pool not allowed for this key"
                );
                return Err(CoreError::PoolNotAllowed {
                    worker: worker.to_string(),
                    pool: pool.clone(),
                    allowed: listed(allowed.iter()),
                });
            }
        }
        // The broker decides how much log it stores, not the worker.
        let mut register = register;
        register.max_log_bytes = register.max_log_bytes.min(self.config.max_log_bytes);
        let reported: BTreeSet<&String> = register.running.iter().collect();
        // What earlier processes of this worker started (their ledger on the host), if
        // the worker can tell.
        let earlier_started: Option<BTreeSet<&str>> = register
            .earlier_started
            .as_ref()
            .map(|ids| ids.iter().map(String::as_str).collect());
        let ours: Vec<(String, bool, bool)> = self
            .tables
            .runs
            .out_on(worker)
            .map(|r| {
                let never_started = r.state == RunState::Assigned
                    && earlier_started
                        .as_ref()
                        .is_some_and(|started| !started.contains(r.id.as_str()));
                (
                    r.id.clone(),
                    unstarted_grant_to(r, register.instance),
                    never_started,
                )
            })
            .collect();
        let mut kept = BTreeSet::new();
        let mut requeued = Vec::new();
        for (run_id, unstarted_grant, never_started) in ours {
            if reported.contains(&run_id) {
                kept.insert(run_id);
            } else if unstarted_grant {
                // Granted to this very process, which does not hold it: the answer to its
                // claim was lost or is still on its way, and the process starts only runs
                // it holds. Nothing ran; the orders below resend the grant (a late answer
                // names the same run, which the worker starts once).
                kept.insert(run_id);
            } else if never_started {
                // Granted to an earlier process of this worker, which its ledger says
                // never started it: queued again, for any worker.
                requeued.push(run_id);
            } else {
                // Started, or granted to a process that is gone: it may have been half
                // executed and must not run again silently.
                self.finish_as(
                    &run_id,
                    RunState::Lost,
                    now,
                    format!("worker {worker} registered without it (restarted or reconnected)"),
                    out,
                )?;
                self.stop_waiting_for(&run_id);
            }
        }
        for run_id in requeued {
            self.requeue_unstarted(
                worker,
                &run_id,
                format!("granted to an earlier process of {worker}, which never started it (its start ledger says so)"),
                now,
                out,
            )?;
        }
        let session = Session {
            peer: peer.clone(),
            last_seen_ms: now.ms(),
            runs: kept,
            draining: false,
            drain_ordered: false,
            definitions_sent: Default::default(),
            register,
        };
        let status = WorkerStatus {
            id: worker.to_string(),
            online: true,
            hostname: session.register.hostname.clone(),
            pid: session.register.pid,
            version: session.register.version.clone(),
            concurrency: session.register.concurrency,
            pools: session.register.pools.clone(),
            running: session.runs.iter().cloned().collect(),
            last_seen_ms: now.ms(),
            draining: false,
            kill_grace_ms: session.register.kill_grace_ms,
        };
        self.store.put_worker(&status)?;
        self.changes.workers = true;
        let running = session.register.running.clone();
        let pools = session.register.pools.clone();
        self.tables.workers.register(worker, session, status);
        tracing::info!(worker, "worker registered");
        // Work may be waiting for this worker's pools.
        for pool in pools {
            if self.tables.runs.has_queued(&pool) {
                self.wake(&pool, out);
            }
        }
        Ok(Reply::Registered {
            boot_id: self.process.boot_id,
            heartbeat_interval_ms: self.config.heartbeat_interval_ms,
            orders: self.orders_for(worker, &running),
            lease_ms: self.config.worker_timeout_ms,
            starts_in_ends: true,
            reports_together: true,
        })
    }
}
