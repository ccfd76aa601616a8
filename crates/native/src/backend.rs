//! [`NativeBackend`]: the `Backend` that makes sandboxes out of the kernel's
//! own primitives. A session = lease a uid, make a cgroup, plan, spawn, wait
//! for the runner (and set up the session's environment and files); then
//! any number of supervised executions; then tear down — and nothing of the
//! sandbox remains afterwards. A one-shot execution is a session of one.

use crate::cgroup::{Cgroup, CgroupError, CgroupManager, Version};
use crate::plan::{RootPlan, SandboxPlan};
use crate::seccomp::SeccompPolicy;
use crate::session::NativeSession;
use crate::spawn;
use crate::supervisor::{self, Link};
use crate::uid;
use base64::Engine;
use kiln_core::protocol::{SupervisorMsg, WireFile};
use kiln_core::{
    check_request, Backend, BackendError, ExecRequest, ExecutionResult, Isolation, Outcome,
    Session, SessionOptions,
};
use kiln_policy::{Config, Limits};
use std::io;
use std::path::PathBuf;

/// The runtime tree a sandbox's root is made of (see `kiln env setup`).
#[derive(Debug, Clone)]
pub struct RuntimeSpec {
    /// Host path of the tree.
    pub root: PathBuf,
    /// Its top-level directories, each bound read-only into the sandbox.
    pub top_level: Vec<String>,
    /// In-sandbox paths.
    pub interpreter: String,
    pub runner: String,
    pub site_packages: String,
    pub mpl_cache: String,
    /// Extra environment the runtime needs (e.g. a library path).
    pub env: Vec<(String, String)>,
    /// Host directory of the wheelhouse library trees
    /// (`<data_dir>/libraries`); a session may get one at `/libraries`.
    pub libraries_dir: PathBuf,
}

/// The native Linux backend.
pub struct NativeBackend {
    config: Config,
    runtime: RuntimeSpec,
    seccomp: SeccompPolicy,
    cgroups: CgroupManager,
    run_dir: PathBuf,
    landlock_abi: Option<u32>,
    spawner: Box<dyn spawn::Spawner>,
    /// Egress-enabled sandboxes: their seccomp variant and each
    /// environment's proxy (none when no environment has egress).
    egress_seccomp: SeccompPolicy,
    egress: crate::egress::Proxies,
}

fn unavailable(why: impl Into<String>, hint: impl Into<String>) -> BackendError {
    BackendError::Unavailable {
        what: "the native sandbox".into(),
        why: why.into(),
        hint: hint.into(),
    }
}

fn setup_err(step: &'static str) -> impl Fn(io::Error) -> BackendError {
    move |source| BackendError::Setup { step, source }
}

fn cgroup_err(step: &'static str) -> impl Fn(CgroupError) -> BackendError {
    move |e| BackendError::Setup {
        step,
        source: io::Error::other(e.to_string()),
    }
}

/// Where kiln keeps its per-host runtime state (uid leases, the mount point).
pub fn default_run_dir() -> PathBuf {
    std::env::var_os("KILN_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/kiln"))
}

