//! Every kernel call the containment sequence makes, behind one trait.
//!
//! [`crate::jail`] (and the step modules it calls) talk to the kernel only
//! through [`Kernel`]. In the sandbox child that is [`LinuxKernel`], a
//! zero-sized type whose methods forward to [`crate::sys`], Landlock and
//! seccomp; the sequence is generic over it, so the real path is
//! monomorphised with no dispatch and no allocation of its own. In unit
//! tests it is `fake::RecordingKernel`, which records every call and can
//! fail any one of them, so the order and flags of the sequence are tested
//! without root (the pattern of youki's `syscall` trait).
//!
//! Landlock and seccomp are single opaque calls here: their own rules are
//! tested where they are built.

use crate::seccomp::SeccompPolicy;
use crate::{landlock_rules, sys};
use libc::{c_char, c_int, c_ulong};
use std::ffi::CStr;
use std::io;
use std::os::fd::RawFd;
use std::path::PathBuf;

#[cfg(test)]
pub mod fake;

/// The calls the containment sequence makes, one method per call. See the
/// functions of [`crate::sys`] of the same name for what each does.
pub trait Kernel {
    /// Reads into `buf`; 0 means end of file.
    fn read(&self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize>;
    /// Closes `fd`, ignoring errors.
    fn close(&self, fd: RawFd);
    fn unshare(&self, flags: c_int) -> io::Result<()>;
    /// Every signal back to its default disposition, the mask emptied.
    fn reset_signals(&self) -> io::Result<()>;
    fn sethostname(&self, name: &[u8]) -> io::Result<()>;
    /// Sets `lo` up in the (new, empty) network namespace.
    fn loopback_up(&self) -> io::Result<()>;
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: c_ulong,
        data: Option<&CStr>,
    ) -> io::Result<()>;
    /// Sets `MOUNT_ATTR_*` bits on `path` (and every mount below it if `recursive`).
    fn mount_setattr(&self, path: &CStr, set: u64, recursive: bool) -> io::Result<()>;
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> io::Result<()>;
    /// `umount2(target, MNT_DETACH)`.
    fn umount_detach(&self, target: &CStr) -> io::Result<()>;
    fn chdir(&self, path: &CStr) -> io::Result<()>;
    /// `mkdir`; an existing directory is not an error.
    fn mkdir(&self, path: &CStr, mode: libc::mode_t) -> io::Result<()>;
    /// Creates an empty file (a bind-mount target).
    fn touch(&self, path: &CStr, mode: libc::mode_t) -> io::Result<()>;
    fn symlink(&self, target: &CStr, link: &CStr) -> io::Result<()>;
    /// `prctl(option, arg2, 0, 0, 0)`.
    fn prctl(&self, option: c_int, arg2: c_ulong) -> io::Result<()>;
    fn setgroups_empty(&self) -> io::Result<()>;
    /// Sets real, effective and saved gid.
    fn setresgid(&self, gid: libc::gid_t) -> io::Result<()>;
    /// Sets real, effective and saved uid.
    fn setresuid(&self, uid: libc::uid_t) -> io::Result<()>;
    /// Empties the effective, permitted and inheritable capability sets.
    fn clear_capabilities(&self) -> io::Result<()>;
    /// Sets both the soft and the hard limit to `value`.
    fn setrlimit(&self, resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()>;
    /// Duplicates `fd` to the lowest free number >= `min`, close-on-exec.
    fn dup_above(&self, fd: RawFd, min: RawFd) -> io::Result<RawFd>;
    fn dup2(&self, old: RawFd, new: RawFd) -> io::Result<()>;
    fn clear_cloexec(&self, fd: RawFd) -> io::Result<()>;
    fn set_cloexec(&self, fd: RawFd) -> io::Result<()>;
    /// Closes every fd from `first` upwards.
    fn close_from(&self, first: RawFd) -> io::Result<()>;
    /// Restricts the calling process with Landlock; whether anything was enforced.
    fn landlock_restrict(
        &self,
        read: &[PathBuf],
        write: &[PathBuf],
        dev: &[PathBuf],
        tcp_port: Option<u16>,
    ) -> Result<bool, String>;
    /// Installs every filter of `policy` on the calling thread.
    fn seccomp_install(&self, policy: &SeccompPolicy) -> io::Result<()>;
    /// Returns only on failure. `argv` and `envp` are null-terminated
    /// arrays of pointers to NUL-terminated strings.
    fn execve(&self, path: &CStr, argv: &[*const c_char], envp: &[*const c_char]) -> io::Error;
}

/// The real kernel.
#[derive(Debug, Clone, Copy, Default)]
pub struct LinuxKernel;

impl Kernel for LinuxKernel {
    #[inline]
    fn read(&self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        sys::read(fd, buf)
    }
    #[inline]
    fn close(&self, fd: RawFd) {
        sys::close(fd)
    }
    #[inline]
    fn unshare(&self, flags: c_int) -> io::Result<()> {
        sys::unshare(flags)
    }
    #[inline]
    fn reset_signals(&self) -> io::Result<()> {
        sys::reset_signals()
    }

