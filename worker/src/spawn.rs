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
//! A run with a cgroup starts in it: on x86-64 `clone3` with `CLONE_INTO_CGROUP` (Linux
//! 5.7) puts the child there as it is made. Writing to the cgroup's `cgroup.procs` from
//! the child (the way elsewhere, and where `clone3` is refused) moves a live process, which
//! takes the kernel's cgroup-wide lock for writing: about 100 µs a start on the machine of
//! docs/BENCHMARKS.md ("A start straight into its cgroup").
//!
//! Everything the child uses is prepared before the clone: the child only makes system
//! calls (no allocation, no lock, no unwinding), as required of a child that shares its
//! parent's memory.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
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
    /// The directory of the cgroup the program starts in (opened read-only).
    pub cgroup: Option<BorrowedFd<'a>>,
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
    /// The cgroup's `cgroup.procs`, for a child that joins it itself (-1: none, or the
    /// child was made in the cgroup).
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
    launch_as(launch, into_cgroup::usable())
}

/// As [`launch`]; `try_clone3` false makes the child join its cgroup itself.
fn launch_as(launch: &Launch<'_>, try_clone3: bool) -> io::Result<Option<ChildProcess>> {
    if !supported() {
        return Ok(None);
    }
    let env = Environment::with(launch.env)?;
    let path = resolve(launch.program, env.get(OsStr::new("PATH")))?;
    let path = c_string(path.into_os_string())?;
    let mut argv = vec![c_string(launch.program.to_os_string())?];
    for arg in launch.args {
        argv.push(c_string(arg.clone())?);
    }
    let envp_ptrs = env.pointers();
    let workdir = launch
        .workdir
        .map(|dir| c_string(dir.as_os_str().to_os_string()))
        .transpose()?;
    let argv_ptrs = null_terminated(&argv);
    let stdin = dev_null()?;
    // Used as it is unless it is a standard stream itself (then dup2 would clobber it).
    let output_copy = match launch.output.as_raw_fd() {
        0..=2 => Some(above_stdio(launch.output.try_clone_to_owned()?)?),
        _ => None,
    };
    let output = output_copy.as_ref().map_or(launch.output, |fd| fd.as_fd());
    let mut plan = ChildPlan {
        path: path.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        workdir: workdir.as_ref().map_or(std::ptr::null(), |w| w.as_ptr()),
        stdin: stdin.as_raw_fd(),
        output: output.as_raw_fd(),
        cgroup_procs: -1,
        // SAFETY: an all-zero sigset_t is a valid (empty) set; it is filled at the clone.
        mask: unsafe { std::mem::zeroed() },
        step: AtomicI32::new(STEP_NONE),
        errno: AtomicI32::new(0),
    };
    let mut stack: Vec<std::mem::MaybeUninit<u8>> = Vec::with_capacity(CHILD_STACK);
    let mut pidfd: libc::c_int = -1;
    let stack_base = stack.as_mut_ptr();
    let made_in_cgroup = launch
        .cgroup
        .filter(|_| try_clone3)
        .map(|cgroup| clone_child(&mut plan, stack_base, &mut pidfd, Some(cgroup.as_raw_fd())));
    // Kept open until the child has joined (CLONE_VFORK: until clone returns).
    let mut cgroup_procs = None;
    let (pid, clone_errno) = match made_in_cgroup {
        Some((pid, errno)) if pid >= 0 => (pid, errno),
        tried => {
            if let Some(cgroup) = launch.cgroup {
                let procs = above_stdio(open_procs(cgroup)?)?;
                plan.cgroup_procs = procs.as_raw_fd();
                cgroup_procs = Some(procs);
            }
            let made = clone_child(&mut plan, stack_base, &mut pidfd, None);
            if let (Some((_, errno)), true) = (tried, made.0 >= 0) {
                // The older way works where clone3 did not: this kernel (or a filter in
                // front of it) refuses clone3 itself, and it is not tried again.
                into_cgroup::refused(errno);
            }
            made
        }
    };
    drop(cgroup_procs);
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

/// Makes the child (CLONE_VM | CLONE_VFORK: it returns once the child has called execve
/// or exited) on the `CHILD_STACK` bytes at `stack`, in `cgroup` when given; returns its
/// pid (or -1) and the errno.
fn clone_child(
    plan: &mut ChildPlan,
    stack: *mut std::mem::MaybeUninit<u8>,
    pidfd: &mut libc::c_int,
    cgroup: Option<RawFd>,
) -> (libc::pid_t, i32) {
    // SAFETY: every signal is blocked around the clone (restored at once after), so no
    // handler of the worker's runs in the child before it resets them; `plan`, the
    // strings it points into and the stack outlive the child's use of them (CLONE_VFORK:
    // clone returns once the child has called execve or exited).
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut plan.mask);
        let arg = plan as *mut ChildPlan as *mut libc::c_void;
        let (pid, errno) = match cgroup {
            Some(cgroup) => into_cgroup::clone(cgroup, stack, pidfd, arg),
            None => {
                // The stack grows down from its end, 16-byte aligned.
                let top = (stack as usize + CHILD_STACK) & !15;
                let pid = libc::clone(
                    child_main,
                    top as *mut libc::c_void,
                    libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
                    arg,
                    pidfd as *mut libc::c_int,
                );
                (pid, *libc::__errno_location())
            }
        };
        libc::pthread_sigmask(libc::SIG_SETMASK, &plan.mask, std::ptr::null_mut());
        (pid, errno)
    }
}

