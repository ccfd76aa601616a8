//! Starting the template: the one process per environment that imports the
//! libraries and forks sandboxes.
//!
//! It is jailed much like a sandbox, with three differences, each needed
//! for it to fork sandboxes:
//! - its user namespace maps root (the template's own uid, outside: the
//!   uid just below the sandbox range) and the whole sandbox uid range, so
//!   it may write each child's one-id map;
//! - it keeps exactly `CAP_SETUID` and `CAP_SETGID` in that namespace
//!   (bounding set dropped to those before `execve`) — nothing on the host;
//! - no seccomp filter and no Landlock domain: a child could not build its
//!   own root under either (they forbid `mount`). Each child installs both.
//!
//! It is PID 1 of its pid namespace: when it dies, every sandbox it forked
//! dies with it.

use crate::kernel::LinuxKernel;
use crate::mounts;
use crate::plan::{cpath, cstr, RootPlan};
use crate::sys::{self, CloneArgs, Forked};
use kiln_policy::Limits;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

/// Where the zygote's files (shared library, template script) appear inside
/// the template; children never see them.
pub const ZYGOTE_DIR: &str = "/kiln-zygote";

/// Where the template sees the egress socket directories; children bind
/// their environment's at `/run/kiln`.
pub const EGRESS_DIR: &str = "/kiln-egress";
/// Where the template sees the library trees' directory (relative to its root).
pub const LIBRARIES_DIR: &str = "kiln-libraries";

/// Where the template sees dataset `name` (relative to its root).
pub fn dataset_dir(name: &str) -> String {
    format!("kiln-dataset-{name}")
}

/// Everything the template's child needs, prepared before the fork.
pub struct TemplatePlan {
    pub root: RootPlan,
    /// Host uid the template runs as (root inside its namespace).
    pub template_uid: u32,
    pub uid_base: u32,
    pub uid_count: u32,
    pub interpreter: CString,
    _argv: Vec<CString>,
    _envp: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    envp_ptrs: Vec<*const libc::c_char>,
}

impl TemplatePlan {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        new_root: &Path,
        runtime_root: &Path,
        top_level: &[String],
        zygote_dir: &Path,
        template_uid: u32,
        uid_base: u32,
        uid_count: u32,
        interpreter: &str,
        argv: Vec<String>,
        env: Vec<(String, String)>,
        datasets: &[(String, std::path::PathBuf)],
        libraries_dir: &Path,
    ) -> Self {
        let limits = Limits {
            disk_mib: 64,
            tmp_mib: 64,
            ..Limits::default()
        };
        let mut root = RootPlan::new(new_root, runtime_root, top_level, &limits);
        root.runtime_binds
            .push((cpath(zygote_dir), cpath(&new_root.join(&ZYGOTE_DIR[1..]))));
        for (name, source) in datasets {
            root.runtime_binds
                .push((cpath(source), cpath(&new_root.join(dataset_dir(name)))));
        }
        if libraries_dir.is_dir() {
            root.runtime_binds
                .push((cpath(libraries_dir), cpath(&new_root.join(LIBRARIES_DIR))));
        }
        let argv: Vec<CString> = argv.into_iter().map(cstr).collect();
        let envp: Vec<CString> = env.iter().map(|(k, v)| cstr(format!("{k}={v}"))).collect();
        let ptrs = |v: &[CString]| {
            v.iter()
                .map(|s| s.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        let argv_ptrs = ptrs(&argv);
        let envp_ptrs = ptrs(&envp);
        TemplatePlan {
            root,
            template_uid,
            uid_base,
            uid_count,
            interpreter: cstr(interpreter),
            _argv: argv,
            _envp: envp,
            argv_ptrs,
            envp_ptrs,
        }
    }

    /// `0 <template uid> 1` and the sandbox range mapped onto itself.
    pub fn id_map(&self) -> String {
        format!(
            "0 {} 1\n{} {} {}\n",
            self.template_uid, self.uid_base, self.uid_base, self.uid_count
        )
    }
}

/// The template's handles, owned by the supervisor.
#[derive(Debug)]
pub struct Started {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    pub ctrl: OwnedFd,
}

const NAMESPACES: u64 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS) as u64;

