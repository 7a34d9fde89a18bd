//! The scheduling half of the core: ticks, misfires, overlap, retries, chains,
//! auto-disable, enable/disable, and late or never-run detection.
//!
//! A tick is dealt with exactly once: the job's `last_tick_ms` moves past it in the same
//! group commit that records its run, and the run's id is derived from (job, tick), so a
//! tick decided twice (say, after a crash before the flush) names the same run, which is
//! never created twice.

use crate::core::{error, Core, Outbox};
use crate::schedule::{derived_run_id, Schedule};
use crate::store::{Store, StoreResult};
use jobcast_protocol::{
    names, Alert, AlertKind, EnableTarget, ErrorCode, JobSpec, JobState, JobView, Misfire, Overlap,
    Reply, RunRecord, RunState,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Ticks older than this when the broker gets to them were missed (the broker was down
/// or stalled) and follow the job's misfire policy.
pub const MISFIRE_GRACE_MS: u64 = 5_000;
/// Most ticks looked at per job in one pass, so a long outage of a frequent job is
/// caught up in bounded steps.
const MAX_TICKS_PER_PASS: usize = 10_000;
/// Skipped ticks remembered per job.
const RECENT_SKIPS: usize = 20;
const DISABLED_POOLS: &str = "disabled_pools";

/// Jobs by their next tick, earliest first.
#[derive(Debug, Default)]
pub struct FireQueue {
    by_job: HashMap<String, u64>,
    order: BTreeSet<(u64, String)>,
}

impl FireQueue {
    pub fn set(&mut self, job: &str, next: Option<u64>) {
        if let Some(old) = self.by_job.remove(job) {
            self.order.remove(&(old, job.to_string()));
        }
        if let Some(next) = next {
            self.by_job.insert(job.to_string(), next);
            self.order.insert((next, job.to_string()));
        }
    }

    pub fn get(&self, job: &str) -> Option<u64> {
        self.by_job.get(job).copied()
    }

    pub fn earliest(&self) -> Option<u64> {
        self.order.first().map(|(t, _)| *t)
    }

    /// Jobs whose next tick is at or before `now`.
    pub fn due(&self, now: u64) -> Vec<String> {
        self.order
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, job)| job.clone())
            .collect()
    }
}

/// A message for the notification webhooks.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Notification {
    pub kind: AlertKind,
    pub job: Option<String>,
    pub pool: Option<String>,
    pub run_id: Option<String>,
    pub at_ms: u64,
    /// One line for people (and Slack's `text`).
    pub text: String,
}

/// Everything needed to create a run.
pub(super) struct NewRun {
    pub spec: JobSpec,
    /// A derived id, or `None` for a random one.
    pub id: Option<String>,
    pub scheduled_at_ms: u64,
    pub cause: String,
    pub attempt: u32,
    pub parent: Option<String>,
    pub first_attempt: Option<String>,
    pub pinned_worker: Option<String>,
    pub not_before_ms: u64,
    pub schedule_id: Option<String>,
}

