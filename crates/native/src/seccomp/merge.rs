//! The policy's filters merged into one BPF program that finds the syscall
//! by binary search.
//!
//! seccompiler compiles each filter to a linear chain: one compare per
//! listed syscall, so a call it does not list runs through all of them
//! (170 in `allow`). Per sandbox that cost is paid when the filters are
//! attached: the kernel converts and JITs each program, then, holding the
//! sighand lock with interrupts off, emulates each one for every syscall
//! number to fill its "always allowed" cache (`seccomp_cache_prepare`).
//! With the four linear programs that was the slowest containment step
//! (~0.8 ms of a fork's start in `kiln bench`; ~5% of all CPU in a W4 run
//! under `perf`). One program that splits the number range in halves reads
//! ~8 compares to reach any syscall.
//!
//! The merged program answers exactly what the stacked filters answer. The
//! kernel runs every filter and keeps the most severe action
//! (`KILL_PROCESS` > `ERRNO` > `ALLOW`); among equal ones, the most recently
//! installed filter's data (the errno). For each syscall number the merged
//! program therefore tries the filters' non-`ALLOW` answers from the most to
//! the least severe (newest first among equals), each guarded by whether its
//! filter matches, and returns the first whose guard holds; `ALLOW` if none.
//! The tests run both, the four seccompiler programs stacked by the kernel's
//! rule and this one, in a BPF interpreter over every syscall number and
//! every argument value the rules distinguish.
//!
//! Supported (all the policy uses; anything else is refused): actions
//! `allow`, `errno`, `kill_process`; 32-bit (`dword`) argument conditions
//! `eq`, `ne`, `masked_eq`.

use std::collections::BTreeMap;

use serde_json::Value;

use super::SeccompError;

/// `SECCOMP_RET_*` and the `seccomp_data` offsets (`linux/seccomp.h`).
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
const DATA_ARGS: u32 = 16;
/// `AUDIT_ARCH_X86_64`.
const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;

/// BPF opcodes (`linux/bpf_common.h`).
/// `BPF_LD | BPF_W | BPF_ABS`
pub(super) const LD_W_ABS: u16 = 0x20;
/// `BPF_JMP | BPF_JA`
const JMP_JA: u16 = 0x05;
/// `BPF_JMP | BPF_JEQ | BPF_K`
pub(super) const JMP_JEQ_K: u16 = 0x15;
/// `BPF_JMP | BPF_JGE | BPF_K`
const JMP_JGE_K: u16 = 0x35;
/// `BPF_ALU | BPF_AND | BPF_K`
const ALU_AND_K: u16 = 0x54;
/// `BPF_RET | BPF_K`
const RET_K: u16 = 0x06;

/// What a filter answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Allow,
    Errno(u16),
    KillProcess,
}

impl Action {
    fn parse(v: &Value) -> Result<Self, SeccompError> {
        match v {
            Value::String(s) if s == "allow" => Ok(Self::Allow),
            Value::String(s) if s == "kill_process" => Ok(Self::KillProcess),
            Value::Object(o) if o.len() == 1 => match o.get("errno").and_then(Value::as_u64) {
                Some(n) if n <= 4095 => Ok(Self::Errno(n as u16)),
                _ => Err(unsupported(format!("action {v}"))),
            },
            _ => Err(unsupported(format!("action {v}"))),
        }
    }

    fn ret(self) -> u32 {
        match self {
            Self::Allow => RET_ALLOW,
            Self::Errno(n) => RET_ERRNO | u32::from(n),
            Self::KillProcess => RET_KILL_PROCESS,
        }
    }
}

/// One argument condition: the low 32 bits of an argument, compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cond {
    Eq { arg: u8, val: u32 },
    Ne { arg: u8, val: u32 },
    MaskedEq { arg: u8, mask: u32, val: u32 },
}

