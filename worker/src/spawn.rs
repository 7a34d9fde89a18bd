//! Starting a run's program without copying the worker (Linux).
//!
//! The standard library starts a program with `posix_spawn` (no copy of the parent's
//! memory) unless the command needs a step of its own between fork and exec; then it
//! `fork`s the whole worker. A run in a cgroup needs one (it joins its cgroup before its
//! program runs, or a fast script could fork out of it first), and that fork copied the
//! worker's page tables, then faulted on every page either side wrote: the worker spent
//! 800-1,000 µs of CPU a run instead of 360 (docs/BENCHMARKS.md "Where a shell run's
//! time goes").
//!
//! So the worker starts programs as `posix_spawn` does inside glibc: `clone` with
//! `CLONE_VM | CLONE_VFORK` (the child borrows the worker's memory on a stack of its own
//! until it calls `execve`, and the calling thread waits until then), with the steps a
//! run needs in the child: join the cgroup, a process group of its own, default signal
//! handlers, the output pipe, the working directory. `CLONE_PIDFD` gives a descriptor
//! that becomes readable when the child exits, which tokio waits on.
//!
//! Everything the child uses is prepared before the clone: the child only makes system
//! calls (no allocation, no lock, no unwinding), as required of a child that shares its
//! parent's memory.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The child's own stack, while it borrows the worker's memory: it makes a handful of
/// system calls and needs little.
const CHILD_STACK: usize = 64 << 10;

/// What to start.
pub struct Launch<'a> {
    /// A path, or a name looked up in the child's `PATH`.
    pub program: &'a OsStr,
    /// The arguments after the program's name.
    pub args: &'a [OsString],
    /// Variables set on top of this process's environment, in order (a later one wins).
    pub env: &'a [(OsString, OsString)],
    pub workdir: Option<&'a Path>,
    /// Where the program's standard output and error go (stdin is `/dev/null`).
    pub output: BorrowedFd<'a>,
    /// A cgroup's `cgroup.procs`, opened for writing: the child joins it first.
    pub cgroup_procs: Option<BorrowedFd<'a>>,
}

/// Signals are numbered below this (Linux); sigaction refuses the ones glibc keeps.
const NSIG: libc::c_int = 65;

/// Which step failed in the child.
const STEP_NONE: i32 = 0;
const STEP_CGROUP: i32 = 1;
const STEP_GROUP: i32 = 2;
const STEP_FDS: i32 = 3;
const STEP_WORKDIR: i32 = 4;
const STEP_EXEC: i32 = 5;

/// What the child reads (prepared by the parent) and writes (its failure), shared
/// through the memory it borrows.
#[repr(C)]
struct ChildPlan {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    workdir: *const libc::c_char,
    stdin: RawFd,
    output: RawFd,
    cgroup_procs: RawFd,
    /// The calling thread's signal mask before every signal was blocked for the clone.
    mask: libc::sigset_t,
    step: AtomicI32,
    errno: AtomicI32,
}

/// Runs in the child, on its own stack, in the worker's memory: system calls only.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildPlan` the parent keeps alive until `clone` returns,
    // which with CLONE_VFORK is after this function has called execve or _exit.
    let plan = unsafe { &*(arg as *const ChildPlan) };
    // SAFETY: each call below is a system call on values the parent prepared.
    unsafe {
        if plan.cgroup_procs >= 0 && libc::write(plan.cgroup_procs, b"0".as_ptr().cast(), 1) != 1 {
            fail(plan, STEP_CGROUP);
        }
        if libc::setpgid(0, 0) != 0 {
            fail(plan, STEP_GROUP);
        }
        // A handler of the worker's must not run here (it would run on the worker's
        // memory): back to the defaults before signals are unblocked. SIGPIPE too, which
        // Rust programs ignore and their children should not.
        for signal in 1..NSIG {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut old) != 0 {
                continue;
            }
            let handled = old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN;
            if handled || signal == libc::SIGPIPE {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &plan.mask, std::ptr::null_mut());
        // The sources are all above 2 (see `above_stdio`), so no dup2 clobbers another's.
        if libc::dup2(plan.stdin, 0) < 0
            || libc::dup2(plan.output, 1) < 0
            || libc::dup2(plan.output, 2) < 0
        {
            fail(plan, STEP_FDS);
        }
        if !plan.workdir.is_null() && libc::chdir(plan.workdir) != 0 {
            fail(plan, STEP_WORKDIR);
        }
        libc::execve(plan.path, plan.argv, plan.envp);
    }
    fail(plan, STEP_EXEC)
}

