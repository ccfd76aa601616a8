//! cgroup management against the real kernel. Needs root and cgroup v1
//! (kiln's development machines); elsewhere each test prints why it skips.
//! v2 is covered only by the fake-tree unit tests in `src/cgroup/tests/`.
//!
//! Every test works under its own parent `kiln-test-<pid>-<name>` and removes
//! it, its sandbox cgroups and their processes at the end, pass or fail.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kiln_native::cgroup::{Cgroup, CgroupManager, Version};
use kiln_policy::{Limits, SandboxConfig};

const V1_CONTROLLERS: [&str; 5] = ["memory", "pids", "cpu", "cpuacct", "freezer"];

/// A test's parent cgroup; dropping it reaps every child and removes it.
struct TestParent {
    manager: CgroupManager,
    name: String,
}

impl TestParent {
    fn new(test: &str) -> Option<Self> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipping {test}: needs root to create cgroups");
            return None;
        }
        let name = format!("kiln-test-{}-{test}", std::process::id());
        let config = SandboxConfig {
            cgroup_parent: name.clone(),
            total_memory_mib: 1024,
            total_pids: 256,
            ..SandboxConfig::default()
        };
        let manager = CgroupManager::detect(&config).expect("detect cgroups");
        if manager.version() != Version::V1 {
            eprintln!("skipping {test}: these tests are for cgroup v1 hosts");
            return None;
        }
        manager.ensure_parent().expect("ensure_parent");
        Some(Self { manager, name })
    }

    fn limits(&self, memory_mib: u64, pids: u64, cpu_millicores: u64) -> Limits {
        Limits {
            memory_mib,
            pids,
            cpu_millicores,
            ..Limits::default()
        }
    }
}

impl Drop for TestParent {
    fn drop(&mut self) {
        if let Err(e) = self.manager.reap_stale(|_| false) {
            eprintln!("cleanup of {}: {e}", self.name);
        }
        if let Err(e) = self.manager.remove_parent() {
            eprintln!("cleanup of {}: {e}", self.name);
        }
        for c in V1_CONTROLLERS {
            let dir = Path::new("/sys/fs/cgroup").join(c).join(&self.name);
            if dir.exists() && !std::thread::panicking() {
                panic!("{} left behind", dir.display());
            }
        }
    }
}

