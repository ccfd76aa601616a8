//! The fork loop, run inside the template process (called from Python
//! through the `kiln_zygote` shared library).
//!
//! Rules that keep forks of one process safe (DESIGN.md §4):
//! - before each fork the template has exactly one thread and no writable
//!   shared mapping (that would be a live channel between sandboxes) —
//!   checked, and the fork refused otherwise;
//! - the child runs the containment steps of [`crate::jail`] (signals reset,
//!   fds closed but the channel, ids, mounts, capabilities, Landlock,
//!   seccomp) before it returns to Python, and `_exit`s on any error;
//! - the template itself never reads user code: only the child, sealed.

use super::wire::{self, Reply, Request};
use crate::jail::{self, ChildFds};
use crate::plan::{RootPlan, SandboxPlan};
use crate::seccomp::SeccompPolicy;
use crate::sys::{self, CloneArgs, Forked};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

/// In a forked child: the runner environment, as a JSON list of pairs, for
/// Python to apply (it cannot see a C-level `setenv`).
pub static CHILD_ENV: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();

/// In a forked child: when each containment step ended, as a JSON list of
/// `[step, monotonic ns]`, for the runner's `ready` frame.
pub static CHILD_STEPS: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();

/// Forks made by this template, for the periodic mapping check.
static FORKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What [`serve`] returns to its caller.
pub const IN_CHILD: i32 = 0;
pub const TEMPLATE_DONE: i32 = 1;

const NAMESPACES: u64 = (libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS) as u64;

