//! kiln's own seccomp policy as a Docker/OCI profile.
//!
//! The native backend stacks four filters (`allow`, `deny`, `unix_only`,
//! `kill`, see `crates/native/seccomp/x86_64.json`); an engine takes one
//! profile. This module folds the four into one with the same effect:
//! anything not allowed fails with `ENOSYS`, the deny list with `EPERM`,
//! non-`AF_UNIX` sockets with `EAFNOSUPPORT`, the kill list kills the
//! process. Docker's default profile is not used: it allows inet sockets
//! and (in 20.10) `io_uring_setup`.
//!
//! Three deny rules have argument conditions that a single allow rule must
//! express as their negation (`clone` with namespace flags, `ioctl`
//! `TIOCSTI`/`TIOCLINUX`, `personality` other than the default). They are
//! written out below; a new conditional deny rule in the native policy makes
//! [`docker_profile`] fail (and its test), so it cannot be dropped silently.

use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Deserialize)]
struct Policy {
    allow: Filter,
    deny: Filter,
    unix_only: Filter,
    kill: Filter,
}

#[derive(Deserialize)]
struct Filter {
    filter: Vec<Rule>,
}

#[derive(Deserialize)]
struct Rule {
    syscall: String,
    #[serde(default)]
    args: Vec<Cond>,
}

#[derive(Deserialize, Clone)]
struct Cond {
    index: u32,
    op: Op,
    val: u64,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "snake_case")]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    MaskedEq(u64),
}

/// Syscalls the engine's init (`docker-init`/`catatonit`) and the OCI
/// runtime's last steps before `execve` need, that the runner itself does
/// not: allowed only in containers.
const CONTAINER_EXTRAS: &[(&str, &str)] = &[
    (
        "capget",
        "runc and the init read their (empty) capability sets",
    ),
    (
        "getpriority",
        "the init and subprocess query scheduling priority",
    ),
    ("sched_getparam", "glibc's posix_spawn in the init"),
    ("sched_getscheduler", "glibc's posix_spawn in the init"),
    (
        "signalfd4",
        "catatonit (Podman's init) waits for signals on a signalfd",
    ),
    ("signalfd", "the older signalfd call, for the same"),
    (
        "tgkill",
        "the init forwards signals to its child process group",
    ),
];

/// The namespace flags `clone` must not carry (the native deny rules).
const CLONE_NS_FLAGS: u64 = 0x0002_0000 // CLONE_NEWNS
    | 0x0200_0000 // CLONE_NEWCGROUP
    | 0x0400_0000 // CLONE_NEWUTS
    | 0x0800_0000 // CLONE_NEWIPC
    | 0x1000_0000 // CLONE_NEWUSER
    | 0x2000_0000 // CLONE_NEWPID
    | 0x4000_0000 // CLONE_NEWNET
    | 0x80; // CLONE_NEWTIME

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
const EAFNOSUPPORT: u32 = 97;

/// Why the native policy could not be folded into one profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("the native seccomp policy is not valid JSON: {0}")]
    Parse(#[from] serde_json::Error),
    #[error("the native policy denies `{0}` under argument conditions the container profile does not know; extend crates/docker/src/seccomp.rs")]
    UnknownConditionalDeny(String),
}

/// The Docker/OCI seccomp profile (JSON) with the native policy's effect.
pub fn docker_profile() -> Result<String, ProfileError> {
    Ok(build(kiln_native::seccomp::POLICY_JSON)?.to_string())
}

/// The profile for gVisor (`runsc --oci-seccomp`), whose sentry applies it
/// by its own syscall names — some differ from Linux's (`pselect6` is
/// `pselect` there), so an allowlist would break ordinary calls — and which
/// does not know `SCMP_ACT_KILL_PROCESS` nor `defaultErrnoRet` (2022
/// release). Everything else is allowed; the native deny list, the kill
/// list (as `EPERM`), non-`AF_UNIX` sockets and `clone` with namespace
/// flags are refused. gVisor's own kernel is the main wall here.
pub fn gvisor_profile() -> Result<String, ProfileError> {
    let policy: Policy = serde_json::from_str(kiln_native::seccomp::POLICY_JSON)?;
    let mut rules = vec![json!({
        "names": names(&policy.deny).into_iter().filter(|n| *n != "clone" && *n != "ioctl" && *n != "personality").chain(names(&policy.kill)).collect::<Vec<_>>(),
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": EPERM,
        "comment": "the native deny and kill lists",
    })];
    for name in names(&policy.unix_only) {
        rules.push(rule(
            name,
            "SCMP_ACT_ERRNO",
            Some(EAFNOSUPPORT),
            &[cond(0, "SCMP_CMP_NE", 1, 0)],
        ));
    }
    for r in policy
        .deny
        .filter
        .iter()
        .filter(|r| r.syscall == "clone" || r.syscall == "ioctl")
    {
        let args: Vec<Value> = r.args.iter().map(translate).collect();
        rules.push(rule(&r.syscall, "SCMP_ACT_ERRNO", Some(EPERM), &args));
    }
    Ok(json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": rules,
    })
    .to_string())
}

