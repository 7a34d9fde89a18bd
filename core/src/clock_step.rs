//! A step of the wall clock (NTP, an operator, a resumed virtual machine), as the server
//! notices it against the monotonic clock.
//!
//! Everything the core measures as elapsed time moves with the step, so that a step back
//! neither freezes heartbeats, timeouts and back-offs for its length nor a step forward
//! makes every worker look silent. Jobs follow cron(8) for steps under 3 hours: after a
//! step back, jobs at a fixed time of day do not run the ticks they already had again,
//! and jobs that fire at least hourly go on at the new time; `every` jobs follow elapsed
//! time both ways; after a step forward the ticks passed over are missed, and each job's
//! misfire policy decides. A step of 3 hours or more is taken as the clock being set:
//! every job goes on at the new time.

use crate::schedule::ClockStepRule;
use crate::store::{Store, StoreResult};
use crate::Core;
use crate::Now;

/// Steps from this size on are the clock being set, not corrected (cron(8)'s limit).
pub const SET_NOT_STEPPED_MS: u64 = 3 * 3_600_000;

impl<S: Store> Core<S> {
    /// The wall clock moved by `step_ms` (negative: back) more than time passed; `now_us`
    /// is the new reading.
    pub fn clock_stepped(&mut self, step_ms: i64, now_us: u64) -> StoreResult<()> {
        let now = Now::from_us(now_us);
        let size = step_ms.unsigned_abs();
        let shift = |t: u64| {
            if step_ms < 0 {
                t.saturating_sub(size)
            } else {
                t.saturating_add(size)
            }
        };
        tracing::warn!(
            step_ms,
            "the wall clock stepped: timeouts and back-offs move with it, jobs follow cron's rules"
        );
        self.process.next_alive_ms = shift(self.process.next_alive_ms);
        self.process.booted_at_ms = shift(self.process.booted_at_ms);
        self.tables.workers.shift_times(shift);
        self.tables.pings.shift(step_ms.saturating_mul(1_000));
        self.tables.log_waiters.shift(shift);
        self.tables.runs.shift_back_offs(shift);
        self.shift_pruning(shift);

        let set_not_stepped = size >= SET_NOT_STEPPED_MS;
        let jobs: Vec<(String, ClockStepRule)> = self
            .tables
            .jobs
            .schedules()
            .map(|(job, schedule)| (job.clone(), schedule.on_clock_step(now.ms())))
            .collect();
        for (job, rule) in jobs {
            let go_on_now = match rule {
                ClockStepRule::FollowElapsedTime => true,
                ClockStepRule::GoOnAtTheNewTime => step_ms < 0,
                ClockStepRule::KeepTicksHad => step_ms < 0 && set_not_stepped,
            };
            if !go_on_now {
                continue;
            }
            let Some(state) = self.tables.jobs.state_mut(&job) else {
                continue;
            };
            if step_ms < 0 {
                // Ticks it had at times it will pass again get runs of their own.
                state.clock_era += 1;
            }
            state.last_tick_ms = now.ms();
            let next = self
                .tables
                .jobs
                .schedule(&job)
                .and_then(|s| s.next_after(now.ms()));
            self.tables.jobs.set_next_fire(&job, next);
            self.save_job_state(&job)?;
        }
        Ok(())
    }
}
