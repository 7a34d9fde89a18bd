//! What `/proc` says about processes: parents, groups and sessions, zombies, environment
//! markers and memory. Used by the worker to find a run's processes, and by the tests and
//! the bench to check on them.

use std::collections::HashMap;
use std::time::Duration;

/// The fields of `/proc/<pid>/stat` the worker needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcInfo {
    pub ppid: i32,
    pub pgrp: i32,
    pub session: i32,
    pub zombie: bool,
}

/// Reads `/proc/<pid>/stat` and hands `read` its fields from the third (the state) on.
fn with_stat<T>(
    pid: i32,
    read: impl FnOnce(&mut std::str::SplitWhitespace<'_>) -> Option<T>,
) -> Option<T> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: parse after the last ')'.
    read(&mut text[text.rfind(')')? + 2..].split_whitespace())
}

pub fn read_stat(pid: i32) -> Option<ProcInfo> {
    with_stat(pid, |fields| {
        let state = fields.next()?;
        let ppid = fields.next()?.parse().ok()?;
        let pgrp = fields.next()?.parse().ok()?;
        let session = fields.next()?.parse().ok()?;
        Some(ProcInfo {
            ppid,
            pgrp,
            session,
            zombie: state == "Z",
        })
    })
}

/// CPU time (user + system) a process has used so far; `None` if it is gone.
pub fn cpu_time(pid: i32) -> Option<Duration> {
    // utime and stime are fields 14 and 15: the 12th and 13th from the state on.
    cpu_ticks_from(pid, 11)
}

/// CPU time (user + system) of the children a process has waited for so far.
pub fn children_cpu_time(pid: i32) -> Option<Duration> {
    // cutime and cstime are fields 16 and 17.
    cpu_ticks_from(pid, 13)
}

/// Two CPU-time fields of `/proc/PID/stat` in clock ticks, summed, as a duration: the
/// pair `skip` fields after the state.
fn cpu_ticks_from(pid: i32, skip: usize) -> Option<Duration> {
    let ticks = with_stat(pid, |fields| {
        let mut fields = fields.skip(skip);
        Some(fields.next()?.parse::<u64>().ok()? + fields.next()?.parse::<u64>().ok()?)
    })?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// The pids listed in `/proc`.
fn pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str().and_then(|n| n.parse().ok()))
}

pub fn all_processes() -> HashMap<i32, ProcInfo> {
    pids()
        .filter_map(|pid| read_stat(pid).map(|info| (pid, info)))
        .collect()
}

/// Whether the process's environment holds exactly `marker` (`NAME=value`).
pub fn has_env(pid: i32, marker: &[u8]) -> bool {
    match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(env) => env.split(|b| *b == 0).any(|var| var == marker),
        Err(_) => false,
    }
}

/// Live (not zombie) processes whose environment has `name=value`.
pub fn processes_with_env(name: &str, value: &str) -> Vec<i32> {
    let marker = format!("{name}={value}").into_bytes();
    pids()
        .filter(|pid| is_alive(*pid) && has_env(*pid, &marker))
        .collect()
}

/// Whether a process exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    read_stat(pid).is_some_and(|info| !info.zombie)
}

/// Resident memory of a process in bytes (0 if it cannot be read).
pub fn rss_bytes(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_reads_as_alive_with_its_parent_and_memory() {
        let me = std::process::id() as i32;
        let info = read_stat(me).expect("own stat");
        assert!(!info.zombie);
        assert!(info.ppid > 0);
        assert!(is_alive(me));
        assert!(rss_bytes(me) > 0);
        // Spin until the kernel has counted some CPU time for this process.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cpu_time(me).unwrap_or_default() == Duration::ZERO
            && std::time::Instant::now() < deadline
        {
            std::hint::black_box((0..10_000u64).sum::<u64>());
        }
        assert!(cpu_time(me).is_some_and(|t| t > Duration::ZERO));
        assert_eq!(cpu_time(i32::MAX), None);
        assert!(all_processes().contains_key(&me));
    }

    #[test]
    fn a_child_is_found_by_its_environment_until_it_is_reaped() {
        let value = format!("procfs-test-{}", std::process::id());
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .env("JOBCAST_PROCFS_TEST", &value)
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        // Until the child has exec'd, /proc shows the environment it inherited.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut found = processes_with_env("JOBCAST_PROCFS_TEST", &value);
        while found.is_empty() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
            found = processes_with_env("JOBCAST_PROCFS_TEST", &value);
        }
        assert_eq!(found, [pid]);
        assert!(processes_with_env("JOBCAST_PROCFS_TEST", "other").is_empty());
        child.kill().expect("kill");
        child.wait().expect("reap");
        assert!(!is_alive(pid));
        assert!(processes_with_env("JOBCAST_PROCFS_TEST", &value).is_empty());
    }
}
