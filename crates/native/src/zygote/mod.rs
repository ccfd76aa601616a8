//! The zygote: a warm template interpreter per environment that forks
//! sandboxes (DESIGN.md §4, "Speed comes from a zygote").
//!
//! - [`template`]: the supervisor starts the template by `execve` with the
//!   sandbox environment only, in its own user, pid, mount, net, ipc and
//!   uts namespaces, with only the runtime mounted. It imports and warms the
//!   libraries once and never runs user code.
//! - [`serve`]: inside the template (through the `kiln_zygote` shared
//!   library, called once from Python), the fork loop. Each fork is a
//!   `clone3` into fresh namespaces whose child runs the same containment
//!   steps as a fresh sandbox and then returns, sealed, to Python.
//! - [`client`]: the supervisor's side, a [`crate::spawn::Spawner`]: fds and
//!   a small JSON request go in over a unix socket, a pidfd comes back; the
//!   supervisor moves the child into its cgroup and releases it.
//!
//! The template holds no secret, no file and no byte of user code: it is
//! started from a clean environment, and user code only ever reaches a
//! child that has finished containment.

pub mod arena;
pub mod client;
pub mod serve;
pub mod template;
mod wire;

pub use client::{ZygoteConfig, ZygoteSpawner};
