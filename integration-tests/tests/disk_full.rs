//! A full disk under the broker's data directory, on a small tmpfs: the broker refuses new
//! work with a clear error, keeps answering reads, and recovers by itself once space is
//! freed; when a write fails anyway, nothing it acknowledged is lost.
//!
//! Mounting a tmpfs needs root (as in CI); elsewhere these tests say so and pass only
//! when `CI` is unset.

use jobcast_integration_tests::*;
use jobcast_protocol::{AdminRequest, ErrorCode, Reply};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
const LONG: Duration = Duration::from_secs(60);

/// A tmpfs of a given size, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// `None` when this machine does not let the test mount one (not root, outside CI).
    fn mount(path: &Path, bytes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(path).expect("mount point");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(path)
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Tmpfs {
                path: path.to_path_buf(),
            }),
            other => {
                let why = match other {
                    Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI must be able to mount a tmpfs (run as root): {why}"
                );
                say_skipped(&format!("cannot mount a tmpfs here ({why})"));
                None
            }
        }
    }

    fn free_bytes(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.path)
            .output()
            .expect("df");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .expect("df output")
    }

    /// Writes a file that leaves about `leave` bytes free (0: fills the disk).
    fn fill_leaving(&self, leave: u64) -> PathBuf {
        let path = self.path.join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let mut left = self.free_bytes().saturating_sub(leave);
        let chunk = vec![0x5a; 64 * 1024];
        while left > 0 {
            let n = (left as usize).min(chunk.len());
            if file.write_all(&chunk[..n]).is_err() {
                break; // full
            }
            left -= n as u64;
        }
        let _ = file.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A tmpfs mount point outside the cluster's directory (which is removed while the
/// mount may still be busy).
fn mount_point(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("jobcast-{name}-"))
        .tempdir()
        .expect("temp dir")
}

/// A cluster whose broker keeps its store on a tmpfs of `bytes`, with `settings` in its
/// config, the job `echo` applied and worker w1 started with `worker_args`; `None` where
/// no tmpfs can be mounted. Fields drop in order: the processes, then the mount, then
/// its directory.
struct OnTmpfs {
    cluster: Cluster,
    disk: Tmpfs,
    _dir: tempfile::TempDir,
}

fn cluster_on_tmpfs(
    name: &str,
    bytes: u64,
    settings: &str,
    worker_args: &[&str],
) -> Option<OnTmpfs> {
    let dir = mount_point(name);
    let disk = Tmpfs::mount(dir.path(), bytes)?;
    let data = disk.path.join("data").to_string_lossy().into_owned();
    let mut cluster = Cluster::start_configured(1, &["--data-dir", &data], &[], settings);
    cluster.apply_jobs("[jobs.echo]\noverlap = \"allow\"\ncommand = \"echo hi\"\n");
    cluster.start_worker("w1", worker_args);
    Some(OnTmpfs {
        cluster,
        disk,
        _dir: dir,
    })
}

