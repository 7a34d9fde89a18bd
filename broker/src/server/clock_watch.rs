//! Steps of the wall clock, seen by the server (which reads the clocks): the core and the
//! envelope opener are told, and move their deadlines and replay windows with it.

use super::now_us;
use std::time::Instant;

/// Notices steps of the wall clock: between two readings, the wall clock should move as
/// much as the monotonic clock did.
pub(super) struct ClockWatch {
    at: Instant,
    wall_us: u64,
}

impl ClockWatch {
    /// Differences under this are drift and scheduling, not a step.
    const STEP_US: i64 = 1_000_000;

    pub(super) fn new() -> ClockWatch {
        ClockWatch {
            at: Instant::now(),
            wall_us: now_us(),
        }
    }

    /// How far (ms, negative: back) the wall clock stepped since the last reading.
    pub(super) fn step(&mut self, wall_us: u64) -> Option<i64> {
        let expected = self.wall_us as i64 + self.at.elapsed().as_micros() as i64;
        self.at = Instant::now();
        self.wall_us = wall_us;
        let step_us = wall_us as i64 - expected;
        (step_us.abs() >= Self::STEP_US).then_some(step_us / 1_000)
    }
}