/// Serves fork requests on `ctrl` until told to stop ([`TEMPLATE_DONE`]);
/// returns [`IN_CHILD`] in each forked, sealed sandbox.
pub fn serve(ctrl: RawFd) -> i32 {
    let top_level: Vec<String> = std::env::var("KILN_TOP_LEVEL")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    let seccomp = match SeccompPolicy::default_policy() {
        Ok(p) => p,
        Err(e) => {
            let _ = wire::send(
                ctrl,
                &Reply::Error {
                    message: e.to_string(),
                },
                &[],
            );
            return TEMPLATE_DONE;
        }
    };
    let egress_seccomp = match SeccompPolicy::egress_policy() {
        Ok(p) => p,
        Err(e) => {
            let _ = wire::send(
                ctrl,
                &Reply::Error {
                    message: e.to_string(),
                },
                &[],
            );
            return TEMPLATE_DONE;
        }
    };
    let tid_field = glibc_tid_field();
    // After the warm-up, before the first fork: forks copy fewer page
    // tables and sandboxes unmap fewer pages when they end. The arenas'
    // region is cut to what they use first.
    let arena_bytes = super::arena::trim() as u64;
    let huge_bytes = collapse_anonymous_memory();
    let ready = Reply::Ready {
        // SAFETY: getpid has no preconditions.
        pid: unsafe { libc::getpid() },
        threads: thread_count().unwrap_or(0),
        tid_fixed: tid_field.is_some(),
        huge_bytes,
        arena_bytes,
    };
    if wire::send(ctrl, &ready, &[]).is_err() {
        return TEMPLATE_DONE;
    }
    loop {
        let (request, fds) = match wire::recv::<Request>(ctrl) {
            Ok(Some(r)) => r,
            Ok(None) | Err(_) => return TEMPLATE_DONE,
        };
        let reply = match request {
            Request::Exit => return TEMPLATE_DONE,
            Request::Status { pid } => Reply::Status { status: reap(pid) },
            Request::Fork {
                uid,
                limits,
                env,
                datasets,
                library_tree,
                egress,
            } => {
                let mounts = (datasets.as_slice(), library_tree.as_deref());
                let seccomp = match egress {
                    Some(_) => &egress_seccomp,
                    None => &seccomp,
                };
                match fork(
                    ctrl, tid_field, &top_level, seccomp, uid, limits, env, mounts, egress, fds,
                ) {
                    Ok(Forked::Child) => return IN_CHILD,
                    Ok(Forked::Parent { .. }) => continue, // replied inside, with the pidfd
                    Err(e) => Reply::Error {
                        message: e.to_string(),
                    },
                }
            }
        };
        if wire::send(ctrl, &reply, &[]).is_err() {
            return TEMPLATE_DONE;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn fork(
    ctrl: RawFd,
    tid_field: Option<usize>,
    top_level: &[String],
    seccomp: &SeccompPolicy,
    uid: u32,
    limits: kiln_policy::Limits,
    env: Vec<(String, String)>,
    (datasets, library_tree): (&[String], Option<&str>),
    egress: Option<String>,
    fds: Vec<OwnedFd>,
) -> io::Result<Forked> {
    check_fds(&fds)?;
    check_forkable(FORKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed))?;
    // The child's root is built on a tmpfs over the template's /work,
    // from the runtime as the template sees it (bound at /).
    let sources: Vec<(String, std::path::PathBuf)> = datasets
        .iter()
        .map(|n| {
            (
                n.clone(),
                Path::new("/").join(super::template::dataset_dir(n)),
            )
        })
        .collect();
    let tree = library_tree.map(|name| {
        let source = Path::new("/")
            .join(super::template::LIBRARIES_DIR)
            .join(name);
        (name, source)
    });
    let root = RootPlan::new(Path::new("/work"), Path::new("/"), top_level, &limits)
        .with_datasets(Path::new("/work"), &sources)
        .with_libraries(Path::new("/work"), tree);
    if egress.as_deref().is_some_and(|n| {
        !n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    }) {
        return Err(io::Error::other(
            "egress environment name is not a plain name",
        ));
    }
    let egress_dir = egress
        .as_deref()
        .map(|n| (n, Path::new(super::template::EGRESS_DIR).join(n)));
    let root = root.with_egress(
        Path::new("/work"),
        egress_dir.as_ref().map(|(n, d)| (*n, d.as_path())),
    );
    let env_json = serde_json::to_string(&env).map_err(io::Error::other)?;
    let plan = SandboxPlan::new(root, uid, limits, "", Vec::new(), env, seccomp, top_level);
    let child_fds = ChildFds {
        sync_read: fds[0].as_raw_fd(),
        error_write: fds[1].as_raw_fd(),
        channel: fds[2].as_raw_fd(),
        stdout_write: fds[3].as_raw_fd(),
        stderr_write: fds[4].as_raw_fd(),
        dev_null: fds[5].as_raw_fd(),
    };
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: NAMESPACES | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut RawFd as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // glibc keeps the thread's id in its thread control block and only
    // its own fork() updates it; have the kernel write the child's id
    // there, so raise() and pthread_kill() work in the sandbox.
    if let Some(addr) = tid_field {
        args.flags |= libc::CLONE_CHILD_SETTID as u64;
        args.child_tid = addr as u64;
    }
    let before_fork_ns = sys::monotonic_ns();
    // SAFETY: the template was just checked to be single-threaded, and
    // `args` points at live memory.
    match unsafe { sys::clone3(&mut args) }? {
        Forked::Child => {
            let clock = jail::contain_in_place(&plan, &child_fds, before_fork_ns);
            // Containment closed every fd but 0..=3 (the received ones
            // included); dropping their owners would close them twice.
            std::mem::forget(fds);
            let _ = CHILD_ENV.set(std::ffi::CString::new(env_json).unwrap_or_default());
            let steps = serde_json::to_string(clock.marks()).unwrap_or_else(|_| "[]".into());
            let _ = CHILD_STEPS.set(std::ffi::CString::new(steps).unwrap_or_default());
            Ok(Forked::Child)
        }
        Forked::Parent { pid } => {
            // SAFETY: clone3 returned a fresh pidfd that nothing else owns.
            let pidfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(pidfd) };
            let line = format!("{uid} {uid} 1\n");
            let maps = std::fs::write(format!("/proc/{pid}/uid_map"), &line)
                .and_then(|_| std::fs::write(format!("/proc/{pid}/gid_map"), &line));
            if let Err(e) = maps {
                let _ = sys::pidfd_send_signal(pidfd.as_raw_fd(), libc::SIGKILL);
                let _ = reap_blocking(pid);
                return Err(io::Error::other(format!(
                    "cannot write the sandbox id maps: {e}"
                )));
            }
            drop(fds); // the child has its copies
            wire::send(ctrl, &Reply::Forked { pid }, &[pidfd.as_raw_fd()])?;
            Ok(Forked::Parent { pid })
        }
    }
}

fn check_fds(fds: &[OwnedFd]) -> io::Result<()> {
    if fds.len() != 6 {
        return Err(io::Error::other(format!(
            "fork request carried {} fds, expected 6",
            fds.len()
        )));
    }
    Ok(())
}

/// The address of glibc's cached thread id (`struct pthread`'s `tid`) of
/// the calling (main) thread: the offset is found as the one place that
/// holds each thread's own id, in a helper thread and in this one.
fn glibc_tid_field() -> Option<usize> {
    const SCAN: usize = 512; // ints: 2 KiB, inside struct pthread
    fn candidates() -> Vec<usize> {
        // SAFETY: pthread_self points at this thread's struct pthread, which
        // is larger than SCAN ints and stays mapped while the thread runs.
        let (base, tid) = unsafe { (libc::pthread_self() as *const i32, libc::gettid()) };
        (0..SCAN)
            // SAFETY: see above; reads within the struct.
            .filter(|&i| unsafe { std::ptr::read_volatile(base.add(i)) } == tid)
            .collect()
    }
    let helper = std::thread::spawn(candidates).join().ok()?;
    let main = candidates();
    let common: Vec<usize> = helper.into_iter().filter(|i| main.contains(i)).collect();
    match common.as_slice() {
        // SAFETY: pthread_self has no preconditions.
        [i] => Some(unsafe { libc::pthread_self() } as usize + i * 4),
        _ => None,
    }
}

/// One thread and no writable shared mapping, or no fork.
///
/// The thread count is read before every fork. The mappings are read when
/// the fork loop starts and every [`MAPS_RECHECK`] forks: between forks only
/// this loop runs, and it makes no shared mapping, so a full read of a
/// large interpreter's `/proc/self/maps` (milliseconds) per fork would buy
/// nothing but latency.
fn check_forkable(forks: u64) -> io::Result<()> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(io::Error::other(format!(
            "template has {threads} threads; forking it would be unsafe"
        )));
    }
    if forks.is_multiple_of(MAPS_RECHECK) {
        check_mappings()?;
    }
    Ok(())
}

