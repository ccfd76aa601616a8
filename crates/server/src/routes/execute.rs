//! Executions: one-shot in a fresh sandbox, or in a session. JSON by
//! default, Server-Sent Events with `Accept: text/event-stream`.

use crate::api::{ExecuteBody, ExecuteParts, SessionExecuteBody};
use crate::app::{AppState, Caller};
use crate::docs::ExecutionResultDoc;
use crate::error::{ApiError, ErrorBody};
use crate::exec::{answer_json, answer_sse, Running};
use crate::extract::ApiJson;
use crate::record::ExecutionRecord;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::Response;
use axum::Extension;
use kiln_core::service::Command;
use std::time::Duration;

/// Added to an execution's wall limit: sandbox start, grace, teardown.
pub const EXECUTION_MARGIN: Duration = Duration::from_secs(30);

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// Sends the command and answers it; the deadline bounds the whole
/// execution, the stream included.
async fn run(
    state: &AppState,
    command: Command,
    mut record: ExecutionRecord,
    wall_ms: u64,
    sse: bool,
) -> Result<Response, ApiError> {
    let limit = Duration::from_millis(wall_ms + state.ceilings.grace_ms) + EXECUTION_MARGIN;
    let deadline = tokio::time::Instant::now() + limit;
    let replies = match state.supervisor.send(&command).await {
        Ok(replies) => replies,
        Err(error) => {
            let error = ApiError::from(error);
            record.failed_named(error.kind);
            return Err(error);
        }
    };
    let running = Running {
        replies,
        record,
        deadline,
    };
    if sse {
        answer_sse(running).await
    } else {
        answer_json(running).await
    }
}

/// Runs code in a fresh sandbox that is destroyed afterwards.
#[utoipa::path(post, path = "/v1/execute", operation_id = "execute", tag = "execute", request_body = ExecuteBody,
    responses(
        (status = 200, description = "The result (JSON), or with `Accept: text/event-stream` \
            an SSE stream of events then `end`",
            content((ExecutionResultDoc = "application/json"), (String = "text/event-stream"))),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn execute(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ExecuteBody>,
) -> Result<Response, ApiError> {
    let ExecuteParts {
        request,
        limits,
        environment,
        libraries,
    } = body.into_parts()?;
    let slot = caller.0.start_execution().inspect_err(|_| {
        state.metrics.rejection("concurrency");
    })?;
    let wall_ms = limits
        .wall_ms
        .unwrap_or(state.limits.wall_ms)
        .min(state.ceilings.wall_ms);
    let record = ExecutionRecord::start(
        state.clone(),
        "oneshot",
        caller.id(),
        None,
        &request.code,
        Some(limits.clone()),
        slot,
    );
    let command = Command::Execute {
        key: caller.id(),
        request,
        limits,
        environment,
        libraries,
    };
    run(&state, command, record, wall_ms, wants_sse(&headers)).await
}

/// Runs code in a session (state carries over between executions).
#[utoipa::path(post, path = "/v1/sessions/{id}/executions", operation_id = "executeInSession", tag = "sessions",
    params(("id" = String, Path, description = "Session id")),
    request_body = SessionExecuteBody,
    responses(
        (status = 200, description = "The result (JSON), or with `Accept: text/event-stream` \
            an SSE stream of events then `end`",
            content((ExecutionResultDoc = "application/json"), (String = "text/event-stream"))),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn session_execute(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<SessionExecuteBody>,
) -> Result<Response, ApiError> {
    let request = body.into_request()?;
    let slot = caller.0.start_execution().inspect_err(|_| {
        state.metrics.rejection("concurrency");
    })?;
    let record = ExecutionRecord::start(
        state.clone(),
        "session",
        caller.id(),
        Some(id.clone()),
        &request.code,
        None,
        slot,
    );
    let command = Command::SessionExecute {
        key: caller.id(),
        session: id,
        request,
    };
    // A session's own limits are not known here; its ceiling bounds it.
    let wall_ms = state.ceilings.wall_ms;
    run(&state, command, record, wall_ms, wants_sse(&headers)).await
}
