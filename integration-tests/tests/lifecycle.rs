//! The run lifecycle end to end, with the real broker, workers and jobcastctl.

use jobcast_integration_tests::*;
use std::collections::BTreeSet;
use std::time::Duration;

const LONG: Duration = Duration::from_secs(60);

/// The states a run went through, in order, from its record's history.
fn history_states(record: &serde_json::Value) -> Vec<&str> {
    record["history"]
        .as_array()
        .expect("a history")
        .iter()
        .filter_map(|step| step["state"].as_str())
        .collect()
}

#[test]
fn a_script_runs_and_its_output_reaches_jobcastctl_logs() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs(
        r##"
[jobs.hello]
script = """#!/bin/sh
echo "hello from $JOBCAST_WORKER job=$JOBCAST_JOB attempt=$JOBCAST_ATTEMPT"
echo "to stderr" >&2
"""
"##,
    );
    cluster.start_worker("w1", &[]);
    let run = cluster.enqueue("hello");
    let record = cluster.wait_state(&run, "succeeded", LONG);
    assert_eq!(record["worker"], "w1");
    let log = String::from_utf8(cluster.log(&run[..8])).unwrap();
    assert!(log.contains("hello from w1 job=hello attempt=1"), "{log}");
    assert!(log.contains("to stderr"), "{log}");
    // the script file is run through its interpreter, so it needs no x bit; it is kept
    // for the job's next runs, and readable by the worker's user only
    // (Beside them the worker keeps its start ledger, `started-runs`.)
    let scripts: Vec<_> = std::fs::read_dir(cluster.path("w1-scripts"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "script"))
        .collect();
    assert_eq!(scripts.len(), 1, "{scripts:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&scripts[0]).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// A run that ends within the worker's gathering of reports (docs/ARCHITECTURE.md,
/// "Reports gathered") sends its start inside its end: the record still has the pid, the
/// spawn time and the `running` step, as a run reported step by step has.
#[test]
fn a_run_that_ends_before_its_start_is_reported_still_records_its_start() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs(
        r##"
[jobs.quick]
script = """#!/bin/sh
exit 0
"""
"##,
    );
    cluster.start_worker("w1", &[]);
    for _ in 0..3 {
        let run = cluster.enqueue("quick");
        let record = cluster.wait_state(&run, "succeeded", LONG);
        assert!(
            record["pid"].as_u64().is_some_and(|pid| pid > 0),
            "{record}"
        );
        assert!(record["spawned_at_us"].as_u64().is_some(), "{record}");
        assert_eq!(
            history_states(&record),
            ["queued", "assigned", "running", "succeeded"],
            "{record}"
        );
    }
}

/// Runs of two jobs taking turns on one worker: after its first grant of each job, a
/// grant names the job's definition instead of carrying it (docs/PROTOCOL.md,
/// "Definitions named by id"). Each run executes its own job's script, and none is handed
/// back for a definition the worker lacked (it would show as a second `queued` step).
#[test]
fn runs_of_two_jobs_taking_turns_on_one_worker_each_run_their_own_script() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs(
        r##"
[jobs.first]
script = """#!/bin/sh
echo "this is first: $JOBCAST_JOB"
"""

[jobs.second]
script = """#!/bin/sh
echo "this is second: $JOBCAST_JOB"
"""
"##,
    );
    cluster.start_worker("w1", &[]);
    for job in ["first", "second", "first", "second", "first", "second"] {
        let run = cluster.enqueue(job);
        let record = cluster.wait_state(&run, "succeeded", LONG);
        let log = String::from_utf8(cluster.log(&run[..8])).unwrap();
        assert_eq!(log.trim(), format!("this is {job}: {job}"), "{record}");
        // Handed back, it would be queued and assigned again.
        assert_eq!(
            history_states(&record),
            ["queued", "assigned", "running", "succeeded"],
            "{record}"
        );
    }
}

