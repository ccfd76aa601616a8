//! Parent side of sandbox creation: channels, `clone3` into every
//! namespace, id maps, cgroup membership, then wait for the child's
//! `execve` (or its report of the step that failed).

use crate::jail::{self, ChildFds};
use crate::plan::SandboxPlan;
use crate::sys::{self, CloneArgs, Forked, CLONE_INTO_CGROUP};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A running sandbox's handles, owned by the supervisor.
#[derive(Debug)]
pub struct Spawned {
    /// Host pid of the sandbox's PID 1.
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    pub channel: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Who can collect the exit status.
    pub reaper: Reaper,
}

/// Who the sandbox's PID 1 is a child of, and so who learns its exit status.
#[derive(Debug)]
pub enum Reaper {
    /// The supervisor itself forked it: `waitid` on the pidfd.
    Parent,
    /// Another process (the zygote) forked it and reports the status.
    Remote(std::sync::Arc<dyn RemoteReaper>),
    /// Not a host process of ours at all (a container run by an engine):
    /// `pidfd` is then an fd that turns readable when it has ended, and
    /// signals and the exit status go through this handle.
    Foreign(std::sync::Arc<dyn ForeignProcess>),
}

/// A sandbox PID 1 that kiln reaches only through someone else's API.
pub trait ForeignProcess: std::fmt::Debug + Send + Sync {
    /// Delivers `signal` to the sandbox's main process.
    fn signal(&self, signal: libc::c_int) -> io::Result<()>;
    /// The wait status once it ended (waiting for it when `block`).
    fn wait_status(&self, block: bool) -> io::Result<Option<libc::c_int>>;
}

/// A forking process that reports the exit status of the sandboxes it forked.
pub trait RemoteReaper: std::fmt::Debug + Send + Sync {
    /// The wait status of the sandbox whose host pid is `pid`, waiting for
    /// it when `block`; `None` if it has not exited yet.
    fn wait_status(&self, pid: libc::pid_t, block: bool) -> io::Result<Option<libc::c_int>>;
}

impl Spawned {
    /// The raw wait status of PID 1 once it exited (`None` while it runs).
    pub fn wait_status(&self, block: bool) -> io::Result<Option<libc::c_int>> {
        match &self.reaper {
            Reaper::Parent => sys::waitid_pidfd(self.pidfd.as_raw_fd(), block),
            Reaper::Remote(r) => r.wait_status(self.pid, block),
            Reaper::Foreign(f) => f.wait_status(block),
        }
    }

    /// Sends `signal` to PID 1 (through its pidfd, or its engine).
    pub fn signal(&self, signal: libc::c_int) -> io::Result<()> {
        match &self.reaper {
            Reaper::Foreign(f) => f.signal(signal),
            _ => sys::pidfd_send_signal(self.pidfd.as_raw_fd(), signal),
        }
    }
}

/// Makes sandbox processes: a fresh fork+exec per sandbox, or a fork of a
/// warm zygote. Everything after (supervision, teardown) is the same.
pub trait Spawner: Send + Sync {
    /// `fresh` or `zygote`, reported in results and benchmarks.
    fn kind(&self) -> &'static str;
    /// Starts one sandbox for `plan`, in the cgroup given by `cgroup_dir`
    /// (v2, `CLONE_INTO_CGROUP`) or joined through `join_cgroup` (v1).
    fn spawn(
        &self,
        plan: &SandboxPlan<'_>,
        cgroup_dir: Option<RawFd>,
        join_cgroup: &dyn Fn(libc::pid_t) -> io::Result<()>,
    ) -> Result<Spawned, SpawnError>;
    /// Stops anything the spawner keeps running (a zygote template) and
    /// removes its cgroup; later spawns fail. Nothing to do by default.
    fn shutdown(&self) {}
}

/// A fresh process per sandbox: `clone3` from the calling process, then
/// `execve` of the interpreter. The calling process must be single-threaded.
#[derive(Debug, Default)]
pub struct FreshSpawner;

impl Spawner for FreshSpawner {
    fn kind(&self) -> &'static str {
        "fresh"
    }

    fn spawn(
        &self,
        plan: &SandboxPlan<'_>,
        cgroup_dir: Option<RawFd>,
        join_cgroup: &dyn Fn(libc::pid_t) -> io::Result<()>,
    ) -> Result<Spawned, SpawnError> {
        spawn(plan, cgroup_dir, join_cgroup)
    }
}

