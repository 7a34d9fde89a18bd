//! Frees fjall's written-out memtables on a thread of our own.
//!
//! fjall 3.1 drops a tree's old versions, and with them the memtables already written out
//! as tables, while it holds that tree's version lock (`SuperVersions::maintenance`, run
//! by a flush worker each time any tree's memtable is sealed). A memtable of 8 MiB of small
//! records (retention's tombstones) is some 100,000 skiplist nodes, freed one by one: tens
//! of milliseconds during which every read and write of the tree waits, the broker's loop
//! and its commits included. The keeper holds a reference to each memtable while it is the
//! active one, so fjall's drop of it is only a count going down; once the keeper's is the
//! last reference, the keeper drops it, away from every lock.
//!
//! At each look it also runs what the engine asks of the trees away from the loop (whether
//! fjall is behind on its writes: reading that takes the same locks).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// How often the keeper looks while the trees are written: well under the life of a
/// memtable being filled (8 MiB at the fastest rate of writes measured here takes hundreds
/// of milliseconds), so nearly every one is held before it is sealed. One it misses is
/// freed by fjall as before.
const LOOK_EVERY: Duration = Duration::from_millis(20);
/// How often at most it looks while nothing is written: an idle broker is not woken 50
/// times a second for nothing (the keeper was nine in ten of an idle broker's wake-ups),
/// and a burst after a quiet spell is seen within this, still well inside a memtable's
/// life.
const QUIET_LOOK_EVERY: Duration = Duration::from_millis(160);

/// When the keeper looks next: every [`LOOK_EVERY`] while the active memtables change,
/// twice as long after each look that finds them as they were, up to [`QUIET_LOOK_EVERY`].
#[derive(Debug)]
struct Pace {
    /// The wait before the next look.
    every: Duration,
    /// Each tree's active memtable (address, bytes) at the last look.
    seen: Vec<(usize, u64)>,
}

impl Default for Pace {
    fn default() -> Self {
        Pace {
            every: LOOK_EVERY,
            seen: Vec::new(),
        }
    }
}

impl Pace {
    /// After a look that found `active` and freed `released` memtables: the wait before
    /// the next one (`every` from now on).
    fn after_look(&mut self, active: Vec<(usize, u64)>, released: usize) -> Duration {
        self.every = if active == self.seen && released == 0 {
            (self.every * 2).min(QUIET_LOOK_EVERY)
        } else {
            LOOK_EVERY
        };
        self.seen = active;
        self.every
    }
}

/// A memtable held by the keeper, its type left to fjall.
trait Held: Send {
    /// No one else holds it: dropping it frees it.
    fn is_ours_alone(&self) -> bool;
    fn address(&self) -> usize;
}

impl<T: Send + Sync> Held for Arc<T> {
    fn is_ours_alone(&self) -> bool {
        Arc::strong_count(self) == 1
    }

    fn address(&self) -> usize {
        Arc::as_ptr(self) as *const u8 as usize
    }
}

/// The memtables held, and what the keeper does with them at each look.
#[derive(Default)]
pub(super) struct Holding {
    held: Vec<Box<dyn Held>>,
}

impl Holding {
    /// Holds `memtable` if it is not held yet.
    fn hold<T: Send + Sync + 'static>(&mut self, memtable: Arc<T>) {
        let address = memtable.address();
        if !self.held.iter().any(|held| held.address() == address) {
            self.held.push(Box::new(memtable));
        }
    }

    /// Drops the memtables no one else holds any more; returns how many.
    fn release(&mut self) -> usize {
        let before = self.held.len();
        self.held.retain(|held| !held.is_ours_alone());
        before - self.held.len()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.held.len()
    }
}

