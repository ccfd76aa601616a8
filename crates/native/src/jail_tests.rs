//! The containment order, checked against a recording fake kernel.
//!
//! Every rule below is one the kernel will not enforce for us: swapping two
//! of these calls still "works", it just leaves a hole. Each test says why
//! its order matters.

use super::{contain_steps, ChildFds, StepClock, CHANNEL_FD, CONTAINMENT_STEPS, ERROR_FD};
use crate::kernel::fake::{Call, RecordingKernel, INJECTED_ERRNO, LAST_CAP};
use crate::plan::{RootPlan, SandboxPlan};
use crate::seccomp::SeccompPolicy;
use kiln_policy::Limits;
use std::io;
use std::path::Path;

const NEW_ROOT: &str = "/run/kiln/root";
const UID: u32 = 200_123;
const FDS: ChildFds = ChildFds {
    sync_read: 10,
    error_write: 11,
    channel: 12,
    stdout_write: 13,
    stderr_write: 14,
    dev_null: 15,
};

/// The steps of a sandbox without egress, in order ([`CONTAINMENT_STEPS`]
/// without `loopback`).
fn steps() -> Vec<&'static str> {
    CONTAINMENT_STEPS
        .into_iter()
        .filter(|s| *s != "loopback")
        .collect()
}

fn top_level() -> Vec<String> {
    ["usr", "lib", "etc"].map(String::from).to_vec()
}

fn with_plan<T>(f: impl FnOnce(&SandboxPlan) -> T) -> T {
    let seccomp = SeccompPolicy::default_policy().expect("embedded seccomp policy compiles");
    let limits = Limits::default();
    let root = RootPlan::new(
        Path::new(NEW_ROOT),
        Path::new("/opt/kiln/runtime"),
        &top_level(),
        &limits,
    );
    let argv = ["/usr/bin/python3", "-I", "-B", "/usr/lib/kiln/runner.py"]
        .map(String::from)
        .to_vec();
    let env = vec![("PATH".to_string(), "/usr/bin".to_string())];
    let plan = SandboxPlan::new(
        root,
        UID,
        limits,
        "/usr/bin/python3",
        argv,
        env,
        &seccomp,
        &top_level(),
    );
    f(&plan)
}

/// Runs the sequence on `k`; it can only end in an error (a real execve
/// would not return).
fn run(k: &RecordingKernel) -> (&'static str, io::Error) {
    with_plan(|plan| {
        match contain_steps(
            k,
            plan,
            &FDS,
            super::Finish::Exec,
            &mut StepClock::started(),
        ) {
            Ok(()) => unreachable!("Finish::Exec never returns Ok"),
            Err(e) => e,
        }
    })
}

/// The calls of a run in which nothing fails.
fn clean_run() -> Vec<Call> {
    let k = RecordingKernel::new();
    let (step, _) = run(&k);
    assert_eq!(step, "execve", "a clean run reaches execve");
    k.calls()
}

fn listing(calls: &[Call]) -> String {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{i:3} {c}\n"))
        .collect()
}

/// Index of the first call matching `pred`.
fn first(calls: &[Call], what: &str, pred: impl Fn(&Call) -> bool) -> usize {
    calls
        .iter()
        .position(pred)
        .unwrap_or_else(|| panic!("no call {what} in:\n{}", listing(calls)))
}

/// Index of the last call matching `pred`.
fn last(calls: &[Call], what: &str, pred: impl Fn(&Call) -> bool) -> usize {
    calls
        .iter()
        .rposition(pred)
        .unwrap_or_else(|| panic!("no call {what} in:\n{}", listing(calls)))
}

fn named(name: &'static str) -> impl Fn(&Call) -> bool {
    move |c| c.name == name
}

fn line(text: &'static str) -> impl Fn(&Call) -> bool {
    move |c| c.to_string() == text
}

fn prctl(prefix: &'static str) -> impl Fn(&Call) -> bool {
    move |c| c.name == "prctl" && c.args.starts_with(prefix)
}

fn before(calls: &[Call], a: usize, b: usize, why: &str) {
    assert!(
        a < b,
        "{why}: expected call {a} before call {b} in:\n{}",
        listing(calls)
    );
}

