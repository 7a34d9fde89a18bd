//! `jobcastctl backup` while the broker runs under load, and `jobcast-broker restore`
//! of that copy into a new store that a broker then serves.

use jobcast_integration_tests::*;
use std::process::Command;
use std::time::Duration;

fn restore(cluster: &Cluster, from: &std::path::Path) -> (bool, String) {
    let out = Command::new(bin("jobcast-broker"))
        .arg("--config")
        .arg(cluster.path("broker.toml"))
        .args(["restore", "--from"])
        .arg(from)
        .output()
        .expect("run jobcast-broker restore");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Points the cluster's broker at another data directory.
fn use_data_dir(cluster: &Cluster, dir: &std::path::Path) {
    let path = cluster.path("broker.toml");
    let settings = std::fs::read_to_string(&path).expect("the settings");
    let kept: Vec<&str> = settings
        .lines()
        .filter(|l| !l.starts_with("data_dir = "))
        .collect();
    let line = format!("data_dir = \"{}\"", dir.display());
    std::fs::write(&path, format!("{line}\n{}\n", kept.join("\n"))).expect("write the settings");
}

fn failure_of(cluster: &Cluster, args: &[&str]) -> String {
    let out = cluster.ctl(args);
    assert!(!out.status.success(), "jobcastctl {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_backup_taken_under_load_restores_into_a_store_a_broker_serves() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs(
        "[jobs.hello]\nscript = \"#!/bin/sh\\necho hello from $JOBCAST_RUN_ID\\n\"\n\
         [jobs.busy]\nevery = \"1s\"\nscript = \"#!/bin/sh\\necho tick\\n\"\n",
    );
    cluster.start_worker("w1", &[]);
    let ids: Vec<String> = (0..5).map(|_| cluster.enqueue("hello")).collect();
    for id in &ids {
        cluster.wait_state(id, "succeeded", Duration::from_secs(30));
    }
    // Runs are enqueued, start and end while the copy is written.
    let backup = cluster.path("backup-1");
    let path = backup.display().to_string();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (written, enqueued) = std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            let mut enqueued = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                cluster.enqueue("hello");
                enqueued += 1;
            }
            enqueued
        });
        // Once the load is under way.
        poll_until(Duration::from_secs(30), || {
            (cluster.runs().len() > 10).then_some(())
        })
        .expect("runs enqueued");
        let written = cluster.ctl_ok(&["--json", "backup", &path]);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        (written, load.join().expect("the load's thread"))
    });
    let written: serde_json::Value = serde_json::from_str(&written).expect("JSON");
    assert!(enqueued > 0);
    assert_eq!(written["path"], path.as_str(), "{written}");
    let runs = written["runs"].as_u64().expect("a count of runs");
    assert!(runs >= 5, "{written}");
    assert_eq!(written["jobs"], 2, "{written}");
    assert!(written["log_chunks"].as_u64() >= Some(5), "{written}");

    // Refused, with the reason, and nothing written over.
    let again = failure_of(&cluster, &["backup", &path]);
    assert!(again.contains("exists"), "{again}");
    let relative = failure_of(&cluster, &["backup", "backup-2"]);
    assert!(relative.contains("absolute"), "{relative}");
    let nowhere = cluster.path("no-such-dir").join("backup");
    let nowhere = failure_of(&cluster, &["backup", &nowhere.display().to_string()]);
    assert!(nowhere.contains("No such file"), "{nowhere}");

    // The broker went on; then it is lost with its data directory.
    cluster.wait_state(
        &cluster.enqueue("hello"),
        "succeeded",
        Duration::from_secs(30),
    );
    cluster.kill_broker();

    let not_a_backup = restore(&cluster, &cluster.path("no-such-dir"));
    assert!(
        !not_a_backup.0 && not_a_backup.1.contains("not a backup"),
        "{not_a_backup:?}"
    );
    let fresh = cluster.path("restored");
    use_data_dir(&cluster, &fresh);
    let (ok, text) = restore(&cluster, &backup);
    assert!(ok, "{text}");
    // What the copy held, counted at the restore, is what the broker counted when it
    // wrote it: the copy is of one moment.
    assert!(text.contains(&format!("to:   {runs} runs")), "{text}");
    let (ok, twice) = restore(&cluster, &backup);
    assert!(!ok && twice.contains("not empty"), "{twice}");

    cluster.start_broker();
    let restored = cluster.all_runs();
    for id in &ids {
        let run = restored
            .iter()
            .find(|r| r["id"] == id.as_str())
            .unwrap_or_else(|| panic!("run {id} is not in the restored store"));
        assert_eq!(run["state"], "succeeded", "{run}");
    }
    let log = String::from_utf8_lossy(&cluster.log(&ids[3])).into_owned();
    assert!(log.contains(&format!("hello from {}", ids[3])), "{log}");
    let jobs = cluster.ctl_ok(&["jobs"]);
    assert!(jobs.contains("busy") && jobs.contains("hello"), "{jobs}");
    let more = cluster.enqueue("hello");
    cluster.wait_state(&more, "succeeded", Duration::from_secs(30));
    // The backup itself is left as it was: restored from again, it holds the same.
    let second = cluster.path("restored-again");
    cluster.kill_broker();
    use_data_dir(&cluster, &second);
    let (ok, text) = restore(&cluster, &backup);
    assert!(ok && text.contains(&format!("to:   {runs} runs")), "{text}");
}
