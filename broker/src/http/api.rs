//! The JSON endpoints under `/api/v1/`: each turns an HTTP request into a core request.

use super::auth::Caller;
use super::error::ApiError;
use super::{AppState, BrokerRole};
use crate::config::Role;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use jobcast_protocol::{
    AdminRequest, EnableTarget, KillOutcome, Reply, Resolution, RunFilter, RunRecord, RunState,
    SeriesOf,
};
use serde::Deserialize;
use serde_json::{json, Value};

/// For load balancers: 200 from the broker that acts (alone, or the leader), 503 from a
/// standby, which names the leader.
pub(super) async fn healthz(State(app): State<AppState>) -> Response {
    let role = app.role.borrow().clone();
    match role {
        BrokerRole::Alone => Json(json!({ "status": "ok", "role": "alone" })).into_response(),
        BrokerRole::Leader { epoch } => {
            Json(json!({ "status": "ok", "role": "leader", "epoch": epoch })).into_response()
        }
        BrokerRole::Standby { leader } => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "standby", "role": "standby", "leader": leader })),
        )
            .into_response(),
    }
}

pub(super) async fn status(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    match app.core.call(&caller, AdminRequest::Status).await? {
        Reply::Status(report) => Ok(Json(json!(report))),
        _ => Err(ApiError::unavailable()),
    }
}

/// Prometheus metrics (a viewer token: a scrape config's `authorization`).
pub(super) async fn metrics(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    let role = app.role.borrow().clone();
    if let BrokerRole::Standby { leader } = role {
        // Scraped like the leader, so that a dashboard sees every broker's part.
        let text = crate::metrics::encode_standby(leader.as_ref());
        return Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response());
    }
    let Reply::Status(report) = app.core.call(&caller, AdminRequest::Status).await? else {
        return Err(ApiError::unavailable());
    };
    let data_dir = app.data_dir.clone();
    let store_bytes = tokio::task::spawn_blocking(move || {
        crate::metrics::directory_size(&data_dir)
            .map_err(|e| tracing::debug!(error = %e, "cannot measure the store"))
            .ok()
    })
    .await
    .ok()
    .flatten();
    let text = app
        .metrics
        .encode(&report, store_bytes, !caller.scope().is_limited());
    Ok(([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], text).into_response())
}

pub(super) async fn workers(
    State(app): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    match app.core.call(&caller, AdminRequest::Status).await? {
        Reply::Status(report) => Ok(Json(json!(report.workers))),
        _ => Err(ApiError::unavailable()),
    }
}

