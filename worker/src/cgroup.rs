//! One cgroup (v2) per run, where the worker may create cgroups: a run's processes cannot
//! leave it (not by `setsid`, a double fork or a cleared environment), so killing the run
//! ends every one of them (`cgroup.kill`), and the run's CPU time (and peak memory, with
//! the memory controller) is read from it. Jobs may limit memory (`memory.max`) and CPU
//! (`cpu.max`) where those controllers are available.
//!
//! The cgroups live in a directory of this worker's own beside it: `<own cgroup>/
//! jobcast-runs.<worker id>.<tag>/`. A run without limits takes an empty cgroup that an
//! earlier run left (`slot-<n>`), with its files still open, or a new one: making and
//! removing a cgroup and opening its files cost about a fifth of the worker's CPU on a
//! short script (docs/BENCHMARKS.md, "A start straight into its cgroup"). A run with
//! limits gets a cgroup of its own, `run-<run id>`, removed at its end. Elsewhere (no
//! cgroup v2, or not writable) the process-tree search of `process.rs` is what finds a
//! run's processes.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
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
    /// Empty cgroups that runs without limits left, ready for the next.
    idle: IdlePool,
}

type IdlePool = Arc<Mutex<Vec<Idle>>>;

/// An empty cgroup kept for a later run, its files open.
#[derive(Debug)]
struct Idle {
    path: PathBuf,
    files: Kept,
    /// Its `usage_usec` when its last run ended: the next run's CPU is counted from it.
    cpu_us: Option<u64>,
}

/// A reused cgroup's directory and the files read at each run's end, opened once.
#[derive(Debug)]
struct Kept {
    dir: File,
    events: File,
    cpu_stat: Option<File>,
    /// Written to at each run's end: its peak is then counted again from that moment, for
    /// reads through this descriptor (Linux 6.12). Where that write is refused, the cgroup
    /// is not reused.
    memory_peak: Option<File>,
}

impl Kept {
    fn open(path: &Path, memory: bool) -> io::Result<Kept> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(path)?;
        let memory_peak = if memory {
            Some(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(path.join("memory.peak"))?,
            )
        } else {
            None
        };
        Ok(Kept {
            dir,
            events: File::open(path.join("cgroup.events"))?,
            cpu_stat: File::open(path.join("cpu.stat")).ok(),
            memory_peak,
        })
    }
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
            idle: Arc::default(),
        })
    }

    /// Removes the directory once its runs' cgroups are gone (a worker that exits), with
    /// the empty ones kept for reuse.
    pub fn remove_dir(&self) {
        let idle = std::mem::take(&mut *lock(&self.idle));
        for cgroup in idle {
            drop(cgroup.files);
            let _ = std::fs::remove_dir(&cgroup.path);
        }
        let _ = std::fs::remove_dir(&self.dir);
    }

    /// An empty cgroup an earlier run left, or a new one kept for reuse after this run.
    fn reusable(&self) -> Result<RunCgroup, String> {
        if let Some(idle) = lock(&self.idle).pop() {
            return Ok(RunCgroup {
                path: idle.path,
                kept: Some(idle.files),
                cpu_us_before: idle.cpu_us,
                pool: Some(self.idle.clone()),
                killed: Default::default(),
                emptied: Default::default(),
            });
        }
        static SLOTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nth = SLOTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.join(format!("slot-{}-{nth}", std::process::id()));
        std::fs::create_dir(&path)
            .map_err(|e| format!("cannot create the cgroup {}: {e}", path.display()))?;
        match Kept::open(&path, self.memory) {
            Ok(files) => Ok(RunCgroup {
                path,
                kept: Some(files),
                cpu_us_before: Some(0),
                pool: Some(self.idle.clone()),
                killed: Default::default(),
                emptied: Default::default(),
            }),
            // Before Linux 6.12 `memory.peak` cannot be written: not kept, but used once.
            Err(e) => {
                tracing::debug!(cgroup = %path.display(), error = %e, "a cgroup not kept for reuse");
                Ok(RunCgroup::removed_at_end(path))
            }
        }
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
        if memory_max.is_none() && cpus_milli.is_none() {
            return self.reusable();
        }
        let path = self.dir.join(format!("run-{run_id}"));
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            // Left by a run of the same id that did not get to remove it: made again if it
            // is empty (it may have been killed, see `RunCgroup::killed`), else used as it is.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if std::fs::remove_dir(&path).is_ok() {
                    std::fs::create_dir(&path)
                        .map_err(|e| format!("cannot create the cgroup {}: {e}", path.display()))?;
                }
            }
            Err(e) => return Err(format!("cannot create the cgroup {}: {e}", path.display())),
        }
        let cgroup = RunCgroup::removed_at_end(path);
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
            let cgroup = RunCgroup::removed_at_end(path);
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

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding it; a poisoned pool is still a list of cgroups.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A run cgroup's directory: kept open with the cgroup, or opened for this start.
pub enum CgroupDir<'a> {
    Kept(std::os::fd::BorrowedFd<'a>),
    Opened(File),
}

