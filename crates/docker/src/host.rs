//! A container's host side for the shared supervisor: usage read from the
//! cgroup the engine made for it, and removal through the Engine API.

use crate::engine::Engine;
use bollard::query_parameters::RemoveContainerOptionsBuilder;
use kiln_native::{Accounting, Host};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a container's cgroup files are (found once, after it started).
#[derive(Debug, Clone, PartialEq)]
pub enum CgroupFiles {
    V1 {
        memory: PathBuf,
        cpuacct: PathBuf,
        pids: PathBuf,
    },
    V2(PathBuf),
    /// Not found (another host's engine, an unusual cgroup layout): no
    /// CPU-time limit from the cgroup, OOM from the exit status only.
    Unknown,
}

const ROOT: &str = "/sys/fs/cgroup";

impl CgroupFiles {
    /// Looks for the directory of container `id` (its full id appears in
    /// the directory name for Docker's and Podman's cgroupfs and systemd
    /// layouts, and for gVisor's sandbox cgroup).
    pub fn locate(id: &str) -> Self {
        let root = Path::new(ROOT);
        if root.join("cgroup.controllers").exists() {
            return find_dir(root, id, 4).map_or(Self::Unknown, Self::V2);
        }
        let memory = find_dir(&root.join("memory"), id, 4);
        let Some(memory) = memory else {
            return Self::Unknown;
        };
        let rel = memory
            .strip_prefix(root.join("memory"))
            .unwrap_or(Path::new(""))
            .to_path_buf();
        Self::V1 {
            cpuacct: root.join("cpuacct").join(&rel),
            pids: root.join("pids").join(&rel),
            memory,
        }
    }

    pub fn found(&self) -> bool {
        !matches!(self, Self::Unknown)
    }
}

fn find_dir(dir: &Path, id: &str, depth: u32) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    let mut subdirs = Vec::new();
    for entry in entries.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if entry.file_name().to_string_lossy().contains(id) {
            return Some(entry.path());
        }
        subdirs.push(entry.path());
    }
    if depth == 0 {
        return None;
    }
    subdirs
        .into_iter()
        .find_map(|d| find_dir(&d, id, depth - 1))
}

fn read_u64(path: &Path) -> io::Result<u64> {
    std::fs::read_to_string(path)?.trim().parse().map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: {e}", path.display()),
        )
    })
}

/// `key value` lines (memory.oom_control, memory.events, cpu.stat, pids.events).
fn keyed(path: &Path, key: &str) -> io::Result<u64> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0))
}

impl Accounting for CgroupFiles {
    fn cpu_usage_ns(&self) -> io::Result<u64> {
        match self {
            Self::V1 { cpuacct, .. } => read_u64(&cpuacct.join("cpuacct.usage")),
            Self::V2(dir) => Ok(keyed(&dir.join("cpu.stat"), "usage_usec")? * 1000),
            Self::Unknown => Err(io::Error::other("the container's cgroup was not found")),
        }
    }

    fn oom_killed(&self) -> io::Result<bool> {
        match self {
            Self::V1 { memory, .. } => {
                Ok(keyed(&memory.join("memory.oom_control"), "oom_kill")? > 0)
            }
            Self::V2(dir) => Ok(keyed(&dir.join("memory.events"), "oom_kill")? > 0),
            Self::Unknown => Ok(false),
        }
    }

    fn memory_peak_bytes(&self) -> io::Result<u64> {
        match self {
            Self::V1 { memory, .. } => read_u64(&memory.join("memory.max_usage_in_bytes")),
            Self::V2(dir) => read_u64(&dir.join("memory.peak")),
            Self::Unknown => Ok(0),
        }
    }

    fn pids_max_hit(&self) -> io::Result<bool> {
        match self {
            Self::V1 { pids, .. } => Ok(keyed(&pids.join("pids.events"), "max")? > 0),
            Self::V2(dir) => Ok(keyed(&dir.join("pids.events"), "max")? > 0),
            Self::Unknown => Ok(false),
        }
    }
}

/// What one sandbox container holds: the container itself.
#[derive(Debug)]
pub struct ContainerHost {
    pub(crate) engine: Arc<Engine>,
    pub(crate) id: String,
    pub(crate) cgroup: CgroupFiles,
    /// Set once the container has stopped.
    pub(crate) exit: Arc<crate::bridge::ExitState>,
    /// The highest memory use read while it ran.
    pub(crate) last_peak: std::sync::atomic::AtomicU64,
    /// An OOM kill seen in the cgroup while it ran.
    pub(crate) oom_seen: std::sync::atomic::AtomicBool,
    /// The container's memory limit.
    pub(crate) memory_limit_bytes: u64,
}

