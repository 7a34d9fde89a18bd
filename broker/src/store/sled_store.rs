//! The sled backend: one tree per kind of record, runs keyed by sequence number (in the
//! layout of `run_codec`), job spec versions by content.

use super::run_codec::{self, SpecCache, SpecKey};
use super::{list_newest_first, Store, StoreError, StoreResult};
use jobcast_protocol::{JobSpec, JobState, RunFilter, RunRecord, WorkerStatus};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

pub struct SledStore {
    db: sled::Db,
    jobs: sled::Tree,
    runs: sled::Tree,
    /// Job spec versions that runs refer to, by `SpecKey`.
    specs: sled::Tree,
    spec_cache: std::cell::RefCell<SpecCache>,
    run_ids: sled::Tree,
    active: sled::Tree,
    logs: sled::Tree,
    workers: sled::Tree,
    job_states: sled::Tree,
    settings: sled::Tree,
    /// Runs deleted by retention, kept as a setting: the count of stored runs is the last
    /// sequence number less these (sled's `len()` would walk the whole tree).
    pruned: u64,
    pruned_changed: bool,
    /// Whether anything was written since the last flush.
    dirty: bool,
}

/// The settings key of the pruned-runs count.
const PRUNED: &[u8] = b"pruned_runs";

fn backend(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

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

impl SledStore {
    pub fn open(path: &Path) -> StoreResult<SledStore> {
        // sled releases its file lock when the last handle to a database is dropped, which
        // its own background thread may do a moment after the owner did (a store closed
        // and reopened in one process). Wait for the lock, within a deadline.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let opened = sled::Config::new()
                .path(path)
                // Durability comes from explicit flushes (group commit), not a timer.
                .flush_every_ms(None)
                .open();
            match opened {
                Ok(db) => return Self::with_db(db),
                // sled 0.34 reports it as an `Other` I/O error with this text.
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(backend(e)),
            }
        }
    }

    /// A store that lives in a temporary directory, for tests.
    pub fn temporary() -> StoreResult<SledStore> {
        let db = sled::Config::new()
            .temporary(true)
            .flush_every_ms(None)
            .open()
            .map_err(backend)?;
        Self::with_db(db)
    }

    fn with_db(db: sled::Db) -> StoreResult<SledStore> {
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        let settings = tree("settings")?;
        let pruned = match settings.get(PRUNED).map_err(backend)? {
            Some(bytes) => {
                u64::from_be_bytes(bytes.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    what: "pruned-runs count",
                    detail: format!("{} bytes", bytes.len()),
                })?)
            }
            None => 0,
        };
        Ok(SledStore {
            jobs: tree("jobs")?,
            runs: tree("runs")?,
            specs: tree("specs")?,
            spec_cache: Default::default(),
            run_ids: tree("run_ids")?,
            active: tree("active")?,
            logs: tree("logs")?,
            workers: tree("workers")?,
            job_states: tree("job_states")?,
            settings,
            pruned,
            pruned_changed: false,
            db,
            dirty: false,
        })
    }

    fn run_by_seq(&self, seq: &[u8]) -> StoreResult<Option<RunRecord>> {
        match self.runs.get(seq).map_err(backend)? {
            Some(bytes) => Ok(Some(self.decode_run(&bytes)?)),
            None => Ok(None),
        }
    }

    fn decode_run(&self, bytes: &[u8]) -> StoreResult<RunRecord> {
        run_codec::decode_run(bytes, |key| self.spec(key))
    }

    /// A job spec version, from the cache or the specs tree.
    fn spec(&self, key: &SpecKey) -> StoreResult<JobSpec> {
        if let Some(spec) = self.spec_cache.borrow().get(key) {
            return Ok(spec.clone());
        }
        let bytes = self
            .specs
            .get(key)
            .map_err(backend)?
            .ok_or_else(|| StoreError::Corrupt {
                what: "run",
                detail: format!(
                    "it refers to a job spec version {} not stored",
                    hex::encode(key)
                ),
            })?;
        let spec = run_codec::decode_spec(&bytes)?;
        self.spec_cache.borrow_mut().remember(*key, spec.clone());
        Ok(spec)
    }

    /// The run as stored, its job spec version written first if it is new.
    fn encode_run(&mut self, run: &RunRecord) -> StoreResult<Vec<u8>> {
        let (key, new_version) = self.spec_cache.get_mut().key_of(&run.spec);
        if let Some(bytes) = new_version {
            self.specs.insert(key, bytes).map_err(backend)?;
        }
        Ok(run_codec::encode_run(run, key))
    }
}