/// A count a query asks for: `default` when not given, else 1 to `max`.
fn counted(name: &str, asked: Option<u32>, default: u32, max: u32) -> Result<u32, ApiError> {
    match asked.unwrap_or(default) {
        n if (1..=max).contains(&n) => Ok(n),
        n => Err(ApiError::bad_request(format!(
            "{name} must be 1 to {max}, not {n}"
        ))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SeriesQuery {
    /// a job's counts
    job: Option<String>,
    /// a pool's counts
    pool: Option<String>,
    /// minute (the last day, default) or hour (the last 30 days)
    resolution: Option<String>,
    /// how many buckets, newest last (default 60)
    points: Option<u32>,
}

/// Counts over time, of all runs, a job's (`?job=`) or a pool's (`?pool=`).
pub(super) async fn series(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<SeriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let of = match (query.job, query.pool) {
        (None, None) => SeriesOf::All,
        (Some(job), None) => SeriesOf::Job(job),
        (None, Some(pool)) => SeriesOf::Pool(pool),
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("ask for a job or a pool, not both"))
        }
    };
    let resolution = match query.resolution.as_deref().unwrap_or("minute") {
        "minute" => Resolution::Minute,
        "hour" => Resolution::Hour,
        other => {
            return Err(ApiError::bad_request(format!(
                "resolution is minute or hour, not {other:?}"
            )))
        }
    };
    let points = counted("points", query.points, 60, 1_440)?;
    let request = AdminRequest::Series {
        of,
        resolution,
        points,
    };
    match app.core.call(&caller, request).await? {
        Reply::Series {
            step_ms,
            points,
            wait_p50_ms,
            wait_p99_ms,
        } => Ok(Json(json!({
            "step_ms": step_ms,
            "points": points,
            "wait_p50_ms": wait_p50_ms,
            "wait_p99_ms": wait_p99_ms,
        }))),
        _ => Err(ApiError::unavailable()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpcomingQuery {
    /// at most this many (default 20, at most 200)
    limit: Option<u32>,
}

/// The next fires across all jobs, soonest first.
pub(super) async fn upcoming(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<UpcomingQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = counted("limit", query.limit, 20, 200)?;
    match app
        .core
        .call(&caller, AdminRequest::Upcoming { limit })
        .await?
    {
        Reply::Upcoming { fires } => Ok(Json(json!({ "fires": fires }))),
        _ => Err(ApiError::unavailable()),
    }
}

/// The alerts standing now and their history, newest first (`?before=&limit=`, as the
/// audit log pages).
pub(super) async fn alerts(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let request = AdminRequest::Alerts {
        before: query.before,
        limit: query.checked_limit()?,
    };
    match app.core.call(&caller, request).await? {
        Reply::Alerts { current, history } => {
            Ok(Json(json!({ "current": current, "history": history })))
        }
        _ => Err(ApiError::unavailable()),
    }
}

/// Marks a standing alert as seen.
pub(super) async fn ack_alert(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Operator)?;
    match app
        .core
        .call(&caller, AdminRequest::AckAlert { id })
        .await?
    {
        Reply::Ack => Ok(Json(json!({ "acknowledged": true }))),
        _ => Err(ApiError::unavailable()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    /// entries with a sequence number below this (the next page)
    before: Option<u64>,
    /// at most this many (default 100, at most 1,000)
    limit: Option<u32>,
}

impl AuditQuery {
    /// The page size asked for: 100 unless said, 1 to 1,000.
    fn checked_limit(&self) -> Result<u32, ApiError> {
        counted("limit", self.limit, 100, 1_000)
    }
}

/// The audit log, newest first: what operators changed, by whom and when.
pub(super) async fn audit(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let request = AdminRequest::Audit {
        before: query.before,
        limit: query.checked_limit()?,
    };
    match app.core.call(&caller, request).await? {
        Reply::Audit { entries } => Ok(Json(json!({ "entries": entries }))),
        _ => Err(ApiError::unavailable()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct JobsQuery {
    /// only jobs with this tag
    tag: Option<String>,
}

pub(super) async fn jobs(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<JobsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    match app.core.call(&caller, AdminRequest::ListJobs).await? {
        Reply::Jobs { mut jobs } => {
            if let Some(tag) = &query.tag {
                jobs.retain(|job| job.spec.tags.contains(tag));
            }
            Ok(Json(caller.view(json!(jobs))))
        }
        _ => Err(ApiError::unavailable()),
    }
}

/// Fire times a job's page shows.
const NEXT_FIRES_SHOWN: u32 = 5;

/// One job: its view, and when it fires next (in its schedule's zone).
pub(super) async fn job_detail(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    let request = AdminRequest::NextFires {
        job: name,
        count: NEXT_FIRES_SHOWN,
    };
    let Reply::NextFires { job, times_ms } = app.core.call(&caller, request).await? else {
        return Err(ApiError::unavailable());
    };
    let timezone = job.spec.schedule.timezone.clone();
    Ok(Json(caller.view(json!({
        "job": job,
        "next_fires_ms": times_ms,
        "timezone": timezone,
    }))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunsQuery {
    state: Option<String>,
    job: Option<String>,
    worker: Option<String>,
    /// ms since the epoch
    since: Option<u64>,
    until: Option<u64>,
    /// at most the core's listing limit, which the core checks
    limit: Option<std::num::NonZeroU32>,
    /// paging: the `seq` of the last run of the previous page
    before: Option<u64>,
    /// paging from the oldest: runs after this `seq` (0: the oldest), oldest first
    after: Option<u64>,
    /// text the run's id, job, worker, state or result contains (any case)
    text: Option<String>,
    /// runs this run started (retries, chain)
    linked_to: Option<String>,
    /// text the run's stored output contains (any case)
    output: Option<String>,
}

/// Names the `before` to go on with when a listing stopped looking early.
pub(super) const RESUME_HEADER: &str = "jobcast-resume-before";

impl RunsQuery {
    pub(super) fn filter(self) -> Result<RunFilter, ApiError> {
        let state = match self.state {
            Some(s) => Some(
                s.parse::<RunState>()
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
            ),
            None => None,
        };
        Ok(RunFilter {
            state,
            job: self.job,
            // None given is 0 on the wire: the core's default.
            limit: self.limit.map_or(0, u32::from),
            worker: self.worker,
            since_ms: self.since,
            until_ms: self.until,
            before_seq: self.before,
            after_seq: self.after,
            text: self.text.filter(|t| !t.is_empty()),
            linked_to: self.linked_to,
            // The caller's teams, set by the core from who asks.
            teams: None,
            output: self.output.filter(|t| !t.is_empty()),
        })
    }
}

/// What a listing found: its runs, the `before` to go on with if the broker stopped
/// looking early (sent as the [`RESUME_HEADER`] header), and how many match in all when
/// the broker knows ([`TOTAL_HEADER`]).
pub(super) struct Matching {
    pub runs: Vec<RunRecord>,
    pub resume_before: Option<u64>,
    pub total: Option<u64>,
}

/// Says how many stored runs match in all, when the broker knows without looking.
pub(super) const TOTAL_HEADER: &str = "jobcast-total";

pub(super) async fn runs_matching(
    app: &AppState,
    caller: &Caller,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Matching, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    match app
        .core
        .call(caller, AdminRequest::ListRuns(query.filter()?))
        .await?
    {
        Reply::Runs {
            runs,
            resume_before,
            total,
        } => Ok(Matching {
            runs,
            resume_before,
            total,
        }),
        _ => Err(ApiError::unavailable()),
    }
}

/// `response` with the [`RESUME_HEADER`], when there is a place to go on from.
pub(super) fn with_resume(mut response: Response, resume_before: Option<u64>) -> Response {
    if let Some(seq) = resume_before {
        response
            .headers_mut()
            .insert(RESUME_HEADER, axum::http::HeaderValue::from(seq));
    }
    response
}

pub(super) async fn list_runs(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    let found = runs_matching(&app, &caller, query).await?;
    let mut response = with_resume(
        Json(caller.view(json!(found.runs))).into_response(),
        found.resume_before,
    );
    if let Some(total) = found.total {
        response
            .headers_mut()
            .insert(TOTAL_HEADER, header::HeaderValue::from(total));
    }
    Ok(response)
}

/// A run and its stored log (as capped when stored), as `caller` may see them.
async fn stored_log(
    app: &AppState,
    caller: &Caller,
    id: String,
) -> Result<(RunRecord, Vec<u8>, u64), ApiError> {
    let request = AdminRequest::GetLog {
        run: id,
        offset: None,
        wait_ms: None,
    };
    match app.core.call(caller, request).await? {
        Reply::Log {
            run,
            data,
            next_offset,
            ..
        } => Ok((*run, data, next_offset)),
        _ => Err(ApiError::unavailable()),
    }
}

pub(super) async fn run_detail(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    let (run, data, next_offset) = stored_log(&app, &caller, id).await?;
    Ok(Json(caller.view(json!({
        "run": run,
        "log": String::from_utf8_lossy(&data),
        "next_offset": next_offset,
    }))))
}

/// The stored log of a run, whole (as capped when stored), as a file to save.
pub(super) async fn run_log(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    let (run, data, _) = stored_log(&app, &caller, id).await?;
    let disposition = format!("attachment; filename=\"{}.log\"", run.id);
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "text/plain; charset=utf-8".to_string(),
            ),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        data,
    )
        .into_response())
}

pub(super) async fn kill(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Operator)?;
    match app
        .core
        .call(
            &caller,
            AdminRequest::Kill {
                selectors: vec![id],
            },
        )
        .await?
    {
        Reply::KillResult { mut outcomes } => match outcomes.pop() {
            Some(KillOutcome::NotFound { selector }) => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no run matches {selector:?}"),
            )),
            Some(KillOutcome::Ambiguous {
                selector,
                candidates,
            }) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "ambiguous",
                format!(
                    "{selector:?} matches several runs: {}",
                    candidates.join(", ")
                ),
            )),
            Some(outcome) => Ok(Json(json!(outcome))),
            None => Err(ApiError::unavailable()),
        },
        _ => Err(ApiError::unavailable()),
    }
}

pub(super) async fn enqueued(
    app: &AppState,
    caller: &Caller,
    request: AdminRequest,
) -> Result<Response, ApiError> {
    match app.core.call(caller, request).await? {
        Reply::Enqueued { run } => {
            let location = format!("/api/v1/runs/{}", run.id);
            Ok((
                StatusCode::CREATED,
                [(axum::http::header::LOCATION, location)],
                Json(json!(run)),
            )
                .into_response())
        }
        _ => Err(ApiError::unavailable()),
    }
}

pub(super) async fn retry(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = app.authorize(&headers, Role::Operator)?;
    enqueued(&app, &caller, AdminRequest::Retry { run: id }).await
}

/// The body of a bulk action: the runs it acts on, by id.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BulkBody {
    runs: Vec<String>,
}

impl BulkBody {
    fn parse(body: &[u8]) -> Result<Vec<String>, ApiError> {
        serde_json::from_slice::<BulkBody>(body)
            .map(|b| b.runs)
            .map_err(|e| {
                ApiError::bad_request(format!("the body is not {{\"runs\": [run ids]}}: {e}"))
            })
    }
}

/// Retries several finished runs: `{"runs": [ids]}` (at most 1,000); answers with the
/// runs made and those refused (why), 200 even if some were refused.
pub(super) async fn bulk_retry(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Operator)?;
    let runs = BulkBody::parse(&body)?;
    match app
        .core
        .call(&caller, AdminRequest::RetryMany { runs })
        .await?
    {
        Reply::RetriedMany { retried, refused } => {
            Ok(Json(json!({ "retried": retried, "refused": refused })))
        }
        _ => Err(ApiError::unavailable()),
    }
}

/// Kills (or cancels, when queued) several runs: `{"runs": [ids]}` (at most 1,000);
/// answers with each run's outcome.
pub(super) async fn bulk_kill(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Operator)?;
    let selectors = BulkBody::parse(&body)?;
    match app
        .core
        .call(&caller, AdminRequest::Kill { selectors })
        .await?
    {
        Reply::KillResult { outcomes } => Ok(Json(json!({ "outcomes": outcomes }))),
        _ => Err(ApiError::unavailable()),
    }
}

