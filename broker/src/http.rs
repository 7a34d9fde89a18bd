//! The JSON API over HTTP: `/api/v1/…`, `/healthz`, and the runs CSV export.
//!
//! Every request is answered by the core through the same requests `jobcastctl` sends
//! (see [`CoreHandle`]), so the API and the command line share their semantics and their
//! errors. Access is by bearer token, each with a role: `viewer` reads, `operator` also
//! acts (enqueue, kill, retry, enable/disable, drain), `admin` may do everything.

use crate::config::{ApiToken, Role};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use jobcast_protocol::{
    AdminRequest, EnableTarget, ErrorCode, KillOutcome, Reply, RunFilter, RunRecord, RunState,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Request bodies are small (actions take no body); anything bigger is refused.
const MAX_BODY: usize = 64 << 10;
const CORE_TIMEOUT: Duration = Duration::from_secs(10);

/// A request for the core from inside the broker, with where to send its reply.
pub struct InternalRequest {
    pub request: AdminRequest,
    /// Who asked, as the run history records it (`token alice`).
    pub actor: String,
    pub reply: oneshot::Sender<Reply>,
}

/// Sends requests to the core loop and waits for the replies.
#[derive(Clone)]
pub struct CoreHandle {
    sender: mpsc::Sender<InternalRequest>,
}

impl CoreHandle {
    pub fn new(sender: mpsc::Sender<InternalRequest>) -> Self {
        CoreHandle { sender }
    }

    /// Sends a request on behalf of `caller`, whose token name the core records.
    async fn call(&self, caller: &Caller, request: AdminRequest) -> Result<Reply, ApiError> {
        let (reply, answer) = oneshot::channel();
        let actor = format!("token {}", caller.name);
        self.sender
            .send(InternalRequest {
                request,
                actor,
                reply,
            })
            .await
            .map_err(|_| ApiError::unavailable())?;
        match tokio::time::timeout(CORE_TIMEOUT, answer).await {
            Ok(Ok(Reply::Error { code, message })) => Err(ApiError::from_core(code, message)),
            Ok(Ok(reply)) => Ok(reply),
            _ => Err(ApiError::unavailable()),
        }
    }
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the broker is not answering",
        )
    }

    fn from_core(code: ErrorCode, message: String) -> Self {
        let (status, name) = match code {
            ErrorCode::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ErrorCode::Ambiguous => (StatusCode::CONFLICT, "ambiguous"),
            ErrorCode::BadRequest => (StatusCode::BAD_REQUEST, "bad_request"),
            ErrorCode::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self::new(status, name, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({ "error": self.message, "code": self.code })),
        )
            .into_response()
    }
}

#[derive(Clone)]
struct AppState {
    core: CoreHandle,
    tokens: Arc<Vec<ApiToken>>,
    live: LiveFeed,
    /// Browser origins allowed on the live feed (scheme://host[:port]).
    origins: Arc<Vec<String>>,
}

/// Who is asking: the name and role of their token.
struct Caller {
    name: String,
    role: Role,
}

impl Caller {
    /// What this caller may see of `value`: viewers get env variable names without
    /// their values (they may hold passwords).
    fn view(&self, mut value: Value) -> Value {
        if self.role < Role::Operator {
            hide_env_values(&mut value);
        }
        value
    }
}

/// Replaces the value of every variable under any `env` object with a placeholder.
pub fn hide_env_values(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                match inner {
                    Value::Object(env) if key == "env" => {
                        for variable in env.values_mut() {
                            *variable = Value::String(HIDDEN.to_string());
                        }
                    }
                    _ => hide_env_values(inner),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(hide_env_values),
        _ => {}
    }
}

/// What viewers see instead of an env value.
pub const HIDDEN: &str = "(hidden)";

/// Messages for WebSocket clients (JSON text), fanned out from the core loop.
#[derive(Clone)]
pub struct LiveFeed {
    sender: tokio::sync::broadcast::Sender<Arc<LiveMessage>>,
}

/// One change for live views. Log output is sent only to clients following the run.
#[derive(Debug)]
pub struct LiveMessage {
    pub json: String,
    /// What viewers get instead, when it differs (env values hidden).
    pub for_viewers: Option<String>,
    pub log_of: Option<String>,
}

