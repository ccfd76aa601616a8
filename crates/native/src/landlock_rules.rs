//! Step 7: Landlock, where the kernel has it. The mounts already confine the
//! filesystem; Landlock is a second, independent wall that also denies TCP
//! bind/connect and (ABI 6+) signals and abstract sockets outside the sandbox.
//! An egress-enabled sandbox may bind and connect to one TCP port, the
//! forwarder's on `lo` (`docs/egress.md`).

use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, NetPort, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use std::path::PathBuf;

/// The newest ABI kiln knows and has tested.
const ABI_TARGET: ABI = ABI::V6;
/// [`ABI_TARGET`] as a number, for reports.
pub const ABI_TARGET_NUM: u32 = 6;

/// Restricts the calling process; returns whether anything was enforced.
pub fn restrict(
    read: &[PathBuf],
    write: &[PathBuf],
    dev: &[PathBuf],
    tcp_port: Option<u16>,
) -> Result<bool, String> {
    let abi = ABI_TARGET;
    let read_exec = AccessFs::from_read(abi);
    let read_write = AccessFs::from_all(abi) & !AccessFs::Execute;
    let dev_access = AccessFs::ReadFile | AccessFs::WriteFile;
    let proc_ = [PathBuf::from("/proc")];
    let dev_dir = [PathBuf::from("/dev")];
    let mut rules = Vec::new();
    for (list, access) in [
        (read, read_exec),
        (write, read_write),
        (dev, dev_access),
        (&proc_[..], AccessFs::from_read(abi)),
        (&dev_dir[..], AccessFs::ReadDir.into()),
    ] {
        for path in list {
            let fd = PathFd::new(path).map_err(|e| e.to_string())?;
            rules.push(PathBeneath::new(fd, access));
        }
    }
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(rules.into_iter().map(Ok::<_, landlock::RulesetError>)))
        .and_then(|r| {
            r.add_rules(tcp_port.into_iter().map(|port| {
                Ok::<_, landlock::RulesetError>(NetPort::new(
                    port,
                    AccessNet::BindTcp | AccessNet::ConnectTcp,
                ))
            }))
        })
        .and_then(|r| r.restrict_self())
        .map_err(|e| e.to_string())?;
    Ok(status.ruleset != RulesetStatus::NotEnforced)
}