/// Why the child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("cannot prepare sandbox channels: {0}")]
    Channels(#[source] io::Error),
    #[error("clone3 into new namespaces failed: {0}. Hint: the kernel must allow user namespaces (sysctl kernel.unprivileged_userns_clone / user.max_user_namespaces) and clone3 (Linux 5.7+); `kiln doctor` checks both")]
    Clone(#[source] io::Error),
    #[error("cannot write the user namespace id maps: {0}")]
    IdMap(#[source] io::Error),
    #[error("cannot move the sandbox into its cgroup: {0}")]
    Cgroup(#[source] io::Error),
    #[error("sandbox setup failed at step `{step}`: {source}")]
    Step {
        step: String,
        #[source]
        source: io::Error,
    },
}

const NAMESPACES: u64 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS) as u64;

pub(crate) fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by a successful pipe/socketpair/open and
    // nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub(crate) struct Channels {
    pub(crate) sync: (OwnedFd, OwnedFd),
    pub(crate) error: (OwnedFd, OwnedFd),
    pub(crate) stdout: (OwnedFd, OwnedFd),
    pub(crate) stderr: (OwnedFd, OwnedFd),
    pub(crate) channel: (OwnedFd, OwnedFd),
    pub(crate) dev_null: OwnedFd,
}

pub(crate) fn channels() -> io::Result<Channels> {
    let pair = |r: io::Result<(RawFd, RawFd)>| r.map(|(a, b)| (owned(a), owned(b)));
    Ok(Channels {
        sync: pair(sys::pipe())?,
        error: pair(sys::pipe())?,
        stdout: pair(sys::pipe())?,
        stderr: pair(sys::pipe())?,
        channel: pair(sys::socketpair())?,
        dev_null: File::open("/dev/null")?.into(),
    })
}

/// Creates the sandbox process. `cgroup_dir` is the v2 cgroup's directory
/// fd for `CLONE_INTO_CGROUP`; otherwise `join_cgroup` places the pid (v1)
/// while the child waits.
///
/// The calling process must be single-threaded.
pub fn spawn(
    plan: &SandboxPlan,
    cgroup_dir: Option<RawFd>,
    join_cgroup: &dyn Fn(libc::pid_t) -> io::Result<()>,
) -> Result<Spawned, SpawnError> {
    let ch = channels().map_err(SpawnError::Channels)?;
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: NAMESPACES | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    if let Some(fd) = cgroup_dir {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd as u64;
    }
    // SAFETY: kiln calls spawn only from a single-threaded process (the CLI,
    // or the single-threaded sandbox helper); `args` points at live memory.
    match unsafe { sys::clone3(&mut args) }.map_err(SpawnError::Clone)? {
        Forked::Child => jail::contain(
            plan,
            &ChildFds {
                sync_read: ch.sync.0.as_raw_fd(),
                error_write: ch.error.1.as_raw_fd(),
                channel: ch.channel.1.as_raw_fd(),
                stdout_write: ch.stdout.1.as_raw_fd(),
                stderr_write: ch.stderr.1.as_raw_fd(),
                dev_null: ch.dev_null.as_raw_fd(),
            },
        ),
        Forked::Parent { pid } => {
            let pidfd = owned(pidfd);
            finish_parent(plan, pid, pidfd, ch, join_cgroup)
        }
    }
}

fn finish_parent(
    plan: &SandboxPlan,
    pid: libc::pid_t,
    pidfd: OwnedFd,
    ch: Channels,
    join_cgroup: &dyn Fn(libc::pid_t) -> io::Result<()>,
) -> Result<Spawned, SpawnError> {
    let Channels {
        sync,
        error,
        stdout,
        stderr,
        channel,
        dev_null,
    } = ch;
    drop((sync.0, error.1, stdout.1, stderr.1, channel.1, dev_null));
    let kill = |e| {
        let _ = sys::pidfd_send_signal(pidfd.as_raw_fd(), libc::SIGKILL);
        let _ = sys::waitid_pidfd(pidfd.as_raw_fd(), true);
        e
    };
    write_id_maps(pid, plan.uid)
        .map_err(SpawnError::IdMap)
        .map_err(kill)?;
    join_cgroup(pid).map_err(SpawnError::Cgroup).map_err(kill)?;
    sys::write_all(sync.1.as_raw_fd(), b"g")
        .map_err(SpawnError::Channels)
        .map_err(kill)?;
    drop(sync.1);
    if let Some((step, source)) = read_child_error(error.0)
        .map_err(SpawnError::Channels)
        .map_err(kill)?
    {
        return Err(kill(SpawnError::Step { step, source }));
    }
    Ok(Spawned {
        pid,
        pidfd,
        channel: channel.0,
        stdout: stdout.0,
        stderr: stderr.0,
        reaper: Reaper::Parent,
    })
}

/// Maps exactly one id, the sandbox's, onto itself: inside and outside the
/// namespace the sandbox is `uid`, and nothing else (root included) exists.
fn write_id_maps(pid: libc::pid_t, uid: u32) -> io::Result<()> {
    let line = format!("{uid} {uid} 1\n");
    std::fs::write(format!("/proc/{pid}/uid_map"), &line)?;
    std::fs::write(format!("/proc/{pid}/gid_map"), &line)
}

/// Blocks until the child execs (EOF) or reports a failed step.
pub(crate) fn read_child_error(fd: OwnedFd) -> io::Result<Option<(String, io::Error)>> {
    let mut buf = Vec::new();
    File::from(fd).read_to_end(&mut buf)?;
    if buf.len() < 4 {
        return Ok(None);
    }
    let errno = i32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let step = String::from_utf8_lossy(&buf[4..]).into_owned();
    Ok(Some((step, io::Error::from_raw_os_error(errno))))
}
