//! The JSON API: every endpoint, its auth, and bad input.

use jobcast_integration_tests::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn cluster_with_jobs() -> Cluster {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs(
        "[jobs.hello]\nenv.DB_PASSWORD = \"hunter2-in-env\"\n\
         script = \"\"\"#!/bin/sh\necho hello, api\n\"\"\"\n\
         [jobs.slow]\nscript = \"\"\"#!/bin/sh\nsleep 1000\n\"\"\"\n\
         [jobs.bad]\ncommand = \"false\"\n",
    );
    cluster.start_worker("w1", &[]);
    cluster
}

#[test]
fn healthz_needs_no_token() {
    let cluster = Cluster::start(1);
    let (status, body) = cluster.api("GET", "/healthz", None);
    assert_eq!(status, 200);
    assert_eq!(json(&body)["status"], "ok");
}

#[test]
fn the_dashboard_cannot_be_framed_or_sniffed_and_talks_only_to_its_own_host() {
    let cluster = Cluster::start(0);
    for path in ["/", "/app.js", "/api/v1/status", "/healthz"] {
        let (status, headers, _) = cluster.api_exchange("GET", path, Some(VIEWER_TOKEN), &[], None);
        assert_eq!(status, 200, "{path}");
        let header = |name: &str| {
            headers
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
                .unwrap_or_default()
        };
        assert_eq!(header("x-frame-options"), "DENY", "{path}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
    }
    let (_, headers, _) = cluster.api_exchange("GET", "/", None, &[], None);
    let policy = headers
        .iter()
        .find(|(key, _)| key == "content-security-policy")
        .map(|(_, value)| value.clone())
        .unwrap_or_default();
    for directive in [
        "frame-ancestors 'none'",
        "connect-src 'self';",
        "object-src 'none'",
    ] {
        assert!(policy.contains(directive), "{directive} in {policy}");
    }
    assert!(!policy.contains("ws:"), "sockets to any host: {policy}");
}

#[test]
fn every_read_endpoint_refuses_without_a_valid_token() {
    let cluster = Cluster::start(1);
    for path in [
        "/api/v1/status",
        "/api/v1/runs",
        "/api/v1/runs.csv",
        "/api/v1/runs/abc",
        "/api/v1/jobs",
        "/api/v1/workers",
    ] {
        let (status, body) = cluster.api("GET", path, None);
        assert_eq!(status, 401, "{path}: {body}");
        assert_eq!(json(&body)["code"], "unauthorized");
        let (status, _) = cluster.api("GET", path, Some("not-a-token-at-all"));
        assert_eq!(status, 401, "{path}");
    }
    // tokens never reach the log
    assert!(!cluster.broker_log().contains(VIEWER_TOKEN));
}

#[test]
fn a_viewer_reads_but_cannot_act() {
    let cluster = cluster_with_jobs();
    let (status, body) = cluster.api("GET", "/api/v1/jobs", Some(VIEWER_TOKEN));
    assert_eq!(status, 200);
    assert_eq!(json(&body).as_array().unwrap().len(), 3);
    let (status, body) = cluster.api("GET", "/api/v1/workers", Some(VIEWER_TOKEN));
    assert_eq!(status, 200);
    assert_eq!(json(&body)[0]["id"], "w1");
    for path in [
        "/api/v1/jobs/hello/enqueue",
        "/api/v1/runs/abc/kill",
        "/api/v1/runs/abc/retry",
        "/api/v1/jobs/hello/disable",
        "/api/v1/jobs/hello/enable",
        "/api/v1/workers/w1/drain",
    ] {
        let (status, body) = cluster.api("POST", path, Some(VIEWER_TOKEN));
        assert_eq!(status, 403, "{path}: {body}");
        assert_eq!(json(&body)["code"], "forbidden");
    }
    assert!(cluster.runs().is_empty(), "nothing was done");
}

#[test]
fn viewers_see_env_names_but_not_values() {
    let cluster = cluster_with_jobs();
    let (_, body) = cluster.api("POST", "/api/v1/jobs/hello/enqueue", Some(OPERATOR_TOKEN));
    let run = json(&body)["id"].as_str().unwrap().to_string();
    cluster.wait_state(&run, "succeeded", LONG);
    for path in [
        "/api/v1/jobs".to_string(),
        format!("/api/v1/runs/{run}"),
        "/api/v1/runs".to_string(),
    ] {
        let (status, body) = cluster.api("GET", &path, Some(VIEWER_TOKEN));
        assert_eq!(status, 200, "{path}");
        assert!(body.contains("DB_PASSWORD"), "{path}: the name is shown");
        assert!(!body.contains("hunter2-in-env"), "{path}: the value is not");
        let (_, body) = cluster.api("GET", &path, Some(OPERATOR_TOKEN));
        assert!(body.contains("hunter2-in-env"), "{path}: operators see it");
    }
}

#[test]
fn actions_are_recorded_with_the_name_of_the_token_that_asked() {
    let cluster = cluster_with_jobs();
    let (_, body) = cluster.api("POST", "/api/v1/jobs/slow/enqueue", Some(OPERATOR_TOKEN));
    let run = json(&body)["id"].as_str().unwrap().to_string();
    cluster.wait_state(&run, "running", LONG);
    cluster.api(
        "POST",
        &format!("/api/v1/runs/{run}/kill"),
        Some(OPERATOR_TOKEN),
    );
    let record = cluster.wait_state(&run, "killed", LONG);
    let causes: Vec<String> = record["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["cause"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        causes.contains(&"enqueued by token operator".to_string()),
        "{causes:?}"
    );
    assert!(
        causes.contains(&"kill requested by token operator".to_string()),
        "{causes:?}"
    );
    // jobcastctl acts with the admin key, and is recorded so
    let again = cluster.enqueue("hello");
    let record = cluster.wait_state(&again, "succeeded", LONG);
    assert_eq!(record["history"][0]["cause"], "enqueued by key admin");
    cluster.ctl_ok(&["disable", "hello"]);

    // The audit log: the kill by the token, then the disable by the key, newest first;
    // a viewer reads it, paged by `before`.
    let (status, body) = cluster.api("GET", "/api/v1/audit?limit=2", Some(VIEWER_TOKEN));
    assert_eq!(status, 200, "{body}");
    let entries = json(&body)["entries"].as_array().unwrap().clone();
    let line = |e: &Value| {
        format!(
            "{}|{}|{}|{}",
            e["actor"].as_str().unwrap(),
            e["action"].as_str().unwrap(),
            e["target"].as_str().unwrap(),
            e["outcome"].as_str().unwrap()
        )
    };
    assert_eq!(
        entries.iter().map(line).collect::<Vec<_>>(),
        vec![
            "key admin|disable|job hello|done".to_string(),
            format!("token operator|kill|{run}|killing {run} on w1"),
        ]
    );
    let before = entries[1]["seq"].as_u64().unwrap();
    let (_, body) = cluster.api(
        "GET",
        &format!("/api/v1/audit?before={before}"),
        Some(VIEWER_TOKEN),
    );
    let older = json(&body)["entries"].as_array().unwrap().clone();
    assert_eq!(older.len() as u64, before - 1, "{body}");
    assert_eq!(older[0]["action"], "apply_jobs", "{body}");
    for bad in ["limit=0", "limit=1001", "before=x", "limit=5&extra=1"] {
        let (status, body) =
            cluster.api("GET", &format!("/api/v1/audit?{bad}"), Some(VIEWER_TOKEN));
        assert_eq!(status, 400, "{bad}: {body}");
    }
    let (status, _) = cluster.api("GET", "/api/v1/audit", None);
    assert_eq!(status, 401);
    // jobcastctl shows the same, as a table and as JSON.
    let table = cluster.ctl_ok(&["audit", "--limit", "2"]);
    assert!(
        table.lines().next().unwrap().starts_with("#")
            && table.contains("token operator")
            && table.contains("killing"),
        "{table}"
    );
    let shown = json(&cluster.ctl_ok(&["--json", "audit", "--before", &before.to_string()]));
    assert_eq!(shown.as_array().unwrap().len() as u64, before - 1);
}

#[test]
fn an_enqueue_retried_with_its_idempotency_key_makes_one_run() {
    let cluster = cluster_with_jobs();
    let call = || {
        cluster.api_request(
            "POST",
            "/api/v1/jobs/hello/enqueue",
            Some(OPERATOR_TOKEN),
            &[("Idempotency-Key", "order-4711")],
            None,
        )
    };
    let (status, first) = call();
    assert_eq!(status, 201, "{first}");
    let (status, again) = call();
    assert_eq!(status, 201, "{again}");
    assert_eq!(json(&first)["id"], json(&again)["id"]);
    // jobcastctl: the key it is given, or its own, reused when it asks again.
    let out = cluster.ctl(&["enqueue", "hello", "--key", "order-4711"]);
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        printed.contains(json(&first)["id"].as_str().unwrap()),
        "{printed}"
    );
    let (_, body) = cluster.api("GET", "/api/v1/runs?job=hello", Some(VIEWER_TOKEN));
    assert_eq!(json(&body).as_array().map(Vec::len), Some(1), "{body}");
}

