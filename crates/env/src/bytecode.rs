//! Precompiling bytecode: the tree is read-only at run time, so every `.pyc` is built at
//! setup, with the tree prefix stripped so tracebacks show in-sandbox paths.

use std::path::Path;

use crate::error::Result;
use crate::layout::{SITE_PACKAGES, STDLIB};
use crate::treepython;

/// Paths compileall skips (`re.search` on the path relative to the tree root).
const SKIP_RE: &str = r"/tests?/";

/// Compiles the standard library and the locked libraries with the tree's interpreter.
///
/// Test suites (`…/test/…`, `…/tests/…`, ~45% of the files) are not compiled: nothing in
/// a sandbox imports them, and they would still import (slower) from source.
///
/// A file that does not compile (some wheels ship Python-2 test data) is logged, not fatal:
/// the module still imports from source.
pub fn compile_all(root: &Path) -> Result<()> {
    let mut cmd = treepython::command(root);
    // Relative paths from the tree root: `-x` then never matches the host part of the
    // path, and `-p /` turns them into the in-sandbox paths recorded in each .pyc.
    cmd.current_dir(root)
        .args([
            "-m",
            "compileall",
            "-q",
            "-j",
            "0",
            "-x",
            SKIP_RE,
            "-p",
            "/",
        ])
        .args([relative(STDLIB), relative(SITE_PACKAGES)]);
    let out = cmd.output().map_err(|e| crate::EnvError::StepFailed {
        step: "compiling bytecode",
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        tracing::warn!(
            "compileall reported errors (modules fall back to source): {}",
            treepython::describe(&out)
        );
    }
    Ok(())
}

/// An in-sandbox absolute path relative to the tree root.
fn relative(abs: &str) -> &str {
    abs.trim_start_matches('/')
}
