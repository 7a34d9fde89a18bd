// The jobcast dashboard: a snapshot over a WebSocket, then live changes. No framework, no
// build step. The token is asked for once and kept in this browser's localStorage.
"use strict";

const TERMINAL = ["succeeded", "failed", "killed", "timed_out", "lost", "cancelled", "missed"];
const SHOWN_STATES = ["queued", "running", "succeeded", "failed", "killed", "timed_out", "lost"];
const MAX_RUNS = 500;

const state = {
  token: localStorage.getItem("jobcast-token"),
  role: null,
  runs: new Map(),        // id → run summary
  workers: [],
  jobs: [],
  status: null,
  tab: "runs",
  following: null,        // run id shown in the run view
  socket: null,
  retry: 500,
};

const $ = (selector) => document.querySelector(selector);

function text(value) {
  return value === null || value === undefined ? "-" : String(value);
}

function time(ms) {
  return ms ? new Date(ms).toLocaleString() : "-";
}

function duration(ms) {
  if (ms === null || ms === undefined) return "-";
  if (ms < 1000) return ms + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  return Math.floor(ms / 60000) + " m " + Math.round((ms % 60000) / 1000) + " s";
}

function cell(row, value, className) {
  const td = document.createElement("td");
  td.textContent = text(value);
  if (className) td.className = className;
  row.appendChild(td);
  return td;
}

