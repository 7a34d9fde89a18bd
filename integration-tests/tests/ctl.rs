//! `jobcastctl` as scripts use it: how it fails (at once, in plain words, with an exit
//! code per kind of failure), `--json` on every command, and `wait` / `logs --follow`
//! exiting with how the run ended.

use jobcast_integration_tests::{bin, spawn_ctl, unused_endpoint, Cluster, Worker, ADMIN_SECRET};
use serde_json::Value;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// jobcastctl with only the arguments and environment given (no cluster defaults).
fn ctl_bare(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(bin("jobcastctl"));
    command
        .args(args)
        .env_remove("JOBCAST_ADMIN_SECRET")
        .env_remove("JOBCAST_ADMIN_SECRET_FILE")
        .env_remove("JOBCAST_BROKER")
        .stdin(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    command.output().expect("run jobcastctl")
}

#[test]
fn with_nothing_listening_it_fails_at_once_and_says_where_it_looked() {
    let endpoint = unused_endpoint();
    let started = Instant::now();
    let out = ctl_bare(
        &["--broker", &endpoint, "--timeout", "10", "status"],
        &[("JOBCAST_ADMIN_SECRET", ADMIN_SECRET)],
    );
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        took < Duration::from_secs(1),
        "took {took:?}: {}",
        text(&out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("is the broker running at {endpoint}?")),
        "{stderr}"
    );
    assert!(stderr.starts_with("jobcastctl: "), "{stderr}");
}

