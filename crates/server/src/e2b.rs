//! The E2B-compatible API, under `/e2b` on `kiln serve`: the official
//! `e2b-code-interpreter` SDK works unmodified with
//! `E2B_API_URL=E2B_SANDBOX_URL=http://<kiln>/e2b` and `E2B_API_KEY=<a kiln
//! API key>` (docs/e2b.md lists what works and what does not).
//!
//! An E2B sandbox is a kiln session of the key that made it; a code
//! context other than the default is another session of that key. Both
//! the control plane (`/sandboxes`, `/v2/sandboxes`) and the sandbox's own
//! routes (`/health`, `/files`, `/execute`, `/contexts`, which the SDK
//! addresses with the `E2b-Sandbox-Id` header) go through the same
//! `kiln_core::service` commands, ownership and quotas as `/v1`.
//!
//! Auth: the SDK sends the API key as `X-API-KEY` to the control plane and
//! the sandbox's `envdAccessToken` as `X-Access-Token` (or
//! `E2B-Traffic-Access-Token`) to the sandbox. kiln answers a create with
//! the caller's own key as both tokens, so every request carries the kiln
//! key and is authenticated the same way.

use crate::app::{AppState, Caller};
use crate::record::ExecutionRecord;
use axum::body::{Body, Bytes};
use axum::extract::{Multipart, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use futures_util::stream;
use kiln_core::service::{Command, ErrorKind, Reply, SessionRequest, SessionView};
use kiln_core::{Event, ExecRequest, ExecutionResult, Outcome};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

/// The envd version kiln answers as: new enough that the SDK sends no
/// `username` and uploads small data as multipart.
pub const ENVD_VERSION: &str = "0.5.7";
/// The template kiln reports when a create names none.
pub const DEFAULT_TEMPLATE: &str = "code-interpreter-v1";
/// The display key of a cell's main result (see the runner).
const MAIN_RESULT_KEY: &str = crate::mcp::MAIN_RESULT_KEY;
/// E2B's default sandbox timeout, seconds.
const DEFAULT_TIMEOUT_S: u64 = 300;

/// What the front end remembers about E2B sandboxes beyond the session:
/// template, metadata, and the sessions of extra code contexts. Lost on a
/// restart of the front end (the sessions are not: they then list with
/// the default template and no metadata).
#[derive(Default)]
pub struct E2bState {
    sandboxes: Mutex<HashMap<String, SandboxMeta>>,
}

#[derive(Clone)]
struct SandboxMeta {
    key: String,
    template: String,
    metadata: BTreeMap<String, String>,
    /// The policy environment the template picked (contexts get it too).
    environment: Option<String>,
    /// Extra code contexts: their session ids.
    contexts: Vec<String>,
}

impl E2bState {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, SandboxMeta>> {
        self.sandboxes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn meta(&self, key: &str, id: &str) -> Option<SandboxMeta> {
        self.lock().get(id).filter(|m| m.key == key).cloned()
    }

    /// Whether `id` is an extra context's session (not a sandbox).
    fn is_context(&self, id: &str) -> bool {
        self.lock()
            .values()
            .any(|m| m.contexts.iter().any(|c| c == id))
    }
}

/// The routes, to be nested under `/e2b` behind [`key_header`] and the
/// bearer-key auth. All but `/execute` end within the request timeout.
pub fn router(state: AppState) -> Router<AppState> {
    let control = Router::new()
        .route("/sandboxes", post(create).get(list))
        .route("/v2/sandboxes", post(create).get(list))
        .route("/sandboxes/{id}", get(info).delete(kill))
        .route("/sandboxes/{id}/timeout", post(set_timeout))
        .route("/sandboxes/{id}/connect", post(connect))
        .route("/v2/sandboxes/{id}/connect", post(connect))
        .route("/health", get(health))
        .route("/files", get(read_file).post(write_file))
        .route("/contexts", post(create_context).get(list_contexts))
        .route("/contexts/{id}", axum::routing::delete(remove_context))
        .route("/contexts/{id}/restart", post(restart_context))
        .layer(axum::middleware::from_fn_with_state(
            state,
            crate::app::request_timeout,
        ));
    control
        .route("/execute", post(execute))
        .fallback(unsupported)
}

/// Anything else the SDK may call — envd's process and filesystem RPCs
/// (`commands.run`, `files.list`, ...), pause, metrics, templates — is
/// answered 501 rather than 404, so that no SDK call mistakes "kiln does
/// not do this" for "not found" (`files.exists` would say `False`).
async fn unsupported(uri: axum::http::Uri) -> Response {
    let path = uri.path();
    let message = format!("{path} is not supported by kiln's E2B-compatible API (see docs/e2b.md)");
    let rpc = path
        .rsplit('/')
        .nth(1)
        .is_some_and(|service| service.contains('.'));
    if rpc {
        // The Connect protocol's error shape.
        let body = json!({"code": "unimplemented", "message": message});
        return (StatusCode::NOT_IMPLEMENTED, Json(body)).into_response();
    }
    E2bError::new(StatusCode::NOT_IMPLEMENTED, message).into_response()
}

/// The secret an E2B client sends, from the header it uses.
fn e2b_secret(headers: &HeaderMap) -> Option<String> {
    ["x-api-key", "x-access-token", "e2b-traffic-access-token"]
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Outermost layer of `/e2b`: turns the E2B key headers into the
/// `Authorization: Bearer` the auth layer checks, and answers a refusal
/// in E2B's error shape. In development mode they are ignored (the SDK
/// always sends some key): every request acts as the development key.
pub async fn key_header(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if !state.dev && !request.headers().contains_key(header::AUTHORIZATION) {
        if let Some(secret) = e2b_secret(request.headers()) {
            if let Ok(value) = HeaderValue::from_str(&format!("Bearer {secret}")) {
                request.headers_mut().insert(header::AUTHORIZATION, value);
            }
        }
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        let mut answer = E2bError::new(
            StatusCode::UNAUTHORIZED,
            "missing or unknown API key: set E2B_API_KEY to a kiln API key",
        )
        .into_response();
        if let Some(close) = response.headers().get(header::CONNECTION) {
            answer
                .headers_mut()
                .insert(header::CONNECTION, close.clone());
        }
        return answer;
    }
    response
}

/// An error in E2B's shape: `{"code": <status>, "message": "..."}`.
#[derive(Debug)]
pub struct E2bError {
    status: StatusCode,
    message: String,
}

impl E2bError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn from_kind(kind: ErrorKind, message: String) -> Self {
        Self::new(crate::error::ApiError::new(kind, "").status, message)
    }
}

impl IntoResponse for E2bError {
    fn into_response(self) -> Response {
        let body = json!({"code": self.status.as_u16(), "message": self.message});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

type E2bResult<T> = Result<T, E2bError>;

async fn call(state: &AppState, command: Command) -> E2bResult<Reply> {
    match state.supervisor.call(&command).await {
        Ok(Reply::Error { kind, message }) => Err(E2bError::from_kind(kind, message)),
        Ok(reply) => Ok(reply),
        Err(e) => {
            let e = crate::error::ApiError::from(e);
            Err(E2bError::new(e.status, e.message))
        }
    }
}

fn unexpected() -> E2bError {
    E2bError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "unexpected reply from the sandbox supervisor",
    )
}

async fn session_view(state: &AppState, key: &str, id: &str) -> E2bResult<SessionView> {
    match call(
        state,
        Command::GetSession {
            key: key.into(),
            session: id.into(),
        },
    )
    .await
    {
        Ok(Reply::Session { session }) => Ok(session),
        Ok(_) => Err(unexpected()),
        Err(e) if e.status == StatusCode::NOT_FOUND => Err(E2bError::new(
            StatusCode::NOT_FOUND,
            format!("sandbox {id} not found"),
        )),
        Err(e) => Err(e),
    }
}

// --- the control plane ------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct NewSandbox {
    #[serde(rename = "templateID")]
    template_id: Option<String>,
    timeout: Option<u64>,
    metadata: Option<BTreeMap<String, String>>,
    env_vars: Option<BTreeMap<String, String>>,
    /// The SDK sends this one in snake_case.
    #[serde(alias = "allow_internet_access")]
    allow_internet_access: Option<bool>,
    // Accepted and ignored (see docs/e2b.md).
    #[allow(dead_code)]
    auto_pause: Option<Value>,
    #[allow(dead_code)]
    secure: Option<Value>,
    #[serde(flatten)]
    #[allow(dead_code)]
    other: Map<String, Value>,
}

/// `POST /sandboxes`, `/v2/sandboxes`: a new session.
async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Json(body): Json<NewSandbox>,
) -> E2bResult<Response> {
    if body.allow_internet_access == Some(true) {
        return Err(E2bError::new(
            StatusCode::BAD_REQUEST,
            "kiln sandboxes have no network; allow_internet_access=True cannot be granted",
        ));
    }
    let timeout = body.timeout.unwrap_or(DEFAULT_TIMEOUT_S).max(1);
    let idle = timeout.min(state.config.sessions.idle_timeout_ceiling_s);
    // A template that names a configured environment picks it; E2B's own
    // template names (`code-interpreter-v1`, ...) get the default one.
    let environment = body
        .template_id
        .as_ref()
        .filter(|t| state.config.environments.contains_key(t.as_str()))
        .cloned();
    let options = SessionRequest {
        env: body.env_vars.unwrap_or_default(),
        idle_timeout_s: Some(idle),
        environment: environment.clone(),
        ..SessionRequest::default()
    };
    let session = match call(
        &state,
        Command::CreateSession {
            key: caller.id(),
            options,
        },
    )
    .await?
    {
        Reply::Session { session } => session,
        _ => return Err(unexpected()),
    };
    let meta = SandboxMeta {
        key: caller.id(),
        template: body
            .template_id
            .unwrap_or_else(|| DEFAULT_TEMPLATE.to_string()),
        metadata: body.metadata.unwrap_or_default(),
        environment,
        contexts: Vec::new(),
    };
    state.e2b.lock().insert(session.id.clone(), meta.clone());
    let body = sandbox_json(&session, &meta, e2b_secret(&headers));
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// The `Sandbox` of a create or connect.
fn sandbox_json(session: &SessionView, meta: &SandboxMeta, token: Option<String>) -> Value {
    let mut v = json!({
        "templateID": meta.template,
        "sandboxID": session.id,
        "clientID": "kiln",
        "envdVersion": ENVD_VERSION,
        "domain": null,
    });
    if let Some(token) = token {
        v["envdAccessToken"] = json!(token);
        v["trafficAccessToken"] = json!(token);
    }
    v
}

/// A sandbox as `GET /sandboxes/{id}` and the list describe it.
fn detail_json(session: &SessionView, meta: Option<&SandboxMeta>, state: &AppState) -> Value {
    let now = SystemTime::now();
    let started = now
        .checked_sub(Duration::from_secs_f64(session.age_s.max(0.0)))
        .unwrap_or(now);
    let idle_left = (session.idle_timeout_s as f64 - session.idle_for_s).max(0.0);
    let life_left = (session.max_lifetime_s as f64 - session.age_s).max(0.0);
    let end = now + Duration::from_secs_f64(idle_left.min(life_left));
    let limits = &state.limits;
    json!({
        "templateID": meta.map_or(DEFAULT_TEMPLATE, |m| m.template.as_str()),
        "sandboxID": session.id,
        "clientID": "kiln",
        "startedAt": kiln_core::time::rfc3339(started),
        "endAt": kiln_core::time::rfc3339(end),
        "envdVersion": ENVD_VERSION,
        "cpuCount": limits.cpu_millicores.div_ceil(1000).max(1),
        "memoryMB": limits.memory_mib,
        "diskSizeMB": limits.disk_mib,
        "state": "running",
        "metadata": meta.map(|m| m.metadata.clone()).unwrap_or_default(),
    })
}

/// `GET /sandboxes/{id}`.
async fn info(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> E2bResult<Json<Value>> {
    if state.e2b.is_context(&id) {
        return Err(E2bError::new(
            StatusCode::NOT_FOUND,
            format!("sandbox {id} not found"),
        ));
    }
    let session = session_view(&state, &caller.id(), &id).await?;
    let meta = state.e2b.meta(&caller.id(), &id);
    Ok(Json(detail_json(&session, meta.as_ref(), &state)))
}

/// `POST /sandboxes/{id}/connect`: the sandbox, with its tokens.
async fn connect(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> E2bResult<Json<Value>> {
    let session = session_view(&state, &caller.id(), &id).await?;
    let meta = state.e2b.meta(&caller.id(), &id).unwrap_or(SandboxMeta {
        key: caller.id(),
        template: DEFAULT_TEMPLATE.into(),
        metadata: BTreeMap::new(),
        environment: None,
        contexts: Vec::new(),
    });
    Ok(Json(sandbox_json(&session, &meta, e2b_secret(&headers))))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ListQuery {
    /// `k=v&k2=v2`, URL-encoded (E2B's metadata filter).
    metadata: Option<String>,
    /// Comma-separated states: kiln's sandboxes are all `running`.
    state: Option<String>,
}

/// `GET /sandboxes`, `/v2/sandboxes`: the key's sandboxes, all on one page.
async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<ListQuery>,
) -> E2bResult<Json<Value>> {
    if let Some(states) = &query.state {
        if !states.split(',').any(|s| s.trim() == "running") {
            return Ok(Json(json!([])));
        }
    }
    let wanted = query.metadata.as_deref().map(parse_metadata_filter);
    let sessions = match call(&state, Command::ListSessions { key: caller.id() }).await? {
        Reply::Sessions { sessions } => sessions,
        _ => return Err(unexpected()),
    };
    let known = state.e2b.lock().clone();
    let contexts: Vec<&String> = known.values().flat_map(|m| m.contexts.iter()).collect();
    let listed: Vec<Value> = sessions
        .iter()
        .filter(|s| !contexts.contains(&&s.id))
        .filter_map(|s| {
            let meta = known.get(&s.id).filter(|m| m.key == caller.id());
            if let Some(wanted) = &wanted {
                let have = meta.map(|m| &m.metadata);
                if !wanted
                    .iter()
                    .all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
                {
                    return None;
                }
            }
            Some(detail_json(s, meta, &state))
        })
        .collect();
    Ok(Json(Value::Array(listed)))
}

/// The SDK's metadata filter as pairs: `urlencode({quote(k): quote(v)})`,
/// so each key and value is decoded twice.
fn parse_metadata_filter(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let twice = |s: &str| percent_decode(&percent_decode(s));
            (twice(k), twice(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `DELETE /sandboxes/{id}`: the session and its contexts are closed.
async fn kill(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> E2bResult<StatusCode> {
    if state.e2b.is_context(&id) {
        return Err(E2bError::new(
            StatusCode::NOT_FOUND,
            format!("sandbox {id} not found"),
        ));
    }
    let key = caller.id();
    let result = call(
        &state,
        Command::CloseSession {
            key: key.clone(),
            session: id.clone(),
        },
    )
    .await;
    let meta = {
        let mut all = state.e2b.lock();
        match all.get(&id) {
            Some(m) if m.key == key => all.remove(&id),
            _ => None,
        }
    };
    for context in meta.map(|m| m.contexts).unwrap_or_default() {
        let _ = call(
            &state,
            Command::CloseSession {
                key: key.clone(),
                session: context,
            },
        )
        .await;
    }
    match result {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(e) if e.status == StatusCode::NOT_FOUND => Err(E2bError::new(
            StatusCode::NOT_FOUND,
            format!("sandbox {id} not found"),
        )),
        Err(e) => Err(e),
    }
}

#[derive(Deserialize)]
struct TimeoutBody {
    #[allow(dead_code)]
    timeout: u64,
}

/// `POST /sandboxes/{id}/timeout`: counts as use (the idle clock starts
/// again); the length stays what the create asked for (docs/e2b.md).
async fn set_timeout(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(_body): Json<TimeoutBody>,
) -> E2bResult<StatusCode> {
    match call(
        &state,
        Command::Keepalive {
            key: caller.id(),
            session: id.clone(),
        },
    )
    .await
    {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(e) if e.status == StatusCode::NOT_FOUND => Err(E2bError::new(
            StatusCode::NOT_FOUND,
            format!("sandbox {id} not found"),
        )),
        Err(e) => Err(e),
    }
}

// --- the sandbox (envd and the code interpreter) ------------------------------------------

/// The sandbox a request is addressed to (`E2b-Sandbox-Id`).
fn sandbox_id(headers: &HeaderMap) -> E2bResult<String> {
    headers
        .get("e2b-sandbox-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            E2bError::new(
                StatusCode::BAD_REQUEST,
                "missing E2b-Sandbox-Id header (set E2B_SANDBOX_URL to kiln's /e2b)",
            )
        })
}

/// `GET /health`: 204 while the sandbox lives, 502 (what E2B's proxy
/// answers for a sandbox that is gone) after.
async fn health(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Response {
    let Ok(id) = sandbox_id(&headers) else {
        return StatusCode::NO_CONTENT.into_response();
    };
    match session_view(&state, &caller.id(), &id).await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(e) if e.status == StatusCode::NOT_FOUND => {
            E2bError::new(StatusCode::BAD_GATEWAY, format!("sandbox {id} not found"))
                .into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// A path as kiln's file commands take it: relative to `/work`. E2B's
/// home directory `/home/user` is `/work` here.
pub fn work_relative(path: &str) -> Result<String, String> {
    let trimmed = path.trim();
    for prefix in ["/work/", "/home/user/"] {
        if let Some(rest) = trimmed.strip_prefix(prefix) {
            return Ok(rest.to_string());
        }
    }
    if trimmed.starts_with('/') {
        return Err(format!(
            "{path}: only /work (also reachable as /home/user) is readable and writable in a kiln sandbox"
        ));
    }
    Ok(trimmed.to_string())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct FileQuery {
    path: Option<String>,
    #[allow(dead_code)]
    username: Option<String>,
}

/// `GET /files?path=`: the file's bytes.
async fn read_file(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Query(query): Query<FileQuery>,
) -> E2bResult<Response> {
    let id = sandbox_id(&headers)?;
    let path = query
        .path
        .ok_or_else(|| E2bError::new(StatusCode::BAD_REQUEST, "missing ?path="))?;
    let rel = work_relative(&path).map_err(|m| E2bError::new(StatusCode::BAD_REQUEST, m))?;
    match call(
        &state,
        Command::ReadFile {
            key: caller.id(),
            session: id,
            path: rel,
        },
    )
    .await?
    {
        Reply::File { data_b64, .. } => {
            let data = base64::engine::general_purpose::STANDARD
                .decode(data_b64.as_bytes())
                .map_err(|_| unexpected())?;
            Ok((
                [(header::CONTENT_TYPE, "application/octet-stream")],
                Bytes::from(data),
            )
                .into_response())
        }
        _ => Err(unexpected()),
    }
}

/// `POST /files?path=`: multipart (`file` parts named by their path) or
/// a raw `application/octet-stream` body.
async fn write_file(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Query(query): Query<FileQuery>,
    request: Request,
) -> E2bResult<Json<Value>> {
    let id = sandbox_id(&headers)?;
    let multipart = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let mut files: Vec<(String, Bytes)> = Vec::new();
    if multipart {
        let mut form =
            <Multipart as axum::extract::FromRequest<AppState>>::from_request(request, &state)
                .await
                .map_err(|e| E2bError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
        while let Some(field) = form
            .next_field()
            .await
            .map_err(|e| E2bError::new(e.status(), e.body_text()))?
        {
            let name = field
                .file_name()
                .map(str::to_string)
                .or_else(|| query.path.clone())
                .ok_or_else(|| E2bError::new(StatusCode::BAD_REQUEST, "a part has no file name"))?;
            let path = match (&query.path, files.is_empty()) {
                (Some(p), true) => p.clone(),
                _ => name,
            };
            let data = field
                .bytes()
                .await
                .map_err(|e| E2bError::new(e.status(), e.body_text()))?;
            files.push((path, data));
        }
    } else {
        let path = query
            .path
            .clone()
            .ok_or_else(|| E2bError::new(StatusCode::BAD_REQUEST, "missing ?path="))?;
        let data = axum::body::to_bytes(request.into_body(), state.max_body_bytes as usize)
            .await
            .map_err(|_| {
                E2bError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the body is larger than {} bytes", state.max_body_bytes),
                )
            })?;
        files.push((path, data));
    }
    if files.is_empty() {
        return Err(E2bError::new(
            StatusCode::BAD_REQUEST,
            "no file in the request",
        ));
    }
    let mut written = Vec::new();
    for (path, data) in files {
        let rel = work_relative(&path).map_err(|m| E2bError::new(StatusCode::BAD_REQUEST, m))?;
        call(
            &state,
            Command::WriteFile {
                key: caller.id(),
                session: id.clone(),
                path: rel.clone(),
                data_b64: base64::engine::general_purpose::STANDARD.encode(&data),
            },
        )
        .await?;
        let name = rel.rsplit('/').next().unwrap_or(&rel).to_string();
        written.push(json!({"name": name, "type": "file", "path": format!("/work/{rel}")}));
    }
    Ok(Json(Value::Array(written)))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ExecuteBody {
    code: String,
    context_id: Option<String>,
    language: Option<String>,
    env_vars: Option<BTreeMap<String, String>>,
}

fn check_language(language: Option<&str>) -> E2bResult<()> {
    match language {
        None | Some("python") | Some("python3") => Ok(()),
        Some(other) => Err(E2bError::new(
            StatusCode::BAD_REQUEST,
            format!("kiln runs Python only, not {other}"),
        )),
    }
}

/// The session of context `context` of sandbox `sandbox` (the default
/// context is the sandbox's own session).
fn context_session(
    state: &AppState,
    key: &str,
    sandbox: &str,
    context: Option<&str>,
) -> E2bResult<String> {
    match context {
        None => Ok(sandbox.to_string()),
        Some(c) if c == sandbox => Ok(sandbox.to_string()),
        Some(c) => {
            let known = state
                .e2b
                .meta(key, sandbox)
                .is_some_and(|m| m.contexts.iter().any(|x| x == c));
            if known {
                Ok(c.to_string())
            } else {
                Err(E2bError::new(
                    StatusCode::NOT_FOUND,
                    format!("context {c} not found in sandbox {sandbox}"),
                ))
            }
        }
    }
}

/// `POST /execute`: the code interpreter's streaming execution, one JSON
/// object per line: `stdout`, `stderr`, `result`, `error`, then
/// `end_of_execution`. A client that goes away (the SDK's timeout)
/// interrupts the run; the session and its variables stay.
async fn execute(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Json(body): Json<ExecuteBody>,
) -> E2bResult<Response> {
    let sandbox = sandbox_id(&headers)?;
    check_language(body.language.as_deref())?;
    let key = caller.id();
    let session = context_session(&state, &key, &sandbox, body.context_id.as_deref())?;
    if let Some(env) = body.env_vars.filter(|e| !e.is_empty()) {
        // Set for the session (kiln has no per-execution environment).
        let code = format!(
            "import os as _kiln_os\n_kiln_os.environ.update({})\ndel _kiln_os",
            serde_json::to_string(&env).unwrap_or_else(|_| "{}".into())
        );
        run_quietly(&state, &key, &session, code).await?;
    }
    let slot = caller.0.start_execution().map_err(|e| {
        state.metrics.rejection("concurrency");
        E2bError::new(e.status, e.message)
    })?;
    let record = ExecutionRecord::start(
        state.clone(),
        "session",
        key.clone(),
        Some(session.clone()),
        &body.code,
        None,
        slot,
    );
    let command = Command::SessionExecute {
        key: key.clone(),
        session: session.clone(),
        request: ExecRequest {
            code: body.code,
            files: Vec::new(),
        },
    };
    let mut record = record;
    let (replies, first) = match send_when_idle(&state, &command).await {
        Ok(sent) => sent,
        // The policy refused the code before it ran (an import the
        // environment does not allow, ...): for the SDK that is the
        // execution's error, and the sandbox goes on.
        Err(e) if e.status == StatusCode::UNPROCESSABLE_ENTITY => {
            record.failed(ErrorKind::Rejected);
            let mut body = Vec::new();
            for line in [
                error_line("PolicyError", &e.message, ""),
                json!({"type": "end_of_execution"}),
            ] {
                body.extend_from_slice(line.to_string().as_bytes());
                body.push(b'\n');
            }
            return Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response());
        }
        Err(e) => return Err(e),
    };
    let lines = execution_lines(replies, first, record);
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// Sends a session execution; while the session is still finishing an
/// earlier run (one whose client went away is being interrupted), waits
/// for it, bounded by the grace period plus a margin.
async fn send_when_idle(
    state: &AppState,
    command: &Command,
) -> E2bResult<(crate::supervisor::ReplyStream, Reply)> {
    let patience = Duration::from_millis(state.ceilings.grace_ms) + Duration::from_secs(10);
    let give_up = tokio::time::Instant::now() + patience;
    loop {
        let mut replies = state.supervisor.send(command).await.map_err(|e| {
            let e = crate::error::ApiError::from(e);
            E2bError::new(e.status, e.message)
        })?;
        let first = replies
            .next()
            .await
            .map_err(|e| E2bError::new(StatusCode::BAD_GATEWAY, e.to_string()))?
            .ok_or_else(unexpected)?;
        match first {
            Reply::Error {
                kind: ErrorKind::Busy,
                ..
            } if tokio::time::Instant::now() < give_up => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Reply::Error { kind, message } => {
                let status = crate::error::ApiError::new(kind, "").status;
                let message = if status == StatusCode::NOT_FOUND {
                    format!("sandbox not found: {message}")
                } else {
                    message
                };
                return Err(E2bError::new(status, message));
            }
            first => return Ok((replies, first)),
        }
    }
}

/// Runs setup code whose output nobody reads; an error in it is the
/// caller's (bad input).
async fn run_quietly(state: &AppState, key: &str, session: &str, code: String) -> E2bResult<()> {
    let command = Command::SessionExecute {
        key: key.into(),
        session: session.into(),
        request: ExecRequest {
            code,
            files: Vec::new(),
        },
    };
    let (mut replies, mut reply) = send_when_idle(state, &command).await?;
    loop {
        match reply {
            Reply::Result { result } if result.outcome == Outcome::Ok => return Ok(()),
            Reply::Result { result } => {
                return Err(E2bError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "setting env_vars failed: {}",
                        result.reason.unwrap_or_default()
                    ),
                ))
            }
            Reply::Event { .. } => {}
            _ => return Err(unexpected()),
        }
        reply = replies
            .next()
            .await
            .map_err(|e| E2bError::new(StatusCode::BAD_GATEWAY, e.to_string()))?
            .ok_or_else(unexpected)?;
    }
}

/// The NDJSON lines of an execution, as they happen. Dropping the stream
/// (the client went away) drops the supervisor connection: the run is
/// interrupted.
fn execution_lines(
    replies: crate::supervisor::ReplyStream,
    first: Reply,
    record: ExecutionRecord,
) -> impl futures_util::Stream<Item = Result<Bytes, std::convert::Infallible>> {
    struct Run {
        replies: crate::supervisor::ReplyStream,
        record: ExecutionRecord,
        pending: Option<Reply>,
        done: bool,
    }
    let run = Run {
        replies,
        record,
        pending: Some(first),
        done: false,
    };
    stream::unfold(run, |mut run| async move {
        if run.done {
            return None;
        }
        let reply = match run.pending.take() {
            Some(reply) => Ok(Some(reply)),
            None => run.replies.next().await,
        };
        let lines = match reply {
            Ok(Some(Reply::Event { event })) => event_lines(&event),
            Ok(Some(Reply::Result { result })) => {
                run.record.finished(&result);
                run.done = true;
                end_lines(&result)
            }
            Ok(Some(Reply::Error { kind, message })) => {
                run.record.failed(kind);
                run.done = true;
                vec![
                    error_line("SandboxError", &message, ""),
                    json!({"type": "end_of_execution"}),
                ]
            }
            Ok(Some(_)) | Ok(None) | Err(_) => {
                run.record.failed_named("unavailable");
                run.done = true;
                vec![
                    error_line(
                        "SandboxError",
                        "lost the connection to the sandbox supervisor",
                        "",
                    ),
                    json!({"type": "end_of_execution"}),
                ]
            }
        };
        let mut bytes = Vec::new();
        for line in lines {
            bytes.extend_from_slice(line.to_string().as_bytes());
            bytes.push(b'\n');
        }
        Some((Ok(Bytes::from(bytes)), run))
    })
}

fn now() -> String {
    kiln_core::time::rfc3339(SystemTime::now())
}

fn error_line(name: &str, value: &str, traceback: &str) -> Value {
    json!({"type": "error", "name": name, "value": value, "traceback": traceback})
}

/// One kiln event as E2B output lines.
pub fn event_lines(event: &Event) -> Vec<Value> {
    match event {
        Event::Stdout { text } => {
            vec![json!({"type": "stdout", "text": text, "timestamp": now()})]
        }
        Event::Stderr { text } => {
            vec![json!({"type": "stderr", "text": text, "timestamp": now()})]
        }
        Event::Display { data } => vec![result_line(data)],
        // Files under /work/out are read back with files.read.
        Event::File { .. } => Vec::new(),
        Event::Error {
            name,
            value,
            traceback,
        } => vec![error_line(name, value, &traceback.join("\n"))],
    }
}

/// A display bundle as an E2B `result`.
pub fn result_line(data: &BTreeMap<String, String>) -> Value {
    let mut v = json!({"type": "result", "is_main_result": data.contains_key(MAIN_RESULT_KEY)});
    let mut extra = Map::new();
    for (mime, value) in data {
        let field = match mime.as_str() {
            "text/plain" => "text",
            "text/html" => "html",
            "text/markdown" => "markdown",
            "image/svg+xml" => "svg",
            "image/png" => "png",
            "image/jpeg" => "jpeg",
            "application/pdf" => "pdf",
            "text/latex" => "latex",
            "application/javascript" => "javascript",
            "application/json" => {
                v["json"] = serde_json::from_str(value).unwrap_or(Value::String(value.clone()));
                continue;
            }
            MAIN_RESULT_KEY => continue,
            other => {
                extra.insert(other.to_string(), Value::String(value.clone()));
                continue;
            }
        };
        v[field] = Value::String(value.clone());
    }
    if !extra.is_empty() {
        v["extra"] = Value::Object(extra);
    }
    v
}

/// The end of an execution: an error line when the run ended without its
/// own (a limit, a kill), then `end_of_execution`.
pub fn end_lines(result: &ExecutionResult) -> Vec<Value> {
    let mut lines = Vec::new();
    let had_error = result
        .events
        .iter()
        .any(|e| matches!(e, Event::Error { .. }));
    if !had_error && result.outcome != Outcome::Ok {
        let name = match result.outcome {
            Outcome::Timeout => "TimeoutError",
            Outcome::MemoryLimit => "MemoryError",
            Outcome::Interrupted => "KeyboardInterrupt",
            _ => "SandboxError",
        };
        let why = result
            .reason
            .clone()
            .unwrap_or_else(|| result.outcome.as_str().to_string());
        lines.push(error_line(name, &why, ""));
    }
    lines.push(json!({"type": "end_of_execution"}));
    lines
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ContextBody {
    language: Option<String>,
    #[allow(dead_code)]
    cwd: Option<String>,
}

fn context_json(id: &str) -> Value {
    json!({"id": id, "language": "python", "cwd": "/work"})
}

/// `POST /contexts`: a new context is a new session of the same key,
/// remembered as the sandbox's (its own variables and its own /work).
async fn create_context(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Option<Json<ContextBody>>,
) -> E2bResult<Json<Value>> {
    let sandbox = sandbox_id(&headers)?;
    let body = body.map(|Json(b)| b).unwrap_or_default();
    check_language(body.language.as_deref())?;
    let key = caller.id();
    let parent = session_view(&state, &key, &sandbox).await?;
    let environment = state.e2b.meta(&key, &sandbox).and_then(|m| m.environment);
    let id = new_context_session(&state, &key, parent.idle_timeout_s, environment).await?;
    let mut all = state.e2b.lock();
    let meta = all.entry(sandbox.clone()).or_insert_with(|| SandboxMeta {
        key: key.clone(),
        template: DEFAULT_TEMPLATE.into(),
        metadata: BTreeMap::new(),
        environment: None,
        contexts: Vec::new(),
    });
    meta.contexts.push(id.clone());
    Ok(Json(context_json(&id)))
}

async fn new_context_session(
    state: &AppState,
    key: &str,
    idle: u64,
    environment: Option<String>,
) -> E2bResult<String> {
    match call(
        state,
        Command::CreateSession {
            key: key.into(),
            options: SessionRequest {
                idle_timeout_s: Some(idle),
                environment,
                ..SessionRequest::default()
            },
        },
    )
    .await?
    {
        Reply::Session { session } => Ok(session.id),
        _ => Err(unexpected()),
    }
}

/// `GET /contexts`: the default context, then the others still alive.
async fn list_contexts(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> E2bResult<Json<Value>> {
    let sandbox = sandbox_id(&headers)?;
    let key = caller.id();
    session_view(&state, &key, &sandbox).await?;
    let mut out = vec![context_json(&sandbox)];
    let contexts = state
        .e2b
        .meta(&key, &sandbox)
        .map(|m| m.contexts)
        .unwrap_or_default();
    for c in contexts {
        if session_view(&state, &key, &c).await.is_ok() {
            out.push(context_json(&c));
        }
    }
    Ok(Json(Value::Array(out)))
}

/// `DELETE /contexts/{id}`: its session is closed (not the default one).
async fn remove_context(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    Path(context): Path<String>,
) -> E2bResult<StatusCode> {
    let sandbox = sandbox_id(&headers)?;
    let key = caller.id();
    if context == sandbox {
        return Err(E2bError::new(
            StatusCode::BAD_REQUEST,
            "the default context cannot be removed; kill the sandbox instead",
        ));
    }
    context_session(&state, &key, &sandbox, Some(&context))?;
    let _ = call(
        &state,
        Command::CloseSession {
            key: key.clone(),
            session: context.clone(),
        },
    )
    .await;
    if let Some(meta) = state.e2b.lock().get_mut(&sandbox) {
        meta.contexts.retain(|c| c != &context);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /contexts/{id}/restart`: not supported (a context is a kiln
/// session, whose id cannot outlive it); remove the context and create a
/// new one.
async fn restart_context(
    Extension(_caller): Extension<Caller>,
    Path(_context): Path<String>,
) -> E2bError {
    E2bError::new(
        StatusCode::NOT_IMPLEMENTED,
        "restarting a context is not supported by kiln; remove it and create a new one",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_become_results_and_the_main_one_is_marked() {
        let mut data = BTreeMap::new();
        data.insert("text/plain".into(), "2".into());
        data.insert(MAIN_RESULT_KEY.into(), "true".into());
        let v = result_line(&data);
        assert_eq!(v["type"], "result");
        assert_eq!(v["text"], "2");
        assert_eq!(v["is_main_result"], true);
        assert!(v.get(MAIN_RESULT_KEY).is_none());

        let mut chart = BTreeMap::new();
        chart.insert("image/png".into(), "iVBOR".into());
        chart.insert("text/plain".into(), "<Figure>".into());
        chart.insert("application/json".into(), "{\"a\": 1}".into());
        chart.insert("application/x-odd".into(), "z".into());
        let v = result_line(&chart);
        assert_eq!(v["png"], "iVBOR");
        assert_eq!(v["is_main_result"], false);
        assert_eq!(v["json"]["a"], 1);
        assert_eq!(v["extra"]["application/x-odd"], "z");
    }

    #[test]
    fn errors_carry_a_string_traceback_and_limits_become_errors() {
        let lines = event_lines(&Event::Error {
            name: "ZeroDivisionError".into(),
            value: "division by zero".into(),
            traceback: vec!["Traceback (most recent call last):".into(), "  1/0".into()],
        });
        assert_eq!(lines[0]["name"], "ZeroDivisionError");
        assert_eq!(
            lines[0]["traceback"],
            "Traceback (most recent call last):\n  1/0"
        );
        let stdout = event_lines(&Event::Stdout {
            text: "hi\n".into(),
        });
        assert_eq!(stdout[0]["type"], "stdout");
        assert!(stdout[0]["timestamp"].as_str().is_some());

        let mut result = ExecutionResult::without_sandbox(Outcome::Timeout, "wall limit");
        let end = end_lines(&result);
        assert_eq!(end[0]["name"], "TimeoutError");
        assert_eq!(end[1]["type"], "end_of_execution");
        result.outcome = Outcome::Ok;
        assert_eq!(end_lines(&result).len(), 1);
    }

    #[test]
    fn paths_map_to_work() {
        assert_eq!(work_relative("/home/user/a.txt").unwrap(), "a.txt");
        assert_eq!(work_relative("/work/out/c.png").unwrap(), "out/c.png");
        assert_eq!(work_relative("data/x.csv").unwrap(), "data/x.csv");
        assert!(work_relative("/etc/passwd").is_err());
    }

    #[test]
    fn metadata_filters_are_decoded() {
        assert_eq!(
            // What the SDK sends for {"user=id": "a b", "k": "v"}, once the
            // query string itself is decoded.
            parse_metadata_filter("user%253Did=a%2520b&k=v"),
            vec![
                ("user=id".to_string(), "a b".to_string()),
                ("k".into(), "v".into())
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
    }
}
