//! Job parameters end to end: declared in the jobs file, given with `jobcastctl enqueue
//! -p` and the API, checked by the broker, seen by the script as variables, and secret
//! ones never shown.

use jobcast_integration_tests::*;
use serde_json::Value;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(30);

const JOBS: &str = r##"[jobs.greet]
script = """#!/bin/sh
echo "target=$JOBCAST_PARAM_TARGET count=$JOBCAST_PARAM_COUNT token length=${#JOBCAST_PARAM_TOKEN}"
"""
params.target = { type = "choice", choices = ["db", "files"], default = "db" }
params.count = { type = "integer", default = "1" }
params.token = { type = "string", secret = true, description = "an API token" }
"##;

fn log_text(cluster: &Cluster, id: &str) -> String {
    String::from_utf8_lossy(&cluster.log(id)).into_owned()
}

#[test]
fn a_parameterised_job_runs_with_the_values_it_is_given_and_shows_no_secret() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs(JOBS);
    cluster.start_worker("w1", &[]);

    // From the command line.
    let run = cluster
        .ctl_json(&[
            "enqueue",
            "greet",
            "-p",
            "target=files",
            "-p",
            "token=hunter2",
        ])
        .expect("enqueued");
    let id = run["id"].as_str().unwrap().to_string();
    cluster.wait_state(&id, "succeeded", LONG);
    assert_eq!(
        log_text(&cluster, &id),
        "target=files count=1 token length=7\n"
    );

    // A value that does not fit: refused, naming the parameter, nothing queued.
    let before = cluster.runs().len();
    let refused = cluster.ctl(&["enqueue", "greet", "-p", "count=many"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("parameter \"count\": \"many\" is not an integer"),
        "{stderr}"
    );
    let malformed = cluster.ctl(&["enqueue", "greet", "-p", "count"]);
    assert!(!malformed.status.success());
    assert!(String::from_utf8_lossy(&malformed.stderr).contains("is not NAME=VALUE"));
    assert_eq!(cluster.runs().len(), before, "nothing was queued");

    // From the API, numbers as numbers.
    let (code, body) = cluster.api_with_body(
        "POST",
        "/api/v1/jobs/greet/enqueue",
        Some(OPERATOR_TOKEN),
        Some(br#"{"params": {"count": 3}}"#.to_vec()),
    );
    assert_eq!(code, 201, "{body}");
    let by_api: Value = serde_json::from_str(&body).unwrap();
    let by_api = by_api["id"].as_str().unwrap();
    cluster.wait_state(by_api, "succeeded", LONG);
    assert_eq!(
        log_text(&cluster, by_api),
        "target=db count=3 token length=0\n"
    );
    let (code, body) = cluster.api_with_body(
        "POST",
        "/api/v1/jobs/greet/enqueue",
        Some(OPERATOR_TOKEN),
        Some(br#"{"params": {"target": "tape"}}"#.to_vec()),
    );
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("is not one of db, files"), "{body}");

    // The secret is stored for the script, and shown nowhere.
    let (code, body) = cluster.api("GET", &format!("/api/v1/runs/{id}"), Some(OPERATOR_TOKEN));
    assert_eq!(code, 200);
    assert!(!body.contains("hunter2"), "{body}");
    let detail: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(detail["run"]["params"]["token"], "(secret)");
    assert_eq!(detail["run"]["params"]["target"], "files");
    let (_, listed) = cluster.api("GET", "/api/v1/runs?job=greet", Some(VIEWER_TOKEN));
    assert!(!listed.contains("hunter2"), "{listed}");
    let out = cluster.ctl_ok(&["--json", "runs", "--job", "greet"]);
    assert!(!out.contains("hunter2"), "{out}");
    assert!(out.contains("(secret)"), "{out}");
}
