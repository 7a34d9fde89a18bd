//! Exactly once with a broker killed at random moments during an enqueue storm: every
//! request makes one run, every run executes once, and none is recorded `lost` (the
//! workers never die here, so a lost run is one that could have gone on).
//!
//! The same on the PostgreSQL store, and with the database itself stopped as a crash
//! would (`pg_ctl stop -m immediate`) and started again under the broker.
//!
//! Short in the test suite (5 kills); `JOBCAST_CRASH_ROUNDS=50` runs the full length, and
//! `JOBCAST_CHAOS_SEED` replays a failure's kill moments.

use jobcast_integration_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_secs(120);
const REQUESTS_PER_ROUND: usize = 40;

#[test]
fn a_broker_killed_during_an_enqueue_storm_runs_every_request_exactly_once() {
    let mut cluster = Cluster::start(2);
    storm(&mut cluster, "killed", |cluster| {
        cluster.kill_broker();
        cluster.start_broker();
    });
}

#[test]
fn on_postgres_a_broker_killed_during_an_enqueue_storm_runs_every_request_exactly_once() {
    let Some(postgres) = PostgresStore::start() else {
        return;
    };
    let mut cluster = Cluster::start_configured(2, &[], &[], &postgres.settings());
    storm(&mut cluster, "killed", |cluster| {
        cluster.kill_broker();
        cluster.start_broker();
    });
    let stored: usize = postgres
        .query("SELECT count(*) FROM jobcast_runs")
        .parse()
        .expect("a count");
    assert!(stored > 0, "the runs are in PostgreSQL");
}

#[test]
fn postgres_stopped_as_by_a_crash_during_an_enqueue_storm_loses_and_repeats_nothing() {
    let Some(postgres) = PostgresStore::start() else {
        return;
    };
    let mut cluster = Cluster::start_configured(2, &[], &[], &postgres.settings());
    let mut outages = 0u64;
    storm(&mut cluster, "database restarted", |cluster| {
        postgres.server.stop_immediate();
        // The broker notices at its next write (or when its lease could have run out)
        // and stops acting; it stands by meanwhile.
        wait_for("the broker to see the database gone", LONG, || {
            let log = cluster.broker_log();
            let stopped =
                log.matches("store write failed").count() + log.matches("no longer acting").count();
            (stopped as u64 > outages).then_some(())
        });
        outages += 1;
        postgres.server.start_again();
        // And takes the lease again by itself once the database is back (before the
        // next stop, or it would never see one): the first taking was at its start.
        wait_for("the broker to act again", LONG, || {
            let taken = cluster
                .broker_log()
                .matches("took the leader's lease")
                .count() as u64;
            (taken == outages + 1).then_some(())
        });
    });
    assert_eq!(outages, env_number("JOBCAST_CRASH_ROUNDS", 5));
}