/// `sh -c script` that waits for a line on stdin before starting, so it can
/// be moved into the cgroup first (as the real child waits for its parent).
fn spawn_waiting(script: &str) -> Child {
    Command::new("sh")
        .args(["-c", &format!("read go; {script}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn sh")
}

fn start(child: &mut Child) {
    let stdin = child.stdin.as_mut().expect("stdin");
    stdin.write_all(b"go\n").expect("release child");
    stdin.flush().expect("flush");
}

fn proc_cgroups(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

fn dirs_exist(parent: &str, id: &str) -> Vec<String> {
    V1_CONTROLLERS
        .iter()
        .map(|c| format!("/sys/fs/cgroup/{c}/{parent}/{id}"))
        .filter(|d| Path::new(d).exists())
        .collect()
}

#[test]
fn lifecycle_add_kill_wait_destroy() {
    let Some(t) = TestParent::new("life") else {
        return;
    };
    let cg = t.manager.create("sb1", &t.limits(128, 16, 1000)).unwrap();
    assert_eq!(dirs_exist(&t.name, "sb1").len(), 5);
    let mut child = Command::new("sleep").arg("60").spawn().unwrap();
    cg.add_pid(child.id()).unwrap();

    let member = proc_cgroups(child.id());
    for c in V1_CONTROLLERS {
        let line = format!(":{c}:/{}/sb1\n", t.name);
        assert!(member.contains(&line), "{c} missing in\n{member}");
    }
    assert_eq!(cg.procs().unwrap(), [child.id() as i32]);
    assert!(cg.cpu_usage_ns().is_ok());
    assert!(!cg.oom_killed().unwrap());

    cg.kill_all().unwrap();
    cg.wait_empty(Duration::from_secs(5)).unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    let state = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/freezer/{}/sb1/freezer.state",
        t.name
    ))
    .unwrap();
    assert_eq!(state.trim(), "THAWED");
    cg.destroy().unwrap();
    assert!(dirs_exist(&t.name, "sb1").is_empty());
    cg.destroy().expect("idempotent");
}

#[test]
fn memory_limit_oom_kills_and_is_reported() {
    let Some(t) = TestParent::new("oom") else {
        return;
    };
    let cg = t.manager.create("sb1", &t.limits(64, 16, 1000)).unwrap();
    let memsw = format!(
        "/sys/fs/cgroup/memory/{}/sb1/memory.memsw.limit_in_bytes",
        t.name
    );
    if let Ok(v) = std::fs::read_to_string(&memsw) {
        assert_eq!(v.trim(), (64u64 << 20).to_string(), "swap capped");
    }
    // bytearray() is calloc'd (untouched zero pages): write one byte per page.
    let py = "b = bytearray(200*1024*1024); b[::4096] = b'x' * len(b[::4096]); print('survived')";
    let mut child = spawn_waiting(&format!("exec python3 -c \"{py}\""));
    cg.add_pid(child.id()).unwrap();
    start(&mut child);
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    assert!(cg.oom_killed().unwrap(), "oom_kill counter");
    let peak = cg.memory_peak_bytes().unwrap();
    assert!(peak <= 64 << 20 && peak > 32 << 20, "peak {peak}");
    cg.wait_empty(Duration::from_secs(5)).unwrap();
    cg.destroy().unwrap();
}

#[test]
fn under_the_memory_limit_is_no_oom() {
    let Some(t) = TestParent::new("nooom") else {
        return;
    };
    let cg = t.manager.create("sb1", &t.limits(64, 16, 1000)).unwrap();
    let py = "b = bytearray(16*1024*1024); b[::4096] = b'x' * len(b[::4096])";
    let mut child = spawn_waiting(&format!("exec python3 -c \"{py}\""));
    cg.add_pid(child.id()).unwrap();
    start(&mut child);
    assert!(child.wait().unwrap().success());
    assert!(!cg.oom_killed().unwrap());
    cg.destroy().unwrap();
}

#[test]
fn pids_limit_is_hit_and_reported() {
    let Some(t) = TestParent::new("pids") else {
        return;
    };
    let cg = t.manager.create("sb1", &t.limits(128, 8, 1000)).unwrap();
    let mut child = spawn_waiting("i=0; while [ $i -lt 30 ]; do sleep 30 & i=$((i+1)); done; wait");
    cg.add_pid(child.id()).unwrap();
    assert!(!cg.pids_max_hit().unwrap());
    start(&mut child);
    let hit = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        cg.pids_max_hit().unwrap()
    });
    assert!(hit, "pids.events max never rose");
    assert!(cg.procs().unwrap().len() <= 8);
    cg.kill_all().unwrap();
    cg.wait_empty(Duration::from_secs(5)).unwrap();
    let _ = child.wait();
    cg.destroy().unwrap();
}

#[test]
fn cpu_bandwidth_is_capped() {
    let Some(t) = TestParent::new("cpu") else {
        return;
    };
    let cg = t.manager.create("sb1", &t.limits(128, 16, 100)).unwrap();
    let mut child = spawn_waiting("timeout 1 sh -c 'while :; do :; done'");
    cg.add_pid(child.id()).unwrap();
    start(&mut child);
    child.wait().unwrap();
    let used = cg.cpu_usage_ns().unwrap();
    // 0.1 core over ~1 s of wall time: about 100 ms; never near a full second.
    assert!(used > 0 && used < 400_000_000, "used {used} ns");
    cg.destroy().unwrap();
}

#[test]
fn reap_stale_kills_and_removes_only_dead_sandboxes() {
    let Some(t) = TestParent::new("reap") else {
        return;
    };
    let live = t.manager.create("live", &t.limits(128, 16, 1000)).unwrap();
    let stale = t.manager.create("stale", &t.limits(128, 16, 1000)).unwrap();
    let mut child = Command::new("sleep").arg("60").spawn().unwrap();
    stale.add_pid(child.id()).unwrap();
    std::mem::forget(stale); // as if the supervisor had crashed

    let reaped = t.manager.reap_stale(|name| name == "live").unwrap();
    assert_eq!(reaped, ["stale"]);
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert!(dirs_exist(&t.name, "stale").is_empty());
    assert_eq!(dirs_exist(&t.name, "live").len(), 5);
    drop(live);
    assert!(dirs_exist(&t.name, "live").is_empty(), "drop destroys");
}

#[test]
fn drop_kills_what_is_left_and_removes_the_cgroup() {
    let Some(t) = TestParent::new("drop") else {
        return;
    };
    let cg: Cgroup = t.manager.create("sb1", &t.limits(128, 16, 1000)).unwrap();
    let mut child = Command::new("sleep").arg("60").spawn().unwrap();
    cg.add_pid(child.id()).unwrap();
    drop(cg);
    assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
    assert!(dirs_exist(&t.name, "sb1").is_empty());
}
