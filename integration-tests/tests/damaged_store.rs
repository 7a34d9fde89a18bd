//! Damage that is not a crash's torn tail: a real broker's store, killed with SIGKILL, its
//! journal then cut at half its data, zeroed for 4 KiB in the middle, or deleted. The
//! store's write-ahead log, which holds every batch since the broker started, makes a
//! deleted journal whole again; with the log lost too, the broker refuses to start on
//! each, naming the files; `--repair` ends what went back, and no run that had succeeded
//! runs again. And a store another broker has open is refused, saying so.

use jobcast_integration_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

fn journals(dir: &Path) -> Vec<PathBuf> {
    let found: Vec<PathBuf> = files_under(dir)
        .into_iter()
        .filter(|path| path.extension().is_some_and(|e| e == "jnl"))
        .collect();
    assert!(!found.is_empty(), "no journal under {}", dir.display());
    found
}

/// How much of a journal holds records (fjall allocates the file ahead, in zeros).
fn written_len(journal: &Path) -> usize {
    let bytes = std::fs::read(journal).unwrap();
    bytes.iter().rposition(|b| *b != 0).map_or(0, |at| at + 1)
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs the broker on the cluster's settings until it exits by itself; its exit code and
/// what it printed.
fn broker_once(cluster: &Cluster, extra: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(bin("jobcast-broker"))
        .arg("--config")
        .arg(cluster.path("broker.toml"))
        .args([
            "--router",
            "tcp://127.0.0.1:0",
            "--publish",
            "tcp://127.0.0.1:0",
        ])
        .args(["--http", "127.0.0.1:0"])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let code = poll_until(Duration::from_secs(30), || child.try_wait().ok().flatten());
    if code.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (code.and_then(|c| c.code()), text)
}

#[test]
fn a_second_broker_on_the_same_data_directory_is_refused_saying_why() {
    let cluster = Cluster::start(0);
    let (code, text) = broker_once(&cluster, &[]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("is in use by another process") && text.contains("data directory"),
        "{text}"
    );
    // The first one goes on serving.
    cluster.apply_jobs("[jobs.quick]\nscript = \"#!/bin/sh\\ntrue\\n\"\n");
}

fn marker_at_ms(data: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(data.join("store.marker")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("at_ms = "))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn a_damaged_store_is_refused_and_repaired_without_running_a_succeeded_run_again() {
    let mut cluster = Cluster::start(1);
    let ledger = cluster.path("ledger");
    cluster.apply_jobs(&format!(
        "[jobs.quick]\nscript = \"\"\"#!/bin/sh\necho $JOBCAST_RUN_ID >> {}\n\"\"\"\n",
        ledger.display()
    ));
    cluster.start_worker("w1", &["--concurrency", "2"]);
    let runs: Vec<String> = (0..60).map(|_| cluster.enqueue("quick")).collect();
    for run in &runs {
        cluster.wait_state(run, "succeeded", LONG);
    }
    // The marker has recorded a commit made after the last run ended.
    let last_end = cluster
        .all_runs()
        .iter()
        .filter_map(|r| r["finished_at_ms"].as_u64())
        .max()
        .unwrap();
    let data = cluster.path("data");
    wait_for("the marker to pass the last run's end", LONG, || {
        marker_at_ms(&data).filter(|at| *at > last_end)
    });
    cluster.kill_broker();
    let killed = cluster.path("data-as-killed");
    copy_dir(&data, &killed);

    type Damage = fn(&Path);
    let cut_in_half: Damage = |journal| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(journal)
            .unwrap();
        file.set_len(written_len(journal) as u64 / 2).unwrap();
    };
    let zero_4k_in_the_middle: Damage = |journal| {
        let middle = written_len(journal) / 2;
        let mut bytes = std::fs::read(journal).unwrap();
        bytes[middle..middle + 4096].fill(0);
        std::fs::write(journal, bytes).unwrap();
    };
    let delete: Damage = |journal| std::fs::remove_file(journal).unwrap();

    // The log gives fjall back what its journal held.
    copy_dir(&killed, &data);
    for journal in journals(&data) {
        delete(&journal);
    }
    cluster.start_broker();
    let succeeded = cluster
        .all_runs()
        .iter()
        .filter(|r| r["state"].as_str() == Some("succeeded"))
        .count();
    assert_eq!(succeeded, runs.len(), "the log replayed every end");
    cluster.kill_broker();

    for (name, damage) in [
        ("cut in half", cut_in_half),
        ("4 KiB zeroed", zero_4k_in_the_middle),
        ("deleted", delete),
    ] {
        copy_dir(&killed, &data);
        for journal in journals(&data) {
            damage(&journal);
        }
        std::fs::remove_dir_all(data.join("store.wal")).unwrap();
        let (code, text) = broker_once(&cluster, &[]);
        assert_eq!(code, Some(1), "journal {name}: the broker started\n{text}");
        assert!(
            text.contains("acknowledged writes are missing")
                && text.contains("store.fjall")
                && text.contains("store.marker")
                && text.contains("--repair"),
            "journal {name}: {text}"
        );
    }

    // The last damage (the journal deleted), repaired on request.
    let (code, text) = broker_once(&cluster, &["--repair"]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("unfinished runs"), "{text}");
    cluster.start_broker();
    cluster.wait_online("w1");
    let stored = cluster.all_runs();
    assert!(
        stored
            .iter()
            .all(|r| !matches!(r["state"].as_str(), Some("queued" | "assigned" | "running"))),
        "{stored:?}"
    );
    // The deleted journal held the job too (it was applied moments before, so no table
    // had it yet): applied again, as its operator would. One more run is seen through:
    // the broker works, and nothing ran twice.
    cluster.apply_jobs(&format!(
        "[jobs.quick]\nscript = \"\"\"#!/bin/sh\necho $JOBCAST_RUN_ID >> {}\n\"\"\"\n",
        ledger.display()
    ));
    let after = cluster.enqueue("quick");
    cluster.wait_state(&after, "succeeded", LONG);
    let executed = std::fs::read_to_string(&ledger).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for line in executed.lines() {
        assert!(seen.insert(line), "run {line} executed twice");
    }
    assert_eq!(seen.len(), runs.len() + 1);
}
