//! One cgroup (v2) per run, where the worker may create cgroups: a run's processes cannot
//! leave it (not by `setsid`, a double fork or a cleared environment), so killing the run
//! ends every one of them (`cgroup.kill`), and the run's CPU time (and peak memory, with
//! the memory controller) is read from it. Jobs may limit memory (`memory.max`) and CPU
//! (`cpu.max`) where those controllers are available.
//!
//! The cgroups live in a directory of this worker's own beside it: `<own cgroup>/
//! jobcast-runs.<worker id>/run-<run id>`. Elsewhere (no cgroup v2, or not writable) the
//! process-tree search of `process.rs` is what finds a run's processes.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How a run's processes are kept together, as the worker reports it.
#[derive(Debug, Clone)]
pub enum Containment {
    Cgroups(RunCgroups),
    /// Process groups, sessions, parent links and an environment mark (`process.rs`).
    ProcessTree {
        why: String,
    },
}

impl Containment {
    /// Finds where this worker may create cgroups; falls back to the process tree.
    /// `home` (its script directory) tells apart two workers of one id on one host, as
    /// the processes' environment mark does.
    pub fn detect(worker_id: &str, home: &Path) -> Containment {
        match RunCgroups::create(worker_id, home) {
            Ok(cgroups) => Containment::Cgroups(cgroups),
            Err(why) => Containment::ProcessTree { why },
        }
    }

    /// As [`Containment::detect`], leaving nothing behind that was not there (for
    /// `--check-config`, which may run beside a live worker of the same id).
    pub fn probe(worker_id: &str, home: &Path) -> Containment {
        let existed = RunCgroups::path_for(worker_id, home).is_some_and(|dir| dir.exists());
        let found = Containment::detect(worker_id, home);
        if let (Containment::Cgroups(cgroups), false) = (&found, existed) {
            cgroups.remove_dir();
        }
        found
    }

    pub fn cgroups(&self) -> Option<&RunCgroups> {
        match self {
            Containment::Cgroups(cgroups) => Some(cgroups),
            Containment::ProcessTree { .. } => None,
        }
    }

    /// In words, for logs, `--check-config` and pings.
    pub fn describe(&self) -> String {
        match self {
            Containment::Cgroups(c) => format!(
                "cgroup v2 per run under {} (limits: {})",
                c.dir.display(),
                match (c.memory, c.cpu) {
                    (true, true) => "memory_max, cpus",
                    (true, false) => "memory_max",
                    (false, true) => "cpus",
                    (false, false) => "none: no memory or cpu controller here",
                }
            ),
            Containment::ProcessTree { why } => {
                format!("process tree (sessions, parents, environment mark): {why}")
            }
        }
    }
}

/// The directory of this worker's run cgroups.
#[derive(Debug, Clone)]
pub struct RunCgroups {
    dir: PathBuf,
    /// Whether run cgroups have the memory controller (`memory.max`, `memory.peak`).
    memory: bool,
    /// Whether run cgroups have the cpu controller (`cpu.max`).
    cpu: bool,
}

/// The name of a worker's directory of run cgroups, beside its own cgroup.
pub fn runs_dir_name(worker_id: &str, home: &Path) -> String {
    format!("jobcast-runs.{worker_id}.{:08x}", home_tag(home))
}

/// A short, stable tag of the worker's script directory (FNV-1a), for the cgroup's name.
fn home_tag(home: &Path) -> u32 {
    use std::os::unix::ffi::OsStrExt;
    home.as_os_str()
        .as_bytes()
        .iter()
        .fold(0x811c_9dc5_u32, |hash, byte| {
            (hash ^ u32::from(*byte)).wrapping_mul(0x0100_0193)
        })
}

/// Where the cgroup v2 hierarchy is mounted, from a `/proc/self/mountinfo` text.
pub fn v2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "… mount-point … - fstype source options"
        let (before, after) = line.split_once(" - ")?;
        let fstype = after.split_whitespace().next()?;
        let mount_point = before.split_whitespace().nth(4)?;
        (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
    })
}

/// This process's cgroup in the v2 hierarchy, from a `/proc/self/cgroup` text.
pub fn own_v2_path(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::").map(str::to_string))
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::write(path, value)
}

/// In a delegated cgroup (systemd's `Delegate=yes`) that holds the worker itself, cgroup
/// v2 lets no controller be handed down to children while it has processes of its own:
/// the worker moves into a leaf of its own (`worker`), then hands the memory and cpu
/// controllers down, where the cgroup has them. Best effort: without them, limits are
/// refused and containment still holds.
fn leave_room_for_controllers(own_dir: &Path) {
    let wanted: Vec<String> = controllers(own_dir)
        .into_iter()
        .filter(|c| c == "memory" || c == "cpu")
        .collect();
    if wanted.is_empty() {
        return;
    }
    let leaf = own_dir.join("worker");
    let moved = std::fs::create_dir_all(&leaf).and_then(|_| write(&leaf.join("cgroup.procs"), "0"));
    if let Err(e) = moved {
        tracing::debug!(error = %e, "cannot move the worker into a leaf cgroup");
        return;
    }
    for controller in wanted {
        let _ = write(
            &own_dir.join("cgroup.subtree_control"),
            &format!("+{controller}"),
        );
    }
}

