//! What one sandbox container is made with. Every flag carries its reason;
//! `docs/docker.md` lists what each runtime makes of them.

use bollard::models::{ContainerCreateBody, HostConfig, ResourcesUlimits};
use kiln_policy::Limits;
use std::collections::HashMap;

/// The unprivileged user every sandbox runs as (`nobody`): never root,
/// not even inside the container.
pub const SANDBOX_USER: &str = "65534:65534";
pub const SANDBOX_UID: u32 = 65534;
/// The pids cgroup limit of a gVisor container: it counts the Sentry's
/// host threads and one ptrace stub per sandboxed process, which the
/// sandbox's own limit (64) would starve ("error initializing first
/// thread: resource temporarily unavailable", exit 2). gVisor does not
/// limit the sandboxed processes by it (FIELD-NOTES).
pub const GVISOR_PIDS: u64 = 1024;
/// RLIMIT_NPROC in Podman's containers (see [`create_body`]).
pub const NPROC_CEILING: i64 = 4096;

/// Label keys (the reaper finds kiln's containers by them).
pub const LABEL_SANDBOX: &str = "kiln.sandbox";
pub const LABEL_OWNER_PID: &str = "kiln.owner.pid";
pub const LABEL_OWNER_START: &str = "kiln.owner.start";
pub const LABEL_OWNER_BOOT: &str = "kiln.owner.boot";
pub const LABEL_CREATED: &str = "kiln.created";
pub const LABEL_DEADLINE: &str = "kiln.deadline";

/// Everything a container needs besides the limits.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub image: String,
    /// The OCI runtime (`runc`, `crun`, `runsc`); `None`: the engine's default.
    pub runtime: Option<String>,
    /// The relay's argv prefix (interpreter + flags), then the runner's argv.
    pub relay: Vec<String>,
    pub runner: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The seccomp profile (JSON).
    pub seccomp: String,
    pub labels: HashMap<String, String>,
    /// The container's pids cgroup limit when it is not the sandbox's
    /// (gVisor: the cgroup holds the Sentry's host threads and ptrace stubs,
    /// not the sandboxed processes, see [`GVISOR_PIDS`]).
    pub pids_override: Option<u64>,
    /// Read-only bind mounts `(host dir, container dir)` (datasets).
    pub binds: Vec<(String, String)>,
    /// Docker (true) or Podman (false). Podman 4.3 refuses the tmpfs
    /// options `nr_inodes`, `uid` and `gid`: there /work is mode 1777
    /// (sticky, like /tmp) and its inode count is capped by its size only;
    /// and it needs an explicit nproc ulimit.
    pub full_tmpfs_options: bool,
}