    fn sethostname(&self, name: &[u8]) -> io::Result<()> {
        sys::sethostname(name)
    }
    fn loopback_up(&self) -> io::Result<()> {
        sys::loopback_up()
    }
    #[inline]
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: c_ulong,
        data: Option<&CStr>,
    ) -> io::Result<()> {
        sys::mount(source, target, fstype, flags, data)
    }
    #[inline]
    fn mount_setattr(&self, path: &CStr, set: u64, recursive: bool) -> io::Result<()> {
        sys::mount_setattr(path, set, recursive)
    }
    #[inline]
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> io::Result<()> {
        sys::pivot_root(new_root, put_old)
    }
    #[inline]
    fn umount_detach(&self, target: &CStr) -> io::Result<()> {
        sys::umount_detach(target)
    }
    #[inline]
    fn chdir(&self, path: &CStr) -> io::Result<()> {
        sys::chdir(path)
    }
    #[inline]
    fn mkdir(&self, path: &CStr, mode: libc::mode_t) -> io::Result<()> {
        sys::mkdir(path, mode)
    }
    #[inline]
    fn touch(&self, path: &CStr, mode: libc::mode_t) -> io::Result<()> {
        sys::touch(path, mode)
    }
    #[inline]
    fn symlink(&self, target: &CStr, link: &CStr) -> io::Result<()> {
        sys::symlink(target, link)
    }
    #[inline]
    fn prctl(&self, option: c_int, arg2: c_ulong) -> io::Result<()> {
        sys::prctl(option, arg2)
    }
    #[inline]
    fn setgroups_empty(&self) -> io::Result<()> {
        sys::setgroups_empty()
    }
    #[inline]
    fn setresgid(&self, gid: libc::gid_t) -> io::Result<()> {
        sys::setresgid(gid)
    }
    #[inline]
    fn setresuid(&self, uid: libc::uid_t) -> io::Result<()> {
        sys::setresuid(uid)
    }
    #[inline]
    fn clear_capabilities(&self) -> io::Result<()> {
        sys::clear_capabilities()
    }
    #[inline]
    fn setrlimit(&self, resource: libc::__rlimit_resource_t, value: u64) -> io::Result<()> {
        sys::setrlimit(resource, value)
    }
    #[inline]
    fn dup_above(&self, fd: RawFd, min: RawFd) -> io::Result<RawFd> {
        sys::dup_above(fd, min)
    }
    #[inline]
    fn dup2(&self, old: RawFd, new: RawFd) -> io::Result<()> {
        sys::dup2(old, new)
    }
    #[inline]
    fn clear_cloexec(&self, fd: RawFd) -> io::Result<()> {
        sys::clear_cloexec(fd)
    }
    #[inline]
    fn set_cloexec(&self, fd: RawFd) -> io::Result<()> {
        sys::set_cloexec(fd)
    }
    #[inline]
    fn close_from(&self, first: RawFd) -> io::Result<()> {
        sys::close_from(first)
    }
    #[inline]
    fn landlock_restrict(
        &self,
        read: &[PathBuf],
        write: &[PathBuf],
        dev: &[PathBuf],
        tcp_port: Option<u16>,
    ) -> Result<bool, String> {
        landlock_rules::restrict(read, write, dev, tcp_port)
    }
    #[inline]
    fn seccomp_install(&self, policy: &SeccompPolicy) -> io::Result<()> {
        policy.install()
    }
    #[inline]
    fn execve(&self, path: &CStr, argv: &[*const c_char], envp: &[*const c_char]) -> io::Error {
        sys::execve(path, argv, envp)
    }
}
