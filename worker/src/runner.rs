//! Executes one run: start it, stream its output, enforce its timeout, kill it on
//! request, and report each step through the [`Reporter`].

use crate::cgroup::RunCgroup;
use crate::config::WorkerConfig;
use crate::process;
use crate::reporter::Reporter;
use crate::scripts::ScriptFiles;
use crate::start_error::StartError;
use crate::start_ledger::StartLedger;
use jobcast_protocol::logcap::LogSpool;
use jobcast_protocol::{Assignment, Outcome, RunFinished, RunUsage, WorkerRequest};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio::sync::watch;

/// Output is sent at least this often while a run is live.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Largest log chunk in one request.
const MAX_CHUNK: usize = 64 << 10;
/// Unacknowledged log bytes above which output stays in the (trimming) spool.
const MAX_LOG_BACKLOG: usize = 1 << 20;
/// After the run's first process exits, how long to keep reading output that its
/// background descendants may still write.
const AFTER_EXIT_READ: Duration = Duration::from_millis(200);

/// Runs `assignment` to the end, reporting its start and output, and returns its end
/// for the caller to report. `stop` turning true asks for a kill.
pub async fn execute(
    assignment: Assignment,
    config: Arc<WorkerConfig>,
    scripts: ScriptFiles,
    reporter: Reporter,
    mut stop: watch::Receiver<bool>,
    ledger: Option<Arc<std::sync::Mutex<StartLedger>>>,
) -> RunFinished {
    let run_id = assignment.run_id.clone();
    let started = Instant::now();
    let mut spool = LogSpool::new(config.max_log_bytes as usize);
    let (outcome, usage) = if *stop.borrow() {
        (Outcome::Killed, None)
    } else {
        run(
            &assignment,
            &config,
            &scripts,
            &reporter,
            &mut stop,
            &mut spool,
            ledger.as_deref(),
        )
        .await
    };
    send_output(&run_id, &mut spool, &reporter, usize::MAX);
    tracing::info!(run_id, job = %assignment.job.name, outcome = %outcome.describe(), "run finished");
    RunFinished {
        run_id,
        outcome,
        duration_ms: started.elapsed().as_millis() as u64,
        log_bytes: spool.total(),
        claim: 0,
        usage,
        started: None,
    }
}

fn send_output(run_id: &str, spool: &mut LogSpool, reporter: &Reporter, budget: usize) {
    let mut sent = 0;
    while sent < budget {
        let Some((offset, data)) = spool.take_chunk(MAX_CHUNK) else {
            break;
        };
        sent += data.len();
        reporter.push(WorkerRequest::LogChunk {
            run_id: run_id.to_string(),
            offset,
            data,
        });
    }
}

async fn run(
    assignment: &Assignment,
    config: &WorkerConfig,
    scripts: &ScriptFiles,
    reporter: &Reporter,
    stop: &mut watch::Receiver<bool>,
    spool: &mut LogSpool,
    ledger: Option<&std::sync::Mutex<StartLedger>>,
) -> (Outcome, Option<RunUsage>) {
    let worker_env =
        match crate::worker_env::fill(&assignment.job.worker_env, &config.worker_env, &config.id) {
            Ok(values) => values,
            Err(error) => return (failed_to_start(error), None),
        };
    let plan = match process::plan(assignment, scripts) {
        Ok(plan) => plan,
        Err(error) => return (failed_to_start(error), None),
    };
    let cgroup = match run_cgroup(assignment, config) {
        Ok(cgroup) => cgroup.map(Arc::new),
        Err(reason) => return (Outcome::FailedToStart { reason }, None),
    };
    let mark = process::WorkerMark {
        id: &config.id,
        home: &config.script_temp_path,
    };
    // Recorded before the process exists: a later worker process may then prove that a
    // grant its predecessor held never started (`start_ledger.rs`).
    if let Some(ledger) = ledger {
        let recorded = match ledger.lock() {
            Ok(mut ledger) => ledger.starting(&assignment.run_id),
            Err(_) => Err(std::io::Error::other("the start ledger's lock is poisoned")),
        };
        if let Err(e) = recorded {
            let reason = format!("cannot record the run's start in the worker's start ledger: {e}");
            if let Some(cgroup) = &cgroup {
                cgroup.remove();
            }
            return (Outcome::FailedToStart { reason }, None);
        }
    }
    let spawned = process::spawn(&plan, assignment, &mark, &worker_env, cgroup.as_deref());
    let outcome = match spawned {
        Ok(spawned) => {
            supervise(
                assignment,
                config,
                reporter,
                stop,
                spool,
                spawned,
                cgroup.clone(),
            )
            .await
        }
        Err(error) => failed_to_start(error),
    };
    // The script file is kept for the next run of the same script (see `scripts`).
    drop(plan);
    let usage = match cgroup {
        Some(cgroup) => Some(end_cgroup(cgroup).await),
        None => None,
    };
    (outcome, usage)
}

