//! Scheduling with the real broker and workers.

use jobcast_integration_tests::*;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn scheduled_at(run: &serde_json::Value) -> u64 {
    run["scheduled_at_ms"].as_u64().unwrap()
}

#[test]
fn an_every_second_job_fires_on_time_for_twenty_ticks_without_duplicates() {
    let mut cluster = Cluster::start(1);
    let ledger = cluster.path("ledger");
    cluster.apply_jobs(&format!(
        "[jobs.tick]\nevery = \"1s\"\nscript = \"\"\"#!/bin/sh\necho $JOBCAST_SCHEDULED_AT >> {}\n\"\"\"\n",
        ledger.display()
    ));
    cluster.start_worker("w1", &[]);
    let runs = wait_for("20 ticks", LONG, || {
        let runs: Vec<_> = cluster
            .runs()
            .into_iter()
            .filter(|r| r["job"] == "tick" && r["state"] == "succeeded")
            .collect();
        (runs.len() >= 20).then_some(runs)
    });
    let mut ticks: Vec<u64> = runs.iter().map(scheduled_at).collect();
    ticks.sort();
    for pair in ticks.windows(2) {
        assert!(pair[1] > pair[0], "duplicate tick {}", pair[0]);
        assert_eq!(pair[1] % 1000, 0, "ticks on whole seconds");
    }
    for run in &runs {
        // The run was decided (created) at most a lead before its time, and started at
        // its time, never before it, and promptly.
        let (created, started) = (
            run["created_at_ms"].as_u64().unwrap(),
            run["started_at_ms"].as_u64().unwrap(),
        );
        let scheduled = scheduled_at(run);
        assert!(
            created + 100 >= scheduled, // the broker's lead, core's `DECIDE_AHEAD_MS`
            "decided too early: {run}"
        );
        assert!(started >= scheduled, "started before its time: {run}");
        let late = started - scheduled;
        assert!(late < 1_000, "tick started {late} ms late: {run}");
    }
    let executed = std::fs::read_to_string(&ledger).unwrap();
    let lines: Vec<&str> = executed.lines().collect();
    let unique: std::collections::BTreeSet<&str> = lines.iter().copied().collect();
    assert_eq!(
        unique.len(),
        lines.len(),
        "a tick executed twice:\n{executed}"
    );
}

#[test]
fn overlap_skip_does_not_start_a_tick_while_the_previous_run_is_active() {
    let mut cluster = Cluster::start(1);
    cluster
        .apply_jobs("[jobs.slow]\nevery = \"1s\"\nscript = \"\"\"#!/bin/sh\nsleep 2.5\n\"\"\"\n");
    cluster.start_worker("w1", &["--concurrency", "4"]);
    let runs = wait_for("two runs of the slow job to finish", LONG, || {
        let runs: Vec<_> = cluster
            .runs()
            .into_iter()
            .filter(|r| r["job"] == "slow")
            .collect();
        (runs.iter().filter(|r| r["state"] == "succeeded").count() >= 2).then_some(runs)
    });
    // never two at once: each run started after the previous one finished
    let mut spans: Vec<(u64, u64)> = runs
        .iter()
        .filter(|r| r["state"] == "succeeded")
        .map(|r| {
            (
                r["started_at_ms"].as_u64().unwrap(),
                r["finished_at_ms"].as_u64().unwrap(),
            )
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "runs overlapped: {spans:?}");
    }
    let jobs = cluster.ctl_json(&["jobs"]).unwrap();
    let state = &jobs.as_array().unwrap()[0]["state"];
    assert!(state["skipped_ticks"].as_u64().unwrap() >= 2, "{state}");
    assert_eq!(
        state["recent_skips"][0][1],
        "the previous run is still active"
    );
}

