//! The containment sequence, in the order of `docs/containment.md`.
//!
//! [`contain`] runs in the child right after `clone3` created it in new
//! user, mount, pid, net, ipc and uts namespaces (step 1). It reads like the
//! list in the docs, one call per step; each step lives in its own module.
//! Every kernel call goes through [`Kernel`]: [`LinuxKernel`] here, a
//! recording fake in the tests (`jail_tests.rs`), which check the order.
//! Any failure is reported to the parent through the error pipe as
//! `(step, errno)` and the child `_exit`s: it never returns, never panics
//! into the parent's code, and never runs user code half-contained.

use crate::kernel::{Kernel, LinuxKernel};
use crate::plan::SandboxPlan;
use crate::{identity, mounts, sys};
use std::io;
use std::os::fd::RawFd;

/// The child's ends of the channels the parent made.
pub struct ChildFds {
    /// Closed (or written) by the parent once maps and cgroup are in place.
    pub sync_read: RawFd,
    /// Close-on-exec: EOF on the parent's side means `execve` succeeded.
    pub error_write: RawFd,
    pub channel: RawFd,
    pub stdout_write: RawFd,
    pub stderr_write: RawFd,
    pub dev_null: RawFd,
}

/// Fd numbers the runner finds its channels on.
pub const CHANNEL_FD: RawFd = 3;
const ERROR_FD: RawFd = 4;
/// Where fds are parked while being arranged: low enough for the smallest
/// `open_files` limit the policy allows (32), above every target.
const FIRST_FREE_FD: RawFd = 10;

/// How the sequence ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// `execve` the interpreter (a fresh process per sandbox).
    Exec,
    /// Return into the already-warm interpreter (a fork of the zygote);
    /// closing the error pipe tells the supervisor the sandbox is sealed.
    Return,
}