impl Store for SledStore {
    fn jobs(&self) -> StoreResult<Vec<JobSpec>> {
        self.jobs
            .iter()
            .values()
            .map(|v| decode("job", &v.map_err(backend)?))
            .collect()
    }

    fn put_job(&mut self, job: &JobSpec) -> StoreResult<()> {
        self.dirty = true;
        self.jobs
            .insert(job.name.as_bytes(), encode(job))
            .map_err(backend)?;
        Ok(())
    }

    fn create_run(&mut self, run: &RunRecord) -> StoreResult<()> {
        self.dirty = true;
        let seq = run.seq.to_be_bytes();
        let bytes = self.encode_run(run)?;
        self.runs.insert(seq, bytes).map_err(backend)?;
        self.run_ids
            .insert(run.id.as_bytes(), &seq)
            .map_err(backend)?;
        if !run.state.is_terminal() {
            self.active.insert(seq, &[]).map_err(backend)?;
        }
        Ok(())
    }

    fn put_run(&mut self, run: &RunRecord) -> StoreResult<()> {
        self.dirty = true;
        let seq = run.seq.to_be_bytes();
        let bytes = self.encode_run(run)?;
        self.runs.insert(seq, bytes).map_err(backend)?;
        if run.state.is_terminal() {
            self.active.remove(seq).map_err(backend)?;
        }
        Ok(())
    }

    fn run(&self, id: &str) -> StoreResult<Option<RunRecord>> {
        match self.run_ids.get(id.as_bytes()).map_err(backend)? {
            Some(seq) => self.run_by_seq(&seq),
            None => Ok(None),
        }
    }

    fn active_runs(&self) -> StoreResult<Vec<RunRecord>> {
        let mut runs = Vec::new();
        for key in self.active.iter().keys() {
            if let Some(run) = self.run_by_seq(&key.map_err(backend)?)? {
                runs.push(run);
            }
        }
        Ok(runs)
    }

    fn runs(&self, filter: &RunFilter) -> StoreResult<Vec<RunRecord>> {
        let iter = match filter.before_seq {
            Some(before) => self.runs.range(..before.to_be_bytes()),
            None => self.runs.iter(),
        };
        list_newest_first(
            iter.values()
                .rev()
                .map(|value| self.decode_run(&value.map_err(backend)?)),
            filter,
        )
    }

    fn run_ids_with_prefix(&self, prefix: &str, limit: usize) -> StoreResult<Vec<String>> {
        self.run_ids
            .scan_prefix(prefix.as_bytes())
            .keys()
            .take(limit)
            .map(|key| Ok(String::from_utf8_lossy(&key.map_err(backend)?).into_owned()))
            .collect()
    }

    fn last_run_seq(&self) -> StoreResult<u64> {
        Ok(match self.runs.last().map_err(backend)? {
            Some((key, _)) => {
                let bytes: [u8; 8] = key.as_ref().try_into().map_err(|_| StoreError::Corrupt {
                    what: "run key",
                    detail: format!("{} bytes", key.len()),
                })?;
                u64::from_be_bytes(bytes)
            }
            None => 0,
        })
    }

    fn run_count(&self) -> StoreResult<u64> {
        // Runs are numbered from 1, and only retention deletes them (never the newest).
        Ok(self.last_run_seq()?.saturating_sub(self.pruned))
    }

    fn oldest_runs(&self, from_seq: u64, limit: usize) -> StoreResult<Vec<RunRecord>> {
        self.runs
            .range(from_seq.to_be_bytes()..)
            .values()
            .take(limit)
            .map(|value| self.decode_run(&value.map_err(backend)?))
            .collect()
    }

