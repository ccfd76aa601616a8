//! The results: the `--json` object, the terminal report, and the targets
//! of issue 3 checked against what was measured.

use super::machine::Machine;
use super::memory::Sample;
use super::methods::Method;
use super::stats::{self, Row};
use super::steps::Step;
use super::throughput::Throughput;
use super::worker::Timing;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// What `--json` prints.
#[derive(Debug, Serialize)]
pub struct Report {
    pub rows: Vec<Row>,
    pub throughput: Vec<Throughput>,
    pub memory: Vec<MemoryRow>,
    pub machine: Machine,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemoryRow {
    pub method: String,
    pub uss_mib: f64,
    pub pss_mib: f64,
    /// The sandbox cgroup's memory charge (v1 `memory.usage_in_bytes`).
    pub cgroup_mib: f64,
    pub processes: usize,
}

impl MemoryRow {
    pub fn new(method: &str, s: Sample) -> Self {
        let r = |v: f64| (v * 100.0).round() / 100.0;
        Self {
            method: method.into(),
            uss_mib: r(s.uss_mib),
            pss_mib: r(s.pss_mib),
            cgroup_mib: r(s.cgroup_mib),
            processes: s.processes,
        }
    }
}

/// What the text and markdown reports show beyond the JSON.
pub struct Extra {
    pub timings: BTreeMap<(Method, &'static str), Vec<Timing>>,
    pub steps: Vec<Step>,
    pub w3_work_ms: f64,
    pub notes: Vec<String>,
    pub command: String,
    pub iterations: usize,
    pub w3_iterations: usize,
    pub available: Vec<Method>,
    pub docker_command: Option<String>,
    pub docker_imported: bool,
    pub plain_how: Option<String>,
    pub elapsed_s: f64,
    pub limits_memory_mib: u64,
}

pub const WORKLOADS: [&str; 6] = ["W1", "W1 to result", "W2", "W2 to result", "W2 again", "W3"];

/// Rows in method order; `Wn to result` rows (kiln only) leave teardown out.
pub fn rows(
    samples: &BTreeMap<(Method, &'static str), Vec<f64>>,
    timings: &BTreeMap<(Method, &'static str), Vec<Timing>>,
) -> Vec<Row> {
    let mut out = Vec::new();
    for m in Method::ALL {
        for w in WORKLOADS {
            if let Some(base) = w.strip_suffix(" to result") {
                if let Some(t) = timings.get(&(m, base)) {
                    let v: Vec<f64> = t.iter().map(Timing::result_ms).collect();
                    out.push(stats::row(m.name(), w, &v));
                }
            } else if let Some(v) = samples.get(&(m, w)) {
                out.push(stats::row(m.name(), w, v));
            }
        }
    }
    out
}

impl Report {
    pub fn p50(&self, method: Method, workload: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|r| r.method == method.name() && r.workload == workload)
            .map(|r| r.p50_ms)
    }

    pub fn per_s(&self, method: Method, workload: &str) -> Option<f64> {
        self.throughput
            .iter()
            .find(|t| t.method == method.name() && t.workload == workload)
            .map(|t| t.per_s)
    }
}

/// One target of issue 3 and what was measured.
pub struct Target {
    pub target: &'static str,
    pub measured: String,
    pub met: Option<bool>,
}

pub fn targets(r: &Report, x: &Extra) -> Vec<Target> {
    let pool_w1 = r.p50(Method::Pool, "W1");
    let pool_w2 = r.p50(Method::Pool, "W2");
    let docker_w1 = r.p50(Method::Docker, "W1");
    let docker_w2 = r.p50(Method::Docker, "W2");
    let warm_w2 = r.p50(Method::WarmPython3, "W2");
    let mut t = Vec::new();
    let none = |what: &str| Target {
        target: "",
        measured: format!("not measured ({what})"),
        met: None,
    };
    t.push(match pool_w1 {
        Some(p) => Target {
            target: "W1 p50 ≤ 2 ms with the pool warm",
            measured: format!(
                "{p:.2} ms end to end (take + execute + close); {:.2} ms until the result is in hand",
                r.p50(Method::Pool, "W1 to result").unwrap_or(f64::NAN)
            ),
            met: Some(p <= 2.0),
        },
        None => Target { target: "W1 p50 ≤ 2 ms with the pool warm", ..none("kiln-pool") },
    });
    t.push(match (pool_w1, docker_w1) {
        (Some(p), Some(d)) => Target {
            target: "W1 ≥ 100× faster than docker-run",
            measured: format!("{:.0}× ({d:.1} ms / {p:.2} ms)", d / p),
            met: Some(d / p >= 100.0),
        },
        _ => Target {
            target: "W1 ≥ 100× faster than docker-run",
            ..none("docker-run skipped")
        },
    });
    t.push(match (pool_w2, warm_w2) {
        (Some(p), Some(w)) => Target {
            target: "W2 ≤ 1.2× the same work in an already-warm interpreter",
            measured: format!("{:.2}× ({p:.1} ms / {w:.1} ms warm-python3)", p / w),
            met: Some(p / w <= 1.2),
        },
        _ => Target {
            target: "W2 ≤ 1.2× the same work in an already-warm interpreter",
            ..none("warm-python3 skipped")
        },
    });
    t.push(match (pool_w2, docker_w2) {
        (Some(p), Some(d)) => Target {
            target: "W2 ≥ 7× faster than docker-run",
            measured: format!(
                "{:.1}× ({d:.0} ms / {p:.1} ms){}",
                d / p,
                warm_w2
                    .filter(|w| *w > 0.0)
                    .map(|w| format!(
                        "; the already-warm interpreter itself, no sandbox at all: {:.1}×",
                        d / w
                    ))
                    .unwrap_or_default()
            ),
            met: Some(d / p >= 7.0),
        },
        _ => Target {
            target: "W2 ≥ 7× faster than docker-run",
            ..none("docker-run skipped")
        },
    });
    t.push(match r.p50(Method::Pool, "W3") {
        Some(p) => {
            let over = p - x.w3_work_ms.max(0.0);
            Target {
                target: "W3 overhead ≤ 1 ms over the work itself",
                measured: format!(
                    "{over:.3} ms ({p:.3} ms per execution, the work itself {:.4} ms)",
                    x.w3_work_ms
                ),
                met: Some(over <= 1.0),
            }
        }
        None => Target {
            target: "W3 overhead ≤ 1 ms over the work itself",
            ..none("W3 failed")
        },
    });
    t.push(match r.per_s(Method::Pool, "W1") {
        Some(v) => Target {
            target: "W4 ≥ 200 fresh sandboxes/s for W1",
            measured: format!(
                "{v:.0}/s (kiln-pool, 2 clients){}",
                r.per_s(Method::Python3, "W1")
                    .map(|py| format!("; python3, a fresh process without isolation: {py:.0}/s"))
                    .unwrap_or_default()
            ),
            met: Some(v >= 200.0),
        },
        None => Target {
            target: "W4 ≥ 200 fresh sandboxes/s for W1",
            ..none("W4 not run")
        },
    });
    t.push(match r.per_s(Method::Pool, "W2") {
        Some(v) => Target {
            target: "W4 ≥ 15 fresh sandboxes/s for W2",
            measured: format!(
                "{v:.1}/s (kiln-pool, 2 clients){}",
                warm_w2
                    .filter(|w| *w > 0.0)
                    .map(|w| format!(
                        "; the work alone, at warm-python3's {w:.0} ms on all {} cores, allows at most {:.1}/s",
                        r.machine.cores,
                        r.machine.cores as f64 * 1000.0 / w
                    ))
                    .unwrap_or_default()
            ),
            met: Some(v >= 15.0),
        },
        None => Target {
            target: "W4 ≥ 15 fresh sandboxes/s for W2",
            ..none("not run with --quick")
        },
    });
    t.push(
        match r.memory.iter().find(|m| m.method == Method::Pool.name()) {
            Some(m) => Target {
                target: "idle warm sandbox USS ≤ 4 MiB",
                measured: format!(
                    "{:.2} MiB USS ({:.2} MiB PSS, cgroup charge {:.2} MiB)",
                    m.uss_mib, m.pss_mib, m.cgroup_mib
                ),
                met: Some(m.uss_mib <= 4.0),
            },
            None => Target {
                target: "idle warm sandbox USS ≤ 4 MiB",
                ..none("memory not sampled")
            },
        },
    );
    t
}

pub fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    }
}

/// `a / b` as "12.3×", or "–".
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => {
            let v = a / b;
            if v >= 10.0 {
                format!("{v:.0}×")
            } else {
                format!("{v:.2}×")
            }
        }
        _ => "–".into(),
    }
}

