//! Human output shared by several commands: times, schedules, run tables.

use crate::table::Table;
use jobcast_protocol::RunRecord;
use std::time::{Duration, UNIX_EPOCH};

pub(crate) fn describe_schedule(spec: &jobcast_protocol::JobSpec) -> String {
    let s = &spec.schedule;
    let mut text = if !s.cron.is_empty() {
        format!("cron {}", s.cron.join(" | "))
    } else if let Some(ms) = s.every_ms {
        format!(
            "every {}",
            humantime::format_duration(Duration::from_millis(ms))
        )
    } else if let Some(at) = &s.at {
        format!("at {at}")
    } else {
        "manual".into()
    };
    if let Some(tz) = &s.timezone {
        text.push_str(&format!(" ({tz})"));
    }
    text
}

pub(crate) fn format_time(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// How a run ended, in words; a result its worker reported after the run was given up as
/// lost is shown beside it.
fn result(run: &RunRecord) -> String {
    let ended = run
        .outcome
        .as_ref()
        .map(|o| o.describe())
        .or_else(|| run.history.last().map(|t| t.cause.clone()))
        .unwrap_or_default();
    match &run.late_result {
        Some(late) => format!(
            "{ended}; reported late ({}): {}",
            format_time(late.reported_at_ms),
            late.outcome.describe()
        ),
        None => ended,
    }
}

pub(crate) fn print_runs(runs: &[RunRecord]) {
    let mut table = Table::new([
        "RUN", "JOB", "STATE", "WORKER", "CREATED", "DURATION", "RESULT",
    ]);
    for run in runs {
        table.row([
            run.id.clone(),
            run.job.clone(),
            run.state.to_string(),
            run.worker.clone().unwrap_or_else(|| "-".into()),
            format_time(run.created_at_ms),
            run.duration_ms()
                .map(|ms| humantime::format_duration(Duration::from_millis(ms)).to_string())
                .unwrap_or_else(|| "-".into()),
            result(run),
        ]);
    }
    table.print();
}
