//! The runs CSV export.

use super::api::{runs_matching, RunsQuery};
use super::error::ApiError;
use super::AppState;
use crate::config::Role;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

pub(super) fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

pub(super) fn rfc3339(ms: Option<u64>) -> String {
    ms.map(|ms| {
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
            .to_string()
    })
    .unwrap_or_default()
}

pub(super) async fn runs_csv(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    let found = runs_matching(&app, &caller, query).await?;
    let (runs, resume_before) = (found.runs, found.resume_before);
    let mut csv = String::from(
        "id,job,pool,state,worker,attempt,scheduled_at,created_at,started_at,finished_at,duration_ms,exit_code,outcome\n",
    );
    for run in runs {
        let exit_code = match &run.outcome {
            Some(jobcast_protocol::Outcome::Exited { code }) => code.to_string(),
            _ => String::new(),
        };
        let fields = [
            run.id.clone(),
            run.job.clone(),
            run.pool.clone(),
            run.state.to_string(),
            run.worker.clone().unwrap_or_default(),
            run.attempt.to_string(),
            rfc3339(Some(run.scheduled_at_ms)),
            rfc3339(Some(run.created_at_ms)),
            rfc3339(run.started_at_ms),
            rfc3339(run.finished_at_ms),
            run.duration_ms().map(|d| d.to_string()).unwrap_or_default(),
            exit_code,
            run.outcome
                .as_ref()
                .map(|o| o.describe())
                .unwrap_or_default(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        csv.push_str(&line.join(","));
        csv.push('\n');
    }
    let response = (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"runs.csv\"",
            ),
        ],
        csv,
    )
        .into_response();
    Ok(super::api::with_resume(response, resume_before))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
