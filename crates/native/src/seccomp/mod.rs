//! The seccomp filter: the last containment step before the runner is
//! exec'd (DESIGN.md §4, step 8).
//!
//! The policy is data — `seccomp/x86_64.json`, seccompiler's JSON format
//! with a `comment` beside every entry; `seccomp/README.md` says how it was
//! derived. It is compiled to BPF when a sandbox is planned (before fork)
//! and [`SeccompPolicy::install`] only makes a syscall. The file holds four
//! filters, in this order; they are installed as one program that answers
//! exactly what the four would, stacked in this order ([`merge`]):
//!
//! 1. `allow` — the allowlist. Everything else answers `ENOSYS`, the errno
//!    libc falls back on (glibc retries `clone3` as `clone`). x32 numbers
//!    (bit `0x40000000`) never match, so they get `ENOSYS` too; a foreign
//!    architecture (`int 0x80`) fails seccompiler's arch check, which kills
//!    the process.
//! 2. `deny` — answers `EPERM`, so the call fails cleanly: the mount family,
//!    `ptrace`, namespaces, keyrings, `bpf`, `io_uring`, … plus argument
//!    rules on allowed calls (`clone` with a `CLONE_NEW*` flag, `ioctl`
//!    `TIOCSTI`/`TIOCLINUX`, a `personality` other than `PER_LINUX`).
//! 3. `unix_only` — `socket`/`socketpair` of any family but `AF_UNIX`
//!    answers `EAFNOSUPPORT`, the kernel's own answer for a family it lacks.
//! 4. `kill` — calls only exploit code makes (module loading, `kexec`,
//!    `iopl`, …) end the process with `SIGSYS`; the supervisor reports
//!    `killed` with reason `seccomp`.
//!
//! Stacking (Documentation/userspace-api/seccomp_filter.rst, "Return
//! values"): the kernel runs every filter and keeps the most severe action
//! (`KILL_PROCESS` > `TRAP` > `ERRNO` > … > `ALLOW`); among equal
//! precedence, the data (errno) of the most recently installed filter wins.
//! So `mount`, absent from `allow` (`ENOSYS`) and present in `deny`
//! (`EPERM`), answers `EPERM` only because `deny` comes after `allow`.
//!
//! Installing needs `no_new_privs` (or `CAP_SYS_ADMIN`, which the sandbox
//! does not have): the caller sets it first, otherwise the kernel answers
//! `EACCES`.

use std::collections::BTreeSet;
use std::io;

use seccompiler::TargetArch;
use serde::Deserialize;

mod merge;

/// The embedded policy (x86_64 syscall names).
pub const POLICY_JSON: &str = include_str!("../../seccomp/x86_64.json");
/// What egress-enabled sandboxes get in addition (`docs/egress.md`).
const EGRESS_JSON: &str = include_str!("../../seccomp/egress_x86_64.json");
/// Install order; the errno stacking above depends on it.
const INSTALL_ORDER: [&str; 4] = ["allow", "deny", "unix_only", "kill"];
/// `BPF_MAXINSNS`: the kernel's limit per filter.
const MAX_INSNS: usize = 4096;

/// A compiled policy: the one program installed (the filters merged,
/// [`merge`]) and seccompiler's program of each filter, in install order,
/// which the merged one is tested against.
pub struct SeccompPolicy {
    program: Vec<libc::sock_filter>,
    filters: Vec<Filter>,
    summary: Summary,
}

struct Filter {
    name: &'static str,
    program: Vec<libc::sock_filter>,
}

/// How many syscalls the policy allows, denies and kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Syscalls in the allowlist (some only with certain arguments).
    pub allowed: usize,
    /// Allowed syscalls whose arguments are also checked (`clone`, `ioctl`, `socket`, …).
    pub conditional: usize,
    /// Syscalls that always fail with `EPERM`.
    pub denied: usize,
    /// Syscalls that kill the process.
    pub killed: usize,
    /// BPF instructions of the installed (merged) program.
    pub instructions: usize,
}