/// The cgroup's `cgroup.procs`, for a child that joins the cgroup itself.
pub fn open_procs(cgroup: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: openat on a directory descriptor we borrow and a constant name.
    let fd = unsafe {
        libc::openat(
            cgroup.as_raw_fd(),
            c"cgroup.procs".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(
            error.kind(),
            format!("cannot open the run's cgroup: {error}"),
        ));
    }
    // SAFETY: a fresh descriptor from openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `clone3` with `CLONE_INTO_CGROUP`: the child is made in the run's cgroup.
mod into_cgroup {
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Set once clone3 failed where the older way then worked.
    static REFUSED: AtomicBool = AtomicBool::new(!cfg!(target_arch = "x86_64"));

    pub fn usable() -> bool {
        !REFUSED.load(Ordering::Relaxed)
    }

    /// clone3 failed with `errno` where the older way then started the child: the failure
    /// was clone3's own (no such call, no CLONE_INTO_CGROUP, a filter), not the run's.
    pub fn refused(errno: i32) {
        if !REFUSED.swap(true, Ordering::Relaxed) {
            tracing::info!(
                error = %std::io::Error::from_raw_os_error(errno),
                "clone3 into a cgroup is refused here: each run joins its cgroup from the child, before exec"
            );
        }
    }

    /// `struct clone_args` of linux/sched.h, up to `cgroup` (its second version).
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
        set_tid: u64,
        set_tid_size: u64,
        cgroup: u64,
    }

    const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

    /// The child runs `super::child_main(arg)` on `stack`; returns its pid (or -1) and
    /// the errno. clone3 has no libc wrapper that runs a function on the new stack, so the
    /// child's first instructions are written here: it calls the function (which execs or
    /// exits) and, should it ever return, exits.
    ///
    /// # Safety
    /// As `libc::clone` with CLONE_VM | CLONE_VFORK: signals blocked, `arg` valid until
    /// this returns, the child making system calls only.
    #[cfg(target_arch = "x86_64")]
    pub unsafe fn clone(
        cgroup: std::os::fd::RawFd,
        stack: *mut std::mem::MaybeUninit<u8>,
        pidfd: &mut libc::c_int,
        arg: *mut libc::c_void,
    ) -> (libc::pid_t, i32) {
        let base = stack as u64;
        let aligned = (base + 15) & !15;
        let args = CloneArgs {
            flags: (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD) as u64
                | CLONE_INTO_CGROUP,
            pidfd: pidfd as *mut libc::c_int as u64,
            child_tid: 0,
            parent_tid: 0,
            exit_signal: libc::SIGCHLD as u64,
            stack: aligned,
            // The kernel starts the child at stack + stack_size: a 16-byte-aligned top.
            stack_size: (super::CHILD_STACK as u64 - (aligned - base)) & !15,
            tls: 0,
            set_tid: 0,
            set_tid_size: 0,
            cgroup: cgroup as u64,
        };
        let child: extern "C" fn(*mut libc::c_void) -> libc::c_int = super::child_main;
        let ret: i64;
        // SAFETY: the caller's contract. The parent comes back from `syscall` with its
        // registers as they were but rax, rcx and r11; the child comes back with rax 0 on
        // its own stack, where the call pushes the return address (the function then sees
        // the stack as the ABI says) and nothing of the parent's stack is touched.
        unsafe {
            std::arch::asm!(
                "syscall",
                "test rax, rax",
                "jnz 2f",
                "xor ebp, ebp",
                "mov rdi, r13",
                "call r12",
                "mov edi, eax",
                "mov eax, 231", // exit_group
                "syscall",
                "ud2",
                "2:",
                inlateout("rax") libc::SYS_clone3 => ret,
                in("rdi") &args as *const CloneArgs,
                in("rsi") std::mem::size_of::<CloneArgs>(),
                in("r12") child as usize,
                in("r13") arg,
                lateout("rcx") _,
                lateout("r11") _,
                options(nostack),
            );
        }
        if ret < 0 {
            (-1, -ret as i32)
        } else {
            (ret as libc::pid_t, 0)
        }
    }

    /// Elsewhere the child joins its cgroup itself ([`usable`] is false).
    #[cfg(not(target_arch = "x86_64"))]
    pub unsafe fn clone(
        _cgroup: std::os::fd::RawFd,
        _stack: *mut std::mem::MaybeUninit<u8>,
        _pidfd: &mut libc::c_int,
        _arg: *mut libc::c_void,
    ) -> (libc::pid_t, i32) {
        (-1, libc::ENOSYS)
    }
}