/// Messages a client may fall behind by before it is told to resync.
pub const LIVE_QUEUE: usize = 1024;
/// A client that takes longer than this to accept one message is not reading (its TCP
/// window is shut): it is dropped, and the page starts again from a snapshot when it
/// reconnects. Nothing the broker does waits on it meanwhile.
const STUCK_AFTER: Duration = Duration::from_secs(2);

impl LiveFeed {
    pub fn new() -> Self {
        let (sender, _) = tokio::sync::broadcast::channel(LIVE_QUEUE);
        LiveFeed { sender }
    }

    pub fn has_clients(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Turns a batch's changes into messages for the clients.
    pub fn publish(&self, changes: crate::core::ChangeSet) {
        if !self.has_clients() {
            return;
        }
        let send = |json: Value, log_of: Option<String>| {
            let mut hidden = json.clone();
            hide_env_values(&mut hidden);
            let for_viewers = (hidden != json).then(|| hidden.to_string());
            let _ = self.sender.send(Arc::new(LiveMessage {
                json: json.to_string(),
                for_viewers,
                log_of,
            }));
        };
        if !changes.runs.is_empty() {
            let runs: Vec<Value> = changes.runs.iter().map(run_summary).collect();
            send(json!({ "type": "runs", "runs": runs }), None);
        }
        if let Some(workers) = changes.workers {
            send(json!({ "type": "workers", "workers": workers }), None);
        }
        if let Some(jobs) = changes.jobs {
            send(json!({ "type": "jobs", "jobs": jobs }), None);
        }
        for (run_id, offset, data) in changes.logs {
            send(
                json!({ "type": "log", "run_id": run_id, "offset": offset, "data": String::from_utf8_lossy(&data) }),
                Some(run_id),
            );
        }
    }
}

impl Default for LiveFeed {
    fn default() -> Self {
        Self::new()
    }
}

/// What a live view shows of a run (no script, no history: those come with the run view).
pub fn run_summary(run: &RunRecord) -> Value {
    json!({
        "id": run.id,
        "seq": run.seq,
        "job": run.job,
        "pool": run.pool,
        "state": run.state,
        "worker": run.worker,
        "attempt": run.attempt,
        "created_at_ms": run.created_at_ms,
        "scheduled_at_ms": run.scheduled_at_ms,
        "started_at_ms": run.started_at_ms,
        "finished_at_ms": run.finished_at_ms,
        "duration_ms": run.duration_ms(),
        "ended_at_us": run.ended_at_us,
        "outcome": run.outcome.as_ref().map(|o| o.describe()),
        "exit_code": match run.outcome { Some(jobcast_protocol::Outcome::Exited { code }) => Some(code), _ => None },
    })
}

/// Compares without an early exit, so the time taken does not tell how much matched.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AppState {
    /// The caller behind the request's bearer token, if its role is at least `needed`.
    fn authorize(&self, headers: &HeaderMap, needed: Role) -> Result<Caller, ApiError> {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "send a token: Authorization: Bearer <token>",
                )
            })?;
        let (name, role) = self
            .tokens
            .iter()
            .fold(None, |found, t| {
                if same_secret(t.token.as_bytes(), presented.as_bytes()) {
                    Some((t.name.clone(), t.role))
                } else {
                    found
                }
            })
            .ok_or_else(|| {
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token")
            })?;
        if role < needed {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this needs the {} role; the token has {}",
                    needed.as_str(),
                    role.as_str()
                ),
            ));
        }
        Ok(Caller { name, role })
    }
}

pub fn router(
    core: CoreHandle,
    tokens: Vec<ApiToken>,
    live: LiveFeed,
    origins: Vec<String>,
) -> Router {
    let state = AppState {
        core,
        tokens: Arc::new(tokens),
        live,
        origins: Arc::new(origins),
    };
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/healthz", get(healthz))
        .route("/api/v1/status", get(status))
        .route("/api/v1/runs", get(list_runs))
        .route("/api/v1/runs.csv", get(runs_csv))
        .route("/api/v1/runs/{id}", get(run_detail))
        .route("/api/v1/runs/{id}/kill", post(kill))
        .route("/api/v1/runs/{id}/retry", post(retry))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/jobs/{name}/enqueue", post(enqueue))
        .route("/api/v1/jobs/{name}/enable", post(enable))
        .route("/api/v1/jobs/{name}/disable", post(disable))
        .route("/api/v1/workers", get(workers))
        .route("/api/v1/workers/{id}/drain", post(drain))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/live", get(live_feed))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(refuse_large_bodies))
        .with_state(state)
}

