//! Schedule maths: when a job's ticks fall. Pure: times in and out are milliseconds since
//! the Unix epoch; nothing here reads a clock.
//!
//! Cron expressions are read by `cron` (their meaning on a wall clock) and placed in the
//! job's IANA time zone by `zoned` (which instants those wall-clock times are, across
//! daylight-saving changes; the rules are there). Both are written here rather than taken
//! from a crate because the rules users rely on differ from every crate's: Vixie cron's
//! day-field rule, one tick for a skipped slot, both passes of a repeated hour for hourly
//! jobs, and refusing what can never fire.

mod cron;
mod zoned;

pub use cron::{CronExpr, CronProblem};

use chrono::{DateTime, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use jobcast_protocol::{JobSpec, ScheduleSpec};
use thiserror::Error;

/// Why a schedule cannot be used; the message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScheduleError {
    #[error("exclusion window {0:?} must look like \"22:00-06:00\"")]
    WindowFormat(String),
    #[error("exclusion window {0:?} is empty")]
    EmptyWindow(String),
    #[error("cron expression {expr:?} is not valid: {reason}")]
    Cron { expr: String, reason: CronProblem },
    #[error("`at` {text:?} is not an RFC 3339 time like 2026-12-01T09:00:00Z: {reason}")]
    At { text: String, reason: String },
    #[error("unknown time zone {0:?}: use an IANA name like Europe/Amsterdam")]
    TimeZone(String),
    #[error("`every` must be at least 1s")]
    IntervalTooShort,
}

#[derive(Debug, Clone)]
enum Kind {
    Manual,
    Cron(Vec<CronExpr>),
    Every { interval_ms: u64 },
    At(u64),
}

/// What a job's schedule does when the wall clock steps (see [`Schedule::on_clock_step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockStepRule {
    /// Ticks go on from the new time whichever way the clock stepped: elapsed time, not
    /// the wall clock, is what the interval measures.
    FollowElapsedTime,
    /// After a step back, ticks go on from the new time (a tick may repeat a time the job
    /// had before, as a run of its own); after a step forward, the ticks passed over are
    /// missed and the misfire policy decides.
    GoOnAtTheNewTime,
    /// Ticks already had are not had again after a step back (the job waits until the
    /// clock passes its last tick); after a step forward, the misfire policy decides.
    KeepTicksHad,
}

/// A local time-of-day range; wraps past midnight when `start > end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    start_s: u32,
    end_s: u32,
}

impl Window {
    pub fn parse(text: &str) -> Result<Window, ScheduleError> {
        let err = || ScheduleError::WindowFormat(text.to_string());
        let (a, b) = text.split_once('-').ok_or_else(err)?;
        let time = |t: &str| {
            NaiveTime::parse_from_str(t.trim(), "%H:%M")
                .or_else(|_| NaiveTime::parse_from_str(t.trim(), "%H:%M:%S"))
                .map_err(|_| err())
        };
        let (start, end) = (time(a)?, time(b)?);
        if start == end {
            return Err(ScheduleError::EmptyWindow(text.to_string()));
        }
        Ok(Window {
            start_s: start.num_seconds_from_midnight(),
            end_s: end.num_seconds_from_midnight(),
        })
    }

    fn contains(&self, second_of_day: u32) -> bool {
        if self.start_s < self.end_s {
            (self.start_s..self.end_s).contains(&second_of_day)
        } else {
            second_of_day >= self.start_s || second_of_day < self.end_s
        }
    }
}

#[derive(Debug, Clone)]
pub struct Schedule {
    kind: Kind,
    tz: Tz,
    exclude: Vec<Window>,
}

fn in_tz(ms: u64, tz: Tz) -> DateTime<Tz> {
    Utc.timestamp_millis_opt(ms as i64)
        .single()
        .unwrap_or_default()
        .with_timezone(&tz)
}

/// Parses one cron expression: 5 fields, 6 with seconds, or a macro like `@daily`.
pub fn parse_cron(expr: &str) -> Result<CronExpr, ScheduleError> {
    CronExpr::parse(expr).map_err(|reason| ScheduleError::Cron {
        expr: expr.to_string(),
        reason,
    })
}

/// Parses an RFC 3339 time (`2026-12-01T09:00:00Z`, or with an offset).
pub fn parse_at(text: &str) -> Result<u64, ScheduleError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis().max(0) as u64)
        .map_err(|e| ScheduleError::At {
            text: text.to_string(),
            reason: e.to_string(),
        })
}