/// An enqueue storm from a client that sends again what is not answered, while
/// `disrupt` strikes at moments a seeded generator picks; then every request made one
/// run, and every run executed once.
fn storm(cluster: &mut Cluster, disruption: &str, mut disrupt: impl FnMut(&mut Cluster)) {
    let ledger = cluster.path("ledger");
    cluster.apply_jobs(&format!(
        "[jobs.storm]\noverlap = \"allow\"\nscript = \"\"\"#!/bin/sh\necho \"$JOBCAST_RUN_ID\" >> {}\n\"\"\"\n",
        ledger.display()
    ));
    cluster.start_worker("w1", &["--concurrency", "4"]);
    cluster.start_worker("w2", &["--concurrency", "4"]);
    let rounds = env_number("JOBCAST_CRASH_ROUNDS", 5);
    let minimum = rounds as usize * REQUESTS_PER_ROUND;

    // A client enqueues in bursts of 10 requests in flight (200 a second), each under its
    // own key, and
    // sends again with the same key every request whose answer did not come, until each
    // is answered. It keeps going until the last kill, so the moments the broker dies
    // find requests in flight.
    let router = cluster.router.clone();
    let storming = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let still_storming = storming.clone();
    // Set while a burst waits for its answers: the kills are timed to land then.
    let in_flight = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let burst_in_flight = in_flight.clone();
    let enqueuer = with_admin_client_on_a_thread(&router, move |client| async move {
        let deadline = Instant::now() + LONG;
        let (mut sent, mut sent_again) = (0, 0);
        while still_storming.load(std::sync::atomic::Ordering::Relaxed) || sent < minimum {
            let started = Instant::now();
            let burst: Vec<String> = (sent..sent + 10).map(|i| format!("storm-{i}")).collect();
            sent += burst.len();
            let mut waiting: Vec<&String> = burst.iter().collect();
            while !waiting.is_empty() {
                assert!(
                    Instant::now() < deadline,
                    "requests never answered: {waiting:?}"
                );
                burst_in_flight.store(true, std::sync::atomic::Ordering::Relaxed);
                let pending: Vec<_> = waiting
                    .iter()
                    .map(|key| {
                        client.submit(jobcast_protocol::AdminRequest::Enqueue {
                            job: "storm".into(),
                            key: Some(key.to_string()),
                            params: Default::default(),
                            priority: None,
                        })
                    })
                    .collect();
                let mut unanswered = Vec::new();
                for (key, reply) in waiting.iter().zip(pending) {
                    match reply.wait(Duration::from_secs(2)).await {
                        Ok(jobcast_protocol::Reply::Enqueued { .. }) => {}
                        // The store is away: nothing was done, ask again.
                        Ok(jobcast_protocol::Reply::Error {
                            code: jobcast_protocol::ErrorCode::Unavailable,
                            ..
                        }) => unanswered.push(*key),
                        // On PostgreSQL: a broker restarted after a kill stands by until
                        // its predecessor's lease runs out; nothing was done.
                        Ok(jobcast_protocol::Reply::NotLeader { .. }) => unanswered.push(*key),
                        Ok(other) => panic!("enqueue {key}: {other:?}"),
                        Err(_) => unanswered.push(*key),
                    }
                }
                burst_in_flight.store(false, std::sync::atomic::Ordering::Relaxed);
                sent_again += unanswered.len();
                if !unanswered.is_empty() {
                    // As a client should: not at once, and not in a tight loop while the
                    // broker answers "unavailable".
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                waiting = unanswered;
            }
            // Pacing: the storm is to last through the kills, not to exhaust the
            // workers (the runs all execute before the checks).
            tokio::time::sleep(Duration::from_millis(50).saturating_sub(started.elapsed())).await;
        }
        (sent, sent_again)
    });

    // Kill the broker at moments a small deterministic generator picks.
    let mut chaos = Chaos::from_env(0xc4a5);
    eprintln!("{rounds} rounds");
    for round in 0..rounds {
        let wait = chaos.next_pause(Duration::from_millis(100), Duration::from_millis(700));
        std::thread::sleep(wait);
        // Then the first moment a burst is in flight (they come every 50 ms).
        wait_for("a burst in flight", LONG, || {
            in_flight
                .load(std::sync::atomic::Ordering::Relaxed)
                .then_some(())
        });
        disrupt(cluster);
        eprintln!("round {round}: {disruption} after {wait:?}");
    }
    storming.store(false, std::sync::atomic::Ordering::Relaxed);
    let (requests, sent_again) = enqueuer.join().expect("the enqueuing thread");
    eprintln!("{requests} requests; sent again because their answer did not come: {sent_again}");
    // And jobcastctl, which asks again by itself, on a broker that dies as it asks.
    let key = "storm-ctl";
    let ctl = std::thread::spawn({
        let router = cluster.router.clone();
        move || {
            Command::new(bin("jobcastctl"))
                .args(["--broker", &router, "--timeout", "2s"])
                .args(["enqueue", "storm", "--key", key])
                .env("JOBCAST_ADMIN_SECRET", ADMIN_SECRET)
                .stdin(Stdio::null())
                .output()
                .expect("run jobcastctl")
        }
    });
    cluster.kill_broker();
    cluster.start_broker();
    let out = ctl.join().expect("the jobcastctl thread");
    if !out.status.success() {
        // It gave up while the broker was away: asking again with its key is safe.
        cluster.ctl_ok(&["enqueue", "storm", "--key", key]);
    }
    let requests = requests + 1;

    // Everything asked for has ended (the workers need a while for a long storm).
    let deadline = LONG + Duration::from_millis(requests as u64 * 20);
    wait_for("every run to end", deadline, || {
        let status = cluster.ctl_json(&["status"])?;
        let ended = status["total_runs"].as_u64()? >= requests as u64
            && status["active"].as_object()?.is_empty();
        ended.then_some(())
    });
    let runs = cluster.all_runs();
    let states: BTreeMap<String, usize> = runs.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r["state"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
        m
    });
    assert_eq!(
        runs.len(),
        requests,
        "one run per request, however often it was sent: {states:?}"
    );
    assert_eq!(
        states.get("succeeded"),
        Some(&requests),
        "every run succeeded (none lost): {states:?}"
    );

    // The ledger: each run executed once, and only runs the broker knows.
    let ids: BTreeSet<String> = runs
        .iter()
        .filter_map(|r| r["id"].as_str().map(str::to_string))
        .collect();
    let executed = std::fs::read_to_string(&ledger).expect("the ledger");
    let mut seen = BTreeSet::new();
    for line in executed.lines() {
        assert!(seen.insert(line.to_string()), "run {line} executed twice");
        assert!(ids.contains(line), "run {line} executed but not recorded");
    }
    assert_eq!(seen.len(), requests, "every run executed");
}