/// Refuses a request whose declared body is over the limit, whether or not its handler
/// would read it.
async fn refuse_large_bodies(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request bodies are limited to {MAX_BODY} bytes"),
        )
        .into_response();
    }
    next.run(request).await
}

// The dashboard, built into the binary: no build step, nothing fetched from elsewhere.
const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

async fn whoami(State(app): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    Ok(Json(
        json!({ "role": caller.role.as_str(), "name": caller.name }),
    ))
}

#[derive(Debug, Deserialize)]
struct LiveQuery {
    token: Option<String>,
}

/// The WebSocket feed: a snapshot, then changes. The token comes as `?token=` (browsers
/// cannot set headers on WebSockets). A browser always sends its page's Origin, which
/// must be one of the configured public origins, compared whole (scheme, host and port):
/// never the request's own Host header, which a DNS-rebinding page controls.
async fn live_feed(
    State(app): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<LiveQuery>,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let mut auth = HeaderMap::new();
    if let Some(token) = &query.token {
        if let Ok(value) = format!("Bearer {token}").parse() {
            auth.insert(header::AUTHORIZATION, value);
        }
    }
    let caller = app.authorize(&auth, Role::Viewer)?;
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("").trim_end_matches('/');
        if !app.origins.iter().any(|allowed| allowed == origin) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "origin {origin:?} is not allowed (set [http] public_origins in the broker config)"
                ),
            ));
        }
    }
    let receiver = app.live.sender.subscribe();
    let snapshot = snapshot(&app, &caller).await?;
    let viewer = caller.role < Role::Operator;
    Ok(ws.on_upgrade(move |socket| serve_live(socket, receiver, snapshot, viewer)))
}

async fn snapshot(app: &AppState, caller: &Caller) -> Result<String, ApiError> {
    let Reply::Status(status) = app.core.call(caller, AdminRequest::Status).await? else {
        return Err(ApiError::unavailable());
    };
    let Reply::Jobs { jobs } = app.core.call(caller, AdminRequest::ListJobs).await? else {
        return Err(ApiError::unavailable());
    };
    let Reply::Runs { runs } = app
        .core
        .call(
            caller,
            AdminRequest::ListRuns(RunFilter {
                limit: 200,
                ..Default::default()
            }),
        )
        .await?
    else {
        return Err(ApiError::unavailable());
    };
    let runs: Vec<Value> = runs.iter().map(run_summary).collect();
    let snapshot = json!({ "type": "snapshot", "role": caller.role.as_str(), "status": status, "jobs": jobs, "runs": runs });
    Ok(caller.view(snapshot).to_string())
}

