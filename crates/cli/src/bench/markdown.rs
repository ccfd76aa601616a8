//! `docs/benchmarks.md`, written by `kiln bench --write-docs`.

use super::docker::FLAGS;
use super::methods::Method;
use super::report::{phases, ratio, targets, verdict, Extra, Report};
use super::workloads;
use std::fmt::Write;

pub fn render(r: &Report, x: &Extra, chart_note: Option<&str>) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let w = |s: &mut String, line: String| {
        s.push_str(&line);
        s.push('\n');
    };
    w(&mut s, "# Benchmarks".into());
    w(&mut s, String::new());
    w(&mut s, "<!-- Written by `kiln bench --write-docs`; edit the code in crates/cli/src/bench/, not this file. -->".into());
    w(&mut s, String::new());
    w(&mut s, format!(
        "Measured by `{}` on {} ({:.0} s). All methods ran in this one run, interleaved: on every \
         iteration each method ran once, round-robin, the starting method rotating, so machine noise \
         hit all of them alike; iteration 0 of every workload was a warm-up and is not counted. \
         {} iterations of W1 and W2 per method, {} of W3; with n = {}, p99 is close to the maximum.",
        x.command, m.date, x.elapsed_s, x.iterations, x.w3_iterations, x.iterations
    ));
    w(&mut s, String::new());
    w(
        &mut s,
        format!(
            "**Machine:** {} cores ({}), {} GiB, Linux {}, cgroup {}, load average at start {}; \
         kiln {}, Python {} (runtime `{}`){}.",
            m.cores,
            m.cpu,
            m.memory_gib,
            m.kernel,
            m.cgroup,
            m.loadavg,
            m.kiln_version,
            m.python,
            m.runtime,
            m.docker_engine
                .as_ref()
                .map(|v| format!(", Docker Engine {v}"))
                .unwrap_or_default()
        ),
    );
    w(&mut s, String::new());

    w(
        &mut s,
        "## Targets (issue 3) against what was measured".into(),
    );
    w(&mut s, String::new());
    w(&mut s, "| target | measured | |".into());
    w(&mut s, "|---|---|---|".into());
    for t in targets(r, x) {
        w(
            &mut s,
            format!("| {} | {} | **{}** |", t.target, t.measured, verdict(t.met)),
        );
    }
    w(&mut s, String::new());

    w(&mut s, "## Latency".into());
    w(&mut s, String::new());
    w(&mut s, "Milliseconds per request, end to end as the caller sees it. For kiln that is \
        `take`/`create_session` + `execute` + `close` (teardown included, as `docker run --rm` \
        includes removing the container); the `… to result` rows stop when the result is in hand, \
        since teardown need not delay the answer. `W2 again` is W2 run repeatedly in the one \
        live session W3 used: kiln's machinery without the first run of a fresh fork. The last columns are docker-run's and python3's \
        p50 divided by this row's p50.".into());
    w(&mut s, String::new());
    w(
        &mut s,
        "| method | workload | p50 | p90 | p99 | n | docker-run / this | python3 / this |".into(),
    );
    w(&mut s, "|---|---|---:|---:|---:|---:|---:|---:|".into());
    for row in &r.rows {
        let base = row
            .workload
            .trim_end_matches(" to result")
            .trim_end_matches(" again");
        let docker = r.p50(Method::Docker, base);
        let py = r.p50(Method::Python3, base);
        w(
            &mut s,
            format!(
                "| {} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} |",
                row.method,
                row.workload,
                row.p50_ms,
                row.p90_ms,
                row.p99_ms,
                row.n,
                ratio(docker, Some(row.p50_ms)),
                ratio(py, Some(row.p50_ms))
            ),
        );
    }
    w(&mut s, String::new());
    match chart_note {
        None => w(&mut s, "![Latency per request, p50 bars with p90 and p99 marks, log scale](bench-latency.png)\n\n\
            The chart was drawn by matplotlib inside a kiln sandbox from the numbers above \
            (`plt.show()`; the PNG came back as a display).".into()),
        Some(note) => w(&mut s, format!("(No chart: {note}.)")),
    }
    w(&mut s, String::new());

    w(&mut s, "## W3: a second execution in a live session".into());
    w(&mut s, String::new());
    w(&mut s, format!(
        "`{}` once, then `{}` {} times in the same session (a never-used sandbox taken from the pool), \
         alternating with the same code sent to warm-python3. The work itself (timed inside the warm \
         interpreter around `exec`) takes {:.4} ms, so kiln's overhead per execution is its W3 p50 minus \
         that: the round trip supervisor → runner → supervisor with the frame protocol, CPU-time and \
         memory accounting read from the cgroup, and the result assembled.",
        workloads::W3_FIRST, workloads::W3, x.w3_iterations, x.w3_work_ms
    ));
    w(&mut s, String::new());

    if !r.throughput.is_empty() {
        w(&mut s, "## W4: throughput, 2 concurrent clients".into());
        w(&mut s, String::new());
        w(&mut s, "Each client loops, a fresh sandbox per request, for a fixed time; the rate is the \
            requests completed over the time until the last one finished. Methods run one after \
            another (a throughput run cannot be interleaved). kiln-pool and kiln-nopool use two \
            threads in the bench process; kiln-nozygote uses two single-threaded helper processes \
            (a fresh-process sandbox is forked from its supervisor, which must be single-threaded); \
            docker-run and python3 use two threads each running the command.".into());
        w(&mut s, String::new());
        w(
            &mut s,
            "| method | workload | sandboxes/s | requests | seconds |".into(),
        );
        w(&mut s, "|---|---|---:|---:|---:|".into());
        for t in &r.throughput {
            w(
                &mut s,
                format!(
                    "| {} | {} | {:.1} | {} | {:.1} |",
                    t.method, t.workload, t.per_s, t.requests, t.seconds
                ),
            );
        }
        w(&mut s, String::new());
    }

    if !r.memory.is_empty() {
        w(&mut s, "## Memory of an idle warm sandbox".into());
        w(&mut s, String::new());
        w(
            &mut s,
            "A sandbox ready for code that has run none yet (median of 3). USS = private \
            clean + private dirty pages, PSS = proportional set size, summed over the sandbox's \
            processes (from `/proc/<pid>/smaps_rollup`, the pids from the sandbox cgroup's \
            `cgroup.procs`; the runner is the only process). The cgroup charge \
            (`memory.usage_in_bytes` on v1, `memory.current` on v2) also counts page cache and \
            kernel memory charged to the sandbox (its tmpfs, page tables), but not the pages it \
            shares copy-on-write with the zygote, which were charged to the template. kiln-nopool \
            sandboxes are the same zygote forks as kiln-pool's."
                .into(),
        );
        w(&mut s, String::new());
        w(
            &mut s,
            "| method | USS MiB | PSS MiB | cgroup charge MiB | processes |".into(),
        );
        w(&mut s, "|---|---:|---:|---:|---:|".into());
        for mm in &r.memory {
            w(
                &mut s,
                format!(
                    "| {} | {:.2} | {:.2} | {:.2} | {} |",
                    mm.method, mm.uss_mib, mm.pss_mib, mm.cgroup_mib, mm.processes
                ),
            );
        }
        w(&mut s, String::new());
    }

    w(&mut s, "## Where the time goes".into());
    w(&mut s, String::new());
    w(
        &mut s,
        "What the supervisor sees of each sandbox (medians of the latency runs, ms). \
        `create` is `create_session`: uid lease, cgroup create, the fork (`clone3` into new user, \
        mount, pid, net, ipc and uts namespaces — from the zygote template, or from the \
        supervisor followed by `execve` of the interpreter), id maps, cgroup join, the private \
        root (tmpfs, read-only binds, `/work`, `/tmp`), capabilities dropped, Landlock, seccomp, \
        then the runner's ready message (for a fresh process: interpreter start-up and the \
        runner's imports). For the pool, `take` is handing out a ready sandbox. `close` asks the \
        runner to exit, reaps it and removes the cgroup."
            .into(),
    );
    w(&mut s, String::new());
    w(
        &mut s,
        "| method | workload | create / take | execute | close | largest |".into(),
    );
    w(&mut s, "|---|---|---:|---:|---:|---|".into());
    for (m, wl, c, e, cl) in phases(x) {
        let first = if m == Method::Pool { "take" } else { "create" };
        let largest = [(first, c), ("execute", e), ("close", cl)]
            .into_iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(n, v)| {
                format!(
                    "{n} ({:.0}% of {:.2} ms)",
                    100.0 * v / (c + e + cl),
                    c + e + cl
                )
            })
            .unwrap_or_default();
        w(
            &mut s,
            format!(
                "| {} | {} | {:.2} | {:.2} | {:.2} | {largest} |",
                m.name(),
                wl,
                c,
                e,
                cl
            ),
        );
    }
    w(&mut s, String::new());
    if !x.steps.is_empty() {
        let slowest = x
            .steps
            .iter()
            .filter(|st| st.step.starts_with("in the fork:"))
            .max_by(|a, b| a.p50_ms.total_cmp(&b.p50_ms))
            .map(|st| {
                format!(
                    " The slowest step inside the fork: `{}`, {:.3} ms.",
                    st.step, st.p50_ms
                )
            })
            .unwrap_or_default();
        w(
            &mut s,
            format!(
                "Single steps. `in the fork:` rows are the containment steps as a fork of the \
                zygote timed them itself (`CLOCK_MONOTONIC` at the end of each step, sent in \
                its `ready` frame; medians of sandboxes made one after another, each step from \
                the end of the one before, `runner` until `ready` arrived). The cgroup is made \
                and removed on its own, and the kernel's share of the namespaces is measured with \
                `unshare(1)`.{slowest}"
            ),
        );
        w(&mut s, String::new());
        w(&mut s, "| step | p50 ms | what it covers |".into());
        w(&mut s, "|---|---:|---|".into());
        for st in &x.steps {
            w(
                &mut s,
                format!("| {} | {:.3} | {} |", st.step, st.p50_ms, st.covers),
            );
        }
        w(&mut s, String::new());
    }

    w(&mut s, "## Methods".into());
    w(&mut s, String::new());
    for mm in Method::ALL {
        let state = if x.available.contains(&mm) {
            ""
        } else {
            " — **skipped** (see notes)"
        };
        w(
            &mut s,
            format!("- `{}`: {}{state}.", mm.name(), mm.describe()),
        );
    }
    w(&mut s, String::new());
    if let Some(cmd) = &x.docker_command {
        w(&mut s, format!(
            "docker-run's command: `{cmd}`. The image was made with `tar -C <runtime tree> -c . | docker import - <image>` \
             (the runtime tree is a complete root filesystem){}. `--tmpfs /tmp` is added to the brief's flags \
             (`{}`) because matplotlib refuses to import without a writable directory on a read-only root.",
            if x.docker_imported { " by this run" } else { "" },
            FLAGS.iter().filter(|f| **f != "--tmpfs" && **f != "/tmp").cloned().collect::<Vec<_>>().join(" ")
        ));
        w(&mut s, String::new());
    }
    if let Some(how) = &x.plain_how {
        w(&mut s, format!("python3 and warm-python3: {how}."));
        w(&mut s, String::new());
    }
    w(
        &mut s,
        format!(
            "kiln's sandboxes ran with the policy's default limits (memory {} MiB, no network, \
         every containment step); nothing was relaxed for the benchmark.",
            x.limits_memory_mib
        ),
    );
    w(&mut s, String::new());
    w(&mut s, "## Workloads".into());
    w(&mut s, String::new());
    w(&mut s, format!("- W1: `{}`", workloads::W1));
    w(
        &mut s,
        "- W2 (as sent to kiln; outside kiln `plt.show()` is replaced by rendering the figure as \
        kiln's runner does: PNG at 100 dpi, tight bounding box, base64):"
            .into(),
    );
    w(&mut s, String::new());
    w(&mut s, "```python".into());
    s.push_str(workloads::W2);
    w(&mut s, "```".into());
    w(&mut s, String::new());
    w(&mut s, "- Outside kiln a prelude adds the pinned libraries (`site.addsitedir`, the interpreter \
        runs with `-I`) and, for W2, seeds matplotlib's config dir with the runtime's prebuilt font \
        cache, as kiln's runner does.".into());
    w(&mut s, String::new());
    if !x.notes.is_empty() {
        w(&mut s, "## Notes".into());
        w(&mut s, String::new());
        for n in &x.notes {
            w(&mut s, format!("- {n}"));
        }
        w(&mut s, String::new());
    }
    w(&mut s, "## Reproduce".into());
    w(&mut s, String::new());
    w(
        &mut s,
        format!(
        "```sh\ncargo build --release\n./target/release/{}\n```\n\n`--quick` finishes within 45 s; \
         `--json` prints the rows, throughput, memory and machine as one JSON object.",
        x.command
    ),
    );
    let _ = writeln!(s);
    s
}
