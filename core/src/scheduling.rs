//! The scheduling half of the core: ticks, misfires, overlap, retries, chains,
//! auto-disable, enable/disable, and late or never-run detection.
//!
//! A tick is dealt with exactly once: the job's `last_tick_ms` moves past it in the same
//! group commit that records its run, and the run's id is derived from (job, tick), so a
//! tick decided twice (say, after a crash before the flush) names the same run, which is
//! never created twice.

use crate::job_table::JobTable;
use crate::schedule::{derived_run_id, Schedule};
use crate::store::{Store, StoreError, StoreResult};
use crate::Now;
use crate::{Changes, Core, Notification, Outbox};
use jobcast_protocol::{AlertKind, JobSpec, Misfire, Overlap, RunState};

/// Ticks older than this when the broker gets to them were missed (the broker was down
/// or stalled) and follow the job's misfire policy.
pub const MISFIRE_GRACE_MS: u64 = 5_000;
/// How long before its time a tick is decided, its run created and made durable, so that
/// at the time only the grant is left to do (and its commit): the making of a burst's runs
/// no longer stands between its ticks and their grants. Short, because what happens to
/// the job in between is judged again at the tick's time ([`Core::judge_at_its_time`]).
pub const DECIDE_AHEAD_MS: u64 = 100;
/// Most ticks looked at per job in one pass, so a long outage of a frequent job is
/// caught up in bounded steps.
const MAX_TICKS_PER_PASS: usize = 10_000;
/// Skipped ticks remembered per job.
pub(super) const RECENT_SKIPS: usize = 20;
pub(super) const DISABLED_POOLS: &str = "disabled_pools";

/// Everything needed to create a run.
pub(super) struct NewRun {
    pub spec: std::sync::Arc<JobSpec>,
    /// A derived id, or `None` for a random one.
    pub id: Option<String>,
    /// Whether a run with this derived id may have been made before this broker began
    /// acting (a tick at or before its start): only then is the store asked, a read on
    /// the loop. Ids derived from a run that ended are new by construction, since a run
    /// ends once.
    pub may_exist: bool,
    pub scheduled_at_ms: u64,
    pub cause: String,
    pub attempt: u32,
    pub parent: Option<String>,
    pub first_attempt: Option<String>,
    pub pinned_worker: Option<String>,
    pub not_before_ms: u64,
    pub schedule_id: Option<String>,
    /// Parameter values; the job's defaults unless set otherwise.
    pub params: jobcast_protocol::params::Params,
    /// The job's, unless set otherwise.
    pub priority: i32,
}

impl NewRun {
    /// A run of `spec` with its parameters' defaults.
    pub fn of(
        spec: impl Into<std::sync::Arc<JobSpec>>,
        scheduled_at_ms: u64,
        cause: impl Into<String>,
    ) -> NewRun {
        let spec = spec.into();
        NewRun {
            params: jobcast_protocol::params::carried(&spec.params, &Default::default()),
            priority: spec.priority,
            spec,
            id: None,
            may_exist: false,
            scheduled_at_ms,
            cause: cause.into(),
            attempt: 1,
            parent: None,
            first_attempt: None,
            pinned_worker: None,
            not_before_ms: 0,
            schedule_id: None,
        }
    }
}

/// Whether a run with this attempt and wait is a tick decided ahead of its time (made to
/// wait for it, where a retry waits for its back-off and any other run not at all).
pub(crate) fn is_held_tick(attempt: u32, not_before_ms: u64) -> bool {
    attempt == 1 && not_before_ms > 0
}