/// The medians of kiln's phases per method and workload.
pub fn phases(x: &Extra) -> Vec<(Method, &'static str, f64, f64, f64)> {
    x.timings
        .iter()
        .map(|((m, w), t)| {
            let med = |f: fn(&Timing) -> f64| stats::median(&t.iter().map(f).collect::<Vec<_>>());
            (
                *m,
                *w,
                med(|t| t.create_ms),
                med(|t| t.exec_ms),
                med(|t| t.close_ms),
            )
        })
        .collect()
}

/// The terminal report.
pub fn text(r: &Report, x: &Extra) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "kiln bench — {} cores ({}), Linux {}, cgroup {}, {}, load {}",
        m.cores, m.cpu, m.kernel, m.cgroup, m.date, m.loadavg
    );
    let _ = writeln!(
        s,
        "\n{:<16} {:<13} {:>9} {:>9} {:>9} {:>5} {:>12}",
        "method", "workload", "p50 ms", "p90 ms", "p99 ms", "n", "docker/this"
    );
    for row in &r.rows {
        let base = row
            .workload
            .trim_end_matches(" to result")
            .trim_end_matches(" again");
        let docker = r
            .rows
            .iter()
            .find(|d| d.method == "docker-run" && d.workload == base)
            .map(|d| d.p50_ms);
        let _ = writeln!(
            s,
            "{:<16} {:<13} {:>9.2} {:>9.2} {:>9.2} {:>5} {:>12}",
            row.method,
            row.workload,
            row.p50_ms,
            row.p90_ms,
            row.p99_ms,
            row.n,
            ratio(docker, Some(row.p50_ms))
        );
    }
    if !r.throughput.is_empty() {
        let _ = writeln!(
            s,
            "\nW4 throughput, 2 concurrent clients (fresh sandbox per request):"
        );
        for t in &r.throughput {
            let _ = writeln!(
                s,
                "  {:<16} {}  {:>8.1}/s  ({} in {:.1} s)",
                t.method, t.workload, t.per_s, t.requests, t.seconds
            );
        }
    }
    if !r.memory.is_empty() {
        let _ = writeln!(s, "\nidle sandbox memory:");
        for mm in &r.memory {
            let _ = writeln!(
                s,
                "  {:<16} USS {:.2} MiB  PSS {:.2} MiB  cgroup charge {:.2} MiB  ({} process)",
                mm.method, mm.uss_mib, mm.pss_mib, mm.cgroup_mib, mm.processes
            );
        }
    }
    let _ = writeln!(s, "\nwhere a sandbox's time goes (medians, ms):");
    for (m, w, c, e, cl) in phases(x) {
        let first = if m == Method::Pool { "take" } else { "create" };
        let _ = writeln!(
            s,
            "  {:<16} {w}  {first} {c:.2}  execute {e:.2}  close {cl:.2}",
            m.name()
        );
    }
    for st in &x.steps {
        let _ = writeln!(s, "  {:<32} {:>8.3}", st.step, st.p50_ms);
    }
    let _ = writeln!(s, "\ntargets (issue 3):");
    for t in targets(r, x) {
        let _ = writeln!(s, "  [{}] {}: {}", verdict(t.met), t.target, t.measured);
    }
    if !x.notes.is_empty() {
        let _ = writeln!(s, "\nnotes:");
        for n in &x.notes {
            let _ = writeln!(s, "  - {n}");
        }
    }
    let _ = writeln!(s, "\n({:.0} s)", x.elapsed_s);
    s
}
