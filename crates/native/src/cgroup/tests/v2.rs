//! cgroup v2 on a fake unified tree. kiln's development machines run v1, so
//! these fakes are the only check of the v2 code here.

use std::sync::Arc;
use std::time::Duration;

use kiln_policy::SandboxConfig;

use super::{limits, manager, w};
use crate::cgroup::fake::{FakeFs, Op};
use crate::cgroup::{CgroupError, CgroupManager, Layout, Version};

const ALL: &str = "cpuset cpu io memory hugetlb pids rdma misc";

fn setup() -> (Arc<FakeFs>, CgroupManager) {
    let (fs, info) = FakeFs::v2(ALL);
    let m = manager(&fs, &info, &SandboxConfig::default());
    m.ensure_parent().expect("parent");
    fs.clear_log();
    (fs, m)
}

#[test]
fn unified_host_is_v2() {
    let (fs, info) = FakeFs::v2(ALL);
    let layout = Layout::from_mountinfo(&*fs, &info).unwrap();
    assert_eq!(
        layout,
        Layout::V2 {
            root: fs.root().to_path_buf()
        }
    );
    assert_eq!(layout.version(), Version::V2);
}

#[test]
fn missing_controller_is_a_typed_error_with_hint() {
    let (fs, info) = FakeFs::v2("cpu memory");
    let err = Layout::from_mountinfo(&*fs, &info).unwrap_err();
    let CgroupError::ControllersMissing {
        version, missing, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!((*version, missing.as_slice()), (Version::V2, &["pids"][..]));
    assert!(err.to_string().contains("Hint:"), "{err}");
}

#[test]
fn parent_delegates_and_gets_the_totals() {
    let (fs, info) = FakeFs::v2(ALL);
    manager(&fs, &info, &SandboxConfig::default())
        .ensure_parent()
        .unwrap();
    assert_eq!(
        fs.ops(),
        [
            Op::Write("cgroup.subtree_control".into(), "+memory +pids +cpu".into()),
            Op::Mkdir("kiln".into()),
            Op::Write("kiln/memory.max".into(), "8589934592".into()),
            Op::Write("kiln/pids.max".into(), "4096".into()),
            Op::Write(
                "kiln/cgroup.subtree_control".into(),
                "+memory +pids +cpu".into()
            ),
        ]
    );
    assert_eq!(
        fs.get("kiln/cgroup.subtree_control").trim(),
        "memory pids cpu"
    );
}

#[test]
fn already_delegated_root_is_left_alone() {
    let (fs, info) = FakeFs::v2(ALL);
    fs.set("cgroup.subtree_control", "cpu memory pids io\n");
    manager(&fs, &info, &SandboxConfig::default())
        .ensure_parent()
        .unwrap();
    assert!(!fs
        .writes()
        .iter()
        .any(|(p, _)| p == "cgroup.subtree_control"));
}

#[test]
fn undelegated_subtree_is_a_typed_error_with_the_echo_hint() {
    let (fs, info) = FakeFs::v2(ALL);
    fs.set("cgroup.subtree_control", "cpu memory pids\n");
    std::fs::create_dir(fs.path("user.slice")).unwrap();
    std::fs::write(fs.path("user.slice/cgroup.controllers"), "").unwrap();
    std::fs::write(fs.path("user.slice/cgroup.subtree_control"), "memory\n").unwrap();
    fs.fail_write("user.slice/cgroup.subtree_control", libc::EACCES);
    let config = SandboxConfig {
        cgroup_parent: "user.slice/kiln".into(),
        ..Default::default()
    };
    let err = manager(&fs, &info, &config).ensure_parent().unwrap_err();
    let CgroupError::NotDelegated { path, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(path, &fs.path("user.slice/cgroup.subtree_control"));
    let text = err.to_string();
    assert!(text.contains("echo +memory +pids +cpu > "), "{text}");
    assert!(!fs.path("user.slice/kiln").exists());
}

#[test]
fn sandbox_limits_are_written_in_order() {
    let (fs, m) = setup();
    let cg = m.create("sb1", &limits(64, 32, 500)).unwrap();
    assert_eq!(fs.ops()[0], Op::Mkdir("kiln/sb1".into()));
    assert_eq!(
        fs.writes(),
        [
            w("kiln/sb1/memory.max", "67108864"),
            w("kiln/sb1/memory.swap.max", "0"),
            w("kiln/sb1/memory.oom.group", "1"),
            w("kiln/sb1/pids.max", "32"),
            w("kiln/sb1/cpu.max", "50000 100000"),
        ]
    );
    assert_eq!(
        fs.get("kiln/sb1/memory.high").trim(),
        "max",
        "memory.high untouched"
    );
    cg.destroy().unwrap();
}

#[test]
fn without_delegation_to_the_parent_the_limits_cannot_be_set() {
    let (fs, m) = setup();
    fs.set("kiln/cgroup.subtree_control", "");
    let err = m.create("sb1", &limits(64, 32, 500)).unwrap_err();
    assert!(
        matches!(&err, CgroupError::Write { path, .. } if path.ends_with("memory.max")),
        "{err}"
    );
    assert!(!fs.path("kiln/sb1").exists(), "rolled back");
}

#[test]
fn add_pid_and_dir_fd() {
    let (fs, m) = setup();
    let cg = m.create("sb1", &limits(64, 32, 1000)).unwrap();
    fs.clear_log();
    cg.add_pid(31337).unwrap();
    assert_eq!(fs.writes(), [w("kiln/sb1/cgroup.procs", "31337")]);
    let fd = cg.dir_fd_v2().unwrap().expect("v2 has a dir fd");
    let meta = std::fs::File::from(fd).metadata().unwrap();
    assert!(meta.is_dir());
}

#[test]
fn kill_uses_cgroup_kill() {
    let (fs, m) = setup();
    let cg = m.create("sb1", &limits(64, 32, 1000)).unwrap();
    cg.add_pid(10).unwrap();
    cg.add_pid(11).unwrap();
    fs.clear_log();
    cg.kill_all().unwrap();
    assert_eq!(
        fs.ops(),
        [Op::Write("kiln/sb1/cgroup.kill".into(), "1".into())]
    );
    cg.wait_empty(Duration::from_millis(100)).unwrap();
    cg.destroy().unwrap();
    assert!(!fs.path("kiln/sb1").exists());
}

#[test]
fn kill_without_cgroup_kill_freezes() {
    let (fs, m) = setup();
    let cg = m.create("sb1", &limits(64, 32, 1000)).unwrap();
    std::fs::remove_file(fs.path("kiln/sb1/cgroup.kill")).unwrap();
    cg.add_pid(10).unwrap();
    fs.clear_log();
    cg.kill_all().unwrap();
    assert_eq!(
        fs.ops(),
        [
            Op::Write("kiln/sb1/cgroup.freeze".into(), "1".into()),
            Op::Kill(10, libc::SIGKILL),
            Op::Write("kiln/sb1/cgroup.freeze".into(), "0".into()),
        ]
    );
}

#[test]
fn readings_from_memory_events_cpu_stat_and_peak() {
    let (fs, m) = setup();
    let cg = m.create("sb1", &limits(64, 32, 1000)).unwrap();
    fs.set(
        "kiln/sb1/memory.events",
        "low 0\nhigh 9\nmax 12\noom 1\noom_kill 0\noom_group_kill 0\n",
    );
    assert!(
        !cg.oom_killed().unwrap(),
        "oom without a kill is not an OOM kill"
    );
    fs.set(
        "kiln/sb1/memory.events",
        "low 0\nhigh 0\nmax 12\noom 1\noom_kill 2\noom_group_kill 1\n",
    );
    assert!(cg.oom_killed().unwrap());
    fs.set(
        "kiln/sb1/cpu.stat",
        "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n",
    );
    assert_eq!(cg.cpu_usage_ns().unwrap(), 1_500_000);
    fs.set("kiln/sb1/memory.peak", "8192\n");
    fs.set("kiln/sb1/memory.current", "4096\n");
    assert_eq!(cg.memory_peak_bytes().unwrap(), 8192);
    std::fs::remove_file(fs.path("kiln/sb1/memory.peak")).unwrap();
    assert_eq!(
        cg.memory_peak_bytes().unwrap(),
        4096,
        "before 5.19: current"
    );
    fs.set("kiln/sb1/pids.events", "max 1\n");
    assert!(cg.pids_max_hit().unwrap());
}

#[test]
fn write_error_rolls_back() {
    let (fs, m) = setup();
    fs.fail_write("kiln/sb1/cpu.max", libc::EINVAL);
    let err = m.create("sb1", &limits(64, 32, 1000)).unwrap_err();
    let CgroupError::Write { path, value, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(
        (path, value.as_str()),
        (&fs.path("kiln/sb1/cpu.max"), "100000 100000")
    );
    assert!(!fs.path("kiln/sb1").exists());
    assert_eq!(fs.ops().last(), Some(&Op::Rmdir("kiln/sb1".into())));
}

#[test]
fn reap_stale_and_remove_parent() {
    let (fs, m) = setup();
    for id in ["a", "b"] {
        std::mem::forget(m.create(id, &limits(64, 32, 1000)).unwrap());
    }
    fs.set("kiln/b/cgroup.procs", "55\n");
    assert_eq!(m.reap_stale(|n| n == "a").unwrap(), ["b"]);
    assert!(fs.path("kiln/a").exists());
    assert!(
        matches!(m.remove_parent(), Err(CgroupError::Remove { .. })),
        "busy with a"
    );
    m.open("a").unwrap().destroy().unwrap();
    m.remove_parent().unwrap();
    assert!(!fs.path("kiln").exists());
}