/// How often (in forks) the mappings are read again.
const MAPS_RECHECK: u64 = 64;

fn check_mappings() -> io::Result<()> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    if let Some(line) = shared_writable_mapping(&maps) {
        return Err(io::Error::other(format!(
            "template has a writable shared mapping: {line}"
        )));
    }
    Ok(())
}

/// Backs the template's anonymous private memory with transparent huge
/// pages where a whole, aligned 2 MiB fits (`MADV_COLLAPSE`, Linux 6.1; a
/// no-op before, or with THP `never`). A fork then copies one page-table
/// entry per 2 MiB instead of 512, and a sandbox that ends has fewer pages
/// to unmap. A child's first write into such a page splits the mapping and
/// copies 4 KiB, as before; nothing becomes shared that was not. The
/// regions' own THP flags are left as they are, so khugepaged does not
/// collapse a sandbox's memory later (`madvise` mode). Returns the bytes
/// collapsed.
fn collapse_anonymous_memory() -> u64 {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return 0;
    };
    let mut collapsed = 0u64;
    for (start, end) in huge_candidates(&maps, super::arena::HUGE_PAGE) {
        // SAFETY: advice on a range inside this process's own private
        // anonymous mappings; MADV_COLLAPSE moves their contents into huge
        // pages and changes nothing they hold.
        let r =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_COLLAPSE) };
        if r == 0 {
            collapsed += (end - start) as u64;
        }
    }
    collapsed
}

