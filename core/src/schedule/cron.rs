//! Cron expressions: what they mean on a wall clock, with no time zone in sight.
//!
//! ```text
//! expression = 5 fields: minute hour day-of-month month day-of-week
//!            | 6 fields: second minute hour day-of-month month day-of-week
//!            | @yearly | @annually | @monthly | @weekly | @daily | @midnight | @hourly
//! field      = item ("," item)*
//! item       = ("*" | value | value "-" value) ("/" step)?      value "/" step = value to the end
//! ```
//!
//! Months may be written JAN–DEC and days of the week SUN–SAT (any case); Sunday is 0 or 7.
//! `?` means `*` in the two day fields. The two day fields combine as in Vixie and Debian
//! cron: when either of them starts with `*`, a day must match both; otherwise a day
//! matching either is enough (`0 0 1,15 * MON` runs on the 1st, the 15th and every Monday,
//! `0 0 */2 * MON` only on Mondays with an odd day of the month). An expression that can
//! never fire (`0 0 30 2 *`) is refused, and so are a seventh field and the Quartz
//! extensions `L`, `W` and `#`.

use chrono::{Datelike, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use std::fmt;

/// Values 0..=63 of one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Values(u64);

impl Values {
    fn has(self, value: u32) -> bool {
        value < 64 && self.0 & (1 << value) != 0
    }

    /// The smallest value at or above `from`, if any.
    fn at_or_after(self, from: u32) -> Option<u32> {
        if from >= 64 {
            return None;
        }
        let rest = self.0 >> from;
        (rest != 0).then(|| from + rest.trailing_zeros())
    }

    fn count(self) -> u32 {
        self.0.count_ones()
    }
}

/// What is wrong with an expression, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CronProblem {
    FieldCount(usize),
    UnknownMacro(String),
    Unsupported(char),
    NotAValue {
        field: &'static str,
        text: String,
    },
    OutOfRange {
        field: &'static str,
        value: u32,
        min: u32,
        max: u32,
    },
    BackwardRange {
        field: &'static str,
        text: String,
    },
    ZeroStep {
        field: &'static str,
    },
    QuestionMark {
        field: &'static str,
    },
    NeverFires,
    TooLong(usize),
}

/// The longest cron expression taken: every value of every field written out fits well
/// within it; anything longer is not a schedule someone wrote.
pub const MAX_CRON_LEN: usize = 1_024;

impl fmt::Display for CronProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CronProblem::FieldCount(n) => write!(
                f,
                "it has {n} fields: use 5 (minute hour day month weekday) or 6 (seconds first)"
            ),
            CronProblem::UnknownMacro(name) => write!(
                f,
                "unknown @{name}: use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"
            ),
            CronProblem::Unsupported(c) => write!(
                f,
                "`{c}` is not supported (no L, W or #): list the days instead"
            ),
            CronProblem::NotAValue { field, text } => {
                write!(f, "{field} field: {text:?} is not a number or a name")
            }
            CronProblem::OutOfRange {
                field,
                value,
                min,
                max,
            } => write!(f, "{field} field: {value} is outside {min}-{max}"),
            CronProblem::BackwardRange { field, text } => write!(
                f,
                "{field} field: range {text:?} runs backwards (write the two ends in order)"
            ),
            CronProblem::ZeroStep { field } => write!(f, "{field} field: a step must be at least 1"),
            CronProblem::QuestionMark { field } => {
                write!(f, "{field} field: `?` is only for the day fields")
            }
            CronProblem::NeverFires => write!(
                f,
                "it can never fire: no month it names has the day of the month it names"
            ),
            CronProblem::TooLong(len) => write!(
                f,
                "it is {len} characters long: at most {MAX_CRON_LEN}"
            ),
        }
    }
}

/// One field's name and bounds.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const SECOND: Field = Field {
    name: "second",
    min: 0,
    max: 59,
    names: &[],
};
const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
};
const DAY: Field = Field {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
};
const WEEKDAY: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
};

/// A parsed cron expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronExpr {
    seconds: Values,
    minutes: Values,
    hours: Values,
    days: Values,
    months: Values,
    /// 0 = Sunday.
    weekdays: Values,
    /// Whether a day must match both day fields (either starts with `*`), or either.
    days_and: bool,
}

