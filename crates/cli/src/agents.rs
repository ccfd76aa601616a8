//! `kiln prompt` and `kiln tools`: what to tell a model about kiln, from
//! the policy (`kiln_policy::guardrails`: the environment's libraries and
//! denied modules, the limits) — the same text the MCP tools carry.

use anyhow::Result;
use kiln_policy::Config;
use kiln_server::mcp::{self, ToolFormat};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct PromptArgs {
    /// The environment the text describes.
    #[arg(long, default_value = mcp::DEFAULT_ENV)]
    pub env: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Format {
    /// OpenAI function calling (`tools=[...]`).
    Openai,
    /// Anthropic tool use (`tools=[...]`).
    Anthropic,
    /// MCP `tools/list` result.
    Mcp,
}

#[derive(clap::Args)]
pub struct ToolsArgs {
    /// Which function-calling dialect to print.
    #[arg(long, value_enum, default_value = "openai")]
    pub format: Format,
}

pub fn prompt(config: &Config, args: &PromptArgs) -> Result<ExitCode> {
    print!("{}", kiln_policy::guardrails(config, &args.env)?);
    Ok(ExitCode::SUCCESS)
}

pub fn tools(config: &Config, args: &ToolsArgs) -> Result<ExitCode> {
    let format = match args.format {
        Format::Openai => ToolFormat::OpenAi,
        Format::Anthropic => ToolFormat::Anthropic,
        Format::Mcp => ToolFormat::Mcp,
    };
    let specs = mcp::tool_specs(&mcp::default_guardrails(config));
    println!(
        "{}",
        serde_json::to_string_pretty(&mcp::render_tools(&specs, format))?
    );
    Ok(ExitCode::SUCCESS)
}
