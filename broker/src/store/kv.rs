//! The broker's records in any ordered key-value [`Engine`]: one tree per kind of record,
//! runs keyed by sequence number (in the layout of `run_codec`), job spec versions by
//! content.

use super::committer::{Commit, Committer};
use super::engine::{Engine, Tree, Write};
use super::integrity::wall_ms;
use super::run_codec::{self, SpecCache, SpecKey};
use super::unfinished::Unfinished;
use super::FlushDone;
use super::{list_newest_first, Listing, Store, StoreError, StoreResult};
use jobcast_core::store::RunReader;
use jobcast_protocol::{JobSpec, JobState, RunFilter, RunRecord, WorkerStatus};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

/// The runs and job states a batch wrote, not yet given to the engine. A run that
/// changes several times in one batch (created and granted at once, started and ended) is
/// encoded and written once, as it is at the batch's end, and so is a job's state (a
/// run's start and end each change it); reads of a run by id see these first, and every
/// other read of the runs or states writes them out before it reads.
///
/// Job states are written after the runs: a tick's run is created before its job's
/// state says the tick was dealt with, so a broker killed between the two writes fires
/// the tick again at its next start (and finds the run by its derived id), rather than
/// skipping a tick whose run never reached the disk.
#[derive(Default)]
struct Pending {
    by_seq: BTreeMap<u64, PendingRun>,
    by_id: HashMap<String, u64>,
    job_states: BTreeMap<String, JobState>,
}

struct PendingRun {
    run: RunRecord,
    /// Created in this batch: its id entry is written with it.
    created: bool,
    /// Marked (an entry in `active`) before this batch.
    was_marked: bool,
}

pub struct KvStore<E: Engine> {
    engine: E,
    jobs: E::Tree,
    runs: E::Tree,
    /// Job spec versions that runs refer to, by `SpecKey`.
    specs: E::Tree,
    spec_cache: RefCell<SpecCache>,
    pending: RefCell<Pending>,
    run_ids: E::Tree,
    /// The unfinished runs that `scan_from` has passed (`unfinished.rs`): the rest are
    /// among the newest runs, which a start reads.
    active: E::Tree,
    /// Every unfinished run, and where a start's read of the newest begins.
    unfinished: RefCell<Unfinished>,
    /// The highest sequence number written (retention never deletes the newest run).
    last_seq: u64,
    logs: E::Tree,
    workers: E::Tree,
    job_states: E::Tree,
    settings: E::Tree,
    /// Runs deleted by retention, kept as a setting: the count of stored runs is the last
    /// sequence number less these (counting a tree would walk it).
    pruned: u64,
    pruned_changed: bool,
    /// Whether anything was written since the last flush.
    dirty: bool,
    /// Batches flushed over the store's life (a setting written with each).
    commit: u64,
    /// The marker beside the store, for a broker's store (`integrity.rs`): told of each
    /// durable commit, written on a thread of its own.
    marker: Option<super::integrity::MarkerThread>,
    /// Makes batches durable on a thread of its own (`committer.rs`).
    committer: Committer,
    flusher: Arc<super::engine::Flusher>,
}

/// The trees of a store, by name.
pub(super) const TREES: [&str; 9] = [
    "jobs",
    "runs",
    "specs",
    "run_ids",
    "active",
    "logs",
    "workers",
    "job_states",
    "settings",
];

/// Copies every record of a store from one engine to another, as they are; returns how
/// many. The copy is durable when this returns.
pub fn copy_records(from: &impl Engine, to: &impl Engine) -> StoreResult<u64> {
    let mut copied = 0;
    for name in TREES {
        let (source, target) = (from.tree(name)?, to.tree(name)?);
        for item in source.iter() {
            let (key, value) = item?;
            target.insert(&key, &value)?;
            copied += 1;
        }
    }
    to.flush()?;
    Ok(copied)
}