#[test]
fn a_failing_parent_runs_its_on_error_child_only() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs(
        "[jobs.parent]\nchildren = [\"report\", { job = \"cleanup\", on_error = true }]\nscript = \"\"\"#!/bin/sh\nexit 1\n\"\"\"\n\
         [jobs.report]\ncommand = \"true\"\n\
         [jobs.cleanup]\ncommand = [\"echo\", \"cleaning up\"]\n",
    );
    cluster.start_worker("w1", &[]);
    let parent = cluster.enqueue("parent");
    cluster.wait_state(&parent, "failed", LONG);
    let cleanup = wait_for("the cleanup run", LONG, || {
        cluster
            .runs()
            .into_iter()
            .find(|r| r["job"] == "cleanup" && r["state"] == "succeeded")
    });
    assert_eq!(cleanup["parent"], parent.as_str());
    assert!(
        String::from_utf8_lossy(&cluster.log(cleanup["id"].as_str().unwrap()))
            .contains("cleaning up")
    );
    assert!(cluster.runs().iter().all(|r| r["job"] != "report"));
}

#[test]
fn a_broker_killed_at_random_moments_never_records_or_runs_a_tick_twice() {
    let mut cluster = Cluster::start(1);
    let ledger = cluster.path("ledger");
    cluster.apply_jobs(&format!(
        "[jobs.tick]\nevery = \"1s\"\noverlap = \"allow\"\nscript = \"\"\"#!/bin/sh\necho $JOBCAST_SCHEDULED_AT >> {}\n\"\"\"\n",
        ledger.display()
    ));
    cluster.start_worker("w1", &[]);
    // A small deterministic generator picks the moments, so a failure can be replayed.
    let mut chaos = Chaos::from_env(0x5eed);
    for round in 0..10 {
        let wait = chaos.next_pause(Duration::from_millis(200), Duration::from_millis(1300));
        std::thread::sleep(wait);
        cluster.kill_broker();
        cluster.start_broker();
        eprintln!("round {round}: killed after {wait:?}");
    }
    // Let the schedule run on a little after the last restart.
    let after = cluster.runs().len();
    wait_for("ticks after the last restart", LONG, || {
        (cluster
            .runs()
            .iter()
            .filter(|r| r["state"] == "succeeded")
            .count()
            > after + 2)
            .then_some(())
    });
    let runs = cluster.runs();
    let mut by_tick: BTreeMap<u64, usize> = BTreeMap::new();
    for run in &runs {
        *by_tick.entry(scheduled_at(run)).or_default() += 1;
    }
    let doubles: Vec<_> = by_tick.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubles.is_empty(), "ticks recorded twice: {doubles:?}");
    // and none was executed twice
    wait_for("the worker to report every run", LONG, || {
        let status = cluster.ctl_json(&["status"])?;
        status["active"].as_object()?.is_empty().then_some(())
    });
    let executed = std::fs::read_to_string(&ledger).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for line in executed.lines() {
        assert!(seen.insert(line), "tick {line} executed twice");
    }
    assert!(seen.len() >= 5, "the job kept running: {}", seen.len());
}

