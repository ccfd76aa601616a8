//! cgroup v1 on a fake hybrid tree.

use std::time::Duration;

use kiln_policy::SandboxConfig;

use super::{limits, manager, w};
use crate::cgroup::fake::{FakeFs, Op, V1Options};
use crate::cgroup::{CgroupError, CgroupManager, Layout, Version};

fn setup(opts: V1Options) -> (std::sync::Arc<FakeFs>, CgroupManager) {
    let (fs, info) = FakeFs::v1(opts);
    let m = manager(&fs, &info, &SandboxConfig::default());
    m.ensure_parent().expect("parent");
    fs.clear_log();
    (fs, m)
}

#[test]
fn hybrid_host_is_v1_with_each_mount_found() {
    let (fs, info) = FakeFs::v1(V1Options::default());
    let Layout::V1(m) = Layout::from_mountinfo(&*fs, &info).unwrap() else {
        panic!("hybrid must be v1");
    };
    assert_eq!(m.memory, fs.path("memory"));
    assert_eq!(m.cpu, fs.path("cpu"));
    assert_eq!(m.cpuacct, fs.path("cpuacct"));
    assert_eq!(m.freezer, fs.path("freezer"));
}

#[test]
fn combined_cpu_cpuacct_mount_is_one_dir() {
    let (fs, info) = FakeFs::v1(V1Options {
        combined_cpu: true,
        ..Default::default()
    });
    let Layout::V1(m) = Layout::from_mountinfo(&*fs, &info).unwrap() else {
        panic!()
    };
    assert_eq!(m.cpu, fs.path("cpu,cpuacct"));
    assert_eq!(m.cpuacct, m.cpu);
}

#[test]
fn missing_freezer_is_a_typed_error_with_hint() {
    let (fs, info) = FakeFs::v1(V1Options {
        freezer: false,
        ..Default::default()
    });
    let err = Layout::from_mountinfo(&*fs, &info).unwrap_err();
    let CgroupError::ControllersMissing {
        version, missing, ..
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(
        (*version, missing.as_slice()),
        (Version::V1, &["freezer"][..])
    );
    assert!(err.to_string().contains("Hint: mount each"), "{err}");
}

#[test]
fn no_cgroup_mount_at_all() {
    let (fs, _) = FakeFs::v1(V1Options::default());
    let info = "22 1 0:21 / /proc rw - proc proc rw\n";
    assert!(matches!(
        Layout::from_mountinfo(&*fs, info),
        Err(CgroupError::NoCgroupFs)
    ));
}

#[test]
fn parent_gets_the_totals() {
    let (fs, info) = FakeFs::v1(V1Options::default());
    let m = manager(&fs, &info, &SandboxConfig::default());
    m.ensure_parent().unwrap();
    let mkdirs: Vec<Op> = ["memory", "pids", "cpu", "cpuacct", "freezer"]
        .iter()
        .map(|c| Op::Mkdir(format!("{c}/kiln")))
        .collect();
    assert_eq!(fs.ops()[..5], mkdirs[..]);
    assert_eq!(
        fs.writes(),
        [
            w("memory/kiln/memory.limit_in_bytes", "8589934592"),
            w("memory/kiln/memory.memsw.limit_in_bytes", "8589934592"),
            w("pids/kiln/pids.max", "4096"),
        ]
    );
}

#[test]
fn raising_the_parent_total_writes_memsw_first() {
    let (fs, info) = FakeFs::v1(V1Options::default());
    manager(&fs, &info, &SandboxConfig::default())
        .ensure_parent()
        .unwrap();
    fs.clear_log();
    let config = SandboxConfig {
        total_memory_mib: 16384,
        ..Default::default()
    };
    manager(&fs, &info, &config).ensure_parent().unwrap();
    assert_eq!(
        fs.writes()[..2],
        [
            w("memory/kiln/memory.memsw.limit_in_bytes", "17179869184"),
            w("memory/kiln/memory.limit_in_bytes", "17179869184"),
        ]
    );
}

#[test]
fn sandbox_limits_are_written_in_order() {
    let (fs, m) = setup(V1Options::default());
    let cg = m.create("sb1", &limits(64, 32, 1500)).unwrap();
    assert_eq!(
        fs.writes(),
        [
            w("memory/kiln/sb1/memory.limit_in_bytes", "67108864"),
            w("memory/kiln/sb1/memory.memsw.limit_in_bytes", "67108864"),
            w("memory/kiln/sb1/memory.swappiness", "0"),
            w("pids/kiln/sb1/pids.max", "32"),
            w("cpu/kiln/sb1/cpu.cfs_period_us", "100000"),
            w("cpu/kiln/sb1/cpu.cfs_quota_us", "150000"),
        ]
    );
    assert_eq!(cg.id(), "sb1");
    assert_eq!(cg.path(), fs.path("memory/kiln/sb1"));
    cg.destroy().unwrap();
}

#[test]
fn memsw_is_skipped_without_swap_accounting() {
    let (fs, m) = setup(V1Options {
        memsw: false,
        ..Default::default()
    });
    let _cg = m.create("sb1", &limits(64, 32, 1000)).unwrap();
    let writes = fs.writes();
    assert_eq!(
        writes[0],
        w("memory/kiln/sb1/memory.limit_in_bytes", "67108864")
    );
    assert!(
        !writes.iter().any(|(p, _)| p.contains("memsw")),
        "{writes:?}"
    );
}

#[test]
fn add_pid_writes_every_controller() {
    let (fs, m) = setup(V1Options::default());
    let cg = m.create("sb1", &limits(64, 32, 1000)).unwrap();
    fs.clear_log();
    cg.add_pid(4242).unwrap();
    let expected: Vec<_> = ["memory", "pids", "cpu", "cpuacct", "freezer"]
        .iter()
        .map(|c| w(&format!("{c}/kiln/sb1/cgroup.procs"), "4242"))
        .collect();
    assert_eq!(fs.writes(), expected);
    assert_eq!(cg.procs().unwrap(), [4242]);
    assert!(cg.dir_fd_v2().unwrap().is_none());
}

#[test]
fn add_pid_writes_a_combined_cpu_dir_once() {
    let (fs, m) = setup(V1Options {
        combined_cpu: true,
        ..Default::default()
    });
    let cg = m.create("sb1", &limits(64, 32, 1000)).unwrap();
    fs.clear_log();
    cg.add_pid(7).unwrap();
    let dirs: Vec<String> = fs.writes().into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        dirs,
        [
            "memory/kiln/sb1/cgroup.procs",
            "pids/kiln/sb1/cgroup.procs",
            "cpu,cpuacct/kiln/sb1/cgroup.procs",
            "freezer/kiln/sb1/cgroup.procs",
        ]
    );
}

