//! The run table: creating runs, queueing them, and retiring them when they end.

use crate::scheduling::NewRun;
use crate::store::{Store, StoreResult};
use crate::Now;
use crate::{Core, Observation, Outbox};
use jobcast_protocol::{RunRecord, RunRef, RunState};
use rand::RngCore;

/// Whether `run` is a grant to worker process `instance` that was never reported
/// started: such a run provably did not run, and is resent rather than lost. The one rule
/// for registrations and heartbeats alike.
pub(crate) fn unstarted_grant_to(run: &RunRecord, instance: u64) -> bool {
    run.state == RunState::Assigned && instance != 0 && run.worker_instance == Some(instance)
}

impl<S: Store> Core<S> {
    /// No late report can come for a run given up as lost (its worker said it does not
    /// hold it).
    pub(crate) fn stop_waiting_for(&mut self, run_id: &str) {
        self.stored.given_up.remove(run_id);
        self.tables.logs.forget(run_id);
    }

    /// A random run id that no run has, in memory or stored.
    pub(crate) fn new_run_id(&mut self) -> StoreResult<String> {
        loop {
            let id = format!("{:016x}", self.ids.rng.next_u64());
            if !self.tables.runs.contains(&id) && !self.store.run_id_taken(&id)? {
                return Ok(id);
            }
        }
    }

    /// Creates a run, unless one with its derived id exists already (then `None`).
    pub(crate) fn create_run(
        &mut self,
        new: NewRun,
        now: Now,
        out: &mut Outbox,
    ) -> StoreResult<Option<RunRef>> {
        let id = match new.id {
            Some(id) => {
                if self.tables.runs.contains(&id)
                    || (new.may_exist && self.store.run(&id)?.is_some())
                {
                    return Ok(None);
                }
                id
            }
            None => self.new_run_id()?,
        };
        let seq = self.ids.next_seq;
        self.ids.next_seq += 1;
        if !crate::scheduling::is_held_tick(new.attempt, new.not_before_ms) {
            self.ids.other_run_seq = seq;
        }
        let run = RunRecord {
            attempt: new.attempt,
            scheduled_at_ms: new.scheduled_at_ms,
            parent: new.parent,
            first_attempt: new.first_attempt,
            pinned_worker: new.pinned_worker,
            not_before_ms: new.not_before_ms,
            created_at_us: now.us(),
            schedule_id: new.schedule_id,
            params: new.params,
            priority: new.priority,
            ..RunRecord::queued(id, seq, new.spec, now.ms(), new.cause)
        };
        self.tables.unwritten.created(&run);
        self.changes.run(&run.id);
        let created = RunRef::of(&run);
        // Queued before it is moved into the table (the record is not copied again).
        if self.tables.runs.enqueue(&run, now.ms()) {
            self.wake(&run.pool, out);
        }
        self.tables.runs.activate(run);
        Ok(Some(created))
    }

    /// Writes a run that reached a terminal state, forgets it from memory, and does what
    /// follows its end (retry, chain, notification).
    pub(crate) fn retire(
        &mut self,
        run: &RunRecord,
        now: Now,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        self.tables.unwritten.write_leaving(run, &mut self.store)?;
        self.changes.run(&run.id);
        self.stored
            .finished
            .ended(run.spec.team.as_deref(), run.state);
        let ran_ms = run.duration_ms().unwrap_or(0);
        self.series
            .ended(&run.job, &run.pool, run.state, ran_ms, now.ms());
        out.observations.push(Observation::Ended {
            job: run.job.clone(),
            state: run.state,
            ran_ms: run.duration_ms(),
        });
        self.tables.runs.deactivate(run);
        let held = self.tables.log_waiters.run_ended(&run.id);
        self.answer_held_reads(run, held, out);
        match (&run.worker, run.state) {
            // Its worker may still be running it, and report its output and end late:
            // the output it sent is still counted against its cap.
            (Some(worker), RunState::Lost) => {
                let waiting = crate::given_up::GivenUp {
                    worker: worker.clone(),
                    log_cap: run.log_cap,
                    at_ms: now.ms(),
                };
                for evicted in self.stored.given_up.add(&run.id, waiting) {
                    tracing::warn!(run_id = %evicted, "too many runs given up as lost: no longer waiting for this one's late result");
                    self.tables.logs.forget(&evicted);
                }
            }
            _ => self.tables.logs.forget(&run.id),
        }
        if let Some(worker) = &run.worker {
            self.tables.workers.run_ended(worker, &run.id);
        }
        self.tables.workers.waiting_mut().mark_dirty(&run.pool);
        self.after_end(run, now, out)
    }

    pub(crate) fn finish_as(
        &mut self,
        run_id: &str,
        state: RunState,
        now: Now,
        cause: String,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        let Some(run) = self.tables.runs.get_mut(run_id) else {
            return Ok(());
        };
        if let Err(e) = run.transition(state, now.ms(), cause.clone()) {
            tracing::warn!(run_id, error = %e, "cannot end run");
            return Ok(());
        }
        tracing::warn!(run_id, %state, %cause, "run ended by the broker");
        let run = run.clone();
        self.retire(&run, now, out)
    }
}
