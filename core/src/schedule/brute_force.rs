//! The schedule maths against a brute-force evaluator written apart from it: walk every
//! wall-clock second (or minute) of a window in the job's zone, read the expression with
//! the plainest code possible, and apply the documented rules to each matching time:
//!
//! - a time that exists once ticks at its instant;
//! - a time in a spring-forward gap ticks at the first instant after the gap;
//! - a time that exists twice ticks at its first instant, and at its second as well when
//!   the hour field covers every hour.
//!
//! Random expressions × zones (30- and 45-minute shifts, no DST, southern hemisphere) ×
//! windows around offset changes: the two must agree on every tick.

use super::{Schedule, ScheduleSpec};
use chrono::{DateTime, Datelike, LocalResult, NaiveDateTime, Offset, TimeZone, Timelike};
use chrono_tz::Tz;
use proptest::prelude::*;
use std::collections::BTreeSet;

const ZONES: &[&str] = &[
    "UTC",
    "Europe/Amsterdam",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
    "Pacific/Chatham",
    "America/Santiago",
    "Australia/Sydney",
];

/// An expression read the plain way: each field as the set of its values.
struct Plain {
    fields: Vec<BTreeSet<u32>>, // second, minute, hour, day, month, weekday (0 = Sunday)
    day_star: bool,
    weekday_star: bool,
}

fn plain_field(text: &str, low: u32, high: u32) -> BTreeSet<u32> {
    let mut values = BTreeSet::new();
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().unwrap()),
            None => (item, 1),
        };
        let (a, b) = if range == "*" {
            (low, high)
        } else if let Some((a, b)) = range.split_once('-') {
            (a.parse().unwrap(), b.parse().unwrap())
        } else if item.contains('/') {
            (range.parse().unwrap(), high)
        } else {
            let v = range.parse().unwrap();
            (v, v)
        };
        values.extend((a..=b).step_by(step as usize));
    }
    values
}

fn plain(expr: &str) -> Plain {
    let parts: Vec<&str> = expr.split_whitespace().collect();
    let parts = if parts.len() == 5 {
        [&["0"][..], &parts[..]].concat()
    } else {
        parts
    };
    let mut weekdays = plain_field(parts[5], 0, 7);
    if weekdays.remove(&7) {
        weekdays.insert(0);
    }
    Plain {
        fields: vec![
            plain_field(parts[0], 0, 59),
            plain_field(parts[1], 0, 59),
            plain_field(parts[2], 0, 23),
            plain_field(parts[3], 1, 31),
            plain_field(parts[4], 1, 12),
            weekdays,
        ],
        day_star: parts[3].starts_with('*'),
        weekday_star: parts[5].starts_with('*'),
    }
}

impl Plain {
    fn matches(&self, t: NaiveDateTime) -> bool {
        let f = &self.fields;
        let day = f[3].contains(&t.day());
        let weekday = f[5].contains(&t.weekday().num_days_from_sunday());
        let day_ok = if self.day_star || self.weekday_star {
            day && weekday
        } else {
            day || weekday
        };
        f[0].contains(&t.second())
            && f[1].contains(&t.minute())
            && f[2].contains(&t.hour())
            && f[4].contains(&t.month())
            && day_ok
    }

    fn every_hour(&self) -> bool {
        self.fields[2].len() == 24
    }
}

/// Every tick in `[from, until)` (seconds since the epoch), by walking wall-clock time.
fn walk(expr: &str, tz: Tz, from: i64, until: i64) -> BTreeSet<i64> {
    let p = plain(expr);
    let step = if p.fields[0].len() == 1 && p.fields[0].contains(&0) {
        60
    } else {
        1
    };
    let wall = |at: i64| {
        let utc = DateTime::from_timestamp(at, 0).unwrap().naive_utc();
        let offset = tz.offset_from_utc_datetime(&utc).fix().local_minus_utc();
        utc + chrono::Duration::seconds(offset.into())
    };
    // Offsets are within a day of UTC: walk a day more on each side.
    let mut t = wall(from - 86_400);
    t -= chrono::Duration::seconds(i64::from(t.second()) % step);
    let end = wall(until + 86_400);
    let mut ticks = BTreeSet::new();
    while t < end {
        if p.matches(t) {
            let instants: Vec<i64> = match tz.from_local_datetime(&t) {
                LocalResult::Single(u) => vec![u.timestamp()],
                LocalResult::Ambiguous(first, second) if p.every_hour() => {
                    vec![first.timestamp(), second.timestamp()]
                }
                LocalResult::Ambiguous(first, _) => vec![first.timestamp()],
                LocalResult::None => {
                    // The first wall-clock time after the gap that exists: its instant is
                    // where the gap ends.
                    let mut after = t;
                    loop {
                        after += chrono::Duration::seconds(1);
                        if let Some(u) = tz.from_local_datetime(&after).earliest() {
                            break vec![u.timestamp()];
                        }
                    }
                }
            };
            ticks.extend(instants.into_iter().filter(|u| (from..until).contains(u)));
        }
        t += chrono::Duration::seconds(step);
    }
    ticks
}

