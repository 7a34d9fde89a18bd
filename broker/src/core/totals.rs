//! Runs stored, by state, exactly: unfinished ones counted from the run table, finished
//! ones kept as counters (a run ends once and retention deletes it once) and written in
//! the batch that changed them, so a dashboard's counts cover every stored run, not the
//! few it holds.

use crate::core::Core;
use crate::store::{Store, StoreError, StoreResult};
use jobcast_protocol::RunState;
use std::collections::BTreeMap;

/// The setting the finished counts are kept in (a MessagePack map, state → count).
const SETTING: &str = "finished_runs_by_state";
/// Records read at a time when a store written before these counts is counted once.
const COUNT_PAGE: usize = 4_096;

#[derive(Debug, Default)]
pub(in crate::core) struct FinishedCounts {
    by_state: BTreeMap<RunState, u64>,
    changed: bool,
}

impl FinishedCounts {
    /// The counts a store keeps; a store from before them is counted once, here.
    pub fn load(store: &impl Store) -> StoreResult<FinishedCounts> {
        if let Some(bytes) = store.setting(SETTING)? {
            let by_state = rmp_serde::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                what: "finished-run counts",
                detail: e.to_string(),
            })?;
            return Ok(FinishedCounts {
                by_state,
                changed: false,
            });
        }
        let mut counts = FinishedCounts::default();
        let mut from = 0;
        loop {
            let page = store.oldest_runs(from, COUNT_PAGE)?;
            for run in &page {
                if run.state.is_terminal() {
                    *counts.by_state.entry(run.state).or_default() += 1;
                }
            }
            match page.last() {
                Some(last) if page.len() == COUNT_PAGE => from = last.seq + 1,
                _ => break,
            }
        }
        // Written with the first batch, so the count is made once.
        counts.changed = true;
        Ok(counts)
    }

    pub fn ended(&mut self, state: RunState) {
        *self.by_state.entry(state).or_default() += 1;
        self.changed = true;
    }

    pub fn deleted(&mut self, state: RunState) {
        if let Some(count) = self.by_state.get_mut(&state) {
            *count = count.saturating_sub(1);
            self.changed = true;
        }
    }

    /// Writes the counts if the batch changed them.
    pub fn save(&mut self, store: &mut impl Store) -> StoreResult<()> {
        if std::mem::take(&mut self.changed) {
            let bytes = rmp_serde::to_vec(&self.by_state).unwrap_or_default();
            store.put_setting(SETTING, &bytes)?;
        }
        Ok(())
    }
}

impl<S: Store> Core<S> {
    /// Every stored run by state (snake_case names), unfinished and finished; states with
    /// no run are listed with 0, so a view can show them all.
    pub fn runs_by_state(&self) -> BTreeMap<String, u64> {
        let mut counts: BTreeMap<RunState, u64> = RunState::ALL.iter().map(|s| (*s, 0)).collect();
        for run in self.runs.active.values() {
            *counts.entry(run.state).or_default() += 1;
        }
        for (state, count) in &self.finished.by_state {
            *counts.entry(*state).or_default() += count;
        }
        counts
            .into_iter()
            .map(|(state, count)| (state.to_string(), count))
            .collect()
    }
}