/// The run's cgroup, where the worker has them; `Err` when the job sets a limit this
/// worker cannot enforce, or the cgroup cannot be made.
fn run_cgroup(assignment: &Assignment, config: &WorkerConfig) -> Result<Option<RunCgroup>, String> {
    let job = &assignment.job;
    match config.containment.cgroups() {
        Some(cgroups) => cgroups
            .for_run(&assignment.run_id, job.memory_max, job.cpus_milli)
            .map(Some),
        None if job.memory_max.is_some() || job.cpus_milli.is_some() => Err(format!(
            "the job sets memory_max or cpus, but this worker has no cgroups to enforce them ({})",
            config.containment.describe()
        )),
        None => Ok(None),
    }
}

/// At a run's end, whatever it left running in its cgroup ends with it; what it used is
/// read and the cgroup given back or removed.
async fn end_cgroup(cgroup: Arc<RunCgroup>) -> RunUsage {
    if !cgroup.is_empty() {
        cgroup.kill();
        wait_empty(&cgroup).await;
    }
    let used = match Arc::try_unwrap(cgroup) {
        Ok(cgroup) => cgroup.end(),
        // A killer still holds it (it has been awaited, so this does not happen): what it
        // used is read, and the cgroup removed, not reused.
        Err(shared) => {
            let used = shared.usage();
            shared.remove();
            used
        }
    };
    RunUsage {
        cpu_us: used.cpu_us,
        peak_memory_bytes: used.peak_memory_bytes,
    }
}

