//! The broker's records in any ordered key-value [`Engine`]: one tree per kind of record,
//! runs keyed by sequence number (in the layout of `run_codec`), job spec versions by
//! content.
//!
//! The loop never writes to the engine: a batch's writes are staged in memory and handed
//! to the committer when the batch is sealed. A broker's store (`with_log`) makes them
//! durable in its write-ahead log (`wal.rs`) and gives them to the engine afterwards, on
//! the applier's thread, so that no answer waits for the engine's locks; a store without a
//! log gives them to the engine on the committer's thread before it syncs. Until the
//! engine has a batch's writes, the loop's reads look at them first (`get`, and `scan`,
//! which lays them over the engine's records).

use super::committer::{Commit, Committer};
use super::engine::{Engine, Entry, Tree, View, Write};
use super::integrity::wall_ms;
use super::run_codec::{self, SpecCache, SpecKey};
use super::unfinished::Unfinished;
use super::wal::LogWriter;
use super::FlushDone;
use super::{list_newest_first, Listing, Store, StoreError, StoreResult};
use jobcast_core::store::{OldestRun, RunReader};
use jobcast_protocol::{JobSpec, JobState, RunFilter, RunRecord, WorkerStatus};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// The runs and job states a batch wrote, held until the batch's end. A run that changes
/// several times in one batch (created and granted at once, started and ended) is staged
/// once, as it is at the batch's end, and so is a job's state (a run's start and end each
/// change it); reads of a run see these first, and every other read of the runs or states
/// stages them before it reads.
///
/// A run is held encoded: encoding it at each change costs about what copying the record
/// did, and the batch's end then has nothing left to encode.
///
/// Job states are written after the runs: a tick's run is created before its job's
/// state says the tick was dealt with, so a broker killed between the two writes fires
/// the tick again at its next start (and finds the run by its derived id), rather than
/// skipping a tick whose run never reached the disk.
#[derive(Default)]
struct Pending {
    by_seq: BTreeMap<u64, PendingRun>,
    /// In no order (they are written in one batch): a burst puts a thousand, and a hash
    /// finds each with one comparison of names instead of a dozen.
    job_states: jobcast_core::fast_hash::FastMap<String, JobState>,
}

struct PendingRun {
    /// The record as stored (`run_codec`).
    bytes: Vec<u8>,
    /// Created in this batch (its id entry is staged already).
    created: bool,
    /// Marked (an entry in `active`) before this batch.
    was_marked: bool,
}

pub struct KvStore<E: Engine> {
    /// Shared with the committer's thread, which gives it each batch's writes.
    engine: Arc<E>,
    /// The trees, in the order of [`TREES`]. `specs` holds the job spec versions runs
    /// refer to, by `SpecKey`; `active` the unfinished runs that `scan_from` has passed
    /// (`unfinished.rs`): the rest are among the newest runs, which a start reads.
    trees: Arc<Vec<E::Tree>>,
    spec_cache: RefCell<SpecCache>,
    pending: RefCell<Pending>,
    /// The writes of this batch so far, in order: the loop never writes to the engine
    /// itself (its locks are held across fsyncs by the engine's own work); the committer
    /// gives them to it once the batch is sealed.
    staged: RefCell<Staged>,
    /// Writes handed over that the engine may not have yet, oldest first, by their
    /// number: reads look at them first.
    in_flight: RefCell<VecDeque<(u64, Arc<Staged>)>>,
    /// The number of the last batch of writes handed over (each that has writes is
    /// numbered, without gaps: in the log, a record's number).
    handed_over: Cell<u64>,
    /// The number of the last batch the engine has (set by the thread that gives it).
    applied: Arc<AtomicU64>,
    /// Every unfinished run, and where a start's read of the newest begins.
    unfinished: RefCell<Unfinished>,
    /// Which run ids may be taken, from memory (`run_ids.rs`).
    run_ids: RefCell<super::run_ids::RunIds>,
    /// The highest sequence number written (retention never deletes the newest run).
    last_seq: u64,
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
    /// Makes batches durable on a thread of its own (`committer.rs`). Before `log`, so
    /// that it stops first: its commits hand work to the log's applier.
    committer: Committer,
    flusher: Arc<super::engine::Flusher>,
    /// The write-ahead log, for a broker's store.
    log: Option<Arc<Logged>>,
}

/// The write-ahead log of a store, and the thread that gives the engine what it holds.
struct Logged {
    /// Used by the committer's thread only.
    writer: Mutex<LogWriter>,
    /// Gives the engine each logged batch, in order, and cuts the log.
    applier: Committer,
    /// Why the applier stopped, if it did: no later batch is taken (a restart replays the
    /// log into the engine).
    failed: Arc<Mutex<Option<String>>>,
    /// The log's directory, size of segment and spare segment, for its cuts.
    dir: Arc<Path>,
    segment_bytes: u64,
    spare: super::wal::Spare,
    /// Syncs the engine before a cut.
    flusher: Arc<super::engine::Flusher>,
}

/// Batches logged but not yet given to the engine beyond which the store says it is
/// backlogged (retention waits).
const APPLY_BACKLOG: u64 = 16;
/// Batches the applier holds waiting before a commit waits for room: memory stays bounded
/// when the engine is slow, and the store's own backlog shows it.
const APPLY_QUEUE: usize = 64;

impl Logged {
    fn writer(&self) -> StoreResult<std::sync::MutexGuard<'_, LogWriter>> {
        self.writer
            .lock()
            .map_err(|_| StoreError::Engine("the log writer's lock is poisoned".into()))
    }

    /// Refuses work once the applier has failed.
    fn check(&self) -> StoreResult<()> {
        match self.failed.lock().ok().and_then(|failed| failed.clone()) {
            Some(why) => Err(StoreError::Engine(
                format!("the store's engine could not take a batch its log holds ({why}); a restart replays the log").into(),
            )),
            None => Ok(()),
        }
    }

    /// Hands `work` to the applier; a failure is kept for `check`.
    fn apply(&self, work: Commit) {
        let failed = self.failed.clone();
        self.applier.submit(
            work,
            Box::new(move |outcome| {
                if let (Err(e), Ok(mut failed)) = (outcome, failed.lock()) {
                    failed.get_or_insert_with(|| e.to_string());
                }
            }),
        );
    }

    /// Logs batch `number` (not synced) and hands `apply`, which gives the engine its
    /// writes, to the applier. When the append filled a segment, the applier then cuts
    /// the log: once the engine has synced what it was given, the full segments go.
    fn log(&self, number: u64, staged: &Staged, apply: Commit) -> StoreResult<()> {
        let closed = self.writer()?.append(number, &staged.writes)?;
        self.apply(apply);
        if let Some(closed) = closed {
            let (dir, spare, flusher) =
                (self.dir.clone(), self.spare.clone(), self.flusher.clone());
            let segment_bytes = self.segment_bytes;
            self.apply(Box::new(move || {
                flusher()?;
                super::wal::remove_through(&dir, closed)?;
                super::wal::prepare_spare(&dir, closed, segment_bytes, &spare)
            }));
        }
        Ok(())
    }
}

/// The settings key of the number of the last logged batch the engine has.
const LOG_APPLIED: &[u8] = b"log_applied";

/// The write that records, in the same engine batch as its writes, that the engine has
/// logged batch `number`.
fn log_position(number: u64) -> Write {
    Write {
        tree: SETTINGS,
        key: LOG_APPLIED.to_vec(),
        value: Some(number.to_be_bytes().to_vec()),
    }
}

