//! [`DockerBackend`]: one container per sandbox, made through the Engine
//! API, its runner driven by the same supervisor as the native backend
//! (the same limits, outcomes, file requests and protocol checks).
//!
//! A session = create the container (the flags of [`crate::spec`]), attach,
//! start, wait for the runner's `ready`; then executions over the attached
//! streams (no `docker exec`); then remove it. Time limits and interrupts
//! are signals sent through the API, never by killing a client.

use crate::bridge;
use crate::engine::{unavailable, Engine, EngineKind};
use crate::host::{self, CgroupFiles, ContainerHost};
use crate::reaper::{self, now_secs, Owner};
use crate::spec::{self, ContainerSpec, SANDBOX_UID};
use bollard::query_parameters::CreateContainerOptionsBuilder;
use kiln_core::{
    check_request, Backend, BackendError, ExecRequest, ExecutionResult, Isolation, Outcome,
    Session, SessionOptions,
};
use kiln_native::{Link, NativeSession, RuntimeSpec};
use kiln_policy::{Config, Limits};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The relay that is the container's main process (run with `-c`, so any
/// image with a Python 3 and kiln's runner works).
pub const RELAY_SOURCE: &str = include_str!("../shim/relay.py");

/// How often the reaper looks for containers a dead kiln left.
const REAP_EVERY: Duration = Duration::from_secs(60);

/// How the backend is chosen.
#[derive(Debug, Clone, Default)]
pub struct DockerOptions {
    /// The engine's socket (`None`: `DOCKER_HOST` or /var/run/docker.sock).
    pub socket: Option<PathBuf>,
    /// `runc`, `crun` or `runsc` (`None`: the engine's default).
    pub runtime: Option<String>,
    /// The image (`None`: kiln's image for the runtime tree).
    pub image: Option<String>,
}

/// The container backend.
pub struct DockerBackend {
    engine: Arc<Engine>,
    config: Config,
    runtime: RuntimeSpec,
    oci_runtime: String,
    image: String,
    seccomp: String,
    owner: Owner,
    isolation: Isolation,
    stop_reaper: Arc<AtomicBool>,
}

impl std::fmt::Debug for DockerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerBackend")
            .field("engine", &self.engine)
            .field("runtime", &self.oci_runtime)
            .field("image", &self.image)
            .finish()
    }
}

/// How to register a runtime that the engine does not know.
pub fn runtime_hint(engine: EngineKind, runtime: &str) -> String {
    match (engine, runtime) {
        (EngineKind::Podman, _) => format!("Podman's API runs every container with its configured runtime: install {runtime} (`apt-get install {runtime}`), set `[engine] runtime = \"{runtime}\"` in /etc/containers/containers.conf and restart `podman system service`"),
        (_, "runsc") => "install gVisor (`apt-get install runsc`) and register it in /etc/docker/daemon.json as {\"runtimes\":{\"runsc\":{\"path\":\"/usr/bin/runsc\",\"runtimeArgs\":[\"--network=none\",\"--oci-seccomp\"]}}}, then `kill -HUP $(pidof dockerd)`".into(),
        (_, other) => format!("install it (`apt-get install {other}`) and register it in /etc/docker/daemon.json as {{\"runtimes\":{{\"{other}\":{{\"path\":\"/usr/bin/{other}\"}}}}}}, then `kill -HUP $(pidof dockerd)`"),
    }
}

