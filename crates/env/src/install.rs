//! Installing the locked libraries with the host interpreter's pip.
//!
//! pip runs with `--require-hashes --no-deps --only-binary=:all:`, so nothing but the
//! exact wheels pinned in the lock can land in the tree. Bytecode is compiled later by
//! [`crate::bytecode`] so that tracebacks show in-sandbox paths.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{EnvError, Result};
use crate::interpreter::Interpreter;

/// How many lines of pip's output an error keeps.
const TAIL_LINES: usize = 30;

/// What the progress display hears from a running pip.
pub trait PipObserver {
    /// pip started on the `n`-th requirement (1-based) named `name`.
    fn collecting(&mut self, n: usize, name: &str);
    /// pip is unpacking the downloaded wheels.
    fn installing(&mut self);
}

/// Installs every requirement of `lock` into `target` with `interp`'s pip.
pub fn install(
    interp: &Interpreter,
    lock: &str,
    target: &Path,
    obs: &mut dyn PipObserver,
) -> Result<()> {
    let mut lock_file = tempfile::Builder::new()
        .prefix("kiln-requirements-")
        .suffix(".lock")
        .tempfile()
        .map_err(EnvError::io(
            "create temporary file in",
            std::env::temp_dir(),
        ))?;
    std::io::Write::write_all(&mut lock_file, lock.as_bytes())
        .map_err(EnvError::io("write", lock_file.path()))?;

    let mut child = pip_command(&interp.executable, lock_file.path(), target)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| EnvError::PythonNotFound {
            tried: interp.executable.display().to_string(),
            reason: e.to_string(),
        })?;

    let stderr = child.stderr.take().expect("piped");
    let err_thread = std::thread::spawn(move || read_tail(stderr));
    let mut out_tail = VecDeque::new();
    let mut collected = 0;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let Ok(line) = line else { break };
        if let Some(name) = collecting_name(&line) {
            collected += 1;
            obs.collecting(collected, name);
        } else if line.starts_with("Installing collected packages") {
            obs.installing();
        }
        push_tail(&mut out_tail, line);
    }
    let status = child
        .wait()
        .map_err(EnvError::io("wait for pip", &interp.executable))?;
    let err_tail = err_thread.join().unwrap_or_default();
    if status.success() {
        return Ok(());
    }
    Err(classify_failure(&status.to_string(), &out_tail, &err_tail))
}

/// The pip invocation (isolated from the user's pip configuration that would break it).
fn pip_command(python: &Path, lock: &Path, target: &Path) -> Command {
    let mut cmd = Command::new(python);
    cmd.args([
        "-m",
        "pip",
        "install",
        "--require-hashes",
        "--no-deps",
        "--only-binary=:all:",
    ])
    .args([
        "--no-warn-script-location",
        "--no-compile",
        "--disable-pip-version-check",
    ])
    .args(["--progress-bar", "off", "--target"])
    .arg(target)
    .arg("-r")
    .arg(lock)
    .env("PIP_REQUIRE_VIRTUALENV", "false")
    .env("PIP_USER", "false")
    .env("PIP_ROOT_USER_ACTION", "ignore")
    .env_remove("PYTHONPATH")
    .env_remove("PYTHONHOME");
    cmd
}

/// The requirement name in a pip `Collecting name==1.2 (from -r …)` line.
fn collecting_name(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix("Collecting ")?;
    rest.split(['=', ' ', '(']).next()
}

/// Turns pip's failure output into [`EnvError::HashMismatch`] or [`EnvError::PipFailed`].
fn classify_failure(status: &str, out: &VecDeque<String>, err: &VecDeque<String>) -> EnvError {
    let all: Vec<&str> = out.iter().chain(err.iter()).map(String::as_str).collect();
    let tail = all.join("\n");
    if tail.contains("DO NOT MATCH THE HASHES") {
        return EnvError::HashMismatch { detail: tail };
    }
    EnvError::PipFailed {
        status: status.to_string(),
        tail,
    }
}

fn push_tail(tail: &mut VecDeque<String>, line: String) {
    if tail.len() == TAIL_LINES {
        tail.pop_front();
    }
    tail.push_back(line);
}

fn read_tail(r: impl Read) -> VecDeque<String> {
    let mut tail = VecDeque::new();
    for line in BufReader::new(r).lines() {
        let Ok(line) = line else { break };
        push_tail(&mut tail, line);
    }
    tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_collecting_lines() {
        assert_eq!(
            collecting_name("Collecting numpy==1.26.4 (from -r /tmp/x (line 3))"),
            Some("numpy")
        );
        assert_eq!(collecting_name("  Using cached numpy-1.26.4.whl"), None);
    }

    #[test]
    fn hash_mismatch_is_recognised() {
        let out = VecDeque::from(vec!["Collecting numpy==1.26.4".to_string()]);
        let err = VecDeque::from(vec![
            "ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.".to_string(),
            "    numpy==1.26.4 from https://x/numpy.whl:".to_string(),
        ]);
        assert!(matches!(
            classify_failure("exit status: 1", &out, &err),
            EnvError::HashMismatch { .. }
        ));
        let err = VecDeque::from(vec![
            "ERROR: No matching distribution found for numpy==9".to_string()
        ]);
        match classify_failure("exit status: 1", &out, &err) {
            EnvError::PipFailed { tail, .. } => assert!(tail.contains("No matching distribution")),
            other => panic!("{other}"),
        }
    }
}
