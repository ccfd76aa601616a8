//! A [`Kernel`] that records every call and can fail one of them.
//!
//! Each call is kept as a name and its arguments rendered as text, with
//! flags spelled by name: `mount(tmpfs -> /r, fstype=tmpfs,
//! flags=MS_NOSUID|MS_NODEV, data=size=1m)`. Nothing reaches the kernel.

use super::Kernel;
use crate::seccomp::SeccompPolicy;
use libc::{c_char, c_int, c_ulong};
use std::cell::{Cell, RefCell};
use std::ffi::CStr;
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;

/// The errno every injected failure carries.
pub const INJECTED_ERRNO: i32 = libc::EPERM;
/// The highest capability number the fake kernel knows: dropping a higher
/// one from the bounding set fails with `EINVAL`, as on a real kernel.
pub const LAST_CAP: c_ulong = 40;

/// One recorded call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub name: &'static str,
    pub args: String,
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({})", self.name, self.args)
    }
}

#[derive(Debug, Clone, Copy)]
enum Fail {
    Never,
    /// The call with this index (0-based, in call order).
    At(usize),
    /// The first call with this name.
    On(&'static str),
}

#[derive(Debug)]
pub struct RecordingKernel {
    calls: RefCell<Vec<Call>>,
    fail: Fail,
    failed: Cell<bool>,
    /// `read` reports end of file (the parent went away).
    read_eof: bool,
    next_fd: Cell<RawFd>,
}

impl RecordingKernel {
    /// A kernel on which every call succeeds.
    pub fn new() -> Self {
        Self::with(Fail::Never)
    }

    /// Fails the `index`th call (0-based) with [`INJECTED_ERRNO`].
    pub fn failing_at(index: usize) -> Self {
        Self::with(Fail::At(index))
    }

    /// Fails the first call named `name` with [`INJECTED_ERRNO`].
    pub fn failing_on(name: &'static str) -> Self {
        Self::with(Fail::On(name))
    }

    /// `read` returns end of file, as when the parent died.
    pub fn parent_gone() -> Self {
        Self {
            read_eof: true,
            ..Self::new()
        }
    }

    fn with(fail: Fail) -> Self {
        Self {
            calls: RefCell::new(Vec::new()),
            fail,
            failed: Cell::new(false),
            read_eof: false,
            next_fd: Cell::new(-1),
        }
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// Records a call; `Err` if it is the one to fail.
    fn record(&self, name: &'static str, args: String) -> io::Result<()> {
        let mut calls = self.calls.borrow_mut();
        let hit = match self.fail {
            Fail::Never => false,
            Fail::At(i) => i == calls.len(),
            Fail::On(n) => n == name && !self.failed.get(),
        };
        calls.push(Call { name, args });
        if hit {
            self.failed.set(true);
            return Err(io::Error::from_raw_os_error(INJECTED_ERRNO));
        }
        Ok(())
    }
}

impl Default for RecordingKernel {
    fn default() -> Self {
        Self::new()
    }
}

fn s(c: &CStr) -> std::borrow::Cow<'_, str> {
    c.to_string_lossy()
}

/// `value` as `A|B|…` from `names`, any unknown bits in hex, `0` if empty.
fn bits(value: u64, names: &[(u64, &str)]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut rest = value;
    for &(bit, name) in names {
        if bit != 0 && value & bit == bit {
            parts.push(name.into());
            rest &= !bit;
        }
    }
    if rest != 0 {
        parts.push(format!("{rest:#x}"));
    }
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join("|")
    }
}

const MS_NAMES: &[(u64, &str)] = &[
    (libc::MS_RDONLY, "MS_RDONLY"),
    (libc::MS_NOSUID, "MS_NOSUID"),
    (libc::MS_NODEV, "MS_NODEV"),
    (libc::MS_NOEXEC, "MS_NOEXEC"),
    (libc::MS_REMOUNT, "MS_REMOUNT"),
    (libc::MS_BIND, "MS_BIND"),
    (libc::MS_REC, "MS_REC"),
    (libc::MS_PRIVATE, "MS_PRIVATE"),
    (libc::MS_SLAVE, "MS_SLAVE"),
    (libc::MS_SHARED, "MS_SHARED"),
];

const MOUNT_ATTR_NAMES: &[(u64, &str)] = &[
    (crate::sys::MOUNT_ATTR_RDONLY, "RDONLY"),
    (crate::sys::MOUNT_ATTR_NOSUID, "NOSUID"),
    (crate::sys::MOUNT_ATTR_NODEV, "NODEV"),
    (crate::sys::MOUNT_ATTR_NOEXEC, "NOEXEC"),
];