/// This process's environment (read once and made into `KEY=value` strings once: it does
/// not change while the worker runs) with `overrides` on top (a later one wins).
struct Environment<'a> {
    own: &'static [(OsString, CString)],
    overrides: std::collections::BTreeMap<&'a OsStr, (&'a OsStr, CString)>,
}

impl<'a> Environment<'a> {
    fn with(overrides: &'a [(OsString, OsString)]) -> io::Result<Environment<'a>> {
        static OWN: std::sync::OnceLock<Vec<(OsString, CString)>> = std::sync::OnceLock::new();
        let own = OWN.get_or_init(|| {
            std::env::vars_os()
                .filter_map(|(key, value)| Some((key.clone(), entry(&key, &value).ok()?)))
                .collect()
        });
        let mut set = std::collections::BTreeMap::new();
        for (key, value) in overrides {
            set.insert(key.as_os_str(), (value.as_os_str(), entry(key, value)?));
        }
        Ok(Environment {
            own,
            overrides: set,
        })
    }

    fn get(&self, key: &OsStr) -> Option<&OsStr> {
        match self.overrides.get(key) {
            Some((value, _)) => Some(value),
            None => self
                .own
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, entry)| OsStr::from_bytes(&entry.as_bytes()[key.len() + 1..])),
        }
    }

    /// `envp` for execve: null-terminated, valid while `self` is.
    fn pointers(&self) -> Vec<*const libc::c_char> {
        self.own
            .iter()
            .filter(|(key, _)| !self.overrides.contains_key(key.as_os_str()))
            .map(|(_, entry)| entry.as_ptr())
            .chain(self.overrides.values().map(|(_, entry)| entry.as_ptr()))
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    }
}

/// `KEY=value`, as execve takes it.
fn entry(key: &OsStr, value: &OsStr) -> io::Result<CString> {
    let mut text = key.to_os_string();
    text.push("=");
    text.push(value);
    c_string(text)
}

