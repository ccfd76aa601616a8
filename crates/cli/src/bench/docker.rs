//! The `docker-run` baseline: `docker run` with the flags of kiln's brief,
//! on a local image made from kiln's own runtime tree (the same interpreter
//! and pinned libraries). A baseline, not a backend: it shells out.

use super::workloads;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The brief's flags, plus a tmpfs on /tmp: with a read-only root and no
/// writable directory, matplotlib refuses to import.
pub const FLAGS: &[&str] = &[
    "--rm",
    "--network",
    "none",
    "--memory",
    "256m",
    "--pids-limit",
    "128",
    "--read-only",
    "--cap-drop",
    "ALL",
    "--tmpfs",
    "/tmp",
];

pub struct Docker {
    pub image: String,
    pub engine_version: String,
    /// Whether this run built the image (`docker import`).
    pub imported: bool,
    env: Vec<(String, String)>,
    interpreter: String,
    site: String,
    mpl_cache: String,
}

/// Runs `cmd` up to `timeout`; its stdout if it exited 0.
fn output_within(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("no answer within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The engine's version, or why it cannot be reached.
pub fn engine() -> Result<String, String> {
    if std::env::var_os("DOCKER_HOST").is_none() && !Path::new("/var/run/docker.sock").exists() {
        return Err("no Docker engine: /var/run/docker.sock does not exist".into());
    }
    output_within(
        Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]),
        Duration::from_secs(10),
    )
    .map_err(|e| format!("no Docker engine answers on /var/run/docker.sock ({e:#})"))
}

impl Docker {
    /// Finds or builds `kiln-bench-python:<hash of the runtime manifest>`.
    pub fn prepare(
        engine_version: String,
        runtime: &kiln_native::RuntimeSpec,
        manifest_hash: &str,
    ) -> Result<Self> {
        let image = format!("kiln-bench-python:{manifest_hash}");
        let exists = Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Id}}", &image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("cannot run docker")?
            .success();
        if !exists {
            eprintln!(
                "kiln bench: building the docker image {image} from {} (once)",
                runtime.root.display()
            );
            let mut tar = Command::new("tar")
                .arg("-C")
                .arg(&runtime.root)
                .args(["-c", "."])
                .stdout(Stdio::piped())
                .spawn()
                .context("cannot run tar")?;
            let tar_out = tar.stdout.take().expect("piped");
            let import = Command::new("docker")
                .args(["import", "-", &image])
                .stdin(Stdio::from(tar_out))
                .stdout(Stdio::null())
                .output()
                .context("cannot run docker import")?;
            let tar_status = tar.wait()?;
            if !import.status.success() || !tar_status.success() {
                bail!(
                    "docker import failed: {}",
                    String::from_utf8_lossy(&import.stderr).trim()
                );
            }
        }
        Ok(Self {
            image,
            engine_version,
            imported: !exists,
            env: runtime.env.clone(),
            interpreter: runtime.interpreter.clone(),
            site: runtime.site_packages.clone(),
            mpl_cache: runtime.mpl_cache.clone(),
        })
    }

    /// The full command line for one workload (`w2`: W2, else W1).
    pub fn command(&self, w2: bool) -> Command {
        let code = if w2 {
            workloads::prelude(&self.site, &self.mpl_cache, true) + workloads::W2_PLAIN
        } else {
            workloads::prelude(&self.site, &self.mpl_cache, false) + workloads::W1
        };
        let mut cmd = Command::new("docker");
        cmd.arg("run").args(FLAGS);
        for (k, v) in &self.env {
            cmd.arg("-e").arg(format!("{k}={v}"));
        }
        cmd.arg(&self.image)
            .arg(&self.interpreter)
            .args(["-I", "-c"])
            .arg(code)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// The command as a reader would type it (for the report).
    pub fn shown_command(&self) -> String {
        let mut s = String::from("docker run");
        for f in FLAGS {
            s.push(' ');
            s.push_str(f);
        }
        for (k, v) in &self.env {
            s.push_str(&format!(" -e {k}={v}"));
        }
        s.push_str(&format!(
            " {} {} -I -c \"<prelude>; <code>\"",
            self.image, self.interpreter
        ));
        s
    }
}

/// Runs a prepared command once; its wall time in ms, or why it failed.
pub fn time_command(mut cmd: Command, expect: &str) -> Result<f64, String> {
    let t = Instant::now();
    let out = cmd.output().map_err(|e| e.to_string())?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !stdout.contains(expect) {
        return Err(format!(
            "exit {:?}; stderr: {}",
            out.status.code(),
            tail(&String::from_utf8_lossy(&out.stderr))
        ));
    }
    Ok(ms)
}

fn tail(s: &str) -> String {
    let s = s.trim();
    let start = s.len().saturating_sub(400);
    let start = (start..=s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    s[start..].to_string()
}
