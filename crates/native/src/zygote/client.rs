//! The supervisor's side of the zygote: a [`Spawner`] that asks the
//! template to fork, moves the child into its cgroup, releases it and
//! waits until it reports itself sealed.

use super::template::{self, Started, TemplatePlan, ZYGOTE_DIR};
use super::wire::{self, Reply, Request};
use crate::cgroup::{Cgroup, CgroupManager};
use crate::plan::SandboxPlan;
use crate::spawn::{self, Reaper, RemoteReaper, SpawnError, Spawned, Spawner};
use crate::sys;
use crate::RuntimeSpec;
use kiln_policy::{Limits, SandboxConfig};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a zygote needs to start its template.
#[derive(Debug, Clone)]
pub struct ZygoteConfig {
    pub runtime: RuntimeSpec,
    /// Host directory holding `libkiln_zygote.so` and `kiln_zygote.py`.
    pub zygote_dir: PathBuf,
    pub sandbox: SandboxConfig,
    pub run_dir: PathBuf,
    /// The template's environment (the sandbox environment, no secrets).
    pub env: Vec<(String, String)>,
    /// Start a new template after this many forks (0 = never).
    pub recycle_after: u64,
    /// Every configured dataset, bound into the template (read-only) so its
    /// children can bind the ones their session asks for.
    pub datasets: Vec<(String, PathBuf)>,
    /// The directory of every environment's egress socket directory, bound
    /// into the template at `/kiln-egress` (read-only) when set.
    pub egress_dir: Option<PathBuf>,
    /// The wheelhouse library trees' directory, bound into the template
    /// (read-only) so a child can bind the tree its session asks for.
    pub libraries_dir: PathBuf,
}

/// Forks sandboxes from a warm template interpreter.
#[derive(Debug)]
pub struct ZygoteSpawner {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    config: ZygoteConfig,
    cgroups: CgroupManager,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    template: Option<Template>,
    /// Templates replaced by a recycle, kept until their sandboxes are gone
    /// (a template's death would take its sandboxes with it).
    retired: Vec<Template>,
    /// Set by [`Spawner::shutdown`]: no template is started again.
    stopped: bool,
}

#[derive(Debug)]
struct Template {
    started: Started,
    cgroup: Cgroup,
    /// Host pid → pid in the template's namespace, for each live child.
    children: HashMap<libc::pid_t, i32>,
    forks: u64,
}

impl Drop for Template {
    fn drop(&mut self) {
        let _ = wire::send(self.started.ctrl.as_raw_fd(), &Request::Exit, &[]);
        let _ = sys::pidfd_send_signal(self.started.pidfd.as_raw_fd(), libc::SIGKILL);
        let _ = sys::waitid_pidfd(self.started.pidfd.as_raw_fd(), true);
        let _ = self.cgroup.kill_all();
        let _ = self.cgroup.wait_empty(Duration::from_secs(5));
        let _ = self.cgroup.destroy();
    }
}

impl ZygoteSpawner {
    /// Starts the template now (it takes a second or two to warm up).
    /// The calling process must be single-threaded for this call.
    pub fn start(config: ZygoteConfig) -> io::Result<Self> {
        let cgroups =
            CgroupManager::detect(&config.sandbox).map_err(|e| io::Error::other(e.to_string()))?;
        let shared = Arc::new(Shared {
            config,
            cgroups,
            state: Mutex::new(State::default()),
        });
        {
            let mut state = shared.state.lock().unwrap_or_else(|p| p.into_inner());
            state.template = Some(shared.start_template()?);
        }
        Ok(Self { shared })
    }

    /// The template's host pid (for tests and `kiln bench`).
    pub fn template_pid(&self) -> Option<libc::pid_t> {
        let state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        state.template.as_ref().map(|t| t.started.pid)
    }
}

