//! The job table: every job's definition, its compiled schedule, its scheduling state
//! (last tick, failures, auto-disable), the fire queue and disabled pools. Ticking them
//! into runs is `scheduling.rs`; this table only keeps them consistent.

use crate::schedule::Schedule;
use crate::CoreError;
use jobcast_protocol::{JobSpec, JobState};
use std::collections::{BTreeMap, BTreeSet, HashMap};

#[derive(Default)]
pub(crate) struct JobTable {
    pub specs: BTreeMap<String, JobSpec>,
    pub states: BTreeMap<String, JobState>,
    pub schedules: HashMap<String, Schedule>,
    /// The next tick of each scheduled job.
    pub next_fire: FireQueue,
    /// Each scheduled job's first tick after it was created (for never-run alerts).
    pub first_due: HashMap<String, u64>,
    pub disabled_pools: BTreeSet<String>,
}

impl JobTable {
    /// (Re)compiles a job's schedule and its next fire time.
    pub fn compile(&mut self, job: &str) {
        let Some(spec) = self.specs.get(job) else {
            self.schedules.remove(job);
            self.next_fire.set(job, None);
            self.first_due.remove(job);
            return;
        };
        match Schedule::for_job(spec) {
            Ok(schedule) => {
                let state = self.states.get(job).cloned().unwrap_or_default();
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
    pub fn check(&self, jobs: &[JobSpec]) -> Result<(), CoreError> {
        let mut all = self.specs.clone();
        for job in jobs {
            Schedule::for_job(job).map_err(|error| CoreError::BadSchedule {
                job: job.name.clone(),
                error,
            })?;
            all.insert(job.name.clone(), job.clone());
        }
        for job in jobs {
            for child in &job.policy.children {
                if !all.contains_key(&child.job) {
                    return Err(CoreError::NoSuchChild {
                        job: job.name.clone(),
                        child: child.job.clone(),
                    });
                }
            }
        }
        if let Some(cycle) = find_cycle(&all) {
            return Err(CoreError::ChainLoops { cycle });
        }
        Ok(())
    }

    /// Whether some job keeps its runs for a time of its own.
    pub fn any_retention(&self) -> bool {
        self.retentions().next().is_some()
    }

    /// Whether some job limits its runs at once.
    pub fn any_limit(&self) -> bool {
        self.specs
            .values()
            .any(|job| job.policy.max_concurrent.is_some())
    }

    /// The times jobs keep their runs for, where they set one.
    pub fn retentions(&self) -> impl Iterator<Item = u64> + '_ {
        self.specs
            .values()
            .filter_map(|job| job.policy.retention_ms)
    }

    /// Whether ticks of `job` start runs now.
    pub fn is_active(&self, job: &JobSpec) -> bool {
        job.enabled
            && !self.disabled_pools.contains(&job.pool)
            && self
                .states
                .get(&job.name)
                .is_none_or(|s| s.auto_disabled.is_none())
    }
}

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

/// Finds a cycle in the child links of `jobs`, returning it as a path.
fn find_cycle(jobs: &BTreeMap<String, JobSpec>) -> Option<Vec<String>> {
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
