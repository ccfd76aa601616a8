//! The MCP server (official Rust SDK, `rmcp`): the same tools over stdio
//! (`kiln mcp`) and over streamable HTTP (`/mcp` on `kiln serve`, behind
//! the bearer-key auth of `/v1`).
//!
//! Every tool call becomes a [`Command`] sent to the sandbox supervisor
//! over its unix socket, exactly as an HTTP request does, so ownership,
//! quotas and limits are the same. Over HTTP the caller is the key that
//! authenticated the request; over stdio it is one fixed key id.
//!
//! Tools: `execute_code`, `create_session`, `close_session`,
//! `upload_file`, `read_file`, `list_environments`. Their descriptions
//! carry the guardrail text (`kiln_policy::guardrails`).

use crate::app::{AppState, Caller};
use crate::record::ExecutionRecord;
use crate::supervisor::{ClientError, Supervisor};
use base64::Engine;
use kiln_core::service::{Command, ErrorKind, Reply, SessionRequest};
use kiln_core::{Event, ExecRequest, ExecutionResult, Outcome};
use kiln_policy::{Config, LimitRequest};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// Text of one stream (stdout, stderr) kept in a tool answer; the rest is
/// cut with a note.
pub const TEXT_CAP: usize = 20_000;

/// The display key the runner puts on the bundle of a cell's last bare
/// expression (its "main result", as Jupyter's `execute_result`).
pub const MAIN_RESULT_KEY: &str = "application/vnd.kiln.main-result";

/// The environment a call gets when it names none.
pub const DEFAULT_ENV: &str = kiln_policy::DEFAULT_ENVIRONMENT;

/// The guardrail text of the default environment under `config` (the
/// tool descriptions carry it).
pub fn default_guardrails(config: &Config) -> String {
    kiln_policy::guardrails(config, DEFAULT_ENV).unwrap_or_else(|e| {
        format!("Python code runs in a kiln sandbox; the policy has no usable default environment ({e}).")
    })
}

/// One tool: its name, description and JSON Schema of its arguments.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    pub name: &'static str,
    pub description: String,
    pub input_schema: Value,
}

/// The tools, their descriptions carrying `guardrails`.
pub fn tool_specs(guardrails: &str) -> Vec<ToolSpec> {
    let session = json!({"type": "string", "description": "A session id from create_session. Omit to run in a fresh sandbox that is destroyed afterwards."});
    vec![
        ToolSpec {
            name: "execute_code",
            description: format!(
                "Run Python code in a kiln sandbox and return its stdout, stderr, error (with traceback) and one PNG image per chart.\n\n{guardrails}"
            ),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "code": {"type": "string", "description": "Python source to run."},
                    "session": session,
                    "timeout": {"type": "number", "exclusiveMinimum": 0, "description": "Seconds before the run is interrupted (KeyboardInterrupt); at most the policy's wall limit. In a session its variables survive."},
                    "environment": {"type": "string", "description": "Environment of a run without a session (see list_environments; default: default). A session keeps the one it was created with."}
                },
                "required": ["code"],
                "additionalProperties": false
            }),
        },
        ToolSpec {
            name: "create_session",
            description: format!(
                "Create a persistent Python session: variables, imports and files in /work survive between execute_code calls that pass its id. Close it when done.\n\n{guardrails}"
            ),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "environment": {"type": "string", "description": "Environment name (see list_environments).", "default": DEFAULT_ENV},
                    "idle_timeout_s": {"type": "integer", "minimum": 1, "description": "Close the session after this many idle seconds (within the policy's ceiling)."}
                },
                "additionalProperties": false
            }),
        },
        ToolSpec {
            name: "close_session",
            description: "Close a session; nothing of it remains.".to_string(),
            input_schema: json!({
                "type": "object",
                "properties": {"session": {"type": "string", "description": "The session id."}},
                "required": ["session"],
                "additionalProperties": false
            }),
        },
        ToolSpec {
            name: "upload_file",
            description: "Write a file into a session's /work directory (text, or base64 for binary data).".to_string(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "session": {"type": "string", "description": "The session id."},
                    "path": {"type": "string", "description": "Path relative to /work (or absolute under /work)."},
                    "content": {"type": "string", "description": "The file's text (UTF-8)."},
                    "content_base64": {"type": "string", "description": "The file's bytes, base64; instead of content."}
                },
                "required": ["session", "path"],
                "additionalProperties": false
            }),
        },
        ToolSpec {
            name: "read_file",
            description: "Read a file from a session's /work directory (for example a chart or CSV the code saved under /work/out). Text comes back as text, PNG/JPEG as an image, other bytes as base64.".to_string(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "session": {"type": "string", "description": "The session id."},
                    "path": {"type": "string", "description": "Path relative to /work (or absolute under /work)."}
                },
                "required": ["session", "path"],
                "additionalProperties": false
            }),
        },
        ToolSpec {
            name: "list_environments",
            description: "List the environments code can run in: their libraries, datasets and limits.".to_string(),
            input_schema: json!({"type": "object", "properties": {}, "additionalProperties": false}),
        },
    ]
}