/// Why the policy could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// The policy names x86_64 syscalls; other architectures have none yet.
    #[error("kiln's seccomp policy is written for x86_64, this host is {0}. Hint: use the docker backend (runtime runsc) on this architecture")]
    UnsupportedArch(&'static str),
    /// The JSON is malformed.
    #[error("the seccomp policy is not valid JSON: {0}")]
    Parse(#[source] serde_json::Error),
    /// seccompiler rejected the policy (unknown syscall name, bad rule).
    #[error("the seccomp policy does not compile: {0}")]
    Compile(#[source] seccompiler::Error),
    /// A filter of the install order is missing.
    #[error("the seccomp policy has no filter `{0}` (expected: allow, deny, unix_only, kill)")]
    MissingFilter(&'static str),
    /// A filter that is not in the install order.
    #[error("the seccomp policy has a filter `{0}` that kiln would not install (expected: allow, deny, unix_only, kill)")]
    UnknownFilter(String),
    /// A filter longer than the kernel accepts.
    #[error("seccomp filter `{name}` has {len} BPF instructions, the kernel accepts {MAX_INSNS}")]
    TooLong { name: &'static str, len: usize },
    /// Something the merged program cannot express (see `seccomp/merge.rs`).
    #[error("the seccomp policy uses {0}, which kiln's filter merge does not support (actions: allow, errno, kill_process; conditions: dword eq, ne, masked_eq)")]
    Unsupported(String),
}

impl SeccompPolicy {
    /// Compiles the embedded default policy for the host arch.
    pub fn default_policy() -> Result<Self, SeccompError> {
        Self::compile(POLICY_JSON)
    }

    /// The default policy plus what an egress-enabled sandbox needs: inet
    /// sockets (`socket` of `AF_INET`/`AF_INET6` no longer answers
    /// `EAFNOSUPPORT`) and `bind`/`listen`/`accept4` for the forwarder on
    /// `lo`. Everything else is the default policy, unchanged.
    pub fn egress_policy() -> Result<Self, SeccompError> {
        Self::compile(&egress_json()?)
    }

    fn compile(json: &str) -> Result<Self, SeccompError> {
        let mut programs = seccompiler::compile_from_json(json.as_bytes(), host_arch()?)
            .map_err(SeccompError::Compile)?;
        if let Some(name) = programs
            .keys()
            .find(|k| !INSTALL_ORDER.contains(&k.as_str()))
        {
            return Err(SeccompError::UnknownFilter(name.clone()));
        }
        let filters = INSTALL_ORDER
            .into_iter()
            .map(|name| {
                let bpf = programs
                    .remove(name)
                    .ok_or(SeccompError::MissingFilter(name))?;
                Filter::new(name, &bpf)
            })
            .collect::<Result<Vec<_>, SeccompError>>()?;
        let value: serde_json::Value = serde_json::from_str(json).map_err(SeccompError::Parse)?;
        let numbers = syscall_numbers(&value)?;
        let program = merge::merge(&value, &INSTALL_ORDER, &numbers)?;
        if program.len() > MAX_INSNS {
            return Err(SeccompError::TooLong {
                name: "merged",
                len: program.len(),
            });
        }
        let mut summary = Summary::of(json)?;
        summary.instructions = program.len();
        Ok(Self {
            program,
            filters,
            summary,
        })
    }

    /// Installs the policy (one program, the filters merged) on the calling
    /// thread. Only a syscall, no allocation: safe between fork and exec.
    /// The caller has set `no_new_privs`; on error it is expected to `_exit`.
    pub fn install(&self) -> Result<(), io::Error> {
        let prog = libc::sock_fprog {
            // Checked against MAX_INSNS when compiled.
            len: self.program.len() as u16,
            filter: self.program.as_ptr().cast_mut(),
        };
        // SAFETY: `prog` describes `self.program`, which lives as long as
        // `self`; the kernel copies the program before returning and never
        // writes through the pointer.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::c_ulong::from(libc::SECCOMP_SET_MODE_FILTER),
                0 as libc::c_ulong,
                &prog as *const libc::sock_fprog,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Number of syscalls allowed, denied, killed (for `kiln doctor` and docs).
    pub fn summary(&self) -> Summary {
        self.summary
    }

    /// Filter names in install order.
    pub fn filter_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.filters.iter().map(|f| f.name)
    }
}

impl Filter {
    /// Copies seccompiler's instructions into the kernel's `sock_filter`.
    fn new(name: &'static str, bpf: &[seccompiler::sock_filter]) -> Result<Self, SeccompError> {
        if bpf.len() > MAX_INSNS {
            return Err(SeccompError::TooLong {
                name,
                len: bpf.len(),
            });
        }
        let program = bpf
            .iter()
            .map(|i| libc::sock_filter {
                code: i.code,
                jt: i.jt,
                jf: i.jf,
                k: i.k,
            })
            .collect();
        Ok(Self { name, program })
    }
}

impl std::fmt::Debug for SeccompPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lens: Vec<_> = self
            .filters
            .iter()
            .map(|x| (x.name, x.program.len()))
            .collect();
        f.debug_struct("SeccompPolicy")
            .field("merged", &self.program.len())
            .field("filters", &lens)
            .finish()
    }
}

/// `x86_64.json` with `egress_x86_64.json` applied: its `allow` entries
/// appended to `allow`, its conditions added to each `socket` rule of
/// `unix_only` (conditions of one rule must all hold).
fn egress_json() -> Result<String, SeccompError> {
    use serde_json::Value;
    let mut policy: Value = serde_json::from_str(POLICY_JSON).map_err(SeccompError::Parse)?;
    let extra: Value = serde_json::from_str(EGRESS_JSON).map_err(SeccompError::Parse)?;
    let malformed = || {
        SeccompError::Parse(serde::de::Error::custom(
            "egress_x86_64.json does not fit x86_64.json",
        ))
    };
    let allow = policy["allow"]["filter"]
        .as_array_mut()
        .ok_or_else(malformed)?;
    allow.extend(
        extra["allow"]
            .as_array()
            .ok_or_else(malformed)?
            .iter()
            .cloned(),
    );
    let also = extra["unix_only_also_allow"]
        .as_array()
        .ok_or_else(malformed)?;
    let rules = policy["unix_only"]["filter"]
        .as_array_mut()
        .ok_or_else(malformed)?;
    let mut widened = 0;
    for rule in rules.iter_mut().filter(|r| r["syscall"] == "socket") {
        rule["args"]
            .as_array_mut()
            .ok_or_else(malformed)?
            .extend(also.iter().cloned());
        widened += 1;
    }
    if widened != 1 {
        return Err(malformed());
    }
    Ok(policy.to_string())
}

/// The number of every syscall the policy names, as seccompiler knows them:
/// one single-rule filter per name, compiled at once; each program is the
/// architecture check (3 instructions), the number's load, then
/// `JEQ <number>`.
fn syscall_numbers(
    policy: &serde_json::Value,
) -> Result<std::collections::BTreeMap<String, u32>, SeccompError> {
    let names: BTreeSet<&str> = policy
        .as_object()
        .into_iter()
        .flat_map(|o| o.values())
        .flat_map(|f| f["filter"].as_array().into_iter().flatten())
        .filter_map(|r| r["syscall"].as_str())
        .collect();
    let probe: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .map(|n| {
            let filter = serde_json::json!({
                "mismatch_action": "allow",
                "match_action": "kill_process",
                "filter": [{"syscall": n}],
            });
            (n.to_string(), filter)
        })
        .collect();
    let json = serde_json::Value::Object(probe).to_string();
    let programs = seccompiler::compile_from_json(json.as_bytes(), host_arch()?)
        .map_err(SeccompError::Compile)?;
    names
        .into_iter()
        .map(|name| {
            let nr = programs.get(name).and_then(|p| match p.as_slice() {
                [_, _, _, load, jeq, ..]
                    if load.code == merge::LD_W_ABS
                        && load.k == 0
                        && jeq.code == merge::JMP_JEQ_K =>
                {
                    Some(jeq.k)
                }
                _ => None,
            });
            nr.map(|nr| (name.to_string(), nr)).ok_or_else(|| {
                SeccompError::Unsupported(format!("syscall {name} (no number found)"))
            })
        })
        .collect()
}

#[cfg(target_arch = "x86_64")]
fn host_arch() -> Result<TargetArch, SeccompError> {
    Ok(TargetArch::x86_64)
}

#[cfg(not(target_arch = "x86_64"))]
fn host_arch() -> Result<TargetArch, SeccompError> {
    Err(SeccompError::UnsupportedArch(std::env::consts::ARCH))
}

/// The parts of seccompiler's JSON that the summary and the tests read.
#[derive(Deserialize)]
struct RawFilter {
    filter: Vec<RawRule>,
}

#[derive(Deserialize)]
struct RawRule {
    syscall: String,
    args: Option<Vec<serde_json::Value>>,
}

type RawPolicy = std::collections::HashMap<String, RawFilter>;

fn names<'a>(policy: &'a RawPolicy, filter: &str, conditional: Option<bool>) -> BTreeSet<&'a str> {
    let rules = policy
        .get(filter)
        .map(|f| f.filter.as_slice())
        .unwrap_or_default();
    rules
        .iter()
        .filter(|r| conditional.is_none_or(|c| r.args.is_some() == c))
        .map(|r| r.syscall.as_str())
        .collect()
}

