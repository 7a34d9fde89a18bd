//! The little an embedded key-value engine must offer for [`super::KvStore`] to keep the
//! broker's records in it: named ordered trees of byte keys and values, and one call that
//! makes every write so far durable. One adapter per engine (`sled_engine.rs`,
//! `fjall_engine.rs`), so the record layout and its tests are written once.

use super::StoreResult;
use std::ops::Bound;

/// Key and value of one record, copied out of the engine.
pub type Entry = (Vec<u8>, Vec<u8>);

/// A range read, in key order or reversed; it ends at the first error.
pub type Scan<'a> = Box<dyn DoubleEndedIterator<Item = StoreResult<Entry>> + 'a>;

pub trait Tree {
    fn get(&self, key: &[u8]) -> StoreResult<Option<Vec<u8>>>;
    fn insert(&self, key: &[u8], value: &[u8]) -> StoreResult<()>;
    fn remove(&self, key: &[u8]) -> StoreResult<()>;
    fn range(&self, from: Bound<&[u8]>, to: Bound<&[u8]>) -> Scan<'_>;
    fn prefix(&self, prefix: &[u8]) -> Scan<'_>;
    /// The record with the highest key.
    fn last(&self) -> StoreResult<Option<Entry>>;

    fn iter(&self) -> Scan<'_> {
        self.range(Bound::Unbounded, Bound::Unbounded)
    }
}

/// One write of [`Engine::write_all`]: into the tree at index `tree` of the trees given,
/// `key` set to `value`, or removed (`None`).
pub struct Write {
    pub tree: usize,
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// The tree a [`Write`] names.
pub fn tree_of<T>(trees: &[T], index: usize) -> StoreResult<&T> {
    trees.get(index).ok_or_else(|| {
        super::StoreError::Engine(format!("no tree {index} in a batch of writes").into())
    })
}

/// What [`Engine::flush`] does, callable from the committer's thread.
pub type Flusher = Box<dyn Fn() -> StoreResult<()> + Send + Sync>;

/// Shared with the committer's thread, which applies each batch's writes.
pub trait Engine: Send + Sync + 'static {
    type Tree: Tree + Send + Sync + 'static;
    fn tree(&self, name: &str) -> StoreResult<Self::Tree>;
    /// Makes every write so far durable.
    fn flush(&self) -> StoreResult<()>;
    /// Makes everything the engine holds durable, whatever wrote it (an earlier process
    /// killed before its sync included): before the write-ahead log lets go of records.
    fn sync_everything(&self) -> StoreResult<()> {
        self.flush()
    }
    /// The same as [`Engine::flush`], for another thread.
    fn flusher(&self) -> Flusher;
    /// Writes everything out of the journal into the engine's tables (for a clean stop);
    /// false if that did not finish in time (everything is durable all the same).
    fn flush_journal(&self) -> StoreResult<bool> {
        self.flush().map(|()| true)
    }
    /// A consistent read-only view of the trees as they are now, for another thread;
    /// `None` where the engine has none.
    fn view(&self) -> Option<Box<dyn View>> {
        None
    }
    /// Whether [`Engine::view`] gives views.
    fn has_views(&self) -> bool {
        false
    }
    /// See [`super::Store::is_backlogged`].
    fn is_backlogged(&self) -> bool {
        false
    }
    /// Makes the writes of `writes` in order, each into `trees[write.tree]`; where the
    /// engine can, as one batch (fjall: one journal record, all or nothing after a crash).
    fn write_all(&self, trees: &[Self::Tree], writes: &[&[Write]]) -> StoreResult<()> {
        for write in writes.iter().copied().flatten() {
            let tree = tree_of(trees, write.tree)?;
            match &write.value {
                Some(value) => tree.insert(&write.key, value)?,
                None => tree.remove(&write.key)?,
            }
        }
        Ok(())
    }
}

/// A read-only view of an engine's trees at one moment (a snapshot), readable from any
/// thread.
pub trait View: Send + Sync {
    fn get(&self, tree: &str, key: &[u8]) -> StoreResult<Option<Vec<u8>>>;
    /// The records of `tree` below `to`, highest key first.
    fn newest_first(&self, tree: &str, to: Bound<Vec<u8>>) -> Scan<'_>;
    /// The records of `tree` between `from` and `to`, lowest key first.
    fn oldest_first(&self, tree: &str, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Scan<'_>;
    /// The records of `tree` whose keys start with `prefix`, in key order.
    fn with_prefix(&self, tree: &str, prefix: &[u8]) -> Scan<'_>;
}