    fn delete_run(&mut self, run: &RunRecord) -> StoreResult<()> {
        self.dirty = true;
        let seq = run.seq.to_be_bytes();
        if self.runs.remove(seq).map_err(backend)?.is_none() {
            return Ok(());
        }
        self.run_ids.remove(run.id.as_bytes()).map_err(backend)?;
        self.active.remove(seq).map_err(backend)?;
        let mut prefix = run.id.as_bytes().to_vec();
        prefix.push(0);
        for key in self.logs.scan_prefix(&prefix).keys() {
            self.logs.remove(key.map_err(backend)?).map_err(backend)?;
        }
        self.pruned += 1;
        // Written once per commit, in it (see `flush`).
        self.pruned_changed = true;
        Ok(())
    }

    fn put_log_chunk(&mut self, run_id: &str, offset: u64, data: &[u8]) -> StoreResult<()> {
        self.dirty = true;
        self.logs
            .insert(log_key(run_id, offset), data)
            .map_err(backend)?;
        Ok(())
    }

    fn delete_log_chunk(&mut self, run_id: &str, offset: u64) -> StoreResult<()> {
        self.dirty = true;
        self.logs.remove(log_key(run_id, offset)).map_err(backend)?;
        Ok(())
    }

    fn log_chunks(&self, run_id: &str) -> StoreResult<Vec<(u64, Vec<u8>)>> {
        let mut prefix = run_id.as_bytes().to_vec();
        prefix.push(0);
        let mut chunks = Vec::new();
        for item in self.logs.scan_prefix(&prefix) {
            let (key, value) = item.map_err(backend)?;
            let offset: [u8; 8] =
                key[prefix.len()..]
                    .try_into()
                    .map_err(|_| StoreError::Corrupt {
                        what: "log key",
                        detail: format!("{} bytes", key.len()),
                    })?;
            chunks.push((u64::from_be_bytes(offset), value.to_vec()));
        }
        Ok(chunks)
    }

    fn workers(&self) -> StoreResult<Vec<WorkerStatus>> {
        self.workers
            .iter()
            .values()
            .map(|v| decode("worker", &v.map_err(backend)?))
            .collect()
    }

    fn put_worker(&mut self, worker: &WorkerStatus) -> StoreResult<()> {
        self.dirty = true;
        self.workers
            .insert(worker.id.as_bytes(), encode(worker))
            .map_err(backend)?;
        Ok(())
    }

    fn job_states(&self) -> StoreResult<Vec<(String, JobState)>> {
        self.job_states
            .iter()
            .map(|item| {
                let (key, value) = item.map_err(backend)?;
                Ok((
                    String::from_utf8_lossy(&key).into_owned(),
                    decode("job state", &value)?,
                ))
            })
            .collect()
    }

    fn put_job_state(&mut self, job: &str, state: &JobState) -> StoreResult<()> {
        self.dirty = true;
        self.job_states
            .insert(job.as_bytes(), encode(state))
            .map_err(backend)?;
        Ok(())
    }

    fn setting(&self, key: &str) -> StoreResult<Option<Vec<u8>>> {
        Ok(self
            .settings
            .get(key.as_bytes())
            .map_err(backend)?
            .map(|v| v.to_vec()))
    }

    fn put_setting(&mut self, key: &str, value: &[u8]) -> StoreResult<()> {
        self.dirty = true;
        self.settings
            .insert(key.as_bytes(), value)
            .map_err(backend)?;
        Ok(())
    }

    fn flush(&mut self) -> StoreResult<()> {
        if std::mem::take(&mut self.pruned_changed) {
            self.settings
                .insert(PRUNED, &self.pruned.to_be_bytes())
                .map_err(backend)?;
        }
        if self.dirty {
            self.db.flush().map_err(backend)?;
            self.dirty = false;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jobcast_protocol::{Exec, RunState};

    #[test]
    fn runs_written_in_the_older_layout_are_read_beside_new_ones() {
        let mut store = SledStore::temporary().unwrap();
        let spec = JobSpec::new("old-job", "default", Exec::Command(vec!["true".into()]));
        let old = RunRecord::queued("oldrun".into(), 1, spec.clone(), 1, "enqueued");
        // As brokers before the compact layout wrote it: a map, spec inline.
        store
            .runs
            .insert(1u64.to_be_bytes(), rmp_serde::to_vec_named(&old).unwrap())
            .unwrap();
        store
            .run_ids
            .insert("oldrun".as_bytes(), &1u64.to_be_bytes())
            .unwrap();
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
            .unwrap();
        assert_eq!(listed, vec![new, old]);
    }
}
