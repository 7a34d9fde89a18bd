//! DEPLOY's list of threads (which thread does what, for `top -H`) names every thread of a
//! running broker and worker, and the broker's dashboard runs on threads of its own.

use jobcast_integration_tests::{Cluster, VIEWER_TOKEN};
use std::path::Path;

/// The names of a process's threads as the kernel shows them (cut at 15 bytes).
fn thread_names(pid: i32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim_end().to_string())
        .collect();
    names.sort();
    names
}

/// The names in DEPLOY's paragraph on threads (each between backticks).
fn documented_names() -> Vec<String> {
    let deploy =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/DEPLOY.md"))
            .expect("docs/DEPLOY.md");
    let start = deploy
        .find("Which thread is busy")
        .expect("DEPLOY has its paragraph on threads");
    let paragraph = &deploy[start..];
    let paragraph = &paragraph[..paragraph.find("\n\n").unwrap_or(paragraph.len())];
    paragraph
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|name| !name.contains(' '))
        .map(str::to_string)
        .collect()
}

fn undocumented(names: &[String], documented: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|name| !documented.iter().any(|d| d.starts_with(name.as_str())))
        .cloned()
        .collect()
}

#[test]
fn every_thread_of_a_broker_and_a_worker_is_one_deploy_names() {
    let mut cluster = Cluster::start(1);
    cluster.start_worker("w1", &[]);
    // The dashboard's side has served a request, and the worker is online.
    let (status, body) = cluster.api("GET", "/api/v1/status", Some(VIEWER_TOKEN));
    assert_eq!(status, 200, "{body}");
    let documented = documented_names();

    let broker = thread_names(cluster.broker_pid());
    assert_eq!(
        undocumented(&broker, &documented),
        Vec::<String>::new(),
        "broker threads {broker:?}, DEPLOY names {documented:?}"
    );
    for expected in [
        "jobcast-broker",
        "jobcast-commit",
        "jobcast-http",
        "ZMQbg/IO/0",
    ] {
        assert!(
            broker.iter().any(|name| name == expected),
            "no {expected} among the broker's threads {broker:?}"
        );
    }
    // The loop waits on its sockets itself: no runtime worker stands between them.
    assert!(
        !broker.iter().any(|name| name.starts_with("tokio")),
        "{broker:?}"
    );

    let worker = thread_names(cluster.workers[0].pid());
    assert_eq!(
        undocumented(&worker, &documented),
        Vec::<String>::new(),
        "worker threads {worker:?}, DEPLOY names {documented:?}"
    );
    assert!(
        worker.iter().any(|name| name == "jobcast-worker"),
        "{worker:?}"
    );
}
