//! The live feed: changes pushed to dashboards over WebSockets, each client with a bounded
//! queue.

use super::auth::{hide_env_values, identify, Caller};
use super::error::ApiError;
use super::AppState;
use crate::config::Role;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use jobcast_protocol::{AdminRequest, Reply, RunFilter, RunRecord};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

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
pub(super) const STUCK_AFTER: Duration = Duration::from_secs(2);

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

#[derive(Debug, Deserialize)]
pub(super) struct LiveQuery {
    token: Option<String>,
}

/// The WebSocket feed: a snapshot, then changes. The token comes as `?token=` (browsers
/// cannot set headers on WebSockets). A browser always sends its page's Origin, which
/// must be one of the configured public origins, compared whole (scheme, host and port):
/// never the request's own Host header, which a DNS-rebinding page controls.
pub(super) async fn live_feed(
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
    let presented = query.token.clone().unwrap_or_default();
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
    let access = Access {
        tokens: app.tokens.clone(),
        presented,
        granted: (caller.name, caller.role),
    };
    Ok(ws.on_upgrade(move |socket| serve_live(socket, receiver, snapshot, viewer, access)))
}

pub(super) async fn snapshot(app: &AppState, caller: &Caller) -> Result<String, ApiError> {
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

/// What a live client was let in with, checked again when a reload changes the tokens.
pub(super) struct Access {
    tokens: tokio::sync::watch::Receiver<Arc<Vec<crate::config::ApiToken>>>,
    presented: String,
    granted: (String, Role),
}

impl Access {
    /// False once the token is gone or its name or role changed: the client must come
    /// back (and be asked for a token if it no longer has one).
    fn still_granted(&mut self) -> bool {
        let tokens = self.tokens.borrow_and_update();
        identify(&tokens, &self.presented).as_ref() == Some(&self.granted)
    }
}

/// Close code for a client whose token stopped working (4000–4999 are the
/// application's own).
pub const CLOSE_TOKEN_REVOKED: u16 = 4001;

pub(super) async fn serve_live(
    mut socket: axum::extract::ws::WebSocket,
    mut feed: tokio::sync::broadcast::Receiver<Arc<LiveMessage>>,
    snapshot: String,
    viewer: bool,
    mut access: Access,
) {
    use axum::extract::ws::Message;
    use tokio::sync::broadcast::error::RecvError;
    pub(super) async fn send(socket: &mut axum::extract::ws::WebSocket, text: String) -> bool {
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
            changed = access.tokens.changed() => {
                if changed.is_err() || !access.still_granted() {
                    tracing::info!(token = %access.granted.0, "closing a live client: its token was revoked or changed");
                    let close = axum::extract::ws::CloseFrame {
                        code: CLOSE_TOKEN_REVOKED,
                        reason: "token revoked or changed".into(),
                    };
                    let _ = tokio::time::timeout(STUCK_AFTER, socket.send(Message::Close(Some(close)))).await;
                    return;
                }
            }
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
