//! The wheelhouse: libraries an environment allows that its runtime does not
//! have, kept as hash-pinned wheels on the host and installed offline.
//!
//! - `kiln env lock` resolves the environment's extra libraries and their
//!   dependencies with pip (the one step that uses the network), keeps the
//!   wheels in `<data_dir>/wheelhouse/files/` and writes a lock of
//!   `name==version --hash=sha256:…` lines, leaving out what the runtime
//!   already pins at the same version.
//! - `kiln env wheelhouse` downloads the wheels a lock names (hash-checked),
//!   e.g. for a lock file committed next to kiln.toml.
//! - [`tree`] installs a lock's wheels with `pip --no-index --require-hashes`
//!   into `<data_dir>/libraries/lib-<hash of the lock>/`: a read-only tree
//!   the native backend mounts at `/libraries` in the sandboxes that ask for
//!   one of its libraries. Never from the network, never into `/work`.

use crate::error::{EnvError, Result};
use crate::fsutil;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the sandbox sees a library tree.
pub const SANDBOX_PATH: &str = "/libraries";

/// `<data_dir>/wheelhouse`.
#[derive(Debug, Clone)]
pub struct Wheelhouse {
    pub dir: PathBuf,
}

/// One pinned distribution of a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// Normalised (PEP 503) name.
    pub name: String,
    pub version: String,
    pub sha256: Vec<String>,
}

/// A built library tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibraryTree {
    /// The directory name under `<data_dir>/libraries/`.
    pub name: String,
    pub path: PathBuf,
    /// What it holds (normalised name → version).
    pub pins: BTreeMap<String, String>,
}

impl Wheelhouse {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("wheelhouse"),
        }
    }

    /// The downloaded wheels (one flat directory, every file hash-checked
    /// against a lock before use).
    pub fn files(&self) -> PathBuf {
        self.dir.join("files")
    }

    /// Where `kiln env lock` writes an environment's lock by default.
    pub fn default_lock(&self, environment: &str) -> PathBuf {
        self.dir.join(format!("{environment}.lock"))
    }
}

/// The pins of a requirements-style lock (`name==version \` then
/// `--hash=sha256:…` continuation lines; comments ignored).
pub fn parse_lock(text: &str) -> Result<Vec<Pin>> {
    let joined = text.replace("\\\n", " ");
    let mut pins = Vec::new();
    for line in joined.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let spec = words.next().unwrap_or("");
        let Some((name, version)) = spec.split_once("==") else {
            return Err(bad_lock(format!("{spec:?} is not pinned with ==")));
        };
        let sha256: Vec<String> = words
            .filter_map(|w| w.strip_prefix("--hash=sha256:"))
            .map(str::to_string)
            .collect();
        if sha256.is_empty() {
            return Err(bad_lock(format!("{spec} has no --hash=sha256:")));
        }
        pins.push(Pin {
            name: kiln_policy::normalize(name),
            version: version.to_string(),
            sha256,
        });
    }
    Ok(pins)
}

fn bad_lock(detail: String) -> EnvError {
    EnvError::StepFailed {
        step: "reading the wheelhouse lock",
        detail,
    }
}

fn step(step: &'static str, detail: impl Into<String>) -> EnvError {
    EnvError::StepFailed {
        step,
        detail: detail.into(),
    }
}

/// `name-version-…whl` → (normalised name, version).
pub fn wheel_name(file: &str) -> Option<(String, String)> {
    let stem = file.strip_suffix(".whl")?;
    let mut parts = stem.split('-');
    let name = parts.next()?;
    let version = parts.next()?;
    Some((kiln_policy::normalize(name), version.to_string()))
}

/// The platform the runtime runs: CPython 3.11 on x86-64 Linux.
const PLATFORM_ARGS: [&str; 16] = [
    "--only-binary=:all:",
    "--python-version",
    "3.11",
    "--implementation",
    "cp",
    "--abi",
    "cp311",
    "--abi",
    "abi3",
    "--abi",
    "none",
    "--platform",
    "manylinux_2_28_x86_64",
    "--platform",
    "manylinux2014_x86_64",
    "--platform=any",
];