impl NativeBackend {
    /// Checks the host can make sandboxes, reaps what a crashed kiln left,
    /// and compiles the seccomp filter once.
    pub fn new(config: &Config, runtime: RuntimeSpec) -> Result<Self, BackendError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(unavailable(
                "kiln is not running as root, and a distinct uid per sandbox, cgroup limits and the id maps need it",
                "run kiln as root (e.g. `sudo kiln ...`), or use the docker backend",
            ));
        }
        let seccomp = SeccompPolicy::default_policy().map_err(|e| {
            unavailable(
                format!("the seccomp filter cannot be compiled: {e}"),
                "this is a bug in kiln; please report it",
            )
        })?;
        let cgroups = CgroupManager::detect(&config.sandbox)
            .map_err(|e| unavailable(format!("cgroups: {e}"), "see `kiln doctor`"))?;
        cgroups
            .ensure_parent()
            .map_err(|e| unavailable(format!("cgroups: {e}"), "see `kiln doctor`"))?;
        let run_dir = default_run_dir();
        for dir in [run_dir.clone(), run_dir.join("root")] {
            std::fs::create_dir_all(&dir).map_err(setup_err("run directory"))?;
        }
        let egress_seccomp = SeccompPolicy::egress_policy().map_err(|e| {
            unavailable(
                format!("the egress seccomp filter cannot be compiled: {e}"),
                "this is a bug in kiln; please report it",
            )
        })?;
        let egress = crate::egress::Proxies::bind(
            &config.environments,
            &run_dir,
            config.sandbox.uid_base - 2,
        ).map_err(|e| {
            unavailable(
                format!("the egress proxy cannot listen: {e}"),
                "check the egress tables in kiln.toml (`kiln policy check`) and that the run directory is writable",
            )
        })?;
        let reaped = cgroups
            .reap_stale(owner_alive)
            .map_err(cgroup_err("reap stale cgroups"))?;
        if !reaped.is_empty() {
            tracing::warn!(?reaped, "removed cgroups left behind by a kiln that died");
        }
        Ok(Self {
            config: config.clone(),
            runtime,
            seccomp,
            cgroups,
            run_dir,
            spawner: Box::new(spawn::FreshSpawner),
            egress_seccomp,
            egress,
            landlock_abi: crate::sys::landlock_abi()
                .map(|abi| abi.min(crate::landlock_rules::ABI_TARGET_NUM)),
        })
    }

    /// Forks sandboxes from a warm zygote template instead of a fresh
    /// process each (`zygote_dir` holds the template's library and script).
    /// Must be called while the process is single-threaded.
    pub fn use_zygote(&mut self, zygote_dir: PathBuf) -> Result<(), BackendError> {
        // The template binds the library trees' directory when it starts,
        // so that trees built later are visible to its forks.
        std::fs::create_dir_all(&self.runtime.libraries_dir).map_err(setup_err("library trees"))?;
        let config = crate::zygote::ZygoteConfig {
            runtime: self.runtime.clone(),
            zygote_dir,
            sandbox: self.config.sandbox.clone(),
            run_dir: self.run_dir.clone(),
            env: self.runner_env(&self.config.limits),
            recycle_after: self.config.sandbox.zygote_recycle_after,
            datasets: self.config.sandbox.datasets.clone().into_iter().collect(),
            egress_dir: self.egress.dir().map(PathBuf::from),
            libraries_dir: self.runtime.libraries_dir.clone(),
        };
        let spawner = crate::zygote::ZygoteSpawner::start(config).map_err(|e| {
            unavailable(
                format!("the zygote did not start: {e}"),
                "run with the zygote off (`sandbox.zygote = false`) and report this",
            )
        })?;
        self.spawner = Box::new(spawner);
        Ok(())
    }

    /// `fresh` or `zygote`.
    pub fn spawner_kind(&self) -> &'static str {
        self.spawner.kind()
    }

    fn runner_env(&self, limits: &Limits) -> Vec<(String, String)> {
        runner_env(&self.runtime, limits)
    }

    /// Makes a sandbox and waits for its runner. A sandbox whose runner did
    /// not come up is returned dead, its first execution saying why.
    fn open_session(&self, options: &SessionOptions) -> Result<NativeSession, BackendError> {
        let limits = &options.limits;
        let lease = uid::lease(
            &self.run_dir.join("uids"),
            self.config.sandbox.uid_base,
            self.config.sandbox.uid_count,
        )
        .map_err(setup_err("uid lease"))?;
        let id = format!(
            "k{}-{}-{:08x}",
            lease.slot,
            std::process::id(),
            random_u32()
        );
        // Dropping the cgroup on an error below kills and removes it.
        let cgroup = self
            .cgroups
            .create(&id, limits)
            .map_err(cgroup_err("cgroup create"))?;
        let spawned = self.spawn(&cgroup, lease.uid, limits, options)?;
        let mut link = Link::new(spawned, limits).map_err(setup_err("session channel"))?;
        link.deny_imports = options.deny_imports.clone();
        let isolation = Isolation {
            backend: "native".into(),
            uid: Some(lease.uid),
            cgroup: Some(match cgroup.version() {
                Version::V1 => "v1".into(),
                Version::V2 => "v2".into(),
            }),
            seccomp: true,
            landlock_abi: self.landlock_abi,
        };
        let host = Box::new(crate::session::NativeHost {
            cgroup,
            _lease: lease,
        });
        let mut session = NativeSession::new(id, limits.clone(), isolation, link, host);
        session.start(setup_msg(options).as_ref());
        Ok(session)
    }

    /// The host directory of a built library tree.
    fn library_tree<'n>(
        &self,
        name: Option<&'n str>,
    ) -> Result<Option<(&'n str, PathBuf)>, BackendError> {
        let Some(name) = name else { return Ok(None) };
        let path = self.runtime.libraries_dir.join(name);
        if !path.is_dir() {
            return Err(BackendError::InvalidOptions(
                kiln_core::OptionsError::LibraryTree {
                    name: name.to_string(),
                    reason: format!("{} is not a directory", path.display()),
                },
            ));
        }
        Ok(Some((name, path)))
    }

    /// The configured host directory of each requested dataset.
    fn datasets(&self, names: &[String]) -> Result<Vec<(String, PathBuf)>, BackendError> {
        let configured = &self.config.sandbox.datasets;
        names
            .iter()
            .map(|name| match configured.get(name) {
                Some(path) => Ok((name.clone(), path.clone())),
                None => Err(BackendError::InvalidOptions(
                    kiln_core::OptionsError::UnknownDataset {
                        name: name.clone(),
                        configured: configured.keys().cloned().collect::<Vec<_>>().join(", "),
                    },
                )),
            })
            .collect()
    }

    fn spawn(
        &self,
        cgroup: &Cgroup,
        uid: u32,
        limits: &Limits,
        options: &SessionOptions,
    ) -> Result<spawn::Spawned, BackendError> {
        let rt = &self.runtime;
        let new_root = self.run_dir.join("root");
        let egress = self
            .egress
            .for_session(options.egress.as_deref())
            .map_err(setup_err("egress proxy"))?;
        let root = RootPlan::new(&new_root, &rt.root, &rt.top_level, limits)
            .with_datasets(&new_root, &self.datasets(&options.datasets)?)
            .with_libraries(
                &new_root,
                self.library_tree(options.library_tree.as_deref())?,
            )
            .with_egress(&new_root, egress);
        let mut env = self.runner_env(limits);
        if egress.is_some() {
            env.extend(crate::egress::sandbox_env());
        }
        let seccomp = match egress {
            Some(_) => &self.egress_seccomp,
            None => &self.seccomp,
        };
        let argv = vec![
            rt.interpreter.clone(),
            "-I".into(),
            "-B".into(),
            rt.runner.clone(),
        ];
        let plan = SandboxPlan::new(
            root,
            uid,
            limits.clone(),
            &rt.interpreter,
            argv,
            env,
            seccomp,
            &rt.top_level,
        );
        let dir_fd = cgroup.dir_fd_v2().map_err(cgroup_err("cgroup fd"))?;
        let spawned = self
            .spawner
            .spawn(
                &plan,
                dir_fd.as_ref().map(std::os::fd::AsRawFd::as_raw_fd),
                // v2 with CLONE_INTO_CGROUP is already in; adding again is a no-op.
                &|pid| {
                    cgroup
                        .add_pid(pid as u32)
                        .map_err(|e| io::Error::other(e.to_string()))
                },
            )
            .map_err(spawn_error)?;
        tracing::debug!(
            pid = spawned.pid,
            uid,
            cgroup = cgroup.id(),
            "sandbox started"
        );
        Ok(spawned)
    }
}

