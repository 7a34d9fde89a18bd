//! The job table: every job's definition, its compiled schedule, its scheduling state
//! (last tick, failures, auto-disable), the fire queue and disabled pools. Ticking them
//! into runs is `scheduling.rs`; this table only keeps them consistent.

use crate::error::listed;
use crate::schedule::Schedule;
use crate::CoreError;
use jobcast_protocol::{JobSpec, JobState, JobView};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

#[derive(Default)]
pub(crate) struct JobTable {
    /// Shared with the runs made of each version (and their grants): a tick clones a
    /// pointer, not the definition.
    specs: BTreeMap<String, Arc<JobSpec>>,
    states: BTreeMap<String, JobState>,
    /// Shared with a tick being dealt with: it holds the schedule while the table changes.
    schedules: HashMap<String, Arc<Schedule>>,
    /// The next tick of each scheduled job.
    next_fire: FireQueue,
    /// Each scheduled job's first tick after it was created (for never-run alerts).
    first_due: HashMap<String, u64>,
    disabled_pools: BTreeSet<String>,
    /// How many definitions set `max_concurrent`: every claim asks whether any does.
    limited: usize,
    /// Counts the changes to what decides whether a tick runs: definitions, enabling (a
    /// job's or a pool's) and auto-disable. A tick decided ahead is judged in full at its
    /// time only if this moved since (`scheduling.rs`).
    version: u64,
}

impl JobTable {
    /// The definitions a store kept; their states and schedules come with
    /// [`Self::restore_scheduling`].
    pub fn restored(specs: Vec<JobSpec>) -> JobTable {
        let mut table = JobTable::default();
        for spec in specs {
            table.insert_spec(spec);
        }
        table
    }

    /// Puts a definition in the table, keeping the count of limited ones.
    fn insert_spec(&mut self, spec: JobSpec) {
        let limited = |spec: &JobSpec| usize::from(spec.policy.max_concurrent.is_some());
        self.limited += limited(&spec);
        if let Some(before) = self.specs.insert(spec.name.clone(), Arc::new(spec)) {
            self.limited -= limited(&before);
        }
    }

    /// The scheduling state a store kept: job states (a job without one starts at
    /// `now`) and the disabled pools; every schedule is compiled.
    pub fn restore_scheduling(
        &mut self,
        states: Vec<(String, JobState)>,
        disabled_pools: BTreeSet<String>,
        now: u64,
    ) {
        self.states = states.into_iter().collect();
        self.disabled_pools = disabled_pools;
        let names: Vec<String> = self.specs.keys().cloned().collect();
        for name in names {
            self.states.entry(name.clone()).or_insert_with(|| JobState {
                created_at_ms: now,
                last_tick_ms: now,
                ..Default::default()
            });
            self.compile(&name);
        }
    }

    pub fn spec(&self, job: &str) -> Option<&JobSpec> {
        self.specs.get(job).map(|spec| &**spec)
    }

    /// The job's definition as its runs share it.
    pub fn shared_spec(&self, job: &str) -> Option<Arc<JobSpec>> {
        self.specs.get(job).cloned()
    }

    /// Each job's definition with its scheduling state (a job without one is left out),
    /// in one walk of both tables: no lookup by name per job.
    pub fn with_states(&self) -> impl Iterator<Item = (&JobSpec, &JobState)> {
        let mut states = self.states.iter().peekable();
        self.specs.iter().filter_map(move |(name, spec)| {
            while states.next_if(|(job, _)| *job < name).is_some() {}
            states
                .next_if(|(job, _)| *job == name)
                .map(|(_, state)| (spec.as_ref(), state))
        })
    }

    /// Every job's definition, by name.
    pub fn specs(&self) -> impl Iterator<Item = &JobSpec> {
        self.specs.values().map(|spec| &**spec)
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.specs.keys()
    }

    pub fn len(&self) -> usize {
        self.specs.len()
    }

