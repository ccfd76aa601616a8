//! The container backend on real engines: Docker with runc, Docker with
//! gVisor (runsc), Podman (runc) through its Docker-compatible socket.
//! The same hostile code as `containment.rs` and the in-sandbox probe run on
//! each, with what each backend can promise written down in [`Expect`]
//! (docs/docker.md explains the differences).
//!
//! They need the engines `.ci/run` starts (dockerd with runsc registered,
//! `podman system service` on /run/podman/podman.sock) and kiln's image on
//! each (`kiln image build`, `kiln image build --podman`).

use crate::support::*;
use serde_json::Value;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One backend under test and what it promises.
struct Expect {
    /// `--backend`/`--runtime` arguments.
    args: &'static [&'static str],
    /// The engine's socket (to look for leftover containers).
    socket: &'static str,
    /// `isolation.backend` in results.
    reported: &'static str,
    /// The kernel's seccomp shows in /proc/self/status (gVisor has its
    /// own kernel; kiln's profile is applied by its sentry).
    seccomp_field: bool,
    /// /proc/self/status shows NoNewPrivs (not under gVisor).
    no_new_privs_field: bool,
    /// The pids limit stops a fork bomb (gVisor does not enforce it).
    pids_limit: bool,
    /// A syscall on kiln's kill list kills the process (gVisor's 2022
    /// sentry has no KILL_PROCESS: EPERM instead).
    kill_list_kills: bool,
    /// The cgroup namespace is private (Podman's API ignores it on v1).
    cgroup_namespaced: bool,
}

const DOCKER_RUNC: Expect = Expect {
    args: &["--backend", "docker", "--runtime", "runc"],
    socket: "/var/run/docker.sock",
    reported: "docker+runc",
    seccomp_field: true,
    no_new_privs_field: true,
    pids_limit: true,
    kill_list_kills: true,
    cgroup_namespaced: true,
};

const DOCKER_RUNSC: Expect = Expect {
    args: &["--backend", "docker", "--runtime", "runsc"],
    socket: "/var/run/docker.sock",
    reported: "docker+runsc",
    seccomp_field: true,
    no_new_privs_field: false,
    pids_limit: false,
    kill_list_kills: false,
    cgroup_namespaced: true,
};

const PODMAN: Expect = Expect {
    args: &["--backend", "podman", "--runtime", "runc"],
    socket: "/run/podman/podman.sock",
    reported: "podman+runc",
    seccomp_field: true,
    no_new_privs_field: true,
    pids_limit: true,
    kill_list_kills: true,
    cgroup_namespaced: false,
};

/// Runs `kiln run --json` on backend `b`; the result and kiln's pid. These
/// are tests of the wall, so they run in the `open` environment, without the
/// policy's import checks (tests/all/support.rs).
fn run_on(b: &Expect, code: &str, extra: &[&str]) -> (Value, u32) {
    let mut child = kiln()
        .env("KILN_CONFIG", open_config())
        .args(["run", "--json", "--environment", "open"])
        .args(b.args)
        .args(extra)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn kiln");
    let pid = child.id();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(code.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "kiln printed no JSON ({e}); stdout: {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    if v["outcome"] == "unavailable" {
        panic!(
            "{} is unavailable on this host: {}\n(.ci/run starts the engines and builds the images)",
            b.reported, v["reason"]
        );
    }
    assert_eq!(v["isolation"]["backend"], b.reported, "{v}");
    (v, pid)
}