async function api(method, path) {
  const response = await fetch(path, { method, headers: { Authorization: "Bearer " + state.token } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

// ---- login ----

function showLogin(message) {
  $("#login").hidden = false;
  $("#app").hidden = true;
  $("#login-error").textContent = message || "";
  $("#token").focus();
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
  } catch (error) {
    return showLogin("Token refused: " + error.message);
  }
  localStorage.setItem("jobcast-token", state.token);
  document.body.classList.toggle("viewer", state.role === "viewer");
  $("#role").textContent = state.role;
  $("#login").hidden = true;
  $("#app").hidden = false;
  connect();
}

// ---- live feed ----

function setLive(live) {
  const badge = $("#live");
  badge.textContent = live ? "live" : "not live";
  badge.className = "badge " + (live ? "on" : "off");
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  const socket = new WebSocket(scheme + location.host + "/api/v1/live?token=" + encodeURIComponent(state.token));
  state.socket = socket;
  socket.onopen = () => { state.retry = 500; };
  socket.onmessage = (event) => handle(JSON.parse(event.data));
  socket.onclose = () => {
    setLive(false);
    if (state.socket !== socket || !state.token) return;
    setTimeout(connect, state.retry);
    state.retry = Math.min(state.retry * 2, 5000);
  };
}

function handle(message) {
  switch (message.type) {
    case "snapshot":
      setLive(true);
      state.status = message.status;
      state.workers = message.status.workers;
      state.jobs = message.jobs;
      state.runs = new Map(message.runs.map((run) => [run.id, run]));
      if (state.following) follow(state.following);
      renderAll();
      break;
    case "runs":
      for (const run of message.runs) state.runs.set(run.id, run);
      trimRuns();
      renderRuns();
      renderCounts();
      renderJobs();
      if (state.following && message.runs.some((run) => run.id === state.following)) refreshRunFacts();
      break;
    case "workers":
      state.workers = message.workers;
      renderWorkers();
      break;
    case "jobs":
      state.jobs = message.jobs;
      renderJobs();
      break;
    case "log":
      if (message.run_id === state.following) appendLog(message.data);
      break;
    case "resync":
      // We fell behind: start again from a fresh snapshot.
      state.socket.close();
      break;
  }
}

function trimRuns() {
  if (state.runs.size <= MAX_RUNS) return;
  const sorted = [...state.runs.values()].sort((a, b) => b.seq - a.seq);
  state.runs = new Map(sorted.slice(0, MAX_RUNS).map((run) => [run.id, run]));
}

// ---- rendering ----

function renderAll() {
  renderCounts();
  renderRuns();
  renderWorkers();
  renderJobs();
  renderAlerts();
}

function renderCounts() {
  const counts = Object.fromEntries(SHOWN_STATES.map((s) => [s, 0]));
  for (const run of state.runs.values()) {
    const key = run.state === "assigned" ? "running" : run.state;
    if (key in counts) counts[key] += 1;
  }
  const box = $("#counts");
  box.replaceChildren();
  for (const name of SHOWN_STATES) {
    const div = document.createElement("div");
    div.className = "count state " + name;
    div.dataset.state = name;
    const b = document.createElement("b");
    b.textContent = counts[name];
    div.append(b, name.replace("_", " "));
    box.appendChild(div);
  }
}

function renderRuns() {
  const query = $("#search").value.trim().toLowerCase();
  const body = $("#runs tbody");
  body.replaceChildren();
  const runs = [...state.runs.values()].sort((a, b) => b.seq - a.seq);
  for (const run of runs) {
    const haystack = [run.id, run.job, run.state, run.worker, run.outcome].join(" ").toLowerCase();
    if (query && !haystack.includes(query)) continue;
    const row = document.createElement("tr");
    row.className = "clickable";
    row.tabIndex = 0;
    row.dataset.run = run.id;
    cell(row, run.id);
    cell(row, run.job);
    cell(row, run.state, "state " + run.state);
    cell(row, run.worker);
    cell(row, time(run.created_at_ms));
    cell(row, duration(run.duration_ms));
    cell(row, run.outcome, "result");
    row.addEventListener("click", () => openRun(run.id));
    row.addEventListener("keydown", (event) => { if (event.key === "Enter") openRun(run.id); });
    body.appendChild(row);
  }
}

function renderWorkers() {
  const body = $("#workers tbody");
  body.replaceChildren();
  for (const worker of state.workers) {
    const row = document.createElement("tr");
    row.dataset.worker = worker.id;
    cell(row, worker.id);
    cell(row, worker.online ? (worker.draining ? "draining" : "online") : "not answering", worker.online ? "" : "offline");
    cell(row, worker.version);
    cell(row, worker.hostname);
    cell(row, worker.pools.join(", "));
    cell(row, worker.concurrency);
    cell(row, worker.running.length);
    cell(row, time(worker.last_seen_ms));
    body.appendChild(row);
  }
  renderAlerts();
}

function renderAlerts() {
  const alerts = (state.status && state.status.alerts) || [];
  const box = $("#alerts");
  box.replaceChildren();
  for (const alert of alerts) {
    const div = document.createElement("div");
    div.className = "warning";
    div.textContent = alert.message;
    box.appendChild(div);
  }
  // A pool with queued runs and no live worker to take them.
  const warnings = $("#pool-warnings");
  warnings.replaceChildren();
  const live = new Set(state.workers.filter((w) => w.online).flatMap((w) => w.pools));
  const waiting = new Set([...state.runs.values()].filter((r) => r.state === "queued").map((r) => r.pool));
  for (const pool of waiting) {
    if (live.has(pool)) continue;
    const div = document.createElement("div");
    div.className = "warning";
    div.textContent = `Pool ${pool} has queued runs and no live worker that can take them.`;
    warnings.appendChild(div);
  }
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

function renderJobs() {
  const body = $("#jobs tbody");
  body.replaceChildren();
  for (const job of state.jobs) {
    const spec = job.spec;
    const row = document.createElement("tr");
    row.dataset.job = spec.name;
    cell(row, spec.name);
    cell(row, spec.pool);
    cell(row, describeSchedule(spec));
    cell(row, time(job.next_fire_ms));
    cell(row, job.state.auto_disabled ? "auto-disabled" : spec.enabled ? (job.active ? "enabled" : "pool disabled") : "disabled");
    const chart = cell(row, "");
    chart.replaceChildren(sparkline(spec.name));
    const actions = cell(row, "");
    actions.className = "operator-only";
    actions.textContent = "";
    const run = document.createElement("button");
    run.textContent = "Run now";
    run.addEventListener("click", () => enqueue(spec.name));
    actions.appendChild(run);
    body.appendChild(row);
  }
}

function sparkline(job) {
  const span = document.createElement("span");
  span.className = "spark";
  span.setAttribute("aria-label", "durations of the last runs");
  const runs = [...state.runs.values()]
    .filter((r) => r.job === job && TERMINAL.includes(r.state) && r.duration_ms !== null)
    .sort((a, b) => a.seq - b.seq)
    .slice(-20);
  const longest = Math.max(1, ...runs.map((r) => r.duration_ms));
  for (const run of runs) {
    const bar = document.createElement("i");
    bar.style.height = Math.max(2, Math.round((run.duration_ms / longest) * 22)) + "px";
    bar.title = `${run.id}: ${duration(run.duration_ms)} (${run.state})`;
    if (run.state !== "succeeded") bar.className = "bad";
    span.appendChild(bar);
  }
  return span;
}

// ---- tabs ----

function showTab(tab) {
  state.tab = tab;
  for (const button of document.querySelectorAll("button.tab")) {
    button.classList.toggle("active", button.dataset.tab === tab);
  }
  for (const name of ["runs", "workers", "jobs"]) $("#tab-" + name).hidden = name !== tab;
  $("#run-view").hidden = true;
  unfollow();
}

for (const button of document.querySelectorAll("button.tab")) {
  button.addEventListener("click", () => showTab(button.dataset.tab));
}
$("#search").addEventListener("input", renderRuns);
document.addEventListener("keydown", (event) => {
  if (event.key === "/" && document.activeElement.tagName !== "INPUT") {
    event.preventDefault();
    showTab("runs");
    $("#search").focus();
  }
});

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

function appendLog(data) {
  const pre = $("#run-log");
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.textContent += data;
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

async function openRun(id) {
  unfollow();
  for (const name of ["runs", "workers", "jobs"]) $("#tab-" + name).hidden = true;
  $("#run-view").hidden = false;
  $("#run-message").textContent = "";
  state.following = id;
  follow(id);
  try {
    const detail = await api("GET", "/api/v1/runs/" + encodeURIComponent(id));
    state.detail = detail.run;
    $("#run-log").textContent = detail.log;
    const exec = detail.run.spec.exec;
    $("#run-script").textContent = exec.script !== undefined ? exec.script : (exec.command || []).join(" ");
    refreshRunFacts();
    $("#back").focus();
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
  const facts = [
    ["State", run.state],
    ["Worker", run.worker],
    ["Attempt", run.attempt],
    ["Scheduled", time(run.scheduled_at_ms)],
    ["Created", time(run.created_at_ms)],
    ["Started", time(run.started_at_ms)],
    ["Finished", time(run.finished_at_ms)],
    ["Duration", duration(run.duration_ms !== undefined ? run.duration_ms : null)],
    ["Exit code", run.exit_code],
    ["Result", typeof run.outcome === "string" ? run.outcome : (run.outcome ? JSON.stringify(run.outcome) : null)],
  ];
  const dl = $("#run-facts");
  dl.replaceChildren();
  for (const [name, value] of facts) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = text(value);
    if (name === "State") dd.className = "state " + value;
    dl.append(dt, dd);
  }
  $("#run-kill").disabled = TERMINAL.includes(run.state);
  $("#run-retry").disabled = !TERMINAL.includes(run.state);
}

async function act(path, done) {
  try {
    const result = await api("POST", path);
    $("#run-message").textContent = done(result);
  } catch (error) {
    $("#run-message").textContent = error.message;
  }
}

async function enqueue(job) {
  try {
    const run = await api("POST", "/api/v1/jobs/" + encodeURIComponent(job) + "/enqueue");
    openRun(run.id);
  } catch (error) {
    alert(error.message);
  }
}

$("#back").addEventListener("click", () => showTab(state.tab));
$("#run-kill").addEventListener("click", () =>
  act("/api/v1/runs/" + state.following + "/kill", () => "Kill sent."));
$("#run-retry").addEventListener("click", () =>
  act("/api/v1/runs/" + state.following + "/retry", (run) => `Queued run ${run.id}.`));
$("#run-again").addEventListener("click", () => state.detail && enqueue(state.detail.job));

start();
