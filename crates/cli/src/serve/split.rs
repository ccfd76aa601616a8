//! The privilege split: as root, the network-facing front end is a
//! separate process running as `[server] frontend_user`.
//!
//! The supervisor (root) binds the TCP listener, then starts
//! `/proc/self/exe serve --frontend` while it still has one thread: std's
//! spawn drops the supplementary groups, sets the gid and the uid (real,
//! effective and saved) in the child before `execve`, with an empty
//! environment and `/` as working directory. The child's fds are:
//!
//! - stdin: a pipe from the supervisor — one JSON line ([`Handoff`]: the
//!   policy, the socket path, dev mode), then end of file when the front
//!   end should shut down;
//! - stdout: the listening TCP socket (taken back as a `TcpListener`, then
//!   fd 1 points at `/dev/null`);
//! - stderr: the supervisor's, for logs.
//!
//! The first thing the front end does is set `no_new_privs` and check it
//! holds no root uid and no capability.

use anyhow::{bail, Context, Result};
use kiln_policy::Config;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::net::TcpListener;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Stdio};

/// What the supervisor hands the front end on its stdin.
#[derive(Serialize, Deserialize)]
struct Handoff {
    config: Config,
    socket: PathBuf,
    dev: bool,
}

/// A user's uid and primary gid, from `/etc/passwd` (or `UID` / `UID:GID`).
pub fn lookup_user(name: &str) -> Result<(u32, u32)> {
    let ids = if let Some((u, g)) = name.split_once(':') {
        u.parse().ok().zip(g.parse().ok())
    } else if let Ok(uid) = name.parse::<u32>() {
        Some((uid, uid))
    } else {
        let passwd = std::fs::read_to_string("/etc/passwd").context("cannot read /etc/passwd")?;
        passwd.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() >= 4 && f[0] == name)
                .then(|| f[2].parse().ok().zip(f[3].parse().ok()))
                .flatten()
        })
    };
    let Some((uid, gid)) = ids else {
        bail!("no user `{name}` for the front end. Hint: create it (useradd --system kiln-http) or set [server] frontend_user");
    };
    if uid == 0 || gid == 0 {
        bail!("[server] frontend_user `{name}` is root; the front end must run unprivileged");
    }
    Ok((uid, gid))
}

/// Starts the front end as `user`. Call while the process has one thread.
pub fn spawn(
    config: &Config,
    listener: TcpListener,
    socket: PathBuf,
    dev: bool,
    (uid, gid): (u32, u32),
) -> Result<(Child, ChildStdin)> {
    let mut cmd = std::process::Command::new("/proc/self/exe");
    cmd.args(["serve", "--frontend"])
        .env_clear()
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::from(OwnedFd::from(listener)))
        .stderr(Stdio::inherit())
        .uid(uid)
        .gid(gid);
    for var in ["KILN_LOG"] {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
    let mut child = cmd.spawn().context("cannot start the front end")?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let handoff = Handoff {
        config: config.clone(),
        socket,
        dev,
    };
    let mut line = serde_json::to_vec(&handoff)?;
    line.push(b'\n');
    stdin
        .write_all(&line)
        .context("cannot hand the policy to the front end")?;
    Ok((child, stdin))
}

/// `kiln serve --frontend`: the unprivileged process.
pub fn frontend_main() -> Result<std::process::ExitCode> {
    kiln_native::sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1).context("cannot set no_new_privs")?;
    refuse_privilege()?;
    // Signals are the supervisor's business: it ends this process by
    // closing its stdin once it decided to shut down.
    kiln_native::signals::watch(|_| {})?;
    let listener = take_listener()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let handoff: Handoff =
        serde_json::from_str(&line).context("the supervisor's handoff is malformed")?;
    kiln_server::init_logging(handoff.config.server.json_logs);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("kiln-supervisor-watch".into())
        .spawn(move || {
            // End of file: the supervisor is shutting down (or died).
            let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
            let _ = tx.send(());
        })?;
    super::run_frontend(handoff.config, listener, handoff.socket, handoff.dev, rx)?;
    Ok(std::process::ExitCode::SUCCESS)
}

/// The listener the supervisor left on fd 1; fd 1 becomes `/dev/null`.
fn take_listener() -> Result<TcpListener> {
    let fd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .context("no listener on fd 1")?;
    let listener = TcpListener::from(fd);
    listener
        .local_addr()
        .context("fd 1 is not a listening TCP socket; `kiln serve --frontend` is started by `kiln serve` only")?;
    let null = std::fs::File::options().write(true).open("/dev/null")?;
    kiln_native::sys::dup2(null.as_raw_fd(), 1)?;
    Ok(listener)
}

/// The front end runs with no root id and no capability, or not at all.
fn refuse_privilege() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    for line in status.lines() {
        let mut fields = line.split_whitespace();
        let privileged = match fields.next() {
            Some("Uid:" | "Gid:") => fields.any(|id| id == "0"),
            Some("CapEff:" | "CapPrm:") => {
                fields.any(|caps| !caps.trim_start_matches('0').is_empty())
            }
            _ => false,
        };
        if privileged {
            bail!("the front end still holds privilege ({line}); refusing to serve");
        }
    }
    Ok(())
}
