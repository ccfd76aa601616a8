//! Finding the host's Python 3.11 and asking it where its pieces live.
//!
//! `python3.11` on PATH may be a shim (pyenv) or a symlink, so the interpreter is run once
//! and asked for `sys.executable` and its `sysconfig` paths; everything after that uses
//! the real files.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::error::{EnvError, Result};

/// The command tried when no interpreter is configured.
pub const DEFAULT_PYTHON: &str = "python3.11";

/// Printed as JSON by the interpreter being probed.
const PROBE: &str = r#"
import json, os, sys, sysconfig, importlib.util
v = sysconfig.get_config_var
print(json.dumps({
    "executable": os.path.realpath(sys.executable),
    "version": "%d.%d.%d" % sys.version_info[:3],
    "major_minor": "%d.%d" % sys.version_info[:2],
    "stdlib": sysconfig.get_path("stdlib"),
    "platstdlib": sysconfig.get_path("platstdlib"),
    "dynload": v("DESTSHARED") or os.path.join(sysconfig.get_path("platstdlib"), "lib-dynload"),
    "shared": bool(v("Py_ENABLE_SHARED")),
    "libdir": v("LIBDIR"),
    "soname": v("INSTSONAME") or v("LDLIBRARY"),
    "has_pip": importlib.util.find_spec("pip") is not None,
}))
"#;

/// What the runtime needs to know about the host interpreter.
#[derive(Debug, Clone, Deserialize)]
pub struct Interpreter {
    /// The real interpreter binary (symlinks resolved).
    pub executable: PathBuf,
    /// Full version, e.g. `3.11.7`.
    pub version: String,
    /// `3.11`.
    pub major_minor: String,
    /// The pure-Python standard library directory.
    pub stdlib: PathBuf,
    /// The platform-specific standard library directory (usually the same).
    pub platstdlib: PathBuf,
    /// Where the stdlib's extension modules live (`lib-dynload`).
    pub dynload: PathBuf,
    /// Whether the interpreter links a shared `libpython`.
    pub shared: bool,
    /// `LIBDIR` (where `libpython` lives for shared builds).
    pub libdir: Option<PathBuf>,
    /// `INSTSONAME` / `LDLIBRARY`, e.g. `libpython3.11.so.1.0`.
    pub soname: Option<String>,
    /// Whether `import pip` would work.
    pub has_pip: bool,
}

impl Interpreter {
    /// The shared `libpython` to ship, if the interpreter is a shared build and the
    /// library exists. (Debian's `/usr/bin/python3.11` reports `Py_ENABLE_SHARED` but
    /// links libpython statically; if a binary does need a missing one, the library
    /// closure reports it.)
    pub fn libpython(&self) -> Option<PathBuf> {
        if !self.shared {
            return None;
        }
        let name = self.soname.as_deref()?;
        let dir = self.libdir.as_deref()?;
        Some(dir.join(name)).filter(|p| p.is_file())
    }
}

/// Resolves `configured` (a path or a command on PATH), else `python3.11` on PATH, and
/// checks it is a CPython 3.11 with pip.
pub fn resolve(configured: Option<&Path>) -> Result<Interpreter> {
    let cmd = configured.map_or_else(|| PathBuf::from(DEFAULT_PYTHON), Path::to_path_buf);
    let interp = probe(&cmd)?;
    if interp.major_minor != "3.11" {
        return Err(EnvError::WrongPythonVersion {
            path: interp.executable,
            found: interp.version,
        });
    }
    if !interp.has_pip {
        return Err(EnvError::PipMissing {
            path: interp.executable,
        });
    }
    Ok(interp)
}

/// Runs `cmd -I -c PROBE` and parses what it prints.
fn probe(cmd: &Path) -> Result<Interpreter> {
    let not_found = |reason: String| EnvError::PythonNotFound {
        tried: cmd.display().to_string(),
        reason,
    };
    let out = Command::new(cmd)
        .args(["-I", "-c", PROBE])
        .output()
        .map_err(|e| not_found(e.to_string()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(not_found(format!("{}: {}", out.status, err.trim())));
    }
    let line = String::from_utf8_lossy(&out.stdout);
    parse_probe(line.trim()).map_err(|e| not_found(format!("unexpected probe output: {e}")))
}

/// Parses the probe's JSON line.
fn parse_probe(json: &str) -> Result<Interpreter, serde_json::Error> {
    serde_json::from_str(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_probe_and_finds_libpython() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("libpython3.11.so.1.0"), "").unwrap();
        let json = r#"{"executable":"/p/bin/python3.11","version":"3.11.7",
            "major_minor":"3.11","stdlib":"/p/lib/python3.11","platstdlib":"/p/lib/python3.11",
            "dynload":"/p/lib/python3.11/lib-dynload","shared":true,"libdir":"LIBDIR",
            "soname":"libpython3.11.so.1.0","has_pip":true}"#
            .replace("LIBDIR", &t.path().to_string_lossy());
        let i = parse_probe(&json).unwrap();
        assert_eq!(i.libpython(), Some(t.path().join("libpython3.11.so.1.0")));
        let missing = Interpreter {
            libdir: Some("/nonexistent".into()),
            ..i.clone()
        };
        assert_eq!(missing.libpython(), None);
        let static_build = Interpreter { shared: false, ..i };
        assert_eq!(static_build.libpython(), None);
    }

    #[test]
    fn missing_interpreter_is_python_not_found() {
        let err = resolve(Some(Path::new("/nonexistent/python3.11"))).unwrap_err();
        assert!(matches!(err, EnvError::PythonNotFound { .. }), "{err}");
        assert!(err.to_string().contains("runtime.python"));
    }
}