impl std::os::fd::AsFd for CgroupDir<'_> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            CgroupDir::Kept(fd) => *fd,
            CgroupDir::Opened(file) => file.as_fd(),
        }
    }
}

/// One run's cgroup.
#[derive(Debug)]
pub struct RunCgroup {
    path: PathBuf,
    /// Open files of a cgroup that goes back to `pool` at the run's end.
    kept: Option<Kept>,
    /// `usage_usec` when this run started (0 for a new cgroup).
    cpu_us_before: Option<u64>,
    pool: Option<IdlePool>,
    /// Whether `cgroup.kill` was written. Such a cgroup is not reused: this kernel (6.18)
    /// compares a cgroup's count of kills with the parent's when a child is made into it
    /// by `CLONE_INTO_CGROUP`, and kills every child of a cgroup killed once.
    killed: std::sync::atomic::AtomicBool,
    /// Seen with no process left: it stays so (only the worker puts processes in, at
    /// the run's start), so the end does not read `cgroup.events` again.
    emptied: std::sync::atomic::AtomicBool,
}

/// The start of `file`'s text, read again from its beginning (no new open).
fn read_from_start(file: &File) -> Option<String> {
    let mut buffer = [0u8; 1024];
    let n = file.read_at(&mut buffer, 0).ok()?;
    Some(String::from_utf8_lossy(&buffer[..n]).into_owned())
}

fn usage_usec(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
}

