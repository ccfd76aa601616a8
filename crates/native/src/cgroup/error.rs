//! What can go wrong with cgroups, with the path involved and what to do.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use super::Version;

/// A cgroup operation that failed. Variants about a file carry its path and
/// the OS error; most carry a hint saying how to fix the host.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path}: {source}")]
    MountInfo { path: PathBuf, source: io::Error },

    #[error("no cgroup filesystem is mounted; Hint: mount cgroup2 at /sys/fs/cgroup (`mount -t cgroup2 none /sys/fs/cgroup`) or run kiln with the docker backend")]
    NoCgroupFs,

    #[error("cgroup {version} controllers missing: {}; Hint: {hint}", missing.join(", "))]
    ControllersMissing {
        version: Version,
        missing: Vec<&'static str>,
        hint: String,
    },

    #[error("cannot enable controllers with `{value}` in {path}: {source}; Hint: {hint}")]
    NotDelegated {
        path: PathBuf,
        value: String,
        source: io::Error,
        hint: String,
    },

    #[error("invalid cgroup name `{name}`: must be {rule}")]
    InvalidName { name: String, rule: &'static str },

    #[error("cgroup {path} already exists; Hint: another sandbox uses this id, or a crashed supervisor left it (reap_stale removes it)")]
    AlreadyExists { path: PathBuf },

    #[error("cannot create cgroup {path}: {source}; Hint: {hint}")]
    Create {
        path: PathBuf,
        source: io::Error,
        hint: &'static str,
    },

    #[error("cannot write `{value}` to {path}: {source}; Hint: {hint}")]
    Write {
        path: PathBuf,
        value: String,
        source: io::Error,
        hint: &'static str,
    },

    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },

    #[error("cannot parse {path}: {what}")]
    Parse { path: PathBuf, what: String },

    #[error("cannot send signal {signal} to pid {pid}: {source}")]
    Signal {
        pid: i32,
        signal: i32,
        source: io::Error,
    },

    #[error("cgroup {path} still holds pids {pids:?} after {timeout:?}; Hint: a process stuck in the kernel (D state) cannot be killed until it returns")]
    NotEmpty {
        path: PathBuf,
        pids: Vec<i32>,
        timeout: Duration,
    },

    #[error("cannot remove cgroup {path}: {source}; Hint: {hint}")]
    Remove {
        path: PathBuf,
        source: io::Error,
        hint: &'static str,
    },
}

impl CgroupError {
    pub(crate) fn create(path: PathBuf, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::AlreadyExists {
            return CgroupError::AlreadyExists { path };
        }
        let hint = match source.raw_os_error() {
            Some(libc::ENOENT) => "the cgroup above it does not exist (kiln creates only the last component of `cgroup_parent`; ensure_parent first)",
            _ => access_hint(&source),
        };
        CgroupError::Create { path, source, hint }
    }

    pub(crate) fn write(path: PathBuf, value: &str, source: io::Error) -> Self {
        let hint = match source.raw_os_error() {
            Some(libc::EINVAL) => "the kernel rejected the value (v1: memory.memsw.limit_in_bytes must stay >= memory.limit_in_bytes; a limit below current usage cannot be set)",
            Some(libc::EBUSY) => "v2 allows controllers in subtree_control only in a cgroup without processes of its own; move the supervisor into a leaf cgroup",
            Some(libc::ESRCH) => "the process exited before it could be moved",
            _ => access_hint(&source),
        };
        CgroupError::Write {
            path,
            value: value.to_string(),
            source,
            hint,
        }
    }

    pub(crate) fn read(path: PathBuf, source: io::Error) -> Self {
        CgroupError::Read { path, source }
    }

    pub(crate) fn remove(path: PathBuf, source: io::Error) -> Self {
        let hint = match source.raw_os_error() {
            Some(libc::EBUSY) => {
                "the cgroup still has processes or child cgroups; kill_all and wait_empty first"
            }
            _ => access_hint(&source),
        };
        CgroupError::Remove { path, source, hint }
    }
}

/// What to do about an error opening, creating or writing a cgroup file.
fn access_hint(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => "run kiln as root, or delegate the cgroup subtree to kiln's user (v2: chown the parent cgroup directory and its cgroup.procs, cgroup.subtree_control)",
        Some(libc::EROFS) => "the cgroup filesystem is mounted read-only (inside a container?); give kiln a writable cgroup mount or use the docker backend",
        Some(libc::ENOENT) => "the controller file does not exist; is the controller enabled for this cgroup (v2: the parent's cgroup.subtree_control)?",
        _ => "check the cgroup mount and kiln's permissions (`kiln doctor`)",
    }
}
