//! Schedule maths: when a job's ticks fall. Pure: times in and out are milliseconds since
//! the Unix epoch; nothing here reads a clock.
//!
//! Cron expressions are evaluated in the job's IANA time zone by the `croner` crate. Across
//! daylight-saving changes a wall-clock slot fires once: a slot that does not exist (spring
//! forward) fires at the first instant after the gap, and a slot that exists twice (fall
//! back) fires at its first occurrence only.

use chrono::{DateTime, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds};
use croner::Cron;
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
    Cron { expr: String, reason: String },
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
    Cron(Vec<Cron>),
    Every { interval_ms: u64 },
    At(u64),
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

fn to_ms(t: DateTime<Tz>) -> u64 {
    t.timestamp_millis().max(0) as u64
}

fn in_tz(ms: u64, tz: Tz) -> DateTime<Tz> {
    Utc.timestamp_millis_opt(ms as i64)
        .single()
        .unwrap_or_default()
        .with_timezone(&tz)
}

/// The next occurrence of `cron` after `from_ms`, checked against the expression.
///
/// Around a spring-forward gap croner can return an instant whose local time does not
/// match (a daily `0 1 * * *` also fired at 03:00 on the change-over day). A candidate is
/// kept only if its local time matches, or if it is the first instant after a gap in
/// which some local time matches; otherwise the search goes on from it.
fn next_cron(cron: &Cron, from_ms: u64, tz: Tz) -> Option<u64> {
    let mut from = from_ms;
    for _ in 0..16 {
        let candidate = cron.find_next_occurrence(&in_tz(from, tz), false).ok()?;
        let candidate_ms = to_ms(candidate);
        if candidate_ms <= from {
            return None;
        }
        if cron.is_time_matching(&candidate).unwrap_or(false) || gap_matches(cron, candidate_ms, tz)
        {
            return Some(candidate_ms);
        }
        from = candidate_ms;
    }
    None
}

/// Whether the local wall-clock times skipped just before `at_ms` (a DST gap) include one
/// that `cron` matches.
fn gap_matches(cron: &Cron, at_ms: u64, tz: Tz) -> bool {
    let now = in_tz(at_ms, tz).naive_local();
    let before = in_tz(at_ms.saturating_sub(1_000), tz).naive_local();
    let mut skipped = before + chrono::Duration::seconds(1);
    while skipped < now {
        if cron
            .is_time_matching(&Utc.from_utc_datetime(&skipped))
            .unwrap_or(false)
        {
            return true;
        }
        skipped += chrono::Duration::seconds(1);
    }
    false
}