/// Formats `kiln tools --format` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// OpenAI function calling: `[{"type": "function", "function": {...}}]`.
    OpenAi,
    /// Anthropic tool use: `[{"name", "description", "input_schema"}]`.
    Anthropic,
    /// MCP `tools/list`: `{"tools": [{"name", "description", "inputSchema"}]}`.
    Mcp,
}

/// The tool definitions in `format`.
pub fn render_tools(specs: &[ToolSpec], format: ToolFormat) -> Value {
    let each = |f: &dyn Fn(&ToolSpec) -> Value| specs.iter().map(f).collect::<Vec<_>>();
    match format {
        ToolFormat::OpenAi => Value::Array(each(&|t| {
            json!({"type": "function", "function": {
                "name": t.name, "description": t.description, "parameters": t.input_schema}})
        })),
        ToolFormat::Anthropic => Value::Array(each(
            &|t| json!({"name": t.name, "description": t.description, "input_schema": t.input_schema}),
        )),
        ToolFormat::Mcp => json!({"tools": each(&|t| {
            json!({"name": t.name, "description": t.description, "inputSchema": t.input_schema})
        })}),
    }
}

/// Who the calls act for.
#[derive(Clone)]
enum Principal {
    /// stdio: one fixed key id.
    Fixed(String),
    /// HTTP: the key that authenticated the request (its quotas, metrics
    /// and audit log as for `/v1`).
    Http(AppState),
}

/// The MCP server handler; cheap to clone (one per HTTP MCP session).
#[derive(Clone)]
pub struct KilnMcp {
    inner: Arc<Inner>,
}

struct Inner {
    supervisor: Supervisor,
    principal: Principal,
    tools: Vec<Tool>,
    instructions: String,
    /// The default wall limit (for a session run without a timeout, the
    /// front end's own bound) and its ceiling.
    wall_ms: u64,
    wall_ceiling_ms: u64,
    grace_ms: u64,
}

impl KilnMcp {
    /// For `kiln mcp`: every call acts for key `key`.
    pub fn stdio(config: &Config, supervisor: Supervisor, key: impl Into<String>) -> Self {
        Self::new(config, supervisor, Principal::Fixed(key.into()))
    }

    pub(crate) fn http(config: &Config, state: AppState) -> Self {
        Self::new(config, state.supervisor.clone(), Principal::Http(state))
    }

