//! fjall 3 (a log-structured merge tree) as an [`Engine`]: the broker's store.

use super::engine::{tree_of, Engine, Entry, Scan, Tree, Write};
use super::{StoreError, StoreResult};
use fjall::{Database, Keyspace, KeyspaceCreateOptions};
use std::ops::Bound;
use std::path::Path;

pub(super) fn backend(e: fjall::Error) -> StoreError {
    StoreError::Engine(Box::new(e))
}

const MEMTABLE_BYTES: u64 = 8 << 20;
/// For the trees of a few records written over and over (job states, settings, workers,
/// jobs): a write buffer holds every version until it is written out, so a small one
/// keeps their memory small; their tables stay small either way.
const SMALL_MEMTABLE_BYTES: u64 = 1 << 20;
const SMALL_TREES: [&str; 4] = ["job_states", "settings", "workers", "jobs"];
/// The longest a clean stop waits for the journal to be written into the tables.
const JOURNAL_FLUSH_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// fjall holds every write back (sleeps of 100 ms) at 4 sealed memtables of one tree
/// waiting to be written out, and slows them from 20 level-0 tables: retention waits well
/// before either. It waits while any memtable waits to be written out: fjall's flush
/// worker holds the journal's lock across an fsync as it takes each one, and every write
/// of the loop waits for that; deleting meanwhile made more of them, on a busier disk
/// (longest request wait while pruning 30-46 → 17-28 ms, docs/BENCHMARKS.md).
const BACKLOG_SEALED_MEMTABLES: usize = 1;
const BACKLOG_L0_TABLES: usize = 12;

/// Whether any of `trees` is behind on writing out what it was given.
fn behind(trees: &[Keyspace]) -> bool {
    trees.iter().any(|t| {
        t.sealed_memtable_count() >= BACKLOG_SEALED_MEMTABLES
            || t.l0_table_count() >= BACKLOG_L0_TABLES
    })
}

pub struct FjallEngine {
    /// Held for its thread (`memtable_keeper.rs`); first, so that it stops before the
    /// database is dropped.
    _memtables: super::memtable_keeper::MemtableKeeper,
    db: Database,
    /// Syncs the journal for the committer without holding fjall's lock meanwhile.
    journal: std::sync::Arc<super::fjall_journal::JournalSync>,
    /// The trees opened, for the keeper's looks.
    trees: std::sync::Arc<std::sync::Mutex<Vec<Keyspace>>>,
    /// Whether fjall is behind on writing out, as the keeper last saw it: reading it
    /// takes each tree's version lock, which fjall holds across a compaction's fsyncs,
    /// so the loop does not read it itself.
    backlogged: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl FjallEngine {
    /// Opens (or creates) the store at `path`, with at most `cache_bytes` of block cache.
    pub fn open(path: &Path, cache_bytes: u64) -> StoreResult<FjallEngine> {
        let db = Database::builder(path)
            .cache_size(cache_bytes)
            // Durability comes from explicit flushes (group commit).
            .manual_journal_persist(true)
            // The smallest journal it allows (default 512 MiB): a reopen replays it.
            .max_journaling_size(64 << 20)
            .open()
            .map_err(|e| match e {
                // What fjall says when a file its manifest names is gone or unreadable.
                fjall::Error::Storage(fjall::LsmError::Unrecoverable) => {
                    StoreError::Damaged(format!(
                        "the store {} cannot be opened: a file of it is missing or damaged ({e}), which no crash leaves: restore the data directory from a backup",
                        path.display()
                    ))
                }
                fjall::Error::Locked => StoreError::InUse,
                e => backend(e),
            })?;
        let trees = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let backlogged = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = backlogged.clone();
        let watch = move |trees: &[Keyspace]| {
            seen.store(behind(trees), std::sync::atomic::Ordering::Relaxed);
        };
        Ok(FjallEngine {
            db,
            journal: std::sync::Arc::new(super::fjall_journal::JournalSync::new(path)),
            _memtables: super::memtable_keeper::MemtableKeeper::start(trees.clone(), watch)
                .map_err(|e| StoreError::Engine(Box::new(e)))?,
            trees,
            backlogged,
        })
    }

    /// Memtables freed away from fjall's locks so far (`memtable_keeper.rs`).
    #[cfg(test)]
    pub(super) fn memtables_freed(&self) -> u64 {
        self._memtables.freed()
    }

    /// Looks the memtable keeper has taken.
    #[cfg(test)]
    pub(super) fn memtable_looks(&self) -> u64 {
        self._memtables.looks()
    }
}

impl Engine for FjallEngine {
    type Tree = Keyspace;

    fn tree(&self, name: &str) -> StoreResult<Keyspace> {
        let tree = self
            .db
            .keyspace(name, || {
                KeyspaceCreateOptions::default()
                    .max_memtable_size(match SMALL_TREES.contains(&name) {
                        true => SMALL_MEMTABLE_BYTES,
                        false => MEMTABLE_BYTES,
                    })
                    // Without this each write is a system call of its own; the journal
                    // reaches the disk at `flush` (fsync) either way.
                    .manual_journal_persist(true)
            })
            .map_err(backend)?;
        if let Ok(mut trees) = self.trees.lock() {
            trees.push(tree.clone());
        }
        Ok(tree)
    }

