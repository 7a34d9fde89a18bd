//! Where the broker's store lives in its data directory, and the one-time copy of a store
//! an earlier broker kept in sled into fjall (docs/ARCHITECTURE.md says why the engine
//! changed).

use super::kv::copy_records;
use super::{FjallEngine, KvStore, SledEngine, StoreError, StoreResult};
use std::path::Path;

/// The broker's store: its records in fjall.
pub type BrokerStore = KvStore<FjallEngine>;

/// Block cache of the store when the config names none.
pub const DEFAULT_CACHE_BYTES: u64 = 64 << 20;

/// The store, under the data directory.
const CURRENT: &str = "store.fjall";
/// A copy in progress; renamed to `CURRENT` once complete.
const PARTIAL: &str = "store.fjall.partial";
/// Where brokers up to the switch kept their sled store.
const SLED: &str = "store";
/// Where that sled store is moved once copied: kept, not deleted.
const SLED_KEPT: &str = "store.sled-before-upgrade";

fn io_error(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("cannot {what} {}: {e}", path.display()))
}

/// Opens the store in `data_dir`, first copying a sled store left by an earlier broker.
pub fn open_in(data_dir: &Path, cache_bytes: u64) -> StoreResult<BrokerStore> {
    let current = data_dir.join(CURRENT);
    let sled = data_dir.join(SLED);
    if !current.exists() && sled.join("conf").exists() {
        copy_from_sled(data_dir, cache_bytes)?;
    }
    KvStore::with_engine(FjallEngine::open(&current, cache_bytes)?)
}

/// Copies the sled store into a new fjall store, then moves the sled one aside. A copy
/// cut short (the broker killed) is started over at the next start: the new store only
/// takes its name once complete.
fn copy_from_sled(data_dir: &Path, cache_bytes: u64) -> StoreResult<()> {
    let (sled, partial) = (data_dir.join(SLED), data_dir.join(PARTIAL));
    tracing::warn!(
        from = %sled.display(),
        "copying the store of an earlier broker (sled) into the current engine (fjall)"
    );
    if partial.exists() {
        std::fs::remove_dir_all(&partial)
            .map_err(|e| io_error("remove the unfinished copy", &partial, e))?;
    }
    let copied = {
        let from = SledEngine::open(&sled, cache_bytes)?;
        let to = FjallEngine::open(&partial, cache_bytes)?;
        copy_records(&from, &to)?
    };
    let current = data_dir.join(CURRENT);
    std::fs::rename(&partial, &current)
        .map_err(|e| io_error("rename the copied store to", &current, e))?;
    let kept = data_dir.join(SLED_KEPT);
    std::fs::rename(&sled, &kept).map_err(|e| io_error("move the sled store to", &kept, e))?;
    tracing::warn!(
        records = copied,
        kept = %kept.display(),
        "store copied; the sled store is kept beside it: remove it once this broker has run well"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use jobcast_protocol::{Exec, JobSpec, RunFilter, RunRecord, RunState};

    #[test]
    fn a_sled_store_of_an_earlier_broker_is_copied_whole_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobSpec::new("nightly", "default", Exec::Command(vec!["true".into()]));
        let mut runs = Vec::new();
        {
            let engine = SledEngine::open(&dir.path().join(SLED), 8 << 20).unwrap();
            let mut old = KvStore::with_engine(engine).unwrap();
            old.put_job(&job).unwrap();
            for seq in 1..=5 {
                let mut run = RunRecord::queued(format!("run{seq}"), seq, job.clone(), seq, "q");
                if seq < 5 {
                    run.state = RunState::Succeeded;
                }
                old.create_run(&run).unwrap();
                old.put_log_chunk(&run.id, 0, b"log line\n").unwrap();
                runs.push(run);
            }
            old.delete_run(&runs.remove(0)).unwrap();
            old.put_setting("disabled_pools", b"[]").unwrap();
            old.flush().unwrap();
        }
        // A copy cut short before: started over.
        std::fs::create_dir_all(dir.path().join(PARTIAL).join("junk")).unwrap();

        let store = open_in(dir.path(), 8 << 20).unwrap();
        assert_eq!(store.jobs().unwrap(), vec![job]);
        let mut listed = store
            .runs(&RunFilter {
                limit: 10,
                ..Default::default()
            })
            .unwrap()
            .runs;
        listed.reverse();
        assert_eq!(listed, runs);
        assert_eq!(store.run_count().unwrap(), 4, "the pruned count came along");
        assert_eq!(store.active_runs().unwrap().len(), 1);
        assert_eq!(store.log_chunks("run3").unwrap()[0].1, b"log line\n");
        assert_eq!(
            store.setting("disabled_pools").unwrap().as_deref(),
            Some(&b"[]"[..])
        );
        assert!(dir.path().join(SLED_KEPT).join("conf").exists());
        assert!(!dir.path().join(SLED).exists());
        assert!(!dir.path().join(PARTIAL).exists());
        drop(store);
        // Later starts open the copy and leave the kept sled store alone.
        let again = open_in(dir.path(), 8 << 20).unwrap();
        assert_eq!(again.run_count().unwrap(), 4);
    }
}