impl Shared {
    fn start_template(&self) -> io::Result<Template> {
        let c = &self.config;
        let id = format!("zygote-{}-{:08x}", std::process::id(), rand32());
        let limits = Limits {
            memory_mib: 2048,
            pids: 64,
            ..Limits::default()
        };
        let cgroup = self
            .cgroups
            .create(&id, &limits)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let log_path = c.run_dir.join(format!("{id}.log"));
        let log: OwnedFd = std::fs::File::create(&log_path)?.into();
        let mut env = c.env.clone();
        env.push(("KILN_TOP_LEVEL".into(), c.runtime.top_level.join(",")));
        env.push(("KILN_RUNNER".into(), c.runtime.runner.clone()));
        env.push((
            "KILN_ZYGOTE_LIB".into(),
            format!("{ZYGOTE_DIR}/libkiln_zygote.so"),
        ));
        let script = format!("{ZYGOTE_DIR}/kiln_zygote.py");
        let plan = TemplatePlan::new(
            &c.run_dir.join("root"),
            &c.runtime.root,
            &c.runtime.top_level,
            &c.zygote_dir,
            c.sandbox.uid_base - 1,
            c.sandbox.uid_base,
            c.sandbox.uid_count,
            &c.runtime.interpreter,
            vec![
                c.runtime.interpreter.clone(),
                "-I".into(),
                "-B".into(),
                script,
            ],
            env,
            &c.datasets,
            &c.libraries_dir,
        );
        let mut plan = plan;
        if let Some(dir) = &c.egress_dir {
            plan.root.runtime_binds.push((
                crate::plan::cpath(dir),
                crate::plan::cpath(&c.run_dir.join("root").join(&template::EGRESS_DIR[1..])),
            ));
        }
        let started = match template::start(&plan, &log, &|pid| {
            cgroup
                .add_pid(pid as u32)
                .map_err(|e| io::Error::other(e.to_string()))
        }) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_file(&log_path);
                let _ = cgroup.kill_all();
                let _ = cgroup.wait_empty(Duration::from_secs(5));
                let _ = cgroup.destroy();
                return Err(e);
            }
        };
        // The template warms up (imports, one DataFrame, one figure), then says ready.
        let ready = wait_readable(started.ctrl.as_raw_fd(), Duration::from_secs(120))
            .and_then(|_| wire::recv::<Reply>(started.ctrl.as_raw_fd()));
        match ready {
            Ok(Some((
                Reply::Ready {
                    pid,
                    threads: 1,
                    tid_fixed,
                    huge_bytes,
                    arena_bytes,
                },
                _,
            ))) => {
                tracing::debug!(
                    pid,
                    huge_mib = huge_bytes >> 20,
                    arena_mib = arena_bytes >> 20,
                    "zygote template ready (its memory in huge pages: cheaper forks)"
                );
                if !tid_fixed {
                    tracing::warn!("the zygote could not find glibc's cached thread id: raise() and pthread_kill() on the main thread fail in zygote sandboxes");
                }
                let _ = std::fs::remove_file(&log_path);
                Ok(Template {
                    started,
                    cgroup,
                    children: HashMap::new(),
                    forks: 0,
                })
            }
            other => {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                let tail: String = log
                    .lines()
                    .rev()
                    .take(15)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                let _ = std::fs::remove_file(&log_path);
                drop(Template {
                    started,
                    cgroup,
                    children: HashMap::new(),
                    forks: 0,
                });
                Err(io::Error::other(format!(
                    "the zygote template did not become ready ({other:?}); its log:\n{tail}"
                )))
            }
        }
    }

    /// One fork request; on a dead template, one restart and one retry.
    fn fork(
        self: &Arc<Self>,
        plan: &SandboxPlan<'_>,
        join_cgroup: &dyn Fn(libc::pid_t) -> io::Result<()>,
    ) -> Result<Spawned, SpawnError> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.stopped {
            return Err(SpawnError::Step {
                step: "zygote".into(),
                source: io::Error::other("the zygote was shut down"),
            });
        }
        state.retired.retain(|t| !t.children.is_empty());
        let recycle = self.config.recycle_after;
        if let Some(t) = state.template.as_ref() {
            if recycle > 0 && t.forks >= recycle {
                let old = state.template.take().expect("checked");
                state.retired.push(old);
            }
        }
        for attempt in 0..2 {
            if state.template.is_none() {
                state.template = Some(self.start_template().map_err(SpawnError::Channels)?);
            }
            let template = state.template.as_mut().expect("just set");
            match fork_once(template, plan) {
                Ok(forked) => {
                    drop(state);
                    return self.release(forked, join_cgroup);
                }
                Err(ForkError::Refused(e)) => {
                    return Err(SpawnError::Step {
                        step: "zygote".into(),
                        source: e,
                    })
                }
                Err(ForkError::TemplateGone(e)) => {
                    tracing::warn!(error = %e, attempt, "the zygote template is gone; starting a new one");
                    state.template = None;
                    if attempt == 1 {
                        return Err(SpawnError::Clone(e));
                    }
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// Moves the child into its cgroup, lets it go, waits until it is sealed.
    fn release(
        self: &Arc<Self>,
        forked: ForkedChild,
        join_cgroup: &dyn Fn(libc::pid_t) -> io::Result<()>,
    ) -> Result<Spawned, SpawnError> {
        let ForkedChild {
            host_pid,
            pidfd,
            sync_w,
            err_r,
            channel,
            stdout,
            stderr,
        } = forked;
        let kill = |e| {
            let _ = sys::pidfd_send_signal(pidfd.as_raw_fd(), libc::SIGKILL);
            e
        };
        let t0 = Instant::now();
        join_cgroup(host_pid)
            .map_err(SpawnError::Cgroup)
            .map_err(kill)?;
        let t1 = Instant::now();
        sys::write_all(sync_w.as_raw_fd(), b"g")
            .map_err(SpawnError::Channels)
            .map_err(kill)?;
        drop(sync_w);
        if let Some((step, source)) = spawn::read_child_error(err_r)
            .map_err(SpawnError::Channels)
            .map_err(kill)?
        {
            return Err(kill(SpawnError::Step { step, source }));
        }
        tracing::debug!(
            cgroup_us = (t1 - t0).as_micros() as u64,
            contain_us = t1.elapsed().as_micros() as u64,
            "zygote child sealed"
        );
        Ok(Spawned {
            pid: host_pid,
            pidfd,
            channel,
            stdout,
            stderr,
            reaper: Reaper::Remote(Arc::new(ReaperHandle(self.clone()))),
        })
    }
}

struct ForkedChild {
    host_pid: libc::pid_t,
    pidfd: OwnedFd,
    sync_w: OwnedFd,
    err_r: OwnedFd,
    channel: OwnedFd,
    stdout: OwnedFd,
    stderr: OwnedFd,
}

enum ForkError {
    /// The template answered no (e.g. it had a second thread).
    Refused(io::Error),
    /// The control socket failed: the template died.
    TemplateGone(io::Error),
}

fn fork_once(t: &mut Template, plan: &SandboxPlan<'_>) -> Result<ForkedChild, ForkError> {
    let ch = spawn::channels().map_err(ForkError::Refused)?;
    let request = Request::Fork {
        uid: plan.uid,
        limits: plan.limits.clone(),
        env: plan.env.clone(),
        datasets: plan.root.dataset_names.clone(),
        egress: plan.root.egress_name.clone(),
        library_tree: plan.root.library_tree.clone(),
    };
    let child_fds = [
        ch.sync.0.as_raw_fd(),
        ch.error.1.as_raw_fd(),
        ch.channel.1.as_raw_fd(),
        ch.stdout.1.as_raw_fd(),
        ch.stderr.1.as_raw_fd(),
        ch.dev_null.as_raw_fd(),
    ];
    let ctrl = t.started.ctrl.as_raw_fd();
    let sent = Instant::now();
    wire::send(ctrl, &request, &child_fds).map_err(ForkError::TemplateGone)?;
    // Our copies of the child's ends go now: EOF on the error pipe must mean
    // the child (the only writer left) sealed itself or died.
    let spawn::Channels {
        sync,
        error,
        stdout,
        stderr,
        channel,
        dev_null,
    } = ch;
    drop((sync.0, error.1, channel.1, stdout.1, stderr.1, dev_null));
    let (reply, mut fds) = wire::recv::<Reply>(ctrl)
        .map_err(ForkError::TemplateGone)?
        .ok_or_else(|| {
            ForkError::TemplateGone(io::Error::other("template closed its control socket"))
        })?;
    let tns_pid = match reply {
        Reply::Forked { pid } if fds.len() == 1 => pid,
        Reply::Error { message } => return Err(ForkError::Refused(io::Error::other(message))),
        other => {
            return Err(ForkError::TemplateGone(io::Error::other(format!(
                "unexpected reply {other:?}"
            ))))
        }
    };
    tracing::debug!(fork_us = sent.elapsed().as_micros() as u64, "zygote forked");
    let pidfd = fds.pop().expect("checked");
    let host_pid = pid_of_pidfd(pidfd.as_raw_fd()).map_err(ForkError::Refused)?;
    t.children.insert(host_pid, tns_pid);
    t.forks += 1;
    Ok(ForkedChild {
        host_pid,
        pidfd,
        sync_w: sync.1,
        err_r: error.0,
        channel: channel.0,
        stdout: stdout.0,
        stderr: stderr.0,
    })
}

/// The host pid behind a pidfd (`Pid:` in its fdinfo, in our pid namespace).
fn pid_of_pidfd(fd: RawFd) -> io::Result<libc::pid_t> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|p| p.trim().parse().ok())
        .filter(|p: &libc::pid_t| *p > 0)
        .ok_or_else(|| io::Error::other("the forked sandbox is already gone"))
}

