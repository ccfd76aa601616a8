//! Making the dynamic loader find the tree's `libpython` inside the sandbox.
//!
//! A shared interpreter's RUNPATH points at the host's install prefix (pyenv:
//! `/root/.pyenv/versions/…/lib`), which does not exist in the sandbox. When setup runs
//! as root, `ldconfig -r <tree>` generates an `etc/ld.so.cache` from the tree's
//! `etc/ld.so.conf` (ldconfig chroots, hence root). Otherwise the manifest asks the
//! sandbox to set `LD_LIBRARY_PATH=/usr/local/lib`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use crate::error::{EnvError, Result};
use crate::layout::LIBDIR;
use crate::treepython::describe;

/// How the loader finds `libpython`; returns the environment the sandbox must add.
pub fn configure(root: &Path, shared: bool, is_root: bool) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    if !shared {
        return Ok(env);
    }
    if is_root {
        match ldconfig(root) {
            Ok(()) => return Ok(env),
            Err(e) => tracing::warn!("{e}; falling back to LD_LIBRARY_PATH"),
        }
    }
    env.insert("LD_LIBRARY_PATH".to_string(), LIBDIR.to_string());
    Ok(env)
}

/// `ldconfig -X -r <root>`: writes `<root>/etc/ld.so.cache` (no symlinks touched).
fn ldconfig(root: &Path) -> Result<()> {
    let out = Command::new("ldconfig")
        .arg("-X")
        .arg("-r")
        .arg(root)
        .output()
        .map_err(|e| EnvError::StepFailed {
            step: "ldconfig",
            detail: e.to_string(),
        })?;
    let cache = root.join("etc/ld.so.cache");
    if !out.status.success() || !cache.is_file() {
        return Err(EnvError::StepFailed {
            step: "ldconfig",
            detail: describe(&out),
        });
    }
    Ok(())
}
