//! `/metrics`: the Prometheus exposition of a real broker, read by a Prometheus text
//! parser after runs that succeeded, failed and were cancelled.

use jobcast_integration_tests::{say_skipped, wait_for, Cluster, VIEWER_TOKEN};
use prometheus_parse::{Sample, Scrape, Value};
use std::time::Duration;

fn scrape_metrics(cluster: &Cluster) -> Scrape {
    let (status, body) = cluster.api("GET", "/metrics", Some(VIEWER_TOKEN));
    assert_eq!(status, 200, "{body}");
    Scrape::parse(body.lines().map(|line| Ok(line.to_string()))).expect("Prometheus text")
}

/// The samples of `metric` whose labels include all of `labels`.
fn find<'a>(scrape: &'a Scrape, metric: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .collect()
}

fn number(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let found = find(scrape, metric, labels);
    assert_eq!(
        found.len(),
        1,
        "one {metric}{labels:?} in {:#?}",
        scrape.samples
    );
    match found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{metric} is {other:?}"),
    }
}

#[test]
fn metrics_count_runs_workers_refusals_and_time_and_need_a_token() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs(
        "[jobs.fine]\nscript = \"#!/bin/sh\\ntrue\\n\"\n\
         [jobs.broken]\nscript = \"#!/bin/sh\\nexit 2\\n\"\n",
    );
    // Queued and cancelled before any worker takes it.
    let cancelled = cluster.enqueue("fine");
    cluster.ctl_ok(&["kill", &cancelled]);
    cluster.start_worker("w1", &[]);
    let fine = cluster.enqueue("fine");
    cluster.wait_state(&fine, "succeeded", Duration::from_secs(30));
    let broken = cluster.enqueue("broken");
    cluster.wait_state(&broken, "failed", Duration::from_secs(30));
    // A connection with a wrong admin secret is refused, and counted.
    let out = std::process::Command::new(jobcast_integration_tests::bin("jobcastctl"))
        .args(["--broker", &cluster.router, "--timeout", "5s", "status"])
        .env("JOBCAST_ADMIN_SECRET", "not-the-admin-secret-at-all")
        .output()
        .expect("run jobcastctl");
    assert_eq!(out.status.code(), Some(4));

    let (status, _) = cluster.api("GET", "/metrics", None);
    assert_eq!(status, 401, "metrics need a token");

    let scrape = scrape_metrics(&cluster);
    let ended = |job: &str, state: &str| {
        number(
            &scrape,
            "jobcast_runs_ended_total",
            &[("job", job), ("state", state)],
        )
    };
    assert_eq!(ended("fine", "succeeded"), 1.0);
    assert_eq!(ended("fine", "cancelled"), 1.0);
    assert_eq!(ended("broken", "failed"), 1.0);
    assert_eq!(number(&scrape, "jobcast_workers_online", &[]), 1.0);
    // What the worker sent: its registration, and the ends of the two runs it ran
    // (counted whether alone or in a `reports` message).
    assert!(
        number(
            &scrape,
            "jobcast_worker_requests_total",
            &[("kind", "register")]
        ) >= 1.0
    );
    assert!(
        number(
            &scrape,
            "jobcast_worker_reports_total",
            &[("kind", "run_finished")]
        ) >= 2.0
    );
    assert_eq!(number(&scrape, "jobcast_runs_stored", &[]), 3.0);
    assert!(number(&scrape, "jobcast_store_size_bytes", &[]) > 0.0);
    assert!(number(&scrape, "jobcast_uptime_seconds", &[]) > 0.0);
    assert!(
        number(
            &scrape,
            "jobcast_refused_frames_total",
            &[("reason", "auth_failed")]
        ) >= 1.0
    );

    // Histograms: both started runs have a duration and a dispatch latency; the
    // cancelled one has neither.
    let histogram = |metric: &str, labels: &[(&str, &str)]| {
        let found = find(&scrape, metric, labels);
        assert_eq!(
            found.len(),
            1,
            "one {metric}{labels:?} in {:#?}",
            scrape.samples
        );
        match &found[0].value {
            Value::Histogram(buckets) => buckets.clone(),
            other => panic!("{metric} is {other:?}"),
        }
    };
    for job in ["fine", "broken"] {
        let buckets = histogram("jobcast_run_duration_seconds", &[("job", job)]);
        let total = buckets.iter().map(|b| b.count).fold(0.0, f64::max);
        assert_eq!(total, 1.0, "{job}: {buckets:?}");
    }
    let dispatch = histogram("jobcast_dispatch_latency_seconds", &[("pool", "default")]);
    assert_eq!(dispatch.iter().map(|b| b.count).fold(0.0, f64::max), 2.0);
    let flushes = histogram("jobcast_store_flush_seconds", &[]);
    assert!(flushes.iter().map(|b| b.count).fold(0.0, f64::max) >= 3.0);

    // Gauges follow the present: a queued run shows in its pool's depth and by job.
    cluster.ctl_ok(&["drain", "w1"]);
    wait_for("w1 to leave", Duration::from_secs(30), || {
        let scrape = scrape_metrics(&cluster);
        (number(&scrape, "jobcast_workers_online", &[]) == 0.0).then_some(())
    });
    cluster.enqueue("fine");
    let first = scrape;
    // With no worker left for the pool, a standing alert comes (after the grace the
    // broker gives workers to come back).
    let scrape = wait_for("a no_worker alert", Duration::from_secs(30), || {
        let scrape = scrape_metrics(&cluster);
        find(&scrape, "jobcast_alerts", &[("kind", "no_worker")])
            .first()
            .is_some_and(|s| matches!(s.value, Value::Gauge(v) if v == 1.0))
            .then_some(scrape)
    });
    assert_eq!(
        number(&scrape, "jobcast_queue_depth", &[("pool", "default")]),
        1.0
    );
    assert_eq!(
        number(
            &scrape,
            "jobcast_runs_active",
            &[("job", "fine"), ("state", "queued")]
        ),
        1.0
    );
    // The shipped Grafana dashboard asks only for metrics the broker has.
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../examples/grafana/jobcast.json"))
            .expect("the dashboard is JSON");
    let mut asked = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for (at, _) in expr.match_indices("jobcast_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                asked.push(name);
            }
        }
    }
    assert!(asked.len() >= 10, "{asked:?}");
    for name in asked {
        let metric = name.strip_suffix("_bucket").unwrap_or(&name);
        // Described (HELP) even while a family has no samples.
        assert!(
            scrape.docs.contains_key(metric) || first.docs.contains_key(metric),
            "the dashboard asks for {name}, which /metrics lacks: {:?}",
            scrape.docs.keys()
        );
    }
}