impl Cond {
    fn parse(v: &Value) -> Result<Self, SeccompError> {
        let arg = v["index"]
            .as_u64()
            .filter(|&i| i < 6)
            .ok_or_else(|| unsupported(format!("argument index in {v}")))? as u8;
        if v["type"] != "dword" {
            return Err(unsupported(format!("argument type in {v}")));
        }
        let u32_of = |x: &Value| {
            x.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| unsupported(format!("a 32-bit value in {v}")))
        };
        let val = u32_of(&v["val"])?;
        match &v["op"] {
            Value::String(op) if op == "eq" => Ok(Self::Eq { arg, val }),
            Value::String(op) if op == "ne" => Ok(Self::Ne { arg, val }),
            Value::Object(o) if o.len() == 1 && o.contains_key("masked_eq") => Ok(Self::MaskedEq {
                arg,
                mask: u32_of(&o["masked_eq"])?,
                val,
            }),
            other => Err(unsupported(format!("operator {other}"))),
        }
    }

    fn arg(self) -> u8 {
        match self {
            Self::Eq { arg, .. } | Self::Ne { arg, .. } | Self::MaskedEq { arg, .. } => arg,
        }
    }
}

/// A rule holds when all its conditions hold (none: always).
type Rule = Vec<Cond>;

/// One filter: its two actions and, per syscall number, its rules.
#[derive(Debug)]
struct Filter {
    on_match: Action,
    on_mismatch: Action,
    rules: BTreeMap<u32, Vec<Rule>>,
}

/// Reads the filters named in `order` from a seccompiler JSON policy;
/// `numbers` maps each syscall name to its number.
fn filters(
    json: &Value,
    order: &[&str],
    numbers: &BTreeMap<String, u32>,
) -> Result<Vec<Filter>, SeccompError> {
    order
        .iter()
        .map(|name| {
            let f = &json[*name];
            let mut rules: BTreeMap<u32, Vec<Rule>> = BTreeMap::new();
            for entry in f["filter"].as_array().into_iter().flatten() {
                let syscall = entry["syscall"].as_str().unwrap_or_default();
                let nr = *numbers
                    .get(syscall)
                    .ok_or_else(|| unsupported(format!("syscall {syscall} without a number")))?;
                let conds = entry["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(Cond::parse)
                    .collect::<Result<Rule, _>>()?;
                rules.entry(nr).or_default().push(conds);
            }
            Ok(Filter {
                on_match: Action::parse(&f["match_action"])?,
                on_mismatch: Action::parse(&f["mismatch_action"])?,
                rules,
            })
        })
        .collect()
}

fn unsupported(what: String) -> SeccompError {
    SeccompError::Unsupported(what)
}

/// A jump target, resolved when the program is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Label(usize);

/// An instruction whose jump targets are labels.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Insn {
    Load(u32),
    And(u32),
    /// `if A == k goto t else goto f`
    Jeq(u32, Target, Target),
    /// `if A >= k goto t else goto f`
    Jge(u32, Target, Target),
    Ja(Label),
    Ret(u32),
    Here(Label),
}

/// Where a conditional jump goes: the next instruction, or a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Next,
    To(Label),
}

#[derive(Default)]
struct Asm {
    code: Vec<Insn>,
    labels: usize,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels += 1;
        Label(self.labels - 1)
    }

    fn push(&mut self, i: Insn) {
        self.code.push(i);
    }

    /// Lays the program out: labels become forward offsets.
    fn finish(self) -> Result<Vec<libc::sock_filter>, SeccompError> {
        let mut at = BTreeMap::new();
        let mut pc = 0usize;
        for i in &self.code {
            match i {
                Insn::Here(l) => {
                    at.insert(*l, pc);
                }
                _ => pc += 1,
            }
        }
        let mut out = Vec::with_capacity(pc);
        for i in &self.code {
            let pc = out.len();
            let offset = |l: &Label| -> Result<usize, SeccompError> {
                let target = at[l];
                target
                    .checked_sub(pc + 1)
                    .ok_or_else(|| unsupported("a backward jump".into()))
            };
            let short = |t: &Target| -> Result<u8, SeccompError> {
                match t {
                    Target::Next => Ok(0),
                    Target::To(l) => u8::try_from(offset(l)?)
                        .map_err(|_| unsupported("a conditional jump over 255".into())),
                }
            };
            let insn = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
            out.push(match i {
                Insn::Here(_) => continue,
                Insn::Load(off) => insn(LD_W_ABS, 0, 0, *off),
                Insn::And(k) => insn(ALU_AND_K, 0, 0, *k),
                Insn::Jeq(k, t, f) => insn(JMP_JEQ_K, short(t)?, short(f)?, *k),
                Insn::Jge(k, t, f) => insn(JMP_JGE_K, short(t)?, short(f)?, *k),
                Insn::Ja(l) => insn(
                    JMP_JA,
                    0,
                    0,
                    u32::try_from(offset(l)?).map_err(|_| unsupported("a long jump".into()))?,
                ),
                Insn::Ret(k) => insn(RET_K, 0, 0, *k),
            });
        }
        Ok(out)
    }
}

