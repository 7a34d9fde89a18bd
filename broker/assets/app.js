// The jobcast dashboard: a snapshot over a WebSocket, then coalesced changes (at most one
// message per ~100 ms) that patch only what changed. No framework, no build step. The
// token is asked for once and kept in this browser's localStorage.
"use strict";

const TERMINAL = ["succeeded", "failed", "killed", "timed_out", "lost", "cancelled", "missed"];
const STATES = ["queued", "assigned", "running", "succeeded", "failed", "killed", "timed_out", "lost", "cancelled", "missed"];
/// Runs the live first page shows.
const PAGE = 50;
/// The page is "behind" when the newest change it shows is older than this.
const BEHIND_MS = 2000;

const state = {
  token: localStorage.getItem("jobcast-token"),
  selected: new Set(),    // runs picked by hand for a bulk action
  paused: false,          // the runs list is held still (changes kept, drawn on resume)
  role: null,
  teams: [],
  runs: new Map(),        // id → run summary: the live first page
  page: null,             // runs fetched for a filtered or older page, or null when live
  resume: null,           // where the broker stopped looking, when it did before a full page
  workers: [],
  jobs: new Map(),        // name → job view
  status: null,
  counts: null,
  route: { view: "runs", params: new URLSearchParams() },
  following: null,        // run id shown in the run view
  detail: null,
  log: null,
  early: [],              // its output that came before its stored log
  socket: null,
  retry: 500,
  clockOffset: 0,         // broker time − browser time, ms
  lastMessage: 0,
  newestAt: 0,
  dirty: { runs: false, counts: false, workers: false, jobs: false, alerts: false, facts: false },
  frame: 0,
};

const $ = (selector) => document.querySelector(selector);

function text(value) {
  return value === null || value === undefined || value === "" ? "-" : String(value);
}

function zoneName() {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
}

/// "3 min ago", with the absolute time and zone for the title.
function relative(ms) {
  if (!ms) return { shown: "-", title: "" };
  const now = Date.now() + state.clockOffset;
  const diff = Math.round((now - ms) / 1000);
  const ahead = diff < 0;
  const s = Math.abs(diff);
  let shown;
  if (s < 5) shown = "now";
  else if (s < 60) shown = s + " s";
  else if (s < 3600) shown = Math.floor(s / 60) + " min";
  else if (s < 86400) shown = Math.floor(s / 3600) + " h";
  else shown = Math.floor(s / 86400) + " d";
  if (shown !== "now") shown = ahead ? "in " + shown : shown + " ago";
  return { shown, title: new Date(ms).toLocaleString() + " (" + zoneName() + ")" };
}

function duration(ms) {
  if (ms === null || ms === undefined) return "-";
  if (ms < 1000) return ms + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  return Math.floor(ms / 60000) + " m " + Math.round((ms % 60000) / 1000) + " s";
}

function setCell(td, value, title) {
  const shown = text(value);
  if (td.textContent !== shown) td.textContent = shown;
  if (title !== undefined && td.title !== title) td.title = title;
}

/// A cell holding one link (made once, then only its text and target change).
function linkCell(td, href, label) {
  let a = td.firstChild;
  if (!a || a.tagName !== "A") {
    a = document.createElement("a");
    td.replaceChildren(a);
  }
  if (a.getAttribute("href") !== href) a.setAttribute("href", href);
  if (a.textContent !== label) a.textContent = label;
}

function timeCell(td, ms) {
  const { shown, title } = relative(ms);
  setCell(td, shown, title);
}