/// The keeper's thread; it stops when this is dropped.
pub(super) struct MemtableKeeper {
    /// Memtables the keeper was the last to hold, and freed.
    freed: Arc<AtomicU64>,
    /// Looks taken so far.
    looks: Arc<AtomicU64>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MemtableKeeper {
    /// Starts holding the active memtable of each tree `trees` gives at each look.
    /// And calls `also` with the trees at each look.
    pub(super) fn start(
        trees: Arc<std::sync::Mutex<Vec<fjall::Keyspace>>>,
        also: impl Fn(&[fjall::Keyspace]) + Send + 'static,
    ) -> std::io::Result<MemtableKeeper> {
        use fjall::AbstractTree;
        let (stop, stopped) = mpsc::channel::<()>();
        let freed = Arc::new(AtomicU64::new(0));
        let looks = Arc::new(AtomicU64::new(0));
        let (counted, looked) = (freed.clone(), looks.clone());
        let thread = std::thread::Builder::new()
            .name("jobcast-memtables".into())
            .spawn(move || {
                let mut holding = Holding::default();
                let mut pace = Pace::default();
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(pace.every) {
                    let trees = match trees.lock() {
                        Ok(trees) => trees.clone(),
                        Err(_) => return,
                    };
                    let mut active = Vec::with_capacity(trees.len());
                    for tree in &trees {
                        let memtable = tree.tree.active_memtable();
                        active.push((memtable.address(), memtable.size()));
                        holding.hold(memtable);
                    }
                    also(&trees);
                    drop(trees);
                    let released = holding.release();
                    pace.after_look(active, released);
                    counted.fetch_add(released as u64, Ordering::Relaxed);
                    looked.fetch_add(1, Ordering::Release);
                }
            })?;
        Ok(MemtableKeeper {
            freed,
            looks,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl MemtableKeeper {
    /// Memtables freed by the keeper so far.
    pub(super) fn freed(&self) -> u64 {
        self.freed.load(Ordering::Relaxed)
    }

    /// Looks taken so far.
    pub(super) fn looks(&self) -> u64 {
        self.looks.load(Ordering::Acquire)
    }
}

impl Drop for MemtableKeeper {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        tracing::debug!(
            looks = self.looks(),
            freed = self.freed(),
            "memtable keeper stopped"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_slow_down_while_nothing_is_written_and_speed_up_at_the_first_write() {
        let mut pace = Pace::default();
        let tree = |bytes| vec![(0x1000, bytes), (0x2000, 0)];
        assert_eq!(
            pace.after_look(tree(10), 0),
            LOOK_EVERY,
            "the first look sees news"
        );
        let quiet: Vec<Duration> = (0..5).map(|_| pace.after_look(tree(10), 0)).collect();
        assert_eq!(
            quiet,
            [40, 80, 160, 160, 160].map(Duration::from_millis),
            "doubling up to the cap"
        );
        assert_eq!(pace.after_look(tree(11), 0), LOOK_EVERY, "a write");
        assert_eq!(pace.after_look(tree(11), 0), 2 * LOOK_EVERY);
        let sealed = vec![(0x3000, 0), (0x2000, 0)];
        assert_eq!(
            pace.after_look(sealed.clone(), 0),
            LOOK_EVERY,
            "a new memtable"
        );
        assert_eq!(pace.after_look(sealed, 1), LOOK_EVERY, "one freed");
    }

    #[test]
    fn a_memtable_is_dropped_by_the_keeper_only_once_no_one_else_holds_it() {
        let mut holding = Holding::default();
        let fjalls = Arc::new(vec![0u8; 16]);
        holding.hold(fjalls.clone());
        holding.hold(fjalls.clone());
        assert_eq!(holding.len(), 1, "held once");
        assert_eq!(holding.release(), 0, "still fjall's too");
        drop(fjalls);
        assert_eq!(holding.release(), 1);
        assert_eq!(holding.len(), 0);
    }

    /// With fjall itself: a memtable written out as a table, and its tree's old versions
    /// dropped, is freed by the keeper (fjall let go of every reference it had).
    #[test]
    fn memtables_fjall_has_written_out_are_freed_by_the_keeper() {
        use crate::store::engine::Engine;
        let dir = tempfile::tempdir().unwrap();
        let engine = super::super::FjallEngine::open(dir.path(), 1 << 20).unwrap();
        let runs = engine.tree("runs").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut written = 0u64;
        while engine.memtables_freed() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no memtable freed by the keeper after {written} rounds"
            );
            // A memtable the keeper has had time to see, then sealed and written out; the
            // next seal drops the versions that still named it.
            for _ in 0..100 {
                written += 1;
                runs.insert(written.to_be_bytes(), b"a run").unwrap();
            }
            // Two looks begun after the writes: the keeper holds the memtable they went to.
            let seen = engine.memtable_looks() + 2;
            while engine.memtable_looks() < seen {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the keeper stopped looking"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            runs.rotate_memtable_and_wait().unwrap();
        }
    }

    #[test]
    fn each_look_also_runs_what_the_engine_asks_of_every_tree() {
        use crate::store::engine::Engine;
        let dir = tempfile::tempdir().unwrap();
        let engine = super::super::FjallEngine::open(dir.path(), 1 << 20).unwrap();
        let trees = Arc::new(std::sync::Mutex::new(vec![
            engine.tree("runs").unwrap(),
            engine.tree("logs").unwrap(),
        ]));
        let seen = Arc::new(AtomicU64::new(0));
        let counted = seen.clone();
        let keeper = MemtableKeeper::start(trees, move |trees| {
            counted.fetch_add(trees.len() as u64, Ordering::Relaxed);
        })
        .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while keeper.looks() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "the keeper stopped looking"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(keeper);
        let looks_seen = seen.load(Ordering::Relaxed);
        assert!(
            looks_seen >= 6 && looks_seen.is_multiple_of(2),
            "{looks_seen}"
        );
    }
}
