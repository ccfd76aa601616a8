//! kiln's policy: what a sandbox may do, as pure data.
//!
//! Everything here is plain types plus validation: no I/O beyond parsing a
//! string, no `unsafe`. The configuration file `kiln.toml` deserialises into
//! [`Config`]; unknown keys are an error, every limit has a default and a hard
//! ceiling, and a request may only ask for limits within the ceilings.
#![forbid(unsafe_code)]

mod backends;
mod egress;
mod environment;
pub mod guardrails;
mod limits;
mod server;

pub use backends::{BackendsConfig, BACKEND_NAMES};
pub use egress::{check_domain, normalize_host, AllowEntry, Egress};
pub use environment::{
    is_identifier, normalize, Environment, ImportVerdict, Library, LibraryDetail,
    DEFAULT_ENVIRONMENT,
};
pub use guardrails::guardrails;
pub use limits::{LimitRequest, Limits, PartialLimits};
pub use server::{ApiKey, ServerConfig};

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The whole of `kiln.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "RawConfig")]
pub struct Config {
    /// Limits applied when a request names none.
    pub limits: Limits,
    /// Hard ceilings: no request may exceed these.
    pub ceilings: Limits,
    /// How the native backend lays out sandboxes on this host.
    pub sandbox: SandboxConfig,
    /// Where the runtime lives and which interpreter builds it.
    pub runtime: RuntimeConfig,
    /// Session timeouts: defaults and ceilings.
    pub sessions: SessionsConfig,
    /// `kiln serve`: listener, API keys and the API's own limits.
    pub server: ServerConfig,
    /// Named environments: allowed libraries and denied modules. The
    /// built-in `default` unless kiln.toml replaces it.
    pub environments: BTreeMap<String, Environment>,
    /// Which backend runs code, and the fallback order.
    pub backends: BackendsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            ceilings: Limits::ceilings(),
            sandbox: SandboxConfig::default(),
            runtime: RuntimeConfig::default(),
            sessions: SessionsConfig::default(),
            server: ServerConfig::default(),
            environments: Environment::built_in(),
            backends: BackendsConfig::default(),
        }
    }
}

/// `kiln.toml` as written: partial limit tables over kiln's defaults.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    limits: PartialLimits,
    ceilings: PartialLimits,
    sandbox: SandboxConfig,
    runtime: RuntimeConfig,
    sessions: SessionsConfig,
    server: ServerConfig,
    environments: BTreeMap<String, Environment>,
    backends: BackendsConfig,
}

impl From<RawConfig> for Config {
    fn from(raw: RawConfig) -> Self {
        Config {
            limits: raw.limits.over(Limits::default()),
            ceilings: raw.ceilings.over(Limits::ceilings()),
            sandbox: raw.sandbox,
            runtime: raw.runtime,
            sessions: raw.sessions,
            server: raw.server,
            // A table of kiln.toml replaces the built-in one of that name.
            environments: Environment::built_in()
                .into_iter()
                .chain(raw.environments)
                .collect(),
            backends: raw.backends,
        }
    }
}

/// Host-level settings of the native backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// First host uid of the range reserved for sandboxes; every live sandbox
    /// gets its own uid (and gid) from `uid_base .. uid_base + uid_count`.
    pub uid_base: u32,
    /// How many uids the reserved range holds (= the most sandboxes alive at once).
    pub uid_count: u32,
    /// Total memory all sandboxes together may use (the `kiln` parent cgroup).
    pub total_memory_mib: u64,
    /// Total processes all sandboxes together may hold.
    pub total_pids: u64,
    /// Name of the parent cgroup under each controller.
    pub cgroup_parent: String,
    /// Fork sandboxes from a warm template interpreter (long-lived kiln
    /// processes: `repl`, `bench`, `serve`). `false`: a fresh process each.
    pub zygote: bool,
    /// Start a new template after this many forks (0 = never).
    pub zygote_recycle_after: u64,
    /// Host directories a session may ask to see, read-only, at
    /// `/data/<name>` (name → absolute host path). Nothing else of the host
    /// is ever visible.
    pub datasets: std::collections::BTreeMap<String, PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            // High and far from the usual /etc/subuid ranges (100000..).
            uid_base: 1_879_048_192,
            uid_count: 65_536,
            total_memory_mib: 8192,
            total_pids: 4096,
            cgroup_parent: "kiln".to_string(),
            zygote: true,
            zygote_recycle_after: 0,
            datasets: Default::default(),
        }
    }
}

/// Where kiln keeps its runtime and what builds it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// kiln's data directory (default `$KILN_DATA_DIR`, else `/var/lib/kiln`
    /// as root, else `$XDG_DATA_HOME/kiln`).
    pub data_dir: Option<PathBuf>,
    /// The Python 3.11 interpreter the runtime is copied from (default: the
    /// first `python3.11` found).
    pub python: Option<PathBuf>,
}

/// `[sessions]`: how long a session may idle and live, by default and at most.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionsConfig {
    /// A session with no execution for this long is closed (seconds).
    pub idle_timeout_s: u64,
    /// A session is closed this long after it was created (seconds).
    pub max_lifetime_s: u64,
    /// The longest idle timeout a request may ask for.
    pub idle_timeout_ceiling_s: u64,
    /// The longest lifetime a request may ask for.
    pub max_lifetime_ceiling_s: u64,
    /// Sessions open at once in one kiln process.
    pub max_sessions: u32,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            idle_timeout_s: 600,
            max_lifetime_s: 3_600,
            idle_timeout_ceiling_s: 3_600,
            max_lifetime_ceiling_s: 86_400,
            max_sessions: 64,
        }
    }
}

impl SessionsConfig {
    fn validate(&self) -> Result<(), PolicyError> {
        let pairs = [
            (
                "idle_timeout_s",
                self.idle_timeout_s,
                self.idle_timeout_ceiling_s,
            ),
            (
                "max_lifetime_s",
                self.max_lifetime_s,
                self.max_lifetime_ceiling_s,
            ),
        ];
        for (name, value, ceiling) in pairs {
            if value == 0 {
                return Err(PolicyError::InvalidSession {
                    name,
                    reason: "must be at least 1 second".into(),
                });
            }
            if value > ceiling {
                return Err(PolicyError::InvalidSession {
                    name,
                    reason: format!(
                        "{value} s exceeds the ceiling of {ceiling} s; Hint: raise `[sessions] {}` in kiln.toml or ask for less",
                        name.replace("_s", "_ceiling_s")
                    ),
                });
            }
        }
        if self.max_sessions == 0 {
            return Err(PolicyError::InvalidSession {
                name: "max_sessions",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }

    /// The idle timeout and lifetime of one session (seconds): the defaults,
    /// or what the request asks for within the ceilings.
    pub fn resolve(
        &self,
        idle_timeout_s: Option<u64>,
        max_lifetime_s: Option<u64>,
    ) -> Result<(u64, u64), PolicyError> {
        let resolved = Self {
            idle_timeout_s: idle_timeout_s.unwrap_or(self.idle_timeout_s),
            max_lifetime_s: max_lifetime_s.unwrap_or(self.max_lifetime_s),
            ..self.clone()
        };
        resolved.validate()?;
        Ok((resolved.idle_timeout_s, resolved.max_lifetime_s))
    }
}

/// A configuration that could not be read or does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot parse kiln.toml: {0}")]
    Parse(String),
    #[error("invalid limit `{name}`: {reason}")]
    InvalidLimit { name: &'static str, reason: String },
    #[error("limit `{name}` = {requested} exceeds the ceiling {ceiling}; Hint: raise `ceilings.{name}` in kiln.toml or ask for less")]
    AboveCeiling {
        name: &'static str,
        requested: u64,
        ceiling: u64,
    },
    #[error("invalid sandbox setting `{name}`: {reason}")]
    InvalidSandbox { name: &'static str, reason: String },
    #[error("invalid session setting `{name}`: {reason}")]
    InvalidSession { name: &'static str, reason: String },
    #[error("invalid environment `{name}`: {reason}")]
    InvalidEnvironment { name: String, reason: String },
    #[error("no environment named {name:?}; configured: {configured}")]
    UnknownEnvironment { name: String, configured: String },
}

impl Config {
    /// Parses and validates a `kiln.toml` document.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| PolicyError::Parse(e.to_string().trim_end().to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every limit is sane and the defaults sit within the ceilings.
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.limits.validate()?;
        self.ceilings.validate()?;
        self.limits.check_within(&self.ceilings)?;
        self.sessions.validate()?;
        for (name, env) in &self.environments {
            env.validate(name)?;
        }
        self.environment(None)?;
        self.backends
            .validate()
            .map_err(|reason| PolicyError::InvalidSandbox {
                name: "backends",
                reason,
            })?;
        let s = &self.sandbox;
        if s.total_memory_mib < self.ceilings.memory_mib || s.total_pids < self.ceilings.pids {
            return Err(PolicyError::InvalidSandbox {
                name: "total_memory_mib",
                reason: format!(
                    "the totals for all sandboxes ({} MiB, {} pids) must hold at least one sandbox at its ceiling ({} MiB, {} pids)",
                    s.total_memory_mib, s.total_pids, self.ceilings.memory_mib, self.ceilings.pids
                ),
            });
        }
        for (name, path) in &s.datasets {
            let plain = !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !plain {
                return Err(PolicyError::InvalidSandbox {
                    name: "datasets",
                    reason: format!("dataset name {name:?} must be 1-64 of [A-Za-z0-9_-]"),
                });
            }
            if !path.is_absolute()
                || path
                    .components()
                    .any(|c| matches!(c, std::path::Component::ParentDir))
            {
                return Err(PolicyError::InvalidSandbox {
                    name: "datasets",
                    reason: format!(
                        "dataset {name}: {} must be an absolute path without `..`",
                        path.display()
                    ),
                });
            }
        }
        if s.uid_count == 0 {
            return Err(PolicyError::InvalidSandbox {
                name: "uid_count",
                reason: "must be at least 1".into(),
            });
        }
        if s.uid_base < 65_536 || s.uid_base.checked_add(s.uid_count).is_none() {
            return Err(PolicyError::InvalidSandbox {
                name: "uid_base",
                reason: "the range must lie above 65535 and below 2^32".into(),
            });
        }
        if s.cgroup_parent.is_empty()
            || s.cgroup_parent.contains('/')
            || s.cgroup_parent.starts_with('.')
        {
            return Err(PolicyError::InvalidSandbox {
                name: "cgroup_parent",
                reason: "must be one plain directory name".into(),
            });
        }
        Ok(())
    }

    /// The environment named `name` (the default one when `None`).
    pub fn environment(&self, name: Option<&str>) -> Result<&Environment, PolicyError> {
        let name = name.unwrap_or(DEFAULT_ENVIRONMENT);
        self.environments
            .get(name)
            .ok_or_else(|| PolicyError::UnknownEnvironment {
                name: name.to_string(),
                configured: self
                    .environments
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// The limits for one request: the defaults, overridden by what the
    /// request asks for, each checked against its ceiling.
    pub fn resolve(&self, request: &LimitRequest) -> Result<Limits, PolicyError> {
        let limits = self.limits.with(request);
        limits.validate()?;
        limits.check_within(&self.ceilings)?;
        Ok(limits)
    }
}

#[cfg(test)]
mod tests;
