//! The Python driver that runs inside every sandbox, embedded into the binary.
//!
//! `kiln env setup` writes it into the runtime tree at [`RUNNER_PATH`]; the
//! sandbox executes it with the runtime's interpreter in isolated mode (`-I`).
#![forbid(unsafe_code)]

/// Where the runner lives inside the sandbox's root.
pub const RUNNER_PATH: &str = "/opt/kiln/runner.py";

/// The runner's source.
pub const RUNNER_SOURCE: &str = include_str!("../python/kiln_runner.py");

/// The zygote template's script (see `kiln_native::zygote`).
pub const ZYGOTE_SOURCE: &str = include_str!("../python/kiln_zygote.py");
