//! cgroup v2: one directory per cgroup, controllers delegated through
//! `cgroup.subtree_control`. kiln's development machines run v1, so this file
//! is tested only against the fake tree (`fake.rs`), not a real kernel.

use std::path::Path;
use std::time::Duration;

use kiln_policy::Limits;

use super::detect::{missing_controllers, Dirs};
use super::files::{self, read, read_keyed, read_u64, write, write_if_present};
use super::{cpu_quota_us, mib_to_bytes, CgroupError, CgroupFs, Version, CPU_PERIOD_US};

/// What kiln enables in `cgroup.subtree_control`.
const ENABLE: &str = "+memory +pids +cpu";
/// How long the `cgroup.freeze` fallback waits for `frozen 1`.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(1);

/// Makes sure every cgroup from `root` down to `dir` (excluded) offers and
/// delegates memory, pids and cpu to its children.
pub(super) fn delegate_down_to(
    fs: &dyn CgroupFs,
    root: &Path,
    dir: &Path,
) -> Result<(), CgroupError> {
    let mut ancestors: Vec<&Path> = dir
        .ancestors()
        .skip(1)
        .take_while(|a| a.starts_with(root))
        .collect();
    ancestors.reverse();
    for cgroup in ancestors {
        check_offered(fs, cgroup)?;
        enable_controllers(fs, cgroup)?;
    }
    Ok(())
}

/// Fails with a hint if `cgroup` itself lacks one of the controllers.
fn check_offered(fs: &dyn CgroupFs, cgroup: &Path) -> Result<(), CgroupError> {
    let missing = missing_controllers(&read(fs, &cgroup.join("cgroup.controllers"))?);
    if missing.is_empty() {
        return Ok(());
    }
    let above = cgroup.parent().unwrap_or(cgroup);
    Err(CgroupError::ControllersMissing {
        version: Version::V2,
        missing,
        hint: format!(
            "{} is not delegated them; enable controllers with `echo {ENABLE} > {}/cgroup.subtree_control` (as root), or run kiln as root",
            cgroup.display(),
            above.display()
        ),
    })
}

/// Writes `+memory +pids +cpu` to `cgroup.subtree_control` unless all are on.
pub(super) fn enable_controllers(fs: &dyn CgroupFs, cgroup: &Path) -> Result<(), CgroupError> {
    let path = cgroup.join("cgroup.subtree_control");
    if missing_controllers(&read(fs, &path)?).is_empty() {
        return Ok(());
    }
    fs.write(&path, ENABLE).map_err(|source| {
        let hint = match source.raw_os_error() {
            Some(libc::EBUSY) => format!("{} has processes of its own and v2 forbids controllers there (\"no internal processes\"); move them (e.g. the supervisor) into a leaf cgroup", cgroup.display()),
            Some(libc::ENOENT) => format!("{} does not offer a controller; enable it one level up", cgroup.display()),
            _ => format!("enable controllers with `echo {ENABLE} > {}` as root, or run kiln as root (systemd: Delegate=yes)", path.display()),
        };
        CgroupError::NotDelegated { path: path.clone(), value: ENABLE.to_string(), source, hint }
    })
}

/// The parent's totals; children inherit the controllers it delegates.
pub(super) fn write_totals(
    fs: &dyn CgroupFs,
    dir: &Path,
    memory_bytes: u64,
    pids: u64,
) -> Result<(), CgroupError> {
    write(fs, &dir.join("memory.max"), &memory_bytes.to_string())?;
    write(fs, &dir.join("pids.max"), &pids.to_string())?;
    enable_controllers(fs, dir)
}

/// A sandbox's limits, in this order: memory.max, memory.swap.max (when swap
/// accounting is on), memory.oom.group, pids.max, cpu.max. memory.high is
/// left alone: throttling would turn an OOM into a slow timeout.
pub(super) fn write_limits(
    fs: &dyn CgroupFs,
    dirs: &Dirs,
    limits: &Limits,
) -> Result<(), CgroupError> {
    let dir = &dirs.memory;
    write(
        fs,
        &dir.join("memory.max"),
        &mib_to_bytes(limits.memory_mib).to_string(),
    )?;
    write_if_present(fs, &dir.join("memory.swap.max"), "0")?;
    // An OOM kills the whole sandbox, never leaves it half-dead.
    write(fs, &dir.join("memory.oom.group"), "1")?;
    write(fs, &dir.join("pids.max"), &limits.pids.to_string())?;
    let cpu = format!("{} {CPU_PERIOD_US}", cpu_quota_us(limits.cpu_millicores));
    write(fs, &dir.join("cpu.max"), &cpu)
}

pub(super) fn oom_killed(fs: &dyn CgroupFs, dirs: &Dirs) -> Result<bool, CgroupError> {
    Ok(read_keyed(fs, &dirs.memory.join("memory.events"), "oom_kill")? > 0)
}

pub(super) fn cpu_usage_ns(fs: &dyn CgroupFs, dirs: &Dirs) -> Result<u64, CgroupError> {
    let usec = read_keyed(fs, &dirs.cpu.join("cpu.stat"), "usage_usec")?;
    Ok(usec.saturating_mul(1000))
}

/// `memory.peak` (kernel >= 5.19), else the current usage.
pub(super) fn memory_peak_bytes(fs: &dyn CgroupFs, dirs: &Dirs) -> Result<u64, CgroupError> {
    let peak = dirs.memory.join("memory.peak");
    if fs.exists(&peak) {
        return read_u64(fs, &peak);
    }
    read_u64(fs, &dirs.memory.join("memory.current"))
}

/// `cgroup.kill` (kernel >= 5.14); before that, freeze, kill, thaw.
pub(super) fn kill_all(fs: &dyn CgroupFs, dirs: &Dirs) -> Result<(), CgroupError> {
    let dir = &dirs.memory;
    let kill = dir.join("cgroup.kill");
    if fs.exists(&kill) {
        return write(fs, &kill, "1");
    }
    let freeze = dir.join("cgroup.freeze");
    if !fs.exists(&freeze) {
        return files::kill_listed(fs, dirs);
    }
    let events = dir.join("cgroup.events");
    let is_frozen = || Ok(read_keyed(fs, &events, "frozen")? == 1);
    files::freeze_kill_thaw(fs, dirs, (&freeze, "1", "0"), is_frozen, FREEZE_TIMEOUT)
}
