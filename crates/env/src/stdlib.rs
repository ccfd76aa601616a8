//! Copying the interpreter, its standard library, `lib-dynload` and `libpython`.

use std::ffi::OsStr;
use std::os::unix::fs::symlink;
use std::path::Path;

use crate::error::{EnvError, Result};
use crate::fsutil::{copy_file, copy_tree, mkdir_p};
use crate::interpreter::Interpreter;
use crate::layout::{in_tree, INTERPRETER, INTERPRETER_VERSIONED, LIBDIR, STDLIB};

/// Top-level stdlib entries that are never shipped (tests, GUI, installers, build files).
const SKIPPED_TOP: [&str; 8] = [
    "site-packages",
    "dist-packages",
    "test",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
];

/// Extension modules left out of `lib-dynload`: Tk (drags in X11) and CPython's test modules.
const SKIPPED_DYNLOAD_PREFIXES: [&str; 5] = [
    "_tkinter",
    "_test",
    "_ctypes_test",
    "xxlimited",
    "_xxtestfuzz",
];

/// Copies the interpreter binary (and the `python3.11` symlink), the standard library,
/// `lib-dynload` and, for a shared build, `libpython` into the tree. Returns files copied.
pub fn install(interp: &Interpreter, root: &Path) -> Result<usize> {
    let exe = in_tree(root, INTERPRETER);
    copy_file(&interp.executable, &exe)?;
    let versioned = in_tree(root, INTERPRETER_VERSIONED);
    symlink("python3", &versioned).map_err(EnvError::io("symlink", &versioned))?;

    let stdlib = in_tree(root, STDLIB);
    let mut n = copy_tree(&interp.stdlib, &stdlib, &skip_stdlib)?;
    if interp.platstdlib != interp.stdlib {
        n += copy_tree(&interp.platstdlib, &stdlib, &skip_stdlib)?;
    }
    mkdir_p(&stdlib.join("site-packages"))?;
    n += copy_tree(&interp.dynload, &stdlib.join("lib-dynload"), &skip_dynload)?;

    if let Some(lib) = interp.libpython() {
        let name = lib
            .file_name()
            .unwrap_or(OsStr::new("libpython3.11.so.1.0"));
        copy_file(&lib, &in_tree(root, LIBDIR).join(name))?;
        n += 1;
    }
    Ok(n + 1)
}

/// The filter for the stdlib copy (`rel` is relative to the stdlib directory).
pub fn skip_stdlib(rel: &Path, is_dir: bool) -> bool {
    let name = rel.file_name().and_then(OsStr::to_str).unwrap_or("");
    let top = rel.components().count() == 1;
    if name == "__pycache__" {
        return true;
    }
    if top
        && is_dir
        && (SKIPPED_TOP.contains(&name) || name == "lib-dynload" || name.starts_with("config-"))
    {
        return true;
    }
    !is_dir && (name.ends_with(".pyc") || name.ends_with(".pyo"))
}

/// The filter for the `lib-dynload` copy.
pub fn skip_dynload(rel: &Path, _is_dir: bool) -> bool {
    let name = rel.file_name().and_then(OsStr::to_str).unwrap_or("");
    SKIPPED_DYNLOAD_PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdlib_filter() {
        let p = Path::new;
        assert!(skip_stdlib(p("test"), true));
        assert!(skip_stdlib(p("site-packages"), true));
        assert!(skip_stdlib(p("config-3.11-x86_64-linux-gnu"), true));
        assert!(skip_stdlib(p("json/__pycache__"), true));
        assert!(skip_stdlib(p("lib-dynload"), true));
        assert!(!skip_stdlib(p("json"), true));
        assert!(
            !skip_stdlib(p("unittest/test"), true),
            "only the top-level test package goes"
        );
        assert!(!skip_stdlib(p("os.py"), false));
        assert!(skip_dynload(
            p("_tkinter.cpython-311-x86_64-linux-gnu.so"),
            false
        ));
        assert!(skip_dynload(
            p("_testcapi.cpython-311-x86_64-linux-gnu.so"),
            false
        ));
        assert!(!skip_dynload(
            p("_ctypes.cpython-311-x86_64-linux-gnu.so"),
            false
        ));
    }
}
