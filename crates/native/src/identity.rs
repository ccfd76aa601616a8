//! Steps 5 and 6: who the sandbox is and what it may never regain.

use crate::kernel::Kernel;
use std::io;

/// Securebits that stop any way back to privilege, locked so they stay.
const LOCKED_SECUREBITS: libc::c_ulong = (libc::SECBIT_NOROOT
    | libc::SECBIT_NOROOT_LOCKED
    | libc::SECBIT_NO_SETUID_FIXUP
    | libc::SECBIT_NO_SETUID_FIXUP_LOCKED
    | libc::SECBIT_KEEP_CAPS_LOCKED
    | libc::SECBIT_NO_CAP_AMBIENT_RAISE
    | libc::SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED)
    as libc::c_ulong;

/// Before the root is built: take the sandbox uid while keeping the
/// namespace's capabilities (`SECBIT_NO_SETUID_FIXUP`), so the files the
/// setup creates belong to a mapped id. Capabilities are emptied in step 6.
pub fn assume_sandbox_ids(k: &impl Kernel, uid: u32) -> io::Result<()> {
    k.prctl(
        libc::PR_SET_SECUREBITS,
        libc::SECBIT_NO_SETUID_FIXUP as libc::c_ulong,
    )?;
    k.setresgid(uid)?;
    k.setresuid(uid)
}

/// Step 5: drop the bounding set (needs CAP_SETPCAP, so first), no
/// supplementary groups, then gid, then uid.
pub fn drop_privileges(k: &impl Kernel, uid: u32) -> io::Result<()> {
    for cap in 0..=63 {
        if let Err(e) = k.prctl(libc::PR_CAPBSET_DROP, cap) {
            if e.raw_os_error() == Some(libc::EINVAL) {
                break; // past the kernel's last capability
            }
            return Err(e);
        }
    }
    k.setgroups_empty()?;
    k.setresgid(uid)?;
    k.setresuid(uid)
}

/// Step 6: lock securebits (while CAP_SETPCAP is still held), empty every
/// capability set, not dumpable, parent-death signal (after the uid change,
/// which clears it), `no_new_privs`, rlimits.
pub fn harden(k: &impl Kernel, rlimits: &[(libc::__rlimit_resource_t, u64)]) -> io::Result<()> {
    k.prctl(libc::PR_SET_SECUREBITS, LOCKED_SECUREBITS)?;
    k.prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
    )?;
    k.clear_capabilities()?;
    k.prctl(libc::PR_SET_DUMPABLE, 0)?;
    k.prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong)?;
    k.prctl(libc::PR_SET_NO_NEW_PRIVS, 1)?;
    for &(resource, value) in rlimits {
        k.setrlimit(resource, value)?;
    }
    Ok(())
}