/// Starts the template. The caller must be single-threaded (it forks).
pub fn start(
    plan: &TemplatePlan,
    log: &OwnedFd,
    join_cgroup: &dyn Fn(libc::pid_t) -> io::Result<()>,
) -> io::Result<Started> {
    let (sync_r, sync_w) = sys::pipe()?;
    let (err_r, err_w) = sys::pipe()?;
    let (ctrl_parent, ctrl_child) = sys::socketpair()?;
    let dev_null = std::fs::File::open("/dev/null")?;
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: NAMESPACES | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: the caller is single-threaded; `args` points at live memory.
    match unsafe { sys::clone3(&mut args) }? {
        Forked::Child => {
            let fds = [
                sync_r,
                err_w,
                ctrl_child,
                dev_null.as_raw_fd(),
                log.as_raw_fd(),
            ];
            let (step, e) = match template_child(plan, fds) {
                Ok(never) => match never {},
                Err(failure) => failure,
            };
            let mut msg = e.raw_os_error().unwrap_or(0).to_le_bytes().to_vec();
            msg.extend_from_slice(step.as_bytes());
            // Until the fds are arranged the error pipe is `err_w`; after, fd 4.
            let fd = if step == "execve" { 4 } else { err_w };
            let _ = sys::write_all(fd, &msg);
            sys::exit_now(127)
        }
        Forked::Parent { pid } => {
            let pidfd = crate::spawn::owned(pidfd);
            let (sync_r, err_w, ctrl_child) = (
                crate::spawn::owned(sync_r),
                crate::spawn::owned(err_w),
                crate::spawn::owned(ctrl_child),
            );
            drop((sync_r, err_w, ctrl_child, dev_null));
            let kill = |e: io::Error| {
                let _ = sys::pidfd_send_signal(pidfd.as_raw_fd(), libc::SIGKILL);
                let _ = sys::waitid_pidfd(pidfd.as_raw_fd(), true);
                e
            };
            let map = plan.id_map();
            std::fs::write(format!("/proc/{pid}/uid_map"), &map)
                .and_then(|_| std::fs::write(format!("/proc/{pid}/gid_map"), &map))
                .map_err(kill)?;
            join_cgroup(pid).map_err(kill)?;
            sys::write_all(sync_w, b"g").map_err(kill)?;
            sys::close(sync_w);
            if let Some((step, source)) =
                crate::spawn::read_child_error(crate::spawn::owned(err_r)).map_err(kill)?
            {
                return Err(kill(io::Error::other(format!(
                    "template setup failed at `{step}`: {source}"
                ))));
            }
            Ok(Started {
                pid,
                pidfd,
                ctrl: crate::spawn::owned(ctrl_parent),
            })
        }
    }
}

/// linux/capability.h
const CAP_SETGID: libc::c_ulong = 6;
const CAP_SETUID: libc::c_ulong = 7;

type Failure = (&'static str, io::Error);

fn at<T>(step: &'static str, r: io::Result<T>) -> Result<T, Failure> {
    r.map_err(|e| (step, e))
}

/// The template's own sequence; fds: sync, error, control, /dev/null, log.
fn template_child(
    plan: &TemplatePlan,
    fds: [RawFd; 5],
) -> Result<std::convert::Infallible, Failure> {
    let [sync_r, err_w, ctrl, dev_null, log] = fds;
    let mut byte = [0u8; 1];
    if at("wait-for-parent", sys::read(sync_r, &mut byte))? != 1 {
        return Err(("wait-for-parent", io::Error::other("parent went away")));
    }
    at("signals", sys::reset_signals())?;
    at("cgroup-namespace", sys::unshare(libc::CLONE_NEWCGROUP))?;
    at("hostname", sys::sethostname(b"kiln-zygote"))?;
    // Root of its own namespace (the template uid outside): files it
    // creates must belong to a mapped id.
    at("ids", sys::setresgid(0))?;
    at("ids", sys::setresuid(0))?;
    at("make-private", mounts::make_private(&LinuxKernel))?;
    at("build-root", mounts::build_root(&LinuxKernel, &plan.root))?;
    at("groups", sys::setgroups_empty())?;
    // Only CAP_SETUID and CAP_SETGID survive the exec below.
    for cap in 0..=63 {
        if cap == CAP_SETGID || cap == CAP_SETUID {
            continue;
        }
        if let Err(e) = sys::prctl(libc::PR_CAPBSET_DROP, cap) {
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(("bounding-set", e));
        }
    }
    at(
        "ambient",
        sys::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        ),
    )?;
    at(
        "pdeathsig",
        sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong),
    )?;
    at("no-new-privs", sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1))?;
    at("rlimits", sys::setrlimit(libc::RLIMIT_CORE, 0))?;
    // fds: 0, 1 = /dev/null, 2 = log, 3 = control, 4 = error pipe (cloexec).
    let high = |fd| sys::dup_above(fd, 10);
    let (null, logh, ctrlh, errh) = (
        at("fds", high(dev_null))?,
        at("fds", high(log))?,
        at("fds", high(ctrl))?,
        at("fds", high(err_w))?,
    );
    for (from, to) in [(null, 0), (null, 1), (logh, 2), (ctrlh, 3), (errh, 4)] {
        at("fds", sys::dup2(from, to))?;
    }
    for fd in 0..=3 {
        at("fds", sys::clear_cloexec(fd))?;
    }
    at("fds", sys::set_cloexec(4))?;
    at("fds", sys::close_from(5))?;
    Err((
        "execve",
        sys::execve(&plan.interpreter, &plan.argv_ptrs, &plan.envp_ptrs),
    ))
}