#[test]
fn oom_comes_from_oom_kill_not_failcnt() {
    let (fs, m) = setup(V1Options::default());
    let cg = m.create("sb1", &limits(64, 32, 1000)).unwrap();
    fs.set("memory/kiln/sb1/memory.failcnt", "5\n");
    fs.set(
        "memory/kiln/sb1/memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
    );
    assert!(!cg.oom_killed().unwrap());
    fs.set(
        "memory/kiln/sb1/memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
    );
    assert!(cg.oom_killed().unwrap());
}

#[test]
fn readings() {
    let (fs, m) = setup(V1Options::default());
    let cg = m.create("sb1", &limits(64, 32, 1000)).unwrap();
    fs.set("cpuacct/kiln/sb1/cpuacct.usage", "123456789\n");
    fs.set("memory/kiln/sb1/memory.max_usage_in_bytes", "4096\n");
    assert_eq!(cg.cpu_usage_ns().unwrap(), 123_456_789);
    assert_eq!(cg.memory_peak_bytes().unwrap(), 4096);
    assert!(!cg.pids_max_hit().unwrap());
    fs.set("pids/kiln/sb1/pids.events", "max 3\n");
    assert!(cg.pids_max_hit().unwrap());
}

#[test]
fn kill_freezes_kills_thaws_then_destroy_removes_all() {
    let (fs, m) = setup(V1Options::default());
    let cg = m.create("sb1", &limits(64, 32, 1000)).unwrap();
    cg.add_pid(4242).unwrap();
    cg.add_pid(4243).unwrap();
    fs.clear_log();
    cg.kill_all().unwrap();
    let state = "freezer/kiln/sb1/freezer.state".to_string();
    assert_eq!(
        fs.ops(),
        [
            Op::Write(state.clone(), "FROZEN".into()),
            Op::Kill(4242, libc::SIGKILL),
            Op::Kill(4243, libc::SIGKILL),
            Op::Write(state, "THAWED".into()),
        ]
    );
    cg.wait_empty(Duration::from_millis(100)).unwrap();
    fs.clear_log();
    cg.destroy().unwrap();
    let rmdirs: Vec<Op> = ["freezer", "cpuacct", "cpu", "pids", "memory"]
        .iter()
        .map(|c| Op::Rmdir(format!("{c}/kiln/sb1")))
        .collect();
    assert_eq!(fs.ops(), rmdirs);
    cg.destroy().expect("destroy is idempotent");
    drop(cg);
    assert_eq!(fs.ops(), rmdirs, "drop after destroy does nothing");
}