/// Gives `engine` the records of the write-ahead log in `dir` that it does not have, in
/// order, and makes everything it holds durable: before a store is opened on it, and
/// before its marker is checked (the log holds acknowledged writes). With `repair`,
/// damage in the log ends the replay and is returned instead of refused.
pub fn replay_log<E: Engine>(
    engine: &E,
    dir: &Path,
    repair: bool,
) -> StoreResult<super::wal::Replayed> {
    let trees = TREES
        .iter()
        .map(|name| engine.tree(name))
        .collect::<StoreResult<Vec<_>>>()?;
    let applied =
        super::setting_u64(trees[SETTINGS].get(LOG_APPLIED)?, "log position")?.unwrap_or(0);
    let replayed = super::wal::replay(dir, applied, repair, |number, writes| {
        engine.write_all(&trees, &[&writes, &[log_position(number)]])
    })?;
    if replayed.applied > 0 {
        tracing::info!(
            records = replayed.applied,
            last = replayed.last,
            "replayed the store's log into its engine"
        );
    }
    // Before the log's records go (`with_log`): what the engine holds from an earlier
    // process may not be on the disk yet, replayed or not.
    engine.sync_everything()?;
    Ok(replayed)
}

/// The trees of a store, by name; a [`Write`] names its tree by its index here.
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
const JOBS: usize = 0;
const RUNS: usize = 1;
const SPECS: usize = 2;
const RUN_IDS: usize = 3;
const ACTIVE: usize = 4;
const LOGS: usize = 5;
const WORKERS: usize = 6;
const JOB_STATES: usize = 7;
const SETTINGS: usize = 8;

/// The writes of one batch in the order they were made.
#[derive(Default)]
struct Staged {
    writes: Vec<Write>,
    /// By tree, where the newest write of each key is, built as far as reads of that
    /// tree have needed it (most trees of most batches are never read by key before the
    /// engine has them; a new run's id is, to check it is not taken).
    index: Mutex<Vec<TreeIndex>>,
}

/// Each key a batch wrote to one tree, and where its newest write is in
/// `Staged::writes`, for the writes before `upto`.
#[derive(Default)]
struct TreeIndex {
    keys: BTreeMap<Vec<u8>, usize>,
    upto: usize,
}

impl Staged {
    fn push(&mut self, tree: usize, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.writes.push(Write { tree, key, value });
    }

    /// The index, with `tree`'s brought up to every write so far.
    fn indexed(&self, tree: usize) -> std::sync::MutexGuard<'_, Vec<TreeIndex>> {
        let mut index = self
            .index
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if index.is_empty() {
            index.resize_with(TREES.len(), TreeIndex::default);
        }
        if let Some(indexed) = index.get_mut(tree) {
            let from = indexed.upto;
            for (at, write) in self.writes.iter().enumerate().skip(from) {
                if write.tree == tree {
                    indexed.keys.insert(write.key.clone(), at);
                }
            }
            indexed.upto = self.writes.len();
        }
        index
    }

    /// The newest write of `key`, if this batch wrote it: its value, or `None` (removed).
    fn newest(&self, tree: usize, key: &[u8]) -> Option<Option<&[u8]>> {
        let at = *self.indexed(tree).get(tree)?.keys.get(key)?;
        Some(self.writes.get(at)?.value.as_deref())
    }

    /// Lays the newest write of each key of `tree` in the range over `over`.
    fn lay_over<'a>(
        &'a self,
        tree: usize,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        over: &mut BTreeMap<&'a [u8], Option<&'a [u8]>>,
    ) {
        if is_empty_range(range) {
            return;
        }
        let index = self.indexed(tree);
        let Some(indexed) = index.get(tree) else {
            return;
        };
        for (_, at) in indexed.keys.range::<[u8], _>(range) {
            if let Some(write) = self.writes.get(*at) {
                over.insert(&write.key, write.value.as_deref());
            }
        }
    }
}

/// Whether no key lies between the bounds (a `BTreeMap` panics on some such ranges).
fn is_empty_range((from, to): (Bound<&[u8]>, Bound<&[u8]>)) -> bool {
    match (from, to) {
        (Bound::Included(a), Bound::Included(b)) => a > b,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b)) => {
            a >= b
        }
        _ => false,
    }
}

/// The first key after every key that starts with `prefix`; `None`: no such key.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// A key and its newest value in writes not yet given to the engine (`None`: removed).
type Overwrite = (Vec<u8>, Option<Vec<u8>>);

/// An engine's records in key order (or reversed), with the writes not yet given to it
/// laid over them: a key written there reads as written, or not at all if removed.
struct Overlaid<'a> {
    engine: std::iter::Peekable<Box<dyn Iterator<Item = StoreResult<Entry>> + 'a>>,
    over: std::iter::Peekable<std::vec::IntoIter<Overwrite>>,
    newest_first: bool,
}

impl Iterator for Overlaid<'_> {
    type Item = StoreResult<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        use std::cmp::Ordering;
        loop {
            let order = match (self.engine.peek(), self.over.peek()) {
                (None, None) => return None,
                (Some(Err(_)) | Some(Ok(_)), None) => return self.engine.next(),
                (Some(Err(_)), Some(_)) => return self.engine.next(),
                (None, Some(_)) => Ordering::Greater,
                (Some(Ok((stored, _))), Some((over, _))) => {
                    let order = stored.cmp(over);
                    if self.newest_first {
                        order.reverse()
                    } else {
                        order
                    }
                }
            };
            if order == Ordering::Less {
                return self.engine.next();
            }
            if order == Ordering::Equal {
                self.engine.next();
            }
            if let (key, Some(value)) = self.over.next()? {
                return Some(Ok((key, value)));
            }
        }
    }
}

/// Where the committer puts views of the store as a batch leaves it, for that batch's
/// readers, once it has given the engine the batch's writes.
#[derive(Clone, Default)]
struct ViewSlot(Arc<(Mutex<Option<SharedView>>, Condvar)>);

/// A view for a batch's readers, or why there is none.
type SharedView = Result<Arc<dyn View>, String>;

impl ViewSlot {
    fn fill(&self, view: SharedView) {
        let (slot, filled) = &*self.0;
        if let Ok(mut slot) = slot.lock() {
            slot.get_or_insert(view);
        }
        filled.notify_all();
    }

    /// Waits for the view (a reader is used once its batch is durable, so at once).
    fn wait(&self) -> StoreResult<Arc<dyn View>> {
        let (slot, filled) = &*self.0;
        let deadline = std::time::Instant::now() + VIEW_WAIT;
        let mut slot = slot
            .lock()
            .map_err(|_| unreadable("a reader's view was poisoned"))?;
        loop {
            if let Some(view) = &*slot {
                return view.clone().map_err(|why| unreadable(&why));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(unreadable(
                    "the batch a reader was asked in was not committed in time",
                ));
            }
            slot = filled
                .wait_timeout(slot, left)
                .map_err(|_| unreadable("a reader's view was poisoned"))?
                .0;
        }
    }
}

/// The longest a reader waits for its batch's view.
const VIEW_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

fn unreadable(why: &str) -> StoreError {
    StoreError::Engine(why.to_string().into())
}

/// Fills a [`ViewSlot`] from the committer; if the commit ends without (it failed, or an
/// earlier one did), the readers are told.
struct ViewFiller(Option<ViewSlot>);

