//! Keys, API tokens and webhooks taken from the settings file while the broker runs:
//! SIGHUP and `jobcastctl reload`, a bad file changing nothing, a removed key ending the
//! worker that used it.

use jobcast_integration_tests::{poll_until, wait_for, worker_secret, Cluster};
use serde_json::Value;
use std::time::Duration;

fn append_to_config(cluster: &Cluster, text: &str) {
    let path = cluster.path("broker.toml");
    let mut config = std::fs::read_to_string(&path).expect("read config");
    config.push_str(text);
    std::fs::write(&path, config).expect("write config");
}

#[test]
fn sighup_adds_a_worker_key_and_reload_removes_it_without_a_restart() {
    let mut cluster = Cluster::start(1);
    let broker_pid = cluster.broker_pid();
    cluster.apply_jobs("[jobs.hello]\nscript = \"#!/bin/sh\\necho hi\\n\"\n");

    // The config ends with [keys.workers]: a line appended there adds a key.
    append_to_config(&cluster, &format!("w2 = \"{}\"\n", worker_secret("w2")));
    // SAFETY: kill(2) on the broker this test started.
    unsafe { libc::kill(broker_pid, libc::SIGHUP) };
    let reloaded = poll_until(Duration::from_secs(20), || {
        let log = cluster.broker_log();
        log.lines()
            .any(|l| l.contains("settings reloaded") && l.contains("w2"))
            .then_some(())
    });
    assert!(
        reloaded.is_some(),
        "no reload logged 20 s after SIGHUP (broker alive: {}); broker log:\n{}",
        cluster
            .broker
            .as_mut()
            .is_some_and(|b| b.try_wait().ok().flatten().is_none()),
        cluster.broker_log()
    );
    let index = cluster.spawn_worker_unchecked("w2", &[]);
    cluster.wait_online("w2");
    let run = cluster.enqueue("hello");
    let done = cluster.wait_state(&run, "succeeded", Duration::from_secs(30));
    assert_eq!(done["worker"], "w2", "{done}");
    assert_eq!(cluster.broker_pid(), broker_pid);
    assert!(cluster
        .broker
        .as_mut()
        .is_some_and(|b| b.try_wait().ok().flatten().is_none()));

    // `jobcastctl reload` takes the file without w2, and with a new API token.
    let path = cluster.path("broker.toml");
    let config = std::fs::read_to_string(&path).expect("read config");
    let without_w2: String = config
        .lines()
        .filter(|line| !line.starts_with("w2 = "))
        .map(|line| format!("{line}\n"))
        .collect();
    let with_token = without_w2.replace(
        "[keys]\n",
        "[[http.tokens]]\nname = \"late\"\ntoken = \"a-token-added-by-a-reload\"\nrole = \"viewer\"\n[keys]\n",
    );
    std::fs::write(&path, with_token).expect("write config");
    let (status, _) = cluster.api("GET", "/api/v1/status", Some("a-token-added-by-a-reload"));
    assert_eq!(status, 401, "the token is not in force before the reload");
    let report: Value = cluster
        .ctl_json(&["reload"])
        .expect("reload answers in JSON");
    assert_eq!(
        report["workers_removed"],
        serde_json::json!(["w2"]),
        "{report}"
    );
    assert_eq!(report["workers_added"], serde_json::json!([]), "{report}");
    assert_eq!(report["api_tokens"], 3, "{report}");
    assert_eq!(report["needs_restart"], serde_json::json!([]), "{report}");
    let (status, body) = cluster.api("GET", "/api/v1/status", Some("a-token-added-by-a-reload"));
    assert_eq!(status, 200, "{body}");

    // w2's key is gone: its next requests are refused, and it ends with the code for a
    // refused key.
    let code = cluster.workers[index].wait_exit(Duration::from_secs(30));
    assert_eq!(code, Some(3), "{}", cluster.worker_log("w2"));
    assert_eq!(cluster.broker_pid(), broker_pid);

    // Both reloads are in the audit log, with who asked and what changed.
    let audit: Value = cluster
        .ctl_json(&["audit", "--limit", "2"])
        .expect("audit answers in JSON");
    let lines: Vec<String> = audit
        .as_array()
        .expect("a list")
        .iter()
        .map(|e| format!("{}|{}|{}", e["actor"], e["action"], e["outcome"]))
        .collect();
    assert_eq!(
        lines,
        vec![
            "\"key admin\"|\"reload\"|\"workers added [], removed [w2], changed []; admin key unchanged; 3 API tokens, 0 webhooks\"",
            "\"signal SIGHUP\"|\"reload\"|\"workers added [w2], removed [], changed []; admin key unchanged; 2 API tokens, 0 webhooks\"",
        ],
        "{audit}"
    );
}