impl NewRun {
    pub fn of(spec: JobSpec, scheduled_at_ms: u64, cause: impl Into<String>) -> NewRun {
        NewRun {
            spec,
            id: None,
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

/// Finds a cycle in the child links of `jobs`, returning it as a path.
pub(super) fn find_cycle(jobs: &BTreeMap<String, JobSpec>) -> Option<Vec<String>> {
    fn visit(
        job: &str,
        jobs: &BTreeMap<String, JobSpec>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|j| j == job) {
            let mut cycle = path[start..].to_vec();
            cycle.push(job.to_string());
            return Some(cycle);
        }
        if done.contains(job) {
            return None;
        }
        path.push(job.to_string());
        if let Some(spec) = jobs.get(job) {
            for child in &spec.policy.children {
                if let Some(cycle) = visit(&child.job, jobs, path, done) {
                    return Some(cycle);
                }
            }
        }
        path.pop();
        done.insert(job.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for job in jobs.keys() {
        if let Some(cycle) = visit(job, jobs, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

impl<S: Store> Core<S> {
    pub(super) fn load_scheduling(&mut self, now: u64) -> StoreResult<()> {
        self.job_states = self.store.job_states()?.into_iter().collect();
        if let Some(bytes) = self.store.setting(DISABLED_POOLS)? {
            self.disabled_pools = rmp_serde::from_slice(&bytes).unwrap_or_default();
        }
        let names: Vec<String> = self.jobs.keys().cloned().collect();
        for name in names {
            self.job_states
                .entry(name.clone())
                .or_insert_with(|| JobState {
                    created_at_ms: now,
                    last_tick_ms: now,
                    ..Default::default()
                });
            self.compile_schedule(&name);
        }
        Ok(())
    }

    /// (Re)compiles a job's schedule and its next fire time.
    pub(super) fn compile_schedule(&mut self, job: &str) {
        let Some(spec) = self.jobs.get(job) else {
            self.schedules.remove(job);
            self.next_fire.set(job, None);
            self.first_due.remove(job);
            return;
        };
        match Schedule::for_job(spec) {
            Ok(schedule) => {
                let state = self.job_states.get(job).cloned().unwrap_or_default();
                self.next_fire
                    .set(job, schedule.next_after(state.last_tick_ms));
                match schedule.next_after(state.created_at_ms) {
                    Some(first) => self.first_due.insert(job.to_string(), first),
                    None => self.first_due.remove(job),
                };
                self.schedules.insert(job.to_string(), schedule);
            }
            Err(problem) => {
                // Stored before a validation rule existed: keep the job, run it by hand.
                tracing::error!(job, %problem, "job schedule cannot be used; the job runs only when enqueued");
                self.schedules.remove(job);
                self.next_fire.set(job, None);
                self.first_due.remove(job);
            }
        }
    }

    /// Checks a set of jobs for apply: schedules compile, children exist, no cycles.
    pub(super) fn check_jobs(&self, jobs: &[JobSpec]) -> Result<(), String> {
        let mut all = self.jobs.clone();
        for job in jobs {
            Schedule::for_job(job).map_err(|e| format!("job {:?}: {e}", job.name))?;
            all.insert(job.name.clone(), job.clone());
        }
        for job in jobs {
            for child in &job.policy.children {
                if !all.contains_key(&child.job) {
                    return Err(format!(
                        "job {:?} lists child {:?}, which is not defined",
                        job.name, child.job
                    ));
                }
            }
        }
        if let Some(cycle) = find_cycle(&all) {
            return Err(format!("the job chain loops: {}", cycle.join(" -> ")));
        }
        Ok(())
    }

    /// Whether ticks of `job` start runs now.
    pub(super) fn job_is_active(&self, job: &JobSpec) -> bool {
        job.enabled
            && !self.disabled_pools.contains(&job.pool)
            && self
                .job_states
                .get(&job.name)
                .is_none_or(|s| s.auto_disabled.is_none())
    }

    pub(super) fn save_job_state(&mut self, job: &str) -> StoreResult<()> {
        if let Some(state) = self.job_states.get(job) {
            self.store.put_job_state(job, state)?;
        }
        Ok(())
    }

    fn skip_tick(&mut self, job: &str, tick: u64, reason: &str) {
        tracing::info!(job, tick_ms = tick, reason, "tick skipped");
        let state = self.job_states.entry(job.to_string()).or_default();
        state.skipped_ticks += 1;
        state.recent_skips.push((tick, reason.to_string()));
        if state.recent_skips.len() > RECENT_SKIPS {
            state.recent_skips.remove(0);
        }
    }

    /// Deals with every job whose next tick is due.
    pub(super) fn schedule_due(&mut self, now: u64, out: &mut Outbox) -> StoreResult<()> {
        for job in self.next_fire.due(now) {
            self.schedule_job(&job, now, out)?;
        }
        Ok(())
    }

    fn schedule_job(&mut self, job: &str, now: u64, out: &mut Outbox) -> StoreResult<()> {
        let (Some(spec), Some(schedule)) = (
            self.jobs.get(job).cloned(),
            self.schedules.get(job).cloned(),
        ) else {
            self.next_fire.set(job, None);
            return Ok(());
        };
        let last = self
            .job_states
            .get(job)
            .map(|s| s.last_tick_ms)
            .unwrap_or(0);
        let ticks = schedule.ticks_between(last, now, MAX_TICKS_PER_PASS);
        let Some(&latest) = ticks.last() else {
            self.compile_schedule(job);
            return Ok(());
        };
        let (missed, on_time): (Vec<u64>, Vec<u64>) = ticks
            .iter()
            .partition(|t| now.saturating_sub(**t) > MISFIRE_GRACE_MS);
        // Which missed ticks still get a run, by the misfire policy.
        let catch_up: Vec<u64> = match spec.policy.misfire {
            Misfire::Skip => vec![],
            Misfire::Once => missed.last().copied().into_iter().collect(),
            Misfire::All => {
                let max = spec.policy.max_catchup as usize;
                missed[missed.len().saturating_sub(max)..].to_vec()
            }
        };
        for tick in &missed {
            if !catch_up.contains(tick) {
                self.skip_tick(job, *tick, "missed while the broker was not running");
            }
        }
        // Overlap is judged against the runs active before this pass, so that the
        // catch-up runs of one pass do not skip each other.
        let active_before: Vec<String> = self
            .active_by_job
            .get(job)
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default();
        for tick in catch_up.iter().chain(on_time.iter()) {
            self.fire(&spec, &schedule, *tick, &active_before, now, out)?;
        }
        if let Some(state) = self.job_states.get_mut(job) {
            state.last_tick_ms = latest;
        }
        self.save_job_state(job)?;
        self.next_fire.set(job, schedule.next_after(latest));
        Ok(())
    }

    /// One tick of a job: start a run, or record why not.
    fn fire(
        &mut self,
        spec: &JobSpec,
        schedule: &Schedule,
        tick: u64,
        active_before: &[String],
        now: u64,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        let job = spec.name.as_str();
        if !self.job_is_active(spec) {
            self.skip_tick(job, tick, "job or pool disabled");
            return Ok(());
        }
        if schedule.is_excluded(tick) {
            self.skip_tick(job, tick, "inside an exclusion window");
            return Ok(());
        }
        let active: Vec<String> = active_before
            .iter()
            .filter(|id| self.active.contains_key(*id))
            .cloned()
            .collect();
        if !active.is_empty() {
            match spec.policy.overlap {
                Overlap::Skip => {
                    self.skip_tick(job, tick, "the previous run is still active");
                    return Ok(());
                }
                Overlap::Replace => {
                    for run_id in active {
                        self.kill(&run_id, "the scheduler (overlap = replace)", now, out)?;
                    }
                }
                Overlap::Queue | Overlap::Allow => {}
            }
        }
        let tick_text = tick.to_string();
        let cause = format!("scheduled for {}", format_ms(tick));
        if spec.policy.run_on_all_workers {
            let workers: Vec<String> = self
                .sessions
                .iter()
                .filter(|(_, s)| s.register.pools.contains(&spec.pool))
                .map(|(id, _)| id.clone())
                .collect();
            if workers.is_empty() {
                self.skip_tick(job, tick, "no live worker in the pool");
                out.notifications.push(Notification {
                    kind: AlertKind::NoWorker,
                    job: Some(job.to_string()),
                    pool: Some(spec.pool.clone()),
                    run_id: None,
                    at_ms: now,
                    text: format!(
                        "job {job}: no live worker in pool {} to run it on",
                        spec.pool
                    ),
                });
                return Ok(());
            }
            let schedule_id = derived_run_id(&[job, &tick_text]);
            for worker in workers {
                let mut new = NewRun::of(spec.clone(), tick, format!("{cause}, on every worker"));
                new.id = Some(derived_run_id(&[job, &tick_text, &worker]));
                new.pinned_worker = Some(worker);
                new.schedule_id = Some(schedule_id.clone());
                self.create_run(new, now, out)?;
            }
        } else {
            let mut new = NewRun::of(spec.clone(), tick, cause);
            new.id = Some(derived_run_id(&[job, &tick_text]));
            self.create_run(new, now, out)?;
        }
        Ok(())
    }

    /// What follows the end of a run: retry, chain, failure count, notification.
    pub(super) fn after_end(
        &mut self,
        run: &RunRecord,
        now: u64,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        let failed = matches!(
            run.state,
            RunState::Failed | RunState::TimedOut | RunState::Lost
        );
        let spec = self
            .jobs
            .get(&run.job)
            .cloned()
            .unwrap_or_else(|| run.spec.clone());
        if failed && run.attempt <= spec.policy.retries {
            let backoff = if spec.policy.retry_exponential {
                spec.policy
                    .retry_backoff_ms
                    .saturating_mul(1u64 << (run.attempt - 1).min(20))
            } else {
                spec.policy.retry_backoff_ms
            };
            let first = run.first_attempt.clone().unwrap_or_else(|| run.id.clone());
            let attempt = run.attempt + 1;
            let mut new = NewRun::of(
                spec.clone(),
                run.scheduled_at_ms,
                format!(
                    "retry {} of {} after run {} {}",
                    attempt - 1,
                    spec.policy.retries,
                    run.id,
                    run.state
                ),
            );
            new.id = Some(derived_run_id(&[&first, &attempt.to_string()]));
            new.attempt = attempt;
            new.first_attempt = Some(first);
            new.parent = run.parent.clone();
            new.pinned_worker = run.pinned_worker.clone();
            new.schedule_id = run.schedule_id.clone();
            new.not_before_ms = now + backoff;
            self.create_run(new, now, out)?;
            return Ok(());
        }
        // The final outcome of this run (and its attempts).
        if run.state == RunState::Succeeded {
            if let Some(state) = self.job_states.get_mut(&run.job) {
                state.consecutive_failures = 0;
            }
        } else if failed {
            let (kind, word) = if run.state == RunState::Lost {
                (AlertKind::RunLost, "was lost")
            } else {
                (AlertKind::RunFailed, "failed")
            };
            let detail = run
                .outcome
                .as_ref()
                .map(|o| o.describe())
                .or_else(|| run.history.last().map(|t| t.cause.clone()))
                .unwrap_or_default();
            out.notifications.push(Notification {
                kind,
                job: Some(run.job.clone()),
                pool: Some(run.pool.clone()),
                run_id: Some(run.id.clone()),
                at_ms: now,
                text: format!("job {}: run {} {word} ({detail})", run.job, run.id),
            });
            let state = self.job_states.entry(run.job.clone()).or_default();
            state.consecutive_failures += 1;
            let failures = state.consecutive_failures;
            if let Some(limit) = spec.policy.disable_after_failures {
                if failures >= limit && state.auto_disabled.is_none() {
                    let reason = format!(
                        "disabled after {failures} failures in a row (last: run {})",
                        run.id
                    );
                    state.auto_disabled = Some(reason.clone());
                    tracing::warn!(job = %run.job, %reason, "job disabled itself");
                    out.notifications.push(Notification {
                        kind: AlertKind::AutoDisabled,
                        job: Some(run.job.clone()),
                        pool: Some(run.pool.clone()),
                        run_id: Some(run.id.clone()),
                        at_ms: now,
                        text: format!("job {}: {reason}", run.job),
                    });
                }
            }
        }
        self.save_job_state(&run.job)?;
        let parent_ok = run.state == RunState::Succeeded;
        for child in &spec.policy.children {
            if !(parent_ok || (failed && child.on_error)) {
                continue;
            }
            let Some(child_spec) = self.jobs.get(&child.job).cloned() else {
                continue;
            };
            let mut new = NewRun::of(
                child_spec,
                now,
                format!("after {} run {} {}", run.job, run.id, run.state),
            );
            new.id = Some(derived_run_id(&[&child.job, "after", &run.id]));
            new.parent = Some(run.id.clone());
            self.create_run(new, now, out)?;
        }
        Ok(())
    }

    /// Moves retries whose back-off has passed into their pool's queue.
    pub(super) fn release_delayed(&mut self, now: u64, out: &mut Outbox) {
        while let Some((&(at, seq), _)) = self.delayed.first_key_value() {
            if at > now {
                break;
            }
            let Some(run_id) = self.delayed.remove(&(at, seq)) else {
                break;
            };
            if let Some(run) = self.active.get(&run_id) {
                let pool = run.pool.clone();
                self.queues
                    .entry(pool.clone())
                    .or_default()
                    .insert(seq, run_id);
                self.wake(&pool, out);
            }
        }
    }

    /// Starting deadlines, late runs, never-run jobs and pools without workers.
    pub(super) fn check_alerts(&mut self, now: u64, out: &mut Outbox) -> StoreResult<()> {
        // Runs that could not start in time are missed, not started late.
        let expired: Vec<String> = self
            .active
            .values()
            .filter(|r| r.state == RunState::Queued)
            .filter(|r| {
                r.spec
                    .policy
                    .starting_deadline_ms
                    .is_some_and(|d| now > r.scheduled_at_ms.max(r.not_before_ms) + d)
            })
            .map(|r| r.id.clone())
            .collect();
        for run_id in expired {
            self.finish_as(
                &run_id,
                RunState::Missed,
                now,
                "not started within its starting deadline".into(),
                out,
            )?;
        }

        let mut standing: BTreeMap<(AlertKind, String), Alert> = BTreeMap::new();
        for run in self.active.values().filter(|r| r.state == RunState::Queued) {
            let due = run.scheduled_at_ms.max(run.not_before_ms);
            if now > due + run.spec.policy.late_after_ms {
                standing
                    .entry((AlertKind::Late, run.job.clone()))
                    .or_insert_with(|| Alert {
                        kind: AlertKind::Late,
                        job: Some(run.job.clone()),
                        pool: Some(run.pool.clone()),
                        run_id: Some(run.id.clone()),
                        since_ms: due,
                        message: format!(
                            "job {}: run {} due at {} has not started",
                            run.job,
                            run.id,
                            format_ms(due)
                        ),
                    });
            }
            let served = self
                .sessions
                .values()
                .any(|s| s.register.pools.contains(&run.pool));
            if !served {
                standing
                    .entry((AlertKind::NoWorker, run.pool.clone()))
                    .or_insert_with(|| Alert {
                        kind: AlertKind::NoWorker,
                        job: None,
                        pool: Some(run.pool.clone()),
                        run_id: None,
                        since_ms: run.created_at_ms,
                        message: format!(
                            "pool {} has queued runs and no worker available that can handle them",
                            run.pool
                        ),
                    });
            }
        }
        for (name, spec) in &self.jobs {
            let (Some(first_due), Some(state)) =
                (self.first_due.get(name), self.job_states.get(name))
            else {
                continue;
            };
            if state.last_started_ms.is_some() || !self.job_is_active(spec) {
                continue;
            }
            if let Some(first) = Some(*first_due) {
                if now > first + spec.policy.late_after_ms {
                    standing.insert(
                        (AlertKind::NeverRun, name.clone()),
                        Alert {
                            kind: AlertKind::NeverRun,
                            job: Some(name.clone()),
                            pool: Some(spec.pool.clone()),
                            run_id: None,
                            since_ms: first,
                            message: format!(
                                "job {name} has never run since it was created (first due {})",
                                format_ms(first)
                            ),
                        },
                    );
                }
            }
            if let Some(reason) = &state.auto_disabled {
                standing.insert(
                    (AlertKind::AutoDisabled, name.clone()),
                    Alert {
                        kind: AlertKind::AutoDisabled,
                        job: Some(name.clone()),
                        pool: Some(spec.pool.clone()),
                        run_id: None,
                        since_ms: now,
                        message: format!("job {name}: {reason}"),
                    },
                );
            }
        }
        // Notify each condition once, when it appears.
        let new: Vec<Alert> = standing
            .iter()
            .filter(|(key, _)| !self.alerts.contains_key(*key))
            .map(|(_, alert)| alert.clone())
            .collect();
        for alert in new {
            if alert.kind != AlertKind::AutoDisabled {
                out.notifications.push(Notification {
                    kind: alert.kind,
                    job: alert.job.clone(),
                    pool: alert.pool.clone(),
                    run_id: alert.run_id.clone(),
                    at_ms: now,
                    text: alert.message.clone(),
                });
            }
        }
        self.alerts = standing;
        Ok(())
    }

    /// When the core next has something to do by itself, in microseconds.
    pub fn next_wakeup_us(&self) -> u64 {
        let mut next_ms = self.next_alive_ms;
        if let Some(t) = self.next_fire.earliest() {
            next_ms = next_ms.min(t);
        }
        if let Some((&(t, _), _)) = self.delayed.first_key_value() {
            next_ms = next_ms.min(t);
        }
        let mut next_us = next_ms.saturating_mul(1_000);
        if let Some(deadline) = self.pings.values().map(|p| p.deadline_us).min() {
            next_us = next_us.min(deadline);
        }
        if let Some(deadline) = self.waiting.earliest_deadline_ms() {
            next_us = next_us.min(deadline.saturating_mul(1_000));
        }
        next_us
    }

    pub(super) fn set_enabled(
        &mut self,
        target: EnableTarget,
        enabled: bool,
        now: u64,
    ) -> StoreResult<Reply> {
        match target {
            EnableTarget::Job(name) => {
                let Some(spec) = self.jobs.get_mut(&name) else {
                    return Ok(error(ErrorCode::NotFound, format!("no job named {name:?}")));
                };
                spec.enabled = enabled;
                let spec = spec.clone();
                self.store.put_job(&spec)?;
                self.changes.jobs = true;
                let state = self.job_states.entry(name.clone()).or_default();
                if enabled {
                    state.auto_disabled = None;
                    state.consecutive_failures = 0;
                    // Ticks that passed while disabled are not caught up.
                    state.last_tick_ms = state.last_tick_ms.max(now);
                }
                self.save_job_state(&name)?;
                self.compile_schedule(&name);
            }
            EnableTarget::Pool(pool) => {
                if let Err(e) = names::validate("pool", &pool) {
                    return Ok(error(ErrorCode::BadRequest, e.to_string()));
                }
                if enabled {
                    self.disabled_pools.remove(&pool);
                } else {
                    self.disabled_pools.insert(pool);
                }
                let bytes = rmp_serde::to_vec(&self.disabled_pools).unwrap_or_default();
                self.store.put_setting(DISABLED_POOLS, &bytes)?;
            }
        }
        Ok(Reply::Ack)
    }

    pub(super) fn job_views(&self) -> Vec<JobView> {
        self.jobs
            .values()
            .map(|spec| JobView {
                spec: spec.clone(),
                state: self.job_states.get(&spec.name).cloned().unwrap_or_default(),
                next_fire_ms: self.next_fire.get(&spec.name),
                active: self.job_is_active(spec),
            })
            .collect()
    }
}

/// An RFC 3339 rendering of a time in milliseconds, for causes and messages.
pub fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}