/// The code one syscall number runs: the filters' non-ALLOW answers, most
/// severe first, each returned when its filter's rules match (or, for a
/// mismatch action, do not); ALLOW when none is. Labels are local (from 0),
/// so equal decisions compare equal; [`merge`] renumbers them.
fn decision(filters: &[Filter], nr: u32) -> Vec<Insn> {
    let mut answers: Vec<(Action, usize, bool)> = Vec::new();
    for (i, f) in filters.iter().enumerate() {
        if f.on_match != Action::Allow {
            answers.push((f.on_match, i, true));
        }
        if f.on_mismatch != Action::Allow {
            answers.push((f.on_mismatch, i, false));
        }
    }
    // The kernel's order: the action part as a signed number (lower is more
    // severe), then the newest filter.
    answers.sort_by_key(|&(a, i, _)| ((a.ret() & 0xffff_0000) as i32, std::cmp::Reverse(i)));
    let mut asm = Asm::default();
    for (action, i, on_match) in answers {
        let rules = filters[i].rules.get(&nr).map(Vec::as_slice).unwrap_or(&[]);
        let always = rules.iter().any(Vec::is_empty);
        match (on_match, rules.is_empty(), always) {
            // The filter certainly answers `action`: nothing later matters.
            (true, _, true) | (false, true, _) => {
                asm.push(Insn::Ret(action.ret()));
                return asm.code;
            }
            // It certainly does not.
            (true, true, _) | (false, _, true) => {}
            (true, false, false) => {
                for rule in rules {
                    let next = asm.label();
                    conds(&mut asm, rule, next);
                    asm.push(Insn::Ret(action.ret()));
                    asm.push(Insn::Here(next));
                }
            }
            (false, false, false) => {
                let done = asm.label();
                for rule in rules {
                    let next = asm.label();
                    conds(&mut asm, rule, next);
                    asm.push(Insn::Ja(done));
                    asm.push(Insn::Here(next));
                }
                asm.push(Insn::Ret(action.ret()));
                asm.push(Insn::Here(done));
            }
        }
    }
    asm.push(Insn::Ret(RET_ALLOW));
    asm.code
}

/// Falls through when every condition holds, jumps to `fail` otherwise.
fn conds(asm: &mut Asm, rule: &[Cond], fail: Label) {
    for c in rule {
        asm.push(Insn::Load(DATA_ARGS + 8 * u32::from(c.arg())));
        let fail = Target::To(fail);
        match *c {
            Cond::Eq { val, .. } => asm.push(Insn::Jeq(val, Target::Next, fail)),
            Cond::Ne { val, .. } => asm.push(Insn::Jeq(val, fail, Target::Next)),
            Cond::MaskedEq { mask, val, .. } => {
                asm.push(Insn::And(mask));
                asm.push(Insn::Jeq(val, Target::Next, fail));
            }
        }
    }
}

/// Moves a block's labels past the `base` first labels of a program.
fn relabel(block: &[Insn], base: usize) -> Vec<Insn> {
    let l = |x: &Label| Label(x.0 + base);
    let t = |x: &Target| match x {
        Target::Next => Target::Next,
        Target::To(x) => Target::To(l(x)),
    };
    block
        .iter()
        .map(|i| match i {
            Insn::Jeq(k, a, b) => Insn::Jeq(*k, t(a), t(b)),
            Insn::Jge(k, a, b) => Insn::Jge(*k, t(a), t(b)),
            Insn::Ja(x) => Insn::Ja(l(x)),
            Insn::Here(x) => Insn::Here(l(x)),
            other => other.clone(),
        })
        .collect()
}

fn labels_in(block: &[Insn]) -> usize {
    block
        .iter()
        .filter_map(|i| match i {
            Insn::Here(l) => Some(l.0 + 1),
            _ => None,
        })
        .max()
        .unwrap_or(0)
}