    fn new(config: &Config, supervisor: Supervisor, principal: Principal) -> Self {
        let guardrails = default_guardrails(config);
        let tools = tool_specs(&guardrails)
            .into_iter()
            .map(|t| {
                let schema = match t.input_schema {
                    Value::Object(map) => map,
                    _ => Map::new(),
                };
                Tool::new(t.name, t.description, Arc::new(schema))
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                supervisor,
                principal,
                tools,
                instructions: format!("kiln runs Python in disposable, locked-down sandboxes. Use execute_code; create_session to keep state between calls.\n\n{guardrails}"),
                wall_ms: config.limits.wall_ms,
                wall_ceiling_ms: config.ceilings.wall_ms,
                grace_ms: config.ceilings.grace_ms,
            }),
        }
    }

    /// The key id the call acts for, and (over HTTP) the caller.
    fn who(&self, ctx: &RequestContext<RoleServer>) -> Result<(String, Option<Caller>), McpError> {
        match &self.inner.principal {
            Principal::Fixed(key) => Ok((key.clone(), None)),
            Principal::Http(_) => {
                let caller = ctx
                    .extensions
                    .get::<axum::http::request::Parts>()
                    .and_then(|p| p.extensions.get::<Caller>())
                    .cloned()
                    .ok_or_else(|| McpError::invalid_request("no authenticated caller", None))?;
                Ok((caller.id(), Some(caller)))
            }
        }
    }

    async fn call(&self, command: Command) -> Result<Reply, ToolError> {
        match self.inner.supervisor.call(&command).await {
            Ok(Reply::Error { kind, message }) => Err(ToolError::Service(kind, message)),
            Ok(reply) => Ok(reply),
            Err(e) => Err(ToolError::Supervisor(e)),
        }
    }

    async fn dispatch(
        &self,
        name: &str,
        args: &Map<String, Value>,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ToolError> {
        let (key, caller) = self.who(ctx).map_err(ToolError::Protocol)?;
        match name {
            "execute_code" => {
                let code = string(args, "code")?;
                let session = optional_string(args, "session")?;
                let timeout = match args.get("timeout") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(
                        v.as_f64()
                            .filter(|s| *s > 0.0 && s.is_finite())
                            .ok_or_else(|| bad("`timeout` must be a positive number of seconds"))?,
                    ),
                };
                let environment = optional_string(args, "environment")?;
                if environment.is_some() && session.is_some() {
                    return Err(bad(
                        "`environment` is for runs without a session; a session keeps the environment it was created with",
                    ));
                }
                let run = RunArgs {
                    code,
                    session,
                    timeout_s: timeout,
                    environment,
                };
                self.execute(key, caller, run, ctx).await
            }
            "create_session" => {
                let environment = optional_string(args, "environment")?;
                let idle = match args.get("idle_timeout_s") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(
                        v.as_u64()
                            .ok_or_else(|| bad("`idle_timeout_s` must be a positive integer"))?,
                    ),
                };
                let options = SessionRequest {
                    idle_timeout_s: idle,
                    environment,
                    ..SessionRequest::default()
                };
                match self.call(Command::CreateSession { key, options }).await? {
                    Reply::Session { session } => Ok(CallToolResult::success(vec![
                        ContentBlock::text(format!(
                            "session {} created (closed after {} s idle, at most {} s old). Pass \"session\": \"{}\" to execute_code.",
                            session.id, session.idle_timeout_s, session.max_lifetime_s, session.id
                        )),
                    ])),
                    _ => Err(ToolError::Unexpected),
                }
            }
            "close_session" => {
                let session = string(args, "session")?;
                self.call(Command::CloseSession {
                    key,
                    session: session.clone(),
                })
                .await?;
                Ok(CallToolResult::success(vec![ContentBlock::text(format!(
                    "session {session} closed"
                ))]))
            }
            "upload_file" => {
                let session = string(args, "session")?;
                let path = relative(&string(args, "path")?)?;
                let data_b64 = match (
                    optional_string(args, "content")?,
                    optional_string(args, "content_base64")?,
                ) {
                    (Some(text), None) => {
                        base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
                    }
                    (None, Some(b64)) => {
                        base64::engine::general_purpose::STANDARD
                            .decode(b64.as_bytes())
                            .map_err(|e| bad(format!("`content_base64` is not base64: {e}")))?;
                        b64
                    }
                    _ => return Err(bad("give exactly one of `content` and `content_base64`")),
                };
                let size = base64::engine::general_purpose::STANDARD
                    .decode(data_b64.as_bytes())
                    .map(|d| d.len())
                    .unwrap_or(0);
                self.call(Command::WriteFile {
                    key,
                    session,
                    path: path.clone(),
                    data_b64,
                })
                .await?;
                Ok(CallToolResult::success(vec![ContentBlock::text(format!(
                    "wrote {size} bytes to {}",
                    work_path(&path)
                ))]))
            }
            "read_file" => {
                let session = string(args, "session")?;
                let path = relative(&string(args, "path")?)?;
                match self
                    .call(Command::ReadFile {
                        key,
                        session,
                        path: path.clone(),
                    })
                    .await?
                {
                    Reply::File { data_b64, size, .. } => {
                        Ok(CallToolResult::success(file_content(&path, size, data_b64)))
                    }
                    _ => Err(ToolError::Unexpected),
                }
            }
            "list_environments" => match self.call(Command::Policy).await? {
                Reply::Policy { policy } => {
                    let envs = crate::routes::environments_of(&policy);
                    let text = serde_json::to_string_pretty(&json!({ "environments": envs }))
                        .unwrap_or_default();
                    Ok(CallToolResult::success(vec![ContentBlock::text(text)]))
                }
                _ => Err(ToolError::Unexpected),
            },
            other => Err(ToolError::Protocol(McpError::invalid_params(
                format!("no tool named `{other}`"),
                None,
            ))),
        }
    }

    async fn execute(
        &self,
        key: String,
        caller: Option<Caller>,
        run: RunArgs,
        ctx: &RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ToolError> {
        let RunArgs {
            code,
            session,
            timeout_s,
            environment,
        } = run;
        let inner = &self.inner;
        let timeout_ms = timeout_s.map(|s| ((s * 1000.0).ceil() as u64).max(1));
        let request = ExecRequest {
            code: code.clone(),
            files: Vec::new(),
        };
        // Over HTTP: the key's concurrency slot and the audit record.
        let record = match (&caller, &inner.principal) {
            (Some(caller), Principal::Http(state)) => {
                let slot = caller.0.start_execution().map_err(|e| {
                    state.metrics.rejection("concurrency");
                    ToolError::Service(ErrorKind::TooMany, e.message)
                })?;
                Some(ExecutionRecord::start(
                    state.clone(),
                    if session.is_some() {
                        "session"
                    } else {
                        "oneshot"
                    },
                    key.clone(),
                    session.clone(),
                    &code,
                    None,
                    slot,
                ))
            }
            _ => None,
        };
        let (command, interrupt_after) = match &session {
            None => (
                Command::Execute {
                    key: key.clone(),
                    request,
                    limits: LimitRequest {
                        wall_ms: timeout_ms.map(|t| t.min(inner.wall_ceiling_ms)),
                        ..LimitRequest::default()
                    },
                    environment,
                    libraries: Vec::new(),
                },
                None,
            ),
            Some(id) => (
                Command::SessionExecute {
                    key: key.clone(),
                    session: id.clone(),
                    request,
                },
                timeout_ms.map(Duration::from_millis),
            ),
        };
        // A one-shot run's wall limit is known; a session's own limits are
        // not known here, so its ceiling bounds it (as for /v1).
        let wall = match &session {
            None => timeout_ms
                .unwrap_or(inner.wall_ms)
                .min(inner.wall_ceiling_ms),
            Some(_) => inner.wall_ceiling_ms,
        };
        let bound = Duration::from_millis(wall + inner.grace_ms) + crate::routes::EXECUTION_MARGIN;
        let outcome = run_to_end(
            &inner.supervisor,
            command,
            interrupt_after.map(|after| (after, key.clone(), session.clone().unwrap_or_default())),
            bound,
            ctx,
        )
        .await;
        let mut record = record;
        match outcome {
            Ok(result) => {
                if let Some(r) = record.as_mut() {
                    r.finished(&result);
                }
                Ok(execution_content(&result, session.as_deref()))
            }
            Err(e) => {
                if let (Some(r), ToolError::Service(kind, _)) = (record.as_mut(), &e) {
                    r.failed(*kind);
                }
                Err(e)
            }
        }
    }
}

