//! Runs stored, by state, exactly: unfinished ones counted from the run table, finished
//! ones kept as counters (a run ends once and retention deletes it once) and written in
//! the batch that changed them, so a dashboard's counts cover every stored run, not the
//! few it holds.

use crate::store::{Store, StoreError, StoreResult};
use crate::{Core, Scope};
use jobcast_protocol::RunState;
use std::collections::BTreeMap;

/// The setting the finished counts are kept in (a MessagePack map, team → state →
/// count; the team of jobs without one is "").
const SETTING: &str = "finished_runs_by_team";
/// Records read at a time when a store written before these counts is counted once.
const COUNT_PAGE: usize = 4_096;

#[derive(Debug, Default)]
pub(crate) struct FinishedCounts {
    by_team: BTreeMap<String, BTreeMap<RunState, u64>>,
    changed: bool,
}

fn team_key(team: Option<&str>) -> String {
    team.unwrap_or_default().to_string()
}

impl FinishedCounts {
    /// The counts a store keeps; a store from before them is counted once, here.
    pub fn load(store: &impl Store) -> StoreResult<FinishedCounts> {
        if let Some(bytes) = store.setting(SETTING)? {
            let by_team = rmp_serde::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                what: "finished-run counts",
                detail: e.to_string(),
            })?;
            return Ok(FinishedCounts {
                by_team,
                changed: false,
            });
        }
        let mut counts = FinishedCounts::default();
        let mut from = 0;
        loop {
            let page = store.oldest_runs(from, COUNT_PAGE)?;
            for run in &page {
                if run.state.is_terminal() {
                    counts.ended(run.spec.team.as_deref(), run.state);
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

    pub fn ended(&mut self, team: Option<&str>, state: RunState) {
        *self
            .by_team
            .entry(team_key(team))
            .or_default()
            .entry(state)
            .or_default() += 1;
        self.changed = true;
    }

    pub fn deleted(&mut self, team: Option<&str>, state: RunState) {
        let count = self
            .by_team
            .get_mut(&team_key(team))
            .and_then(|states| states.get_mut(&state));
        if let Some(count) = count {
            *count = count.saturating_sub(1);
            self.changed = true;
        }
    }

    /// Writes the counts if the batch changed them.
    pub fn save(&mut self, store: &mut impl Store) -> StoreResult<()> {
        if std::mem::take(&mut self.changed) {
            let bytes = rmp_serde::to_vec(&self.by_team).unwrap_or_default();
            store.put_setting(SETTING, &bytes)?;
        }
        Ok(())
    }
}

/// Counts the finished runs of a store written without the counts (as a broker's first
/// start on it would) and keeps the counts in it: a store filled by other means (a bench,
/// a migration) then starts as fast as one a broker wrote.
pub fn count_stored_runs(store: &mut impl Store) -> StoreResult<()> {
    let mut counts = FinishedCounts::load(store)?;
    counts.save(store)?;
    store.flush()
}

impl<S: Store> Core<S> {
    /// Every stored run by state (snake_case names), unfinished and finished; states with
    /// no run are listed with 0, so a view can show them all.
    pub fn runs_by_state(&self) -> BTreeMap<String, u64> {
        self.runs_by_state_in(&Scope::all())
    }

    /// Like [`Core::runs_by_state`], of the runs `scope` may see.
    pub(crate) fn runs_by_state_in(&self, scope: &Scope) -> BTreeMap<String, u64> {
        let mut counts: BTreeMap<RunState, u64> = RunState::ALL.iter().map(|s| (*s, 0)).collect();
        for run in self.tables.runs.iter() {
            if scope.allows(run.spec.team.as_deref()) {
                *counts.entry(run.state).or_default() += 1;
            }
        }
        for (team, states) in &self.stored.finished.by_team {
            let team = (!team.is_empty()).then_some(team.as_str());
            if !scope.allows(team) {
                continue;
            }
            for (state, count) in states {
                *counts.entry(*state).or_default() += count;
            }
        }
        counts
            .into_iter()
            .map(|(state, count)| (state.to_string(), count))
            .collect()
    }
}
