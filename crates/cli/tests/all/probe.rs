//! The in-sandbox probe: what the sandbox enforces, checked from inside.

use crate::support::*;
use serde_json::Value;

const PROBE: &str = include_str!("probe.py");

fn probe_with_result(spawner: &[&str]) -> (Value, Value) {
    let v = run_with(PROBE, spawner, &[("KILN_TEST_SECRET", "hunter2")]).0;
    expect_outcome(&v, "ok");
    (
        serde_json::from_str(stdout(&v).trim()).expect("probe prints JSON"),
        v,
    )
}

/// Each probe check runs, unchanged, in a fresh-process sandbox and in a
/// fork of the zygote template.
macro_rules! on_both_spawners {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            #[test]
            fn fresh() {
                super::$check(super::probe_with_result(&[]))
            }
            #[test]
            fn zygote() {
                super::$check(super::probe_with_result(&["--zygote"]))
            }
        }
    )*};
}

on_both_spawners!(
    probe_finds_every_promised_restriction,
    probe_sees_a_read_only_minimal_filesystem,
    probe_sees_no_secrets_and_no_stray_fds,
    probe_sees_its_limits,
);

fn probe_finds_every_promised_restriction((p, _result): (Value, Value)) {
    // A distinct unprivileged uid, no supplementary groups.
    let uid = p["uid"].as_u64().unwrap() as u32;
    assert_ne!(uid, 0);
    assert!(
        (UID_BASE..UID_BASE + UID_COUNT).contains(&uid),
        "uid {uid} outside the reserved range"
    );
    assert_eq!(p["euid"], p["uid"]);
    assert_eq!(
        p["groups"].as_array().unwrap().len(),
        0,
        "groups: {}",
        p["groups"]
    );
    // No capabilities at all, and none to regain.
    for set in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"] {
        assert_eq!(p[set], "0000000000000000", "{set}");
    }
    assert_eq!(p["NoNewPrivs"], "1");
    assert_eq!(p["Seccomp"], "2");
    // PID 1 of its own pid namespace is the runner; the probe is in it.
    assert_eq!(p["pid"], 1);
    // Only loopback in the network namespace.
    assert_eq!(p["interfaces"], serde_json::json!(["lo"]));
    assert_eq!(p["hostname"], "kiln");
}