fn pip(python: &Path) -> Command {
    let mut cmd = Command::new(python);
    cmd.args(["-m", "pip"])
        .env("PIP_REQUIRE_VIRTUALENV", "false")
        .env("PIP_USER", "false")
        .env("PIP_ROOT_USER_ACTION", "ignore")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env_remove("PYTHONPATH")
        .env_remove("PYTHONHOME");
    cmd
}

fn run(mut cmd: Command, what: &'static str) -> Result<()> {
    let out = cmd.output().map_err(|e| step(what, e.to_string()))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
    Err(step(
        what,
        format!(
            "pip failed ({}):\n{}",
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ),
    ))
}

/// `kiln env lock`: resolves `libraries` (name, version) with their
/// dependencies, keeps the wheels, and returns the lock text. What the
/// runtime pins at the same version is left out; a dependency the runtime
/// pins at another version is an error (it would shadow or be shadowed).
pub fn lock(
    python: &Path,
    wheelhouse: &Wheelhouse,
    libraries: &[(String, String)],
    runtime: &BTreeMap<String, String>,
) -> Result<String> {
    let files = wheelhouse.files();
    fsutil::mkdir_p(&files)?;
    let scratch = tempfile::Builder::new()
        .prefix("kiln-lock-")
        .tempdir()
        .map_err(EnvError::io(
            "create a temporary directory in",
            std::env::temp_dir(),
        ))?;
    let mut cmd = pip(python);
    cmd.arg("download")
        .args(PLATFORM_ARGS)
        .arg("--dest")
        .arg(scratch.path())
        .args(libraries.iter().map(|(n, v)| format!("{n}=={v}")));
    run(cmd, "resolving the libraries with pip download")?;
    let mut pins = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(scratch.path())
        .map_err(EnvError::io("read directory", scratch.path()))?
        .filter_map(|e| e.ok())
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let file = entry.file_name().to_string_lossy().to_string();
        let Some((name, version)) = wheel_name(&file) else {
            return Err(step(
                "resolving the libraries",
                format!("{file} is not a wheel"),
            ));
        };
        match runtime.get(&name) {
            Some(v) if *v == version => continue,
            Some(v) => {
                return Err(step(
                    "resolving the libraries",
                    format!(
                        "{name}=={version} is needed, but the runtime pins {name}=={v}; \
                         pin a version of the library that works with the runtime's"
                    ),
                ))
            }
            None => {}
        }
        let data = std::fs::read(entry.path()).map_err(EnvError::io("read", entry.path()))?;
        let hash = crate::lock::sha256_hex(&data);
        fsutil::write_atomic(&files.join(&file), &data, 0o644)?;
        pins.push(format!("{name}=={version} \\\n    --hash=sha256:{hash}"));
    }
    let mut text = String::from(
        "# kiln wheelhouse lock: libraries the runtime does not have, and their\n\
         # dependencies, for CPython 3.11 on Linux x86-64. Written by `kiln env lock`;\n\
         # `kiln env wheelhouse` downloads (and hash-checks) the wheels it names.\n",
    );
    for pin in pins {
        text.push_str(&pin);
        text.push('\n');
    }
    Ok(text)
}

/// `kiln env wheelhouse`: makes sure every wheel of `lock` is in the
/// wheelhouse, downloading what is missing; pip checks every hash.
pub fn fetch(python: &Path, wheelhouse: &Wheelhouse, lock_path: &Path) -> Result<()> {
    fsutil::mkdir_p(&wheelhouse.files())?;
    let mut cmd = pip(python);
    cmd.args(["download", "--no-deps", "--require-hashes"])
        .args(PLATFORM_ARGS)
        .arg("--dest")
        .arg(wheelhouse.files())
        .arg("-r")
        .arg(lock_path);
    run(cmd, "downloading the wheelhouse")
}

