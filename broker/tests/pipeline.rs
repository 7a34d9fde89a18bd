//! The loop does not wait on its store: with a store whose commits end only when the
//! test says so, a second batch is applied (its commit started) while the first still
//! commits, and no batch is answered before its own commit has ended, in order.

use jobcast_core::store::{HeldCommits, MemoryStore, Store};
use jobcast_core::Core;
use jobcast_protocol::{AdminRequest, Exec, JobSpec, Reply};
use std::time::{Duration, Instant};

const ADMIN_SECRET: &str = "pipeline-admin-secret";

/// Polls `ready` until it holds, or fails the test after 10 s.
async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        assert!(Instant::now() < deadline, "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn enqueue(key: &str) -> AdminRequest {
    AdminRequest::Enqueue {
        job: "a".into(),
        key: Some(key.into()),
        params: Default::default(),
        priority: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_applied_while_the_one_before_commits_and_answers_wait_for_their_own() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("broker.toml");
    std::fs::write(
        &file,
        format!(
            "data_dir = \"{}\"\n[keys]\nadmin = \"{ADMIN_SECRET}\"\n",
            dir.path().display()
        ),
    )
    .expect("write the config");
    let config = jobcast_broker::config::resolve(
        jobcast_broker::config::read_file(&file).expect("read the config"),
        jobcast_broker::config::Overrides {
            router: Some("tcp://127.0.0.1:0".into()),
            publish: Some("tcp://127.0.0.1:0".into()),
            http: Some("off".into()),
            ..Default::default()
        },
    )
    .expect("a config");

    let held = HeldCommits::default();
    let mut store = MemoryStore::default();
    store
        .put_job(&JobSpec::new(
            "a",
            "default",
            Exec::Command(vec!["true".into()]),
        ))
        .expect("a job");
    store.held_commits = Some(held.clone());
    let core = Core::new(
        store,
        config.core_config(),
        jobcast_broker::server::now_us(),
    )
    .expect("a core");

    let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let reloading = jobcast_broker::reload::Reloading {
        read: Box::new(|| anyhow::bail!("no reloads here")),
        hangups: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .expect("SIGHUP"),
    };
    let serving = tokio::spawn(async move {
        jobcast_broker::server::serve(
            core,
            |_| anyhow::bail!("the store does not fail here"),
            jobcast_broker::server::Setup {
                config: &config,
                side: &tokio::runtime::Handle::current(),
                reloading,
            },
            move |bound| {
                let _ = bound_tx.send(bound.router.clone());
                Ok(())
            },
            async {
                let _ = stopped.await;
            },
        )
        .await
    });
    let router = bound_rx.await.expect("the broker binds");
    let client = jobcast_client::Client::connect(jobcast_client::ClientConfig {
        endpoint: router,
        name: "admin".into(),
        secret: jobcast_protocol::Secret::new(ADMIN_SECRET),
        connect_timeout: Duration::from_secs(5),
        max_clock_skew: Duration::from_secs(30),
    })
    .await
    .expect("connect");

    // The loop also commits on its own when its timer wakes it (about once a second). A
    // wake between the two requests puts a commit between them, and the second batch
    // then waits behind two commits as it should: that attempt proves nothing and the
    // next one is made (rarely needed; five in a row would be a fault).
    let mut shown = false;
    for attempt in 0..5 {
        let stored = 2 * attempt;
        // Commits from before this attempt end; the first request's batch stores one
        // more run, the second's another.
        let (one, two) = (stored + 1, stored + 2);
        held.release_while(|_| true);
        let first = tokio::spawn(
            client
                .submit(enqueue(&format!("first-{attempt}")))
                .wait(Duration::from_secs(20)),
        );
        until("the first batch's commit to start", || {
            held.release_while(|runs| runs < one);
            held.waiting().contains(&one)
        })
        .await;
        let second = tokio::spawn(
            client
                .submit(enqueue(&format!("second-{attempt}")))
                .wait(Duration::from_secs(20)),
        );
        // The second batch is applied and handed to the store while the first's commit
        // has not ended: the loop did not wait for it.
        until("the second batch's commit to start", || {
            let waiting = held.waiting();
            waiting.contains(&two) || waiting.iter().filter(|&&runs| runs == one).count() > 1
        })
        .await;
        if !held.waiting().contains(&two) {
            eprintln!("attempt {attempt}: a timer's commit came between the two batches");
            held.release_while(|_| true);
            until("both answers after releasing everything", || {
                held.release_while(|_| true);
                first.is_finished() && second.is_finished()
            })
            .await;
            continue;
        }
        assert_eq!(
            held.waiting().first(),
            Some(&one),
            "the first still commits"
        );
        assert!(
            !first.is_finished() && !second.is_finished(),
            "nobody hears before their batch's commit ends"
        );

        // The first commit ends: the first answer goes out, the second still waits for
        // its own.
        held.release_while(|runs| runs <= one);
        let answer = first.await.expect("the first request's task");
        assert!(matches!(answer, Ok(Reply::Enqueued { .. })), "{answer:?}");
        // (A moment for a wrongly released answer to arrive; the right one cannot.)
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !second.is_finished(),
            "the second answer waits for its commit"
        );

        held.release_while(|_| true);
        let answer = second.await.expect("the second request's task");
        assert!(matches!(answer, Ok(Reply::Enqueued { .. })), "{answer:?}");
        shown = true;
        break;
    }
    assert!(
        shown,
        "five attempts in a row had a timer's commit between the batches"
    );

    // Stopping answers what is in flight first; nothing is left waiting.
    let _ = stop.send(());
    let stopping = tokio::spawn(async move {
        loop {
            held.release_while(|_| true);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    tokio::time::timeout(Duration::from_secs(10), serving)
        .await
        .expect("the broker stops")
        .expect("the broker's task")
        .expect("a clean stop");
    stopping.abort();
}
