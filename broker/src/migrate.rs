//! Moving a store whole: every record of one store into another that is empty (the
//! embedded store into PostgreSQL, or back), then a tally of both to show nothing was
//! lost on the way.

use crate::store::{Store, StoreError, StoreResult};
use std::fmt;

/// Runs copied per commit.
const RUNS_PER_COMMIT: usize = 500;
/// Settings that belong to one store's engine, not to the broker: not copied.
const ENGINE_SETTINGS: [&str; 1] = ["commit_seq"];

/// What a store holds, counted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    pub runs: u64,
    /// What the store says it holds (the last sequence number less what retention
    /// deleted): the same as `runs` when its count travelled with it.
    pub run_count: u64,
    pub last_run_seq: u64,
    pub jobs: usize,
    pub job_states: usize,
    pub workers: usize,
    pub settings: usize,
    pub log_chunks: u64,
    pub log_bytes: u64,
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} runs ({} by its count, last sequence number {}), {} jobs, {} job states, {} workers, {} settings, {} log chunks ({} bytes)",
            self.runs,
            self.run_count,
            self.last_run_seq,
            self.jobs,
            self.job_states,
            self.workers,
            self.settings,
            self.log_chunks,
            self.log_bytes
        )
    }
}

/// Counts what `store` holds (it reads every run and its log).
pub fn tally(store: &impl Store) -> StoreResult<Tally> {
    let mut tally = Tally {
        runs: 0,
        run_count: store.run_count()?,
        last_run_seq: store.last_run_seq()?,
        jobs: store.jobs()?.len(),
        job_states: store.job_states()?.len(),
        workers: store.workers()?.len(),
        settings: broker_settings(store)?.len(),
        log_chunks: 0,
        log_bytes: 0,
    };
    each_page_of_runs(store, |runs| {
        for run in runs {
            tally.runs += 1;
            for (_, chunk) in store.log_chunks(&run.id)? {
                tally.log_chunks += 1;
                tally.log_bytes += chunk.len() as u64;
            }
        }
        Ok(())
    })?;
    Ok(tally)
}

/// Every stored run, oldest first, a page at a time.
fn each_page_of_runs(
    store: &impl Store,
    mut page: impl FnMut(&[jobcast_protocol::RunRecord]) -> StoreResult<()>,
) -> StoreResult<()> {
    let mut from = 0;
    loop {
        let runs = store.oldest_runs(from, RUNS_PER_COMMIT)?;
        let Some(last) = runs.last() else {
            return Ok(());
        };
        from = last.seq + 1;
        page(&runs)?;
    }
}

fn broker_settings(store: &impl Store) -> StoreResult<Vec<(String, Vec<u8>)>> {
    Ok(store
        .settings()?
        .into_iter()
        .filter(|(key, _)| !ENGINE_SETTINGS.contains(&key.as_str()))
        .collect())
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("the destination is not empty ({0}): migrate only into a new store")]
    NotEmpty(Tally),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Copies every record of `from` into `to`, which must be empty; durable when this
/// returns. Runs keep their ids, sequence numbers, histories and logs.
pub fn copy(from: &impl Store, to: &mut impl Store) -> Result<(), MigrateError> {
    let existing = Tally {
        last_run_seq: to.last_run_seq()?,
        jobs: to.jobs()?.len(),
        job_states: to.job_states()?.len(),
        workers: to.workers()?.len(),
        ..Tally::default()
    };
    if existing != Tally::default() {
        return Err(MigrateError::NotEmpty(existing));
    }
    for job in from.jobs()? {
        to.put_job(&job)?;
    }
    for (job, state) in from.job_states()? {
        to.put_job_state(&job, &state)?;
    }
    for worker in from.workers()? {
        to.put_worker(&worker)?;
    }
    for (key, value) in broker_settings(from)? {
        to.put_setting(&key, &value)?;
    }
    to.flush()?;
    each_page_of_runs(from, |runs| {
        for run in runs {
            to.create_run(run)?;
            for (offset, chunk) in from.log_chunks(&run.id)? {
                to.put_log_chunk(&run.id, offset, &chunk)?;
            }
        }
        to.flush()
    })?;
    to.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use jobcast_protocol::{Exec, JobSpec, JobState, RunRecord, RunState};

    fn filled() -> MemoryStore {
        let mut store = MemoryStore::default();
        let spec = JobSpec::new("nightly", "default", Exec::Command(vec!["true".into()]));
        store.put_job(&spec).unwrap();
        store
            .put_job_state("nightly", &JobState::default())
            .unwrap();
        store.put_setting("disabled_pools", b"[]").unwrap();
        store.put_setting("commit_seq", b"engine's own").unwrap();
        for seq in 1..=1_200u64 {
            let mut run = RunRecord::queued(format!("run{seq}"), seq, spec.clone(), seq, "");
            run.state = if seq % 3 == 0 {
                RunState::Failed
            } else {
                RunState::Succeeded
            };
            store.create_run(&run).unwrap();
            store.put_log_chunk(&run.id, 0, b"hello ").unwrap();
            store.put_log_chunk(&run.id, 6, b"world").unwrap();
        }
        // Retention took the oldest: the count is not the last sequence number.
        let oldest = store.oldest_runs(0, 1).unwrap().remove(0);
        store.delete_run(&oldest).unwrap();
        store
    }

    #[test]
    fn every_record_arrives_and_the_tallies_agree() {
        let from = filled();
        let mut to = MemoryStore::default();
        copy(&from, &mut to).unwrap();
        let (before, after) = (tally(&from).unwrap(), tally(&to).unwrap());
        assert_eq!(before, after);
        assert_eq!(after.runs, 1_199);
        assert_eq!(after.log_chunks, 2 * 1_199);
        assert_eq!(after.settings, 1, "the engine's own setting stays behind");
        assert_eq!(to.run("run600").unwrap(), from.run("run600").unwrap());
        assert_eq!(
            to.log_chunks("run600").unwrap(),
            from.log_chunks("run600").unwrap()
        );
    }

    #[test]
    fn a_store_that_is_not_empty_is_refused_and_left_as_it_was() {
        let from = filled();
        let mut to = MemoryStore::default();
        let spec = JobSpec::new("mine", "default", Exec::Command(vec!["true".into()]));
        to.put_job(&spec).unwrap();
        let error = copy(&from, &mut to).unwrap_err().to_string();
        assert!(
            error.contains("not empty (0 runs (0 by its count"),
            "{error}"
        );
        assert_eq!(to.jobs().unwrap(), vec![spec]);
        assert_eq!(to.last_run_seq().unwrap(), 0);
    }
}