/// What a tick decided ahead comes to at its time.
enum Verdict {
    Go,
    Skip(&'static str),
    /// Go, once these runs of the job are told to stop.
    Replace(Vec<String>),
}

/// A scheduled run's cause, "scheduled for" its tick's time: the same text for every job
/// due at one time (a burst of them), so written once.
#[derive(Default)]
pub(crate) struct TickCause {
    tick_ms: Option<u64>,
    text: String,
}

impl TickCause {
    pub fn of(&mut self, tick_ms: u64) -> String {
        if self.tick_ms != Some(tick_ms) {
            self.text = format!("scheduled for {}", format_ms(tick_ms));
            self.tick_ms = Some(tick_ms);
        }
        self.text.clone()
    }
}

/// Writes `job`'s state, and notes it changed for live views (its state, and so its next
/// fire time, is what they show of it).
pub(crate) fn save_job_state(
    jobs: &JobTable,
    store: &mut impl Store,
    changes: &mut Changes,
    job: &str,
) -> StoreResult<()> {
    if let Some(state) = jobs.state(job) {
        store.put_job_state(job, state)?;
        changes.job(job);
    }
    Ok(())
}

impl<S: Store> Core<S> {
    pub(super) fn load_scheduling(&mut self, now: Now) -> StoreResult<()> {
        let disabled_pools = match self.store.setting(DISABLED_POOLS)? {
            // A setting that cannot be read is an error, not "no pool disabled": reading it
            // as empty would quietly re-enable every disabled pool.
            Some(bytes) => rmp_serde::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                what: "disabled pools setting",
                detail: e.to_string(),
            })?,
            None => Default::default(),
        };
        let states = self.store.job_states()?;
        self.tables
            .jobs
            .restore_scheduling(states, disabled_pools, now.ms());
        Ok(())
    }

    pub(super) fn save_job_state(&mut self, job: &str) -> StoreResult<()> {
        save_job_state(&self.tables.jobs, &mut self.store, &mut self.changes, job)
    }

    fn skip_tick(&mut self, job: &str, tick: u64, reason: &str) {
        tracing::info!(job, tick_ms = tick, reason, "tick skipped");
        let state = self.tables.jobs.state_entry(job);
        state.skipped_ticks += 1;
        state.recent_skips.push((tick, reason.to_string()));
        if state.recent_skips.len() > RECENT_SKIPS {
            state.recent_skips.remove(0);
        }
    }

    /// Deals with every job whose next tick is due.
    pub(super) fn schedule_due(&mut self, now: Now, out: &mut Outbox) -> StoreResult<()> {
        if self.process.low_disk.is_some() {
            // Held, not skipped: once space returns, each job's misfire policy judges
            // the ticks that came due meanwhile.
            return Ok(());
        }
        for job in self.tables.jobs.due(now.ms()) {
            self.schedule_job(&job, now, now.ms(), out)?;
        }
        let until = now.ms() + DECIDE_AHEAD_MS;
        for job in self.tables.jobs.ahead(until) {
            if self.may_decide_ahead(&job) {
                self.schedule_job(&job, now, until, out)?;
            } else {
                self.tables.jobs.defer(&job);
            }
        }
        Ok(())
    }

    /// Whether `job`'s coming tick can be decided before its time: nothing that may happen
    /// in between would have decided it otherwise, or it is judged again at the time. A
    /// job run on every worker waits (its runs depend on which workers are there), and so
    /// does one whose overlap policy (`skip`, `replace`) would look at a run still active
    /// now: it may end before the tick.
    fn may_decide_ahead(&self, job: &str) -> bool {
        let Some(spec) = self.tables.jobs.spec(job) else {
            return false;
        };
        !spec.policy.run_on_all_workers
            && self.tables.jobs.is_active(spec)
            && (matches!(spec.policy.overlap, Overlap::Queue | Overlap::Allow)
                || self.tables.runs.overlapping(job, None).next().is_none())
    }

    /// Decides `job`'s ticks up to `until`: at or before now, or ahead of their time.
    fn schedule_job(
        &mut self,
        job: &str,
        now: Now,
        until: u64,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        let (Some(spec), Some(schedule)) = (
            self.tables.jobs.shared_spec(job),
            self.tables.jobs.shared_schedule(job),
        ) else {
            self.tables.jobs.set_next_fire(job, None);
            return Ok(());
        };
        let (last, clock_era) = self
            .tables
            .jobs
            .state(job)
            .map_or((0, 0), |s| (s.last_tick_ms, s.clock_era));
        let ticks = schedule.ticks_between(last, until, MAX_TICKS_PER_PASS);
        let Some(&latest) = ticks.last() else {
            self.tables.jobs.compile(job);
            return Ok(());
        };
        // A job for every worker waits, after a broker start, until its pool's workers
        // that were online before have registered again (or the grace has passed):
        // deciding at the first one would give the tick to that worker alone.
        let waits_for_workers = spec.policy.run_on_all_workers;
        let grace_end = self.worker_grace_end();
        if waits_for_workers
            && now.ms() < grace_end
            && !self.tables.workers.back_for_pool(&spec.pool)
        {
            self.tables
                .jobs
                .set_next_fire(job, Some((now.ms() + 1_000).min(grace_end)));
            return Ok(());
        }
        // Ticks that waited for the workers are on time until the grace has ended.
        let due = |tick: u64| {
            if waits_for_workers && tick >= self.process.booted_at_ms {
                tick.max(grace_end.min(now.ms()))
            } else {
                tick
            }
        };
        // Ticks come in order and `due` never decreases, so the missed ones are the first.
        let (missed, on_time) = ticks.split_at(
            ticks.partition_point(|t| now.ms().saturating_sub(due(*t)) > MISFIRE_GRACE_MS),
        );
        // Which missed ticks still get a run, by the misfire policy: the last ones.
        let caught_up = match spec.policy.misfire {
            Misfire::Skip => 0,
            Misfire::Once => missed.len().min(1),
            Misfire::All => missed.len().min(spec.policy.max_catchup as usize),
        };
        let (skipped, catch_up) = missed.split_at(missed.len() - caught_up);
        for tick in skipped {
            self.skip_tick(job, *tick, "missed while the broker was not running");
        }
        // Each tick is judged against the runs active when it is decided, including the
        // ones earlier ticks of this pass started: `skip` never has two runs out, even
        // when a pass catches up several ticks.
        for tick in catch_up.iter().chain(on_time) {
            self.fire(&spec, &schedule, *tick, clock_era, now, out)?;
        }
        if let Some(state) = self.tables.jobs.state_mut(job) {
            state.last_tick_ms = latest;
        }
        self.save_job_state(job)?;
        self.tables
            .jobs
            .set_next_fire(job, schedule.next_after(latest));
        Ok(())
    }

    /// Until when, after a broker start, the absence of workers is not yet news: they
    /// reconnect and register within about a worker timeout.
    pub(super) fn worker_grace_end(&self) -> u64 {
        self.process.booted_at_ms + self.config.restart_grace_ms
    }

    /// One tick of a job: start a run, or record why not.
    fn fire(
        &mut self,
        spec: &std::sync::Arc<JobSpec>,
        schedule: &Schedule,
        tick: u64,
        clock_era: u32,
        now: Now,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        let job = spec.name.as_str();
        if !self.tables.jobs.is_active(spec) {
            self.skip_tick(job, tick, "job or pool disabled");
            return Ok(());
        }
        if schedule.is_excluded(tick) {
            self.skip_tick(job, tick, "inside an exclusion window");
            return Ok(());
        }
        // The tick's name: its time, and after the wall clock stepped back past ticks the
        // job had, which pass of those times it is.
        let tick_text = match clock_era {
            0 => tick.to_string(),
            era => format!("{tick}/{era}"),
        };
        let cause = self.process.tick_cause.of(tick);
        if !spec.policy.run_on_all_workers {
            if self.overlap_allows(spec, None, tick, now, out)? {
                let mut new = NewRun::of(spec.clone(), tick, cause);
                new.id = Some(derived_run_id(&[job, &tick_text]));
                new.may_exist = tick <= self.process.booted_at_ms;
                // Decided ahead: held until its time, then judged again and released.
                new.not_before_ms = if tick > now.ms() { tick } else { 0 };
                self.create_run(new, now, out)?;
            }
            return Ok(());
        }
        let workers = self.tables.workers.serving(&spec.pool);
        if workers.is_empty() {
            self.skip_tick(job, tick, "no live worker in the pool");
            out.notifications.push(Notification {
                kind: AlertKind::NoWorker,
                job: Some(job.to_string()),
                pool: Some(spec.pool.clone()),
                run_id: None,
                at_ms: now.ms(),
                text: format!(
                    "job {job}: no live worker in pool {} to run it on",
                    spec.pool
                ),
            });
            return Ok(());
        }
        let schedule_id = derived_run_id(&[job, &tick_text]);
        for worker in workers {
            // Each worker's copy overlaps only that worker's earlier copy.
            if !self.overlap_allows(spec, Some(&worker), tick, now, out)? {
                continue;
            }
            let mut new = NewRun::of(spec.clone(), tick, format!("{cause}, on every worker"));
            new.id = Some(derived_run_id(&[job, &tick_text, &worker]));
            new.may_exist = tick <= self.process.booted_at_ms;
            new.pinned_worker = Some(worker);
            new.schedule_id = Some(schedule_id.clone());
            self.create_run(new, now, out)?;
        }
        Ok(())
    }

    /// Whether a tick may start a run (pinned to `pinned`, for a job run on every worker)
    /// by the job's overlap policy, given the runs it overlaps; `replace` kills those.
    fn overlap_allows(
        &mut self,
        spec: &JobSpec,
        pinned: Option<&str>,
        tick: u64,
        now: Now,
        out: &mut Outbox,
    ) -> StoreResult<bool> {
        let job = spec.name.as_str();
        let overlapped: Vec<String> = self
            .tables
            .runs
            .overlapping(job, pinned)
            .map(|r| r.id.clone())
            .collect();
        if overlapped.is_empty() {
            return Ok(true);
        }
        match spec.policy.overlap {
            Overlap::Skip => {
                let reason = match pinned {
                    Some(worker) => format!("the previous run on {worker} is still active"),
                    None => "the previous run is still active".to_string(),
                };
                self.skip_tick(job, tick, &reason);
                Ok(false)
            }
            Overlap::Replace => {
                for run_id in overlapped {
                    self.kill(&run_id, "the scheduler (overlap = replace)", now, out)?;
                }
                Ok(true)
            }
            Overlap::Queue | Overlap::Allow => Ok(true),
        }
    }

    /// Moves runs whose wait has ended into their pool's queue: retries after their
    /// back-off, and ticks decided ahead at their time once judged again.
    pub(super) fn release_delayed(&mut self, now: Now, out: &mut Outbox) -> StoreResult<()> {
        if self.tables.jobs.version() != self.ids.jobs_version_seen {
            // The job table changed since the last release: runs made before now were, or
            // may have been, decided before the change (nothing changes it while they are
            // judged below).
            self.ids.jobs_version_seen = self.tables.jobs.version();
            self.ids.jobs_changed_seq = self.ids.next_seq;
        }
        let mut pools = std::collections::BTreeSet::new();
        for run_id in self.tables.runs.take_released(now.ms()) {
            let decided_ahead = self
                .tables
                .runs
                .get(&run_id)
                .is_some_and(|run| is_held_tick(run.attempt, run.not_before_ms));
            if decided_ahead && !self.judge_at_its_time(&run_id, now, out)? {
                continue;
            }
            let queued = self
                .tables
                .runs
                .queue_released(run_id, decided_ahead, &mut pools);
            if let (true, Some(run)) = (decided_ahead, queued) {
                // Written with the grant that usually follows in this batch.
                self.tables.unwritten.changed(run);
            }
        }
        for pool in pools {
            self.wake(&pool, out);
        }
        Ok(())
    }

    /// A tick decided ahead of its time, judged again at the time, as if it were decided
    /// only then: its job disabled, its schedule changed, the tick missed (the broker was
    /// down), or a run of the job started in between that the overlap policy does not let
    /// it run beside. Returns whether it goes to its queue; if not, it ends `cancelled`
    /// and the tick counts as skipped, as a tick decided at its time would have been.
    pub(crate) fn judge_at_its_time(
        &mut self,
        run_id: &str,
        now: Now,
        out: &mut Outbox,
    ) -> StoreResult<bool> {
        let (verdict, changed) = {
            let Some(run) = self.tables.runs.get(run_id) else {
                return Ok(false);
            };
            let missed = now.ms().saturating_sub(run.scheduled_at_ms) > MISFIRE_GRACE_MS;
            if run.seq >= self.ids.jobs_changed_seq && run.seq > self.ids.other_run_seq {
                // Nothing changed since it was decided (the usual case, and the one a
                // burst of ticks meets): its definition, state and runs are not looked up
                // again, each a lookup in memory gone cold since.
                if !(missed && run.spec.policy.misfire == Misfire::Skip) {
                    return Ok(true);
                }
            }
            let Some(spec) = self.tables.jobs.shared_spec(&run.job) else {
                return Ok(true);
            };
            let changed = !std::sync::Arc::ptr_eq(&spec, &run.spec);
            let verdict = if changed && spec.schedule != run.spec.schedule {
                Verdict::Skip("the job's schedule changed before its time")
            } else if !self.tables.jobs.is_active(&spec) {
                Verdict::Skip("job or pool disabled")
            } else if missed && spec.policy.misfire == Misfire::Skip {
                Verdict::Skip("missed while the broker was not running")
            } else {
                let mut others = self
                    .tables
                    .runs
                    .overlapping(&run.job, None)
                    .filter(|r| r.id != run_id);
                match spec.policy.overlap {
                    Overlap::Skip if others.next().is_some() => {
                        Verdict::Skip("the previous run is still active")
                    }
                    Overlap::Replace => Verdict::Replace(others.map(|r| r.id.clone()).collect()),
                    _ => Verdict::Go,
                }
            };
            (verdict, changed.then_some(spec))
        };
        match verdict {
            Verdict::Go => {}
            Verdict::Skip(reason) => {
                let Some(run) = self.tables.runs.get(run_id) else {
                    return Ok(false);
                };
                let (job, tick) = (run.job.clone(), run.scheduled_at_ms);
                self.skip_tick(&job, tick, reason);
                self.save_job_state(&job)?;
                let cause = format!("not run: {reason} (decided ahead of its time)");
                self.finish_as(run_id, RunState::Cancelled, now, cause, out)?;
                return Ok(false);
            }
            Verdict::Replace(others) => {
                for other in others {
                    self.kill(&other, "the scheduler (overlap = replace)", now, out)?;
                }
            }
        }
        // A definition changed in between (its schedule did not): the run is made of the
        // definition in force at its time, as it would have been then.
        if let (Some(spec), Some(run)) = (changed, self.tables.runs.get_mut(run_id)) {
            run.params = jobcast_protocol::params::carried(&spec.params, &Default::default());
            run.pool = spec.pool.clone();
            run.priority = spec.priority;
            run.spec = spec;
            self.tables.unwritten.changed(run);
            self.changes.run(run_id);
        }
        Ok(true)
    }

    /// When the core next has something to do by itself, in microseconds.
    pub fn next_wakeup_us(&self) -> u64 {
        let mut next_ms = self.process.next_alive_ms;
        if let Some(t) = self
            .tables
            .jobs
            .next_look(DECIDE_AHEAD_MS)
            .filter(|_| self.process.low_disk.is_none())
        {
            next_ms = next_ms.min(t);
        }
        if let Some(t) = self.tables.runs.next_release_ms() {
            next_ms = next_ms.min(t);
        }
        next_ms = next_ms.min(self.next_prune_ms());
        let mut next_us = next_ms.saturating_mul(1_000);
        if let Some(deadline) = self.tables.pings.earliest_deadline_us() {
            next_us = next_us.min(deadline);
        }
        if let Some(deadline) = self.tables.workers.waiting().earliest_deadline_ms() {
            next_us = next_us.min(deadline.saturating_mul(1_000));
        }
        if let Some(deadline) = self.tables.log_waiters.earliest_deadline_ms() {
            next_us = next_us.min(deadline.saturating_mul(1_000));
        }
        next_us
    }
}

/// An RFC 3339 rendering of a time in milliseconds, for causes and messages.
pub fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tick_cause_names_the_tick_asked_for_even_after_another() {
        let mut cause = TickCause::default();
        let (first, second) = (1_800_000_000_000, 1_800_000_005_000);
        assert_eq!(cause.of(first), "scheduled for 2027-01-15T08:00:00Z");
        assert_eq!(cause.of(first), "scheduled for 2027-01-15T08:00:00Z");
        assert_eq!(cause.of(second), "scheduled for 2027-01-15T08:00:05Z");
        assert_eq!(cause.of(first), "scheduled for 2027-01-15T08:00:00Z");
    }
}
