//! Typed-error wrappers around [`CgroupFs`] shared by v1 and v2.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use super::detect::Dirs;
use super::{keyed_value, parse_pids, CgroupError, CgroupFs};

pub(crate) fn write(fs: &dyn CgroupFs, path: &Path, value: &str) -> Result<(), CgroupError> {
    tracing::trace!(path = %path.display(), value, "cgroup write");
    fs.write(path, value)
        .map_err(|e| CgroupError::write(path.to_path_buf(), value, e))
}

/// Writes `value` to `path` only if the file exists (optional kernel features).
pub(crate) fn write_if_present(
    fs: &dyn CgroupFs,
    path: &Path,
    value: &str,
) -> Result<(), CgroupError> {
    if fs.exists(path) {
        write(fs, path, value)?;
    }
    Ok(())
}

pub(crate) fn read(fs: &dyn CgroupFs, path: &Path) -> Result<String, CgroupError> {
    fs.read(path)
        .map_err(|e| CgroupError::read(path.to_path_buf(), e))
}

pub(crate) fn read_u64(fs: &dyn CgroupFs, path: &Path) -> Result<u64, CgroupError> {
    let text = read(fs, path)?;
    text.trim().parse().map_err(|_| CgroupError::Parse {
        path: path.to_path_buf(),
        what: format!("expected a number, found `{}`", text.trim()),
    })
}

/// The number after `key` in a flat-keyed file.
pub(crate) fn read_keyed(fs: &dyn CgroupFs, path: &Path, key: &str) -> Result<u64, CgroupError> {
    keyed_value(&read(fs, path)?, key).ok_or_else(|| CgroupError::Parse {
        path: path.to_path_buf(),
        what: format!("no `{key} <number>` line"),
    })
}

/// Every pid in the `cgroup.procs` of any of `dirs`, sorted, once each.
/// A directory that does not exist (a half-made cgroup being reaped) is skipped.
pub(crate) fn procs(fs: &dyn CgroupFs, dirs: &Dirs) -> Result<Vec<i32>, CgroupError> {
    let mut pids = Vec::new();
    for dir in dirs.unique() {
        let path = dir.join("cgroup.procs");
        match fs.read(&path) {
            Ok(text) => pids.extend(parse_pids(&text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(CgroupError::read(path, e)),
        }
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// SIGKILLs every pid listed in `dirs`. A pid already gone is not an error;
/// the first other failure is returned after trying them all.
pub(crate) fn kill_listed(fs: &dyn CgroupFs, dirs: &Dirs) -> Result<(), CgroupError> {
    let mut first_err = None;
    for pid in procs(fs, dirs)? {
        match fs.kill(pid, libc::SIGKILL) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(source) => {
                first_err.get_or_insert(CgroupError::Signal {
                    pid,
                    signal: libc::SIGKILL,
                    source,
                });
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Freezes (so nothing forks meanwhile), SIGKILLs every member, thaws (so the
/// kill is delivered). `is_frozen` is polled up to `timeout`; if the freeze
/// does not complete, the kill goes ahead anyway and `wait_empty` judges.
pub(crate) fn freeze_kill_thaw(
    fs: &dyn CgroupFs,
    dirs: &Dirs,
    (file, frozen, thawed): (&Path, &str, &str),
    is_frozen: impl Fn() -> Result<bool, CgroupError>,
    timeout: Duration,
) -> Result<(), CgroupError> {
    write(fs, file, frozen)?;
    if !poll(timeout, is_frozen)? {
        tracing::warn!(path = %file.display(), "cgroup did not freeze in {timeout:?}; killing anyway");
    }
    let killed = kill_listed(fs, dirs);
    let thaw = write(fs, file, thawed);
    killed.and(thaw)
}

/// Calls `done` until it says yes or `timeout` passes; the last answer.
pub(crate) fn poll(
    timeout: Duration,
    done: impl Fn() -> Result<bool, CgroupError>,
) -> Result<bool, CgroupError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if done()? {
            return Ok(true);
        }
        if start.elapsed() >= timeout {
            return Ok(false);
        }
        std::thread::sleep(pause.min(timeout.saturating_sub(start.elapsed())));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}
