//! The runs not yet finished, and where the queued ones wait: in their pool's queue,
//! highest priority first and oldest first within a priority, or in the back-off list
//! until their retry may start. It also remembers
//! the ids of the runs that ended most recently, so that a run selector can match a
//! substring without reading every stored id.

use jobcast_protocol::{Overlap, RunRecord, RunState};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// The runs by id: a hash map with fixed keys (`fast_hash`), so a walk over the runs
/// decides the same way on every run of the broker. An ordered map moved whole run records
/// on every insert and removal (measured: ~5 µs of broker CPU per run at 20,000 active
/// runs).
pub(crate) type RunMap = crate::fast_hash::FastMap<String, RunRecord>;

/// Ended runs whose ids a substring selector still finds (about 30 bytes each). Older
/// runs are found by their id or a prefix of it, which the store looks up by range.
pub(crate) const RECENTLY_ENDED: usize = 10_000;

/// A queued run's place in its pool's queue: higher priority first, then lower sequence
/// number (older) first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct QueueKey {
    /// The priority, negated so that the map's first key is the highest.
    rank: i64,
    pub seq: u64,
}

impl QueueKey {
    pub fn of(run: &RunRecord) -> QueueKey {
        QueueKey {
            rank: -i64::from(run.priority),
            seq: run.seq,
        }
    }
}

/// The fields of a run its place in the table depends on (`id`, `job`, `pool`,
/// `priority`, `seq`, `not_before_ms`) change only through the table's own methods;
/// `get_mut` is for the rest (state, worker, times).
#[derive(Debug, Default)]
pub(crate) struct RunTable {
    /// Runs not yet finished, by id.
    active: RunMap,
    /// The ids of `active`, by job.
    by_job: HashMap<String, BTreeSet<String>>,
    /// Queued runs per pool, in the order they are handed out.
    queues: BTreeMap<String, BTreeMap<QueueKey, String>>,
    /// Queued runs waiting for their retry back-off: (not before, seq) → id.
    delayed: BTreeMap<(u64, u64), String>,
    /// The ids of the runs that ended last, oldest first, at most [`RECENTLY_ENDED`].
    recently_ended: VecDeque<String>,
}

impl RunTable {
    pub fn get(&self, id: &str) -> Option<&RunRecord> {
        self.active.get(id)
    }

    /// A run to change in place: not the fields its place in the table depends on.
    pub fn get_mut(&mut self, id: &str) -> Option<&mut RunRecord> {
        self.active.get_mut(id)
    }

    pub fn contains(&self, id: &str) -> bool {
        self.active.contains_key(id)
    }

    /// Every unfinished run, in the table's fixed order.
    pub fn iter(&self) -> impl Iterator<Item = &RunRecord> {
        self.active.values()
    }

