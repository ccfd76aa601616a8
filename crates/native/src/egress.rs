//! The egress proxies a backend runs (`docs/egress.md`): one per policy
//! environment with an `egress` table, each listening on
//! `<run dir>/egress-<kiln pid>/<environment>/egress.sock`. A sandbox of
//! that environment sees the directory at `/run/kiln`, and its runner's
//! forwarder offers it on `127.0.0.1:PORT`. The proxies run in one process
//! of their own, forked when the backend starts and killed when it ends.

use crate::sys::{self, CloneArgs, Forked};
use kiln_egress::EgressProxy;
use kiln_policy::Environment;
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Where the forwarder listens in the sandbox's own network namespace.
pub const PORT: u16 = 3128;
/// The proxy's socket as the sandbox sees it.
pub const SOCKET: &str = "/run/kiln/egress.sock";

/// The proxies, bound when the backend starts and served by one process
/// forked then (the supervisor must stay single-threaded to fork
/// sandboxes, so the proxy cannot be a thread of it).
#[derive(Default)]
pub struct Proxies {
    base: Option<PathBuf>,
    proxies: BTreeMap<String, EgressProxy>,
    process: Option<OwnedFd>,
}

impl Proxies {
    /// Binds every environment's socket and forks the proxy process. The
    /// caller must be single-threaded (`NativeBackend::new`).
    /// `uid` is what the proxy process runs as (just below the zygote
    /// template's, so shared with nothing).
    pub fn bind(
        environments: &BTreeMap<String, Environment>,
        run_dir: &Path,
        uid: u32,
    ) -> io::Result<Self> {
        reap_stale(run_dir);
        let mut out = Proxies::default();
        for (name, env) in environments {
            let Some(policy) = &env.egress else { continue };
            let base = match &out.base {
                Some(b) => b.clone(),
                None => {
                    let b = run_dir.join(format!("egress-{}", std::process::id()));
                    std::fs::create_dir_all(&b)?;
                    std::fs::set_permissions(&b, std::fs::Permissions::from_mode(0o755))?;
                    out.base = Some(b.clone());
                    b
                }
            };
            let proxy = EgressProxy::bind(name, policy, &base.join(name))?;
            out.proxies.insert(name.clone(), proxy);
        }
        if !out.proxies.is_empty() {
            out.process = Some(out.fork(uid)?);
        }
        Ok(out)
    }

    fn fork(&mut self, uid: u32) -> io::Result<OwnedFd> {
        let parent = std::process::id();
        let mut pidfd: RawFd = -1;
        let mut args = CloneArgs {
            flags: libc::CLONE_PIDFD as u64,
            pidfd: &mut pidfd as *mut RawFd as u64,
            exit_signal: libc::SIGCHLD as u64,
            ..Default::default()
        };
        // SAFETY: called from NativeBackend::new, while the supervisor is
        // single-threaded (as for every fork kiln makes); `args` points at
        // live memory.
        match unsafe { sys::clone3(&mut args) }? {
            Forked::Child => {
                // Nothing of the supervisor's but stderr (logs), the
                // listeners and the audit files: an inherited pipe end
                // would keep, say, the front end's stdin from closing.
                let mut keep: Vec<RawFd> = self.proxies.values().flat_map(|p| p.fds()).collect();
                keep.push(2);
                sys::close_all_but(&keep);
                if let Err(error) = drop_privileges(uid, parent) {
                    tracing::error!(%error, uid, "the egress proxy cannot drop its privileges");
                    sys::exit_now(1)
                }
                let mut proxies: Vec<EgressProxy> =
                    std::mem::take(&mut self.proxies).into_values().collect();
                let code = match kiln_egress::serve_forever(&mut proxies, parent) {
                    Ok(()) => 0,
                    Err(error) => {
                        tracing::error!(%error, "the egress proxy stopped");
                        1
                    }
                };
                // No destructors: the sockets belong to the supervisor.
                sys::exit_now(code)
            }
            Forked::Parent { pid } => {
                tracing::debug!(pid, "egress proxy process started");
                for proxy in self.proxies.values_mut() {
                    proxy.close_listener();
                }
                Ok(crate::spawn::owned(pidfd))
            }
        }
    }

    /// The directory holding every environment's socket directory.
    pub fn dir(&self) -> Option<&Path> {
        self.base.as_deref()
    }

    /// The environment's name and socket directory for a session that asks
    /// for egress.
    pub fn for_session(&self, name: Option<&str>) -> io::Result<Option<(&str, &Path)>> {
        let Some(name) = name else { return Ok(None) };
        let (name, proxy) = self.proxies.get_key_value(name).ok_or_else(|| {
            io::Error::other(format!(
                "the environment {name:?} has no egress table in this kiln's policy"
            ))
        })?;
        Ok(Some((name.as_str(), proxy.dir())))
    }
}

impl Drop for Proxies {
    fn drop(&mut self) {
        if let Some(pidfd) = self.process.take() {
            let _ = sys::pidfd_send_signal(pidfd.as_raw_fd(), libc::SIGKILL);
            let _ = sys::waitid_pidfd(pidfd.as_raw_fd(), true);
        }
        for proxy in self.proxies.values_mut() {
            proxy.remove();
        }
        if let Some(base) = &self.base {
            let _ = std::fs::remove_dir(base);
        }
    }
}

/// The proxy needs no privilege: its sockets and audit files are open, it
/// only connects out and resolves names. Its own uid, no groups, no
/// capabilities (the uid change from root empties them), not dumpable,
/// `no_new_privs`; then the parent-death signal (a uid change clears it)
/// and a check that the parent did not die before it was set.
fn drop_privileges(uid: u32, parent: u32) -> io::Result<()> {
    sys::setgroups_empty()?;
    sys::setresgid(uid)?;
    sys::setresuid(uid)?;
    sys::prctl(libc::PR_SET_DUMPABLE, 0)?;
    sys::prctl(libc::PR_SET_NO_NEW_PRIVS, 1)?;
    sys::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)?;
    if std::os::unix::process::parent_id() != parent {
        return Err(io::Error::other("the supervisor is gone"));
    }
    Ok(())
}

/// The environment of an egress-enabled runner: where the forwarder
/// listens and connects, and the proxy variables every HTTP client reads.
pub fn sandbox_env() -> Vec<(String, String)> {
    let url = format!("http://127.0.0.1:{PORT}");
    [
        ("KILN_EGRESS_SOCKET", SOCKET.to_string()),
        ("KILN_EGRESS_PORT", PORT.to_string()),
        ("HTTP_PROXY", url.clone()),
        ("HTTPS_PROXY", url.clone()),
        ("http_proxy", url.clone()),
        ("https_proxy", url),
        ("NO_PROXY", String::new()),
        ("no_proxy", String::new()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Socket directories of kiln processes that died.
fn reap_stale(run_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("egress-") && !crate::backend::owner_alive(&name) {
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => {
                    tracing::warn!(dir = %entry.path().display(), "removed egress sockets left behind by a kiln that died")
                }
                Err(error) => {
                    tracing::warn!(dir = %entry.path().display(), %error, "cannot remove stale egress sockets")
                }
            }
        }
    }
}
