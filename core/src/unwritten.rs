//! Runs of the run table changed since they were last handed to the store. A run that
//! changes several times while one request or tick is handled (created and granted at
//! once, started and ended) is handed over once, as it is at the end: each hand-over
//! copies or encodes the whole record, which was the largest share of a burst of ticks.

use crate::run_table::RunTable;
use crate::store::{Store, StoreResult};
use jobcast_protocol::RunRecord;
use std::collections::BTreeMap;

#[derive(Debug, Default)]
pub(crate) struct UnwrittenRuns {
    /// By sequence number (the order a store writes them in): the run's id, and whether
    /// it was created since it was last handed over (its id entry goes with it).
    by_seq: BTreeMap<u64, (String, bool)>,
}

impl UnwrittenRuns {
    /// `run`, in the run table, was created.
    pub fn created(&mut self, run: &RunRecord) {
        self.by_seq.insert(run.seq, (run.id.clone(), true));
    }

    /// `run`, in the run table, changed.
    pub fn changed(&mut self, run: &RunRecord) {
        self.by_seq
            .entry(run.seq)
            .or_insert_with(|| (run.id.clone(), false));
    }

    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }

    /// Hands `run` to the store now, as it leaves the run table (it ended): created, if
    /// it was created since it was last handed over.
    pub fn write_leaving(&mut self, run: &RunRecord, store: &mut impl Store) -> StoreResult<()> {
        match self.by_seq.remove(&run.seq) {
            Some((_, true)) => store.create_run(run),
            _ => store.put_run(run),
        }
    }

    /// Hands every changed run to the store, as the run table has it now.
    pub fn write(&mut self, runs: &RunTable, store: &mut impl Store) -> StoreResult<()> {
        while let Some((_, (id, created))) = self.by_seq.pop_first() {
            // A run that left the table was handed over as it left.
            let Some(run) = runs.get(&id) else { continue };
            if created {
                store.create_run(run)?;
            } else {
                store.put_run(run)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use jobcast_protocol::{Exec, JobSpec, RunState};
    use std::sync::atomic::Ordering;
    use std::sync::Arc;

    fn queued(id: &str, seq: u64) -> RunRecord {
        let spec = Arc::new(JobSpec::new(
            "job",
            "default",
            Exec::Command(vec!["true".into()]),
        ));
        RunRecord::queued(id.into(), seq, spec, 1_000, "enqueued")
    }

    fn writes(store: &MemoryStore) -> usize {
        store.run_writes.load(Ordering::Relaxed)
    }

    #[test]
    fn a_run_changed_several_times_is_written_once_as_it_is_last() {
        let mut table = RunTable::default();
        let mut unwritten = UnwrittenRuns::default();
        let mut store = MemoryStore::default();
        let run = queued("a", 1);
        unwritten.created(&run);
        table.activate(run);
        let run = table.get_mut("a").unwrap();
        run.transition(RunState::Assigned, 2_000, "granted")
            .unwrap();
        unwritten.changed(run);

        unwritten.write(&table, &mut store).unwrap();
        assert_eq!(writes(&store), 1);
        let stored = store.run("a").unwrap().expect("created, with its id");
        assert_eq!(stored.state, RunState::Assigned);
        assert!(unwritten.is_empty());
        unwritten.write(&table, &mut store).unwrap();
        assert_eq!(writes(&store), 1, "nothing left to write");
    }

    #[test]
    fn a_run_that_leaves_the_table_is_written_at_once_and_created_if_new() {
        let mut table = RunTable::default();
        let mut unwritten = UnwrittenRuns::default();
        let mut store = MemoryStore::default();
        let mut run = queued("b", 1);
        unwritten.created(&run);
        table.activate(run.clone());
        run.transition(RunState::Cancelled, 2_000, "cancelled")
            .unwrap();
        table.deactivate(&run);

        unwritten.write_leaving(&run, &mut store).unwrap();
        let stored = store.run("b").unwrap().expect("created, with its id");
        assert_eq!(stored.state, RunState::Cancelled);
        unwritten.write(&table, &mut store).unwrap();
        assert_eq!(writes(&store), 1, "written once, as it left");
    }
}
