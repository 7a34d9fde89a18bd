//! The dashboard in real headless Chromium, driven by `browser/driver.mjs` (Playwright).
//!
//! Needs Debian's `chromium` and `npm install` in `integration-tests/browser` (`.ci/run`
//! does both). Without them the test says so and passes, except under CI, where it fails.

use jobcast_integration_tests::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

fn prerequisites() -> Result<(), String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Err(format!("{chromium} is missing (apt-get install chromium)"));
    }
    for package in ["playwright-core", "axe-core"] {
        if !browser_dir().join("node_modules").join(package).exists() {
            return Err(format!("{package} is missing (cd integration-tests/browser && npm install --no-package-lock)"));
        }
    }
    Ok(())
}

/// Whether the browser tests can run here; under CI they must.
fn browser_available() -> bool {
    match prerequisites() {
        Ok(()) => true,
        Err(missing) if std::env::var_os("CI").is_some() => {
            panic!("browser tests cannot run: {missing}")
        }
        Err(missing) => {
            say_skipped(&format!("browser tests: {missing}"));
            false
        }
    }
}

fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

struct Driver {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Driver {
    fn start(base: &str, artifacts: &Path) -> Driver {
        let mut child = Command::new("node")
            .arg(browser_dir().join("driver.mjs"))
            .arg(base)
            .arg(artifacts)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Driver {
            child,
            stdin,
            stdout,
        }
    }

