//! `GetLog` requests held until their run has output past the offset asked for, or ends,
//! or the wait asked for runs out: `jobcastctl wait` and `logs -f` hear of a run's end or
//! its next output in the batch that brought it, where they asked again every 200 ms.

use crate::ReplyTo;
use std::collections::HashMap;

/// The longest a read is held, whatever the client asks for: under every client's own
/// request timeout.
pub const MAX_LOG_WAIT_MS: u64 = 25_000;
/// Reads held at most, over all runs; past it a read is answered at once, as without a
/// wait (the client then asks again after its own pause).
pub const MAX_HELD_READS: usize = 1_000;

/// A `GetLog` not answered yet.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldRead {
    pub to: ReplyTo,
    /// The request id to answer.
    pub id: u64,
    /// Answered once the run's output reaches past this (`u64::MAX`: only at its end).
    pub offset: u64,
    pub deadline_ms: u64,
}

/// The held reads by run.
#[derive(Debug, Default)]
pub struct LogWaiters {
    by_run: HashMap<String, Vec<HeldRead>>,
}

impl LogWaiters {
    /// Holds `read` of `run_id`; gives it back when too many are held already.
    pub fn hold(&mut self, run_id: &str, read: HeldRead) -> Result<(), HeldRead> {
        if self.by_run.values().map(Vec::len).sum::<usize>() >= MAX_HELD_READS {
            return Err(read);
        }
        self.by_run
            .entry(run_id.to_string())
            .or_default()
            .push(read);
        Ok(())
    }

    /// The run ended: every read of it, to answer now.
    pub fn run_ended(&mut self, run_id: &str) -> Vec<HeldRead> {
        self.by_run.remove(run_id).unwrap_or_default()
    }

    /// The run's output now reaches `end`: the reads of it that asked for less.
    pub fn output_reached(&mut self, run_id: &str, end: u64) -> Vec<HeldRead> {
        self.take_where(run_id, |read| read.offset < end)
    }

    /// Reads whose wait ran out by `now_ms`, with their runs.
    pub fn expired(&mut self, now_ms: u64) -> Vec<(String, HeldRead)> {
        let mut due = Vec::new();
        self.by_run.retain(|run_id, reads| {
            let (ran_out, kept): (Vec<_>, Vec<_>) = std::mem::take(reads)
                .into_iter()
                .partition(|read| read.deadline_ms <= now_ms);
            due.extend(ran_out.into_iter().map(|read| (run_id.clone(), read)));
            *reads = kept;
            !reads.is_empty()
        });
        due
    }

    /// When the first wait runs out, if a read is held.
    pub fn earliest_deadline_ms(&self) -> Option<u64> {
        self.by_run
            .values()
            .flatten()
            .map(|read| read.deadline_ms)
            .min()
    }

    /// Moves the waits with a step of the wall clock.
    pub fn shift(&mut self, shift: impl Fn(u64) -> u64) {
        for read in self.by_run.values_mut().flatten() {
            read.deadline_ms = shift(read.deadline_ms);
        }
    }

    /// Every held read, to answer now (the core goes).
    pub fn drain(&mut self) -> Vec<HeldRead> {
        self.by_run.drain().flat_map(|(_, reads)| reads).collect()
    }

    fn take_where(&mut self, run_id: &str, take: impl Fn(&HeldRead) -> bool) -> Vec<HeldRead> {
        let Some(reads) = self.by_run.get_mut(run_id) else {
            return Vec::new();
        };
        let (taken, kept): (Vec<_>, Vec<_>) = reads.drain(..).partition(|read| take(read));
        if kept.is_empty() {
            self.by_run.remove(run_id);
        } else {
            *reads = kept;
        }
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(id: u64, offset: u64, deadline_ms: u64) -> HeldRead {
        HeldRead {
            to: ReplyTo::Api,
            id,
            offset,
            deadline_ms,
        }
    }

    #[test]
    fn a_read_is_given_back_by_the_first_of_its_run_s_output_end_or_deadline() {
        let mut waiters = LogWaiters::default();
        waiters.hold("r1", read(1, 10, 5_000)).unwrap();
        waiters.hold("r1", read(2, u64::MAX, 5_000)).unwrap();
        waiters.hold("r2", read(3, 0, 1_000)).unwrap();
        // Output up to 10 is not past the first read's offset.
        assert!(waiters.output_reached("r1", 10).is_empty());
        assert_eq!(waiters.output_reached("r1", 11), vec![read(1, 10, 5_000)]);
        assert_eq!(waiters.earliest_deadline_ms(), Some(1_000));
        assert!(waiters.expired(999).is_empty());
        assert_eq!(
            waiters.expired(1_000),
            vec![("r2".to_string(), read(3, 0, 1_000))]
        );
        // A wait for the end only hears of the end.
        assert!(waiters.output_reached("r1", u64::MAX - 1).is_empty());
        assert_eq!(waiters.run_ended("r1"), vec![read(2, u64::MAX, 5_000)]);
        assert_eq!(waiters.earliest_deadline_ms(), None);
        assert!(waiters.run_ended("r1").is_empty());
    }

    #[test]
    fn past_the_limit_a_read_is_not_held() {
        let mut waiters = LogWaiters::default();
        for id in 0..MAX_HELD_READS as u64 {
            waiters.hold("r", read(id, 0, 1)).unwrap();
        }
        assert_eq!(waiters.hold("r", read(9, 0, 1)), Err(read(9, 0, 1)));
        // Answering some makes room again.
        assert_eq!(waiters.expired(1).len(), MAX_HELD_READS);
        assert!(waiters.hold("r", read(9, 0, 1)).is_ok());
    }

    #[test]
    fn a_step_of_the_clock_moves_the_waits() {
        let mut waiters = LogWaiters::default();
        waiters.hold("r", read(1, 0, 10_000)).unwrap();
        waiters.shift(|t| t - 4_000);
        assert_eq!(waiters.earliest_deadline_ms(), Some(6_000));
        assert_eq!(
            waiters.expired(6_000),
            vec![("r".to_string(), read(1, 0, 6_000))]
        );
    }

    #[test]
    fn drained_they_are_all_given_back_and_room_is_made() {
        let mut waiters = LogWaiters::default();
        for id in 0..MAX_HELD_READS as u64 {
            waiters
                .hold(&format!("r{}", id % 3), read(id, 0, 1))
                .unwrap();
        }
        let mut ids: Vec<u64> = waiters.drain().into_iter().map(|read| read.id).collect();
        ids.sort();
        assert_eq!(ids, (0..MAX_HELD_READS as u64).collect::<Vec<_>>());
        assert_eq!(waiters.earliest_deadline_ms(), None);
        assert!(waiters.hold("r", read(0, 0, 1)).is_ok());
    }
}
