//! kiln's container backend: one container per sandbox, made through the
//! Docker Engine API (bollard) — Docker with `runc`, `crun` or `runsc`
//! (gVisor), or Podman through its Docker-compatible socket.
//!
//! The container's main process is a small relay that forks kiln's runner
//! onto the same fds the native backend gives it; the supervisor of the
//! native backend drives it, so limits, outcomes and protocol checks are
//! the same code. `docs/docker.md` says what each runtime guarantees.
#![forbid(unsafe_code)]

mod backend;
mod bridge;
pub mod engine;
mod host;
pub mod image;
pub mod reaper;
pub mod seccomp;
pub mod spec;

pub use backend::{runtime_hint, DockerBackend, DockerOptions, RELAY_SOURCE};
pub use engine::{Engine, EngineKind, DOCKER_SOCKET, PODMAN_SOCKET};
