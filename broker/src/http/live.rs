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
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// Changes for WebSocket clients, fanned out from the core loop (and the status pump):
/// each client merges them into what it has yet to send, and sends that at most every
/// [`COALESCE`], so a burst of batches costs a slow page one message, not thousands.
#[derive(Clone)]
pub struct LiveFeed {
    sender: tokio::sync::broadcast::Sender<Arc<LiveBatch>>,
}

/// A value as operators see it, and as viewers do when that differs (env values hidden).
#[derive(Debug)]
pub struct Shown {
    full: Value,
    for_viewers: Option<Value>,
}

impl Shown {
    fn new(full: Value) -> Shown {
        let mut hidden = full.clone();
        hide_env_values(&mut hidden);
        let for_viewers = (hidden != full).then_some(hidden);
        Shown { full, for_viewers }
    }

    fn seen_by(&self, viewer: bool) -> &Value {
        match &self.for_viewers {
            Some(hidden) if viewer => hidden,
            _ => &self.full,
        }
    }
}

/// One batch's changes (or the pump's status), as live views show them.
#[derive(Debug, Default)]
pub struct LiveBatch {
    /// Broker time (ms since the epoch) they were made durable at.
    pub at_ms: u64,
    /// Run summaries, by id.
    pub runs: Vec<(String, Value)>,
    pub workers: Option<Value>,
    /// Every job, when all may have changed.
    pub jobs: Option<Shown>,
    /// Some jobs, by name.
    pub changed_jobs: Vec<(String, Shown)>,
    pub runs_by_state: Option<Value>,
    /// The broker's whole status (workers, alerts, totals), sent every [`STATUS_EVERY`].
    pub status: Option<Value>,
    /// Log output: (run id, stream offset, bytes), sent only to clients following the run.
    pub logs: Vec<(String, u64, Vec<u8>)>,
}

/// Batches a client may fall behind by before it is told to resync. A client merges
/// batches as they come, so only a client whose task is starved gets there.
pub const LIVE_QUEUE: usize = 1024;
/// A client that takes longer than this to accept one message is not reading (its TCP
/// window is shut): it is dropped, and the page starts again from a snapshot when it
/// reconnects. Nothing the broker does waits on it meanwhile.
pub(super) const STUCK_AFTER: Duration = Duration::from_secs(2);
/// At most one message of changes per client per this long.
pub const COALESCE: Duration = Duration::from_millis(100);
/// Runs one client may follow the logs of at once (a page follows one).
pub const MAX_FOLLOWED: usize = 16;
/// Follows a client limited to teams may have checked per [`STATUS_EVERY`] (each asks
/// the core whether the client may see the run); more are ignored.
pub const MAX_FOLLOW_CHECKS: u32 = 8;
/// How often live views get the broker's whole status (worker heartbeats, alerts).
pub const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Log output a client holds for one run between two sends; beyond it the oldest goes
/// (the page marks the gap), so a run writing fast cannot grow a client's memory.
pub const LOG_PENDING_MAX: usize = 256 << 10;

impl LiveFeed {
    pub fn new() -> Self {
        let (sender, _) = tokio::sync::broadcast::channel(LIVE_QUEUE);
        LiveFeed { sender }
    }

