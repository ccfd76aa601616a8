//! The `python3` baseline (the runtime's own interpreter, no isolation at
//! all, a fresh process per request) and the `warm-python3` reference (one
//! persistent interpreter that already imported the libraries).

use super::workloads;
use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

/// How the interpreter of the runtime tree is started outside a sandbox.
#[derive(Clone)]
pub struct Plain {
    root: PathBuf,
    /// `chroot <tree>` (the tree's own loader and libraries) instead of the
    /// interpreter run directly from the host.
    chroot: bool,
    interpreter: String,
    site: String,
    mpl_cache: String,
    env: Vec<(String, String)>,
    /// A writable matplotlib config dir (host path; `/tmp/...` inside a chroot
    /// would be the tree's, which is not writable).
    mpl_dir: PathBuf,
    /// What the report says about how it runs.
    pub how: String,
}

impl Plain {
    /// Runs the interpreter straight from the host when it can import the
    /// libraries that way; otherwise through `chroot <tree>`.
    pub fn detect(runtime: &kiln_native::RuntimeSpec, scratch: &std::path::Path) -> Result<Self> {
        let mpl_dir = scratch.join("mpl");
        std::fs::create_dir_all(&mpl_dir)?;
        let host = |p: &str| runtime.root.join(p.trim_start_matches('/'));
        let mut plain = Self {
            root: runtime.root.clone(),
            chroot: false,
            interpreter: host(&runtime.interpreter).to_string_lossy().into_owned(),
            site: host(&runtime.site_packages).to_string_lossy().into_owned(),
            mpl_cache: host(&runtime.mpl_cache).to_string_lossy().into_owned(),
            env: runtime.env.clone(),
            mpl_dir,
            how: String::new(),
        };
        let probe = format!(
            "{}import pandas, matplotlib.pyplot\nprint('ok')",
            workloads::prelude(&plain.site, &plain.mpl_cache, true)
        );
        let direct = plain.command(&probe).output();
        if matches!(&direct, Ok(o) if o.status.success()) {
            let libpython = Command::new("ldd")
                .arg(&plain.interpreter)
                .output()
                .ok()
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .find(|l| l.contains("libpython"))
                        .map(|l| l.trim().to_string())
                })
                .unwrap_or_else(|| "statically linked libpython".into());
            plain.how = format!(
                "run directly on the host: `{} -I -c <prelude; code>` (loader resolves {libpython})",
                plain.interpreter
            );
            return Ok(plain);
        }
        plain.chroot = true;
        plain.interpreter = runtime.interpreter.clone();
        plain.site = runtime.site_packages.clone();
        plain.mpl_cache = runtime.mpl_cache.clone();
        let probe = format!(
            "{}import pandas, matplotlib.pyplot\nprint('ok')",
            workloads::prelude(&plain.site, &plain.mpl_cache, true)
        );
        let out = plain.command(&probe).output()?;
        if !out.status.success() {
            bail!(
                "the runtime's python3 runs neither on the host nor in a chroot: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        plain.how = format!(
            "run through `chroot {} {} -I -c <prelude; code>` (directly on the host it cannot import the libraries)",
            plain.root.display(),
            plain.interpreter
        );
        Ok(plain)
    }

    fn base(&self) -> Command {
        let mut cmd = if self.chroot {
            let mut c = Command::new("chroot");
            c.arg(&self.root).arg(&self.interpreter);
            c
        } else {
            Command::new(&self.interpreter)
        };
        cmd.arg("-I").env_clear();
        cmd.env("PATH", "/usr/local/bin:/usr/bin:/bin");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if !self.chroot {
            cmd.env("MPLCONFIGDIR", &self.mpl_dir);
        }
        cmd
    }

    fn command(&self, code: &str) -> Command {
        let mut cmd = self.base();
        cmd.arg("-c")
            .arg(code)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// A fresh process for one workload.
    pub fn workload(&self, w2: bool) -> Command {
        let code = if w2 {
            workloads::prelude(&self.site, &self.mpl_cache, true) + workloads::W2_PLAIN
        } else {
            workloads::prelude(&self.site, &self.mpl_cache, false) + workloads::W1
        };
        self.command(&code)
    }

    /// Starts the persistent interpreter and waits until it is warm.
    pub fn warm(&self) -> Result<Warm> {
        let code = workloads::prelude(&self.site, &self.mpl_cache, true) + workloads::WARM_DRIVER;
        let mut cmd = self.base();
        let mut child = cmd
            .arg("-c")
            .arg(code)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the warm interpreter")?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut warm = Warm {
            child,
            stdin,
            stdout,
        };
        let ready = warm.read_line()?;
        if !ready.contains("ready") {
            bail!("the warm interpreter did not start: {ready}");
        }
        Ok(warm)
    }
}

/// One persistent plain interpreter.
pub struct Warm {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// One execution in the warm interpreter.
pub struct WarmTiming {
    /// Round trip seen from here (write the code, read the answer).
    pub total_ms: f64,
    /// The code itself, timed inside the interpreter.
    pub work_ms: f64,
}

impl Warm {
    fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the warm interpreter exited");
        }
        Ok(line)
    }

    pub fn run(&mut self, code: &str) -> Result<WarmTiming> {
        let t = Instant::now();
        writeln!(self.stdin, "{}", serde_json::to_string(code)?)?;
        self.stdin.flush()?;
        let line = self.read_line()?;
        let total_ms = t.elapsed().as_secs_f64() * 1e3;
        let v: serde_json::Value = serde_json::from_str(&line)
            .with_context(|| format!("warm interpreter answered {line:?}"))?;
        let work_ms = v["work_ms"]
            .as_f64()
            .with_context(|| format!("warm interpreter answered {line:?}"))?;
        Ok(WarmTiming { total_ms, work_ms })
    }
}

impl Drop for Warm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