/// Containers (any state) whose labels name kiln process `pid` as owner.
fn containers_of(b: &Expect, pid: u32) -> Vec<String> {
    let out = Command::new("docker")
        .args(["-H", &format!("unix://{}", b.socket)])
        .args(["ps", "-a", "-q", "--filter"])
        .arg(format!("label=kiln.owner.pid={pid}"))
        .output()
        .expect("the docker CLI (to observe the engine)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

#[track_caller]
fn assert_no_container_left(b: &Expect, pid: u32) {
    let left = containers_of(b, pid);
    assert!(left.is_empty(), "containers left by kiln {pid}: {left:?}");
}

fn probe(b: &Expect) {
    let (v, pid) = run_on(b, include_str!("probe.py"), &[]);
    expect_outcome(&v, "ok");
    let p: Value = serde_json::from_str(stdout(&v).trim()).expect("probe prints JSON");
    // The unprivileged sandbox user, no capability at all.
    assert_eq!(p["uid"], 65534);
    assert_eq!(p["euid"], 65534);
    assert_eq!(p["groups"], serde_json::json!([65534]), "only its own gid");
    for set in ["CapEff", "CapPrm", "CapInh", "CapBnd"] {
        assert_eq!(p[set], "0000000000000000", "{set}");
    }
    if b.no_new_privs_field {
        assert_eq!(p["NoNewPrivs"], "1");
    }
    if b.seccomp_field {
        assert_eq!(p["Seccomp"], "2");
    }
    assert_eq!(v["isolation"]["seccomp"], true);
    assert!(
        v["isolation"]["landlock_abi"].is_null(),
        "no Landlock in containers"
    );
    // No network but loopback; kiln's hostname.
    assert_eq!(p["interfaces"], serde_json::json!(["lo"]));
    assert_eq!(p["hostname"], "kiln");
    // A read-only root; /work writable; nothing of the host's tree.
    assert_eq!(p["root_writable"], false);
    assert_eq!(p["usr_writable"], false);
    assert_eq!(p["work_writable"], true);
    for path in [
        "/root",
        "/home",
        "/boot",
        "/srv",
        "/var/lib/kiln",
        "/etc/shadow",
        "/etc/ssh",
    ] {
        assert_eq!(p["host_paths"][path], false, "{path} is visible");
    }
    for m in p["mounts"].as_array().unwrap() {
        let target = m["target"].as_str().unwrap();
        let opts: Vec<&str> = m["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        if ["/work", "/tmp"].contains(&target) {
            assert_eq!(m["fstype"], "tmpfs", "{target}");
            assert!(opts.contains(&"noexec"), "{target}: {opts:?}");
        }
        if target == "/" {
            assert!(opts.contains(&"ro"), "the root is writable: {opts:?}");
        }
        // Anything writable is noexec (no place to drop a binary and run it).
        // (/proc and /dev hold the engine's masks and device nodes.)
        if opts.contains(&"rw") && !target.starts_with("/proc") && !target.starts_with("/dev") {
            assert!(
                opts.contains(&"noexec"),
                "{target} is writable and exec-able: {opts:?}"
            );
        }
    }
    // The engine's init is PID 1; the relay and the runner follow.
    let pids = p["proc_pids"].as_array().unwrap();
    assert!(pids.len() <= 4, "processes in the sandbox: {pids:?}");
    assert!(pids.iter().all(|pid| pid.as_u64().unwrap() < 100));
    // Only the fds kiln passes (0-3) and the probe's own listing.
    let fds: Vec<u64> = p["fds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_u64().unwrap())
        .collect();
    assert!(fds.starts_with(&[0, 1, 2, 3]) && fds.len() <= 5, "{fds:?}");
    let env = p["environ"].as_object().unwrap();
    assert!(!env.contains_key("KILN_TEST_SECRET"));
    for key in env.keys() {
        let engine_added = ["HOSTNAME", "TERM", "container"].contains(&key.as_str());
        let kiln_set = [
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
        assert!(
            engine_added || kiln_set,
            "unexpected environment variable {key}"
        );
    }
    let limits = &p["limits"];
    assert_eq!(limits["core"], serde_json::json!([0, 0]));
    assert_eq!(limits["nofile"], serde_json::json!([256, 256]));
    assert_eq!(
        limits["fsize"],
        serde_json::json!([256u64 << 20, 256u64 << 20])
    );
    if b.cgroup_namespaced {
        for line in limits["cgroup"].as_array().unwrap() {
            assert!(
                line.as_str().unwrap().ends_with(":/"),
                "cgroup not namespaced: {line}"
            );
        }
    }
    assert_no_container_left(b, pid);
}

fn prints_plots_and_keeps_raw_output(b: &Expect) {
    let code =
        "import os, sys\nprint('hello')\nsys.stderr.write('warn\\n')\nos.write(1, b'raw\\n')\n\
import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()\n6 * 7";
    let (v, pid) = run_on(b, code, &[]);
    expect_outcome(&v, "ok");
    let out = stdout(&v);
    assert!(out.contains("hello") && out.contains("raw"), "{out}");
    assert!(stream(&v, "stderr").contains("warn"));
    let displays = events(&v, "display");
    assert!(
        displays.iter().any(|d| d["data"]["image/png"].is_string()),
        "no PNG: {v}"
    );
    assert!(displays.iter().any(|d| d["data"]["text/plain"] == "42"));
    assert_no_container_left(b, pid);
}

fn endless_loop_times_out(b: &Expect) {
    let (v, pid) = run_on(b, "while True:\n    pass", &["--timeout", "1"]);
    expect_outcome(&v, "timeout");
    assert!(
        v["limits_hit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "wall"),
        "{v}"
    );
    assert_no_container_left(b, pid);
    let code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass";
    let (v, pid) = run_on(b, code, &["--timeout", "1"]);
    expect_outcome(&v, "timeout");
    assert_no_container_left(b, pid);
}

fn memory_bomb_hits_the_limit(b: &Expect) {
    let code = "x = bytearray(1 << 30)\nx[::4096] = b'x' * len(x[::4096])\nprint('survived')";
    let (v, pid) = run_on(b, code, &["--memory", "128"]);
    expect_outcome(&v, "memory_limit");
    assert!(!stdout(&v).contains("survived"));
    assert_no_container_left(b, pid);
}

fn fork_bomb(b: &Expect) {
    let code = r#"
import os, time
children = 0
for _ in range(200):
    try:
        pid = os.fork()
    except OSError as e:
        print("fork refused:", e.strerror)
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    children += 1
print("children", children)
"#;
    let (v, pid) = run_on(b, code, &["--timeout", "30"]);
    if !b.pids_limit {
        // gVisor: no pids limit on sandboxed processes; 200 interpreters
        // end at the memory limit instead, or fit under it.
        assert!(
            ["ok", "memory_limit"].contains(&outcome(&v)),
            "{}",
            serde_json::to_string_pretty(&v).unwrap()
        );
        assert_no_container_left(b, pid);
        return;
    }
    expect_outcome(&v, "ok");
    let out = stdout(&v);
    {
        assert!(out.contains("fork refused"), "{out}");
        let n: u32 = out
            .split("children")
            .nth(1)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(n < 64, "{n} children under a pids limit of 64");
    }
    // Either way the sleeping children die with the container.
    assert_no_container_left(b, pid);
}

fn disk_and_output_are_capped(b: &Expect) {
    let code = "import errno\nn = 0\ntry:\n    with open('/work/fill', 'wb') as f:\n        while True:\n            f.write(b'\\0' * (1 << 20)); f.flush(); n += 1\nexcept OSError as e:\n    print('stopped', errno.errorcode[e.errno], n)";
    let (v, _) = run_on(b, code, &["--timeout", "30"]);
    expect_outcome(&v, "ok");
    let out = stdout(&v);
    assert!(
        out.contains("stopped ENOSPC") || out.contains("stopped EFBIG"),
        "{out}"
    );
    let mib: u64 = out.split_whitespace().last().unwrap().parse().unwrap();
    assert!(mib <= 256, "{mib} MiB in a 256 MiB /work");
    let code = "import os\nchunk = b'q' * (1 << 20)\nfor _ in range(50):\n    os.write(1, chunk)";
    let (v, pid) = run_on(b, code, &["--timeout", "20"]);
    expect_outcome(&v, "output_limit");
    assert!(stdout(&v).matches('q').count() <= 1 << 20);
    assert_no_container_left(b, pid);
}

fn no_network_and_forbidden_syscalls(b: &Expect) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let code = format!(
        r#"
import ctypes, errno, socket
libc = ctypes.CDLL(None, use_errno=True)
for fam in (socket.AF_INET, socket.AF_INET6):
    try:
        s = socket.socket(fam, socket.SOCK_STREAM)
        s.settimeout(2)
        s.connect(('127.0.0.1', {port}))
        print('connected')
    except OSError as e:
        print('inet refused', errno.errorcode.get(e.errno))
a, b = socket.socketpair()
print('unix ok')
r = libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)
print('mount', r, errno.errorcode.get(ctypes.get_errno()))
r = libc.unshare(0x10000000)
print('unshare', r, errno.errorcode.get(ctypes.get_errno()))
"#
    );
    let (v, _) = run_on(b, &code, &[]);
    expect_outcome(&v, "ok");
    let out = stdout(&v);
    assert!(!out.contains("connected"), "{out}");
    assert_eq!(out.matches("inet refused").count(), 2, "{out}");
    assert!(out.contains("unix ok"), "{out}");
    assert!(out.contains("mount -1 EPERM"), "{out}");
    assert!(out.contains("unshare -1 EPERM"), "{out}");
    assert!(listener.accept().is_err(), "a connection reached the host");
    // init_module: on the kill list.
    let (v, pid) = run_on(
        b,
        "import ctypes\nctypes.CDLL(None).syscall(175, 0, 0, 0)\nprint('still here')",
        &[],
    );
    if b.kill_list_kills {
        expect_outcome(&v, "killed");
        assert!(v["reason"].as_str().unwrap().contains("seccomp"), "{v}");
    } else {
        expect_outcome(&v, "ok");
    }
    assert_no_container_left(b, pid);
}

/// A session (`kiln repl`) keeps its state across cells; Ctrl-C
/// interrupts a cell through the engine API and the session goes on.
fn session_keeps_state_and_survives_an_interrupt(b: &Expect) {
    let mut child = kiln()
        .args(["repl", "--json"])
        .args(b.args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().unwrap()));
    let mut cell = |code: &str| -> Value {
        writeln!(stdin, "{}", serde_json::to_string(code).unwrap()).unwrap();
        stdin.flush().unwrap();
        serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap()
    };
    expect_outcome(&cell("x = 7\nopen('/work/a.txt', 'w').write('kept')"), "ok");
    assert_eq!(containers_of(b, pid).len(), 1, "one container per session");
    // The interrupt arrives while the next cell runs.
    let interrupter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap();
    });
    let v = cell("import time\nwhile True:\n    time.sleep(0.01)");
    interrupter.join().unwrap();
    expect_outcome(&v, "interrupted");
    let v = cell("print(x * 6, open('/work/a.txt').read())");
    expect_outcome(&v, "ok");
    assert_eq!(stdout(&v), "42 kept\n");
    drop(stdin);
    assert!(child.wait().unwrap().success());
    assert_no_container_left(b, pid);
}

