//! What the broker tracks of live runs' logs to keep each within its cap: the head is
//! kept whole, the tail rolls, and stored chunks that fall wholly out of the tail window
//! are deleted. The store holds the bytes; this table holds only offsets and lengths.

use jobcast_protocol::logcap;
use std::collections::{HashMap, VecDeque};

struct LogTrack {
    cap: usize,
    /// The end of the stream as far as received.
    total: u64,
    /// Stored chunks past the head, oldest first: (offset, length).
    tail_chunks: VecDeque<(u64, u64)>,
}

impl LogTrack {
    fn note(&mut self, offset: u64, len: u64) {
        self.total = self.total.max(offset + len);
        if offset >= logcap::head_cap(self.cap) as u64 {
            self.tail_chunks.push_back((offset, len));
        }
    }
}

/// What to do with a chunk that arrived.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ChunkFate {
    /// Already received (a retransmission): nothing to store.
    Repeat,
    /// Store it, and delete the stored chunks at these offsets (out of the window now).
    Store { drop_offsets: Vec<u64> },
}

#[derive(Default)]
pub(crate) struct LogTable {
    tracks: HashMap<String, LogTrack>,
}

impl LogTable {
    pub fn is_tracked(&self, run_id: &str) -> bool {
        self.tracks.contains_key(run_id)
    }

    /// Starts tracking `run_id`'s log with cap `cap` (at least the protocol's minimum),
    /// from the chunks already stored for it: (offset, length), in stream order.
    pub fn track(&mut self, run_id: &str, cap: usize, stored: impl Iterator<Item = (u64, u64)>) {
        let mut track = LogTrack {
            cap: cap.max(logcap::MIN_CAP),
            total: 0,
            tail_chunks: VecDeque::new(),
        };
        for (offset, len) in stored {
            track.note(offset, len);
        }
        self.tracks.insert(run_id.to_string(), track);
    }

    /// A chunk of `len` bytes at `offset` arrived for a tracked run (an untracked one is
    /// a [`ChunkFate::Repeat`]: nothing is stored for it).
    pub fn arrived(&mut self, run_id: &str, offset: u64, len: u64) -> ChunkFate {
        let Some(track) = self.tracks.get_mut(run_id) else {
            return ChunkFate::Repeat;
        };
        if len == 0 || offset + len <= track.total {
            return ChunkFate::Repeat;
        }
        track.note(offset, len);
        let window_start = track
            .total
            .saturating_sub(logcap::tail_cap(track.cap) as u64);
        let mut drop_offsets = Vec::new();
        while let Some(&(o, l)) = track.tail_chunks.front() {
            if o + l > window_start {
                break;
            }
            track.tail_chunks.pop_front();
            drop_offsets.push(o);
        }
        ChunkFate::Store { drop_offsets }
    }

    /// The end of `run_id`'s output as far as received (0 before any, or untracked).
    pub fn received_end(&self, run_id: &str) -> u64 {
        self.tracks.get(run_id).map_or(0, |track| track.total)
    }

    /// The run ended: its log is as stored.
    pub fn forget(&mut self, run_id: &str) {
        self.tracks.remove(run_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_stays_and_tail_chunks_out_of_the_window_are_dropped() {
        let cap = logcap::MIN_CAP;
        let (head, tail) = (logcap::head_cap(cap) as u64, logcap::tail_cap(cap) as u64);
        let mut logs = LogTable::default();
        logs.track("r", cap, std::iter::empty());
        assert_eq!(
            logs.arrived("r", 0, head),
            ChunkFate::Store {
                drop_offsets: vec![]
            }
        );
        assert_eq!(logs.arrived("r", 0, head), ChunkFate::Repeat);
        // Tail chunks of a tenth of the window each: the first falls out once the stream
        // has gone a whole window past its end.
        let step = tail / 10;
        let mut dropped = Vec::new();
        let mut offset = head;
        for _ in 0..12 {
            if let ChunkFate::Store { drop_offsets } = logs.arrived("r", offset, step) {
                dropped.extend(drop_offsets);
            }
            offset += step;
        }
        assert_eq!(dropped, [head, head + step]);
        assert_eq!(logs.arrived("untracked", 0, 10), ChunkFate::Repeat);
    }

    #[test]
    fn a_log_tracked_again_after_a_restart_knows_what_was_stored() {
        let mut logs = LogTable::default();
        logs.track("r", 0, [(0, 100), (100, 50)].into_iter());
        assert_eq!(logs.arrived("r", 100, 50), ChunkFate::Repeat);
        assert!(matches!(
            logs.arrived("r", 150, 10),
            ChunkFate::Store { .. }
        ));
        logs.forget("r");
        assert!(!logs.is_tracked("r"));
    }
}