impl Schedule {
    pub fn compile(spec: &ScheduleSpec) -> Result<Schedule, ScheduleError> {
        let tz = match &spec.timezone {
            Some(name) => name
                .parse::<Tz>()
                .map_err(|_| ScheduleError::TimeZone(name.clone()))?,
            None => Tz::UTC,
        };
        let kind = if !spec.cron.is_empty() {
            Kind::Cron(
                spec.cron
                    .iter()
                    .map(|e| parse_cron(e))
                    .collect::<Result<_, _>>()?,
            )
        } else if let Some(interval_ms) = spec.every_ms {
            if interval_ms < 1_000 {
                return Err(ScheduleError::IntervalTooShort);
            }
            Kind::Every { interval_ms }
        } else if let Some(at) = &spec.at {
            Kind::At(parse_at(at)?)
        } else {
            Kind::Manual
        };
        let exclude = spec
            .exclude
            .iter()
            .map(|w| Window::parse(w))
            .collect::<Result<_, _>>()?;
        Ok(Schedule { kind, tz, exclude })
    }

    pub fn for_job(job: &JobSpec) -> Result<Schedule, ScheduleError> {
        Self::compile(&job.schedule)
    }

    pub fn is_manual(&self) -> bool {
        matches!(self.kind, Kind::Manual)
    }

    /// The first tick strictly after `after_ms`, if any.
    pub fn next_after(&self, after_ms: u64) -> Option<u64> {
        match &self.kind {
            Kind::Manual => None,
            Kind::At(at) => (*at > after_ms).then_some(*at),
            Kind::Every { interval_ms } => Some((after_ms / interval_ms + 1) * interval_ms),
            Kind::Cron(exprs) => {
                // Ticks fall on whole seconds: the first one strictly after `after_ms`.
                let from = i64::try_from(after_ms / 1_000 + 1).ok()?;
                exprs
                    .iter()
                    .filter_map(|expr| zoned::tick_at_or_after(expr, self.tz, from))
                    .filter_map(|t| u64::try_from(t).ok())
                    .map(|t| t * 1_000)
                    .min()
            }
        }
    }

    /// How the schedule meets a step of the wall clock, after `now_ms`: `every` follows
    /// elapsed time, not the wall clock; a cron schedule that fires at least hourly (a
    /// wildcard or a step in its minute or hour field) goes on at the new time, as
    /// cron(8) does; a fixed time of day (or rarer, or a one-off) keeps the ticks it has
    /// had, so none runs twice.
    pub fn on_clock_step(&self, now_ms: u64) -> ClockStepRule {
        const HOUR_MS: u64 = 3_600_000;
        match &self.kind {
            Kind::Every { .. } => ClockStepRule::FollowElapsedTime,
            Kind::Cron(_) => {
                let frequent = self
                    .next_after(now_ms)
                    .and_then(|first| Some((first, self.next_after(first)?)))
                    .is_some_and(|(first, second)| second - first <= HOUR_MS);
                if frequent {
                    ClockStepRule::GoOnAtTheNewTime
                } else {
                    ClockStepRule::KeepTicksHad
                }
            }
            Kind::Manual | Kind::At(_) => ClockStepRule::KeepTicksHad,
        }
    }

    /// Ticks in `(after_ms, upto_ms]`, at most `limit`, oldest first.
    pub fn ticks_between(&self, after_ms: u64, upto_ms: u64, limit: usize) -> Vec<u64> {
        let mut ticks = Vec::new();
        let mut t = after_ms;
        while ticks.len() < limit {
            match self.next_after(t) {
                Some(next) if next <= upto_ms => {
                    ticks.push(next);
                    t = next;
                }
                _ => break,
            }
        }
        ticks
    }

    /// Whether a run must not start at `at_ms` (local time of day inside a window).
    pub fn is_excluded(&self, at_ms: u64) -> bool {
        if self.exclude.is_empty() {
            return false;
        }
        let local = in_tz(at_ms, self.tz);
        let second = local.num_seconds_from_midnight();
        self.exclude.iter().any(|w| w.contains(second))
    }
}

/// Derives a run id from what makes a run unique, so that deciding the same thing twice
/// (for instance after a crash between deciding and recording) names the same run.
pub fn derived_run_id(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    hex::encode(&digest[..8])
}