/// The container's creation body.
pub fn create_body(spec: &ContainerSpec, limits: &Limits) -> ContainerCreateBody {
    let memory = (limits.memory_mib << 20) as i64;
    let mut cmd = spec.relay.clone();
    cmd.extend(spec.runner.iter().cloned());
    let mut tmpfs = HashMap::from([
        (
            "/tmp".to_string(),
            // The only other writable place: matplotlib's config, scratch.
            format!(
                "rw,noexec,nosuid,nodev,size={}m,mode=1777",
                limits.tmp_mib.max(1)
            ),
        ),
        (
            // Over the engine's read-only sysfs: nothing of the host's
            // devices and kernel settings to read.
            "/sys".to_string(),
            "ro,noexec,nosuid,nodev,size=4k,mode=0555".to_string(),
        ),
        (
            "/work".to_string(),
            // The working directory, owned by the sandbox user.
            if spec.full_tmpfs_options {
                format!(
                    "rw,noexec,nosuid,nodev,size={}m,nr_inodes={},uid={SANDBOX_UID},gid={SANDBOX_UID},mode=0700",
                    limits.disk_mib.max(1),
                    limits.inodes.max(64)
                )
            } else {
                format!(
                    "rw,noexec,nosuid,nodev,size={}m,mode=1777",
                    limits.disk_mib.max(1)
                )
            },
        ),
    ]);
    if !spec.full_tmpfs_options {
        // Podman mounts writable, exec-able tmpfs on /run and /var/tmp of
        // a read-only container; read-only empty ones replace them.
        for dir in ["/run", "/var/tmp"] {
            tmpfs.insert(
                dir.into(),
                "ro,noexec,nosuid,nodev,size=4k,mode=0555".into(),
            );
        }
    }
    let host_config = HostConfig {
        // No network at all: no interface but loopback.
        network_mode: Some("none".into()),
        // Memory capped, and swap capped at the same figure (no swap).
        memory: Some(memory),
        memory_swap: Some(memory),
        // Fork bombs stop at the pids limit.
        pids_limit: Some(spec.pids_override.unwrap_or(limits.pids) as i64),
        // CPU share: millicores → nano CPUs.
        nano_cpus: (limits.cpu_millicores > 0).then_some(limits.cpu_millicores as i64 * 1_000_000),
        // Nothing of the image is writable; /work and /tmp are sized tmpfs.
        readonly_rootfs: Some(true),
        tmpfs: Some(tmpfs),
        // No capability, no way to gain one, kiln's syscall policy.
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec![
            "no-new-privileges:true".into(),
            format!("seccomp={}", spec.seccomp),
        ]),
        // An init as PID 1 reaps what user code forks and forwards signals.
        init: Some(true),
        // Removed by kiln explicitly (the exit code is read first); the
        // reaper removes what a dead kiln left.
        auto_remove: Some(false),
        runtime: spec.runtime.clone(),
        // The native backend's rlimits but nproc: it counts every process
        // of the uid on the host, all containers share uid 65534 and so do
        // gVisor's Sentries (whose threads then fail to start): the pids
        // limit is the per-sandbox cap. Podman fails to start a container
        // without explicit nofile and nproc here (FIELD-NOTES).
        ulimits: Some(
            [
                Some(ulimit("core", 0)),
                Some(ulimit("nofile", limits.open_files as i64)),
                Some(ulimit("fsize", (limits.file_size_mib << 20) as i64)),
                (!spec.full_tmpfs_options).then(|| ulimit("nproc", NPROC_CEILING)),
            ]
            .into_iter()
            .flatten()
            .collect(),
        ),
        // Its own cgroup namespace: the sandbox sees its cgroup as `/`.
        cgroupns_mode: Some(bollard::models::HostConfigCgroupnsModeEnum::PRIVATE),
        binds: (!spec.binds.is_empty()).then(|| {
            spec.binds
                .iter()
                .map(|(host, inside)| format!("{host}:{inside}:ro"))
                .collect()
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: Some(cmd),
        entrypoint: Some(vec![]),
        env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
        user: Some(SANDBOX_USER.into()),
        hostname: Some("kiln".into()),
        working_dir: Some("/work".into()),
        labels: Some(spec.labels.clone()),
        network_disabled: Some(true),
        // The relay's stdin is the supervisor's frames; it closes with the
        // attach (end of the channel asks the runner to exit).
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(true),
        tty: Some(false),
        host_config: Some(host_config),
        ..Default::default()
    }
}

fn ulimit(name: &str, value: i64) -> ResourcesUlimits {
    ResourcesUlimits {
        name: Some(name.into()),
        soft: Some(value),
        hard: Some(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        ContainerSpec {
            image: "kiln-python:x".into(),
            runtime: Some("runsc".into()),
            relay: vec!["/usr/bin/python3".into(), "-c".into(), "relay".into()],
            runner: vec!["/usr/bin/python3".into(), "/opt/kiln/runner.py".into()],
            env: vec![("A".into(), "b".into())],
            seccomp: "{}".into(),
            labels: HashMap::from([(LABEL_SANDBOX.into(), "1".into())]),
            binds: vec![],
            full_tmpfs_options: true,
            pids_override: None,
        }
    }

    #[test]
    fn the_brief_flags_and_more() {
        let limits = Limits::default();
        let body = create_body(&spec(), &limits);
        let h = body.host_config.as_ref().unwrap();
        assert_eq!(h.network_mode.as_deref(), Some("none"));
        assert_eq!(body.network_disabled, Some(true));
        assert_eq!(h.memory, Some((limits.memory_mib << 20) as i64));
        assert_eq!(h.memory_swap, h.memory, "no swap beyond the memory limit");
        assert_eq!(h.pids_limit, Some(limits.pids as i64));
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.cap_drop.as_deref(), Some(&["ALL".to_string()][..]));
        let sec = h.security_opt.as_ref().unwrap();
        assert!(sec.iter().any(|s| s.starts_with("no-new-privileges")));
        assert!(sec.iter().any(|s| s == "seccomp={}"));
        assert_eq!(h.init, Some(true));
        assert_eq!(h.runtime.as_deref(), Some("runsc"));
        assert_eq!(body.user.as_deref(), Some(SANDBOX_USER));
        let tmpfs = h.tmpfs.as_ref().unwrap();
        for dir in ["/tmp", "/work"] {
            let opts = &tmpfs[dir];
            for flag in ["noexec", "nosuid", "nodev", "size="] {
                assert!(opts.contains(flag), "{dir}: {opts}");
            }
        }
        assert!(tmpfs["/work"].contains(&format!("size={}m", limits.disk_mib)));
        assert_eq!(body.labels.as_ref().unwrap()[LABEL_SANDBOX], "1");
        assert_eq!(
            body.cmd.as_ref().unwrap().len(),
            5,
            "relay argv then runner argv"
        );
        assert_eq!(h.ulimits.as_ref().unwrap().len(), 3, "no host-wide nproc");
    }
}