#[test]
fn a_hundred_runs_on_three_workers_each_run_exactly_once() {
    let mut cluster = Cluster::start(3);
    let ledger = cluster.path("ledger");
    cluster.apply_jobs(&format!(
        r##"
[jobs.count]
script = """#!/bin/sh
echo "$JOBCAST_RUN_ID $JOBCAST_WORKER" >> {}
"""
"##,
        ledger.display()
    ));
    for id in ["w1", "w2", "w3"] {
        cluster.start_worker(id, &["--concurrency", "4"]);
    }
    let runs: BTreeSet<String> = (0..100).map(|_| cluster.enqueue("count")).collect();
    assert_eq!(runs.len(), 100);
    let ended = wait_for("all runs to end", Duration::from_secs(120), || {
        let runs = cluster.runs();
        let ended: Vec<_> = runs
            .into_iter()
            .filter(|r| {
                !["queued", "assigned", "running"].contains(&r["state"].as_str().unwrap_or(""))
            })
            .collect();
        (ended.len() == 100).then_some(ended)
    });
    for run in &ended {
        assert_eq!(run["state"], "succeeded", "{run}");
    }
    let text = std::fs::read_to_string(&ledger).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 100, "each run executed once");
    let executed: BTreeSet<String> = lines
        .iter()
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    assert_eq!(executed, runs);
    // the worker that executed each run is the one the broker recorded
    for line in lines {
        let (id, worker) = line.split_once(' ').unwrap();
        assert_eq!(cluster.run(id).unwrap()["worker"], worker);
    }
}

#[test]
fn kill_ends_the_whole_process_tree_including_setsid_children() {
    let mut cluster = Cluster::start(1);
    let pids = cluster.path("pids");
    cluster.apply_jobs(&format!(
        r##"
[jobs.tree]
script = """#!/bin/sh
sleep 1000 &
echo $! >> {pids}
setsid sh -c 'echo $$ >> {pids}; sleep 1000' &
sh -c 'sleep 1000 & echo $! >> {pids}; wait' &
echo started
wait
"""
"##,
        pids = pids.display()
    ));
    cluster.start_worker("w1", &[]);
    let run = cluster.enqueue("tree");
    let record = cluster.wait_state(&run, "running", LONG);
    let script_pid = record["pid"].as_i64().unwrap() as i32;
    let children: Vec<i32> = wait_for("the tree to start", LONG, || {
        let text = std::fs::read_to_string(&pids).ok()?;
        let pids: Vec<i32> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        (pids.len() == 3).then_some(pids)
    });
    assert!(is_alive(script_pid));
    for pid in &children {
        assert!(is_alive(*pid), "{pid} should be running");
    }
    let out = cluster.ctl_ok(&["kill", &run[..6]]);
    assert!(out.contains("killing"), "{out}");
    cluster.wait_state(&run, "killed", LONG);
    for pid in children.iter().chain([&script_pid]) {
        wait_for(
            &format!("process {pid} to be gone"),
            Duration::from_secs(10),
            || (!is_alive(*pid)).then_some(()),
        );
    }
    assert!(
        cluster.tagged_processes().is_empty(),
        "{:?}",
        cluster.tagged_processes()
    );
    // killing it again is fine and says so
    let out = cluster.ctl_ok(&["kill", &run]);
    assert!(out.contains("already finished (killed)"), "{out}");
}

