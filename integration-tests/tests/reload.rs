//! Keys, API tokens and webhooks taken from the settings file while the broker runs:
//! SIGHUP and `jobcastctl reload`, a bad file changing nothing, a removed key ending the
//! worker that used it.

use jobcast_integration_tests::{wait_for, worker_secret, Cluster};
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
    wait_for("the reload to be logged", Duration::from_secs(20), || {
        let log = cluster.broker_log();
        log.lines()
            .any(|l| l.contains("settings reloaded") && l.contains("w2"))
            .then_some(())
    });
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
