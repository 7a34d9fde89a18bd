//! Which run ids may already be taken, answered from memory.
//!
//! Every new run gets a random 64-bit id, checked against the stored runs so that no two
//! runs share one. That check was a read of the engine on the loop for every run: CPU,
//! and a read that waits whenever fjall holds a tree's version lock across the fsyncs at
//! a compaction's end. A Bloom filter of every id the store holds (read once at open, on
//! a thread of its own, from a snapshot) and every id created since answers "not taken"
//! for nearly every new id without a read; a "maybe" (about 1 % of the time, or any id
//! while the filter is still being read) is settled by the engine as before. Ids of
//! deleted runs stay in the filter: they only cost a read.

use super::engine::View;
use super::StoreResult;
use fastbloom::BloomFilter;
use std::sync::mpsc;

/// The share of ids not taken that the filter calls "maybe".
const FALSE_POSITIVES: f64 = 0.01;
/// The fewest ids a filter is sized for (about 300 KB).
const FEWEST_IDS: usize = 1 << 18;

pub(super) enum RunIds {
    /// Being read from a snapshot; the ids created meanwhile, for when it comes.
    Reading {
        filter: mpsc::Receiver<StoreResult<BloomFilter>>,
        created: Vec<String>,
    },
    Ready(BloomFilter),
    /// No snapshot to read (an engine without views), or the read failed: every check
    /// reads the engine.
    Off,
}

impl RunIds {
    /// Starts reading the ids in `view`'s `run_ids` tree, about `stored` of them, on a
    /// thread of its own.
    pub(super) fn read(view: Option<Box<dyn View>>, stored: u64) -> RunIds {
        let Some(view) = view else {
            return RunIds::Off;
        };
        let (tell, filter) = mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("jobcast-run-ids".into())
            .spawn(move || {
                let _ = tell.send(filter_of(view.as_ref(), stored));
            });
        match spawned {
            Ok(_) => RunIds::Reading {
                filter,
                created: Vec::new(),
            },
            Err(_) => RunIds::Off,
        }
    }

    /// A run with `id` was created.
    pub(super) fn created(&mut self, id: &str) {
        match self {
            RunIds::Reading { created, .. } => created.push(id.to_string()),
            RunIds::Ready(filter) => {
                filter.insert(id);
            }
            RunIds::Off => {}
        }
    }

    /// Whether `id` may be taken: `false` only if no run has it.
    pub(super) fn may_be_taken(&mut self, id: &str) -> bool {
        self.take_filter();
        match self {
            RunIds::Ready(filter) => filter.contains(id),
            RunIds::Reading { .. } | RunIds::Off => true,
        }
    }

    /// Moves to `Ready` once the read is done, with the ids created meanwhile.
    fn take_filter(&mut self) {
        let RunIds::Reading { filter, created } = self else {
            return;
        };
        let read = match filter.try_recv() {
            Ok(read) => read,
            Err(mpsc::TryRecvError::Empty) => return,
            Err(mpsc::TryRecvError::Disconnected) => Err(super::StoreError::Engine(
                "the run ids' reader ended".into(),
            )),
        };
        *self = match read {
            Ok(mut read) => {
                for id in created.iter() {
                    read.insert(id.as_str());
                }
                RunIds::Ready(read)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the stored run ids could not be read: each new run's id is checked in the store");
                RunIds::Off
            }
        };
    }

    #[cfg(test)]
    pub(super) fn is_ready(&mut self) -> bool {
        self.take_filter();
        matches!(self, RunIds::Ready(_))
    }
}

/// A filter of every id in `view`'s `run_ids` tree, sized for half as many again as
/// `stored` (ids created later join it).
fn filter_of(view: &dyn View, stored: u64) -> StoreResult<BloomFilter> {
    let expected = (stored as usize)
        .saturating_add(stored as usize / 2)
        .max(FEWEST_IDS);
    let mut filter = BloomFilter::with_false_pos(FALSE_POSITIVES).expected_items(expected);
    for entry in view.oldest_first(
        "run_ids",
        std::ops::Bound::Unbounded,
        std::ops::Bound::Unbounded,
    ) {
        let (id, _) = entry?;
        // As `&str`, the type every check hashes (a `[u8]` hashes otherwise). An id that
        // is not UTF-8 cannot be one the broker makes.
        if let Ok(id) = std::str::from_utf8(&id) {
            filter.insert(id);
        }
    }
    Ok(filter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine::Engine;

    fn ready(ids: &mut RunIds) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !ids.is_ready() {
            assert!(
                std::time::Instant::now() < deadline,
                "the ids were never read"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn every_stored_or_created_id_may_be_taken_and_nearly_no_other() {
        let dir = tempfile::tempdir().unwrap();
        let engine = crate::store::FjallEngine::open(dir.path(), 8 << 20).unwrap();
        let tree = engine.tree("run_ids").unwrap();
        let id = |n: u64| format!("{:016x}", n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        for n in 0..20_000 {
            tree.insert(id(n).as_bytes(), n.to_be_bytes()).unwrap();
        }
        let mut ids = RunIds::read(engine.view(), 20_000);
        // Created while the read is going on, and after.
        ids.created(&id(20_000));
        ready(&mut ids);
        ids.created(&id(20_001));
        for n in 0..=20_001 {
            assert!(ids.may_be_taken(&id(n)), "id {n} is taken");
        }
        let maybes = (100_000..110_000)
            .filter(|n| ids.may_be_taken(&id(*n)))
            .count();
        assert!(maybes < 300, "{maybes} of 10,000 free ids called taken");
    }

    #[test]
    fn without_a_snapshot_every_id_may_be_taken() {
        let mut ids = RunIds::read(None, 0);
        ids.created("a");
        assert!(ids.may_be_taken("b"));
    }
}