/// When each step of [`contain_steps`] ended (`CLOCK_MONOTONIC`, ns), after
/// a first mark `start` taken as the child begins. Fixed capacity: nothing
/// is allocated between the fork and the end of the sequence.
#[derive(Debug, Clone, Copy)]
pub struct StepClock {
    marks: [(&'static str, u64); MAX_MARKS],
    len: usize,
}

/// `start`, `fork` and every containment step but `execve`.
const MAX_MARKS: usize = CONTAINMENT_STEPS.len() + 1;

impl StepClock {
    /// `start` is now.
    fn started() -> Self {
        Self::starting_at(sys::monotonic_ns())
    }

    /// For a fork: `start` is when the parent was about to fork (a value
    /// the child finds in its copy of the parent's memory), and a first
    /// step `fork` ends now, as the child begins.
    fn forked_at(before_fork_ns: u64) -> Self {
        let mut clock = Self::starting_at(before_fork_ns);
        clock.mark("fork");
        clock
    }

    fn starting_at(start_ns: u64) -> Self {
        let mut marks = [("", 0); MAX_MARKS];
        marks[0] = ("start", start_ns);
        Self { marks, len: 1 }
    }

    fn mark(&mut self, name: &'static str) {
        if let Some(slot) = self.marks.get_mut(self.len) {
            *slot = (name, sys::monotonic_ns());
            self.len += 1;
        }
    }

    /// `(step, monotonic ns when it ended)`, in order.
    pub fn marks(&self) -> &[(&'static str, u64)] {
        &self.marks[..self.len]
    }
}

/// Runs steps 2–8 and execs the runner. Only returns by `_exit`.
pub fn contain(plan: &SandboxPlan<'_>, fds: &ChildFds) -> ! {
    let mut clock = StepClock::started();
    match contain_steps(&LinuxKernel, plan, fds, Finish::Exec, &mut clock) {
        Ok(()) => sys::exit_now(127),
        Err(failure) => report_and_exit(fds, failure),
    }
}

/// Runs steps 2–8 and returns, sealed, into the calling (zygote) process,
/// with when each step ended (`before_fork_ns`: the parent's clock just
/// before `clone3`). On failure it reports the step and `_exit`s: a
/// half-contained fork never returns to Python.
pub fn contain_in_place(plan: &SandboxPlan<'_>, fds: &ChildFds, before_fork_ns: u64) -> StepClock {
    let mut clock = StepClock::forked_at(before_fork_ns);
    if let Err(failure) = contain_steps(&LinuxKernel, plan, fds, Finish::Return, &mut clock) {
        report_and_exit(fds, failure)
    }
    clock
}

fn report_and_exit(fds: &ChildFds, (step, err): (&'static str, io::Error)) -> ! {
    let errno = err.raw_os_error().unwrap_or(0);
    let mut msg = errno.to_le_bytes().to_vec();
    msg.extend_from_slice(step.as_bytes());
    let fd = if fds_moved(step) {
        ERROR_FD
    } else {
        fds.error_write
    };
    let _ = sys::write_all(fd, &msg);
    sys::exit_now(127)
}

fn fds_moved(step: &str) -> bool {
    matches!(step, "landlock" | "seccomp" | "execve")
}

type StepResult<T> = Result<T, (&'static str, io::Error)>;

/// Every step `contain_steps` marks, in order: the names an error and the
/// step clock report (`loopback` only in egress sandboxes; `execve` ends a
/// fresh process's sequence and is never marked). `kiln bench` describes
/// each; the tests check the sequence against it.
pub const CONTAINMENT_STEPS: [&str; 14] = [
    "wait-for-parent",
    "signals",
    "cgroup-namespace",
    "hostname",
    "loopback",
    "sandbox-ids",
    "make-private",
    "build-root",
    "drop-privileges",
    "harden",
    "fds",
    "landlock",
    "seccomp",
    "execve",
];

fn contain_steps<K: Kernel>(
    k: &K,
    plan: &SandboxPlan,
    fds: &ChildFds,
    finish: Finish,
    clock: &mut StepClock,
) -> StepResult<()> {
    let mut step = |name: &'static str, r: io::Result<()>| -> StepResult<()> {
        r.map_err(|e| (name, e))?;
        clock.mark(name);
        Ok(())
    };
    // Step 1 happened in clone3. Wait until the parent has written the id
    // maps and (v1) placed us in the sandbox cgroup.
    step("wait-for-parent", wait_for_parent(k, fds.sync_read))?;
    // Nothing inherited: default dispositions, nothing blocked (a zygote's
    // handlers and an ignored SIGPIPE must not reach user code).
    step("signals", k.reset_signals())?;
    // Step 2: cgroup membership is set; only now a cgroup namespace, so
    // /proc/self/cgroup shows "/".
    step("cgroup-namespace", k.unshare(libc::CLONE_NEWCGROUP))?;
    step("hostname", k.sethostname(b"kiln"))?;
    // Egress only: `lo` up while the namespace's CAP_NET_ADMIN is still
    // held; the namespace keeps no other interface (docs/egress.md).
    if plan.egress {
        step("loopback", k.loopback_up())?;
    }
    step("sandbox-ids", identity::assume_sandbox_ids(k, plan.uid))?;
    // Step 3 and 4.
    step("make-private", mounts::make_private(k))?;
    step("build-root", mounts::build_root(k, &plan.root))?;
    // Step 5 and 6.
    step("drop-privileges", identity::drop_privileges(k, plan.uid))?;
    step("harden", identity::harden(k, &rlimits(plan)))?;
    // The runner's fds: 0 = /dev/null, 1/2 = output pipes, 3 = channel,
    // 4 = the error pipe (close-on-exec); everything else closed.
    step("fds", arrange_fds(k, fds))?;
    // Step 7.
    step(
        "landlock",
        k.landlock_restrict(
            &plan.landlock_read,
            &plan.landlock_write,
            &plan.landlock_dev,
            plan.landlock_tcp_port,
        )
        .map(drop)
        .map_err(io::Error::other),
    )?;
    // Step 8: seccomp last, then the runner.
    step("seccomp", k.seccomp_install(plan.seccomp))?;
    match finish {
        Finish::Exec => Err((
            "execve",
            k.execve(&plan.interpreter, &plan.argv_ptrs, &plan.envp_ptrs),
        )),
        Finish::Return => {
            k.close(ERROR_FD);
            Ok(())
        }
    }
}

fn wait_for_parent(k: &impl Kernel, fd: RawFd) -> io::Result<()> {
    let mut byte = [0u8; 1];
    match k.read(fd, &mut byte)? {
        1 => {
            k.close(fd);
            Ok(())
        }
        _ => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "parent went away",
        )),
    }
}

fn rlimits(plan: &SandboxPlan) -> [(libc::__rlimit_resource_t, u64); 4] {
    let l = &plan.limits;
    [
        (libc::RLIMIT_CORE, 0),
        (libc::RLIMIT_NOFILE, l.open_files),
        (libc::RLIMIT_FSIZE, l.file_size_mib << 20),
        // Per-uid, and every sandbox has its own uid: a second fence
        // behind the pids cgroup.
        (libc::RLIMIT_NPROC, l.pids),
    ]
}

fn arrange_fds(k: &impl Kernel, fds: &ChildFds) -> io::Result<()> {
    // Move everything out of the way first so the dup2s below cannot clobber
    // a source that happens to sit on a target number.
    let high = |fd| k.dup_above(fd, FIRST_FREE_FD);
    let (null, out, err, chan, errp) = (
        high(fds.dev_null)?,
        high(fds.stdout_write)?,
        high(fds.stderr_write)?,
        high(fds.channel)?,
        high(fds.error_write)?,
    );
    k.dup2(null, 0)?;
    k.dup2(out, 1)?;
    k.dup2(err, 2)?;
    k.dup2(chan, CHANNEL_FD)?;
    k.dup2(errp, ERROR_FD)?;
    for fd in [0, 1, 2, CHANNEL_FD] {
        k.clear_cloexec(fd)?;
    }
    // fd 4 keeps close-on-exec (dup2 clears it; set it back).
    k.set_cloexec(ERROR_FD)?;
    k.close_from(ERROR_FD + 1)
}

#[cfg(test)]
#[path = "jail_tests.rs"]
mod tests;