    /// What a listing shows of a job: its definition, state, next tick and whether it is
    /// active.
    pub fn view_of(&self, spec: &JobSpec) -> JobView {
        JobView {
            spec: spec.clone(),
            state: self.state(&spec.name).cloned().unwrap_or_default(),
            next_fire_ms: self.next_fire(&spec.name),
            active: self.is_active(spec),
        }
    }

    /// Every job's view, by name.
    pub fn views(&self) -> Vec<JobView> {
        self.specs().map(|spec| self.view_of(spec)).collect()
    }

    /// The views of the named jobs that exist.
    pub fn views_of<'a>(&self, names: impl Iterator<Item = &'a String>) -> Vec<JobView> {
        names
            .filter_map(|name| self.spec(name))
            .map(|spec| self.view_of(spec))
            .collect()
    }

    /// The refusal for a job that does not exist, naming those that do.
    pub fn unknown(&self, name: &str) -> CoreError {
        CoreError::NoSuchJob {
            name: name.to_string(),
            known: listed(self.names()),
        }
    }

    /// Adds or replaces a job's definition, and compiles its schedule.
    pub fn put_spec(&mut self, spec: JobSpec) {
        self.version += 1;
        let name = spec.name.clone();
        self.insert_spec(spec);
        self.compile(&name);
    }

    /// Turns a job on or off; turned on, its failures are forgotten and ticks that passed
    /// while it was off are not caught up. Returns the definition to store.
    pub fn set_enabled(&mut self, job: &str, enabled: bool, now: u64) -> Option<&JobSpec> {
        self.version += 1;
        // Runs made of the definition keep theirs.
        Arc::make_mut(self.specs.get_mut(job)?).enabled = enabled;
        if enabled {
            let state = self.state_entry(job);
            state.auto_disabled = None;
            state.consecutive_failures = 0;
            state.last_tick_ms = state.last_tick_ms.max(now);
        }
        self.compile(job);
        self.spec(job)
    }

    pub fn state(&self, job: &str) -> Option<&JobState> {
        self.states.get(job)
    }

    /// `job` disabled itself (`reason`), until it is enabled again.
    pub fn disable_itself(&mut self, job: &str, reason: String) {
        self.version += 1;
        self.state_entry(job).auto_disabled = Some(reason);
    }

    /// See the field: a count that moves with every change to it.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn state_mut(&mut self, job: &str) -> Option<&mut JobState> {
        self.states.get_mut(job)
    }

    /// `job`'s state, a fresh one if it has none yet.
    pub fn state_entry(&mut self, job: &str) -> &mut JobState {
        self.states.entry(job.to_string()).or_default()
    }

    pub fn schedule(&self, job: &str) -> Option<&Schedule> {
        self.schedules.get(job).map(|schedule| &**schedule)
    }

    /// The job's compiled schedule, held apart from the table.
    pub fn shared_schedule(&self, job: &str) -> Option<Arc<Schedule>> {
        self.schedules.get(job).cloned()
    }

    /// Every compiled schedule, by job (in no set order).
    pub fn schedules(&self) -> impl Iterator<Item = (&String, &Schedule)> {
        self.schedules
            .iter()
            .map(|(job, schedule)| (job, &**schedule))
    }

    /// When `job` ticks next, if it is scheduled.
    pub fn next_fire(&self, job: &str) -> Option<u64> {
        self.next_fire.get(job)
    }

    pub fn set_next_fire(&mut self, job: &str, next: Option<u64>) {
        self.next_fire.set(job, next);
    }

    /// The jobs whose next tick is at or before `now`.
    pub fn due(&self, now: u64) -> Vec<String> {
        self.next_fire.due(now)
    }

    /// The jobs not deferred to their tick whose next tick is at or before `until`.
    pub fn ahead(&self, until: u64) -> Vec<String> {
        self.next_fire.ahead(until)
    }

    /// `job`'s next tick is decided at its time.
    pub fn defer(&mut self, job: &str) {
        self.next_fire.defer(job);
    }

    /// When the scheduler next has a tick to look at, deciding ticks `lead` ahead.
    pub fn next_look(&self, lead: u64) -> Option<u64> {
        self.next_fire.next_look(lead)
    }

    /// `job`'s first tick after it was created, if it is scheduled.
    pub fn first_due(&self, job: &str) -> Option<u64> {
        self.first_due.get(job).copied()
    }

    pub fn disabled_pools(&self) -> &BTreeSet<String> {
        &self.disabled_pools
    }

    pub fn set_pool_enabled(&mut self, pool: &str, enabled: bool) {
        self.version += 1;
        if enabled {
            self.disabled_pools.remove(pool);
        } else {
            self.disabled_pools.insert(pool.to_string());
        }
    }

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
                self.schedules.insert(job.to_string(), Arc::new(schedule));
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
            all.insert(job.name.clone(), Arc::new(job.clone()));
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
    /// The most runs of `job` out at once, if its definition sets it.
    pub fn max_concurrent(&self, job: &str) -> Option<u32> {
        self.specs
            .get(job)
            .and_then(|spec| spec.policy.max_concurrent)
    }

    pub fn any_limit(&self) -> bool {
        self.limited > 0
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

/// Jobs by their next tick, earliest first. A tick is decided up to a lead before its
/// time (`scheduling.rs`), unless the job's decision has to wait for the time itself: such
/// a job is *deferred* until its tick, so the lead's wake-ups do not look at it again.
#[derive(Debug, Default)]
pub struct FireQueue {
    /// Each job's next tick, and whether it is deferred to it.
    by_job: HashMap<String, (u64, bool)>,
    order: BTreeSet<(u64, String)>,
    deferred: BTreeSet<(u64, String)>,
}

impl FireQueue {
    pub fn set(&mut self, job: &str, next: Option<u64>) {
        // The name taken out is put back: one copy of it a tick, not three.
        let name = match self.by_job.remove_entry(job) {
            Some((name, (old, deferred))) => {
                let key = (old, name);
                match deferred {
                    true => self.deferred.remove(&key),
                    false => self.order.remove(&key),
                };
                key.1
            }
            None => job.to_string(),
        };
        if let Some(next) = next {
            self.order.insert((next, name.clone()));
            self.by_job.insert(name, (next, false));
        }
    }

    /// `job`'s next tick is decided at its time, not ahead of it.
    pub fn defer(&mut self, job: &str) {
        if let Some((next, deferred)) = self.by_job.get_mut(job) {
            if !*deferred {
                *deferred = true;
                let key = (*next, job.to_string());
                self.order.remove(&key);
                self.deferred.insert(key);
            }
        }
    }

    pub fn get(&self, job: &str) -> Option<u64> {
        self.by_job.get(job).map(|(next, _)| *next)
    }

    /// When the next tick must be looked at, for ticks decided `lead` ahead.
    pub fn next_look(&self, lead: u64) -> Option<u64> {
        let ahead = self.order.first().map(|(t, _)| t.saturating_sub(lead));
        let at_time = self.deferred.first().map(|(t, _)| *t);
        ahead.into_iter().chain(at_time).min()
    }

    /// Jobs whose next tick is at or before `now`, deferred or not, earliest first.
    pub fn due(&self, now: u64) -> Vec<String> {
        let mut due: Vec<&(u64, String)> = self
            .order
            .iter()
            .take_while(|(t, _)| *t <= now)
            .chain(self.deferred.iter().take_while(|(t, _)| *t <= now))
            .collect();
        due.sort_unstable();
        due.into_iter().map(|(_, job)| job.clone()).collect()
    }

    /// Jobs not deferred whose next tick is at or before `until`.
    pub fn ahead(&self, until: u64) -> Vec<String> {
        self.order
            .iter()
            .take_while(|(t, _)| *t <= until)
            .map(|(_, job)| job.clone())
            .collect()
    }
}

/// Finds a cycle in the child links of `jobs`, returning it as a path.
fn find_cycle(jobs: &BTreeMap<String, Arc<JobSpec>>) -> Option<Vec<String>> {
    fn visit(
        job: &str,
        jobs: &BTreeMap<String, Arc<JobSpec>>,
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

#[cfg(test)]
mod tests {
    use super::*;
    use jobcast_protocol::Exec;

    #[test]
    fn jobs_with_states_pairs_each_definition_with_its_own_state_only() {
        let mut table = JobTable::default();
        for name in ["a", "b", "c", "e"] {
            table.put_spec(JobSpec::new(
                name,
                "default",
                Exec::Command(vec!["x".into()]),
            ));
        }
        // "a" has no state; "d" has a state and no definition.
        for (name, tick) in [("b", 2), ("c", 3), ("d", 4), ("e", 5)] {
            table.state_entry(name).last_tick_ms = tick;
        }
        let paired: Vec<(&str, u64)> = table
            .with_states()
            .map(|(spec, state)| (spec.name.as_str(), state.last_tick_ms))
            .collect();
        assert_eq!(paired, vec![("b", 2), ("c", 3), ("e", 5)]);
    }

    #[test]
    fn the_fire_queue_keeps_one_entry_a_job_as_its_next_tick_moves_or_goes() {
        let mut queue = FireQueue::default();
        queue.set("b", Some(20));
        queue.set("a", Some(20));
        queue.set("c", Some(10));
        assert_eq!(queue.due(20), vec!["c", "a", "b"]);
        queue.set("c", Some(30));
        queue.set("a", Some(20));
        assert_eq!(queue.due(25), vec!["a", "b"]);
        assert_eq!(queue.next_look(0), Some(20));
        queue.set("a", None);
        queue.set("b", None);
        queue.set("never-set", None);
        assert_eq!(queue.due(u64::MAX), vec!["c"]);
        assert_eq!((queue.get("a"), queue.get("c")), (None, Some(30)));
        queue.set("a", Some(5));
        assert_eq!(queue.due(u64::MAX), vec!["a", "c"]);
        assert_eq!(queue.order.len(), queue.by_job.len());
    }

    #[test]
    fn a_deferred_job_is_looked_at_at_its_tick_and_not_ahead_until_its_next_tick_is_set() {
        let mut queue = FireQueue::default();
        queue.set("a", Some(1_000));
        queue.set("b", Some(1_050));
        queue.set("c", Some(5_000));
        assert_eq!(queue.next_look(100), Some(900), "a, a lead early");
        assert_eq!(queue.ahead(1_050), vec!["a", "b"]);
        queue.defer("a");
        queue.defer("a");
        assert_eq!(queue.ahead(1_050), vec!["b"], "a waits for its time");
        assert_eq!(queue.next_look(100), Some(950), "b's lead");
        queue.defer("b");
        assert_eq!(queue.next_look(100), Some(1_000), "a's own time");
        assert_eq!(queue.due(1_049), vec!["a"]);
        assert_eq!(queue.due(1_050), vec!["a", "b"], "due, deferred or not");
        // Its next tick set, a job is decided ahead again.
        queue.set("a", Some(2_000));
        assert_eq!(queue.ahead(2_000), vec!["a"]);
        assert_eq!(queue.next_look(100), Some(1_050));
        queue.set("b", None);
        queue.defer("gone");
        assert_eq!(queue.due(u64::MAX), vec!["a", "c"]);
        assert_eq!(queue.order.len() + queue.deferred.len(), queue.by_job.len());
    }

    #[test]
    fn whether_any_job_is_limited_follows_definitions_as_they_change() {
        let spec = |name: &str, limit: Option<u32>| {
            let mut spec = JobSpec::new(name, "default", Exec::Command(vec!["x".into()]));
            spec.policy.max_concurrent = limit;
            spec
        };
        let mut table = JobTable::restored(vec![spec("a", Some(1)), spec("b", None)]);
        assert!(table.any_limit());
        table.put_spec(spec("a", Some(2)));
        assert!(table.any_limit(), "still limited after a change of limit");
        table.put_spec(spec("a", None));
        assert!(!table.any_limit(), "its limit removed");
        table.put_spec(spec("b", Some(3)));
        table.put_spec(spec("c", Some(1)));
        table.put_spec(spec("b", None));
        assert!(table.any_limit(), "c is still limited");
        table.set_enabled("c", false, 0);
        assert!(table.any_limit(), "a disabled job keeps its limit");
    }
}
