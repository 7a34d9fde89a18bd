//! `jobcast-broker migrate`: a store moved from the embedded engine into PostgreSQL and
//! back, with its runs, logs and jobs, served by a broker at each end.

use jobcast_integration_tests::*;
use std::process::Command;
use std::time::Duration;

fn migrate(cluster: &Cluster, to: &str, password_file: Option<&std::path::Path>) -> (bool, String) {
    let mut command = Command::new(bin("jobcast-broker"));
    command
        .arg("--config")
        .arg(cluster.path("broker.toml"))
        .args(["migrate", "--to", to]);
    if let Some(file) = password_file {
        command.arg("--to-password-file").arg(file);
    }
    let out = command.output().expect("run jobcast-broker migrate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Points the cluster's broker at another store: `line` goes first in its settings.
fn use_store(cluster: &Cluster, line: &str) {
    let path = cluster.path("broker.toml");
    let settings = std::fs::read_to_string(&path).expect("the settings");
    let kept: Vec<&str> = settings
        .lines()
        .filter(|l| !l.starts_with("postgres = ") && !l.starts_with("data_dir = "))
        .collect();
    std::fs::write(&path, format!("{line}\n{}\n", kept.join("\n"))).expect("write the settings");
}

#[test]
fn a_store_moves_into_postgres_and_back_whole() {
    let Some(postgres) = PostgresStore::start() else {
        return;
    };
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs(
        "[jobs.hello]\nscript = \"#!/bin/sh\\necho hello from $JOBCAST_RUN_ID\\n\"\n\
         [jobs.idle]\ncron = \"0 0 1 1 *\"\nscript = \"#!/bin/sh\\ntrue\\n\"\n",
    );
    cluster.start_worker("w1", &[]);
    let ids: Vec<String> = (0..5).map(|_| cluster.enqueue("hello")).collect();
    for id in &ids {
        cluster.wait_state(id, "succeeded", Duration::from_secs(30));
    }
    let before = cluster.all_runs();
    cluster.kill_broker();

    // Into PostgreSQL, from the store a killed broker left.
    let password = cluster.path("pg-password");
    std::fs::write(&password, jobcast_test_postgres::PASSWORD).expect("the password file");
    let (ok, text) = migrate(&cluster, &postgres.url, Some(&password));
    assert!(ok, "{text}");
    assert!(
        text.contains("from: 5 runs") && text.contains("to:   5 runs"),
        "{text}"
    );
    assert!(text.contains("done"), "{text}");
    let stored: u64 = postgres
        .query("SELECT count(*) FROM jobcast_runs")
        .parse()
        .expect("a count");
    assert_eq!(stored, 5);
    // Not twice into the same database.
    let (ok, text) = migrate(&cluster, &postgres.url, Some(&password));
    assert!(!ok && text.contains("not empty"), "{text}");

    // A broker on PostgreSQL serves what was moved.
    use_store(&cluster, &postgres.settings());
    cluster.start_broker();
    assert_eq!(cluster.all_runs(), before);
    let log = String::from_utf8_lossy(&cluster.log(&ids[2])).into_owned();
    assert!(log.contains(&format!("hello from {}", ids[2])), "{log}");
    let more = cluster.enqueue("hello");
    cluster.wait_state(&more, "succeeded", Duration::from_secs(30));
    let jobs = cluster.ctl_ok(&["jobs"]);
    assert!(jobs.contains("idle") && jobs.contains("hello"), "{jobs}");
    cluster.kill_broker();

    // And back into a new embedded store.
    let back = cluster.path("back");
    let (ok, text) = migrate(&cluster, &back.display().to_string(), None);
    assert!(ok, "{text}");
    assert!(text.contains("to:   6 runs"), "{text}");
    use_store(&cluster, &format!("data_dir = \"{}\"", back.display()));
    cluster.start_broker();
    let runs = cluster.all_runs();
    assert_eq!(runs.len(), 6);
    let log = String::from_utf8_lossy(&cluster.log(&more)).into_owned();
    assert!(log.contains(&format!("hello from {more}")), "{log}");
}