/// kiln dies by SIGKILL mid-execution: its container keeps running (a
/// killed client does not stop a container); the next kiln removes it.
fn a_killed_kiln_is_reaped_by_the_next(b: &Expect) {
    let mut child = kiln()
        .args(["run", "--json"])
        .args(b.args)
        .args(["--timeout", "60", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"import time\nprint('started', flush=True)\ntime.sleep(120)")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while containers_of(b, pid).is_empty() {
        assert!(Instant::now() < deadline, "no container appeared");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(
        containers_of(b, pid).len(),
        1,
        "the orphan outlives its kiln"
    );
    let (v, _) = run_on(b, "print(1)", &[]);
    expect_outcome(&v, "ok");
    assert_no_container_left(b, pid);
}

/// gVisor sandboxes are heavy on 2 cores (a Sentry and a gofer each): its
/// checks run one at a time.
fn gvisor_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

macro_rules! on_each_backend {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            #[test]
            fn docker_runc() {
                super::$check(&super::DOCKER_RUNC)
            }
            #[test]
            fn docker_runsc() {
                let _one_at_a_time = super::gvisor_lock();
                super::$check(&super::DOCKER_RUNSC)
            }
            #[test]
            fn podman() {
                super::$check(&super::PODMAN)
            }
        }
    )*};
}

