//! kiln's self-contained Python runtime.
//!
//! `kiln env setup` ([`setup`]) builds one tree per (lock file, Python version): the
//! host's Python 3.11 interpreter and standard library, the libraries pinned in
//! [`DEFAULT_LOCK`] (installed by hash), the shared-library closure they load, a
//! prebuilt matplotlib font cache, the in-sandbox runner and a minimal `/etc`. It is the
//! native backend's read-only root — never a venv that needs the host's `/usr`. Layout
//! (paths as seen inside the sandbox, see [`layout`]):
//!
//! ```text
//! /kiln-runtime.json               manifest (Manifest)
//! /usr/local/bin/python3           interpreter (python3.11 -> python3)
//! /usr/local/lib/python3.11/       standard library + lib-dynload, precompiled
//! /usr/local/lib/libpython3.11.so.1.0   if the interpreter is a shared build
//! /opt/kiln/site-packages/         locked libraries, precompiled
//! /opt/kiln/runner.py              kiln_runner::RUNNER_SOURCE
//! /opt/kiln/mpl/fontlist-v*.json   matplotlib font cache
//! /lib, /lib64, /usr/lib/...       host shared libraries the above load
//! /etc/{passwd,group,hosts,nsswitch.conf,ld.so.conf,ld.so.cache}
//! ```
//!
//! [`locate`] finds the tree for the embedded lock without building anything.
#![forbid(unsafe_code)]

mod bytecode;
mod closure;
mod datadir;
mod error;
mod etc;
mod fontcache;
mod fsutil;
mod install;
mod interpreter;
pub mod layout;
mod loader;
mod lock;
mod manifest;
mod progress;
mod staging;
mod stdlib;
mod tree;
mod treepython;
pub mod wheelhouse;

use std::path::{Path, PathBuf};

pub use datadir::default_data_dir;
pub use error::EnvError;
pub use manifest::Manifest;

/// The default environment's lock file (every transitive dependency pinned by hash).
pub const DEFAULT_LOCK: &str = include_str!("../../../envs/default/requirements.lock");

/// The distributions a lock file pins (normalised name → version): what a
/// runtime built from it has installed.
pub fn pins(lock: &str) -> std::collections::BTreeMap<String, String> {
    lock.lines()
        .filter_map(|line| line.split_whitespace().next()?.split_once("=="))
        .map(|(name, version)| (kiln_policy::normalize(name), version.to_string()))
        .collect()
}

/// The host Python 3.11 kiln builds with (`runtime.python`, else
/// `python3.11` on PATH).
pub fn python(configured: Option<&Path>) -> Result<PathBuf, EnvError> {
    interpreter::resolve(configured).map(|i| i.executable)
}

/// The default environment's name (the tree directory is `default-<id>`).
pub const DEFAULT_NAME: &str = "default";

/// Options for [`setup`].
#[derive(Debug, Clone)]
pub struct EnvOptions {
    /// Where runtimes live (`<data_dir>/runtimes/...`); see [`default_data_dir`].
    pub data_dir: PathBuf,
    /// The host interpreter to build from (`runtime.python` in kiln.toml); `None` means
    /// `python3.11` on PATH.
    pub python: Option<PathBuf>,
    /// Show progress on stderr.
    pub progress: bool,
}