#[test]
fn a_settings_file_the_broker_cannot_take_changes_nothing() {
    let mut cluster = Cluster::start(1);
    cluster.start_worker("w1", &[]);
    let path = cluster.path("broker.toml");
    let good = std::fs::read_to_string(&path).expect("read config");

    for (bad, expected) in [
        (good.replace("[keys]\n", "[keys\n"), "invalid broker config"),
        (
            good.replace(&worker_secret("w1"), "short"),
            "shorter than 16 characters",
        ),
    ] {
        std::fs::write(&path, bad).expect("write config");
        let out = cluster.ctl(&["reload"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.starts_with("jobcastctl: "), "{stderr}");
        assert!(stderr.contains("not reloaded"), "{stderr}");
        assert!(stderr.contains(expected), "{stderr}");
    }

    // A SIGHUP with the bad file in place is logged and changes nothing either.
    // SAFETY: kill(2) on the broker this test started.
    unsafe { libc::kill(cluster.broker_pid(), libc::SIGHUP) };
    wait_for(
        "the refused reload to be logged",
        Duration::from_secs(20),
        || {
            let log = cluster.broker_log();
            (log.matches("reload refused").count() >= 3).then_some(())
        },
    );
    // The keys in force still work: w1 stays online and runs work, the admin key answers.
    cluster.apply_jobs("[jobs.still]\nscript = \"#!/bin/sh\\ntrue\\n\"\n");
    let run = cluster.enqueue("still");
    let done = cluster.wait_state(&run, "succeeded", Duration::from_secs(30));
    assert_eq!(done["worker"], "w1", "{done}");
    assert!(cluster
        .broker
        .as_mut()
        .is_some_and(|b| b.try_wait().ok().flatten().is_none()));
}

/// Replaces worker `id`'s line under [keys.workers] with `line`, or removes it.
fn set_worker_key(cluster: &Cluster, id: &str, line: Option<&str>) {
    let path = cluster.path("broker.toml");
    let config = std::fs::read_to_string(&path).expect("read config");
    let mut text: String = config
        .lines()
        .filter(|l| !l.starts_with(&format!("{id} = ")))
        .map(|l| format!("{l}\n"))
        .collect();
    if let Some(line) = line {
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(&path, text).expect("write config");
}

/// Frames refused for a key (unknown sender or bad seal) since the broker started.
fn key_refusals(cluster: &Cluster) -> u64 {
    let status = cluster.ctl_json(&["status"]).expect("status");
    ["unknown_sender", "bad_mac", "auth_failed"]
        .iter()
        .filter_map(|reason| status["rejected"][reason].as_u64())
        .sum()
}

#[test]
fn a_worker_key_is_rotated_without_a_refused_request() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs("[jobs.quick]\nscript = \"#!/bin/sh\\ntrue\\n\"\n");
    let old = worker_secret("w1");
    let new = "a-new-secret-for-w1-0123456789";
    let first = cluster.start_worker("w1", &[]);
    // Step 1: the broker takes the new secret and keeps the old one.
    set_worker_key(
        &cluster,
        "w1",
        Some(&format!(
            "w1 = {{ secret = \"{new}\", previous_secret = \"{old}\" }}"
        )),
    );
    cluster.ctl_ok(&["reload"]);
    let run = cluster.enqueue("quick");
    cluster.wait_state(&run, "succeeded", Duration::from_secs(30));
    // Step 2: the worker moves to the new secret.
    cluster.workers[first].signal(libc::SIGTERM);
    assert_eq!(
        cluster.workers[first].wait_exit(Duration::from_secs(30)),
        Some(0)
    );
    cluster.spawn_worker_with_secret("w1", new, &[]);
    cluster.wait_online("w1");
    let run = cluster.enqueue("quick");
    cluster.wait_state(&run, "succeeded", Duration::from_secs(30));
    // Step 3: the old secret is dropped.
    set_worker_key(&cluster, "w1", Some(&format!("w1 = \"{new}\"")));
    let report = cluster.ctl_json(&["reload"]).expect("reload report");
    assert_eq!(
        report["workers_changed"],
        serde_json::json!(["w1"]),
        "{report}"
    );
    let run = cluster.enqueue("quick");
    cluster.wait_state(&run, "succeeded", Duration::from_secs(30));
    assert_eq!(
        key_refusals(&cluster),
        0,
        "a request was refused during the rotation"
    );
    assert!(!cluster.worker_log("w1").contains("revoked"));
}

#[test]
fn a_busy_worker_whose_key_is_removed_stops_its_run_and_exits_3_at_once() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs("[jobs.long]\nscript = \"#!/bin/sh\\nsleep 300\\n\"\n");
    let index = cluster.start_worker("w1", &[]);
    let run = cluster.enqueue("long");
    cluster.wait_state(&run, "running", Duration::from_secs(30));
    set_worker_key(&cluster, "w1", None);
    let report = cluster.ctl_json(&["reload"]).expect("reload report");
    assert_eq!(
        report["workers_removed"],
        serde_json::json!(["w1"]),
        "{report}"
    );
    let revoked_at = std::time::Instant::now();
    // Told at its next request (every 500 ms here), it kills the run (grace 2 s) and exits.
    let code = cluster.workers[index].wait_exit(Duration::from_secs(30));
    let took = revoked_at.elapsed();
    assert_eq!(code, Some(3), "{}", cluster.worker_log("w1"));
    assert!(
        took < Duration::from_secs(6),
        "exited {took:?} after the reload"
    );
    assert!(
        cluster.tagged_processes().is_empty(),
        "the run's processes outlive the revoked worker"
    );
    let record = cluster.wait_state(&run, "lost", Duration::from_secs(30));
    let cause = record["history"].as_array().unwrap().last().unwrap()["cause"].clone();
    assert_eq!(cause, "the key of worker w1 was revoked", "{record}");
    assert!(
        cluster.worker_log("w1").contains("was revoked"),
        "{}",
        cluster.worker_log("w1")
    );
}