#[test]
fn under_the_reserve_new_work_is_refused_reads_go_on_and_space_coming_back_resumes_work() {
    let settings = format!("min_free_bytes = {}", 8 * MIB);
    let Some(mut t) = cluster_on_tmpfs("disk-low", 32 * MIB, &settings, &[]) else {
        return;
    };
    let before = t.cluster.enqueue("echo");
    t.cluster.wait_state(&before, "succeeded", LONG);

    let filler = t.disk.fill_leaving(4 * MIB);
    let refusal = wait_for("enqueues to be refused", LONG, || {
        let out = t.cluster.ctl(&["enqueue", "echo"]);
        (!out.status.success()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
    });
    assert!(
        refusal.contains("under its reserve") && refusal.contains("min_free_bytes"),
        "{refusal}"
    );
    // The API says the same, as 503.
    let (status, body) = t
        .cluster
        .api("POST", "/api/v1/jobs/echo/enqueue", Some(OPERATOR_TOKEN));
    assert_eq!(status, 503, "{body}");
    // Reads go on: runs, the run itself, its log, the status with a standing alert.
    assert_eq!(t.cluster.run(&before).expect("run")["state"], "succeeded");
    assert_eq!(String::from_utf8_lossy(&t.cluster.log(&before)), "hi\n");
    let (status, body) = t.cluster.api("GET", "/api/v1/runs", Some(VIEWER_TOKEN));
    assert_eq!(status, 200, "{body}");
    wait_for("a disk_low alert", LONG, || {
        let status = t.cluster.ctl_json(&["status"])?;
        let alerts = status["alerts"].as_array()?.clone();
        alerts.iter().any(|a| a["kind"] == "disk_low").then_some(())
    });
    assert!(t.cluster.broker_log().contains("under its reserve"));

    std::fs::remove_file(filler).expect("free the space");
    let after = wait_for("enqueues to be taken again", LONG, || {
        t.cluster.ctl_json(&["enqueue", "echo"])
    });
    let after = after["id"].as_str().expect("run id").to_string();
    t.cluster.wait_state(&after, "succeeded", LONG);
    assert!(t
        .cluster
        .broker_log()
        .contains("free space is back over the reserve"));
    assert!(t
        .cluster
        .broker
        .as_mut()
        .unwrap()
        .try_wait()
        .unwrap()
        .is_none());
}

#[test]
fn a_failed_write_is_survived_and_nothing_acknowledged_is_lost() {
    // No reserve: the broker writes until the disk refuses.
    let settings = "min_free_bytes = 0";
    let Some(mut t) = cluster_on_tmpfs("disk-full", 24 * MIB, settings, &["--concurrency", "4"])
    else {
        return;
    };
    let filler = t.disk.fill_leaving(MIB);

    let runtime = runtime();
    let acked: Vec<String> = runtime.block_on(async {
        let client = t.cluster.admin_client().await;
        let deadline = Instant::now() + LONG;
        let mut acked = Vec::new();
        // Enqueue until a write fails: then the broker answers "unavailable". The request
        // of the batch that failed gets no answer at all (as if the broker had died): it
        // is sent again under its key.
        let mut i = 0;
        loop {
            assert!(Instant::now() < deadline, "the disk never filled up");
            let reply = client
                .request(
                    AdminRequest::Enqueue {
                        job: "echo".into(),
                        key: Some(format!("fill-{i}")),
                        params: Default::default(),
                        priority: None,
                    },
                    Duration::from_secs(2),
                )
                .await;
            let Ok(reply) = reply else { continue };
            match reply {
                Reply::Enqueued { run } => {
                    acked.push(run.id);
                    i += 1;
                }
                Reply::Error {
                    code: ErrorCode::Unavailable,
                    message,
                } => {
                    assert!(message.contains("store failed"), "{message}");
                    break;
                }
                other => panic!("enqueue: {other:?}"),
            }
        }
        // While the store is down, every request is answered at once, reads too.
        let started = Instant::now();
        match client
            .request(AdminRequest::Status, Duration::from_secs(10))
            .await
        {
            Ok(Reply::Error {
                code: ErrorCode::Unavailable,
                ..
            }) => {}
            other => panic!("status during the outage: {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        acked
    });
    assert!(!acked.is_empty(), "the disk filled before any enqueue");
    eprintln!("{} runs acknowledged before a write failed", acked.len());
    assert!(
        t.cluster
            .broker
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "the broker exited:\n{}",
        t.cluster.broker_log()
    );

    std::fs::remove_file(filler).expect("free the space");
    // The broker reopens its store by itself; every acknowledged run is there and runs.
    wait_for("the broker to take requests again", LONG, || {
        t.cluster.ctl_json(&["status"])
    });
    wait_for("every acknowledged run to succeed", LONG, || {
        let runs = t.cluster.runs();
        let succeeded: std::collections::BTreeSet<&str> = runs
            .iter()
            .filter(|r| r["state"] == "succeeded")
            .filter_map(|r| r["id"].as_str())
            .collect();
        acked
            .iter()
            .all(|id| succeeded.contains(id.as_str()))
            .then_some(())
    });
    let log = t.cluster.broker_log();
    assert!(log.contains("store write failed"), "{log}");
    assert!(log.contains("store open again"), "{log}");
}
