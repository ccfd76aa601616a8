//! The privileged side of `kiln serve`: backend with zygote, pool,
//! sessions, the socket, a housekeeping thread, and graceful shutdown.

use super::socket::{self, Connections, Stop};
use anyhow::{Context, Result};
use kiln_core::service::{Service, ServiceOptions};
use kiln_core::{Backend, Pool, PoolConfig, SessionManager};
use kiln_policy::Config;
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ExitCode};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long requests in flight may take to finish once shutdown began (the
/// front end's own drain, plus a margin); what still runs then is killed.
const DRAIN: Duration = Duration::from_secs(32);
/// How long connections may take to send their last reply after the kill.
const LAST_REPLIES: Duration = Duration::from_secs(10);

/// The HTTP front end, as a process (root) or a thread (not root).
pub enum Frontend {
    Process {
        child: Child,
        stdin: Option<ChildStdin>,
    },
    /// Started on a thread once the backend is up (its runtime's threads
    /// must not exist when the zygote forks).
    Pending(TcpListener),
    /// `kiln mcp`: MCP over this process's stdin/stdout, acting for a key
    /// id; started like `Pending`.
    PendingMcp(String),
    Thread {
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        thread: Option<JoinHandle<Result<()>>>,
    },
    Ended {
        ok: bool,
    },
}

impl Frontend {
    pub fn process(child: Child, stdin: ChildStdin) -> Self {
        Frontend::Process {
            child,
            stdin: Some(stdin),
        }
    }

    pub fn pending(listener: TcpListener) -> Self {
        Frontend::Pending(listener)
    }

    pub fn mcp_stdio(key: String) -> Self {
        Frontend::PendingMcp(key)
    }

    fn start(&mut self, config: &Config, socket: &Path, dev: bool) -> Result<()> {
        type Run = Box<dyn FnOnce(tokio::sync::oneshot::Receiver<()>) -> Result<()> + Send>;
        let (config, socket) = (config.clone(), socket.to_path_buf());
        let (name, run): (&str, Run) = match self {
            Frontend::Pending(listener) => {
                let listener = listener.try_clone()?;
                (
                    "kiln-frontend",
                    Box::new(move |rx| super::run_frontend(config, listener, socket, dev, rx)),
                )
            }
            Frontend::PendingMcp(key) => {
                let key = key.clone();
                (
                    "kiln-mcp",
                    Box::new(move |rx| super::run_mcp_stdio(config, socket, key, rx)),
                )
            }
            _ => return Ok(()),
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(rx))?;
        *self = Frontend::Thread {
            stop: Some(tx),
            thread: Some(thread),
        };
        Ok(())
    }

    /// Asks it to stop accepting and drain.
    fn stop(&mut self) {
        match self {
            Frontend::Process { stdin, .. } => drop(stdin.take()),
            Frontend::Thread { stop, .. } => {
                if let Some(tx) = stop.take() {
                    let _ = tx.send(());
                }
            }
            Frontend::Pending(_) | Frontend::PendingMcp(_) => *self = Frontend::Ended { ok: true },
            Frontend::Ended { .. } => {}
        }
    }

    /// Whether it ended; logs how, once.
    fn ended(&mut self) -> bool {
        let ok = match self {
            Frontend::Process { child, .. } => match child.try_wait() {
                Ok(Some(status)) => {
                    if !status.success() {
                        tracing::error!(%status, "the front end exited");
                    }
                    status.success()
                }
                Ok(None) => return false,
                Err(error) => {
                    tracing::error!(%error, "cannot wait for the front end");
                    false
                }
            },
            Frontend::Thread { thread, .. } => {
                if !thread.as_ref().is_some_and(|t| t.is_finished()) {
                    return false;
                }
                match thread.take().map(JoinHandle::join) {
                    Some(Ok(Ok(()))) => true,
                    Some(Ok(Err(error))) => {
                        tracing::error!("the front end stopped: {error:#}");
                        false
                    }
                    _ => false,
                }
            }
            Frontend::Pending(_) | Frontend::PendingMcp(_) => return false,
            Frontend::Ended { .. } => return true,
        };
        *self = Frontend::Ended { ok };
        true
    }

    /// Ends a front end that did not drain in time.
    fn kill(&mut self) {
        if let Frontend::Process { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
        // A thread ends with the process.
    }

    fn failed(&self) -> bool {
        matches!(self, Frontend::Ended { ok: false })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the supervisor until a signal (or the front end's end), then shuts
/// everything down.
pub fn run(
    config: Config,
    dev: bool,
    unix: UnixListener,
    socket_path: PathBuf,
    mut frontend: Frontend,
) -> Result<ExitCode> {
    let backend = match start_backend(&config) {
        Ok(backend) => backend,
        Err(e) => {
            frontend.stop();
            frontend.kill();
            super::remove_socket(&socket_path);
            return Err(e);
        }
    };
    let stop = Arc::new(Stop::new(&socket_path));
    let on_signal = stop.clone();
    kiln_native::signals::watch(move |_| on_signal.trigger())?;
    let service = Arc::new(service(&config, dev, backend));
    frontend.start(&config, &socket_path, dev)?;
    let frontend = Arc::new(Mutex::new(frontend));
    let conns = Arc::new(Connections::default());
    let housekeeper = housekeeping(service.clone(), frontend.clone(), stop.clone())?;
    tracing::info!(socket = %socket_path.display(), dev, "kiln supervisor ready");
    socket::serve(&unix, &service, &stop, &conns);
    drop(unix);
    super::remove_socket(&socket_path);
    shut_down(&service, &frontend, &conns);
    let _ = housekeeper.join();
    let failed = lock(&frontend).failed();
    drop(service);
    tracing::info!("kiln supervisor stopped; every sandbox is gone");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The native backend, always forking from the zygote: this process turns
/// multi-threaded, the template stays single-threaded.
fn start_backend(config: &Config) -> Result<kiln_native::NativeBackend> {
    crate::config::native_backend(config, true)?
        .context("no sandbox can be made on this host (see `kiln doctor`)")
}

fn service(config: &Config, dev: bool, backend: kiln_native::NativeBackend) -> Service {
    let spawner = backend.spawner_kind().to_string();
    let backend: Arc<dyn Backend + Send + Sync> = Arc::new(backend);
    let manager = Arc::new(SessionManager::new(
        backend.clone(),
        config.sessions.max_sessions as usize,
    ));
    let s = &config.server;
    let pool = (s.pool_max > 0).then(|| {
        // Sandboxes of the default environment: a one-shot execution with
        // the default limits and environment takes one of these.
        let options = kiln_core::service::pool_options(config);
        let sizes = PoolConfig {
            min_ready: s.pool_min,
            max_ready: s.pool_max.max(s.pool_min),
            ..PoolConfig::default()
        };
        Pool::start(backend.clone(), options, sizes)
    });
    let options = ServiceOptions {
        dev,
        spawner,
        preinstalled: crate::config::preinstalled(),
        wheelhouse: crate::config::wheelhouse_trees(config),
    };
    Service::new(backend, manager, pool, config.clone(), options)
}

/// Every second: close expired sessions; notice a front end that ended.
fn housekeeping(
    service: Arc<Service>,
    frontend: Arc<Mutex<Frontend>>,
    stop: Arc<Stop>,
) -> Result<JoinHandle<()>> {
    let thread = std::thread::Builder::new()
        .name("kiln-housekeeping".into())
        .spawn(move || {
            while !stop.stopping() {
                for (id, why) in service.reap(Instant::now()) {
                    tracing::info!(session = %id, ?why, "session expired and closed");
                }
                if lock(&frontend).ended() {
                    tracing::warn!("the front end is gone; shutting down");
                    stop.trigger();
                }
                for _ in 0..10 {
                    if stop.stopping() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })?;
    Ok(thread)
}

/// Graceful shutdown, after the socket stopped accepting: the front end
/// drains (bounded), what still runs is killed, every session and the pool
/// are closed, the front end is gone.
fn shut_down(service: &Service, frontend: &Mutex<Frontend>, conns: &Connections) {
    tracing::info!(
        in_flight = service.running(),
        "shutting down: draining requests in flight"
    );
    lock(frontend).stop();
    let deadline = Instant::now() + DRAIN;
    while Instant::now() < deadline && !(lock(frontend).ended() && conns.count() == 0) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = service.running();
    if killed > 0 {
        tracing::warn!(
            killed,
            "executions still running after the drain are killed"
        );
    }
    service.shutdown();
    if !conns.wait_idle(Instant::now() + LAST_REPLIES) {
        tracing::warn!(
            connections = conns.count(),
            "connections still open at exit"
        );
    }
    let mut frontend = lock(frontend);
    if !frontend.ended() {
        tracing::warn!("the front end did not stop in time; killing it");
        frontend.kill();
    }
}
