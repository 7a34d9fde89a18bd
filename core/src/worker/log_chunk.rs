//! `LogChunk`: a run's output, stored within the log cap (head kept, tail rolling).

use crate::store::{Store, StoreResult};
use crate::Core;
use jobcast_protocol::logcap::{self};
use std::collections::VecDeque;

/// What the broker keeps of a live run's log to prune it to the cap.
pub(crate) struct LogTrack {
    cap: usize,
    total: u64,
    /// Stored chunks past the head, oldest first: (offset, length).
    tail_chunks: VecDeque<(u64, u64)>,
}

impl LogTrack {
    pub(crate) fn note(&mut self, offset: u64, len: u64) {
        self.total = self.total.max(offset + len);
        if offset >= logcap::head_cap(self.cap) as u64 {
            self.tail_chunks.push_back((offset, len));
        }
    }
}

impl<S: Store> Core<S> {
    pub(crate) fn log_chunk(
        &mut self,
        worker: &str,
        run_id: &str,
        offset: u64,
        data: &[u8],
    ) -> StoreResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        let log_cap = match self.runs.active.get(run_id) {
            Some(run) if run.worker.as_deref() == Some(worker) => run.log_cap,
            Some(_) => return Ok(()),
            // Output of a run given up as lost, arriving late: kept with it, to the cap,
            // until its late result comes.
            None => match self.given_up_run(worker, run_id)? {
                Some(run) => run.log_cap,
                None => return Ok(()),
            },
        };
        let cap = (log_cap as usize).max(logcap::MIN_CAP);
        if !self.logs.contains_key(run_id) {
            // First chunk since this broker started: rebuild from what is stored.
            let mut track = LogTrack {
                cap,
                total: 0,
                tail_chunks: VecDeque::new(),
            };
            for (o, bytes) in self.store.log_chunks(run_id)? {
                track.note(o, bytes.len() as u64);
            }
            self.logs.insert(run_id.to_string(), track);
        }
        let Some(track) = self.logs.get_mut(run_id) else {
            return Ok(());
        };
        let end = offset + data.len() as u64;
        if end <= track.total {
            return Ok(()); // a retransmission
        }
        self.store.put_log_chunk(run_id, offset, data)?;
        self.changes
            .logs
            .push((run_id.to_string(), offset, data.to_vec()));
        track.note(offset, data.len() as u64);
        // Drop stored tail chunks that have wholly fallen out of the tail window.
        let window_start = track
            .total
            .saturating_sub(logcap::tail_cap(track.cap) as u64);
        while let Some(&(o, len)) = track.tail_chunks.front() {
            if o + len > window_start {
                break;
            }
            track.tail_chunks.pop_front();
            self.store.delete_log_chunk(run_id, o)?;
        }
        Ok(())
    }
}