on_each_backend!(
    probe,
    prints_plots_and_keeps_raw_output,
    endless_loop_times_out,
    memory_bomb_hits_the_limit,
    fork_bomb,
    disk_and_output_are_capped,
    no_network_and_forbidden_syscalls,
    session_keeps_state_and_survives_an_interrupt,
    a_killed_kiln_is_reaped_by_the_next,
);

/// No engine socket: `unavailable`, with the fix in the message.
#[test]
fn no_socket_is_unavailable_with_a_hint() {
    let (v, out) = run_with(
        "print(1)",
        &["--backend", "docker"],
        &[("DOCKER_HOST", "unix:///nonexistent/docker.sock")],
    );
    expect_outcome(&v, "unavailable");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("/nonexistent/docker.sock"), "{reason}");
    assert!(
        reason.contains("Hint:") && reason.contains("dockerd"),
        "{reason}"
    );
    assert_ne!(out.status.code(), Some(0));
}

/// With a fallback order, an unavailable docker falls back to the next
/// backend, and the result says which isolation it got.
#[test]
fn fallback_runs_on_the_next_backend_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("kiln.toml");
    std::fs::write(
        &config,
        "[backends]\nfallback = [\"docker+runsc\", \"native\"]\ndocker_socket = \"/nonexistent/docker.sock\"\n",
    )
    .unwrap();
    let config = config.to_str().unwrap().to_string();
    let (v, out) = run_with(
        "print('ran')",
        &[
            "--config",
            &config,
            "--backend",
            "docker",
            "--runtime",
            "runc",
        ],
        &[],
    );
    expect_outcome(&v, "ok");
    assert_eq!(stdout(&v), "ran\n");
    assert_eq!(v["isolation"]["backend"], "native");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("falling back to docker+runsc"), "{stderr}");
    assert!(stderr.contains("falling back to native"), "{stderr}");
}