const CLONE_NAMES: &[(u64, &str)] = &[
    (libc::CLONE_NEWCGROUP as u64, "CLONE_NEWCGROUP"),
    (libc::CLONE_NEWNS as u64, "CLONE_NEWNS"),
    (libc::CLONE_NEWUSER as u64, "CLONE_NEWUSER"),
    (libc::CLONE_NEWPID as u64, "CLONE_NEWPID"),
    (libc::CLONE_NEWNET as u64, "CLONE_NEWNET"),
    (libc::CLONE_NEWIPC as u64, "CLONE_NEWIPC"),
    (libc::CLONE_NEWUTS as u64, "CLONE_NEWUTS"),
];

const SECBIT_NAMES: &[(u64, &str)] = &[
    (libc::SECBIT_NOROOT as u64, "NOROOT"),
    (libc::SECBIT_NOROOT_LOCKED as u64, "NOROOT_LOCKED"),
    (libc::SECBIT_NO_SETUID_FIXUP as u64, "NO_SETUID_FIXUP"),
    (
        libc::SECBIT_NO_SETUID_FIXUP_LOCKED as u64,
        "NO_SETUID_FIXUP_LOCKED",
    ),
    (libc::SECBIT_KEEP_CAPS as u64, "KEEP_CAPS"),
    (libc::SECBIT_KEEP_CAPS_LOCKED as u64, "KEEP_CAPS_LOCKED"),
    (
        libc::SECBIT_NO_CAP_AMBIENT_RAISE as u64,
        "NO_CAP_AMBIENT_RAISE",
    ),
    (
        libc::SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED as u64,
        "NO_CAP_AMBIENT_RAISE_LOCKED",
    ),
];

fn prctl_args(option: c_int, arg2: c_ulong) -> String {
    match option {
        libc::PR_SET_SECUREBITS => format!("PR_SET_SECUREBITS, {}", bits(arg2, SECBIT_NAMES)),
        libc::PR_CAPBSET_DROP => format!("PR_CAPBSET_DROP, {arg2}"),
        libc::PR_CAP_AMBIENT if arg2 == libc::PR_CAP_AMBIENT_CLEAR_ALL as c_ulong => {
            "PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL".into()
        }
        libc::PR_SET_DUMPABLE => format!("PR_SET_DUMPABLE, {arg2}"),
        libc::PR_SET_PDEATHSIG if arg2 == libc::SIGKILL as c_ulong => {
            "PR_SET_PDEATHSIG, SIGKILL".into()
        }
        libc::PR_SET_NO_NEW_PRIVS => format!("PR_SET_NO_NEW_PRIVS, {arg2}"),
        _ => format!("{option}, {arg2}"),
    }
}

fn rlimit_name(resource: libc::__rlimit_resource_t) -> String {
    match resource {
        libc::RLIMIT_CORE => "RLIMIT_CORE".into(),
        libc::RLIMIT_NOFILE => "RLIMIT_NOFILE".into(),
        libc::RLIMIT_FSIZE => "RLIMIT_FSIZE".into(),
        libc::RLIMIT_NPROC => "RLIMIT_NPROC".into(),
        libc::RLIMIT_AS => "RLIMIT_AS".into(),
        libc::RLIMIT_CPU => "RLIMIT_CPU".into(),
        other => other.to_string(),
    }
}

fn paths(list: &[PathBuf]) -> String {
    let names: Vec<String> = list.iter().map(|p| p.display().to_string()).collect();
    format!("[{}]", names.join(", "))
}

impl Kernel for RecordingKernel {
    fn read(&self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        self.record("read", format!("fd={fd}"))?;
        if self.read_eof {
            return Ok(0);
        }
        buf.fill(b'g');
        Ok(buf.len())
    }

    fn close(&self, fd: RawFd) {
        // close reports nothing; an injected failure here is invisible.
        let _ = self.record("close", format!("fd={fd}"));
    }

    fn unshare(&self, flags: c_int) -> io::Result<()> {
        self.record("unshare", bits(flags as u64, CLONE_NAMES))
    }

    fn reset_signals(&self) -> io::Result<()> {
        self.record("reset_signals", String::new())
    }

    fn sethostname(&self, name: &[u8]) -> io::Result<()> {
        self.record("sethostname", String::from_utf8_lossy(name).into_owned())
    }