    fn flush(&self) -> StoreResult<()> {
        self.journal.sync(&self.db)
    }

    fn sync_everything(&self) -> StoreResult<()> {
        self.journal.sync_every_file(&self.db)
    }

    fn view(&self) -> Option<Box<dyn super::engine::View>> {
        let trees = self.trees.lock().ok()?.clone();
        Some(Box::new(FjallView {
            snapshot: self.db.snapshot(),
            trees,
        }))
    }

    fn has_views(&self) -> bool {
        true
    }

    fn flusher(&self) -> super::engine::Flusher {
        let (db, journal) = (self.db.clone(), self.journal.clone());
        Box::new(move || journal.sync(&db))
    }

    fn flush_journal(&self) -> StoreResult<bool> {
        self.flush()?;
        let trees = self
            .trees
            .lock()
            .map(|trees| trees.clone())
            .unwrap_or_default();
        // fjall waits for its flush workers with no bound: a stop must not hang on it
        // (a supervisor would kill the broker), so the wait has one of its own.
        let (done, waited) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("journal-flush".into())
            .spawn(move || {
                let result = trees
                    .iter()
                    .try_for_each(|tree| tree.rotate_memtable_and_wait());
                let _ = done.send(result);
            });
        if spawned.is_err() {
            return Ok(false);
        }
        match waited.recv_timeout(JOURNAL_FLUSH_WAIT) {
            Ok(result) => result.map_err(backend)?,
            Err(_) => return Ok(false),
        }
        self.flush().map(|()| true)
    }

    /// One batch: one journal record (a write each took the journal's lock, wrote and
    /// checked the tree's memtable on its own), applied all or not at all after a crash.
    fn write_all(&self, trees: &[Keyspace], writes: &[&[Write]]) -> StoreResult<()> {
        let mut batch = self.db.batch();
        for write in writes.iter().copied().flatten() {
            let tree = tree_of(trees, write.tree)?;
            match &write.value {
                Some(value) => batch.insert(tree, write.key.as_slice(), value.as_slice()),
                None => batch.remove(tree, write.key.as_slice()),
            }
        }
        batch.commit().map_err(backend)
    }

    fn is_backlogged(&self) -> bool {
        self.backlogged.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// A snapshot of the database and its trees: what was written when it was taken.
struct FjallView {
    snapshot: fjall::Snapshot,
    trees: Vec<Keyspace>,
}

impl FjallView {
    fn tree(&self, name: &str) -> StoreResult<&Keyspace> {
        self.trees
            .iter()
            .find(|tree| **tree.name() == *name)
            .ok_or_else(|| StoreError::Engine(format!("no tree {name} in the store").into()))
    }
}

impl super::engine::View for FjallView {
    fn get(&self, tree: &str, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        use fjall::Readable;
        Ok(self
            .snapshot
            .get(self.tree(tree)?, key)
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn newest_first(&self, tree: &str, to: Bound<Vec<u8>>) -> Scan<'_> {
        use fjall::Readable;
        let tree = match self.tree(tree) {
            Ok(tree) => tree,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        let iter = self
            .snapshot
            .range::<Vec<u8>, _>(tree, (Bound::Unbounded, to));
        Box::new(entries(iter).rev())
    }

    fn oldest_first(&self, tree: &str, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Scan<'_> {
        use fjall::Readable;
        let tree = match self.tree(tree) {
            Ok(tree) => tree,
            Err(e) => return Box::new(std::iter::once(Err(e))),
        };
        entries(self.snapshot.range::<Vec<u8>, _>(tree, (from, to)))
    }

    fn with_prefix(&self, tree: &str, prefix: &[u8]) -> Scan<'_> {
        use fjall::Readable;
        match self.tree(tree) {
            Ok(tree) => entries(self.snapshot.prefix(tree, prefix)),
            Err(e) => Box::new(std::iter::once(Err(e))),
        }
    }
}

fn entries(iter: fjall::Iter) -> Scan<'static> {
    Box::new(iter.map(|guard| {
        guard
            .into_inner()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .map_err(backend)
    }))
}

impl Tree for Keyspace {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        Ok(Keyspace::get(self, key)
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> StoreResult<()> {
        Keyspace::insert(self, key, value).map_err(backend)
    }

    fn remove(&self, key: &[u8]) -> StoreResult<()> {
        Keyspace::remove(self, key).map_err(backend)
    }

    fn range(&self, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Scan<'_> {
        entries(Keyspace::range::<&[u8], _>(self, (from, to)))
    }

    fn prefix(&self, prefix: &[u8]) -> Scan<'_> {
        entries(Keyspace::prefix(self, prefix))
    }

    fn last(&self) -> StoreResult<Option<Entry>> {
        match self.last_key_value() {
            Some(guard) => {
                let (k, v) = guard.into_inner().map_err(backend)?;
                Ok(Some((k.to_vec(), v.to_vec())))
            }
            None => Ok(None),
        }
    }
}
