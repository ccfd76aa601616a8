//! Step 3 and 4: a private mount tree and a fresh root on tmpfs.

use crate::kernel::Kernel;
use crate::plan::RootPlan;
use crate::sys::{MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC, MOUNT_ATTR_NOSUID, MOUNT_ATTR_RDONLY};
use std::ffi::CStr;
use std::io;

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// Step 3: nothing mounted from here on propagates back to the host.
pub fn make_private(k: &impl Kernel) -> io::Result<()> {
    k.mount(None, c"/", None, libc::MS_REC | libc::MS_PRIVATE, None)
}

/// Step 4: builds the new root under `plan.new_root`, pivots into it and
/// detaches the old root. On return the process sees only the sandbox tree.
pub fn build_root(k: &impl Kernel, plan: &RootPlan) -> io::Result<()> {
    let tmpfs = c"tmpfs";
    k.mount(
        Some(tmpfs),
        &plan.new_root,
        Some(tmpfs),
        libc::MS_NOSUID | libc::MS_NODEV,
        Some(c"size=1m,nr_inodes=256,mode=0755"),
    )?;
    bind_runtime(k, plan)?;
    bind_datasets(k, plan)?;
    bind_egress(k, plan)?;
    bind_libraries(k, plan)?;
    for (target, opts) in [(&plan.work, &plan.work_opts), (&plan.tmp, &plan.tmp_opts)] {
        k.mkdir(target, 0o700)?;
        k.mount(
            Some(tmpfs),
            target,
            Some(tmpfs),
            NOSUID_NODEV_NOEXEC,
            Some(opts),
        )?;
    }
    k.mkdir(&plan.work_out, 0o700)?;
    build_dev(k, plan)?;
    // /proc must be mounted while the host's /proc is still visible: the
    // kernel only allows a new proc mount in a user namespace that can
    // already see a full one.
    k.mkdir(&plan.proc_, 0o555)?;
    k.mount(
        Some(c"proc"),
        &plan.proc_,
        Some(c"proc"),
        NOSUID_NODEV_NOEXEC,
        Some(c"hidepid=invisible,subset=pid"),
    )?;
    pivot(k, plan)
}

/// The runtime: bound, then made read-only, nosuid and nodev recursively.
/// (A bind with `MS_RDONLY` alone would stay writable.)
fn bind_runtime(k: &impl Kernel, plan: &RootPlan) -> io::Result<()> {
    for (source, target) in &plan.runtime_binds {
        bind_read_only(k, source, target, 0)?;
    }
    Ok(())
}

/// Binds `source` recursively at `target` (made first), then makes the whole
/// bind read-only, nosuid, nodev and `extra` (e.g. noexec) with one
/// recursive `mount_setattr`.
fn bind_read_only(k: &impl Kernel, source: &CStr, target: &CStr, extra: u64) -> io::Result<()> {
    k.mkdir(target, 0o755)?;
    k.mount(
        Some(source),
        target,
        None,
        libc::MS_BIND | libc::MS_REC,
        None,
    )?;
    k.mount_setattr(
        target,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | extra,
        true,
    )
}

/// Datasets: host directories the policy names, bound at `/data/<name>`
/// read-only, and no program on them runs.
fn bind_datasets(k: &impl Kernel, plan: &RootPlan) -> io::Result<()> {
    if plan.dataset_binds.is_empty() {
        return Ok(());
    }
    k.mkdir(&plan.data, 0o755)?;
    for (source, target) in &plan.dataset_binds {
        bind_read_only(k, source, target, MOUNT_ATTR_NOEXEC)?;
    }
    Ok(())
}

/// The egress proxy's socket directory at `/run/kiln`, read-only (a unix
/// socket on a read-only mount still accepts connections).
fn bind_egress(k: &impl Kernel, plan: &RootPlan) -> io::Result<()> {
    let Some((source, target)) = &plan.egress_bind else {
        return Ok(());
    };
    k.mkdir(&plan.run, 0o755)?;
    k.mkdir(&plan.run_kiln, 0o755)?;
    k.mount(Some(source), target, None, libc::MS_BIND, None)?;
    k.mount_setattr(
        target,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
        false,
    )
}

/// A wheelhouse library tree at `/libraries`: read-only, nosuid, nodev;
/// executable, since Python maps its extension modules.
fn bind_libraries(k: &impl Kernel, plan: &RootPlan) -> io::Result<()> {
    match &plan.libraries {
        Some((source, target)) => bind_read_only(k, source, target, 0),
        None => Ok(()),
    }
}

/// A minimal /dev: four character devices bound from the host, a few
/// symlinks, all on a read-only, noexec tmpfs.
fn build_dev(k: &impl Kernel, plan: &RootPlan) -> io::Result<()> {
    let tmpfs = c"tmpfs";
    k.mkdir(&plan.dev, 0o755)?;
    k.mount(
        Some(tmpfs),
        &plan.dev,
        Some(tmpfs),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        Some(c"size=64k,nr_inodes=64,mode=0755"),
    )?;
    for (source, target) in &plan.dev_binds {
        k.touch(target, 0o666)?;
        k.mount(Some(source), target, None, libc::MS_BIND, None)?;
        k.mount_setattr(target, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC, false)?;
    }
    for (link_target, link) in &plan.dev_links {
        k.symlink(link_target, link)?;
    }
    k.mount_setattr(
        &plan.dev,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
        false,
    )
}

/// `pivot_root(".", ".")` stacks the old root on the new one; detaching it
/// leaves only the new root. The root tmpfs is then made read-only.
fn pivot(k: &impl Kernel, plan: &RootPlan) -> io::Result<()> {
    let dot = c".";
    k.chdir(&plan.new_root)?;
    k.pivot_root(dot, dot)?;
    k.umount_detach(dot)?;
    let root = c"/";
    k.chdir(root)?;
    k.mount_setattr(
        root,
        MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC,
        false,
    )?;
    k.chdir(c"/work")
}