/// Records in the plan which step failed and why, and ends the child.
fn fail(plan: &ChildPlan, step: i32) -> ! {
    // SAFETY: errno is this thread's (the parent's thread-local storage, which the parent
    // does not touch until the child is gone); _exit never returns.
    unsafe {
        plan.errno
            .store(*libc::__errno_location(), Ordering::Relaxed);
        plan.step.store(step, Ordering::Relaxed);
        libc::_exit(127)
    }
}

/// Whether this kernel gives pidfds at clone (Linux 5.2; readable at exit from 5.3):
/// learnt at the first start, which falls back to the standard library when not.
static UNSUPPORTED: AtomicBool = AtomicBool::new(false);

pub fn supported() -> bool {
    !UNSUPPORTED.load(Ordering::Relaxed)
}

/// Starts `launch`; `Ok(None)` when this kernel cannot (then use the standard library).
pub fn launch(launch: &Launch<'_>) -> io::Result<Option<ChildProcess>> {
    if !supported() {
        return Ok(None);
    }
    let env = environment(launch.env);
    let path = resolve(launch.program, &env)?;
    let path = c_string(path.into_os_string())?;
    let mut argv = vec![c_string(launch.program.to_os_string())?];
    for arg in launch.args {
        argv.push(c_string(arg.clone())?);
    }
    let envp = env
        .into_iter()
        .map(|(mut key, value)| {
            key.push("=");
            key.push(value);
            c_string(key)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let workdir = launch
        .workdir
        .map(|dir| c_string(dir.as_os_str().to_os_string()))
        .transpose()?;
    let argv_ptrs = null_terminated(&argv);
    let envp_ptrs = null_terminated(&envp);
    let stdin = above_stdio(std::fs::File::open("/dev/null")?.into())?;
    let output = above_stdio(launch.output.try_clone_to_owned()?)?;
    let cgroup_procs = match launch.cgroup_procs {
        Some(fd) => Some(above_stdio(fd.try_clone_to_owned()?)?),
        None => None,
    };
    let mut plan = ChildPlan {
        path: path.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        workdir: workdir.as_ref().map_or(std::ptr::null(), |w| w.as_ptr()),
        stdin: stdin.as_raw_fd(),
        output: output.as_raw_fd(),
        cgroup_procs: cgroup_procs.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
        // SAFETY: an all-zero sigset_t is a valid (empty) set; it is filled below.
        mask: unsafe { std::mem::zeroed() },
        step: AtomicI32::new(STEP_NONE),
        errno: AtomicI32::new(0),
    };
    let mut stack: Vec<std::mem::MaybeUninit<u8>> = Vec::with_capacity(CHILD_STACK);
    // The stack grows down from its end, 16-byte aligned.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    let mut pidfd: libc::c_int = -1;
    // SAFETY: every signal is blocked around the clone (restored at once after), so no
    // handler of the worker's runs in the child before it resets them; `plan`, the
    // strings it points into and the stack outlive the child's use of them (CLONE_VFORK:
    // clone returns once the child has called execve or exited).
    let (pid, clone_errno) = unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut plan.mask);
        let pid = libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            &mut plan as *mut ChildPlan as *mut libc::c_void,
            &mut pidfd as *mut libc::c_int,
        );
        let errno = *libc::__errno_location();
        libc::pthread_sigmask(libc::SIG_SETMASK, &plan.mask, std::ptr::null_mut());
        (pid, errno)
    };
    drop(stack);
    if pid < 0 {
        if clone_errno == libc::EINVAL || clone_errno == libc::ENOSYS {
            tracing::info!("this kernel has no pidfds: runs start by fork from now on");
            UNSUPPORTED.store(true, Ordering::Relaxed);
            return Ok(None);
        }
        return Err(io::Error::from_raw_os_error(clone_errno));
    }
    // SAFETY: CLONE_PIDFD stored a new descriptor, owned by nobody else.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let step = plan.step.load(Ordering::Relaxed);
    if step != STEP_NONE {
        let errno = plan.errno.load(Ordering::Relaxed);
        let mut status = 0;
        // SAFETY: the child has exited (CLONE_VFORK), so this reaps it at once.
        unsafe {
            libc::waitpid(pid, &mut status, 0);
        }
        let error = io::Error::from_raw_os_error(errno);
        let what = match step {
            STEP_EXEC => return Err(error),
            STEP_CGROUP => "join the run's cgroup",
            STEP_GROUP => "make a process group",
            STEP_WORKDIR => "enter the working directory",
            _ => "set up the standard streams",
        };
        return Err(io::Error::new(
            error.kind(),
            format!("cannot {what}: {error}"),
        ));
    }
    // SAFETY: the OwnedFd is moved in, so the descriptor stays open (and the same) for
    // the AsyncFd's whole life.
    let pidfd = match unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) } {
        Ok(pidfd) => pidfd,
        Err(error) => {
            // Nobody could wait for it: it must not run unwatched.
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            return Err(error.into_parts().1);
        }
    };
    Ok(Some(ChildProcess {
        pid,
        pidfd,
        status: None,
    }))
}