#[test]
fn waits_for_parent_before_anything_else() {
    let calls = clean_run();
    // The parent writes the uid/gid maps and (cgroup v1) our cgroup while
    // we wait: before that every id-dependent call fails or runs as
    // "nobody", and anything done runs outside the sandbox's cgroup limits.
    assert_eq!(calls[0].to_string(), format!("read(fd={})", FDS.sync_read));
    assert_eq!(calls[1].to_string(), format!("close(fd={})", FDS.sync_read));
    // cgroup namespace only once we are in the sandbox cgroup, so that
    // cgroup becomes our "/" (done earlier, the host's cgroup path would
    // be the root and the sandbox could see its siblings' names) — and
    // before any mount, so nothing below is built with the host's view.
    let unshare = first(&calls, "unshare", line("unshare(CLONE_NEWCGROUP)"));
    before(&calls, 1, unshare, "cgroup namespace after the wait");
    before(
        &calls,
        unshare,
        first(&calls, "mount", named("mount")),
        "cgroup namespace before any mount",
    );
}

#[test]
fn parent_going_away_stops_at_the_wait() {
    // EOF on the sync pipe means the parent died before setting up the
    // maps: nothing else may run.
    let k = RecordingKernel::parent_gone();
    let (step, err) = run(&k);
    assert_eq!(step, "wait-for-parent");
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    assert_eq!(k.calls().len(), 1, "{}", listing(&k.calls()));
}

#[test]
fn hostname_is_kiln() {
    let calls = clean_run();
    first(&calls, "sethostname(kiln)", line("sethostname(kiln)"));
}

#[test]
fn sandbox_ids_taken_before_the_root_is_built_keeping_capabilities() {
    let calls = clean_run();
    // NO_SETUID_FIXUP first: otherwise the uid change below empties the
    // capability sets and none of the mounts could be made.
    let fixup = first(
        &calls,
        "securebits",
        line("prctl(PR_SET_SECUREBITS, NO_SETUID_FIXUP)"),
    );
    let gid = first(&calls, "setresgid", named("setresgid"));
    let uid = first(&calls, "setresuid", named("setresuid"));
    before(
        &calls,
        fixup,
        gid,
        "NO_SETUID_FIXUP before the first id change",
    );
    // gid before uid: changing the gid needs the privilege the uid change may drop.
    before(&calls, gid, uid, "setresgid before setresuid");
    // Before the tmpfs mounts, so /work and /tmp belong to the sandbox uid.
    before(
        &calls,
        uid,
        first(&calls, "mount", named("mount")),
        "sandbox uid before the first mount",
    );
    assert_eq!(calls[uid].args, UID.to_string());
    assert_eq!(calls[gid].args, UID.to_string());
}

#[test]
fn root_made_private_before_any_other_mount() {
    let calls = clean_run();
    // A mount made while "/" is still shared propagates to the host's
    // mount namespace (tmpfs over the host's /run/kiln/root, the proc...).
    let mount = first(&calls, "mount", named("mount"));
    assert_eq!(
        calls[mount].to_string(),
        "mount(none -> /, flags=MS_REC|MS_PRIVATE)"
    );
}

#[test]
fn new_root_is_a_small_tmpfs() {
    let calls = clean_run();
    let mounts: Vec<&Call> = calls.iter().filter(|c| c.name == "mount").collect();
    assert_eq!(
        mounts[1].to_string(),
        format!(
            "mount(tmpfs -> {NEW_ROOT}, fstype=tmpfs, flags=MS_NOSUID|MS_NODEV, data=size=1m,nr_inodes=256,mode=0755)"
        )
    );
}

#[test]
fn runtime_binds_are_followed_by_a_recursive_read_only_setattr() {
    let calls = clean_run();
    // A bind with MS_RDONLY alone stays writable (the flag is ignored
    // without MS_REMOUNT): only mount_setattr — recursive, for the mounts
    // MS_REC brought along — makes the runtime read-only.
    let binds: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| c.name == "mount" && c.args.contains("flags=MS_BIND|MS_REC"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        binds.len(),
        top_level().len(),
        "one bind per runtime dir:\n{}",
        listing(&calls)
    );
    for (i, dir) in binds.into_iter().zip(top_level()) {
        let target = format!("{NEW_ROOT}/{dir}");
        assert_eq!(
            calls[i].to_string(),
            format!("mount(/opt/kiln/runtime/{dir} -> {target}, flags=MS_BIND|MS_REC)")
        );
        assert_eq!(
            calls[i + 1].to_string(),
            format!("mount_setattr({target}, set=RDONLY|NOSUID|NODEV, AT_RECURSIVE)"),
            "the bind must be made read-only right away:\n{}",
            listing(&calls)
        );
    }
}