impl ViewFiller {
    fn fill(mut self, view: Option<Box<dyn View>>) {
        if let Some(slot) = self.0.take() {
            slot.fill(
                view.map(Arc::from)
                    .ok_or_else(|| "the store gives no views".to_string()),
            );
        }
    }
}

impl Drop for ViewFiller {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            slot.fill(Err("the batch was not committed".to_string()));
        }
    }
}

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
/// The settings key of the store's format: what a broker must understand to open it.
const STORE_FORMAT: &[u8] = b"store_format";
/// 1: the unfinished runs are the newest from `runs_scan_from` on and the older ones
/// `active` holds (a broker before it would miss the newest). A store without the setting
/// was written before it, and is read as it is. 2: a write-ahead log beside the store
/// (`wal.rs`) may hold acknowledged writes the engine does not have yet (a broker before
/// it would start without them).
const STORE_FORMAT_VERSION: u64 = 2;
/// Where a start's read of the newest runs begins (`unfinished.rs`). A store without it
/// (written before it) keeps every unfinished run in `active`.
const SCAN_FROM: &[u8] = b"runs_scan_from";

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Room for a job's state or a worker's status at once: growing the buffer field by
    // field was a third of encoding one (a burst of ticks writes a state per job).
    let mut bytes = Vec::with_capacity(256);
    match rmp_serde::encode::write_named(&mut bytes, value) {
        Ok(()) => bytes,
        Err(_) => Vec::new(),
    }
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
        let trees = TREES
            .iter()
            .map(|name| engine.tree(name))
            .collect::<StoreResult<Vec<_>>>()?;
        let settings = &trees[SETTINGS];
        let format = super::setting_u64(settings.get(STORE_FORMAT)?, "store format")?;
        if let Some(format) = format.filter(|format| *format > STORE_FORMAT_VERSION) {
            return Err(StoreError::Damaged(format!(
                "the store was written by a newer broker (store format {format}; this broker reads up to {STORE_FORMAT_VERSION}): run that broker or a newer one, or restore the backup taken before upgrading"
            )));
        }
        let pruned = super::setting_u64(settings.get(PRUNED)?, "pruned-runs count")?.unwrap_or(0);
        let commit =
            super::setting_u64(settings.get(super::integrity::COMMIT_KEY)?, "commit count")?
                .unwrap_or(0);
        let applied = super::setting_u64(settings.get(LOG_APPLIED)?, "log position")?.unwrap_or(0);
        let mut store = KvStore {
            committer: Committer::start()?,
            flusher: Arc::new(engine.flusher()),
            trees: Arc::new(trees),
            spec_cache: Default::default(),
            pending: Default::default(),
            staged: Default::default(),
            in_flight: Default::default(),
            handed_over: Cell::new(applied),
            applied: Arc::new(AtomicU64::new(applied)),
            log: None,
            unfinished: Default::default(),
            run_ids: RefCell::new(super::run_ids::RunIds::Off),
            last_seq: 0,
            pruned,
            pruned_changed: false,
            engine: Arc::new(engine),
            dirty: false,
            commit,
            marker: None,
        };
        let mut written = store.find_unfinished()?;
        if format != Some(STORE_FORMAT_VERSION) {
            store
                .tree(SETTINGS)
                .insert(STORE_FORMAT, &STORE_FORMAT_VERSION.to_be_bytes())?;
            written = true;
        }
        // One sync for whatever opening the store wrote.
        if written {
            store.engine.flush()?;
        }
        let stored = store.last_seq.saturating_sub(store.pruned);
        store.run_ids = RefCell::new(super::run_ids::RunIds::read(store.engine.view(), stored));
        Ok(store)
    }

    /// Finds the unfinished runs with the two reads of `unfinished.rs`: the marked ones
    /// in `active`, and the newest from `scan_from` on. A store written before
    /// `scan_from` has every unfinished run in `active`, so the invariant holds with it
    /// just past the last run; it is written then, before any run is written without an
    /// entry. An entry a broker killed mid-batch can leave (for a record never written,
    /// or for a run that has ended) is removed.
    /// Returns whether it wrote anything (not yet synced).
    fn find_unfinished(&mut self) -> StoreResult<bool> {
        self.last_seq = match self.tree(RUNS).last()? {
            Some((key, _)) => seq_of(&key)?,
            None => 0,
        };
        let (scan_from, written) =
            match super::setting_u64(self.tree(SETTINGS).get(SCAN_FROM)?, "runs scan start")? {
                Some(seq) => (seq, false),
                None => {
                    let seq = self.last_seq + 1;
                    self.tree(SETTINGS).insert(SCAN_FROM, &seq.to_be_bytes())?;
                    (seq, true)
                }
            };
        let mut runs = Vec::new();
        let from = scan_from.to_be_bytes();
        for item in self
            .tree(RUNS)
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
        for item in self.tree(ACTIVE).iter() {
            let (key, _) = item?;
            match self.run_by_seq(&key)? {
                Some(run) if !run.state.is_terminal() => runs.push((run.seq, true)),
                _ => stale.push(key),
            }
        }
        for key in &stale {
            self.tree(ACTIVE).remove(key)?;
        }
        self.unfinished = RefCell::new(Unfinished::new(scan_from, runs));
        Ok(written || !stale.is_empty())
    }

    /// Makes batches durable in a write-ahead log in `dir` from now on, the engine given
    /// them on a thread of its own. The engine must hold every record of any log already
    /// in `dir` ([`replay_log`]): what is there is removed.
    pub fn with_log(mut self, dir: &Path, segment_bytes: u64) -> StoreResult<Self> {
        let writer = LogWriter::start(dir, segment_bytes)?;
        self.log = Some(Arc::new(Logged {
            spare: writer.spare(),
            writer: Mutex::new(writer),
            applier: Committer::bounded("jobcast-apply", APPLY_QUEUE)?,
            failed: Default::default(),
            dir: dir.into(),
            segment_bytes,
            flusher: self.flusher.clone(),
        }));
        Ok(self)
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

    /// Stages what a commit records with the batch (the pruned count, the commit number)
    /// and returns the work that makes it all durable, for the committer. The batch's
    /// writes are read from `in_flight` until the engine has them.
    fn seal(&mut self) -> StoreResult<Commit> {
        self.settle()?;
        if std::mem::take(&mut self.pruned_changed) {
            self.stage(
                SETTINGS,
                PRUNED.to_vec(),
                Some(self.pruned.to_be_bytes().to_vec()),
            );
        }
        let dirty = std::mem::take(&mut self.dirty);
        if dirty {
            self.commit += 1;
            self.stage(
                SETTINGS,
                super::integrity::COMMIT_KEY.to_vec(),
                Some(self.commit.to_be_bytes().to_vec()),
            );
        }
        let commit = self.commit;
        let marker = self.marker.as_ref().map(|marker| marker.teller());
        let told = move || {
            if let Some(marker) = marker {
                marker.tell(commit);
            }
        };
        let (log, deliver) = self.delivering(self.hand_over());
        let flusher = self.flusher.clone();
        Ok(Box::new(move || {
            deliver()?;
            if dirty {
                match &log {
                    Some(log) => log.writer()?.sync()?,
                    None => flusher()?,
                }
            }
            told();
            Ok(())
        }))
    }

    /// The committer's first step for a batch handed over (if any): into the log and on
    /// to the applier, or, without a log, given to the engine there and then. With the
    /// log, to sync it (or wait for the applier) after.
    fn delivering(&self, batch: Option<(u64, Arc<Staged>)>) -> (Option<Arc<Logged>>, Commit) {
        let Some(log) = self.log.clone() else {
            let apply = batch.map(|(number, staged)| self.applying(number, staged, false));
            return (
                None,
                Box::new(move || match apply {
                    Some(apply) => apply(),
                    None => Ok(()),
                }),
            );
        };
        let logging = batch.map(|(number, staged)| {
            let apply = self.applying(number, staged.clone(), true);
            (number, staged, apply)
        });
        let logged = log.clone();
        let deliver: Commit = Box::new(move || {
            logged.check()?;
            if let Some((number, staged, apply)) = logging {
                logged.log(number, &staged, apply)?;
            }
            Ok(())
        });
        (Some(log), deliver)
    }

    /// Moves the writes staged so far, if there are any, to `in_flight` under the next
    /// number.
    fn hand_over(&self) -> Option<(u64, Arc<Staged>)> {
        self.let_go_applied();
        let staged = std::mem::take(&mut *self.staged.borrow_mut());
        if staged.writes.is_empty() {
            return None;
        }
        let number = self.handed_over.get() + 1;
        self.handed_over.set(number);
        let staged = Arc::new(staged);
        self.in_flight
            .borrow_mut()
            .push_back((number, staged.clone()));
        Some((number, staged))
    }

    /// Forgets the batches in flight that the engine has.
    fn let_go_applied(&self) {
        let applied = self.applied.load(Ordering::Acquire);
        let mut in_flight = self.in_flight.borrow_mut();
        while in_flight
            .front()
            .is_some_and(|(number, _)| *number <= applied)
        {
            in_flight.pop_front();
        }
    }

    /// The work that gives the engine batch `number` (with the log's position in the same
    /// engine batch, if `logged`) and records that it has.
    fn applying(&self, number: u64, staged: Arc<Staged>, logged: bool) -> Commit {
        let (engine, trees, applied) = (
            self.engine.clone(),
            self.trees.clone(),
            self.applied.clone(),
        );
        Box::new(move || {
            let position = [log_position(number)];
            let position: &[Write] = if logged { &position } else { &[] };
            engine.write_all(&trees, &[&staged.writes, position])?;
            applied.store(number, Ordering::Release);
            Ok(())
        })
    }

    fn tree(&self, index: usize) -> &E::Tree {
        &self.trees[index]
    }

    /// Records `key` of `tree` set to `value` (removed if `None`) in this batch.
    fn stage(&self, tree: usize, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.staged.borrow_mut().push(tree, key, value);
    }

    /// The record `key` of `tree` as this batch leaves it: written in this batch, or in a
    /// batch in flight (the newest first), or as the engine has it.
    fn get(&self, tree: usize, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        if let Some(value) = self.staged.borrow().newest(tree, key) {
            return Ok(value.map(<[u8]>::to_vec));
        }
        for (_, batch) in self.in_flight.borrow().iter().rev() {
            if let Some(value) = batch.newest(tree, key) {
                return Ok(value.map(<[u8]>::to_vec));
            }
        }
        self.tree(tree).get(key)
    }

    /// The records of `tree` in the range as this batch leaves them, in key order or
    /// newest first.
    fn scan(
        &self,
        tree: usize,
        range: (Bound<&[u8]>, Bound<&[u8]>),
        newest_first: bool,
    ) -> Box<dyn Iterator<Item = StoreResult<Entry>> + '_> {
        let stored = self.tree(tree).range(range.0, range.1);
        let stored: Box<dyn Iterator<Item = StoreResult<Entry>> + '_> = if newest_first {
            Box::new(stored.rev())
        } else {
            stored
        };
        // Oldest batch first, so that a later write of a key wins.
        let mut over: BTreeMap<&[u8], Option<&[u8]>> = BTreeMap::new();
        let staged = self.staged.borrow();
        let in_flight = self.in_flight.borrow();
        for batch in in_flight
            .iter()
            .map(|(_, batch)| &**batch)
            .chain(std::iter::once(&*staged))
        {
            batch.lay_over(tree, range, &mut over);
        }
        if over.is_empty() {
            return stored;
        }
        let mut over: Vec<Overwrite> = over
            .into_iter()
            .map(|(key, value)| (key.to_vec(), value.map(<[u8]>::to_vec)))
            .collect();
        if newest_first {
            over.reverse();
        }
        Box::new(Overlaid {
            engine: stored.peekable(),
            over: over.into_iter().peekable(),
            newest_first,
        })
    }

    /// The records of `tree` whose keys start with `prefix`, in key order.
    fn scan_prefix(
        &self,
        tree: usize,
        prefix: &[u8],
    ) -> Box<dyn Iterator<Item = StoreResult<Entry>> + '_> {
        let end = prefix_end(prefix);
        let to = match &end {
            Some(end) => Bound::Excluded(end.as_slice()),
            None => Bound::Unbounded,
        };
        self.scan(tree, (Bound::Included(prefix), to), false)
    }

    fn run_by_seq(&self, seq: &[u8]) -> StoreResult<Option<RunRecord>> {
        match self.get(RUNS, seq)? {
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
            .get_or_read(key, || self.get(SPECS, key))
    }

    /// The run as stored, its job spec version written first if it is new.
    fn encode_run(&self, run: &RunRecord) -> StoreResult<Vec<u8>> {
        let (key, new_version) = self.spec_cache.borrow_mut().key_of(&run.spec);
        if let Some(bytes) = new_version {
            self.stage(SPECS, key.to_vec(), Some(bytes));
        }
        Ok(run_codec::encode_run(run, key))
    }

    /// Stages the runs and job states this batch wrote so far (see [`Pending`]), in the
    /// order an engine that writes one by one needs (below).
    fn settle(&self) -> StoreResult<()> {
        let pending = std::mem::take(&mut *self.pending.borrow_mut());
        let mut unfinished = self.unfinished.borrow_mut();
        for (
            seq,
            PendingRun {
                bytes,
                created,
                was_marked,
            },
        ) in pending.by_seq
        {
            let marked = unfinished.is_marked(seq);
            let seq = seq.to_be_bytes().to_vec();
            if created {
                // The indexes first and the record last: an engine that writes them one
                // by one, killed in between, leaves index entries without a record
                // (skipped, and cleared at the next open), never a record the indexes do
                // not know (listed, but lost to the broker). The id entry was staged
                // when the run was held. Only a run created below `scan_from` (an old
                // store copied in) is marked at once.
                if marked {
                    self.stage(ACTIVE, seq.clone(), Some(Vec::new()));
                }
                self.stage(RUNS, seq, Some(bytes));
            } else {
                // A mark before the record, its removal after: killed in between, an
                // ended run keeps its entry (cleared at the next open), rather than an
                // unfinished run below `scan_from` having none.
                if marked && !was_marked {
                    self.stage(ACTIVE, seq.clone(), Some(Vec::new()));
                }
                self.stage(RUNS, seq.clone(), Some(bytes));
                if was_marked && !marked {
                    self.stage(ACTIVE, seq, None);
                }
            }
        }
        // After the runs: a tick's run is created before its job's state says the tick
        // was dealt with (see `Pending`).
        for (job, state) in pending.job_states {
            self.stage(JOB_STATES, job.into_bytes(), Some(encode(&state)));
        }
        // `scan_from` moves past the newest runs' oldest, the unfinished runs it passes
        // marked first (the invariant holds after any one of these writes).
        if let Some((scan_from, marks)) = unfinished.advance(self.last_seq) {
            for seq in marks {
                self.stage(ACTIVE, seq.to_be_bytes().to_vec(), Some(Vec::new()));
            }
            self.stage(
                SETTINGS,
                SCAN_FROM.to_vec(),
                Some(scan_from.to_be_bytes().to_vec()),
            );
        }
        Ok(())
    }

    /// Keeps `run` to be written at the batch's end (or at the next read that needs it),
    /// encoded; a new run's id entry is staged at once (before its record, as an engine
    /// that writes one by one needs: see `settle`).
    fn hold(&mut self, run: &RunRecord, created: bool) -> StoreResult<()> {
        let bytes = self.encode_run(run)?;
        self.last_seq = self.last_seq.max(run.seq);
        if created {
            self.run_ids.get_mut().created(&run.id);
            self.stage(
                RUN_IDS,
                run.id.as_bytes().to_vec(),
                Some(run.seq.to_be_bytes().to_vec()),
            );
        }
        let unfinished = self.unfinished.get_mut();
        let was_marked = unfinished.is_marked(run.seq);
        unfinished.written(run.seq, run.state.is_terminal());
        match self.pending.get_mut().by_seq.entry(run.seq) {
            std::collections::btree_map::Entry::Occupied(mut held) => held.get_mut().bytes = bytes,
            std::collections::btree_map::Entry::Vacant(new) => {
                new.insert(PendingRun {
                    bytes,
                    created,
                    was_marked,
                });
            }
        }
        Ok(())
    }

    /// Deletes a run's record, its id and its mark (its log is deleted first, by the
    /// caller: killed in between, the record is still there for retention to find).
    fn delete_run_record(&mut self, run: &RunRecord) {
        self.dirty = true;
        let seq = run.seq.to_be_bytes().to_vec();
        // Only a marked run has an entry (and a stale one is cleared at open): removing
        // one that is not there would only add a tombstone for the engine to write out
        // and compact.
        let unfinished = self.unfinished.get_mut();
        if unfinished.is_marked(run.seq) {
            self.staged.get_mut().push(ACTIVE, seq.clone(), None);
        }
        unfinished.deleted(run.seq);
        self.stage(RUNS, seq, None);
        self.stage(RUN_IDS, run.id.as_bytes().to_vec(), None);
        self.pruned += 1;
        // Written once per commit, in it (see `seal`).
        self.pruned_changed = true;
    }
}