    /// The runs assigned to or running on `worker`.
    pub fn out_on<'a>(&'a self, worker: &'a str) -> impl Iterator<Item = &'a RunRecord> + 'a {
        self.active.values().filter(move |r| {
            r.worker.as_deref() == Some(worker)
                && matches!(r.state, RunState::Assigned | RunState::Running)
        })
    }

    /// Takes out of its queue the first run `worker` may be handed from `pools`:
    /// highest priority, then oldest, across the pools. It passes over runs pinned to
    /// another worker, runs of an `overlap = queue` job that has a run out (looked up
    /// among that job's runs, not by walking every run), and runs `admit` refuses (a
    /// concurrency limit). The run stays active, as queued: [`Self::assign`] hands it out.
    pub fn take_next_grantable(
        &mut self,
        pools: &[String],
        worker: &str,
        mut admit: impl FnMut(&RunRecord) -> bool,
    ) -> Option<String> {
        let mut best: Option<(QueueKey, &String)> = None;
        for pool in pools {
            let Some(queue) = self.queues.get(pool) else {
                continue;
            };
            for (key, run_id) in queue {
                if best.as_ref().is_some_and(|(b, _)| *b < *key) {
                    break;
                }
                let Some(run) = self.active.get(run_id) else {
                    continue;
                };
                if run.pinned_worker.as_deref().is_some_and(|w| w != worker) {
                    continue;
                }
                if run.spec.policy.overlap == Overlap::Queue
                    && self.has_run_out(&run.job, run.pinned_worker.as_deref())
                {
                    continue;
                }
                if !admit(run) {
                    continue;
                }
                best = Some((*key, pool));
                break;
            }
        }
        let (key, pool) = best?;
        let pool = pool.clone();
        self.queues.get_mut(&pool).and_then(|q| q.remove(&key))
    }

    /// Hands queued run `run_id` to `worker`: assigned, with the worker's instance and
    /// log cap. `None` if the run is not active or may not be assigned.
    pub fn assign(
        &mut self,
        run_id: &str,
        worker: &str,
        instance: Option<u64>,
        log_cap: u64,
        now: u64,
    ) -> Option<&RunRecord> {
        let run = self.active.get_mut(run_id)?;
        run.transition(RunState::Assigned, now, format!("granted to {worker}"))
            .ok()?;
        run.worker = Some(worker.to_string());
        run.worker_instance = instance;
        run.log_cap = log_cap;
        Some(run)
    }

    pub fn activate(&mut self, run: RunRecord) {
        self.by_job
            .entry(run.job.clone())
            .or_default()
            .insert(run.id.clone());
        self.active.insert(run.id.clone(), run);
    }

    /// Forgets a run that ended, wherever it waited.
    pub fn deactivate(&mut self, run: &RunRecord) {
        self.active.remove(&run.id);
        if let Some(ids) = self.by_job.get_mut(&run.job) {
            ids.remove(&run.id);
            if ids.is_empty() {
                self.by_job.remove(&run.job);
            }
        }
        if let Some(queue) = self.queues.get_mut(&run.pool) {
            queue.remove(&QueueKey::of(run));
        }
        self.delayed.remove(&(run.not_before_ms, run.seq));
        if self.recently_ended.len() == RECENTLY_ENDED {
            self.recently_ended.pop_front();
        }
        self.recently_ended.push_back(run.id.clone());
    }

    /// Ids of unfinished and recently ended runs that contain `fragment`, in id order,
    /// at most `limit`.
    pub fn ids_containing(&self, fragment: &str, limit: usize) -> Vec<String> {
        let found: BTreeSet<&String> = self
            .active
            .keys()
            .chain(self.recently_ended.iter())
            .filter(|id| id.contains(fragment))
            .collect();
        found.into_iter().take(limit).cloned().collect()
    }

    /// Puts a queued run where it waits at `now_ms`: its pool's queue, or the back-off
    /// list. Returns whether it can be handed out now.
    pub fn enqueue(&mut self, run: &RunRecord, now_ms: u64) -> bool {
        if run.not_before_ms > now_ms {
            self.delayed
                .insert((run.not_before_ms, run.seq), run.id.clone());
            false
        } else {
            self.queues
                .entry(run.pool.clone())
                .or_default()
                .insert(QueueKey::of(run), run.id.clone());
            true
        }
    }

    /// Takes the runs whose wait has ended (a retry's back-off, a tick decided ahead of
    /// its time) off the waiting list, in the order of their ends; each then goes to its
    /// pool's queue ([`Self::queue_released`]) or ends.
    pub fn take_released(&mut self, now_ms: u64) -> Vec<String> {
        let mut released = Vec::new();
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now_ms {
                break;
            }
            released.push(entry.remove());
        }
        released
    }

    /// Puts a run taken off the waiting list into its pool's queue, and its pool among
    /// `pools` (the pools that gained runs). A tick decided ahead (`released_tick`) no
    /// longer waits for its time (`not_before_ms` 0): the record says it was released.
    /// Returns the run, if it is in the table.
    pub fn queue_released(
        &mut self,
        run_id: String,
        released_tick: bool,
        pools: &mut BTreeSet<String>,
    ) -> Option<&RunRecord> {
        let run = self.active.get_mut(&run_id)?;
        if released_tick {
            run.not_before_ms = 0;
        }
        if !pools.contains(&run.pool) {
            pools.insert(run.pool.clone());
        }
        let key = QueueKey::of(run);
        self.queues
            .entry(run.pool.clone())
            .or_default()
            .insert(key, run_id);
        Some(run)
    }

    /// Puts a stored tick decided ahead and never released on the waiting list, whatever
    /// its time: it is judged when released ([`Self::take_released`]).
    pub fn hold_unreleased_tick(&mut self, run: &RunRecord) {
        self.delayed
            .insert((run.not_before_ms, run.seq), run.id.clone());
    }

    /// The unfinished runs of `job` whose overlap counts against a run pinned to
    /// `pinned`: all of them, or, for a job run on every worker (`pinned` set), those
    /// pinned to the same worker: each worker's copy overlaps only its own.
    pub fn overlapping<'a>(
        &'a self,
        job: &str,
        pinned: Option<&'a str>,
    ) -> impl Iterator<Item = &'a RunRecord> + 'a {
        self.by_job
            .get(job)
            .into_iter()
            .flatten()
            .filter_map(|id| self.active.get(id))
            .filter(move |r| pinned.is_none() || r.pinned_worker.as_deref() == pinned)
    }

    /// Whether a run that overlaps one pinned to `pinned` (see [`Self::overlapping`]) is
    /// assigned or running.
    pub fn has_run_out(&self, job: &str, pinned: Option<&str>) -> bool {
        self.overlapping(job, pinned)
            .any(|r| matches!(r.state, RunState::Assigned | RunState::Running))
    }

    pub fn has_queued(&self, pool: &str) -> bool {
        self.queues.get(pool).is_some_and(|q| !q.is_empty())
    }

    /// How many runs each pool's queue holds (pools whose queue emptied included).
    pub fn queued_by_pool(&self) -> BTreeMap<String, u64> {
        self.queues
            .iter()
            .map(|(pool, queue)| (pool.clone(), queue.len() as u64))
            .collect()
    }

    /// The pools with runs in their queues.
    pub fn pools_with_queued(&self) -> Vec<String> {
        self.queues
            .iter()
            .filter(|(_, queue)| !queue.is_empty())
            .map(|(pool, _)| pool.clone())
            .collect()
    }

    /// Moves the ends of back-offs with a step of the wall clock (in memory: the stored
    /// records keep the time they were given).
    pub fn shift_back_offs(&mut self, shift: impl Fn(u64) -> u64) {
        let delayed = std::mem::take(&mut self.delayed);
        for ((at, seq), id) in delayed {
            let at = shift(at);
            if let Some(run) = self.active.get_mut(&id) {
                run.not_before_ms = at;
            }
            self.delayed.insert((at, seq), id);
        }
    }

    /// When the first back-off ends, if any run waits in one.
    pub fn next_release_ms(&self) -> Option<u64> {
        self.delayed.first_key_value().map(|(&(at, _), _)| at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobcast_protocol::JobSpec;

    fn run(id: &str, seq: u64, pool: &str, not_before_ms: u64) -> RunRecord {
        let spec = JobSpec::new("job", pool, jobcast_protocol::Exec::Command(vec![]));
        RunRecord {
            not_before_ms,
            ..RunRecord::queued(id.into(), seq, spec, 0, "test")
        }
    }

    #[test]
    fn queued_runs_wait_in_their_pool_and_retries_until_their_back_off_ends() {
        let mut table = RunTable::default();
        let now_run = run("a", 1, "default", 0);
        let later = run("b", 2, "gpu", 500);
        for r in [&now_run, &later] {
            table.activate(r.clone());
        }
        assert!(table.enqueue(&now_run, 100));
        assert!(!table.enqueue(&later, 100));
        assert_eq!(table.pools_with_queued(), ["default"]);
        assert!(!table.has_queued("gpu"));
        assert_eq!(table.next_release_ms(), Some(500));
        assert!(table.take_released(499).is_empty());
        assert_eq!(table.take_released(500), ["b"]);
        assert!(!table.has_queued("gpu"), "not queued until put there");
        let mut pools = BTreeSet::new();
        table.queue_released("b".into(), false, &mut pools);
        assert_eq!(pools.into_iter().collect::<Vec<_>>(), ["gpu"]);
        assert!(table.has_queued("gpu"));
        assert_eq!(table.next_release_ms(), None);
    }

    #[test]
    fn a_run_that_ends_is_forgotten_everywhere() {
        let mut table = RunTable::default();
        let queued = run("a", 1, "default", 0);
        let delayed = run("b", 2, "default", 900);
        for r in [&queued, &delayed] {
            table.activate(r.clone());
            table.enqueue(r, 0);
        }
        table.deactivate(&queued);
        table.deactivate(&delayed);
        assert!(table.active.is_empty());
        assert!(table.by_job.is_empty());
        assert!(!table.has_queued("default"));
        assert_eq!(table.next_release_ms(), None);
    }

    #[test]
    fn substrings_find_unfinished_and_recently_ended_runs_only() {
        let mut table = RunTable::default();
        let ended = run("old-x1", 1, "default", 0);
        table.activate(ended.clone());
        table.deactivate(&ended);
        table.activate(run("new-x2", 2, "default", 0));
        assert_eq!(table.ids_containing("x", 10), ["new-x2", "old-x1"]);
        assert_eq!(table.ids_containing("x", 1), ["new-x2"]);
        assert_eq!(table.ids_containing("x1", 10), ["old-x1"]);
        // Once RECENTLY_ENDED newer runs have ended, the old one is out of reach.
        for seq in 0..RECENTLY_ENDED as u64 {
            let r = run(&format!("r{seq}"), 10 + seq, "default", 0);
            table.activate(r.clone());
            table.deactivate(&r);
        }
        assert!(table.ids_containing("x1", 10).is_empty());
        assert_eq!(table.ids_containing("x2", 10), ["new-x2"]);
    }
}
