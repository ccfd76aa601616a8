//! `kiln doctor`.

use anyhow::Result;
use kiln_native::doctor::{native_checks, Check};
use kiln_policy::Config;
use std::path::Path;
use std::process::ExitCode;

pub fn doctor(config: &Config, json: bool) -> Result<ExitCode> {
    let mut checks = native_checks(&config.sandbox);
    checks.push(runtime_check(config));
    checks.push(docker_socket());
    checks.extend(container_checks(config));
    checks.push(on_path(
        "gVisor (runsc)",
        "runsc",
        "install gVisor: `apt-get install runsc` (used by the docker backend)",
    ));
    if json {
        println!("{}", serde_json::to_string_pretty(&checks)?);
    } else {
        for c in &checks {
            let mark = if c.ok { "ok  " } else { "MISS" };
            println!("{mark} {:<20} {}", c.name, c.detail);
            if let Some(fix) = &c.fix {
                println!("     {:<20} fix: {fix}", "");
            }
        }
    }
    let essential = [
        "kernel",
        "running as root",
        "user namespaces",
        "cgroups",
        "seccomp",
    ];
    let ready = checks
        .iter()
        .filter(|c| essential.contains(&c.name))
        .all(|c| c.ok);
    Ok(if ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn runtime_check(config: &Config) -> Check {
    let dir = config
        .runtime
        .data_dir
        .clone()
        .unwrap_or_else(kiln_env::default_data_dir);
    match kiln_env::locate(&dir) {
        Ok(rt) => Check {
            name: "python runtime",
            ok: true,
            detail: format!(
                "{} (Python {})",
                rt.root.display(),
                rt.manifest.python_version
            ),
            fix: None,
        },
        Err(e) => Check {
            name: "python runtime",
            ok: false,
            detail: e.to_string(),
            fix: Some("run `kiln env setup`".into()),
        },
    }
}

fn docker_socket() -> Check {
    let path = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
        .unwrap_or_else(|| "/var/run/docker.sock".into());
    let ok = std::os::unix::net::UnixStream::connect(&path).is_ok();
    Check {
        name: "docker socket",
        ok,
        detail: if ok { format!("{path} answers") } else { format!("{path} does not answer") },
        fix: (!ok).then(|| "start the engine (`dockerd &` or `systemctl start docker`); only the docker backend needs it".into()),
    }
}

/// Each container backend, tried for real: connect, check the runtime and
/// the image, run `print(1)` in a container.
fn container_checks(config: &Config) -> Vec<Check> {
    const BACKENDS: [&str; 4] = ["docker+runc", "docker+crun", "docker+runsc", "podman"];
    BACKENDS
        .into_iter()
        .map(|name| {
            let (ok, detail, fix) = match crate::backends::open(config, name, false) {
                Ok(Ok(backend)) => {
                    let request = kiln_core::ExecRequest {
                        code: "print(1)".into(),
                        files: vec![],
                    };
                    match backend.execute(&request, &config.limits) {
                        Ok(r) if r.outcome == kiln_core::Outcome::Ok => (
                            true,
                            format!("runs sandboxes ({})", r.isolation.backend),
                            None,
                        ),
                        Ok(r) => (
                            false,
                            format!(
                                "a test sandbox ended `{}`: {}",
                                r.outcome.as_str(),
                                r.reason.unwrap_or_default()
                            ),
                            Some("see docs/docker.md".to_string()),
                        ),
                        Err(e) => split_hint(&e.to_string()),
                    }
                }
                Ok(Err(e)) => split_hint(&e.to_string()),
                Err(e) => (false, format!("{e:#}"), Some("run `kiln env setup`".into())),
            };
            Check {
                name,
                ok,
                detail,
                fix,
            }
        })
        .collect()
}

/// `why. Hint: fix` → (false, why, fix).
fn split_hint(text: &str) -> (bool, String, Option<String>) {
    match text.split_once(". Hint: ") {
        Some((why, fix)) => (false, why.to_string(), Some(fix.to_string())),
        None => (false, text.to_string(), None),
    }
}

fn on_path(name: &'static str, bin: &str, fix: &str) -> Check {
    let found = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|p| Path::new(p).exists())
    });
    Check {
        name,
        ok: found.is_some(),
        fix: found.is_none().then(|| fix.to_string()),
        detail: found
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "not found".into()),
    }
}