#[test]
fn refusals_are_plain_words_with_their_own_exit_codes() {
    let cluster = Cluster::start(0);
    // The broker says no: exit 1, the message without internal names.
    let out = cluster.ctl(&["enqueue", "no-such-job"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("jobcastctl: "), "{stderr}");
    assert!(stderr.contains("no-such-job"), "{stderr}");
    assert!(!stderr.contains("NotFound"), "{stderr}");

    // A wrong secret: exit 4, and where to look.
    let out = ctl_bare(
        &["--broker", &cluster.router, "status"],
        &[("JOBCAST_ADMIN_SECRET", "not-the-admin-secret")],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("check the admin secret"),
        "{}",
        text(&out)
    );

    // A secret file named on the command line beats the environment's secret.
    let file = cluster.path("admin.secret");
    std::fs::write(&file, ADMIN_SECRET).unwrap();
    let out = ctl_bare(
        &[
            "--broker",
            &cluster.router,
            "--secret-file",
            &file.to_string_lossy(),
            "--json",
            "status",
        ],
        &[("JOBCAST_ADMIN_SECRET", "not-the-admin-secret")],
    );
    assert!(out.status.success(), "{}", text(&out));

    // No secret at all, or a bad flag: usage, exit 2.
    let out = ctl_bare(&["--broker", &cluster.router, "status"], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = ctl_bare(
        &["--broker", &cluster.router, "--timeout", "soon", "status"],
        &[("JOBCAST_ADMIN_SECRET", ADMIN_SECRET)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

fn json(out: &Output) -> Value {
    assert!(out.status.success(), "{}", text(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

#[test]
fn every_command_answers_in_json_and_wait_and_follow_exit_with_the_outcome() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs(
        r##"
[jobs.fine]
script = """#!/bin/sh
echo all good
"""

[jobs.broken]
script = """#!/bin/sh
echo about to fail
exit 3
"""
"##,
    );
    cluster.start_worker("w1", &[]);
    let jobs_file = cluster.path("jobs.toml").to_string_lossy().into_owned();

    let fine = json(&cluster.ctl(&["--json", "enqueue", "fine"]));
    let fine_id = fine["id"].as_str().unwrap().to_string();
    assert_eq!(fine["job"], "fine");
    let out = cluster.ctl(&["wait", &fine_id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let broken = json(&cluster.ctl(&["--json", "enqueue", "broken"]));
    let broken_id = broken["id"].as_str().unwrap().to_string();
    let out = cluster.ctl(&["--json", "wait", &broken_id]);
    assert_eq!(out.status.code(), Some(10), "{}", text(&out));
    let end: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(end["state"], "failed", "{end}");

    // logs --follow: the output, then the exit code of the end; as JSON lines too.
    let out = cluster.ctl(&["logs", "--follow", &broken_id]);
    assert_eq!(out.status.code(), Some(10), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("about to fail"));
    let out = cluster.ctl(&["--json", "logs", "--follow", &fine_id]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines[0]["text"].as_str().unwrap().contains("all good"));
    assert_eq!(lines.last().unwrap()["state"], "succeeded");

    // Every other command parses as JSON.
    for args in [
        vec!["status"],
        vec!["runs"],
        vec!["jobs"],
        vec!["ping"],
        vec!["logs", &fine_id],
        vec!["kill", &fine_id],
        vec!["retry", &broken_id],
        vec!["apply", &jobs_file],
        vec!["disable", "fine"],
        vec!["enable", "fine"],
        vec!["prune", "--dry-run"],
    ] {
        let mut all = vec!["--json"];
        all.extend(args.iter().copied());
        let out = cluster.ctl(&all);
        if args[0] == "logs" {
            // JSON lines.
            assert!(out.status.success(), "{}", text(&out));
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                serde_json::from_str::<Value>(line)
                    .unwrap_or_else(|e| panic!("{args:?}: {e}: {line}"));
            }
        } else {
            json(&out);
        }
    }
    // Random 64-bit ids are strings, which jq and JavaScript keep exact.
    let status = json(&cluster.ctl(&["--json", "status"]));
    assert!(status["boot_id"].is_string(), "{status}");

    let drained = json(&cluster.ctl(&["--json", "drain", "w1"]));
    assert_eq!(drained["draining"], "w1");
    // It exits 0, and is offline at once rather than after the broker's worker timeout.
    assert_eq!(
        cluster.workers[0].wait_exit(Duration::from_secs(30)),
        Some(0)
    );
    let status = json(&cluster.ctl(&["--json", "status"]));
    let w1 = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["id"] == "w1")
        .cloned()
        .unwrap();
    assert_eq!(
        w1["online"],
        false,
        "{w1}\n{}\n{}",
        cluster.worker_log("w1"),
        cluster.broker_log()
    );
}

#[test]
fn a_worker_the_broker_does_not_know_ends_with_its_own_code_and_says_what_to_add() {
    let mut cluster = Cluster::start(1);
    // The broker knows w1 only.
    let index = cluster.spawn_worker_unchecked("w9", &[]);
    let code = cluster.workers[index].wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(3), "{}", cluster.worker_log("w9"));
    let log = cluster.worker_log("w9");
    assert!(log.contains("[keys.workers]"), "{log}");
}

#[test]
fn completions_need_no_broker_and_bashs_is_valid_bash() {
    for shell in ["bash", "zsh", "fish"] {
        let out = ctl_bare(&["completions", shell], &[]);
        assert!(out.status.success(), "{shell}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("jobcastctl"),
            "{shell}"
        );
    }
    let script = ctl_bare(&["completions", "bash"], &[]).stdout;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobcastctl.bash");
    std::fs::write(&path, script).unwrap();
    let checked = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(checked.status.success(), "{}", text(&checked));
}

#[test]
fn a_known_worker_with_a_wrong_secret_ends_with_the_refusal_code_too() {
    let mut cluster = Cluster::start(1);
    let scripts = cluster.path("w1-wrong-scripts");
    // A file, not a pipe: a pipe nobody reads could fill up and hold the worker.
    let log_path = cluster.path("w1-wrong.log");
    let log_file = std::fs::File::create(&log_path).expect("log file");
    let child = Command::new(bin("jobcast-worker"))
        .args(["--id", "w1", "--broker", &cluster.router])
        .args(["--events", &cluster.publish])
        .args(["--secret", "not-the-secret-of-w1-at-all"])
        .arg("--script-temp-path")
        .arg(&scripts)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file)
        .spawn()
        .expect("start worker");
    // The cluster ends it, should it not exit by itself.
    cluster.workers.push(Worker {
        id: "w1".into(),
        child,
    });
    let code = cluster.workers[0].wait_exit(Duration::from_secs(30));
    let log = std::fs::read_to_string(&log_path).expect("read log");
    assert_eq!(code, Some(3), "{log}");
    assert!(log.contains("correct this worker's secret"), "{log}");
}

#[test]
fn a_wait_goes_on_across_a_broker_restart_and_ends_with_the_run() {
    let mut cluster = Cluster::start(1);
    let go = cluster.path("go");
    cluster.apply_jobs(&format!(
        r##"
[jobs.until-told]
script = """#!/bin/sh
while [ ! -e {go} ]; do sleep 0.02; done
echo told
"""
"##,
        go = go.display()
    ));
    cluster.start_worker("w1", &[]);
    let run = json(&cluster.ctl(&["--json", "enqueue", "until-told"]))["id"]
        .as_str()
        .expect("a run id")
        .to_string();
    // The broker holds the wait's read; the restart drops it, and the wait asks again.
    let waiting = spawn_ctl(&cluster.router, &["--timeout", "10s", "wait", &run]);
    cluster.wait_state(&run, "running", Duration::from_secs(20));
    cluster.stop_broker();
    cluster.start_broker();
    std::fs::write(&go, "").expect("tell the run to end");
    let out = waiting.wait_with_output();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("succeeded"),
        "{}",
        text(&out)
    );
}
