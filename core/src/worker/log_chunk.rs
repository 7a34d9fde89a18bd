//! `LogChunk`: a run's output, stored within the log cap (head kept, tail rolling).

use crate::log_table::ChunkFate;
use crate::store::{Store, StoreResult};
use crate::worker::run_finished::GivenUpRun;
use crate::{Core, Now, Outbox};

impl<S: Store> Core<S> {
    pub(crate) fn log_chunk(
        &mut self,
        worker: &str,
        run_id: &str,
        offset: u64,
        data: &[u8],
        now: Now,
        out: &mut Outbox,
    ) -> StoreResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        let log_cap = match self.tables.runs.get(run_id) {
            Some(run) if run.worker.as_deref() == Some(worker) => run.log_cap,
            Some(_) => return Ok(()),
            // Output of a run given up as lost, arriving late: kept with it, to the cap,
            // until its late result comes.
            None => match self.given_up_run(worker, run_id, now) {
                GivenUpRun::Waiting { log_cap } => log_cap,
                GivenUpRun::No => return Ok(()),
                GivenUpRun::AskStore => match self.stored_given_up_run(worker, run_id)? {
                    Some(run) => run.log_cap,
                    None => return Ok(()),
                },
            },
        };
        if !self.tables.logs.is_tracked(run_id) {
            // Runs are tracked from their start (or this broker's); only a run given up
            // as lost whose output comes late is not: rebuilt from what is stored.
            let stored = self.store.log_chunks(run_id)?;
            let stored = stored.iter().map(|(o, bytes)| (*o, bytes.len() as u64));
            self.tables.logs.track(run_id, log_cap as usize, stored);
        }
        let ChunkFate::Store { drop_offsets } =
            self.tables.logs.arrived(run_id, offset, data.len() as u64)
        else {
            return Ok(());
        };
        self.store.put_log_chunk(run_id, offset, data)?;
        self.changes.log(run_id, offset, data);
        for dropped in drop_offsets {
            self.store.delete_log_chunk(run_id, dropped)?;
        }
        let end = self.tables.logs.received_end(run_id);
        let reads = self.tables.log_waiters.output_reached(run_id, end);
        if let Some(run) = self.tables.runs.get(run_id).filter(|_| !reads.is_empty()) {
            let run = run.clone();
            self.answer_held_reads(&run, reads, out);
        }
        Ok(())
    }
}