fn build(policy_json: &str) -> Result<Value, ProfileError> {
    let policy: Policy = serde_json::from_str(policy_json)?;
    let kill: BTreeSet<&str> = names(&policy.kill);
    let deny_always: BTreeSet<&str> = policy
        .deny
        .filter
        .iter()
        .filter(|r| r.args.is_empty())
        .map(|r| r.syscall.as_str())
        .collect();
    let mut deny_when: BTreeMap<&str, Vec<&Rule>> = BTreeMap::new();
    for rule in policy.deny.filter.iter().filter(|r| !r.args.is_empty()) {
        deny_when.entry(&rule.syscall).or_default().push(rule);
    }
    let unix_only = names(&policy.unix_only);

    let mut allow: BTreeMap<&str, Vec<&Rule>> = BTreeMap::new();
    for rule in &policy.allow.filter {
        allow.entry(&rule.syscall).or_default().push(rule);
    }
    let mut rules = Vec::new();
    let mut plain = Vec::new();
    for (name, allowed) in &allow {
        if kill.contains(name) || deny_always.contains(name) {
            continue; // their own rules below
        }
        if unix_only.contains(name) {
            rules.push(rule(name, "SCMP_ACT_ALLOW", None, &[eq(0, 1)]));
            rules.push(rule(
                name,
                "SCMP_ACT_ERRNO",
                Some(EAFNOSUPPORT),
                &[cond(0, "SCMP_CMP_NE", 1, 0)],
            ));
            continue;
        }
        if let Some(denied) = deny_when.get(name) {
            rules.extend(negated_deny(name, denied)?);
            continue;
        }
        if allowed.iter().any(|r| r.args.is_empty()) {
            plain.push(*name);
        } else {
            for r in allowed {
                let args: Vec<Value> = r.args.iter().map(translate).collect();
                rules.push(rule(name, "SCMP_ACT_ALLOW", None, &args));
            }
        }
    }
    for (name, _why) in CONTAINER_EXTRAS {
        if !allow.contains_key(name) {
            plain.push(name);
        }
    }
    plain.sort_unstable();
    plain.dedup();
    rules.insert(
        0,
        json!({"names": plain, "action": "SCMP_ACT_ALLOW", "comment": "the native allowlist"}),
    );
    rules.push(json!({
        "names": deny_always.iter().collect::<Vec<_>>(),
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": EPERM,
        "comment": "the native deny list: EPERM",
    }));
    rules.push(json!({
        "names": kill.iter().collect::<Vec<_>>(),
        "action": "SCMP_ACT_KILL_PROCESS",
        "comment": "the native kill list",
    }));
    Ok(json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": ENOSYS,
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": rules,
    }))
}

/// The allow rules of a syscall the native policy denies under conditions.
fn negated_deny(name: &str, denied: &[&Rule]) -> Result<Vec<Value>, ProfileError> {
    let unknown = || ProfileError::UnknownConditionalDeny(name.to_string());
    match name {
        // Allowed while no namespace flag is set.
        "clone" => {
            let all_ns = denied.iter().all(|r| {
                r.args.len() == 1
                    && matches!(r.args[0].op, Op::MaskedEq(m) if m & CLONE_NS_FLAGS == m)
            });
            if !all_ns {
                return Err(unknown());
            }
            Ok(vec![rule(
                name,
                "SCMP_ACT_ALLOW",
                None,
                &[cond(0, "SCMP_CMP_MASKED_EQ", CLONE_NS_FLAGS, 0)],
            )])
        }
        // Allowed for any request but the denied ones.
        "ioctl" => {
            let args: Option<Vec<Value>> = denied
                .iter()
                .map(|r| match r.args.as_slice() {
                    [Cond {
                        index: 1,
                        op: Op::Eq,
                        val,
                    }] => Some(cond(1, "SCMP_CMP_NE", *val, 0)),
                    _ => None,
                })
                .collect();
            let args = args.ok_or_else(unknown)?;
            let mut out = vec![rule(name, "SCMP_ACT_ALLOW", None, &args)];
            for r in denied {
                out.push(rule(
                    name,
                    "SCMP_ACT_ERRNO",
                    Some(EPERM),
                    &[eq(1, r.args[0].val)],
                ));
            }
            Ok(out)
        }
        // Allowed only for the values the deny rule spares.
        "personality" => {
            let spared: Option<Vec<u64>> = match denied {
                [r] if r
                    .args
                    .iter()
                    .all(|c| c.index == 0 && matches!(c.op, Op::Ne)) =>
                {
                    Some(r.args.iter().map(|c| c.val).collect())
                }
                _ => None,
            };
            Ok(spared
                .ok_or_else(unknown)?
                .into_iter()
                .map(|v| rule(name, "SCMP_ACT_ALLOW", None, &[eq(0, v)]))
                .collect())
        }
        _ => Err(unknown()),
    }
}