impl CronExpr {
    pub fn parse(text: &str) -> Result<CronExpr, CronProblem> {
        if text.len() > MAX_CRON_LEN {
            return Err(CronProblem::TooLong(text.len()));
        }
        let text = text.trim();
        let expanded;
        let fields: Vec<&str> = match text.strip_prefix('@') {
            Some(name) => {
                expanded = match name.to_ascii_lowercase().as_str() {
                    "yearly" | "annually" => "0 0 0 1 1 *",
                    "monthly" => "0 0 0 1 * *",
                    "weekly" => "0 0 0 * * 0",
                    "daily" | "midnight" => "0 0 0 * * *",
                    "hourly" => "0 0 * * * *",
                    _ => return Err(CronProblem::UnknownMacro(name.to_string())),
                };
                expanded.split_whitespace().collect()
            }
            None => text.split_whitespace().collect(),
        };
        let (second, rest) = match fields.len() {
            5 => ("0", &fields[..]),
            6 => (fields[0], &fields[1..]),
            n => return Err(CronProblem::FieldCount(n)),
        };
        if let Some(c) = fields.iter().find_map(|f| extension_in(f)) {
            return Err(CronProblem::Unsupported(c));
        }
        let (day_text, weekday_text) = (rest[2], rest[4]);
        let starred = |t: &str| t.starts_with('*') || t.starts_with('?');
        let mut weekdays = parse_field(weekday_text, &WEEKDAY, true)?;
        if weekdays.has(7) {
            weekdays = Values((weekdays.0 & !(1 << 7)) | 1);
        }
        let expr = CronExpr {
            seconds: parse_field(second, &SECOND, false)?,
            minutes: parse_field(rest[0], &MINUTE, false)?,
            hours: parse_field(rest[1], &HOUR, false)?,
            days: parse_field(day_text, &DAY, true)?,
            months: parse_field(rest[3], &MONTH, false)?,
            weekdays,
            days_and: starred(day_text) || starred(weekday_text),
        };
        if !expr.can_fire() {
            return Err(CronProblem::NeverFires);
        }
        Ok(expr)
    }

    /// Whether every hour of the day matches: such a job runs more often than daily at
    /// fixed hours, and through a repeated (fall-back) hour it runs by real time.
    pub fn every_hour(&self) -> bool {
        self.hours.count() == 24
    }

