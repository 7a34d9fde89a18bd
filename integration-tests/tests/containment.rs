//! Runs cannot escape: with a cgroup per run (the worker runs as root here, or under
//! systemd with `Delegate=yes`), a process that leaves the run's process tree by each
//! route (`setsid`, a double fork, a cleared environment) still ends with the run: on
//! `jobcastctl kill`, at the run's end, and after a worker SIGKILL and restart. The run's
//! CPU time is recorded; a memory limit is enforced where the memory controller is, and
//! refused with a reason where it is not.

use jobcast_integration_tests::*;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// Processes whose command line is `sleep <seconds>`: the escapers below, each with a
/// length of its own (their environment is cleared, so no tag finds them).
fn sleeping(seconds: &str) -> Vec<i32> {
    let wanted = format!("sleep\0{seconds}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| cmdline == wanted.as_bytes())
        })
        .collect()
}

/// Kills what a failed assertion may have left, so no test leaks a process.
struct Escapers(Vec<String>);

impl Drop for Escapers {
    fn drop(&mut self) {
        for seconds in &self.0 {
            for pid in sleeping(seconds) {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// The worker's own account of how it contains runs (`--check-config`).
fn containment(cluster: &Cluster) -> String {
    let out = std::process::Command::new(bin("jobcast-worker"))
        .args(["--id", "w1", "--broker", &cluster.router])
        .args(["--secret", &worker_secret("w1"), "--check-config"])
        // The same script directory as the cluster's w1: the same cgroup directory, and
        // none shared with another test's probe.
        .arg("--script-temp-path")
        .arg(cluster.path("w1-scripts"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether this machine lets the worker make cgroups; in CI (root) it must.
fn cgroups_here(cluster: &Cluster) -> bool {
    let said = containment(cluster);
    let cgroups = said.contains("cgroup v2 per run");
    if !cgroups {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root with cgroup v2 mounted: {said}"
        );
        say_skipped(&format!("no cgroups for the worker here: {said}"));
    }
    cgroups
}

/// A script that leaves its process tree by every route, then waits.
fn escaping_script(tag: &str) -> (String, Vec<String>) {
    let lengths: Vec<String> = (1..=4).map(|n| format!("29{tag}.{n}")).collect();
    let script = format!(
        "#!/bin/sh\n\
         env -i setsid sh -c 'sleep {0} & exit'\n\
         setsid sleep {1} &\n\
         (sleep {2} &)\n\
         env -u JOBCAST_WORKER_HOME -u JOBCAST_RUN_ID nohup sleep {3} >/dev/null 2>&1 &\n\
         echo escaped\n\
         sleep 300\n",
        lengths[0], lengths[1], lengths[2], lengths[3]
    );
    (script, lengths)
}

fn all_started(lengths: &[String]) -> Option<()> {
    lengths
        .iter()
        .all(|s| !sleeping(s).is_empty())
        .then_some(())
}

fn none_left(lengths: &[String]) -> Option<()> {
    lengths.iter().all(|s| sleeping(s).is_empty()).then_some(())
}

#[test]
fn processes_that_leave_the_tree_end_with_a_killed_run_and_after_a_worker_restart() {
    let mut cluster = Cluster::start(1);
    if !cgroups_here(&cluster) {
        return;
    }
    let tag = format!("{:05}", std::process::id() % 100_000);
    let (script, lengths) = escaping_script(&tag);
    let _cleanup = Escapers(lengths.clone());
    cluster.apply_jobs(&format!("[jobs.escape]\nscript = '''{script}'''\n"));
    let index = cluster.start_worker("w1", &[]);

    // Killed on request: every escaper ends.
    let run = cluster.enqueue("escape");
    cluster.wait_state(&run, "running", LONG);
    wait_for("every escaper to start", LONG, || all_started(&lengths));
    cluster.ctl_ok(&["kill", &run]);
    let killed = cluster.wait_state(&run, "killed", LONG);
    wait_for(
        "no escaper left after the kill",
        Duration::from_secs(10),
        || none_left(&lengths),
    );
    assert!(
        killed["usage"]["cpu_us"].as_u64().is_some(),
        "the run's CPU time is recorded: {killed}"
    );

    // The worker SIGKILLed mid-run and started again: the new process ends the old run's
    // cgroup before it takes work.
    let second = cluster.enqueue("escape");
    cluster.wait_state(&second, "running", LONG);
    wait_for("every escaper to start again", LONG, || {
        all_started(&lengths)
    });
    cluster.workers[index].signal(libc::SIGKILL);
    cluster.workers[index].wait_exit(LONG);
    cluster.spawn_worker("w1", &[]);
    wait_for(
        "no escaper left after the restart",
        Duration::from_secs(20),
        || none_left(&lengths),
    );
    cluster.wait_state(&second, "lost", LONG);
}

#[test]
fn leftovers_end_with_the_run_and_a_memory_limit_is_enforced_or_refused() {
    let mut cluster = Cluster::start(1);
    if !cgroups_here(&cluster) {
        return;
    }
    let said = containment(&cluster);
    let tag = format!("{:05}", std::process::id() % 100_000 + 1);
    let leftover = format!("29{tag}.9");
    let _cleanup = Escapers(vec![leftover.clone()]);
    cluster.apply_jobs(&format!(
        "[jobs.leaves]\nscript = '''#!/bin/sh\nenv -i setsid sh -c 'sleep {leftover} & exit'\necho bye\n'''\n\
         [jobs.hungry]\nmemory_max = \"32M\"\nscript = '''#!/bin/sh\nhead -c 200000000 /dev/zero | tail -c 1 >/dev/null\necho survived\n'''\n"
    ));
    cluster.start_worker("w1", &[]);
    // Exits at once, leaving a process behind: the process ends with the run.
    let run = cluster.enqueue("leaves");
    cluster.wait_state(&run, "succeeded", LONG);
    wait_for(
        "the leftover to end with its run",
        Duration::from_secs(10),
        || sleeping(&leftover).is_empty().then_some(()),
    );

    let hungry = cluster.enqueue("hungry");
    let ended = wait_for("the hungry run to end", LONG, || {
        cluster
            .run(&hungry)
            .filter(|r| !matches!(r["state"].as_str(), Some("queued" | "assigned" | "running")))
    });
    if said.contains("memory_max") {
        // `tail` holds the 200 MB it reads in memory: the 32 MB limit ends it.
        assert_eq!(ended["state"], "failed", "{ended}");
        assert!(ended["usage"]["peak_memory_bytes"]
            .as_u64()
            .is_some_and(|b| b <= 40 << 20));
    } else {
        assert_eq!(ended["state"], "failed", "{ended}");
        let reason = ended["outcome"]["failed_to_start"]["reason"]
            .as_str()
            .unwrap_or("");
        assert!(reason.contains("no memory controller"), "{ended}");
    }
}