/// The file `execve` is given: `program` itself when it names a path, else the first
/// executable of that name in the child's `PATH` (as the standard library looks it up).
fn resolve(program: &OsStr, path: Option<&OsStr>) -> io::Result<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let path = path.unwrap_or(OsStr::new("/bin:/usr/bin"));
    for dir in std::env::split_paths(path) {
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

/// `/dev/null` for the children's standard input, opened once.
fn dev_null() -> io::Result<BorrowedFd<'static>> {
    static DEV_NULL: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();
    if DEV_NULL.get().is_none() {
        let opened = above_stdio(std::fs::File::open("/dev/null")?.into())?;
        // Another thread may have opened it first: then this copy is closed.
        let _ = DEV_NULL.set(opened);
    }
    match DEV_NULL.get() {
        Some(fd) => Ok(fd.as_fd()),
        None => Err(io::Error::other("/dev/null could not be kept open")),
    }
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
        start_in(program, args, env, workdir, None, true)
    }

    fn start_in(
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
        workdir: Option<&Path>,
        cgroup: Option<BorrowedFd<'_>>,
        try_clone3: bool,
    ) -> io::Result<Started> {
        let (output, writer) = std::io::pipe()?;
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let env: Vec<(OsString, OsString)> =
            env.iter().map(|(k, v)| (k.into(), v.into())).collect();
        let writer: OwnedFd = writer.into();
        // Listed as the worker lists its runs, so the orphan reaper of a test running
        // beside this one leaves it to be waited for here.
        let mut own = crate::process::lock_children();
        let child = launch_as(
            &Launch {
                program: OsStr::new(program),
                args: &args,
                env: &env,
                workdir,
                output: writer.as_fd_borrowed(),
                cgroup,
            },
            try_clone3,
        )?
        .expect("this kernel has pidfds");
        own.get_or_insert_with(Default::default).insert(child.pid);
        Ok(Started { child, output })
    }

    trait Borrowed {
        fn as_fd_borrowed(&self) -> BorrowedFd<'_>;
    }

    impl Borrowed for OwnedFd {
        fn as_fd_borrowed(&self) -> BorrowedFd<'_> {
            self.as_fd()
        }
    }

    async fn finish(mut started: Started) -> (ExitStatus, String) {
        let status = started.child.wait().await.unwrap();
        crate::process::forget_child(started.child.pid);
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
        // The test harness, like the worker, ignores SIGPIPE: the child must not. The masks
        // are read by the shell's own process (`exec`, which keeps them): a command it
        // forks could read them while dash blocks every signal around its fork (CI once
        // saw all blocked that way).
        let started = start(
            "sh",
            &["-c", "cut -d' ' -f5 /proc/$$/stat; echo $$; cat; exec grep -E '^Sig(Ign|Blk)' /proc/self/status"],
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

    /// A variable the worker has, set again for the run: the child has it once, with the
    /// run's value (the last of two settings); the worker's others are passed on.
    #[tokio::test]
    async fn a_variable_set_for_the_run_replaces_the_workers_own() {
        let own = std::env::vars_os().count();
        let started = start(
            "sh",
            &["-c", "echo \"$HOME\"; env | grep -c '^HOME='; env | wc -l"],
            &[("HOME", "/first"), ("HOME", "/elsewhere")],
            None,
        )
        .unwrap();
        let (status, text) = finish(started).await;
        assert!(status.success(), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..2], ["/elsewhere", "1"], "{text}");
        // sh adds a few of its own (PWD, SHLVL, _); none of the worker's is dropped.
        let seen: usize = lines[2].trim().parse().unwrap();
        assert!(seen >= own, "{seen} variables seen, the worker has {own}");
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

    /// Made in the cgroup by clone3, or joining it from the child: either way the
    /// program's first instruction already runs inside.
    #[tokio::test]
    async fn a_program_starts_inside_its_cgroup_either_way() {
        let home = tempfile::tempdir().unwrap();
        let id = format!("spawn-test-{}", std::process::id());
        let crate::cgroup::Containment::Cgroups(cgroups) =
            crate::cgroup::Containment::detect(&id, home.path())
        else {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: no cgroups for this process here"
            );
            return;
        };
        for (way, try_clone3) in [("clone3", true), ("a write from the child", false)] {
            let run = cgroups
                .for_run(way.split(' ').next().unwrap(), None, None)
                .unwrap();
            let dir = run.dir().unwrap();
            let started = start_in(
                "cat",
                &["/proc/self/cgroup"],
                &[],
                None,
                Some(dir.as_fd()),
                try_clone3,
            )
            .unwrap();
            let (status, text) = finish(started).await;
            assert!(status.success(), "{way}: {status:?} {text}");
            let own = crate::cgroup::own_v2_path(&text).unwrap_or_default();
            assert!(
                !own.is_empty() && run.path().ends_with(own.trim_start_matches('/')),
                "{way}: started in {own:?}, not in {}",
                run.path().display()
            );
            if try_clone3 && cfg!(target_arch = "x86_64") {
                // Not by the older way after clone3 failed.
                assert!(into_cgroup::usable(), "clone3 into a cgroup was given up");
            }
            run.remove();
        }
        cgroups.remove_dir();
    }
}
