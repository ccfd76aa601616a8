//! `[server]`: what `kiln serve` listens on, who may call it, and the API's
//! own limits. API keys are stored as SHA-256 hashes, never in clear.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The `[server]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address the HTTP API listens on.
    pub listen: String,
    /// Callers: each a key id, the SHA-256 (hex) of its secret, and quotas.
    pub keys: Vec<ApiKey>,
    /// Largest request body (code, uploads), bytes.
    pub max_body_bytes: u64,
    /// Requests in flight across all keys before new ones get 429.
    pub max_in_flight: usize,
    /// Time limit of any request that is not an execution, ms (executions
    /// end by their own wall limit plus a margin).
    pub request_timeout_ms: u64,
    /// Warm sandboxes kept ready for one-shot executions (0: no pool).
    pub pool_min: usize,
    pub pool_max: usize,
    /// Unix socket of the privileged sandbox supervisor.
    pub supervisor_socket: PathBuf,
    /// The unprivileged user the network-facing process runs as when kiln
    /// is started as root.
    pub frontend_user: String,
    /// Append-only audit log (JSON lines); none when unset.
    pub audit_log: Option<PathBuf>,
    /// Logs as JSON lines instead of text.
    pub json_logs: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7878".into(),
            keys: Vec::new(),
            max_body_bytes: 32 << 20,
            max_in_flight: 64,
            request_timeout_ms: 30_000,
            pool_min: 2,
            pool_max: 8,
            supervisor_socket: PathBuf::from("/run/kiln/supervisor.sock"),
            frontend_user: "nobody".into(),
            audit_log: None,
            json_logs: false,
        }
    }
}

/// One caller of the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Shown in logs, metrics and the audit log; never the secret.
    pub id: String,
    /// Hex SHA-256 of the secret the caller sends as `Bearer`.
    pub sha256: String,
    /// Sessions this key may hold open at once.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Executions this key may run at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Requests per minute (token bucket).
    #[serde(default = "default_rate")]
    pub requests_per_minute: u32,
}

fn default_max_sessions() -> usize {
    8
}

fn default_max_concurrency() -> usize {
    4
}

fn default_rate() -> u32 {
    600
}
