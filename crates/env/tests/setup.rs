//! The real `kiln env setup`, end to end. Needs root (for `chroot`), PyPI (or a warm pip
//! cache) and a few minutes, so it runs only with `KILN_TEST_SETUP=1`:
//!
//! ```sh
//! KILN_TEST_SETUP=1 cargo test -p kiln-env --test setup -- --nocapture
//! ```
//!
//! Set `KILN_TEST_DATA_DIR` to keep the built tree somewhere (it is otherwise a temp dir)
//! and `KILN_TEST_PYTHON` to build from another interpreter than `python3.11` on PATH.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use kiln_env::{locate, setup, EnvOptions, Runtime};

const IMPORT_ALL: &str = "import site; site.addsitedir('/opt/kiln/site-packages'); \
    import numpy, pandas, matplotlib, scipy, seaborn; print(numpy.__version__, pandas.__version__)";

const PLOT: &str = "import io, site; site.addsitedir('/opt/kiln/site-packages'); \
    import matplotlib.pyplot as plt, pandas as pd; \
    ax = pd.DataFrame({'a': [1, 3, 2]}).plot(title='t'); ax.figure.savefig(io.BytesIO(), format='png'); \
    import sys; assert all(p.startswith(('/usr/local/lib/python3', '/opt/kiln/')) for p in sys.path), sys.path; \
    print('ok')";

/// Runs `/usr/local/bin/python3 -I -c code` chrooted into the tree with only the
/// manifest's environment (plus `extra`), as `user` ("uid:gid") if given.
fn chroot_python(rt: &Runtime, code: &str, extra: &[(&str, &str)], user: Option<&str>) -> Output {
    // Resolved on our PATH: the child's environment is cleared.
    let chroot = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("chroot"))
        .find(|p| p.is_file())
        .expect("chroot on PATH");
    let mut cmd = Command::new(chroot);
    if let Some(u) = user {
        cmd.arg(format!("--userspec={u}"));
    }
    cmd.arg(&rt.root)
        .args([&rt.manifest.interpreter, "-I", "-c", code])
        .env_clear();
    cmd.envs(&rt.manifest.env).envs(extra.iter().copied());
    cmd.output().expect("run chroot")
}

fn check(out: &Output) -> (String, String) {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{}\nstdout: {stdout}\nstderr: {stderr}",
        out.status
    );
    (stdout, stderr)
}

fn du(path: &Path) -> String {
    let out = Command::new("du").arg("-sh").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("?")
        .to_string()
}

#[test]
fn real_setup_builds_a_working_tree() {
    if std::env::var_os("KILN_TEST_SETUP").as_deref() != Some("1".as_ref()) {
        eprintln!("skipped: set KILN_TEST_SETUP=1 to run the real setup");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data_dir =
        std::env::var_os("KILN_TEST_DATA_DIR").map_or_else(|| tmp.path().to_path_buf(), Into::into);
    let python = std::env::var_os("KILN_TEST_PYTHON").map(Into::into);
    let opts = EnvOptions {
        data_dir: data_dir.clone(),
        python,
        progress: true,
    };

    let t = Instant::now();
    let rt = setup(&opts).expect("cold setup");
    let cold = t.elapsed();
    let t = Instant::now();
    let again = setup(&opts).expect("warm setup");
    let warm = t.elapsed();
    assert_eq!(again.root, rt.root);
    assert_eq!(again.manifest, rt.manifest, "a warm setup is a no-op");
    assert_eq!(locate(&data_dir).expect("locate").root, rt.root);
    eprintln!(
        "cold setup {cold:.1?}, warm setup {warm:.1?}, tree {} at {}",
        du(&rt.root),
        rt.root.display()
    );

    // No staging directory left behind.
    let leftovers: Vec<_> = std::fs::read_dir(data_dir.join("runtimes"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != ".lock")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The pinned libraries import inside the tree, with nothing from the host.
    let (stdout, _) = check(&chroot_python(&rt, IMPORT_ALL, &[], None));
    assert_eq!(stdout.trim(), "1.26.4 1.5.3");

    // ...also as an unprivileged uid without a passwd entry (the tree is world-readable).
    // matplotlib and scipy.stats are left out: they need a home or a temp dir, which the
    // sandbox provides.
    let code = "import site; site.addsitedir('/opt/kiln/site-packages'); \
        import numpy, pandas, scipy.linalg; print(numpy.__version__, pandas.__version__)";
    let (stdout, _) = check(&chroot_python(
        &rt,
        code,
        &[],
        Some("1879048192:1879048192"),
    ));
    assert_eq!(stdout.trim(), "1.26.4 1.5.3");

    // matplotlib with a writable MPLCONFIGDIR seeded from opt/kiln/mpl: no font-cache
    // warning and no rebuild. The scratch dir lives in the (test-owned) tree.
    let scratch = rt.root.join("mplconfig-test");
    std::fs::create_dir(&scratch).unwrap();
    let mut seeded = Vec::new();
    for e in std::fs::read_dir(rt.host_path(&rt.manifest.mpl_cache)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), scratch.join(e.file_name())).unwrap();
        seeded.push((
            scratch.join(e.file_name()),
            std::fs::read(e.path()).unwrap(),
        ));
    }
    assert_eq!(seeded.len(), 1, "exactly one fontlist json");
    let out = chroot_python(&rt, PLOT, &[("MPLCONFIGDIR", "/mplconfig-test")], None);
    let unchanged = seeded
        .iter()
        .all(|(p, bytes)| std::fs::read(p).ok().as_ref() == Some(bytes));
    std::fs::remove_dir_all(&scratch).ok();
    let (stdout, stderr) = check(&out);
    assert_eq!(stdout.trim(), "ok");
    assert!(stderr.trim().is_empty(), "matplotlib complained: {stderr}");
    assert!(
        unchanged,
        "matplotlib rewrote the seeded font cache (it rebuilt it)"
    );
}
