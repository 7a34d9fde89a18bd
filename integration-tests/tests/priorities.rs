//! Priorities with real binaries: a burst queued before any worker is there starts with
//! its high-priority runs. Tags: jobs found by them from the command line and the API.

use jobcast_integration_tests::*;
use std::time::Duration;

#[test]
fn high_priority_runs_of_a_burst_start_first() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs("[jobs.work]\ncommand = [\"true\"]\n[jobs.urgent]\ncommand = [\"true\"]\npriority = \"high\"\n");
    let mut low = Vec::new();
    for _ in 0..8 {
        let run = cluster
            .ctl_json(&["enqueue", "work", "--priority", "low"])
            .expect("enqueued");
        low.push(run["id"].as_str().unwrap().to_string());
    }
    let mut high = vec![cluster.enqueue("urgent")];
    for _ in 0..2 {
        let run = cluster
            .ctl_json(&["enqueue", "work", "--priority", "10"])
            .expect("enqueued");
        high.push(run["id"].as_str().unwrap().to_string());
    }
    let refused = cluster.ctl(&["enqueue", "work", "--priority", "-101"]);
    assert!(!refused.status.success(), "an out-of-range priority");
    // One slot: runs start one after another, in the order the broker hands them out.
    cluster.start_worker("w1", &["--concurrency", "1"]);
    for id in low.iter().chain(&high) {
        cluster.wait_state(id, "succeeded", Duration::from_secs(60));
    }
    let mut runs = cluster.runs();
    // Microseconds: one run can end and the next start within the same millisecond.
    runs.sort_by_key(|r| r["spawned_at_us"].as_u64());
    let first: Vec<&str> = runs[..3]
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = high.iter().map(String::as_str).collect();
    let mut started = first.clone();
    expected.sort();
    started.sort();
    assert_eq!(started, expected, "the high ones first: {runs:?}");
    assert!(runs.iter().all(|r| r["priority"].is_i64()), "{runs:?}");
}

#[test]
fn jobs_are_found_by_their_tags() {
    let cluster = Cluster::start(1);
    cluster.apply_jobs(
        "[jobs.a]\ncommand = [\"true\"]\ntags = [\"nightly\", \"db\"]\n\
         [jobs.b]\ncommand = [\"true\"]\ntags = [\"db\"]\n[jobs.c]\ncommand = [\"true\"]\n",
    );
    let names = |jobs: serde_json::Value| -> Vec<String> {
        jobs.as_array()
            .unwrap()
            .iter()
            .map(|j| j["spec"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let db = cluster.ctl_json(&["jobs", "--tag", "db"]).expect("jobs");
    assert_eq!(names(db), ["a", "b"]);
    let (code, body) = cluster.api("GET", "/api/v1/jobs?tag=nightly", Some(VIEWER_TOKEN));
    assert_eq!(code, 200);
    assert_eq!(names(serde_json::from_str(&body).unwrap()), ["a"]);
    let none = cluster
        .ctl_json(&["jobs", "--tag", "weekly"])
        .expect("jobs");
    assert!(names(none).is_empty());
}