function showMessage(message) {
  $("#message").textContent = message || "";
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(method, path, payload) {
  return (await apiResponse(method, path, payload)).body;
}

/// An API call's body and headers; errors (and a token that stopped working) as `api`.
async function apiResponse(method, path, payload) {
  let response;
  const headers = { Authorization: "Bearer " + state.token };
  if (payload !== undefined) headers["Content-Type"] = "application/json";
  try {
    response = await fetch(path, { method, headers, body: payload === undefined ? undefined : JSON.stringify(payload) });
  } catch (error) {
    throw new HttpError(0, "The broker cannot be reached.");
  }
  if (response.status === 401) {
    tokenStopped();
    throw new HttpError(401, "The token no longer works.");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new HttpError(response.status, body.error || response.statusText);
  return { body, headers: response.headers };
}

/// Fetches `path` with the token and saves it as `name`.
async function download(path, name) {
  try {
    const response = await fetch(path, { headers: { Authorization: "Bearer " + state.token } });
    if (!response.ok) throw new Error(response.statusText);
    const url = URL.createObjectURL(await response.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (error) {
    showMessage("Download failed: " + error.message);
  }
}

// ---- login ----

function showLogin(message) {
  $("#login").hidden = false;
  $("#app").hidden = true;
  $("#login-error").textContent = message || "";
  $("#token").focus();
}

function tokenStopped() {
  localStorage.removeItem("jobcast-token");
  state.token = null;
  if (state.socket) state.socket.close();
  setLive("off");
  showLogin("This token no longer works (revoked or changed): enter a current one.");
}

$("#login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("#token").value.trim();
  start();
});

$("#signout").addEventListener("click", () => {
  localStorage.removeItem("jobcast-token");
  state.token = null;
  if (state.socket) state.socket.close();
  showLogin();
});

async function start() {
  if (!state.token) return showLogin();
  try {
    const me = await api("GET", "/api/v1/whoami");
    state.role = me.role;
    state.teams = me.teams || [];
  } catch (error) {
    return showLogin("Token refused: " + error.message);
  }
  localStorage.setItem("jobcast-token", state.token);
  document.body.classList.toggle("viewer", state.role === "viewer");
  // A token limited to teams may not act on what all teams share (draining a worker).
  document.body.classList.toggle("limited", state.role !== "admin" && state.teams.length > 0);
  // A token limited to teams sees their jobs and runs only: say so.
  $("#role").textContent = state.role + (state.teams.length ? " · teams " + state.teams.join(", ") : "");
  $("#login").hidden = true;
  $("#app").hidden = false;
  connect();
  route();
}

// ---- live feed ----

function setLive(mode) {
  const badge = $("#live");
  // A broker that said it is going away (a restart) is being reconnected to.
  const label = { on: "live", behind: "behind", off: state.away ? "reconnecting" : "not live" }[mode];
  if (badge.textContent !== label) badge.textContent = label;
  badge.className = "badge " + mode;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const socket = new WebSocket(scheme + location.host + "/api/v1/live?token=" + encodeURIComponent(state.token));
  state.socket = socket;
  socket.onopen = () => { state.retry = 500; state.away = false; };
  socket.onmessage = (event) => handle(JSON.parse(event.data));
  socket.onclose = (event) => {
    // 1001: the broker is stopping (a restart, say); the page keeps its token and
    // reconnects with a growing delay, as after any other loss.
    if (event.code === 1001) state.away = true;
    setLive("off");
    if (state.socket !== socket || !state.token) return;
    if (event.code === 4001) return tokenStopped();
    setTimeout(connect, state.retry);
    state.retry = Math.min(state.retry * 2, 5000);
  };
}

/// Whether the page still shows the present: changes arrive at least every second (the
/// broker's status), and the newest is recent.
setInterval(() => {
  if (!state.socket || state.socket.readyState !== WebSocket.OPEN || !state.lastMessage) return;
  const silent = Date.now() - state.lastMessage > 3 * 1000;
  const lag = Date.now() + state.clockOffset - state.newestAt;
  setLive(silent || lag > BEHIND_MS ? "behind" : "on");
  // Relative times move on by themselves.
  markDirty("runs", "workers", "jobs", "facts");
}, 1000);

function markDirty(...parts) {
  for (const part of parts) state.dirty[part] = true;
  if (!state.frame) state.frame = requestAnimationFrame(render);
}

function handle(message) {
  state.lastMessage = Date.now();
  switch (message.type) {
    case "snapshot":
      state.clockOffset = message.at_ms - Date.now();
      state.newestAt = message.at_ms;
      setLive("on");
      applyStatus(message.status);
      state.jobs = new Map(message.jobs.map((job) => [job.spec.name, job]));
      state.runs = new Map(message.runs.slice(0, PAGE).map((run) => [run.id, run]));
      if (state.following) follow(state.following);
      markDirty("runs", "counts", "workers", "jobs", "alerts", "facts");
      break;
    case "changes":
      state.newestAt = Math.max(state.newestAt, message.at_ms);
      if (message.status) applyStatus(message.status);
      if (message.workers) { state.workers = message.workers; markDirty("workers", "alerts"); }
      if (message.runs_by_state) { state.counts = message.runs_by_state; markDirty("counts"); }
      if (message.jobs) { state.jobs = new Map(message.jobs.map((job) => [job.spec.name, job])); markDirty("jobs"); }
      for (const job of message.changed_jobs || []) { state.jobs.set(job.spec.name, job); markDirty("jobs"); }
      if (message.jobs || (message.changed_jobs || []).some((job) => job.spec.name === jobPage.name)) jobChanged();
      if (message.runs) { applyRuns(message.runs); jobChanged(message.runs); }
      setLive(Date.now() + state.clockOffset - state.newestAt > BEHIND_MS ? "behind" : "on");
      break;
    case "log":
      if (message.run_id !== state.following) break;
      if (state.log) state.log.push(message.offset, message.data);
      else keepEarly(message);
      break;
    case "resync":
      // Fell behind: start again from a fresh snapshot.
      state.socket.close();
      break;
  }
}

/// Output that arrives before the stored log does: applied after it (what the stored log
/// already has is skipped by offset). Bounded like the view itself.
function keepEarly(message) {
  state.early.push(message);
  let held = state.early.reduce((sum, m) => sum + m.data.length, 0);
  while (held > 2 * 1048576 && state.early.length > 1) held -= state.early.shift().data.length;
}

function applyStatus(status) {
  state.status = status;
  state.workers = status.workers;
  state.counts = status.runs_by_state;
  renderPart();
  markDirty("workers", "counts", "alerts");
}

/// Several brokers on one database: whether this one leads, and if not, who does. A
/// standby shows what it reads from the database and changes nothing, so its action
/// buttons go (the API would refuse them, naming the leader).
function renderPart() {
  const lease = state.status && state.status.leadership;
  const standby = !!(lease && lease.this_broker && lease.this_broker !== lease.holder);
  document.body.classList.toggle("standby", standby);
  const part = $("#part");
  part.hidden = !lease;
  if (lease) setCell(part, standby ? "standby" : "leader · epoch " + lease.epoch);
  const banner = $("#standby");
  banner.hidden = !standby;
  if (!standby) return;
  const leader = lease.brokers.find((b) => b.leader && b.holder === lease.holder);
  const http = leader ? leader.http : "";
  const key = [lease.holder, lease.epoch, http].join(" ");
  // Made again only when the leader changes: a link in it keeps its focus.
  if (banner.dataset.key === key) return;
  banner.dataset.key = key;
  const parts = [];
  if (!lease.holder) {
    parts.push("This broker is a standby, and no broker leads right now: one takes over within " +
      duration(lease.lease_ms) + ". What you see is read from the database; nothing can be changed meanwhile.");
  } else {
    parts.push("This broker is a standby: what you see is read from the database every few seconds, and nothing can be changed here. The leader is " +
      lease.holder + " (epoch " + lease.epoch + ")");
    if (http) {
      const link = document.createElement("a");
      link.id = "leader-link";
      link.href = location.protocol + "//" + http + "/" + location.hash;
      link.textContent = location.protocol + "//" + http;
      parts.push(", its dashboard at ", link, ".");
    } else {
      parts.push(", which serves no dashboard.");
    }
  }
  banner.replaceChildren(...parts);
}

/// Every pool a worker serves or a run waits in: its queue and the slots serving it.
function renderPools() {
  const status = state.status || {};
  const queued = status.queued_by_pool || {};
  const disabled = new Set(status.disabled_pools || []);
  const names = new Set([...Object.keys(queued), ...disabled, ...state.workers.flatMap((w) => w.pools)]);
  const pools = [...names].sort().map((name) => {
    const online = state.workers.filter((w) => w.online && w.pools.includes(name));
    return {
      name,
      disabled: disabled.has(name),
      queued: queued[name] || 0,
      online: online.length,
      // A worker serving several pools shares its slots among them.
      running: online.reduce((sum, w) => sum + w.running.length, 0),
      slots: online.reduce((sum, w) => sum + w.concurrency, 0),
    };
  });
  syncRows($("#pools tbody"), pools, (p) => p.name, () => emptyRow(5), (row, pool) => {
    const c = row.children;
    linkCell(c[0], "#/pool/" + encodeURIComponent(pool.name), pool.name);
    setCell(c[1], pool.disabled ? "paused" : pool.online ? "served" : "no worker");
    c[1].className = pool.disabled || !pool.online ? "offline" : "";
    setCell(c[2], pool.queued);
    setCell(c[3], pool.online);
    setCell(c[4], pool.running + " of " + pool.slots);
  });
}

/// The lease and the brokers seen on the database (several brokers only).
function renderBrokers() {
  const lease = state.status && state.status.leadership;
  $("#brokers-panel").hidden = !lease;
  if (!lease) return;
  setCell($("#lease"), "Epoch " + lease.epoch + " · lease " + duration(lease.lease_ms) +
    (lease.holder ? " · renewed " + duration(lease.renewed_ms_ago) + " ago" : " · nobody holds it"));
  syncRows($("#brokers tbody"), lease.brokers, (b) => b.holder, () => emptyRow(5), (row, broker) => {
    const c = row.children;
    setCell(c[0], broker.holder + (broker.holder === lease.this_broker ? " (this one)" : ""));
    setCell(c[1], broker.leader ? "leader" : "standby");
    setCell(c[2], broker.router);
    if (broker.http) linkCell(c[3], location.protocol + "//" + broker.http + "/", broker.http);
    else setCell(c[3], "-");
    setCell(c[4], duration(broker.seen_ms_ago) + " ago");
  });
}

function applyRuns(runs) {
  for (const run of runs) {
    const shown = state.runs.get(run.id);
    const newest = state.runs.size === 0 || run.seq > Math.min(...[...state.runs.values()].map((r) => r.seq));
    if (shown || newest || state.runs.size < PAGE) state.runs.set(run.id, run);
    if (state.page) {
      const index = state.page.findIndex((r) => r.id === run.id);
      if (index >= 0) state.page[index] = run;
    }
    if (run.id === state.following) markDirty("facts");
  }
  if (state.runs.size > PAGE) {
    const kept = [...state.runs.values()].sort((a, b) => b.seq - a.seq).slice(0, PAGE);
    state.runs = new Map(kept.map((run) => [run.id, run]));
  }
  markDirty("runs", "jobs", "alerts");
}

// ---- rendering: only what changed, once per frame ----

function render() {
  state.frame = 0;
  const dirty = state.dirty;
  state.dirty = { runs: false, counts: false, workers: false, jobs: false, alerts: false, facts: false };
  if (dirty.counts) renderCounts();
  if (dirty.runs && state.route.view === "runs" && !state.paused) renderRuns();
  if (dirty.workers && state.route.view === "workers") { renderWorkers(); renderPools(); renderBrokers(); }
  if (dirty.jobs && state.route.view === "jobs") renderJobs();
  if (dirty.alerts) renderAlerts();
  if (dirty.facts && state.route.view === "run") refreshRunFacts();
  if (dirty.workers && state.route.view === "worker") renderWorker();
  if (dirty.workers && state.route.view === "pool") renderPool();
  if (dirty.jobs && state.route.view === "job") renderJob();
}

function renderCounts() {
  const box = $("#counts");
  const counts = state.counts || {};
  if (!box.childElementCount) {
    for (const name of STATES) {
      const div = document.createElement("a");
      div.className = "count state " + name;
      div.dataset.state = name;
      div.href = "#/runs?state=" + name;
      const b = document.createElement("b");
      div.append(b, " " + name.replace("_", " "));
      box.appendChild(div);
    }
  }
  for (const div of box.children) {
    const value = String(counts[div.dataset.state] || 0);
    const b = div.firstChild;
    if (b.textContent !== value) b.textContent = value;
  }
}

/// Keeps `body`'s rows equal to `items` (in order), reusing the row of each key: rows
/// are patched, not rebuilt, so focus, selection and scroll stay where they are.
function syncRows(body, items, key, build, fill) {
  const existing = new Map([...body.children].map((tr) => [tr.dataset.key, tr]));
  let previous = null;
  for (const item of items) {
    const id = key(item);
    let row = existing.get(id);
    if (row) existing.delete(id);
    else { row = build(item); row.dataset.key = id; }
    fill(row, item);
    const expected = previous ? previous.nextSibling : body.firstChild;
    if (row !== expected) body.insertBefore(row, expected);
    previous = row;
  }
  for (const row of existing.values()) {
    // A focused row that leaves the list gives focus to its table, not to the page's body.
    if (row.contains(document.activeElement)) {
      const table = body.closest("table");
      if (table) table.focus();
    }
    row.remove();
  }
}

function emptyRow(cells) {
  const tr = document.createElement("tr");
  for (let i = 0; i < cells; i++) tr.appendChild(document.createElement("td"));
  return tr;
}

function shownRuns() {
  return state.page || [...state.runs.values()].sort((a, b) => b.seq - a.seq);
}

function renderRuns() {
  syncRows($("#runs tbody"), shownRuns(), (run) => run.id, (run) => {
    const row = emptyRow(8);
    row.className = "clickable";
    row.tabIndex = 0;
    row.dataset.run = run.id;
    const open = () => { location.hash = "#/run/" + encodeURIComponent(row.dataset.run); };
    row.addEventListener("click", open);
    row.addEventListener("keydown", (event) => { if (event.key === "Enter") open(); });
    // Picking a run for a bulk action does not open it.
    const pick = document.createElement("input");
    pick.type = "checkbox";
    pick.addEventListener("click", (event) => event.stopPropagation());
    pick.addEventListener("keydown", (event) => event.stopPropagation());
    pick.addEventListener("change", () => {
      if (pick.checked) state.selected.add(row.dataset.run); else state.selected.delete(row.dataset.run);
      renderSelection();
    });
    row.firstChild.className = "operator-only select";
    row.firstChild.appendChild(pick);
    return row;
  }, (row, run) => {
    const c = row.children;
    const pick = c[0].firstChild;
    pick.checked = state.selected.has(run.id);
    pick.setAttribute("aria-label", "Select run " + run.id);
    setCell(c[1], run.id);
    setCell(c[2], run.job);
    setCell(c[3], run.state.replace("_", " "));
    const cls = "state " + run.state;
    if (c[3].className !== cls) c[3].className = cls;
    setCell(c[4], run.worker);
    timeCell(c[5], run.created_at_ms);
    setCell(c[6], duration(run.duration_ms));
    setCell(c[7], run.outcome || (run.waiting_for ? "waiting: " + run.waiting_for : null));
    c[7].className = "result";
  });
  // Where this page is among all that match, when the broker knows how many do: the
  // live first page from the counts, a listing from its total.
  const shownCount = state.page ? state.page.length : Math.min(PAGE, state.runs.size);
  const total = state.page ? state.total : Object.values(state.counts || {}).reduce((n, c) => n + c, 0);
  const fromOldest = state.route.params.get("after") === "0";
  const skipped = fromOldest && total !== null && total !== undefined
    ? Math.max(0, Number(total) - shownCount)
    : Number(state.route.params.get("at") || 0);
  let info;
  if (total !== null && total !== undefined && shownCount > 0) {
    info = `${(skipped + 1).toLocaleString()}–${(skipped + shownCount).toLocaleString()} of ${Number(total).toLocaleString()}`;
    if (!state.page) info += ", live";
  } else {
    info = state.page ? (state.page.length + " runs on this page") : "newest runs, live";
  }
  if (state.resume) info += " (the broker stopped looking here: Older looks further back)";
  $("#page-info").textContent = info;
  $("#newer").disabled = !state.route.params.get("before") && !state.route.params.has("after");
  $("#oldest").disabled = state.route.params.get("after") === "0";
  const list = state.page || [...state.runs.values()];
  $("#older").disabled = (list.length < PAGE && !state.resume) || state.route.params.get("after") === "0";
}

function renderWorkers() {
  const now = Date.now() + state.clockOffset;
  syncRows($("#workers tbody"), state.workers, (w) => w.id, () => {
    const row = emptyRow(9);
    const drain = document.createElement("button");
    drain.type = "button";
    drain.textContent = "Drain";
    drain.addEventListener("click", () => drainWorker(row.dataset.key));
    row.lastChild.className = "operator-only whole-broker";
    row.lastChild.appendChild(drain);
    return row;
  }, (row, worker) => {
    const c = row.children;
    linkCell(c[0], "#/worker/" + encodeURIComponent(worker.id), worker.id);
    setCell(c[1], worker.online ? (worker.draining ? "draining" : "online") : "not answering");
    c[1].className = worker.online ? "" : "offline";
    setCell(c[2], worker.version);
    setCell(c[3], worker.hostname);
    setCell(c[4], worker.pools.join(", "));
    setCell(c[5], worker.concurrency);
    setCell(c[6], worker.running.length);
    const age = worker.last_seen_ms ? Math.max(0, Math.round((now - worker.last_seen_ms) / 1000)) + " s ago" : "-";
    setCell(c[7], age, worker.last_seen_ms ? new Date(worker.last_seen_ms).toLocaleString() + " (" + zoneName() + ")" : "");
    c[8].firstChild.disabled = !worker.online || worker.draining;
  });
}

function renderAlerts() {
  const alerts = (state.status && state.status.alerts) || [];
  const box = $("#alerts");
  // Raised until someone has seen them; all of them are on the Alerts tab.
  const raised = alerts.filter((a) => !a.acknowledged);
  syncRows(box, raised, (a) => a.id || a.message, () => {
    const div = document.createElement("div");
    div.className = "warning";
    div.append(document.createElement("span"), " ");
    const link = document.createElement("a");
    link.textContent = "details";
    div.append(link);
    return div;
  }, (div, alert) => {
    setCell(div.firstChild, alert.message);
    div.lastChild.href = "#/alerts?id=" + encodeURIComponent(alert.id);
    div.lastChild.setAttribute("aria-label", "Details of the alert: " + alert.message);
  });
  if (state.route.view === "alerts") renderStandingAlerts();
  // A pool with queued runs and no live worker to take them.
  const live = new Set(state.workers.filter((w) => w.online).flatMap((w) => w.pools));
  const queued = (state.status && state.status.queued_by_pool) || {};
  const stuck = Object.keys(queued).filter((pool) => queued[pool] > 0 && !live.has(pool));
  syncRows($("#pool-warnings"), stuck, (pool) => pool, () => {
    const div = document.createElement("div");
    div.className = "warning";
    return div;
  }, (div, pool) => setCell(div, `Pool ${pool} has queued runs and no live worker that can take them.`));
}

function describeSchedule(spec) {
  const s = spec.schedule;
  let out = "manual";
  if (s.cron && s.cron.length) out = "cron " + s.cron.join(" | ");
  else if (s.every_ms) out = "every " + duration(s.every_ms);
  else if (s.at) out = "at " + s.at;
  if (s.timezone) out += " (" + s.timezone + ")";
  return out;
}

/// A stored outcome in words, as live summaries give it (those are words already).
function describeOutcome(outcome) {
  if (!outcome || typeof outcome === "string") {
    return { killed: "killed on request", timed_out: "killed after its timeout" }[outcome] || outcome || null;
  }
  if (outcome.exited) return "exited with code " + outcome.exited.code;
  if (outcome.signaled) return "terminated by signal " + outcome.signaled.signal;
  if (outcome.failed_to_start) return "could not start: " + outcome.failed_to_start.reason;
  if (outcome.lease_expired) return "stopped by its worker: no answer from the broker for " + outcome.lease_expired.silent_ms + " ms (its lease)";
  return JSON.stringify(outcome);
}

function jobState(job) {
  if (job.state.auto_disabled) return "auto-disabled";
  if (!job.spec.enabled) return "disabled";
  return job.active ? "enabled" : "pool disabled";
}

function renderJobs() {
  loadUpcoming();
  const tag = state.route.params.get("tag");
  const name = (state.route.params.get("name") || "").toLowerCase();
  const jobs = [...state.jobs.values()]
    .filter((job) => !tag || (job.spec.tags || []).includes(tag))
    .filter((job) => !name || job.spec.name.toLowerCase().includes(name))
    .sort((a, b) => a.spec.name.localeCompare(b.spec.name));
  syncRows($("#jobs tbody"), jobs, (job) => job.spec.name, () => {
    const row = emptyRow(10);
    const actions = row.lastChild;
    actions.className = "operator-only actions-cell";
    const run = document.createElement("button");
    run.type = "button";
    run.textContent = "Run now";
    run.addEventListener("click", () => enqueue(row.dataset.key));
    const toggle = document.createElement("button");
    toggle.type = "button";
    toggle.addEventListener("click", async () => {
      const enable = toggle.dataset.enable === "true";
      if (!enable && !(await confirmAction(`Disable ${row.dataset.key}? It stops firing until enabled again.`, "Disable"))) return;
      setEnabled(row.dataset.key, enable);
    });
    actions.append(run, toggle);
    return row;
  }, (row, job) => {
    const c = row.children;
    const spec = job.spec;
    linkCell(c[0], "#/job/" + encodeURIComponent(spec.name), spec.name);
    setCell(c[1], spec.pool);
    tagLinks(c[2], spec.tags || []);
    setCell(c[3], describeSchedule(spec));
    // A job whose ticks start nothing has no next run to show.
    if (job.active && job.next_fire_ms) timeCell(c[4], job.next_fire_ms);
    else setCell(c[4], "-", "");
    setCell(c[5], jobState(job));
    // How its latest runs ended, as the broker keeps them with the job.
    const recent = job.state.recent_runs || [];
    const last = recent[recent.length - 1];
    if (last) {
      setCell(c[6], last[0].replace("_", " "));
      c[6].className = "state " + last[0];
      c[6].title = "ended " + new Date(last[1]).toLocaleString() + " (" + zoneName() + ")";
    } else {
      setCell(c[6], "none yet", "");
      c[6].className = "";
    }
    const succeeded = recent.filter((r) => r[0] === "succeeded").length;
    setCell(c[7], recent.length ? `${succeeded} of ${recent.length}` : "-", recent.length ? `of its last ${recent.length} runs` : "");
    const key = recent.map((r) => r[1]).join();
    if (c[8].dataset.key !== key) {
      c[8].dataset.key = key;
      c[8].replaceChildren(sparkline(recent));
    }
    const toggle = c[9].lastChild;
    const enable = !spec.enabled;
    toggle.dataset.enable = String(enable);
    setCell(toggle, enable ? "Enable" : "Disable");
  });
}

/// A job's tags, each a link to the jobs that carry it (made again only when they change).
function tagLinks(td, tags) {
  const key = tags.join("\n");
  if (td.dataset.tags === key) return;
  td.dataset.tags = key;
  const parts = [];
  for (const tag of tags) {
    if (parts.length) parts.push(" ");
    const link = document.createElement("a");
    link.href = "#/jobs?tag=" + encodeURIComponent(tag);
    link.textContent = tag;
    parts.push(link);
  }
  td.replaceChildren(...parts);
}

// ---- counts over time (the broker's series) ----

const SVG = "http://www.w3.org/2000/svg";

/// Stacked bars of a series' runs ended per bucket (succeeded, failed, otherwise), each
/// bar carrying its counts, and a line that says it in words.
function drawCounts(figure, series, span) {
  const points = series.points;
  const total = (p) => p.succeeded + p.failed + p.other;
  const max = Math.max(1, ...points.map(total));
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${points.length * 10} 60`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("aria-hidden", "true");
  points.forEach((p, i) => {
    const g = document.createElementNS(SVG, "g");
    g.dataset.at = p.at_ms;
    g.dataset.succeeded = p.succeeded;
    g.dataset.failed = p.failed;
    g.dataset.other = p.other;
    let y = 60;
    for (const [value, kind] of [[p.succeeded, "ok"], [p.failed, "bad"], [p.other, "other"]]) {
      if (!value) continue;
      const height = (value / max) * 58;
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("x", i * 10 + 1);
      rect.setAttribute("width", 8);
      rect.setAttribute("y", y - height);
      rect.setAttribute("height", height);
      rect.setAttribute("class", kind);
      g.appendChild(rect);
      y -= height;
    }
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${new Date(p.at_ms).toLocaleString()}: ${p.succeeded} succeeded, ${p.failed} failed, ${p.other} other; ${p.started} started (wait ${duration(p.wait_avg_ms)} on average), at most ${p.queued} queued`;
    g.appendChild(title);
    svg.appendChild(g);
  });
  const sum = (key) => points.reduce((n, p) => n + p[key], 0);
  const words = document.createElement("p");
  const waits = sum("started")
    ? `wait to start p50 ≤ ${duration(series.wait_p50_ms)}, p99 ≤ ${duration(series.wait_p99_ms)}, longest ${duration(Math.max(0, ...points.map((p) => p.wait_max_ms)))}`
    : "nothing started";
  words.textContent = `${span}: ${sum("started")} started, ${sum("succeeded")} succeeded, ${sum("failed")} failed, ${sum("other")} otherwise ended; ` +
    `${waits}; at most ${Math.max(0, ...points.map((p) => p.queued))} queued.`;
  figure.querySelector(".chart").replaceChildren(svg, words);
}

/// Fetches a series into a figure; a caller who may not see it gets no figure.
async function loadCounts(figure, query, span) {
  try {
    drawCounts(figure, await api("GET", "/api/v1/series?" + query), span);
    figure.hidden = false;
  } catch (error) {
    figure.hidden = true;
  }
}

/// The runs page's chart, asked again every 10 s while it is shown.
const COUNTS_EVERY_MS = 10000;
function refreshRunsChart() {
  if (state.route.view !== "runs" || document.hidden) return;
  loadCounts($("#runs-chart"), "resolution=minute&points=60", "The last hour");
}
setInterval(refreshRunsChart, COUNTS_EVERY_MS);

// ---- a pool: #/pool/<name> ----

async function openPool(name) {
  state.pool = name;
  $("#pool-title").textContent = "Pool " + name;
  renderPool();
  $("#pool-title").focus();
  await loadCounts($("#pool-counts"), "pool=" + encodeURIComponent(name) + "&resolution=minute&points=60", "The last hour");
}

/// The pool as the status has it: paused or not, its queue, its workers and slots.
function renderPool() {
  const name = state.pool;
  const status = state.status || {};
  const paused = (status.disabled_pools || []).includes(name);
  const online = state.workers.filter((w) => w.online && w.pools.includes(name));
  const facts = [
    ["State", paused ? "paused (its jobs' ticks are skipped; queued runs wait)" : online.length ? "served" : "no worker"],
    ["Queued now", String((status.queued_by_pool || {})[name] || 0)],
    ["Held by a limit", String((status.held_by_pool || {})[name] || 0) + " of the queued (a job's or the pool's max_concurrent)"],
    ["Oldest waiting", (status.oldest_queued_by_pool || {})[name] ? "could start " + relative((status.oldest_queued_by_pool || {})[name]).shown : "nothing waits"],
    ["Workers online", online.map((w) => w.id).join(", ") || "none"],
    ["Slots in use", online.reduce((n, w) => n + w.running.length, 0) + " of " + online.reduce((n, w) => n + w.concurrency, 0)],
  ];
  const list = $("#pool-facts");
  list.replaceChildren(...facts.flatMap(([term, value]) => {
    const dt = document.createElement("dt");
    dt.textContent = term;
    const dd = document.createElement("dd");
    dd.textContent = value;
    return [dt, dd];
  }));
  const toggle = $("#pool-toggle");
  toggle.textContent = paused ? "Resume" : "Pause";
  toggle.dataset.paused = String(paused);
}

$("#pool-toggle").addEventListener("click", async () => {
  const name = state.pool;
  const resume = $("#pool-toggle").dataset.paused === "true";
  if (!resume && !(await confirmAction(`Pause pool ${name}? Its jobs' ticks are skipped and nothing new is handed out until it is resumed.`, "Pause"))) return;
  try {
    await api("POST", "/api/v1/pools/" + encodeURIComponent(name) + (resume ? "/enable" : "/disable"));
    showMessage(`Pool ${name} ${resume ? "resumed" : "paused"}.`);
  } catch (error) {
    showMessage(`Cannot ${resume ? "resume" : "pause"} ${name}: ${error.message}`);
  }
});

/// How many fires "Coming up" lists, and how often it is asked again while shown.
const UPCOMING_SHOWN = 10;
const UPCOMING_EVERY_MS = 5000;

/// The next fires across all jobs, asked of the broker (at most every few seconds).
async function loadUpcoming() {
  const now = Date.now();
  if (state.upcomingAt && now - state.upcomingAt < UPCOMING_EVERY_MS) return;
  state.upcomingAt = now;
  let fires;
  try {
    fires = (await api("GET", "/api/v1/upcoming?limit=" + UPCOMING_SHOWN)).fires;
  } catch (error) {
    return;
  }
  const list = $("#upcoming");
  const items = fires.map((fire) => {
    const li = document.createElement("li");
    const time = document.createElement("span");
    timeCell(time, fire.at_ms);
    const link = document.createElement("a");
    link.href = "#/job/" + encodeURIComponent(fire.job);
    link.textContent = fire.job;
    li.append(time, " ", link);
    return li;
  });
  if (!items.length) {
    const li = document.createElement("li");
    li.textContent = "No job is scheduled to fire.";
    items.push(li);
  }
  list.replaceChildren(...items);
}

/// Bars of a job's latest runs' durations (its state's recent runs), failures marked.
function sparkline(recent) {
  const span = document.createElement("span");
  span.className = "spark";
  span.setAttribute("role", "img");
  span.setAttribute("aria-label", "durations of the last runs");
  const longest = Math.max(1, ...recent.map((r) => r[2]));
  for (const [ended, , ran] of recent) {
    const bar = document.createElement("i");
    bar.style.height = Math.max(2, Math.round((ran / longest) * 22)) + "px";
    bar.title = `${duration(ran)} (${ended.replace("_", " ")})`;
    if (ended !== "succeeded") bar.className = "bad";
    span.appendChild(bar);
  }
  return span;
}

// ---- views and URLs: #/runs?state=…&job=…&before=…, #/workers, #/jobs, #/run/<id> ----

function route() {
  const hash = location.hash.replace(/^#\/?/, "") || "runs";
  const [path, query] = hash.split("?");
  const [view, arg] = path.split("/");
  const known = ["runs", "workers", "jobs", "alerts", "audit", "run", "job", "worker", "pool"];
  state.route = { view: known.includes(view) ? view : "runs", arg: arg && decodeURIComponent(arg), params: new URLSearchParams(query || "") };
  const section = { run: "runs", job: "jobs", worker: "workers", pool: "workers" }[state.route.view] || state.route.view;
  for (const link of document.querySelectorAll("a.tab")) {
    const current = link.dataset.tab === section;
    link.classList.toggle("active", current);
    if (current) link.setAttribute("aria-current", "page"); else link.removeAttribute("aria-current");
  }
  for (const name of ["runs", "workers", "jobs", "alerts", "audit"]) $("#tab-" + name).hidden = name !== state.route.view;
  for (const name of ["run", "job", "worker", "pool"]) $("#" + name + "-view").hidden = state.route.view !== name;
  showMessage("");
  if (state.route.view === "run") return openRun(state.route.arg);
  unfollow();
  if (state.route.view === "job") return openJob(state.route.arg);
  if (state.route.view === "worker") return openWorker(state.route.arg);
  if (state.route.view === "pool") return openPool(state.route.arg);
  if (state.route.view === "runs") { loadRunsPage(); refreshRunsChart(); }
  if (state.route.view === "audit") loadAuditPage();
  if (state.route.view === "alerts") loadAlertsPage();
  if (state.route.view === "jobs") {
    $("#jobs-tag").value = state.route.params.get("tag") || "";
    $("#jobs-name").value = state.route.params.get("name") || "";
  }
  markDirty("runs", "workers", "jobs", "alerts");
}

window.addEventListener("hashchange", route);

// ---- alerts: #/alerts?id=<alert>&before=<seq> ----

/// The standing alerts as the status has them (it comes every few seconds), each with
/// who has seen it and a way to say so.
function renderStandingAlerts() {
  const alerts = (state.status && state.status.alerts) || [];
  const wanted = state.route.params.get("id");
  syncRows($("#standing tbody"), alerts, (a) => a.id, () => {
    const row = emptyRow(5);
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "Acknowledge";
    row.lastChild.className = "operator-only";
    row.lastChild.appendChild(button);
    return row;
  }, (row, alert) => {
    const c = row.children;
    setCell(c[0], alert.id);
    timeCell(c[1], alert.since_ms);
    setCell(c[2], alert.message);
    setCell(c[3], alert.acknowledged ? alert.acknowledged.by : "nobody yet");
    const button = c[4].firstChild;
    button.disabled = !!alert.acknowledged;
    button.setAttribute("aria-label", "Acknowledge " + alert.id);
    button.onclick = () => acknowledge(alert.id);
    row.classList.toggle("picked", alert.id === wanted);
  });
  $("#standing-none").hidden = alerts.length > 0;
}

async function acknowledge(id) {
  try {
    await api("POST", "/api/v1/alerts/" + encodeURIComponent(id) + "/ack");
    showMessage(`Alert ${id} acknowledged.`);
    loadAlertsPage();
  } catch (error) {
    showMessage(`Cannot acknowledge ${id}: ${error.message}`);
  }
}

async function loadAlertsPage() {
  const before = state.route.params.get("before");
  const query = "?limit=" + AUDIT_PAGE + (before ? "&before=" + encodeURIComponent(before) : "");
  let body;
  const asked = location.hash;
  try {
    body = await api("GET", "/api/v1/alerts" + query);
  } catch (error) {
    return showMessage(error.message);
  }
  // An answer that comes after the page moved on (another view, or another page of this
  // one) is not this page's.
  if (location.hash !== asked) return;
  if (state.status) state.status.alerts = body.current;
  renderStandingAlerts();
  renderAlerts();
  syncRows($("#alert-history tbody"), body.history, (r) => String(r.seq), () => emptyRow(6), (row, record) => {
    const c = row.children;
    setCell(c[0], record.seq);
    timeCell(c[1], record.raised_ms);
    if (record.cleared_ms) timeCell(c[2], record.cleared_ms); else setCell(c[2], "standing");
    setCell(c[3], record.id);
    setCell(c[4], record.message);
    setCell(c[5], record.acknowledged ? record.acknowledged.by : "");
  });
  const oldest = body.history.length ? body.history[body.history.length - 1].seq : 0;
  $("#alerts-older").disabled = body.history.length < AUDIT_PAGE || oldest <= 1;
  $("#alerts-older").onclick = () => { location.hash = "#/alerts?before=" + oldest; };
  $("#alerts-newer").disabled = !before;
  $("#alerts-newer").onclick = () => { location.hash = "#/alerts"; };
}

// ---- the audit log: #/audit?before=<seq> ----

const AUDIT_PAGE = 50;

async function loadAuditPage() {
  const before = state.route.params.get("before");
  const query = "?limit=" + AUDIT_PAGE + (before ? "&before=" + encodeURIComponent(before) : "");
  let entries;
  const asked = location.hash;
  try {
    entries = (await api("GET", "/api/v1/audit" + query)).entries;
  } catch (error) {
    return showMessage(error.message);
  }
  // As for the alerts: only the page that asked shows the answer.
  if (location.hash !== asked) return;
  const body = $("#audit tbody");
  syncRows(body, entries, (e) => String(e.seq), () => emptyRow(6), (row, entry) => {
    const c = row.children;
    setCell(c[0], entry.seq);
    timeCell(c[1], entry.at_ms);
    setCell(c[2], entry.actor);
    setCell(c[3], entry.action);
    setCell(c[4], entry.target);
    setCell(c[5], entry.outcome);
  });
  if (!entries.length) showMessage(before ? "No older changes." : "No changes recorded yet.");
  const oldest = entries.length ? entries[entries.length - 1].seq : 0;
  $("#audit-older").disabled = entries.length < AUDIT_PAGE || oldest <= 1;
  $("#audit-older").onclick = () => { location.hash = "#/audit?before=" + oldest; };
  $("#audit-newer").disabled = !before;
  $("#audit-newer").onclick = () => { location.hash = "#/audit"; };
}

$("#pause").addEventListener("click", () => {
  state.paused = !state.paused;
  const button = $("#pause");
  button.setAttribute("aria-pressed", String(state.paused));
  button.textContent = state.paused ? "Resume" : "Pause";
  if (!state.paused) markDirty("runs");
});

// The first Tab of a page: past the header and filters, to what the view shows (from a
// table, the next Tab is its first row).
$("#skip").addEventListener("click", (event) => {
  event.preventDefault();
  const target = { runs: "#runs", workers: "#workers", jobs: "#jobs", alerts: "#standing", audit: "#audit", run: "#run-title", job: "#job-title", worker: "#worker-title", pool: "#pool-title" }[state.route.view];
  if (target) $(target).focus();
});

/// The URL's run filters, which are also the API's query parameters.
const FILTERS = ["state", "job", "worker", "since", "until", "text", "output", "before", "after"];

function runsQuery(extra) {
  const params = new URLSearchParams();
  for (const name of FILTERS) {
    const value = state.route.params.get(name);
    if (value) params.set(name, value);
  }
  for (const [name, value] of Object.entries(extra || {})) params.set(name, value);
  return params;
}

/// A time for a datetime-local input (the browser's zone) and back.
function toLocalInput(ms) {
  if (!ms) return "";
  const date = new Date(Number(ms));
  return new Date(date.getTime() - date.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

function fromLocalInput(value) {
  return value ? String(new Date(value).getTime()) : "";
}

/// Runs picked by hand for a bulk action (kept while they scroll out of the live list).
function renderSelection() {
  const count = state.selected.size;
  $("#selection").hidden = count === 0;
  $("#selection-count").textContent = `${count} run${count === 1 ? "" : "s"} selected`;
}

$("#select-shown").addEventListener("click", () => {
  for (const run of shownRuns().slice(0, BULK_MAX - state.selected.size)) state.selected.add(run.id);
  for (const pick of document.querySelectorAll("#runs tbody td.select input")) pick.checked = true;
  renderSelection();
});

function clearSelection() {
  state.selected.clear();
  for (const pick of document.querySelectorAll("#runs tbody td.select input")) pick.checked = false;
  renderSelection();
}
$("#selection-clear").addEventListener("click", clearSelection);

$("#selection-retry").addEventListener("click", async () => {
  const runs = [...state.selected];
  if (!(await confirmAction(`Retry ${runs.length} selected run${runs.length === 1 ? "" : "s"}? Each that has ended gets a new attempt.`, `Retry ${runs.length}`))) return;
  try {
    const { retried, refused } = await api("POST", "/api/v1/bulk/retry", { runs });
    showMessage(`Retried ${retried.length} run${retried.length === 1 ? "" : "s"}` +
      (refused.length ? `; ${refused.length} refused (${refused[0].run}: ${refused[0].message})` : "."));
    clearSelection();
  } catch (error) {
    showMessage("Cannot retry: " + error.message);
  }
});

$("#selection-kill").addEventListener("click", async () => {
  const runs = [...state.selected];
  if (!(await confirmAction(`Kill or cancel ${runs.length} selected run${runs.length === 1 ? "" : "s"}? Running ones are stopped; queued ones will not run.`, `Kill ${runs.length}`))) return;
  try {
    const { outcomes } = await api("POST", "/api/v1/bulk/kill", { runs });
    const acted = outcomes.filter((o) => o.killing || o.cancelled).length;
    showMessage(`Kill sent to or cancelled ${acted} run${acted === 1 ? "" : "s"}` +
      (acted < outcomes.length ? `; ${outcomes.length - acted} had already ended or were not found.` : "."));
    clearSelection();
  } catch (error) {
    showMessage("Cannot kill: " + error.message);
  }
});

/// What the bulk button does to runs in a state: retry ended ones that did not succeed,
/// cancel queued ones, kill those on their way or running.
const BULK = {
  failed: "retry", timed_out: "retry", lost: "retry", killed: "retry", cancelled: "retry", missed: "retry",
  queued: "cancel", assigned: "kill", running: "kill",
};
/// Runs one bulk action takes at most (the broker's limit).
const BULK_MAX = 1000;

function showBulk() {
  const action = BULK[state.route.params.get("state")];
  const button = $("#bulk");
  button.hidden = !action;
  if (action) button.textContent = { retry: "Retry all…", cancel: "Cancel all…", kill: "Kill all…" }[action];
}

/// Every run the filters match (up to BULK_MAX), counted and confirmed, then acted on in
/// one request to the broker.
$("#bulk").addEventListener("click", async () => {
  const filterState = state.route.params.get("state");
  const action = BULK[filterState];
  if (!action) return;
  let runs;
  try {
    // From the newest, whatever page is shown.
    const query = runsQuery({ limit: BULK_MAX });
    query.delete("before");
    const { body, headers } = await apiResponse("GET", "/api/v1/runs?" + query);
    runs = body.map((run) => run.id);
    if (headers.get("jobcast-resume-before") && runs.length < BULK_MAX) {
      showMessage(`The broker stopped looking after ${runs.length} matching runs; narrow the filter (a job, a time range) to act on the rest.`);
    }
  } catch (error) {
    return showMessage("Cannot list the runs: " + error.message);
  }
  if (!runs.length) return showMessage("No run matches.");
  const what = `${runs.length}${runs.length === BULK_MAX ? " (the newest; at most " + BULK_MAX + " at a time)" : ""} ${filterState.replace("_", " ")} run${runs.length === 1 ? "" : "s"}`;
  const question = {
    retry: `Retry ${what}? Each gets a new attempt.`,
    cancel: `Cancel ${what}? They will not run.`,
    kill: `Kill ${what}? Their processes are stopped.`,
  }[action];
  const label = { retry: `Retry ${runs.length}`, cancel: `Cancel ${runs.length}`, kill: `Kill ${runs.length}` }[action];
  if (!(await confirmAction(question, label))) return;
  try {
    if (action === "retry") {
      const { retried, refused } = await api("POST", "/api/v1/bulk/retry", { runs });
      showMessage(`Retried ${retried.length} run${retried.length === 1 ? "" : "s"}` +
        (refused.length ? `; ${refused.length} refused (${refused[0].run}: ${refused[0].message})` : "."));
    } else {
      const { outcomes } = await api("POST", "/api/v1/bulk/kill", { runs });
      const acted = outcomes.filter((o) => o.killing || o.cancelled).length;
      showMessage(`${action === "cancel" ? "Cancelled" : "Kill sent to"} ${acted} run${acted === 1 ? "" : "s"}` +
        (acted < outcomes.length ? `; ${outcomes.length - acted} had already ended or were not found.` : "."));
    }
  } catch (error) {
    showMessage(`Cannot ${action}: ${error.message}`);
  }
});

async function loadRunsPage() {
  const params = state.route.params;
  showBulk();
  $("#filter-state").value = params.get("state") || "";
  $("#filter-job").value = params.get("job") || "";
  $("#filter-worker").value = params.get("worker") || "";
  $("#filter-since").value = toLocalInput(params.get("since"));
  $("#filter-until").value = toLocalInput(params.get("until"));
  $("#search").value = params.get("text") || "";
  $("#filter-output").value = params.get("output") || "";
  state.resume = null;
  if (!FILTERS.some((name) => params.get(name))) {
    state.page = null;
    markDirty("runs");
    return;
  }
  try {
    const asked = location.hash;
    const { body, headers } = await apiResponse("GET", "/api/v1/runs?" + runsQuery({ limit: PAGE }));
    // An answer that comes after the page moved on is not this page's.
    if (location.hash !== asked) return;
    // Pages from the oldest come oldest first; shown newest first like the others.
    state.page = params.has("after") ? body.reverse() : body;
    // The broker looks at a bounded number of runs per listing: where to go on from.
    state.resume = headers.get("jobcast-resume-before");
    state.total = headers.get("jobcast-total");
    markDirty("runs");
  } catch (error) {
    showMessage("Cannot list runs: " + error.message);
  }
}

for (const name of STATES) {
  const option = document.createElement("option");
  option.value = name;
  option.textContent = name.replace("_", " ");
  $("#filter-state").appendChild(option);
}

function applyFilters() {
  const params = new URLSearchParams();
  for (const [name, id] of [["state", "#filter-state"], ["job", "#filter-job"], ["worker", "#filter-worker"], ["text", "#search"], ["output", "#filter-output"]]) {
    const value = $(id).value.trim();
    if (value) params.set(name, value);
  }
  for (const [name, id] of [["since", "#filter-since"], ["until", "#filter-until"]]) {
    const value = fromLocalInput($(id).value);
    if (value) params.set(name, value);
  }
  const query = params.toString();
  location.hash = "#/runs" + (query ? "?" + query : "");
}

$("#filters").addEventListener("submit", (event) => { event.preventDefault(); applyFilters(); });
$("#filter-state").addEventListener("change", applyFilters);
for (const id of ["#filter-job", "#filter-worker", "#filter-since", "#filter-until", "#search", "#filter-output"]) $(id).addEventListener("change", applyFilters);
$("#csv").addEventListener("click", (event) => {
  event.preventDefault();
  const params = runsQuery();
  params.delete("before");
  download("/api/v1/runs.csv?" + params, "runs.csv");
});
$("#older").addEventListener("click", () => {
  const list = shownRuns();
  const before = list.length < PAGE && state.resume && !state.route.params.has("after")
    ? state.resume
    : (list.length ? list[list.length - 1].seq : null);
  if (!before) return;
  const params = runsQuery({ before });
  params.delete("after");
  params.set("at", Number(state.route.params.get("at") || 0) + list.length);
  location.hash = "#/runs?" + params;
});
/// The oldest runs that match, a page from the very first.
$("#oldest").addEventListener("click", () => {
  const params = runsQuery({ after: 0 });
  params.delete("before");
  location.hash = "#/runs?" + params;
});
$("#newer").addEventListener("click", () => {
  const params = runsQuery();
  params.delete("before");
  const list = shownRuns();
  // From the oldest, the next page up; at the newest end, the live page.
  const fromOldest = state.route.params.has("after");
  if (fromOldest && state.resume) params.set("after", state.resume);
  else if (fromOldest && list.length === PAGE) params.set("after", list[0].seq);
  else params.delete("after");
  location.hash = "#/runs" + (params.toString() ? "?" + params : "");
});
document.addEventListener("keydown", (event) => {
  if (event.key === "/" && !["INPUT", "SELECT", "TEXTAREA"].includes(document.activeElement.tagName)) {
    event.preventDefault();
    if (state.route.view !== "runs") location.hash = "#/runs";
    $("#search").focus();
  }
});

// ---- job page ----

const jobPage = { name: null, detail: null, runs: [], refetch: 0 };

async function openJob(name) {
  jobPage.name = name;
  jobPage.detail = null;
  jobPage.runs = [];
  $("#job-form").hidden = true;
  $("#job-title").textContent = "Job " + name;
  // Until the job is known, the toggle cannot say (or do) what it would: the page before
  // may have shown another job's.
  $("#job-toggle").disabled = true;
  await loadJob(name);
  const spec = jobPage.detail && jobPage.detail.job.spec;
  if (state.route.params.has("run") && spec && state.role !== "viewer") showParamForm(spec);
  else $("#job-title").focus();
}

async function loadJob(name) {
  try {
    const [detail, runs] = await Promise.all([
      api("GET", "/api/v1/jobs/" + encodeURIComponent(name)),
      api("GET", "/api/v1/runs?" + new URLSearchParams({ job: name, limit: 200 })),
    ]);
    if (jobPage.name !== name) return;
    jobPage.detail = detail;
    jobPage.runs = runs;
    renderJob();
    loadCounts($("#job-counts"), "job=" + encodeURIComponent(name) + "&resolution=hour&points=48", "The last 48 hours");
  } catch (error) {
    showMessage(`Cannot show job ${name}: ${error.message}`);
  }
}

/// Live changes to the job (its state, its runs) fetch its page again, at most once a second.
function jobChanged(runs) {
  if (state.route.view !== "job" || jobPage.refetch) return;
  if (runs && !runs.some((run) => run.job === jobPage.name)) return;
  jobPage.refetch = setTimeout(() => {
    jobPage.refetch = 0;
    if (state.route.view === "job") loadJob(jobPage.name);
  }, 1000);
}

function renderJob() {
  const detail = jobPage.detail;
  if (!detail) return;
  const job = state.jobs.get(jobPage.name) || detail.job;
  const spec = job.spec;
  const zone = detail.timezone || "UTC";
  const facts = [["Pool", spec.pool], ["Team", spec.team], ["Tags", (spec.tags || []).join(", ")],
    ["Priority", spec.priority || 0], ["At once", spec.policy && spec.policy.max_concurrent ? "at most " + spec.policy.max_concurrent : "no limit"],
    ["Schedule", describeSchedule(spec)], ["State", jobState(job)],
    ["Overlap", spec.policy && spec.policy.overlap], ["Timeout", spec.timeout_ms ? duration(spec.timeout_ms) : "none"]];
  fillFacts($("#job-facts"), facts);
  $("#job-zone").textContent = "(" + zone + ")";
  const format = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium", timeZone: zone });
  syncRows($("#job-next"), detail.next_fires_ms.length ? detail.next_fires_ms : [0], (t) => String(t), () => document.createElement("li"),
    (li, t) => setCell(li, t ? format.format(new Date(t)) : "none: the job runs only when enqueued or is disabled"));
  setCell($("#job-toggle"), spec.enabled ? "Disable" : "Enable");
  $("#job-toggle").disabled = false;
  const ended = jobPage.runs.filter((r) => TERMINAL.includes(r.state));
  const ok = ended.filter((r) => r.state === "succeeded").length;
  $("#job-rate").textContent = ended.length ? `(${Math.round((ok / ended.length) * 100)} % of the last ${ended.length} succeeded)` : "(no finished run yet)";
  drawChart(ended);
  syncRows($("#job-runs tbody"), jobPage.runs.slice(0, PAGE), (run) => run.id, () => emptyRow(6), (row, run) => {
    const c = row.children;
    linkCell(c[0], "#/run/" + encodeURIComponent(run.id), run.id);
    setCell(c[1], run.state.replace("_", " "));
    c[1].className = "state " + run.state;
    setCell(c[2], run.worker);
    timeCell(c[3], run.created_at_ms);
    setCell(c[4], duration(run.finished_at_ms && run.started_at_ms ? run.finished_at_ms - run.started_at_ms : null));
    setCell(c[5], describeOutcome(run.outcome));
  });
}

/// Durations of finished runs over time: one bar each, oldest on the left, red when not
/// successful.
function drawChart(runs) {
  const svg = $("#job-chart");
  const points = runs.filter((r) => r.started_at_ms && r.finished_at_ms).sort((a, b) => a.seq - b.seq);
  const ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const title = document.createElementNS(ns, "title");
  title.textContent = points.length ? `Durations of the last ${points.length} finished runs` : "No finished run yet";
  svg.appendChild(title);
  if (!points.length) return;
  const longest = Math.max(1, ...points.map((r) => r.finished_at_ms - r.started_at_ms));
  const width = 600 / points.length;
  points.forEach((run, i) => {
    const took = run.finished_at_ms - run.started_at_ms;
    const height = Math.max(2, (took / longest) * 110);
    const bar = document.createElementNS(ns, "rect");
    bar.setAttribute("x", String(i * width));
    bar.setAttribute("y", String(120 - height));
    bar.setAttribute("width", String(Math.max(1, width - 1)));
    bar.setAttribute("height", String(height));
    bar.setAttribute("class", run.state === "succeeded" ? "ok" : "bad");
    svg.appendChild(bar);
  });
}

/// Keeps a list of facts, `[name, value, kind]` each: a `time` shows relative with the
/// absolute time as its title; `run`, `job` and `worker` link to their pages.
function fillFacts(dl, facts) {
  if (dl.childElementCount !== facts.length * 2) {
    dl.replaceChildren();
    for (const [name] of facts) {
      const dt = document.createElement("dt");
      dt.textContent = name;
      dl.append(dt, document.createElement("dd"));
    }
  }
  facts.forEach(([, value, kind], i) => {
    const dd = dl.children[i * 2 + 1];
    if (kind === "time") timeCell(dd, value);
    else if (kind && value) linkCell(dd, "#/" + kind + "/" + encodeURIComponent(value), value);
    else setCell(dd, value);
  });
}

$("#job-run").addEventListener("click", () => jobPage.name && enqueue(jobPage.name));
$("#jobs-filter").addEventListener("submit", (event) => event.preventDefault());
/// The jobs list's filters, kept in the URL.
function filterJobs() {
  const params = new URLSearchParams();
  const name = $("#jobs-name").value.trim();
  const tag = $("#jobs-tag").value.trim();
  if (name) params.set("name", name);
  if (tag) params.set("tag", tag);
  const query = params.toString();
  history.replaceState(null, "", "#/jobs" + (query ? "?" + query : ""));
  state.route.params = params;
  markDirty("jobs");
}
$("#jobs-tag").addEventListener("change", filterJobs);
$("#jobs-name").addEventListener("input", filterJobs);

/// The form for a job's parameters, built from its declaration.
function showParamForm(spec) {
  const fields = $("#job-form-fields");
  fields.replaceChildren();
  for (const [name, param] of Object.entries(spec.params || {})) {
    const label = document.createElement("label");
    const title = document.createElement("span");
    title.textContent = name + (param.required ? " (required)" : "");
    let input;
    if (param.type === "choice" || param.type === "boolean") {
      input = document.createElement("select");
      const options = param.type === "choice" ? param.choices : ["true", "false"];
      if (!param.default) options.unshift("");
      for (const value of options) {
        const option = document.createElement("option");
        option.value = value;
        option.textContent = value || "(none)";
        input.appendChild(option);
      }
    } else {
      input = document.createElement("input");
      input.type = param.secret ? "password" : (param.type === "integer" ? "number" : "text");
      if (param.type === "integer") input.step = "1";
      input.autocomplete = "off";
    }
    input.name = name;
    input.value = param.default || "";
    input.required = !!param.required;
    label.append(title, input);
    if (param.description) {
      const hint = document.createElement("span");
      hint.className = "hint";
      hint.textContent = param.description;
      label.appendChild(hint);
    }
    fields.appendChild(label);
  }
  $("#job-form").hidden = false;
  const first = fields.querySelector("input, select");
  if (first) first.focus();
}

$("#job-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const params = {};
  for (const input of $("#job-form-fields").querySelectorAll("input, select")) {
    if (input.value !== "") params[input.name] = input.value;
  }
  enqueue(jobPage.name, params);
});
$("#job-form-cancel").addEventListener("click", () => { $("#job-form").hidden = true; });
$("#job-toggle").addEventListener("click", async () => {
  const job = jobPage.detail && (state.jobs.get(jobPage.name) || jobPage.detail.job);
  if (!job) return;
  if (job.spec.enabled && !(await confirmAction(`Disable ${jobPage.name}? It stops firing until enabled again.`, "Disable"))) return;
  await setEnabled(jobPage.name, !job.spec.enabled);
  jobChanged();
});

// ---- worker page ----

const workerPage = { id: null };

function openWorker(id) {
  workerPage.id = id;
  $("#worker-title").textContent = "Worker " + id;
  renderWorker();
  $("#worker-title").focus();
}

function renderWorker() {
  const worker = state.workers.find((w) => w.id === workerPage.id);
  if (!worker) {
    fillFacts($("#worker-facts"), [["State", "unknown to the broker"]]);
    $("#worker-running").replaceChildren();
    $("#worker-drain").disabled = true;
    return;
  }
  const now = Date.now() + state.clockOffset;
  fillFacts($("#worker-facts"), [
    ["State", worker.online ? (worker.draining ? "draining" : "online") : "not answering"],
    ["Version", worker.version],
    ["Host", worker.hostname + " (pid " + worker.pid + ")"],
    ["Pools", worker.pools.join(", ")],
    ["Slots", worker.running.length + " of " + worker.concurrency + " in use"],
    ["Last heartbeat", worker.last_seen_ms ? Math.max(0, Math.round((now - worker.last_seen_ms) / 1000)) + " s ago" : "-"],
  ]);
  $("#worker-drain").disabled = !worker.online || worker.draining;
  syncRows($("#worker-running"), worker.running.length ? worker.running : [""], (id) => id, () => document.createElement("li"), (li, id) => {
    if (id) linkCell(li, "#/run/" + encodeURIComponent(id), id);
    else setCell(li, "nothing");
  });
}

$("#worker-drain").addEventListener("click", () => workerPage.id && drainWorker(workerPage.id));

// ---- run view ----

function follow(id) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify({ follow: id }));
  }
}

