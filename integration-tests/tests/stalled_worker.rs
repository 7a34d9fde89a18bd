//! A worker stopped with SIGSTOP while runs keep flowing and the broker publishes over
//! 200 events a second (its heartbeat every 4 ms, plus a wake-up per enqueue): the
//! broker's memory stays bounded, the stalled worker is marked offline, and the other
//! workers keep running. The stall lasts `JOBCAST_STALL_SECS` seconds (default 120; CI
//! runs 300).

use jobcast_client::{credentials, Client};
use jobcast_integration_tests::*;
use jobcast_protocol::{AdminRequest, Reply, Secret};
use jobcast_transport::{Limits, Received};
use std::time::{Duration, Instant};

fn stall() -> Duration {
    let secs = std::env::var("JOBCAST_STALL_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_worker_leaves_broker_memory_bounded_and_others_running() {
    let mut cluster = Cluster::start_with(3, &["--heartbeat-interval", "3ms"]);
    cluster.apply_jobs("[jobs.tick]\ncommand = [\"echo\", \"tick\"]\n");
    let client = cluster.admin_client().await;
    let enqueue = |client: Client| async move {
        match client
            .request(
                AdminRequest::Enqueue {
                    job: "tick".into(),
                    key: None,
                    params: Default::default(),
                    priority: None,
                },
                Duration::from_secs(5),
            )
            .await
        {
            Ok(Reply::Enqueued { run }) => run.id,
            other => panic!("enqueue: {other:?}"),
        }
    };
    tokio::task::block_in_place(|| {
        for id in ["w1", "w2", "w3"] {
            cluster.start_worker(id, &["--concurrency", "2"]);
        }
    });
    // Warm up so that the baseline includes steady-state allocations.
    for _ in 0..100 {
        enqueue(client.clone()).await;
    }
    let broker = cluster.broker_pid();
    tokio::task::block_in_place(|| {
        wait_for("warm-up runs to finish", Duration::from_secs(60), || {
            let status = cluster.ctl_json(&["status"])?;
            status["active"].as_object()?.is_empty().then_some(())
        })
    });
    let baseline = rss_bytes(broker);

    // What the stalled worker's subscription receives, counted on a subscription of its
    // own: the broker's heartbeats alone are about 330 a second.
    let events = jobcast_transport::subscriber(
        &cluster.publish,
        &["all/".to_string()],
        &Limits::default(),
        &credentials("w1", &Secret::new(worker_secret("w1"))),
    )
    .expect("subscribe");
    // Count from the first event: a subscription takes a moment to become live.
    let first = tokio::time::timeout(Duration::from_secs(10), events.recv(2)).await;
    assert!(
        matches!(first, Ok(Ok(Received::Parts(_)))),
        "no event on all/: {first:?}"
    );
    let counted_from = Instant::now();
    let mut count = 0u32;
    while counted_from.elapsed() < Duration::from_secs(2) {
        if let Ok(Ok(Received::Parts(_))) =
            tokio::time::timeout(Duration::from_millis(100), events.recv(2)).await
        {
            count += 1;
        }
    }
    let rate = f64::from(count) / counted_from.elapsed().as_secs_f64();
    assert!(rate >= 200.0, "only {rate:.0} events/s on all/");
    drop(events);

    cluster.workers[2].signal(libc::SIGSTOP);
    let stalled_at = Instant::now();
    let mut peak = baseline;
    let mut enqueued = Vec::new();
    // 20 runs per second for the whole stall.
    let mut pace = tokio::time::interval(Duration::from_millis(50));
    while stalled_at.elapsed() < stall() {
        pace.tick().await;
        enqueued.push(enqueue(client.clone()).await);
        peak = peak.max(rss_bytes(broker));
    }
    let end = rss_bytes(broker);
    eprintln!(
        "stall {:?} at {rate:.0} broker heartbeats/s: {} runs, broker RSS baseline {:.1} MB, peak {:.1} MB, end {:.1} MB",
        stall(),
        enqueued.len(),
        baseline as f64 / 1e6,
        peak as f64 / 1e6,
        end as f64 / 1e6
    );

    tokio::task::block_in_place(|| {
        let status = cluster.ctl_json(&["status"]).expect("status");
        let w3 = status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["id"] == "w3")
            .cloned()
            .unwrap();
        assert_eq!(w3["online"], false, "the stopped worker is offline");
        // The other workers kept running: everything enqueued during the stall ended,
        // except the grants w3 took just before it stopped and never started: those stay
        // assigned to it until it comes back to say so (they are not lost).
        let during = |runs: Vec<serde_json::Value>| -> Vec<serde_json::Value> {
            runs.into_iter()
                .filter(|r| enqueued.iter().any(|id| r["id"] == id.as_str()))
                .collect()
        };
        let held: Vec<String> = wait_for(
            "the stall's runs to finish, but w3's grants",
            Duration::from_secs(60),
            || {
                let open: Vec<_> = during(cluster.runs())
                    .into_iter()
                    .filter(|r| !matches!(r["state"].as_str(), Some("succeeded" | "lost")))
                    .collect();
                open.iter()
                    .all(|r| r["state"] == "assigned" && r["worker"] == "w3")
                    .then(|| {
                        open.iter()
                            .map(|r| r["id"].as_str().unwrap().to_string())
                            .collect()
                    })
            },
        );
        let runs = during(cluster.runs());
        assert_eq!(runs.len(), enqueued.len());
        let lost: Vec<_> = runs.iter().filter(|r| r["state"] == "lost").collect();
        assert!(
            lost.len() <= 2,
            "at most what w3's two slots were running was lost: {lost:?}"
        );
        assert!(lost.iter().all(|r| r["worker"] == "w3"));

        // Bounded: a few MB over the baseline, not growing with the stall.
        let growth = peak.saturating_sub(baseline);
        assert!(growth < 20 << 20, "broker grew by {} MB", growth >> 20);

        // The worker comes back when continued; the grants it never started run, once.
        cluster.workers[2].signal(libc::SIGCONT);
        cluster.wait_online("w3");
        for run in &held {
            cluster.wait_state(run, "succeeded", Duration::from_secs(60));
        }
        eprintln!(
            "{} grants held for the stopped worker, all ran after it came back",
            held.len()
        );
    });
}
