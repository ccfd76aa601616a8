//! `kiln run FILE|-`.

use crate::print;
use anyhow::{Context, Result};
use kiln_core::{BackendError, ExecRequest, ExecutionResult, InputFile, Outcome};
use kiln_policy::{Config, LimitRequest};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct RunArgs {
    /// The Python file(s) to run, or `-` to read the code from stdin. Each
    /// runs in its own fresh sandbox; with `--json`, one result per line.
    #[arg(required = true, value_name = "FILE")]
    pub code_files: Vec<PathBuf>,
    /// Print the whole structured result as one JSON object (PNGs as base64).
    #[arg(long)]
    pub json: bool,
    /// Wall-clock limit in seconds (within the policy's ceiling).
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Memory limit in MiB (within the policy's ceiling).
    #[arg(long)]
    pub memory: Option<u64>,
    /// A host file to place into /work before the code runs (repeatable);
    /// `PATH` keeps its file name, `PATH:NAME` renames it.
    #[arg(long = "file", value_name = "PATH[:NAME]")]
    pub files: Vec<String>,
    /// A configured dataset (`[sandbox.datasets]` in kiln.toml) to mount
    /// read-only at `/data/NAME` (repeatable).
    #[arg(long = "dataset", value_name = "NAME")]
    pub datasets: Vec<String>,
    /// The policy environment (`[environments]` in kiln.toml; `kiln policy
    /// check` lists them).
    #[arg(long, value_name = "NAME")]
    pub environment: Option<String>,
    /// A library the code needs, `NAME` or `NAME==VERSION` (repeatable):
    /// one the environment does not allow is refused before anything runs.
    #[arg(long = "library", value_name = "NAME")]
    pub libraries: Vec<String>,
    /// Fork the sandboxes from a warm zygote template (pays the template's
    /// start-up once: worth it for several files, not for one).
    #[arg(long)]
    pub zygote: bool,
    /// Keep this many sandboxes warm ahead of the files (a zygote and a
    /// warm pool; each file still gets a fresh sandbox, used once).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub pool: usize,
    /// Where charts and files are written.
    #[arg(long, default_value = "kiln-out")]
    pub out_dir: PathBuf,
    #[command(flatten)]
    pub backend: crate::backends::BackendArgs,
}

pub fn run(config: &Config, args: &RunArgs) -> Result<ExitCode> {
    let request = LimitRequest {
        wall_ms: args.timeout.map(|s| (s * 1000.0).round().max(1.0) as u64),
        memory_mib: args.memory,
        ..Default::default()
    };
    let limits = match config.resolve(&request) {
        Ok(limits) => limits,
        Err(e) => {
            let refused = ExecutionResult::without_sandbox(Outcome::Rejected, e.to_string());
            return report(args, &[refused]);
        }
    };
    // The policy gate: environment, libraries, then each file's imports.
    let gate = match kiln_check::Gate::new(config, args.environment.as_deref()) {
        Ok(gate) => gate,
        Err(why) => return report(args, &[rejected(why)]),
    };
    // The wheelhouse only when a library is asked for (building its tree
    // the first time takes a pip run).
    let wheelhouse = if args.libraries.is_empty() {
        None
    } else {
        crate::config::wheelhouse_tree(config, gate.name)?
    };
    let library_tree = match gate.libraries(
        &args.libraries,
        &crate::config::preinstalled(),
        wheelhouse.as_ref(),
    ) {
        Ok(tree) => tree,
        Err(why) => return report(args, &[rejected(why)]),
    };
    let inputs = read_inputs(&args.files)?;
    let options = kiln_core::SessionOptions {
        limits: limits.clone(),
        datasets: args.datasets.clone(),
        deny_imports: gate.deny_imports(),
        egress: gate.egress(),
        library_tree,
        ..Default::default()
    };
    if args.pool > 0 {
        return run_pooled(config, args, &gate, options, inputs);
    }
    let mut backend = None;
    let mut results = Vec::new();
    for file in &args.code_files {
        let request = match prepare(file, &inputs, &options.limits, &gate)? {
            Ok(request) => request,
            Err(refused) => {
                results.push(refused);
                continue;
            }
        };
        if backend.is_none() {
            backend = Some(crate::backends::open_with_fallback(
                config,
                &args.backend,
                args.zygote,
            )?);
        }
        // A sandbox that could not be made is reported like any other
        // outcome, so a `--json` caller always gets a typed result.
        let result = match backend.as_ref().expect("just set") {
            Ok(b) => match b.execute_with(&request, &options) {
                Ok(result) => result,
                Err(BackendError::InvalidOptions(why)) => rejected(why.to_string()),
                Err(e) => unavailable(e),
            },
            Err(e) => unavailable_from(e),
        };
        results.push(result);
    }
    report(args, &results)
}

/// One file's request, or the result that refuses it before any sandbox.
fn prepare(
    file: &std::path::Path,
    inputs: &[InputFile],
    limits: &kiln_policy::Limits,
    gate: &kiln_check::Gate,
) -> Result<Result<ExecRequest, ExecutionResult>> {
    let code = match read_code(file)? {
        Ok(code) => code,
        Err(why) => return Ok(Err(rejected(why))),
    };
    let request = ExecRequest {
        code,
        files: inputs.to_vec(),
    };
    if let Some(why) = kiln_core::check_request(&request, limits) {
        return Ok(Err(rejected(why)));
    }
    if let Err(why) = gate.code(&request.code) {
        return Ok(Err(rejected(why)));
    }
    Ok(Ok(request))
}

fn rejected(why: String) -> ExecutionResult {
    ExecutionResult::without_sandbox(Outcome::Rejected, why)
}

/// Every file through a warm pool of zygote sandboxes.
fn run_pooled(
    config: &Config,
    args: &RunArgs,
    gate: &kiln_check::Gate,
    options: kiln_core::SessionOptions,
    inputs: Vec<InputFile>,
) -> Result<ExitCode> {
    let backend = match crate::backends::open_with_fallback(config, &args.backend, true)? {
        Ok(b) => b,
        Err(e) => return report(args, &[unavailable(e)]),
    };
    let limits = options.limits.clone();
    let pool_config = kiln_core::PoolConfig {
        min_ready: args.pool,
        max_ready: args.pool,
        ..Default::default()
    };
    let mut pool = kiln_core::Pool::start(backend, options, pool_config);
    let mut results = Vec::new();
    for file in &args.code_files {
        let request = match prepare(file, &inputs, &limits, gate)? {
            Ok(request) => request,
            Err(refused) => {
                results.push(refused);
                continue;
            }
        };
        let result = match pool.take() {
            Ok(mut session) => {
                let mut r = session.execute(&request, &mut |_| {});
                session.close();
                r.session_ended = false;
                r
            }
            Err(BackendError::InvalidOptions(why)) => rejected(why.to_string()),
            Err(e) => unavailable(e),
        };
        results.push(result);
    }
    pool.shutdown();
    report(args, &results)
}

/// Prints every result; the exit code mirrors the first that is not ok.
fn report(args: &RunArgs, results: &[ExecutionResult]) -> Result<ExitCode> {
    let mut printer = print::Printer::new(&args.out_dir);
    for result in results {
        if args.json {
            println!("{}", serde_json::to_string(result)?);
        } else {
            for event in &result.events {
                printer.event(event)?;
            }
            printer.end(result)?;
        }
    }
    let code = results
        .iter()
        .map(|r| r.outcome)
        .find(|o| *o != Outcome::Ok)
        .map_or(0, Outcome::exit_code);
    Ok(ExitCode::from(code as u8))
}

/// The code, or why it is refused (not UTF-8).
fn read_code(file: &std::path::Path) -> Result<Result<String, String>> {
    let mut bytes = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read code from stdin")?;
    } else {
        bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    }
    Ok(String::from_utf8(bytes).map_err(|e| {
        format!(
            "code is not valid UTF-8 (byte {})",
            e.utf8_error().valid_up_to()
        )
    }))
}

pub fn read_inputs(specs: &[String]) -> Result<Vec<InputFile>> {
    specs
        .iter()
        .map(|spec| {
            let (path, name) = match spec.rsplit_once(':') {
                Some((p, n)) if !n.is_empty() && !n.contains('/') => {
                    (PathBuf::from(p), n.to_string())
                }
                _ => {
                    let p = PathBuf::from(spec);
                    let name = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    (p, name)
                }
            };
            let data = std::fs::read(&path)
                .with_context(|| format!("cannot read input file {}", path.display()))?;
            Ok(InputFile { path: name, data })
        })
        .collect()
}

fn unavailable_from(e: &BackendError) -> ExecutionResult {
    ExecutionResult::without_sandbox(Outcome::Unavailable, e.to_string())
}

fn unavailable(e: BackendError) -> ExecutionResult {
    ExecutionResult::without_sandbox(Outcome::Unavailable, e.to_string())
}