function unfollow() {
  if (state.following && state.socket && state.socket.readyState === WebSocket.OPEN) {
    state.socket.send(JSON.stringify({ unfollow: state.following }));
  }
  state.following = null;
}

/// The shown log, held to the same rule as the stored one: the first 20 % of the cap and
/// the newest 80 %, with a marker saying how much was cut between them. ANSI colours
/// (SGR) become styled spans; other escape sequences are dropped.
class LogView {
  constructor(pre, cap) {
    this.cap = Math.max(cap || 1048576, 1024);
    this.headCap = Math.floor(this.cap / 5);
    this.tailCap = this.cap - this.headCap;
    this.head = document.createElement("span");
    this.marker = document.createElement("span");
    this.marker.className = "cut";
    this.tail = document.createElement("span");
    pre.replaceChildren(this.head, this.marker, this.tail);
    this.pre = pre;
    this.headLen = 0;
    this.tailLen = 0;
    this.total = 0;   // stream bytes accounted for
    this.cut = 0;
    this.style = { fg: null, bold: false };
    this.encoder = new TextEncoder();
  }

  /// Starts from the stored log (already capped) and the stream offset it ends at.
  reset(stored, nextOffset) {
    const match = stored.match(/\n\[jobcast: (\d+) bytes cut\]\n/);
    if (match) {
      this.add(this.head, stored.slice(0, match.index), "head");
      this.cut = Number(match[1]);
      this.add(this.tail, stored.slice(match.index + match[0].length), "tail");
    } else {
      const head = stored.slice(0, this.headCap);
      this.add(this.head, head, "head");
      this.add(this.tail, stored.slice(head.length), "tail");
    }
    this.total = nextOffset;
    this.showMarker();
  }

