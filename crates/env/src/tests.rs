//! Crate-level tests of setup/locate that need no network and no real build.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use super::*;

fn data_dir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    t
}

/// Writes a fake tree (just a manifest and a runner) for `lock`.
fn fake_tree(data: &Path, dir: &str, lock: &str, runner_sha: &str, created: u64) -> PathBuf {
    let root = data.join("runtimes").join(dir);
    std::fs::create_dir_all(root.join("opt/kiln")).unwrap();
    std::fs::write(root.join("opt/kiln/runner.py"), "old runner").unwrap();
    let mut m = Manifest::new(
        "default",
        lock::sha256_hex(lock.as_bytes()),
        runner_sha.into(),
        "3.11.7".into(),
        BTreeMap::new(),
    );
    m.created_unix = created;
    m.write(&root).unwrap();
    root
}

#[test]
fn locate_without_a_tree_says_run_setup() {
    let t = data_dir();
    let err = locate(t.path()).unwrap_err();
    assert!(matches!(err, EnvError::NotSetUp { .. }));
    assert!(err.to_string().contains("kiln env setup"), "{err}");
}

#[test]
fn locate_picks_the_newest_tree_for_the_lock() {
    let t = data_dir();
    fake_tree(t.path(), "default-aaaaaaaaaaaaaaaa", DEFAULT_LOCK, "x", 100);
    let newer = fake_tree(t.path(), "default-bbbbbbbbbbbbbbbb", DEFAULT_LOCK, "x", 200);
    fake_tree(t.path(), "default-cccccccccccccccc", "other==1\n", "x", 300);
    std::fs::create_dir_all(t.path().join("runtimes/.staging-zzz")).unwrap();
    let rt = locate(t.path()).unwrap();
    assert_eq!(rt.root, newer);
    assert_eq!(rt.manifest.created_unix, 200);
}

#[test]
fn an_existing_tree_is_reused_and_its_runner_refreshed() {
    let t = data_dir();
    let root = fake_tree(
        t.path(),
        "default-aaaaaaaaaaaaaaaa",
        DEFAULT_LOCK,
        "stale",
        100,
    );
    let rt = existing(&root, DEFAULT_LOCK).unwrap().expect("reused");
    assert!(!rt.runner_is_current());
    let rt = refresh_runner(rt).unwrap();
    assert!(rt.runner_is_current());
    assert_eq!(
        std::fs::read_to_string(root.join("opt/kiln/runner.py")).unwrap(),
        kiln_runner::RUNNER_SOURCE
    );
    assert_eq!(Manifest::read(&root).unwrap(), rt.manifest);
    assert!(
        existing(&root, "other==1\n").unwrap().is_none(),
        "a different lock is not reused"
    );
}

#[test]
fn a_failed_build_leaves_no_staging_directory() {
    let t = data_dir();
    // A "python" that passes the probe but whose files do not exist: the build fails
    // while copying the interpreter, after the staging directory was created.
    let fake = t.path().join("fake-python");
    let probe = r#"{"executable":"/nonexistent/bin/python3.11","base_prefix":"/nonexistent",
        "version":"3.11.99","major_minor":"3.11","stdlib":"/nonexistent/lib/python3.11",
        "platstdlib":"/nonexistent/lib/python3.11","dynload":"/nonexistent/lib-dynload",
        "shared":false,"libdir":null,"soname":null,"has_pip":true}"#;
    std::fs::write(&fake, format!("#!/bin/sh\ncat <<'EOF'\n{probe}\nEOF\n")).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let opts = EnvOptions {
        data_dir: t.path().join("data"),
        python: Some(fake),
        progress: false,
    };
    let err = setup(&opts).unwrap_err();
    assert!(matches!(err, EnvError::Io { op: "copy", .. }), "{err}");
    let left: Vec<_> = std::fs::read_dir(t.path().join("data/runtimes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, [".lock"]);
}

#[test]
fn wrong_python_version_is_reported() {
    let t = data_dir();
    let fake = t.path().join("python3.10");
    let probe = r#"{"executable":"/usr/bin/python3.10","base_prefix":"/usr","version":"3.10.1",
        "major_minor":"3.10","stdlib":"/x","platstdlib":"/x","dynload":"/x","shared":false,
        "libdir":null,"soname":null,"has_pip":true}"#;
    std::fs::write(&fake, format!("#!/bin/sh\ncat <<'EOF'\n{probe}\nEOF\n")).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let opts = EnvOptions {
        data_dir: t.path().join("data"),
        python: Some(fake),
        progress: false,
    };
    let err = setup(&opts).unwrap_err();
    assert!(matches!(err, EnvError::WrongPythonVersion { .. }), "{err}");
}

#[test]
fn each_binary_writes_its_own_runner_beside_the_others() {
    let t = data_dir();
    let root = fake_tree(t.path(), "default-aaaaaaaaaaaaaaaa", DEFAULT_LOCK, "x", 1);
    let other = root.join("opt/kiln/runner-0123456789abcdef.py");
    std::fs::write(&other, "another kiln's runner").unwrap();
    let rt = existing(&root, DEFAULT_LOCK).unwrap().expect("a tree");
    let path = ensure_runner(&rt).unwrap();
    assert!(
        path.starts_with("/opt/kiln/runner-") && path.ends_with(".py"),
        "{path}"
    );
    assert_eq!(
        std::fs::read_to_string(rt.host_path(&path)).unwrap(),
        kiln_runner::RUNNER_SOURCE
    );
    assert_eq!(ensure_runner(&rt).unwrap(), path);
    assert_eq!(
        std::fs::read_to_string(&other).unwrap(),
        "another kiln's runner"
    );
}
