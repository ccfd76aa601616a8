//! Real-kernel tests of the seccomp policy. Each test forks; the child sets
//! `no_new_privs`, installs the policy, makes one probe and `_exit`s with
//! the probe's errno (0 = success). The parent asserts on the exit code or
//! on the signal. After fork the child makes raw syscalls only: the test
//! binary is multi-threaded, so the allocator and locks are off limits.

use std::ffi::CString;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use kiln_native::seccomp::SeccompPolicy;

const EPERM: i32 = libc::EPERM;
const ENOSYS: i32 = libc::ENOSYS;
const EAFNOSUPPORT: i32 = libc::EAFNOSUPPORT;
/// Exit code of a child whose setup failed (prctl; install adds its errno, capped at 50).
const SETUP_FAILED: i32 = 200;

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Exited(i32),
    Signaled(i32),
}

fn policy() -> SeccompPolicy {
    SeccompPolicy::default_policy().expect("the embedded policy compiles")
}

/// The errno of a raw call's result: 0 when it succeeded.
fn errno_of(ret: libc::c_long) -> i32 {
    if ret < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    } else {
        0
    }
}

/// A raw syscall with integer arguments, as its errno (0 = success).
fn raw(nr: libc::c_long, a: [libc::c_long; 5]) -> i32 {
    // SAFETY: integer (or null) arguments only, so the kernel writes no
    // memory of ours; probes run in a forked child, which is all a wrongly
    // allowed call could affect.
    errno_of(unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4]) })
}

/// A probe: a name, a syscall number and its integer arguments.
type Probe = (&'static str, libc::c_long, [libc::c_long; 5]);

fn wait(pid: libc::pid_t) -> Outcome {
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a live stack variable.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
    if libc::WIFSIGNALED(status) {
        Outcome::Signaled(libc::WTERMSIG(status))
    } else {
        Outcome::Exited(libc::WEXITSTATUS(status))
    }
}

/// Forks; the child installs `policy` (unless `None`), runs `probe` and
/// exits with its result. `probe` must make raw syscalls only.
fn in_child(policy: Option<&SeccompPolicy>, probe: impl FnOnce() -> i32) -> Outcome {
    // SAFETY: the child runs only raw syscalls (prctl, seccomp, the probe's)
    // and leaves with `_exit`, so it never touches a lock or the allocator
    // that another thread of this test binary might have held at fork time.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: PR_SET_NO_NEW_PRIVS takes integer arguments only.
        let nnp = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        let installed = policy.map_or(Ok(()), |p| p.install());
        let code = match (nnp, installed) {
            (0, Ok(())) => probe(),
            (_, Err(e)) => SETUP_FAILED + e.raw_os_error().unwrap_or(0).min(50),
            _ => SETUP_FAILED,
        };
        // SAFETY: `_exit` ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(code) }
    }
    wait(pid)
}

fn filtered(probe: impl FnOnce() -> i32) -> Outcome {
    in_child(Some(&policy()), probe)
}

#[test]
fn af_unix_socket_is_allowed() {
    let out = filtered(|| {
        raw(
            libc::SYS_socket,
            [libc::AF_UNIX.into(), libc::SOCK_STREAM.into(), 0, 0, 0],
        )
    });
    assert_eq!(out, Outcome::Exited(0));
    let out = filtered(|| {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        errno_of(
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) }
                .into(),
        )
    });
    assert_eq!(out, Outcome::Exited(0));
}

#[test]
fn other_socket_families_answer_eafnosupport() {
    for family in [
        libc::AF_INET,
        libc::AF_INET6,
        libc::AF_NETLINK,
        libc::AF_PACKET,
        libc::AF_VSOCK,
    ] {
        let out = filtered(|| {
            raw(
                libc::SYS_socket,
                [family.into(), libc::SOCK_DGRAM.into(), 0, 0, 0],
            )
        });
        assert_eq!(out, Outcome::Exited(EAFNOSUPPORT), "family {family}");
    }
    // The domain is compared as a 32-bit int, as the kernel reads it: high bits do not smuggle AF_INET past.
    let out = filtered(|| {
        raw(
            libc::SYS_socket,
            [
                (1 << 32) | libc::c_long::from(libc::AF_INET),
                libc::SOCK_DGRAM.into(),
                0,
                0,
                0,
            ],
        )
    });
    assert_eq!(out, Outcome::Exited(EAFNOSUPPORT));
    let out = filtered(|| {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors.
        errno_of(
            unsafe { libc::socketpair(libc::AF_INET, libc::SOCK_STREAM, 0, fds.as_mut_ptr()) }
                .into(),
        )
    });
    assert_eq!(out, Outcome::Exited(EAFNOSUPPORT));
}