#[test]
fn kill_cancels_a_queued_run_and_explains_bad_selectors() {
    let cluster = Cluster::start(1);
    cluster.apply_jobs("[jobs.idle]\ncommand = \"true\"\n");
    // no worker: runs stay queued
    let a = cluster.enqueue("idle");
    let b = cluster.enqueue("idle");
    let out = cluster.ctl(&["kill", "no-such-run"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such run"));
    let common: String = a
        .chars()
        .zip(b.chars())
        .take_while(|(x, y)| x == y)
        .map(|(x, _)| x)
        .collect();
    let ambiguous = if common.is_empty() {
        String::new()
    } else {
        common
    };
    if !ambiguous.is_empty() {
        let out = cluster.ctl(&["kill", &ambiguous]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&a) && err.contains(&b), "{err}");
    }
    let out = cluster.ctl_ok(&["kill", &a]);
    assert!(out.contains("cancelled"), "{out}");
    assert_eq!(cluster.run(&a).unwrap()["state"], "cancelled");
    assert_eq!(cluster.run(&b).unwrap()["state"], "queued");
}

#[test]
fn ping_lists_every_worker_with_its_version() {
    let mut cluster = Cluster::start(2);
    cluster.start_worker("w1", &["--concurrency", "3"]);
    cluster.start_worker("w2", &[]);
    let answers = cluster.ctl_json(&["ping"]).expect("ping");
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), 2);
    for answer in answers {
        assert!(answer["rtt_us"].as_u64().is_some(), "{answer}");
        assert_eq!(answer["info"]["version"], env!("CARGO_PKG_VERSION"));
    }
    let w1 = answers.iter().find(|a| a["worker"] == "w1").unwrap();
    assert_eq!(w1["info"]["concurrency"], 3);
    let table = cluster.ctl_ok(&["ping"]);
    assert!(
        table.contains("w1") && table.contains("w2") && table.contains(" ms"),
        "{table}"
    );

    // a worker that cannot answer is listed as such, with a non-zero exit
    cluster.workers[1].signal(libc::SIGSTOP);
    let out = cluster.ctl(&["ping", "--wait", "500ms"]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no answer"), "{text}");
    cluster.workers[1].signal(libc::SIGCONT);
}

#[test]
fn a_worker_restarted_mid_run_leaves_that_run_lost_not_rerun() {
    let mut cluster = Cluster::start(1);
    let starts = cluster.path("starts");
    cluster.apply_jobs(&format!(
        "[jobs.slow]\nscript = \"\"\"#!/bin/sh\necho $JOBCAST_RUN_ID >> {}\nsleep 30\n\"\"\"\n",
        starts.display()
    ));
    let index = cluster.start_worker("w1", &[]);
    let run = cluster.enqueue("slow");
    cluster.wait_state(&run, "running", LONG);
    cluster.workers[index].child.kill().unwrap();
    cluster.workers[index].child.wait().unwrap();
    cluster.start_worker("w1", &[]);
    let record = cluster.wait_state(&run, "lost", LONG);
    let cause = record["history"].as_array().unwrap().last().unwrap()["cause"].clone();
    assert!(
        cause.as_str().unwrap().contains("registered without it"),
        "{cause}"
    );
    // give the new worker a chance to (wrongly) pick it up again
    std::thread::sleep(Duration::from_millis(1500));
    let text = std::fs::read_to_string(&starts).unwrap();
    assert_eq!(text.lines().count(), 1, "the run started exactly once");
    assert_eq!(cluster.runs().len(), 1);
}

#[test]
fn the_broker_killed_and_restarted_keeps_every_job_and_run() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs(
        "[jobs.quick]\ncommand = [\"echo\", \"done\"]\n[jobs.other]\ncommand = \"true\"\n",
    );
    cluster.start_worker("w1", &[]);
    let finished: Vec<String> = (0..5).map(|_| cluster.enqueue("quick")).collect();
    for run in &finished {
        cluster.wait_state(run, "succeeded", LONG);
    }
    cluster.ctl_ok(&["drain", "w1"]);
    let code = cluster.workers[0].wait_exit(LONG);
    assert_eq!(code, Some(0));
    let queued = cluster.enqueue("other");
    let before = cluster.runs();
    // SIGKILL: no chance to flush anything more
    cluster.kill_broker();
    cluster.start_broker();
    let after = cluster.runs();
    assert_eq!(before.len(), after.len());
    for run in &before {
        let same = after
            .iter()
            .find(|r| r["id"] == run["id"])
            .expect("run kept");
        assert_eq!(same["state"], run["state"]);
        assert_eq!(same["history"], run["history"]);
    }
    assert_eq!(cluster.run(&queued).unwrap()["state"], "queued");
    let jobs = cluster.ctl_ok(&["--json", "jobs"]);
    let jobs: serde_json::Value = serde_json::from_str(&jobs).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 2);
    assert!(String::from_utf8_lossy(&cluster.log(&finished[0])).contains("done"));
}