/// The 2 MiB-aligned ranges inside private, writable, anonymous mappings
/// (and the heap) of a `/proc/<pid>/maps` text.
fn huge_candidates(maps: &str, huge: usize) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let (range, perms, path) = maps_fields(line);
            if perms != "rw-p" || !(path.is_empty() || path == "[heap]") {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            let a = usize::from_str_radix(a, 16).ok()?;
            let b = usize::from_str_radix(b, 16).ok()?;
            let start = a.checked_add(huge - 1)? & !(huge - 1);
            let end = b & !(huge - 1);
            (end > start).then_some((start, end))
        })
        .collect()
}

fn thread_count() -> io::Result<u32> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads: line in /proc/self/status"))
}

/// The first mapping that is both writable and shared (`rw-s`), if any.
pub(crate) fn shared_writable_mapping(maps: &str) -> Option<&str> {
    maps.lines().find(|l| {
        let perms = maps_fields(l).1.as_bytes();
        perms.len() == 4 && perms[1] == b'w' && perms[3] == b's'
    })
}

/// The address range, permissions and path (`""` for anonymous memory) of
/// one `/proc/<pid>/maps` line; a missing field is `""`.
fn maps_fields(line: &str) -> (&str, &str, &str) {
    let mut f = line.split_whitespace();
    let (range, perms) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
    (range, perms, f.nth(3).unwrap_or(""))
}

fn reap(pid: i32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: waitpid with a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG | libc::__WALL) };
    (r == pid).then_some(status)
}

fn reap_blocking(pid: i32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: waitpid with a valid out-pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::__WALL) };
    (r == pid).then_some(status)
}

#[cfg(test)]
mod tests {
    #[test]
    fn shared_writable_mappings_are_found() {
        let maps =
            "7f00-7f01 r--p 00000000 00:00 0 /usr/lib/x.so\n7f02-7f03 rw-p 00000000 00:00 0\n";
        assert_eq!(super::shared_writable_mapping(maps), None);
        let bad = format!("{maps}7f04-7f05 rw-s 00000000 00:05 12 /dev/shm/x\n");
        assert!(super::shared_writable_mapping(&bad)
            .unwrap()
            .contains("/dev/shm/x"));
        let ro_shared = "7f04-7f05 r--s 00000000 00:05 12 /usr/lib/locale\n";
        assert_eq!(super::shared_writable_mapping(ro_shared), None);
    }

    #[test]
    fn huge_page_candidates_are_aligned_ranges_of_private_anonymous_memory() {
        let huge = 2 << 20;
        let maps = "\
00400000-00401000 r-xp 00000000 08:01 1 /usr/bin/python3
00a00000-00f00000 rw-p 00000000 00:00 0 [heap]
7f0000100000-7f0000500000 rw-p 00000000 00:00 0
7f0000600000-7f0000700000 rw-p 00000000 00:00 0
7f0000800000-7f0000c00000 rw-p 00001000 08:01 2 /usr/lib/x.so
7f0001000000-7f0001400000 rw-s 00000000 00:05 3 /dev/shm/y
7f0002000000-7f0002400000 r--p 00000000 00:00 0
7ffd00000000-7ffd00400000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(
            super::huge_candidates(maps, huge),
            vec![(0x00a00000, 0x00e00000), (0x7f0000200000, 0x7f0000400000)],
            "the heap and anonymous rw-p memory, trimmed to 2 MiB boundaries; \
             no file, shared, read-only or stack mapping, nothing under 2 MiB"
        );
    }
}
