//! Ownership with real binaries: a token limited to a team cannot see or act on another
//! team's jobs and runs, through the API, the CSV export, the metrics or the live feed.

use futures_util::{SinkExt, StreamExt};
use jobcast_integration_tests::*;
use serde_json::Value;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const DATA_TOKEN: &str = "integration-data-team-token";
const LONG: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_token_cannot_see_or_kill_another_teams_run() {
    let mut cluster = Cluster::start_configured(
        1,
        &[],
        &[],
        &format!(
            "[[http.tokens]]\nname = \"data\"\ntoken = \"{DATA_TOKEN}\"\nrole = \"operator\"\nteams = [\"data\"]\n"
        ),
    );
    cluster.apply_jobs(
        "[jobs.ours]\nteam = \"data\"\nscript = \"\"\"#!/bin/sh\nwhile true; do echo our-output; sleep 0.2; done\n\"\"\"\n\
         [jobs.theirs]\nteam = \"web\"\nscript = \"\"\"#!/bin/sh\necho their-secret-output\nsleep 1000\n\"\"\"\n",
    );
    let cluster_ref = &mut cluster;
    tokio::task::block_in_place(|| {
        cluster_ref.start_worker("w1", &[]);
    });
    let (theirs, ours) = tokio::task::block_in_place(|| {
        let theirs = cluster.enqueue("theirs");
        let ours = cluster.enqueue("ours");
        cluster.wait_state(&theirs, "running", LONG);
        cluster.wait_state(&ours, "running", LONG);
        (theirs, ours)
    });

    // The live feed, as the team: connected before anything else happens.
    let url = format!(
        "{}/api/v1/live?token={DATA_TOKEN}",
        cluster.http.replacen("http://", "ws://", 1)
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("connect");
    for run in [&theirs, &ours] {
        socket
            .send(Message::Text(
                serde_json::json!({ "follow": run }).to_string().into(),
            ))
            .await
            .unwrap();
    }
    // It may follow its own run's output.
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(Ok(Message::Text(text))) = tokio::time::timeout(left, socket.next())
            .await
            .expect("the team's own run's output in the feed")
        else {
            continue;
        };
        seen.push_str(&text);
        let value: Value = serde_json::from_str(&text).unwrap();
        if value["type"] == "log" && value["run_id"] == ours.as_str() {
            assert!(value["data"].as_str().unwrap().contains("our-output"));
            break;
        }
    }

    let ours_after = tokio::task::block_in_place(|| {
        let api = |method: &str, path: &str| cluster.api(method, path, Some(DATA_TOKEN));
        // Listings: its own only.
        let (code, body) = api("GET", "/api/v1/runs");
        assert_eq!(code, 200);
        let runs: Vec<Value> = serde_json::from_str(&body).unwrap();
        let ids: Vec<&str> = runs.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids, [ours.as_str()]);
        let (code, body) = api("GET", "/api/v1/jobs");
        assert_eq!(code, 200);
        assert!(
            body.contains("\"ours\"") && !body.contains("theirs"),
            "{body}"
        );
        let (code, csv) = api("GET", "/api/v1/runs.csv");
        assert_eq!(code, 200);
        assert!(csv.contains(&ours) && !csv.contains(&theirs), "{csv}");
        // Metrics of its own jobs only: its running run counted, the other team's not.
        let (code, metrics) = api("GET", "/metrics");
        assert_eq!(code, 200);
        assert!(
            metrics.contains("jobcast_runs_active{job=\"ours\",state=\"running\"} 1"),
            "{metrics}"
        );
        assert!(!metrics.contains("theirs"), "{metrics}");
        // Its status counts its one run, and names no other.
        let (code, status) = api("GET", "/api/v1/status");
        assert_eq!(code, 200);
        let parsed: Value = serde_json::from_str(&status).unwrap();
        assert_eq!(parsed["total_runs"], 1, "{status}");
        assert_eq!(parsed["runs_by_state"]["running"], 1, "{status}");
        assert!(!status.contains(&theirs), "{status}");

        // Another team's run and job: as if they did not exist.
        for (method, path) in [
            ("GET", format!("/api/v1/runs/{theirs}")),
            ("GET", format!("/api/v1/runs/{theirs}/log")),
            ("POST", format!("/api/v1/runs/{theirs}/kill")),
            ("POST", format!("/api/v1/runs/{theirs}/retry")),
            ("POST", "/api/v1/jobs/theirs/enqueue".to_string()),
            ("POST", "/api/v1/jobs/theirs/disable".to_string()),
            ("GET", "/api/v1/jobs/theirs".to_string()),
        ] {
            let (code, body) = api(method, &path);
            assert_eq!(code, 404, "{method} {path}: {body}");
            assert!(!body.contains("their-secret-output"), "{body}");
        }
        // What all teams share is refused outright.
        let (code, _) = api("POST", "/api/v1/workers/w1/drain");
        assert_eq!(code, 403);
        assert_eq!(
            cluster.run(&theirs).unwrap()["state"],
            "running",
            "untouched"
        );

        // Its own: it may act.
        let (code, body) = api("POST", &format!("/api/v1/runs/{ours}/kill"));
        assert_eq!(code, 200, "{body}");
        cluster.wait_state(&ours, "killed", LONG);
        // Another run of the other team comes and goes meanwhile.
        let later = cluster.enqueue("theirs");
        cluster.wait_state(&later, "running", LONG);
        cluster.ctl_ok(&["kill", &later]);
        cluster.wait_state(&later, "killed", LONG);
        // A run of its own after all that: once the feed shows it, it has been through
        // every change before it.
        cluster.enqueue("ours")
    });

    // The feed told the team of its runs, and never of the other team's.
    let deadline = tokio::time::Instant::now() + LONG;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = tokio::time::timeout(left, socket.next())
            .await
            .expect("the feed showed the team's last run")
            .expect("open")
            .expect("a message");
        if let Message::Text(text) = message {
            seen.push_str(&text);
            let value: Value = serde_json::from_str(&text).unwrap();
            if value["runs"]
                .as_array()
                .is_some_and(|runs| runs.iter().any(|r| r["id"] == ours_after.as_str()))
            {
                break;
            }
        }
    }
    assert!(seen.contains(&ours), "the team's own run in the feed");
    assert!(!seen.contains(&theirs), "another team's run in the feed");
    assert!(
        !seen.contains("their-secret-output"),
        "another team's log in the feed"
    );
    assert!(
        !seen.contains("\"theirs\""),
        "another team's job in the feed"
    );
    let _ = socket.send(Message::Close(None)).await;
}