impl RunCgroup {
    fn removed_at_end(path: PathBuf) -> RunCgroup {
        RunCgroup {
            path,
            kept: None,
            cpu_us_before: Some(0),
            pool: None,
            killed: Default::default(),
            emptied: Default::default(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup's directory, open read-only: the run's first process is made in it (or
    /// joins it between fork and exec), so it is inside before any of its code runs.
    pub fn dir(&self) -> io::Result<CgroupDir<'_>> {
        use std::os::fd::AsFd;
        use std::os::unix::fs::OpenOptionsExt;
        if let Some(kept) = &self.kept {
            return Ok(CgroupDir::Kept(kept.dir.as_fd()));
        }
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(&self.path)
            .map(CgroupDir::Opened)
    }

    /// The processes in the cgroup now.
    pub fn pids(&self) -> Vec<i32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Every process in the cgroup gets SIGKILL, whatever session or parent it has.
    pub fn kill(&self) {
        self.killed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = write(&self.path.join("cgroup.kill"), "1") {
            tracing::warn!(cgroup = %self.path.display(), error = %e, "cgroup.kill failed");
        }
    }

    /// Whether a process is in the cgroup; `None` if that cannot be read.
    fn populated(&self) -> Option<bool> {
        use std::sync::atomic::Ordering::Relaxed;
        if self.emptied.load(Relaxed) {
            return Some(false);
        }
        let events = match &self.kept {
            Some(kept) => read_from_start(&kept.events),
            None => std::fs::read_to_string(self.path.join("cgroup.events")).ok(),
        }?;
        let populated = !events.lines().any(|l| l == "populated 0");
        self.emptied.store(!populated, Relaxed);
        Some(populated)
    }

    /// Empty, or gone.
    pub fn is_empty(&self) -> bool {
        self.populated() != Some(true)
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

    /// What the run used (for a reused cgroup, since the run started), and its total
    /// CPU so far.
    fn used(&self) -> (Usage, Option<u64>) {
        let (stat, peak) = match &self.kept {
            Some(kept) => (
                kept.cpu_stat.as_ref().and_then(read_from_start),
                kept.memory_peak.as_ref().and_then(read_from_start),
            ),
            None => (
                std::fs::read_to_string(self.path.join("cpu.stat")).ok(),
                std::fs::read_to_string(self.path.join("memory.peak")).ok(),
            ),
        };
        let cpu_total = stat.as_deref().and_then(usage_usec);
        let usage = Usage {
            cpu_us: cpu_total
                .zip(self.cpu_us_before)
                .map(|(total, before)| total.saturating_sub(before)),
            peak_memory_bytes: peak.and_then(|v| v.trim().parse().ok()),
        };
        (usage, cpu_total)
    }

    /// What the run used so far (for a reused cgroup, since the run started).
    pub fn usage(&self) -> Usage {
        self.used().0
    }

    /// At the run's end, with its processes gone: what it used; then the cgroup goes back
    /// to the pool it came from (its memory peak counted again from now), or is removed.
    pub fn end(self) -> Usage {
        let (usage, cpu_total) = self.used();
        // Kept only if surely empty, and never killed (see `killed`).
        let reusable = self.pool.is_some()
            && !self.killed.load(std::sync::atomic::Ordering::Relaxed)
            && self.populated() == Some(false);
        let RunCgroup {
            path, kept, pool, ..
        } = self;
        if let (Some(kept), Some(pool), true) = (kept, pool, reusable) {
            let peak_reset = kept
                .memory_peak
                .as_ref()
                .is_none_or(|peak| peak.write_at(b"reset\n", 0).is_ok());
            if peak_reset {
                lock(&pool).push(Idle {
                    path,
                    files: kept,
                    cpu_us: cpu_total,
                });
                return usage;
            }
        }
        remove_cgroup(&path);
        usage
    }

    /// Removes the (empty) cgroup.
    pub fn remove(&self) {
        remove_cgroup(&self.path);
    }
}

/// Removes an empty cgroup's directory.
fn remove_cgroup(path: &Path) {
    for _ in 0..50 {
        match std::fs::remove_dir(path) {
            Ok(()) => return,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            // Busy for a moment after its last process exits.
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
    tracing::warn!(cgroup = %path.display(), "cannot remove a run's cgroup");
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

    /// A run without limits takes the empty cgroup an earlier one left (no cgroup made or
    /// removed a run), and its CPU is counted from its own start, not the cgroup's.
    #[test]
    fn a_cgroup_without_limits_is_reused_and_counts_each_run_from_its_start() {
        let home = std::env::temp_dir().join(format!("jobcast-reuse-{}", std::process::id()));
        let Containment::Cgroups(cgroups) = Containment::detect("reuse-test", &home) else {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: no cgroups for this process here"
            );
            return;
        };
        let run_in = |cgroup: &RunCgroup, script: &str| {
            use std::os::fd::AsFd;
            let dir = cgroup.dir().unwrap();
            let procs = crate::spawn::open_procs(dir.as_fd()).unwrap();
            let mut command = std::process::Command::new("sh");
            command.args(["-c", script]);
            crate::process::join_cgroup_before_exec(&mut command, &procs);
            // Held until the child is waited for: the orphan reaper of a test running
            // beside this one would otherwise take its exit status.
            let _own = crate::process::lock_children();
            assert!(command.status().unwrap().success());
        };
        let first = cgroups.for_run("first", None, None).unwrap();
        let slot = first.path.clone();
        assert!(slot
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("slot-"));
        run_in(&first, "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done");
        let busy = first.end().cpu_us.expect("cpu.stat is read");
        assert!(slot.exists(), "an empty cgroup is kept for the next run");

        let second = cgroups.for_run("second", None, None).unwrap();
        assert_eq!(second.path, slot, "the kept cgroup is taken again");
        run_in(&second, "true");
        let short = second.end().cpu_us.expect("cpu.stat is read");
        assert!(
            short > 0 && short < busy / 2,
            "the second run's CPU ({short} µs) counts the first's ({busy} µs), or was not read again"
        );

        // Killed once, a cgroup is not taken again (see `RunCgroup::killed`).
        let third = cgroups.for_run("third", None, None).unwrap();
        assert_eq!(third.path, slot);
        third.kill();
        third.end();
        assert!(!slot.exists(), "a killed cgroup is removed");
        let fourth = cgroups.for_run("fourth", None, None).unwrap();
        assert_ne!(fourth.path, slot);
        run_in(&fourth, "true");
        let fourth_slot = fourth.path.clone();
        fourth.end();

        // One that still holds a process is not taken again either.
        let fifth = cgroups.for_run("fifth", None, None).unwrap();
        assert_eq!(fifth.path, fourth_slot);
        run_in(&fifth, "sleep 30 >/dev/null 2>&1 &");
        fifth.end();
        let sixth = cgroups.for_run("sixth", None, None).unwrap();
        assert_ne!(
            sixth.path, fourth_slot,
            "a cgroup with a process left was kept"
        );
        let left = RunCgroup::removed_at_end(fourth_slot.clone());
        left.kill();
        assert!(left.wait_empty(Duration::from_secs(10)));
        left.remove();
        let sixth_slot = sixth.path.clone();
        sixth.end();

        cgroups.remove_dir();
        assert!(
            !fourth_slot.exists() && !sixth_slot.exists() && !cgroups.dir.exists(),
            "the kept cgroups go with the worker"
        );
    }
}