/// The read-only tree of `lock`'s libraries, installed offline from the
/// wheelhouse on first use (`pip --no-index --require-hashes`).
pub fn tree(python: &Path, data_dir: &Path, lock_text: &str) -> Result<LibraryTree> {
    let pins: BTreeMap<String, String> = parse_lock(lock_text)?
        .into_iter()
        .map(|p| (p.name, p.version))
        .collect();
    let id = &crate::lock::sha256_hex(lock_text.as_bytes())[..16];
    let name = format!("lib-{id}");
    let libraries = crate::datadir::ensure_traversable_dir(&data_dir.join("libraries"))?;
    let path = libraries.join(&name);
    if path.is_dir() {
        return Ok(LibraryTree { name, path, pins });
    }
    let wheelhouse = Wheelhouse::new(data_dir);
    let staging = tempfile::Builder::new()
        .prefix(".staging-")
        .tempdir_in(&libraries)
        .map_err(EnvError::io("create a staging directory in", &libraries))?;
    let lock_file = staging.path().join("lock.txt");
    std::fs::write(&lock_file, lock_text).map_err(EnvError::io("write", &lock_file))?;
    let target = staging.path().join("tree");
    let mut cmd = pip(python);
    cmd.args([
        "install",
        "--no-index",
        "--require-hashes",
        "--no-deps",
        "--only-binary=:all:",
        "--no-compile",
        "--no-warn-script-location",
        "--progress-bar",
        "off",
    ])
    .arg("--find-links")
    .arg(wheelhouse.files())
    .arg("--target")
    .arg(&target)
    .arg("-r")
    .arg(&lock_file);
    run(cmd, "installing libraries from the wheelhouse (offline)").map_err(|e| {
        step(
            "installing libraries from the wheelhouse",
            format!("{e}\nHint: `kiln env wheelhouse` downloads the wheels a lock names"),
        )
    })?;
    // Bytecode now: the tree is read-only in the sandbox. `-d` records the
    // in-sandbox path for tracebacks.
    let mut compile = Command::new(python);
    compile
        .args(["-m", "compileall", "-q", "-j", "0", "-d", SANDBOX_PATH])
        .arg(&target);
    let _ = compile.output();
    fsutil::normalize_permissions(&target)?;
    std::fs::rename(&target, &path).or_else(|e| {
        // Another kiln built it meanwhile: theirs is as good as ours.
        if path.is_dir() {
            Ok(())
        } else {
            Err(EnvError::io("rename into place", &path)(e))
        }
    })?;
    Ok(LibraryTree { name, path, pins })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_parse_with_continuations_and_comments() {
        let text = "# header\nTabulate==0.9.0 \\\n    --hash=sha256:aa \\\n    --hash=sha256:bb\n    # via x\nfoo_bar==1 --hash=sha256:cc\n";
        let pins = parse_lock(text).unwrap();
        assert_eq!(
            pins,
            [
                Pin {
                    name: "tabulate".into(),
                    version: "0.9.0".into(),
                    sha256: vec!["aa".into(), "bb".into()]
                },
                Pin {
                    name: "foo-bar".into(),
                    version: "1".into(),
                    sha256: vec!["cc".into()]
                },
            ]
        );
        assert!(parse_lock("foo>=1 --hash=sha256:aa").is_err());
        assert!(parse_lock("foo==1").is_err());
    }

    #[test]
    fn wheel_names() {
        assert_eq!(
            wheel_name("tabulate-0.9.0-py3-none-any.whl"),
            Some(("tabulate".into(), "0.9.0".into()))
        );
        assert_eq!(
            wheel_name("charset_normalizer-3.3.2-cp311-cp311-manylinux_2_17_x86_64.whl"),
            Some(("charset-normalizer".into(), "3.3.2".into()))
        );
        assert_eq!(wheel_name("foo-1.0.tar.gz"), None);
    }
}