/// The merged program of the filters `order` names (in install order) of
/// a seccompiler JSON policy.
pub(super) fn merge(
    json: &Value,
    order: &[&str],
    numbers: &BTreeMap<String, u32>,
) -> Result<Vec<libc::sock_filter>, SeccompError> {
    let filters = filters(json, order, numbers)?;
    // Every number some filter lists; the numbers between and above them
    // answer like an unlisted one.
    let mut listed: Vec<u32> = filters
        .iter()
        .flat_map(|f| f.rules.keys().copied())
        .collect();
    listed.sort_unstable();
    listed.dedup();
    let unlisted = decision(&filters, u32::MAX);
    // Ranges [start, next start) of numbers with the same answer, from 0.
    let mut ranges: Vec<(u32, Vec<Insn>)> = Vec::new();
    let mut push = |start: u32, block: Vec<Insn>| {
        if ranges.last().map(|(_, b)| b) != Some(&block) {
            ranges.push((start, block));
        }
    };
    let mut next = 0u32; // the first number no range covers yet
    for nr in listed {
        if nr > next {
            push(next, unlisted.clone());
        }
        push(nr, decision(&filters, nr));
        next = nr
            .checked_add(1)
            .ok_or_else(|| unsupported("syscall number u32::MAX".into()))?;
    }
    push(next, unlisted);
    // Equal answers share one block.
    let mut blocks: Vec<Vec<Insn>> = Vec::new();
    let leaves: Vec<(u32, usize)> = ranges
        .into_iter()
        .map(|(start, block)| {
            let i = blocks.iter().position(|b| *b == block).unwrap_or_else(|| {
                blocks.push(block);
                blocks.len() - 1
            });
            (start, i)
        })
        .collect();
    let mut asm = Asm::default();
    let block_labels: Vec<Label> = blocks.iter().map(|_| asm.label()).collect();
    // The architecture first, as seccompiler does: anything else is killed
    // (x32 numbers fall in the unlisted range above every listed number).
    let arch_ok = asm.label();
    asm.push(Insn::Load(DATA_ARCH));
    asm.push(Insn::Jeq(
        AUDIT_ARCH_X86_64,
        Target::To(arch_ok),
        Target::Next,
    ));
    asm.push(Insn::Ret(RET_KILL_PROCESS));
    asm.push(Insn::Here(arch_ok));
    asm.push(Insn::Load(DATA_NR));
    tree(&mut asm, &leaves, &block_labels, &blocks);
    for (label, block) in block_labels.iter().zip(&blocks) {
        if block.len() == 1 {
            continue; // inlined at every leaf
        }
        asm.push(Insn::Here(*label));
        let base = asm.labels;
        asm.labels += labels_in(block);
        asm.code.extend(relabel(block, base));
    }
    asm.finish()
}

