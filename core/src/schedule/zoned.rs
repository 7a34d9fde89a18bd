//! A cron expression's ticks in a time zone: which real instants its wall-clock times
//! fall on, across daylight-saving changes.
//!
//! The rules (the same as Debian's cron(8) for the repeated hour, and one tick for times a
//! gap skips):
//!
//! - A wall-clock time that exists once ticks at that instant.
//! - **Spring forward** (a gap: 02:00–03:00 does not exist): however many matching times
//!   the gap skips, the job ticks once, at the first instant after the gap (03:00 new
//!   time). `30 2 * * *` runs at 03:00 that day; `*/10 * * * *` runs at 03:00 and goes on
//!   from there; a job with no matching time in the gap is not affected.
//! - **Fall back** (02:00–03:00 happens twice): a job whose hour field covers every hour
//!   (`*/10 * * * *`, `0 * * * *`, `@hourly`) runs by real time through both passes; any
//!   other job (`30 2 * * *`, `* 2 * * *`) runs in the first pass only.
//!
//! Offsets are looked up instant by instant; a change of offset between two instants is
//! found by probing once a day and bisecting to the second. Two changes less than a day
//! apart that cancel out would go unseen; no zone has had such a pair in this century.

use super::cron::CronExpr;
use chrono::{DateTime, LocalResult, NaiveDateTime, Offset, TimeZone};
use chrono_tz::Tz;

/// How far ahead a search looks before giving up (an expression that fires only on
/// 29 February on a given weekday can wait 40 years).
const HORIZON_YEARS: i32 = 50;
const DAY: i64 = 86_400;

/// Seconds east of UTC in `tz` at `at` (seconds since the epoch).
fn offset_at(tz: Tz, at: i64) -> Option<i64> {
    let utc = DateTime::from_timestamp(at, 0)?.naive_utc();
    Some(i64::from(
        tz.offset_from_utc_datetime(&utc).fix().local_minus_utc(),
    ))
}

/// The first instant in `(from, until]` whose offset differs from `from`'s, if any.
fn next_change(tz: Tz, from: i64, until: i64) -> Option<i64> {
    let offset = offset_at(tz, from)?;
    let mut low = from;
    loop {
        let high = (low + DAY).min(until);
        if high <= low {
            return None;
        }
        if offset_at(tz, high)? != offset {
            // Bisect (low, high]: low has the old offset, high the new one.
            let (mut old, mut new) = (low, high);
            while new - old > 1 {
                let mid = old + (new - old) / 2;
                if offset_at(tz, mid)? == offset {
                    old = mid;
                } else {
                    new = mid;
                }
            }
            return Some(new);
        }
        low = high;
    }
}

fn local(at: i64, offset: i64) -> Option<NaiveDateTime> {
    Some(DateTime::from_timestamp(at.checked_add(offset)?, 0)?.naive_utc())
}

/// Whether the wall-clock times skipped when the offset jumps from `before` to `after`
/// at `change` hold a match of `expr`.
fn gap_matches(expr: &CronExpr, change: i64, before: i64, after: i64) -> Option<bool> {
    let gap_start = local(change, before)?;
    let gap_end = local(change, after)?;
    Some(
        expr.next_match(gap_start, 1)
            .is_some_and(|skipped| skipped < gap_end),
    )
}