/// Whether `program` (from Debian's `prometheus`) is here; under CI it must be
/// (`.ci/run` installs the package).
fn prometheus_tool_available(program: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    match found {
        true => true,
        false if std::env::var_os("CI").is_some() => {
            panic!("{program} is missing (apt-get install prometheus)")
        }
        false => {
            say_skipped(&format!(
                "{program} is missing (apt-get install prometheus)"
            ));
            false
        }
    }
}

fn promtool(args: &[&str], input: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut child = std::process::Command::new("promtool")
        .args(args)
        .current_dir(root.join("prometheus"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    if let Some(text) = input {
        child
            .stdin
            .take()
            .expect("promtool's stdin")
            .write_all(text.as_bytes())
            .expect("write to promtool");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("promtool's output")
}

/// The shipped alerting rules load, fire on the series a problem gives (and not before
/// their `for`), and the broker's own exposition passes Prometheus's linter.
#[test]
fn the_example_alerting_rules_hold_and_promtool_accepts_the_metrics() {
    if !prometheus_tool_available("promtool") {
        return;
    }
    for args in [
        &["check", "rules", "../../examples/prometheus-alerts.yml"][..],
        &["test", "rules", "alerts_test.yml"][..],
    ] {
        let out = promtool(args, None);
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cluster = Cluster::start(1);
    let (status, body) = cluster.api("GET", "/metrics", Some(VIEWER_TOKEN));
    assert_eq!(status, 200, "{body}");
    let out = promtool(&["check", "metrics"], Some(&body));
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Prometheus server of the test's own, killed when dropped.
struct PrometheusServer {
    child: std::process::Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl PrometheusServer {
    /// Scrapes `target` (host:port) every second with the viewer token, as the shipped
    /// `examples/prometheus.yml` does every 15 s.
    fn start(target: &str) -> PrometheusServer {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, VIEWER_TOKEN).unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: jobcast\n    authorization:\n      type: Bearer\n      credentials_file: {}\n    static_configs:\n      - targets: [\"{target}\"]\n",
                token.display()
            ),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
            .spawn()
            .expect("start prometheus");
        PrometheusServer {
            child,
            address,
            _dir: dir,
        }
    }

    /// The series an instant query returns, or `None` when the server cannot answer yet.
    fn query(&self, expr: &str) -> Option<Vec<serde_json::Value>> {
        let url = format!("http://{}/api/v1/query", self.address);
        let mut response = ureq::get(&url).query("query", expr).call().ok()?;
        let text = response.body_mut().read_to_string().ok()?;
        let body: serde_json::Value = serde_json::from_str(&text).ok()?;
        (body["status"] == "success").then(|| {
            body["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
    }
}

#[test]
fn every_panel_of_the_shipped_grafana_dashboard_gets_data_from_a_real_prometheus() {
    if !prometheus_tool_available("prometheus") {
        return;
    }
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs(
        "[jobs.fine]\nscript = \"#!/bin/sh\\ntrue\\n\"\n\
         [jobs.broken]\nscript = \"#!/bin/sh\\nexit 2\\n\"\n\
         [jobs.stuck]\npool = \"nobody\"\nscript = \"#!/bin/sh\\ntrue\\n\"\n",
    );
    cluster.start_worker("w1", &[]);
    // A queue that stays: a pool no worker serves.
    cluster.enqueue("stuck");
    let target = cluster.http.trim_start_matches("http://").to_string();
    let prometheus = PrometheusServer::start(&target);
    wait_for(
        "Prometheus to scrape the broker",
        Duration::from_secs(60),
        || {
            let up = prometheus.query("up{job=\"jobcast\"}")?;
            (up.len() == 1 && up[0]["value"][1] == "1").then_some(())
        },
    );

    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../examples/grafana/jobcast.json"))
            .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            exprs.push((title, target["expr"].as_str().expect("expr").to_string()));
        }
    }
    assert!(exprs.len() >= 10, "{exprs:?}");
    // Runs that succeed and fail, and a refused connection, across several scrapes: the
    // panels' rates and quantiles need samples at two times at least.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let fine = cluster.enqueue("fine");
        let broken = cluster.enqueue("broken");
        cluster.wait_state(&fine, "succeeded", Duration::from_secs(30));
        cluster.wait_state(&broken, "failed", Duration::from_secs(30));
        let _ = std::process::Command::new(jobcast_integration_tests::bin("jobcastctl"))
            .args(["--broker", &cluster.router, "--timeout", "2s", "status"])
            .env("JOBCAST_ADMIN_SECRET", "not-the-admin-secret-at-all")
            .output();
        let missing: Vec<String> = exprs
            .iter()
            .filter(|(_, expr)| {
                // A series, and a number in it (a quantile of nothing is NaN).
                !prometheus.query(expr).is_some_and(|series| {
                    series.iter().any(|s| {
                        s["value"][1]
                            .as_str()
                            .is_some_and(|v| v.parse::<f64>().is_ok_and(|v| v.is_finite()))
                    })
                })
            })
            .map(|(title, expr)| format!("{title}: {expr}"))
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "panels without data after 90 s: {missing:#?}"
        );
    }
}