/// A built runtime tree.
#[derive(Debug, Clone)]
pub struct Runtime {
    /// The tree's root on the host (becomes `/` in the sandbox).
    pub root: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl Runtime {
    /// The host path of an in-sandbox path of this tree.
    pub fn host_path(&self, in_sandbox: &str) -> PathBuf {
        layout::in_tree(&self.root, in_sandbox)
    }

    /// Whether the tree's runner is the one embedded in this binary.
    pub fn runner_is_current(&self) -> bool {
        self.manifest.runner_sha256 == lock::sha256_hex(kiln_runner::RUNNER_SOURCE.as_bytes())
    }
}

/// Builds the runtime for [`DEFAULT_LOCK`] if it does not exist yet and returns it.
///
/// A second call with the same lock and interpreter version is a no-op (apart from
/// refreshing the runner if this binary embeds a different one).
pub fn setup(opts: &EnvOptions) -> Result<Runtime, EnvError> {
    let mut progress = progress::Progress::new(opts.progress);
    let result = setup_with(opts, DEFAULT_NAME, DEFAULT_LOCK, &mut progress);
    match &result {
        Ok(rt) => progress.finish(&format!("runtime ready at {}", rt.root.display())),
        Err(_) => progress.abandon(),
    }
    result
}

fn setup_with(
    opts: &EnvOptions,
    name: &str,
    lock: &str,
    progress: &mut progress::Progress,
) -> Result<Runtime, EnvError> {
    let data_dir = datadir::ensure_traversable_dir(&opts.data_dir)?;
    let runtimes = datadir::ensure_traversable_dir(&data_dir.join("runtimes"))?;
    let guard = staging::lock(&runtimes)?;

    progress.stage(0);
    let interp = interpreter::resolve(opts.python.as_deref())?;
    let dest = runtimes.join(lock::runtime_dir_name(name, lock, &interp.version));
    if let Some(rt) = existing(&dest, lock)? {
        return refresh_runner(rt);
    }
    let swept = staging::sweep_stale(&runtimes, &guard)?;
    if swept > 0 {
        progress.note(&format!(
            "removed {swept} leftover staging director{}",
            if swept == 1 { "y" } else { "ies" }
        ));
    }
    let staging = staging::Staging::new(&runtimes)?;
    let manifest = tree::build(name, lock, &interp, staging, &dest, progress)?;
    Ok(Runtime {
        root: dest,
        manifest,
    })
}

/// The tree at `dest` if it is complete and built from `lock`.
fn existing(dest: &Path, lock: &str) -> Result<Option<Runtime>, EnvError> {
    if !dest.join("kiln-runtime.json").is_file() {
        return Ok(None);
    }
    match Manifest::read(dest) {
        Ok(m) if m.lock_sha256 == lock::sha256_hex(lock.as_bytes()) => Ok(Some(Runtime {
            root: dest.to_path_buf(),
            manifest: m,
        })),
        Ok(_) => Ok(None),
        Err(e) => {
            tracing::warn!("{e}; rebuilding");
            Ok(None)
        }
    }
}

/// Rewrites `opt/kiln/runner.py` (atomically) and the manifest if the embedded runner
/// differs from the tree's.
fn refresh_runner(mut rt: Runtime) -> Result<Runtime, EnvError> {
    if rt.runner_is_current() {
        return Ok(rt);
    }
    let source = kiln_runner::RUNNER_SOURCE;
    fsutil::write_atomic(&rt.host_path(layout::RUNNER), source.as_bytes(), 0o644)?;
    rt.manifest.runner_sha256 = lock::sha256_hex(source.as_bytes());
    rt.manifest.write(&rt.root)?;
    Ok(rt)
}

/// The in-sandbox path of this binary's runner: named by its hash, so that
/// kiln builds sharing one data directory (an upgrade, two checkouts) each
/// run their own runner instead of overwriting each other's.
pub fn runner_path() -> String {
    let hash = lock::sha256_hex(kiln_runner::RUNNER_SOURCE.as_bytes());
    format!("/opt/kiln/runner-{}.py", &hash[..16])
}

/// Writes this binary's runner into the tree at [`runner_path`] (atomically,
/// once) and returns that path.
pub fn ensure_runner(rt: &Runtime) -> Result<String, EnvError> {
    let path = runner_path();
    let host = rt.host_path(&path);
    let current = std::fs::read(&host).is_ok_and(|b| b == kiln_runner::RUNNER_SOURCE.as_bytes());
    if !current {
        fsutil::write_atomic(&host, kiln_runner::RUNNER_SOURCE.as_bytes(), 0o644)?;
    }
    Ok(path)
}

/// Finds the tree built for [`DEFAULT_LOCK`] under `data_dir` (the newest, if several
/// interpreter versions were used), or [`EnvError::NotSetUp`].
pub fn locate(data_dir: &Path) -> Result<Runtime, EnvError> {
    locate_lock(data_dir, DEFAULT_NAME, DEFAULT_LOCK)
}

fn locate_lock(data_dir: &Path, name: &str, lock: &str) -> Result<Runtime, EnvError> {
    let runtimes = data_dir.join("runtimes");
    let want = lock::sha256_hex(lock.as_bytes());
    let prefix = format!("{name}-");
    let mut best: Option<Runtime> = None;
    for entry in std::fs::read_dir(&runtimes).into_iter().flatten().flatten() {
        let file_name = entry.file_name();
        if !file_name.to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let Ok(m) = Manifest::read(&entry.path()) else {
            continue;
        };
        if m.lock_sha256 == want
            && best
                .as_ref()
                .is_none_or(|b| m.created_unix > b.manifest.created_unix)
        {
            best = Some(Runtime {
                root: entry.path(),
                manifest: m,
            });
        }
    }
    let rt = best.ok_or_else(|| EnvError::NotSetUp {
        data_dir: data_dir.to_path_buf(),
    })?;
    Ok(rt)
}

#[cfg(test)]
mod tests;