#[test]
fn an_operator_enqueues_follows_kills_and_retries() {
    let cluster = cluster_with_jobs();
    let (status, headers, body) = cluster.api_exchange(
        "POST",
        "/api/v1/jobs/hello/enqueue",
        Some(OPERATOR_TOKEN),
        &[],
        None,
    );
    assert_eq!(status, 201, "{body}");
    let run = json(&body)["id"].as_str().unwrap().to_string();
    // The new run's address, which answers with it.
    let location = headers
        .iter()
        .find(|(name, _)| name == "location")
        .map(|(_, value)| value.clone())
        .unwrap_or_else(|| panic!("no Location in {headers:?}"));
    assert_eq!(location, format!("/api/v1/runs/{run}"));
    let (status, body) = cluster.api("GET", &location, Some(VIEWER_TOKEN));
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["run"]["id"], run.as_str());
    cluster.wait_state(&run, "succeeded", LONG);
    let (status, body) = cluster.api("GET", &format!("/api/v1/runs/{run}"), Some(VIEWER_TOKEN));
    assert_eq!(status, 200);
    let detail = json(&body);
    assert_eq!(detail["run"]["state"], "succeeded");
    assert!(detail["log"].as_str().unwrap().contains("hello, api"));

    // kill a running run
    let (_, body) = cluster.api("POST", "/api/v1/jobs/slow/enqueue", Some(OPERATOR_TOKEN));
    let slow = json(&body)["id"].as_str().unwrap().to_string();
    cluster.wait_state(&slow, "running", LONG);
    // Random 64-bit ids are strings in JSON, so that JavaScript and jq keep every digit.
    let (_, body) = cluster.api("GET", &format!("/api/v1/runs/{slow}"), Some(VIEWER_TOKEN));
    let instance = &json(&body)["run"]["worker_instance"];
    assert!(
        instance.as_str().is_some_and(|s| s.parse::<u64>().is_ok()),
        "{body}"
    );
    let (_, body) = cluster.api("GET", "/api/v1/status", Some(VIEWER_TOKEN));
    assert!(json(&body)["boot_id"].is_string(), "{body}");
    let (status, body) = cluster.api(
        "POST",
        &format!("/api/v1/runs/{slow}/kill"),
        Some(OPERATOR_TOKEN),
    );
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)["killing"].is_object(), "{body}");
    cluster.wait_state(&slow, "killed", LONG);

    // retry it: a new attempt, linked to the first
    let (status, body) = cluster.api(
        "POST",
        &format!("/api/v1/runs/{slow}/retry"),
        Some(OPERATOR_TOKEN),
    );
    assert_eq!(status, 201, "{body}");
    let again = json(&body);
    assert_eq!(again["attempt"], 2);
    let again_id = again["id"].as_str().unwrap().to_string();
    let (_, body) = cluster.api(
        "GET",
        &format!("/api/v1/runs/{again_id}"),
        Some(VIEWER_TOKEN),
    );
    assert_eq!(json(&body)["run"]["first_attempt"], slow.as_str());
    cluster.wait_state(&again_id, "running", LONG);
    cluster.api(
        "POST",
        &format!("/api/v1/runs/{again_id}/kill"),
        Some(OPERATOR_TOKEN),
    );
    cluster.wait_state(&again_id, "killed", LONG);

    // disable and enable
    let (status, _) = cluster.api("POST", "/api/v1/jobs/hello/disable", Some(OPERATOR_TOKEN));
    assert_eq!(status, 200);
    let (_, body) = cluster.api("GET", "/api/v1/jobs", Some(VIEWER_TOKEN));
    let hello = json(&body)
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["spec"]["name"] == "hello")
        .cloned()
        .unwrap();
    assert_eq!(hello["spec"]["enabled"], false);
    let (status, _) = cluster.api("POST", "/api/v1/jobs/hello/enable", Some(OPERATOR_TOKEN));
    assert_eq!(status, 200);

    // drain the worker
    let (status, _) = cluster.api("POST", "/api/v1/workers/w1/drain", Some(OPERATOR_TOKEN));
    assert_eq!(status, 200);
}

