//! cgroups for the native backend: one parent cgroup holding the pool's total
//! ceilings, and one child per sandbox holding its limits.
//!
//! ```text
//! <controller mount>/<parent>             memory + pids totals (SandboxConfig)
//! <controller mount>/<parent>/<sandbox>   memory (swap capped), pids, cpu bandwidth
//! ```
//!
//! Both cgroup versions are supported. v1 has one mount per controller
//! (found through `/proc/self/mountinfo`, never assumed) and needs `memory`,
//! `pids`, `cpu`, `cpuacct` and `freezer`; a hybrid host (v1 controllers plus
//! an empty unified mount) is treated as v1. v2 has one tree and needs
//! `memory`, `pids` and `cpu` delegated through `cgroup.subtree_control`.
//!
//! Every file access goes through [`CgroupFs`], so the write order and the
//! error paths are unit-tested on a fake tree without root (see the tests
//! under `tests/`). kiln's development machines run cgroup v1: the v1 code is
//! also tested against the real kernel (`crates/native/tests/cgroup_real.rs`),
//! the v2 code only against the fake tree.
//!
//! Setup of a sandbox's cgroup, in order:
//! 1. [`CgroupManager::ensure_parent`] — once per supervisor: create the parent,
//!    write the totals, (v2) delegate the controllers.
//! 2. [`CgroupManager::reap_stale`] — once per supervisor: remove what a crashed
//!    supervisor left behind.
//! 3. [`CgroupManager::create`] — per sandbox: mkdir in every controller, write
//!    the limits; any failure removes what was made.
//! 4. Membership — v2: `clone3(CLONE_INTO_CGROUP)` with [`Cgroup::dir_fd_v2`];
//!    v1 (or as a v2 fallback): [`Cgroup::add_pid`] while the child waits.
//! 5. [`Cgroup::kill_all`], [`Cgroup::wait_empty`], [`Cgroup::destroy`].

mod detect;
mod error;
mod files;
mod fs;
mod handle;
mod manager;
mod v1;
mod v2;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod tests;

pub use detect::{Layout, V1Mounts};
pub use error::CgroupError;
pub use fs::{CgroupFs, RealFs};
pub use handle::Cgroup;
pub use manager::CgroupManager;

/// Which cgroup hierarchy the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// One hierarchy per controller (legacy, and hybrid hosts).
    V1,
    /// The unified hierarchy.
    V2,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// Checks a sandbox's cgroup name: one path component of `[A-Za-z0-9_-]`.
pub fn validate_sandbox_name(name: &str) -> Result<(), CgroupError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(CgroupError::InvalidName {
            name: name.to_string(),
            rule: "one to 128 characters of [A-Za-z0-9_-]",
        })
    }
}

/// Checks the parent's name from the config: a relative path whose components
/// are `[A-Za-z0-9_.@-]` and not `.` or `..` (so `kiln` or, for a delegated
/// v2 subtree, `user.slice/user-1000.slice/user@1000.service/kiln`).
pub fn validate_parent_name(name: &str) -> Result<(), CgroupError> {
    let component_ok = |c: &str| {
        !c.is_empty()
            && c != "."
            && c != ".."
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.@-".contains(&b))
    };
    if name.len() <= 1024 && name.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(CgroupError::InvalidName {
            name: name.to_string(),
            rule: "a relative path of [A-Za-z0-9_.@-] components, none `.` or `..`",
        })
    }
}

/// `memory_mib` in bytes, saturating (the kernel rounds down to pages).
fn mib_to_bytes(mib: u64) -> u64 {
    mib.saturating_mul(1024 * 1024)
}

/// The scheduler period kiln uses for CPU bandwidth, in microseconds.
const CPU_PERIOD_US: u64 = 100_000;

/// The CFS quota for `millicores` thousandths of a core over [`CPU_PERIOD_US`];
/// at least 1 ms, the kernel's minimum.
fn cpu_quota_us(millicores: u64) -> u64 {
    (millicores.saturating_mul(CPU_PERIOD_US) / 1000).max(1000)
}

/// The value of `key` in a flat-keyed file (`key value` per line), such as
/// `memory.events`, `memory.oom_control`, `pids.events` or `cpu.stat`.
fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// The pids of a `cgroup.procs` file.
fn parse_pids(text: &str) -> Vec<i32> {
    text.split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}