/// This process's environment with `overrides` applied, in a stable order. The worker's
/// own environment is read once: it does not change while the worker runs.
fn environment(overrides: &[(OsString, OsString)]) -> Vec<(OsString, OsString)> {
    static OWN: std::sync::OnceLock<std::collections::BTreeMap<OsString, OsString>> =
        std::sync::OnceLock::new();
    let mut env = OWN.get_or_init(|| std::env::vars_os().collect()).clone();
    for (key, value) in overrides {
        env.insert(key.clone(), value.clone());
    }
    env.into_iter().collect()
}

/// The file `execve` is given: `program` itself when it names a path, else the first
/// executable of that name in the child's `PATH` (as the standard library looks it up).
fn resolve(program: &OsStr, env: &[(OsString, OsString)]) -> io::Result<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let path = env
        .iter()
        .find(|(key, _)| key == "PATH")
        .map(|(_, value)| value.clone())
        .unwrap_or_else(|| OsString::from("/bin:/usr/bin"));
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if is_executable(&candidate) {
            return Ok(candidate);
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENOENT))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn c_string(value: OsString) -> io::Result<CString> {
    CString::new(value.into_vec()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "nul byte found in provided data",
        )
    })
}

fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// `fd`, moved above the standard streams if it is one of them (a worker started with
/// a standard stream closed gets its first files there), close-on-exec.
fn above_stdio(fd: OwnedFd) -> io::Result<OwnedFd> {
    if fd.as_raw_fd() > 2 {
        return Ok(fd);
    }
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor (>= 3), owned by the OwnedFd.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 3) };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor from fcntl.
    Ok(unsafe { OwnedFd::from_raw_fd(moved) })
}

/// A started program, waited for through its pidfd.
pub struct ChildProcess {
    pid: i32,
    pidfd: AsyncFd<OwnedFd>,
    status: Option<ExitStatus>,
}

impl ChildProcess {
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Waits for the program to exit, and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        loop {
            let mut ready = self.pidfd.readable().await?;
            let mut status = 0;
            // SAFETY: waitpid on our own child, which nothing else reaps (the orphan
            // reaper leaves the worker's own children alone).
            let rc = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            if rc == self.pid {
                let status = ExitStatus::from_raw(status);
                self.status = Some(status);
                return Ok(status);
            }
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            ready.clear_ready();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    struct Started {
        child: ChildProcess,
        output: std::io::PipeReader,
    }

    fn start(
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        workdir: Option<&Path>,
    ) -> io::Result<Started> {
        let (output, writer) = std::io::pipe()?;
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let env: Vec<(OsString, OsString)> =
            env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        let writer: OwnedFd = writer.into();
        let child = launch(&Launch {
            program: OsStr::new(program),
            args: &args,
            env: &env,
            workdir,
            output: writer.as_fd_borrowed(),
            cgroup_procs: None,
        })?
        .expect("this kernel has pidfds");
        Ok(Started { child, output })
    }

    trait Borrowed {
        fn as_fd_borrowed(&self) -> BorrowedFd<'_>;
    }

    impl Borrowed for OwnedFd {
        fn as_fd_borrowed(&self) -> BorrowedFd<'_> {
            use std::os::fd::AsFd;
            self.as_fd()
        }
    }

