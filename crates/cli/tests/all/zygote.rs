//! The zygote: forks of one warm template are sandboxes like any other,
//! with their own randomness, and the template stays forkable.

use crate::support::*;
use serde_json::Value;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

fn write(dir: &Path, name: &str, code: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, code).unwrap();
    path.display().to_string()
}

/// `kiln run --json <args> FILES…`: one result per file, in order.
fn run_files(args: &[&str], files: &[String]) -> Vec<Value> {
    let out = kiln()
        .args(["run", "--json"])
        .args(args)
        .args(files)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let results: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        results.len(),
        files.len(),
        "stdout: {text}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    results
}

#[test]
fn forks_of_one_template_draw_different_random_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let code = "import random, numpy as np\nprint(random.random(), np.random.rand(), np.random.default_rng().random())";
    let files: Vec<String> = (0..3)
        .map(|i| write(dir.path(), &format!("r{i}.py"), code))
        .collect();
    for mode in [&["--zygote"][..], &["--pool", "2"][..]] {
        let results = run_files(mode, &files);
        let lines: Vec<String> = results
            .iter()
            .map(|r| {
                expect_outcome(r, "ok");
                stdout(r)
            })
            .collect();
        for (i, a) in lines.iter().enumerate() {
            for b in &lines[i + 1..] {
                for (x, y) in a.split_whitespace().zip(b.split_whitespace()) {
                    assert_ne!(
                        x, y,
                        "two sandboxes of one template share random state ({mode:?}): {lines:?}"
                    );
                }
            }
        }
        let uids: std::collections::HashSet<_> = results
            .iter()
            .map(|r| r["isolation"]["uid"].as_u64())
            .collect();
        assert_eq!(uids.len(), 3, "each fork gets its own uid");
    }
}