impl DockerBackend {
    /// Connects to the engine, checks the runtime and the image, and
    /// removes what a dead kiln left behind.
    pub fn new(
        config: &Config,
        runtime: RuntimeSpec,
        options: DockerOptions,
    ) -> Result<Self, BackendError> {
        let socket = crate::engine::socket_from_env(options.socket.as_deref());
        let engine = Arc::new(Engine::connect(&socket)?);
        let oci_runtime = options
            .runtime
            .clone()
            .unwrap_or_else(|| engine.default_runtime.clone());
        if !engine.has_runtime(&oci_runtime) {
            return Err(unavailable(
                &format!("the {oci_runtime} runtime"),
                match engine.kind {
                    EngineKind::Docker => format!(
                        "docker {} on {} has no runtime `{oci_runtime}` (it has: {})",
                        engine.version,
                        socket.display(),
                        engine
                            .runtimes
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    EngineKind::Podman => format!(
                        "podman {} on {} runs containers with `{}`, not `{oci_runtime}`",
                        engine.version,
                        socket.display(),
                        engine.default_runtime
                    ),
                },
                runtime_hint(engine.kind, &oci_runtime),
            ));
        }
        let image = options
            .image
            .clone()
            .unwrap_or_else(|| crate::image::image_name(&runtime.root));
        if !crate::image::exists(&engine, &image)? {
            return Err(unavailable(
                &format!("the image {image}"),
                format!("{} has no image {image}", engine.kind.name()),
                if options.image.is_some() {
                    format!("load or build {image} first")
                } else {
                    format!(
                        "build it with `kiln image build{}`",
                        if engine.kind == EngineKind::Podman {
                            format!(" --socket {}", socket.display())
                        } else {
                            String::new()
                        }
                    )
                },
            ));
        }
        let profile = if oci_runtime == "runsc" {
            crate::seccomp::gvisor_profile()
        } else {
            crate::seccomp::docker_profile()
        };
        let seccomp = profile.map_err(|e| {
            unavailable(
                "kiln's seccomp profile",
                e.to_string(),
                "this is a bug in kiln; please report it",
            )
        })?;
        // Podman's compatible API reads `seccomp=` as a path on its host
        // (the same host: it listens on a local socket).
        let seccomp = if engine.kind == EngineKind::Podman {
            profile_file(&seccomp)?
        } else {
            seccomp
        };
        let isolation = Isolation {
            backend: format!("{}+{oci_runtime}", engine.kind.name()),
            uid: Some(SANDBOX_UID),
            cgroup: Some(format!("v{}", engine.cgroup_version)),
            // gVisor applies an OCI seccomp profile only with --oci-seccomp
            // (its own kernel is the wall in any case).
            seccomp: oci_runtime != "runsc"
                || engine
                    .runtimes
                    .get("runsc")
                    .is_some_and(|args| args.iter().any(|a| a.starts_with("--oci-seccomp"))),
            landlock_abi: None,
        };
        let backend = Self {
            engine,
            config: config.clone(),
            runtime,
            oci_runtime,
            image,
            seccomp,
            owner: Owner::current(),
            isolation,
            stop_reaper: Arc::new(AtomicBool::new(false)),
        };
        backend.reap();
        backend.start_reaper();
        Ok(backend)
    }

    /// What a result from this backend reports.
    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn image(&self) -> &str {
        &self.image
    }

    /// Removes kiln's containers whose kiln is gone or whose deadline
    /// passed; returns their names.
    pub fn reap(&self) -> Vec<String> {
        match reaper::reap(&self.engine) {
            Ok(reaped) => reaped,
            Err(e) => {
                tracing::warn!(error = %e, "the reaper could not list containers");
                Vec::new()
            }
        }
    }

    fn start_reaper(&self) {
        let engine = Arc::downgrade(&self.engine);
        let stop = self.stop_reaper.clone();
        let spawned = kiln_native::signals::with_watched_blocked(|| {
            std::thread::Builder::new()
                .name("kiln-reaper".into())
                .spawn(move || {
                    let tick = Duration::from_millis(500);
                    let mut waited = Duration::ZERO;
                    while !stop.load(Ordering::Acquire) {
                        std::thread::sleep(tick);
                        waited += tick;
                        if waited < REAP_EVERY {
                            continue;
                        }
                        waited = Duration::ZERO;
                        let Some(engine) = engine.upgrade() else {
                            break;
                        };
                        if let Err(e) = reaper::reap(&engine) {
                            tracing::warn!(error = %e, "the periodic reaper failed");
                        }
                    }
                })
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no periodic reaper thread; leftovers are removed at the next start");
        }
    }

    fn labels(&self, options: &SessionOptions) -> HashMap<String, String> {
        let now = now_secs();
        // The longest a container may rightly live: its session's lifetime
        // plus one execution's wall time and grace.
        let slack = (options.limits.wall_ms + options.limits.grace_ms) / 1000 + 60;
        let deadline = now + options.max_lifetime.as_secs() + slack;
        HashMap::from([
            (spec::LABEL_SANDBOX.into(), "1".into()),
            (spec::LABEL_OWNER_PID.into(), self.owner.pid.to_string()),
            (spec::LABEL_OWNER_START.into(), self.owner.start.to_string()),
            (spec::LABEL_OWNER_BOOT.into(), self.owner.boot.clone()),
            (spec::LABEL_CREATED.into(), now.to_string()),
            (spec::LABEL_DEADLINE.into(), deadline.to_string()),
        ])
    }

    fn container_spec(&self, options: &SessionOptions) -> Result<ContainerSpec, BackendError> {
        let rt = &self.runtime;
        let configured = &self.config.sandbox.datasets;
        let mut binds = Vec::new();
        for name in &options.datasets {
            let Some(path) = configured.get(name) else {
                return Err(BackendError::InvalidOptions(
                    kiln_core::OptionsError::UnknownDataset {
                        name: name.clone(),
                        configured: configured.keys().cloned().collect::<Vec<_>>().join(", "),
                    },
                ));
            };
            binds.push((path.display().to_string(), format!("/data/{name}")));
        }
        Ok(ContainerSpec {
            image: self.image.clone(),
            runtime: Some(self.oci_runtime.clone()),
            relay: vec![
                rt.interpreter.clone(),
                "-I".into(),
                "-B".into(),
                "-c".into(),
                RELAY_SOURCE.into(),
            ],
            runner: vec![
                rt.interpreter.clone(),
                "-I".into(),
                "-B".into(),
                rt.runner.clone(),
            ],
            env: kiln_native::runner_env(rt, &options.limits),
            seccomp: self.seccomp.clone(),
            labels: self.labels(options),
            binds,
            full_tmpfs_options: self.engine.kind != EngineKind::Podman,
            pids_override: (self.oci_runtime == "runsc").then_some(spec::GVISOR_PIDS),
        })
    }

    fn setup_error(&self, step: &'static str, e: bollard::errors::Error) -> BackendError {
        let text = e.to_string();
        if text.contains("unknown or invalid runtime")
            || text.contains("runtime") && text.contains("not found")
        {
            return unavailable(
                &format!("the {} runtime", self.oci_runtime),
                text,
                runtime_hint(self.engine.kind, &self.oci_runtime),
            );
        }
        if step == "start the container" && text.contains("OCI runtime") {
            return unavailable(
                &format!("the {} runtime", self.oci_runtime),
                format!("the engine could not start a container with it: {text}"),
                format!(
                    "`kiln doctor` checks each runtime; pick another with --runtime, or fix {}",
                    self.oci_runtime
                ),
            );
        }
        if text.contains("container-init binary not found") {
            return unavailable(
                "podman's init",
                text,
                "install it: `apt-get install catatonit`",
            );
        }
        if text.contains("No such image") {
            return unavailable(
                &format!("the image {}", self.image),
                text,
                "build it with `kiln image build`",
            );
        }
        if matches!(e, bollard::errors::Error::RequestTimeoutError)
            || text.contains("connection refused")
            || text.contains("No such file")
        {
            return unavailable(
                "the container engine",
                text,
                format!(
                    "is the engine on {} running? `kiln doctor` checks it",
                    self.engine.socket.display()
                ),
            );
        }
        BackendError::Setup {
            step,
            source: std::io::Error::other(text),
        }
    }

    /// Creates and starts a container and waits for its runner. A sandbox
    /// whose runner did not come up is returned dead, its first execution
    /// saying why.
    fn open_session(&self, options: &SessionOptions) -> Result<NativeSession, BackendError> {
        let limits = &options.limits;
        if let Some(tree) = &options.library_tree {
            // The image holds the runtime's libraries only; a wheelhouse tree
            // is not bound into containers (yet): refuse rather than let the
            // import fail inside.
            return Err(BackendError::InvalidOptions(
                kiln_core::OptionsError::LibraryTree {
                    name: tree.clone(),
                    reason: "wheelhouse libraries are available on the native backend only; \
                             Hint: run with --backend native"
                        .into(),
                },
            ));
        }
        if let Some(environment) = &options.egress {
            // Containers run with network none and no proxy socket: an
            // egress environment would silently get no network at all.
            return Err(BackendError::Unavailable {
                what: "egress on the container backend".into(),
                why: format!("environment `{environment}` has an egress allowlist, which only the native backend provides"),
                hint: "run it with --backend native, or use an environment without [egress]".into(),
            });
        }
        let spec = self.container_spec(options)?;
        let name = format!("kiln-{}-{:08x}", self.owner.pid, random_u32());
        let body = spec::create_body(&spec, limits);
        let docker = self.engine.docker.clone();
        let create_options = CreateContainerOptionsBuilder::default().name(&name).build();
        let created = self
            .engine
            .call(async move { docker.create_container(Some(create_options), body).await })
            .map_err(|e| self.setup_error("create the container", e))?;
        let id = created.id;
        let attached = match bridge::attach_and_start(&self.engine, &id) {
            Ok(a) => a,
            Err(e) => {
                host::remove(&self.engine, &id);
                return Err(self.setup_error("start the container", e));
            }
        };
        let cgroup = CgroupFiles::locate(&id);
        if !cgroup.found() {
            tracing::debug!(container = %name, "its cgroup was not found: no CPU-time accounting from it");
        }
        let host = Box::new(ContainerHost {
            engine: self.engine.clone(),
            id: id.clone(),
            cgroup,
            exit: attached.exit,
            last_peak: Default::default(),
            oom_seen: Default::default(),
            memory_limit_bytes: limits.memory_mib << 20,
        });
        let link = match Link::new(attached.spawned, limits) {
            Ok(mut link) => {
                // The environment's import table, sent with every execution.
                link.deny_imports = options.deny_imports.clone();
                link
            }
            Err(source) => {
                host::remove(&self.engine, &id);
                return Err(BackendError::Setup {
                    step: "session channel",
                    source,
                });
            }
        };
        let mut session =
            NativeSession::new(name, limits.clone(), self.isolation.clone(), link, host);
        session.start(kiln_native::setup_msg(options).as_ref());
        Ok(session)
    }
}

impl Drop for DockerBackend {
    fn drop(&mut self) {
        self.stop_reaper.store(true, Ordering::Release);
    }
}

impl Backend for DockerBackend {
    fn name(&self) -> &'static str {
        self.engine.kind.name()
    }

    fn create_session(&self, options: &SessionOptions) -> Result<Box<dyn Session>, BackendError> {
        options.validate()?;
        let session = self.open_session(options)?;
        if let Some(why) = session.start_failure() {
            // Dropping the session removes the container.
            return Err(BackendError::Startup(why));
        }
        Ok(Box::new(session))
    }

    /// A session of one execution, removed at once; the runner exits by
    /// itself at the end of the channel.
    fn execute(
        &self,
        request: &ExecRequest,
        limits: &Limits,
    ) -> Result<ExecutionResult, BackendError> {
        if let Some(why) = check_request(request, limits) {
            return Ok(ExecutionResult::without_sandbox(Outcome::Rejected, why));
        }
        let options = SessionOptions {
            limits: limits.clone(),
            ..SessionOptions::default()
        };
        let mut session = self.open_session(&options)?;
        let mut result = session.execute(request, &mut |_| {});
        let status = session.shut_down();
        if result.exit_code.is_none() {
            result.exit_code = status;
        }
        result.session_ended = false;
        Ok(result)
    }
}

/// Writes the profile to kiln's run directory, named by its hash; returns the path.
fn profile_file(profile: &str) -> Result<String, BackendError> {
    use sha2::{Digest, Sha256};
    let dir = kiln_native::default_run_dir();
    let path = dir.join(format!(
        "seccomp-{}.json",
        hex::encode(&Sha256::digest(profile.as_bytes())[..8])
    ));
    if !path.exists() {
        let write = std::fs::create_dir_all(&dir).and_then(|()| {
            let staging = dir.join(format!(".seccomp-{}", std::process::id()));
            std::fs::write(&staging, profile)?;
            std::fs::rename(&staging, &path)
        });
        write.map_err(|source| BackendError::Setup {
            step: "write the seccomp profile for podman",
            source,
        })?;
    }
    Ok(path.display().to_string())
}

fn random_u32() -> u32 {
    let mut buf = [0u8; 4];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf))
        .is_ok()
    {
        u32::from_ne_bytes(buf)
    } else {
        std::process::id() ^ (now_secs() as u32)
    }
}