  push(offset, data) {
    const bytes = this.encoder.encode(data).length;
    if (offset + bytes <= this.total) return;
    if (offset > this.total && this.cut === 0 && this.headLen < this.headCap && this.onHeadGap) {
      // Output missing from what should be the head (the feed kept only the newest of a
      // fast burst): the stored log has it.
      return this.onHeadGap();
    }
    if (offset > this.total) this.cut += offset - this.total;
    const atBottom = this.pre.scrollTop + this.pre.clientHeight >= this.pre.scrollHeight - 4;
    let rest = data;
    if (this.cut === 0 && this.headLen < this.headCap) {
      const room = this.headCap - this.headLen;
      this.add(this.head, rest.slice(0, room), "head");
      rest = rest.slice(room);
    }
    if (rest) this.add(this.tail, rest, "tail");
    this.trimTail();
    this.total = Math.max(this.total, offset + bytes);
    this.showMarker();
    if (atBottom) this.pre.scrollTop = this.pre.scrollHeight;
  }

  add(into, data, part) {
    if (!data) return;
    into.appendChild(this.colour(data));
    if (part === "head") this.headLen += data.length; else this.tailLen += data.length;
  }

  trimTail() {
    let excess = this.tailLen - this.tailCap;
    while (excess > 0 && this.tail.firstChild) {
      const node = this.tail.firstChild;
      const length = node.textContent.length;
      if (length <= excess) {
        node.remove();
        this.tailLen -= length;
        this.cut += length;
        excess -= length;
      } else {
        const textNode = node.nodeType === Node.TEXT_NODE ? node : node.firstChild;
        textNode.deleteData(0, excess);
        this.tailLen -= excess;
        this.cut += excess;
        excess = 0;
      }
    }
  }

