//! Building a tree next to its final place and moving it there atomically.
//!
//! A tree is built in `<data_dir>/runtimes/.staging-<random>` and renamed to its final
//! name only when complete, so a tree that exists is whole. The staging directory is
//! removed on any error (it is a [`tempfile::TempDir`]), and an exclusive lock on
//! `runtimes/.lock` serialises setups, which also makes it safe to sweep staging
//! directories left by a setup that was killed.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use crate::error::{EnvError, Result};

/// Prefix of staging directory names.
pub const STAGING_PREFIX: &str = ".staging-";

/// Holds the exclusive setup lock of a runtimes directory until dropped.
#[derive(Debug)]
pub struct SetupLock {
    _file: File,
}

/// Takes the exclusive setup lock on `<runtimes>/.lock`, waiting for another setup.
pub fn lock(runtimes: &Path) -> Result<SetupLock> {
    let path = runtimes.join(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(EnvError::io("open", &path))?;
    file.lock().map_err(EnvError::io("lock", &path))?;
    Ok(SetupLock { _file: file })
}

/// Removes staging (and displaced) directories a killed setup left behind. Call only
/// while holding the [`SetupLock`].
pub fn sweep_stale(runtimes: &Path, _lock: &SetupLock) -> Result<usize> {
    let mut removed = 0;
    for entry in fs::read_dir(runtimes).map_err(EnvError::io("read directory", runtimes))? {
        let entry = entry.map_err(EnvError::io("read directory", runtimes))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(STAGING_PREFIX) || name.starts_with(".old-") {
            fs::remove_dir_all(entry.path()).map_err(EnvError::io("remove", entry.path()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// A tree under construction; deleted when dropped unless [`Staging::commit`]ted.
#[derive(Debug)]
pub struct Staging {
    dir: TempDir,
}

impl Staging {
    /// Creates `<runtimes>/.staging-<random>`.
    pub fn new(runtimes: &Path) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(STAGING_PREFIX)
            .tempdir_in(runtimes)
            .map_err(EnvError::io("create staging directory in", runtimes))?;
        Ok(Staging { dir })
    }

    /// The staging tree's root.
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Renames the finished tree to `dest`. A broken tree already at `dest` is moved
    /// aside first and then deleted.
    pub fn commit(self, dest: &Path) -> Result<PathBuf> {
        if fs::symlink_metadata(dest).is_ok() {
            let aside = self
                .root()
                .with_file_name(format!(".old-{}", unique_suffix(self.root())));
            fs::rename(dest, &aside).map_err(EnvError::io("move aside", dest))?;
            fs::remove_dir_all(&aside).map_err(EnvError::io("remove", &aside))?;
        }
        fs::rename(self.root(), dest).map_err(EnvError::io("rename staging tree to", dest))?;
        let _ = self.dir.keep();
        Ok(dest.to_path_buf())
    }
}

/// The random part of a staging directory's name.
fn unique_suffix(staging: &Path) -> String {
    let name = staging
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    name.trim_start_matches(STAGING_PREFIX).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtimes() -> TempDir {
        tempfile::tempdir().unwrap()
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn staging_is_removed_on_error() {
        let rt = runtimes();
        let result: Result<()> = (|| {
            let staging = Staging::new(rt.path())?;
            fs::write(staging.root().join("half-built"), "x").unwrap();
            Err(EnvError::StepFailed {
                step: "test",
                detail: "boom".into(),
            })
        })();
        assert!(result.is_err());
        assert!(
            entries(rt.path()).is_empty(),
            "leaked: {:?}",
            entries(rt.path())
        );
    }

    #[test]
    fn commit_renames_and_replaces_a_broken_tree() {
        let rt = runtimes();
        let dest = rt.path().join("default-0123456789abcdef");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("stale"), "x").unwrap();
        let staging = Staging::new(rt.path()).unwrap();
        fs::write(staging.root().join("kiln-runtime.json"), "{}").unwrap();
        staging.commit(&dest).unwrap();
        assert_eq!(entries(rt.path()), ["default-0123456789abcdef"]);
        assert_eq!(entries(&dest), ["kiln-runtime.json"]);
    }

    #[test]
    fn sweep_removes_leftovers_under_the_lock() {
        let rt = runtimes();
        fs::create_dir(rt.path().join(".staging-abc")).unwrap();
        fs::create_dir(rt.path().join("default-keep")).unwrap();
        let guard = lock(rt.path()).unwrap();
        assert_eq!(sweep_stale(rt.path(), &guard).unwrap(), 1);
        assert_eq!(entries(rt.path()), [".lock", "default-keep"]);
    }
}
