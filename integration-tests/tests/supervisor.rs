//! The shipped supervisord and daemon configs, run by Debian's supervisord: a broker and
//! two workers, with only paths and ports adapted. `supervisorctl stop` drains a worker
//! (its run finishes, it exits 0, STOPPED), `restart` brings it back, a SIGKILLed broker
//! is restarted and the workers find it again, and nothing is left running afterwards.
//!
//! `.ci/run` installs supervisor; elsewhere the test says it was skipped, except under
//! `CI=true`, where a missing supervisord is a failure.

use jobcast_integration_tests::{bin, poll_until, say_skipped, wait_for, ADMIN_SECRET};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn example(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replaces `from` in `text`, insisting that it is there: a shipped file that changed
/// shape must fail this test, not quietly run something else.
fn adapt(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in\n{text}");
    text.replace(from, to)
}

/// supervisord with its programs; on drop, everything it started is ended.
struct Supervisor {
    dir: tempfile::TempDir,
    child: Child,
    router: String,
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.ctl(&["shutdown"]);
        let stopped = wait_until(Duration::from_secs(60), || {
            self.child.try_wait().ok().flatten().is_some()
        });
        if !stopped {
            // SAFETY: kill(2) on the process group this test made for supervisord.
            unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
            let _ = self.child.wait();
        }
    }
}

/// Whether `done` holds within `timeout` (the caller explains a timeout, with logs).
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    poll_until(timeout, || done().then_some(())).is_some()
}

