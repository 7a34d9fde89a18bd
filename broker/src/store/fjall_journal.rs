//! Making fjall's journal durable without holding fjall's journal lock across the fsync.
//!
//! `Database::persist(SyncAll)` holds the journal's lock while the disk syncs (0.7 ms to
//! several ms here), and every write takes that lock: each write the loop made while the
//! committer's thread synced the previous batch waited for the whole fsync. So the
//! store's syncs (the committer's, and the engine's `flush`) hold the lock only to hand
//! fjall's buffer to the system (`persist(Buffer)`), then fsync the journal's file
//! through a handle of their own.
//!
//! Why that is enough (fjall 3.1): the journal is one file, `<id>.jnl` in the database's
//! directory; a batch's bytes are in the file that is newest when `persist(Buffer)`
//! returns; fjall moves to `<id + 1>.jnl` only after syncing the old file under the same
//! lock (`Writer::rotate`). So syncing the newest file found after `persist(Buffer)`
//! covers the batch: it is that file, or an older one fjall synced before making a newer.
//! A test checks that the file found is the one fjall writes to: a fjall that lays its
//! journal out otherwise fails it, and if no journal file is found at all the sync falls
//! back to fjall's own, under the lock.

use super::fjall_engine::backend;
use super::{StoreError, StoreResult};
use fjall::{Database, PersistMode};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

fn io(e: std::io::Error) -> StoreError {
    StoreError::Engine(Box::new(e))
}

/// The newest journal file, followed as fjall moves to newer ones.
pub(crate) struct JournalSync {
    dir: PathBuf,
    /// `None` until the first sync, and after a sync that found no journal file.
    newest: Mutex<Option<JournalFile>>,
    /// Whether the fall-back to fjall's own sync was logged.
    warned: std::sync::atomic::AtomicBool,
}

struct JournalFile {
    id: u64,
    file: File,
}

fn journal_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id}.jnl"))
}

/// The highest journal id in `dir`, if any file there is named like a journal.
fn newest_id(dir: &Path) -> StoreResult<Option<u64>> {
    Ok(std::fs::read_dir(dir)
        .map_err(io)?
        .filter_map(|entry| {
            entry
                .ok()?
                .file_name()
                .to_str()?
                .strip_suffix(".jnl")?
                .parse::<u64>()
                .ok()
        })
        .max())
}

impl JournalSync {
    /// For the fjall database in `dir`.
    pub(crate) fn new(dir: &Path) -> JournalSync {
        JournalSync {
            dir: dir.to_path_buf(),
            newest: Mutex::new(None),
            warned: Default::default(),
        }
    }

