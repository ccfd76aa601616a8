//! Loading kiln.toml and locating (or building) the runtime.

use anyhow::{Context, Result};
use kiln_env::wheelhouse::Wheelhouse;
use kiln_env::{EnvError, EnvOptions, Runtime};
use kiln_native::RuntimeSpec;
use kiln_policy::Config;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The file kiln would load: `explicit`, else `$KILN_CONFIG`, else the
/// first of ./kiln.toml and /etc/kiln/kiln.toml that exists.
pub fn find(explicit: Option<&Path>) -> Option<PathBuf> {
    let from_env = std::env::var_os("KILN_CONFIG").map(PathBuf::from);
    match explicit.map(Path::to_path_buf).or(from_env) {
        Some(p) => Some(p),
        None => ["kiln.toml", "/etc/kiln/kiln.toml"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists()),
    }
}

/// The configuration: an explicit path must exist; the default places may not.
pub fn load(explicit: Option<&Path>) -> Result<Config> {
    let Some(path) = find(explicit) else {
        return Ok(Config::default());
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    Config::from_toml(&text).with_context(|| format!("invalid config file {}", path.display()))
}

fn env_options(config: &Config) -> EnvOptions {
    EnvOptions {
        data_dir: config
            .runtime
            .data_dir
            .clone()
            .unwrap_or_else(kiln_env::default_data_dir),
        python: config.runtime.python.clone(),
        progress: std::io::stderr().is_terminal(),
    }
}

/// What the runtime has installed (normalised name → version), for
/// `libraries=[...]`: the pins of the lock file it was built from.
pub fn preinstalled() -> std::collections::BTreeMap<String, String> {
    kiln_env::pins(kiln_env::DEFAULT_LOCK)
}

/// `kiln env setup`.
pub fn env_setup(config: &Config) -> Result<Runtime> {
    let runtime = kiln_env::setup(&env_options(config))?;
    eprintln!("kiln: runtime ready at {}", runtime.root.display());
    Ok(runtime)
}

/// `kiln env show`.
pub fn env_show(config: &Config) -> Result<ExitCode> {
    let runtime = kiln_env::locate(&env_options(config).data_dir)?;
    println!("{}", runtime.root.display());
    println!("{}", serde_json::to_string_pretty(&runtime.manifest)?);
    Ok(ExitCode::SUCCESS)
}

/// The runtime, built on first use when it is missing.
pub fn runtime(config: &Config) -> Result<RuntimeSpec> {
    let opts = env_options(config);
    let runtime = match kiln_env::locate(&opts.data_dir) {
        Ok(rt) => rt,
        Err(EnvError::NotSetUp { .. }) => {
            eprintln!("kiln: first use: building the Python runtime (once; `kiln env setup` does this ahead of time)");
            kiln_env::setup(&opts)?
        }
        Err(e) => return Err(e.into()),
    };
    let mut spec = spec(&runtime, &opts.data_dir);
    spec.runner = kiln_env::ensure_runner(&runtime)?;
    Ok(spec)
}

fn spec(runtime: &Runtime, data_dir: &Path) -> RuntimeSpec {
    let m = &runtime.manifest;
    RuntimeSpec {
        root: runtime.root.clone(),
        top_level: m.top_level.clone(),
        interpreter: m.interpreter.clone(),
        runner: m.runner.clone(),
        site_packages: m.site_packages.clone(),
        mpl_cache: m.mpl_cache.clone(),
        env: m.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        libraries_dir: data_dir.join("libraries"),
    }
}

fn data_dir(config: &Config) -> PathBuf {
    env_options(config).data_dir
}

/// Where an environment's wheelhouse lock is: `lock` in its policy, else
/// `<data_dir>/wheelhouse/<name>.lock`.
pub fn lock_path(config: &Config, name: &str) -> Result<PathBuf> {
    let env = config.environment(Some(name))?;
    Ok(env
        .lock
        .clone()
        .unwrap_or_else(|| Wheelhouse::new(&data_dir(config)).default_lock(name)))
}

/// The environment's wheelhouse tree, installed offline on first use;
/// `None` when the environment has no lock.
pub fn wheelhouse_tree(config: &Config, name: &str) -> Result<Option<kiln_check::WheelhouseTree>> {
    let path = lock_path(config, name)?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    };
    let python = kiln_env::python(config.runtime.python.as_deref())?;
    let tree =
        kiln_env::wheelhouse::tree(&python, &data_dir(config), &text).with_context(|| {
            format!(
                "the wheelhouse of environment `{name}` ({})",
                path.display()
            )
        })?;
    Ok(Some(kiln_check::WheelhouseTree {
        name: tree.name,
        pins: tree.pins,
    }))
}

