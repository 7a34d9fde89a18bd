//! Starting scripts and killing whole process trees (Linux).
//!
//! Each run starts in a process group of its own. To find every process of a run,
//! including descendants that called `setsid` and were orphaned, the worker is a child
//! subreaper (orphans re-parent to it rather than to init) and a process belongs to a run
//! when any of these holds: it descends from the run's pid, it is in the run's process
//! group or a session it started, or its environment carries the run's `JOBCAST_RUN_ID`.

use crate::procfs;
use crate::scripts::{ScriptFile, ScriptFiles};
use crate::start_error::StartError;
use jobcast_protocol::{Assignment, Exec};
use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

/// Pids of the children this worker started itself; tokio waits for those, so the
/// orphan reaper must leave them alone. Spawning and reaping both hold this lock, so a
/// child is always listed before the reaper can see it.
static OWN_CHILDREN: std::sync::Mutex<Option<HashSet<i32>>> = std::sync::Mutex::new(None);

pub(crate) fn lock_children() -> std::sync::MutexGuard<'static, Option<HashSet<i32>>> {
    // The set stays consistent even if a holder panicked, so a poisoned lock is usable.
    OWN_CHILDREN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Forgets a child once it has been waited for.
pub fn forget_child(pid: i32) {
    if let Some(set) = lock_children().as_mut() {
        set.remove(&pid);
    }
}

/// Makes this process a child subreaper, so orphaned descendants of runs re-parent to it.
pub fn become_subreaper() -> io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes one integer argument.
    let rc = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What to execute for a run: program and arguments, and the script file it uses (kept
/// on disk while the plan lives).
#[derive(Debug)]
pub struct Plan {
    pub program: String,
    pub args: Vec<String>,
    pub script: Option<ScriptFile>,
}

/// Splits a `#!` line the way Linux does: the interpreter, then at most one argument
/// made of the rest of the line.
pub fn parse_shebang(script: &str) -> Option<(String, Option<String>)> {
    let line = script.lines().next()?.strip_prefix("#!")?.trim();
    if line.is_empty() {
        return None;
    }
    match line.split_once([' ', '\t']) {
        Some((interpreter, rest)) => {
            let rest = rest.trim();
            Some((
                interpreter.to_string(),
                (!rest.is_empty()).then(|| rest.to_string()),
            ))
        }
        None => Some((line.to_string(), None)),
    }
}

/// Finds (or writes) the script file (if any) and works out the command line. The
/// script is run by its interpreter explicitly, so the file needs no execute bit.
pub fn plan(assignment: &Assignment, scripts: &ScriptFiles) -> Result<Plan, StartError> {
    match &assignment.job.exec {
        Exec::Command(argv) => {
            let (program, args) = argv.split_first().ok_or(StartError::EmptyCommand)?;
            Ok(Plan {
                program: program.clone(),
                args: args.to_vec(),
                script: None,
            })
        }
        Exec::Script(body) => {
            let (interpreter, arg) = parse_shebang(body).ok_or(StartError::NoInterpreter)?;
            let script = scripts
                .acquire(body)
                .map_err(|source| StartError::WriteScript {
                    dir: scripts.dir(),
                    source,
                })?;
            let mut args: Vec<String> = arg.into_iter().collect();
            args.push(script.path().to_string_lossy().into_owned());
            Ok(Plan {
                program: interpreter,
                args,
                script: Some(script),
            })
        }
    }
}

/// A run's first process, as started: by [`crate::spawn`], or by the standard library on
/// a kernel without pidfds.
pub enum RunProcess {
    Cloned(crate::spawn::ChildProcess),
    Forked(tokio::process::Child),
}

impl RunProcess {
    pub fn id(&self) -> u32 {
        match self {
            RunProcess::Cloned(child) => child.id(),
            RunProcess::Forked(child) => child.id().unwrap_or(0),
        }
    }

    /// Waits for it to exit (and reaps it).
    pub async fn wait(&mut self) -> io::Result<std::process::ExitStatus> {
        match self {
            RunProcess::Cloned(child) => child.wait().await,
            RunProcess::Forked(child) => child.wait().await,
        }
    }
}

/// The variables every run's processes get on top of the worker's environment, in
/// order (a later one wins): the job's, those the worker fills, the parameters, then
/// jobcast's own.
fn run_environment(
    assignment: &Assignment,
    worker: &WorkerMark<'_>,
    worker_env: &[(String, String)],
) -> Vec<(OsString, OsString)> {
    let pair = |k: &str, v: &str| (OsString::from(k), OsString::from(v));
    let mut env: Vec<(OsString, OsString)> = Vec::new();
    env.extend(assignment.job.env.iter().map(|(k, v)| pair(k, v)));
    env.extend(worker_env.iter().map(|(k, v)| pair(k, v)));
    // Values as data in the environment, never in the script's text.
    env.extend(
        assignment
            .params
            .iter()
            .map(|(name, value)| pair(&jobcast_protocol::params::env_name(name), value)),
    );
    env.push(pair("JOBCAST_RUN_ID", &assignment.run_id));
    env.push(pair("JOBCAST_JOB", &assignment.job.name));
    env.push(pair("JOBCAST_ATTEMPT", &assignment.attempt.to_string()));
    env.push(pair("JOBCAST_WORKER", worker.id));
    env.push((
        OsString::from(WORKER_HOME),
        worker.home.as_os_str().to_os_string(),
    ));
    env.push(pair(
        "JOBCAST_SCHEDULED_AT",
        &humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + Duration::from_millis(assignment.scheduled_at_ms),
        )
        .to_string(),
    ));
    env
}

