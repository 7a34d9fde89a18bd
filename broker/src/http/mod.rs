//! The JSON API over HTTP: `/api/v1/…`, `/healthz`, and the runs CSV export.
//!
//! Every request is answered by the core through the same requests `jobcastctl` sends
//! (see [`CoreHandle`]), so the API and the command line share their semantics and their
//! errors. Access is by bearer token, each with a role: `viewer` reads, `operator` also
//! acts (enqueue, kill, retry, enable/disable, drain), `admin` may do everything.

mod api;
mod auth;
mod core_handle;
mod csv;
mod error;
mod live;

pub use core_handle::{CoreHandle, InternalRequest};
pub use live::LiveFeed;

use crate::config::ApiToken;
use anyhow::{Context, Result};
use api::{
    ack_alert, alerts, audit, bulk_kill, bulk_retry, disable, disable_pool, drain, enable,
    enable_pool, enqueue, healthz, job_detail, jobs, kill, list_runs, metrics, retry, run_detail,
    run_log, series, status, upcoming, workers,
};
use auth::whoami;
use axum::extract::DefaultBodyLimit;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use csv::runs_csv;
use error::ApiError;
use live::live_feed;
use std::sync::Arc;
use tokio::sync::watch;

/// Request bodies are small (actions take no body); anything bigger is refused.
const MAX_BODY: usize = 64 << 10;

/// Which part this broker plays, for `/healthz` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerRole {
    /// Alone on its embedded store: it always acts.
    Alone,
    /// Several brokers on one database: it holds the lease of this epoch.
    Leader { epoch: u64 },
    /// Several brokers: another one acts (named, if the lease row names one).
    Standby {
        leader: Option<jobcast_protocol::LeaderAddress>,
    },
}

#[derive(Clone)]
struct AppState {
    core: CoreHandle,
    role: watch::Receiver<BrokerRole>,
    /// Replaced by a reload.
    tokens: watch::Receiver<Arc<Vec<ApiToken>>>,
    live: LiveFeed,
    /// Browser origins allowed on the live feed (scheme://host[:port]).
    origins: Arc<Vec<String>>,
    metrics: crate::metrics::Metrics,
    /// Where the store is, to report its size.
    data_dir: Arc<std::path::PathBuf>,
}

/// What the router serves besides the core's answers.
pub struct Extras {
    /// Browser origins allowed on the live feed (scheme://host[:port]).
    pub origins: Vec<String>,
    pub role: watch::Receiver<BrokerRole>,
    pub metrics: crate::metrics::Metrics,
    pub data_dir: std::path::PathBuf,
}

pub fn router(
    core: CoreHandle,
    tokens: watch::Receiver<Arc<Vec<ApiToken>>>,
    live: LiveFeed,
    extras: Extras,
) -> Router {
    tokio::spawn(live::pump_status(core.clone(), live.clone()));
    let state = AppState {
        core,
        role: extras.role,
        tokens,
        live,
        origins: Arc::new(extras.origins),
        metrics: extras.metrics,
        data_dir: Arc::new(extras.data_dir),
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
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/runs", get(list_runs))
        .route("/api/v1/runs.csv", get(runs_csv))
        .route("/api/v1/runs/{id}", get(run_detail))
        .route("/api/v1/runs/{id}/log", get(run_log))
        .route("/api/v1/runs/{id}/kill", post(kill))
        .route("/api/v1/runs/{id}/retry", post(retry))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/jobs/{name}", get(job_detail))
        .route("/api/v1/upcoming", get(upcoming))
        .route("/api/v1/series", get(series))
        .route("/api/v1/jobs/{name}/enqueue", post(enqueue))
        .route("/api/v1/jobs/{name}/enable", post(enable))
        .route("/api/v1/jobs/{name}/disable", post(disable))
        .route("/api/v1/workers", get(workers))
        .route("/api/v1/workers/{id}/drain", post(drain))
        .route("/api/v1/pools/{name}/enable", post(enable_pool))
        .route("/api/v1/pools/{name}/disable", post(disable_pool))
        .route("/api/v1/audit", get(audit))
        .route("/api/v1/alerts", get(alerts))
        .route("/api/v1/alerts/{id}/ack", post(ack_alert))
        .route("/api/v1/bulk/retry", post(bulk_retry))
        .route("/api/v1/bulk/kill", post(bulk_kill))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/live", get(live_feed))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(refuse_large_bodies))
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// On every answer: nothing may frame the dashboard (clickjacking on Kill, Drain,
/// Disable), browsers must not guess content types, and no page address leaks to other
/// sites in `Referer`.
pub(super) async fn security_headers(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Refuses a request whose declared body is over the limit, whether or not its handler
/// would read it.
pub(super) async fn refuse_large_bodies(
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
pub(super) const INDEX_HTML: &str = include_str!("../../assets/index.html");
pub(super) const APP_JS: &str = include_str!("../../assets/app.js");
pub(super) const STYLE_CSS: &str = include_str!("../../assets/style.css");

pub(super) fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                // `'self'` covers the live feed's ws:/wss: to this same host, and no
                // other: a page script cannot open a socket elsewhere.
                "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
                 frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'",
            ),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// The origins of the dashboard when none are configured: the listen address itself
/// (and `localhost` for a loopback one), as plain `http://`.
fn default_origins(listen: std::net::SocketAddr) -> Vec<String> {
    let mut origins = vec![format!("http://{listen}")];
    if listen.ip().is_loopback() {
        origins.push(format!("http://localhost:{}", listen.port()));
    }
    origins
}

/// Binds the dashboard and API listener, if configured, and serves it on a task.
pub async fn start(
    config: crate::config::BrokerConfig,
    core: CoreHandle,
    live: LiveFeed,
    tokens: tokio::sync::watch::Receiver<std::sync::Arc<Vec<crate::config::ApiToken>>>,
    metrics: crate::metrics::Metrics,
    role: watch::Receiver<BrokerRole>,
) -> Result<Option<(std::net::SocketAddr, tokio::task::JoinHandle<()>)>> {
    let Some(addr) = &config.http_listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the HTTP listener to {addr}"))?;
    let bound_http = listener.local_addr()?;
    tracing::info!(http = %bound_http, "dashboard and API listening");
    let origins = if config.public_origins.is_empty() {
        default_origins(bound_http)
    } else {
        config.public_origins.clone()
    };
    let extras = Extras {
        origins,
        role,
        metrics,
        data_dir: config.data_dir.clone(),
    };
    let app = router(core, tokens, live, extras);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(Some((bound_http, task)))
}