#[test]
fn wait_empty_times_out_with_the_pids() {
    let (fs, m) = setup(V1Options::default());
    let cg = m.create("sb1", &limits(64, 32, 1000)).unwrap();
    fs.set("pids/kiln/sb1/cgroup.procs", "99\n");
    let err = cg.wait_empty(Duration::from_millis(20)).unwrap_err();
    assert!(
        matches!(&err, CgroupError::NotEmpty { pids, .. } if pids == &[99]),
        "{err}"
    );
    assert!(matches!(cg.destroy(), Err(CgroupError::Remove { .. })));
    fs.set("pids/kiln/sb1/cgroup.procs", "");
}

#[test]
fn drop_kills_and_removes() {
    let (fs, m) = setup(V1Options::default());
    let cg = m.create("sb1", &limits(64, 32, 1000)).unwrap();
    cg.add_pid(5).unwrap();
    drop(cg);
    assert!(fs.ops().contains(&Op::Kill(5, libc::SIGKILL)));
    for c in ["memory", "pids", "cpu", "cpuacct", "freezer"] {
        assert!(!fs.path(&format!("{c}/kiln/sb1")).exists(), "{c}");
    }
}

#[test]
fn invalid_ids_touch_nothing() {
    let (fs, m) = setup(V1Options::default());
    for id in ["../x", "a/b", "", "a b", "."] {
        let err = m.create(id, &limits(64, 32, 1000)).unwrap_err();
        assert!(
            matches!(err, CgroupError::InvalidName { .. }),
            "{id}: {err}"
        );
    }
    assert!(fs.ops().is_empty());
}

#[test]
fn write_error_carries_the_path_and_rolls_back() {
    let (fs, m) = setup(V1Options::default());
    fs.fail_write("pids/kiln/sb1/pids.max", libc::EACCES);
    let err = m.create("sb1", &limits(64, 32, 1000)).unwrap_err();
    let CgroupError::Write { path, value, .. } = &err else {
        panic!("{err}")
    };
    assert_eq!(
        (path, value.as_str()),
        (&fs.path("pids/kiln/sb1/pids.max"), "32")
    );
    assert!(err.to_string().contains("Hint: run kiln as root"), "{err}");
    for c in ["memory", "pids", "cpu", "cpuacct", "freezer"] {
        assert!(
            !fs.path(&format!("{c}/kiln/sb1")).exists(),
            "{c} left behind"
        );
        assert!(fs.path(&format!("{c}/kiln")).exists(), "parent {c} removed");
    }
}

#[test]
fn mkdir_error_rolls_back_the_others() {
    let (fs, m) = setup(V1Options::default());
    fs.fail_mkdir("freezer/kiln/sb1", libc::EPERM);
    let err = m.create("sb1", &limits(64, 32, 1000)).unwrap_err();
    assert!(
        matches!(&err, CgroupError::Create { path, .. } if path == &fs.path("freezer/kiln/sb1"))
    );
    let rmdirs: Vec<Op> = fs
        .ops()
        .into_iter()
        .filter(|o| matches!(o, Op::Rmdir(_)))
        .collect();
    assert_eq!(rmdirs.len(), 4, "{rmdirs:?}");
    assert!(!fs.path("memory/kiln/sb1").exists());
}

#[test]
fn existing_cgroup_is_not_clobbered_or_removed() {
    let (fs, m) = setup(V1Options::default());
    let first = m.create("sb1", &limits(64, 32, 1000)).unwrap();
    let err = m.create("sb1", &limits(64, 32, 1000)).unwrap_err();
    assert!(matches!(err, CgroupError::AlreadyExists { .. }), "{err}");
    assert!(fs.path("memory/kiln/sb1").exists());
    assert!(fs.path("freezer/kiln/sb1").exists());
    first.destroy().unwrap();
}

#[test]
fn reap_stale_removes_only_what_is_not_live() {
    let (fs, m) = setup(V1Options::default());
    for id in ["live1", "dead1", "dead2"] {
        let cg = m.create(id, &limits(64, 32, 1000)).unwrap();
        std::mem::forget(cg); // as if the supervisor crashed
    }
    fs.set("freezer/kiln/dead1/cgroup.procs", "777\n");
    // A half-made one: only in pids.
    std::fs::create_dir(fs.path("pids/kiln/half")).unwrap();
    std::fs::write(fs.path("pids/kiln/half/cgroup.procs"), "").unwrap();
    // Something kiln did not name.
    std::fs::create_dir(fs.path("memory/kiln/not.kiln")).unwrap();
    let reaped = m.reap_stale(|name| name == "live1").unwrap();
    assert_eq!(reaped, ["dead1", "dead2", "half"]);
    assert!(fs.ops().contains(&Op::Kill(777, libc::SIGKILL)));
    assert!(fs.path("memory/kiln/live1").exists());
    assert!(fs.path("memory/kiln/not.kiln").exists());
    for gone in ["memory/kiln/dead1", "freezer/kiln/dead2", "pids/kiln/half"] {
        assert!(!fs.path(gone).exists(), "{gone}");
    }
}