/// Starts the plan with output (stdout and stderr on one pipe, so their order is kept)
/// going to the returned reader, in a process group of its own (signals to the group
/// reach its ordinary children, and a terminal's Ctrl-C, sent to the foreground group,
/// does not) and, with a cgroup per run, in that cgroup before its program runs (moved
/// in after, a fast script could fork out of it first).
pub fn spawn(
    plan: &Plan,
    assignment: &Assignment,
    worker: &WorkerMark<'_>,
    worker_env: &[(String, String)],
    cgroup: Option<&crate::cgroup::RunCgroup>,
) -> Result<(RunProcess, tokio::net::unix::pipe::Receiver), StartError> {
    use std::os::fd::AsFd;
    let workdir = match &assignment.job.workdir {
        Some(dir) if !Path::new(dir).is_dir() => {
            return Err(StartError::NoWorkdir { dir: dir.clone() })
        }
        Some(dir) => Some(Path::new(dir)),
        None => None,
    };
    let cgroup_dir = match cgroup {
        Some(cgroup) => Some(
            cgroup
                .dir()
                .map_err(|source| StartError::Cgroup { source })?,
        ),
        None => None,
    };
    let env = run_environment(assignment, worker, worker_env);
    let args: Vec<OsString> = plan.args.iter().map(OsString::from).collect();
    let (reader, writer) = std::io::pipe().map_err(StartError::Output)?;
    let spawn_error = |source| StartError::Spawn {
        program: plan.program.clone(),
        source,
    };
    let child = {
        // Held until the pid is listed, so the orphan reaper never takes this child.
        let mut own = lock_children();
        let launched = crate::spawn::launch(&crate::spawn::Launch {
            program: plan.program.as_ref(),
            args: &args,
            env: &env,
            workdir,
            output: writer.as_fd(),
            cgroup: cgroup_dir.as_ref().map(|dir| dir.as_fd()),
        })
        .map_err(spawn_error)?;
        let child = match launched {
            Some(child) => RunProcess::Cloned(child),
            None => {
                let procs = match &cgroup_dir {
                    Some(dir) => Some(
                        crate::spawn::open_procs(dir.as_fd())
                            .map_err(|source| StartError::Cgroup { source })?,
                    ),
                    None => None,
                };
                RunProcess::Forked(
                    forked(plan, &args, &env, workdir, writer, procs.as_ref())
                        .map_err(spawn_error)?,
                )
            }
        };
        own.get_or_insert_with(HashSet::new)
            .insert(child.id() as i32);
        child
    };
    Ok((child, output_reader(reader).map_err(StartError::Output)?))
}

/// The read end of a run's output pipe, for tokio. It is known to be a fresh pipe's read
/// end with no status flags, so it is made non-blocking in one call, where tokio's checked
/// conversion spends three (a stat, a read of the flags, their write) on every run.
fn output_reader(reader: io::PipeReader) -> io::Result<tokio::net::unix::pipe::Receiver> {
    let fd = OwnedFd::from(reader);
    // SAFETY: F_SETFL on a descriptor this function owns.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        return Err(io::Error::last_os_error());
    }
    tokio::net::unix::pipe::Receiver::from_owned_fd_unchecked(fd)
}