#[test]
fn work_and_tmp_are_capped_noexec_tmpfs() {
    let calls = clean_run();
    let limits = Limits::default();
    // noexec: code written by the sandbox is never mapped executable from
    // disk; size/nr_inodes: a sandbox cannot fill memory through tmpfs.
    for (dir, mib) in [("work", limits.disk_mib), ("tmp", limits.tmp_mib)] {
        let target = format!("{NEW_ROOT}/{dir}");
        let mkdir = first(&calls, "mkdir", |c| {
            c.to_string() == format!("mkdir({target}, 0o700)")
        });
        let want = format!(
            "mount(tmpfs -> {target}, fstype=tmpfs, flags=MS_NOSUID|MS_NODEV|MS_NOEXEC, data=size={mib}m,nr_inodes={},mode=0700)",
            limits.inodes
        );
        let mount = first(&calls, &want, |c| c.to_string() == want);
        before(&calls, mkdir, mount, "mount point before the mount");
    }
    // /work/out lives on the /work tmpfs, not on the read-only root.
    let work = first(&calls, "work tmpfs", |c| {
        c.name == "mount" && c.args.contains(&format!("-> {NEW_ROOT}/work,"))
    });
    let out = first(&calls, "mkdir out", |c| {
        c.to_string() == format!("mkdir({NEW_ROOT}/work/out, 0o700)")
    });
    before(&calls, work, out, "/work/out after the /work tmpfs");
}

#[test]
fn dev_is_minimal_and_read_only() {
    let calls = clean_run();
    let dev = format!("{NEW_ROOT}/dev");
    let tmpfs = first(&calls, "dev tmpfs", |c| {
        c.name == "mount" && c.args.contains(&format!("-> {dev},"))
    });
    assert!(
        calls[tmpfs].args.contains("flags=MS_NOSUID|MS_NOEXEC"),
        "{}",
        calls[tmpfs]
    );
    for d in ["null", "zero", "random", "urandom"] {
        let target = format!("{dev}/{d}");
        let bind = first(&calls, "dev bind", |c| {
            c.to_string() == format!("mount(/dev/{d} -> {target}, flags=MS_BIND)")
        });
        assert_eq!(
            calls[bind - 1].to_string(),
            format!("touch({target}, 0o666)")
        );
        assert_eq!(
            calls[bind + 1].to_string(),
            format!("mount_setattr({target}, set=NOSUID|NOEXEC)")
        );
    }
    // Read-only last, after every node and link was created in it.
    let ro = first(&calls, "dev read-only", |c| {
        c.to_string() == format!("mount_setattr({dev}, set=RDONLY|NOSUID|NODEV|NOEXEC)")
    });
    let last_link = last(&calls, "symlink", named("symlink"));
    before(&calls, last_link, ro, "/dev read-only after its contents");
}

#[test]
fn proc_is_mounted_hidden_before_pivot_root() {
    let calls = clean_run();
    // A new proc may only be mounted while a full /proc is visible in the
    // mount namespace; after the old root is detached the kernel refuses.
    let want = format!(
        "mount(proc -> {NEW_ROOT}/proc, fstype=proc, flags=MS_NOSUID|MS_NODEV|MS_NOEXEC, data=hidepid=invisible,subset=pid)"
    );
    let proc_ = first(&calls, &want, |c| c.to_string() == want);
    before(
        &calls,
        proc_,
        first(&calls, "pivot_root", named("pivot_root")),
        "proc before pivot_root",
    );
}

