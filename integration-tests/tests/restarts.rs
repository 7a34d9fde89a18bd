//! A broker stopped with SIGTERM over and over while requests flow and runs execute: each
//! stop ends in time with exit 0 and a clean store, no signal's interruption of a libzmq
//! call is fatal (SIGHUP lands just before each stop), and nothing acknowledged is lost.
//!
//! Short in the test suite (20 stops); `JOBCAST_RESTARTS=200` runs the full length.

use jobcast_integration_tests::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the broker gets to stop in: flush, journal and marker.
const STOP_WITHIN: Duration = Duration::from_secs(15);

#[test]
fn a_broker_stopped_hundreds_of_times_under_load_stops_cleanly_each_time() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs("[jobs.quick]\noverlap = \"allow\"\nscript = \"#!/bin/sh\\necho hi\\n\"\n");
    cluster.start_worker("w1", &["--concurrency", "4"]);
    let stops = env_number("JOBCAST_RESTARTS", 20);

    // Enqueues as fast as answers come, each under its own key, until told to stop; the
    // keys answered are what must exist at the end.
    let router = cluster.router.clone();
    let loading = Arc::new(AtomicBool::new(true));
    let answered = Arc::new(AtomicU64::new(0));
    let load = {
        let (loading, answered) = (loading.clone(), answered.clone());
        with_admin_client_on_a_thread(&router, move |client| async move {
            let mut keys = Vec::new();
            let mut next = 0;
            while loading.load(Ordering::Relaxed) {
                let key = format!("load-{next}");
                let request = jobcast_protocol::AdminRequest::Enqueue {
                    job: "quick".into(),
                    key: Some(key.clone()),
                    params: Default::default(),
                    priority: None,
                };
                match client.request(request, Duration::from_secs(2)).await {
                    Ok(jobcast_protocol::Reply::Enqueued { .. }) => {
                        keys.push(key);
                        next += 1;
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    // The broker is stopping or starting: ask again with the same key.
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            keys
        })
    };

    for stop in 1..=stops {
        // Requests flowing into this broker before it is told to stop.
        let before = answered.load(Ordering::Relaxed);
        wait_for("requests answered", Duration::from_secs(20), || {
            (answered.load(Ordering::Relaxed) >= before + 5).then_some(())
        });
        let pid = cluster.broker_pid();
        // SAFETY: kill(2) on the broker this test started.
        unsafe { libc::kill(pid, libc::SIGHUP) };
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let started = Instant::now();
        let status = poll_until(STOP_WITHIN, || {
            cluster
                .broker
                .as_mut()
                .and_then(|b| b.try_wait().ok().flatten())
        });
        let log = cluster.broker_log();
        let Some(status) = status else {
            panic!("stop {stop}: the broker did not exit within {STOP_WITHIN:?} of SIGTERM; log:\n{log}");
        };
        assert!(
            status.success(),
            "stop {stop}: exit {status} after {:?}; log:\n{log}",
            started.elapsed()
        );
        assert!(
            log.contains("store closed cleanly") && log.contains("broker stopped"),
            "stop {stop}: not a clean stop; log:\n{log}"
        );
        cluster.start_broker();
    }

    loading.store(false, Ordering::Relaxed);
    let keys = load.join().expect("the load thread");
    assert!(
        keys.len() as u64 >= 5 * stops,
        "only {} requests answered",
        keys.len()
    );
    // Every answered request is a stored run (the same key asked again is the same run).
    let runs = cluster.all_runs();
    assert!(
        runs.len() >= keys.len(),
        "{} runs stored for {} answered requests",
        runs.len(),
        keys.len()
    );
}