    /// Whether some date has a matching day: with the day of the month in play, some named
    /// month must have one of the named days (29 February counts: leap years come).
    fn can_fire(&self) -> bool {
        if !self.days_and {
            // Either day field is enough, and every month has every day of the week.
            return true;
        }
        (1..=12u32).filter(|m| self.months.has(*m)).any(|m| {
            let longest = match m {
                2 => 29,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            (1..=longest).any(|d| self.days.has(d))
        })
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        let by_day = self.days.has(date.day());
        let by_weekday = self.weekdays.has(date.weekday().num_days_from_sunday());
        self.months.has(date.month())
            && if self.days_and {
                by_day && by_weekday
            } else {
                by_day || by_weekday
            }
    }

    pub fn matches(&self, at: NaiveDateTime) -> bool {
        self.day_matches(at.date())
            && self.hours.has(at.hour())
            && self.minutes.has(at.minute())
            && self.seconds.has(at.second())
    }

    /// The first matching time of day at or after `from` on one day.
    fn time_at_or_after(&self, from: NaiveTime) -> Option<NaiveTime> {
        let mut hour = self.hours.at_or_after(from.hour())?;
        loop {
            let same_hour = hour == from.hour();
            let first_minute = if same_hour { from.minute() } else { 0 };
            let mut minute = self.minutes.at_or_after(first_minute);
            while let Some(m) = minute {
                let first_second = if same_hour && m == from.minute() {
                    from.second()
                } else {
                    0
                };
                if let Some(s) = self.seconds.at_or_after(first_second) {
                    return NaiveTime::from_hms_opt(hour, m, s);
                }
                minute = self.minutes.at_or_after(m + 1);
            }
            hour = self.hours.at_or_after(hour + 1)?;
        }
    }

    /// The first matching wall-clock time at or after `from` (whole seconds), within
    /// `years` years.
    pub fn next_match(&self, from: NaiveDateTime, years: i32) -> Option<NaiveDateTime> {
        let from = from.with_nanosecond(0)?;
        let last = NaiveDate::from_ymd_opt(from.year().checked_add(years)?, 1, 1)?;
        let mut date = from.date();
        let mut start = from.time();
        while date < last {
            if !self.months.has(date.month()) {
                let (y, m) = if date.month() == 12 {
                    (date.year() + 1, 1)
                } else {
                    (date.year(), date.month() + 1)
                };
                date = NaiveDate::from_ymd_opt(y, m, 1)?;
                start = NaiveTime::MIN;
                continue;
            }
            if self.day_matches(date) {
                if let Some(time) = self.time_at_or_after(start) {
                    return Some(date.and_time(time));
                }
            }
            date = date.succ_opt()?;
            start = NaiveTime::MIN;
        }
        None
    }
}

/// The Quartz extension (`L`, `W` or `#`) a field uses, if any; names like `WED` and
/// `JUL` are names.
fn extension_in(field: &str) -> Option<char> {
    field.split([',', '-', '/']).find_map(|part| {
        let upper = part.to_ascii_uppercase();
        let is_name =
            MONTH.names.contains(&upper.as_str()) || WEEKDAY.names.contains(&upper.as_str());
        if is_name {
            return None;
        }
        upper.chars().find(|c| matches!(c, 'L' | 'W' | '#'))
    })
}

fn parse_value(text: &str, field: &Field) -> Result<u32, CronProblem> {
    let upper = text.to_ascii_uppercase();
    if let Some(i) = field.names.iter().position(|n| *n == upper) {
        // Months are named from 1, weekdays from 0.
        return Ok(i as u32 + if field.min == 1 { 1 } else { 0 });
    }
    let value: u32 = text.parse().map_err(|_| CronProblem::NotAValue {
        field: field.name,
        text: text.to_string(),
    })?;
    if value < field.min || value > field.max {
        return Err(CronProblem::OutOfRange {
            field: field.name,
            value,
            min: field.min,
            max: field.max,
        });
    }
    Ok(value)
}

fn parse_field(text: &str, field: &Field, day_field: bool) -> Result<Values, CronProblem> {
    let mut values = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step.parse().map_err(|_| CronProblem::NotAValue {
                    field: field.name,
                    text: step.to_string(),
                })?;
                if step == 0 {
                    return Err(CronProblem::ZeroStep { field: field.name });
                }
                (range, Some(step))
            }
            None => (item, None),
        };
        let (low, high) = match range {
            "*" => (field.min, field.max),
            "?" if day_field => (field.min, field.max),
            "?" => return Err(CronProblem::QuestionMark { field: field.name }),
            _ => match range.split_once('-') {
                Some((a, b)) => {
                    let (low, high) = (parse_value(a, field)?, parse_value(b, field)?);
                    if low > high {
                        return Err(CronProblem::BackwardRange {
                            field: field.name,
                            text: range.to_string(),
                        });
                    }
                    (low, high)
                }
                None => {
                    let value = parse_value(range, field)?;
                    // `5/15` runs from 5 to the end of the field.
                    (value, if step.is_some() { field.max } else { value })
                }
            },
        };
        let step = step.unwrap_or(1);
        let mut value = low;
        while value <= high {
            values |= 1 << value;
            value += step;
        }
    }
    Ok(Values(values))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    fn next(expr: &str, from: &str) -> String {
        CronExpr::parse(expr)
            .unwrap()
            .next_match(at(from), 50)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default()
    }

    #[test]
    fn an_expression_longer_than_any_schedule_is_refused_before_it_is_read() {
        let long = format!("{} * * * *", vec!["1"; 300_000].join(","));
        assert_eq!(
            CronExpr::parse(&long).err(),
            Some(CronProblem::TooLong(long.len()))
        );
        // Every minute listed one by one still fits.
        let listed = format!(
            "{} * * * *",
            (0..60).map(|m| m.to_string()).collect::<Vec<_>>().join(",")
        );
        assert!(CronExpr::parse(&listed).is_ok());
    }

    #[test]
    fn fields_lists_ranges_steps_and_names() {
        assert_eq!(
            next("*/15 * * * * *", "2026-01-01 00:00:01"),
            "2026-01-01 00:00:15"
        );
        assert_eq!(
            next("0 9-17/4 * * MON-FRI", "2026-01-03 10:00:00"),
            "2026-01-05 09:00:00"
        );
        assert_eq!(
            next("30 2 * * *", "2026-01-01 02:30:00"),
            "2026-01-01 02:30:00"
        );
        assert_eq!(
            next("30 2 * * *", "2026-01-01 02:30:01"),
            "2026-01-02 02:30:00"
        );
        assert_eq!(
            next("0 0 1 jan,Jul *", "2026-02-01 00:00:00"),
            "2026-07-01 00:00:00"
        );
        assert_eq!(
            next("5/20 * * * *", "2026-01-01 00:06:00"),
            "2026-01-01 00:25:00"
        );
        assert_eq!(
            next("0 0 * * 7", "2026-01-01 00:00:00"),
            "2026-01-04 00:00:00"
        );
        assert_eq!(
            next("0 0 29 2 *", "2026-03-01 00:00:00"),
            "2028-02-29 00:00:00"
        );
        assert_eq!(
            next("59 23 31 12 *", "2026-12-31 23:59:01"),
            "2027-12-31 23:59:00"
        );
    }

    #[test]
    fn macros_name_fixed_expressions() {
        for (name, same) in [
            ("@yearly", "0 0 1 1 *"),
            ("@annually", "0 0 1 1 *"),
            ("@monthly", "0 0 1 * *"),
            ("@weekly", "0 0 * * 0"),
            ("@daily", "0 0 * * *"),
            ("@midnight", "0 0 * * *"),
            ("@hourly", "0 * * * *"),
            ("@HOURLY", "0 * * * *"),
        ] {
            assert_eq!(CronExpr::parse(name), CronExpr::parse(same), "{name}");
        }
    }

    #[test]
    fn the_day_fields_combine_as_in_vixie_cron() {
        // Both restricted: either is enough.
        assert_eq!(
            next("0 0 1,15 * MON", "2026-01-02 00:00:00"),
            "2026-01-05 00:00:00"
        );
        assert_eq!(
            next("0 0 1,15 * MON", "2026-01-13 00:00:00"),
            "2026-01-15 00:00:00"
        );
        // One starts with `*`: both must match (an odd day that is a Monday).
        assert_eq!(
            next("0 0 */2 * MON", "2026-01-01 00:00:00"),
            "2026-01-05 00:00:00"
        );
        assert_eq!(
            next("0 0 */2 * MON", "2026-01-06 00:00:00"),
            "2026-01-19 00:00:00"
        );
        // `?` is `*`.
        assert_eq!(
            CronExpr::parse("0 0 ? * MON"),
            CronExpr::parse("0 0 * * MON")
        );
    }

    #[test]
    fn every_hour_means_the_hour_field_covers_the_day() {
        let every = |e: &str| CronExpr::parse(e).unwrap().every_hour();
        assert!(every("*/10 * * * * *"));
        assert!(every("0 * * * *"));
        assert!(every("15 0-23 * * *"));
        assert!(!every("* 2 * * *"));
        assert!(!every("0 */2 * * *"));
        assert!(!every("@daily"));
    }

    #[test]
    fn what_cannot_work_is_refused_with_the_reason() {
        let problem = |e: &str| CronExpr::parse(e).unwrap_err();
        assert_eq!(problem("0 0 30 2 *"), CronProblem::NeverFires);
        assert_eq!(problem("0 0 31 4,6,9,11 *"), CronProblem::NeverFires);
        assert_eq!(problem("0 0 0 1 1 * 2030"), CronProblem::FieldCount(7));
        assert_eq!(problem("* * * *"), CronProblem::FieldCount(4));
        assert_eq!(
            problem("@reboot"),
            CronProblem::UnknownMacro("reboot".into())
        );
        assert_eq!(problem("0 0 L * *"), CronProblem::Unsupported('L'));
        assert_eq!(problem("0 0 * * 5#2"), CronProblem::Unsupported('#'));
        assert!(matches!(
            problem("61 * * * *"),
            CronProblem::OutOfRange { value: 61, .. }
        ));
        assert!(matches!(
            problem("0 0 0 * *"),
            CronProblem::OutOfRange { value: 0, .. }
        ));
        assert!(matches!(
            problem("0 5-1 * * *"),
            CronProblem::BackwardRange { .. }
        ));
        assert!(matches!(
            problem("*/0 * * * *"),
            CronProblem::ZeroStep { .. }
        ));
        assert!(matches!(
            problem("0 ? * * *"),
            CronProblem::QuestionMark { .. }
        ));
        assert!(matches!(
            problem("0 0 * FOO *"),
            CronProblem::NotAValue { .. }
        ));
        // Names that contain the letters of the extensions are names.
        assert!(CronExpr::parse("0 0 * JUL WED").is_ok());
        // A date that exists only in leap years is not "never".
        assert!(CronExpr::parse("0 0 29 2 *").is_ok());
        // With the weekday deciding too (both restricted), the day field cannot block it.
        assert!(CronExpr::parse("0 0 30 2 MON").is_ok());
        assert!(problem("0 0 30 2 *").to_string().contains("never fire"));
    }
}