#[test]
fn a_restarted_worker_ends_what_its_killed_predecessor_left_before_the_retry_starts() {
    // The process-tree path (the environment mark), as on hosts without cgroups; the
    // cgroup path has its own test (`containment.rs`).
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs(
        "[jobs.long]\nscript = \"\"\"#!/bin/sh\nsleep 300 &\nsetsid sleep 300 &\nsleep 300\n\"\"\"\nretries = 1\nretry_backoff = \"1s\"\n",
    );
    let index = cluster.start_worker("w1", &["--containment", "process-tree"]);
    let first = cluster.enqueue("long");
    cluster.wait_state(&first, "running", LONG);
    // sh and its three sleeps, one of them in a session of its own.
    let old = wait_for("the run's four processes", LONG, || {
        let found = cluster.tagged_processes();
        (found.len() >= 4).then_some(found)
    });
    cluster.workers[index].signal(libc::SIGKILL);
    cluster.workers[index].wait_exit(LONG);
    assert!(
        old.iter().all(|pid| is_alive(*pid)),
        "the run's processes outlive a SIGKILLed worker (what this test is about)"
    );
    // The worker comes back. It ends what is left before it registers, and only its
    // registration makes the first attempt lost and so creates the retry: once the first
    // attempt is lost, nothing of it may be left.
    cluster.spawn_worker("w1", &["--containment", "process-tree"]);
    cluster.wait_state(&first, "lost", LONG);
    let survivors: Vec<i32> = old.iter().copied().filter(|pid| is_alive(*pid)).collect();
    assert!(
        survivors.is_empty(),
        "old processes survive: {survivors:?}\n{}",
        cluster.worker_log("w1")
    );
    assert!(
        cluster
            .worker_log("w1")
            .contains("ended processes left by an earlier run"),
        "{}",
        cluster.worker_log("w1")
    );
    let retry = wait_for("the retry", LONG, || {
        cluster
            .runs()
            .into_iter()
            .find(|r| r["first_attempt"].as_str() == Some(first.as_str()))
    });
    assert_eq!(retry["attempt"], 2);
    let retry_id = retry["id"].as_str().unwrap().to_string();
    cluster.wait_state(&retry_id, "running", LONG);
    let now = wait_for("the retry's processes", LONG, || {
        let found = cluster.tagged_processes();
        (found.len() >= 4).then_some(found)
    });
    assert!(now.iter().all(|pid| !old.contains(pid)));
    cluster.ctl_ok(&["kill", &retry_id]);
    cluster.wait_state(&retry_id, "killed", LONG);
}

#[test]
fn sigterm_on_a_busy_worker_lets_its_runs_finish_and_exits_zero() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs("[jobs.work]\nscript = \"\"\"#!/bin/sh\nsleep 2\necho finished\n\"\"\"\n");
    let index = cluster.start_worker("w1", &["--concurrency", "2"]);
    let runs = [cluster.enqueue("work"), cluster.enqueue("work")];
    for run in &runs {
        cluster.wait_state(run, "running", LONG);
    }
    let queued_later = cluster.enqueue("work");
    cluster.workers[index].signal(libc::SIGTERM);
    let code = cluster.workers[index].wait_exit(LONG);
    assert_eq!(code, Some(0), "log:\n{}", cluster.worker_log("w1"));
    for run in &runs {
        assert_eq!(cluster.run(run).unwrap()["state"], "succeeded");
        assert!(String::from_utf8_lossy(&cluster.log(run)).contains("finished"));
    }
    // the draining worker took nothing new
    assert_eq!(cluster.run(&queued_later).unwrap()["state"], "queued");
}

