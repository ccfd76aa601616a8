//! What isolation this host can give, and for each missing piece why and
//! how to fix it. Used by `kiln doctor`.

use crate::cgroup::{CgroupManager, Version};
use kiln_policy::SandboxConfig;
use serde::Serialize;
use std::path::Path;

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    /// What to do when `ok` is false.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn check(name: &'static str, ok: bool, detail: impl Into<String>, fix: &str) -> Check {
    Check {
        name,
        ok,
        detail: detail.into(),
        fix: (!ok).then(|| fix.to_string()),
    }
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Runs every native-backend check.
pub fn native_checks(config: &SandboxConfig) -> Vec<Check> {
    let mut out = vec![kernel(), root(), user_namespaces()];
    for ns in ["mnt", "pid", "net", "ipc", "uts", "cgroup"] {
        let present = Path::new(&format!("/proc/self/ns/{ns}")).exists();
        out.push(check(
            ns_name(ns),
            present,
            if present { "available" } else { "missing" },
            "rebuild the kernel with CONFIG_NAMESPACES and the matching CONFIG_*_NS",
        ));
    }
    out.push(cgroups(config));
    out.push(seccomp());
    out.push(landlock());
    out
}

fn ns_name(ns: &str) -> &'static str {
    match ns {
        "mnt" => "mount namespace",
        "pid" => "pid namespace",
        "net" => "network namespace",
        "ipc" => "ipc namespace",
        "uts" => "uts namespace",
        _ => "cgroup namespace",
    }
}

fn kernel() -> Check {
    let release = read("/proc/sys/kernel/osrelease").unwrap_or_default();
    let (major, minor) = parse_version(&release);
    // clone3 + CLONE_INTO_CGROUP 5.7, mount_setattr 5.12, proc subset=pid 5.8.
    check(
        "kernel",
        (major, minor) >= (5, 12),
        format!("Linux {release}"),
        "kiln's native backend needs Linux 5.12 or newer (mount_setattr); use the docker backend on older kernels",
    )
}

/// (major, minor) of a kernel release string such as `6.18.44-fc`.
pub fn parse_version(release: &str) -> (u32, u32) {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

fn root() -> Check {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    check(
        "running as root",
        euid == 0,
        format!("euid {euid}"),
        "run kiln as root: a distinct uid per sandbox and cgroup limits need it",
    )
}

fn user_namespaces() -> Check {
    let max = read("/proc/sys/user/max_user_namespaces")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    check(
        "user namespaces",
        max > 0,
        format!("user.max_user_namespaces = {max}"),
        "enable them: `sysctl -w user.max_user_namespaces=15000`",
    )
}

fn cgroups(config: &SandboxConfig) -> Check {
    match CgroupManager::detect(config) {
        Ok(m) => {
            let version = match m.version() {
                Version::V1 => "v1 (memory, pids, cpu, cpuacct, freezer)",
                Version::V2 => "v2 (memory, pids, cpu)",
            };
            check("cgroups", true, version, "")
        }
        Err(e) => check("cgroups", false, e.to_string(), "see the hint above"),
    }
}

fn seccomp() -> Check {
    let status = read("/proc/self/status").unwrap_or_default();
    let present = status.lines().any(|l| l.starts_with("Seccomp:"));
    check(
        "seccomp",
        present,
        if present {
            "filter mode available"
        } else {
            "missing"
        },
        "rebuild the kernel with CONFIG_SECCOMP_FILTER",
    )
}

fn landlock() -> Check {
    match crate::sys::landlock_abi() {
        Some(abi) => check(
            "landlock",
            true,
            format!("ABI {abi} (kiln enforces up to ABI {})", crate::landlock_rules::ABI_TARGET_NUM),
            "",
        ),
        None => check(
            "landlock",
            false,
            "not enabled",
            "add `landlock` to the kernel's lsm= list (CONFIG_SECURITY_LANDLOCK); kiln still runs, with one wall fewer",
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kernel_version_parsing() {
        assert_eq!(super::parse_version("6.18.44-fc-v1252"), (6, 18));
        assert_eq!(super::parse_version("5.4.0"), (5, 4));
        assert_eq!(super::parse_version(""), (0, 0));
    }
}
