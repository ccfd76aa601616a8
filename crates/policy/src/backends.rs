//! `[backends]`: which sandbox backend runs code, and which ones to fall
//! back to, in order, when it is unavailable on this host.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The backends kiln knows, as named in `kiln.toml` and on the command
/// line: `native`, or an engine with a runtime (`docker+runc`,
/// `docker+crun`, `docker+runsc`, `podman+runc`, `podman+crun`); a bare
/// `docker` or `podman` means the engine's default runtime.
pub const BACKEND_NAMES: &[&str] = &[
    "native",
    "docker",
    "docker+runc",
    "docker+crun",
    "docker+runsc",
    "podman",
    "podman+runc",
    "podman+crun",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendsConfig {
    /// The backend used when a command names none.
    pub default: String,
    /// Tried in order when the chosen backend is unavailable (e.g.
    /// `["docker+runsc", "docker+runc", "native"]`); empty: no fallback,
    /// an unavailable backend is an `unavailable` result.
    pub fallback: Vec<String>,
    /// The Docker Engine socket (default: `DOCKER_HOST`, else
    /// /var/run/docker.sock).
    pub docker_socket: Option<PathBuf>,
    /// Podman's Docker-compatible socket (`podman system service`).
    pub podman_socket: PathBuf,
    /// The image containers run (default: kiln's own, `kiln image build`).
    pub image: Option<String>,
}

impl Default for BackendsConfig {
    fn default() -> Self {
        Self {
            default: "native".into(),
            fallback: Vec::new(),
            docker_socket: None,
            podman_socket: PathBuf::from("/run/podman/podman.sock"),
            image: None,
        }
    }
}

impl BackendsConfig {
    /// Every name is one kiln knows.
    pub fn validate(&self) -> Result<(), String> {
        for name in std::iter::once(&self.default).chain(&self.fallback) {
            if !BACKEND_NAMES.contains(&name.as_str()) {
                return Err(format!(
                    "[backends]: unknown backend {name:?}; known: {}",
                    BACKEND_NAMES.join(", ")
                ));
            }
        }
        Ok(())
    }
}