/// The first tick of `expr` in `tz` at or after `from` (seconds since the epoch).
pub fn tick_at_or_after(expr: &CronExpr, tz: Tz, from: i64) -> Option<i64> {
    let horizon = from + i64::from(HORIZON_YEARS) * 366 * DAY;
    // Searching from the very instant the clock jumps forward: the gap just skipped
    // ticks here, if it holds a match (the walk below sees only changes after `from`).
    let (before, now) = (offset_at(tz, from - 1)?, offset_at(tz, from)?);
    if now > before && gap_matches(expr, from, before, now)? {
        return Some(from);
    }
    let mut at = from;
    while at < horizon {
        let offset = offset_at(tz, at)?;
        let wall = expr.next_match(local(at, offset)?, HORIZON_YEARS)?;
        let candidate = wall.and_utc().timestamp() - offset;
        match next_change(tz, at, candidate) {
            None => {
                // No change of offset before the candidate: it is a real instant of this
                // wall-clock time. In a repeated hour it may be the second pass.
                if !expr.every_hour() {
                    if let LocalResult::Ambiguous(first, _) = tz.from_local_datetime(&wall) {
                        if first.timestamp() < candidate {
                            at = candidate + 1;
                            continue;
                        }
                    }
                }
                return Some(candidate);
            }
            Some(change) => {
                // The offset changes before the candidate. If it jumps forward, wall-clock
                // times from here to the new offset do not exist: a match among them
                // ticks once, at the change.
                let after = offset_at(tz, change)?;
                if after > offset && gap_matches(expr, change, offset, after)? {
                    return Some(change);
                }
                at = change;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDateTime;

    fn utc(text: &str) -> i64 {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
            .unwrap()
            .and_utc()
            .timestamp()
    }

    fn show(at: i64) -> String {
        DateTime::from_timestamp(at, 0)
            .unwrap()
            .format("%Y-%m-%d %H:%M:%S")
            .to_string()
    }

    /// The ticks of `expr` in `zone` from `from` (UTC) on, `n` of them, in UTC.
    fn ticks(expr: &str, zone: &str, from: &str, n: usize) -> Vec<String> {
        let expr = CronExpr::parse(expr).unwrap();
        let tz: Tz = zone.parse().unwrap();
        let mut at = utc(from);
        let mut out = Vec::new();
        for _ in 0..n {
            let tick = tick_at_or_after(&expr, tz, at).unwrap();
            out.push(show(tick));
            at = tick + 1;
        }
        out
    }

    #[test]
    fn finds_the_change_to_the_second() {
        let tz: Tz = "Europe/Amsterdam".parse().unwrap();
        // 2026-03-29 01:00:00 UTC: 02:00 CET becomes 03:00 CEST.
        let change = utc("2026-03-29 01:00:00");
        assert_eq!(
            next_change(tz, change - 10 * DAY, change + DAY),
            Some(change)
        );
        assert_eq!(next_change(tz, change, change + DAY), None);
        assert_eq!(next_change(tz, change - 10, change - 1), None);
    }

    #[test]
    fn spring_forward_slots_tick_once_at_the_end_of_the_gap() {
        // Amsterdam, 2026-03-29: 02:00–03:00 local does not exist (01:00 UTC).
        assert_eq!(
            ticks(
                "30 2,14 * * *",
                "Europe/Amsterdam",
                "2026-03-28 14:00:00",
                3
            ),
            [
                "2026-03-29 01:00:00",
                "2026-03-29 12:30:00",
                "2026-03-30 00:30:00"
            ]
        );
        // Every minute of 02:xx: one tick at 03:00, then nothing until the next day.
        assert_eq!(
            ticks("* 2 * * *", "Europe/Amsterdam", "2026-03-29 00:30:00", 2),
            ["2026-03-29 01:00:00", "2026-03-30 00:00:00"]
        );
        // Lord Howe moves by 30 minutes: on 2026-10-04, 02:00 (+10:30, 15:30 UTC) becomes
        // 02:30 (+11:00): the 02:00 slot ticks at 15:30 UTC, 03:00 at 16:00 UTC.
        assert_eq!(
            ticks("0 * * * *", "Australia/Lord_Howe", "2026-10-03 14:30:00", 3),
            [
                "2026-10-03 14:30:00",
                "2026-10-03 15:30:00",
                "2026-10-03 16:00:00"
            ]
        );
    }

    #[test]
    fn a_search_from_the_instant_of_a_jump_sees_the_gap_it_skipped() {
        // Found by the brute-force comparison: Lord Howe jumps at 2024-10-05 15:30 UTC
        // (02:00 → 02:30); seconds 1-59 of 02:xx lie in the gap and tick at the jump.
        assert_eq!(
            ticks(
                "1-59 * 0-2 * * *",
                "Australia/Lord_Howe",
                "2024-10-05 15:30:00",
                2
            ),
            ["2024-10-05 15:30:00", "2024-10-05 15:30:01"]
        );
    }

    #[test]
    fn fall_back_runs_hourly_jobs_in_both_passes_and_fixed_jobs_once() {
        // Amsterdam, 2026-10-25: 02:00–03:00 local happens at 00:00 and at 01:00 UTC.
        assert_eq!(
            ticks("0 * * * *", "Europe/Amsterdam", "2026-10-24 23:30:00", 3),
            [
                "2026-10-25 00:00:00",
                "2026-10-25 01:00:00",
                "2026-10-25 02:00:00"
            ]
        );
        assert_eq!(
            ticks("*/30 * * * *", "Europe/Amsterdam", "2026-10-25 00:45:00", 3),
            [
                "2026-10-25 01:00:00",
                "2026-10-25 01:30:00",
                "2026-10-25 02:00:00"
            ]
        );
        assert_eq!(
            ticks("30 2 * * *", "Europe/Amsterdam", "2026-10-24 12:00:00", 2),
            ["2026-10-25 00:30:00", "2026-10-26 01:30:00"]
        );
        // Searching from inside the second pass: the next fixed tick is the next day's.
        assert_eq!(
            ticks("30 2 * * *", "Europe/Amsterdam", "2026-10-25 01:05:00", 1),
            ["2026-10-26 01:30:00"]
        );
        assert_eq!(
            ticks("*/30 * * * *", "Europe/Amsterdam", "2026-10-25 01:05:00", 1),
            ["2026-10-25 01:30:00"]
        );
    }
}