    fn loopback_up(&self) -> io::Result<()> {
        self.record("loopback_up", "lo".into())
    }

    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: c_ulong,
        data: Option<&CStr>,
    ) -> io::Result<()> {
        let mut args = format!("{} -> {}", source.map_or("none".into(), s), s(target));
        if let Some(t) = fstype {
            args += &format!(", fstype={}", s(t));
        }
        args += &format!(", flags={}", bits(flags, MS_NAMES));
        if let Some(d) = data {
            args += &format!(", data={}", s(d));
        }
        self.record("mount", args)
    }

    fn mount_setattr(&self, path: &CStr, set: u64, recursive: bool) -> io::Result<()> {
        let rec = if recursive { ", AT_RECURSIVE" } else { "" };
        self.record(
            "mount_setattr",
            format!("{}, set={}{rec}", s(path), bits(set, MOUNT_ATTR_NAMES)),
        )
    }

    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> io::Result<()> {
        self.record("pivot_root", format!("{}, {}", s(new_root), s(put_old)))
    }

    fn umount_detach(&self, target: &CStr) -> io::Result<()> {
        self.record("umount2", format!("{}, MNT_DETACH", s(target)))
    }

    fn chdir(&self, path: &CStr) -> io::Result<()> {
        self.record("chdir", s(path).into_owned())
    }

    fn mkdir(&self, path: &CStr, mode: libc::mode_t) -> io::Result<()> {
        self.record("mkdir", format!("{}, {mode:#o}", s(path)))
    }

    fn touch(&self, path: &CStr, mode: libc::mode_t) -> io::Result<()> {
        self.record("touch", format!("{}, {mode:#o}", s(path)))
    }

    fn symlink(&self, target: &CStr, link: &CStr) -> io::Result<()> {
        self.record("symlink", format!("{} <- {}", s(target), s(link)))
    }

    fn prctl(&self, option: c_int, arg2: c_ulong) -> io::Result<()> {
        self.record("prctl", prctl_args(option, arg2))?;
        if option == libc::PR_CAPBSET_DROP && arg2 > LAST_CAP {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        Ok(())
    }

    fn setgroups_empty(&self) -> io::Result<()> {
        self.record("setgroups", "[]".into())
    }

    fn setresgid(&self, gid: libc::gid_t) -> io::Result<()> {
        self.record("setresgid", format!("{gid}"))
    }

    fn setresuid(&self, uid: libc::uid_t) -> io::Result<()> {
        self.record("setresuid", format!("{uid}"))
    }

    fn clear_capabilities(&self) -> io::Result<()> {
        self.record("capset", "empty".into())
    }

    fn setrlimit(&self, resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
        self.record("setrlimit", format!("{}, {value}", rlimit_name(resource)))
    }

    fn dup_above(&self, fd: RawFd, min: RawFd) -> io::Result<RawFd> {
        self.record("dup_above", format!("fd={fd}, min={min}"))?;
        // Lowest free number >= min, numbers handed out in turn.
        let next = self.next_fd.get().max(min);
        self.next_fd.set(next + 1);
        Ok(next)
    }

    fn dup2(&self, old: RawFd, new: RawFd) -> io::Result<()> {
        self.record("dup2", format!("{old} -> {new}"))
    }

    fn clear_cloexec(&self, fd: RawFd) -> io::Result<()> {
        self.record("clear_cloexec", format!("fd={fd}"))
    }

    fn set_cloexec(&self, fd: RawFd) -> io::Result<()> {
        self.record("set_cloexec", format!("fd={fd}"))
    }

    fn close_from(&self, first: RawFd) -> io::Result<()> {
        self.record("close_range", format!("{first}.."))
    }

    fn landlock_restrict(
        &self,
        read: &[PathBuf],
        write: &[PathBuf],
        dev: &[PathBuf],
        tcp_port: Option<u16>,
    ) -> Result<bool, String> {
        let mut args = format!(
            "read={}, write={}, dev={}",
            paths(read),
            paths(write),
            paths(dev)
        );
        if let Some(port) = tcp_port {
            args.push_str(&format!(", tcp={port}"));
        }
        self.record("landlock_restrict", args)
            .map(|()| true)
            .map_err(|e| format!("injected: {e}"))
    }

    fn seccomp_install(&self, _policy: &SeccompPolicy) -> io::Result<()> {
        self.record("seccomp_install", String::new())
    }

    fn execve(&self, path: &CStr, argv: &[*const c_char], envp: &[*const c_char]) -> io::Error {
        let count = |v: &[*const c_char]| v.iter().take_while(|p| !p.is_null()).count();
        let args = format!("{}, argc={}, envc={}", s(path), count(argv), count(envp));
        match self.record("execve", args) {
            Err(e) => e,
            // A fake cannot replace the process: report what a real execve
            // of a missing file would.
            Ok(()) => io::Error::from_raw_os_error(libc::ENOENT),
        }
    }
}