/// The standard library's start, for kernels without pidfds: it `fork`s the whole
/// worker when the run joins a cgroup (a step between fork and exec), else uses
/// `posix_spawn`.
fn forked(
    plan: &Plan,
    args: &[OsString],
    env: &[(OsString, OsString)],
    workdir: Option<&Path>,
    writer: std::io::PipeWriter,
    procs: Option<&std::os::fd::OwnedFd>,
) -> io::Result<tokio::process::Child> {
    let writer2 = writer.try_clone()?;
    let mut command = std::process::Command::new(&plan.program);
    command
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::from(writer))
        .stderr(Stdio::from(writer2))
        .process_group(0);
    if let Some(dir) = workdir {
        command.current_dir(dir);
    }
    if let Some(procs) = procs {
        join_cgroup_before_exec(&mut command, procs);
    }
    let mut command = tokio::process::Command::from(command);
    command.kill_on_drop(false);
    // Dropping the command (at return) closes our copies of the pipe's write end, so the
    // reader sees end-of-file once the run's processes close theirs.
    command.spawn()
}

/// Makes `command`'s child join the cgroup whose `cgroup.procs` is `procs` between fork
/// and exec; `procs` must stay open until the command is spawned.
pub(crate) fn join_cgroup_before_exec(
    command: &mut std::process::Command,
    procs: &std::os::fd::OwnedFd,
) {
    use std::os::fd::AsRawFd;
    let fd = procs.as_raw_fd();
    // SAFETY: the hook runs in the forked child before exec and only calls write(2),
    // which is async-signal-safe; the caller keeps `fd` open until the spawn returns.
    unsafe {
        command.pre_exec(move || {
            if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
    }
}

/// Every live process that belongs to the run whose first process is `root`.
pub fn run_tree(root: i32, run_id: &str) -> HashSet<i32> {
    let procs = procfs::all_processes();
    let marker = format!("JOBCAST_RUN_ID={run_id}").into_bytes();
    let me = std::process::id() as i32;
    let mut tree: HashSet<i32> = procs
        .iter()
        .filter(|(pid, info)| {
            **pid != me
                && !info.zombie
                && (**pid == root
                    || info.pgrp == root
                    || info.session == root
                    || procfs::has_env(**pid, &marker))
        })
        .map(|(pid, _)| *pid)
        .collect();
    // Add descendants of anything found, until nothing new appears.
    loop {
        let before = tree.len();
        for (pid, info) in &procs {
            if !info.zombie && tree.contains(&info.ppid) && *pid != me {
                tree.insert(*pid);
            }
        }
        if tree.len() == before {
            break;
        }
    }
    tree
}

fn signal_all(pids: &HashSet<i32>, signal: i32) {
    for pid in pids {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(*pid, signal);
        }
    }
}

/// SIGTERM to the whole tree, then SIGKILL to whatever is left after `grace`. Returns
/// once no process of the run remains (or after a bounded wait past SIGKILL).
pub async fn kill_tree(root: i32, run_id: &str, grace: Duration) {
    let deadline = tokio::time::Instant::now() + grace;
    let mut tree = run_tree(root, run_id);
    signal_all(&tree, libc::SIGTERM);
    while !tree.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(25)).await;
        reap_orphans();
        let now = run_tree(root, run_id);
        // Processes born since the first signal get it too.
        let fresh: HashSet<i32> = now.difference(&tree).copied().collect();
        signal_all(&fresh, libc::SIGTERM);
        tree = now;
    }
    for _ in 0..40 {
        if tree.is_empty() {
            return;
        }
        signal_all(&tree, libc::SIGKILL);
        tokio::time::sleep(Duration::from_millis(25)).await;
        reap_orphans();
        tree = run_tree(root, run_id);
    }
    if !tree.is_empty() {
        tracing::warn!(run_id, pids = ?tree, "processes of a killed run survive SIGKILL");
    }
}

/// The environment variable naming the worker's script directory in every run: with
/// `JOBCAST_WORKER`, it tells one worker's runs from another's on the same host (two
/// workers may share an id when they serve different brokers).
const WORKER_HOME: &str = "JOBCAST_WORKER_HOME";