impl Supervisor {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ctl(&self, args: &[&str]) -> Output {
        Command::new("supervisorctl")
            .arg("-c")
            .arg(self.path("supervisord.conf"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run supervisorctl")
    }

    /// `supervisorctl status NAME`'s state word (RUNNING, STOPPED, …).
    fn state(&self, program: &str) -> String {
        let out = self.ctl(&["status", program]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_string()
    }

    fn pid(&self, program: &str) -> i32 {
        let out = self.ctl(&["pid", program]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    fn jobcastctl(&self, args: &[&str]) -> Output {
        Command::new(bin("jobcastctl"))
            .args(["--broker", &self.router, "--timeout", "5s", "--json"])
            .args(args)
            .env("JOBCAST_ADMIN_SECRET", ADMIN_SECRET)
            .stdin(Stdio::null())
            .output()
            .expect("run jobcastctl")
    }

    fn json(&self, args: &[&str]) -> Option<Value> {
        let out = self.jobcastctl(args);
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    fn status(&self) -> Option<Value> {
        self.json(&["status"])
    }

    fn online(&self, worker: &str) -> bool {
        self.status()
            .and_then(|s| {
                s["workers"]
                    .as_array()?
                    .iter()
                    .find(|w| w["id"] == worker)
                    .map(|w| w["online"] == true)
            })
            .unwrap_or(false)
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    fn logs(&self) -> String {
        [
            "supervisord.log",
            "broker.log",
            "worker-1.log",
            "worker-2.log",
        ]
        .iter()
        .map(|name| format!("--- {name}\n{}", self.log(name)))
        .collect()
    }
}

/// The shipped files, adapted to a temporary directory, this build and free ports.
fn start() -> Option<Supervisor> {
    if Command::new("supervisord")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "supervisord is missing: .ci/run installs Debian's supervisor"
        );
        say_skipped("supervisord is not installed (apt-get install supervisor)");
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("jobcast-supervisor-")
        .tempdir()
        .expect("temp dir");
    let at = |name: &str| dir.path().join(name).display().to_string();
    let (router, publish, http) = (free_port(), free_port(), free_port());
    let router_endpoint = format!("tcp://127.0.0.1:{router}");
    let publish_endpoint = format!("tcp://127.0.0.1:{publish}");

    let mut broker = example("broker.toml");
    broker = adapt(
        &broker,
        "data_dir = \".jobcast/broker\"",
        &format!("data_dir = \"{}\"", at("data")),
    );
    broker = adapt(&broker, "tcp://127.0.0.1:5555", &router_endpoint);
    broker = adapt(&broker, "tcp://127.0.0.1:5556", &publish_endpoint);
    broker = adapt(&broker, "127.0.0.1:5000", &format!("127.0.0.1:{http}"));
    broker = adapt(&broker, "quickstart-admin-secret-change-me", ADMIN_SECRET);
    // A killed broker's workers are waited for this long: keep the test short.
    broker = adapt(
        &broker,
        "worker_timeout = \"10s\"",
        "worker_timeout = \"5s\"",
    );
    std::fs::write(dir.path().join("broker.toml"), broker).expect("write broker.toml");
    for n in [1, 2] {
        let mut worker = example(&format!("worker-{n}.toml"));
        worker = adapt(&worker, "tcp://127.0.0.1:5555", &router_endpoint);
        worker = adapt(&worker, "tcp://127.0.0.1:5556", &publish_endpoint);
        worker = adapt(
            &worker,
            &format!(".jobcast/w{n}-scripts"),
            &at(&format!("w{n}-scripts")),
        );
        worker = adapt(
            &worker,
            "reconnect_after_inactivity = \"10s\"",
            "reconnect_after_inactivity = \"3s\"",
        );
        std::fs::write(dir.path().join(format!("worker-{n}.toml")), worker)
            .expect("write worker config");
    }

    // The shipped programs, with this build's binaries and the temporary files; run as
    // whoever runs the test. The worker's program appears once per worker.
    let shipped = example("supervisord.conf");
    let (broker_part, worker_part) = shipped
        .split_once("[program:jobcast-worker]")
        .expect("the shipped config has a worker program");
    let without_user = |text: &str| adapt(text, "user=jobcast\n", "");
    let broker_part = without_user(broker_part);
    let broker_part = adapt(
        &broker_part,
        "/usr/local/bin/jobcast-broker",
        &bin("jobcast-broker").display().to_string(),
    );
    let broker_part = adapt(&broker_part, "/etc/jobcast/broker.toml", &at("broker.toml"));
    let broker_part = adapt(
        &broker_part,
        "/var/log/jobcast/broker.log",
        &at("broker.log"),
    );
    let mut programs = broker_part;
    for n in [1, 2] {
        let part = without_user(worker_part);
        let part = adapt(
            &part,
            "/usr/local/bin/jobcast-worker",
            &bin("jobcast-worker").display().to_string(),
        );
        let part = adapt(
            &part,
            "/etc/jobcast/worker.toml",
            &at(&format!("worker-{n}.toml")),
        );
        let part = adapt(
            &part,
            "/var/log/jobcast/worker.log",
            &at(&format!("worker-{n}.log")),
        );
        programs.push_str(&format!("[program:jobcast-worker-{n}]{part}\n"));
    }
    let supervisord = format!(
        "[unix_http_server]\nfile={sock}\n\n\
         [supervisord]\nlogfile={log}\npidfile={pid}\nchildlogdir={dir}\n\n\
         [rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n\
         [supervisorctl]\nserverurl=unix://{sock}\n\n{programs}",
        sock = at("supervisor.sock"),
        log = at("supervisord.log"),
        pid = at("supervisord.pid"),
        dir = dir.path().display(),
    );
    std::fs::write(dir.path().join("supervisord.conf"), supervisord)
        .expect("write supervisord.conf");

    let child = {
        use std::os::unix::process::CommandExt;
        Command::new("supervisord")
            .arg("--nodaemon")
            .arg("-c")
            .arg(dir.path().join("supervisord.conf"))
            .current_dir(dir.path())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start supervisord")
    };
    Some(Supervisor {
        dir,
        child,
        router: router_endpoint,
    })
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

#[test]
fn supervisord_runs_the_shipped_configs_drains_restarts_and_leaves_nothing_behind() {
    let Some(sv) = start() else { return };
    let programs = ["jobcast-broker", "jobcast-worker-1", "jobcast-worker-2"];
    let everything_up =
        || programs.iter().all(|p| sv.state(p) == "RUNNING") && sv.online("w1") && sv.online("w2");
    assert!(
        wait_until(Duration::from_secs(60), everything_up),
        "not all up:\n{}",
        sv.logs()
    );

    // A run in progress on w1 when supervisord stops it: the worker drains, the run
    // succeeds, the worker exits 0 and shows STOPPED.
    let jobs = sv.path("jobs.toml");
    std::fs::write(
        &jobs,
        "[jobs.slow]\nscript = \"#!/bin/sh\\nsleep 2\\necho done\\n\"\n",
    )
    .expect("write jobs");
    assert!(sv
        .jobcastctl(&["apply", &jobs.display().to_string()])
        .status
        .success());
    let running_on_w1 = wait_for("a run on w1", Duration::from_secs(60), || {
        let run = sv.json(&["enqueue", "slow"])?;
        let id = run["id"].as_str()?.to_string();
        let started = wait_until(Duration::from_secs(20), || {
            sv.json(&["runs", "--job", "slow"])
                .and_then(|runs| {
                    runs.as_array()?
                        .iter()
                        .find(|r| r["id"] == id.as_str())
                        .map(|r| r["state"] == "running")
                })
                .unwrap_or(false)
        });
        assert!(started, "run {id} never started:\n{}", sv.logs());
        let runs = sv.json(&["runs", "--job", "slow"])?;
        let worker = runs.as_array()?.iter().find(|r| r["id"] == id.as_str())?["worker"]
            .as_str()?
            .to_string();
        (worker == "w1").then_some(id)
    });
    let stop = sv.ctl(&["stop", "jobcast-worker-1"]);
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stdout)
    );
    assert_eq!(sv.state("jobcast-worker-1"), "STOPPED");
    let run = sv.json(&["runs", "--job", "slow"]).expect("runs");
    let run = run
        .as_array()
        .and_then(|runs| runs.iter().find(|r| r["id"] == running_on_w1.as_str()))
        .expect("the run")
        .clone();
    assert_eq!(run["state"], "succeeded", "{run}\n{}", sv.logs());
    let log = sv.log("supervisord.log");
    assert!(
        log.contains("stopped: jobcast-worker-1 (exit status 0)"),
        "{log}"
    );
    assert!(!sv.online("w1"), "a drained worker says it leaves");

    // restart brings it back.
    let start = sv.ctl(&["start", "jobcast-worker-1"]);
    assert!(
        start.status.success(),
        "{}",
        String::from_utf8_lossy(&start.stdout)
    );
    assert!(
        wait_until(Duration::from_secs(30), || sv.online("w1")),
        "w1 not back:\n{}",
        sv.logs()
    );

    // A SIGKILLed broker is restarted by supervisord, and both workers find it again.
    let broker = sv.pid("jobcast-broker");
    let boot = sv.status().expect("status")["boot_id"].clone();
    assert!(alive(broker));
    // SAFETY: kill(2) on the broker supervisord started for this test.
    unsafe { libc::kill(broker, libc::SIGKILL) };
    assert!(
        wait_until(Duration::from_secs(60), || {
            let now = sv.pid("jobcast-broker");
            now != 0 && now != broker && sv.state("jobcast-broker") == "RUNNING"
        }),
        "broker not restarted:\n{}",
        sv.logs()
    );
    assert!(
        wait_until(Duration::from_secs(60), || {
            sv.status().is_some_and(|s| s["boot_id"] != boot) && sv.online("w1") && sv.online("w2")
        }),
        "workers did not reconnect:\n{}",
        sv.logs()
    );
    let run = sv
        .json(&["enqueue", "slow"])
        .expect("enqueue after the restart");
    let id = run["id"].as_str().expect("id").to_string();
    let out = sv.jobcastctl(&["wait", &id]);
    assert_eq!(out.status.code(), Some(0), "{}", sv.logs());

    // w2's key removed by a reload: the worker exits 3, which the shipped config expects,
    // and supervisord leaves it EXITED rather than restarting it for ever.
    let broker_toml = sv.path("broker.toml");
    let text = std::fs::read_to_string(&broker_toml).expect("read broker.toml");
    let without_w2: String = text
        .lines()
        .filter(|l| !l.starts_with("w2 = "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&broker_toml, without_w2).expect("write broker.toml");
    assert!(sv.jobcastctl(&["reload"]).status.success(), "{}", sv.logs());
    assert!(
        wait_until(Duration::from_secs(30), || sv
            .log("supervisord.log")
            .contains("exited: jobcast-worker-2 (exit status 3; expected)")),
        "worker 2 did not exit 3:\n{}",
        sv.logs()
    );
    assert_eq!(sv.state("jobcast-worker-2"), "EXITED", "{}", sv.logs());
    let programs = ["jobcast-broker", "jobcast-worker-1"];

    // Shutting supervisord down stops everything: no daemon is left.
    let pids: Vec<i32> = programs.iter().map(|p| sv.pid(p)).collect();
    assert!(pids.iter().all(|&pid| alive(pid)), "{pids:?}");
    let mut sv = sv;
    let _ = sv.ctl(&["shutdown"]);
    assert!(
        wait_until(Duration::from_secs(60), || sv
            .child
            .try_wait()
            .ok()
            .flatten()
            .is_some()),
        "supervisord did not stop:\n{}",
        sv.logs()
    );
    for pid in pids {
        assert!(!alive(pid), "pid {pid} is still running:\n{}", sv.logs());
    }
    let log = sv.log("supervisord.log");
    for program in programs {
        assert!(
            log.contains(&format!("stopped: {program} (exit status 0)")),
            "{program} did not stop cleanly:\n{}",
            sv.logs()
        );
    }
}