/// The arguments of one `execute_code` call.
struct RunArgs {
    code: String,
    session: Option<String>,
    timeout_s: Option<f64>,
    environment: Option<String>,
}

/// Sends an execution and waits for its result: after `interrupt` (a
/// session run with a timeout) the session is interrupted and the result
/// still awaited; a cancelled MCP request drops the connection, which
/// interrupts the run.
async fn run_to_end(
    supervisor: &Supervisor,
    command: Command,
    interrupt: Option<(Duration, String, String)>,
    bound: Duration,
    ctx: &RequestContext<RoleServer>,
) -> Result<ExecutionResult, ToolError> {
    let mut replies = supervisor
        .send(&command)
        .await
        .map_err(ToolError::Supervisor)?;
    let deadline = tokio::time::Instant::now() + bound;
    let mut interrupt_at = interrupt
        .as_ref()
        .map(|(after, _, _)| tokio::time::Instant::now() + *after);
    loop {
        let next = tokio::select! {
            reply = replies.next() => reply,
            _ = ctx.ct.cancelled() => return Err(ToolError::Cancelled),
            _ = tokio::time::sleep_until(deadline) => return Err(ToolError::FrontendTimeout),
            _ = sleep_until_opt(interrupt_at) => {
                interrupt_at = None;
                if let Some((_, key, session)) = &interrupt {
                    let _ = supervisor.call(&Command::Interrupt { key: key.clone(), session: session.clone() }).await;
                }
                continue;
            }
        };
        match next.map_err(ToolError::Supervisor)? {
            Some(Reply::Event { .. }) => continue,
            Some(Reply::Result { result }) => return Ok(result),
            Some(Reply::Error { kind, message }) => return Err(ToolError::Service(kind, message)),
            Some(_) => return Err(ToolError::Unexpected),
            None => return Err(ToolError::Supervisor(ClientError::Closed)),
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Why a tool call failed.
#[derive(Debug)]
enum ToolError {
    BadArgs(String),
    Service(ErrorKind, String),
    Supervisor(ClientError),
    FrontendTimeout,
    Cancelled,
    Unexpected,
    Protocol(McpError),
}

fn bad(message: impl Into<String>) -> ToolError {
    ToolError::BadArgs(message.into())
}

impl ToolError {
    /// The text a model reads for a failed call.
    fn text(&self) -> String {
        match self {
            ToolError::BadArgs(m) => format!("invalid arguments: {m}"),
            ToolError::Service(kind, m) => format!("{}: {m}", kind_name(*kind)),
            ToolError::Supervisor(e) => format!("unavailable: {e}"),
            ToolError::FrontendTimeout => {
                "timeout: the execution did not end within its wall limit plus a margin".into()
            }
            ToolError::Cancelled => "cancelled by the client".into(),
            ToolError::Unexpected => "internal: unexpected reply from the supervisor".into(),
            ToolError::Protocol(e) => e.message.to_string(),
        }
    }
}

fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::BadRequest => "bad_request",
        ErrorKind::Rejected => "rejected",
        ErrorKind::NotFound => "not_found",
        ErrorKind::TooMany => "too_many",
        ErrorKind::Busy => "busy",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Internal => "internal",
    }
}

fn string(args: &Map<String, Value>, name: &str) -> Result<String, ToolError> {
    optional_string(args, name)?.ok_or_else(|| bad(format!("`{name}` is required")))
}

fn optional_string(args: &Map<String, Value>, name: &str) -> Result<Option<String>, ToolError> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(bad(format!("`{name}` must be a string"))),
    }
}