  showMarker() {
    const shown = this.cut > 0 ? `\n[jobcast: ${this.cut} bytes cut]\n` : "";
    if (this.marker.textContent !== shown) this.marker.textContent = shown;
  }

  /// Text with SGR colour codes as a fragment of spans.
  colour(data) {
    const fragment = document.createDocumentFragment();
    const pattern = /\x1b\[([0-9;]*)([A-Za-z])/g;
    let last = 0;
    let match;
    const emit = (piece) => {
      if (!piece) return;
      if (!this.style.fg && !this.style.bold) return fragment.appendChild(document.createTextNode(piece));
      const span = document.createElement("span");
      span.textContent = piece;
      span.className = [this.style.fg ? "ansi-" + this.style.fg : "", this.style.bold ? "ansi-bold" : ""].join(" ").trim();
      fragment.appendChild(span);
    };
    while ((match = pattern.exec(data)) !== null) {
      emit(data.slice(last, match.index));
      last = pattern.lastIndex;
      if (match[2] !== "m") continue;
      for (const code of (match[1] || "0").split(";").map(Number)) {
        if (code === 0) this.style = { fg: null, bold: false };
        else if (code === 1) this.style.bold = true;
        else if (code === 22) this.style.bold = false;
        else if (code === 39) this.style.fg = null;
        else if ((code >= 30 && code <= 37) || (code >= 90 && code <= 97)) this.style.fg = String(code);
      }
    }
    emit(data.slice(last).replace(/\x1b[^a-zA-Z]*$/, ""));
    return fragment;
  }
}

/// Reads the stored log of the followed run and shows it, then what came meanwhile.
async function loadLog(id) {
  state.log = null;
  const detail = await api("GET", "/api/v1/runs/" + encodeURIComponent(id));
  if (state.following !== id) return null;
  state.log = new LogView($("#run-log"), detail.run.log_cap);
  state.log.reset(detail.log, detail.next_offset || 0);
  let reloaded = false;
  state.log.onHeadGap = () => {
    if (reloaded) return;
    reloaded = true;
    loadLog(id).catch((error) => { $("#run-message").textContent = error.message; });
  };
  for (const message of state.early.splice(0)) state.log.push(message.offset, message.data);
  return detail;
}

async function openRun(id) {
  unfollow();
  $("#run-message").textContent = "";
  state.following = id;
  state.detail = null;
  state.log = null;
  state.early = [];
  $("#run-title").textContent = "Run " + id;
  $("#run-facts").replaceChildren();
  $("#run-log").replaceChildren();
  follow(id);
  try {
    const detail = await loadLog(id);
    if (!detail) return;
    state.detail = detail.run;
    const exec = detail.run.spec.exec;
    $("#run-script").textContent = exec.script !== undefined ? exec.script : (exec.command || []).join(" ");
    refreshRunFacts();
    showLinkedRuns(detail.run);
    $("#run-title").focus();
  } catch (error) {
    $("#run-message").textContent = error.message;
  }
}

/// Links to the runs this run started: its retries and its chain's next runs (created
/// after it, so the listing stops at its creation).
async function showLinkedRuns(run) {
  const box = $("#run-links");
  box.hidden = true;
  try {
    const query = new URLSearchParams({ linked_to: run.id, since: run.created_at_ms, limit: 20 });
    const linked = await api("GET", "/api/v1/runs?" + query);
    if (state.following !== run.id || !linked.length) return;
    const links = linked.map((r) => {
      const a = document.createElement("a");
      a.href = "#/run/" + encodeURIComponent(r.id);
      a.textContent = `${r.id} (${r.job}, ${r.state.replace("_", " ")})`;
      return a;
    });
    const span = box.querySelector("span");
    span.replaceChildren();
    links.forEach((a, i) => { if (i) span.append(", "); span.append(a); });
    box.hidden = false;
  } catch (error) {
    $("#run-message").textContent = error.message;
  }
}

function refreshRunFacts() {
  const detail = state.detail;
  if (!detail) return;
  const live = state.runs.get(detail.id) || {};
  const run = { ...detail, ...live };
  $("#run-title").textContent = `Run ${run.id} of ${run.job}`;
  const now = Date.now() + state.clockOffset;
  const elapsed = run.started_at_ms && !run.finished_at_ms ? duration(now - run.started_at_ms) + " so far" : duration(run.duration_ms !== undefined ? run.duration_ms : null);
  const facts = [
    ["State", run.state],
    ["Job", run.job, "job"],
    ["Worker", run.worker, "worker"],
    ["Attempt", run.attempt],
    ["Scheduled", run.scheduled_at_ms, "time"],
    ["Created", run.created_at_ms, "time"],
    ["Started", run.started_at_ms, "time"],
    ["Finished", run.finished_at_ms, "time"],
    ["Duration", elapsed],
    ["Exit code", run.exit_code],
    ["Result", describeOutcome(run.outcome)],
    ["CPU time", run.usage && run.usage.cpu_us !== undefined ? duration(Math.round(run.usage.cpu_us / 1000)) : null],
    ["Peak memory", run.usage && run.usage.peak_memory_bytes !== undefined ? (run.usage.peak_memory_bytes / 1048576).toFixed(1) + " MiB" : null],
    // Reported after the broker had given the run up: kept, not dropped.
    ["Late result", run.late_result ? describeOutcome(run.late_result.outcome) + ", reported " + new Date(run.late_result.reported_at_ms).toISOString() : null],
    ["Parameters", Object.entries(run.params || {}).map(([k, v]) => k + "=" + v).join(", ") || null],
    ["Priority", run.priority || 0],
    ["Waiting for", run.state === "queued" ? run.waiting_for : null],
    ["Retry of", run.first_attempt, "run"],
    ["Started by", run.parent, "run"],
  ];
  fillFacts($("#run-facts"), facts);
  // The state is coloured like everywhere else.
  $("#run-facts").children[1].className = "state " + run.state;
  $("#run-kill").disabled = TERMINAL.includes(run.state);
  $("#run-retry").disabled = !TERMINAL.includes(run.state);
}

async function act(path, done) {
  try {
    const result = await api("POST", path);
    const said = done(result);
    $("#run-message").replaceChildren(...(Array.isArray(said) ? said : [said]));
  } catch (error) {
    $("#run-message").textContent = error.message;
  }
}

async function enqueue(job, params) {
  const spec = state.jobs.get(job) && state.jobs.get(job).spec;
  // A job with parameters is run from the form on its page.
  if (!params && spec && spec.params && Object.keys(spec.params).length) {
    location.hash = "#/job/" + encodeURIComponent(job) + "?run";
    return;
  }
  try {
    const run = await api("POST", "/api/v1/jobs/" + encodeURIComponent(job) + "/enqueue", params ? { params } : undefined);
    location.hash = "#/run/" + encodeURIComponent(run.id);
  } catch (error) {
    showMessage(`Cannot run ${job}: ${error.message}`);
  }
}

async function setEnabled(job, enabled) {
  try {
    await api("POST", "/api/v1/jobs/" + encodeURIComponent(job) + (enabled ? "/enable" : "/disable"));
    showMessage("");
  } catch (error) {
    showMessage(`Cannot ${enabled ? "enable" : "disable"} ${job}: ${error.message}`);
  }
}

/// Asks before an action that cannot be taken back (kill, drain, disable): a modal dialog,
/// which Escape closes as Cancel and which gives focus back where it was.
function confirmAction(question, label) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = question;
  $("#confirm-yes").textContent = label;
  dialog.returnValue = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
  });
}

