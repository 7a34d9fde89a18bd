//! Runs the broker gave up as lost while their worker may still hold them (it was cut
//! off, or came back without them). Their late output and result are still kept, so
//! reports about them are told apart from stray ones in memory: a report for a run that
//! is neither active nor here costs no read of the store on the loop. Kept in the store
//! as a setting, written in the batch that changed it.

use crate::store::{Store, StoreError, StoreResult};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The setting the table is kept in (MessagePack).
const SETTING: &str = "given_up_runs";
/// How long a given-up run waits for its late result; a worker cut off longer than
/// this has long since been restarted or retired.
pub const KEPT_MS: u64 = 7 * 24 * 3_600_000;
/// Most runs waiting at once; beyond it the oldest stop waiting (logged).
pub const MAX_KEPT: usize = 10_000;

/// One run given up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GivenUp {
    pub worker: String,
    pub log_cap: u64,
    pub at_ms: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Kept {
    runs: BTreeMap<String, GivenUp>,
    /// Set on a store written before this table existed: until `KEPT_MS` after it, a run
    /// not in the table may still be one given up earlier, and the store is asked.
    incomplete_until_ms: Option<u64>,
}

#[derive(Debug, Default)]
pub(crate) struct GivenUpRuns {
    kept: Kept,
    changed: bool,
}

/// What is known of a run that is not active.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup<'a> {
    /// Given up, waiting for its late result.
    Waiting(&'a GivenUp),
    /// Not one of them: a report about it is stray (or a repeat).
    Stray,
    /// Perhaps given up before the table existed: the store knows.
    AskStore,
}

impl GivenUpRuns {
    pub fn load(store: &impl Store, now_ms: u64) -> StoreResult<GivenUpRuns> {
        let holds_runs = store.last_run_seq()? > 0;
        match store.setting(SETTING)? {
            Some(bytes) => {
                let kept = rmp_serde::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                    what: "runs given up",
                    detail: e.to_string(),
                })?;
                Ok(GivenUpRuns {
                    kept,
                    changed: false,
                })
            }
            None => Ok(GivenUpRuns {
                kept: Kept {
                    runs: BTreeMap::new(),
                    incomplete_until_ms: holds_runs.then_some(now_ms + KEPT_MS),
                },
                // Written at once, so that a store that was empty is complete.
                changed: true,
            }),
        }
    }

    pub fn lookup(&self, run_id: &str, now_ms: u64) -> Lookup<'_> {
        match self.kept.runs.get(run_id) {
            Some(run) => Lookup::Waiting(run),
            None if self
                .kept
                .incomplete_until_ms
                .is_some_and(|until| now_ms < until) =>
            {
                Lookup::AskStore
            }
            None => Lookup::Stray,
        }
    }

    /// A run given up now; returns the runs that stopped waiting to make room.
    pub fn add(&mut self, run_id: &str, run: GivenUp) -> Vec<String> {
        self.kept.runs.insert(run_id.to_string(), run);
        self.changed = true;
        let mut evicted = Vec::new();
        while self.kept.runs.len() > MAX_KEPT {
            let Some(oldest) = self.oldest() else { break };
            self.kept.runs.remove(&oldest);
            evicted.push(oldest);
        }
        evicted
    }

    /// The run's late result came (or it is known to be stray).
    pub fn remove(&mut self, run_id: &str) {
        if self.kept.runs.remove(run_id).is_some() {
            self.changed = true;
        }
    }

    /// Stops waiting for runs given up over [`KEPT_MS`] ago; returns them.
    pub fn expire(&mut self, now_ms: u64) -> Vec<String> {
        let expired: Vec<String> = self
            .kept
            .runs
            .iter()
            .filter(|(_, run)| run.at_ms.saturating_add(KEPT_MS) <= now_ms)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &expired {
            self.kept.runs.remove(id);
        }
        if self
            .kept
            .incomplete_until_ms
            .is_some_and(|until| until <= now_ms)
        {
            self.kept.incomplete_until_ms = None;
            self.changed = true;
        }
        self.changed |= !expired.is_empty();
        expired
    }

    fn oldest(&self) -> Option<String> {
        self.kept
            .runs
            .iter()
            .min_by_key(|(id, run)| (run.at_ms, id.as_str()))
            .map(|(id, _)| id.clone())
    }

    /// Writes the table if the batch changed it.
    pub fn save(&mut self, store: &mut impl Store) -> StoreResult<()> {
        if std::mem::take(&mut self.changed) {
            let bytes = rmp_serde::to_vec(&self.kept).map_err(|e| StoreError::Corrupt {
                what: "runs given up",
                detail: e.to_string(),
            })?;
            store.put_setting(SETTING, &bytes)?;
        }
        Ok(())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.kept.runs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn given_up(at_ms: u64) -> GivenUp {
        GivenUp {
            worker: "w1".into(),
            log_cap: 1024,
            at_ms,
        }
    }

    #[test]
    fn a_store_without_the_table_is_asked_until_the_table_covers_the_whole_window() {
        let mut store = MemoryStore::default();
        assert_eq!(
            GivenUpRuns::load(&store, 1_000)
                .unwrap()
                .lookup("r1", 1_000),
            Lookup::Stray,
            "a new store has no runs given up before"
        );
        let run = jobcast_protocol::RunRecord::queued(
            "r0".into(),
            1,
            jobcast_protocol::JobSpec::new(
                "hello",
                "default",
                jobcast_protocol::Exec::Script("true".into()),
            ),
            0,
            "test",
        );
        store.create_run(&run).unwrap();
        let mut table = GivenUpRuns::load(&store, 1_000).unwrap();
        assert_eq!(table.lookup("r1", 1_000), Lookup::AskStore);
        assert_eq!(table.lookup("r1", 1_000 + KEPT_MS - 1), Lookup::AskStore);
        table.expire(1_000 + KEPT_MS);
        assert_eq!(table.lookup("r1", 1_000 + KEPT_MS), Lookup::Stray);
    }

    #[test]
    fn the_table_survives_a_restart_and_runs_expire_after_the_window() {
        let mut store = MemoryStore::default();
        let mut table = GivenUpRuns::load(&store, 0).unwrap();
        table.add("r1", given_up(KEPT_MS + 10));
        table.save(&mut store).unwrap();
        let mut again = GivenUpRuns::load(&store, KEPT_MS + 20).unwrap();
        assert_eq!(
            again.lookup("r1", KEPT_MS + 20),
            Lookup::Waiting(&given_up(KEPT_MS + 10))
        );
        assert_eq!(again.lookup("r2", KEPT_MS + 20), Lookup::Stray);
        assert!(again.expire(2 * KEPT_MS + 9).is_empty());
        assert_eq!(again.expire(2 * KEPT_MS + 10), vec!["r1".to_string()]);
        assert_eq!(again.lookup("r1", 2 * KEPT_MS + 10), Lookup::Stray);
    }

    #[test]
    fn the_oldest_stop_waiting_when_the_table_is_full() {
        let store = MemoryStore::default();
        let mut table = GivenUpRuns::load(&store, 0).unwrap();
        for i in 0..MAX_KEPT as u64 {
            assert!(table.add(&format!("r{i}"), given_up(100 + i)).is_empty());
        }
        assert_eq!(table.add("new", given_up(5)), vec!["new".to_string()]);
        assert_eq!(
            table.add("newer", given_up(1_000_000)),
            vec!["r0".to_string()]
        );
        assert_eq!(table.len(), MAX_KEPT);
    }
}