/// The runner's environment in a sandbox made of `rt` with `limits`
/// (every backend runs the same runner the same way).
pub fn runner_env(rt: &RuntimeSpec, limits: &Limits) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("PATH", "/usr/local/bin:/usr/bin:/bin".to_string()),
        ("HOME", "/work".into()),
        ("LANG", "C.UTF-8".into()),
        ("MPLBACKEND", "Agg".into()),
        ("MPLCONFIGDIR", "/tmp/.mpl".into()),
        ("OPENBLAS_NUM_THREADS", "1".into()),
        ("OMP_NUM_THREADS", "1".into()),
        ("MKL_NUM_THREADS", "1".into()),
        ("KILN_SITE", rt.site_packages.clone()),
        ("KILN_MPL_CACHE", rt.mpl_cache.clone()),
        ("KILN_ARTIFACT_MAX_COUNT", limits.artifact_count.to_string()),
        ("KILN_ARTIFACT_MAX_BYTES", limits.artifact_bytes.to_string()),
        (
            "KILN_FRAME_MAX_BYTES",
            supervisor::frame_cap(limits).to_string(),
        ),
        // One byte past the cap, so the supervisor (which alone decides)
        // sees the stream overflow rather than a runner that went quiet.
        (
            "KILN_STREAM_MAX_BYTES",
            (limits.output_bytes + 1).to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    // The runtime's own settings win; each name appears once.
    for (key, value) in &rt.env {
        match env.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value.clone(),
            None => env.push((key.clone(), value.clone())),
        }
    }
    env
}