/// A path as the file commands take it: relative to /work.
fn relative(path: &str) -> Result<String, ToolError> {
    crate::e2b::work_relative(path).map_err(ToolError::BadArgs)
}

fn work_path(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("/work/{path}")
    }
}

/// Cuts `text` to [`TEXT_CAP`] bytes (on a char boundary) with a note.
pub fn cap_text(text: &str) -> String {
    if text.len() <= TEXT_CAP {
        return text.to_string();
    }
    let mut end = TEXT_CAP;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}\n[... {} more bytes cut: the answer keeps {TEXT_CAP} bytes per stream; write large output to a file under /work/out and read parts of it]",
        &text[..end],
        text.len() - end
    )
}

/// A finished execution as MCP content: one text item (outcome, stdout,
/// stderr, displayed values, files, error), then one image item per chart.
pub fn execution_content(result: &ExecutionResult, session: Option<&str>) -> CallToolResult {
    let mut stdout = String::new();
    let mut stderr = String::new();
    let mut values = Vec::new();
    let mut files = Vec::new();
    let mut images = Vec::new();
    let mut error = None;
    for event in &result.events {
        match event {
            Event::Stdout { text } => stdout.push_str(text),
            Event::Stderr { text } => stderr.push_str(text),
            Event::Display { data } => {
                if let Some(png) = data.get("image/png") {
                    images.push(ContentBlock::image(png.clone(), "image/png"));
                } else if let Some(jpeg) = data.get("image/jpeg") {
                    images.push(ContentBlock::image(jpeg.clone(), "image/jpeg"));
                } else if let Some(text) = data.get("text/plain") {
                    values.push(text.clone());
                }
            }
            Event::File {
                path,
                size,
                data_b64,
            } => {
                files.push(format!("{path} ({size} bytes)"));
                if let Some(mime) = image_mime(path) {
                    images.push(ContentBlock::image(data_b64.clone(), mime));
                }
            }
            Event::Error {
                name,
                value,
                traceback,
            } => error = Some((name.clone(), value.clone(), traceback.join("\n"))),
        }
    }
    let mut text = format!(
        "outcome: {}{}",
        result.outcome.as_str(),
        result
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    if let Some(id) = session {
        text.push_str(&format!("\nsession: {id}"));
    }
    if !stdout.is_empty() {
        text.push_str(&format!("\n--- stdout ---\n{}", cap_text(&stdout)));
    }
    if !stderr.is_empty() {
        text.push_str(&format!("\n--- stderr ---\n{}", cap_text(&stderr)));
    }
    if !values.is_empty() {
        text.push_str(&format!(
            "\n--- result ---\n{}",
            cap_text(&values.join("\n"))
        ));
    }
    if !files.is_empty() {
        text.push_str(&format!(
            "\n--- files in /work/out ---\n{}",
            files.join("\n")
        ));
    }
    if let Some((name, value, traceback)) = &error {
        text.push_str(&format!(
            "\n--- error ---\n{name}: {value}\n{}",
            cap_text(traceback)
        ));
    }
    if !images.is_empty() {
        text.push_str(&format!("\n({} image(s) follow)", images.len()));
    }
    if result.truncated {
        text.push_str("\n(output was cut at the sandbox's output limit)");
    }
    let mut content = vec![ContentBlock::text(text)];
    content.extend(images);
    if result.outcome == Outcome::Ok {
        CallToolResult::success(content)
    } else {
        CallToolResult::error(content)
    }
}

fn image_mime(path: &str) -> Option<&'static str> {
    let lower = path.to_ascii_lowercase();
    if lower.ends_with(".png") {
        Some("image/png")
    } else if lower.ends_with(".jpg") || lower.ends_with(".jpeg") {
        Some("image/jpeg")
    } else {
        None
    }
}

