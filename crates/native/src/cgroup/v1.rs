//! cgroup v1: one directory per controller, file names of the legacy
//! interface. Tested against the real kernel on kiln's v1 machines.

use std::path::Path;
use std::time::Duration;

use kiln_policy::Limits;

use super::detect::Dirs;
use super::files::{self, read, read_keyed, read_u64, write, write_if_present};
use super::{cpu_quota_us, mib_to_bytes, CgroupError, CgroupFs, CPU_PERIOD_US};

/// How long `kill_all` waits for `freezer.state` to read `FROZEN`.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(1);

/// The parent's totals: memory (and memory+swap) and pids.
pub(super) fn write_totals(
    fs: &dyn CgroupFs,
    dirs: &Dirs,
    memory_bytes: u64,
    pids: u64,
) -> Result<(), CgroupError> {
    // Old kernels (< 5.x) default to a flat hierarchy in which the parent's
    // limit would not cover its children; it can only be switched while the
    // cgroup has no children, i.e. now.
    let hierarchy = dirs.memory.join("memory.use_hierarchy");
    if fs.exists(&hierarchy) && read(fs, &hierarchy)?.trim() == "0" {
        write(fs, &hierarchy, "1")?;
    }
    set_memory(fs, &dirs.memory, memory_bytes)?;
    write(fs, &dirs.pids.join("pids.max"), &pids.to_string())
}

/// A sandbox's limits, in this order: memory, memory+swap, swappiness, pids,
/// cpu period, cpu quota.
pub(super) fn write_limits(
    fs: &dyn CgroupFs,
    dirs: &Dirs,
    limits: &Limits,
) -> Result<(), CgroupError> {
    set_memory(fs, &dirs.memory, mib_to_bytes(limits.memory_mib))?;
    write_if_present(fs, &dirs.memory.join("memory.swappiness"), "0")?;
    write(fs, &dirs.pids.join("pids.max"), &limits.pids.to_string())?;
    write(
        fs,
        &dirs.cpu.join("cpu.cfs_period_us"),
        &CPU_PERIOD_US.to_string(),
    )?;
    let quota = cpu_quota_us(limits.cpu_millicores);
    write(fs, &dirs.cpu.join("cpu.cfs_quota_us"), &quota.to_string())
}

/// Sets `memory.limit_in_bytes` and, when swap accounting is on, caps
/// memory+swap at the same value (so no swap at all). The kernel requires
/// memsw >= memory at every moment: when lowering (a fresh cgroup starts at
/// "unlimited") memory goes first, when raising memsw goes first.
fn set_memory(fs: &dyn CgroupFs, dir: &Path, bytes: u64) -> Result<(), CgroupError> {
    let memory = dir.join("memory.limit_in_bytes");
    let memsw = dir.join("memory.memsw.limit_in_bytes");
    let value = bytes.to_string();
    if !fs.exists(&memsw) {
        return write(fs, &memory, &value);
    }
    if bytes <= read_u64(fs, &memory)? {
        write(fs, &memory, &value)?;
        write(fs, &memsw, &value)
    } else {
        write(fs, &memsw, &value)?;
        write(fs, &memory, &value)
    }
}

/// Moves `pid` into the cgroup in every controller, memory first.
pub(super) fn add_pid(fs: &dyn CgroupFs, dirs: &Dirs, pid: u32) -> Result<(), CgroupError> {
    for dir in dirs.unique() {
        write(fs, &dir.join("cgroup.procs"), &pid.to_string())?;
    }
    Ok(())
}

/// Whether the kernel OOM-killed a process here: `oom_kill` of
/// `memory.oom_control` (kernel >= 4.13). Not `memory.failcnt`: it also
/// counts ordinary reclaim at the limit.
pub(super) fn oom_killed(fs: &dyn CgroupFs, dirs: &Dirs) -> Result<bool, CgroupError> {
    Ok(read_keyed(fs, &dirs.memory.join("memory.oom_control"), "oom_kill")? > 0)
}

pub(super) fn cpu_usage_ns(fs: &dyn CgroupFs, dirs: &Dirs) -> Result<u64, CgroupError> {
    read_u64(fs, &dirs.cpuacct.join("cpuacct.usage"))
}

pub(super) fn memory_peak_bytes(fs: &dyn CgroupFs, dirs: &Dirs) -> Result<u64, CgroupError> {
    read_u64(fs, &dirs.memory.join("memory.max_usage_in_bytes"))
}

/// FROZEN, wait until frozen, SIGKILL every member, THAWED. Without a freezer
/// directory (a half-made cgroup being reaped) the members are just killed.
pub(super) fn kill_all(fs: &dyn CgroupFs, dirs: &Dirs) -> Result<(), CgroupError> {
    let state = match &dirs.freezer {
        Some(dir) if fs.exists(&dir.join("freezer.state")) => dir.join("freezer.state"),
        _ => return files::kill_listed(fs, dirs),
    };
    let is_frozen = || Ok(read(fs, &state)?.trim() == "FROZEN");
    files::freeze_kill_thaw(
        fs,
        dirs,
        (&state, "FROZEN", "THAWED"),
        is_frozen,
        FREEZE_TIMEOUT,
    )
}
