//! A distinct unprivileged host uid for every live sandbox.
//!
//! Slots of the reserved range are claimed with `flock` on one lock file per
//! slot under kiln's run directory, so concurrent kiln processes never hand
//! out the same uid, and a crashed process's claims vanish with it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// A claimed uid; the claim is released on drop.
#[derive(Debug)]
pub struct UidLease {
    pub uid: u32,
    pub slot: u32,
    _lock: File,
}

/// Claims a free slot in `base .. base + count`, starting the search at a
/// spread-out position so consecutive sandboxes rarely reuse the same uid.
pub fn lease(dir: &Path, base: u32, count: u32) -> io::Result<UidLease> {
    std::fs::create_dir_all(dir)?;
    let start = (std::process::id().wrapping_mul(2_654_435_761) ^ nanos()) % count;
    for i in 0..count {
        let slot = (start + i) % count;
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC)
            .open(dir.join(format!("{slot}.lock")))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(UidLease {
                uid: base + slot,
                slot,
                _lock: file,
            });
        }
    }
    Err(io::Error::new(
        io::ErrorKind::WouldBlock,
        format!("all {count} sandbox uids are in use; raise sandbox.uid_count"),
    ))
}

fn nanos() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_leases_are_distinct_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let a = lease(dir.path(), 100_000, 2).unwrap();
        let b = lease(dir.path(), 100_000, 2).unwrap();
        assert_ne!(a.uid, b.uid);
        assert!(lease(dir.path(), 100_000, 2).is_err());
        drop(a);
        let c = lease(dir.path(), 100_000, 2).unwrap();
        assert!(c.uid == 100_000 || c.uid == 100_001);
    }
}
