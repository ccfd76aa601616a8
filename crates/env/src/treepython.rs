//! Running the tree's own interpreter on the host during setup.
//!
//! The copied binary finds its standard library next to itself (`../lib/python3.11`), and
//! `LD_LIBRARY_PATH` points the loader at the tree's `libpython`, so what runs here is
//! what the sandbox will run — never the host's site-packages (`-I`).

use std::path::Path;
use std::process::Command;

use crate::error::{EnvError, Result};
use crate::layout::{in_tree, INTERPRETER, LIBDIR};

/// A command running the tree's interpreter in isolated mode with a clean environment.
pub fn command(root: &Path) -> Command {
    let mut cmd = Command::new(in_tree(root, INTERPRETER));
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .env("LD_LIBRARY_PATH", in_tree(root, LIBDIR))
        .arg("-I");
    cmd
}

/// Runs `cmd` to completion; a failure becomes [`EnvError::StepFailed`] with its output.
pub fn run(step: &'static str, cmd: &mut Command) -> Result<std::process::Output> {
    let out = cmd.output().map_err(|e| EnvError::StepFailed {
        step,
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(EnvError::StepFailed {
            step,
            detail: describe(&out),
        });
    }
    Ok(out)
}

/// Exit status plus the last lines of stdout and stderr.
pub fn describe(out: &std::process::Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    format!("{}\n{tail}", out.status)
}

/// Checks that the tree's interpreter starts at all (catches a broken copy early).
pub fn smoke(root: &Path) -> Result<()> {
    run(
        "starting the tree's interpreter",
        command(root).args(["-c", "import sys, encodings, _ctypes"]),
    )?;
    Ok(())
}
