//! `kiln-nozygote` runs in a helper process (`kiln bench --worker`): a
//! fresh-process sandbox is a `clone3` from the supervisor, which must be
//! single-threaded, and the bench process is not (the pool refills in a
//! thread). The helper is single-threaded; it times each sandbox itself
//! and answers one JSON line per command on stdout:
//!
//! - `run w1|w2`: create a session, execute, close;
//! - `loop w1|w2 SECONDS`: the same, repeatedly, until the time is up;
//! - `mem`: create a session, sample its memory idle, close.

use super::{memory, workloads};
use anyhow::{bail, Context, Result};
use kiln_core::{Backend, ExecRequest, Outcome, SessionOptions};
use kiln_policy::Config;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The phases of one sandbox, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Timing {
    /// `create_session`: uid lease, cgroup, spawn, containment, runner ready.
    pub create_ms: f64,
    /// The execution (request sent until result collected).
    pub exec_ms: f64,
    /// `close`: runner asked to exit, killed if needed, cgroup removed.
    pub close_ms: f64,
}

impl Timing {
    pub fn total_ms(&self) -> f64 {
        self.create_ms + self.exec_ms + self.close_ms
    }
    /// Until the result is in hand (teardown after it is not waited for).
    pub fn result_ms(&self) -> f64 {
        self.create_ms + self.exec_ms
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Run { timing: Timing },
    Loop { count: u64, elapsed_s: f64 },
    Mem { sample: memory::Sample },
    Error { error: String },
}

pub fn request(w2: bool) -> ExecRequest {
    ExecRequest {
        code: if w2 { workloads::W2 } else { workloads::W1 }.to_string(),
        files: Vec::new(),
    }
}

/// One sandbox through `backend`, timed phase by phase.
pub fn one_sandbox(
    backend: &dyn Backend,
    options: &SessionOptions,
    w2: bool,
) -> Result<Timing, String> {
    let t0 = Instant::now();
    let mut session = backend.create_session(options).map_err(|e| e.to_string())?;
    let t1 = Instant::now();
    let result = session.execute(&request(w2), &mut |_| {});
    let t2 = Instant::now();
    session.close();
    let t3 = Instant::now();
    check(&result, w2)?;
    Ok(Timing {
        create_ms: ms(t1 - t0),
        exec_ms: ms(t2 - t1),
        close_ms: ms(t3 - t2),
    })
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// An execution that did not do what the workload does is an error.
pub fn check(result: &kiln_core::ExecutionResult, w2: bool) -> Result<(), String> {
    if result.outcome != Outcome::Ok {
        return Err(format!(
            "outcome {}: {}",
            result.outcome.as_str(),
            result.reason.clone().unwrap_or_default()
        ));
    }
    if w2 {
        let shown = result.events.iter().any(
            |e| matches!(e, kiln_core::Event::Display { data } if data.contains_key("image/png")),
        );
        if !shown {
            return Err("W2 showed no PNG".into());
        }
    }
    Ok(())
}

/// The helper's main loop (`kiln bench --worker`).
pub fn serve(config: &Config, options: &SessionOptions) -> Result<ExitCode> {
    let backend = match crate::config::native_backend(config, false)? {
        Ok(b) => b,
        Err(e) => bail!("{e}"),
    };
    let cgroups = memory::Cgroups::detect(config)?;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["run", w] => match one_sandbox(&backend, options, *w == "w2") {
                Ok(timing) => Reply::Run { timing },
                Err(error) => Reply::Error { error },
            },
            ["loop", w, secs] => {
                let secs: f64 = secs.parse().unwrap_or(1.0);
                let start = Instant::now();
                let deadline = start + Duration::from_secs_f64(secs);
                let mut count = 0;
                let mut failed = None;
                while Instant::now() < deadline {
                    match one_sandbox(&backend, options, *w == "w2") {
                        Ok(_) => count += 1,
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                match failed {
                    Some(error) => Reply::Error { error },
                    None => Reply::Loop {
                        count,
                        elapsed_s: start.elapsed().as_secs_f64(),
                    },
                }
            }
            ["mem"] => match backend.create_session(options) {
                Ok(session) => {
                    std::thread::sleep(Duration::from_millis(100));
                    let sample = cgroups.sample(session.id());
                    session.close();
                    match sample {
                        Ok(sample) => Reply::Mem { sample },
                        Err(e) => Reply::Error {
                            error: format!("{e:#}"),
                        },
                    }
                }
                Err(e) => Reply::Error {
                    error: e.to_string(),
                },
            },
            ["quit"] | [] => break,
            _ => Reply::Error {
                error: format!("unknown command {line:?}"),
            },
        };
        writeln!(out, "{}", serde_json::to_string(&reply)?)?;
        out.flush()?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The bench's handle on one helper process.
pub struct Worker {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Worker {
    pub fn start(config_path: Option<&Path>) -> Result<Self> {
        let exe = std::env::current_exe().context("cannot find the kiln executable")?;
        let mut cmd = Command::new(exe);
        if let Some(p) = config_path {
            cmd.arg("--config").arg(p);
        }
        let mut child = cmd
            .args(["bench", "--worker"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the kiln-nozygote helper")?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    /// Sends a command without waiting for the reply.
    pub fn send(&mut self, command: &str) -> Result<()> {
        writeln!(self.stdin, "{command}")?;
        self.stdin.flush()?;
        Ok(())
    }

    pub fn receive(&mut self) -> Result<Reply> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("the kiln-nozygote helper exited");
        }
        serde_json::from_str(&line).with_context(|| format!("helper answered {line:?}"))
    }

    pub fn ask(&mut self, command: &str) -> Result<Reply> {
        self.send(command)?;
        self.receive()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.stdin.flush();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