/// A file read back: text when it is UTF-8, an image for PNG/JPEG, else
/// base64 in a text item.
fn file_content(path: &str, size: u64, data_b64: String) -> Vec<ContentBlock> {
    if let Some(mime) = image_mime(path) {
        return vec![
            ContentBlock::text(format!("{} ({size} bytes)", work_path(path))),
            ContentBlock::image(data_b64, mime),
        ];
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data_b64.as_bytes())
        .unwrap_or_default();
    match String::from_utf8(bytes) {
        Ok(text) => vec![ContentBlock::text(cap_text(&text))],
        Err(_) => vec![ContentBlock::text(format!(
            "{} ({size} bytes, binary) base64:\n{data_b64}",
            work_path(path)
        ))],
    }
}

impl ServerHandler for KilnMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("kiln", env!("CARGO_PKG_VERSION")))
            .with_instructions(self.inner.instructions.clone())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        Ok(ListToolsResult::with_all_items(self.inner.tools.clone()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request.arguments.unwrap_or_default();
        match self.dispatch(&request.name, &args, &context).await {
            Ok(result) => Ok(result.into()),
            Err(ToolError::Protocol(e)) => Err(e),
            Err(e) => Ok(CallToolResult::error(vec![ContentBlock::text(e.text())]).into()),
        }
    }
}