/// An enqueue's optional JSON body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnqueueBody {
    /// Parameter values: text, numbers and booleans (taken as their text).
    #[serde(default)]
    params: std::collections::BTreeMap<String, Value>,
    /// A number, or high, normal or low.
    priority: Option<Value>,
}

impl EnqueueBody {
    /// The parameter values and priority of an enqueue's body (none when it is empty).
    fn parse(body: &[u8]) -> Result<(jobcast_protocol::params::Params, Option<i32>), ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Default::default());
        }
        let body: EnqueueBody = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the body is not {{\"params\": {{…}}, \"priority\": …}}: {e}"
            ))
        })?;
        let priority = match body.priority {
            None => None,
            Some(Value::String(name)) => Some(
                jobcast_protocol::job::parse_priority(&name)
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
            ),
            Some(Value::Number(n)) => Some(
                n.as_i64()
                    .and_then(|n| i32::try_from(n).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("priority {n} is not a whole number"))
                    })?,
            ),
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "priority {other} is not a number, high, normal or low"
                )))
            }
        };
        let params = body
            .params
            .into_iter()
            .map(|(name, value)| match value {
                Value::String(text) => Ok((name, text)),
                Value::Number(n) => Ok((name, n.to_string())),
                Value::Bool(b) => Ok((name, b.to_string())),
                _ => Err(ApiError::bad_request(format!(
                    "parameter {name:?}: give text, a number or true/false"
                ))),
            })
            .collect::<Result<_, _>>()?;
        Ok((params, priority))
    }
}