fn wait_readable(fd: RawFd, timeout: Duration) -> io::Result<()> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
    match n {
        1 => Ok(()),
        0 => Err(io::Error::new(io::ErrorKind::TimedOut, "timed out")),
        _ => Err(io::Error::last_os_error()),
    }
}

fn rand32() -> u32 {
    let mut buf = [0u8; 4];
    // SAFETY: `buf` is valid for 4 bytes.
    unsafe { libc::getrandom(buf.as_mut_ptr().cast(), 4, 0) };
    u32::from_ne_bytes(buf)
}

#[derive(Debug)]
struct ReaperHandle(Arc<Shared>);

impl RemoteReaper for ReaperHandle {
    fn wait_status(&self, pid: libc::pid_t, block: bool) -> io::Result<Option<libc::c_int>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = self.0.status_once(pid)?;
            if status.is_some() || !block || Instant::now() > deadline {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Shared {
    fn status_once(&self, host_pid: libc::pid_t) -> io::Result<Option<libc::c_int>> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let State {
            template, retired, ..
        } = &mut *state;
        for t in template.iter_mut().chain(retired.iter_mut()) {
            let Some(&tns_pid) = t.children.get(&host_pid) else {
                continue;
            };
            let ctrl = t.started.ctrl.as_raw_fd();
            wire::send(ctrl, &Request::Status { pid: tns_pid }, &[])?;
            return match wire::recv::<Reply>(ctrl)? {
                Some((Reply::Status { status }, _)) => {
                    if status.is_some() {
                        t.children.remove(&host_pid);
                    }
                    Ok(status)
                }
                other => Err(io::Error::other(format!("unexpected reply {other:?}"))),
            };
        }
        // Its template is gone, and the sandbox died with it.
        Ok(Some(libc::SIGKILL))
    }
}

impl Spawner for ZygoteSpawner {
    fn kind(&self) -> &'static str {
        "zygote"
    }

    fn shutdown(&self) {
        let mut state = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        state.stopped = true;
        // Dropping a template stops it and removes its cgroup. That happens
        // under the lock, so a second caller (a signal handler racing the
        // main thread, both on their way out) returns only once it is done.
        state.template = None;
        state.retired.clear();
    }

    fn spawn(
        &self,
        plan: &SandboxPlan<'_>,
        _cgroup_dir: Option<RawFd>,
        join_cgroup: &dyn Fn(libc::pid_t) -> io::Result<()>,
    ) -> Result<Spawned, SpawnError> {
        // The template cannot write into host cgroups: the supervisor always
        // moves the child (v1 and v2 alike) while it waits.
        self.shared.fork(plan, join_cgroup)
    }
}