#[test]
fn explicitly_denied_calls_answer_eperm() {
    let probes: [Probe; 8] = [
        (
            "ptrace(TRACEME)",
            libc::SYS_ptrace,
            [libc::PTRACE_TRACEME as libc::c_long, 0, 0, 0, 0],
        ),
        (
            "unshare(NEWUSER)",
            libc::SYS_unshare,
            [libc::CLONE_NEWUSER as libc::c_long, 0, 0, 0, 0],
        ),
        ("unshare(0)", libc::SYS_unshare, [0, 0, 0, 0, 0]),
        ("mount", libc::SYS_mount, [0, 0, 0, 0, 0]),
        ("bpf", libc::SYS_bpf, [0, 0, 0, 0, 0]),
        ("io_uring_setup", libc::SYS_io_uring_setup, [1, 0, 0, 0, 0]),
        ("setns", libc::SYS_setns, [-1, 0, 0, 0, 0]),
        (
            "personality(ADDR_NO_RANDOMIZE)",
            libc::SYS_personality,
            [0x0040000, 0, 0, 0, 0],
        ),
    ];
    for (name, nr, args) in probes {
        assert_eq!(filtered(|| raw(nr, args)), Outcome::Exited(EPERM), "{name}");
    }
    // The query form of personality stays allowed.
    let out = filtered(|| raw(libc::SYS_personality, [0xffff_ffff, 0, 0, 0, 0]));
    assert_eq!(out, Outcome::Exited(0));
}

#[test]
fn clone_with_a_namespace_flag_answers_eperm() {
    let flags = [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWCGROUP,
        0x80, // CLONE_NEWTIME: an invalid exit signal for clone, refused anyway
    ];
    for flag in flags {
        let out = filtered(|| {
            // SAFETY: fork-like clone (no CLONE_VM, null stack); a child that
            // was wrongly created exits at once.
            let r = unsafe { libc::syscall(libc::SYS_clone, flag | libc::SIGCHLD, 0, 0, 0, 0) };
            if r == 0 {
                // SAFETY: leaving the wrongly created child.
                unsafe { libc::_exit(0) }
            }
            errno_of(r)
        });
        assert_eq!(out, Outcome::Exited(EPERM), "clone flag {flag:#x}");
    }
}

#[test]
fn clone3_answers_enosys_and_fork_still_works() {
    let out = filtered(|| {
        let args = [0u64; 11];
        // SAFETY: `args` is a live, zeroed clone_args; the call is refused before it is read.
        errno_of(unsafe {
            libc::syscall(
                libc::SYS_clone3,
                args.as_ptr(),
                std::mem::size_of_val(&args),
            )
        })
    });
    assert_eq!(out, Outcome::Exited(ENOSYS));
    // Fork as glibc does it (clone without namespace flags), then wait for the child.
    let out = filtered(|| {
        // SAFETY: fork-like clone; the child exits at once with 7.
        let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD, 0, 0, 0, 0) };
        if pid == 0 {
            // SAFETY: leaving the grandchild.
            unsafe { libc::_exit(7) }
        }
        if pid < 0 {
            return errno_of(pid);
        }
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is on the stack.
        let rc = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if rc < 0 {
            errno_of(rc.into())
        } else {
            libc::WEXITSTATUS(status)
        }
    });
    assert_eq!(out, Outcome::Exited(7));
}

#[test]
fn execve_is_allowed() {
    let prog = CString::new("/bin/true").unwrap();
    let argv = [prog.as_ptr(), std::ptr::null()];
    let out = filtered(|| {
        // SAFETY: `prog` and `argv` were built before fork and are NUL-terminated.
        unsafe { libc::execv(prog.as_ptr(), argv.as_ptr()) };
        errno_of(-1)
    });
    assert_eq!(out, Outcome::Exited(0));
}