fn controllers(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("cgroup.controllers"))
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

impl RunCgroups {
    /// This process's cgroup (the v2 mount and its own path) and its runs directory.
    fn locate(worker_id: &str, home: &Path) -> Result<(PathBuf, String, PathBuf), String> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))?;
        let mount = v2_mount(&mountinfo).ok_or("no cgroup v2 hierarchy is mounted")?;
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .ok()
            .and_then(|text| own_v2_path(&text))
            .ok_or("this process has no cgroup v2 path")?;
        let own_dir = mount.join(own.trim_start_matches('/'));
        let dir = own_dir.join(runs_dir_name(worker_id, home));
        Ok((own_dir, own, dir))
    }

    fn path_for(worker_id: &str, home: &Path) -> Option<PathBuf> {
        Self::locate(worker_id, home).ok().map(|(_, _, dir)| dir)
    }

    fn create(worker_id: &str, home: &Path) -> Result<RunCgroups, String> {
        let (own_dir, own, dir) = Self::locate(worker_id, home)?;
        if own != "/" {
            leave_room_for_controllers(&own_dir);
        }
        // Proof that cgroups can be made and removed here. A `--check-config` of the same
        // worker may remove the directory between the two steps: then make it again.
        static PROBES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nth = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probe = dir.join(format!("probe-{}-{nth}", std::process::id()));
        let mut attempts = 0;
        loop {
            // "Exists" while the other removes it, or "not found" once it has: try again.
            let raced = |e: &io::Error| {
                matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::AlreadyExists
                )
            };
            match std::fs::create_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if raced(&e) && attempts < 3 => {
                    attempts += 1;
                    continue;
                }
                Err(e) => {
                    return Err(format!(
                        "cannot create {} ({e}): run as root, or under systemd with Delegate=yes",
                        dir.display()
                    ))
                }
            }
            match std::fs::create_dir(&probe).and_then(|_| std::fs::remove_dir(&probe)) {
                Ok(()) => break,
                Err(e) if raced(&e) && attempts < 3 => attempts += 1,
                Err(e) => return Err(format!("cannot create cgroups in {} ({e})", dir.display())),
            }
        }
        // Controllers for the runs' limits, where the parent lets this directory have them.
        let wanted: Vec<&str> = ["memory", "cpu"]
            .into_iter()
            .filter(|c| controllers(&dir).iter().any(|have| have == c))
            .collect();
        for controller in wanted {
            let _ = write(
                &dir.join("cgroup.subtree_control"),
                &format!("+{controller}"),
            );
        }
        let enabled =
            std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        Ok(RunCgroups {
            memory: enabled.split_whitespace().any(|c| c == "memory"),
            cpu: enabled.split_whitespace().any(|c| c == "cpu"),
            dir,
        })
    }

    /// Removes the directory once its runs' cgroups are gone (a worker that exits).
    pub fn remove_dir(&self) {
        let _ = std::fs::remove_dir(&self.dir);
    }

    /// A cgroup for run `run_id`, with its job's limits; `Err` says why the run cannot
    /// start (a limit this worker cannot enforce, or the cgroup cannot be made).
    pub fn for_run(
        &self,
        run_id: &str,
        memory_max: Option<u64>,
        cpus_milli: Option<u32>,
    ) -> Result<RunCgroup, String> {
        if memory_max.is_some() && !self.memory {
            return Err(format!(
                "the job sets memory_max, but this worker's cgroups ({}) have no memory controller",
                self.dir.display()
            ));
        }
        if cpus_milli.is_some() && !self.cpu {
            return Err(format!(
                "the job sets cpus, but this worker's cgroups ({}) have no cpu controller",
                self.dir.display()
            ));
        }
        let path = self.dir.join(format!("run-{run_id}"));
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            // Left by a run of the same id that did not get to remove it: empty it.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(format!("cannot create the cgroup {}: {e}", path.display())),
        }
        let cgroup = RunCgroup { path };
        let set = |file: &str, value: String| {
            write(&cgroup.path.join(file), &value)
                .map_err(|e| format!("cannot set {file} of {}: {e}", cgroup.path.display()))
        };
        if let Some(bytes) = memory_max {
            set("memory.max", bytes.to_string())?;
            // No swap past the limit either, where swap is accounted.
            let _ = write(&cgroup.path.join("memory.swap.max"), "0");
        }
        if let Some(milli) = cpus_milli {
            // Quota per 100 ms period: 1,000 milli-CPUs = one CPU's worth.
            set("cpu.max", format!("{} 100000", u64::from(milli) * 100))?;
        }
        Ok(cgroup)
    }

    /// Ends what runs of an earlier process of this worker left in their cgroups, and
    /// removes those. Returns how many cgroups there were; an error names those whose
    /// processes would not end.
    pub fn end_leftovers(&self) -> Result<usize, Vec<PathBuf>> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(0);
        };
        let mut found = 0;
        let mut stuck = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            found += 1;
            let cgroup = RunCgroup { path };
            cgroup.kill();
            if !cgroup.wait_empty(Duration::from_secs(5)) {
                stuck.push(cgroup.path.clone());
                continue;
            }
            cgroup.remove();
        }
        if stuck.is_empty() {
            Ok(found)
        } else {
            Err(stuck)
        }
    }
}

