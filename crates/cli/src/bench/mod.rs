//! `kiln bench`: kiln side by side with `docker run` and plain `python3`,
//! in one run, interleaved (round-robin across methods on every iteration,
//! the starting method rotating, so machine noise hits all alike).
//!
//! Methods: [`methods::Method`]. Workloads: W1 `print(1)` and W2 pandas +
//! one plot in a fresh sandbox, W3 a second execution in a live session,
//! W4 throughput with 2 concurrent clients; then the memory of an idle warm
//! sandbox and the per-step cost of making one. See docs/benchmarks.md.

mod chart;
mod docker;
mod machine;
mod markdown;
mod memory;
mod methods;
mod plain;
mod report;
mod stats;
mod steps;
mod throughput;
mod worker;
mod workloads;

use anyhow::{anyhow, bail, Result};
use kiln_core::{Backend, Pool, PoolConfig};
use kiln_policy::{Config, LimitRequest};
use methods::{Method, Methods};
use report::{MemoryRow, Report};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use worker::{Reply, Timing, Worker};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// A short run (within 45 s): fewer iterations, W4 for print(1) only.
    #[arg(long)]
    pub quick: bool,
    /// Iterations of W1 and W2 per method (W3 runs five times as many);
    /// default 30, or 5 with --quick.
    #[arg(long, value_name = "N")]
    pub iterations: Option<usize>,
    /// Print the results as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Write the report to docs/benchmarks.md and the latency chart
    /// (drawn inside a kiln sandbox) to docs/bench-latency.png.
    #[arg(long)]
    pub write_docs: bool,
    /// Where --write-docs writes.
    #[arg(long, default_value = "docs", value_name = "DIR")]
    pub docs_dir: PathBuf,
    /// Leave out the docker-run baseline even when an engine answers.
    #[arg(long)]
    pub no_docker: bool,
    /// Internal: the single-threaded kiln-nozygote helper.
    #[arg(long, hide = true)]
    pub worker: bool,
}

/// Progress goes to stderr (stdout holds the report or the JSON).
fn say(msg: &str) {
    eprintln!("kiln bench: {msg}");
}