#[test]
fn runs_are_filtered_paged_and_exported() {
    let cluster = cluster_with_jobs();
    let mut ids = Vec::new();
    for job in ["hello", "bad", "hello"] {
        let (_, body) = cluster.api(
            "POST",
            &format!("/api/v1/jobs/{job}/enqueue"),
            Some(OPERATOR_TOKEN),
        );
        ids.push(json(&body)["id"].as_str().unwrap().to_string());
    }
    cluster.wait_state(&ids[1], "failed", LONG);
    cluster.wait_state(&ids[2], "succeeded", LONG);
    cluster.wait_state(&ids[0], "succeeded", LONG);
    let get = |q: &str| {
        let (status, body) = cluster.api("GET", &format!("/api/v1/runs{q}"), Some(VIEWER_TOKEN));
        assert_eq!(status, 200, "{q}: {body}");
        json(&body)
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(get("?state=failed"), vec![ids[1].clone()]);
    assert_eq!(get("?job=hello").len(), 2);
    assert_eq!(get("?worker=w1").len(), 3);
    assert_eq!(get("?worker=w9").len(), 0);
    // paging: newest first, then the page before it
    let (_, body) = cluster.api("GET", "/api/v1/runs?limit=2", Some(VIEWER_TOKEN));
    let page = json(&body);
    assert_eq!(page.as_array().unwrap().len(), 2);
    let last_seq = page[1]["seq"].as_u64().unwrap();
    assert_eq!(
        get(&format!("?limit=2&before={last_seq}")),
        vec![ids[0].clone()]
    );
    // time range
    let created = page[0]["created_at_ms"].as_u64().unwrap();
    assert!(get(&format!("?since={}", created + 60_000)).is_empty());
    assert_eq!(get(&format!("?until={}", created + 60_000)).len(), 3);

    let (status, csv) = cluster.api("GET", "/api/v1/runs.csv?job=hello", Some(VIEWER_TOKEN));
    assert_eq!(status, 200);
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("id,job,pool,state,worker"));
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[1].contains(",hello,default,succeeded,w1,"), "{csv}");
}