impl ContainerHost {
    /// The engine's word on an OOM kill (its cgroup is gone once the
    /// container stopped).
    fn engine_oom_killed(&self) -> io::Result<bool> {
        let docker = self.engine.docker.clone();
        let id = self.id.clone();
        let inspect = self
            .engine
            .call(async move { docker.inspect_container(&id, None).await })
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(inspect.state.and_then(|s| s.oom_killed).unwrap_or(false))
    }

    /// Whether the stopped container ended by a SIGKILL.
    fn ended_by_sigkill(&self) -> bool {
        self.exit
            .get()
            .is_some_and(|s| libc::WIFSIGNALED(s) && libc::WTERMSIG(s) == libc::SIGKILL)
    }
}

/// Whether a polled memory peak came near enough to the limit for a SIGKILL
/// to be taken for the OOM killer's: half the limit or more, since the last
/// reading (every 50 ms) may fall short of the limit by what was allocated
/// since.
fn near_the_limit(peak: u64, limit: u64) -> bool {
    limit > 0 && peak.saturating_mul(2) >= limit
}

impl Accounting for ContainerHost {
    fn cpu_usage_ns(&self) -> io::Result<u64> {
        let ns = self.cgroup.cpu_usage_ns()?;
        // Polled while code runs: keep the last memory peak seen, for a
        // container whose cgroup is gone by the time the run is judged.
        if let Ok(peak) = self.cgroup.memory_peak_bytes() {
            self.last_peak
                .fetch_max(peak, std::sync::atomic::Ordering::Relaxed);
        }
        // Podman removes the cgroup right after the container ends and
        // does not report OOM kills: catch it while it is there.
        if self.cgroup.oom_killed().unwrap_or(false) {
            self.oom_seen
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(ns)
    }
    fn oom_killed(&self) -> io::Result<bool> {
        if self.oom_seen.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(true);
        }
        match self.cgroup.oom_killed() {
            Ok(true) => Ok(true),
            // Dead or unknown cgroup: ask the engine once it has stopped,
            // then read the signs it left. gVisor: the host's OOM killer
            // takes the Sentry, runsc removes the cgroup before its count is
            // read, and the engine's `OOMKilled` stays false. A SIGKILL kiln
            // sent itself (a timeout, a kill on request) is judged by the
            // supervisor first.
            _ if self.exit.get().is_some() => {
                if self.engine_oom_killed().unwrap_or(false) {
                    return Ok(true);
                }
                let peak = self.last_peak.load(std::sync::atomic::Ordering::Relaxed);
                let judged =
                    self.ended_by_sigkill() && near_the_limit(peak, self.memory_limit_bytes);
                if judged {
                    tracing::info!(
                        container = %self.id,
                        "taken for an OOM kill: ended by SIGKILL at {} of its {} MiB limit (the engine did not report one)",
                        peak >> 20,
                        self.memory_limit_bytes >> 20,
                    );
                }
                Ok(judged)
            }
            other => other,
        }
    }
    fn memory_peak_bytes(&self) -> io::Result<u64> {
        let last = self.last_peak.load(std::sync::atomic::Ordering::Relaxed);
        match self.cgroup.memory_peak_bytes() {
            Ok(peak) => Ok(peak.max(last)),
            Err(_) => Ok(last),
        }
    }
    fn pids_max_hit(&self) -> io::Result<bool> {
        self.cgroup.pids_max_hit()
    }
}

impl Host for ContainerHost {
    fn teardown(&mut self) {
        remove(&self.engine, &self.id);
    }
}

/// Kills and removes container `id` (and its anonymous volumes); a
/// container already gone is fine.
pub(crate) fn remove(engine: &Engine, id: &str) {
    let docker = engine.docker.clone();
    let owned = id.to_string();
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    match engine.call(async move { docker.remove_container(&owned, Some(options)).await }) {
        Ok(())
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(e) => {
            tracing::error!(container = id, error = %e, "removing the sandbox container failed; the reaper will retry")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::near_the_limit;

    #[test]
    fn a_sigkill_counts_as_an_oom_only_near_the_limit() {
        let limit = 128 << 20;
        assert!(near_the_limit(limit, limit));
        assert!(near_the_limit(64 << 20, limit));
        assert!(!near_the_limit((64 << 20) - 1, limit));
        assert!(!near_the_limit(0, limit));
        assert!(!near_the_limit(1 << 30, 0), "no limit known: never");
    }
}
