//! The parent cgroup and the creation and reaping of sandbox cgroups in it.

use std::collections::BTreeSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kiln_policy::{Limits, SandboxConfig};

use super::detect::Dirs;
use super::handle::{remove_dirs, Cgroup};
use super::{mib_to_bytes, v1, v2, validate_parent_name, validate_sandbox_name};
use super::{CgroupError, CgroupFs, Layout, RealFs, Version};

/// How long the reaper waits for a stale cgroup's processes to die.
const REAP_WAIT: Duration = Duration::from_secs(2);

/// Creates, finds and removes kiln's cgroups under one parent.
#[derive(Debug)]
pub struct CgroupManager {
    fs: Arc<dyn CgroupFs>,
    layout: Layout,
    /// The parent, relative to each controller's mount.
    parent: PathBuf,
    total_memory_bytes: u64,
    total_pids: u64,
}

impl CgroupManager {
    /// The host's cgroups, found through `/proc/self/mountinfo`.
    pub fn detect(config: &SandboxConfig) -> Result<Self, CgroupError> {
        let fs = Arc::new(RealFs);
        let layout = Layout::detect(&*fs)?;
        Self::with_fs(fs, layout, config)
    }

    /// A manager over any [`CgroupFs`] and layout (tests use a fake tree).
    pub fn with_fs(
        fs: Arc<dyn CgroupFs>,
        layout: Layout,
        config: &SandboxConfig,
    ) -> Result<Self, CgroupError> {
        validate_parent_name(&config.cgroup_parent)?;
        Ok(Self {
            fs,
            layout,
            parent: PathBuf::from(&config.cgroup_parent),
            total_memory_bytes: mib_to_bytes(config.total_memory_mib),
            total_pids: config.total_pids,
        })
    }

    pub fn version(&self) -> Version {
        self.layout.version()
    }

    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The parent's directory in the memory controller (on v2, the only one).
    pub fn parent_path(&self) -> PathBuf {
        self.layout.dirs(&self.parent).memory
    }

    /// Creates the parent in every controller if missing and (re)writes its
    /// totals; on v2 first delegates memory, pids and cpu down to it, then
    /// enables them in its own `cgroup.subtree_control`.
    pub fn ensure_parent(&self) -> Result<(), CgroupError> {
        let fs = &*self.fs;
        let dirs = self.layout.dirs(&self.parent);
        if let Layout::V2 { root } = &self.layout {
            v2::delegate_down_to(fs, root, &dirs.memory)?;
        }
        for dir in dirs.unique() {
            match fs.mkdir(dir) {
                Ok(()) => tracing::info!(path = %dir.display(), "created parent cgroup"),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(CgroupError::create(dir.to_path_buf(), e)),
            }
        }
        match self.layout.version() {
            Version::V1 => v1::write_totals(fs, &dirs, self.total_memory_bytes, self.total_pids),
            Version::V2 => {
                v2::write_totals(fs, &dirs.memory, self.total_memory_bytes, self.total_pids)
            }
        }
    }

    /// Creates the sandbox's cgroup `<parent>/<id>` with `limits`. On any
    /// failure, every directory this call made is removed again.
    pub fn create(&self, id: &str, limits: &Limits) -> Result<Cgroup, CgroupError> {
        validate_sandbox_name(id)?;
        let dirs = self.layout.dirs(&self.parent.join(id));
        let mut made: Vec<&Path> = Vec::new();
        let result = self.make(&dirs, limits, &mut made);
        if let Err(e) = result {
            if let Err(undo) = remove_dirs(&*self.fs, &made) {
                tracing::warn!(id, "rolling back a half-made cgroup: {undo}");
            }
            return Err(e);
        }
        tracing::debug!(id, path = %dirs.memory.display(), "created sandbox cgroup");
        Ok(Cgroup::new(self.fs.clone(), self.version(), id, dirs))
    }

    fn make<'a>(
        &self,
        dirs: &'a Dirs,
        limits: &Limits,
        made: &mut Vec<&'a Path>,
    ) -> Result<(), CgroupError> {
        for dir in dirs.unique() {
            self.fs
                .mkdir(dir)
                .map_err(|e| CgroupError::create(dir.to_path_buf(), e))?;
            made.push(dir);
        }
        match self.version() {
            Version::V1 => v1::write_limits(&*self.fs, dirs, limits),
            Version::V2 => v2::write_limits(&*self.fs, dirs, limits),
        }
    }

    /// A handle on an existing sandbox cgroup (no check that it exists).
    /// Dropping it kills and removes the cgroup, as for one from [`create`](Self::create).
    pub fn open(&self, id: &str) -> Result<Cgroup, CgroupError> {
        validate_sandbox_name(id)?;
        let dirs = self.layout.dirs(&self.parent.join(id));
        Ok(Cgroup::new(self.fs.clone(), self.version(), id, dirs))
    }

    /// Kills, waits for and removes every child cgroup of the parent whose
    /// name is not live (what a crashed supervisor left). Returns the names
    /// reaped; a cgroup that cannot be reaped is logged and skipped, a name
    /// kiln would never have made is left alone.
    pub fn reap_stale(&self, is_live: impl Fn(&str) -> bool) -> Result<Vec<String>, CgroupError> {
        let mut reaped = Vec::new();
        for name in self.children()? {
            if is_live(&name) {
                continue;
            }
            if validate_sandbox_name(&name).is_err() {
                tracing::warn!(name, "not reaping a cgroup kiln did not name");
                continue;
            }
            let cgroup = self.open(&name)?;
            let result = cgroup
                .kill_all()
                .and_then(|()| cgroup.wait_empty(REAP_WAIT))
                .and_then(|()| cgroup.destroy());
            match result {
                Ok(()) => reaped.push(name),
                Err(e) => tracing::warn!(name, "cannot reap stale cgroup: {e}"),
            }
        }
        if !reaped.is_empty() {
            tracing::info!(?reaped, "reaped stale sandbox cgroups");
        }
        Ok(reaped)
    }

    /// Names of the parent's child cgroups in any controller.
    fn children(&self) -> Result<BTreeSet<String>, CgroupError> {
        let mut names = BTreeSet::new();
        for dir in self.layout.dirs(&self.parent).unique() {
            match self.fs.list_dirs(dir) {
                Ok(found) => names.extend(found),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(CgroupError::read(dir.to_path_buf(), e)),
            }
        }
        Ok(names)
    }

    /// Removes the parent from every controller (uninstall, tests). Fails
    /// while sandbox cgroups remain in it.
    pub fn remove_parent(&self) -> Result<(), CgroupError> {
        remove_dirs(&*self.fs, &self.layout.dirs(&self.parent).unique())
    }
}
