//! Building one runtime tree, stage by stage, in a staging directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{EnvError, Result};
use crate::fsutil::{mkdir_p, normalize_permissions, write_atomic};
use crate::interpreter::Interpreter;
use crate::layout::{in_tree, RUNNER, SITE_PACKAGES, TOP_LEVEL};
use crate::lock::{pinned_packages, sha256_hex};
use crate::manifest::Manifest;
use crate::progress::{PipProgress, Progress};
use crate::staging::Staging;
use crate::{bytecode, closure, datadir, etc, fontcache, install, loader, stdlib, treepython};

/// Environment every sandbox of this runtime should have, whatever the loader needs.
fn base_env() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("LANG".to_string(), "C.UTF-8".to_string()),
        ("MPLBACKEND".to_string(), "Agg".to_string()),
        ("OPENBLAS_NUM_THREADS".to_string(), "1".to_string()),
    ])
}

/// Builds the tree for `lock` with `interp` in `staging` and moves it to `dest`.
pub fn build(
    name: &str,
    lock: &str,
    interp: &Interpreter,
    staging: Staging,
    dest: &Path,
    progress: &mut Progress,
) -> Result<Manifest> {
    let root = staging.root().to_path_buf();

    progress.stage(1);
    stdlib::install(interp, &root)?;
    treepython::smoke(&root)?;

    progress.stage(2);
    let site = in_tree(&root, SITE_PACKAGES);
    mkdir_p(&site)?;
    let total = pinned_packages(lock).len();
    install::install(interp, lock, &site, &mut PipProgress { progress, total })?;
    remove_scripts(&site)?;

    progress.stage(3);
    bytecode::compile_all(&root)?;

    progress.stage(4);
    let copied = closure::install(&root)?;
    progress.detail(&format!("library closure: {copied} host libraries"));

    progress.stage(5);
    fontcache::build(&root)?;

    progress.stage(6);
    let runner = kiln_runner::RUNNER_SOURCE;
    write_atomic(&in_tree(&root, RUNNER), runner.as_bytes(), 0o644)?;
    etc::write(&root)?;
    let mut env = base_env();
    env.extend(loader::configure(
        &root,
        interp.libpython().is_some(),
        datadir::effective_uid() == Some(0),
    )?);
    for top in TOP_LEVEL {
        mkdir_p(&root.join(top))?;
    }
    check_top_level(&root)?;
    let manifest = Manifest::new(
        name,
        sha256_hex(lock.as_bytes()),
        sha256_hex(runner.as_bytes()),
        interp.version.clone(),
        env,
    );
    manifest.write(&root)?;
    normalize_permissions(&root)?;
    staging.commit(dest)?;
    Ok(manifest)
}

/// Drops the console scripts (`bin/`, shebangs pointing at the host) and man pages
/// (`share/`) pip puts next to the libraries with `--target`.
fn remove_scripts(site: &Path) -> Result<()> {
    for dir in ["bin", "share"] {
        let p = site.join(dir);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).map_err(EnvError::io("remove", &p))?;
        }
    }
    Ok(())
}

/// The tree may only have the contract's top-level directories (plus the manifest): a
/// library resolved somewhere else on the host (e.g. under `/nix` or `/root`) would
/// be invisible to a sandbox that binds only those.
fn check_top_level(root: &Path) -> Result<()> {
    let extra: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(EnvError::io("read directory", root))?
        .filter_map(|e| e.ok())
        .map(|e| PathBuf::from(e.file_name()))
        .filter(|n| {
            !TOP_LEVEL.iter().any(|t| n == Path::new(t)) && n != Path::new("kiln-runtime.json")
        })
        .collect();
    if extra.is_empty() {
        return Ok(());
    }
    Err(EnvError::StepFailed {
        step: "checking the tree's layout",
        detail: format!(
            "unexpected top-level entries {extra:?}: a needed shared library lives outside \
             /usr, /lib and /lib64 on this host; install the library system-wide"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_level_check_rejects_strays() {
        let t = tempfile::tempdir().unwrap();
        for d in TOP_LEVEL {
            std::fs::create_dir(t.path().join(d)).unwrap();
        }
        std::fs::write(t.path().join("kiln-runtime.json"), "{}").unwrap();
        check_top_level(t.path()).unwrap();
        std::fs::create_dir(t.path().join("root")).unwrap();
        assert!(check_top_level(t.path()).is_err());
    }
}