/// A run's log chunks from a scan of its keys (`log_key`): (offset, bytes).
fn chunks_of(
    prefix_len: usize,
    scan: impl Iterator<Item = StoreResult<Entry>>,
) -> StoreResult<Vec<(u64, Vec<u8>)>> {
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

/// Listings read from a snapshot of the engine, on another thread: the snapshot the
/// committer took once it gave the engine the batch the reader was asked in.
struct KvReader {
    slot: ViewSlot,
    view: Option<Arc<dyn View>>,
    specs: SpecCache,
}

impl KvReader {
    fn view(&mut self) -> StoreResult<Arc<dyn View>> {
        if let Some(view) = &self.view {
            return Ok(view.clone());
        }
        let view = self.slot.wait()?;
        self.view = Some(view.clone());
        Ok(view)
    }
}

impl RunReader for KvReader {
    fn back_up(&mut self, to: &std::path::Path) -> StoreResult<jobcast_core::store::Copied> {
        super::location::write_backup(self.view()?.as_ref(), to)
    }

    fn runs(&mut self, filter: &RunFilter) -> StoreResult<Listing> {
        let to = match filter.before_seq {
            Some(before) => Bound::Excluded(before.to_be_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let view = self.view()?;
        let (view, specs) = (&view, &mut self.specs);
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
        chunks_of(prefix.len(), self.view()?.with_prefix("logs", &prefix))
    }

    fn oldest_runs(&mut self, from_seq: u64, limit: usize) -> StoreResult<Vec<OldestRun>> {
        let view = self.view()?;
        let (view, specs) = (&view, &mut self.specs);
        let from = from_seq.to_be_bytes().to_vec();
        view.oldest_first("runs", Bound::Included(from), Bound::Unbounded)
            .take(limit)
            .map(|item| {
                let run = run_codec::decode_run(&item?.1, |key| {
                    specs.get_or_read(key, || view.get("specs", key))
                })?;
                let prefix = log_prefix(&run.id);
                let log_offsets = chunks_of(prefix.len(), view.with_prefix("logs", &prefix))?
                    .into_iter()
                    .map(|(offset, _)| offset)
                    .collect();
                Ok(OldestRun { run, log_offsets })
            })
            .collect()
    }

    fn run(&mut self, id: &str) -> StoreResult<Option<RunRecord>> {
        let view = self.view()?;
        let Some(seq) = view.get("run_ids", id.as_bytes())? else {
            return Ok(None);
        };
        let Some(bytes) = view.get("runs", &seq)? else {
            return Ok(None);
        };
        let (view, specs) = (&view, &mut self.specs);
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
    scan: impl Iterator<Item = StoreResult<Entry>>,
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
        decoded(
            "job",
            self.scan(JOBS, (Bound::Unbounded, Bound::Unbounded), false),
        )
    }

    fn put_job(&mut self, job: &JobSpec) -> StoreResult<()> {
        self.dirty = true;
        self.stage(JOBS, job.name.as_bytes().to_vec(), Some(encode(job)));
        Ok(())
    }

    fn create_run(&mut self, run: &RunRecord) -> StoreResult<()> {
        self.dirty = true;
        self.hold(run, true)
    }

    fn put_run(&mut self, run: &RunRecord) -> StoreResult<()> {
        self.dirty = true;
        self.hold(run, false)
    }

    fn run(&self, id: &str) -> StoreResult<Option<RunRecord>> {
        // An entry whose record was never written may name a number a later run took:
        // only a record of this id counts.
        let Some(seq) = self.get(RUN_IDS, id.as_bytes())? else {
            return Ok(None);
        };
        let held = seq_of(&seq).ok().and_then(|seq| {
            self.pending
                .borrow()
                .by_seq
                .get(&seq)
                .map(|held| self.decode_run(&held.bytes))
        });
        let run = match held {
            Some(run) => Some(run?),
            None => self.run_by_seq(&seq)?,
        };
        Ok(run.filter(|run| run.id == id))
    }

    /// From memory for nearly every new id (`run_ids.rs`); a "maybe" reads the store.
    fn run_id_taken(&self, id: &str) -> StoreResult<bool> {
        if !self.run_ids.borrow_mut().may_be_taken(id) {
            return Ok(false);
        }
        Ok(self.run(id)?.is_some())
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
            Some(after) => self.scan(RUNS, (Bound::Excluded(&after[..]), to), false),
            None => self.scan(RUNS, (Bound::Unbounded, to), true),
        };
        list_newest_first(scan.map(|item| self.decode_run(&item?.1)), filter)
    }

    fn run_ids_with_prefix(&self, prefix: &str, limit: usize) -> StoreResult<Vec<String>> {
        self.settle()?;
        self.scan_prefix(RUN_IDS, prefix.as_bytes())
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
        self.scan(RUNS, (Bound::Included(&from[..]), Bound::Unbounded), false)
            .take(limit)
            .map(|item| self.decode_run(&item?.1))
            .collect()
    }

    fn delete_run(&mut self, run: &RunRecord) -> StoreResult<()> {
        self.settle()?;
        self.dirty = true;
        let seq = run.seq.to_be_bytes().to_vec();
        if self.get(RUNS, &seq)?.is_none() {
            return Ok(());
        }
        // The log first and the record near the end: killed in between, the record is
        // still there for retention to delete again, and nothing is left unreachable.
        let chunks: Vec<Vec<u8>> = self
            .scan_prefix(LOGS, &log_prefix(&run.id))
            .map(|item| item.map(|(key, _)| key))
            .collect::<StoreResult<_>>()?;
        for key in chunks {
            self.stage(LOGS, key, None);
        }
        self.delete_run_record(run);
        Ok(())
    }

    fn delete_found_run(&mut self, found: &OldestRun) -> StoreResult<()> {
        self.settle()?;
        self.dirty = true;
        for offset in &found.log_offsets {
            self.stage(LOGS, log_key(&found.run.id, *offset), None);
        }
        self.delete_run_record(&found.run);
        Ok(())
    }

    fn walks_away(&self) -> bool {
        self.engine.has_views()
    }

    fn put_log_chunk(&mut self, run_id: &str, offset: u64, data: &[u8]) -> StoreResult<()> {
        self.dirty = true;
        self.stage(LOGS, log_key(run_id, offset), Some(data.to_vec()));
        Ok(())
    }

    fn delete_log_chunk(&mut self, run_id: &str, offset: u64) -> StoreResult<()> {
        self.dirty = true;
        self.stage(LOGS, log_key(run_id, offset), None);
        Ok(())
    }

    fn log_chunks(&self, run_id: &str) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        let prefix = log_prefix(run_id);
        chunks_of(prefix.len(), self.scan_prefix(LOGS, &prefix))
    }

    fn workers(&self) -> StoreResult<Vec<WorkerStatus>> {
        decoded(
            "worker",
            self.scan(WORKERS, (Bound::Unbounded, Bound::Unbounded), false),
        )
    }

    fn put_worker(&mut self, worker: &WorkerStatus) -> StoreResult<()> {
        self.dirty = true;
        self.stage(WORKERS, worker.id.as_bytes().to_vec(), Some(encode(worker)));
        Ok(())
    }

    fn job_states(&self) -> StoreResult<Vec<(String, JobState)>> {
        self.settle()?;
        self.scan(JOB_STATES, (Bound::Unbounded, Bound::Unbounded), false)
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
        self.get(SETTINGS, key.as_bytes())
    }

    fn put_setting(&mut self, key: &str, value: &[u8]) -> StoreResult<()> {
        self.dirty = true;
        self.stage(SETTINGS, key.as_bytes().to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn settings(&self) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.scan(SETTINGS, (Bound::Unbounded, Bound::Unbounded), false)
            .map(|item| {
                let (key, value) = item?;
                Ok((String::from_utf8_lossy(&key).into_owned(), value))
            })
            .collect()
    }

    fn is_backlogged(&self) -> bool {
        let behind = self.handed_over.get()
            - self
                .applied
                .load(Ordering::Acquire)
                .min(self.handed_over.get());
        (self.log.is_some() && behind > APPLY_BACKLOG) || self.engine.is_backlogged()
    }

    /// A reader of the store as it is now: the writes so far are handed to the
    /// committer, which takes the reader's snapshot once it has given them to the engine
    /// (the reader waits for it; it is used once the batch is durable, by then long
    /// taken).
    fn reader(&self) -> Option<Box<dyn RunReader>> {
        if !self.engine.has_views() {
            return None;
        }
        // Not staged, the loop reads itself (and meets the error there).
        self.settle().ok()?;
        let slot = ViewSlot::default();
        let filler = ViewFiller(Some(slot.clone()));
        let engine = self.engine.clone();
        let view: Commit = Box::new(move || {
            filler.fill(engine.view());
            Ok(())
        });
        let (log, deliver) = self.delivering(self.hand_over());
        let handed: Commit = Box::new(move || {
            deliver()?;
            match log {
                // Logged now, synced with the next batch; the view once the engine has it.
                Some(log) => {
                    log.apply(view);
                    Ok(())
                }
                None => view(),
            }
        });
        // A failure fails every later commit too: the batch's own tells it.
        self.committer.submit(handed, Box::new(|_| {}));
        Some(Box::new(KvReader {
            slot,
            view: None,
            specs: SpecCache::default(),
        }))
    }

    /// Through the committer, after whatever it still has: commits stay in order.
    fn flush(&mut self) -> StoreResult<()> {
        let commit = self.seal()?;
        let outcome = self.committer.wait(commit);
        self.let_go_applied();
        outcome
    }

    fn start_flush(&mut self, done: FlushDone) {
        match self.seal() {
            Ok(commit) => self.committer.submit(commit, done),
            Err(e) => done(Err(e)),
        }
    }

    fn commit_told(&mut self) {
        self.let_go_applied();
    }

    fn close_cleanly(&mut self) -> StoreResult<()> {
        self.flush()?;
        if let Some(log) = &self.log {
            // Every logged batch in the engine (then into its tables, below).
            log.applier.wait(Box::new(|| Ok(())))?;
            self.let_go_applied();
        }
        if !self.engine.flush_journal()? {
            // Durable all the same: the next start reads the journal, as after a kill.
            tracing::warn!("the journal was not written into the store's tables in time: the next start replays it");
            return Ok(());
        }
        if let Some(log) = &self.log {
            // The tables hold every record: a start after a clean stop has none to read.
            super::wal::remove_all(&log.dir)?;
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
        Tree::insert(store.tree(RUNS), &1u64.to_be_bytes(), &old_bytes).unwrap();
        Tree::insert(store.tree(RUN_IDS), b"oldrun", &1u64.to_be_bytes()).unwrap();
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
        /// Every write fails (as on a full disk).
        failing: Arc<std::sync::atomic::AtomicBool>,
    }

    struct CutTree {
        map: SharedMap,
        budget: Arc<AtomicI64>,
        failing: Arc<std::sync::atomic::AtomicBool>,
    }

    impl CutTree {
        fn write(&self, apply: impl FnOnce(&mut BTreeMap<Vec<u8>, Vec<u8>>)) -> StoreResult<()> {
            if self.failing.load(Ordering::SeqCst) {
                return Err(StoreError::Engine("no space left on device".into()));
            }
            let left = self.budget.load(Ordering::SeqCst);
            if left == 0 {
                return Ok(());
            }
            if left > 0 {
                self.budget.store(left - 1, Ordering::SeqCst);
            }
            apply(&mut self.map.lock().unwrap());
            Ok(())
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
            })
        }
        fn remove(&self, key: &[u8]) -> StoreResult<()> {
            self.write(|m| {
                m.remove(key);
            })
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
                failing: self.failing.clone(),
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

    /// Gives the engine the writes staged so far, as the committer does (without the
    /// sync, which the cut engine does not need).
    fn written_out(store: &KvStore<CutEngine>) {
        store.settle().unwrap();
        if let Some((number, staged)) = store.hand_over() {
            store.applying(number, staged, false)().unwrap();
        }
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
        written_out(store);
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
            written_out(&store);
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
            written_out(&store);
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

    /// Records as the engine's scan gives them, for the overlay's tests.
    fn stored(keys: &[&str]) -> Box<dyn Iterator<Item = StoreResult<Entry>> + 'static> {
        let entries: Vec<StoreResult<Entry>> = keys
            .iter()
            .map(|key| Ok((key.as_bytes().to_vec(), b"stored".to_vec())))
            .collect();
        Box::new(entries.into_iter())
    }

    fn overlaid(
        engine: Box<dyn Iterator<Item = StoreResult<Entry>>>,
        over: &[(&str, Option<&str>)],
        newest_first: bool,
    ) -> Vec<(String, String)> {
        let over: Vec<Overwrite> = over
            .iter()
            .map(|(key, value)| {
                (
                    key.as_bytes().to_vec(),
                    value.map(|v| v.as_bytes().to_vec()),
                )
            })
            .collect();
        Overlaid {
            engine: engine.peekable(),
            over: over.into_iter().peekable(),
            newest_first,
        }
        .map(|item| {
            let (key, value) = item.unwrap();
            (
                String::from_utf8(key).unwrap(),
                String::from_utf8(value).unwrap(),
            )
        })
        .collect()
    }

    #[test]
    fn writes_in_flight_are_laid_over_the_engines_records_in_either_order() {
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        // b rewritten, c removed, a and e new, d untouched.
        let over = [
            ("a", Some("new")),
            ("b", Some("new")),
            ("c", None),
            ("e", Some("new")),
        ];
        assert_eq!(
            overlaid(stored(&["b", "c", "d"]), &over, false),
            pairs(&[("a", "new"), ("b", "new"), ("d", "stored"), ("e", "new")])
        );
        let mut reversed = over;
        reversed.reverse();
        assert_eq!(
            overlaid(stored(&["d", "c", "b"]), &reversed, true),
            pairs(&[("e", "new"), ("d", "stored"), ("b", "new"), ("a", "new")])
        );
        // A removal of what the engine never had is nothing; an engine's error comes
        // through.
        assert_eq!(overlaid(stored(&[]), &[("x", None)], false), pairs(&[]));
        let failing: Box<dyn Iterator<Item = StoreResult<Entry>>> =
            Box::new(vec![Err(StoreError::Engine("unreadable".into()))].into_iter());
        let mut merged = Overlaid {
            engine: failing.peekable(),
            over: vec![(b"a".to_vec(), Some(b"new".to_vec()))]
                .into_iter()
                .peekable(),
            newest_first: false,
        };
        assert!(merged.next().unwrap().is_err());
    }

    #[test]
    fn a_store_written_by_a_newer_broker_is_refused_saying_so() {
        let engine = CutEngine::default();
        engine.budget.store(-1, Ordering::SeqCst);
        drop(KvStore::with_engine(engine.clone()).unwrap());
        let settings = engine.tree("settings").unwrap();
        assert_eq!(
            settings.get(STORE_FORMAT).unwrap(),
            Some(STORE_FORMAT_VERSION.to_be_bytes().to_vec()),
            "a store records its format when it opens"
        );
        settings
            .insert(STORE_FORMAT, &(STORE_FORMAT_VERSION + 1).to_be_bytes())
            .unwrap();
        let Err(refused) = KvStore::with_engine(engine.clone()) else {
            panic!("a store of a newer format was opened");
        };
        let refused = refused.to_string();
        assert!(
            refused.contains(&format!(
                "written by a newer broker (store format {}",
                STORE_FORMAT_VERSION + 1
            )),
            "{refused}"
        );
    }

    #[test]
    fn each_tree_index_names_its_tree() {
        let named = [
            (JOBS, "jobs"),
            (RUNS, "runs"),
            (SPECS, "specs"),
            (RUN_IDS, "run_ids"),
            (ACTIVE, "active"),
            (LOGS, "logs"),
            (WORKERS, "workers"),
            (JOB_STATES, "job_states"),
            (SETTINGS, "settings"),
        ];
        assert_eq!(named.len(), TREES.len());
        for (index, name) in named {
            assert_eq!(TREES[index], name);
        }
    }

    #[test]
    fn ranges_and_prefixes_are_bounded_without_panicking() {
        let range = |from: Bound<&'static [u8]>, to: Bound<&'static [u8]>| (from, to);
        assert!(is_empty_range(range(
            Bound::Excluded(b"a"),
            Bound::Excluded(b"a")
        )));
        assert!(is_empty_range(range(
            Bound::Included(b"b"),
            Bound::Included(b"a")
        )));
        assert!(!is_empty_range(range(
            Bound::Included(b"a"),
            Bound::Included(b"a")
        )));
        assert!(!is_empty_range(range(
            Bound::Unbounded,
            Bound::Excluded(b"a")
        )));
        // An empty range of a batch's writes is no write, not a panic.
        let mut staged = Staged::default();
        staged.push(RUNS, b"a".to_vec(), None);
        let mut over = BTreeMap::new();
        staged.lay_over(
            RUNS,
            range(Bound::Excluded(b"a"), Bound::Excluded(b"a")),
            &mut over,
        );
        assert!(over.is_empty());
        staged.lay_over(RUNS, range(Bound::Unbounded, Bound::Unbounded), &mut over);
        assert_eq!(over.len(), 1);
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }

    /// Until the engine has a batch's writes, every read sees them in flight, whether or
    /// not the loop was told of its commit; then the engine's records are read.
    #[test]
    fn reads_see_the_writes_of_batches_in_flight_until_the_engine_has_them() {
        let engine = CutEngine::default();
        engine.budget.store(-1, Ordering::SeqCst);
        let mut store = KvStore::with_engine(engine.clone()).unwrap();
        let gone = queued(1, "gone");
        store.create_run(&gone).unwrap();
        store.put_log_chunk("gone", 0, b"out").unwrap();
        store.flush().unwrap();

        // A batch handed over and not applied (its work is never run here).
        store.create_run(&queued(2, "kept")).unwrap();
        store.put_log_chunk("kept", 0, b"hello").unwrap();
        store.put_setting("pools", b"off").unwrap();
        store
            .put_job(&JobSpec::new(
                "job",
                "default",
                Exec::Command(vec!["true".into()]),
            ))
            .unwrap();
        store.delete_run(&gone).unwrap();
        store.settle().unwrap();
        let (number, _never_applied) = store.hand_over().unwrap();
        assert!(engine
            .tree("runs")
            .unwrap()
            .get(&2u64.to_be_bytes())
            .unwrap()
            .is_none());

        let listed: Vec<String> = store
            .runs(&RunFilter {
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .runs
            .into_iter()
            .map(|run| run.id)
            .collect();
        assert_eq!(listed, ["kept"], "the new run listed, the deleted one not");
        assert_eq!(store.run("kept").unwrap().unwrap().seq, 2);
        assert!(store.run("gone").unwrap().is_none());
        assert_eq!(store.log_chunks("kept").unwrap(), [(0, b"hello".to_vec())]);
        assert!(store.log_chunks("gone").unwrap().is_empty());
        assert_eq!(
            store.setting("pools").unwrap().as_deref(),
            Some(&b"off"[..])
        );
        assert_eq!(store.jobs().unwrap().len(), 1);
        assert_eq!(store.run_ids_with_prefix("ke", 10).unwrap(), ["kept"]);
        assert_eq!(
            store
                .oldest_runs(0, 10)
                .unwrap()
                .iter()
                .map(|r| r.seq)
                .collect::<Vec<_>>(),
            [2]
        );

        // Told of its commit, but not in the engine (a log's applier behind): kept.
        store.commit_told();
        assert_eq!(store.run("kept").unwrap().unwrap().seq, 2);
        // Once the engine says it has the batch (here without having it), reads go to it.
        store.applied.store(number, Ordering::Release);
        store.commit_told();
        assert!(store.run("kept").unwrap().is_none());
        assert!(store.run("gone").unwrap().is_some());
    }

    /// Batches are let go once the engine has them: at a `flush` (which waits for every
    /// batch before it), and when the loop is told of a commit.
    #[test]
    fn batches_in_flight_are_let_go_once_the_engine_has_them() {
        let engine = CutEngine::default();
        engine.budget.store(-1, Ordering::SeqCst);
        let mut store = KvStore::with_engine(engine.clone()).unwrap();
        let (told, outcomes) = std::sync::mpsc::channel();
        for seq in 1..=2 {
            store
                .create_run(&queued(seq, &format!("run-{seq}")))
                .unwrap();
            let told = told.clone();
            store.start_flush(Box::new(move |outcome| told.send(outcome).unwrap()));
        }
        // (The committer may have applied the first already: each hand-over lets go of
        // what the engine has.)
        assert!(!store.in_flight.borrow().is_empty());
        store.flush().unwrap();
        assert!(store.in_flight.borrow().is_empty());
        store.create_run(&queued(3, "run-3")).unwrap();
        store.start_flush(Box::new(move |outcome| told.send(outcome).unwrap()));
        for _ in 0..3 {
            outcomes.recv().unwrap().unwrap();
        }
        store.commit_told();
        assert!(store.in_flight.borrow().is_empty());
        assert_eq!(store.run("run-3").unwrap().unwrap().seq, 3);
    }

    /// Waits until the log's applier has given the engine everything handed to it.
    fn applied_all<E: Engine>(store: &KvStore<E>) -> StoreResult<()> {
        match &store.log {
            Some(log) => log.applier.wait(Box::new(|| Ok(()))),
            None => Ok(()),
        }
    }

    /// What a broker killed after its log's sync and before the engine kept anything
    /// leaves: the log holds the batches, and the next open gives them to the engine.
    #[test]
    fn batches_the_engine_lost_are_replayed_from_the_log_at_open() {
        let (dir, engine) = (tempfile::tempdir().unwrap(), CutEngine::default());
        engine.budget.store(-1, Ordering::SeqCst);
        let mut store = KvStore::with_engine(engine.clone())
            .unwrap()
            // One segment: a cut would trust the engine's sync, which this engine fakes.
            .with_log(dir.path(), 1 << 20)
            .unwrap();
        // From here on the engine keeps nothing: as if none of it had reached its disk.
        engine.budget.store(0, Ordering::SeqCst);
        for seq in 1..=30 {
            store
                .create_run(&queued(seq, &format!("run-{seq}")))
                .unwrap();
            if seq % 3 == 0 {
                store
                    .put_run(&with_state(
                        queued(seq, &format!("run-{seq}")),
                        RunState::Succeeded,
                    ))
                    .unwrap();
            }
            store.flush().unwrap();
        }
        drop(store);
        assert!(engine
            .tree("runs")
            .unwrap()
            .get(&1u64.to_be_bytes())
            .unwrap()
            .is_none());

        engine.budget.store(-1, Ordering::SeqCst);
        let replayed = replay_log(&engine, dir.path(), false).unwrap();
        assert_eq!((replayed.applied, replayed.last), (30, 30));
        let store = KvStore::with_engine(engine.clone()).unwrap();
        assert_eq!(store.run_count().unwrap(), 30);
        assert_eq!(
            store.run("run-9").unwrap().unwrap().state,
            RunState::Succeeded
        );
        assert_eq!(store.active_runs().unwrap().len(), 20);
        // Once the engine has them, a second replay gives it nothing again.
        let again = replay_log(&engine, dir.path(), false).unwrap();
        assert_eq!((again.applied, again.last), (0, 30));
    }

    /// An engine that cannot take a logged batch (a full disk): the store takes no more
    /// work, saying why, and the batch is not lost: the next open replays it.
    #[test]
    fn a_batch_the_engine_refuses_stops_the_store_and_is_replayed_later() {
        let (dir, engine) = (tempfile::tempdir().unwrap(), CutEngine::default());
        engine.budget.store(-1, Ordering::SeqCst);
        let mut store = KvStore::with_engine(engine.clone())
            .unwrap()
            .with_log(dir.path(), 4096)
            .unwrap();
        engine.failing.store(true, Ordering::SeqCst);
        store.create_run(&queued(1, "run-1")).unwrap();
        store.flush().expect("durable in the log");
        applied_all(&store).unwrap_err();
        store.create_run(&queued(2, "run-2")).unwrap();
        let refused = store.flush().unwrap_err().to_string();
        assert!(
            refused.contains("could not take a batch its log holds")
                && refused.contains("no space left"),
            "{refused}"
        );
        assert_eq!(
            store.run("run-1").unwrap().unwrap().seq,
            1,
            "still read from memory"
        );
        drop(store);

        engine.failing.store(false, Ordering::SeqCst);
        assert_eq!(replay_log(&engine, dir.path(), false).unwrap().applied, 1);
        let store = KvStore::with_engine(engine.clone()).unwrap();
        assert_eq!(store.run("run-1").unwrap().unwrap().seq, 1);
        assert!(store.run("run-2").unwrap().is_none(), "never acknowledged");
    }

    /// Segments go once the engine has synced their records, and what they held stays.
    #[test]
    fn the_log_is_cut_as_its_segments_fill_and_a_reopened_store_has_everything() {
        let dir = tempfile::tempdir().unwrap();
        let (fjall, log) = (dir.path().join("fjall"), dir.path().join("log"));
        let open = || {
            let engine = crate::store::FjallEngine::open(&fjall, 8 << 20).unwrap();
            replay_log(&engine, &log, false).unwrap();
            KvStore::with_engine(engine)
                .unwrap()
                .with_log(&log, 8192)
                .unwrap()
        };
        let mut store = open();
        for seq in 1..=300 {
            store
                .create_run(&queued(seq, &format!("run-{seq}")))
                .unwrap();
            store
                .put_log_chunk(&format!("run-{seq}"), 0, &[b'o'; 100])
                .unwrap();
            store.flush().unwrap();
        }
        applied_all(&store).unwrap();
        let segments = std::fs::read_dir(&log).unwrap().count();
        assert!(segments <= 3, "{segments} segments left after the cuts");
        drop(store);
        let store = open();
        assert_eq!(store.run_count().unwrap(), 300);
        for seq in [1, 150, 300] {
            assert_eq!(store.run(&format!("run-{seq}")).unwrap().unwrap().seq, seq);
            assert_eq!(store.log_chunks(&format!("run-{seq}")).unwrap().len(), 1);
        }
    }

    /// Ids are checked from memory once the stored ones are read, and none taken is ever
    /// called free: stored before the open, created since, or in the batch.
    #[test]
    fn a_run_id_is_taken_if_any_run_has_it_stored_or_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fjall");
        let open = || {
            KvStore::with_engine(crate::store::FjallEngine::open(&path, 8 << 20).unwrap()).unwrap()
        };
        let mut store = open();
        for seq in 1..=500 {
            store
                .create_run(&queued(seq, &format!("{seq:016x}")))
                .unwrap();
        }
        store.flush().unwrap();
        drop(store);
        let mut store = open();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !store.run_ids.borrow_mut().is_ready() {
            assert!(
                std::time::Instant::now() < deadline,
                "stored ids never read"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        store.create_run(&queued(501, "fresh-in-batch")).unwrap();
        for id in ["0000000000000001", "00000000000001f4", "fresh-in-batch"] {
            assert!(store.run_id_taken(id).unwrap(), "{id}");
        }
        store.flush().unwrap();
        assert!(store.run_id_taken("fresh-in-batch").unwrap());
        assert!(!store.run_id_taken("ffffffffffffffff").unwrap());
    }
}