#[test]
fn pivot_then_detach_old_root_then_root_read_only() {
    let calls = clean_run();
    let pivot = first(&calls, "pivot_root", named("pivot_root"));
    let expected = [
        format!("chdir({NEW_ROOT})"),
        "pivot_root(., .)".into(),
        // Until the old root is detached the whole host filesystem is
        // reachable under it.
        "umount2(., MNT_DETACH)".into(),
        "chdir(/)".into(),
        // Only now: made read-only before the pivot, the detach of the
        // stacked old root and the mkdirs above would be refused.
        "mount_setattr(/, set=RDONLY|NOSUID|NODEV|NOEXEC)".into(),
        "chdir(/work)".into(),
    ];
    let got: Vec<String> = calls[pivot - 1..pivot + 5]
        .iter()
        .map(Call::to_string)
        .collect();
    assert_eq!(got, expected);
    // Nothing else is mounted after the root went read-only.
    let last_mount = last(&calls, "mount", |c| {
        c.name.starts_with("mount") || c.name == "pivot_root"
    });
    assert_eq!(last_mount, pivot + 3);
}

#[test]
fn privileges_dropped_bounding_set_groups_gid_uid() {
    let calls = clean_run();
    // Every capability 0..=LAST_CAP is dropped from the bounding set; the
    // loop stops at the first EINVAL (past the kernel's last capability).
    let drops: Vec<String> = calls
        .iter()
        .filter(|c| c.args.starts_with("PR_CAPBSET_DROP"))
        .map(|c| c.args.clone())
        .collect();
    let want: Vec<String> = (0..=LAST_CAP + 1)
        .map(|n| format!("PR_CAPBSET_DROP, {n}"))
        .collect();
    assert_eq!(drops, want);
    let last_drop = last(&calls, "PR_CAPBSET_DROP", prctl("PR_CAPBSET_DROP"));
    let groups = first(&calls, "setgroups", named("setgroups"));
    let gid = last(&calls, "setresgid", named("setresgid"));
    let uid = last(&calls, "setresuid", named("setresuid"));
    // Dropping from the bounding set needs CAP_SETPCAP, and setgroups /
    // setresgid need CAP_SETGID: all while capabilities are still held.
    before(&calls, last_drop, groups, "bounding set before setgroups");
    // No supplementary group of the parent may survive into the sandbox.
    before(&calls, groups, gid, "setgroups before setresgid");
    before(&calls, gid, uid, "setresgid before the final setresuid");
    assert_eq!(calls[uid].args, UID.to_string());
}

#[test]
fn securebits_locked_before_capabilities_cleared() {
    let calls = clean_run();
    let lock = first(&calls, "locked securebits", |c| {
        c.args.starts_with("PR_SET_SECUREBITS") && c.args.contains("_LOCKED")
    });
    assert_eq!(
        calls[lock].args,
        "PR_SET_SECUREBITS, NOROOT|NOROOT_LOCKED|NO_SETUID_FIXUP|NO_SETUID_FIXUP_LOCKED|KEEP_CAPS_LOCKED|NO_CAP_AMBIENT_RAISE|NO_CAP_AMBIENT_RAISE_LOCKED"
    );
    // Setting securebits needs CAP_SETPCAP: after capset empties the sets
    // the lock would fail, and unlocked bits can be cleared again.
    let capset = first(&calls, "capset", named("capset"));
    before(
        &calls,
        lock,
        capset,
        "securebits locked before capabilities cleared",
    );
    first(
        &calls,
        "ambient clear",
        line("prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)"),
    );
    // After the final id change, which they are meant to outlive.
    before(
        &calls,
        last(&calls, "setresuid", named("setresuid")),
        lock,
        "securebits locked after the final setresuid",
    );
}

#[test]
fn pdeathsig_after_the_final_uid_change() {
    let calls = clean_run();
    // Any change of uid/gid clears the parent-death signal: set before,
    // the sandbox would outlive a killed supervisor.
    let pdeath = first(
        &calls,
        "pdeathsig",
        line("prctl(PR_SET_PDEATHSIG, SIGKILL)"),
    );
    before(
        &calls,
        last(&calls, "setresuid", named("setresuid")),
        pdeath,
        "PDEATHSIG after setresuid",
    );
    before(
        &calls,
        last(&calls, "setresgid", named("setresgid")),
        pdeath,
        "PDEATHSIG after setresgid",
    );
    // Likewise a uid change resets "dumpable".
    let dumpable = first(&calls, "dumpable", line("prctl(PR_SET_DUMPABLE, 0)"));
    before(
        &calls,
        last(&calls, "setresuid", named("setresuid")),
        dumpable,
        "DUMPABLE after setresuid",
    );
}