#[test]
fn terminal_injection_ioctls_answer_eperm_others_pass() {
    let probe = |req: u64| {
        move || {
            let c = 0u8;
            // SAFETY: fd 0 may be anything; `c` is a live byte for TIOCSTI/TIOCLINUX.
            errno_of(unsafe { libc::syscall(libc::SYS_ioctl, 0, req, &c as *const u8) })
        }
    };
    assert_eq!(filtered(probe(0x5412)), Outcome::Exited(EPERM), "TIOCSTI");
    assert_eq!(filtered(probe(0x541C)), Outcome::Exited(EPERM), "TIOCLINUX");
    // cmd is an unsigned int in the kernel: high bits must not smuggle TIOCSTI past the rule.
    assert_eq!(
        filtered(probe((1 << 32) | 0x5412)),
        Outcome::Exited(EPERM),
        "TIOCSTI | 1<<32"
    );
    let out = filtered(|| {
        let mut fds = [0; 2];
        let on: libc::c_int = 1;
        // SAFETY: `fds` has room for two fds; FIONBIO reads the int `on`.
        unsafe {
            if libc::pipe(fds.as_mut_ptr()) != 0 {
                return errno_of(-1);
            }
            errno_of(libc::ioctl(fds[0], libc::FIONBIO, &on).into())
        }
    });
    assert_eq!(out, Outcome::Exited(0), "FIONBIO on a pipe");
}

#[test]
fn unlisted_and_x32_syscalls_answer_enosys() {
    let probes: [Probe; 4] = [
        ("syslog", libc::SYS_syslog, [3, 0, 0, 0, 0]),
        ("999", 999, [0, 0, 0, 0, 0]),
        (
            "landlock_create_ruleset",
            libc::SYS_landlock_create_ruleset,
            [0, 0, 1, 0, 0],
        ),
        (
            "x32 getpid",
            0x4000_0000 | libc::SYS_getpid,
            [0, 0, 0, 0, 0],
        ),
    ];
    for (name, nr, args) in probes {
        assert_eq!(
            filtered(|| raw(nr, args)),
            Outcome::Exited(ENOSYS),
            "{name}"
        );
    }
}

#[test]
fn kill_list_ends_the_process_with_sigsys() {
    let probes: [Probe; 4] = [
        ("init_module", libc::SYS_init_module, [0, 0, 0, 0, 0]),
        ("finit_module", libc::SYS_finit_module, [-1, 0, 0, 0, 0]),
        ("kexec_load", libc::SYS_kexec_load, [0, 0, 0, 0, 0]),
        ("iopl", libc::SYS_iopl, [3, 0, 0, 0, 0]),
    ];
    for (name, nr, args) in probes {
        assert_eq!(
            filtered(|| raw(nr, args)),
            Outcome::Signaled(libc::SIGSYS),
            "{name}"
        );
    }
}

/// i386 `getpid` through `int 0x80`: the AUDIT_ARCH_I386 check fails.
fn int80_getpid() -> i32 {
    let ret: i32;
    // SAFETY: i386 getpid reads no memory; the compat entry zeroes r8-r15 on return.
    unsafe {
        std::arch::asm!("int 0x80", inlateout("eax") 20 => ret,
            out("r8") _, out("r9") _, out("r10") _, out("r11") _,
            out("r12") _, out("r13") _, out("r14") _, out("r15") _)
    };
    i32::from(ret <= 0)
}

#[test]
fn foreign_arch_syscalls_kill_the_process() {
    if in_child(None, int80_getpid) != Outcome::Exited(0) {
        eprintln!(
            "SKIP: this kernel has no i386 emulation (int 0x80 does not work even unfiltered)"
        );
        return;
    }
    assert_eq!(filtered(int80_getpid), Outcome::Signaled(libc::SIGSYS));
}

