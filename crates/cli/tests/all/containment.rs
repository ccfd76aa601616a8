//! Hostile code meets the walls: time, memory, processes, disk, output,
//! network, host files, secrets, escapes through planted files, syscalls.

use crate::support::*;
use std::io::Read;
use std::net::TcpListener;
use std::time::Duration;

#[test]
fn endless_loop_times_out_and_leaves_nothing() {
    let (v, _) = run_with("while True:\n    pass", &["--timeout", "1"], &[]);
    expect_outcome(&v, "timeout");
    assert!(
        v["limits_hit"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l == "wall"),
        "{v}"
    );
    assert_nothing_left_by("loop", &v);
}

#[test]
fn loop_ignoring_interrupts_is_killed_after_the_grace_period() {
    let code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass";
    let (v, _) = run_with(code, &["--timeout", "1"], &[]);
    expect_outcome(&v, "timeout");
    assert_nothing_left_by("sigign", &v);
}

#[test]
fn memory_bomb_hits_the_memory_limit() {
    let (v, _) = run_with(
        "x = bytearray(1 << 30)\nx[::4096] = b'x' * len(x[::4096])\nprint('survived')",
        &["--memory", "128"],
        &[],
    );
    expect_outcome(&v, "memory_limit");
    assert!(!stdout(&v).contains("survived"));
    assert_nothing_left_by("mem", &v);
}

#[test]
fn fork_bomb_is_contained_by_the_pids_limit() {
    let code = r#"
import os, time
children = 0
for _ in range(500):
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
    let (v, _) = run_with(code, &["--timeout", "20"], &[]);
    expect_outcome(&v, "ok");
    let out = stdout(&v);
    assert!(out.contains("fork refused"), "{out}");
    let children: u32 = out
        .split("children")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        children < 64,
        "{children} children under a pids limit of 64"
    );
    assert_nothing_left_by("forkbomb", &v);
}

#[test]
fn filling_the_disk_is_contained() {
    let code = r#"
import errno
written = 0
try:
    with open('/work/fill', 'wb') as f:
        while True:
            f.write(b'\0' * (1 << 20))
            f.flush()
            written += 1
except OSError as e:
    print('stopped:', errno.errorcode[e.errno], 'after', written, 'MiB')
"#;
    let v = run(code);
    expect_outcome(&v, "ok");
    let out = stdout(&v);
    assert!(
        out.contains("stopped: ENOSPC") || out.contains("stopped: EFBIG"),
        "{out}"
    );
    let mib: u64 = out
        .split("after ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(mib <= 256, "wrote {mib} MiB into a 256 MiB /work");
}

#[test]
fn huge_output_is_cut_at_the_cap() {
    let code =
        "import sys\nchunk = 'x' * (1 << 20)\nfor _ in range(100):\n    sys.stdout.write(chunk)";
    let (v, _) = run_with(code, &["--timeout", "20"], &[]);
    expect_outcome(&v, "output_limit");
    assert_eq!(v["truncated"], true);
    let out = stdout(&v);
    let payload = out.matches('x').count();
    assert!(
        payload <= 1 << 20,
        "{payload} bytes delivered past a 1 MiB cap"
    );
    assert!(out.contains("[kiln: output truncated"), "no marker");
}

#[test]
fn raw_fd_output_is_capped_too() {
    let code = "import os\nchunk = b'q' * (1 << 20)\nfor _ in range(50):\n    os.write(1, chunk)";
    let (v, _) = run_with(code, &["--timeout", "20"], &[]);
    expect_outcome(&v, "output_limit");
    assert!(stdout(&v).matches('q').count() <= 1 << 20);
}

#[test]
fn tcp_to_a_host_listener_fails_and_nothing_arrives() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let code = format!(
        "import socket\ntry:\n    s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n    print('CONNECTED')\nexcept OSError as e:\n    print('refused:', e)\n"
    );
    let v = run_open(&code);
    expect_outcome(&v, "ok");
    assert!(stdout(&v).contains("refused:"), "{}", stdout(&v));
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        listener.accept().is_err(),
        "the host listener received a connection"
    );
}

#[test]
fn host_files_and_caller_env_are_invisible() {
    let dir = tempfile::Builder::new()
        .prefix("kiln-canary")
        .tempdir_in("/tmp")
        .unwrap();
    let canary = dir.path().join("canary.txt");
    std::fs::write(&canary, "CANARY-7d1f").unwrap();
    let code = format!(
        "import os\nprint('file', os.path.exists({path:?}))\nprint('env', os.environ.get('KILN_CANARY_ENV'))\nprint('tmp', os.listdir('/tmp'))",
        path = canary.display().to_string()
    );
    let (v, _) = run_with(&code, &[], &[("KILN_CANARY_ENV", "secret-env-7d1f")]);
    expect_outcome(&v, "ok");
    let out = stdout(&v);
    assert!(out.contains("file False"), "{out}");
    assert!(out.contains("env None"), "{out}");
    assert!(!out.contains("kiln-canary"), "{out}");
}

#[test]
fn double_forked_daemon_is_gone_after_the_execution() {
    let code = r#"
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(300)
    os._exit(0)
time.sleep(0.3)
print('parent done')
"#;
    let v = run(code);
    expect_outcome(&v, "ok");
    assert!(stdout(&v).contains("parent done"));
    assert_nothing_left_by("daemon", &v);
}