    fn send(&mut self, command: Value) -> Value {
        writeln!(self.stdin, "{command}").unwrap();
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let answer: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("driver said {line:?}: {e}"));
        assert_eq!(answer["ok"], true, "{command} failed: {answer}");
        assert!(
            answer["errors"].as_array().is_none_or(|e| e.is_empty()),
            "page errors: {answer}"
        );
        answer
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "{}", json!({ "cmd": "close" }));
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_dashboard_is_live_and_lets_the_right_people_act() {
    if !browser_available() {
        return;
    }
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs(
        "[jobs.quick]\ncommand = [\"echo\", \"quick\"]\n\
         [jobs.stamp]\nscript = \"\"\"#!/bin/sh\necho started\nsleep 1\necho \"TS:$(date +%s%3N)\"\nsleep 1\n\"\"\"\n\
         [jobs.long]\nscript = \"\"\"#!/bin/sh\nsleep 1000\n\"\"\"\n\
         [jobs.broken]\ncommand = [\"false\"]\n\
         [jobs.gpu]\ncommand = [\"true\"]\npool = \"gpu\"\n\
         [jobs.report]\ncommand = [\"true\"]\nteam = \"data\"\n\
         [jobs.hourly]\ncommand = [\"true\"]\nevery = \"1h\"\n\
         [jobs.greet]\nscript = \"\"\"#!/bin/sh\necho \"hello $JOBCAST_PARAM_WHO in $JOBCAST_PARAM_LANG\"\n\"\"\"\n\
         params.who = { type = \"string\", required = true, description = \"whom to greet\" }\n\
         params.lang = { type = \"choice\", choices = [\"en\", \"fr\"], default = \"en\" }\n",
    );
    cluster.start_worker("w1", &[]);
    let mut driver = Driver::start(&cluster.http, &artifacts());

    // The page loads with a token and goes live.
    let opened = driver.send(json!({ "cmd": "open", "token": OPERATOR_TOKEN }));
    assert_eq!(opened["role"], "operator");
    let focused =
        "document.activeElement && (document.activeElement.id || document.activeElement.tagName)";

    // The first Tab offers to skip to the runs, from where the next is the first row.
    let quick = cluster.enqueue("quick");
    driver.send(json!({ "cmd": "wait_run", "id": quick, "state": "succeeded" }));
    driver.send(json!({ "cmd": "reload" }));
    driver.send(json!({ "cmd": "wait_live", "live": true }));
    driver.send(json!({ "cmd": "wait_js", "expr": format!("document.querySelector('#runs tr[data-run=\"{quick}\"]')") }));
    driver.send(json!({ "cmd": "press", "key": "Tab" }));
    assert_eq!(
        driver.send(json!({ "cmd": "eval_js", "expr": focused }))["value"],
        "skip"
    );
    driver.send(json!({ "cmd": "press", "key": "Enter" }));
    assert_eq!(
        driver.send(json!({ "cmd": "eval_js", "expr": focused }))["value"],
        "runs"
    );
    driver.send(json!({ "cmd": "press", "key": "Tab" }));
    assert_eq!(
        driver.send(json!({ "cmd": "eval_js", "expr": "document.activeElement.closest('#runs tbody') !== null" }))["value"],
        true
    );

    // A run enqueued from jobcastctl appears without a reload and moves to succeeded.
    let run = cluster.enqueue("quick");
    driver.send(json!({ "cmd": "wait_run", "id": run, "state": "succeeded" }));
    driver.send(json!({ "cmd": "screenshot", "name": "runs", "tab": "runs" }));

    // Paused, the list holds still while the counts go on; resumed, it catches up.
    driver.send(json!({ "cmd": "click", "selector": "#pause" }));
    let succeeded =
        "Number(document.querySelector('#counts [data-state=succeeded] b').textContent)";
    let before = driver.send(json!({ "cmd": "eval_js", "expr": succeeded }))["value"]
        .as_i64()
        .unwrap_or(-1);
    let held = cluster.enqueue("quick");
    cluster.wait_state(&held, "succeeded", LONG);
    driver.send(json!({ "cmd": "wait_js", "expr": format!("{succeeded} > {before}") }));
    let row = format!("document.querySelector('#runs tr[data-run=\"{held}\"]')");
    assert_eq!(
        driver.send(json!({ "cmd": "eval_js", "expr": format!("{row} === null") }))["value"],
        true,
        "a paused list shows no new run"
    );
    driver.send(json!({ "cmd": "click", "selector": "#pause" }));
    driver.send(json!({ "cmd": "wait_js", "expr": format!("{row} !== null") }));

    // Every failed run of a job retried at once, after a confirmation that counts them.
    let broken: Vec<String> = (0..3).map(|_| cluster.enqueue("broken")).collect();
    for run in &broken {
        cluster.wait_state(run, "failed", LONG);
    }
    driver.send(json!({ "cmd": "goto", "hash": "#/runs?state=failed&job=broken" }));
    driver.send(json!({ "cmd": "wait_js", "expr": "document.querySelectorAll('#runs tbody tr[data-run]').length === 3 && !document.querySelector('#bulk').hidden" }));
    driver.send(json!({ "cmd": "click", "selector": "#bulk" }));
    let asked = driver.send(json!({ "cmd": "wait_js", "expr": "document.querySelector('#confirm').open && document.querySelector('#confirm-text').textContent" }));
    assert_eq!(
        asked["value"], "Retry 3 failed runs? Each gets a new attempt.",
        "{asked}"
    );
    driver.send(json!({ "cmd": "click", "selector": "#confirm-yes" }));
    driver.send(json!({ "cmd": "wait_js", "expr": "document.querySelector('#message').textContent === 'Retried 3 runs.'" }));
    let firsts: std::collections::BTreeSet<String> = cluster
        .runs()
        .into_iter()
        .filter(|r| r["job"] == "broken" && r["attempt"] == 2)
        .map(|r| r["first_attempt"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        firsts,
        broken.iter().cloned().collect(),
        "one retry of each failed run"
    );

    // Runs picked by hand: two of the failed runs, retried from the selection bar (the
    // checkbox does not open the run).
    driver.send(json!({ "cmd": "goto", "hash": "#/runs?state=failed&job=broken" }));
    for run in &broken[..2] {
        let pick = format!("#runs tr[data-run=\"{run}\"] td.select input");
        driver.send(json!({ "cmd": "wait_js", "expr": format!("document.querySelector('{pick}') !== null") }));
        driver.send(json!({ "cmd": "click", "selector": pick }));
    }
    driver.send(json!({ "cmd": "wait_js", "expr": "location.hash === '#/runs?state=failed&job=broken' && !document.querySelector('#selection').hidden && document.querySelector('#selection-count').textContent === '2 runs selected'" }));
    driver.send(json!({ "cmd": "click", "selector": "#selection-retry" }));
    driver.send(json!({ "cmd": "wait_js", "expr": "document.querySelector('#confirm').open && document.querySelector('#confirm-text').textContent.startsWith('Retry 2 selected runs?')" }));
    driver.send(json!({ "cmd": "click", "selector": "#confirm-yes" }));
    driver.send(json!({ "cmd": "wait_js", "expr": "document.querySelector('#message').textContent === 'Retried 2 runs.' && document.querySelector('#selection').hidden" }));
    let picked_retries: Vec<String> = cluster
        .runs()
        .into_iter()
        .filter(|r| r["job"] == "broken" && r["attempt"] == 2)
        .map(|r| r["first_attempt"].as_str().unwrap_or_default().to_string())
        .collect();
    for run in &broken[..2] {
        assert_eq!(
            picked_retries.iter().filter(|f| *f == run).count(),
            2,
            "{run} retried by the filter and by the selection"
        );
    }

    // The jobs list says how each job's latest runs ended, from the broker's own record.
    driver.send(json!({ "cmd": "goto", "hash": "#/jobs" }));
    // What fires next across jobs: the hourly job, linked to its page.
    driver.send(json!({ "cmd": "wait_js", "expr": "document.querySelector('#upcoming a[href=\"#/job/hourly\"]') !== null" }));
    driver.send(json!({ "cmd": "wait_js", "expr": format!(
        "{} === 'failed' && /^0 of [1-9]$/.test({}) && {} === 'succeeded' && /^([1-9]) of \\1$/.test({}) && document.querySelectorAll('#jobs tr[data-key=\"quick\"] .spark i').length > 0",
        cell_text("jobs", "broken", 6),
        cell_text("jobs", "broken", 7),
        cell_text("jobs", "quick", 6),
        cell_text("jobs", "quick", 7)
    ) }));

    // The runs page's chart draws the broker's counts of the last hour, as the API says
    // them (once the retries have ended).
    for run in cluster.runs() {
        if run["job"] == "broken" && run["attempt"] == 2 {
            cluster.wait_state(run["id"].as_str().unwrap(), "failed", LONG);
        }
    }
    let (code, body) = cluster.api("GET", "/api/v1/series?points=60", Some(OPERATOR_TOKEN));
    assert_eq!(code, 200, "{body}");
    let counted: Value = serde_json::from_str(&body).unwrap();
    let sum = |key: &str| {
        counted["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[key].as_u64().unwrap())
            .sum::<u64>()
    };
    let expected = format!("{}/{}/{}", sum("succeeded"), sum("failed"), sum("other"));
    assert!(
        sum("failed") >= 6,
        "the broken runs are counted: {expected}"
    );
    driver.send(json!({ "cmd": "goto", "hash": "#/workers" }));
    driver.send(json!({ "cmd": "goto", "hash": "#/runs" }));
    let drawn = "(() => { const bars = [...document.querySelectorAll('#runs-chart g')]; const total = (k) => bars.reduce((n, g) => n + Number(g.dataset[k]), 0); return bars.length + ':' + total('succeeded') + '/' + total('failed') + '/' + total('other'); })()";
    driver.send(json!({ "cmd": "wait_js", "expr": format!("{drawn} === '60:{expected}'") }));

    // A pool's page: its queue and workers, its chart, and Pause / Resume (asked first).
    driver.send(json!({ "cmd": "goto", "hash": "#/workers" }));
    driver.send(json!({ "cmd": "click", "selector": "#pools tr[data-key=\"default\"] a" }));
    driver.send(json!({ "cmd": "wait_js", "expr": "location.hash === '#/pool/default' && [...document.querySelectorAll('#pool-facts dd')].some(d => d.textContent === 'w1') && document.querySelectorAll('#pool-counts g').length === 60 && /wait to start p50 ≤ .*, p99 ≤ /.test(document.querySelector('#pool-counts p').textContent) && [...document.querySelectorAll('#pool-facts dt')].map(d => d.textContent).join() === 'State,Queued now,Held by a limit,Oldest waiting,Workers online,Slots in use'" }));
    driver.send(json!({ "cmd": "click", "selector": "#pool-toggle" }));
    driver.send(json!({ "cmd": "wait_js", "expr": "document.querySelector('#confirm').open" }));
    driver.send(json!({ "cmd": "click", "selector": "#confirm-yes" }));
    wait_for("pool default paused", LONG, || {
        status(&cluster)["disabled_pools"]
            .as_array()?
            .iter()
            .any(|p| p == "default")
            .then_some(())
    });
    driver.send(json!({ "cmd": "wait_js", "expr": "document.querySelector('#pool-toggle').textContent === 'Resume'" }));
    driver.send(json!({ "cmd": "screenshot", "name": "pool-page" }));
    driver.send(json!({ "cmd": "click", "selector": "#pool-toggle" }));
    wait_for("pool default resumed", LONG, || {
        status(&cluster)["disabled_pools"]
            .as_array()
            .is_none_or(|pools| pools.iter().all(|p| p != "default"))
            .then_some(())
    });

    // Disabling a job asks first; Escape leaves it enabled.
    driver.send(json!({ "cmd": "goto", "hash": "#/job/quick" }));
    // The toggle is enabled once the job's details are in: a click before that does nothing.
    driver.send(json!({ "cmd": "wait_js", "expr": "!document.querySelector('#job-toggle').disabled && document.querySelector('#job-toggle').textContent === 'Disable'" }));
    driver.send(json!({ "cmd": "click", "selector": "#job-toggle" }));
    driver.send(json!({ "cmd": "wait_js", "expr": "document.querySelector('#confirm').open" }));
    driver.send(json!({ "cmd": "press", "key": "Escape" }));
    driver.send(json!({ "cmd": "wait_js", "expr": "!document.querySelector('#confirm').open" }));
    let (code, body) = cluster.api("GET", "/api/v1/jobs/quick", Some(VIEWER_TOKEN));
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["job"]["spec"]["enabled"],
        true,
        "{body}"
    );

    // A job with parameters runs from a form built from its declaration.
    driver.send(json!({ "cmd": "goto", "hash": "#/jobs" }));
    // Jobs are found by part of their name (kept in the URL).
    driver.send(json!({ "cmd": "fill", "selector": "#jobs-name", "value": "GRE" }));
    driver.send(json!({ "cmd": "wait_js", "expr": "[...document.querySelectorAll('#jobs tbody tr')].map(r => r.dataset.key).join() === 'greet' && location.hash === '#/jobs?name=GRE'" }));
    driver.send(json!({ "cmd": "click", "selector": "#jobs tr[data-key=\"greet\"] button" }));
    driver.send(json!({ "cmd": "wait_js", "expr": "!document.querySelector('#job-form').hidden" }));
    driver.send(json!({ "cmd": "screenshot", "name": "param-form" }));
    driver.send(json!({ "cmd": "fill", "selector": "#job-form [name=who]", "value": "the world; rm -rf /" }));
    driver.send(json!({ "cmd": "select", "selector": "#job-form [name=lang]", "value": "fr" }));
    driver.send(json!({ "cmd": "click", "selector": "#job-form button[type=submit]" }));
    let greeted = driver.send(json!({ "cmd": "wait_js", "expr": "location.hash.startsWith('#/run/') && location.hash.slice(6)" }));
    let greet_run = greeted["value"].as_str().unwrap().to_string();
    cluster.wait_state(&greet_run, "succeeded", LONG);
    assert_eq!(
        String::from_utf8_lossy(&cluster.log(&greet_run)),
        "hello the world; rm -rf / in fr\n"
    );
    driver.send(json!({ "cmd": "wait_js", "expr": "[...document.querySelectorAll('#run-facts dd')].some(d => d.textContent === 'lang=fr, who=the world; rm -rf /')" }));
    // Runs found by what they printed (any case), typed into the filters.
    driver.send(json!({ "cmd": "goto", "hash": "#/runs" }));
    driver.send(json!({ "cmd": "fill", "selector": "#filter-output", "value": "WORLD; RM" }));
    driver.send(json!({ "cmd": "press", "key": "Enter" }));
    driver.send(json!({ "cmd": "wait_js", "expr": format!(
        "location.hash === '#/runs?output=WORLD%3B+RM' && [...document.querySelectorAll('#runs tbody tr[data-run]')].map(r => r.dataset.run).join() === '{greet_run}'"
    ) }));

    // A live log line appears within a second of being written.
    let stamp = cluster.enqueue("stamp");
    driver.send(json!({ "cmd": "wait_run", "id": stamp, "state": "running" }));
    let answer = driver.send(json!({ "cmd": "log_latency", "id": stamp, "marker": "TS:" }));
    let latency = answer["latency_ms"].as_i64().unwrap();
    assert!(latency < 1_000, "log line took {latency} ms to show");
    driver.send(json!({ "cmd": "screenshot", "name": "run-view" }));

    // An operator kills a running run from the page; first, the worker's page shows it
    // running there.
    let long = cluster.enqueue("long");
    driver.send(json!({ "cmd": "wait_run", "id": long, "state": "running" }));
    // The pool's row: the long run holds one of w1's four slots.
    driver.send(json!({ "cmd": "goto", "hash": "#/workers" }));
    driver.send(json!({ "cmd": "wait_js", "expr": format!(
        "{} === 'served' && {} === '1' && {} === '1 of 4'",
        cell_text("pools", "default", 1),
        cell_text("pools", "default", 3),
        cell_text("pools", "default", 4)
    ) }));
    driver.send(json!({ "cmd": "goto", "hash": "#/worker/w1" }));
    let running_there = format!(
        "[...document.querySelectorAll('#worker-running a')].some(a => a.textContent === '{long}')"
    );
    driver.send(json!({ "cmd": "wait_js", "expr": running_there }));
    driver.send(json!({ "cmd": "screenshot", "name": "worker-page" }));
    // Drain asks first; Escape leaves the worker as it was.
    driver.send(json!({ "cmd": "click", "selector": "#worker-drain" }));
    driver.send(json!({ "cmd": "wait_js", "expr": "document.querySelector('#confirm').open" }));
    driver.send(json!({ "cmd": "press", "key": "Escape" }));
    driver.send(json!({ "cmd": "wait_js", "expr": "!document.querySelector('#confirm').open" }));
    assert_eq!(status(&cluster)["workers"][0]["draining"], false);
    driver.send(json!({ "cmd": "kill", "id": long }));
    assert_eq!(cluster.run(&long).unwrap()["state"], "killed");
    // Retry says which run it made, as a link to it.
    driver.send(json!({ "cmd": "click", "selector": "#run-retry" }));
    let made = driver.send(json!({ "cmd": "wait_js", "expr": "document.querySelector('#run-message a')?.getAttribute('href')" }));
    let retried = made["value"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("#/run/")
        .to_string();
    assert!(!retried.is_empty() && retried != long, "{made}");
    assert!(cluster.run(&retried).is_some(), "the linked run exists");
    // The audit log says who killed and retried what, newest first.
    driver.send(json!({ "cmd": "goto", "hash": "#/audit" }));
    let audit_rows = "[...document.querySelectorAll('#audit tbody tr')].map(r => [...r.children].slice(2).map(c => c.textContent).join('|'))";
    let wanted = [
        format!("token operator|retry|{long}|run {retried} (attempt 2)"),
        format!("token operator|kill|{long}|killing {long} on w1"),
    ];
    driver.send(json!({ "cmd": "wait_js", "expr": format!(
        "JSON.stringify({audit_rows}.slice(0, 2)) === {}",
        serde_json::to_string(&serde_json::to_string(&wanted).unwrap()).unwrap()
    ) }));
    driver.send(json!({ "cmd": "screenshot", "name": "audit", "tab": "audit" }));
    // A run waiting in a pool no worker serves raises an alert: its banner links to the
    // Alerts tab, where an operator acknowledges it; the banner goes, the history keeps
    // who saw it.
    let waiting = cluster.enqueue("gpu");
    driver.send(json!({ "cmd": "goto", "hash": "#/runs" }));
    let banner = "#alerts a[href=\"#/alerts?id=no_worker%3Agpu\"]";
    driver.send(
        json!({ "cmd": "wait_js", "expr": format!("document.querySelector('{banner}') !== null") }),
    );
    driver.send(json!({ "cmd": "click", "selector": banner }));
    driver.send(json!({ "cmd": "wait_js", "expr": "document.querySelector('#standing tr[data-key=\"no_worker:gpu\"]')?.classList.contains('picked') === true" }));
    driver.send(
        json!({ "cmd": "click", "selector": "#standing tr[data-key=\"no_worker:gpu\"] button" }),
    );
    driver.send(json!({ "cmd": "wait_js", "expr": format!(
        "{} === 'token operator' && document.querySelector('{banner}') === null",
        cell_text("standing", "no_worker:gpu", 3)
    ) }));
    driver.send(json!({ "cmd": "wait_js", "expr": "[...document.querySelectorAll('#alert-history tbody tr')].some(r => r.children[3].textContent === 'no_worker:gpu' && r.children[2].textContent === 'standing' && r.children[5].textContent === 'token operator')" }));
    driver.send(json!({ "cmd": "screenshot", "name": "alerts", "tab": "alerts" }));
    assert_eq!(cluster.run(&waiting).unwrap()["state"], "queued");

    driver.send(json!({ "cmd": "screenshot", "name": "workers", "tab": "workers" }));
    driver.send(json!({ "cmd": "screenshot", "name": "jobs", "tab": "jobs" }));

    // A token limited to a team is not offered Drain (the broker would refuse it).
    let path = cluster.path("broker.toml");
    let mut config = std::fs::read_to_string(&path).unwrap();
    config.push_str("[[http.tokens]]\nname = \"team\"\ntoken = \"team-token-0123456789\"\nrole = \"operator\"\nteams = [\"data\"]\n");
    std::fs::write(&path, config).unwrap();
    cluster.ctl_ok(&["reload"]);
    driver.send(json!({ "cmd": "new_page" }));
    driver.send(json!({ "cmd": "open", "token": "team-token-0123456789" }));
    driver.send(json!({ "cmd": "goto", "hash": "#/workers" }));
    driver.send(json!({ "cmd": "wait_js", "expr": "document.querySelector('#workers tr[data-key=\"w1\"]') !== null" }));
    let drain_shown = driver.send(json!({ "cmd": "eval_js", "expr": "getComputedStyle(document.querySelector('#workers tr[data-key=\"w1\"]').lastChild).display !== 'none'" }));
    assert_eq!(drain_shown["value"], false, "{drain_shown}");
    // Nor does it see the alert of a pool none of its jobs uses.
    driver.send(json!({ "cmd": "goto", "hash": "#/alerts" }));
    driver.send(json!({ "cmd": "wait_js", "expr": "!document.querySelector('#standing-none').hidden && document.querySelectorAll('#alerts .warning').length === 0" }));
    // Nor does it read what the other operators changed.
    driver.send(json!({ "cmd": "goto", "hash": "#/audit" }));
    driver.send(json!({ "cmd": "wait_js", "expr": "document.querySelector('#message')?.textContent === 'No changes recorded yet.' && document.querySelectorAll('#audit tbody tr').length === 0" }));

    // A viewer sees no action buttons, and the API refuses a viewer's kill.
    driver.send(json!({ "cmd": "new_page" }));
    let opened = driver.send(json!({ "cmd": "open", "token": VIEWER_TOKEN }));
    assert_eq!(opened["role"], "viewer");
    let buttons = driver.send(json!({ "cmd": "operator_buttons" }));
    assert!(
        buttons["title"].as_str().unwrap().starts_with("Run "),
        "{buttons}"
    );
    assert_eq!(buttons["visible"], false);
    let target = cluster.enqueue("long");
    cluster.wait_state(&target, "running", LONG);
    let refused = driver.send(json!({ "cmd": "api_kill", "id": target, "token": VIEWER_TOKEN }));
    assert_eq!(refused["status"], 403);
    assert_eq!(cluster.run(&target).unwrap()["state"], "running");

    // The page says "not live" when the broker stops, and recovers when it returns.
    cluster.kill_broker();
    let answer = driver.send(json!({ "cmd": "wait_live", "live": false }));
    assert_eq!(answer["text"], "not live");
    driver.send(json!({ "cmd": "screenshot", "name": "not-live" }));
    cluster.start_broker();
    let answer = driver.send(json!({ "cmd": "wait_live", "live": true }));
    assert_eq!(answer["text"], "live");
    // Stopped as a supervisor stops it (SIGTERM, the live feed closed by the broker) and
    // started again: the page keeps its token and goes live again by itself.
    cluster.stop_broker();
    let answer = driver.send(json!({ "cmd": "wait_live", "live": false }));
    assert_eq!(
        answer["text"], "reconnecting",
        "the broker said it was going away"
    );
    cluster.start_broker();
    let answer = driver.send(json!({ "cmd": "wait_live", "live": true }));
    assert_eq!(answer["text"], "live");
    driver.send(json!({ "cmd": "wait_js", "expr": "document.querySelector('#login').hidden && localStorage.getItem('jobcast-token') !== null" }));

    // A token taken away by a reload brings back the login prompt, saying why.
    let path = cluster.path("broker.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    let without_viewer = config.replace(
        &format!(
            "[[http.tokens]]\nname = \"viewer\"\ntoken = \"{VIEWER_TOKEN}\"\nrole = \"viewer\"\n"
        ),
        "",
    );
    assert_ne!(config, without_viewer, "the config names the viewer token");
    std::fs::write(&path, without_viewer).unwrap();
    cluster.ctl_ok(&["reload"]);
    driver.send(
        json!({ "cmd": "wait_js", "expr": "!document.querySelector('#login').hidden && \
        document.querySelector('#login-error').textContent.includes('no longer works')" }),
    );
    driver.send(json!({ "cmd": "screenshot", "name": "token-revoked" }));
}

#[test]
fn a_standby_dashboard_names_the_leader_follows_the_database_and_takes_over() {
    if !browser_available() {
        return;
    }
    let Some(postgres) = PostgresStore::start() else {
        return;
    };
    let mut cluster = Cluster::start_configured(1, &[], &[], &postgres.settings());
    cluster.apply_jobs("[jobs.quick]\ncommand = [\"echo\", \"quick\"]\n");
    cluster.start_worker("w1", &[]);
    let standby = ExtraBroker::start(&cluster, "b");
    let mut driver = Driver::start(&standby.http, &artifacts());
    let opened = driver.send(json!({ "cmd": "open", "token": OPERATOR_TOKEN }));
    assert_eq!(opened["role"], "operator");

    // A banner says this broker is a standby and links to the leader's dashboard.
    let leader_http = format!("{}/", cluster.http);
    driver.send(json!({ "cmd": "wait_js", "expr": format!(
        "!document.querySelector('#standby').hidden && \
         document.querySelector('#leader-link')?.href.startsWith('{leader_http}') && \
         document.querySelector('#part').textContent === 'standby'"
    ) }));
    let banner = driver.send(
        json!({ "cmd": "eval_js", "expr": "document.querySelector('#standby').textContent" }),
    );
    let banner = banner["value"].as_str().unwrap_or_default().to_string();
    // Which epoch: 1, or more if the leader's 1 s lease lapsed once on a loaded machine
    // and it took the lease again.
    assert!(
        banner.contains("standby") && banner.contains("(epoch ") && banner.contains(&cluster.http),
        "{banner}"
    );
    let standing_epoch: u64 = banner
        .split("(epoch ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no epoch in {banner}"));

    // What the leader does shows up here, read from the database.
    let run = cluster.enqueue("quick");
    driver.send(json!({ "cmd": "wait_run", "id": run, "state": "succeeded" }));
    // It changes nothing: no action buttons.
    let buttons = driver.send(json!({ "cmd": "operator_buttons" }));
    assert_eq!(buttons["visible"], false, "{buttons}");

    // The Workers tab lists both brokers: the leader, and this one standing by.
    driver.send(json!({ "cmd": "goto", "hash": "#/workers" }));
    driver.send(json!({ "cmd": "wait_js", "expr":
        "(() => { const rows = [...document.querySelectorAll('#brokers tbody tr')].map(r => r.children[1].textContent + (r.children[0].textContent.endsWith('(this one)') ? ' here' : '')); \
          return rows.length === 2 && rows.includes('leader') && rows.includes('standby here'); })()" }));
    // The worker is shown as the leader stored it: connected (its heartbeats go to the
    // leader only).
    let worker_state = cell_text("workers", "w1", 1);
    driver.send(json!({ "cmd": "wait_js", "expr": format!("{worker_state} === 'online'") }));
    let lease = driver
        .send(json!({ "cmd": "eval_js", "expr": "document.querySelector('#lease').textContent" }));
    assert!(
        lease["value"]
            .as_str()
            .unwrap_or_default()
            .starts_with("Epoch ")
            && lease["value"]
                .as_str()
                .unwrap_or_default()
                .contains(" · lease 1.0 s · renewed"),
        "{lease}"
    );
    driver.send(json!({ "cmd": "screenshot", "name": "standby" }));

    // The leader stops: this broker takes over, and the same page, still open, says it
    // leads and offers actions again.
    cluster.signal_broker(libc::SIGTERM);
    driver.send(json!({ "cmd": "wait_js", "expr": format!(
        "document.querySelector('#standby').hidden && !document.body.classList.contains('standby') && \
         (([, epoch]) => Number(epoch) > {standing_epoch})(document.querySelector('#part').textContent.split('leader · epoch '))"
    ) }));
    driver.send(json!({ "cmd": "goto", "hash": "#/runs" }));
    let buttons = driver.send(json!({ "cmd": "operator_buttons" }));
    assert_eq!(buttons["visible"], true, "{buttons}");
}

/// The broker's status, from the API.
/// `n` as a browser in English shows it: 2,775.
fn format_thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

fn status(cluster: &Cluster) -> Value {
    let (code, body) = cluster.api("GET", "/api/v1/status", Some(VIEWER_TOKEN));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// A JS expression: the text of the `column`th cell of the row keyed `key` in `table`.
fn cell_text(table: &str, key: &str, column: usize) -> String {
    format!(
        "(document.querySelector('#{table} tr[data-key=\"{key}\"]')?.children[{column}]?.textContent ?? '')"
    )
}

const LOUD_JOB: &str = r#"[jobs.loud]
script = '''#!/bin/sh
printf '\033[31mred start\033[0m\n'
head -c 5000000 /dev/zero | tr '\0' y
echo
echo loud-end
'''
"#;

#[test]
fn the_dashboard_stays_true_under_a_burst_and_covers_all_history() {
    if !browser_available() {
        return;
    }
    const BURST: usize = 3_000;
    let mut cluster = Cluster::start(2);
    cluster.apply_jobs(&format!(
        "[jobs.quick]\ncommand = [\"true\"]\n\
         [jobs.stranded]\npool = \"elsewhere\"\ncommand = [\"true\"]\n\
         [jobs.ticking]\nevery = \"1h\"\ncommand = [\"true\"]\ntags = [\"hourly\"]\n{LOUD_JOB}"
    ));
    cluster.start_worker("w1", &[]);
    let mut driver = Driver::start(&cluster.http, &artifacts());
    driver.send(json!({ "cmd": "open", "token": OPERATOR_TOKEN }));

    // Workers: one that comes online appears, with its heartbeat, without a reload.
    driver.send(json!({ "cmd": "goto", "hash": "#/workers" }));
    cluster.start_worker("w2", &[]);
    let heartbeat = cell_text("workers", "w2", 7);
    driver.send(json!({ "cmd": "wait_js", "expr": format!("{heartbeat}.endsWith('ago')") }));

    // Jobs: the next fire time goes when the job is disabled and comes back with it.
    driver.send(json!({ "cmd": "goto", "hash": "#/jobs" }));
    let next = cell_text("jobs", "ticking", 4);
    let state = cell_text("jobs", "ticking", 5);
    driver.send(json!({ "cmd": "wait_js", "expr": format!("{next}.startsWith('in ')") }));
    let (code, _) = cluster.api("POST", "/api/v1/jobs/ticking/disable", Some(OPERATOR_TOKEN));
    assert_eq!(code, 200);
    driver.send(
        json!({ "cmd": "wait_js", "expr": format!("{next} === '-' && {state} === 'disabled'") }),
    );
    let (code, _) = cluster.api("POST", "/api/v1/jobs/ticking/enable", Some(OPERATOR_TOKEN));
    assert_eq!(code, 200);
    driver.send(json!({ "cmd": "wait_js", "expr": format!("{next}.startsWith('in ') && {state} === 'enabled'") }));
    // Jobs filtered by tag, with its own URL.
    driver.send(json!({ "cmd": "goto", "hash": "#/jobs?tag=hourly" }));
    let only = "[...document.querySelectorAll('#jobs tbody tr')].map(r => r.dataset.key).join(',')";
    driver.send(json!({ "cmd": "wait_js", "expr": format!("{only} === 'ticking'") }));

    // Alerts: a run no worker can take raises one; it goes when the run does.
    let stranded = cluster.enqueue("stranded");
    let alert = "document.querySelector('#alerts').textContent.includes('pool elsewhere')";
    driver.send(json!({ "cmd": "wait_js", "expr": alert }));
    driver.send(json!({ "cmd": "screenshot", "name": "alert" }));
    cluster.ctl_ok(&["kill", &stranded]);
    driver.send(json!({ "cmd": "wait_js", "expr": format!("!({alert})") }));

    // A burst of runs: the page matches the broker's counts within 2 s of the broker
    // finishing, and never freezes meanwhile. It is watched from the workers' view, with
    // keyboard focus on a button of a row the burst keeps changing: the focus stays.
    driver.send(json!({ "cmd": "goto", "hash": "#/workers" }));
    driver.send(json!({ "cmd": "eval_js", "expr": "(() => {
        const row = document.querySelector('#workers tr[data-key=\"w1\"]');
        window.__focused = row.querySelector('button');
        window.__focused.focus();
        window.__changes = 0;
        new MutationObserver((m) => { window.__changes += m.length; })
            .observe(row, { subtree: true, childList: true, characterData: true });
        return true;
    })()" }));
    driver.send(json!({ "cmd": "long_tasks" }));
    let enqueuers: Vec<_> = (0..4)
        .map(|_| {
            let http = cluster.http.clone();
            std::thread::spawn(move || {
                for _ in 0..BURST / 4 {
                    let response = ureq::post(&format!("{http}/api/v1/jobs/quick/enqueue"))
                        .header("Authorization", &format!("Bearer {OPERATOR_TOKEN}"))
                        .send_empty()
                        .expect("enqueue");
                    assert_eq!(response.status(), 201);
                }
            })
        })
        .collect();
    for enqueuer in enqueuers {
        enqueuer.join().unwrap();
    }
    let finished = wait_for("the burst to finish", Duration::from_secs(300), || {
        let status = status(&cluster);
        let done = status["runs_by_state"]["succeeded"].as_u64() == Some(BURST as u64)
            && status["active"].as_object().is_some_and(|a| a.is_empty());
        done.then_some(status)
    });
    let counts = &finished["runs_by_state"];
    let matches = format!(
        "[...document.querySelectorAll('#counts [data-state]')].every(c => \
         String(({counts})[c.dataset.state] ?? 0) === c.querySelector('b').textContent)"
    );
    let caught_up = driver.send(json!({ "cmd": "wait_js", "expr": matches, "timeout": 2000 }));
    eprintln!(
        "the page matched the broker {} ms after it finished",
        caught_up["waited_ms"]
    );
    let long = driver.send(json!({ "cmd": "long_tasks" }));
    eprintln!("long tasks during the burst: {long}");
    assert!(
        long["max_ms"].as_f64().unwrap() < 200.0,
        "the page froze: {long}"
    );
    let focus = driver.send(json!({ "cmd": "eval_js", "expr": "[document.activeElement === window.__focused, window.__changes]" }));
    assert_eq!(focus["value"][0], true, "focus moved: {focus}");
    assert!(
        focus["value"][1].as_u64().unwrap() > 0,
        "the row never changed: {focus}"
    );
    driver.send(json!({ "cmd": "screenshot", "name": "after-burst", "tab": "runs" }));

    // The job's page: its success rate and durations over its runs, and when a
    // scheduled job fires next.
    driver.send(json!({ "cmd": "goto", "hash": "#/job/quick" }));
    driver.send(json!({ "cmd": "wait_js", "expr": "document.querySelector('#job-rate').textContent.includes('100 % of the last 200')" }));
    let bars = driver.send(
        json!({ "cmd": "eval_js", "expr": "document.querySelectorAll('#job-chart rect').length" }),
    );
    assert_eq!(bars["value"], 200);
    driver.send(json!({ "cmd": "screenshot", "name": "job-page" }));
    driver.send(json!({ "cmd": "goto", "hash": "#/job/ticking" }));
    driver.send(json!({ "cmd": "wait_js", "expr": "document.querySelectorAll('#job-next li').length === 5 && document.querySelector('#job-zone').textContent === '(UTC)'" }));

    // All history, a page at a time.
    let paged = driver.send(json!({ "cmd": "page_all" }));
    assert_eq!(paged["runs"], finished["total_runs"], "{paged}");
    // Each page says where it is among them all.
    let total = finished["total_runs"].as_u64().unwrap();
    driver.send(json!({ "cmd": "goto", "hash": "#/runs" }));
    driver.send(json!({ "cmd": "wait_js", "expr": format!("document.querySelector('#page-info').textContent === '1–50 of {}, live'", format_thousands(total)) }));
    driver.send(json!({ "cmd": "click", "selector": "#older" }));
    driver.send(json!({ "cmd": "wait_js", "expr": format!("document.querySelector('#page-info').textContent === '51–100 of {}'", format_thousands(total)) }));
    let first_run = cluster.runs().last().expect("runs")["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The oldest page at once, its oldest run last; Newer walks up from there.
    driver.send(json!({ "cmd": "click", "selector": "#oldest" }));
    driver.send(json!({ "cmd": "wait_js", "expr": format!(
        "document.querySelector('#page-info').textContent === '{}–{} of {}' && document.querySelector('#runs tbody tr:last-child').dataset.run === '{}'",
        format_thousands(total - 49), format_thousands(total), format_thousands(total), first_run
    ) }));
    driver.send(json!({ "cmd": "click", "selector": "#newer" }));
    driver.send(json!({ "cmd": "wait_js", "expr": "/[?&]after=[1-9]/.test(location.hash) && document.querySelectorAll('#runs tbody tr').length === 50" }));
    // The oldest run's whole id finds it at once, however many came after it.
    driver.send(json!({ "cmd": "goto", "hash": format!("#/runs?text={first_run}") }));
    driver.send(json!({ "cmd": "wait_js", "expr": format!("[...document.querySelectorAll('#runs tbody tr')].map(r => r.dataset.run).join() === '{first_run}'") }));

    // A filtered view has its own URL: a reload keeps it, Back leaves it.
    driver.send(json!({ "cmd": "goto", "hash": "#/runs?state=cancelled" }));
    let one_row = "document.querySelectorAll('#runs tbody tr').length === 1 && \
                   document.querySelector('#runs tbody tr').dataset.run";
    let shown = driver.send(json!({ "cmd": "wait_js", "expr": one_row }));
    assert_eq!(shown["value"], stranded.as_str());
    let reloaded = driver.send(json!({ "cmd": "reload" }));
    assert_eq!(reloaded["hash"], "#/runs?state=cancelled");
    driver.send(json!({ "cmd": "wait_js", "expr": one_row }));
    let back = driver.send(json!({ "cmd": "back" }));
    assert_ne!(back["hash"], "#/runs?state=cancelled");
    // Text search is the broker's, over every stored run.
    driver.send(
        json!({ "cmd": "goto", "hash": format!("#/runs?text={}", &stranded[..8].to_uppercase()) }),
    );
    let shown = driver.send(json!({ "cmd": "wait_js", "expr": one_row }));
    assert_eq!(shown["value"], stranded.as_str());

    // A 5 MB log, followed live: the page holds no more than the cap, with colours.
    let loud = cluster.enqueue("loud");
    driver.send(json!({ "cmd": "goto", "hash": format!("#/run/{loud}") }));
    cluster.wait_state(&loud, "succeeded", LONG);
    driver.send(json!({ "cmd": "wait_js", "expr": "document.querySelector('#run-log').textContent.includes('loud-end')" }));
    let held = driver.send(
        json!({ "cmd": "eval_js", "expr": "document.querySelector('#run-log').textContent" }),
    );
    let held = held["value"].as_str().unwrap();
    assert!(
        held.len() <= (1 << 20) + 64,
        "the page holds {} bytes",
        held.len()
    );
    assert!(held.contains("bytes cut]"), "no cut marker");
    assert!(!held.contains('\u{1b}'), "raw escape codes shown");
    let red = driver.send(json!({ "cmd": "eval_js", "expr": "document.querySelector('#run-log .ansi-31')?.textContent" }));
    let start = driver.send(json!({ "cmd": "eval_js", "expr": "document.querySelector('#run-log').innerHTML.slice(0, 300)" }));
    let stored = String::from_utf8_lossy(&cluster.log(&loud)).into_owned();
    assert_eq!(
        red["value"],
        "red start",
        "the log starts {start}; stored: {:?}",
        &stored[..100]
    );
    assert_eq!(
        &held[held.len() - 200..],
        &stored[stored.len() - 200..],
        "the live tail is the stored one"
    );
    driver.send(json!({ "cmd": "screenshot", "name": "run-log" }));

    // The run view links to the runs a run started: its retry here.
    let retry = cluster.ctl_ok(&["retry", &loud]);
    let retry_id = retry
        .split_whitespace()
        .nth(2)
        .expect("queued run ID of job …")
        .to_string();
    driver.send(json!({ "cmd": "goto", "hash": "#/runs" }));
    driver.send(json!({ "cmd": "goto", "hash": format!("#/run/{loud}") }));
    driver.send(
        json!({ "cmd": "wait_js", "expr": format!("!document.querySelector('#run-links').hidden && \
        document.querySelector('#run-links').textContent.includes('{retry_id}')") }),
    );

    // No serious accessibility problem on any view, wide or narrow, and nothing wider
    // than a phone's screen.
    let run_view = format!("#/run/{loud}");
    for (width, dark) in [(1400u64, false), (390, false), (1400, true)] {
        for view in [
            "#/runs",
            "#/workers",
            "#/jobs",
            "#/alerts",
            "#/audit",
            run_view.as_str(),
            "#/job/quick",
            "#/worker/w1",
        ] {
            driver.send(json!({ "cmd": "goto", "hash": view }));
            // The view drawn, not on its way.
            let drawn = match view.trim_start_matches("#/").split('/').next().unwrap() {
                "run" => "#run-facts dd".to_string(),
                "job" => "#job-facts dd".to_string(),
                "worker" => "#worker-facts dd".to_string(),
                "alerts" => "#tab-alerts:not([hidden]) h2".to_string(),
                table => format!("#{table} tbody tr"),
            };
            driver.send(
                json!({ "cmd": "wait_js", "expr": format!("!!document.querySelector('{drawn}')") }),
            );
            let report = driver.send(json!({ "cmd": "axe", "width": width, "dark": dark }));
            assert_eq!(
                report["violations"],
                json!([]),
                "{view} at {width} px (dark: {dark}): {report}"
            );
            assert!(
                report["scroll_width"].as_u64().unwrap() <= width,
                "{view} at {width} px is {} px wide: {}",
                report["scroll_width"],
                report["too_wide"]
            );
            let name = view.trim_start_matches("#/").replace('/', "-");
            let scheme = if dark { "-dark" } else { "" };
            driver.send(json!({ "cmd": "screenshot", "name": format!("{name}-{width}{scheme}"), "full": true }));
        }
    }
}
