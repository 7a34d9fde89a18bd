//! What an operator does with a broker whose store is PostgreSQL: runs, logs, listings
//! and their paging, retention and `prune`, the CSV export, `/metrics` and the dashboard,
//! checked against what the database holds.

use jobcast_integration_tests::*;
use jobcast_protocol::{AdminRequest, Reply};
use serde_json::Value;
use std::time::Duration;

#[test]
fn retention_listings_csv_metrics_and_the_dashboard_work_on_postgres() {
    let Some(postgres) = PostgresStore::start() else {
        return;
    };
    let settings = format!("{}\n[retention]\nmax_runs = 10", postgres.settings());
    let mut cluster = Cluster::start_configured(1, &[], &[], &settings);
    cluster.apply_jobs("[jobs.say]\nscript = \"#!/bin/sh\\necho said by $JOBCAST_RUN_ID\\n\"\n");
    cluster.start_worker("w1", &["--concurrency", "4"]);
    let ids: Vec<String> = (0..25).map(|_| cluster.enqueue("say")).collect();
    for id in &ids {
        cluster.wait_state(id, "succeeded", Duration::from_secs(60));
    }
    let newest = ids.last().expect("runs");
    let log = String::from_utf8_lossy(&cluster.log(newest)).into_owned();
    assert!(log.contains(&format!("said by {newest}")), "{log}");

    // Retention keeps the newest 10 (the broker prunes by itself; prune makes it now).
    cluster.ctl_ok(&["prune"]);
    let count = |sql: &str| -> u64 { postgres.query(sql).parse().expect("a count") };
    wait_for("retention to keep 10 runs", Duration::from_secs(30), || {
        (count("SELECT count(*) FROM jobcast_runs") == 10).then_some(())
    });
    assert_eq!(
        count("SELECT count(DISTINCT run_id) FROM jobcast_log_chunks"),
        10,
        "the kept runs keep their logs, the deleted runs' logs went with them"
    );
    let status = cluster.ctl_json(&["status"]).expect("status");
    assert_eq!(status["total_runs"], 10, "{status}");
    let kept: Vec<String> = cluster
        .all_runs()
        .iter()
        .filter_map(|run| run["id"].as_str().map(str::to_string))
        .collect();
    let mut newest_ten: Vec<String> = ids[15..].to_vec();
    newest_ten.reverse();
    assert_eq!(kept, newest_ten, "the newest ten, newest first");

    // `jobcastctl backup` is the embedded store's: PostgreSQL is backed up by its tools.
    let backup = cluster.path("backup");
    let refused = cluster.ctl(&["backup", &backup.display().to_string()]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("pg_dump"),
        "{said}"
    );
    assert!(!backup.exists(), "nothing written");

    // The API's listing pages back through them.
    let (status, body) = cluster.api("GET", "/api/v1/runs?limit=4", Some(VIEWER_TOKEN));
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).expect("JSON");
    let page = page.as_array().expect("a list");
    assert_eq!(page.len(), 4);
    let before = page[3]["seq"].as_u64().expect("seq");
    let (_, body) = cluster.api(
        "GET",
        &format!("/api/v1/runs?limit=10&before={before}"),
        Some(VIEWER_TOKEN),
    );
    let rest: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(rest.as_array().expect("a list").len(), 6);

    // The CSV export: a header and the ten runs.
    let (status, csv) = cluster.api("GET", "/api/v1/runs.csv", Some(VIEWER_TOKEN));
    assert_eq!(status, 200);
    assert_eq!(csv.lines().count(), 11, "{csv}");

    // /metrics counts what ended.
    let (status, metrics) = cluster.api("GET", "/metrics", Some(VIEWER_TOKEN));
    assert_eq!(status, 200);
    let succeeded = metrics
        .lines()
        .find(|l| l.starts_with("jobcast_runs_ended_total{") && l.contains("succeeded"))
        .unwrap_or_else(|| panic!("no succeeded count in:\n{metrics}"));
    assert!(succeeded.ends_with(" 25"), "{succeeded}");

    // And the dashboard is served.
    let (status, page) = cluster.api("GET", "/", None);
    assert_eq!(status, 200);
    assert!(page.contains("jobcast"), "{page}");
}

/// Starts a broker on `settings`, waits for its ready file closely (every millisecond),
/// and asks it for its status at once with a client that takes no refusal as a cue to
/// ask again: the answer, and the broker (to stop).
fn ask_as_soon_as_ready(dir: &std::path::Path, attempt: usize) -> (Reply, KilledOnDrop) {
    let ready = dir.join(format!("ready-{attempt}"));
    let broker = KilledOnDrop::new(
        std::process::Command::new(bin("jobcast-broker"))
            .arg("--config")
            .arg(dir.join("broker.toml"))
            .args([
                "--router",
                "tcp://127.0.0.1:0",
                "--publish",
                "tcp://127.0.0.1:0",
            ])
            .args(["--http", "off", "--ready-file"])
            .arg(&ready)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the broker"),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let text = loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            break text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the broker did not say it is ready"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    let router = text
        .lines()
        .find_map(|line| line.strip_prefix("router = "))
        .expect("the ready file names the router")
        .trim_matches('"')
        .to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let reply = runtime.block_on(async {
        let client = jobcast_client::Client::connect(admin_client_config(&router, LONG))
            .await
            .expect("connect");
        client
            .request(AdminRequest::Status, LONG)
            .await
            .unwrap_or_else(|e| panic!("the first request after the ready file: {e}"))
    });
    (reply, broker)
}

const LONG: Duration = Duration::from_secs(10);

#[test]
fn a_client_told_the_broker_is_ready_is_never_refused_as_too_early() {
    let Some(postgres) = PostgresStore::start() else {
        return;
    };
    let dir = tempfile::tempdir().expect("a directory");
    std::fs::write(
        dir.path().join("broker.toml"),
        format!(
            "data_dir = \"{}\"\n{}\n[keys]\nadmin = \"{ADMIN_SECRET}\"\n",
            dir.path().join("data").display(),
            postgres.settings()
        ),
    )
    .expect("write the settings");
    // The first start creates the schema; each later one reads the replay floors from
    // the database as it takes the lease, after the ready file is written.
    for attempt in 0..5 {
        let (reply, broker) = ask_as_soon_as_ready(dir.path(), attempt);
        assert!(
            matches!(reply, Reply::Status(_)),
            "start {attempt}: {reply:?}"
        );
        broker.stop();
    }
}