/// The `setup` frame of a session with environment variables or input
/// files (none otherwise: a one-shot sandbox skips that round trip).
pub fn setup_msg(options: &SessionOptions) -> Option<SupervisorMsg> {
    if options.env.is_empty() && options.files.is_empty() {
        return None;
    }
    let files = options
        .files
        .iter()
        .map(|f| WireFile {
            path: f.path.clone(),
            data_b64: base64::engine::general_purpose::STANDARD.encode(&f.data),
        })
        .collect();
    Some(SupervisorMsg::Setup {
        env: options.env.clone(),
        files,
    })
}

impl Backend for NativeBackend {
    fn name(&self) -> &'static str {
        "native"
    }

    fn shutdown(&self) {
        self.spawner.shutdown();
    }

    fn create_session(&self, options: &SessionOptions) -> Result<Box<dyn Session>, BackendError> {
        options.validate()?;
        let session = self.open_session(options)?;
        if let Some(why) = session.start_failure() {
            // Dropping the session tears the sandbox down.
            return Err(BackendError::Startup(why));
        }
        Ok(Box::new(session))
    }

    /// The fast path: a session of one execution, closed at once; the
    /// runner exits by itself at the end of the channel (`exit_code` 0).
    fn execute_with(
        &self,
        request: &ExecRequest,
        options: &SessionOptions,
    ) -> Result<ExecutionResult, BackendError> {
        if let Some(why) = check_request(request, &options.limits) {
            return Ok(ExecutionResult::without_sandbox(Outcome::Rejected, why));
        }
        options.validate()?;
        let mut session = self.open_session(options)?;
        let mut result = session.execute(request, &mut |_| {});
        let status = session.shut_down();
        if result.exit_code.is_none() {
            result.exit_code = status;
        }
        result.session_ended = false;
        Ok(result)
    }
}

/// A kernel that refuses to make the namespaces (user namespaces disabled,
/// no clone3, a seccomp'd container around kiln) means this backend cannot
/// run here: `unavailable`, with the kernel's word. Anything else is a fault.
fn spawn_error(e: spawn::SpawnError) -> BackendError {
    match e {
        spawn::SpawnError::Clone(source) => unavailable(
            format!("the kernel refused to create the sandbox namespaces ({source})"),
            "enable user namespaces (`sysctl -w user.max_user_namespaces=15000`; on Debian also `kernel.unprivileged_userns_clone=1`) on Linux 5.12+; `kiln doctor` shows what is missing",
        ),
        spawn::SpawnError::Step { ref step, ref source }
            if step == "build-root" && source.raw_os_error() == Some(libc::ENOSYS) =>
        {
            unavailable(format!("{e}"), "kiln needs Linux 5.12+ (mount_setattr); `kiln doctor` checks it")
        }
        other => BackendError::Setup {
            step: "spawn",
            source: io::Error::other(other.to_string()),
        },
    }
}

/// A sandbox cgroup is live while the kiln process named in it is.
pub(crate) fn owner_alive(name: &str) -> bool {
    let pid: Option<i32> = name.split('-').nth(1).and_then(|p| p.parse().ok());
    match pid {
        Some(pid) if pid > 0 => {
            // SAFETY: kill with signal 0 only checks for existence.
            let ret = unsafe { libc::kill(pid, 0) };
            ret == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
        }
        _ => false,
    }
}

fn random_u32() -> u32 {
    let mut buf = [0u8; 4];
    // SAFETY: `buf` is valid for 4 bytes of writes.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n == 4 {
        u32::from_ne_bytes(buf)
    } else {
        std::process::id() ^ 0x6b69_6c6e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_namespaces_are_unavailable_not_a_crash() {
        for errno in [libc::EPERM, libc::ENOSPC, libc::EINVAL, libc::ENOSYS] {
            let e = spawn_error(spawn::SpawnError::Clone(io::Error::from_raw_os_error(
                errno,
            )));
            let BackendError::Unavailable { why, hint, .. } = e else {
                panic!("{errno}: not unavailable")
            };
            assert!(why.contains("refused"), "{why}");
            assert!(hint.contains("user namespaces"), "{hint}");
        }
    }

    #[test]
    fn missing_mount_setattr_is_unavailable() {
        let e = spawn_error(spawn::SpawnError::Step {
            step: "build-root".into(),
            source: io::Error::from_raw_os_error(libc::ENOSYS),
        });
        assert!(matches!(e, BackendError::Unavailable { .. }));
        let e = spawn_error(spawn::SpawnError::Step {
            step: "build-root".into(),
            source: io::Error::from_raw_os_error(libc::EACCES),
        });
        assert!(matches!(e, BackendError::Setup { .. }));
    }
}
