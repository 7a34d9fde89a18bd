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
    if !browser_dir().join("node_modules/playwright-core").exists() {
        return Err("playwright-core is missing (cd integration-tests/browser && npm install --no-package-lock)".into());
    }
    Ok(())
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
    if let Err(missing) = prerequisites() {
        if std::env::var_os("CI").is_some() {
            panic!("browser tests cannot run: {missing}");
        }
        eprintln!("SKIPPED browser tests: {missing}");
        return;
    }
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs(
        "[jobs.quick]\ncommand = [\"echo\", \"quick\"]\n\
         [jobs.stamp]\nscript = \"\"\"#!/bin/sh\necho started\nsleep 1\necho \"TS:$(date +%s%3N)\"\nsleep 1\n\"\"\"\n\
         [jobs.long]\nscript = \"\"\"#!/bin/sh\nsleep 1000\n\"\"\"\n",
    );
    cluster.start_worker("w1", &[]);
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/browser-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let mut driver = Driver::start(&cluster.http, &artifacts);

    // The page loads with a token and goes live.
    let opened = driver.send(json!({ "cmd": "open", "token": OPERATOR_TOKEN }));
    assert_eq!(opened["role"], "operator");

    // A run enqueued from jobcastctl appears without a reload and moves to succeeded.
    let run = cluster.enqueue("quick");
    driver.send(json!({ "cmd": "wait_run", "id": run, "state": "succeeded" }));
    driver.send(json!({ "cmd": "screenshot", "name": "runs", "tab": "runs" }));

    // A live log line appears within a second of being written.
    let stamp = cluster.enqueue("stamp");
    driver.send(json!({ "cmd": "wait_run", "id": stamp, "state": "running" }));
    let answer = driver.send(json!({ "cmd": "log_latency", "id": stamp, "marker": "TS:" }));
    let latency = answer["latency_ms"].as_i64().unwrap();
    assert!(latency < 1_000, "log line took {latency} ms to show");
    driver.send(json!({ "cmd": "screenshot", "name": "run-view" }));

    // An operator kills a running run from the page.
    let long = cluster.enqueue("long");
    driver.send(json!({ "cmd": "wait_run", "id": long, "state": "running" }));
    driver.send(json!({ "cmd": "kill", "id": long }));
    assert_eq!(cluster.run(&long).unwrap()["state"], "killed");
    driver.send(json!({ "cmd": "screenshot", "name": "workers", "tab": "workers" }));
    driver.send(json!({ "cmd": "screenshot", "name": "jobs", "tab": "jobs" }));

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
}