/// Every environment's wheelhouse tree (`kiln serve`); one that cannot be
/// built is left out with a warning: its libraries are then refused.
pub fn wheelhouse_trees(config: &Config) -> BTreeMap<String, kiln_check::WheelhouseTree> {
    let mut trees = BTreeMap::new();
    for name in config.environments.keys() {
        match wheelhouse_tree(config, name) {
            Ok(Some(tree)) => {
                tracing::info!(environment = %name, tree = %tree.name, libraries = tree.pins.len(), "wheelhouse tree ready");
                trees.insert(name.clone(), tree);
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(environment = %name, "wheelhouse unavailable: {e:#}"),
        }
    }
    trees
}

/// `kiln env lock`: resolves the environment's libraries the runtime lacks.
pub fn env_lock(config: &Config, name: &str, output: Option<&Path>) -> Result<ExitCode> {
    let env = config.environment(Some(name))?;
    let runtime = preinstalled();
    let wanted: Vec<(String, String)> = env
        .libraries
        .iter()
        .filter(|(n, lib)| {
            runtime.get(&kiln_policy::normalize(n)).map(String::as_str) != Some(lib.version())
        })
        .map(|(n, lib)| (n.clone(), lib.version().to_string()))
        .collect();
    let out = match output {
        Some(p) => p.to_path_buf(),
        None => lock_path(config, name)?,
    };
    if wanted.is_empty() {
        eprintln!("kiln: every library of `{name}` is in the runtime; no wheelhouse needed");
        return Ok(ExitCode::SUCCESS);
    }
    let python = kiln_env::python(config.runtime.python.as_deref())?;
    let wheelhouse = Wheelhouse::new(&data_dir(config));
    eprintln!(
        "kiln: resolving {} with pip (network)…",
        wanted
            .iter()
            .map(|(n, v)| format!("{n}=={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let text = kiln_env::wheelhouse::lock(&python, &wheelhouse, &wanted, &runtime)?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(&out, &text).with_context(|| format!("write {}", out.display()))?;
    let pins = kiln_env::wheelhouse::parse_lock(&text)?;
    eprintln!("kiln: wrote {} ({} wheels)", out.display(), pins.len());
    Ok(ExitCode::SUCCESS)
}

/// `kiln env wheelhouse`: downloads (hash-checked) what a lock names and
/// installs the environment's tree, offline.
pub fn env_wheelhouse(config: &Config, name: &str, lock: Option<&Path>) -> Result<ExitCode> {
    let path = match lock {
        Some(p) => p.to_path_buf(),
        None => lock_path(config, name)?,
    };
    if !path.exists() {
        anyhow::bail!(
            "no wheelhouse lock at {}; Hint: `kiln env lock --environment {name}` writes one",
            path.display()
        );
    }
    let python = kiln_env::python(config.runtime.python.as_deref())?;
    let wheelhouse = Wheelhouse::new(&data_dir(config));
    kiln_env::wheelhouse::fetch(&python, &wheelhouse, &path)?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    let tree = kiln_env::wheelhouse::tree(&python, &data_dir(config), &text)?;
    println!("{}", tree.path.display());
    eprintln!(
        "kiln: {} libraries installed offline for `{name}`: {}",
        tree.pins.len(),
        tree.pins
            .iter()
            .map(|(n, v)| format!("{n}=={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// The zygote's library (built from crates/zygote, embedded at build time).
const ZYGOTE_LIB: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libkiln_zygote.so"));

/// Writes the zygote's library and template script into the data directory
/// (once per kiln build: the directory is named by their hash).
pub fn zygote_dir(config: &Config) -> Result<PathBuf> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::PermissionsExt;
    let script = kiln_runner::ZYGOTE_SOURCE.as_bytes();
    let hash = Sha256::new()
        .chain_update(ZYGOTE_LIB)
        .chain_update(script)
        .finalize();
    let data_dir = env_options(config).data_dir;
    let dir = data_dir.join("zygote").join(hex::encode(&hash[..8]));
    if dir.join("kiln_zygote.py").exists() {
        return Ok(dir);
    }
    let parent = data_dir.join("zygote");
    std::fs::create_dir_all(&parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    std::fs::set_permissions(&parent, std::fs::Permissions::from_mode(0o755))?;
    let staging = parent.join(format!(".staging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir(&staging)?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o755))?;
    std::fs::write(staging.join("libkiln_zygote.so"), ZYGOTE_LIB)?;
    std::fs::write(staging.join("kiln_zygote.py"), script)?;
    for f in ["libkiln_zygote.so", "kiln_zygote.py"] {
        std::fs::set_permissions(staging.join(f), std::fs::Permissions::from_mode(0o644))?;
    }
    match std::fs::rename(&staging, &dir) {
        Ok(()) => Ok(dir),
        // Another kiln won the race with identical content.
        Err(_) if dir.join("kiln_zygote.py").exists() => {
            let _ = std::fs::remove_dir_all(&staging);
            Ok(dir)
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
}

/// The native backend, forking from a zygote when `zygote` is set.
/// Call while the process is single-threaded (both paths fork).
pub fn native_backend(
    config: &Config,
    zygote: bool,
) -> Result<Result<kiln_native::NativeBackend, kiln_core::BackendError>> {
    let runtime = runtime(config)?;
    let mut backend = match kiln_native::NativeBackend::new(config, runtime) {
        Ok(b) => b,
        Err(e) => return Ok(Err(e)),
    };
    if zygote {
        if let Err(e) = backend.use_zygote(zygote_dir(config)?) {
            return Ok(Err(e));
        }
    }
    Ok(Ok(backend))
}
