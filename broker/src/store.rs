//! Durable state: the [`Store`] trait and its sled backend.
//!
//! Writes are applied at once but only become durable at [`Store::flush`]; the server
//! calls it once per batch of requests (group commit) before it answers any of them.

use jobcast_protocol::{JobSpec, JobState, RunFilter, RunRecord, WorkerStatus};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store: {0}")]
    Backend(String),
    #[error("store holds an unreadable {what} record: {detail}")]
    Corrupt { what: &'static str, detail: String },
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What the broker needs from a store. Kept small so a second backend is easy to add.
pub trait Store: Send {
    fn jobs(&self) -> StoreResult<Vec<JobSpec>>;
    fn put_job(&mut self, job: &JobSpec) -> StoreResult<()>;

    /// Writes a new run with its id index entry, and marks it unfinished.
    fn create_run(&mut self, run: &RunRecord) -> StoreResult<()>;
    /// Rewrites an existing run; drops it from the unfinished index once it has ended.
    fn put_run(&mut self, run: &RunRecord) -> StoreResult<()>;
    fn run(&self, id: &str) -> StoreResult<Option<RunRecord>>;
    /// Runs that are not in a terminal state.
    fn active_runs(&self) -> StoreResult<Vec<RunRecord>>;
    /// Newest first, filtered, at most `filter.limit`.
    fn runs(&self, filter: &RunFilter) -> StoreResult<Vec<RunRecord>>;
    /// Ids starting with `prefix`, or else containing it; at most `limit`.
    fn find_run_ids(&self, fragment: &str, limit: usize) -> StoreResult<Vec<String>>;
    /// The highest run sequence number stored, 0 if none.
    fn last_run_seq(&self) -> StoreResult<u64>;
    fn run_count(&self) -> StoreResult<u64>;

    fn put_log_chunk(&mut self, run_id: &str, offset: u64, data: &[u8]) -> StoreResult<()>;
    fn delete_log_chunk(&mut self, run_id: &str, offset: u64) -> StoreResult<()>;
    /// Chunks of a run's log in stream order: (offset, bytes).
    fn log_chunks(&self, run_id: &str) -> StoreResult<Vec<(u64, Vec<u8>)>>;

    fn workers(&self) -> StoreResult<Vec<WorkerStatus>>;
    fn put_worker(&mut self, worker: &WorkerStatus) -> StoreResult<()>;

    fn job_states(&self) -> StoreResult<Vec<(String, JobState)>>;
    fn put_job_state(&mut self, job: &str, state: &JobState) -> StoreResult<()>;

    /// Small named settings (e.g. the disabled pools).
    fn setting(&self, key: &str) -> StoreResult<Option<Vec<u8>>>;
    fn put_setting(&mut self, key: &str, value: &[u8]) -> StoreResult<()>;

    /// Makes every write so far durable.
    fn flush(&mut self) -> StoreResult<()>;
}

pub struct SledStore {
    db: sled::Db,
    jobs: sled::Tree,
    runs: sled::Tree,
    run_ids: sled::Tree,
    active: sled::Tree,
    logs: sled::Tree,
    workers: sled::Tree,
    job_states: sled::Tree,
    settings: sled::Tree,
    /// Whether anything was written since the last flush.
    dirty: bool,
}

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
        Ok(SledStore {
            jobs: tree("jobs")?,
            runs: tree("runs")?,
            run_ids: tree("run_ids")?,
            active: tree("active")?,
            logs: tree("logs")?,
            workers: tree("workers")?,
            job_states: tree("job_states")?,
            settings: tree("settings")?,
            db,
            dirty: false,
        })
    }

    fn run_by_seq(&self, seq: &[u8]) -> StoreResult<Option<RunRecord>> {
        match self.runs.get(seq).map_err(backend)? {
            Some(bytes) => Ok(Some(decode("run", &bytes)?)),
            None => Ok(None),
        }
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
        self.runs.insert(seq, encode(run)).map_err(backend)?;
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
        self.runs.insert(seq, encode(run)).map_err(backend)?;
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
        let mut runs = Vec::new();
        let iter = match filter.before_seq {
            Some(before) => self.runs.range(..before.to_be_bytes()),
            None => self.runs.iter(),
        };
        for value in iter.values().rev() {
            if runs.len() >= filter.limit as usize {
                break;
            }
            let run: RunRecord = decode("run", &value.map_err(backend)?)?;
            if filter.since_ms.is_some_and(|t| run.created_at_ms < t) {
                // Newest first: everything further is older still.
                break;
            }
            if filter.until_ms.is_some_and(|t| run.created_at_ms >= t)
                || filter.state.is_some_and(|s| s != run.state)
                || filter.job.as_ref().is_some_and(|j| *j != run.job)
                || filter
                    .worker
                    .as_ref()
                    .is_some_and(|w| run.worker.as_ref() != Some(w))
            {
                continue;
            }
            runs.push(run);
        }
        Ok(runs)
    }

    fn find_run_ids(&self, fragment: &str, limit: usize) -> StoreResult<Vec<String>> {
        let ids = |iter: sled::Iter| -> StoreResult<Vec<String>> {
            let mut found = Vec::new();
            for key in iter.keys() {
                let key = key.map_err(backend)?;
                let id = String::from_utf8_lossy(&key);
                if id.contains(fragment) {
                    found.push(id.into_owned());
                    if found.len() >= limit {
                        break;
                    }
                }
            }
            Ok(found)
        };
        let by_prefix = ids(self.run_ids.scan_prefix(fragment.as_bytes()))?;
        if !by_prefix.is_empty() {
            return Ok(by_prefix);
        }
        ids(self.run_ids.iter())
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
        // Runs are numbered from 1 and never deleted, so the last number is the count
        // (sled's len() would walk the whole tree).
        self.last_run_seq()
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
    use std::collections::BTreeMap;

    fn job(name: &str) -> JobSpec {
        JobSpec {
            name: name.into(),
            pool: "default".into(),
            exec: Exec::Command(vec!["true".into()]),
            env: BTreeMap::new(),
            worker_env: Vec::new(),
            workdir: None,
            timeout_ms: None,
            enabled: true,
            schedule: Default::default(),
            policy: Default::default(),
        }
    }

    fn run(seq: u64, id: &str, state: RunState) -> RunRecord {
        RunRecord {
            id: id.into(),
            seq,
            job: "a".into(),
            pool: "default".into(),
            attempt: 1,
            state,
            worker: None,
            pid: None,
            created_at_ms: seq,
            scheduled_at_ms: seq,
            started_at_ms: None,
            finished_at_ms: None,
            outcome: None,
            kill_requested: false,
            log_bytes: 0,
            log_cap: 0,
            parent: None,
            first_attempt: None,
            pinned_worker: None,
            not_before_ms: 0,
            created_at_us: 0,
            spawned_at_us: None,
            ended_at_us: None,
            schedule_id: None,
            history: vec![],
            spec: job("a"),
        }
    }

    #[test]
    fn runs_are_listed_newest_first_and_filtered() {
        let mut store = SledStore::temporary().unwrap();
        store
            .create_run(&run(1, "aaa1", RunState::Succeeded))
            .unwrap();
        store.create_run(&run(2, "bbb2", RunState::Queued)).unwrap();
        store
            .create_run(&run(3, "ccc3", RunState::Succeeded))
            .unwrap();
        let all = store
            .runs(&RunFilter {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(all.iter().map(|r| r.seq).collect::<Vec<_>>(), [3, 2, 1]);
        let done = store
            .runs(&RunFilter {
                state: Some(RunState::Succeeded),
                limit: 1,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(done.iter().map(|r| r.seq).collect::<Vec<_>>(), [3]);
        assert_eq!(store.last_run_seq().unwrap(), 3);
        assert_eq!(store.run_count().unwrap(), 3);
    }

    #[test]
    fn the_active_index_follows_the_state() {
        let mut store = SledStore::temporary().unwrap();
        let mut r = run(1, "aaa1", RunState::Queued);
        store.create_run(&r).unwrap();
        assert_eq!(store.active_runs().unwrap().len(), 1);
        r.state = RunState::Failed;
        store.put_run(&r).unwrap();
        assert!(store.active_runs().unwrap().is_empty());
        assert_eq!(store.run("aaa1").unwrap().unwrap().state, RunState::Failed);
    }

    #[test]
    fn run_ids_are_found_by_prefix_then_substring() {
        let mut store = SledStore::temporary().unwrap();
        store
            .create_run(&run(1, "abc123", RunState::Queued))
            .unwrap();
        store
            .create_run(&run(2, "abd456", RunState::Queued))
            .unwrap();
        store
            .create_run(&run(3, "xyz123", RunState::Queued))
            .unwrap();
        assert_eq!(store.find_run_ids("ab", 10).unwrap().len(), 2);
        assert_eq!(store.find_run_ids("abd", 10).unwrap(), ["abd456"]);
        assert_eq!(store.find_run_ids("123", 10).unwrap().len(), 2);
        assert!(store.find_run_ids("nope", 10).unwrap().is_empty());
    }

    #[test]
    fn log_chunks_come_back_in_stream_order() {
        let mut store = SledStore::temporary().unwrap();
        store.put_log_chunk("r1", 300, b"c").unwrap();
        store.put_log_chunk("r1", 0, b"a").unwrap();
        store.put_log_chunk("r1", 256, b"b").unwrap();
        store.put_log_chunk("r10", 0, b"other run").unwrap();
        let chunks = store.log_chunks("r1").unwrap();
        assert_eq!(
            chunks,
            vec![
                (0, b"a".to_vec()),
                (256, b"b".to_vec()),
                (300, b"c".to_vec())
            ]
        );
        store.delete_log_chunk("r1", 256).unwrap();
        assert_eq!(store.log_chunks("r1").unwrap().len(), 2);
    }

    #[test]
    fn everything_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = SledStore::open(dir.path()).unwrap();
            store.put_job(&job("nightly")).unwrap();
            store
                .create_run(&run(1, "aaa1", RunState::Running))
                .unwrap();
            store.put_log_chunk("aaa1", 0, b"hello").unwrap();
            store.flush().unwrap();
        }
        let store = SledStore::open(dir.path()).unwrap();
        assert_eq!(store.jobs().unwrap(), vec![job("nightly")]);
        assert_eq!(store.active_runs().unwrap()[0].id, "aaa1");
        assert_eq!(store.log_chunks("aaa1").unwrap()[0].1, b"hello");
    }
}