pub fn bench(config: &Config, config_path: Option<&Path>, args: &BenchArgs) -> Result<ExitCode> {
    let limits = config
        .resolve(&LimitRequest::default())
        .map_err(|e| anyhow!("the policy's default limits are invalid: {e}"))?;
    // What a one-shot request of the default environment gets, import
    // hook included (the limits resolved above are the policy's defaults).
    let options = kiln_core::service::pool_options(config);
    if args.worker {
        return worker::serve(config, &options);
    }
    let started = Instant::now();
    let quick = args.quick;
    let n = args.iterations.unwrap_or(if quick { 5 } else { 30 }).max(1);
    let mut notes: Vec<String> = Vec::new();
    let loadavg = machine::loadavg();

    let runtime = crate::config::runtime(config)?;
    let manifest = std::fs::read(runtime.root.join("kiln-runtime.json")).unwrap_or_default();
    let manifest_hash = {
        use sha2::{Digest, Sha256};
        hex::encode(&Sha256::digest(&manifest)[..6])
    };
    let python_version = serde_json::from_slice::<serde_json::Value>(&manifest)
        .ok()
        .and_then(|v| v["python_version"].as_str().map(String::from))
        .unwrap_or_else(|| "unknown".into());

    // The zygote template is forked while this process is single-threaded.
    say("starting the zygote template");
    let backend = match crate::config::native_backend(config, true)? {
        Ok(b) => Arc::new(b),
        Err(e) => bail!("kiln's native backend is unavailable on this host: {e}"),
    };
    let worker = match Worker::start(config_path) {
        Ok(w) => Some(w),
        Err(e) => {
            notes.push(format!("kiln-nozygote skipped: {e:#}"));
            None
        }
    };
    let docker = if args.no_docker {
        notes.push("docker-run skipped: --no-docker".into());
        None
    } else {
        match docker::engine() {
            Ok(version) => match docker::Docker::prepare(version, &runtime, &manifest_hash) {
                Ok(d) => Some(d),
                Err(e) => {
                    notes.push(format!(
                        "docker-run skipped: the image could not be made: {e:#}"
                    ));
                    None
                }
            },
            Err(why) => {
                notes.push(format!("docker-run skipped: {why}"));
                None
            }
        }
    };
    let scratch = std::env::temp_dir().join(format!("kiln-bench-{}", std::process::id()));
    let plain = match plain::Plain::detect(&runtime, &scratch) {
        Ok(p) => Some(p),
        Err(e) => {
            notes.push(format!("python3 and warm-python3 skipped: {e:#}"));
            None
        }
    };
    let warm = match plain.as_ref().map(|p| p.warm()) {
        Some(Ok(w)) => Some(w),
        Some(Err(e)) => {
            notes.push(format!("warm-python3 skipped: {e:#}"));
            None
        }
        None => None,
    };
    let pool = Pool::start(
        backend.clone() as Arc<dyn Backend + Send + Sync>,
        options.clone(),
        PoolConfig {
            min_ready: methods::POOL_MIN,
            max_ready: methods::POOL_MAX,
            idle_shrink_after: Duration::from_secs(300),
            max_ready_age: Duration::from_secs(3600),
            ..PoolConfig::default()
        },
    );
    // kiln's own docker backend (runc), unpooled and pooled.
    let (docker_backend, docker_pool) = if args.no_docker {
        (None, None)
    } else {
        match crate::backends::open(config, "docker+runc", false) {
            Ok(Ok(b)) => {
                let pool = Pool::start(
                    b.clone(),
                    options.clone(),
                    PoolConfig {
                        min_ready: methods::POOL_MIN,
                        max_ready: methods::POOL_MAX,
                        idle_shrink_after: Duration::from_secs(300),
                        max_ready_age: Duration::from_secs(3600),
                        ..PoolConfig::default()
                    },
                );
                (Some(b), Some(pool))
            }
            Ok(Err(e)) => {
                notes.push(format!("kiln-docker and kiln-docker-pool skipped: {e}"));
                (None, None)
            }
            Err(e) => {
                notes.push(format!("kiln-docker and kiln-docker-pool skipped: {e:#}"));
                (None, None)
            }
        }
    };
    let mut methods = Methods {
        options: options.clone(),
        backend: backend.clone(),
        pool: Some(pool),
        docker_backend,
        docker_pool,
        worker,
        docker,
        plain,
        warm,
    };
    methods.settle_pool();

    // W1 and W2, interleaved. Iteration 0 of each is a warm-up (not kept).
    let mut samples: BTreeMap<(Method, &'static str), Vec<f64>> = BTreeMap::new();
    let mut timings: BTreeMap<(Method, &'static str), Vec<Timing>> = BTreeMap::new();
    let mut failed: BTreeSet<Method> = BTreeSet::new();
    for (w2, wname) in [(false, "W1"), (true, "W2")] {
        say(&format!(
            "{wname}: {n} iterations of each method, interleaved"
        ));
        for i in 0..=n {
            let active: Vec<Method> = Method::ALL
                .into_iter()
                .filter(|m| methods.available(*m) && !failed.contains(m))
                .collect();
            if active.is_empty() {
                break;
            }
            let shift = i % active.len();
            for &m in active[shift..].iter().chain(&active[..shift]) {
                match methods.measure(m, w2) {
                    Ok(r) if i > 0 => {
                        samples.entry((m, wname)).or_default().push(r.total_ms);
                        if let Some(t) = r.timing {
                            timings.entry((m, wname)).or_default().push(t);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        notes.push(format!(
                            "{} failed on {wname} and was left out from then on: {e}",
                            m.name()
                        ));
                        failed.insert(m);
                    }
                }
            }
        }
    }

    // W3: a second execution in a live session, against the warm interpreter.
    let w3n = n * 5;
    say(&format!("W3: {w3n} executions in one live session"));
    let mut w3_work = Vec::new();
    if let Err(e) = w3(&mut methods, w3n, &mut samples, &mut w3_work) {
        notes.push(format!("W3 incomplete: {e}"));
    }

    // Memory of an idle warm sandbox.
    say("memory of idle sandboxes");
    let mut memory_rows = Vec::new();
    let cgroups = memory::Cgroups::detect(config)?;
    match idle_memory(&methods, &cgroups) {
        Ok(s) => memory_rows.push(MemoryRow::new(Method::Pool.name(), s)),
        Err(e) => notes.push(format!("memory of kiln-pool: {e}")),
    }
    if let Some(w) = methods.worker.as_mut() {
        let mut got = Vec::new();
        for _ in 0..3 {
            match w.ask("mem") {
                Ok(Reply::Mem { sample }) => got.push(sample),
                Ok(other) => {
                    notes.push(format!("memory of kiln-nozygote: {other:?}"));
                    break;
                }
                Err(e) => {
                    notes.push(format!("memory of kiln-nozygote: {e:#}"));
                    break;
                }
            }
        }
        if !got.is_empty() {
            memory_rows.push(MemoryRow::new(
                Method::NoZygote.name(),
                memory::median(&got),
            ));
        }
    }

    // The per-step cost of making a sandbox.
    say("per-step costs");
    let mut step_rows = Vec::new();
    match steps::in_fork(
        &*methods.backend,
        &methods.options,
        if quick { 10 } else { 30 },
    ) {
        Ok(s) => step_rows.extend(s),
        Err(e) => notes.push(format!("in-fork step timing failed: {e}")),
    }
    match steps::cgroup(config, &limits, if quick { 10 } else { 30 }) {
        Ok(s) => step_rows.extend(s),
        Err(e) => notes.push(format!("cgroup step timing failed: {e}")),
    }
    match steps::namespaces(if quick { 8 } else { 30 }) {
        Ok(s) => step_rows.extend(s),
        Err(e) => notes.push(format!("namespace step timing failed: {e}")),
    }

    // W4: throughput with 2 concurrent clients, one method at a time.
    let mut tput = Vec::new();
    let w4: &[(bool, f64)] = if quick {
        &[(false, 1.5)]
    } else {
        &[(false, 6.0), (true, 12.0)]
    };
    for &(w2, secs) in w4 {
        for m in [
            Method::Pool,
            Method::NoPool,
            Method::NoZygote,
            Method::Docker,
            Method::DockerBackendPool,
            Method::DockerBackend,
            Method::Python3,
        ] {
            if !methods.available(m) || failed.contains(&m) {
                continue;
            }
            say(&format!(
                "W4 {}: {} for {secs} s with 2 clients",
                if w2 { "W2" } else { "W1" },
                m.name()
            ));
            match throughput::run(&mut methods, m, w2, secs, config_path) {
                Ok(t) => tput.push(t),
                Err(e) => notes.push(format!("W4 of {}: {e}", m.name())),
            }
        }
    }
    if quick {
        notes.push("--quick: W4 measured for W1 only, 1.5 s per method".into());
    }

    // Which methods ran, taken before the pools below are shut down.
    let available: Vec<Method> = Method::ALL
        .into_iter()
        .filter(|m| methods.available(*m))
        .collect();
    // Done with the methods: stop the pool, the helper, the interpreter.
    if let Some(mut pool) = methods.pool.take() {
        pool.shutdown();
    }
    if let Some(mut pool) = methods.docker_pool.take() {
        pool.shutdown();
    }
    let docker_cmd = methods.docker.as_ref().map(|d| d.shown_command());
    let docker_imported = methods.docker.as_ref().is_some_and(|d| d.imported);
    let docker_engine = methods.docker.as_ref().map(|d| d.engine_version.clone());
    let plain_how = methods.plain.as_ref().map(|p| p.how.clone());
    drop(methods);
    let _ = std::fs::remove_dir_all(&scratch);

    let report = Report {
        rows: report::rows(&samples, &timings),
        throughput: tput,
        memory: memory_rows,
        machine: machine::Machine {
            cores: machine::cores(),
            cpu: machine::cpu_model(),
            memory_gib: machine::memory_gib(),
            kernel: machine::kernel(),
            cgroup: cgroups.version().to_string(),
            date: machine::now_utc(),
            loadavg,
            kiln_version: env!("CARGO_PKG_VERSION").into(),
            python: python_version,
            runtime: runtime.root.display().to_string(),
            docker_engine,
        },
    };
    let extra = report::Extra {
        timings,
        steps: step_rows,
        w3_work_ms: stats::median(&w3_work),
        notes,
        command: std::env::args()
            .enumerate()
            .map(|(i, a)| if i == 0 { "kiln".to_string() } else { a })
            .collect::<Vec<_>>()
            .join(" "),
        iterations: n,
        w3_iterations: w3n,
        available,
        docker_command: docker_cmd,
        docker_imported,
        plain_how,
        elapsed_s: started.elapsed().as_secs_f64(),
        limits_memory_mib: limits.memory_mib,
    };
    if args.write_docs {
        say("drawing the chart inside a kiln sandbox");
        let chart_path = args.docs_dir.join("bench-latency.png");
        let chart_note = match chart::render(&*backend, &limits, &report) {
            Ok(png) => {
                std::fs::create_dir_all(&args.docs_dir)?;
                std::fs::write(&chart_path, png)?;
                None
            }
            Err(e) => Some(format!("the chart could not be drawn: {e}")),
        };
        let md = markdown::render(&report, &extra, chart_note.as_deref());
        std::fs::create_dir_all(&args.docs_dir)?;
        let md_path = args.docs_dir.join("benchmarks.md");
        std::fs::write(&md_path, md)?;
        say(&format!(
            "wrote {} and {}",
            md_path.display(),
            chart_path.display()
        ));
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report::text(&report, &extra));
    }
    Ok(ExitCode::SUCCESS)
}

/// W3 in a session taken from the pool, interleaved with the same code in
/// the warm interpreter (which also times the work itself).
fn w3(
    methods: &mut Methods,
    n: usize,
    samples: &mut BTreeMap<(Method, &'static str), Vec<f64>>,
    work: &mut Vec<f64>,
) -> Result<(), String> {
    let pool = methods.pool.as_ref().ok_or("no pool")?;
    let mut session = pool.take().map_err(|e| e.to_string())?;
    let first = kiln_core::ExecRequest {
        code: workloads::W3_FIRST.into(),
        files: Vec::new(),
    };
    worker::check(&session.execute(&first, &mut |_| {}), false)?;
    let again = kiln_core::ExecRequest {
        code: workloads::W3.into(),
        files: Vec::new(),
    };
    if let Some(w) = methods.warm.as_mut() {
        w.run(workloads::W3_FIRST).map_err(|e| format!("{e:#}"))?;
    }
    for i in 0..=n {
        for turn in 0..2 {
            if (i + turn) % 2 == 0 {
                let t = Instant::now();
                let r = session.execute(&again, &mut |_| {});
                let ms = worker::ms(t.elapsed());
                worker::check(&r, false)?;
                if i > 0 {
                    samples.entry((Method::Pool, "W3")).or_default().push(ms);
                }
            } else if let Some(w) = methods.warm.as_mut() {
                let t = w.run(workloads::W3).map_err(|e| format!("{e:#}"))?;
                if i > 0 {
                    samples
                        .entry((Method::WarmPython3, "W3"))
                        .or_default()
                        .push(t.total_ms);
                    work.push(t.work_ms);
                }
            }
        }
    }
    // W2 again in the same (now warm) session: kiln's machinery without
    // the first-run cost of a fresh fork, against warm-python3's W2.
    for i in 0..=n / 5 {
        let t = Instant::now();
        let r = session.execute(&worker::request(true), &mut |_| {});
        let ms = worker::ms(t.elapsed());
        worker::check(&r, true)?;
        if i > 0 {
            samples
                .entry((Method::Pool, "W2 again"))
                .or_default()
                .push(ms);
        }
    }
    session.close();
    methods.settle_pool();
    Ok(())
}

/// USS/PSS/cgroup charge of never-used sandboxes from the pool (median of 3).
fn idle_memory(methods: &Methods, cgroups: &memory::Cgroups) -> Result<memory::Sample, String> {
    let pool = methods.pool.as_ref().ok_or("no pool")?;
    let mut got = Vec::new();
    for _ in 0..3 {
        methods.settle_pool();
        let session = pool.take().map_err(|e| e.to_string())?;
        std::thread::sleep(Duration::from_millis(100));
        let s = cgroups.sample(session.id());
        session.close();
        got.push(s.map_err(|e| format!("{e:#}"))?);
    }
    methods.settle_pool();
    Ok(memory::median(&got))
}