async function drainWorker(worker) {
  if (!(await confirmAction(`Drain worker ${worker}? It finishes what it runs, takes no more work, then stops.`, "Drain"))) return;
  try {
    await api("POST", "/api/v1/workers/" + encodeURIComponent(worker) + "/drain");
    showMessage("");
  } catch (error) {
    showMessage(`Cannot drain ${worker}: ${error.message}`);
  }
}

$("#run-kill").addEventListener("click", async () => {
  const run = state.following;
  if (!run || !(await confirmAction(`Kill run ${run}? Its processes are stopped.`, "Kill run"))) return;
  await act("/api/v1/runs/" + encodeURIComponent(run) + "/kill", () => "Kill sent.");
  // The Kill button is disabled once the run has ended: focus stays on the page.
  $("#run-message").focus();
});
$("#run-retry").addEventListener("click", () =>
  act("/api/v1/runs/" + encodeURIComponent(state.following) + "/retry", (run) => {
    const link = document.createElement("a");
    link.href = "#/run/" + encodeURIComponent(run.id);
    link.textContent = run.id;
    return ["Queued as run ", link, "."];
  }));
$("#run-again").addEventListener("click", () => state.detail && enqueue(state.detail.job));
$("#run-download").addEventListener("click", (event) => {
  event.preventDefault();
  if (state.following) download("/api/v1/runs/" + encodeURIComponent(state.following) + "/log", state.following + ".log");
});

start();
