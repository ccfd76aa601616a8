//! Unit tests on the fake tree (no root needed). The real-kernel v1 tests
//! are `crates/native/tests/cgroup_real.rs`.

mod v1;
mod v2;

use std::sync::Arc;

use kiln_policy::{Limits, SandboxConfig};

use super::fake::FakeFs;
use super::{CgroupManager, Layout};

fn manager(fs: &Arc<FakeFs>, mountinfo: &str, config: &SandboxConfig) -> CgroupManager {
    let layout = Layout::from_mountinfo(&**fs, mountinfo).expect("layout");
    CgroupManager::with_fs(fs.clone(), layout, config).expect("manager")
}

fn w(path: &str, value: &str) -> (String, String) {
    (path.to_string(), value.to_string())
}

fn limits(memory_mib: u64, pids: u64, cpu_millicores: u64) -> Limits {
    Limits {
        memory_mib,
        pids,
        cpu_millicores,
        ..Limits::default()
    }
}

#[test]
fn sandbox_names_are_one_safe_component() {
    use super::validate_sandbox_name as check;
    for ok in ["sb1", "a-b_C9", "0"] {
        assert!(check(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        ".",
        "..",
        "a/b",
        "../x",
        "a b",
        "a.b",
        "é",
        &"x".repeat(129),
    ] {
        assert!(check(bad).is_err(), "{bad}");
    }
}

#[test]
fn parent_names_are_relative_paths() {
    use super::validate_parent_name as check;
    for ok in ["kiln", "user.slice/user@1000.service/kiln"] {
        assert!(check(ok).is_ok(), "{ok}");
    }
    for bad in ["", "/kiln", "kiln/", "a/../b", ".", "a//b", "a b"] {
        assert!(check(bad).is_err(), "{bad}");
    }
}

#[test]
fn keyed_values_match_whole_keys() {
    let text = "oom 3\noom_kill 1\noom_group_kill 7\n";
    assert_eq!(super::keyed_value(text, "oom_kill"), Some(1));
    assert_eq!(super::keyed_value(text, "oom"), Some(3));
    assert_eq!(super::keyed_value(text, "kill"), None);
}

#[test]
fn cpu_quota_scales_with_millicores() {
    assert_eq!(super::cpu_quota_us(1000), 100_000);
    assert_eq!(super::cpu_quota_us(250), 25_000);
    assert_eq!(super::cpu_quota_us(1), 1000, "kernel minimum is 1 ms");
}