/// Serves MCP over stdin/stdout until the client closes stdin, acting for
/// key `key` through the supervisor at `supervisor`.
pub async fn serve_stdio(config: &Config, supervisor: Supervisor, key: &str) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    let handler = KilnMcp::stdio(config, supervisor, key);
    let running = handler
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| anyhow::anyhow!("MCP initialisation failed: {e}"))?;
    running
        .waiting()
        .await
        .map_err(|e| anyhow::anyhow!("the MCP server stopped: {e}"))?;
    Ok(())
}

/// The `/mcp` service for `kiln serve`: streamable HTTP; the caller is put
/// into each request by the auth layer. Its streams end when shutdown
/// begins (`AppState::shutdown`): graceful shutdown must not wait for idle
/// MCP streams.
pub(crate) fn http_service(
    state: AppState,
) -> rmcp::transport::StreamableHttpService<
    KilnMcp,
    rmcp::transport::streamable_http_server::session::local::LocalSessionManager,
> {
    use rmcp::transport::StreamableHttpServerConfig;
    let mut server = StreamableHttpServerConfig::default();
    if !state.dev {
        // Every request carries a bearer key: a rebinding page has none, so
        // the Host check (meant for key-less local servers) is not needed
        // and would refuse every deployment behind a real host name.
        server = server.disable_allowed_hosts();
    }
    server.cancellation_token = state.shutdown.child_token();
    let handler = KilnMcp::http(&state.config, state.clone());
    rmcp::transport::StreamableHttpService::new(
        move || Ok(handler.clone()),
        Default::default(),
        server,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_core::{Isolation, Usage};
    use std::collections::BTreeMap;

    fn result(outcome: Outcome, events: Vec<Event>) -> ExecutionResult {
        ExecutionResult {
            outcome,
            reason: None,
            events,
            exit_code: Some(0),
            usage: Usage::default(),
            limits_hit: vec![],
            truncated: false,
            isolation: Isolation::default(),
            session_ended: false,
        }
    }

    fn texts(r: &CallToolResult) -> Vec<String> {
        r.content
            .iter()
            .filter_map(|c| match c {
                ContentBlock::Text(t) => Some(t.text.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_execution_becomes_text_then_one_image_per_chart() {
        let mut png = BTreeMap::new();
        png.insert("image/png".to_string(), "iVBORw0KGgo=".to_string());
        png.insert("text/plain".to_string(), "<Figure>".to_string());
        let mut value = BTreeMap::new();
        value.insert("text/plain".to_string(), "42".to_string());
        value.insert(MAIN_RESULT_KEY.to_string(), "true".to_string());
        let r = result(
            Outcome::Ok,
            vec![
                Event::Stdout {
                    text: "hello\n".into(),
                },
                Event::Display { data: png.clone() },
                Event::Display { data: png },
                Event::Display { data: value },
            ],
        );
        let out = execution_content(&r, Some("s1"));
        assert_eq!(out.is_error, Some(false));
        let text = &texts(&out)[0];
        assert!(text.contains("outcome: ok"), "{text}");
        assert!(text.contains("hello"), "{text}");
        assert!(text.contains("--- result ---\n42"), "{text}");
        assert!(text.contains("session: s1"), "{text}");
        let images = out
            .content
            .iter()
            .filter(|c| matches!(c, ContentBlock::Image(i) if i.mime_type == "image/png"))
            .count();
        assert_eq!(images, 2);
    }

    #[test]
    fn an_error_is_marked_and_carries_its_traceback() {
        let r = result(
            Outcome::Error,
            vec![Event::Error {
                name: "ZeroDivisionError".into(),
                value: "division by zero".into(),
                traceback: vec!["Traceback (most recent call last):".into(), "  1/0".into()],
            }],
        );
        let out = execution_content(&r, None);
        assert_eq!(out.is_error, Some(true));
        let text = &texts(&out)[0];
        assert!(
            text.contains("ZeroDivisionError: division by zero"),
            "{text}"
        );
        assert!(text.contains("1/0"), "{text}");
    }

    #[test]
    fn long_output_is_cut_with_a_note_on_a_char_boundary() {
        let long = "é".repeat(TEXT_CAP); // 2 bytes each
        let cut = cap_text(&long);
        assert!(cut.len() < long.len());
        assert!(
            cut.contains(&format!("{} more bytes cut", TEXT_CAP)),
            "{}",
            &cut[cut.len() - 200..]
        );
        assert_eq!(cap_text("short"), "short");
    }

    #[test]
    fn tool_formats_carry_the_same_schema_and_text() {
        let specs = tool_specs("GUARD");
        let names: Vec<_> = specs.iter().map(|t| t.name).collect();
        assert_eq!(
            names,
            [
                "execute_code",
                "create_session",
                "close_session",
                "upload_file",
                "read_file",
                "list_environments"
            ]
        );
        let openai = render_tools(&specs, ToolFormat::OpenAi);
        assert_eq!(openai[0]["type"], "function");
        assert_eq!(openai[0]["function"]["name"], "execute_code");
        assert!(openai[0]["function"]["description"]
            .as_str()
            .unwrap()
            .contains("GUARD"));
        assert_eq!(
            openai[0]["function"]["parameters"]["required"],
            json!(["code"])
        );
        let anthropic = render_tools(&specs, ToolFormat::Anthropic);
        assert_eq!(
            anthropic[0]["input_schema"],
            openai[0]["function"]["parameters"]
        );
        let mcp = render_tools(&specs, ToolFormat::Mcp);
        assert_eq!(
            mcp["tools"][0]["inputSchema"],
            openai[0]["function"]["parameters"]
        );
        assert_eq!(mcp["tools"].as_array().unwrap().len(), 6);
    }

    #[test]
    fn files_read_back_by_kind() {
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let text = file_content("a.csv", 3, b64(b"a,b"));
        assert!(matches!(&text[0], ContentBlock::Text(t) if t.text == "a,b"));
        let image = file_content("out/c.png", 4, b64(b"\x89PNG"));
        assert!(matches!(&image[1], ContentBlock::Image(i) if i.mime_type == "image/png"));
        let binary = file_content("x.bin", 2, b64(&[0xff, 0xfe]));
        assert!(matches!(&binary[0], ContentBlock::Text(t) if t.text.contains("base64")));
    }
}