#[test]
fn no_new_privs_before_landlock_and_seccomp() {
    let calls = clean_run();
    // Both refuse to load for an unprivileged process without
    // no_new_privs, and it is what stops a setuid exec from escaping them.
    let nnp = first(
        &calls,
        "no_new_privs",
        line("prctl(PR_SET_NO_NEW_PRIVS, 1)"),
    );
    before(
        &calls,
        nnp,
        first(&calls, "landlock", named("landlock_restrict")),
        "no_new_privs before Landlock",
    );
    before(
        &calls,
        nnp,
        first(&calls, "seccomp", named("seccomp_install")),
        "no_new_privs before seccomp",
    );
}

#[test]
fn rlimits_are_set_before_the_runner_starts() {
    let calls = clean_run();
    let l = Limits::default();
    let got: Vec<String> = calls
        .iter()
        .filter(|c| c.name == "setrlimit")
        .map(|c| c.args.clone())
        .collect();
    assert_eq!(
        got,
        [
            "RLIMIT_CORE, 0".to_string(),
            format!("RLIMIT_NOFILE, {}", l.open_files),
            format!("RLIMIT_FSIZE, {}", l.file_size_mib << 20),
            format!("RLIMIT_NPROC, {}", l.pids),
        ]
    );
    // Set with capabilities gone, so they cannot be raised back
    // (CAP_SYS_RESOURCE), and before the seccomp filter might deny setrlimit.
    let capset = first(&calls, "capset", named("capset"));
    let first_rlimit = first(&calls, "setrlimit", named("setrlimit"));
    before(
        &calls,
        capset,
        first_rlimit,
        "rlimits after capabilities are cleared",
    );
    before(
        &calls,
        last(&calls, "setrlimit", named("setrlimit")),
        first(&calls, "seccomp", named("seccomp_install")),
        "rlimits before seccomp",
    );
}

#[test]
fn fds_arranged_and_closed_before_landlock() {
    let calls = clean_run();
    let dups: Vec<usize> = calls
        .iter()
        .enumerate()
        .filter(|(_, c)| c.name == "dup_above")
        .map(|(i, _)| i)
        .collect();
    let first_dup2 = first(&calls, "dup2", named("dup2"));
    // Every source is moved above 9 before any dup2: a dup2 onto 0..=4
    // would otherwise close a source that happens to sit there.
    assert_eq!(dups.len(), 5);
    assert!(dups.iter().all(|&i| i < first_dup2), "{}", listing(&calls));
    let want = [
        "dup2(10 -> 0)",
        "dup2(11 -> 1)",
        "dup2(12 -> 2)",
        "dup2(13 -> 3)",
        "dup2(14 -> 4)",
        "clear_cloexec(fd=0)",
        "clear_cloexec(fd=1)",
        "clear_cloexec(fd=2)",
        "clear_cloexec(fd=3)",
        // The error pipe stays close-on-exec: its EOF tells the parent
        // that execve succeeded.
        "set_cloexec(fd=4)",
        "close_range(5..)",
    ];
    let got: Vec<String> = calls[first_dup2..first_dup2 + want.len()]
        .iter()
        .map(Call::to_string)
        .collect();
    assert_eq!(got, want);
    assert_eq!(CHANNEL_FD, 3);
    assert_eq!(ERROR_FD, 4);
    let order = [
        FDS.dev_null,
        FDS.stdout_write,
        FDS.stderr_write,
        FDS.channel,
        FDS.error_write,
    ];
    for (i, fd) in dups.iter().zip(order) {
        assert_eq!(calls[*i].args, format!("fd={fd}, min=10"));
    }
    // Every inherited fd is gone before the filters: an fd kept open is a
    // capability Landlock and seccomp cannot take back.
    let close = first(&calls, "close_range", named("close_range"));
    before(
        &calls,
        close,
        first(&calls, "landlock", named("landlock_restrict")),
        "fds closed before Landlock",
    );
}

#[test]
fn landlock_then_seccomp_then_execve_last() {
    let calls = clean_run();
    let n = calls.len();
    // execve is the very last call; seccomp right before it, so the filter
    // never has to allow the setup's syscalls (mount, pivot_root, prctl...).
    assert_eq!(calls[n - 1].name, "execve", "{}", listing(&calls));
    assert_eq!(calls[n - 1].args, "/usr/bin/python3, argc=4, envc=1");
    assert_eq!(calls[n - 2].name, "seccomp_install", "{}", listing(&calls));
    // Landlock before seccomp: its own syscalls (landlock_*, open of the
    // rule paths) would be denied by the filter.
    assert_eq!(
        calls[n - 3].name,
        "landlock_restrict",
        "{}",
        listing(&calls)
    );
    assert_eq!(
        calls[n - 3].args,
        "read=[/usr, /lib, /etc], write=[/work, /tmp], dev=[/dev/null, /dev/zero, /dev/random, /dev/urandom]"
    );
}