pub(super) async fn enqueue(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let caller = app.authorize(&headers, Role::Operator)?;
    let (params, priority) = EnqueueBody::parse(&body)?;
    // The usual header for it: a client that retries sends the same value, and gets the
    // run the first request created.
    let key = match headers.get("idempotency-key") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?
                .to_string(),
        ),
        None => None,
    };
    enqueued(
        &app,
        &caller,
        AdminRequest::Enqueue {
            job: name,
            key,
            params,
            priority,
        },
    )
    .await
}

/// Enables or disables a job or a pool; answers with what it did.
async fn set_enabled(
    app: &AppState,
    caller: &Caller,
    target: EnableTarget,
    enabled: bool,
) -> Result<Json<Value>, ApiError> {
    let shown = match &target {
        EnableTarget::Job(job) => json!({ "job": job, "enabled": enabled }),
        EnableTarget::Pool(pool) => json!({ "pool": pool, "enabled": enabled }),
    };
    let request = AdminRequest::SetEnabled { target, enabled };
    app.core.call(caller, request).await?;
    Ok(Json(shown))
}

pub(super) async fn enable(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Operator)?;
    set_enabled(&app, &caller, EnableTarget::Job(name), true).await
}

pub(super) async fn disable(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Operator)?;
    set_enabled(&app, &caller, EnableTarget::Job(name), false).await
}

/// Resumes a pool: its jobs' ticks start runs again and its queue is handed out.
pub(super) async fn enable_pool(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(pool): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Operator)?;
    set_enabled(&app, &caller, EnableTarget::Pool(pool), true).await
}

/// Pauses a pool: its jobs' ticks are skipped and nothing of its queue is handed out.
pub(super) async fn disable_pool(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(pool): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Operator)?;
    set_enabled(&app, &caller, EnableTarget::Pool(pool), false).await
}

pub(super) async fn drain(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Operator)?;
    app.core
        .call(&caller, AdminRequest::Drain { worker: id.clone() })
        .await?;
    Ok(Json(json!({ "draining": id })))
}