/// The settings key of the pruned-runs count.
const PRUNED: &[u8] = b"pruned_runs";
/// Where a start's read of the newest runs begins (`unfinished.rs`). A store without it
/// (written before it) keeps every unfinished run in `active`.
const SCAN_FROM: &[u8] = b"runs_scan_from";

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(value).unwrap_or_default()
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> StoreResult<T> {
    rmp_serde::from_slice(bytes).map_err(|e| StoreError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

fn log_key(run_id: &str, offset: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(run_id.len() + 9);
    key.extend_from_slice(run_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&offset.to_be_bytes());
    key
}

fn log_prefix(run_id: &str) -> Vec<u8> {
    let mut prefix = run_id.as_bytes().to_vec();
    prefix.push(0);
    prefix
}

impl<E: Engine> KvStore<E> {
    pub fn with_engine(engine: E) -> StoreResult<KvStore<E>> {
        let settings = engine.tree("settings")?;
        let pruned = super::setting_u64(settings.get(PRUNED)?, "pruned-runs count")?.unwrap_or(0);
        let commit =
            super::setting_u64(settings.get(super::integrity::COMMIT_KEY)?, "commit count")?
                .unwrap_or(0);
        let mut store = KvStore {
            committer: Committer::start()?,
            flusher: Arc::new(engine.flusher()),
            jobs: engine.tree("jobs")?,
            runs: engine.tree("runs")?,
            specs: engine.tree("specs")?,
            spec_cache: Default::default(),
            pending: Default::default(),
            run_ids: engine.tree("run_ids")?,
            active: engine.tree("active")?,
            unfinished: Default::default(),
            last_seq: 0,
            logs: engine.tree("logs")?,
            workers: engine.tree("workers")?,
            job_states: engine.tree("job_states")?,
            settings,
            pruned,
            pruned_changed: false,
            engine,
            dirty: false,
            commit,
            marker: None,
        };
        store.find_unfinished()?;
        Ok(store)
    }

    /// Finds the unfinished runs with the two reads of `unfinished.rs`: the marked ones
    /// in `active`, and the newest from `scan_from` on. A store written before
    /// `scan_from` has every unfinished run in `active`, so the invariant holds with it
    /// just past the last run; it is written then, before any run is written without an
    /// entry. An entry a broker killed mid-batch can leave (for a record never written,
    /// or for a run that has ended) is removed.
    fn find_unfinished(&mut self) -> StoreResult<()> {
        self.last_seq = match self.runs.last()? {
            Some((key, _)) => seq_of(&key)?,
            None => 0,
        };
        let (scan_from, written) =
            match super::setting_u64(self.settings.get(SCAN_FROM)?, "runs scan start")? {
                Some(seq) => (seq, false),
                None => {
                    let seq = self.last_seq + 1;
                    self.settings.insert(SCAN_FROM, &seq.to_be_bytes())?;
                    (seq, true)
                }
            };
        let mut runs = Vec::new();
        let from = scan_from.to_be_bytes();
        for item in self
            .runs
            .range(Bound::Included(&from[..]), Bound::Unbounded)
        {
            let (key, bytes) = item?;
            if !self.decode_run(&bytes)?.state.is_terminal() {
                runs.push((seq_of(&key)?, false));
            }
        }
        // Last, so that a run found both ways counts as marked: an engine that writes one
        // by one, killed between a mark and the move of `scan_from`, leaves marks above
        // it, which must be removed when their runs end.
        let mut stale = Vec::new();
        for item in self.active.iter() {
            let (key, _) = item?;
            match self.run_by_seq(&key)? {
                Some(run) if !run.state.is_terminal() => runs.push((run.seq, true)),
                _ => stale.push(key),
            }
        }
        for key in &stale {
            self.active.remove(key)?;
        }
        if written || !stale.is_empty() {
            self.engine.flush()?;
        }
        self.unfinished = RefCell::new(Unfinished::new(scan_from, runs));
        Ok(())
    }

    /// Batches flushed over the store's life.
    pub fn commit(&self) -> u64 {
        self.commit
    }

    /// Keeps `marker` up to date from now on (a broker's store).
    pub fn with_marker(mut self, marker: super::integrity::MarkerKeeper) -> StoreResult<Self> {
        self.marker = Some(super::integrity::MarkerThread::start(marker)?);
        Ok(self)
    }

    /// Writes what a commit records with it (the pruned count, the commit number), and
    /// returns the work that makes it all durable, for the committer.
    fn seal(&mut self) -> StoreResult<Commit> {
        self.settle()?;
        if std::mem::take(&mut self.pruned_changed) {
            self.settings.insert(PRUNED, &self.pruned.to_be_bytes())?;
        }
        let dirty = std::mem::take(&mut self.dirty);
        if dirty {
            self.commit += 1;
            self.settings
                .insert(super::integrity::COMMIT_KEY, &self.commit.to_be_bytes())?;
        }
        let (flusher, commit) = (self.flusher.clone(), self.commit);
        let marker = self.marker.as_ref().map(|marker| marker.teller());
        Ok(Box::new(move || {
            if dirty {
                flusher()?;
            }
            if let Some(marker) = marker {
                let _ = marker.send(commit);
            }
            Ok(())
        }))
    }

    fn run_by_seq(&self, seq: &[u8]) -> StoreResult<Option<RunRecord>> {
        match self.runs.get(seq)? {
            Some(bytes) => Ok(Some(self.decode_run(&bytes)?)),
            None => Ok(None),
        }
    }

    fn decode_run(&self, bytes: &[u8]) -> StoreResult<RunRecord> {
        run_codec::decode_run(bytes, |key| self.spec(key))
    }

    /// A job spec version, from the cache or the specs tree.
    fn spec(&self, key: &SpecKey) -> StoreResult<Arc<JobSpec>> {
        self.spec_cache
            .borrow_mut()
            .get_or_read(key, || self.specs.get(key))
    }

    /// The run as stored, its job spec version written first if it is new.
    fn encode_run(&self, run: &RunRecord) -> StoreResult<Vec<u8>> {
        let (key, new_version) = self.spec_cache.borrow_mut().key_of(&run.spec);
        if let Some(bytes) = new_version {
            self.specs.insert(&key, &bytes)?;
        }
        Ok(run_codec::encode_run(run, key))
    }

    /// Gives the engine the runs and job states this batch wrote so far (see [`Pending`]).
    fn settle(&self) -> StoreResult<()> {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        // The trees the writes name, by index.
        const RUNS: usize = 0;
        const RUN_IDS: usize = 1;
        const ACTIVE: usize = 2;
        const JOB_STATES: usize = 3;
        const SETTINGS: usize = 4;
        let write = |tree, key, value| Write { tree, key, value };
        let mut unfinished = self.unfinished.borrow_mut();
        let mut writes = Vec::with_capacity(pending.by_seq.len() * 2 + pending.job_states.len());
        for (
            seq,
            PendingRun {
                run,
                created,
                was_marked,
            },
        ) in pending.by_seq
        {
            let marked = unfinished.is_marked(seq);
            let seq = seq.to_be_bytes().to_vec();
            let bytes = self.encode_run(&run)?;
            if created {
                // The indexes first and the record last: an engine that writes them one
                // by one, killed in between, leaves index entries without a record
                // (skipped, and cleared at the next open), never a record the indexes do
                // not know (listed, but lost to the broker). Only a run created below
                // `scan_from` (an old store copied in) is marked at once.
                writes.push(write(RUN_IDS, run.id.into_bytes(), Some(seq.clone())));
                if marked {
                    writes.push(write(ACTIVE, seq.clone(), Some(Vec::new())));
                }
                writes.push(write(RUNS, seq, Some(bytes)));
            } else {
                // A mark before the record, its removal after: killed in between, an
                // ended run keeps its entry (cleared at the next open), rather than an
                // unfinished run below `scan_from` having none.
                if marked && !was_marked {
                    writes.push(write(ACTIVE, seq.clone(), Some(Vec::new())));
                }
                writes.push(write(RUNS, seq.clone(), Some(bytes)));
                if was_marked && !marked {
                    writes.push(write(ACTIVE, seq, None));
                }
            }
        }
        // After the runs: a tick's run is created before its job's state says the tick
        // was dealt with (see `Pending`).
        for (job, state) in pending.job_states {
            writes.push(write(JOB_STATES, job.into_bytes(), Some(encode(&state))));
        }
        // `scan_from` moves past the newest runs' oldest, the unfinished runs it passes
        // marked first (the invariant holds after any one of these writes).
        if let Some((scan_from, marks)) = unfinished.advance(self.last_seq) {
            for seq in marks {
                writes.push(write(ACTIVE, seq.to_be_bytes().to_vec(), Some(Vec::new())));
            }
            writes.push(write(
                SETTINGS,
                SCAN_FROM.to_vec(),
                Some(scan_from.to_be_bytes().to_vec()),
            ));
        }
        if writes.is_empty() {
            return Ok(());
        }
        self.engine.write_all(
            &[
                &self.runs,
                &self.run_ids,
                &self.active,
                &self.job_states,
                &self.settings,
            ],
            writes,
        )
    }

    /// Keeps `run` to be written at the batch's end (or at the next read that needs it).
    fn hold(&mut self, run: &RunRecord, created: bool) {
        self.last_seq = self.last_seq.max(run.seq);
        let unfinished = self.unfinished.get_mut();
        let was_marked = unfinished.is_marked(run.seq);
        unfinished.written(run.seq, run.state.is_terminal());
        let pending = self.pending.get_mut();
        match pending.by_seq.get_mut(&run.seq) {
            Some(held) => held.run.clone_from(run),
            None => {
                pending.by_id.insert(run.id.clone(), run.seq);
                pending.by_seq.insert(
                    run.seq,
                    PendingRun {
                        run: run.clone(),
                        created,
                        was_marked,
                    },
                );
            }
        }
    }
}

/// A run's log chunks from a scan of its keys (`log_key`): (offset, bytes).
fn chunks_of(prefix_len: usize, scan: super::engine::Scan<'_>) -> StoreResult<Vec<(u64, Vec<u8>)>> {
    scan.map(|item| {
        let (key, value) = item?;
        let offset: [u8; 8] = key
            .get(prefix_len..)
            .and_then(|offset| offset.try_into().ok())
            .ok_or_else(|| StoreError::Corrupt {
                what: "log key",
                detail: format!("{} bytes", key.len()),
            })?;
        Ok((u64::from_be_bytes(offset), value))
    })
    .collect()
}

/// Listings read from a snapshot of the engine, on another thread.
struct KvReader {
    view: Box<dyn super::engine::View>,
    specs: SpecCache,
}

impl RunReader for KvReader {
    fn back_up(&mut self, to: &std::path::Path) -> StoreResult<jobcast_core::store::Copied> {
        super::location::write_backup(self.view.as_ref(), to)
    }

    fn runs(&mut self, filter: &RunFilter) -> StoreResult<Listing> {
        let to = match filter.before_seq {
            Some(before) => Bound::Excluded(before.to_be_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let (view, specs) = (&self.view, &mut self.specs);
        let scan = match filter.after_seq {
            Some(after) => {
                view.oldest_first("runs", Bound::Excluded(after.to_be_bytes().to_vec()), to)
            }
            None => view.newest_first("runs", to),
        };
        let decoded = scan.map(|item| {
            run_codec::decode_run(&item?.1, |key| {
                specs.get_or_read(key, || view.get("specs", key))
            })
        });
        list_newest_first(decoded, filter)
    }

    fn log_chunks(&mut self, run_id: &str) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        let prefix = log_prefix(run_id);
        chunks_of(prefix.len(), self.view.with_prefix("logs", &prefix))
    }

    fn run(&mut self, id: &str) -> StoreResult<Option<RunRecord>> {
        let Some(seq) = self.view.get("run_ids", id.as_bytes())? else {
            return Ok(None);
        };
        let Some(bytes) = self.view.get("runs", &seq)? else {
            return Ok(None);
        };
        let (view, specs) = (&self.view, &mut self.specs);
        let run = run_codec::decode_run(&bytes, |key| {
            specs.get_or_read(key, || view.get("specs", key))
        })?;
        // As the store's own lookup: only a record of this id counts.
        Ok(Some(run).filter(|run| run.id == id))
    }
}

/// The values of a scan, decoded.
fn decoded<T: DeserializeOwned>(
    what: &'static str,
    scan: super::engine::Scan<'_>,
) -> StoreResult<Vec<T>> {
    scan.map(|item| decode(what, &item?.1)).collect()
}

fn seq_of(key: &[u8]) -> StoreResult<u64> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| StoreError::Corrupt {
        what: "run key",
        detail: format!("{} bytes", key.len()),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

impl<E: Engine> Store for KvStore<E> {
    fn jobs(&self) -> StoreResult<Vec<JobSpec>> {
        decoded("job", self.jobs.iter())
    }

    fn put_job(&mut self, job: &JobSpec) -> StoreResult<()> {
        self.dirty = true;
        self.jobs.insert(job.name.as_bytes(), &encode(job))
    }

    fn create_run(&mut self, run: &RunRecord) -> StoreResult<()> {
        self.dirty = true;
        self.hold(run, true);
        Ok(())
    }

    fn put_run(&mut self, run: &RunRecord) -> StoreResult<()> {
        self.dirty = true;
        self.hold(run, false);
        Ok(())
    }

    fn run(&self, id: &str) -> StoreResult<Option<RunRecord>> {
        {
            let pending = self.pending.borrow();
            if let Some(held) = pending
                .by_id
                .get(id)
                .and_then(|seq| pending.by_seq.get(seq))
            {
                return Ok(Some(held.run.clone()));
            }
        }
        match self.run_ids.get(id.as_bytes())? {
            // An entry whose record was never written may name a number a later run
            // took: only a record of this id counts.
            Some(seq) => Ok(self.run_by_seq(&seq)?.filter(|run| run.id == id)),
            None => Ok(None),
        }
    }

    fn active_runs(&self) -> StoreResult<Vec<RunRecord>> {
        self.settle()?;
        let seqs: Vec<u64> = self.unfinished.borrow().seqs().collect();
        let mut runs = Vec::with_capacity(seqs.len());
        for seq in seqs {
            if let Some(run) = self.run_by_seq(&seq.to_be_bytes())? {
                if !run.state.is_terminal() {
                    runs.push(run);
                }
            }
        }
        Ok(runs)
    }

    fn runs(&self, filter: &RunFilter) -> StoreResult<Listing> {
        self.settle()?;
        let before = filter.before_seq.map(u64::to_be_bytes);
        let to = match &before {
            Some(before) => Bound::Excluded(&before[..]),
            None => Bound::Unbounded,
        };
        let after = filter.after_seq.map(u64::to_be_bytes);
        let scan = match &after {
            Some(after) => self.runs.range(Bound::Excluded(&after[..]), to),
            None => Box::new(self.runs.range(Bound::Unbounded, to).rev()),
        };
        list_newest_first(scan.map(|item| self.decode_run(&item?.1)), filter)
    }

    fn run_ids_with_prefix(&self, prefix: &str, limit: usize) -> StoreResult<Vec<String>> {
        self.settle()?;
        self.run_ids
            .prefix(prefix.as_bytes())
            .take(limit)
            .map(|item| Ok(String::from_utf8_lossy(&item?.0).into_owned()))
            .collect()
    }

    /// Kept, not read: a status or retention step would otherwise write the batch so
    /// far out to read the newest key.
    fn last_run_seq(&self) -> StoreResult<u64> {
        Ok(self.last_seq)
    }

    fn run_count(&self) -> StoreResult<u64> {
        // Runs are numbered from 1, and only retention deletes them (never the newest).
        Ok(self.last_run_seq()?.saturating_sub(self.pruned))
    }

    fn oldest_runs(&self, from_seq: u64, limit: usize) -> StoreResult<Vec<RunRecord>> {
        self.settle()?;
        let from = from_seq.to_be_bytes();
        self.runs
            .range(Bound::Included(&from[..]), Bound::Unbounded)
            .take(limit)
            .map(|item| self.decode_run(&item?.1))
            .collect()
    }

    fn delete_run(&mut self, run: &RunRecord) -> StoreResult<()> {
        self.settle()?;
        self.dirty = true;
        let seq = run.seq.to_be_bytes();
        if self.runs.get(&seq)?.is_none() {
            return Ok(());
        }
        // The log first and the record near the end: killed in between, the record is
        // still there for retention to delete again, and nothing is left unreachable.
        let chunks: Vec<Vec<u8>> = self
            .logs
            .prefix(&log_prefix(&run.id))
            .map(|item| item.map(|(key, _)| key))
            .collect::<StoreResult<_>>()?;
        for key in chunks {
            self.logs.remove(&key)?;
        }
        // Only a marked run has an entry (and a stale one is cleared at open): removing
        // one that is not there would only add a tombstone for the engine to write out
        // and compact.
        let unfinished = self.unfinished.get_mut();
        if unfinished.is_marked(run.seq) {
            self.active.remove(&seq)?;
        }
        unfinished.deleted(run.seq);
        self.runs.remove(&seq)?;
        self.run_ids.remove(run.id.as_bytes())?;
        self.pruned += 1;
        // Written once per commit, in it (see `flush`).
        self.pruned_changed = true;
        Ok(())
    }

    fn put_log_chunk(&mut self, run_id: &str, offset: u64, data: &[u8]) -> StoreResult<()> {
        self.dirty = true;
        self.logs.insert(&log_key(run_id, offset), data)
    }

    fn delete_log_chunk(&mut self, run_id: &str, offset: u64) -> StoreResult<()> {
        self.dirty = true;
        self.logs.remove(&log_key(run_id, offset))
    }

    fn log_chunks(&self, run_id: &str) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        let prefix = log_prefix(run_id);
        chunks_of(prefix.len(), self.logs.prefix(&prefix))
    }

    fn workers(&self) -> StoreResult<Vec<WorkerStatus>> {
        decoded("worker", self.workers.iter())
    }

    fn put_worker(&mut self, worker: &WorkerStatus) -> StoreResult<()> {
        self.dirty = true;
        self.workers.insert(worker.id.as_bytes(), &encode(worker))
    }

    fn job_states(&self) -> StoreResult<Vec<(String, JobState)>> {
        self.settle()?;
        self.job_states
            .iter()
            .map(|item| {
                let (key, value) = item?;
                Ok((
                    String::from_utf8_lossy(&key).into_owned(),
                    decode("job state", &value)?,
                ))
            })
            .collect()
    }

    fn put_job_state(&mut self, job: &str, state: &JobState) -> StoreResult<()> {
        self.dirty = true;
        let held = &mut self.pending.get_mut().job_states;
        match held.get_mut(job) {
            Some(kept) => kept.clone_from(state),
            None => {
                held.insert(job.to_string(), state.clone());
            }
        }
        Ok(())
    }

    fn setting(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.settings.get(key.as_bytes())
    }

    fn put_setting(&mut self, key: &str, value: &[u8]) -> StoreResult<()> {
        self.dirty = true;
        self.settings.insert(key.as_bytes(), value)
    }

    fn settings(&self) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.settings
            .iter()
            .map(|item| {
                let (key, value) = item?;
                Ok((String::from_utf8_lossy(&key).into_owned(), value))
            })
            .collect()
    }

    fn is_backlogged(&self) -> bool {
        self.engine.is_backlogged()
    }

    fn reader(&self) -> Option<Box<dyn RunReader>> {
        // Not written out, the loop reads itself (and meets the error there).
        self.settle().ok()?;
        Some(Box::new(KvReader {
            view: self.engine.view()?,
            specs: SpecCache::default(),
        }))
    }

    /// Through the committer, after whatever it still has: commits stay in order.
    fn flush(&mut self) -> StoreResult<()> {
        let commit = self.seal()?;
        self.committer.wait(commit)
    }

    fn start_flush(&mut self, done: FlushDone) {
        match self.seal() {
            Ok(commit) => self.committer.submit(commit, done),
            Err(e) => done(Err(e)),
        }
    }

    fn close_cleanly(&mut self) -> StoreResult<()> {
        self.flush()?;
        if !self.engine.flush_journal()? {
            // Durable all the same: the next start reads the journal, as after a kill.
            tracing::warn!("the journal was not written into the store's tables in time: the next start replays it");
            return Ok(());
        }
        if let Some(marker) = self.marker.take() {
            marker.stopped(self.commit, wall_ms())?;
        }
        tracing::info!(commit = self.commit, "store closed cleanly");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine::{Entry, Scan};
    use crate::store::SledStore;
    use jobcast_protocol::{Exec, RunState};
    use std::collections::{BTreeMap, HashMap};
    use std::ops::RangeBounds;
    use std::sync::atomic::{AtomicI64, Ordering};
    use std::sync::{Arc, Mutex};

    #[test]
    fn runs_written_in_the_older_layout_are_read_beside_new_ones() {
        let mut store = SledStore::temporary().unwrap();
        let spec = JobSpec::new("old-job", "default", Exec::Command(vec!["true".into()]));
        let old = RunRecord::queued("oldrun".into(), 1, spec.clone(), 1, "enqueued");
        // As brokers before the compact layout wrote it: a map, spec inline.
        let old_bytes = rmp_serde::to_vec_named(&old).unwrap();
        Tree::insert(&store.runs, &1u64.to_be_bytes(), &old_bytes).unwrap();
        Tree::insert(&store.run_ids, b"oldrun", &1u64.to_be_bytes()).unwrap();
        let mut new = RunRecord::queued("newrun".into(), 2, spec, 2, "enqueued");
        new.state = RunState::Succeeded;
        store.create_run(&new).unwrap();
        assert_eq!(store.run("oldrun").unwrap(), Some(old.clone()));
        assert_eq!(store.run("newrun").unwrap(), Some(new.clone()));
        let listed = store
            .runs(&RunFilter {
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .runs;
        assert_eq!(listed, vec![new, old]);
    }

    type SharedMap = Arc<Mutex<BTreeMap<Vec<u8>, Vec<u8>>>>;

    /// An engine in memory whose writes stop reaching "disk" after a budget: the state
    /// a broker killed at that point leaves.
    #[derive(Clone, Default)]
    struct CutEngine {
        trees: Arc<Mutex<HashMap<String, SharedMap>>>,
        /// Writes still kept; negative: all.
        budget: Arc<AtomicI64>,
    }

    struct CutTree {
        map: SharedMap,
        budget: Arc<AtomicI64>,
    }

    impl CutTree {
        fn write(&self, apply: impl FnOnce(&mut BTreeMap<Vec<u8>, Vec<u8>>)) {
            let left = self.budget.load(Ordering::SeqCst);
            if left == 0 {
                return;
            }
            if left > 0 {
                self.budget.store(left - 1, Ordering::SeqCst);
            }
            apply(&mut self.map.lock().unwrap());
        }

        fn entries(&self, keep: impl Fn(&Vec<u8>) -> bool) -> Scan<'_> {
            let entries: Vec<_> = self
                .map
                .lock()
                .unwrap()
                .iter()
                .filter(|(k, _)| keep(k))
                .map(|(k, v)| Ok((k.clone(), v.clone())))
                .collect();
            Box::new(entries.into_iter())
        }
    }

    impl Tree for CutTree {
        fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
            Ok(self.map.lock().unwrap().get(key).cloned())
        }
        fn insert(&self, key: &[u8], value: &[u8]) -> StoreResult<()> {
            self.write(|m| {
                m.insert(key.to_vec(), value.to_vec());
            });
            Ok(())
        }
        fn remove(&self, key: &[u8]) -> StoreResult<()> {
            self.write(|m| {
                m.remove(key);
            });
            Ok(())
        }
        fn range(&self, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Scan<'_> {
            self.entries(|k| RangeBounds::<[u8]>::contains(&(from, to), k.as_slice()))
        }
        fn prefix(&self, prefix: &[u8]) -> Scan<'_> {
            self.entries(|k| k.starts_with(prefix))
        }
        fn last(&self) -> StoreResult<Option<Entry>> {
            let map = self.map.lock().unwrap();
            Ok(map.iter().next_back().map(|(k, v)| (k.clone(), v.clone())))
        }
    }

    impl Engine for CutEngine {
        type Tree = CutTree;
        fn tree(&self, name: &str) -> StoreResult<CutTree> {
            let map = self
                .trees
                .lock()
                .unwrap()
                .entry(name.to_string())
                .or_default()
                .clone();
            Ok(CutTree {
                map,
                budget: self.budget.clone(),
            })
        }
        fn flush(&self) -> StoreResult<()> {
            Ok(())
        }
        fn flusher(&self) -> crate::store::engine::Flusher {
            Box::new(|| Ok(()))
        }
    }

    fn queued(seq: u64, id: &str) -> RunRecord {
        let spec = JobSpec::new("job", "default", Exec::Command(vec!["true".into()]));
        RunRecord::queued(id.into(), seq, spec, seq, "enqueued")
    }

    fn with_state(mut run: RunRecord, state: RunState) -> RunRecord {
        run.state = state;
        run
    }

    /// The batch a broker may be killed in the middle of: its writes, in order.
    fn unflushed_batch(store: &mut KvStore<CutEngine>) {
        store.create_run(&queued(2, "run-2")).unwrap();
        let r1 = queued(1, "run-1");
        store
            .put_run(&with_state(r1.clone(), RunState::Assigned))
            .unwrap();
        store.put_run(&with_state(r1, RunState::Succeeded)).unwrap();
        store
            .create_run(&with_state(queued(3, "run-3"), RunState::Missed))
            .unwrap();
        // A tick of "job" at 4: its run (by the tick's derived id), then the job's state
        // says the tick was dealt with; and a run's start changes the state again.
        store.create_run(&queued(4, "tick-4")).unwrap();
        store.put_job_state("job", &job_state(4, None)).unwrap();
        store.put_job_state("job", &job_state(4, Some(5))).unwrap();
        // The batch's end: its runs and states go to the engine.
        store.settle().unwrap();
    }

    fn job_state(last_tick_ms: u64, last_started_ms: Option<u64>) -> JobState {
        JobState {
            last_tick_ms,
            last_started_ms,
            ..Default::default()
        }
    }

    #[test]
    fn a_broker_killed_after_any_write_of_a_batch_leaves_a_store_it_can_trust() {
        let writes = {
            let engine = CutEngine::default();
            engine.budget.store(-1, Ordering::SeqCst);
            let mut store = KvStore::with_engine(engine.clone()).unwrap();
            store.create_run(&queued(1, "run-1")).unwrap();
            store.settle().unwrap();
            engine.budget.store(1_000, Ordering::SeqCst);
            unflushed_batch(&mut store);
            1_000 - engine.budget.load(Ordering::SeqCst)
        };
        // run-2 created (id, record), run-1 granted and ended in the same batch (its
        // record once: among the newest runs, it has no `active` entry), run-3 created
        // ended (id, record), tick-4 created (id, record), the job's state once.
        assert_eq!(writes, 8, "{writes} writes");
        for cut in 0..=writes {
            let engine = CutEngine::default();
            engine.budget.store(-1, Ordering::SeqCst);
            let mut store = KvStore::with_engine(engine.clone()).unwrap();
            store.create_run(&queued(1, "run-1")).unwrap();
            store.settle().unwrap();
            engine.budget.store(cut, Ordering::SeqCst);
            unflushed_batch(&mut store);

            // Killed there; the next broker opens what reached the disk, and the client
            // of the unanswered enqueue of run-2 asks again (same id, as with a key).
            engine.budget.store(-1, Ordering::SeqCst);
            let mut store = KvStore::with_engine(engine.clone()).unwrap();
            if store.run("run-2").unwrap().is_none() {
                let seq = store.last_run_seq().unwrap() + 1;
                store.create_run(&queued(seq, "run-2")).unwrap();
            }

            let listed = store
                .runs(&RunFilter {
                    limit: 100,
                    ..Default::default()
                })
                .unwrap()
                .runs;
            for run in &listed {
                assert_eq!(
                    store.run(&run.id).unwrap().as_ref(),
                    Some(run),
                    "cut {cut}: {} listed but not found by its id",
                    run.id
                );
            }
            let ids: Vec<&str> = listed.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(
                ids.iter().filter(|id| **id == "run-2").count(),
                1,
                "cut {cut}: {ids:?}"
            );
            let mut active: Vec<String> = store
                .active_runs()
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect();
            let mut unfinished: Vec<String> = listed
                .iter()
                .filter(|r| !r.state.is_terminal())
                .map(|r| r.id.clone())
                .collect();
            active.sort();
            unfinished.sort();
            assert_eq!(active, unfinished, "cut {cut}");
            // A tick the job's state says was dealt with has its run: the next start
            // would not fire it again.
            let states = store.job_states().unwrap();
            let ticked = states
                .iter()
                .any(|(job, s)| job == "job" && s.last_tick_ms == 4);
            assert!(
                !ticked || ids.contains(&"tick-4"),
                "cut {cut}: tick 4 recorded without its run: {ids:?}"
            );
        }
    }

    /// Runs that change several times in one batch are written once, as they end it; a
    /// read by id sees the latest change before the batch ends, and the unfinished index
    /// agrees with the states, before and after the store is opened again.
    #[test]
    fn a_run_changed_several_times_in_a_batch_is_written_once_as_it_ends_it() {
        let engine = CutEngine::default();
        engine.budget.store(-1, Ordering::SeqCst);
        let mut store = KvStore::with_engine(engine.clone()).unwrap();
        engine.budget.store(1_000, Ordering::SeqCst);
        let granted = queued(1, "granted");
        store.create_run(&granted).unwrap();
        store
            .put_run(&with_state(granted.clone(), RunState::Assigned))
            .unwrap();
        let ended = queued(2, "ended");
        store.create_run(&ended).unwrap();
        store
            .put_run(&with_state(ended.clone(), RunState::Running))
            .unwrap();
        store
            .put_run(&with_state(ended, RunState::Succeeded))
            .unwrap();
        assert_eq!(
            engine.budget.load(Ordering::SeqCst),
            1_000,
            "nothing written before the batch ends"
        );
        assert_eq!(
            store.run("ended").unwrap().unwrap().state,
            RunState::Succeeded
        );
        store.flush().unwrap();
        // The spec, "granted" (id, record: among the newest runs, no `active` entry),
        // "ended" (id, record), and the commit's number.
        assert_eq!(1_000 - engine.budget.load(Ordering::SeqCst), 6);
        engine.budget.store(-1, Ordering::SeqCst);
        for store in [store, KvStore::with_engine(engine.clone()).unwrap()] {
            let active: Vec<String> = store
                .active_runs()
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect();
            assert_eq!(active, ["granted"]);
            assert_eq!(
                store.run("granted").unwrap().unwrap().state,
                RunState::Assigned
            );
            assert_eq!(
                store.run("ended").unwrap().unwrap().state,
                RunState::Succeeded
            );
        }
    }
    /// The runs of an engine's `active` tree, by sequence number.
    fn marked(engine: &CutEngine) -> Vec<u64> {
        engine
            .tree("active")
            .unwrap()
            .entries(|_| true)
            .map(|item| seq_of(&item.unwrap().0).unwrap())
            .collect()
    }

    /// Only the runs still unfinished once the newest runs have moved past them have an
    /// entry in `active`; a start finds every unfinished run, however old, through those
    /// entries and a read of the newest.
    #[test]
    fn a_start_finds_every_unfinished_run_however_old_and_only_old_ones_have_an_entry() {
        use super::super::unfinished::NEWEST;
        let engine = CutEngine::default();
        engine.budget.store(-1, Ordering::SeqCst);
        let mut store = KvStore::with_engine(engine.clone()).unwrap();
        let total = NEWEST + 300;
        // Runs 1 and 2 stay unfinished; every other one ends in the batch that made it,
        // except the newest 10, still running.
        for seq in 1..=total {
            let run = queued(seq, &format!("run-{seq}"));
            store.create_run(&run).unwrap();
            if seq > 2 && seq <= total - 10 {
                store
                    .put_run(&with_state(run, RunState::Succeeded))
                    .unwrap();
            }
            if seq % 100 == 0 {
                store.flush().unwrap();
            }
        }
        store.flush().unwrap();
        assert_eq!(marked(&engine), [1, 2], "only the old unfinished runs");
        // A marked run that ends loses its entry.
        let old = store.run("run-2").unwrap().unwrap();
        store.put_run(&with_state(old, RunState::Failed)).unwrap();
        store.flush().unwrap();
        assert_eq!(marked(&engine), [1]);

        let expected: Vec<u64> = std::iter::once(1).chain(total - 9..=total).collect();
        let reopened = KvStore::with_engine(engine.clone()).unwrap();
        let mut found: Vec<u64> = reopened
            .active_runs()
            .unwrap()
            .iter()
            .map(|r| r.seq)
            .collect();
        found.sort();
        assert_eq!(found, expected);
    }

    /// A store written before `scan_from` has every unfinished run in `active`: it opens
    /// with them all found, and its runs from then on get no entry.
    #[test]
    fn a_store_that_indexed_every_unfinished_run_opens_with_them_all_and_indexes_no_new_one() {
        let engine = CutEngine::default();
        engine.budget.store(-1, Ordering::SeqCst);
        let mut store = KvStore::with_engine(engine.clone()).unwrap();
        for seq in 1..=3 {
            store
                .create_run(&queued(seq, &format!("run-{seq}")))
                .unwrap();
        }
        store.flush().unwrap();
        drop(store);
        // As the older layout left it: an entry per unfinished run, no scan start.
        let (active, settings) = (
            engine.tree("active").unwrap(),
            engine.tree("settings").unwrap(),
        );
        for seq in 1..=3u64 {
            active.insert(&seq.to_be_bytes(), &[]).unwrap();
        }
        settings.remove(SCAN_FROM).unwrap();

        let mut store = KvStore::with_engine(engine.clone()).unwrap();
        assert_eq!(store.active_runs().unwrap().len(), 3);
        store.create_run(&queued(4, "run-4")).unwrap();
        store.flush().unwrap();
        assert_eq!(marked(&engine), [1, 2, 3], "run 4 has no entry");
        let store = KvStore::with_engine(engine.clone()).unwrap();
        let mut found: Vec<u64> = store.active_runs().unwrap().iter().map(|r| r.seq).collect();
        found.sort();
        assert_eq!(found, [1, 2, 3, 4]);
    }

    /// An engine that writes one by one, killed between the marks of a commit and the
    /// move of `scan_from`, leaves entries for runs above it: they count as marked, and
    /// go when their runs end.
    #[test]
    fn an_entry_left_above_the_scan_start_goes_when_its_run_ends() {
        let engine = CutEngine::default();
        engine.budget.store(-1, Ordering::SeqCst);
        let mut store = KvStore::with_engine(engine.clone()).unwrap();
        let run = queued(1, "run-1");
        store.create_run(&run).unwrap();
        store.flush().unwrap();
        drop(store);
        engine
            .tree("active")
            .unwrap()
            .insert(&1u64.to_be_bytes(), &[])
            .unwrap();

        let mut store = KvStore::with_engine(engine.clone()).unwrap();
        assert_eq!(store.active_runs().unwrap().len(), 1);
        store
            .put_run(&with_state(run, RunState::Succeeded))
            .unwrap();
        store.flush().unwrap();
        assert!(marked(&engine).is_empty(), "{:?}", marked(&engine));
    }

    /// Entries a broker killed mid-batch can leave, for a run that has ended or for a
    /// record never written, are removed when the store opens.
    #[test]
    fn entries_for_ended_or_missing_runs_are_removed_at_open() {
        let engine = CutEngine::default();
        engine.budget.store(-1, Ordering::SeqCst);
        let mut store = KvStore::with_engine(engine.clone()).unwrap();
        store.create_run(&queued(1, "open")).unwrap();
        store
            .create_run(&with_state(queued(2, "ended"), RunState::Succeeded))
            .unwrap();
        store.flush().unwrap();
        drop(store);
        let active = engine.tree("active").unwrap();
        for seq in [1u64, 2, 3] {
            active.insert(&seq.to_be_bytes(), &[]).unwrap();
        }
        let store = KvStore::with_engine(engine.clone()).unwrap();
        assert_eq!(marked(&engine), [1], "the unfinished run's entry stays");
        let found: Vec<u64> = store.active_runs().unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(found, [1]);
    }
}