#[cfg(test)]
mod brute_force;

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ms(rfc3339: &str) -> u64 {
        parse_at(rfc3339).unwrap()
    }

    fn cron(exprs: &[&str], tz: &str) -> Schedule {
        Schedule::compile(&ScheduleSpec {
            cron: exprs.iter().map(|s| s.to_string()).collect(),
            timezone: Some(tz.into()),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn every_ticks_on_multiples_of_the_interval_and_does_not_drift() {
        let s = Schedule::compile(&ScheduleSpec {
            every_ms: Some(90_000),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.next_after(0), Some(90_000));
        assert_eq!(s.next_after(90_000), Some(180_000));
        assert_eq!(s.next_after(179_999), Some(180_000));
        // however late the previous run finished, the next tick stays on the grid
        assert_eq!(s.ticks_between(0, 900_000, 100).len(), 10);
    }

    #[test]
    fn at_fires_once() {
        let s = Schedule::compile(&ScheduleSpec {
            at: Some("2026-12-01T09:00:00+01:00".into()),
            ..Default::default()
        })
        .unwrap();
        let t = ms("2026-12-01T08:00:00Z");
        assert_eq!(s.next_after(t - 1), Some(t));
        assert_eq!(s.next_after(t), None);
    }

    #[test]
    fn cron_supports_seconds_macros_and_several_expressions() {
        let s = cron(&["*/15 * * * * *"], "UTC");
        assert_eq!(
            s.next_after(ms("2026-01-01T00:00:00Z")),
            Some(ms("2026-01-01T00:00:15Z"))
        );
        let s = cron(&["@hourly"], "UTC");
        assert_eq!(
            s.next_after(ms("2026-01-01T00:10:00Z")),
            Some(ms("2026-01-01T01:00:00Z"))
        );
        let s = cron(&["0 9 * * *", "30 8 * * *"], "UTC");
        assert_eq!(
            s.next_after(ms("2026-01-01T00:00:00Z")),
            Some(ms("2026-01-01T08:30:00Z"))
        );
        assert_eq!(
            s.next_after(ms("2026-01-01T08:30:00Z")),
            Some(ms("2026-01-01T09:00:00Z"))
        );
    }

    #[test]
    fn cron_runs_in_the_jobs_time_zone() {
        let s = cron(&["0 9 * * *"], "Europe/Amsterdam");
        // 09:00 in Amsterdam in winter is 08:00 UTC
        assert_eq!(
            s.next_after(ms("2026-01-01T00:00:00Z")),
            Some(ms("2026-01-01T08:00:00Z"))
        );
    }

    #[test]
    fn bad_schedules_are_explained() {
        let err = |spec: ScheduleSpec| Schedule::compile(&spec).unwrap_err();
        let bad_cron = err(ScheduleSpec {
            cron: vec!["61 * * * *".into()],
            ..Default::default()
        });
        assert!(matches!(&bad_cron, ScheduleError::Cron { expr, .. } if expr == "61 * * * *"));
        assert!(bad_cron.to_string().contains("not valid"));
        assert_eq!(
            err(ScheduleSpec {
                cron: vec!["* * * * *".into()],
                timezone: Some("Mars/Olympus".into()),
                ..Default::default()
            })
            .to_string(),
            "unknown time zone \"Mars/Olympus\": use an IANA name like Europe/Amsterdam"
        );
        assert!(matches!(
            err(ScheduleSpec {
                at: Some("tomorrow".into()),
                ..Default::default()
            }),
            ScheduleError::At { .. }
        ));
        assert_eq!(
            err(ScheduleSpec {
                every_ms: Some(10),
                ..Default::default()
            }),
            ScheduleError::IntervalTooShort
        );
        assert_eq!(
            err(ScheduleSpec {
                every_ms: Some(60_000),
                exclude: vec!["22-06".into()],
                ..Default::default()
            }),
            ScheduleError::WindowFormat("22-06".into())
        );
        assert_eq!(
            err(ScheduleSpec {
                every_ms: Some(60_000),
                exclude: vec!["10:00-10:00".into()],
                ..Default::default()
            }),
            ScheduleError::EmptyWindow("10:00-10:00".into())
        );
    }

    #[test]
    fn exclusion_windows_use_local_time_and_wrap_midnight() {
        let s = Schedule::compile(&ScheduleSpec {
            every_ms: Some(60_000),
            timezone: Some("Europe/Amsterdam".into()),
            exclude: vec!["22:00-06:00".into()],
            ..Default::default()
        })
        .unwrap();
        // 21:30 UTC is 22:30 in Amsterdam (winter)
        assert!(s.is_excluded(ms("2026-01-10T21:30:00Z")));
        assert!(s.is_excluded(ms("2026-01-10T04:59:00Z")));
        assert!(!s.is_excluded(ms("2026-01-10T05:00:00Z")));
        assert!(!s.is_excluded(ms("2026-01-10T12:00:00Z")));
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        assert_eq!(derived_run_id(&["a", "1"]), derived_run_id(&["a", "1"]));
        assert_ne!(derived_run_id(&["a", "1"]), derived_run_id(&["a", "2"]));
        // the separator keeps ("ab","c") and ("a","bc") apart
        assert_ne!(derived_run_id(&["ab", "c"]), derived_run_id(&["a", "bc"]));
        assert_eq!(derived_run_id(&["x"]).len(), 16);
    }

    proptest! {
        #[test]
        fn every_interval_never_skips_or_repeats(interval_s in 1u64..100_000, start in 0u64..2_000_000_000_000u64) {
            let s = Schedule::compile(&ScheduleSpec { every_ms: Some(interval_s * 1000), ..Default::default() }).unwrap();
            let a = s.next_after(start).unwrap();
            let b = s.next_after(a).unwrap();
            prop_assert!(a > start && a - start <= interval_s * 1000);
            prop_assert_eq!(b - a, interval_s * 1000);
        }
    }
}