#[test]
fn bad_input_gets_clear_4xx_errors() {
    let cluster = cluster_with_jobs();
    let cases = [
        ("GET", "/api/v1/runs?state=done", 400, "unknown run state"),
        ("GET", "/api/v1/runs?limit=0", 400, "limit"),
        ("GET", "/api/v1/runs?limit=many", 400, "limit"),
        ("GET", "/api/v1/runs?colour=red", 400, "colour"),
        ("GET", "/api/v1/runs/nonexistent-run", 404, "no run matches"),
        (
            "POST",
            "/api/v1/runs/nonexistent-run/kill",
            404,
            "no run matches",
        ),
        (
            "POST",
            "/api/v1/runs/nonexistent-run/retry",
            404,
            "no run matches",
        ),
        ("POST", "/api/v1/jobs/nope/enqueue", 404, "no job named"),
        ("POST", "/api/v1/jobs/nope/disable", 404, "no job named"),
        (
            "POST",
            "/api/v1/workers/ghost/drain",
            404,
            "no connected worker",
        ),
        ("GET", "/api/v1/nothing-here", 404, "no such endpoint"),
        ("GET", "/api/v1/series?job=a&pool=b", 400, "not both"),
        (
            "GET",
            "/api/v1/series?resolution=day",
            400,
            "minute or hour",
        ),
        ("GET", "/api/v1/series?points=0", 400, "points must be"),
        ("GET", "/api/v1/series?points=1441", 400, "points must be"),
        ("GET", "/api/v1/series?job=nope", 404, "no job named"),
        ("GET", "/api/v1/upcoming?limit=201", 400, "limit must be"),
        ("GET", "/api/v1/alerts?limit=0", 400, "limit must be"),
    ];
    for (method, path, expected, text) in cases {
        let (status, body) = cluster.api(method, path, Some(OPERATOR_TOKEN));
        assert_eq!(status, expected, "{method} {path}: {body}");
        let body = json(&body);
        assert!(
            body["error"].as_str().unwrap().contains(text),
            "{method} {path}: {body}"
        );
    }
    // Bulk actions: a body naming 1 to 1,000 runs, or a clear 400.
    let too_many = serde_json::to_vec(&serde_json::json!({ "runs": vec!["x"; 1_001] })).unwrap();
    for path in ["/api/v1/bulk/retry", "/api/v1/bulk/kill"] {
        for (body, text) in [
            (b"".to_vec(), "the body is not"),
            (b"{\"run\": []}".to_vec(), "the body is not"),
            (b"{\"runs\": []}".to_vec(), "name"),
            (too_many.clone(), "name 1 to 1000 runs at a time, not 1001"),
        ] {
            let (status, answer) =
                cluster.api_with_body("POST", path, Some(OPERATOR_TOKEN), Some(body));
            assert_eq!(status, 400, "{path}: {answer}");
            assert!(
                json(&answer)["error"].as_str().unwrap().contains(text),
                "{path}: {answer}"
            );
        }
        let (status, _) = cluster.api_with_body(
            "POST",
            path,
            Some(VIEWER_TOKEN),
            Some(b"{\"runs\": [\"x\"]}".to_vec()),
        );
        assert_eq!(status, 403, "{path}: a viewer may not act");
    }
    // An oversized body is refused before anything is done. Declared but not sent, so
    // that the answer can be read before the server hangs up.
    let before = cluster.runs().len();
    let address = cluster.http.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&address).unwrap();
    write!(
        stream,
        "POST /api/v1/jobs/hello/enqueue HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {OPERATOR_TOKEN}\r\nContent-Length: 1048576\r\n\r\n"
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("limited to"), "{answer}");
    assert_eq!(cluster.runs().len(), before);
}