fn names(filter: &Filter) -> BTreeSet<&str> {
    filter.filter.iter().map(|r| r.syscall.as_str()).collect()
}

fn rule(name: &str, action: &str, errno: Option<u32>, args: &[Value]) -> Value {
    let mut r = json!({"names": [name], "action": action});
    if let Some(errno) = errno {
        r["errnoRet"] = json!(errno);
    }
    if !args.is_empty() {
        r["args"] = json!(args);
    }
    r
}

fn cond(index: u32, op: &str, value: u64, value_two: u64) -> Value {
    json!({"index": index, "value": value, "valueTwo": value_two, "op": op})
}

fn eq(index: u32, value: u64) -> Value {
    cond(index, "SCMP_CMP_EQ", value, 0)
}

fn translate(c: &Cond) -> Value {
    match c.op {
        Op::Eq => cond(c.index, "SCMP_CMP_EQ", c.val, 0),
        Op::Ne => cond(c.index, "SCMP_CMP_NE", c.val, 0),
        Op::Lt => cond(c.index, "SCMP_CMP_LT", c.val, 0),
        Op::Le => cond(c.index, "SCMP_CMP_LE", c.val, 0),
        Op::Gt => cond(c.index, "SCMP_CMP_GT", c.val, 0),
        Op::Ge => cond(c.index, "SCMP_CMP_GE", c.val, 0),
        Op::MaskedEq(mask) => cond(c.index, "SCMP_CMP_MASKED_EQ", mask, c.val),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Value {
        build(kiln_native::seccomp::POLICY_JSON).expect("the native policy folds")
    }

    fn actions_for(p: &Value, name: &str) -> Vec<String> {
        p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"].as_array().unwrap().iter().any(|n| n == name))
            .map(|r| r["action"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn same_effect_as_the_native_filters() {
        let p = profile();
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], ENOSYS);
        assert_eq!(actions_for(&p, "read"), ["SCMP_ACT_ALLOW"]);
        assert_eq!(actions_for(&p, "mount"), ["SCMP_ACT_ERRNO"]);
        assert_eq!(actions_for(&p, "io_uring_setup"), ["SCMP_ACT_ERRNO"]);
        assert_eq!(actions_for(&p, "init_module"), ["SCMP_ACT_KILL_PROCESS"]);
        assert_eq!(actions_for(&p, "setuid"), ["SCMP_ACT_ERRNO"]);
        // inet sockets fail, AF_UNIX works.
        let socket: Vec<&Value> = p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"][0] == "socket")
            .collect();
        assert_eq!(socket.len(), 2);
        assert_eq!(socket[0]["args"][0]["value"], 1);
        assert_eq!(socket[1]["errnoRet"], EAFNOSUPPORT);
        // clone: only without namespace flags.
        let clone = p["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["names"][0] == "clone")
            .unwrap();
        assert_eq!(clone["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
        assert_eq!(clone["args"][0]["value"], CLONE_NS_FLAGS);
        assert_eq!(clone["args"][0]["valueTwo"], 0);
        // Nothing is both allowed plainly and denied.
        let plain = &p["syscalls"][0]["names"];
        for denied in [
            "mount", "unshare", "ptrace", "bpf", "keyctl", "clone", "socket",
        ] {
            assert!(
                !plain.as_array().unwrap().iter().any(|n| n == denied),
                "{denied} is in the plain allowlist"
            );
        }
    }

    #[test]
    fn an_unknown_conditional_deny_is_an_error() {
        let policy = r#"{
            "allow": {"filter": [{"syscall": "read"}, {"syscall": "mmap"}]},
            "deny": {"filter": [{"syscall": "mmap", "args": [{"index": 2, "op": "eq", "val": 7}]}]},
            "unix_only": {"filter": []},
            "kill": {"filter": []}
        }"#;
        assert!(matches!(
            build(policy),
            Err(ProfileError::UnknownConditionalDeny(s)) if s == "mmap"
        ));
    }
}
