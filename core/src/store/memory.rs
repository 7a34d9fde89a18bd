//! A store in memory, with the sled backend's behaviour (the contract tests run on both):
//! for tests of the core, which then need no disk. `flush` makes nothing more durable.

use super::{list_newest_first, FlushDone, Listing, OldestRun, Store, StoreResult};
use jobcast_protocol::{JobSpec, JobState, RunFilter, RunRecord, WorkerStatus};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default, Clone)]
pub struct MemoryStore {
    jobs: BTreeMap<String, JobSpec>,
    /// By sequence number.
    runs: BTreeMap<u64, RunRecord>,
    run_ids: BTreeMap<String, u64>,
    /// Sequence numbers of unfinished runs.
    active: BTreeSet<u64>,
    logs: BTreeMap<(String, u64), Vec<u8>>,
    workers: BTreeMap<String, WorkerStatus>,
    job_states: BTreeMap<String, JobState>,
    settings: BTreeMap<String, Vec<u8>>,
    /// What `is_backlogged` answers, set by tests.
    pub backlogged: bool,
    /// What `walks_away` answers, set by tests (which then answer retention's asks with
    /// [`MemoryStore::found_oldest`] on a copy taken when it asked, as a reader would).
    pub walks_away: bool,
    /// Where commits wait until a test lets them end, if it holds them.
    pub held_commits: Option<HeldCommits>,
    /// How many times a run's log was read (shared by clones), for tests of what the
    /// broker's loop reads.
    pub log_reads: Arc<std::sync::atomic::AtomicUsize>,
    /// How many times a run was read by id, likewise.
    pub run_reads: Arc<std::sync::atomic::AtomicUsize>,
    /// How many times a run was written (created or rewritten), likewise.
    pub run_writes: Arc<std::sync::atomic::AtomicUsize>,
}

/// Commits that end only when a test says so (in order), to see what a broker does while
/// its store is busy: `start_flush` parks each one here, labelled with the number of runs
/// stored when it started (which batch it is).
#[derive(Clone, Default)]
pub struct HeldCommits {
    waiting: Arc<Mutex<VecDeque<(usize, FlushDone)>>>,
}

impl std::fmt::Debug for HeldCommits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldCommits")
            .field("waiting", &self.waiting())
            .finish()
    }
}

impl HeldCommits {
    fn held(&self) -> std::sync::MutexGuard<'_, VecDeque<(usize, FlushDone)>> {
        // A test that panicked while holding it has failed already.
        self.waiting
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The commits started and not yet let end, oldest first, by the runs stored when
    /// each started.
    pub fn waiting(&self) -> Vec<usize> {
        self.held().iter().map(|(runs, _)| *runs).collect()
    }

    /// Lets the oldest waiting commits end, successfully, while `release` says so of the
    /// runs stored when they started; how many it let end.
    pub fn release_while(&self, release: impl Fn(usize) -> bool) -> usize {
        let mut ended = 0;
        loop {
            let done = {
                let mut held = self.held();
                match held.front() {
                    Some((runs, _)) if release(*runs) => held.pop_front().map(|(_, done)| done),
                    _ => None,
                }
            };
            // Told outside the lock: the broker may start the next commit from it.
            let Some(done) = done else {
                return ended;
            };
            done(Ok(()));
            ended += 1;
        }
    }

    fn park(&self, runs: usize, done: FlushDone) {
        self.held().push_back((runs, done));
    }
}

impl MemoryStore {
    /// What a reader of this store would find for [`super::RunReader::oldest_runs`].
    pub fn found_oldest(&self, from_seq: u64, limit: usize) -> Vec<OldestRun> {
        self.runs
            .range(from_seq..)
            .take(limit)
            .map(|(_, run)| OldestRun {
                run: run.clone(),
                log_offsets: self
                    .logs
                    .range((run.id.clone(), 0)..=(run.id.clone(), u64::MAX))
                    .map(|((_, offset), _)| *offset)
                    .collect(),
            })
            .collect()
    }

    /// Whether any chunk of a log is stored for `run_id` (for tests of what deleting a
    /// run leaves).
    pub fn has_log_of(&self, run_id: &str) -> bool {
        self.logs
            .range((run_id.to_string(), 0)..=(run_id.to_string(), u64::MAX))
            .next()
            .is_some()
    }
}

impl Store for MemoryStore {
    fn jobs(&self) -> StoreResult<Vec<JobSpec>> {
        Ok(self.jobs.values().cloned().collect())
    }

    fn put_job(&mut self, job: &JobSpec) -> StoreResult<()> {
        self.jobs.insert(job.name.clone(), job.clone());
        Ok(())
    }

    fn create_run(&mut self, run: &RunRecord) -> StoreResult<()> {
        self.run_writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.run_ids.insert(run.id.clone(), run.seq);
        if !run.state.is_terminal() {
            self.active.insert(run.seq);
        }
        self.runs.insert(run.seq, run.clone());
        Ok(())
    }

    fn put_run(&mut self, run: &RunRecord) -> StoreResult<()> {
        self.run_writes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if run.state.is_terminal() {
            self.active.remove(&run.seq);
        }
        self.runs.insert(run.seq, run.clone());
        Ok(())
    }