/// While a zygote sandbox runs, the template (the only process in its own
/// cgroup) has exactly one thread and no writable shared mapping.
#[test]
fn template_is_single_threaded_without_shared_writable_mappings() {
    let mut child = kiln()
        .args(["run", "--json", "--zygote", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"import time\ntime.sleep(3)\nprint('done')")
        .unwrap();
    let marker = format!("zygote-{}-", child.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    let template_pid = loop {
        let found = std::fs::read_dir("/sys/fs/cgroup/pids/kiln")
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(&marker))
            .and_then(|e| std::fs::read_to_string(e.path().join("cgroup.procs")).ok())
            .and_then(|procs| {
                procs
                    .lines()
                    .next()
                    .and_then(|p| p.trim().parse::<u32>().ok())
            });
        if let Some(pid) = found {
            // Ready means its sandbox (moved to its own cgroup) is running.
            if sandbox_cgroups()
                .iter()
                .any(|c| c.to_string_lossy().contains(&format!("-{}-", child.id())))
            {
                break pid;
            }
        }
        assert!(Instant::now() < deadline, "no zygote template appeared");
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = std::fs::read_to_string(format!("/proc/{template_pid}/status")).unwrap();
    let threads = status.lines().find(|l| l.starts_with("Threads:")).unwrap();
    assert_eq!(threads.split_whitespace().nth(1), Some("1"), "{status}");
    let uid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u32>()
        .unwrap();
    assert_eq!(
        uid,
        UID_BASE - 1,
        "the template runs as the uid below the sandbox range"
    );
    let cap_eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    // CAP_SETGID | CAP_SETUID, inside its own user namespace only.
    assert_eq!(
        cap_eff.split_whitespace().nth(1),
        Some("00000000000000c0"),
        "{status}"
    );
    let maps = std::fs::read_to_string(format!("/proc/{template_pid}/maps")).unwrap();
    for line in maps.lines() {
        let perms = line.split_whitespace().nth(1).unwrap();
        assert!(
            !(perms.as_bytes()[1] == b'w' && perms.as_bytes()[3] == b's'),
            "shared writable mapping: {line}"
        );
    }
    // Its warmed memory is in huge pages where the kernel can collapse it
    // (MADV_COLLAPSE, Linux 6.1; THP not `never`): cheaper forks.
    if collapse_supported() {
        let rollup = std::fs::read_to_string(format!("/proc/{template_pid}/smaps_rollup")).unwrap();
        let huge_kib: u64 = rollup
            .lines()
            .find_map(|l| l.strip_prefix("AnonHugePages:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        assert!(huge_kib >= 2048, "no huge page in the template:\n{rollup}");
    }
    // Python's objects sit side by side in one 2 MiB-aligned region (not in
    // 1 MiB arenas scattered between the libraries), so they can be huge pages.
    let smaps = std::fs::read_to_string(format!("/proc/{template_pid}/smaps")).unwrap();
    let (rss_kib, huge_kib) = largest_aligned_anonymous_region(&smaps);
    assert!(
        rss_kib >= 16 << 10,
        "no region holding the template's objects (largest aligned anonymous mapping: {rss_kib} KiB)"
    );
    if collapse_supported() {
        assert!(huge_kib >= 2048, "the objects' region has no huge page");
    }
    let environ = std::fs::read(format!("/proc/{template_pid}/environ")).unwrap();
    assert!(
        !String::from_utf8_lossy(&environ).contains("KILN_TEST"),
        "the template carries the caller's environment"
    );
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    expect_outcome(&v, "ok");
}

/// Rss and AnonHugePages (KiB) of the anonymous private mapping with the
/// most resident memory among those starting at a 2 MiB boundary.
fn largest_aligned_anonymous_region(smaps: &str) -> (u64, u64) {
    let mut regions: Vec<(u64, u64)> = Vec::new();
    // Whether the mapping whose fields are being read is one of them.
    let mut candidate = false;
    for line in smaps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let kib = fields
            .get(1)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        match fields.first() {
            Some(range) if range.contains('-') && !range.ends_with(':') => {
                let start = u64::from_str_radix(range.split('-').next().unwrap(), 16).unwrap_or(1);
                candidate = fields.len() == 5 && fields[1] == "rw-p" && start % (2 << 20) == 0;
                if candidate {
                    regions.push((0, 0));
                }
            }
            Some(&"Rss:") if candidate => regions.last_mut().expect("pushed").0 = kib,
            Some(&"AnonHugePages:") if candidate => regions.last_mut().expect("pushed").1 = kib,
            _ => {}
        }
    }
    regions.into_iter().max_by_key(|r| r.0).unwrap_or((0, 0))
}

/// Whether this kernel has MADV_COLLAPSE (6.1) and THP is not `never`.
fn collapse_supported() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let (major, minor) = kiln_native::doctor::parse_version(&release);
    let thp =
        std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    (major, minor) >= (6, 1) && !thp.is_empty() && !thp.contains("[never]")
}

/// A template that dies takes its sandboxes with it; the next request gets
/// a new template and the pool recovers.
#[test]
fn a_dead_template_is_replaced_and_the_pool_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let slow = write(
        dir.path(),
        "slow.py",
        "import time\ntime.sleep(30)\nprint('survived')",
    );
    let quick: Vec<String> = (0..6)
        .map(|i| write(dir.path(), &format!("q{i}.py"), "print('hello')"))
        .collect();
    let mut files = vec![slow];
    files.extend(quick);
    let child = kiln()
        .args(["run", "--json", "--pool", "2"])
        .args(&files)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let marker = format!("zygote-{}-", child.id());
    let deadline = Instant::now() + Duration::from_secs(60);
    // Wait until the slow file runs (its sandbox cgroup exists), then kill the template.
    loop {
        let template = std::fs::read_dir("/sys/fs/cgroup/pids/kiln")
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().starts_with(&marker))
            .and_then(|e| std::fs::read_to_string(e.path().join("cgroup.procs")).ok())
            .and_then(|procs| {
                procs
                    .lines()
                    .next()
                    .and_then(|p| p.trim().parse::<i32>().ok())
            });
        let running = sandbox_cgroups()
            .iter()
            .filter(|c| c.to_string_lossy().contains(&format!("-{}-", child.id())))
            .count();
        if let (Some(pid), true) = (template, running >= 1) {
            std::thread::sleep(Duration::from_millis(500));
            // SAFETY-free: std has no kill; use the kill command.
            let status = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap();
            assert!(status.success());
            break;
        }
        assert!(Instant::now() < deadline, "the pooled run did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let results: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 7);
    expect_outcome(&results[0], "killed");
    assert!(!stdout(&results[0]).contains("survived"));
    // Sandboxes that were warm in the dead template's pool die with it; one
    // handed out in the instant before its death shows is `killed`. After
    // that the pool is refilled from a new template.
    for r in &results[1..] {
        assert!(["ok", "killed"].contains(&outcome(r)), "{r}");
    }
    for r in &results[4..] {
        expect_outcome(r, "ok");
        assert_eq!(stdout(r), "hello\n");
    }
    assert_nothing_left_by("zygote", &results[6]);
}

/// The fork is Rust's clone3, not glibc's fork(): glibc's cached thread id
/// must still be right, or raise() (tgkill on it) misses the main thread.
#[test]
fn raise_reaches_the_main_thread_in_a_fork() {
    let code = "import signal, os\ngot = []\nsignal.signal(signal.SIGUSR1, lambda *a: got.append(1))\nsignal.raise_signal(signal.SIGUSR1)\nprint('handled', len(got))";
    for spawner in [&[][..], &["--zygote"][..]] {
        let (v, _) = run_with(code, spawner, &[]);
        expect_outcome(&v, "ok");
        assert_eq!(stdout(&v), "handled 1\n", "{spawner:?}");
    }
}

#[test]
fn a_fork_has_exactly_the_environment_of_a_fresh_sandbox() {
    // os.environ (Python's view) and the C environment a subprocess gets,
    // in a fresh-process sandbox and in a fork of the template, whose own
    // environment differs (it also names its library and the runner).
    let code = "import json, os, subprocess, sys\n\
        c = subprocess.run([sys.executable, '-c', 'import json, os; print(json.dumps(dict(os.environ)))'],\n\
        \x20   capture_output=True, text=True, check=True).stdout\n\
        print(json.dumps([dict(os.environ), json.loads(c)]))";
    let mut seen = Vec::new();
    for args in [
        &["--environment", "open"][..],
        &["--environment", "open", "--zygote"],
    ] {
        let (v, _) = run_with(code, args, &[("KILN_CONFIG", open_config())]);
        expect_outcome(&v, "ok");
        let both: Value = serde_json::from_str(stdout(&v).trim()).unwrap();
        assert_eq!(
            both[0], both[1],
            "os.environ and the C environment disagree ({args:?})"
        );
        seen.push(both[0].clone());
    }
    assert_eq!(
        seen[0], seen[1],
        "a fork of the template and a fresh sandbox have different environments"
    );
    assert!(seen[1].get("KILN_ZYGOTE_LIB").is_none(), "{}", seen[1]);
}

#[test]
fn a_fork_reports_how_long_each_of_its_steps_took() {
    let mut child = kiln()
        .env("KILN_LOG", "kiln_native=debug")
        .args(["run", "--json", "--zygote", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"print(1)").unwrap();
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    expect_outcome(&v, "ok");
    let log = String::from_utf8_lossy(&out.stderr);
    let line = log
        .lines()
        .find(|l| l.contains("the sandbox's start, step by step"))
        .unwrap_or_else(|| panic!("no step timing in the debug log:\n{log}"));
    // The fork, every step of the containment sequence (no egress here,
    // and a fork ends with seccomp, not execve), in order, then the runner.
    let steps = kiln_native::CONTAINMENT_STEPS
        .into_iter()
        .filter(|s| !matches!(*s, "loopback" | "execve"));
    let mut at = 0;
    for step in std::iter::once("fork").chain(steps).chain(["runner"]) {
        let found = line[at..]
            .find(&format!("(\"{step}\", "))
            .unwrap_or_else(|| panic!("no step {step} after byte {at} in {line}"));
        at += found + 1;
    }
}