    /// Makes every write to `db` so far durable.
    pub(crate) fn sync(&self, db: &Database) -> StoreResult<()> {
        db.persist(PersistMode::Buffer).map_err(backend)?;
        let mut newest = self
            .newest
            .lock()
            .map_err(|_| StoreError::Engine("the journal file's lock is poisoned".into()))?;
        match self.follow(&mut newest)? {
            Some(file) => file.sync_all().map_err(io),
            None => {
                if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
                    tracing::warn!(
                        dir = %self.dir.display(),
                        "no journal file found where fjall keeps it: syncing through fjall (slower)"
                    );
                }
                db.persist(PersistMode::SyncAll).map_err(backend)
            }
        }
    }

    /// Makes every journal file in the directory durable, not only the newest: after a
    /// kill, the journals a new process finds may hold writes the old one never synced
    /// (the page cache still has them; a power loss would not), and fjall may go on in a
    /// new file without syncing them.
    pub(crate) fn sync_every_file(&self, db: &Database) -> StoreResult<()> {
        self.sync(db)?;
        let entries = std::fs::read_dir(&self.dir).map_err(io)?;
        for entry in entries {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|extension| extension == "jnl") {
                File::open(&path)
                    .and_then(|file| file.sync_all())
                    .map_err(io)?;
            }
        }
        Ok(())
    }

    /// Moves `newest` to the newest journal file and returns it; `None` if there is none.
    fn follow<'a>(&self, newest: &'a mut Option<JournalFile>) -> StoreResult<Option<&'a File>> {
        let known = newest.as_ref().map(|journal| journal.id);
        let mut id = match known {
            Some(id) => id,
            None => match newest_id(&self.dir)? {
                Some(id) => id,
                None => return Ok(None),
            },
        };
        // fjall names the next journal `id + 1`; more than one can have come since.
        while journal_path(&self.dir, id + 1).exists() {
            id += 1;
        }
        if known != Some(id) {
            let file = File::open(journal_path(&self.dir, id)).map_err(io)?;
            *newest = Some(JournalFile { id, file });
        }
        Ok(newest.as_ref().map(|journal| &journal.file))
    }

    /// The journal file the last sync went to.
    #[cfg(test)]
    fn synced(&self) -> Option<PathBuf> {
        let newest = self.newest.lock().ok()?;
        newest
            .as_ref()
            .map(|journal| journal_path(&self.dir, journal.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjall::KeyspaceCreateOptions;

    #[test]
    fn the_file_synced_is_the_journal_fjall_wrote_the_batch_to() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::builder(dir.path())
            .manual_journal_persist(true)
            .open()
            .unwrap();
        let tree = db
            .keyspace("runs", || {
                KeyspaceCreateOptions::default().manual_journal_persist(true)
            })
            .unwrap();
        let journal = JournalSync::new(dir.path());
        for round in 0..3u8 {
            let marker = format!("a value no other write has, round {round}");
            let mut batch = db.batch();
            batch.insert(&tree, format!("key-{round}"), marker.as_bytes());
            batch.commit().unwrap();
            journal.sync(&db).unwrap();
            let synced = journal
                .synced()
                .expect("a journal file was found, not fjall's own sync used");
            let bytes = std::fs::read(&synced).unwrap();
            assert!(
                bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
                "round {round}: {} does not hold the batch",
                synced.display()
            );
        }
    }

    #[test]
    fn without_a_journal_file_where_expected_the_sync_is_fjalls_own() {
        let (store, elsewhere) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let db = Database::builder(store.path())
            .manual_journal_persist(true)
            .open()
            .unwrap();
        // Pointed at a directory with no journal, as with a fjall that keeps it elsewhere.
        let journal = JournalSync::new(elsewhere.path());
        journal.sync(&db).unwrap();
        journal.sync(&db).unwrap();
        assert_eq!(journal.synced(), None, "no file of its own was synced");
        assert!(journal.warned.load(std::sync::atomic::Ordering::Relaxed));
    }

    #[test]
    fn the_sync_follows_the_journal_to_each_newer_file() {
        let dir = tempfile::tempdir().unwrap();
        let journal = JournalSync::new(dir.path());
        let mut newest = None;
        assert!(
            journal.follow(&mut newest).unwrap().is_none(),
            "no journal yet"
        );
        for id in [3, 4] {
            File::create(journal_path(dir.path(), id)).unwrap();
        }
        std::fs::write(dir.path().join("10.jnl.old"), b"").unwrap();
        assert!(journal.follow(&mut newest).unwrap().is_some());
        assert_eq!(newest.as_ref().map(|j| j.id), Some(4));
        // Two rotations between syncs.
        for id in [5, 6] {
            File::create(journal_path(dir.path(), id)).unwrap();
        }
        assert!(journal.follow(&mut newest).unwrap().is_some());
        assert_eq!(newest.as_ref().map(|j| j.id), Some(6));
        // An older journal removed once written out changes nothing.
        std::fs::remove_file(journal_path(dir.path(), 3)).unwrap();
        assert!(journal.follow(&mut newest).unwrap().is_some());
        assert_eq!(newest.as_ref().map(|j| j.id), Some(6));
    }
}