    fn run(&self, id: &str) -> StoreResult<Option<RunRecord>> {
        self.run_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(self
            .run_ids
            .get(id)
            .and_then(|seq| self.runs.get(seq))
            .cloned())
    }

    fn active_runs(&self) -> StoreResult<Vec<RunRecord>> {
        Ok(self
            .active
            .iter()
            .filter_map(|seq| self.runs.get(seq))
            .cloned()
            .collect())
    }

    fn runs(&self, filter: &RunFilter) -> StoreResult<Listing> {
        let before = filter.before_seq.unwrap_or(u64::MAX);
        let in_order: Box<dyn Iterator<Item = _>> = match filter.after_seq {
            Some(after) if after.saturating_add(1) >= before => Box::new(std::iter::empty()),
            Some(after) => Box::new(self.runs.range(after.saturating_add(1)..before)),
            None => Box::new(self.runs.range(..before).rev()),
        };
        list_newest_first(in_order.map(|(_, run)| Ok(run.clone())), filter)
    }

    fn run_ids_with_prefix(&self, prefix: &str, limit: usize) -> StoreResult<Vec<String>> {
        Ok(self
            .run_ids
            .range(prefix.to_string()..)
            .map(|(id, _)| id)
            .take_while(|id| id.starts_with(prefix))
            .take(limit)
            .cloned()
            .collect())
    }

    fn last_run_seq(&self) -> StoreResult<u64> {
        Ok(self.runs.keys().next_back().copied().unwrap_or(0))
    }

    fn run_count(&self) -> StoreResult<u64> {
        Ok(self.runs.len() as u64)
    }

    fn oldest_runs(&self, from_seq: u64, limit: usize) -> StoreResult<Vec<RunRecord>> {
        Ok(self
            .runs
            .range(from_seq..)
            .take(limit)
            .map(|(_, run)| run.clone())
            .collect())
    }

    fn delete_run(&mut self, run: &RunRecord) -> StoreResult<()> {
        self.runs.remove(&run.seq);
        self.run_ids.remove(&run.id);
        self.active.remove(&run.seq);
        let offsets: Vec<u64> = self
            .logs
            .range((run.id.clone(), 0)..=(run.id.clone(), u64::MAX))
            .map(|((_, offset), _)| *offset)
            .collect();
        for offset in offsets {
            self.logs.remove(&(run.id.clone(), offset));
        }
        Ok(())
    }

    fn delete_found_run(&mut self, found: &OldestRun) -> StoreResult<()> {
        let run = &found.run;
        self.runs.remove(&run.seq);
        self.run_ids.remove(&run.id);
        self.active.remove(&run.seq);
        // As a store that reads nothing here: only the chunks the reader found.
        for offset in &found.log_offsets {
            self.logs.remove(&(run.id.clone(), *offset));
        }
        Ok(())
    }

    fn walks_away(&self) -> bool {
        self.walks_away
    }

    fn put_log_chunk(&mut self, run_id: &str, offset: u64, data: &[u8]) -> StoreResult<()> {
        self.logs
            .insert((run_id.to_string(), offset), data.to_vec());
        Ok(())
    }

    fn delete_log_chunk(&mut self, run_id: &str, offset: u64) -> StoreResult<()> {
        self.logs.remove(&(run_id.to_string(), offset));
        Ok(())
    }

    fn log_chunks(&self, run_id: &str) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        self.log_reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(self
            .logs
            .range((run_id.to_string(), 0)..=(run_id.to_string(), u64::MAX))
            .map(|((_, offset), data)| (*offset, data.clone()))
            .collect())
    }

    fn workers(&self) -> StoreResult<Vec<WorkerStatus>> {
        Ok(self.workers.values().cloned().collect())
    }

    fn put_worker(&mut self, worker: &WorkerStatus) -> StoreResult<()> {
        self.workers.insert(worker.id.clone(), worker.clone());
        Ok(())
    }

    fn job_states(&self) -> StoreResult<Vec<(String, JobState)>> {
        Ok(self
            .job_states
            .iter()
            .map(|(job, state)| (job.clone(), state.clone()))
            .collect())
    }

    fn put_job_state(&mut self, job: &str, state: &JobState) -> StoreResult<()> {
        self.job_states.insert(job.to_string(), state.clone());
        Ok(())
    }

    fn setting(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self.settings.get(key).cloned())
    }

    fn put_setting(&mut self, key: &str, value: &[u8]) -> StoreResult<()> {
        self.settings.insert(key.to_string(), value.to_vec());
        Ok(())
    }

    fn settings(&self) -> StoreResult<Vec<(String, Vec<u8>)>> {
        let mut settings: Vec<_> = self
            .settings
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        settings.sort();
        Ok(settings)
    }

    fn flush(&mut self) -> StoreResult<()> {
        Ok(())
    }

    fn start_flush(&mut self, done: FlushDone) {
        match &self.held_commits {
            Some(held) => held.park(self.runs.len(), done),
            None => done(self.flush()),
        }
    }

    fn is_backlogged(&self) -> bool {
        self.backlogged
    }
}
