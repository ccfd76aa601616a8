//! kiln's native backend: a sandbox made of Linux namespaces, cgroups,
//! capabilities, Landlock and seccomp, with no daemon.
//!
//! The containment order is `docs/containment.md`; [`jail`] follows it
//! top to bottom. All `unsafe` of kiln lives in this crate, mostly in
//! [`sys`], and every block says why it is sound.

mod backend;
pub mod cgroup;
pub mod doctor;
mod egress;
mod identity;
mod jail;
mod kernel;
mod landlock_rules;
mod mounts;
mod output;
mod plan;
pub mod seccomp;
mod session;
pub mod signals;
mod spawn;
mod supervisor;
pub mod sys;
mod uid;
pub mod zygote;

pub use backend::{default_run_dir, runner_env, setup_msg, NativeBackend, RuntimeSpec};
pub use jail::CONTAINMENT_STEPS;
pub use session::{Host, NativeSession};
pub use spawn::{ForeignProcess, Reaper, Spawned};
pub use supervisor::{exit_code, frame_cap, Accounting, Link};