/// How a worker marks the processes of its runs, to find them again after a crash.
pub struct WorkerMark<'a> {
    pub id: &'a str,
    /// Its script directory.
    pub home: &'a Path,
}

/// Processes of runs started by an earlier process of this worker (same id and script
/// directory, on this host) that outlived it: it was SIGKILLed or crashed, so nobody
/// ended them, and they re-parented to init. Found by the marks every run's processes
/// carry in their environment.
pub fn leftovers(worker: &WorkerMark<'_>) -> HashSet<i32> {
    let me = std::process::id() as i32;
    let home = format!("{WORKER_HOME}={}", worker.home.display()).into_bytes();
    procfs::processes_with_env("JOBCAST_WORKER", worker.id)
        .into_iter()
        .filter(|pid| *pid != me && procfs::has_env(*pid, &home))
        .collect()
}

/// Ends the processes an earlier process of this worker left behind, before this one
/// takes work: SIGTERM, then SIGKILL after `grace`. A run the broker will retry must
/// never overlap its old attempt on this host. Returns how many there were; an error
/// names those that survive SIGKILL (the worker must not start then).
pub fn end_leftovers(worker: &WorkerMark<'_>, grace: Duration) -> Result<usize, Vec<i32>> {
    let found = leftovers(worker);
    if found.is_empty() {
        return Ok(0);
    }
    tracing::warn!(pids = ?found, "processes of runs from an earlier worker process are still running: ending them");
    signal_all(&found, libc::SIGTERM);
    let wait_until_gone = |until: std::time::Instant| loop {
        let alive = leftovers(worker);
        if alive.is_empty() || std::time::Instant::now() >= until {
            return alive;
        }
        std::thread::sleep(Duration::from_millis(25));
    };
    let alive = wait_until_gone(std::time::Instant::now() + grace);
    if alive.is_empty() {
        return Ok(found.len());
    }
    signal_all(&alive, libc::SIGKILL);
    let alive = wait_until_gone(std::time::Instant::now() + Duration::from_secs(5));
    if alive.is_empty() {
        Ok(found.len())
    } else {
        Err(alive.into_iter().collect())
    }
}

/// Reaps zombies that re-parented to this subreaper, leaving the children that tokio
/// waits for itself alone.
pub fn reap_orphans() {
    let me = std::process::id() as i32;
    let own = lock_children();
    for (pid, info) in procfs::all_processes() {
        let ours = own.as_ref().is_some_and(|set| set.contains(&pid));
        if info.zombie && info.ppid == me && !ours {
            let mut status = 0;
            // SAFETY: waitpid on a specific zombie child of ours.
            unsafe {
                libc::waitpid(pid, &mut status, libc::WNOHANG);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shebangs_split_like_linux() {
        assert_eq!(
            parse_shebang("#!/bin/sh\necho"),
            Some(("/bin/sh".into(), None))
        );
        assert_eq!(
            parse_shebang("#! /usr/bin/env python3 -u\n"),
            Some(("/usr/bin/env".into(), Some("python3 -u".into())))
        );
        assert_eq!(parse_shebang("#!\n"), None);
        assert_eq!(parse_shebang("echo hi"), None);
    }
}

#[cfg(test)]
mod forked_tests {
    use super::*;
    use std::io::Read;

    /// The start used where the kernel has no pidfds behaves as the usual one.
    #[tokio::test]
    async fn the_standard_librarys_start_gives_the_same_environment_group_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan {
            program: "/bin/sh".into(),
            args: Vec::new(),
            script: None,
        };
        let args = [
            OsString::from("-c"),
            OsString::from(
                "echo \"$GREETING $(pwd)\"; cut -d' ' -f5 /proc/$$/stat; echo $$; exit 4",
            ),
        ];
        let env = [(OsString::from("GREETING"), OsString::from("hello"))];
        let (mut reader, writer) = std::io::pipe().unwrap();
        let mut child = forked(&plan, &args, &env, Some(dir.path()), writer, None).unwrap();
        let pid = child.id().unwrap().to_string();
        let status = child.wait().await.unwrap();
        assert_eq!(status.code(), Some(4));
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        let dir = dir.path().canonicalize().unwrap();
        assert_eq!(text, format!("hello {}\n{pid}\n{pid}\n", dir.display()));
    }
}