#[test]
fn a_job_for_every_worker_runs_each_tick_on_both_workers_across_broker_kills() {
    let mut cluster = Cluster::start(2);
    let ledger = cluster.path("ledger");
    // Both workers online before the job exists: a tick between one's registration and
    // the other's would rightly go to the one alone (a slow start under load did that).
    cluster.start_worker("w1", &[]);
    cluster.start_worker("w2", &[]);
    cluster.apply_jobs(&format!(
        "[jobs.everywhere]\nevery = \"2s\"\nrun_on_all_workers = true\nmisfire = \"once\"\nscript = \"\"\"#!/bin/sh\necho $JOBCAST_SCHEDULED_AT $JOBCAST_WORKER >> {}\n\"\"\"\n",
        ledger.display()
    ));
    wait_for("the first tick", LONG, || {
        (cluster.runs().len() >= 2).then_some(())
    });
    // Each round the broker is down across a tick (caught up by `misfire = "once"`) and
    // w2 comes back a second after w1: the tick must wait for it, not go to w1 alone.
    let mut chaos = Chaos::from_env(0xa11);
    for round in 0..3 {
        let wait = chaos.next_pause(Duration::from_millis(500), Duration::from_millis(2000));
        std::thread::sleep(wait);
        cluster.workers[1].signal(libc::SIGSTOP);
        cluster.kill_broker();
        std::thread::sleep(Duration::from_millis(2_100));
        cluster.start_broker();
        std::thread::sleep(Duration::from_secs(1));
        cluster.workers[1].signal(libc::SIGCONT);
        eprintln!("round {round}: killed after {wait:?}");
    }
    let after = cluster.runs().len();
    wait_for("ticks after the last restart", LONG, || {
        (cluster.runs().len() >= after + 6).then_some(())
    });
    wait_for("every run to end", LONG, || {
        let status = cluster.ctl_json(&["status"])?;
        status["active"].as_object()?.is_empty().then_some(())
    });
    let mut by_tick: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for run in cluster.runs() {
        assert_eq!(run["state"], "succeeded", "{run}");
        by_tick
            .entry(scheduled_at(&run))
            .or_default()
            .push(run["pinned_worker"].as_str().unwrap().to_string());
    }
    for (tick, workers) in &mut by_tick {
        workers.sort();
        assert_eq!(
            workers,
            &["w1", "w2"],
            "tick {tick} did not run once on each worker"
        );
    }
    let executed = std::fs::read_to_string(&ledger).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for line in executed.lines() {
        assert!(seen.insert(line), "{line} executed twice");
    }
    assert_eq!(seen.len(), by_tick.len() * 2, "{executed}");
}

/// Debian's libfaketime, which `.ci/run` installs; `None` (the test is skipped, loudly)
/// on a developer's machine without it. In CI its absence fails the test.
fn libfaketime() -> Option<std::path::PathBuf> {
    let found = ["x86_64-linux-gnu", "aarch64-linux-gnu"]
        .iter()
        .map(|arch| std::path::PathBuf::from(format!("/usr/lib/{arch}/faketime/libfaketime.so.1")))
        .find(|path| path.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "libfaketime is missing (apt-get install faketime)"
        );
        say_skipped("libfaketime is not installed (apt-get install faketime)");
    }
    found
}

#[test]
fn a_wall_clock_stepped_back_an_hour_leaves_frequent_jobs_firing_at_the_new_time() {
    let Some(library) = libfaketime() else {
        return;
    };
    // Every process of the cluster reads the wall clock through libfaketime, from one
    // offset file: a step of the host's clock, as NTP makes one. Monotonic clocks stay true.
    let mut cluster = Cluster::start(1);
    let offset = cluster.path("clock-offset");
    std::fs::write(&offset, "+0").unwrap();
    for (key, value) in [
        ("LD_PRELOAD", library.to_string_lossy().into_owned()),
        (
            "FAKETIME_TIMESTAMP_FILE",
            offset.to_string_lossy().into_owned(),
        ),
        ("FAKETIME_NO_CACHE", "1".into()),
        ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
    ] {
        cluster.set_host_env(key, &value);
    }
    cluster.kill_broker();
    cluster.start_broker();
    cluster.apply_jobs(
        "[jobs.interval]\nevery = \"2s\"\noverlap = \"allow\"\ncommand = \"true\"\n\
         [jobs.wildcard]\ncron = \"*/2 * * * * *\"\noverlap = \"allow\"\ncommand = \"true\"\n",
    );
    cluster.start_worker("w1", &[]);
    let count = |cluster: &Cluster, job: &str| {
        cluster
            .all_runs()
            .into_iter()
            .filter(|r| r["job"] == job && r["state"] == "succeeded")
            .count()
    };
    wait_for("both jobs to run", LONG, || {
        (count(&cluster, "interval") >= 2 && count(&cluster, "wildcard") >= 2).then_some(())
    });
    let before = (count(&cluster, "interval"), count(&cluster, "wildcard"));
    // Written whole and renamed into place: libfaketime reads the file at every clock
    // reading, and a file caught half written reads as no offset.
    let next = cluster.path("clock-offset.next");
    std::fs::write(&next, "-1h").unwrap();
    std::fs::rename(&next, &offset).unwrap();
    // Both go on within seconds (before the fix: not for an hour).
    let went_on = poll_until(Duration::from_secs(30), || {
        (count(&cluster, "interval") >= before.0 + 3 && count(&cluster, "wildcard") >= before.1 + 3)
            .then_some(())
    });
    assert!(
        went_on.is_some(),
        "no ticks after the step back: {:?} runs before, {} and {} now\nbroker:\n{}\nworker:\n{}",
        before,
        count(&cluster, "interval"),
        count(&cluster, "wildcard"),
        cluster.broker_log(),
        cluster.worker_log("w1")
    );
    assert!(
        cluster.broker_log().contains("the wall clock stepped"),
        "{}",
        cluster.broker_log()
    );
    let runs = cluster.all_runs();
    let ids: std::collections::BTreeSet<&str> =
        runs.iter().filter_map(|r| r["id"].as_str()).collect();
    assert_eq!(ids.len(), runs.len(), "a run id used twice");
    // The worker stayed online through the step.
    cluster.wait_online("w1");
}