/// The call that opens each step, in order.
fn step_starts(calls: &[Call]) -> Vec<(usize, &'static str)> {
    let starts = [
        first(calls, "read", named("read")),
        first(calls, "reset_signals", named("reset_signals")),
        first(calls, "unshare", named("unshare")),
        first(calls, "sethostname", named("sethostname")),
        first(calls, "securebits", prctl("PR_SET_SECUREBITS")),
        first(calls, "mount", named("mount")),
        first(calls, "tmpfs mount", |c| {
            c.name == "mount" && c.args.starts_with("tmpfs")
        }),
        first(calls, "capbset drop", prctl("PR_CAPBSET_DROP")),
        first(calls, "locked securebits", |c| {
            c.args.starts_with("PR_SET_SECUREBITS") && c.args.contains("_LOCKED")
        }),
        first(calls, "dup_above", named("dup_above")),
        first(calls, "landlock", named("landlock_restrict")),
        first(calls, "seccomp", named("seccomp_install")),
        first(calls, "execve", named("execve")),
    ];
    assert!(
        starts.windows(2).all(|w| w[0] < w[1]),
        "steps out of order:\n{}",
        listing(calls)
    );
    starts.into_iter().zip(steps()).collect()
}

fn step_of(starts: &[(usize, &'static str)], index: usize) -> &'static str {
    starts
        .iter()
        .rev()
        .find(|(s, _)| *s <= index)
        .map(|(_, n)| *n)
        .expect("every call is in a step")
}

#[test]
fn a_failure_at_any_call_stops_the_sequence_and_names_its_step() {
    let clean = clean_run();
    let starts = step_starts(&clean);
    let mut reported = Vec::new();
    for i in 0..clean.len() {
        let k = RecordingKernel::failing_at(i);
        let (step, err) = run(&k);
        let calls = k.calls();
        if clean[i].name == "close" {
            // close reports no error: the sequence goes on unchanged.
            assert_eq!((step, &calls), ("execve", &clean), "failing close at {i}");
            continue;
        }
        assert_eq!(
            calls,
            clean[..=i],
            "failing call {i} ({}) must be the last one",
            clean[i]
        );
        assert_eq!(step, step_of(&starts, i), "failing call {i} ({})", clean[i]);
        if step == "landlock" {
            assert!(err.to_string().contains("injected"), "{err}");
        } else {
            assert_eq!(
                err.raw_os_error(),
                Some(INJECTED_ERRNO),
                "failing call {i} ({})",
                clean[i]
            );
        }
        if i + 1 < clean.len() {
            assert!(
                calls.iter().all(|c| c.name != "execve"),
                "execve after a failure at {i}"
            );
        }
        if reported.last() != Some(&step) {
            reported.push(step);
        }
    }
    assert_eq!(
        reported,
        steps(),
        "every step can fail and is reported by name"
    );
}

#[test]
fn a_failure_at_a_named_call_names_its_step() {
    for (call, step) in [
        ("unshare", "cgroup-namespace"),
        ("sethostname", "hostname"),
        ("setresuid", "sandbox-ids"),
        ("pivot_root", "build-root"),
        ("umount2", "build-root"),
        ("setgroups", "drop-privileges"),
        ("capset", "harden"),
        ("setrlimit", "harden"),
        ("close_range", "fds"),
        ("landlock_restrict", "landlock"),
        ("seccomp_install", "seccomp"),
        ("execve", "execve"),
    ] {
        let k = RecordingKernel::failing_on(call);
        let (got, _) = run(&k);
        let calls = k.calls();
        assert_eq!(got, step, "failing {call}");
        assert_eq!(
            calls.last().map(|c| c.name),
            Some(call),
            "{call} must be the last call:\n{}",
            listing(&calls)
        );
        assert_eq!(
            calls.iter().filter(|c| c.name == call).count(),
            1,
            "{call} failed the first time"
        );
    }
}

#[test]
fn seccomp_failure_never_reaches_execve() {
    // A filter that failed to load must not leave an unfiltered runner.
    let k = RecordingKernel::failing_on("seccomp_install");
    let (step, err) = run(&k);
    assert_eq!(step, "seccomp");
    assert_eq!(err.raw_os_error(), Some(INJECTED_ERRNO));
    assert!(k.calls().iter().all(|c| c.name != "execve"));
}

/// An egress sandbox's run: `lo` up while capabilities are held, the socket
/// directory bound read-only at /run/kiln, Landlock's one TCP port.
#[test]
fn egress_brings_lo_up_before_capabilities_go_and_binds_the_socket_read_only() {
    let seccomp = SeccompPolicy::egress_policy().unwrap();
    let limits = Limits::default();
    let root = RootPlan::new(
        Path::new(NEW_ROOT),
        Path::new("/opt/kiln/runtime"),
        &top_level(),
        &limits,
    )
    .with_egress(
        Path::new(NEW_ROOT),
        Some(("web", Path::new("/run/kiln/egress-1/web"))),
    );
    let plan = SandboxPlan::new(
        root,
        UID,
        limits,
        "/usr/bin/python3",
        vec!["/usr/bin/python3".into()],
        Vec::new(),
        &seccomp,
        &top_level(),
    );
    assert!(plan.egress);
    let k = RecordingKernel::new();
    let mut clock = StepClock::started();
    let (step, _) = contain_steps(&k, &plan, &FDS, super::Finish::Exec, &mut clock).unwrap_err();
    assert_eq!(step, "execve");
    // Every containment step, `loopback` included, marked in order.
    let names: Vec<&str> = clock.marks().iter().skip(1).map(|m| m.0).collect();
    assert_eq!(names, CONTAINMENT_STEPS[..CONTAINMENT_STEPS.len() - 1]);
    let calls = k.calls();
    let lo = first(&calls, "loopback_up", named("loopback_up"));
    assert!(first(&calls, "sethostname", named("sethostname")) < lo);
    assert!(lo < first(&calls, "capbset drop", prctl("PR_CAPBSET_DROP")));
    assert!(lo < first(&calls, "capset", named("capset")));
    let bind = first(&calls, "egress bind", |c| {
        c.name == "mount" && c.args.contains("/run/kiln/egress-1/web")
    });
    assert!(
        calls[bind].args.contains(&format!("{NEW_ROOT}/run/kiln")),
        "{}",
        calls[bind]
    );
    assert!(
        calls[bind + 1].name == "mount_setattr" && calls[bind + 1].args.contains("RDONLY"),
        "{}",
        listing(&calls)
    );
    let landlock = first(&calls, "landlock", named("landlock_restrict"));
    assert!(
        calls[landlock].args.contains("/run/kiln") && calls[landlock].args.ends_with("tcp=3128"),
        "{}",
        calls[landlock]
    );
    // Without egress: no lo, no bind, no TCP port.
    let plain = clean_run();
    assert!(!plain
        .iter()
        .any(|c| c.name == "loopback_up" || c.args.contains("egress")));
    assert!(!plain.iter().any(|c| c.args.contains("tcp=")));
}

#[test]
fn the_step_clock_marks_each_step_that_ran_in_order() {
    let k = RecordingKernel::new();
    let mut clock = StepClock::started();
    let (step, _) =
        with_plan(|plan| contain_steps(&k, plan, &FDS, super::Finish::Exec, &mut clock))
            .unwrap_err();
    assert_eq!(step, "execve");
    let names: Vec<&str> = clock.marks().iter().map(|m| m.0).collect();
    // `start`, then every step up to seccomp: execve does not return.
    assert_eq!(names[0], "start");
    let steps = steps();
    assert_eq!(names[1..], steps[..steps.len() - 1]);
    assert!(
        clock.marks().windows(2).all(|w| w[0].1 <= w[1].1),
        "{:?}",
        clock.marks()
    );
}

#[test]
fn a_fork_s_clock_starts_before_the_fork() {
    let clock = StepClock::forked_at(5);
    let marks = clock.marks();
    assert_eq!(marks[0], ("start", 5));
    assert_eq!(marks[1].0, "fork");
    assert!(marks[1].1 >= 5);
}