    async fn finish(mut started: Started) -> (ExitStatus, String) {
        let status = started.child.wait().await.unwrap();
        let mut text = String::new();
        started.output.read_to_string(&mut text).unwrap();
        (status, text)
    }

    #[tokio::test]
    async fn a_program_runs_with_its_arguments_environment_and_directory() {
        let dir = tempfile::tempdir().unwrap();
        let started = start(
            "sh",
            &[
                "-c",
                "echo \"$1 $GREETING $(pwd)\"; echo oops >&2; exit 7",
                "sh",
                "hello",
            ],
            &[("GREETING", "world")],
            Some(dir.path()),
        )
        .unwrap();
        let (status, text) = finish(started).await;
        assert_eq!(status.code(), Some(7));
        let dir = dir.path().canonicalize().unwrap();
        assert_eq!(text, format!("hello world {}\noops\n", dir.display()));
    }

    #[tokio::test]
    async fn the_child_leads_its_own_process_group_reads_nothing_and_hears_sigpipe() {
        // The test harness, like the worker, ignores SIGPIPE: the child must not.
        let started = start(
            "sh",
            &["-c", "cut -d' ' -f5 /proc/$$/stat; echo $$; cat; grep -E '^Sig(Ign|Blk)' /proc/$$/status"],
            &[],
            None,
        )
        .unwrap();
        let pid = started.child.id().to_string();
        let (status, text) =
            tokio::time::timeout(std::time::Duration::from_secs(10), finish(started))
                .await
                .expect("the child read a stdin that never ends");
        assert!(status.success(), "{status:?} {text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..2], [pid.as_str(), pid.as_str()], "{text}");
        let mask = |name: &str| {
            let line = lines.iter().find(|l| l.starts_with(name)).expect(name);
            u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
        };
        assert_eq!(mask("SigIgn:") & (1 << (libc::SIGPIPE - 1)), 0, "{text}");
        assert_eq!(mask("SigBlk:"), 0, "{text}");
    }

    #[tokio::test]
    async fn a_signal_ends_the_child_and_is_reported_as_such() {
        let mut started = start("sleep", &["30"], &[], None).unwrap();
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(started.child.id() as i32, libc::SIGKILL);
        }
        let status = started.child.wait().await.unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        // Waiting again answers the same.
        assert_eq!(
            started.child.wait().await.unwrap().signal(),
            Some(libc::SIGKILL)
        );
    }

    #[tokio::test]
    async fn a_program_that_cannot_start_says_why_and_leaves_no_child() {
        let missing = start("no-such-program-anywhere", &[], &[], None)
            .err()
            .unwrap();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound, "{missing}");
        let not_executable = tempfile::NamedTempFile::new().unwrap();
        let error = start(not_executable.path().to_str().unwrap(), &[], &[], None)
            .err()
            .unwrap();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied, "{error}");
        let error = start("sh", &["-c", "true"], &[], Some(Path::new("/no/such/dir")))
            .err()
            .unwrap();
        assert!(error.to_string().contains("working directory"), "{error}");
        let nul = start("sh", &["-c", "true"], &[("BAD", "a\0b")], None)
            .err()
            .unwrap();
        assert_eq!(nul.kind(), io::ErrorKind::InvalidInput);
    }

    #[tokio::test]
    async fn the_path_of_the_child_environment_finds_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("only-here");
        std::fs::write(&program, "#!/bin/sh\necho found\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = format!("{}:/bin:/usr/bin", dir.path().display());
        let started = start("only-here", &[], &[("PATH", &path)], None).unwrap();
        let (status, text) = finish(started).await;
        assert!(status.success());
        assert_eq!(text, "found\n");
    }
}
