//! `kiln serve`: the HTTP API (`kiln_server`) over the sandbox supervisor.
//!
//! As root, two processes (docs/server.md): the supervisor keeps root and
//! owns every sandbox, the zygote, the pool and the sessions; the front end
//! runs as `[server] frontend_user` and reaches the supervisor over a unix
//! socket only. Not root: one process, the front end on a thread.
//!
//! Start, in this order: bind the TCP listener and the supervisor socket;
//! start the front end (a process, while this one has one thread); start
//! the backend with its zygote; watch signals; start the pool, the reaper
//! and the accept loop. Shutdown (SIGTERM, SIGINT, SIGHUP, or the front end
//! gone) runs [`supervisor::shut_down`].

mod socket;
mod split;
mod supervisor;

use anyhow::{bail, Context, Result};
use kiln_policy::Config;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub use split::frontend_main;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (default: `[server] listen`).
    #[arg(long)]
    pub listen: Option<String>,
    /// Development mode: no API keys; requests act as key `dev`. Only on a
    /// loopback address.
    #[arg(long)]
    pub dev: bool,
    /// Internal: run as the unprivileged front end started by `kiln serve`.
    #[arg(long, hide = true)]
    pub frontend: bool,
}

pub fn serve(mut config: Config, args: &ServeArgs) -> Result<ExitCode> {
    kiln_server::init_logging(config.server.json_logs);
    if let Some(listen) = &args.listen {
        config.server.listen = listen.clone();
    }
    let listener = TcpListener::bind(&config.server.listen)
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    if args.dev && !addr.ip().is_loopback() {
        bail!("--dev (no API keys) is only allowed on a loopback address, not {addr}. Hint: --listen 127.0.0.1:7878");
    }
    if !args.dev && config.server.keys.is_empty() {
        bail!("no API keys in [server] keys. Hint: add one (id and the SHA-256 of its secret), or use --dev on a loopback address");
    }
    let root = std::fs::metadata("/proc/self")?.uid() == 0;
    let socket_path = socket_path(&config, root)?;
    let owner = if root {
        Some(split::lookup_user(&config.server.frontend_user)?)
    } else {
        None
    };
    let unix = socket::bind(&socket_path, owner)?;
    let frontend = match owner {
        Some(user) => {
            let (child, stdin) =
                split::spawn(&config, listener, socket_path.clone(), args.dev, user)?;
            tracing::info!(pid = child.id(), user = %config.server.frontend_user, "front end started unprivileged");
            supervisor::Frontend::process(child, stdin)
        }
        None => {
            tracing::warn!("not running as root: supervisor and HTTP front end share one process (no privilege split)");
            supervisor::Frontend::pending(listener)
        }
    };
    supervisor::run(config, args.dev, unix, socket_path, frontend)
}

/// The configured socket; when not root and the default place is not ours,
/// one under `$XDG_RUNTIME_DIR` (or the temp directory).
fn socket_path(config: &Config, root: bool) -> Result<PathBuf> {
    let configured = &config.server.supervisor_socket;
    let default = kiln_policy::ServerConfig::default().supervisor_socket;
    if root || *configured != default {
        return Ok(configured.clone());
    }
    let uid = std::fs::metadata("/proc/self")?.uid();
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("kiln-{uid}")));
    Ok(base.join("kiln").join("supervisor.sock"))
}

/// The front end itself (same code in both process models).
fn run_frontend(
    config: Config,
    listener: TcpListener,
    socket: PathBuf,
    dev: bool,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("kiln-http")
        .build()?;
    let shutdown = async move {
        let _ = stop.await;
    };
    let opts = kiln_server::FrontendOptions::new(dev, shutdown);
    runtime.block_on(kiln_server::run_frontend(config, listener, socket, opts))
}

/// `kiln mcp`: MCP over stdin/stdout.
#[derive(clap::Args)]
pub struct McpArgs {
    /// The key id calls act for: its quotas when `[server] keys` lists it,
    /// the development defaults otherwise.
    #[arg(long, default_value = "local")]
    pub key: String,
}

/// `kiln mcp`: the supervisor of `kiln serve` (backend, zygote, pool,
/// sessions) with, instead of the HTTP front end, an MCP server on this
/// process's stdin/stdout. The two talk over a unix socket in a private
/// directory (mode 0700, removed at exit), so every tool call goes through
/// the same `kiln_core::service` commands as HTTP. Ends when the client
/// closes stdin (or on SIGTERM/SIGINT); every sandbox goes with it.
pub fn mcp(config: Config, args: &McpArgs) -> Result<ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("kiln-mcp-")
        .tempdir()
        .context("cannot create a private directory for the supervisor socket")?;
    let socket_path = dir.path().join("supervisor.sock");
    let unix = socket::bind(&socket_path, None)?;
    tracing::info!(key = %args.key, "kiln MCP server on stdio");
    let frontend = supervisor::Frontend::mcp_stdio(args.key.clone());
    // Development quotas for a key id not in [server] keys: only this
    // process can reach the socket.
    let code = supervisor::run(config, true, unix, socket_path, frontend);
    drop(dir);
    code
}

fn run_mcp_stdio(
    config: Config,
    socket: PathBuf,
    key: String,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .worker_threads(2)
        .thread_name("kiln-mcp")
        .build()?;
    runtime.block_on(async move {
        let supervisor = kiln_server::Supervisor::new(socket);
        tokio::select! {
            served = kiln_server::mcp::serve_stdio(&config, supervisor, &key) => served,
            _ = stop => Ok(()),
        }
    })
}

/// Removes `path` if it is (still) a socket.
fn remove_socket(path: &Path) {
    use std::os::unix::fs::FileTypeExt;
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}