/// A minimal HTTP endpoint that records request bodies.
fn webhook_receiver() -> (String, std::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            if tx
                .send(String::from_utf8_lossy(&body).into_owned())
                .is_err()
            {
                return;
            }
        }
    });
    (url, rx)
}

#[test]
fn a_failed_run_is_sent_to_the_webhooks_with_slack_text() {
    let (url, bodies) = webhook_receiver();
    let mut cluster = Cluster::start(1);
    let config = cluster.path("broker.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("\n[[webhooks]]\nurl = \"{url}\"\n"));
    std::fs::write(&config, text).unwrap();
    cluster.kill_broker();
    cluster.start_broker();
    cluster.apply_jobs("[jobs.bad]\ncommand = \"false\"\n");
    cluster.start_worker("w1", &[]);
    let run = cluster.enqueue("bad");
    cluster.wait_state(&run, "failed", LONG);
    let body = bodies
        .recv_timeout(Duration::from_secs(30))
        .expect("a webhook call");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["kind"], "run_failed");
    assert_eq!(json["job"], "bad");
    assert_eq!(json["run_id"], run.as_str());
    assert!(json["text"].as_str().unwrap().contains("failed"), "{json}");
}

#[test]
fn jobs_can_be_disabled_and_enabled_from_jobcastctl() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs("[jobs.tick]\nevery = \"1s\"\ncommand = \"true\"\n");
    cluster.start_worker("w1", &[]);
    cluster.ctl_ok(&["disable", "tick"]);
    let before = cluster.runs().len();
    let jobs = wait_for("ticks to be skipped", LONG, || {
        let jobs = cluster.ctl_json(&["jobs"])?;
        (jobs[0]["state"]["skipped_ticks"].as_u64()? >= 2).then_some(jobs)
    });
    assert_eq!(jobs[0]["spec"]["enabled"], false);
    // ticks skipped meanwhile created no runs (at most one was already in flight)
    assert!(cluster.runs().len() <= before + 1);
    // a disabled job can still be run by hand
    let run = cluster.enqueue("tick");
    cluster.wait_state(&run, "succeeded", LONG);
    let table = cluster.ctl_ok(&["jobs"]);
    assert!(
        table.contains("disabled") && table.contains("every 1s"),
        "{table}"
    );
    cluster.ctl_ok(&["enable", "tick"]);
    let count = cluster.runs().len();
    wait_for("ticks to run again", LONG, || {
        (cluster.runs().len() >= count + 2).then_some(())
    });
    let out = cluster.ctl(&["disable", "nope"]);
    assert!(!out.status.success());
}