/// What a run used, read from its cgroup at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub cpu_us: Option<u64>,
    pub peak_memory_bytes: Option<u64>,
}

/// One run's cgroup.
#[derive(Debug)]
pub struct RunCgroup {
    path: PathBuf,
}

impl RunCgroup {
    /// The cgroup's directory, opened read-only: the run's first process is made in it
    /// (or joins it between fork and exec), so it is inside before any of its code runs.
    pub fn open_dir(&self) -> io::Result<std::fs::File> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&self.path)
    }

    /// The processes in the cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Every process in the cgroup gets SIGKILL, whatever session or parent it has.
    pub fn kill(&self) {
        if let Err(e) = write(&self.path.join("cgroup.kill"), "1") {
            tracing::warn!(cgroup = %self.path.display(), error = %e, "cgroup.kill failed");
        }
    }

    pub fn is_empty(&self) -> bool {
        std::fs::read_to_string(self.path.join("cgroup.events"))
            .map(|events| events.lines().any(|l| l == "populated 0"))
            .unwrap_or(true)
    }

    /// Waits (up to `limit`) until no process is left in the cgroup.
    pub fn wait_empty(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.is_empty() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            crate::process::reap_orphans();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn usage(&self) -> Usage {
        let cpu_us = std::fs::read_to_string(self.path.join("cpu.stat"))
            .ok()
            .and_then(|stat| {
                stat.lines()
                    .find_map(|l| l.strip_prefix("usage_usec "))
                    .and_then(|v| v.trim().parse().ok())
            });
        let peak_memory_bytes = std::fs::read_to_string(self.path.join("memory.peak"))
            .ok()
            .and_then(|v| v.trim().parse().ok());
        Usage {
            cpu_us,
            peak_memory_bytes,
        }
    }

    /// Removes the (empty) cgroup.
    pub fn remove(&self) {
        for _ in 0..50 {
            match std::fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                // Busy for a moment after its last process exits.
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
        tracing::warn!(cgroup = %self.path.display(), "cannot remove a run's cgroup");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_v2_mount_and_this_process_path_are_read_not_assumed() {
        let hybrid = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                      35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            v2_mount(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let pure =
            "30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(v2_mount(pure), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(v2_mount("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n"), None);
        assert_eq!(
            own_v2_path("4:memory:/x\n0::/system.slice/jobcast-worker.service\n").as_deref(),
            Some("/system.slice/jobcast-worker.service")
        );
        assert_eq!(own_v2_path("4:memory:/x\n"), None);
    }

    /// Two `--check-config` of one worker at once: one removes the directory the other
    /// is proving; neither may conclude that cgroups cannot be made (a CI failure once).
    #[test]
    fn probes_of_one_worker_at_the_same_time_agree() {
        let home = std::env::temp_dir().join(format!("jobcast-probe-{}", std::process::id()));
        if Containment::probe("probe-race", &home).cgroups().is_none() {
            {
                // Straight to the standard error, which the test runner shows even for a
                // passing test (unlike `eprintln!`).
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: no cgroups for this process here"
                );
            }
            return;
        }
        let racers: Vec<_> = (0..2)
            .map(|_| {
                let home = home.clone();
                std::thread::spawn(move || {
                    (0..200)
                        .filter_map(|_| match Containment::probe("probe-race", &home) {
                            Containment::Cgroups(_) => None,
                            Containment::ProcessTree { why } => Some(why),
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let failed: Vec<String> = racers
            .into_iter()
            .flat_map(|r| r.join().unwrap_or_else(|_| vec!["a probe panicked".into()]))
            .collect();
        // A probe that found the directory made by the other leaves it: remove it here.
        if let Some(dir) = RunCgroups::path_for("probe-race", &home) {
            let _ = std::fs::remove_dir(dir);
        }
        assert!(
            failed.is_empty(),
            "probes that found no cgroups: {failed:?}"
        );
    }
}