/// Binary search over the ranges `leaves` (start, block index): each node
/// splits at the middle range's start.
fn tree(asm: &mut Asm, leaves: &[(u32, usize)], labels: &[Label], blocks: &[Vec<Insn>]) {
    if let [(_, b)] = leaves {
        match blocks[*b].as_slice() {
            [one] => asm.push(one.clone()),
            _ => asm.push(Insn::Ja(labels[*b])),
        }
        return;
    }
    let mid = leaves.len() / 2;
    let (upper, lower) = (asm.label(), asm.label());
    // A >= the upper half's first number: on to the JA (any distance).
    asm.push(Insn::Jge(leaves[mid].0, Target::Next, Target::To(lower)));
    asm.push(Insn::Ja(upper));
    asm.push(Insn::Here(lower));
    tree(asm, &leaves[..mid], labels, blocks);
    asm.push(Insn::Here(upper));
    tree(asm, &leaves[mid..], labels, blocks);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seccomp::{egress_json, syscall_numbers, SeccompPolicy, INSTALL_ORDER, POLICY_JSON};

    /// `BPF_JMP | BPF_JGT | BPF_K`, `BPF_JMP | BPF_JSET | BPF_K`: seccompiler's.
    const JMP_JGT_K: u16 = 0x25;
    const JMP_JSET_K: u16 = 0x45;
    const AUDIT_ARCH_I386: u32 = 0x4000_0003;

    /// `struct seccomp_data`, read a 32-bit word at a time as BPF does.
    #[derive(Debug, Clone, Copy)]
    struct Data {
        nr: u32,
        arch: u32,
        args: [u64; 6],
    }

    impl Data {
        fn word(&self, off: u32) -> u32 {
            match off {
                0 => self.nr,
                4 => self.arch,
                8 | 12 => 0x5555_5555, // instruction pointer
                16..=63 if off.is_multiple_of(4) => {
                    let arg = self.args[((off - 16) / 8) as usize];
                    if (off - 16) % 8 == 4 {
                        (arg >> 32) as u32
                    } else {
                        arg as u32
                    }
                }
                _ => panic!("load at {off}"),
            }
        }
    }

    /// Runs a classic BPF program (the opcodes seccomp programs use here);
    /// returns its answer and how many instructions ran.
    fn run(prog: &[libc::sock_filter], d: &Data) -> (u32, usize) {
        let (mut a, mut pc, mut steps) = (0u32, 0usize, 0usize);
        loop {
            let i = prog[pc];
            steps += 1;
            pc += 1;
            let jump = |taken: bool| usize::from(if taken { i.jt } else { i.jf });
            match i.code {
                LD_W_ABS => a = d.word(i.k),
                ALU_AND_K => a &= i.k,
                JMP_JA => pc += i.k as usize,
                JMP_JEQ_K => pc += jump(a == i.k),
                JMP_JGE_K => pc += jump(a >= i.k),
                JMP_JGT_K => pc += jump(a > i.k),
                JMP_JSET_K => pc += jump(a & i.k != 0),
                RET_K => return (i.k, steps),
                c => panic!("opcode {c:#x} at {}", pc - 1),
            }
        }
    }

    /// The kernel's stacking (`seccomp_run_filters`): newest filter first,
    /// a strictly more severe action (lower as a signed number) replaces.
    fn stacked(policy: &SeccompPolicy, d: &Data) -> u32 {
        let mut ret = RET_ALLOW;
        for f in policy.filters.iter().rev() {
            let cur = run(&f.program, d).0;
            if ((cur & 0xffff_0000) as i32) < ((ret & 0xffff_0000) as i32) {
                ret = cur;
            }
        }
        ret
    }

    /// Every argument value a rule of `nr` tells apart, per argument index.
    fn interesting(filters: &[Filter], nr: u32) -> BTreeMap<u8, Vec<u64>> {
        let mut out: BTreeMap<u8, Vec<u64>> = BTreeMap::new();
        for c in filters
            .iter()
            .filter_map(|f| f.rules.get(&nr))
            .flatten()
            .flatten()
        {
            let v = out.entry(c.arg()).or_default();
            let lows: Vec<u32> = match *c {
                Cond::Eq { val, .. } | Cond::Ne { val, .. } => {
                    vec![val, val ^ 1, val.wrapping_add(1), val.wrapping_sub(1)]
                }
                Cond::MaskedEq { mask, val, .. } => {
                    vec![val, mask, !mask, val | !mask, val & (mask - 1), val ^ mask]
                }
            };
            for lo in lows.into_iter().chain([0, 1, u32::MAX, 0x8000_0000]) {
                for hi in [0u64, 0xdead_beef, 0xffff_ffff] {
                    v.push(hi << 32 | u64::from(lo));
                }
            }
        }
        for v in out.values_mut() {
            v.sort_unstable();
            v.dedup();
        }
        out
    }

    /// Every combination of the interesting values (other arguments 0).
    fn argument_cases(values: &BTreeMap<u8, Vec<u64>>) -> Vec<[u64; 6]> {
        let mut cases = vec![[0u64; 6]];
        for (&arg, vals) in values {
            cases = cases
                .iter()
                .flat_map(|c| {
                    vals.iter().map(move |&v| {
                        let mut c = *c;
                        c[usize::from(arg)] = v;
                        c
                    })
                })
                .collect();
        }
        cases
    }

    fn check_equivalent(json: &str) -> (usize, usize) {
        let policy = SeccompPolicy::compile(json).unwrap();
        let value: Value = serde_json::from_str(json).unwrap();
        let numbers = syscall_numbers(&value).unwrap();
        let parsed = filters(&value, &INSTALL_ORDER, &numbers).unwrap();
        let mut checked = 0;
        let mut longest = 0;
        let mut numbers_to_try: Vec<u32> = (0..1100).collect();
        numbers_to_try.extend((0..600).map(|n| 0x4000_0000 | n)); // x32
        numbers_to_try.extend([0x7fff_ffff, 0x8000_0000, u32::MAX - 1, u32::MAX]);
        for &nr in &numbers_to_try {
            let cases = argument_cases(&interesting(&parsed, nr));
            for arch in [AUDIT_ARCH_X86_64, AUDIT_ARCH_I386, 0] {
                for args in &cases {
                    let d = Data {
                        nr,
                        arch,
                        args: *args,
                    };
                    let (merged, steps) = run(&policy.program, &d);
                    assert_eq!(
                        merged,
                        stacked(&policy, &d),
                        "nr {nr} arch {arch:#x} args {args:x?}"
                    );
                    longest = longest.max(steps);
                    checked += 1;
                }
            }
        }
        // And random calls: listed numbers with random arguments.
        let listed: Vec<u32> = numbers.values().copied().collect();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut rand = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..200_000 {
            let nr = listed[(rand() % listed.len() as u64) as usize];
            let mut args = [0u64; 6];
            for a in &mut args {
                *a = match rand() % 4 {
                    0 => 0,
                    1 => rand() % 64,
                    2 => rand() & 0xffff_ffff,
                    _ => rand(),
                };
            }
            let d = Data {
                nr,
                arch: AUDIT_ARCH_X86_64,
                args,
            };
            assert_eq!(run(&policy.program, &d).0, stacked(&policy, &d), "{d:x?}");
            checked += 1;
        }
        (checked, longest)
    }

    #[test]
    fn the_merged_program_answers_as_the_stacked_filters_do() {
        let (checked, longest) = check_equivalent(POLICY_JSON);
        assert!(checked > 200_000, "{checked}");
        // A binary search: no call runs through a chain of compares (the
        // linear `allow` filter alone runs ~340 instructions for an unlisted call).
        assert!(longest <= 48, "{longest} instructions on the longest path");
        eprintln!("{checked} calls compared; longest path {longest} instructions; merged program {} instructions", SeccompPolicy::default_policy().unwrap().program.len());
    }

    #[test]
    fn the_merged_egress_program_answers_as_the_stacked_filters_do() {
        let (_, longest) = check_equivalent(&egress_json().unwrap());
        assert!(longest <= 48, "{longest}");
    }

    #[test]
    fn a_linear_filter_runs_long_and_the_merged_one_does_not() {
        // What the binary search buys, counted in instructions: an unlisted
        // number (x32 `read`) through seccompiler's `allow` filter and
        // through the merged program.
        let policy = SeccompPolicy::default_policy().unwrap();
        let d = Data {
            nr: 0x4000_0000,
            arch: AUDIT_ARCH_X86_64,
            args: [0; 6],
        };
        let (linear_answer, linear) = run(&policy.filters[0].program, &d);
        let (merged_answer, merged) = run(&policy.program, &d);
        assert_eq!(
            (linear_answer, merged_answer),
            (RET_ERRNO | 38, RET_ERRNO | 38)
        );
        assert!(merged * 10 < linear, "merged {merged}, linear {linear}");
    }

    #[test]
    fn unsupported_rules_are_refused() {
        let numbers = BTreeMap::from([("read".to_string(), 0u32)]);
        let policy = |action: &str, cond: &str| -> Value {
            serde_json::from_str(&format!(
                r#"{{"allow": {{"mismatch_action": {action}, "match_action": "allow",
                   "filter": [{{"syscall": "read", "args": [{cond}]}}]}}}}"#
            ))
            .unwrap()
        };
        let ok = r#"{"index": 0, "type": "dword", "op": "eq", "val": 1}"#;
        assert!(merge(&policy(r#"{"errno": 38}"#, ok), &["allow"], &numbers).is_ok());
        for (action, cond) in [
            (r#""log""#, ok),
            (r#""trap""#, ok),
            (
                r#"{"errno": 38}"#,
                r#"{"index": 0, "type": "qword", "op": "eq", "val": 1}"#,
            ),
            (
                r#"{"errno": 38}"#,
                r#"{"index": 0, "type": "dword", "op": "gt", "val": 1}"#,
            ),
            (
                r#"{"errno": 38}"#,
                r#"{"index": 6, "type": "dword", "op": "eq", "val": 1}"#,
            ),
            (
                r#"{"errno": 38}"#,
                r#"{"index": 0, "type": "dword", "op": "eq", "val": 4294967296}"#,
            ),
        ] {
            assert!(
                matches!(
                    merge(&policy(action, cond), &["allow"], &numbers),
                    Err(SeccompError::Unsupported(_))
                ),
                "{action} {cond}"
            );
        }
    }
}
