//! Running `kiln` and reading its JSON result.

use serde_json::Value;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// Builds the runtime once per test run (a no-op when it exists), so tests
/// running in parallel never race to provision it on first use.
fn ensure_runtime() {
    static READY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    READY.get_or_init(|| {
        let out = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(["env", "setup"])
            .output()
            .expect("spawn kiln");
        assert!(
            out.status.success(),
            "kiln env setup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

pub fn kiln() -> Command {
    ensure_runtime();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.env("KILN_LOG", "warn");
    cmd
}

/// Runs `kiln run --json -` with `code` on stdin and extra args.
pub fn run_with(code: &str, args: &[&str], envs: &[(&str, &str)]) -> (Value, Output) {
    let mut cmd = kiln();
    cmd.args(["run", "--json"]).args(args);
    // `.ci/run` runs the whole suite a second time with every sandbox forked
    // from the zygote.
    if std::env::var("KILN_TEST_SPAWNER").as_deref() == Ok("zygote") && !args.contains(&"--zygote")
    {
        cmd.arg("--zygote");
    }
    cmd.arg("-");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln");
    // kiln may answer (a rejected limit, a broken config) and exit before it
    // reads its input; a closed pipe here is not the test's failure.
    match child.stdin.take().unwrap().write_all(code.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other.unwrap(),
    }
    let output = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let value: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "kiln printed no JSON ({e}); status {:?}\nstdout: {text}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (value, output)
}

/// A kiln.toml with an environment `open` that denies no module: for tests
/// of the sandbox itself, which must hold without the policy's speed bumps
/// (docs/policy.md).
pub fn open_config() -> &'static str {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let path = format!("{}/kiln-open.toml", env!("CARGO_TARGET_TMPDIR"));
        std::fs::write(
            &path,
            "[environments.open]\ndescription = \"no import checks: tests of the sandbox wall\"\n\
             [environments.open.libraries]\nnumpy = \"1.26.4\"\npandas = \"1.5.3\"\n\
             matplotlib = { version = \"3.8.4\", import = [\"matplotlib\", \"mpl_toolkits\", \"pylab\"] }\n\
             scipy = \"1.12.0\"\nseaborn = \"0.13.2\"\n",
        )
        .expect("write the open test config");
        path
    })
}

/// Runs `code` in the `open` environment: no import check, no import hook.
pub fn run_open(code: &str) -> Value {
    run_with(
        code,
        &["--environment", "open"],
        &[("KILN_CONFIG", open_config())],
    )
    .0
}

pub fn run(code: &str) -> Value {
    run_with(code, &[], &[]).0
}

pub fn outcome(v: &Value) -> &str {
    v["outcome"].as_str().unwrap_or("?")
}

pub fn stream(v: &Value, kind: &str) -> String {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect()
}

pub fn stdout(v: &Value) -> String {
    stream(v, "stdout")
}

pub fn events<'a>(v: &'a Value, kind: &str) -> Vec<&'a Value> {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .collect()
}

/// Asserts the outcome, showing the whole result when it differs.
#[track_caller]
pub fn expect_outcome(v: &Value, want: &str) {
    assert_eq!(
        outcome(v),
        want,
        "unexpected outcome; result: {}",
        serde_json::to_string_pretty(v).unwrap()
    );
}

/// The uid range sandboxes run in (kiln's defaults).
pub const UID_BASE: u32 = 1_879_048_192;
pub const UID_COUNT: u32 = 65_536;

/// Host processes whose uid is in the sandbox range.
pub fn sandbox_processes() -> Vec<(u32, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let uid = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|u| u.parse::<u32>().ok());
        if let Some(uid) = uid {
            if (UID_BASE..UID_BASE + UID_COUNT).contains(&uid) {
                found.push((pid, uid));
            }
        }
    }
    found
}

/// kiln's sandbox cgroups that still exist (v1 memory controller or v2).
pub fn sandbox_cgroups() -> Vec<PathBuf> {
    let mut found = Vec::new();
    for parent in [
        "/sys/fs/cgroup/memory/kiln",
        "/sys/fs/cgroup/pids/kiln",
        "/sys/fs/cgroup/kiln",
    ] {
        if let Ok(rd) = std::fs::read_dir(parent) {
            for e in rd.flatten() {
                if e.path().is_dir() && e.file_name().to_string_lossy().starts_with('k') {
                    found.push(e.path());
                }
            }
        }
    }
    found
}

/// Nothing of finished sandboxes may remain: no process, no cgroup of ours.
/// (Other tests run in parallel, so only sandboxes whose owner is dead count.)
#[track_caller]
pub fn assert_nothing_left_by(pid_marker: &str, v: &Value) {
    let uid = v["isolation"]["uid"]
        .as_u64()
        .expect("result names its uid") as u32;
    let procs: Vec<_> = sandbox_processes()
        .into_iter()
        .filter(|(_, u)| *u == uid)
        .collect();
    let _ = pid_marker;
    // Another sandbox may already have leased the same uid; that is
    // unlikely (random slot among 65536) and would show as a live process
    // of a *different* run, so report rather than guess.
    assert!(
        procs.is_empty(),
        "processes of uid {uid} left behind: {procs:?}"
    );
    // The sandbox's cgroup is named k<slot>-<kiln pid>-<random>; the kiln
    // process that made it has exited, so nothing of that name may remain.
    let slot = uid - UID_BASE;
    let left: Vec<_> = sandbox_cgroups()
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let mut parts = name.split('-');
            let same_slot = parts.next() == Some(&format!("k{slot}"));
            let owner: Option<u32> = parts.next().and_then(|p| p.parse().ok());
            same_slot
                && owner.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    assert!(left.is_empty(), "cgroups left behind: {left:?}");
}

/// The zygote template's cgroup of the kiln process `kiln_pid` (named
/// `zygote-<pid>-<random>`) must be gone once that process has exited.
#[track_caller]
pub fn assert_no_zygote_left_by(kiln_pid: u32) {
    let prefix = format!("zygote-{kiln_pid}-");
    let left: Vec<_> = [
        "/sys/fs/cgroup/memory/kiln",
        "/sys/fs/cgroup/pids/kiln",
        "/sys/fs/cgroup/kiln",
    ]
    .into_iter()
    .filter_map(|parent| std::fs::read_dir(parent).ok())
    .flat_map(|rd| rd.flatten())
    .map(|e| e.path())
    .filter(|p| {
        p.is_dir()
            && p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&prefix)
    })
    .collect();
    assert!(
        left.is_empty(),
        "the zygote's cgroup was left behind: {left:?}"
    );
}

pub fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("valid base64")
}