/// The kernel semantics the policy relies on: the most severe action wins,
/// and among ERRNO results the most recently installed filter's errno.
#[test]
fn stacked_filters_newest_errno_wins_kill_beats_all() {
    let errno_on_getppid = |errno: u32| {
        let json = format!(
            r#"{{"f": {{"mismatch_action": "allow", "match_action": {{"errno": {errno}}}, "filter": [{{"syscall": "getppid"}}]}}}}"#
        );
        seccompiler::compile_from_json(json.as_bytes(), seccompiler::TargetArch::x86_64)
            .unwrap()
            .remove("f")
            .unwrap()
    };
    let kill_on_getppid = {
        let json = r#"{"f": {"mismatch_action": "allow", "match_action": "kill_process", "filter": [{"syscall": "getppid"}]}}"#;
        seccompiler::compile_from_json(json.as_bytes(), seccompiler::TargetArch::x86_64)
            .unwrap()
            .remove("f")
            .unwrap()
    };
    let (e1, e38) = (errno_on_getppid(1), errno_on_getppid(38));
    let stacked = |first: &[seccompiler::sock_filter], second: &[seccompiler::sock_filter]| {
        in_child(None, || {
            if seccompiler::apply_filter(first).is_err()
                || seccompiler::apply_filter(second).is_err()
            {
                return SETUP_FAILED;
            }
            // SAFETY: no arguments.
            errno_of(unsafe { libc::syscall(libc::SYS_getppid) })
        })
    };
    assert_eq!(
        stacked(&e38, &e1),
        Outcome::Exited(1),
        "allow(ENOSYS) then deny(EPERM)"
    );
    assert_eq!(
        stacked(&e1, &e38),
        Outcome::Exited(38),
        "the reverse order flips the answer"
    );
    assert_eq!(
        stacked(&kill_on_getppid, &e1),
        Outcome::Signaled(libc::SIGSYS)
    );
    assert_eq!(
        stacked(&e1, &kill_on_getppid),
        Outcome::Signaled(libc::SIGSYS)
    );
}

// ---- The real workloads under the filter ------------------------------------

fn python() -> Option<PathBuf> {
    let p = PathBuf::from(
        std::env::var_os("KILN_SECCOMP_PYTHON").unwrap_or_else(|| "/tmp/sc-venv/bin/python".into()),
    );
    p.exists().then_some(p)
}

fn cstr(s: impl AsRef<[u8]>) -> CString {
    CString::new(s.as_ref()).unwrap()
}

/// Runs `python -I workload` under the filter with a sandbox-like
/// environment; fd 3 is `channel` when given. Returns the outcome and the
/// combined stdout/stderr.
fn run_workload(python: &Path, workload: &str, channel: Option<&UnixStream>) -> (Outcome, String) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("seccomp/workloads")
        .join(workload);
    let home = tempfile::tempdir().unwrap();
    let mut out = tempfile::tempfile().unwrap();
    let argv_c = [
        cstr(python.as_os_str().as_encoded_bytes()),
        cstr("-I"),
        cstr(script.as_os_str().as_encoded_bytes()),
    ];
    let env_c = [
        cstr("PATH=/usr/local/bin:/usr/bin:/bin"),
        cstr(format!("HOME={}", home.path().display())),
        cstr("LANG=C.UTF-8"),
        cstr("MPLBACKEND=Agg"),
        cstr(format!("TMPDIR={}", home.path().display())),
    ];
    let argv: Vec<*const libc::c_char> = argv_c
        .iter()
        .map(|c| c.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let envp: Vec<*const libc::c_char> = env_c
        .iter()
        .map(|c| c.as_ptr())
        .chain([std::ptr::null()])
        .collect();
    let (out_fd, chan_fd) = (out.as_raw_fd(), channel.map(|c| c.as_raw_fd()));
    let outcome = filtered(|| {
        // SAFETY: dup2/fcntl on fds we own; argv/envp were built before fork
        // and are NULL-terminated arrays of C strings that outlive the exec.
        unsafe {
            libc::dup2(out_fd, 1);
            libc::dup2(out_fd, 2);
            if let Some(fd) = chan_fd {
                if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0);
                } else {
                    libc::dup2(fd, 3);
                }
            }
            libc::execve(argv[0], argv.as_ptr(), envp.as_ptr());
        }
        errno_of(-1) + 100
    });
    let mut text = String::new();
    out.rewind().unwrap();
    out.read_to_string(&mut text).unwrap();
    (outcome, text)
}

