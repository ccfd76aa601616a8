//! kiln's network-facing HTTP front end.
//!
//! It holds no privilege: every request becomes one
//! [`kiln_core::service::Command`] sent over a unix socket to the sandbox
//! supervisor (one connection per command), and the replies become the HTTP
//! answer. What lives here is only what HTTP needs: routes and JSON shapes,
//! bearer keys, body limits, rate limits and backpressure, timeouts,
//! Server-Sent Events, metrics, the audit log and the OpenAPI document.
//!
//! The entry point is [`run_frontend`]; `kiln serve` calls it after binding
//! the listener (and, when started as root, after dropping to the
//! unprivileged front-end user).
//!
//! Routes (all JSON unless said; errors `{"error": {"kind", "message"}}`):
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/health` (no key) | `{"status":"ok"}` |
//! | `GET /v1/ready` (no key) | 200 when the supervisor answers `Stats`, else 503 |
//! | `GET /metrics` (no key) | Prometheus text, `kiln_*` |
//! | `GET /v1/openapi.json` (no key) | the OpenAPI document |
//! | `GET /` (no key) | the web playground (one HTML page, strict CSP) |
//! | `POST /v1/execute` | result, or SSE with `Accept: text/event-stream` |
//! | `POST /v1/sessions`, `GET /v1/sessions` | 201 session; `{"sessions": […]}` |
//! | `GET`, `DELETE /v1/sessions/{id}` | session; 204 |
//! | `POST /v1/sessions/{id}/keepalive` | session |
//! | `POST /v1/sessions/{id}/executions` | result or SSE |
//! | `POST /v1/sessions/{id}/interrupt` | 202 |
//! | `PUT`, `GET /v1/sessions/{id}/files/{path}` | 204; raw bytes |
//! | `POST /v1/sessions/{id}/files` (multipart), `GET …/files?dir=` | 201; listing |
//! | `GET /v1/policy`, `GET /v1/environments` | the policy; its environments |
//! | `POST`, `GET`, `DELETE /mcp` | MCP over streamable HTTP (`mcp`) |
//! | `/e2b/...` | the E2B-compatible API (`e2b`, docs/e2b.md) |
#![forbid(unsafe_code)]

mod api;
mod app;
mod audit;
mod auth;
mod docs;
pub mod e2b;
mod error;
mod exec;
mod extract;
pub mod mcp;
mod metrics;
mod openapi;
mod playground;
mod record;
mod routes;
mod serve;
mod supervisor;
mod throttle;

#[cfg(test)]
mod tests;

pub use app::{router, AppState};
pub use auth::{hash_secret, DEV_KEY};
pub use supervisor::{ClientError, Supervisor};

use anyhow::{bail, Context};
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

/// How long in-flight requests may take to finish after shutdown is asked
/// for, unless [`FrontendOptions::drain`] says otherwise.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);

/// How [`run_frontend`] runs.
pub struct FrontendOptions<F> {
    /// Development mode: requests without a key act as key `dev`. Refused
    /// unless the listener is on a loopback address.
    pub dev: bool,
    /// Resolves when the server should stop: it then stops accepting, lets
    /// requests in flight finish for at most `drain`, and returns.
    pub shutdown: F,
    /// The bound on that last wait; connections still open after it are
    /// dropped (the supervisor interrupts executions whose connection closes).
    pub drain: Duration,
}

impl<F: Future<Output = ()> + Send + 'static> FrontendOptions<F> {
    pub fn new(dev: bool, shutdown: F) -> Self {
        Self {
            dev,
            shutdown,
            drain: DEFAULT_DRAIN,
        }
    }
}

/// Serves the HTTP API on `listener` until `opts.shutdown` resolves,
/// forwarding every request to the supervisor listening on the unix socket
/// `supervisor`.
///
/// Refuses to start when no API key is configured outside development
/// mode, when development mode is asked for on a non-loopback listener, or
/// when a key's hash or the audit log is unusable. Does not install a
/// `tracing` subscriber: call [`init_logging`] first if the process has none.
pub async fn run_frontend<F>(
    config: kiln_policy::Config,
    listener: std::net::TcpListener,
    supervisor: PathBuf,
    opts: FrontendOptions<F>,
) -> anyhow::Result<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    let addr = listener
        .local_addr()
        .context("reading the listener's address")?;
    if opts.dev && !addr.ip().is_loopback() {
        bail!("development mode (no API keys) is only allowed on a loopback address, not {addr}. Hint: listen on 127.0.0.1, or configure [server] keys and drop --dev");
    }
    if !opts.dev && config.server.keys.is_empty() {
        bail!("no API keys in [server] keys: every request would be refused. Hint: add a key (id and the SHA-256 of its secret), or use --dev on a loopback address");
    }
    if opts.dev {
        tracing::warn!(%addr, "DEVELOPMENT MODE: requests without an API key are accepted as key \"dev\" (loopback only)");
    }
    let state = AppState::new(&config, supervisor.clone(), opts.dev)?;
    let stop_streams = state.shutdown.clone();
    let app = router(state);
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    tracing::info!(%addr, supervisor = %supervisor.display(), "kiln HTTP API listening");
    let shutdown = async move {
        opts.shutdown.await;
        stop_streams.cancel();
    };
    serve::serve_until(listener, app, shutdown, opts.drain).await
}

/// Installs a `tracing` subscriber for the front end: text or JSON lines
/// (`[server] json_logs`), filtered by `KILN_LOG` (default `info`). Does
/// nothing if the process already has one.
pub fn init_logging(json: bool) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("KILN_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
