//! The connection to a container engine (Docker, or Podman's compatible
//! API): the bollard client, the small runtime its futures run on, and
//! the typed `unavailable` errors that say what to do.

use bollard::{ClientVersion, Docker};
use kiln_core::BackendError;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The Engine API version kiln speaks: Docker 20.10's (Debian 12), which
/// newer engines and Podman's compatible API also accept.
const API_VERSION: ClientVersion = ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// How long one API call may take before the engine counts as hung.
pub(crate) const API_TIMEOUT: Duration = Duration::from_secs(60);

/// The default Docker socket.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";
/// Podman's API socket when run as root (`podman system service`).
pub const PODMAN_SOCKET: &str = "/run/podman/podman.sock";

/// Which engine answers on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    Docker,
    Podman,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Docker => "docker",
            EngineKind::Podman => "podman",
        }
    }
}

/// A connected engine.
pub struct Engine {
    pub(crate) docker: Docker,
    rt: Option<tokio::runtime::Runtime>,
    pub socket: PathBuf,
    pub kind: EngineKind,
    /// The engine's version string.
    pub version: String,
    /// The OCI runtimes it has registered (`runc`, `crun`, `runsc`, …)
    /// with their extra arguments.
    pub runtimes: std::collections::BTreeMap<String, Vec<String>>,
    /// The runtime a container gets when none is named.
    pub default_runtime: String,
    /// The cgroup version it uses (`1` or `2`).
    pub cgroup_version: String,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("socket", &self.socket)
            .field("kind", &self.kind)
            .field("version", &self.version)
            .finish()
    }
}

pub(crate) fn unavailable(
    what: &str,
    why: impl Into<String>,
    hint: impl Into<String>,
) -> BackendError {
    BackendError::Unavailable {
        what: what.to_string(),
        why: why.into(),
        hint: hint.into(),
    }
}

/// How to start the engine that should answer on `socket`.
fn start_hint(socket: &Path) -> String {
    if socket.to_string_lossy().contains("podman") {
        format!(
            "start Podman's API service: `podman system service --time=0 unix://{} &`",
            socket.display()
        )
    } else {
        "install and start Docker: `apt-get install docker.io` then `systemctl start docker` (or `dockerd &`); or pick another socket with `[docker] socket` / DOCKER_HOST".into()
    }
}

impl Engine {
    /// Connects to the engine on `socket` and asks who it is. No socket,
    /// nobody answering, or an engine too old is `unavailable`.
    pub fn connect(socket: &Path) -> Result<Self, BackendError> {
        let what = "the container engine";
        if !socket.exists() {
            return Err(unavailable(
                what,
                format!("there is no engine socket at {}", socket.display()),
                start_hint(socket),
            ));
        }
        // Its threads must not take a terminal signal meant for kiln's
        // signal watcher (`kiln repl`): they start with it blocked.
        let rt = kiln_native::signals::with_watched_blocked(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("kiln-engine")
                .enable_all()
                .build()
        })
        .map_err(|e| {
            unavailable(
                what,
                format!("cannot start its I/O threads: {e}"),
                "check the process limits",
            )
        })?;
        let path = socket.to_string_lossy().to_string();
        let docker = {
            let _guard = rt.enter();
            Docker::connect_with_unix(&path, API_TIMEOUT.as_secs(), &API_VERSION)
        }
        .map_err(|e| unavailable(what, format!("cannot use {path}: {e}"), start_hint(socket)))?;
        let mut engine = Self {
            docker,
            rt: Some(rt),
            socket: socket.to_path_buf(),
            kind: EngineKind::Docker,
            version: String::new(),
            runtimes: Default::default(),
            default_runtime: String::new(),
            cgroup_version: String::new(),
        };
        let d = engine.docker.clone();
        let version = engine
            .call_within(Duration::from_secs(10), async move { d.version().await })
            .map_err(|e| {
                unavailable(
                    what,
                    format!("nothing answers on {path} ({e})"),
                    start_hint(socket),
                )
            })?;
        let podman = version
            .components
            .iter()
            .flatten()
            .any(|c| c.name.to_lowercase().contains("podman"));
        engine.kind = if podman {
            EngineKind::Podman
        } else {
            EngineKind::Docker
        };
        engine.version = version.version.unwrap_or_default();
        let d = engine.docker.clone();
        let info = engine.call(async move { d.info().await }).map_err(|e| {
            unavailable(
                what,
                format!("the engine's info failed: {e}"),
                start_hint(socket),
            )
        })?;
        engine.runtimes = info
            .runtimes
            .unwrap_or_default()
            .into_iter()
            .map(|(name, r)| (name, r.runtime_args.unwrap_or_default()))
            .collect();
        engine.default_runtime = info.default_runtime.unwrap_or_else(|| "runc".into());
        engine.cgroup_version = info
            .cgroup_version
            .map(|v| v.to_string().trim_start_matches('V').to_string())
            .unwrap_or_else(|| "1".into());
        Ok(engine)
    }

    /// Runs one API call to completion from any thread (also from inside
    /// another async runtime), bounded by [`API_TIMEOUT`].
    pub(crate) fn call<T, F>(&self, fut: F) -> Result<T, bollard::errors::Error>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, bollard::errors::Error>> + Send + 'static,
    {
        self.call_within(API_TIMEOUT, fut)
    }

    pub(crate) fn call_within<T, F>(
        &self,
        timeout: Duration,
        fut: F,
    ) -> Result<T, bollard::errors::Error>
    where
        T: Send + 'static,
        F: Future<Output = Result<T, bollard::errors::Error>> + Send + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle().spawn(async move {
            let _ = tx.send(tokio::time::timeout(timeout, fut).await);
        });
        match rx.recv() {
            Ok(Ok(result)) => result,
            Ok(Err(_)) | Err(_) => Err(bollard::errors::Error::RequestTimeoutError),
        }
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        self.rt
            .as_ref()
            .expect("the runtime lives as long as the engine")
            .handle()
    }

    /// Whether containers can run with `runtime`. Podman's compatible API
    /// ignores a container's `Runtime`: only its configured one counts.
    pub fn has_runtime(&self, runtime: &str) -> bool {
        match self.kind {
            EngineKind::Podman => self.default_runtime == runtime,
            EngineKind::Docker => self.runtimes.contains_key(runtime),
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            // Never blocks, also when dropped inside another async runtime.
            rt.shutdown_background();
        }
    }
}

/// The socket to use: `DOCKER_HOST` (`unix://` only) over the configured
/// one over the default.
pub fn socket_from_env(configured: Option<&Path>) -> PathBuf {
    if let Some(host) = std::env::var_os("DOCKER_HOST") {
        let host = host.to_string_lossy();
        if let Some(path) = host.strip_prefix("unix://") {
            return PathBuf::from(path);
        }
    }
    configured
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(DOCKER_SOCKET))
}
