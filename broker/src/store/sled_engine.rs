//! sled 0.34 as an [`Engine`].

use super::engine::{Engine, Entry, Scan, Tree};
use super::{StoreError, StoreResult};
use std::ops::Bound;
use std::path::Path;
use std::time::{Duration, Instant};

fn backend(e: sled::Error) -> StoreError {
    StoreError::Engine(Box::new(e))
}

pub struct SledEngine {
    db: sled::Db,
}

impl SledEngine {
    /// Opens (or creates) the store at `path`, with at most `cache_bytes` of page cache.
    pub fn open(path: &Path, cache_bytes: u64) -> StoreResult<SledEngine> {
        // sled releases its file lock when the last handle to a database is dropped, which
        // its own background thread may do a moment after the owner did (a store closed
        // and reopened in one process). Wait for the lock, within a deadline.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let opened = sled::Config::new()
                .path(path)
                .cache_capacity(cache_bytes)
                // Durability comes from explicit flushes (group commit), not a timer.
                .flush_every_ms(None)
                .open();
            match opened {
                Ok(db) => return Ok(SledEngine { db }),
                // sled 0.34 reports it as an `Other` I/O error with this text.
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(backend(e)),
            }
        }
    }

    /// A store in a temporary directory, for tests.
    pub fn temporary() -> StoreResult<SledEngine> {
        let db = sled::Config::new()
            .temporary(true)
            .flush_every_ms(None)
            .open()
            .map_err(backend)?;
        Ok(SledEngine { db })
    }
}

impl Engine for SledEngine {
    type Tree = sled::Tree;

    fn tree(&self, name: &str) -> StoreResult<sled::Tree> {
        self.db.open_tree(name).map_err(backend)
    }

    fn flush(&self) -> StoreResult<()> {
        self.db.flush().map_err(backend)?;
        Ok(())
    }

    fn flusher(&self) -> super::engine::Flusher {
        let db = self.db.clone();
        Box::new(move || db.flush().map(|_| ()).map_err(backend))
    }
}

fn entries(iter: sled::Iter) -> Scan<'static> {
    Box::new(iter.map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(backend)))
}

impl Tree for sled::Tree {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>> {
        Ok(sled::Tree::get(self, key)
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> StoreResult<()> {
        sled::Tree::insert(self, key, value).map_err(backend)?;
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> StoreResult<()> {
        sled::Tree::remove(self, key).map_err(backend)?;
        Ok(())
    }

    fn range(&self, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Scan<'_> {
        entries(sled::Tree::range::<&[u8], _>(self, (from, to)))
    }

    fn prefix(&self, prefix: &[u8]) -> Scan<'_> {
        entries(self.scan_prefix(prefix))
    }

    fn last(&self) -> StoreResult<Option<Entry>> {
        Ok(sled::Tree::last(self)
            .map_err(backend)?
            .map(|(k, v)| (k.to_vec(), v.to_vec())))
    }
}