impl Summary {
    fn of(json: &str) -> Result<Self, SeccompError> {
        let p: RawPolicy = serde_json::from_str(json).map_err(SeccompError::Parse)?;
        let allowed = names(&p, "allow", None);
        let mut checked = names(&p, "allow", Some(true));
        checked.extend(names(&p, "deny", Some(true)));
        checked.extend(names(&p, "unix_only", Some(true)));
        Ok(Self {
            allowed: allowed.len(),
            conditional: allowed.intersection(&checked).count(),
            denied: names(&p, "deny", Some(false)).len(),
            killed: names(&p, "kill", None).len(),
            instructions: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn raw() -> RawPolicy {
        serde_json::from_str(POLICY_JSON).unwrap()
    }

    #[test]
    fn default_policy_compiles_in_install_order() {
        let policy = SeccompPolicy::default_policy().unwrap();
        assert_eq!(policy.filter_names().collect::<Vec<_>>(), INSTALL_ORDER);
        assert!(policy
            .filters
            .iter()
            .all(|f| !f.program.is_empty() && f.program.len() <= MAX_INSNS));
        let s = policy.summary();
        assert!(s.allowed > 100 && s.denied > 40 && s.killed >= 10, "{s:?}");
        assert_eq!(
            s.conditional, 9,
            "clone, ioctl, mknod, mknodat, personality, prctl, seccomp, socket, socketpair: {s:?}"
        );
    }

    #[test]
    fn actions_are_the_documented_ones() {
        let v: Value = serde_json::from_str(POLICY_JSON).unwrap();
        let act = |f: &str, k: &str| v[f][k].to_string();
        assert_eq!(act("allow", "match_action"), r#""allow""#);
        assert_eq!(act("allow", "mismatch_action"), r#"{"errno":38}"#, "ENOSYS");
        assert_eq!(act("deny", "match_action"), r#"{"errno":1}"#, "EPERM");
        assert_eq!(
            act("unix_only", "match_action"),
            r#"{"errno":97}"#,
            "EAFNOSUPPORT"
        );
        assert_eq!(act("kill", "match_action"), r#""kill_process""#);
        for f in ["deny", "unix_only", "kill"] {
            assert_eq!(act(f, "mismatch_action"), r#""allow""#, "{f}");
        }
    }

    #[test]
    fn every_entry_and_condition_has_a_reason() {
        let v: Value = serde_json::from_str(POLICY_JSON).unwrap();
        for (name, filter) in v.as_object().unwrap() {
            for rule in filter["filter"].as_array().unwrap() {
                let nonempty =
                    |x: &Value| x["comment"].as_str().is_some_and(|c| !c.trim().is_empty());
                assert!(nonempty(rule), "{name}: {rule} has no comment");
                for cond in rule["args"].as_array().into_iter().flatten() {
                    assert!(nonempty(cond), "{name}: condition {cond} has no comment");
                }
            }
        }
    }

    #[test]
    fn lists_do_not_overlap() {
        let p = raw();
        let allow = names(&p, "allow", None);
        let kill = names(&p, "kill", None);
        let deny_all = names(&p, "deny", Some(false));
        assert!(
            allow.is_disjoint(&kill),
            "allowed and killed: {:?}",
            allow.intersection(&kill)
        );
        assert!(
            deny_all.is_disjoint(&kill),
            "denied and killed: {:?}",
            deny_all.intersection(&kill)
        );
        // An unconditional deny of an allowed call would make the allow entry a lie.
        assert!(
            allow.is_disjoint(&deny_all),
            "allowed and denied: {:?}",
            allow.intersection(&deny_all)
        );
    }

    #[test]
    fn argument_rules_are_reachable() {
        let p = raw();
        let allow_plain = names(&p, "allow", Some(false));
        // An argument rule in deny/unix_only narrows an allowed call; on an
        // unlisted call its mismatch path would be ENOSYS anyway.
        for f in ["deny", "unix_only"] {
            for s in names(&p, f, Some(true)) {
                assert!(
                    allow_plain.contains(s),
                    "{f}: argument rule on {s}, which allow does not list"
                );
            }
        }
        // seccompiler merges a bare entry into a syscall's argument rules,
        // silently turning "always" into "only with these arguments".
        for (f, filter) in &p {
            for s in names(&p, f, Some(false)) {
                let n = filter.filter.iter().filter(|r| r.syscall == s).count();
                assert_eq!(n, 1, "{f}: {s} is listed {n} times, once without arguments");
            }
        }
    }

    #[test]
    fn egress_variant_adds_only_inet_and_the_listener_calls() {
        let base = SeccompPolicy::default_policy().unwrap().summary();
        let egress = SeccompPolicy::egress_policy().unwrap().summary();
        assert_eq!(
            egress.allowed,
            base.allowed + 4,
            "bind, listen, accept, accept4"
        );
        assert_eq!((egress.denied, egress.killed), (base.denied, base.killed));
        let json: RawPolicy = serde_json::from_str(&egress_json().unwrap()).unwrap();
        let socket = json["unix_only"]
            .filter
            .iter()
            .find(|r| r.syscall == "socket")
            .unwrap();
        let vals: Vec<_> = socket
            .args
            .as_ref()
            .unwrap()
            .iter()
            .map(|a| a["val"].as_u64().unwrap())
            .collect();
        assert_eq!(
            vals,
            [1, 2, 10],
            "AF_UNIX, AF_INET, AF_INET6 pass; everything else EAFNOSUPPORT"
        );
        let base_raw = raw();
        let base_names = names(&base_raw, "allow", None);
        for call in ["bind", "listen", "accept", "accept4"] {
            assert!(
                !base_names.contains(call),
                "{call} is not in the default policy"
            );
        }
        let v: serde_json::Value = serde_json::from_str(EGRESS_JSON).unwrap();
        for entry in v["allow"]
            .as_array()
            .unwrap()
            .iter()
            .chain(v["unix_only_also_allow"].as_array().unwrap())
        {
            assert!(
                entry["comment"].as_str().is_some_and(|c| !c.is_empty()),
                "{entry}"
            );
        }
    }

    #[test]
    fn rejects_unknown_and_missing_filters() {
        let extra = POLICY_JSON.replacen(r#""kill": {"#, r#""other": {"mismatch_action": "allow", "match_action": "log", "filter": []}, "kill": {"#, 1);
        assert!(
            matches!(SeccompPolicy::compile(&extra), Err(SeccompError::UnknownFilter(n)) if n == "other")
        );
        let missing = POLICY_JSON.replacen(r#""kill": {"#, r#""kill_": {"#, 1);
        assert!(SeccompPolicy::compile(&missing).is_err());
    }
}