async fn serve_live(
    mut socket: axum::extract::ws::WebSocket,
    mut feed: tokio::sync::broadcast::Receiver<Arc<LiveMessage>>,
    snapshot: String,
    viewer: bool,
) {
    use axum::extract::ws::Message;
    use tokio::sync::broadcast::error::RecvError;
    async fn send(socket: &mut axum::extract::ws::WebSocket, text: String) -> bool {
        matches!(
            tokio::time::timeout(STUCK_AFTER, socket.send(Message::Text(text.into()))).await,
            Ok(Ok(()))
        )
    }
    if !send(&mut socket, snapshot).await {
        return;
    }
    let mut following: std::collections::HashSet<String> = std::collections::HashSet::new();
    loop {
        tokio::select! {
            message = feed.recv() => match message {
                Ok(message) => {
                    if message.log_of.as_ref().is_some_and(|run| !following.contains(run)) {
                        continue;
                    }
                    let text = match &message.for_viewers {
                        Some(hidden) if viewer => hidden,
                        _ => &message.json,
                    };
                    if !send(&mut socket, text.clone()).await {
                        tracing::info!("dropping a live client that is not reading");
                        return;
                    }
                }
                Err(RecvError::Lagged(_)) => {
                    // Too slow to keep up: say so and let the client start again from a
                    // snapshot, rather than let its backlog hold anything up.
                    send(&mut socket, json!({ "type": "resync" }).to_string()).await;
                    return;
                }
                Err(RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    if let Ok(command) = serde_json::from_str::<Value>(&text) {
                        if let Some(run) = command["follow"].as_str() {
                            following.insert(run.to_string());
                        }
                        if let Some(run) = command["unfollow"].as_str() {
                            following.remove(run);
                        }
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}

async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn status(State(app): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    match app.core.call(&caller, AdminRequest::Status).await? {
        Reply::Status(report) => Ok(Json(json!(report))),
        _ => Err(ApiError::unavailable()),
    }
}

async fn workers(State(app): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    match app.core.call(&caller, AdminRequest::Status).await? {
        Reply::Status(report) => Ok(Json(json!(report.workers))),
        _ => Err(ApiError::unavailable()),
    }
}

async fn jobs(State(app): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    match app.core.call(&caller, AdminRequest::ListJobs).await? {
        Reply::Jobs { jobs } => Ok(Json(caller.view(json!(jobs)))),
        _ => Err(ApiError::unavailable()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    state: Option<String>,
    job: Option<String>,
    worker: Option<String>,
    /// ms since the epoch
    since: Option<u64>,
    until: Option<u64>,
    limit: Option<u32>,
    /// paging: the `seq` of the last run of the previous page
    before: Option<u64>,
}

impl RunsQuery {
    fn filter(self) -> Result<RunFilter, ApiError> {
        let state = match self.state {
            Some(s) => Some(
                s.parse::<RunState>()
                    .map_err(|e| ApiError::bad_request(e.to_string()))?,
            ),
            None => None,
        };
        let limit = self.limit.unwrap_or(50);
        if !(1..=crate::core::MAX_LIST).contains(&limit) {
            return Err(ApiError::bad_request(format!(
                "limit must be between 1 and {}",
                crate::core::MAX_LIST
            )));
        }
        Ok(RunFilter {
            state,
            job: self.job,
            limit,
            worker: self.worker,
            since_ms: self.since,
            until_ms: self.until,
            before_seq: self.before,
        })
    }
}

async fn runs_matching(
    app: &AppState,
    caller: &Caller,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Vec<RunRecord>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    match app
        .core
        .call(caller, AdminRequest::ListRuns(query.filter()?))
        .await?
    {
        Reply::Runs { runs } => Ok(runs),
        _ => Err(ApiError::unavailable()),
    }
}

async fn list_runs(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    let runs = runs_matching(&app, &caller, query).await?;
    Ok(Json(caller.view(json!(runs))))
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

fn rfc3339(ms: Option<u64>) -> String {
    ms.map(|ms| {
        humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms))
            .to_string()
    })
    .unwrap_or_default()
}

async fn runs_csv(
    State(app): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<RunsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    let runs = runs_matching(&app, &caller, query).await?;
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
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"runs.csv\"",
            ),
        ],
        csv,
    )
        .into_response())
}

async fn run_detail(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Viewer)?;
    match app
        .core
        .call(
            &caller,
            AdminRequest::GetLog {
                run: id,
                offset: None,
            },
        )
        .await?
    {
        Reply::Log {
            run,
            data,
            next_offset,
        } => Ok(Json(caller.view(json!({
            "run": run,
            "log": String::from_utf8_lossy(&data),
            "next_offset": next_offset,
        })))),
        _ => Err(ApiError::unavailable()),
    }
}

async fn kill(
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

async fn enqueued(
    app: &AppState,
    caller: &Caller,
    request: AdminRequest,
) -> Result<Response, ApiError> {
    match app.core.call(caller, request).await? {
        Reply::Enqueued { run } => Ok((StatusCode::CREATED, Json(json!(run))).into_response()),
        _ => Err(ApiError::unavailable()),
    }
}

async fn retry(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let caller = app.authorize(&headers, Role::Operator)?;
    enqueued(&app, &caller, AdminRequest::Retry { run: id }).await
}

async fn enqueue(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let caller = app.authorize(&headers, Role::Operator)?;
    enqueued(&app, &caller, AdminRequest::Enqueue { job: name }).await
}

async fn set_enabled(
    app: &AppState,
    caller: &Caller,
    name: String,
    enabled: bool,
) -> Result<Json<Value>, ApiError> {
    app.core
        .call(
            caller,
            AdminRequest::SetEnabled {
                target: EnableTarget::Job(name.clone()),
                enabled,
            },
        )
        .await?;
    Ok(Json(json!({ "job": name, "enabled": enabled })))
}

async fn enable(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Operator)?;
    set_enabled(&app, &caller, name, true).await
}

async fn disable(
    State(app): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = app.authorize(&headers, Role::Operator)?;
    set_enabled(&app, &caller, name, false).await
}

async fn drain(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }
}
