//! The shared state and the router: which routes exist, and the layers
//! every request passes (metrics and logs, the in-flight cap, auth, the
//! rate limit, the body limit, timeouts).

use crate::audit::AuditLog;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::supervisor::{ClientError, Supervisor};
use crate::throttle::{InFlight, InFlightGuard, KeyState};
use crate::{openapi, routes};
use axum::body::HttpBody as _;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::header::{AUTHORIZATION, CONNECTION};
use axum::http::HeaderValue;
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use kiln_core::service::{Command, Reply};
use kiln_policy::{Config, Limits};
use std::ops::Deref;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Everything a handler may need; cheap to clone.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

pub struct Inner {
    pub supervisor: Supervisor,
    pub auth: Auth,
    pub in_flight: InFlight,
    pub metrics: Metrics,
    pub audit: Option<AuditLog>,
    pub max_body_bytes: u64,
    pub request_timeout: Duration,
    /// Limits a request gets when it names none, and the ceilings.
    pub limits: Limits,
    pub ceilings: Limits,
    /// The policy (for the guardrail text of MCP tools) and the mode.
    pub config: Config,
    pub dev: bool,
    /// Cancelled when shutdown begins: ends long-lived MCP streams.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// What the E2B-compatible API remembers beyond the sessions.
    pub e2b: crate::e2b::E2bState,
}

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The authenticated caller, put into each request by [`authorize`].
#[derive(Clone)]
pub struct Caller(pub Arc<KeyState>);

impl Caller {
    pub fn id(&self) -> String {
        self.0.key.id.clone()
    }
}

impl AppState {
    pub fn new(config: &Config, supervisor: PathBuf, dev: bool) -> anyhow::Result<Self> {
        let server = &config.server;
        let audit = match &server.audit_log {
            Some(path) => Some(AuditLog::open(path).map_err(|e| {
                anyhow::anyhow!("cannot open the audit log {}: {e}", path.display())
            })?),
            None => None,
        };
        Ok(Self(Arc::new(Inner {
            supervisor: Supervisor::new(supervisor),
            auth: Auth::new(&server.keys, dev)?,
            in_flight: InFlight::new(server.max_in_flight),
            metrics: Metrics::new(),
            audit,
            max_body_bytes: server.max_body_bytes,
            request_timeout: Duration::from_millis(server.request_timeout_ms.max(1)),
            limits: config.limits.clone(),
            ceilings: config.ceilings.clone(),
            config: config.clone(),
            dev,
            shutdown: tokio_util::sync::CancellationToken::new(),
            e2b: Default::default(),
        })))
    }

    /// Sends a non-execution command and returns its final reply, turning
    /// an error reply into an [`ApiError`].
    pub async fn call(&self, command: Command) -> Result<Reply, ApiError> {
        match self.supervisor.call(&command).await {
            Ok(Reply::Error { kind, message }) => Err(ApiError::new(kind, message)),
            Ok(reply) => Ok(reply),
            Err(error) => Err(ApiError::from(error)),
        }
    }

    /// `Stats` within the request timeout: (sessions, pool), or why not.
    pub async fn stats(&self) -> Result<Reply, ClientError> {
        match tokio::time::timeout(self.request_timeout, self.supervisor.call(&Command::Stats))
            .await
        {
            Ok(reply) => reply,
            Err(_) => Err(ClientError::Closed),
        }
    }
}

/// The whole application: every route with its layers, and the OpenAPI
/// document describing them.
pub fn router(state: AppState) -> Router {
    let (control, control_doc) = routes::control().split_for_parts();
    let (executions, exec_doc) = routes::executions().split_for_parts();
    let (open, open_doc) = routes::open().split_for_parts();
    let doc = openapi::document(vec![control_doc, exec_doc], vec![open_doc]);
    let doc =
        Arc::new(serde_json::to_string_pretty(&doc).expect("the OpenAPI document serializes"));
    let mcp = crate::mcp::http_service(state.clone());
    let protected = Router::new()
        .merge(control.layer(from_fn_with_state(state.clone(), request_timeout)))
        .merge(executions)
        .route_service("/mcp", mcp)
        .layer(from_fn_with_state(state.clone(), authorize));
    // The E2B-compatible API: its key headers become the bearer key first.
    let e2b = crate::e2b::router(state.clone())
        .layer(from_fn_with_state(state.clone(), authorize))
        .layer(from_fn_with_state(state.clone(), crate::e2b::key_header));
    Router::new()
        .merge(protected)
        .nest("/e2b", e2b)
        .merge(open)
        .merge(crate::playground::router())
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || openapi::serve(doc.clone())),
        )
        .layer(DefaultBodyLimit::max(state.max_body_bytes as usize))
        .layer(from_fn_with_state(state.clone(), track))
        .with_state(state)
}

/// Outermost: counts every request by route and status, and logs it.
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    state.metrics.request(&method, &route, status);
    let ms = start.elapsed().as_millis() as u64;
    tracing::info!(%method, %route, status, ms, "request");
    response
}

/// The in-flight cap, then the key, then the key's rate limit.
async fn authorize(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    match admit(&state, &mut request) {
        Ok(_in_flight) => next.run(request).await,
        Err(error) => closing_if_unread(&request, error.into_response()),
    }
}

fn admit(state: &AppState, request: &mut Request) -> Result<InFlightGuard, ApiError> {
    let in_flight = state.in_flight.enter().inspect_err(|_| {
        state.metrics.rejection("in_flight");
    })?;
    let header = request
        .headers()
        .get(AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    let Some(key) = state.auth.authenticate(header) else {
        state.metrics.rejection("unauthorized");
        return Err(ApiError::unauthorized());
    };
    key.take_token().inspect_err(|_| {
        state.metrics.rejection("rate_limited");
    })?;
    request.extensions_mut().insert(Caller(key));
    Ok(in_flight)
}

/// A refusal answered before the request's body was read: the connection
/// cannot carry another request (hyper closes it, the unread body being in
/// the way), so the answer says `Connection: close`. Without it a client
/// that reuses its connection (keep-alive) fails its next request with a
/// broken pipe instead of opening a new one.
fn closing_if_unread(request: &Request, mut response: Response) -> Response {
    if !request.body().is_end_stream() {
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Every request that is not an execution ends within `request_timeout_ms`
/// (dropping the handler drops its supervisor connection).
pub(crate) async fn request_timeout(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(state.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::timeout(state.request_timeout.as_millis() as u64).into_response(),
    }
}