macro_rules! workload_test {
    ($name:ident, $file:literal, [$($expect:literal),*]) => {
        #[test]
        fn $name() {
            let Some(py) = python() else {
                eprintln!("SKIP: no interpreter at /tmp/sc-venv/bin/python (set KILN_SECCOMP_PYTHON); see seccomp/README.md");
                return;
            };
            let (outcome, text) = run_workload(&py, $file, None);
            eprintln!("---- {} under the filter ----\n{text}", $file);
            assert_eq!(outcome, Outcome::Exited(0), "{} under the filter:\n{text}", $file);
            $(assert!(text.contains($expect), "{} lacks {:?}:\n{text}", $file, $expect);)*
        }
    };
}

workload_test!(python_starts, "start.py", ["1"]);
workload_test!(pandas_describe, "pandas_describe.py", ["count", "1000.0"]);
workload_test!(matplotlib_line_png, "mpl_line.py", ["True"]);
workload_test!(seaborn_plots, "seaborn_plot.py", ["ok"]);
workload_test!(scipy_and_numpy, "scipy_np.py", []);
workload_test!(files_csv_walk_tempfile, "files.py", ["(4950,)"]);
workload_test!(
    threads_subprocess_signals_asyncio,
    "procs.py",
    [
        "[0, 1, 4, 9]",
        "child",
        "piped",
        "interrupted",
        "sigint",
        "([0, 1, 2], b'2')",
        "inet [Errno 97]"
    ]
);
workload_test!(
    denied_calls_fail_cleanly_in_python,
    "denied.py",
    [
        "unshare EPERM",
        "mount EPERM",
        "ptrace EPERM",
        "syslog ENOSYS",
        "socket 2 EAFNOSUPPORT",
        "socket 10 EAFNOSUPPORT",
        "socket 16 EAFNOSUPPORT",
        "setuid EPERM",
        "urlopen URLError"
    ]
);

#[test]
fn runner_channel_on_fd3() {
    let Some(py) = python() else {
        eprintln!("SKIP: no interpreter at /tmp/sc-venv/bin/python (set KILN_SECCOMP_PYTHON)");
        return;
    };
    let (mut supervisor, runner) = UnixStream::pair().unwrap();
    let code = b"import pandas as pd; print(pd.DataFrame({'a': [1, 2]}).sum().iloc[0])";
    let len = u32::try_from(code.len()).unwrap().to_be_bytes();
    supervisor.write_all(&len).unwrap();
    supervisor.write_all(code).unwrap();
    let (outcome, text) = run_workload(&py, "runner_channel.py", Some(&runner));
    assert_eq!(outcome, Outcome::Exited(0), "{text}");
    assert!(text.contains('3') && text.contains("channel b''"), "{text}");
    let mut reply = [0u8; 6];
    supervisor.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"\0\0\0\x02ok");
}

/// In a forked child: as root, become nobody so that CAP_SYS_ADMIN cannot
/// be what lets the install succeed. Raw syscalls only.
fn drop_to_nobody() -> bool {
    // SAFETY: integer or null arguments only.
    unsafe {
        libc::getuid() != 0
            || (libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(65534) == 0
                && libc::setuid(65534) == 0)
    }
}

#[test]
fn install_needs_no_new_privs_and_nothing_more() {
    let policy = policy();
    let install = || match policy.install() {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    };
    // `in_child` sets no_new_privs before the probe; the probe installs as nobody.
    let out = in_child(None, || {
        if drop_to_nobody() {
            install()
        } else {
            SETUP_FAILED
        }
    });
    assert_eq!(out, Outcome::Exited(0));
    // Without no_new_privs the kernel refuses with EACCES.
    // SAFETY: as in `in_child`: raw syscalls only in the child, then `_exit`.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = if drop_to_nobody() {
            install()
        } else {
            SETUP_FAILED
        };
        // SAFETY: ends the child.
        unsafe { libc::_exit(code) }
    }
    assert_eq!(wait(pid), Outcome::Exited(libc::EACCES));
}