/// Parses one cron expression: 5 fields, 6 with seconds, or a macro like `@daily`.
pub fn parse_cron(expr: &str) -> Result<Cron, ScheduleError> {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| ScheduleError::Cron {
            expr: expr.to_string(),
            reason: e.to_string(),
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
                // Cron works in whole seconds: search from the second `after_ms` falls in
                // (croner keeps any fraction of a second in what it returns).
                let from = after_ms - after_ms % 1_000;
                exprs
                    .iter()
                    .filter_map(|cron| next_cron(cron, from, self.tz))
                    .filter(|t| *t > after_ms)
                    .min()
            }
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
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{Duration as ChronoDuration, LocalResult, NaiveDateTime};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

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

    /// The instants a cron expression should fire at in a week of local time, worked out
    /// minute by minute without the crate's search: every matching local minute once, at
    /// its first occurrence, or at the end of the gap when it does not exist.
    fn expected_week(expr: &str, tz: Tz, start: NaiveDateTime) -> BTreeSet<u64> {
        let cron = parse_cron(expr).unwrap();
        let mut expected = BTreeSet::new();
        let mut local = start;
        let end = start + ChronoDuration::days(7);
        while local < end {
            let as_utc = Utc.from_utc_datetime(&local);
            if cron.is_time_matching(&as_utc).unwrap() {
                let instant = match tz.from_local_datetime(&local) {
                    LocalResult::Single(t) => t,
                    LocalResult::Ambiguous(first, _) => first,
                    LocalResult::None => {
                        // first existing local minute after the gap
                        let mut after = local;
                        loop {
                            after += ChronoDuration::minutes(1);
                            if let LocalResult::Single(t) = tz.from_local_datetime(&after) {
                                break t;
                            }
                        }
                    }
                };
                expected.insert(to_ms(instant));
            }
            local += ChronoDuration::minutes(1);
        }
        expected
    }

    fn simulate_week(expr: &str, tz_name: &str, start: &str) -> (Vec<u64>, BTreeSet<u64>) {
        let tz: Tz = tz_name.parse().unwrap();
        let start_local = NaiveDateTime::parse_from_str(start, "%Y-%m-%d %H:%M").unwrap();
        let start_ms = to_ms(tz.from_local_datetime(&start_local).earliest().unwrap());
        let end_ms = to_ms(
            tz.from_local_datetime(&(start_local + ChronoDuration::days(7)))
                .earliest()
                .unwrap(),
        );
        let schedule = cron(&[expr], tz_name);
        // the simulated clock jumps from tick to tick, as the scheduler sleeps
        let ticks = schedule.ticks_between(start_ms - 1, end_ms - 1, 100_000);
        (ticks, expected_week(expr, tz, start_local))
    }

    #[test]
    fn a_week_across_both_dst_changes_has_no_duplicate_and_no_missed_tick() {
        let cases = [
            ("Europe/Amsterdam", "2026-03-26 00:00"),
            ("Europe/Amsterdam", "2026-10-22 00:00"),
            ("America/New_York", "2026-03-05 00:00"),
            ("America/New_York", "2026-10-29 00:00"),
        ];
        let exprs = [
            "30 2 * * *",
            "0 1 * * *",
            "*/15 * * * *",
            "0 * * * *",
            "45 3 * * 0",
            "0 0 * * *",
        ];
        for (tz, start) in cases {
            for expr in exprs {
                let (ticks, expected) = simulate_week(expr, tz, start);
                let unique: BTreeSet<u64> = ticks.iter().copied().collect();
                assert_eq!(unique.len(), ticks.len(), "{tz} {expr}: duplicate ticks");
                assert!(
                    ticks.windows(2).all(|w| w[0] < w[1]),
                    "{tz} {expr}: not increasing"
                );
                let missed: Vec<_> = expected.difference(&unique).collect();
                let extra: Vec<_> = unique.difference(&expected).collect();
                assert!(missed.is_empty(), "{tz} {expr}: missed {missed:?}");
                assert!(extra.is_empty(), "{tz} {expr}: extra {extra:?}");
            }
        }
        // a daily job fires exactly once on each of the seven days, including both
        // change-over days
        for (tz, start) in cases {
            assert_eq!(
                simulate_week("30 2 * * *", tz, start).0.len(),
                7,
                "{tz} {start}"
            );
        }
    }

    proptest! {
        #[test]
        fn next_fire_times_strictly_increase_and_match_the_cron_crate(
            minute in 0u32..60,
            hour_step in 1u32..12,
            start in 1_700_000_000_000u64..1_900_000_000_000u64,
            tz_index in 0usize..4,
        ) {
            let tz_name = ["UTC", "Europe/Amsterdam", "America/New_York", "Asia/Kolkata"][tz_index];
            let expr = format!("{minute} */{hour_step} * * *");
            let schedule = cron(&[&expr], tz_name);
            let crate_cron = parse_cron(&expr).unwrap();
            let tz: Tz = tz_name.parse().unwrap();
            let mut t = start;
            for _ in 0..20 {
                let next = schedule.next_after(t).unwrap();
                prop_assert!(next > t);
                let local = in_tz(next, tz);
                prop_assert!(crate_cron.is_time_matching(&local).unwrap());
                t = next;
            }
        }

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
