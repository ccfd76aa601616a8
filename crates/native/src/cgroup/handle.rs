//! One sandbox's cgroup: membership, readings, kill and removal.

use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::detect::Dirs;
use super::files::{self, read_keyed};
use super::{v1, v2, CgroupError, CgroupFs, Version};

/// How long Drop waits for the members it killed before removing the cgroup.
const DROP_WAIT: Duration = Duration::from_millis(500);

/// A sandbox's cgroup (in every controller on v1). Dropping it kills what is
/// still inside and removes it; errors are logged, a later
/// [`reap_stale`](super::CgroupManager::reap_stale) catches what remains.
#[derive(Debug)]
pub struct Cgroup {
    fs: Arc<dyn CgroupFs>,
    version: Version,
    id: String,
    dirs: Dirs,
    destroyed: AtomicBool,
}

impl Cgroup {
    pub(super) fn new(fs: Arc<dyn CgroupFs>, version: Version, id: &str, dirs: Dirs) -> Self {
        Self {
            fs,
            version,
            id: id.to_string(),
            dirs,
            destroyed: AtomicBool::new(false),
        }
    }

    /// The sandbox id this cgroup is named after.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// The cgroup's directory in the memory controller (on v2, the only one).
    pub fn path(&self) -> &Path {
        &self.dirs.memory
    }

    /// Moves `pid` (the waiting child) into the cgroup: on v1 into every
    /// controller; on v2 the fallback when `CLONE_INTO_CGROUP` is not used.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        match self.version {
            Version::V1 => v1::add_pid(&*self.fs, &self.dirs, pid),
            Version::V2 => files::write(
                &*self.fs,
                &self.dirs.memory.join("cgroup.procs"),
                &pid.to_string(),
            ),
        }
    }

    /// On v2, an `O_DIRECTORY | O_CLOEXEC` fd of the cgroup for
    /// `clone3(CLONE_INTO_CGROUP)`; `None` on v1.
    pub fn dir_fd_v2(&self) -> Result<Option<OwnedFd>, CgroupError> {
        if self.version == Version::V1 {
            return Ok(None);
        }
        let dir = &self.dirs.memory;
        let fd = self
            .fs
            .open_dir(dir)
            .map_err(|e| CgroupError::read(dir.clone(), e))?;
        Ok(Some(fd))
    }

    /// Whether the kernel OOM-killed a process of this cgroup.
    pub fn oom_killed(&self) -> Result<bool, CgroupError> {
        match self.version {
            Version::V1 => v1::oom_killed(&*self.fs, &self.dirs),
            Version::V2 => v2::oom_killed(&*self.fs, &self.dirs),
        }
    }

    /// CPU time used by all processes that were ever in the cgroup.
    pub fn cpu_usage_ns(&self) -> Result<u64, CgroupError> {
        match self.version {
            Version::V1 => v1::cpu_usage_ns(&*self.fs, &self.dirs),
            Version::V2 => v2::cpu_usage_ns(&*self.fs, &self.dirs),
        }
    }

    /// The most memory the cgroup held at once (v2 before 5.19: current).
    pub fn memory_peak_bytes(&self) -> Result<u64, CgroupError> {
        match self.version {
            Version::V1 => v1::memory_peak_bytes(&*self.fs, &self.dirs),
            Version::V2 => v2::memory_peak_bytes(&*self.fs, &self.dirs),
        }
    }

    /// Whether a fork failed because `pids.max` was reached (`pids.events`).
    pub fn pids_max_hit(&self) -> Result<bool, CgroupError> {
        Ok(read_keyed(&*self.fs, &self.dirs.pids.join("pids.events"), "max")? > 0)
    }

    /// The processes in the cgroup, sorted.
    pub fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        files::procs(&*self.fs, &self.dirs)
    }

    /// SIGKILLs every process of the cgroup without letting it fork meanwhile
    /// (v2: `cgroup.kill`; v1: freezer). Does not wait: see [`wait_empty`](Self::wait_empty).
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        match self.version {
            Version::V1 => v1::kill_all(&*self.fs, &self.dirs),
            Version::V2 => v2::kill_all(&*self.fs, &self.dirs),
        }
    }

    /// Waits until no process is left, up to `timeout`.
    pub fn wait_empty(&self, timeout: Duration) -> Result<(), CgroupError> {
        if files::poll(timeout, || Ok(self.procs()?.is_empty()))? {
            return Ok(());
        }
        Err(CgroupError::NotEmpty {
            path: self.dirs.memory.clone(),
            pids: self.procs()?,
            timeout,
        })
    }

    /// Removes the cgroup from every controller. Idempotent: a directory
    /// already gone is fine. Fails (EBUSY) while processes remain.
    pub fn destroy(&self) -> Result<(), CgroupError> {
        remove_dirs(&*self.fs, &self.dirs.unique())?;
        self.destroyed.store(true, Ordering::Release);
        Ok(())
    }
}

/// rmdir of each directory, last first; a missing one is skipped.
pub(super) fn remove_dirs(fs: &dyn CgroupFs, dirs: &[&Path]) -> Result<(), CgroupError> {
    for dir in dirs.iter().rev() {
        match fs.rmdir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(CgroupError::remove(dir.to_path_buf(), e)),
        }
    }
    Ok(())
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.destroyed.load(Ordering::Acquire) {
            return;
        }
        let result = match self.procs() {
            Ok(pids) if pids.is_empty() => self.destroy(),
            _ => self
                .kill_all()
                .and_then(|()| self.wait_empty(DROP_WAIT))
                .and_then(|()| self.destroy()),
        };
        if let Err(e) = result {
            tracing::warn!(id = %self.id, "dropping cgroup: {e}");
        }
    }
}