/// Every tick in `[from, until)` as the schedule computes them, one `next_after` at a time.
fn computed(expr: &str, zone: &str, from: i64, until: i64) -> BTreeSet<i64> {
    let schedule = Schedule::compile(&ScheduleSpec {
        cron: vec![expr.to_string()],
        timezone: Some(zone.to_string()),
        ..Default::default()
    })
    .unwrap();
    let mut ticks = BTreeSet::new();
    let mut after = (from * 1_000 - 1) as u64;
    while let Some(next) = schedule.next_after(after) {
        let at = (next / 1_000) as i64;
        if at >= until {
            break;
        }
        assert!(ticks.insert(at), "{expr} in {zone}: {at} twice");
        after = next;
    }
    ticks
}

/// Offset changes of `tz` in `[from, until)`, found hour by hour.
fn changes(tz: Tz, from: i64, until: i64) -> Vec<i64> {
    let offset = |at: i64| {
        let utc = DateTime::from_timestamp(at, 0).unwrap().naive_utc();
        tz.offset_from_utc_datetime(&utc).fix().local_minus_utc()
    };
    (from..until)
        .step_by(3_600)
        .filter(|at| offset(*at) != offset(at - 3_600))
        .collect()
}

fn compare(expr: &str, zone: &str, from: i64, until: i64) -> Result<(), TestCaseError> {
    let tz: Tz = zone.parse().unwrap();
    let expected = walk(expr, tz, from, until);
    let got = computed(expr, zone, from, until);
    let missed: Vec<_> = expected.difference(&got).collect();
    let extra: Vec<_> = got.difference(&expected).collect();
    prop_assert!(
        missed.is_empty() && extra.is_empty(),
        "{expr:?} in {zone} from {from}: {} missed (first {:?}), {} extra (first {:?})",
        missed.len(),
        &missed[..missed.len().min(5)],
        extra.len(),
        &extra[..extra.len().min(5)]
    );
    Ok(())
}

/// One field of a random expression.
fn field(low: u32, high: u32) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just("*".to_string()),
        2 => (low..=high).prop_map(|v| v.to_string()),
        1 => (low..=high, low..=high).prop_map(|(a, b)| format!("{}-{}", a.min(b), a.max(b))),
        2 => (2..=12u32).prop_map(|s| format!("*/{s}")),
        1 => (low..=high, 2..=9u32).prop_map(|(a, s)| format!("{a}/{s}")),
        1 => (low..=high, low..=high).prop_map(|(a, b)| format!("{a},{b}")),
    ]
}

/// A random expression that can fire (the day fields are drawn so that some day always
/// matches: any day of a month, or days up to 28).
fn expression() -> impl Strategy<Value = String> {
    (
        prop::option::of(field(0, 59)),
        field(0, 59),
        field(0, 23),
        prop_oneof![3 => Just("*".to_string()), 1 => field(1, 28)],
        prop_oneof![3 => Just("*".to_string()), 1 => field(1, 12)],
        prop_oneof![3 => Just("*".to_string()), 1 => field(0, 7)],
    )
        .prop_map(|(second, minute, hour, day, month, weekday)| {
            let five = format!("{minute} {hour} {day} {month} {weekday}");
            match second {
                Some(second) => format!("{second} {five}"),
                None => five,
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Windows of two days around an offset change of the zone, in 2024–2031.
    #[test]
    fn random_expressions_agree_with_the_walk_across_offset_changes(
        expr in expression(),
        zone in prop::sample::select(ZONES),
        year in 2024i32..2032,
        which in 0usize..4,
        lead in 0i64..86_400,
    ) {
        let tz: Tz = zone.parse().unwrap();
        let year_start = tz.with_ymd_and_hms(year, 1, 1, 0, 0, 0).earliest().unwrap().timestamp();
        let found = changes(tz, year_start, year_start + 366 * 86_400);
        // Zones without changes: any window of the year.
        let around = found.get(which % found.len().max(1)).copied().unwrap_or(year_start + lead * 100);
        let from = around - lead;
        let seconds = expr.split_whitespace().count() == 6;
        let until = from + if seconds { 86_400 } else { 2 * 86_400 };
        compare(&expr, zone, from, until)?;
    }
}

#[test]
fn the_documented_cases_agree_with_the_walk() {
    // From the issue: spring-forward slots with lists and steps, fall-back passes, and a
    // 30-minute shift.
    let cases = [
        ("30 2,14 * * *", "Europe/Amsterdam", "2026-03-28 00:00:00"),
        ("0 */2 * * *", "Europe/Amsterdam", "2026-03-28 00:00:00"),
        ("15,45 * * * *", "Europe/Amsterdam", "2026-03-28 00:00:00"),
        ("* 2 * * *", "Europe/Amsterdam", "2026-03-28 00:00:00"),
        ("0 * * * *", "Australia/Lord_Howe", "2026-10-03 00:00:00"),
        ("*/10 * * * * *", "Europe/Amsterdam", "2026-10-24 12:00:00"),
        ("0 * * * *", "Europe/Amsterdam", "2026-10-24 12:00:00"),
        ("*/30 * * * *", "Europe/Amsterdam", "2026-10-24 12:00:00"),
        ("30 2 * * *", "Europe/Amsterdam", "2026-10-24 12:00:00"),
        ("0 0 */2 * MON", "UTC", "2026-01-01 00:00:00"),
        ("30 5 * * *", "Asia/Kolkata", "2026-01-01 00:00:00"),
    ];
    for (expr, zone, from) in cases {
        let from = NaiveDateTime::parse_from_str(from, "%Y-%m-%d %H:%M:%S")
            .unwrap()
            .and_utc()
            .timestamp();
        let expr = expr.replace("MON", "1");
        compare(&expr, zone, from, from + 2 * 86_400).unwrap();
    }
}
