//! `kiln`: run untrusted, model-written Python in disposable sandboxes.
#![forbid(unsafe_code)]

mod agents;
mod backends;
mod bench;
mod config;
mod doctor;
mod policy;
mod print;
mod repl;
mod run;
mod serve;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Run untrusted, model-written Python in disposable, locked-down sandboxes"
)]
struct Cli {
    /// Path of kiln.toml (default: $KILN_CONFIG, ./kiln.toml, /etc/kiln/kiln.toml; none = built-in defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a Python file (or `-` for stdin) in a fresh sandbox.
    Run(run::RunArgs),
    /// An interactive, stateful Python session in one sandbox.
    Repl(repl::ReplArgs),
    /// Serve the HTTP API (as root: an unprivileged front end over a privileged sandbox supervisor).
    Serve(serve::ServeArgs),
    /// Serve MCP (Model Context Protocol) over stdin/stdout: execute_code and session tools.
    Mcp(serve::McpArgs),
    /// Print the system-prompt guardrail text generated from the policy.
    Prompt(agents::PromptArgs),
    /// Print tool definitions (JSON Schema) for function calling, with the guardrail text.
    Tools(agents::ToolsArgs),
    /// Measure kiln against docker run and plain python3, side by side.
    Bench(bench::BenchArgs),
    /// Report what isolation this host can give, and how to fix what is missing.
    Doctor {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Manage the container image of the docker and podman backends.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Manage the Python runtime sandboxes run on.
    Env {
        #[command(subcommand)]
        command: EnvCommand,
    },
    /// The policy: environments, allowed libraries, denied modules, limits.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a kiln.toml (default: the one kiln would load) and show
    /// what it allows; exit 2 with the reason when it is invalid.
    Check {
        /// The file to check.
        file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Build kiln's Python image from the runtime tree (no registry needed; reused when present).
    Build(backends::ImageBuildArgs),
}

#[derive(Subcommand)]
enum EnvCommand {
    /// Build the self-contained runtime (interpreter + pinned libraries) from PyPI.
    Setup,
    /// Print where the runtime lives and what it holds.
    Show,
    /// Resolve the libraries an environment allows that the runtime lacks
    /// (with their dependencies, from PyPI), keep their wheels and write a
    /// hash-pinned lock.
    Lock {
        /// The environment (`[environments]` in kiln.toml).
        #[arg(long, default_value = "default")]
        environment: String,
        /// Where to write the lock (default: the environment's `lock`, else
        /// <data_dir>/wheelhouse/<environment>.lock).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Download (hash-checked) the wheels of an environment's lock and
    /// install its library tree offline; prints the tree's path.
    Wheelhouse {
        /// The environment (`[environments]` in kiln.toml).
        #[arg(long, default_value = "default")]
        environment: String,
        /// A lock file to use instead of the environment's.
        #[arg(long)]
        lock: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let serving = match &cli.command {
        // The front end reads no config file: the supervisor hands it over.
        Command::Serve(args) if args.frontend => return exit(serve::frontend_main()),
        Command::Serve(_) => true,
        _ => false,
    };
    if !serving {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    if let Command::Policy {
        command: PolicyCommand::Check { file },
    } = &cli.command
    {
        let path = file.clone().or_else(|| config::find(cli.config.as_deref()));
        return exit(
            config::load(path.as_deref()).and_then(|c| policy::check(&c, path.as_deref())),
        );
    }
    let result = config::load(cli.config.as_deref()).and_then(|config| match cli.command {
        Command::Serve(args) => serve::serve(config, &args),
        Command::Run(args) => run::run(&config, &args),
        Command::Repl(args) => repl::repl(&config, &args),
        Command::Mcp(args) => serve::mcp(config, &args),
        Command::Prompt(args) => agents::prompt(&config, &args),
        Command::Tools(args) => agents::tools(&config, &args),
        Command::Bench(args) => bench::bench(&config, cli.config.as_deref(), &args),
        Command::Doctor { json } => doctor::doctor(&config, json),
        Command::Image {
            command: ImageCommand::Build(args),
        } => backends::image_build(&config, &args),
        Command::Env {
            command: EnvCommand::Setup,
        } => config::env_setup(&config).map(|_| ExitCode::SUCCESS),
        Command::Env {
            command: EnvCommand::Show,
        } => config::env_show(&config),
        Command::Env {
            command:
                EnvCommand::Lock {
                    environment,
                    output,
                },
        } => config::env_lock(&config, &environment, output.as_deref()),
        Command::Env {
            command: EnvCommand::Wheelhouse { environment, lock },
        } => config::env_wheelhouse(&config, &environment, lock.as_deref()),
        Command::Policy { .. } => unreachable!("handled above"),
    });
    exit(result)
}

fn exit(result: anyhow::Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kiln: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