/// Waits (a bounded time) until the cgroup has no process left.
async fn wait_empty(cgroup: &RunCgroup) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cgroup.is_empty() && tokio::time::Instant::now() < deadline {
        process::reap_orphans();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn failed_to_start(error: StartError) -> Outcome {
    Outcome::FailedToStart {
        reason: error.to_string(),
    }
}

async fn supervise(
    assignment: &Assignment,
    config: &WorkerConfig,
    reporter: &Reporter,
    stop: &mut watch::Receiver<bool>,
    spool: &mut LogSpool,
    (mut child, mut output): (process::RunProcess, tokio::net::unix::pipe::Receiver),
    cgroup: Option<Arc<RunCgroup>>,
) -> Outcome {
    let run_id = assignment.run_id.clone();
    let pid = child.id();
    tracing::info!(run_id, job = %assignment.job.name, pid, "run started");
    reporter.push(WorkerRequest::RunStarted {
        run_id: run_id.clone(),
        pid,
        spawned_at_us: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0),
    });
    let timeout = assignment
        .job
        .timeout_ms
        .map(|ms| tokio::time::Instant::now() + Duration::from_millis(ms));
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    // Read into its spare room: a short run that writes nothing never has it zeroed.
    let mut buffer: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut exit_status = None;
    let mut output_open = true;
    let mut read_until: Option<tokio::time::Instant> = None;
    let mut ended_by: Option<Outcome> = None;
    let mut killer: Option<tokio::task::JoinHandle<()>> = None;
    let mut stop_open = true;

    loop {
        if exit_status.is_some()
            && (!output_open || read_until.is_some_and(|t| tokio::time::Instant::now() >= t))
        {
            break;
        }
        tokio::select! {
            read = output.read_buf(&mut buffer), if output_open => match read {
                Ok(0) | Err(_) => output_open = false,
                Ok(_) => {
                    spool.push(&buffer);
                    buffer.clear();
                }
            },
            status = child.wait(), if exit_status.is_none() => {
                exit_status = Some(status);
                read_until = Some(tokio::time::Instant::now() + AFTER_EXIT_READ);
            }
            _ = flush.tick() => {
                let room = MAX_LOG_BACKLOG.saturating_sub(reporter.log_backlog());
                send_output(&run_id, spool, reporter, room);
            }
            changed = stop.changed(), if ended_by.is_none() && stop_open && exit_status.is_none() => {
                if changed.is_err() {
                    // The owner is gone; nobody can ask for a kill any more.
                    stop_open = false;
                } else if *stop.borrow() {
                    tracing::info!(run_id, pid, "killing run");
                    ended_by = Some(Outcome::Killed);
                    killer = Some(tokio::spawn(kill(pid, run_id.clone(), config.kill_grace, cgroup.clone())));
                }
            }
            _ = sleep_until(timeout), if ended_by.is_none() && timeout.is_some() && exit_status.is_none() => {
                tracing::warn!(run_id, pid, "run exceeded its timeout; killing it");
                ended_by = Some(Outcome::TimedOut);
                killer = Some(tokio::spawn(kill(pid, run_id.clone(), config.kill_grace, cgroup.clone())));
            }
        }
    }
    if let Some(killer) = killer {
        // The tree is gone (or SIGKILLed) before the run is reported as ended.
        let _ = killer.await;
    }
    process::forget_child(pid as i32);
    if let Some(outcome) = ended_by {
        return outcome;
    }
    match exit_status {
        Some(Ok(status)) => {
            use std::os::unix::process::ExitStatusExt;
            match (status.code(), status.signal()) {
                (Some(code), _) => Outcome::Exited { code },
                (None, Some(signal)) => Outcome::Signaled { signal },
                (None, None) => Outcome::Exited { code: -1 },
            }
        }
        Some(Err(e)) => Outcome::FailedToStart {
            reason: format!("cannot wait for the process: {e}"),
        },
        None => Outcome::Exited { code: -1 },
    }
}