#[test]
fn a_ten_megabyte_log_is_capped_with_head_and_tail_kept() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs(
        r##"
[jobs.flood]
script = '''#!/bin/sh
echo FIRST-LINE
i=0
while [ $i -lt 100 ]; do head -c 102400 /dev/zero | tr '\0' 'x'; echo; i=$((i+1)); done
echo LAST-LINE
'''
"##,
    );
    cluster.start_worker("w1", &["--max-log-bytes", "100000"]);
    let run = cluster.enqueue("flood");
    let record = cluster.wait_state(&run, "succeeded", LONG);
    assert!(record["log_bytes"].as_u64().unwrap() > 10_000_000);
    let log = cluster.log(&run);
    assert!(log.len() <= 100_000, "{}", log.len());
    let text = String::from_utf8_lossy(&log);
    assert!(text.starts_with("FIRST-LINE\n"));
    assert!(text.ends_with("LAST-LINE\n"));
    assert!(text.contains("bytes cut]"), "marker missing");
}

#[test]
fn jobcastctl_explains_an_unreachable_broker_and_a_wrong_key() {
    let cluster = Cluster::start(1);
    let out = std::process::Command::new(bin("jobcastctl"))
        .args(["--broker", "tcp://127.0.0.1:1", "--timeout", "1s", "status"])
        .env("JOBCAST_ADMIN_SECRET", ADMIN_SECRET)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the broker"));

    let out = std::process::Command::new(bin("jobcastctl"))
        .args(["--broker", &cluster.router, "status"])
        .env("JOBCAST_ADMIN_SECRET", "not-the-admin-secret")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refused the connection") && err.contains("wrong secret"),
        "{err}"
    );

    let out = cluster.ctl(&["enqueue", "no-such-job"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no job named"));

    let bad = cluster.path("bad.toml");
    std::fs::write(&bad, "[jobs.x]\nscript = \"no shebang\"\n").unwrap();
    let out = cluster.ctl(&["apply", &bad.to_string_lossy()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("#!"));
}

#[test]
fn a_broker_restarted_under_live_workers_gets_them_all_back() {
    let mut cluster = Cluster::start(3);
    cluster.apply_jobs("[jobs.quick]\ncommand = \"true\"\n");
    for id in ["w1", "w2", "w3"] {
        cluster.start_worker(id, &[]);
    }
    cluster.kill_broker();
    cluster.start_broker();
    let started = std::time::Instant::now();
    wait_for("every worker back", Duration::from_secs(15), || {
        let answers = cluster.ctl_json(&["ping", "--wait", "500ms"])?;
        (answers.as_array()?.len() == 3).then_some(())
    });
    eprintln!("workers back after {:?}", started.elapsed());
    // and they take work again
    let run = cluster.enqueue("quick");
    cluster.wait_state(&run, "succeeded", LONG);
}

#[test]
fn logs_follow_a_live_run_until_it_ends() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs(
        "[jobs.ticker]\nscript = \"\"\"#!/bin/sh\nfor i in 1 2 3 4 5; do echo tick-$i; sleep 0.3; done\n\"\"\"\n",
    );
    cluster.start_worker("w1", &[]);
    let run = cluster.enqueue("ticker");
    cluster.wait_state(&run, "running", LONG);
    // -f returns by itself once the run has ended, with every line
    let out = cluster.ctl_ok(&["logs", "-f", &run]);
    for i in 1..=5 {
        assert!(out.contains(&format!("tick-{i}\n")), "{out}");
    }
    assert_eq!(cluster.run(&run).unwrap()["state"], "succeeded");
}

#[test]
fn a_run_past_its_timeout_is_killed_and_recorded_as_timed_out() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs(
        "[jobs.stuck]\ntimeout = \"500ms\"\nscript = \"\"\"#!/bin/sh\nsleep 1000\n\"\"\"\n",
    );
    cluster.start_worker("w1", &[]);
    let run = cluster.enqueue("stuck");
    let record = cluster.wait_state(&run, "timed_out", LONG);
    let pid = record["pid"].as_i64().unwrap() as i32;
    assert!(!is_alive(pid));
    assert!(cluster.tagged_processes().is_empty());
}