#[test]
fn an_operator_kills_several_runs_at_once() {
    let cluster = cluster_with_jobs();
    let runs: Vec<String> = (0..2)
        .map(|_| {
            let (_, body) = cluster.api("POST", "/api/v1/jobs/slow/enqueue", Some(OPERATOR_TOKEN));
            json(&body)["id"].as_str().unwrap().to_string()
        })
        .collect();
    cluster.wait_state(&runs[0], "running", LONG);
    let body = serde_json::to_vec(&serde_json::json!({ "runs": runs })).unwrap();
    let (status, answer) = cluster.api_with_body(
        "POST",
        "/api/v1/bulk/kill",
        Some(OPERATOR_TOKEN),
        Some(body),
    );
    assert_eq!(status, 200, "{answer}");
    let outcomes = json(&answer)["outcomes"].as_array().unwrap().clone();
    assert_eq!(outcomes.len(), 2, "{answer}");
    for run in &runs {
        let ended = wait_for(&format!("run {run} to end"), LONG, || {
            let state = cluster.run(run)?["state"].as_str()?.to_string();
            ["killed", "cancelled"]
                .contains(&state.as_str())
                .then_some(state)
        });
        assert!(!ended.is_empty());
    }
}

#[test]
fn alerts_are_listed_acknowledged_by_an_operator_and_kept_in_a_history() {
    let mut cluster = Cluster::start(2);
    cluster.apply_jobs("[jobs.lonely]\ncommand = \"true\"\npool = \"nobody\"\n");
    cluster.start_worker("w1", &[]);
    let run = cluster.enqueue("lonely");
    // Raised once the workers' grace after the broker's start has passed.
    let current = wait_for("the alert of pool nobody", LONG, || {
        let (_, body) = cluster.api("GET", "/api/v1/alerts", Some(VIEWER_TOKEN));
        let body = json(&body);
        body["current"]
            .as_array()?
            .iter()
            .find(|a| a["id"] == "no_worker:nobody")
            .cloned()
    });
    assert_eq!(current["pool"], "nobody");
    assert!(current.get("acknowledged").is_none(), "{current}");
    let ack = "/api/v1/alerts/no_worker:nobody/ack";
    let (status, _) = cluster.api("POST", ack, Some(VIEWER_TOKEN));
    assert_eq!(status, 403, "a viewer may not");
    let (status, body) = cluster.api(
        "POST",
        "/api/v1/alerts/no_worker:else/ack",
        Some(OPERATOR_TOKEN),
    );
    assert_eq!(
        (status, json(&body)["code"].clone()),
        (404, "not_found".into()),
        "{body}"
    );
    let (status, body) = cluster.api("POST", ack, Some(OPERATOR_TOKEN));
    assert_eq!(status, 200, "{body}");
    let (_, body) = cluster.api("GET", "/api/v1/alerts", Some(VIEWER_TOKEN));
    let body = json(&body);
    assert_eq!(
        body["current"][0]["acknowledged"]["by"], "token operator",
        "{body}"
    );
    assert_eq!(body["history"][0]["id"], "no_worker:nobody", "{body}");
    assert!(body["history"][0]["cleared_ms"].is_null(), "{body}");
    // jobcastctl shows it, and acknowledges by id (an unknown one is an error).
    let shown = cluster.ctl_ok(&["alerts"]);
    assert!(
        shown.contains("no_worker:nobody") && shown.contains("token operator"),
        "{shown}"
    );
    let out = cluster.ctl(&["ack", "no_worker:else"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no standing alert no_worker:else"),
        "{out:?}"
    );
    cluster.ctl_ok(&["ack", "no_worker:nobody"]);
    // A worker for the pool clears it; the history says when.
    cluster.start_worker("w2", &["--pools", "nobody"]);
    cluster.wait_state(&run, "succeeded", LONG);
    let record = wait_for("the alert to clear", LONG, || {
        let (_, body) = cluster.api("GET", "/api/v1/alerts", Some(VIEWER_TOKEN));
        let body = json(&body);
        let record = body["history"][0].clone();
        record["cleared_ms"].as_u64().map(|_| record)
    });
    assert_eq!(record["acknowledged"]["by"], "key admin", "{record}");
}

#[test]
fn counts_over_time_are_kept_across_a_clean_restart() {
    let mut cluster = cluster_with_jobs();
    let runs: Vec<String> = (0..3).map(|_| cluster.enqueue("bad")).collect();
    for run in &runs {
        cluster.wait_state(run, "failed", LONG);
    }
    let failed = |cluster: &Cluster, query: &str| -> u64 {
        let (code, body) = cluster.api(
            "GET",
            &format!("/api/v1/series?{query}"),
            Some(VIEWER_TOKEN),
        );
        assert_eq!(code, 200, "{body}");
        json(&body)["points"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["failed"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(failed(&cluster, "points=60"), 3);
    assert_eq!(failed(&cluster, "job=bad&resolution=hour&points=2"), 3);
    // Stopped as a supervisor stops it, and started again.
    cluster.stop_broker();
    cluster.start_broker();
    assert_eq!(failed(&cluster, "points=60"), 3, "kept across the restart");
    assert_eq!(failed(&cluster, "pool=default&points=60"), 3);
    assert_eq!(failed(&cluster, "job=bad&resolution=hour&points=2"), 3);
}