    pub fn has_clients(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    fn send(&self, batch: LiveBatch) {
        let _ = self.sender.send(Arc::new(batch));
    }

    /// Turns a batch's changes into a [`LiveBatch`] for the clients.
    pub fn publish(&self, changes: jobcast_core::ChangeSet, at_ms: u64) {
        if !self.has_clients() {
            return;
        }
        let batch = LiveBatch {
            at_ms,
            runs: changes
                .runs
                .iter()
                .map(|run| (run.id.clone(), run_summary(run)))
                .collect(),
            workers: changes.workers.map(|w| json!(w)),
            jobs: changes.jobs.map(|jobs| Shown::new(json!(jobs))),
            changed_jobs: changes
                .changed_jobs
                .into_iter()
                .map(|job| (job.spec.name.clone(), Shown::new(json!(job))))
                .collect(),
            runs_by_state: changes.runs_by_state.map(|c| json!(c)),
            status: None,
            logs: changes.logs,
        };
        self.send(batch);
    }
}

impl Default for LiveFeed {
    fn default() -> Self {
        Self::new()
    }
}

/// Asks the core for its status every [`STATUS_EVERY`] while anyone watches, and hands
/// it to the live clients: worker heartbeats and alerts change without a batch saying so.
pub(super) async fn pump_status(core: super::CoreHandle, live: LiveFeed) {
    let caller = Caller {
        name: "live feed".into(),
        role: Role::Viewer,
        teams: Vec::new(),
    };
    let mut every = tokio::time::interval(STATUS_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        if core.is_closed() {
            return;
        }
        if !live.has_clients() {
            continue;
        }
        if let Ok(Reply::Status(status)) = core.call(&caller, AdminRequest::Status).await {
            live.send(LiveBatch {
                at_ms: now_ms(),
                status: Some(json!(status)),
                ..Default::default()
            });
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What one client may be sent: env values or not, and whose jobs and runs.
pub(super) struct View {
    pub viewer: bool,
    pub scope: jobcast_core::Scope,
}

impl View {
    fn shows_job(&self, job: &Value) -> bool {
        self.scope.allows(job["spec"]["team"].as_str())
    }
}

/// What one client has yet to be sent: the latest of each changed thing.
#[derive(Default)]
struct Pending {
    at_ms: u64,
    runs: HashMap<String, Value>,
    workers: Option<Value>,
    jobs: Option<Value>,
    changed_jobs: BTreeMap<String, Value>,
    runs_by_state: Option<Value>,
    status: Option<Value>,
    /// Per followed run: contiguous pieces of output, (offset, bytes), oldest first.
    logs: BTreeMap<String, Vec<(u64, Vec<u8>)>>,
}

impl Pending {
    fn merge(&mut self, batch: &LiveBatch, view: &View, following: &HashSet<String>) {
        self.at_ms = self.at_ms.max(batch.at_ms);
        let limited = view.scope.is_limited();
        for (id, run) in &batch.runs {
            if view.scope.allows(run["team"].as_str()) {
                self.runs.insert(id.clone(), run.clone());
            }
        }
        // Status, workers and counts of the whole broker: a client limited to teams gets
        // its own instead (see `own_status`).
        if let Some(status) = batch.status.as_ref().filter(|_| !limited) {
            self.status(status.clone());
        }
        if let Some(workers) = batch.workers.as_ref().filter(|_| !limited) {
            self.workers = Some(workers.clone());
        }
        if let Some(jobs) = &batch.jobs {
            let mut shown = jobs.seen_by(view.viewer).clone();
            if let Value::Array(list) = &mut shown {
                list.retain(|job| view.shows_job(job));
            }
            self.jobs = Some(shown);
            self.changed_jobs.clear();
        }
        for (name, job) in &batch.changed_jobs {
            let shown = job.seen_by(view.viewer);
            if view.shows_job(shown) {
                self.changed_jobs.insert(name.clone(), shown.clone());
            }
        }
        if let Some(counts) = batch.runs_by_state.as_ref().filter(|_| !limited) {
            self.runs_by_state = Some(counts.clone());
        }
        for (run_id, offset, data) in &batch.logs {
            if following.contains(run_id) {
                let pieces = self.logs.entry(run_id.clone()).or_default();
                append_log(pieces, *offset, data);
            }
        }
    }

    /// A whole status: its workers and counts are the newest too.
    fn status(&mut self, status: Value) {
        self.workers = Some(status["workers"].clone());
        self.runs_by_state = Some(status["runs_by_state"].clone());
        self.status = Some(status);
    }

    /// The messages to send now (none when nothing changed), emptying `self`.
    fn take(&mut self) -> Vec<String> {
        let taken = std::mem::take(self);
        let mut messages = Vec::new();
        let mut changes = serde_json::Map::new();
        if !taken.runs.is_empty() {
            let mut runs: Vec<Value> = taken.runs.into_values().collect();
            runs.sort_by_key(|run| run["seq"].as_u64());
            changes.insert("runs".into(), Value::Array(runs));
        }
        let fields = [
            ("status", taken.status),
            ("workers", taken.workers),
            ("jobs", taken.jobs),
            ("runs_by_state", taken.runs_by_state),
        ];
        for (name, value) in fields {
            if let Some(value) = value {
                changes.insert(name.into(), value);
            }
        }
        if !taken.changed_jobs.is_empty() {
            let jobs = taken.changed_jobs.into_values().collect();
            changes.insert("changed_jobs".into(), Value::Array(jobs));
        }
        if !changes.is_empty() {
            changes.insert("type".into(), json!("changes"));
            changes.insert("at_ms".into(), json!(taken.at_ms));
            messages.push(Value::Object(changes).to_string());
        }
        for (run_id, pieces) in taken.logs {
            for (offset, data) in pieces {
                messages.push(
                    json!({ "type": "log", "run_id": run_id, "offset": offset, "data": String::from_utf8_lossy(&data) })
                        .to_string(),
                );
            }
        }
        messages
    }
}

/// Adds a chunk of output to what a client holds for a run, joining it to the last piece
/// when it follows on, and dropping the oldest bytes beyond [`LOG_PENDING_MAX`].
fn append_log(pieces: &mut Vec<(u64, Vec<u8>)>, offset: u64, data: &[u8]) {
    match pieces.last_mut() {
        Some((start, bytes)) if *start + bytes.len() as u64 == offset => {
            bytes.extend_from_slice(data)
        }
        _ => pieces.push((offset, data.to_vec())),
    }
    let mut held: usize = pieces.iter().map(|(_, b)| b.len()).sum();
    while held > LOG_PENDING_MAX {
        let excess = held - LOG_PENDING_MAX;
        let (start, bytes) = &mut pieces[0];
        if bytes.len() <= excess {
            held -= bytes.len();
            pieces.remove(0);
        } else {
            bytes.drain(..excess);
            *start += excess as u64;
            held -= excess;
        }
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
        "params": run.params,
        "team": run.spec.team,
        "priority": run.priority,
        "waiting_for": run.waiting_for,
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
    let view = View {
        viewer: caller.role < Role::Operator,
        scope: caller.scope(),
    };
    let access = Access {
        tokens: app.tokens.clone(),
        presented,
        granted: caller,
        core: app.core.clone(),
    };
    Ok(ws.on_upgrade(move |socket| serve_live(socket, receiver, snapshot, view, access)))
}

pub(super) async fn snapshot(app: &AppState, caller: &Caller) -> Result<String, ApiError> {
    let Reply::Status(status) = app.core.call(caller, AdminRequest::Status).await? else {
        return Err(ApiError::unavailable());
    };
    let Reply::Jobs { jobs } = app.core.call(caller, AdminRequest::ListJobs).await? else {
        return Err(ApiError::unavailable());
    };
    let Reply::Runs { runs, .. } = app
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
    let snapshot = json!({ "type": "snapshot", "at_ms": now_ms(), "role": caller.role.as_str(), "status": status, "jobs": jobs, "runs": runs });
    Ok(caller.view(snapshot).to_string())
}

/// What a live client was let in with, checked again when a reload changes the tokens.
pub(super) struct Access {
    tokens: tokio::sync::watch::Receiver<Arc<Vec<crate::config::ApiToken>>>,
    presented: String,
    granted: Caller,
    /// To ask, as the client, what it may see (its own status, a run it would follow).
    core: super::CoreHandle,
}

impl Access {
    /// False once the token is gone or its name, role or teams changed: the client must
    /// come back (and be asked for a token if it no longer has one).
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
    mut feed: tokio::sync::broadcast::Receiver<Arc<LiveBatch>>,
    snapshot: String,
    view: View,
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
    let mut following: HashSet<String> = HashSet::new();
    let mut pending = Pending::default();
    let mut flush = tokio::time::interval(COALESCE);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut own_status = tokio::time::interval(STATUS_EVERY);
    own_status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let limited = view.scope.is_limited();
    let mut follow_checks = 0;
    loop {
        tokio::select! {
            message = feed.recv() => match message {
                Ok(batch) => pending.merge(&batch, &view, &following),
                Err(RecvError::Lagged(_)) => {
                    // Starved so long the feed moved on: say so and let the client start
                    // again from a snapshot, rather than let its backlog hold anything up.
                    send(&mut socket, json!({ "type": "resync" }).to_string()).await;
                    return;
                }
                Err(RecvError::Closed) => return,
            },
            _ = flush.tick() => {
                for text in pending.take() {
                    if !send(&mut socket, text).await {
                        tracing::info!("dropping a live client that is not reading");
                        return;
                    }
                }
            }
            _ = own_status.tick(), if limited => {
                follow_checks = 0;
                // The status as this client's teams see it.
                if let Ok(Reply::Status(status)) = access.core.call(&access.granted, AdminRequest::Status).await {
                    pending.at_ms = pending.at_ms.max(now_ms());
                    pending.status(json!(status));
                }
            }
            changed = access.tokens.changed() => {
                if changed.is_err() {
                    // The broker is stopping (its settings are gone), not the token: the
                    // page keeps its token and comes back when the broker does.
                    let close = axum::extract::ws::CloseFrame {
                        code: axum::extract::ws::close_code::AWAY,
                        reason: "the broker is stopping".into(),
                    };
                    let _ = tokio::time::timeout(STUCK_AFTER, socket.send(Message::Close(Some(close)))).await;
                    return;
                }
                if !access.still_granted() {
                    tracing::info!(token = %access.granted.name, "closing a live client: its token was revoked or changed");
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
                        if let Some(run) = command["unfollow"].as_str() {
                            following.remove(run);
                            pending.logs.remove(run);
                        }
                        if let Some(run) = command["follow"].as_str().filter(|_| following.len() < MAX_FOLLOWED) {
                            // Only a run the client may see (asked as it: another team's
                            // run answers "no such run"), and only a few asked a second,
                            // so that a client sending follows cannot keep the core busy.
                            let allowed = !limited
                                || (follow_checks < MAX_FOLLOW_CHECKS && {
                                    follow_checks += 1;
                                    access.core.call(&access.granted, AdminRequest::GetLog {
                                        run: run.to_string(),
                                        offset: Some(u64::MAX),
                                        wait_ms: None,
                                    }).await.is_ok()
                                });
                            if allowed {
                                following.insert(run.to_string());
                            }
                        }
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: &str, seq: u64, state: &str) -> (String, Value) {
        (id.into(), json!({ "id": id, "seq": seq, "state": state }))
    }

    fn parsed(messages: Vec<String>) -> Vec<Value> {
        messages
            .iter()
            .map(|m| serde_json::from_str(m).unwrap())
            .collect()
    }

    #[test]
    fn many_batches_become_one_message_with_the_latest_state_of_each_run() {
        let mut pending = Pending::default();
        let none = HashSet::new();
        for (at_ms, state) in [(10, "queued"), (20, "running"), (30, "succeeded")] {
            pending.merge(
                &LiveBatch {
                    at_ms,
                    runs: vec![
                        run("a", 1, state),
                        run(&format!("b{at_ms}"), at_ms, "queued"),
                    ],
                    runs_by_state: Some(json!({ "queued": at_ms })),
                    ..Default::default()
                },
                &View {
                    viewer: false,
                    scope: jobcast_core::Scope::all(),
                },
                &none,
            );
        }
        let messages = parsed(pending.take());
        assert_eq!(messages.len(), 1, "{messages:?}");
        let changes = &messages[0];
        assert_eq!(changes["type"], "changes");
        assert_eq!(changes["at_ms"], 30);
        let runs = changes["runs"].as_array().unwrap();
        let ids: Vec<&str> = runs.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["a", "b10", "b20", "b30"], "in run order");
        assert_eq!(runs[0]["state"], "succeeded");
        assert_eq!(changes["runs_by_state"]["queued"], 30);
        assert!(pending.take().is_empty(), "nothing left to send");
    }

    #[test]
    fn the_newest_of_status_and_worker_changes_wins_and_viewers_see_no_env_values() {
        let mut pending = Pending::default();
        let none = HashSet::new();
        let job = json!({ "spec": { "name": "j", "env": { "PASSWORD": "hunter2" } } });
        pending.merge(
            &LiveBatch {
                status: Some(
                    json!({ "workers": ["old"], "runs_by_state": { "queued": 1 }, "alerts": [] }),
                ),
                changed_jobs: vec![("j".into(), Shown::new(job.clone()))],
                ..Default::default()
            },
            &View {
                viewer: true,
                scope: jobcast_core::Scope::all(),
            },
            &none,
        );
        pending.merge(
            &LiveBatch {
                workers: Some(json!(["new"])),
                ..Default::default()
            },
            &View {
                viewer: true,
                scope: jobcast_core::Scope::all(),
            },
            &none,
        );
        let changes = &parsed(pending.take())[0];
        assert_eq!(changes["workers"], json!(["new"]));
        assert_eq!(changes["runs_by_state"]["queued"], 1);
        assert_eq!(changes["status"]["alerts"], json!([]));
        let shown = changes["changed_jobs"][0].to_string();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("PASSWORD"), "{shown}");
    }

    #[test]
    fn log_output_goes_only_to_followers_joined_and_capped_from_the_front() {
        let following = HashSet::from(["r1".to_string()]);
        let mut pending = Pending::default();
        let chunk = vec![b'x'; 100 << 10];
        let mut logs = Vec::new();
        for i in 0..5u64 {
            logs.push(("r1".to_string(), i * chunk.len() as u64, chunk.clone()));
            logs.push(("r2".to_string(), i * chunk.len() as u64, chunk.clone()));
        }
        pending.merge(
            &LiveBatch {
                logs,
                ..Default::default()
            },
            &View {
                viewer: false,
                scope: jobcast_core::Scope::all(),
            },
            &following,
        );
        let messages = parsed(pending.take());
        assert_eq!(messages.len(), 1, "one joined piece, for r1 only");
        let log = &messages[0];
        assert_eq!(log["run_id"], "r1");
        let data = log["data"].as_str().unwrap();
        assert_eq!(data.len(), LOG_PENDING_MAX);
        // The oldest bytes went: the piece starts where the kept bytes start.
        assert_eq!(
            log["offset"].as_u64().unwrap(),
            5 * (100 << 10) - LOG_PENDING_MAX as u64
        );
    }

    #[test]
    fn a_gap_in_the_output_stays_a_gap() {
        let mut pieces = Vec::new();
        append_log(&mut pieces, 0, b"head");
        append_log(&mut pieces, 4, b"more");
        append_log(&mut pieces, 100, b"tail");
        assert_eq!(
            pieces,
            vec![(0, b"headmore".to_vec()), (100, b"tail".to_vec())]
        );
    }
}

#[cfg(test)]
mod scope_tests {
    use super::*;
    use jobcast_core::Scope;

    #[test]
    fn a_client_limited_to_teams_gets_its_teams_runs_and_jobs_and_no_broker_wide_state() {
        let view = View {
            viewer: false,
            scope: Scope::teams(["data".to_string()]),
        };
        let mut pending = Pending::default();
        let job = |name: &str, team: &str| json!({ "spec": { "name": name, "team": team } });
        pending.merge(
            &LiveBatch {
                at_ms: 5,
                runs: vec![
                    (
                        "ours".into(),
                        json!({ "id": "ours", "seq": 1, "team": "data" }),
                    ),
                    (
                        "theirs".into(),
                        json!({ "id": "theirs", "seq": 2, "team": "web" }),
                    ),
                    (
                        "nobodys".into(),
                        json!({ "id": "nobodys", "seq": 3, "team": null }),
                    ),
                ],
                jobs: Some(Shown::new(json!([job("a", "data"), job("b", "web")]))),
                changed_jobs: vec![("b".into(), Shown::new(job("b", "web")))],
                workers: Some(json!([{ "id": "w1", "running": ["theirs"] }])),
                runs_by_state: Some(json!({ "queued": 3 })),
                status: Some(json!({ "workers": [], "runs_by_state": {}, "alerts": [] })),
                logs: vec![("theirs".into(), 0, b"secret".to_vec())],
            },
            &view,
            &HashSet::new(),
        );
        let messages: Vec<Value> = pending
            .take()
            .iter()
            .map(|m| serde_json::from_str(m).unwrap())
            .collect();
        assert_eq!(messages.len(), 1, "{messages:?}");
        let changes = &messages[0];
        let ids: Vec<&str> = changes["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["ours"]);
        assert_eq!(changes["jobs"], json!([job("a", "data")]));
        for field in ["changed_jobs", "workers", "runs_by_state", "status"] {
            assert!(changes.get(field).is_none(), "{field} in {changes}");
        }
    }
}