fn probe_sees_a_read_only_minimal_filesystem((p, result): (Value, Value)) {
    assert_eq!(p["root_writable"], false);
    assert_eq!(p["usr_writable"], false);
    assert_eq!(p["work_writable"], true);
    // Landlock is active: the root directory is not listable although its
    // mode would allow it (only Landlock says no).
    if !result["isolation"]["landlock_abi"].is_null() {
        assert_eq!(
            p["root_listing"], "EACCES",
            "Landlock should deny listing /"
        );
    }
    assert_eq!(p["sys_exists"], false);
    for (path, exists) in p["host_paths"].as_object().unwrap() {
        if path == "/proc/1/environ" {
            continue;
        }
        assert_eq!(exists, false, "{path} is visible in the sandbox");
    }
    let dev: Vec<&str> = p["dev"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(
        dev,
        ["fd", "null", "random", "stderr", "stdin", "stdout", "urandom", "zero"]
    );
    // Every mount is nosuid; every mount but the four device binds is nodev
    // (a nodev device node cannot be opened). The root and runtime are read-only.
    for m in p["mounts"].as_array().unwrap() {
        let target = m["target"].as_str().unwrap();
        let opts: Vec<&str> = m["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        assert!(opts.contains(&"nosuid"), "{target} lacks nosuid: {opts:?}");
        let device = ["/dev/null", "/dev/zero", "/dev/random", "/dev/urandom"].contains(&target);
        assert!(
            device || opts.contains(&"nodev"),
            "{target} lacks nodev: {opts:?}"
        );
        if ["/", "/usr", "/lib", "/lib64", "/opt", "/etc", "/dev"].contains(&target)
            || target.starts_with("/usr/")
        {
            assert!(opts.contains(&"ro"), "{target} is writable: {opts:?}");
        }
        if ["/work", "/tmp"].contains(&target) {
            assert!(opts.contains(&"noexec"), "{target} lacks noexec: {opts:?}");
            assert_eq!(m["fstype"], "tmpfs");
        }
    }
    let targets: Vec<&str> = p["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["target"].as_str().unwrap())
        .collect();
    for want in ["/", "/work", "/tmp", "/proc", "/dev"] {
        assert!(targets.contains(&want), "{want} not mounted: {targets:?}");
    }
    // /proc shows only the sandbox's own processes.
    assert!(p["proc_pids"]
        .as_array()
        .unwrap()
        .iter()
        .all(|pid| pid.as_u64().unwrap() < 100));
}

fn probe_sees_no_secrets_and_no_stray_fds((p, _result): (Value, Value)) {
    let env = p["environ"].as_object().unwrap();
    assert!(
        !env.contains_key("KILN_TEST_SECRET"),
        "caller's env leaked: {env:?}"
    );
    for key in env.keys() {
        let allowed = [
            "PATH",
            "HOME",
            "LANG",
            "MPLBACKEND",
            "MPLCONFIGDIR",
            "OPENBLAS_NUM_THREADS",
            "OMP_NUM_THREADS",
            "MKL_NUM_THREADS",
            "LD_LIBRARY_PATH",
            "PYTHONDONTWRITEBYTECODE",
        ]
        .contains(&key.as_str())
            || key.starts_with("KILN_");
        assert!(allowed, "unexpected environment variable {key}");
    }
    // 0, 1, 2, the channel (3), and the fd listdir itself opened.
    let fds: Vec<u64> = p["fds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_u64().unwrap())
        .collect();
    assert!(fds.starts_with(&[0, 1, 2, 3]), "{fds:?}");
    assert!(
        fds.len() <= 5,
        "inherited fds beyond those kiln passes: {fds:?}"
    );
}

fn probe_sees_its_limits((p, _result): (Value, Value)) {
    let limits = &p["limits"];
    // The cgroup namespace roots the sandbox at its own cgroup.
    for line in limits["cgroup"].as_array().unwrap() {
        assert!(
            line.as_str().unwrap().ends_with(":/"),
            "cgroup not namespaced: {line}"
        );
    }
    assert_eq!(limits["core"], serde_json::json!([0, 0]));
    assert_eq!(limits["nofile"], serde_json::json!([256, 256]));
    assert_eq!(limits["nproc"], serde_json::json!([64, 64]));
    assert_eq!(
        limits["fsize"],
        serde_json::json!([256u64 << 20, 256u64 << 20])
    );
}

#[test]
fn concurrent_sandboxes_get_different_uids() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    // A holds its sandbox open; B runs while A's sandbox is known (from the
    // host) to be alive, so the two overlap by construction.
    let mut a = kiln()
        .args(["run", "--json", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    a.stdin
        .take()
        .unwrap()
        .write_all(b"import os, time\nprint(os.getuid())\ntime.sleep(6)")
        .unwrap();
    let owner = format!("-{}-", a.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    let a_cgroup = loop {
        let running = sandbox_cgroups().into_iter().find(|c| {
            c.to_string_lossy().contains(&owner)
                && std::fs::read_to_string(c.join("cgroup.procs"))
                    .is_ok_and(|p| !p.trim().is_empty())
        });
        if let Some(c) = running {
            break c;
        }
        assert!(Instant::now() < deadline, "sandbox A never started");
        std::thread::sleep(Duration::from_millis(20));
    };
    let b = run("import os\nprint(os.getuid())");
    assert!(
        a_cgroup.exists(),
        "sandbox A ended before B ran: no overlap to test"
    );
    let a: Value = serde_json::from_slice(&a.wait_with_output().unwrap().stdout).unwrap();
    expect_outcome(&a, "ok");
    expect_outcome(&b, "ok");
    let (ua, ub) = (stdout(&a), stdout(&b));
    assert_ne!(ua, ub, "two live sandboxes shared a uid");
    assert_eq!(a["isolation"]["uid"].to_string(), ua.trim());
}

/// The limits in force, read on the host while the sandbox runs: the
/// sandbox's own cgroup, named after the kiln process that made it.
#[test]
fn cgroup_limits_are_in_force_while_the_sandbox_runs() {
    use std::io::Write;
    let mut child = kiln()
        .args(["run", "--json", "--memory", "256", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"import time\ntime.sleep(4)")
        .unwrap();
    let owner = format!("-{}-", child.id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let dir = loop {
        let found = std::fs::read_dir("/sys/fs/cgroup/memory/kiln")
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().contains(&owner));
        if let Some(e) = found {
            break e.file_name();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no sandbox cgroup appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let read = |controller: &str, file: &str| {
        std::fs::read_to_string(format!(
            "/sys/fs/cgroup/{controller}/kiln/{}/{file}",
            dir.to_string_lossy()
        ))
        .unwrap_or_default()
        .trim()
        .to_string()
    };
    // The directory exists a moment before the sandbox joins it.
    let procs = loop {
        let procs = read("pids", "cgroup.procs");
        if !procs.is_empty() || std::time::Instant::now() > deadline {
            break procs;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert_eq!(
        read("memory", "memory.limit_in_bytes"),
        (256u64 << 20).to_string()
    );
    assert_eq!(read("pids", "pids.max"), "64");
    assert_eq!(read("cpu", "cpu.cfs_quota_us"), "100000");
    let memsw = read("memory", "memory.memsw.limit_in_bytes");
    assert!(
        memsw.is_empty() || memsw == (256u64 << 20).to_string(),
        "swap not capped: {memsw}"
    );
    assert!(
        !procs.is_empty(),
        "the sandbox's processes are not in its cgroup"
    );
    // The total ceiling for all sandboxes sits on the parent.
    let parent =
        std::fs::read_to_string("/sys/fs/cgroup/memory/kiln/memory.limit_in_bytes").unwrap();
    assert_eq!(parent.trim(), (8192u64 << 20).to_string());
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    expect_outcome(&v, "ok");
}