#[test]
fn a_run_that_cannot_start_fails_with_the_reason() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs(
        "[jobs.nowhere]\nworkdir = \"/nonexistent/jobcast\"\ncommand = \"true\"\n[jobs.noprog]\ncommand = [\"/nonexistent/program\"]\n",
    );
    cluster.start_worker("w1", &[]);
    for (job, reason) in [
        (
            "nowhere",
            "working directory /nonexistent/jobcast does not exist",
        ),
        ("noprog", "cannot start /nonexistent/program"),
    ] {
        let run = cluster.enqueue(job);
        let record = cluster.wait_state(&run, "failed", LONG);
        let text = record["outcome"]["failed_to_start"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(text.contains(reason), "{record}");
        let table = cluster.ctl_ok(&["runs", "--job", job]);
        assert!(table.contains("could not start"), "{table}");
    }
}

#[test]
fn a_second_sigterm_kills_running_runs_at_once_and_still_reports_them() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs("[jobs.long]\nscript = \"\"\"#!/bin/sh\nsleep 1000\n\"\"\"\n");
    let index = cluster.start_worker("w1", &[]);
    let run = cluster.enqueue("long");
    cluster.wait_state(&run, "running", LONG);
    cluster.workers[index].signal(libc::SIGTERM);
    wait_for("the worker to drain", LONG, || {
        cluster.worker_log("w1").contains("draining").then_some(())
    });
    cluster.workers[index].signal(libc::SIGTERM);
    let code = cluster.workers[index].wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(0), "log:\n{}", cluster.worker_log("w1"));
    assert_eq!(cluster.run(&run).unwrap()["state"], "killed");
    assert!(cluster.tagged_processes().is_empty());
}

#[test]
fn runs_can_be_listed_by_state_and_job() {
    let mut cluster = Cluster::start(1);
    cluster.apply_jobs("[jobs.ok]\ncommand = \"true\"\n[jobs.bad]\ncommand = \"false\"\n");
    cluster.start_worker("w1", &[]);
    let ok = cluster.enqueue("ok");
    let bad = cluster.enqueue("bad");
    cluster.wait_state(&ok, "succeeded", LONG);
    cluster.wait_state(&bad, "failed", LONG);
    let failed = cluster.ctl_json(&["runs", "--state", "failed"]).unwrap();
    let ids: Vec<&str> = failed
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [bad.as_str()]);
    let by_job = cluster.ctl_json(&["runs", "--job", "ok"]).unwrap();
    assert_eq!(by_job.as_array().unwrap().len(), 1);
    let out = cluster.ctl(&["runs", "--state", "done"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown run state"));
}

#[test]
fn a_grant_a_killed_worker_never_started_runs_once_after_its_restart() {
    let mut cluster = Cluster::start(1);
    let ledger = cluster.path("ledger");
    cluster.apply_jobs(&format!(
        "[jobs.long]\nscript = \"\"\"#!/bin/sh\nsleep 300\n\"\"\"\n\
         [jobs.quick]\nscript = \"\"\"#!/bin/sh\necho $JOBCAST_RUN_ID >> {}\n\"\"\"\n",
        ledger.display()
    ));
    // One slot, busy with `long`; `quick` is granted to it ready (held, not started).
    let index = cluster.start_worker("w1", &["--concurrency", "1", "--prefetch", "1"]);
    let long = cluster.enqueue("long");
    cluster.wait_state(&long, "running", LONG);
    let quick = cluster.enqueue("quick");
    cluster.wait_state(&quick, "assigned", LONG);
    // Frozen at once (a ready run is handed back after a second), then killed.
    cluster.workers[index].signal(libc::SIGSTOP);
    cluster.workers[index].signal(libc::SIGKILL);
    cluster.workers[index].wait_exit(LONG);
    // Its successor proves from its start ledger that `quick` never started.
    cluster.spawn_worker("w1", &["--concurrency", "1", "--prefetch", "1"]);
    let done = cluster.wait_state(&quick, "succeeded", LONG);
    let causes: Vec<&str> = done["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["cause"].as_str())
        .collect();
    assert!(
        causes.iter().any(|c| c.contains("never started it")),
        "{causes:?}"
    );
    cluster.wait_state(&long, "lost", LONG);
    let executed = std::fs::read_to_string(&ledger).unwrap();
    assert_eq!(executed.lines().collect::<Vec<_>>(), [quick.as_str()]);
}
