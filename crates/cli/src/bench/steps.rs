//! The per-step cost of creating a sandbox: the supervisor-visible phases of
//! every kiln sandbox measured in the latency runs (create / execute /
//! close), each containment step inside a fork of the zygote (as the child
//! reports it in its `ready` frame), the cgroup made and removed on its own,
//! and the kernel's price of each namespace (`unshare(1)` with one more
//! namespace at a time; each step's cost is the difference of medians).

use super::stats::median;
use kiln_core::{Backend, SessionOptions};
use kiln_native::cgroup::CgroupManager;
use kiln_policy::{Config, Limits};
use serde::Serialize;
use std::process::{Command, Stdio};
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub step: String,
    pub p50_ms: f64,
    pub covers: String,
}

pub fn step(name: &str, ms: f64, covers: &str) -> Step {
    Step {
        step: name.into(),
        p50_ms: (ms * 1000.0).round() / 1000.0,
        covers: covers.into(),
    }
}

/// What each step a fork reports covers: `fork`, every containment step a
/// fork marks (`kiln_native::CONTAINMENT_STEPS`, all but `execve`) and
/// `runner` (a test keeps the lists in step).
const IN_FORK: [(&str, &str); 15] = [
    ("fork", "the template's clone3 (its address space copied, the namespaces made) until the child runs"),
    (
        "wait-for-parent",
        "from the fork until the supervisor wrote the id maps and moved the child into its cgroup",
    ),
    ("signals", "default dispositions, empty mask"),
    ("cgroup-namespace", "unshare(CLONE_NEWCGROUP)"),
    ("hostname", "sethostname"),
    ("loopback", "lo up (egress environments only)"),
    (
        "sandbox-ids",
        "setgroups, setresgid, setresuid to the sandbox's uid",
    ),
    ("make-private", "the inherited mount tree made private"),
    (
        "build-root",
        "mounts: tmpfs root, the runtime bound read-only, /work, /tmp, /proc, /dev, pivot_root",
    ),
    (
        "drop-privileges",
        "every capability set emptied, securebits locked",
    ),
    ("harden", "no_new_privs, not dumpable, rlimits"),
    ("fds", "fds 0-4 arranged, every other closed"),
    ("landlock", "the Landlock ruleset built and enforced"),
    (
        "seccomp",
        "the seccomp program loaded (the policy's filters merged into one; the kernel checks, compiles and caches it)",
    ),
    (
        "runner",
        "Python: after-fork hooks, the sandbox's environment, reseeding, the runner until `ready`",
    ),
];

/// Each step of a zygote fork's start, as the fork itself timed it: `n`
/// sandboxes made and closed one after another. Empty when the backend
/// does not report steps (a fresh process per sandbox).
pub fn in_fork(
    backend: &dyn Backend,
    options: &SessionOptions,
    n: usize,
) -> Result<Vec<Step>, String> {
    let mut samples: Vec<(String, Vec<f64>)> = Vec::new();
    for _ in 0..n {
        let session = backend.create_session(options).map_err(|e| e.to_string())?;
        for (name, took) in session.startup_steps() {
            let ms = took.as_secs_f64() * 1e3;
            match samples.iter_mut().find(|(n, _)| *n == name) {
                Some((_, v)) => v.push(ms),
                None => samples.push((name, vec![ms])),
            }
        }
        session.close();
    }
    Ok(samples
        .iter()
        .map(|(name, v)| {
            let covers = IN_FORK
                .iter()
                .find(|(n, _)| n == name)
                .map_or("", |(_, c)| c);
            step(&format!("in the fork: {name}"), median(v), covers)
        })
        .collect())
}

/// Creating (limits written) and removing a sandbox cgroup on its own.
pub fn cgroup(config: &Config, limits: &Limits, n: usize) -> Result<Vec<Step>, String> {
    let manager = CgroupManager::detect(&config.sandbox).map_err(|e| e.to_string())?;
    let (mut create, mut destroy) = (Vec::new(), Vec::new());
    for i in 0..n {
        let id = format!("kbench-{}-{i}", std::process::id());
        let t0 = Instant::now();
        let cg = manager.create(&id, limits).map_err(|e| e.to_string())?;
        let t1 = Instant::now();
        cg.destroy().map_err(|e| e.to_string())?;
        let t2 = Instant::now();
        create.push((t1 - t0).as_secs_f64() * 1e3);
        destroy.push((t2 - t1).as_secs_f64() * 1e3);
    }
    let what = match manager.version() {
        kiln_native::cgroup::Version::V1 => {
            "v1: a directory in each controller, memory/swap/pids/cpu limits written"
        }
        kiln_native::cgroup::Version::V2 => {
            "v2: one directory, memory/swap/pids/cpu limits written"
        }
    };
    Ok(vec![
        step("cgroup create", median(&create), what),
        step(
            "cgroup remove",
            median(&destroy),
            "rmdir of the (empty) cgroup",
        ),
    ])
}

const NAMESPACE_STEPS: [(&str, &[&str]); 6] = [
    ("fork + exec (no namespace)", &[]),
    ("+ user namespace", &["--user"]),
    ("+ mount namespace", &["--user", "--mount"]),
    ("+ pid namespace", &["--user", "--mount", "--pid", "--fork"]),
    (
        "+ net namespace",
        &["--user", "--mount", "--pid", "--fork", "--net"],
    ),
    (
        "+ ipc + uts namespaces",
        &[
            "--user", "--mount", "--pid", "--fork", "--net", "--ipc", "--uts",
        ],
    ),
];

/// The kernel's cost of each namespace kiln makes, via `unshare(1)`.
pub fn namespaces(n: usize) -> Result<Vec<Step>, String> {
    let mut samples = vec![Vec::new(); NAMESPACE_STEPS.len()];
    for i in 0..n + 1 {
        for (k, (_, flags)) in NAMESPACE_STEPS.iter().enumerate() {
            let t = Instant::now();
            let status = Command::new("unshare")
                .args(*flags)
                .arg("true")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map_err(|e| format!("cannot run unshare: {e}"))?;
            if !status.success() {
                return Err(format!("unshare {} true failed", flags.join(" ")));
            }
            if i > 0 {
                samples[k].push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    let medians: Vec<f64> = samples.iter().map(|s| median(s)).collect();
    Ok(NAMESPACE_STEPS
        .iter()
        .enumerate()
        .map(|(k, (name, _))| {
            if k == 0 {
                step(name, medians[0], "`unshare true`: fork + execve of a small program, the floor of any new process")
            } else {
                let d = medians[k] - medians[k - 1];
                let covers = if d < 0.05 {
                    "kernel cost of this namespace: median of `unshare` with it minus without it (below the noise of this method)"
                } else {
                    "kernel cost of this namespace: median of `unshare` with it minus without it"
                };
                step(name, d, covers)
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::IN_FORK;

    #[test]
    fn every_step_a_fork_reports_is_described_once() {
        let mut expected = vec!["fork"];
        expected.extend(
            kiln_native::CONTAINMENT_STEPS
                .into_iter()
                .filter(|s| *s != "execve"),
        );
        expected.push("runner");
        let described: Vec<&str> = IN_FORK.iter().map(|(n, _)| *n).collect();
        assert_eq!(described, expected);
        assert!(IN_FORK.iter().all(|(_, covers)| !covers.is_empty()));
    }
}
