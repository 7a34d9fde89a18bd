//! A network partition between a worker and the broker, both alive: the worker's lease
//! stops its runs before the broker gives them up, a retry never overlaps its attempt, and
//! results that arrive after the heal are kept on the runs.

use jobcast_integration_tests::relay::Relay;
use jobcast_integration_tests::{wait_for, worker_secret, Cluster};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(60);

/// The times (ns since the epoch) a run's script wrote to its mark file.
fn marks(dir: &Path, run_id: &str) -> Vec<u128> {
    std::fs::read_to_string(dir.join(run_id))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

fn late_result(cluster: &Cluster, run_id: &str) -> Option<Value> {
    cluster
        .run(run_id)
        .map(|run| run["late_result"].clone())
        .filter(|late| !late.is_null())
}

#[test]
fn a_partition_stops_the_cut_off_workers_runs_before_their_retries_start_and_keeps_late_results() {
    let mut cluster = Cluster::start(2);
    let marks_dir = cluster.path("marks");
    std::fs::create_dir_all(&marks_dir).unwrap();
    cluster.apply_jobs(&format!(
        r##"
[jobs.long]
env.MARKS = "{marks}"
script = """#!/bin/sh
while true; do date +%s%N >> "$MARKS/$JOBCAST_RUN_ID"; sleep 0.1; done
"""
retries = 1
retry_backoff = "1s"

[jobs.short]
script = """#!/bin/sh
sleep 2
echo short-done
"""
"##,
        marks = marks_dir.display()
    ));
    // w1 reaches the broker only through the relays; its lease is the cluster's worker
    // timeout (5 s), its kill grace 2 s.
    let router = Relay::start(&cluster.router);
    let events = Relay::start(&cluster.publish);
    let (via_router, via_events) = (router.endpoint.clone(), events.endpoint.clone());
    cluster.spawn_worker_to(
        "w1",
        &via_router,
        &via_events,
        &worker_secret("w1"),
        &["--concurrency", "2"],
    );
    cluster.wait_online("w1");
    let long = cluster.enqueue("long");
    cluster.wait_state(&long, "running", LONG);
    let short = cluster.enqueue("short");
    cluster.wait_state(&short, "running", LONG);

    router.cut();
    events.cut();
    let cut_at = Instant::now();
    cluster.start_worker("w2", &[]);

    // The broker gives both up; the long run's retry goes to w2.
    cluster.wait_state(&long, "lost", LONG);
    let given_up_after = cut_at.elapsed();
    assert!(
        given_up_after >= Duration::from_secs(7),
        "given up {given_up_after:?} after the cut: before the lease and kill grace passed"
    );
    cluster.wait_state(&short, "lost", LONG);
    let retry = wait_for("the retry", LONG, || {
        cluster
            .runs()
            .into_iter()
            .find(|r| r["first_attempt"].as_str() == Some(long.as_str()))
    });
    let retry_id = retry["id"].as_str().unwrap().to_string();
    cluster.wait_state(&retry_id, "running", LONG);
    assert_eq!(cluster.run(&retry_id).unwrap()["worker"], "w2");
    let retry_began = wait_for("the retry's first mark", LONG, || {
        marks(&marks_dir, &retry_id).first().copied()
    });
    let first_attempt_ended = marks(&marks_dir, &long)
        .last()
        .copied()
        .expect("the first attempt wrote marks");
    assert!(
        first_attempt_ended < retry_began,
        "the first attempt was still going {} ms after its retry began",
        (first_attempt_ended - retry_began) / 1_000_000
    );
    assert!(
        cluster
            .worker_log("w1")
            .contains("no answer from the broker within the lease"),
        "{}",
        cluster.worker_log("w1")
    );

    // Heal after 15 s: w1 comes back and reports both ends, which are kept, not dropped.
    let heal_at = cut_at + Duration::from_secs(15);
    std::thread::sleep(heal_at.saturating_duration_since(Instant::now()));
    router.heal();
    events.heal();
    let short_late = wait_for("the short run's late result", LONG, || {
        late_result(&cluster, &short)
    });
    assert_eq!(short_late["outcome"]["exited"]["code"], 0, "{short_late}");
    let long_late = wait_for("the long run's late result", LONG, || {
        late_result(&cluster, &long)
    });
    assert!(
        long_late["outcome"]["lease_expired"]["silent_ms"]
            .as_u64()
            .is_some_and(|ms| ms > 5_000),
        "{long_late}"
    );
    let run = cluster.run(&short).unwrap();
    assert_eq!(
        run["state"], "lost",
        "the late result does not change the state"
    );
    assert!(
        String::from_utf8_lossy(&cluster.log(&short)).contains("short-done"),
        "the late output is kept"
    );
    cluster.wait_online("w1");
    cluster.ctl_ok(&["kill", &retry_id]);
    cluster.wait_state(&retry_id, "killed", LONG);
}