/// SIGTERM to the run's tree, SIGKILL after the grace; then, with a cgroup, every process
/// still in it (one that left the tree by `setsid` and a cleared environment) is killed
/// too.
async fn kill(pid: u32, run_id: String, grace: Duration, cgroup: Option<Arc<RunCgroup>>) {
    if let Some(cgroup) = &cgroup {
        // The whole cgroup hears SIGTERM with the tree, so an escaped process too may
        // end cleanly within the grace.
        for pid in cgroup.pids() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
    }
    process::kill_tree(pid as i32, &run_id, grace).await;
    if let Some(cgroup) = cgroup {
        cgroup.kill();
        wait_empty(&cgroup).await;
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{resolve, Args, FileConfig};
    use crate::procfs;
    use jobcast_protocol::{Exec, JobSpec};

    fn config(scripts: &std::path::Path) -> Arc<WorkerConfig> {
        let args = Args {
            id: Some("w1".into()),
            secret: Some("s3cret-s3cret-s3cret".into()),
            ..Default::default()
        };
        let mut config = resolve(args, FileConfig::default()).unwrap();
        config.script_temp_path = scripts.to_path_buf();
        config.kill_grace = Duration::from_millis(500);
        Arc::new(config)
    }

    /// `execute` with the settings and script files of a worker whose script
    /// directory is `scripts`.
    async fn execute_in(
        scripts: &std::path::Path,
        job: Assignment,
        reporter: Reporter,
        stop: watch::Receiver<bool>,
    ) -> RunFinished {
        execute(job, config(scripts), files(scripts), reporter, stop, None).await
    }

    fn files(scripts: &std::path::Path) -> ScriptFiles {
        ScriptFiles::new(scripts, crate::scripts::DEFAULT_KEPT).unwrap()
    }

    fn assignment(run_id: &str, exec: Exec) -> Assignment {
        Assignment {
            run_id: run_id.into(),
            attempt: 1,
            scheduled_at_ms: 0,
            job: JobSpec::new("job", "default", exec).into(),
            params: Default::default(),
        }
    }

    fn shell(line: &str) -> Exec {
        Exec::Command(vec!["/bin/sh".into(), "-c".into(), line.into()])
    }

    /// A run id no other test (or test process) uses, so process lookups by it are exact.
    fn unique_run_id(name: &str) -> String {
        format!("{name}-{}-{}", std::process::id(), random_suffix())
    }

    fn random_suffix() -> u64 {
        jobcast_protocol::envelope::random_nonce()
    }

    fn log_text(reports: &[WorkerRequest]) -> String {
        let mut text = Vec::new();
        for report in reports {
            if let WorkerRequest::LogChunk { offset, data, .. } = report {
                assert_eq!(*offset as usize, text.len(), "chunks arrive in order");
                text.extend_from_slice(data);
            }
        }
        String::from_utf8_lossy(&text).into_owned()
    }

    /// Waits (bounded) until `check` holds.
    async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_run_reports_its_start_then_its_output_and_ends_with_its_exit_code() {
        let scripts = tempfile::tempdir().unwrap();
        let reporter = Reporter::default();
        let (_stop, stop_rx) = watch::channel(false);
        let run_id = unique_run_id("exit");
        let finished = execute_in(
            scripts.path(),
            assignment(&run_id, shell("echo hello; echo world >&2; exit 3")),
            reporter.clone(),
            stop_rx,
        )
        .await;
        assert_eq!(finished.run_id, run_id);
        assert_eq!(finished.outcome, Outcome::Exited { code: 3 });
        assert_eq!(finished.log_bytes, 12);
        let reports = reporter.front(usize::MAX);
        assert!(
            matches!(&reports[0], WorkerRequest::RunStarted { run_id: id, pid, .. } if *id == run_id && *pid > 0),
            "{reports:?}"
        );
        // stdout and stderr share one pipe, in the order they were written.
        assert_eq!(log_text(&reports), "hello\nworld\n");
    }

    #[tokio::test]
    async fn a_script_runs_by_its_interpreter_from_one_file_kept_for_its_next_runs() {
        let scripts = tempfile::tempdir().unwrap();
        let files = files(scripts.path());
        let body = "#!/bin/sh\necho \"run $JOBCAST_RUN_ID attempt $JOBCAST_ATTEMPT\"\n";
        for _ in 0..2 {
            let reporter = Reporter::default();
            let (_stop, stop_rx) = watch::channel(false);
            let finished = execute(
                assignment(&unique_run_id("script"), Exec::Script(body.into())),
                config(scripts.path()),
                files.clone(),
                reporter.clone(),
                stop_rx,
                None,
            )
            .await;
            assert_eq!(finished.outcome, Outcome::Exited { code: 0 });
            let text = log_text(&reporter.front(usize::MAX));
            assert_eq!(text, format!("run {} attempt 1\n", finished.run_id));
            assert_eq!(std::fs::read_dir(scripts.path()).unwrap().count(), 1);
        }
        files.clear();
        assert_eq!(std::fs::read_dir(scripts.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn parameters_reach_the_script_as_variables_and_are_never_run_as_code() {
        let scripts = tempfile::tempdir().unwrap();
        let marker = scripts.path().join("pwned");
        let reporter = Reporter::default();
        let (_stop, stop_rx) = watch::channel(false);
        let hostile = format!(
            "$(touch {}); `touch {}`",
            marker.display(),
            marker.display()
        );
        let mut run = assignment(
            &unique_run_id("params"),
            Exec::Script(
                "#!/bin/sh\nprintf '%s|%s' \"$JOBCAST_PARAM_TARGET\" \"$JOBCAST_PARAM_NOTE\"\n"
                    .into(),
            ),
        );
        run.params = [
            ("target".to_string(), "db".to_string()),
            ("note".to_string(), hostile.clone()),
        ]
        .into();
        let finished = execute(
            run,
            config(scripts.path()),
            files(scripts.path()),
            reporter.clone(),
            stop_rx,
            None,
        )
        .await;
        assert_eq!(finished.outcome, Outcome::Exited { code: 0 });
        assert_eq!(
            log_text(&reporter.front(usize::MAX)),
            format!("db|{hostile}")
        );
        assert!(!marker.exists(), "a parameter value was run");
    }

    #[tokio::test]
    async fn a_run_over_its_timeout_is_killed_with_every_process_it_started() {
        let scripts = tempfile::tempdir().unwrap();
        let run_id = unique_run_id("timeout");
        let mut job = assignment(&run_id, shell("sleep 30 & setsid sleep 30 & sleep 30"));
        std::sync::Arc::make_mut(&mut job.job).timeout_ms = Some(300);
        let (_stop, stop_rx) = watch::channel(false);
        let finished = execute_in(scripts.path(), job, Reporter::default(), stop_rx).await;
        assert_eq!(finished.outcome, Outcome::TimedOut);
        assert!(
            procfs::processes_with_env("JOBCAST_RUN_ID", &run_id).is_empty(),
            "a process of the run outlived it"
        );
    }

    #[tokio::test]
    async fn a_stop_request_kills_the_run() {
        let scripts = tempfile::tempdir().unwrap();
        let run_id = unique_run_id("stop");
        let reporter = Reporter::default();
        let (stop, stop_rx) = watch::channel(false);
        // Spawned, so it owns its settings rather than borrowing the directory.
        let running = tokio::spawn(execute(
            assignment(&run_id, shell("sleep 30")),
            config(scripts.path()),
            files(scripts.path()),
            reporter.clone(),
            stop_rx,
            None,
        ));
        eventually("the run to start", || {
            !procfs::processes_with_env("JOBCAST_RUN_ID", &run_id).is_empty()
        })
        .await;
        stop.send(true).unwrap();
        let finished = tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .expect("the killed run did not end")
            .unwrap();
        assert_eq!(finished.outcome, Outcome::Killed);
        assert!(procfs::processes_with_env("JOBCAST_RUN_ID", &run_id).is_empty());
    }

    #[tokio::test]
    async fn a_run_asked_to_stop_before_it_starts_never_starts() {
        let scripts = tempfile::tempdir().unwrap();
        let reporter = Reporter::default();
        let (_stop, stop_rx) = watch::channel(true);
        let finished = execute_in(
            scripts.path(),
            assignment(&unique_run_id("never"), shell("echo should-not-run")),
            reporter.clone(),
            stop_rx,
        )
        .await;
        assert_eq!(finished.outcome, Outcome::Killed);
        assert!(reporter.front(usize::MAX).is_empty());
    }

    #[tokio::test]
    async fn a_run_that_cannot_start_says_why() {
        let scripts = tempfile::tempdir().unwrap();
        let mut job = assignment(&unique_run_id("nostart"), shell("true"));
        std::sync::Arc::make_mut(&mut job.job).workdir = Some("/no/such/dir".into());
        let (_stop, stop_rx) = watch::channel(false);
        let finished = execute_in(scripts.path(), job, Reporter::default(), stop_rx).await;
        assert_eq!(
            finished.outcome,
            Outcome::FailedToStart {
                reason: "working directory /no/such/dir does not exist".into()
            }
        );
    }
}