#[test]
fn planted_symlink_and_fifo_never_reach_host_files() {
    let dir = tempfile::Builder::new()
        .prefix("kiln-canary")
        .tempdir_in("/tmp")
        .unwrap();
    let canary = dir.path().join("canary.txt");
    std::fs::write(&canary, "CANARY-SYMLINK").unwrap();
    let before = std::fs::metadata(&canary).unwrap();
    let code = format!(
        "import os\nos.symlink({p:?}, '/work/out/link.txt')\nos.symlink('/etc/passwd', '/work/out/passwd')\nos.mkfifo('/work/out/pipe')\nopen('/work/out/real.txt', 'w').write('real')\n",
        p = canary.display().to_string()
    );
    let (v, _) = run_with(&code, &["--timeout", "10"], &[]);
    expect_outcome(&v, "ok");
    let files = events(&v, "file");
    let names: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(names, ["real.txt"], "{v}");
    let all = serde_json::to_string(&v).unwrap();
    assert!(
        !all.contains("CANARY"),
        "canary content crossed the boundary"
    );
    let mut content = String::new();
    std::fs::File::open(&canary)
        .unwrap()
        .read_to_string(&mut content)
        .unwrap();
    assert_eq!(content, "CANARY-SYMLINK");
    assert_eq!(
        std::fs::metadata(&canary).unwrap().modified().unwrap(),
        before.modified().unwrap()
    );
}

#[test]
fn forbidden_syscalls_fail_cleanly() {
    let code = r#"
import ctypes, errno, socket
libc = ctypes.CDLL(None, use_errno=True)
r = libc.ptrace(0, 0, 0, 0)
print('ptrace', r, errno.errorcode.get(ctypes.get_errno()))
try:
    socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    print('inet ok')
except OSError as e:
    print('inet', errno.errorcode.get(e.errno))
a, b = socket.socketpair()
print('unix ok')
r = libc.unshare(0x10000000)
print('unshare', r, errno.errorcode.get(ctypes.get_errno()))
r = libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)
print('mount', r, errno.errorcode.get(ctypes.get_errno()))
"#;
    let v = run_open(code);
    expect_outcome(&v, "ok");
    let out = stdout(&v);
    assert!(out.contains("ptrace -1 EPERM"), "{out}");
    assert!(out.contains("inet E"), "{out}");
    assert!(!out.contains("inet ok"), "{out}");
    assert!(out.contains("unix ok"), "{out}");
    assert!(out.contains("unshare -1 EPERM"), "{out}");
    assert!(out.contains("mount -1 EPERM"), "{out}");
}

#[test]
fn fatal_syscall_kills_with_reason_seccomp() {
    // init_module is on the kill list: no data code ever loads a kernel module.
    let v = run_open("import ctypes\nctypes.CDLL(None).syscall(175, 0, 0, 0)\nprint('still here')");
    expect_outcome(&v, "killed");
    assert!(v["reason"].as_str().unwrap().contains("seccomp"), "{v}");
    assert!(!stdout(&v).contains("still here"));
}

#[test]
fn oversized_code_is_rejected_before_any_sandbox() {
    let code = format!("x = 1\n# {}\n", "a".repeat(200 * 1024));
    let v = run(&code);
    expect_outcome(&v, "rejected");
    assert!(v["reason"].as_str().unwrap().contains("limit"), "{v}");
    assert!(v["isolation"]["uid"].is_null(), "a sandbox was made: {v}");
}

#[test]
fn datasets_are_read_only_and_only_what_the_policy_names() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("sales");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("x.csv"), "a,b\n1,2\n").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "NEXT-TO-THE-DATASET").unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // World-writable on the host: only the read-only mount stops writes.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(data.join("x.csv"), std::fs::Permissions::from_mode(0o666)).unwrap();
    let config = dir.path().join("kiln.toml");
    std::fs::write(
        &config,
        format!(
            "[sandbox.datasets]\nsales = {:?}\n",
            data.display().to_string()
        ),
    )
    .unwrap();
    let code = r#"
import pandas as pd, os, errno
print(pd.read_csv('/data/sales/x.csv').sum().tolist())
for path in ['/data/sales/new.txt', '/data/sales/x.csv']:
    try:
        open(path, 'a')
    except OSError as e:
        print('write', errno.errorcode[e.errno])
print(sorted(os.listdir('/data')), os.path.exists('/data/secret.txt'), os.path.exists('/data/sales/../secret.txt'))
"#;
    let config = config.display().to_string();
    for spawner in [&[][..], &["--zygote"][..]] {
        let mut args = vec!["--dataset", "sales"];
        args.extend_from_slice(spawner);
        let (v, _) = run_with(code, &args, &[("KILN_CONFIG", &config)]);
        expect_outcome(&v, "ok");
        assert_eq!(
            stdout(&v),
            "[1, 2]\nwrite EROFS\nwrite EROFS\n['sales'] False False\n",
            "{spawner:?}"
        );
    }
    let (v, _) = run_with(
        "print(1)",
        &["--dataset", "other"],
        &[("KILN_CONFIG", &config)],
    );
    expect_outcome(&v, "rejected");
    assert!(v["reason"].as_str().unwrap().contains("sales"), "{v}");
}
