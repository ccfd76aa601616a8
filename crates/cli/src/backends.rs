//! Choosing a backend: `--backend`/`--runtime` or `[backends] default`,
//! then the `[backends] fallback` order when it is unavailable; and
//! `kiln image build`.

use anyhow::Result;
use kiln_core::{Backend, BackendError};
use kiln_docker::{DockerBackend, DockerOptions};
use kiln_policy::Config;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

pub type AnyBackend = Arc<dyn Backend + Send + Sync>;

/// The command-line choice of a backend.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BackendArgs {
    /// The sandbox backend: native, docker or podman (default: `[backends]
    /// default` in kiln.toml, else native). If it is unavailable, the
    /// `[backends] fallback` order is tried and the result says which
    /// isolation was given.
    #[arg(long, value_name = "NAME")]
    pub backend: Option<String>,
    /// The OCI runtime of the docker/podman backend: runc, crun or runsc (gVisor).
    #[arg(long, value_name = "RUNTIME")]
    pub runtime: Option<String>,
}

impl BackendArgs {
    /// `native`, `docker`, `docker+runsc`, …
    pub fn name(&self, config: &Config) -> Result<String> {
        let base = self
            .backend
            .clone()
            .unwrap_or_else(|| config.backends.default.clone());
        let name = match (&self.runtime, base.split_once('+')) {
            (Some(_), _) if base == "native" => {
                anyhow::bail!("--runtime applies to the docker and podman backends only")
            }
            (Some(rt), Some((engine, _))) => format!("{engine}+{rt}"),
            (Some(rt), None) => format!("{base}+{rt}"),
            (None, _) => base,
        };
        if !kiln_policy::BACKEND_NAMES.contains(&name.as_str()) {
            anyhow::bail!(
                "unknown backend {name:?}; known: {}",
                kiln_policy::BACKEND_NAMES.join(", ")
            );
        }
        Ok(name)
    }
}

/// Opens the backend `name` (no fallback). The native backend forks from a
/// zygote when `zygote` is set (call while single-threaded).
pub fn open(config: &Config, name: &str, zygote: bool) -> Result<Result<AnyBackend, BackendError>> {
    if name == "native" {
        return Ok(
            crate::config::native_backend(config, zygote)?.map(|b| Arc::new(b) as AnyBackend)
        );
    }
    let (engine, runtime) = match name.split_once('+') {
        Some((e, r)) => (e, Some(r.to_string())),
        None => (name, None),
    };
    let socket = match engine {
        "podman" => Some(config.backends.podman_socket.clone()),
        _ => config.backends.docker_socket.clone(),
    };
    let runtime_spec = crate::config::runtime(config)?;
    let options = DockerOptions {
        socket,
        runtime,
        image: config.backends.image.clone(),
    };
    Ok(DockerBackend::new(config, runtime_spec, options).map(|b| Arc::new(b) as AnyBackend))
}

/// Opens the chosen backend, else the first of the fallback order that is
/// available; says on stderr when it fell back. Returns the last error
/// when none is available.
pub fn open_with_fallback(
    config: &Config,
    args: &BackendArgs,
    zygote: bool,
) -> Result<Result<AnyBackend, BackendError>> {
    let chosen = args.name(config)?;
    let mut tried = vec![chosen.clone()];
    let mut result = open(config, &chosen, zygote)?;
    for next in &config.backends.fallback {
        let Err(e) = &result else { break };
        if tried.contains(next) {
            continue;
        }
        eprintln!(
            "kiln: the {} backend is unavailable ({e}); falling back to {next}",
            tried.last().expect("one")
        );
        tried.push(next.clone());
        result = open(config, next, zygote)?;
    }
    Ok(result)
}

#[derive(clap::Args, Debug)]
pub struct ImageBuildArgs {
    /// The engine's socket (default: `[backends] docker_socket`, DOCKER_HOST, /var/run/docker.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Build for Podman (its socket from `[backends] podman_socket`).
    #[arg(long)]
    pub podman: bool,
    /// Build again even when the image exists.
    #[arg(long)]
    pub force: bool,
}

/// `kiln image build`: kiln's Python image from the runtime tree.
pub fn image_build(config: &Config, args: &ImageBuildArgs) -> Result<ExitCode> {
    let runtime = crate::config::runtime(config)?;
    let configured = if args.podman {
        Some(config.backends.podman_socket.clone())
    } else {
        config.backends.docker_socket.clone()
    };
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| kiln_docker::engine::socket_from_env(configured.as_deref()));
    let engine = kiln_docker::Engine::connect(&socket)?;
    let image = kiln_docker::image::image_name(&runtime.root);
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("importing {image}"));
    let built = kiln_docker::image::build(
        &engine,
        &runtime.root,
        &runtime.runner,
        &image,
        args.force,
        &|sent, total| {
            bar.set_length(total);
            bar.set_position(sent);
        },
    )?;
    bar.finish_and_clear();
    if built {
        println!(
            "built {image} on {} {} from {}",
            engine.kind.name(),
            engine.version,
            runtime.root.display()
        );
    } else {
        println!(
            "{image} is present on {} {} (reused; --force rebuilds it)",
            engine.kind.name(),
            engine.version
        );
    }
    Ok(ExitCode::SUCCESS)
}
